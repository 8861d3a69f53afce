"""What the network classifiers add to :class:`~skdigits._base.BaseNetwork`:
labels (multiclass, binary, multilabel), sample and class weights,
probabilities, and accuracy as the early-stopping score."""

from numbers import Real

import numpy as np
from sklearn.base import ClassifierMixin, _fit_context
from sklearn.metrics import accuracy_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import column_or_1d
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, validate_data

from ._base import BaseNetwork
from ._sklearn_callbacks import with_callbacks

#: Below this probability, ``predict_log_proba`` takes the log from the
#: logits (exact where ``log(predict_proba)`` would be -inf or imprecise);
#: above, it is ``log(predict_proba)`` itself, so both rank the classes alike.
_LOG_FROM_LOGITS_BELOW = 1e-300


class BaseNetClassifier(ClassifierMixin, BaseNetwork):
    """Base class for the network classifiers.  Not for direct use."""

    _parameter_constraints: dict = {
        **BaseNetwork._parameter_constraints,
        "class_weight": [StrOptions({"balanced"}), dict, None],
    }

    # ------------------------------------------------------------ targets
    def _prepare_targets(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype="numeric", reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            self._check_known_classes(y)
        Y = self._label_binarizer.transform(y).astype(bool)
        return X, y, Y

    def _check_known_classes(self, y):
        classes = unique_labels(y)
        if self.warm_start:
            if set(classes) != set(self.classes_):
                raise ValueError(
                    "warm_start can only be used where `y` has the same classes as in "
                    f"the previous call to fit. Previously got {self.classes_}, `y` has "
                    f"{classes}"
                )
        elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
            raise ValueError(
                f"`y` has classes not in `self.classes_`. `self.classes_` has "
                f"{self.classes_}. 'y' has {classes}."
            )

    def _output_activation(self):
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _stratify(self, Y):
        return Y if self.n_outputs_ == 1 else None

    def _training_weights(self, y, sample_weight, X, incremental):
        """Per-sample training weights: sample_weight times class_weight, or None."""
        weights = None
        if sample_weight is not None:
            weights = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                           ensure_non_negative=True)
        if self.class_weight is not None:
            per_sample = self._class_weight_per_sample(y, incremental)
            weights = per_sample if weights is None else weights * per_sample
        if weights is not None and not np.any(weights > 0):
            raise ValueError("Sample weights (times class_weight) are all zero; at least "
                             "one sample needs a positive weight.")
        return weights

    def _class_weight_per_sample(self, y, incremental):
        if self._label_binarizer.y_type_.startswith("multilabel"):
            raise ValueError("class_weight is not supported for multilabel targets; "
                             "use sample_weight instead.")
        if incremental and self.class_weight == "balanced":
            raise ValueError(
                "class_weight='balanced' is not supported for partial_fit: the class "
                "frequencies of the whole data are unknown. Compute them once with "
                "sklearn.utils.class_weight.compute_class_weight('balanced', "
                "classes=classes, y=y) and pass the result as a dict."
            )
        if isinstance(self.class_weight, dict):
            for label, value in self.class_weight.items():
                if isinstance(value, bool) or not isinstance(value, Real) \
                        or not np.isfinite(value) or value < 0:
                    raise ValueError(
                        f"class_weight values must be finite numbers >= 0, got "
                        f"{value!r} for class {label!r}.")
        per_class = compute_class_weight(self.class_weight, classes=self.classes_, y=y)
        return per_class[np.searchsorted(self.classes_, y)]

    def _validation_score(self, X_val, Y_val, w_val):
        # Weighted like MLPClassifier's early stopping (sample_weight_val).
        y_val = self._label_binarizer.inverse_transform(Y_val)

        def score():
            return accuracy_score(y_val, self._predict_checked(X_val), sample_weight=w_val)

        return score

    # ------------------------------------------------------------ fitting
    @with_callbacks
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the model to data matrix X and target(s) y.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Class labels, or a label indicator matrix for multilabel targets.
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sample in the loss; multiplied by ``class_weight``.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """Update the model with a single epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The target values.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights.
        classes : array of shape (n_classes,), default=None
            All classes across calls to partial_fit; required on the first
            call (``np.unique(y_all)``).

        Returns
        -------
        self : object
            The updated estimator.
        """
        if _check_partial_fit_first_call(self, classes):
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    # ------------------------------------------------------------ prediction
    def _predict_checked(self, X):
        return self._label_binarizer.inverse_transform(
            self._network.probabilities(self._logits(X)))

    def predict(self, X):
        """Predict class labels (or a label indicator matrix for multilabel).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        return self._predict_checked(self._validated(X))

    def predict_proba(self, X):
        """Probability estimates, float64, columns in the order of ``classes_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        y_prob : ndarray of shape (n_samples, n_classes)
        """
        logits = self._class_logits(X)  # validates first: unfitted -> NotFittedError
        return self._network.probabilities(logits)

    def predict_log_proba(self, X):
        """Log of :meth:`predict_proba`, never -inf.

        Where a probability is tiny (below 1e-300) the log comes from the
        logits, exactly; elsewhere it is ``log(predict_proba(X))``, so the
        two rank the classes alike even where probabilities round to 1.0.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        log_y_prob : ndarray of shape (n_samples, n_classes)
        """
        logits = self._class_logits(X)
        proba = self._network.probabilities(logits)
        from_logits = self._network.log_probabilities(logits)
        with np.errstate(divide="ignore"):
            return np.where(proba > _LOG_FROM_LOGITS_BELOW, np.log(proba), from_logits)

    def _class_logits(self, X):
        """One logit column per class: a binary model's single logistic output
        z becomes (-z, z), since sigmoid(-z) = 1 - sigmoid(z)."""
        logits = self._logits(self._validated(X))
        return np.hstack([-logits, logits]) if self.n_outputs_ == 1 else logits

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags
