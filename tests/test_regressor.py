"""``NumpyMLPRegressor``: scikit-learn's ``MLPRegressor`` on our engine.

Three parts:

1. Side by side with ``MLPRegressor`` in float64 with the same
   ``random_state``: the two must train identically (same initial weights,
   shuffles, update formulas, stopping rules and R² early stopping), so loss
   curves, weights and predictions are compared to rounding.  The one
   deliberate difference, the squared error of several outputs (summed here,
   averaged there), is checked for exactly what it changes.
2. What a regressor must do on its own: output shapes and dtypes, the
   Poisson loss's domain, warm-start refusals, overflowing predictions,
   diverging fits, Ctrl-C, callbacks, model files.
3. What it shares with the classifier: one layer stack, and the options the
   classifier adds (dropout, batch norm, schedules, ``dtype``).
"""

import inspect
import os
import signal
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_diabetes, make_friedman1, make_regression
from sklearn.exceptions import ConvergenceWarning, DataConversionWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdigits import NumpyMLPClassifier, NumpyMLPRegressor, load_model, save_model

pytestmark = pytest.mark.usefixtures("one_blas_thread")

_XD, _YD = load_diabetes(return_X_y=True)
#: scikit-learn's bundled diabetes data, features and target standardised.
X_DIABETES = StandardScaler().fit_transform(_XD)
Y_DIABETES = (_YD - _YD.mean()) / _YD.std()
#: Counts for the Poisson loss, with a log-linear mean in two features.
_rng = np.random.RandomState(0)
Y_COUNTS = _rng.poisson(np.exp(0.4 * X_DIABETES[:, 2] + 0.3 * X_DIABETES[:, 8] + 0.5))


def quiet(callable_, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return callable_(*args, **kwargs)


def _params(reg):
    return list(reg.coefs_) + list(reg.intercepts_)


# =========================================================================
# Part 1: side by side with MLPRegressor (float64, same random_state).
# =========================================================================
RTOL = 1e-9


def _side_by_side(X, y, fit_kwargs=None, **params):
    fit_kwargs = fit_kwargs or {}
    theirs = quiet(MLPRegressor(**params).fit, X, y, **fit_kwargs)
    ours = quiet(NumpyMLPRegressor(dtype="float64", **params).fit, X, y, **fit_kwargs)
    return ours, theirs


def assert_same_training(ours, theirs, X, rtol=RTOL):
    assert ours.n_iter_ == theirs.n_iter_
    assert len(ours.loss_curve_) == len(theirs.loss_curve_)
    assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=rtol)
    assert ours.t_ == theirs.t_
    for a, b in zip(_params(ours), _params(theirs)):
        assert a.shape == b.shape
        assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    predicted, expected = ours.predict(X), theirs.predict(X)
    assert predicted.shape == expected.shape and predicted.dtype == expected.dtype
    assert_allclose(predicted, expected, rtol=1e-7, atol=1e-10)
    assert ours.n_layers_ == theirs.n_layers_
    assert ours.n_outputs_ == theirs.n_outputs_
    assert ours.out_activation_ == theirs.out_activation_


@pytest.mark.parametrize("params", [
    pytest.param(dict(solver="adam"), id="adam"),
    pytest.param(dict(solver="adam", batch_size=64, alpha=1e-2, beta_1=0.8, beta_2=0.99,
                      epsilon=1e-6, learning_rate_init=0.003), id="adam-options"),
    pytest.param(dict(solver="sgd", learning_rate_init=0.01, nesterovs_momentum=True),
                 id="sgd-nesterov"),
    pytest.param(dict(solver="sgd", learning_rate_init=0.01, nesterovs_momentum=False),
                 id="sgd-momentum"),
    pytest.param(dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.05,
                      power_t=0.3), id="sgd-invscaling"),
    pytest.param(dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.01, tol=0.05,
                      n_iter_no_change=2), id="sgd-adaptive"),
    pytest.param(dict(solver="adam", shuffle=False), id="adam-no-shuffle"),
    pytest.param(dict(solver="adam", activation="tanh", hidden_layer_sizes=(16, 8)),
                 id="tanh-two-layers"),
    pytest.param(dict(solver="adam", activation="logistic"), id="logistic"),
    pytest.param(dict(solver="sgd", activation="identity", learning_rate_init=0.005),
                 id="identity"),
    pytest.param(dict(solver="adam", learning_rate_init=0.01, tol=0.01, n_iter_no_change=2,
                      max_iter=200), id="adam-converges"),
    pytest.param(dict(loss="poisson", solver="adam", learning_rate_init=0.01), id="poisson"),
    pytest.param(dict(loss="poisson", solver="sgd", learning_rate_init=0.001), id="poisson-sgd"),
])
def test_same_training_as_sklearn(params):
    params = {"hidden_layer_sizes": (24,), "max_iter": 12, "random_state": 0, **params}
    y = Y_COUNTS if params.get("loss") == "poisson" else Y_DIABETES
    ours, theirs = _side_by_side(X_DIABETES, y, **params)
    assert_same_training(ours, theirs, X_DIABETES)
    assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=RTOL)
    if params.get("tol") == 0.01:
        assert ours.n_iter_ < 200, "the scenario should converge"
        assert ours.stop_reason_ == "converged"


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_same_early_stopping_on_r2_as_sklearn(solver):
    params = dict(hidden_layer_sizes=(24,), solver=solver, max_iter=200, early_stopping=True,
                  n_iter_no_change=3, learning_rate_init=0.01, validation_fraction=0.2,
                  random_state=0)
    ours, theirs = _side_by_side(X_DIABETES, Y_DIABETES, **params)
    assert ours.n_iter_ < 200, "the scenario should stop early"
    assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=RTOL)
    assert ours.best_validation_score_ == pytest.approx(theirs.best_validation_score_, rel=RTOL)
    assert ours.best_loss_ is None and theirs.best_loss_ is None
    assert_same_training(ours, theirs, X_DIABETES)


def test_same_weighted_training_and_weighted_r2_as_sklearn():
    rng = np.random.RandomState(0)
    sw = rng.uniform(0.2, 3.0, len(Y_DIABETES))
    params = dict(hidden_layer_sizes=(16,), max_iter=30, early_stopping=True,
                  n_iter_no_change=50, learning_rate_init=0.01, random_state=0)
    ours, theirs = _side_by_side(X_DIABETES, Y_DIABETES, fit_kwargs={"sample_weight": sw},
                                 **params)
    assert_same_training(ours, theirs, X_DIABETES)
    # Validation R² weighted by the held-out rows' sample weights, as MLPRegressor's.
    assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=RTOL)
    plain = quiet(NumpyMLPRegressor(dtype="float64", **params).fit, X_DIABETES, Y_DIABETES)
    assert not np.allclose(plain.validation_scores_, ours.validation_scores_)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_same_warm_start_as_sklearn(solver):
    params = dict(hidden_layer_sizes=(24,), solver=solver, max_iter=5, warm_start=True,
                  random_state=0, learning_rate_init=0.01)
    ours = NumpyMLPRegressor(dtype="float64", **params)
    theirs = MLPRegressor(**params)
    for max_iter in (5, 3, 4):
        for reg in (ours, theirs):
            reg.set_params(max_iter=max_iter)
            quiet(reg.fit, X_DIABETES, Y_DIABETES)
        assert_same_training(ours, theirs, X_DIABETES)
    assert len(ours.loss_curve_) == 12


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_same_partial_fit_as_sklearn(solver, shuffle):
    params = dict(hidden_layer_sizes=(24,), solver=solver, shuffle=shuffle, random_state=0,
                  learning_rate_init=0.01, batch_size=100)
    ours = NumpyMLPRegressor(dtype="float64", **params)
    theirs = MLPRegressor(**params)
    chunks = np.array_split(np.arange(len(Y_DIABETES)), 3)
    for epoch in range(3):
        for rows in chunks:
            for reg in (ours, theirs):
                reg.partial_fit(X_DIABETES[rows], Y_DIABETES[rows])
    assert_same_training(ours, theirs, X_DIABETES)
    assert len(ours.loss_curve_) == 9
    assert ours.stop_reason_ == "partial_fit"


@pytest.mark.parametrize("container", [sp.csr_matrix, sp.csc_matrix])
def test_same_sparse_training_as_sklearn(container):
    X = X_DIABETES * (np.abs(X_DIABETES) > 0.5)  # mostly zeros
    ours, theirs = _side_by_side(container(X), Y_DIABETES, hidden_layer_sizes=(16,),
                                 max_iter=6, random_state=0)
    assert_same_training(ours, theirs, container(X))
    assert_array_equal(ours.predict(container(X)), ours.predict(X))


@pytest.mark.parametrize("loss, y", [("squared_error", Y_DIABETES), ("poisson", Y_COUNTS)])
def test_same_lbfgs_training_as_sklearn(loss, y):
    params = dict(loss=loss, solver="lbfgs", hidden_layer_sizes=(16,), max_iter=40,
                  random_state=0)
    ours, theirs = _side_by_side(X_DIABETES, y, **params)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-6)
    assert_allclose(ours.predict(X_DIABETES), theirs.predict(X_DIABETES), rtol=1e-4, atol=1e-8)
    # And ours records what MLPRegressor does not: a loss per iteration.
    assert len(ours.loss_curve_) == ours.n_iter_ and ours.loss_curve_[-1] == ours.loss_


def test_same_initial_weights_as_sklearn():
    # One full-batch epoch: its loss is computed at the initial weights.
    params = dict(hidden_layer_sizes=(11, 7), max_iter=1, batch_size=len(Y_DIABETES),
                  random_state=5, activation="logistic")
    ours, theirs = _side_by_side(X_DIABETES, Y_DIABETES, **params)
    assert ours.loss_curve_[0] == pytest.approx(theirs.loss_curve_[0], rel=1e-12)
    assert_same_training(ours, theirs, X_DIABETES)


def test_column_y_is_raveled_with_a_warning_like_sklearn():
    params = dict(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
    column = Y_DIABETES.reshape(-1, 1)
    with pytest.warns(DataConversionWarning):
        theirs = quiet(MLPRegressor(**params).fit, X_DIABETES, column)
    with pytest.warns(DataConversionWarning):
        ours = quiet(NumpyMLPRegressor(dtype="float64", **params).fit, X_DIABETES, column)
    assert ours.n_outputs_ == theirs.n_outputs_ == 1
    assert_same_training(ours, theirs, X_DIABETES)


def test_multi_output_trains_like_sklearn_and_reports_the_summed_loss():
    # The same updates (both follow the gradient of the sum over outputs);
    # MLPRegressor reports the mean over outputs, ours the sum (issue #8349).
    X, Y = make_regression(n_samples=300, n_features=8, n_targets=3, random_state=0)
    Y = (Y - Y.mean(axis=0)) / Y.std(axis=0)
    params = dict(hidden_layer_sizes=(16,), max_iter=6, alpha=0.0, random_state=0,
                  learning_rate_init=0.01, n_iter_no_change=np.inf)
    ours, theirs = _side_by_side(X, Y, **params)
    assert ours.n_iter_ == theirs.n_iter_ == 6
    for a, b in zip(_params(ours), _params(theirs)):
        assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    assert ours.predict(X).shape == (300, 3)
    assert_allclose(ours.predict(X), theirs.predict(X), rtol=1e-7, atol=1e-10)
    assert_allclose(ours.loss_curve_, 3 * np.asarray(theirs.loss_curve_), rtol=RTOL)
    assert ours.score(X, Y) == pytest.approx(theirs.score(X, Y), rel=1e-9)


def test_float32_input_gives_float32_weights_and_predictions_like_sklearn():
    X32 = X_DIABETES.astype(np.float32)
    params = dict(hidden_layer_sizes=(16,), max_iter=20, random_state=0)
    ours = quiet(NumpyMLPRegressor(**params).fit, X32, Y_DIABETES)
    theirs = quiet(MLPRegressor(**params).fit, X32, Y_DIABETES)
    assert ours.dtype_ == "float32"
    assert all(W.dtype == np.float32 for W in _params(ours))
    assert ours.predict(X32).dtype == theirs.predict(X32).dtype == np.float32
    assert_allclose(ours.predict(X32), theirs.predict(X32), rtol=1e-3, atol=1e-3)
    # float64 X on the float32 model: float64, as MLPRegressor's.
    assert ours.predict(X_DIABETES).dtype == theirs.predict(X_DIABETES).dtype == np.float64


def test_same_score_as_sklearn():
    ours, theirs = _side_by_side(X_DIABETES, Y_DIABETES, hidden_layer_sizes=(16,), max_iter=8,
                                 random_state=0)
    assert ours.score(X_DIABETES, Y_DIABETES) == pytest.approx(
        theirs.score(X_DIABETES, Y_DIABETES), rel=1e-12)


def test_same_parameters_defaults_and_signature_as_sklearn():
    extra = {"dropout": 0.0, "dtype": "auto", "weight_init": "glorot", "lr_schedule": None,
             "batch_norm": False, "augment": None, "image_shape": "auto"}
    ours = NumpyMLPRegressor().get_params()
    assert {k: v for k, v in ours.items() if k not in extra} == MLPRegressor().get_params()
    assert {k: ours[k] for k in extra} == extra
    # Same order, same positional parameters (loss first, as since 1.7).
    theirs = inspect.signature(MLPRegressor).parameters
    mine = inspect.signature(NumpyMLPRegressor).parameters
    assert [(p.name, p.kind) for p in mine.values()][:len(theirs)] == \
        [(p.name, p.kind) for p in theirs.values()]


# =========================================================================
# Part 2: a regressor's own behaviour.
# =========================================================================
SMALL = dict(hidden_layer_sizes=(16,), random_state=0)


def test_predictions_shape_and_dtype():
    reg = quiet(NumpyMLPRegressor(max_iter=5, **SMALL).fit, X_DIABETES, Y_DIABETES)
    assert reg.predict(X_DIABETES[:7]).shape == (7,)
    assert reg.predict(X_DIABETES[:7]).dtype == np.float64
    assert reg.out_activation_ == "identity" and reg.n_outputs_ == 1
    two = np.column_stack([Y_DIABETES, -Y_DIABETES])
    reg = quiet(NumpyMLPRegressor(max_iter=5, **SMALL).fit, X_DIABETES, two)
    assert reg.predict(X_DIABETES[:7]).shape == (7, 2)
    # A float32 model predicts float32 only for float32 X (as MLPRegressor).
    reg = quiet(NumpyMLPRegressor(max_iter=5, dtype="float32", **SMALL).fit, X_DIABETES,
                Y_DIABETES)
    assert reg.predict(X_DIABETES).dtype == np.float64
    assert reg.predict(X_DIABETES.astype(np.float32)).dtype == np.float32
    assert reg.predict(X_DIABETES.astype(np.float32).tolist()).dtype == np.float64


def test_dtype_auto_picks_float32_for_large_fits_like_the_classifier():
    X, y = make_friedman1(n_samples=100_000, n_features=10, random_state=0)
    # 100,000 rows x (10 x 100 + 100 x 1) multiply-adds >= 1e8: float32.
    reg = NumpyMLPRegressor(random_state=0).partial_fit(X, y)
    assert reg.dtype_ == "float32"
    assert reg.predict(X[:3]).dtype == np.float64
    reg = NumpyMLPRegressor(random_state=0).partial_fit(X[:1000], y[:1000])
    assert reg.dtype_ == "float64"


def test_poisson_needs_non_negative_targets_and_predicts_positive_means():
    reg = NumpyMLPRegressor(loss="poisson", max_iter=3, **SMALL)
    y = Y_COUNTS.astype(float).copy()
    y[[4, 9]] = [-1.0, -0.5]
    with pytest.raises(ValueError, match=r"loss='poisson' needs non-negative.*2 negative.*-1"):
        reg.fit(X_DIABETES, y)
    reg = quiet(reg.fit, X_DIABETES, Y_COUNTS)
    assert reg.out_activation_ == "exp"
    predicted = reg.predict(X_DIABETES)
    assert np.all(predicted > 0)
    # The output is exp of the last layer's linear output.
    hidden = np.maximum(X_DIABETES @ reg.coefs_[0] + reg.intercepts_[0], 0)
    assert_allclose(predicted, np.exp(hidden @ reg.coefs_[1] + reg.intercepts_[1])[:, 0],
                    rtol=1e-10)


def test_poisson_without_hidden_nonlinearity_equals_the_glm():
    from sklearn.linear_model import PoissonRegressor

    X = np.linspace(0, 1, 100).reshape(-1, 1)
    y = np.random.default_rng(1).poisson(np.exp(X[:, 0] + 1))
    glm = PoissonRegressor(alpha=0, tol=1e-7).fit(X, y)
    reg = NumpyMLPRegressor(loss="poisson", hidden_layer_sizes=(1,), activation="identity",
                            alpha=0, solver="lbfgs", tol=1e-7, random_state=2).fit(X, y)
    assert_allclose(reg.predict(X), glm.predict(X), rtol=1e-4)


def test_warm_start_refuses_another_loss_or_number_of_outputs():
    reg = quiet(NumpyMLPRegressor(max_iter=2, warm_start=True, **SMALL).fit, X_DIABETES,
                Y_COUNTS)
    before = reg._network.params.copy()
    with pytest.raises(ValueError, match="y has 2 output.*fitted with 1"):
        reg.fit(X_DIABETES, np.column_stack([Y_COUNTS, Y_COUNTS]))
    reg.set_params(loss="poisson")
    with pytest.raises(ValueError, match="architecture changed.*loss"):
        reg.fit(X_DIABETES, Y_COUNTS)
    assert_array_equal(reg._network.params, before)  # nothing was trained
    partial = NumpyMLPRegressor(**SMALL).partial_fit(X_DIABETES, Y_DIABETES)
    with pytest.raises(ValueError, match="y has 3 output"):
        partial.partial_fit(X_DIABETES, np.tile(Y_DIABETES[:, None], 3))


def test_partial_fit_only_for_stochastic_solvers():
    assert not hasattr(NumpyMLPRegressor(solver="lbfgs"), "partial_fit")
    assert hasattr(NumpyMLPRegressor(solver="sgd"), "partial_fit")


def test_partial_fit_after_early_stopping_fit_raises():
    reg = quiet(NumpyMLPRegressor(early_stopping=True, max_iter=3, **SMALL).fit, X_DIABETES,
                Y_DIABETES)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        reg.partial_fit(X_DIABETES, Y_DIABETES)


def test_sample_weights_all_zero_or_negative_are_refused():
    reg = NumpyMLPRegressor(max_iter=2, **SMALL)
    with pytest.raises(ValueError, match="all zero|at least one non-zero"):
        reg.fit(X_DIABETES, Y_DIABETES, sample_weight=np.zeros(len(Y_DIABETES)))
    weights = np.ones(len(Y_DIABETES))
    weights[3] = -1
    with pytest.raises(ValueError, match="[Nn]egative"):
        reg.fit(X_DIABETES, Y_DIABETES, sample_weight=weights)


def test_integer_sample_weights_equal_repeated_rows():
    weights = np.random.RandomState(1).randint(0, 3, len(Y_DIABETES))
    params = dict(solver="lbfgs", max_iter=30, **SMALL)
    weighted = quiet(NumpyMLPRegressor(**params).fit, X_DIABETES, Y_DIABETES,
                     sample_weight=weights)
    rows = np.repeat(np.arange(len(weights)), weights)
    repeated = quiet(NumpyMLPRegressor(**params).fit, X_DIABETES[rows], Y_DIABETES[rows])
    assert_allclose(weighted.predict(X_DIABETES), repeated.predict(X_DIABETES), rtol=1e-6,
                    atol=1e-8)


def test_overflowing_predictions_raise_instead_of_inf():
    reg = quiet(NumpyMLPRegressor(loss="poisson", max_iter=3, **SMALL).fit, X_DIABETES,
                Y_COUNTS)
    # Logits of +-1e5 or so: exp overflows float64 in one direction or the other.
    far = np.vstack([X_DIABETES[:3], 1e6 * X_DIABETES[:3], -1e6 * X_DIABETES[:3]])
    with pytest.raises(ValueError, match=r"predicted mean overflowed the float64 range for "
                                         r"[1-6] row\(s\) \(first: \[[3-8]"):
        reg.predict(far)
    assert np.all(np.isfinite(reg.predict(far[:3])))
    # A float32 model's float32 predictions overflow sooner: still an error, never inf.
    reg32 = quiet(NumpyMLPRegressor(loss="poisson", max_iter=3, dtype="float32", **SMALL).fit,
                  X_DIABETES, Y_COUNTS)
    logits = np.log(reg32.predict(X_DIABETES[:4].astype(np.float32)))
    assert np.all(np.isfinite(logits))
    with pytest.raises(ValueError, match="overflowed"):
        reg32.predict((X_DIABETES[:4] * 1e3).astype(np.float32))


def test_nan_in_x_at_predict_names_the_row():
    reg = quiet(NumpyMLPRegressor(max_iter=2, **SMALL).fit, X_DIABETES, Y_DIABETES)
    X = X_DIABETES[:5].copy()
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN, first in row 3"):
        reg.predict(X)


def test_huge_inputs_raise_and_keep_finite_weights():
    # scikit-learn's test_nonfinite_params, with its message; ours stops at the
    # first non-finite loss, blames the inputs, and keeps finite weights.
    rng = np.random.RandomState(0)
    X = np.finfo(np.float64).max * rng.uniform(size=(10, 2))
    y = rng.standard_normal(size=10)
    reg = NumpyMLPRegressor()
    with np.errstate(all="ignore"), pytest.raises(ValueError, match=(
            r"Training diverged at epoch 1.*inputs are probably too large; scale them")):
        reg.fit(X, y)
    assert all(np.all(np.isfinite(p)) for p in _params(reg))


def test_diverging_fit_with_early_stopping_ends_on_the_best_weights():
    # scikit-learn's test_mlp_diverging_loss: the fit ends without an error, a
    # NaN validation score last; ours also warns, naming the learning rate,
    # says why it stopped, and keeps the best model.
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    reg = NumpyMLPRegressor(hidden_layer_sizes=100, activation="identity", solver="sgd",
                            learning_rate_init=1, max_iter=20, early_stopping=True,
                            random_state=0)
    with np.errstate(all="ignore"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.fit(X, y)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert any("learning_rate_init=1" in m and "best weights" in m for m in messages)
    assert any(m.startswith("Training is diverging") for m in messages)
    assert reg.stop_reason_ == "diverged"
    scores = reg.validation_scores_
    assert isinstance(scores[-1], float) and np.isnan(scores[-1])
    assert np.all(np.isfinite(scores[:-1]))
    assert reg.best_validation_score_ == max(scores[:-1])
    assert all(np.all(np.isfinite(p)) for p in _params(reg))
    assert np.all(np.isfinite(reg.predict(X)))


posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX SIGINT semantics")


class _InterruptAfter:
    """A sklearn.callback callback that sends this process SIGINT after an epoch."""

    def __init__(self, epochs):
        self.epochs = epochs
        self.seen = 0

    def setup(self, estimator, context):
        pass

    def on_fit_task_begin(self, estimator, context):
        pass

    def on_fit_task_end(self, estimator, context, *, metadata=None, fitted_estimator=None):
        if context.task_name == "epoch":
            self.seen += 1
            if self.seen == self.epochs:
                assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
                os.kill(os.getpid(), signal.SIGINT)
        return False

    def teardown(self, estimator, context):
        pass


@posix_signals
def test_ctrl_c_stops_at_a_batch_boundary_and_leaves_a_usable_model():
    pytest.importorskip("sklearn.callback")
    reg = NumpyMLPRegressor(max_iter=50, batch_size=32, **SMALL)
    reg.set_callbacks(_InterruptAfter(epochs=2))
    # The handler before the fit (SIG_IGN when the test run itself was
    # started in the background) is the one the fit must put back.
    before = signal.getsignal(signal.SIGINT)
    with pytest.warns(UserWarning, match="interrupted"):
        reg.fit(X_DIABETES, Y_DIABETES)
    assert reg.stop_reason_ == "interrupted"
    assert reg.n_iter_ == 2 and len(reg.loss_curve_) == 2
    assert np.all(np.isfinite(reg.predict(X_DIABETES)))
    assert signal.getsignal(signal.SIGINT) is before


def test_scoring_monitor_logs_r2_per_epoch_with_sample_weight():
    callback = pytest.importorskip("sklearn.callback")
    weights = np.where(Y_DIABETES > 0, 4.0, 1.0)
    monitor = callback.ScoringMonitor(scoring="r2")
    reg = NumpyMLPRegressor(max_iter=3, learning_rate_init=0.01, **SMALL).set_callbacks(monitor)
    quiet(reg.fit, X_DIABETES, Y_DIABETES, sample_weight=weights)
    scores = [row["r2"] for row in monitor.get_logs().data if row["task_name"] == "epoch"]
    assert len(scores) == 3
    assert scores[-1] == pytest.approx(reg.score(X_DIABETES, Y_DIABETES, sample_weight=weights))
    assert scores[-1] != pytest.approx(reg.score(X_DIABETES, Y_DIABETES))


def test_model_file_round_trip_and_training_continues_identically(tmp_path):
    pipe = quiet(make_pipeline(StandardScaler(), NumpyMLPRegressor(max_iter=5, **SMALL)).fit,
                 _XD, _YD)
    path = save_model(pipe, tmp_path / "reg.skops")
    loaded = load_model(path)
    assert_array_equal(loaded.predict(_XD), pipe.predict(_XD))
    ours, again = pipe[-1], loaded[-1]
    X = pipe[0].transform(_XD)
    ours.partial_fit(X, _YD)
    again.partial_fit(X, _YD)
    assert_array_equal(again.predict(X), ours.predict(X))
    assert again.loss_curve_ == ours.loss_curve_


def test_works_in_cross_validation_and_grid_search():
    pipe = make_pipeline(StandardScaler(), NumpyMLPRegressor(max_iter=20, learning_rate_init=0.01,
                                                             **SMALL))
    scores = quiet(cross_val_score, pipe, _XD, Y_DIABETES, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.2)
    grid = quiet(GridSearchCV(pipe, {"numpymlpregressor__alpha": [1e-4, 1.0]}, cv=2).fit,
                 _XD, Y_DIABETES)
    assert grid.best_params_["numpymlpregressor__alpha"] in (1e-4, 1.0)


# =========================================================================
# Part 3: shared with the classifier.
# =========================================================================
def test_one_layer_stack_for_both_tasks():
    assert NumpyMLPRegressor._make_network is NumpyMLPClassifier._make_network
    assert NumpyMLPRegressor._fit is NumpyMLPClassifier._fit


@pytest.mark.parametrize("options", [
    dict(dropout=0.2), dict(batch_norm=True), dict(lr_schedule="one-cycle"),
    dict(lr_schedule="cosine", solver="sgd", learning_rate_init=0.01),
    dict(weight_init="he"), dict(dtype="float32"),
])
def test_the_classifiers_options_train_a_regressor(options):
    X, y = make_friedman1(n_samples=600, random_state=0)
    X_test, y_test = make_friedman1(n_samples=300, random_state=1)
    params = dict(hidden_layer_sizes=(32,), max_iter=150, learning_rate_init=0.01,
                  random_state=0)
    plain = quiet(NumpyMLPRegressor(**params).fit, X, y)
    params.update(options)
    reg = quiet(NumpyMLPRegressor(**params).fit, X, y)
    assert reg.score(X_test, y_test) > 0.7  # the plain network: 0.80
    if "dtype" in options:  # the same training, rounded to float32 as it goes
        assert reg.dtype_ == "float32" and reg.coefs_[0].dtype == np.float32
        assert_allclose(reg.predict(X_test), plain.predict(X_test), rtol=1e-3)
        assert not np.array_equal(reg.predict(X_test), plain.predict(X_test))
    else:
        assert not np.allclose(reg.predict(X_test), plain.predict(X_test), rtol=1e-3)


@pytest.mark.parametrize("n_features", [10, 64])
def test_small_batches_gathered_in_place_train_as_prefetched_ones(monkeypatch, n_features):
    # Regression data is often narrow: such batches are gathered on the
    # calling thread (no hand-off to the prefetch thread); the fit must be
    # bit-identical either way.
    import skdigits.training.batches as batches

    X, y = make_friedman1(n_samples=900, n_features=n_features, random_state=0)
    fits = []
    for threshold in (0, 10**9):  # always prefetch, never prefetch
        monkeypatch.setattr(batches, "PREFETCH_MIN_VALUES", threshold)
        fits.append(quiet(NumpyMLPRegressor(max_iter=3, batch_size=50, **SMALL).fit, X, y))
    assert fits[0].loss_curve_ == fits[1].loss_curve_
    assert_array_equal(fits[0]._network.params, fits[1]._network.params)


def test_batch_norm_refuses_lbfgs():
    with pytest.raises(ValueError, match="batch_norm=True needs mini-batches"):
        NumpyMLPRegressor(batch_norm=True, solver="lbfgs").fit(X_DIABETES, Y_DIABETES)


def test_r2_is_the_score():
    reg = quiet(NumpyMLPRegressor(max_iter=10, **SMALL).fit, X_DIABETES, Y_DIABETES)
    assert reg.score(X_DIABETES, Y_DIABETES) == pytest.approx(
        r2_score(Y_DIABETES, reg.predict(X_DIABETES)))
