"""What the network regressors add to :class:`~skdigits._base.BaseNetwork`:
real-valued targets (one or several outputs), the squared-error and Poisson
losses, and R² as the early-stopping score."""

import numpy as np
from sklearn.base import RegressorMixin, _fit_context
from sklearn.metrics import r2_score
from sklearn.utils import column_or_1d
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _check_sample_weight, validate_data

from ._base import BaseNetwork
from ._sklearn_callbacks import with_callbacks

#: The output function fused with each loss (scikit-learn's ``out_activation_``).
OUTPUT_OF_LOSS = {"squared_error": "identity", "poisson": "exp"}


class BaseNetRegressor(RegressorMixin, BaseNetwork):
    """Base class for the network regressors.  Not for direct use."""

    _parameter_constraints: dict = {
        **BaseNetwork._parameter_constraints,
        "loss": [StrOptions(set(OUTPUT_OF_LOSS))],
    }

    # ------------------------------------------------------------ targets
    def _prepare_targets(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             y_numeric=True, dtype="numeric", reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        Y = np.asarray(y, dtype=np.float64)
        Y = Y.reshape(-1, 1) if Y.ndim == 1 else Y
        if self.loss == "poisson" and Y.size and Y.min() < 0:
            raise ValueError(
                f"loss='poisson' needs non-negative targets (counts or rates); y has "
                f"{int((Y < 0).sum())} negative value(s), the smallest {Y.min():g}.")
        if not reset and hasattr(self, "n_outputs_") and Y.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {Y.shape[1]} output(s) but the network was fitted with "
                f"{self.n_outputs_}; warm_start and partial_fit continue the same network.")
        return X, y, Y

    def _output_activation(self):
        return OUTPUT_OF_LOSS[self.loss]

    def _training_weights(self, y, sample_weight, X, incremental):
        """``sample_weight`` as float64 weights, or None."""
        if sample_weight is None:
            return None
        weights = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                       ensure_non_negative=True)
        if not np.any(weights > 0):
            raise ValueError("Sample weights are all zero; at least one sample needs a "
                             "positive weight.")
        return weights

    def _validation_score(self, X_val, Y_val, w_val):
        # R², weighted like MLPRegressor's early stopping (sample_weight_val);
        # NaN for a diverged network, as MLPRegressor records it.
        y_val = Y_val[:, 0] if Y_val.shape[1] == 1 else Y_val

        def score():
            predicted = self._outputs(self._logits(X_val, check_finite=False))
            if not np.all(np.isfinite(predicted)):
                return np.nan
            return float(r2_score(y_val, predicted, sample_weight=w_val))

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
            The target values (non-negative for ``loss='poisson'``).
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of each sample in the loss (and in the early-stopping R²).

        Returns
        -------
        self : object
            The fitted estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False)

    @available_if(lambda est: est._check_solver())
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """Update the model with a single epoch over the given data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            The target values.
        sample_weight : array-like of shape (n_samples,), default=None
            Sample weights.

        Returns
        -------
        self : object
            The updated estimator.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    # ------------------------------------------------------------ prediction
    def _outputs(self, logits):
        """The network's outputs (float64, one column per output) from its logits."""
        return self._network.probabilities(logits)

    def predict(self, X):
        """Predict using the network.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            The input data.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            The predicted values, 1-D for a single output.  float32 when both
            X and the compute dtype (``dtype_``) are float32, as
            MLPRegressor's are for a float32 fit; float64 otherwise.
        """
        X = self._validated(X)
        predicted = self._outputs(self._logits(X))
        if X.dtype == np.float32 and self.dtype_ == "float32":
            with np.errstate(over="ignore"):  # overflow to inf is reported below
                predicted = predicted.astype(np.float32)
        if not np.all(np.isfinite(predicted)):
            bad = np.flatnonzero(~np.isfinite(predicted).all(axis=1))
            raise ValueError(
                f"The predicted {'mean' if self.loss == 'poisson' else 'value'} overflowed "
                f"the {predicted.dtype} range for {len(bad)} row(s) (first: {bad[:5]}); the "
                "inputs are far outside the range seen in training. Scale them the same "
                "way as the training data.")
        return predicted[:, 0] if self.n_outputs_ == 1 else predicted

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.positive_only = self.loss == "poisson"
        return tags
