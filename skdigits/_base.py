"""What every skdigits network classifier shares: scikit-learn conventions
(validation, labels, sample and class weights, fitted attributes, warm start,
partial_fit) around the engine and the training loop.  Subclasses only say
which network to build."""

import copy
import functools
import os
import threading
import warnings
from abc import abstractmethod
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state, column_or_1d
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import _check_partial_fit_first_call, type_of_target, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
from threadpoolctl import ThreadpoolController

from .nn import PREDICT_CHUNK, SGD, Adam
from .training import BatchSource, TrainingHistory, train_lbfgs, train_stochastic

try:  # scikit-learn >= 1.9: progress bars and monitors through sklearn.callback
    from sklearn.callback import CallbackSupportMixin, with_callbacks
except ImportError:  # older scikit-learn: the estimators work without callbacks
    class CallbackSupportMixin:
        pass

    def with_callbacks(method):
        return method

_STOCHASTIC_SOLVERS = ("sgd", "adam")

#: With dtype='auto', fits whose epoch takes at least this many multiply-adds
#: (n_samples x the network's multiply-adds per sample) compute in float32.
#: Below it an epoch takes milliseconds, float32's ~2x GEMM speed-up does not
#: show, and float64 keeps results exact (e.g. a fit with integer sample
#: weights equals a fit on repeated rows, as scikit-learn's checks demand).
FLOAT32_MIN_EPOCH_MULTIPLY_ADDS = 10**8

@functools.cache
def _blas_controller():
    # Inspecting the loaded libraries takes milliseconds: do it once.
    return ThreadpoolController()


_blas_lock = threading.Lock()
_blas_state = {"users": 0, "limiter": None, "allowed": 1}


def _allowed_blas_threads():
    """Threads the BLAS may use as set outside skdigits (its default, or a
    ``threadpool_limits`` / joblib worker limit)."""
    libraries = _blas_controller().select(user_api="blas").lib_controllers
    if not libraries:
        return os.cpu_count() or 1
    return max(library.num_threads for library in libraries)


@contextmanager
def _single_blas_thread():
    """One BLAS thread while any caller is inside; the first in limits, the
    last out restores.  (Nested threadpoolctl limits from several threads
    would each restore what the previous one set, and could leave the whole
    process on one thread.)

    Products always run on one BLAS thread, whose results do not depend on
    the BLAS setting; the cores are used by splitting the work instead
    (:class:`~skdigits.nn.DataParallel`, prediction chunks).  Yields whether
    the setting found on entry allows a second thread for that.
    """
    with _blas_lock:
        if _blas_state["users"] == 0:
            _blas_state["allowed"] = _allowed_blas_threads()
            _blas_state["limiter"] = _blas_controller().limit(limits=1, user_api="blas")
        _blas_state["users"] += 1
        concurrent = _blas_state["allowed"] >= 2
    try:
        yield concurrent
    finally:
        with _blas_lock:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0:
                _blas_state["limiter"].restore_original_limits()
                _blas_state["limiter"] = None


def positive_ints(values, name):
    """``values`` (one int or a sequence) as a list of positive ints, or a ValueError naming ``name``."""
    values = list(values) if hasattr(values, "__iter__") else [values]
    if any(isinstance(v, bool) or not isinstance(v, Integral | np.integer) or v <= 0
           for v in values):
        raise ValueError(f"{name} must be positive integers (> 0), got {values}.")
    return [int(v) for v in values]


def _dense_rows(part):
    return part.toarray() if hasattr(part, "toarray") else part


class BaseNetClassifier(CallbackSupportMixin, ClassifierMixin, BaseEstimator):
    """Base class for the network classifiers.  Not for direct use."""

    _parameter_constraints: dict = {
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
        "dropout": [Interval(Real, 0, 1, closed="left"), "array-like"],
        "class_weight": [StrOptions({"balanced"}), dict, None],
        "dtype": [StrOptions({"auto", "float32", "float64"})],
    }

    # ------------------------------------------------------------ subclasses
    @abstractmethod
    def _make_network(self, n_features, n_outputs, out_activation, dtype):
        """Return an unbuilt :class:`~skdigits.nn.Network` and its per-sample input shape."""

    def _architecture(self, n_features):
        """Everything that fixes the shape of the parameters (for warm_start checks)."""
        return (n_features,)

    # ------------------------------------------------------------ attributes
    @property
    def coefs_(self):
        """list of ndarray: weight matrix of each layer (views of the parameters)."""
        return self._network.parameter_arrays("W")

    @coefs_.setter
    def coefs_(self, values):
        self._assign_parameters("W", values)

    @property
    def intercepts_(self):
        """list of ndarray: bias vector of each layer (views of the parameters)."""
        return self._network.parameter_arrays("b")

    @intercepts_.setter
    def intercepts_(self, values):
        self._assign_parameters("b", values)

    def _assign_parameters(self, name, values):
        current = self._network.parameter_arrays(name)
        if len(values) != len(current):
            raise ValueError(f"Expected {len(current)} arrays, got {len(values)}.")
        for i, (dest, value) in enumerate(zip(current, values)):
            value = np.asarray(value)
            if value.shape != dest.shape:
                raise ValueError(f"Layer {i}: expected shape {dest.shape}, got {value.shape}.")
            dest[...] = value

    def _dropout_rates(self, n_hidden):
        rates = 0.0 if self.dropout is None else self.dropout
        try:
            rates = np.asarray(rates, dtype=float)
        except (TypeError, ValueError):
            raise ValueError(f"dropout must be a float or a sequence of floats, got "
                             f"{self.dropout!r}.") from None
        if rates.ndim == 0:
            rates = np.full(n_hidden, float(rates))
        if rates.shape != (n_hidden,):
            raise ValueError(
                f"dropout must be a float or one rate per hidden layer ({n_hidden}), "
                f"got {self.dropout!r}."
            )
        if not np.all((rates >= 0) & (rates < 1)):  # also catches NaN
            raise ValueError(f"dropout rates must be in [0, 1), got {self.dropout!r}.")
        return [float(r) for r in rates]

    # ------------------------------------------------------------ validation
    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype="numeric", reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
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
        Y = self._label_binarizer.transform(y).astype(bool)
        return X, y, Y

    def _check_magnitude(self, X):
        # A float64 value beyond float32's range would silently become inf.
        if self.dtype_ == "float64" or X.dtype.itemsize <= 4 and X.dtype.kind == "f":
            return
        data = X.data if hasattr(X, "toarray") else X
        if data.size and X.dtype.kind in "fiu":
            limit = np.finfo(np.float32).max
            if data.max() > limit or data.min() < -limit:
                raise ValueError(
                    "X has values beyond the float32 range (|x| > 3.4e38); scale the data "
                    "or use dtype='float64'."
                )

    def _sample_weights(self, y, sample_weight, X, incremental):
        """Per-sample training weights: sample_weight times class_weight, or None."""
        weights = None
        if sample_weight is not None:
            weights = _check_sample_weight(sample_weight, X, dtype=np.float64,
                                           ensure_non_negative=True)
        if self.class_weight is not None:
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
            per_sample = per_class[np.searchsorted(self.classes_, y)]
            weights = per_sample if weights is None else weights * per_sample
        if weights is not None and not np.any(weights > 0):
            raise ValueError("Sample weights (times class_weight) are all zero; at least "
                             "one sample needs a positive weight.")
        return weights

    # ------------------------------------------------------------ fitting
    def _initialize(self, X, Y):
        n_features = X.shape[1]
        self.n_outputs_ = Y.shape[1]
        if self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        network, input_shape = self._make_network(n_features, self.n_outputs_,
                                                  self.out_activation_, "float64")
        self.dtype_ = self._resolve_dtype(network, input_shape, X.shape[0])
        network.dtype = np.dtype(self.dtype_)
        uses_dropout = any(r > 0 for r in getattr(network, "dropout_rates", []))
        seed = self._random_state.randint(np.iinfo(np.int32).max) if uses_dropout else None
        network.build(input_shape, self._random_state, init=self._weight_init(),
                      activation=self._hidden_activation(), seed=seed)
        self._network = network
        self._input_shape = input_shape
        self._architecture_ = self._architecture(n_features)
        self.n_layers_ = len(network.parameter_arrays("W")) + 1
        self.n_iter_ = 0
        self.t_ = 0
        self._history = TrainingHistory()
        if self.solver in _STOCHASTIC_SOLVERS and self.early_stopping:
            self._history.validation_scores = []
            self._history.best_validation_score = -np.inf
            self._history.best_loss = None
        self._optimizer = None

    def _resolve_dtype(self, network, input_shape, n_samples):
        if self.dtype != "auto":
            return self.dtype
        work = network.multiply_adds(input_shape) * n_samples
        return "float32" if work >= FLOAT32_MIN_EPOCH_MULTIPLY_ADDS else "float64"

    def _weight_init(self):
        return self.weight_init

    def _hidden_activation(self):
        return self.activation

    def _fit(self, X, y, sample_weight=None, incremental=False):
        first_pass = not hasattr(self, "_network") or (not self.warm_start and not incremental)
        X, y, Y = self._validate_input(X, y, incremental, reset=first_pass)
        weights = self._sample_weights(y, sample_weight, X, incremental)
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(X, Y)
        elif self._architecture(X.shape[1]) != self._architecture_:
            raise ValueError(
                "The network's architecture parameters changed since the last fit "
                f"({self._architecture_} -> {self._architecture(X.shape[1])}); refit with "
                "warm_start=False."
            )
        self._check_magnitude(X)
        self._callback_ctx = None
        if hasattr(self, "_init_callback_context") and not incremental:
            self._callback_ctx = self._init_callback_context(max_subtasks=self.max_iter)
            self._callback_ctx.call_on_fit_task_begin(estimator=self, X=X, y=y)
        try:
            with _single_blas_thread() as concurrent:
                if self.solver in _STOCHASTIC_SOLVERS:
                    self._fit_stochastic(X, y, Y, weights, incremental, concurrent)
                else:
                    self._fit_lbfgs(X, y, Y, weights, concurrent)
            if self._callback_ctx is not None:
                self._callback_ctx.call_on_fit_task_end(
                    estimator=self, X=X, y=y, reconstruction_attributes=self._snapshot)
        finally:
            # Also after a diverged fit: the attributes describe the kept weights.
            self._sync_history()
            del self._callback_ctx
        if not np.all(np.isfinite(self._network.params)):
            raise ValueError("Solver produced non-finite parameter weights. Scale the "
                             "inputs or lower learning_rate_init.")
        return self

    def __setstate__(self, state):
        super().__setstate__(state)
        # joblib stores arrays outside the pickle stream, so the optimizer can
        # come back holding its own copy of the parameters: point it back.
        if getattr(self, "_optimizer", None) is not None and hasattr(self, "_network"):
            self._optimizer.params = self._network.params

    def _sync_history(self):
        history = self._history
        self.loss_curve_ = history.loss_curve
        self.validation_scores_ = history.validation_scores
        self.best_validation_score_ = history.best_validation_score
        self.best_loss_ = history.best_loss
        self.t_ = history.t
        self.stop_reason_ = history.stop_reason
        if self.solver in _STOCHASTIC_SOLVERS:
            self.n_iter_ = history.n_iter
        if history.loss_curve:
            self.loss_ = history.loss_curve[-1]

    def _make_optimizer(self):
        params = self._network.params
        if self.solver == "sgd":
            return SGD(params, self.learning_rate_init, self.learning_rate, self.momentum,
                       self.nesterovs_momentum, self.power_t)
        return Adam(params, self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon)

    def _fit_stochastic(self, X, y, Y, weights, incremental, concurrent):
        if not incremental or self._optimizer is None:
            self._optimizer = self._make_optimizer()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")

        rows = np.arange(X.shape[0])
        validation_score = None
        if self.early_stopping:
            stratify = Y if self.n_outputs_ == 1 else None
            rows, val_rows = train_test_split(rows, random_state=self._random_state,
                                              test_size=self.validation_fraction,
                                              stratify=stratify)
            if len(val_rows) < 2:
                raise ValueError("The validation set is too small. Increase "
                                 "'validation_fraction' or the size of your dataset.")
            X_val = X[val_rows]
            y_val = self._label_binarizer.inverse_transform(Y[val_rows])
            w_val = None if weights is None else weights[val_rows]

            def validation_score():
                return accuracy_score(y_val, self._predict_checked(X_val), sample_weight=w_val)

        n_train = len(rows)
        if self.batch_size == "auto":
            batch_size = min(200, n_train)
        else:
            if self.batch_size > n_train:
                warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                              "It is going to be clipped")
            batch_size = int(np.clip(self.batch_size, 1, n_train))

        source = BatchSource(X, Y, weights, self._network.dtype, self._input_shape, rows)
        begin_hooks, end_hooks = self._task_hooks(X, y, "epoch")
        self._history.n_iter = 0
        converged = train_stochastic(
            self._network, self._optimizer, source, batch_size=batch_size,
            max_iter=self.max_iter, shuffle=self.shuffle, random_state=self._random_state,
            tol=self.tol, n_iter_no_change=self.n_iter_no_change, alpha=self.alpha,
            history=self._history, validation_score=validation_score,
            incremental=incremental, verbose=self.verbose,
            epoch_callbacks=end_hooks, on_epoch_begin=begin_hooks, concurrent=concurrent,
        )
        if not converged and not incremental:
            warnings.warn(
                "Stochastic Optimizer: Maximum iterations (%d) reached and the "
                "optimization hasn't converged yet." % self.max_iter,
                ConvergenceWarning,
            )

    def _snapshot(self):
        """Fitted attributes that make a copy of this estimator predict as it is now."""
        self._sync_history()
        return {"_network": copy.deepcopy(self._network), "n_iter_": self._history.n_iter,
                "loss_curve_": list(self._history.loss_curve)}

    def _task_hooks(self, X, y, task_name):
        """(begin, end) epoch hooks that report to scikit-learn callbacks."""
        ctx = self._callback_ctx
        if ctx is None:
            return (), ()
        current = {}

        def begin(history):
            current["ctx"] = ctx.subcontext(task_name=task_name)
            current["ctx"].call_on_fit_task_begin(estimator=self, X=X, y=y)

        def end(history):
            stop = current.pop("ctx").call_on_fit_task_end(
                estimator=self, X=X, y=y,
                metadata={"loss": history.loss_curve[-1] if history.loss_curve else None},
                reconstruction_attributes=self._snapshot)
            return bool(stop)

        return (begin,), (end,)

    def _fit_lbfgs(self, X, y, Y, weights, concurrent):
        source = BatchSource(X, Y, weights, self._network.dtype, self._input_shape)
        self._history.loss_curve = []
        begin_hooks, end_hooks = self._task_hooks(X, y, "lbfgs-iter")
        # scipy reports an iteration once it is done: begin and end it together.
        hooks = [lambda history: (begin_hooks[0](history), end_hooks[0](history))] \
            if begin_hooks else []
        self._history.stop_reason = ""
        result = train_lbfgs(self._network, source, alpha=self.alpha, max_iter=self.max_iter,
                             max_fun=self.max_fun, tol=self.tol, history=self._history,
                             verbose=self.verbose, iteration_callbacks=hooks,
                             concurrent=concurrent)
        curve = self._history.loss_curve
        self._history.best_loss = min(curve) if curve else None
        if result is None:  # interrupted
            self.n_iter_ = len(curve)
            self.loss_ = curve[-1] if curve else np.nan
            return
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.loss_ = float(result.fun)
        if self._history.stop_reason != "callback":
            self._history.stop_reason = "converged" if result.status == 0 else "max_iter"
        if result.status != 0:
            message = result.message.decode() if isinstance(result.message, bytes) else result.message
            warnings.warn(
                f"lbfgs failed to converge after {self.n_iter_} iteration(s) (status="
                f"{result.status}): {message}. Increase the number of iterations "
                f"(max_iter={self.max_iter}) or of function evaluations "
                f"(max_fun={self.max_fun}), or scale the data.",
                ConvergenceWarning,
            )

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

    def _check_solver(self):
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError(
                "partial_fit is only available for stochastic optimizers. "
                f"{self.solver} is not stochastic."
            )
        return True

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
    def _validated(self, X):
        check_is_fitted(self)
        # NaN, inf and values beyond the float32 range are caught where each
        # chunk is cast (Network.predict_logits): checking here would be one
        # more pass over X, an eighth of predict_proba's time on MNIST.
        return validate_data(self, X, accept_sparse=["csr", "csc"], dtype="numeric",
                             reset=False, ensure_all_finite=False)

    def _logits(self, X):
        """Float64 logits for validated X; a clear error instead of inf/NaN outputs."""
        with _single_blas_thread() as concurrent:
            logits = self._network.predict_logits(X, to_dense=_dense_rows,
                                                  concurrent=concurrent).astype(np.float64)
        if not np.all(np.isfinite(logits)):
            bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
            raise ValueError(
                f"The network's outputs overflowed for {len(bad)} row(s) (first: {bad[:5]}); "
                "the inputs are far outside the range seen in training. Scale them the "
                "same way as the training data."
            )
        return logits

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
        """Log of :meth:`predict_proba`, computed from the logits (no ``log(0)``).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        log_y_prob : ndarray of shape (n_samples, n_classes)
        """
        logits = self._class_logits(X)
        return self._network.log_probabilities(logits)

    def _class_logits(self, X):
        """One logit column per class: a binary model's single logistic output
        z becomes (-z, z), since sigmoid(-z) = 1 - sigmoid(z)."""
        logits = self._logits(self._validated(X))
        return np.hstack([-logits, logits]) if self.n_outputs_ == 1 else logits

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_label = True
        return tags
