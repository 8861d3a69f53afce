"""``NumpyMLPClassifier`` as a drop-in for scikit-learn's ``MLPClassifier``.

Two parts:

1. The scenarios of scikit-learn's own MLP test-suite
   (``sklearn/neural_network/tests/test_mlp.py``) that exercise
   ``MLPClassifier`` through its public API, re-written for
   ``NumpyMLPClassifier``.  Regressor-only scenarios that say something about
   a classifier too are re-run with a classifier; tests of private methods
   are left out (see the list in the docstring of each section).
2. Side-by-side runs: in float64 and with the same ``random_state`` the two
   estimators must train identically (same initial weights, shuffling,
   optimizer formulas and stopping rules), so loss curves, validation scores
   and predictions are compared to rounding.
"""

import re
import warnings

import joblib
import numpy as np
import pytest
import sklearn
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_digits, load_iris, make_classification, \
    make_multilabel_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import MinMaxScaler

from skdigits import NumpyMLPClassifier
from support import model_params

pytestmark = pytest.mark.usefixtures("one_blas_thread")

ACTIVATIONS = ["identity", "logistic", "tanh", "relu"]

# The data sets of scikit-learn's suite: 200 digits of 3 classes and 200 of
# 2 classes, min-max scaled; the unscaled binary digits; iris.
_X3, _y3 = load_digits(n_class=3, return_X_y=True)
X_MULTI, Y_MULTI = MinMaxScaler().fit_transform(_X3[:200]), _y3[:200]
X_BINARY_RAW, Y_BINARY_RAW = load_digits(n_class=2, return_X_y=True)
X_BINARY, Y_BINARY = MinMaxScaler().fit_transform(X_BINARY_RAW[:200]), Y_BINARY_RAW[:200]
SMALL_SETS = [pytest.param(X_MULTI, Y_MULTI, id="multiclass"),
              pytest.param(X_BINARY, Y_BINARY, id="binary")]
X_IRIS, Y_IRIS = load_iris(return_X_y=True)

_XD, Y_DIGITS = load_digits(return_X_y=True)
X_DIGITS = _XD / 16.0


_PEER_1_7 = pytest.mark.skipif(
    tuple(int(p) for p in sklearn.__version__.split(".")[:2]) < (1, 7),
    reason="the peer, scikit-learn's MLPClassifier, takes sample_weight and fits string "
           "labels here only from 1.7")


def quiet(callable_, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return callable_(*args, **kwargs)


def assert_same_argmax(proba, log_proba):
    """log_proba's argmax picks a most probable column of proba.

    predict_log_proba is computed from the logits, so it still orders
    columns whose probabilities both rounded to 1.0; only ties in proba may
    resolve differently from ``proba.argmax``.
    """
    rows = np.arange(len(proba))
    assert_array_equal(proba[rows, log_proba.argmax(axis=1)], proba.max(axis=1))


# =========================================================================
# Part 1: scikit-learn's scenarios, run against NumpyMLPClassifier.
#
# Ported (classifier, public API): test_alpha, test_fit,
# test_lbfgs_classification, test_lbfgs_classification_maxfun,
# test_learning_rate_warmstart, test_multilabel_classification,
# test_partial_fit_classes_error, test_partial_fit_classification,
# test_partial_fit_unseen_classes, test_partial_fit_errors,
# test_predict_proba_binary, test_predict_proba_multiclass,
# test_predict_proba_multilabel, test_sparse_matrices, test_tolerance,
# test_verbose_sgd, test_early_stopping, test_adaptive_learning_rate,
# test_warm_start, test_warm_start_full_iteration, test_n_iter_no_change,
# test_n_iter_no_change_inf, test_early_stopping_stratified,
# test_mlp_early_stopping_string_labels, test_mlp_classifier_dtypes_casting,
# test_mlp_param_dtypes (as the documented dtype difference),
# test_preserve_feature_names, test_mlp_warm_start_with_early_stopping,
# test_mlp_warm_start_no_convergence, test_mlp_partial_fit_after_fit.
#
# Regressor tests re-run with a classifier: test_shuffle,
# test_partial_fit_regression, test_nonfinite_params,
# test_mlp_loading_from_joblib_partial_fit, test_mlp_diverging_loss,
# test_mlp_sample_weight_with_early_stopping, test_minimum_input_sample_size.
#
# Not ported: test_gradient (private _loss_grad_lbfgs/_backprop; the engine's
# gradients are checked by finite differences in test_nn_gradients.py),
# test_lbfgs_regression, test_lbfgs_regression_maxfun,
# test_multioutput_regression, test_mlp_regressor_dtypes_casting and
# test_mlp_vs_poisson_glm_equivalent (MLPRegressor only).
# =========================================================================
def test_alpha_shrinks_weights():
    X, y = X_BINARY[:100], Y_BINARY[:100]
    sums = []
    for alpha in (0.0, 1.0):
        clf = quiet(NumpyMLPClassifier(hidden_layer_sizes=10, alpha=alpha, random_state=1).fit,
                    X, y)
        sums.append([np.abs(c).sum() for c in clf.coefs_])
    assert np.all(np.array(sums[0]) > np.array(sums[1]))


def test_one_sgd_step_matches_hand_computation():
    # One sample, logistic hidden layer of 2 units, binary output, plain SGD
    # (no momentum) with L2: we set the weights, take one step, and compare
    # with the same step written out in NumPy.
    x = np.array([[0.6, 0.8, 0.7]])
    W1 = np.array([[0.1, 0.2], [0.3, 0.1], [0.5, 0.0]])
    b1 = np.array([0.1, 0.1])
    W2 = np.array([[0.1], [0.2]])
    b2 = np.array([1.0])
    lr, alpha = 0.1, 0.1

    clf = NumpyMLPClassifier(solver="sgd", learning_rate_init=lr, alpha=alpha,
                             activation="logistic", random_state=1, hidden_layer_sizes=2,
                             momentum=0.0, dtype="float64")
    clf.partial_fit(x, [0], classes=[0, 1])  # builds the network
    clf.coefs_ = [W1, W2]
    clf.intercepts_ = [b1, b2]
    clf.partial_fit(x, [0])

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    h = sigmoid(x @ W1 + b1)
    out = sigmoid(h @ W2 + b2)
    d_out = out - 0.0  # target 0
    d_hid = (d_out @ W2.T) * h * (1 - h)
    expected = [W1 - lr * (x.T @ d_hid + alpha * W1), W2 - lr * (h.T @ d_out + alpha * W2)]
    expected_b = [b1 - lr * d_hid[0], b2 - lr * d_out[0]]
    for got, want in zip(clf.coefs_ + clf.intercepts_, expected + expected_b):
        assert_allclose(got, want, rtol=1e-12)
    # The worked example of scikit-learn's suite rounds to these numbers.
    assert_allclose(clf.coefs_[1].ravel(), [0.04706, 0.154089], atol=1e-3)
    h_new = sigmoid(x @ expected[0] + expected_b[0])
    p_new = sigmoid(h_new @ expected[1] + expected_b[1])[0, 0]
    assert clf.predict_proba(x)[0, 1] == pytest.approx(p_new, rel=1e-12)
    assert clf.predict_proba(x)[0, 1] == pytest.approx(0.739, abs=1e-3)


@pytest.mark.parametrize("X, y", SMALL_SETS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_lbfgs_classification(X, y, activation):
    clf = NumpyMLPClassifier(solver="lbfgs", hidden_layer_sizes=50, max_iter=150,
                             shuffle=True, random_state=1, activation=activation)
    quiet(clf.fit, X[:150], y[:150])
    pred = clf.predict(X[150:])
    assert clf.score(X[:150], y[:150]) > 0.95
    assert pred.shape == (len(X) - 150,)
    assert pred.dtype.kind == y.dtype.kind


@pytest.mark.parametrize("X, y", SMALL_SETS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_lbfgs_max_fun_limits_the_run(X, y, activation):
    clf = NumpyMLPClassifier(solver="lbfgs", hidden_layer_sizes=50, max_iter=150, max_fun=10,
                             random_state=1, activation=activation)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    assert clf.n_iter_ <= 10


@pytest.mark.parametrize("schedule", ["invscaling", "constant"])
def test_learning_rate_carries_over_warm_start(schedule):
    X = [[3, 2], [1, 6], [5, 6], [-2, -4]]
    y = [1, 1, 1, 0]
    clf = NumpyMLPClassifier(solver="sgd", hidden_layer_sizes=4, learning_rate=schedule,
                             max_iter=1, power_t=0.25, warm_start=True)
    quiet(clf.fit, X, y)
    before = clf._optimizer.learning_rate
    quiet(clf.fit, X, y)
    after = clf._optimizer.learning_rate
    if schedule == "constant":
        assert before == after
    else:
        # 8 samples seen over the two calls.
        assert after == pytest.approx(clf.learning_rate_init / (8 + 1) ** clf.power_t,
                                      rel=1e-15)


MULTILABEL_X, MULTILABEL_Y = make_multilabel_classification(n_samples=50, random_state=0,
                                                            return_indicator=True)


def test_multilabel_lbfgs():
    clf = NumpyMLPClassifier(solver="lbfgs", hidden_layer_sizes=50, alpha=1e-5, max_iter=150,
                             random_state=0, activation="logistic", learning_rate_init=0.2)
    quiet(clf.fit, MULTILABEL_X, MULTILABEL_Y)
    assert clf.score(MULTILABEL_X, MULTILABEL_Y) > 0.97


def test_multilabel_partial_fit():
    clf = NumpyMLPClassifier(solver="sgd", hidden_layer_sizes=50, max_iter=150, random_state=0,
                             activation="logistic", alpha=1e-5, learning_rate_init=0.2)
    for _ in range(100):
        clf.partial_fit(MULTILABEL_X, MULTILABEL_Y, classes=[0, 1, 2, 3, 4])
    assert clf.score(MULTILABEL_X, MULTILABEL_Y) > 0.9


def test_multilabel_early_stopping_is_not_stratified():
    clf = quiet(NumpyMLPClassifier(early_stopping=True, max_iter=30).fit, MULTILABEL_X,
                MULTILABEL_Y)
    assert clf.predict(MULTILABEL_X).shape == MULTILABEL_Y.shape


def test_partial_fit_rejects_different_classes():
    clf = NumpyMLPClassifier(solver="sgd")
    clf.partial_fit([[3, 2]], [0], classes=[0, 1])
    with pytest.raises(ValueError):
        clf.partial_fit([[3, 2]], [0], classes=[1, 2])


@pytest.mark.parametrize("X, y", SMALL_SETS)
def test_partial_fit_reaches_fit_predictions(X, y):
    fitted = NumpyMLPClassifier(solver="sgd", max_iter=100, random_state=1, tol=0, alpha=1e-5,
                                learning_rate_init=0.2)
    quiet(fitted.fit, X, y)
    partial = NumpyMLPClassifier(solver="sgd", random_state=1, alpha=1e-5,
                                 learning_rate_init=0.2)
    for _ in range(100):
        partial.partial_fit(X, y, classes=np.unique(y))
    assert_array_equal(fitted.predict(X), partial.predict(X))
    assert partial.score(X, y) > 0.95


def test_partial_fit_class_absent_from_first_batch():
    clf = NumpyMLPClassifier(random_state=0)
    clf.partial_fit([[1], [2], [3]], ["a", "b", "c"], classes=["a", "b", "c", "d"])
    clf.partial_fit([[4]], ["d"])
    assert clf.score([[1], [2], [3], [4]], ["a", "b", "c", "d"]) > 0


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_partial_fit_full_batch_equals_fit(momentum):
    # scikit-learn checks this on regression; a full batch makes the
    # per-call reshuffling of partial_fit irrelevant.
    X, y = X_MULTI, Y_MULTI
    common = dict(solver="sgd", activation="relu", random_state=1, learning_rate_init=0.01,
                  batch_size=len(X), momentum=momentum)
    fitted = quiet(NumpyMLPClassifier(max_iter=100, **common).fit, X, y)
    partial = NumpyMLPClassifier(**common)
    for _ in range(100):
        partial.partial_fit(X, y, classes=np.unique(y))
    assert_allclose(partial.predict_proba(X), fitted.predict_proba(X), rtol=1e-6, atol=1e-9)
    assert_array_equal(partial.predict(X), fitted.predict(X))
    assert partial.score(X, y) > 0.65


def test_partial_fit_errors():
    with pytest.raises(ValueError):
        NumpyMLPClassifier(solver="sgd").partial_fit([[3, 2], [1, 6]], [1, 0], classes=[2])
    assert not hasattr(NumpyMLPClassifier(solver="lbfgs"), "partial_fit")


def test_huge_inputs_never_leave_non_finite_weights():
    rng = np.random.RandomState(0)
    X = np.finfo(np.float64).max * rng.uniform(size=(10, 2))
    y = np.arange(10) % 2
    clf = NumpyMLPClassifier(dtype="float64")
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            clf.fit(X, y)
        except ValueError:
            pass
    assert all(np.all(np.isfinite(p)) for p in model_params(clf))


def test_predict_proba_binary():
    X, y = X_BINARY[:50], Y_BINARY[:50]
    clf = quiet(NumpyMLPClassifier(hidden_layer_sizes=5, activation="logistic",
                                   random_state=1).fit, X, y)
    proba = clf.predict_proba(X)
    log_proba = clf.predict_log_proba(X)
    assert proba.shape == (50, 2)
    assert_same_argmax(proba, log_proba)
    assert_allclose(log_proba, np.log(proba), atol=1e-12)  # log_proba is from the logits
    assert roc_auc_score(y, proba[:, 1]) == 1.0


def test_predict_proba_multiclass():
    X, y = X_MULTI[:10], Y_MULTI[:10]
    clf = quiet(NumpyMLPClassifier(hidden_layer_sizes=5).fit, X, y)
    proba = clf.predict_proba(X)
    log_proba = clf.predict_log_proba(X)
    assert proba.shape == (10, len(np.unique(y)))
    assert_same_argmax(proba, log_proba)
    assert_allclose(log_proba, np.log(proba), atol=1e-12)  # log_proba is from the logits


def test_predict_proba_multilabel():
    clf = NumpyMLPClassifier(solver="lbfgs", hidden_layer_sizes=30, random_state=0)
    quiet(clf.fit, MULTILABEL_X, MULTILABEL_Y)
    proba = clf.predict_proba(MULTILABEL_X)
    assert proba.shape == MULTILABEL_Y.shape
    assert_array_equal(proba > 0.5, MULTILABEL_Y)
    log_proba = clf.predict_log_proba(MULTILABEL_X)
    deviation = proba.sum(axis=1) - 1
    assert deviation @ deviation > 1e-10  # not a softmax
    assert_same_argmax(proba, log_proba)
    assert_allclose(log_proba, np.log(proba), atol=1e-12)  # log_proba is from the logits


def test_shuffle_matters_and_is_reproducible():
    X, y = X_BINARY[:50], Y_BINARY[:50]

    def one_epoch(shuffle):
        clf = NumpyMLPClassifier(hidden_layer_sizes=1, max_iter=1, batch_size=1,
                                 random_state=0, shuffle=shuffle)
        return quiet(clf.fit, X, y).coefs_[0]

    for shuffle in (True, False):
        assert_array_equal(one_epoch(shuffle), one_epoch(shuffle))
    assert not np.array_equal(one_epoch(True), one_epoch(False))


@pytest.mark.parametrize("container", [sp.csr_matrix, sp.csr_array])
def test_sparse_matrices_lbfgs(container):
    X, y = X_BINARY[:50], Y_BINARY[:50]
    Xs = container(X)
    clf = NumpyMLPClassifier(solver="lbfgs", hidden_layer_sizes=15, random_state=1)
    quiet(clf.fit, X, y)
    dense_pred = clf.predict(X)
    quiet(clf.fit, Xs, y)
    assert_array_equal(clf.predict(Xs), dense_pred)
    assert_array_equal(clf.predict(X), clf.predict(Xs))


def test_tolerance_stops_training():
    clf = NumpyMLPClassifier(tol=0.5, max_iter=3000, solver="sgd")
    clf.fit([[3, 2], [1, 6]], [1, 0])
    assert clf.n_iter_ < clf.max_iter


def test_verbose_sgd(capsys):
    X, y = [[3, 2], [1, 6]], [1, 0]
    clf = NumpyMLPClassifier(solver="sgd", max_iter=2, verbose=10, hidden_layer_sizes=2)
    quiet(clf.fit, X, y)
    clf.partial_fit(X, y)
    assert "Iteration" in capsys.readouterr().out


def test_early_stopping_sgd():
    X, y = X_BINARY[:100], Y_BINARY[:100]
    tol = 0.2
    clf = NumpyMLPClassifier(tol=tol, max_iter=3000, solver="sgd", early_stopping=True)
    clf.fit(X, y)
    assert clf.n_iter_ < clf.max_iter
    assert clf.best_loss_ is None
    assert isinstance(clf.validation_scores_, list)
    scores = clf.validation_scores_
    assert max(scores) == clf.best_validation_score_
    assert clf.best_validation_score_ + tol > scores[-2]
    assert clf.best_validation_score_ + tol > scores[-1]

    clf = NumpyMLPClassifier(tol=tol, max_iter=3000, solver="sgd", early_stopping=False)
    clf.fit(X, y)
    assert clf.validation_scores_ is None
    assert clf.best_validation_score_ is None
    assert clf.best_loss_ is not None


def test_adaptive_learning_rate_decays_to_stop():
    clf = NumpyMLPClassifier(tol=0.5, max_iter=3000, solver="sgd", learning_rate="adaptive")
    clf.fit([[3, 2], [1, 6]], [1, 0])
    assert clf.n_iter_ < clf.max_iter
    assert clf._optimizer.learning_rate < 1e-6


def test_warm_start_class_checks():
    y_2 = np.array([0] * 75 + [1] * 75)
    y_3 = np.array([0] * 40 + [1] * 40 + [2] * 70)
    y_3_other = np.array([0] * 50 + [1] * 50 + [3] * 50)
    y_4 = np.array([0] * 37 + [1] * 37 + [2] * 38 + [3] * 38)
    y_5 = np.array([0] * 30 + [1] * 30 + [2] * 30 + [3] * 30 + [4] * 30)

    def make():
        return NumpyMLPClassifier(hidden_layer_sizes=2, solver="lbfgs", warm_start=True,
                                  random_state=42, tol=1e-2)

    clf = quiet(make().fit, X_IRIS, Y_IRIS)
    quiet(clf.fit, X_IRIS, Y_IRIS)
    quiet(clf.fit, X_IRIS, y_3)  # same classes, other proportions: fine

    for y_other in (y_2, y_3_other, y_4, y_5):
        clf = quiet(make().fit, X_IRIS, Y_IRIS)
        message = ("warm_start can only be used where `y` has the same classes as in the "
                   "previous call to fit. Previously got [0 1 2], `y` has %s"
                   % np.unique(y_other))
        with pytest.raises(ValueError, match=re.escape(message)):
            clf.fit(X_IRIS, y_other)


def test_warm_start_runs_max_iter_each_call():
    clf = NumpyMLPClassifier(hidden_layer_sizes=2, solver="sgd", warm_start=True, max_iter=3)
    quiet(clf.fit, X_IRIS, Y_IRIS)
    assert clf.n_iter_ == 3
    quiet(clf.fit, X_IRIS, Y_IRIS)
    assert clf.n_iter_ == 3


def _implied_no_improvement_count(curve, tol):
    best, count = np.inf, 0
    for loss in curve:
        count = count + 1 if loss > best - tol else 0
        best = min(best, loss)
    return count


@pytest.mark.parametrize("n_iter_no_change", [2, 5, 10, 50, 100])
def test_n_iter_no_change(n_iter_no_change):
    X, y = X_BINARY[:100], Y_BINARY[:100]
    tol = 0.01
    clf = NumpyMLPClassifier(tol=tol, max_iter=3000, solver="sgd",
                             n_iter_no_change=n_iter_no_change)
    clf.fit(X, y)
    assert clf.n_iter_ < 3000
    # The stopping rule, read back from the public loss curve.
    assert _implied_no_improvement_count(clf.loss_curve_, tol) == n_iter_no_change + 1


def test_n_iter_no_change_inf_runs_to_max_iter():
    X, y = X_BINARY[:100], Y_BINARY[:100]
    clf = NumpyMLPClassifier(tol=1e9, max_iter=3000, solver="sgd", n_iter_no_change=np.inf)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    assert clf.n_iter_ == 3000
    assert _implied_no_improvement_count(clf.loss_curve_, 1e9) == clf.n_iter_ - 1


def test_early_stopping_split_is_stratified():
    clf = NumpyMLPClassifier(early_stopping=True)
    # scikit-learn's wording differs between versions; the stratified split refuses.
    with pytest.raises(ValueError, match=r"least populated class"):
        clf.fit([[1, 2], [2, 3], [3, 4], [4, 5]], [0, 0, 0, 1])


def test_early_stopping_with_string_labels():
    X, y = make_classification(n_samples=200, n_features=10, n_classes=3, n_informative=5,
                               random_state=42)
    y = np.array(["class_a", "class_b", "class_c"], dtype=object)[y]
    clf = quiet(NumpyMLPClassifier(early_stopping=True, max_iter=50, random_state=42).fit, X, y)
    assert clf.validation_scores_ is not None
    assert len(clf.validation_scores_) == clf.n_iter_
    assert np.all(np.isfinite(clf.validation_scores_))


def test_float32_and_float64_inputs_give_the_same_model_in_float64():
    X, y = X_BINARY_RAW, Y_BINARY_RAW
    params = dict(alpha=1e-5, hidden_layer_sizes=(5, 3), random_state=1, max_iter=100, tol=1e-1,
                  dtype="float64")
    m64 = quiet(NumpyMLPClassifier(**params).fit, X[:300], y[:300])
    m32 = quiet(NumpyMLPClassifier(**params).fit, X[:300].astype(np.float32), y[:300])
    assert m64.dtype_ == m32.dtype_ == "float64"
    assert_array_equal(m64.predict(X[300:]), m32.predict(X[300:].astype(np.float32)))
    # Integer pixels are exact in float32: the same computation, bit for bit.
    assert_array_equal(m64.predict_proba(X[300:]),
                       m32.predict_proba(X[300:].astype(np.float32)))


@pytest.mark.parametrize("input_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("dtype", ["float32", "float64", "auto"])
def test_weights_are_in_the_compute_dtype(input_dtype, dtype):
    # coefs_ and intercepts_ are in the compute dtype (dtype_); with 'auto'
    # that follows float32 input as MLPClassifier's weights do (on a problem
    # this small, 'auto' computes float64 input in float64), and
    # predict_proba is float64 either way.
    X, y = X_BINARY_RAW.astype(input_dtype), Y_BINARY_RAW
    params = dict(alpha=1e-5, hidden_layer_sizes=(5, 3), random_state=1, max_iter=50, tol=1e-1)
    ours = quiet(NumpyMLPClassifier(dtype=dtype, **params).fit, X[:300], y[:300])
    expected = np.dtype(input_dtype).name if dtype == "auto" else dtype
    assert ours.dtype_ == expected
    assert all(c.dtype == np.dtype(expected) for c in ours.coefs_)
    assert all(b.dtype == np.dtype(expected) for b in ours.intercepts_)
    assert ours.predict_proba(X[300:]).dtype == np.float64
    assert ours.predict(X[300:]).dtype == y.dtype
    theirs = quiet(MLPClassifier(**params).fit, X[:300], y[:300])
    assert all(c.dtype == input_dtype for c in theirs.coefs_)


def test_float32_input_with_float64_dtype_gives_float64_weights():
    X = X_DIGITS[:200].astype(np.float32)
    ours = quiet(NumpyMLPClassifier(hidden_layer_sizes=(8,), max_iter=3, dtype="float64",
                                    random_state=0).fit, X, Y_DIGITS[:200])
    theirs = quiet(MLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0).fit,
                   X, Y_DIGITS[:200])
    assert ours.coefs_[0].dtype == np.float64
    assert theirs.coefs_[0].dtype == np.float32


def test_reload_with_joblib_and_keep_training(tmp_path):
    clf = NumpyMLPClassifier(hidden_layer_sizes=(42,), random_state=42, learning_rate_init=0.01,
                             max_iter=200)
    quiet(clf.fit, [[0.0], [2.0]], [0, 1])
    assert clf.predict([[2.0]])[0] == 1
    path = tmp_path / "mlp.joblib"
    joblib.dump(clf, path)
    loaded = joblib.load(path)
    assert_array_equal(loaded.predict_proba([[0.0], [2.0]]), clf.predict_proba([[0.0], [2.0]]))
    for _ in range(200):
        loaded.partial_fit([[2.0]], [0])
    assert loaded.predict([[2.0]])[0] == 0
    assert not np.array_equal(loaded.coefs_[0], clf.coefs_[0])


def test_feature_names_kept_with_early_stopping():
    pd = pytest.importorskip("pandas")
    rng = np.random.RandomState(0)
    X = pd.DataFrame(rng.randn(10, 2), columns=["colname_a", "colname_b"])
    y = pd.Series(np.full(10, 1), name="colname_y")
    clf = NumpyMLPClassifier(early_stopping=True, validation_fraction=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # "X does not have valid feature names"
        quiet(clf.fit, X, y)
        assert_array_equal(clf.feature_names_in_, ["colname_a", "colname_b"])
        clf.predict(X)  # validation split and prediction both keep the names
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(X.rename(columns={"colname_a": "other"}))


def test_warm_start_with_early_stopping_extends_scores():
    clf = NumpyMLPClassifier(max_iter=10, random_state=0, warm_start=True, early_stopping=True)
    quiet(clf.fit, X_IRIS, Y_IRIS)
    n_scores = len(clf.validation_scores_)
    clf.set_params(max_iter=20)
    quiet(clf.fit, X_IRIS, Y_IRIS)
    assert len(clf.validation_scores_) > n_scores


@pytest.mark.parametrize("solver", ["sgd", "adam", "lbfgs"])
def test_warm_start_stops_at_max_iter(solver):
    clf = NumpyMLPClassifier(solver=solver, warm_start=True, early_stopping=False, max_iter=10,
                             n_iter_no_change=np.inf, random_state=0)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X_IRIS, Y_IRIS)
    assert clf.n_iter_ == 10
    clf.set_params(max_iter=20)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X_IRIS, Y_IRIS)
    assert clf.n_iter_ == 20


def test_partial_fit_after_early_stopping_fit_raises():
    clf = quiet(NumpyMLPClassifier(early_stopping=True, random_state=0).fit, X_IRIS, Y_IRIS)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping=True"):
        clf.partial_fit(X_IRIS, Y_IRIS)


def test_large_step_with_early_stopping_on_iris():
    # scikit-learn's regressor diverges here and records NaN validation
    # scores.  The classifier's cross-entropy stays finite; both estimators
    # record the same (finite) validation scores.
    params = dict(hidden_layer_sizes=100, activation="identity", solver="sgd", alpha=1e-4,
                  learning_rate="constant", learning_rate_init=1, shuffle=True, max_iter=20,
                  early_stopping=True, n_iter_no_change=10, random_state=0)
    with np.errstate(all="ignore"):
        ours = quiet(NumpyMLPClassifier(**params).fit, X_IRIS, Y_IRIS)
        theirs = quiet(MLPClassifier(**params).fit, X_IRIS, Y_IRIS)
    assert all(isinstance(s, float) and np.isfinite(s) for s in ours.validation_scores_)
    assert ours.validation_scores_ == theirs.validation_scores_


def test_unit_sample_weight_with_early_stopping():
    X, y = make_classification(n_samples=100, n_features=4, n_informative=2, random_state=42)
    params = dict(hidden_layer_sizes=10, solver="adam", early_stopping=True, tol=1e-2,
                  learning_rate_init=0.01, batch_size=10, random_state=42)
    weighted = quiet(NumpyMLPClassifier(**params).fit, X, y, sample_weight=np.ones(len(y)))
    plain = quiet(NumpyMLPClassifier(**params).fit, X, y)
    assert_allclose(weighted.predict_proba(X), plain.predict_proba(X), rtol=1e-6)
    assert_array_equal(weighted.predict(X), plain.predict(X))


def test_too_small_validation_set():
    rng = np.random.RandomState(0)
    clf = NumpyMLPClassifier(early_stopping=True, random_state=0)
    with pytest.raises(ValueError, match="The validation set is too small"):
        clf.fit(rng.rand(3, 5), [0, 1, 2])


# =========================================================================
# Part 2: side by side with MLPClassifier (float64, same random_state).
# =========================================================================
RTOL = 1e-9


def _side_by_side(X, y, fit_kwargs=None, **params):
    fit_kwargs = fit_kwargs or {}
    theirs = quiet(MLPClassifier(**params).fit, X, y, **fit_kwargs)
    ours = quiet(NumpyMLPClassifier(dtype="float64", **params).fit, X, y, **fit_kwargs)
    return ours, theirs


def assert_same_training(ours, theirs, X, rtol=RTOL):
    assert ours.n_iter_ == theirs.n_iter_
    assert len(ours.loss_curve_) == len(theirs.loss_curve_)
    assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol)
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=rtol)
    assert ours.t_ == theirs.t_
    for a, b in zip(model_params(ours), model_params(theirs)):
        assert a.shape == b.shape
        assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    assert_array_equal(ours.predict(X), theirs.predict(X))
    assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=1e-7, atol=1e-12)
    assert_array_equal(ours.classes_, theirs.classes_)
    assert ours.n_layers_ == theirs.n_layers_
    assert ours.n_outputs_ == theirs.n_outputs_
    assert ours.out_activation_ == theirs.out_activation_


X_PAR, Y_PAR = X_DIGITS[:600], Y_DIGITS[:600]


@pytest.mark.parametrize("params", [
    pytest.param(dict(solver="adam"), id="adam"),
    pytest.param(dict(solver="adam", batch_size=64, alpha=1e-2, beta_1=0.8, beta_2=0.99,
                      epsilon=1e-6, learning_rate_init=0.003), id="adam-options"),
    pytest.param(dict(solver="sgd", learning_rate_init=0.1, nesterovs_momentum=True),
                 id="sgd-nesterov"),
    pytest.param(dict(solver="sgd", learning_rate_init=0.1, nesterovs_momentum=False),
                 id="sgd-momentum"),
    pytest.param(dict(solver="sgd", learning_rate_init=0.1, momentum=0.0), id="sgd-plain"),
    pytest.param(dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5,
                      power_t=0.3), id="sgd-invscaling"),
    pytest.param(dict(solver="sgd", learning_rate="adaptive", learning_rate_init=0.1, tol=0.5,
                      n_iter_no_change=2), id="sgd-adaptive"),
    pytest.param(dict(solver="adam", shuffle=False), id="adam-no-shuffle"),
    pytest.param(dict(solver="adam", activation="tanh", hidden_layer_sizes=(16, 8)),
                 id="tanh-two-layers"),
    pytest.param(dict(solver="adam", activation="logistic"), id="logistic"),
    pytest.param(dict(solver="sgd", activation="identity", learning_rate_init=0.01),
                 id="identity"),
    pytest.param(dict(solver="adam", tol=0.05, n_iter_no_change=2, max_iter=100),
                 id="adam-converges"),
])
def test_same_training_as_sklearn(params):
    params = {"hidden_layer_sizes": (24,), "max_iter": 12, "random_state": 0, **params}
    ours, theirs = _side_by_side(X_PAR, Y_PAR, **params)
    assert_same_training(ours, theirs, X_DIGITS)
    assert ours.best_loss_ == pytest.approx(theirs.best_loss_, rel=RTOL)


def test_sgd_adaptive_schedule_same_final_rate_as_sklearn():
    params = dict(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive",
                  learning_rate_init=0.1, tol=0.5, n_iter_no_change=2, max_iter=40,
                  random_state=0)
    ours, theirs = _side_by_side(X_PAR, Y_PAR, **params)
    assert_same_training(ours, theirs, X_PAR)
    assert ours._optimizer.learning_rate == pytest.approx(theirs._optimizer.learning_rate,
                                                          rel=1e-12)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_same_early_stopping_as_sklearn(solver):
    params = dict(hidden_layer_sizes=(24,), solver=solver, max_iter=100, early_stopping=True,
                  n_iter_no_change=3, learning_rate_init=0.01 if solver == "adam" else 0.1,
                  validation_fraction=0.2, random_state=0)
    ours, theirs = _side_by_side(X_PAR, Y_PAR, **params)
    assert ours.n_iter_ < 100, "the scenario should stop early"
    assert ours.validation_scores_ == theirs.validation_scores_
    assert ours.best_validation_score_ == theirs.best_validation_score_
    assert ours.best_loss_ is None and theirs.best_loss_ is None
    assert_same_training(ours, theirs, X_DIGITS)


def test_same_early_stopping_binary_stratified_as_sklearn():
    params = dict(hidden_layer_sizes=(8,), max_iter=40, early_stopping=True, n_iter_no_change=3,
                  learning_rate_init=0.01, random_state=3)
    ours, theirs = _side_by_side(X_BINARY, Y_BINARY, **params)
    assert ours.validation_scores_ == theirs.validation_scores_
    assert_same_training(ours, theirs, X_BINARY)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_same_warm_start_as_sklearn(solver):
    params = dict(hidden_layer_sizes=(24,), solver=solver, max_iter=5, warm_start=True,
                  random_state=0, learning_rate_init=0.01)
    ours = NumpyMLPClassifier(dtype="float64", **params)
    theirs = MLPClassifier(**params)
    for max_iter in (5, 3, 4):
        for clf in (ours, theirs):
            clf.set_params(max_iter=max_iter)
            quiet(clf.fit, X_PAR, Y_PAR)
        assert_same_training(ours, theirs, X_DIGITS)
    assert len(ours.loss_curve_) == 12


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("shuffle", [True, False])
def test_same_partial_fit_as_sklearn(solver, shuffle):
    params = dict(hidden_layer_sizes=(24,), solver=solver, shuffle=shuffle, random_state=0,
                  learning_rate_init=0.01, batch_size=100)
    ours = NumpyMLPClassifier(dtype="float64", **params)
    theirs = MLPClassifier(**params)
    chunks = np.array_split(np.arange(len(Y_PAR)), 3)
    for epoch in range(3):
        for rows in chunks:
            for clf in (ours, theirs):
                clf.partial_fit(X_PAR[rows], Y_PAR[rows], classes=np.arange(10))
    assert_same_training(ours, theirs, X_DIGITS)
    assert len(ours.loss_curve_) == 9


def test_same_partial_fit_after_fit_as_sklearn():
    params = dict(hidden_layer_sizes=(16,), max_iter=4, random_state=0)
    ours, theirs = _side_by_side(X_PAR, Y_PAR, **params)
    for clf in (ours, theirs):
        clf.partial_fit(X_PAR[:300], Y_PAR[:300])
        clf.partial_fit(X_PAR[300:], Y_PAR[300:])
    assert_same_training(ours, theirs, X_DIGITS)


def test_same_binary_training_as_sklearn():
    ours, theirs = _side_by_side(X_BINARY, Y_BINARY, hidden_layer_sizes=(8,), max_iter=15,
                                 random_state=0)
    assert_same_training(ours, theirs, X_BINARY)
    assert ours.out_activation_ == "logistic"


def test_same_multilabel_training_as_sklearn():
    X, Y = make_multilabel_classification(n_samples=150, n_classes=4, random_state=0)
    ours, theirs = _side_by_side(X, Y, hidden_layer_sizes=(16,), max_iter=15, random_state=0,
                                 learning_rate_init=0.01)
    assert_same_training(ours, theirs, X)


@_PEER_1_7
def test_same_string_label_training_as_sklearn():
    labels = np.array(list("abcdefghij"), dtype=object)[Y_PAR]
    ours, theirs = _side_by_side(X_PAR, labels, hidden_layer_sizes=(16,), max_iter=6,
                                 random_state=0, early_stopping=True)
    assert_same_training(ours, theirs, X_PAR)
    assert ours.validation_scores_ == theirs.validation_scores_


@_PEER_1_7
def test_same_weighted_training_as_sklearn():
    rng = np.random.RandomState(0)
    sw = rng.uniform(0.2, 3.0, len(Y_PAR))
    ours, theirs = _side_by_side(X_PAR, Y_PAR, fit_kwargs={"sample_weight": sw},
                                 hidden_layer_sizes=(16,), max_iter=8, random_state=0)
    assert_same_training(ours, theirs, X_PAR)


@_PEER_1_7
def test_early_stopping_scores_are_weighted_as_sklearn_weights_them():
    """MLPClassifier weights its validation accuracy with sample_weight_val;
    a validation score that ignored the weights would differ here, where
    the weights are far from uniform and the split's accuracy is not 1."""
    rng = np.random.RandomState(3)
    sw = np.where(rng.rand(len(Y_PAR)) < 0.3, 8.0, 0.25)
    ours, theirs = _side_by_side(X_PAR, Y_PAR, fit_kwargs={"sample_weight": sw},
                                 hidden_layer_sizes=(8,), max_iter=6, random_state=0,
                                 early_stopping=True, validation_fraction=0.3)
    assert_same_training(ours, theirs, X_PAR)
    assert_allclose(ours.validation_scores_, theirs.validation_scores_, rtol=1e-12)
    assert max(ours.validation_scores_) < 1.0
    unweighted = quiet(NumpyMLPClassifier(dtype="float64", hidden_layer_sizes=(8,), max_iter=6,
                                          random_state=0, early_stopping=True,
                                          validation_fraction=0.3).fit, X_PAR, Y_PAR)
    assert unweighted.validation_scores_ != ours.validation_scores_


@pytest.mark.parametrize("container", [sp.csr_matrix, sp.csc_matrix])
def test_same_sparse_training_as_sklearn(container):
    ours, theirs = _side_by_side(container(X_PAR), Y_PAR, hidden_layer_sizes=(16,), max_iter=6,
                                 random_state=0)
    assert_same_training(ours, theirs, container(X_PAR))


@pytest.mark.parametrize("hidden", [[], (7,), np.array([9, 5]), 6])
def test_same_architectures_as_sklearn(hidden):
    ours, theirs = _side_by_side(X_PAR, Y_PAR, hidden_layer_sizes=hidden, max_iter=5,
                                 random_state=0)
    assert_same_training(ours, theirs, X_PAR)


def test_same_initial_weights_as_sklearn():
    # One full-batch epoch: its loss is computed at the initial weights, before
    # the only update, so equal losses mean equal initialisations.
    params = dict(hidden_layer_sizes=(11, 7), max_iter=1, batch_size=600, random_state=5,
                  activation="logistic")
    ours, theirs = _side_by_side(X_PAR, Y_PAR, **params)
    assert ours.loss_curve_[0] == pytest.approx(theirs.loss_curve_[0], rel=1e-12)
    assert_same_training(ours, theirs, X_PAR)


def test_same_lbfgs_training_as_sklearn():
    params = dict(solver="lbfgs", hidden_layer_sizes=(16,), max_iter=40, random_state=0)
    ours, theirs = _side_by_side(X_PAR, Y_PAR, **params)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.loss_ == pytest.approx(theirs.loss_, rel=1e-6)
    assert_array_equal(ours.predict(X_DIGITS), theirs.predict(X_DIGITS))
    assert_allclose(ours.predict_proba(X_DIGITS), theirs.predict_proba(X_DIGITS), rtol=1e-4,
                    atol=1e-8)


def test_same_score_and_predict_log_proba_as_sklearn():
    ours, theirs = _side_by_side(X_PAR, Y_PAR, hidden_layer_sizes=(16,), max_iter=8,
                                 random_state=0)
    assert ours.score(X_DIGITS, Y_DIGITS) == theirs.score(X_DIGITS, Y_DIGITS)
    assert_allclose(ours.predict_log_proba(X_DIGITS), theirs.predict_log_proba(X_DIGITS),
                    rtol=1e-7, atol=1e-9)


def test_same_parameters_and_defaults_as_sklearn():
    ours = NumpyMLPClassifier().get_params()
    theirs = MLPClassifier().get_params()
    extra = {"dropout": 0.0, "class_weight": None, "dtype": "auto", "weight_init": "glorot",
             "lr_schedule": None, "batch_norm": False, "augment": None, "image_shape": "auto"}
    assert {k: v for k, v in ours.items() if k not in extra} == theirs
    assert {k: ours[k] for k in extra} == extra
