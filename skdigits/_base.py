"""What every skdigits network estimator shares: scikit-learn's conventions
(parameters, fitted attributes, warm start, partial_fit, callbacks) around
the engine and the training loop.

:class:`BaseNetwork` knows nothing of classes or labels: a task (the
classifier in :mod:`skdigits._classifier`) says how targets become the
network's output matrix, which output function and score to use, and which
network to build.
"""

import copy
import math
import warnings
from abc import abstractmethod
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .augmentation import Augmentation, make_augmentation
from ._sklearn_callbacks import CallbackSupportMixin, EpochTasks, fit_task_metadata
from .concurrency import predict_in_chunks, single_blas_thread
from .nn import SGD, Activation, Adam, BatchNorm, Dropout
from .training import (LR_SCHEDULES, BatchSource, ImprovementStopping, ScheduledLearningRate,
                       TrainingHistory, TrainingLoop, Verbose, train_lbfgs)

_STOCHASTIC_SOLVERS = ("sgd", "adam")

#: With dtype='auto', fits whose epoch takes at least this many multiply-adds
#: (n_samples x the network's multiply-adds per sample) compute in float32.
#: Below it an epoch takes milliseconds, float32's ~2x GEMM speed-up does not
#: show, and float64 keeps results exact (e.g. a fit with integer sample
#: weights equals a fit on repeated rows, as scikit-learn's checks demand).
FLOAT32_MIN_EPOCH_MULTIPLY_ADDS = 10**8

#: Constructor parameters that only steer training: they may change between
#: warm-start fits.  Every other parameter shapes the network or its
#: initialisation, so changing it with ``warm_start=True`` is refused — a
#: parameter added later is refused by default rather than silently ignored.
TRAINING_PARAMETERS = frozenset({
    "alpha", "augment", "batch_size", "beta_1", "beta_2", "class_weight", "early_stopping",
    "epsilon", "learning_rate", "learning_rate_init", "lr_schedule", "max_fun",
    "max_iter", "momentum", "n_iter_no_change", "nesterovs_momentum", "power_t",
    "random_state", "shuffle", "solver", "tol", "validation_fraction", "verbose",
    "warm_start",
})


def positive_ints(values, name):
    """``values`` (one int or a sequence) as a list of positive ints, or a ValueError naming ``name``."""
    values = list(values) if hasattr(values, "__iter__") else [values]
    if any(isinstance(v, bool) or not isinstance(v, Integral | np.integer) or v <= 0
           for v in values):
        raise ValueError(f"{name} must be positive integers (> 0), got {values}.")
    return [int(v) for v in values]


def activated(make_layer, activation, batch_norm):
    """Layers for ``make_layer(activation=activation)``; with ``batch_norm``
    the layer stays linear and is followed by BatchNorm, then the activation
    (Ioffe & Szegedy's placement: normalise the pre-activations)."""
    if not batch_norm:
        return [make_layer(activation=activation)]
    return [make_layer(activation="identity"), BatchNorm(), Activation(activation)]


def infer_image_shape(n_features, image_shape="auto"):
    """Per-sample (h, w, channels) for rows of ``n_features`` pixels.

    'auto': a square single-channel image when ``n_features`` is a perfect
    square (784 -> 28x28), otherwise a one-row strip ``(1, n_features, 1)``.
    A given (h, w) or (h, w, channels) must multiply to ``n_features``.
    """
    if isinstance(image_shape, str):
        side = math.isqrt(n_features)
        return (side, side, 1) if side * side == n_features else (1, n_features, 1)
    try:
        shape = tuple(image_shape)
        if any(isinstance(s, bool) or not isinstance(s, Integral | np.integer) for s in shape):
            raise TypeError
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"image_shape must be 'auto', (h, w) or (h, w, channels) of positive "
                         f"ints, got {image_shape!r}.") from None
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be 'auto', (h, w) or (h, w, channels) of positive "
                         f"ints, got {image_shape!r}.")
    if math.prod(shape) != n_features:
        raise ValueError(f"image_shape {image_shape!r} holds {math.prod(shape)} values but X has "
                         f"{n_features} features.")
    return shape


def _comparable(value):
    """A parameter value as text that is equal exactly when the values mean
    the same network ((16,), [16] and np.array([16]) alike)."""
    if isinstance(value, str) or value is None:
        return repr(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return "(" + ", ".join(_comparable(v) for v in np.asarray(value, dtype=object).ravel()) + ")"
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def _dense_rows(part):
    return part.toarray() if hasattr(part, "toarray") else part


class BaseNetwork(CallbackSupportMixin, BaseEstimator):
    """Base class for the network estimators.  Not for direct use."""

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
        "dtype": [StrOptions({"auto", "float32", "float64"})],
        "lr_schedule": [StrOptions(set(LR_SCHEDULES)), None],
        "batch_norm": ["boolean"],
        "augment": [None, StrOptions({"affine", "elastic"}), Augmentation],
    }

    #: See :data:`TRAINING_PARAMETERS`; an estimator may add its own.
    _training_parameters = TRAINING_PARAMETERS

    # ------------------------------------------------------------ the task's part
    @abstractmethod
    def _make_network(self, n_features, n_outputs, out_activation, dtype):
        """Return an unbuilt :class:`~skdigits.nn.Network` and its per-sample input shape."""

    @abstractmethod
    def _prepare_targets(self, X, y, incremental, reset):
        """Validate (X, y); return (X, y, Y) with Y the network's target matrix."""

    @abstractmethod
    def _output_activation(self):
        """The output function fused with the loss ('softmax', 'logistic', ...)."""

    @abstractmethod
    def _training_weights(self, y, sample_weight, X, incremental):
        """Per-sample training weights, or None."""

    @abstractmethod
    def _validation_score(self, X_val, Y_val, w_val):
        """``() -> float``: the early-stopping score of the current weights."""

    def _stratify(self, Y):
        """Labels to stratify the early-stopping split by, or None."""
        return None

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

    @property
    def _no_improvement_count(self):
        """Epochs in a row without ``tol`` improvement (MLPClassifier's name,
        which its own tests read)."""
        return self._history.no_improvement_count

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

    def _architecture(self, n_features):
        """What fixes the network: the input width and every parameter that
        is not a training parameter (see :data:`TRAINING_PARAMETERS`)."""
        params = self.get_params(deep=False)
        return {"n_features": n_features,
                **{name: _comparable(value) for name, value in sorted(params.items())
                   if name not in self._training_parameters}}

    def _check_same_architecture(self, n_features):
        before = getattr(self, "_architecture_", None)
        now = self._architecture(n_features)
        if not isinstance(before, dict):  # a model file from before 0.2: no record
            before = now
        changed = {name: (before.get(name), now.get(name)) for name in sorted(before.keys() | now.keys())
                   if before.get(name) != now.get(name)}
        if changed:
            what = ", ".join(f"{name}: {old} -> {new}" for name, (old, new) in changed.items())
            raise ValueError(
                f"The network's architecture changed since the last fit ({what}); "
                "warm_start and partial_fit continue the same network. Refit with "
                "warm_start=False, or set the parameters back."
            )

    # ------------------------------------------------------------ fitting
    def _fit(self, X, y, sample_weight=None, incremental=False):
        first_pass = not hasattr(self, "_network") or (not self.warm_start and not incremental)
        X, y, Y = self._prepare_targets(X, y, incremental, reset=first_pass)
        weights = self._training_weights(y, sample_weight, X, incremental)
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(X, Y)
        else:
            self._check_same_architecture(X.shape[1])
        self._check_magnitude(X)
        context = None
        metadata = fit_task_metadata(sample_weight)
        if hasattr(self, "_init_callback_context") and not incremental:
            context = self._init_callback_context(max_subtasks=self.max_iter)
            context.call_on_fit_task_begin(estimator=self, X=X, y=y, metadata=metadata)
        tasks = None if context is None else EpochTasks(
            context, self, X, y, metadata, self._snapshot,
            task_name="epoch" if self.solver in _STOCHASTIC_SOLVERS else "lbfgs-iter")
        try:
            with single_blas_thread() as concurrent:
                if self.solver in _STOCHASTIC_SOLVERS:
                    self._fit_stochastic(X, Y, weights, incremental, concurrent, tasks)
                else:
                    self._fit_lbfgs(X, Y, weights, concurrent, tasks)
            if context is not None:
                context.call_on_fit_task_end(
                    estimator=self, X=X, y=y, metadata=metadata,
                    reconstruction_attributes=self._snapshot)
        finally:
            # Also after a diverged fit: the attributes describe the kept weights.
            self._sync_history()
        if not np.all(np.isfinite(self._network.params)):
            raise ValueError("Solver produced non-finite parameter weights. Scale the "
                             "inputs or lower learning_rate_init.")
        return self

    def _initialize(self, X, Y):
        n_features = X.shape[1]
        self.n_outputs_ = Y.shape[1]
        self.out_activation_ = self._output_activation()
        network, input_shape = self._make_network(n_features, self.n_outputs_,
                                                  self.out_activation_, "float64")
        self.dtype_ = self._resolve_dtype(network, input_shape, X)
        network.dtype = np.dtype(self.dtype_)
        # Drawn only when needed, so that without dropout the random stream
        # (and so the initial weights) is MLPClassifier's.
        uses_dropout = any(isinstance(layer, Dropout) for layer in network.layers)
        seed = self._random_state.randint(np.iinfo(np.int32).max) if uses_dropout else None
        network.build(input_shape, self._random_state, init=self.weight_init,
                      activation=self.activation, seed=seed)
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

    def _resolve_dtype(self, network, input_shape, X):
        if self.dtype != "auto":
            return self.dtype
        if X.dtype == np.float32:  # as MLPClassifier: float32 in, float32 weights
            return "float32"
        work = network.multiply_adds(input_shape) * X.shape[0]
        return "float32" if work >= FLOAT32_MIN_EPOCH_MULTIPLY_ADDS else "float64"

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

    def _make_optimizer(self):
        params = self._network.params
        if self.solver == "sgd":
            return SGD(params, self.learning_rate_init, self.learning_rate, self.momentum,
                       self.nesterovs_momentum, self.power_t)
        return Adam(params, self.learning_rate_init, self.beta_1, self.beta_2, self.epsilon)

    def _fit_stochastic(self, X, Y, weights, incremental, concurrent, tasks):
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if not incremental or self._optimizer is None:
            self._optimizer = self._make_optimizer()
        rows, validation_score = self._training_split(X, Y, weights)
        batch_size = self._batch_size(len(rows))
        schedule = None
        if self.lr_schedule is not None:
            schedule = ScheduledLearningRate(self.lr_schedule,
                                             self.max_iter * -(-len(rows) // batch_size),
                                             start_step=self._history.steps)
        stopping = ImprovementStopping(
            self.tol, self.n_iter_no_change, validation_score, self.verbose,
            # A warm-up learns slowly by design: no-improvement counts after it.
            start_step=0 if schedule is None else schedule.warmup_end)
        source = BatchSource(X, Y, weights, self._network.dtype, self._input_shape, rows,
                             **self._augmentation_for(X.shape[1]))
        self._history.n_iter, self._history.final_loss = 0, None
        loop = TrainingLoop(
            self._network, self._optimizer, source, self._history, batch_size=batch_size,
            shuffle=self.shuffle, random_state=self._random_state, alpha=self.alpha,
            callbacks=self._loop_callbacks(schedule, stopping, tasks),
            best_model=stopping.best_model, concurrent=concurrent)
        reason = loop.fit(1 if incremental else self.max_iter)
        if incremental and reason == "max_iter":
            self._history.stop_reason = "partial_fit"
        elif reason == "max_iter" and schedule is None:
            # With a schedule, max_iter is the plan the step size follows to
            # its end, not a budget cut short: no warning.
            warnings.warn(
                "Stochastic Optimizer: Maximum iterations (%d) reached and the "
                "optimization hasn't converged yet." % self.max_iter,
                ConvergenceWarning,
            )

    def _augmentation_for(self, n_features):
        """BatchSource's augmentation arguments: none without ``augment``."""
        if self.augment is None:
            return {}
        shape = self._image_shape(n_features)
        return {"augmentation": make_augmentation(self.augment, image_shape=shape).frozen(),
                "image_shape": shape,
                # Drawn only with augmentation: the random stream stays MLPClassifier's.
                "seed": int(self._random_state.randint(np.iinfo(np.int32).max))}

    def _image_shape(self, n_features):
        """(h, w, channels) a row is read as, for augmentation."""
        return infer_image_shape(n_features, self.image_shape)

    def _training_split(self, X, Y, weights):
        """(training rows, validation score or None): with early stopping, a
        held-out split scored after every epoch."""
        rows = np.arange(X.shape[0])
        if not self.early_stopping:
            return rows, None
        rows, val_rows = train_test_split(rows, random_state=self._random_state,
                                          test_size=self.validation_fraction,
                                          stratify=self._stratify(Y))
        if len(val_rows) < 2:
            raise ValueError("The validation set is too small. Increase "
                             "'validation_fraction' or the size of your dataset.")
        w_val = None if weights is None else weights[val_rows]
        return rows, self._validation_score(X[val_rows], Y[val_rows], w_val)

    def _batch_size(self, n_train):
        if self.batch_size == "auto":
            return min(200, n_train)
        if self.batch_size > n_train:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. "
                          "It is going to be clipped")
        return int(np.clip(self.batch_size, 1, n_train))

    def _loop_callbacks(self, schedule, stopping, tasks):
        """The training loop's callbacks, in the order scikit-learn's MLP
        does these things after an epoch."""
        optional = [schedule, Verbose() if self.verbose else None, stopping, tasks]
        return [callback for callback in optional if callback is not None]

    def _fit_lbfgs(self, X, Y, weights, concurrent, tasks):
        for name, why in (("batch_norm", "has no batch statistics to normalise with"),
                          ("augment", "sees the same data at every iteration")):
            if getattr(self, name) not in (None, False):
                raise ValueError(f"{name}={getattr(self, name)!r} needs mini-batches: use "
                                 f"solver='adam' or 'sgd', not 'lbfgs' (full-batch L-BFGS "
                                 f"{why}).")
        source = BatchSource(X, Y, weights, self._network.dtype, self._input_shape)
        self._history.loss_curve, self._history.final_loss = [], None
        hooks = [] if tasks is None else [tasks.lbfgs_iteration]
        result = train_lbfgs(self._network, source, alpha=self.alpha, max_iter=self.max_iter,
                             max_fun=self.max_fun, tol=self.tol, history=self._history,
                             verbose=self.verbose, iteration_callbacks=hooks,
                             concurrent=concurrent)
        history = self._history
        curve = history.loss_curve
        history.best_loss = min(curve) if curve else None
        if result is None:  # interrupted
            history.n_iter, history.final_loss = len(curve), curve[-1] if curve else np.nan
            return
        history.n_iter = min(int(result.nit), self.max_iter)
        history.final_loss = float(result.fun)
        if history.stop_reason == "max_iter":
            message = result.message.decode() if isinstance(result.message, bytes) else result.message
            warnings.warn(
                f"lbfgs failed to converge after {history.n_iter} iteration(s) (status="
                f"{result.status}): {message}. Increase the number of iterations "
                f"(max_iter={self.max_iter}) or of function evaluations "
                f"(max_fun={self.max_fun}), or scale the data.",
                ConvergenceWarning,
            )

    def _sync_history(self):
        """The fitted attributes, from the training history (the one writer)."""
        history = self._history
        self.loss_curve_ = history.loss_curve
        self.validation_scores_ = history.validation_scores
        self.best_validation_score_ = history.best_validation_score
        self.best_loss_ = history.best_loss
        self.t_ = history.t
        self.stop_reason_ = history.stop_reason
        self.n_iter_ = history.n_iter
        if history.final_loss is not None:  # L-BFGS: the loss at its solution
            self.loss_ = history.final_loss
        elif history.loss_curve:
            self.loss_ = history.loss_curve[-1]

    def _snapshot(self):
        """Fitted attributes that make a copy of this estimator predict as it is now."""
        self._sync_history()
        return {"_network": copy.deepcopy(self._network), "n_iter_": self._history.n_iter,
                "loss_curve_": list(self._history.loss_curve)}

    def __setstate__(self, state):
        super().__setstate__(state)
        # joblib stores arrays outside the pickle stream, so the optimizer can
        # come back holding its own copy of the parameters: point it back.
        if getattr(self, "_optimizer", None) is not None and hasattr(self, "_network"):
            self._optimizer.params = self._network.params

    def _check_solver(self):
        if self.solver not in _STOCHASTIC_SOLVERS:
            raise AttributeError(
                "partial_fit is only available for stochastic optimizers. "
                f"{self.solver} is not stochastic."
            )
        return True

    # ------------------------------------------------------------ prediction
    def _validated(self, X):
        check_is_fitted(self)
        # NaN, inf and values beyond the float32 range are caught where each
        # chunk is cast (Network.predict_chunks): checking here would be one
        # more pass over X, an eighth of predict_proba's time on MNIST.
        return validate_data(self, X, accept_sparse=["csr", "csc"], dtype="numeric",
                             reset=False, ensure_all_finite=False)

    def _logits(self, X, check_finite=True):
        """Float64 logits for validated X; a clear error instead of inf/NaN outputs
        (``check_finite=False``: for an early-stopping score, which records a
        diverged network's NaN instead)."""
        with single_blas_thread() as concurrent:
            logits = predict_in_chunks(self._network, X, to_dense=_dense_rows,
                                       concurrent=concurrent).astype(np.float64)
        if check_finite and not np.all(np.isfinite(logits)):
            bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
            raise ValueError(
                f"The network's outputs overflowed for {len(bad)} row(s) (first: {bad[:5]}); "
                "the inputs are far outside the range seen in training. Scale them the "
                "same way as the training data."
            )
        return logits

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags
