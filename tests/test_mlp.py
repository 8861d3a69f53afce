"""Behaviour of ``skdigits.NumpyMLPClassifier`` on small data.

Everything here runs on ``load_digits`` (scaled to [0, 1]) or on tiny
synthetic sets with small networks and few epochs, so the file runs in
seconds.  Comparisons that must be exact use ``dtype='float64'``.
"""

import os
import pickle
import re
import signal
import threading
import time
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.datasets import load_digits, make_multilabel_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import recall_score
from sklearn.model_selection import train_test_split
from sklearn.utils.class_weight import compute_sample_weight
from threadpoolctl import threadpool_info, threadpool_limits

from skdigits import NumpyMLPClassifier
from support import model_params
from skdigits.nn import PREDICT_CHUNK
from skdigits.training import TrainingDiverged

pytestmark = pytest.mark.usefixtures("one_blas_thread")

_DIGITS_X, DIGITS_Y = load_digits(return_X_y=True)
DIGITS_X = _DIGITS_X / 16.0
CLASSES = np.arange(10)
X_TRAIN, X_TEST, Y_TRAIN, Y_TEST = train_test_split(
    DIGITS_X, DIGITS_Y, test_size=0.25, random_state=0, stratify=DIGITS_Y
)
# A small slice for the many tests that only need "some" data.
X_SMALL, Y_SMALL = DIGITS_X[:400], DIGITS_Y[:400]


def assert_same_params(a, b):
    pa, pb = model_params(a), model_params(b)
    assert len(pa) == len(pb)
    for x, y in zip(pa, pb):
        assert_array_equal(x, y)


def params_differ(a, b):
    return any(not np.array_equal(x, y) for x, y in zip(model_params(a), model_params(b)))


def quiet_fit(clf, *args, **kwargs):
    """fit() with ConvergenceWarning silenced (short runs never converge)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(*args, **kwargs)


# --------------------------------------------------------------------- learns
def test_learns_digits_held_out():
    clf = NumpyMLPClassifier(hidden_layer_sizes=(64,), max_iter=50, random_state=0)
    quiet_fit(clf, X_TRAIN, Y_TRAIN)
    assert clf.score(X_TEST, Y_TEST) >= 0.95
    assert clf.n_iter_ <= 50
    assert len(clf.loss_curve_) == clf.n_iter_
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.loss_ == clf.loss_curve_[-1]
    assert clf.n_features_in_ == 64
    assert clf.n_layers_ == 3
    assert clf.n_outputs_ == 10
    assert clf.out_activation_ == "softmax"
    assert_array_equal(clf.classes_, CLASSES)
    assert [c.shape for c in clf.coefs_] == [(64, 64), (64, 10)]
    assert [b.shape for b in clf.intercepts_] == [(64,), (10,)]


def test_fitted_attributes_documented_types():
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(8, 6), max_iter=3, random_state=0),
                    X_SMALL, Y_SMALL)
    assert clf.n_layers_ == 4
    assert isinstance(clf.loss_curve_, list)
    assert clf.validation_scores_ is None
    assert clf.best_validation_score_ is None
    assert clf.best_loss_ == min(clf.loss_curve_)
    assert clf.t_ == 3 * len(Y_SMALL)
    assert clf.dtype_ in ("float32", "float64")


# ------------------------------------------------------ parameter validation
@pytest.mark.parametrize(
    "params, name",
    [
        ({"activation": "softplus"}, "activation"),
        ({"alpha": -1.0}, "alpha"),
        ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes"),
        ({"hidden_layer_sizes": 0}, "hidden_layer_sizes"),
        ({"hidden_layer_sizes": (10, -3)}, "hidden_layer_sizes"),
        ({"hidden_layer_sizes": (8,), "dropout": [0.1, 0.2]}, "dropout"),
        ({"hidden_layer_sizes": (8, 8), "dropout": [0.1]}, "dropout"),
        ({"hidden_layer_sizes": (8, 8), "dropout": [0.1, 1.5]}, "dropout"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"dtype": "float16"}, "dtype"),
        ({"dtype": np.float32}, "dtype"),
        ({"weight_init": "xavier"}, "weight_init"),
        ({"solver": "newton"}, "solver"),
        ({"learning_rate": "cosine"}, "learning_rate"),
        ({"learning_rate_init": 0.0}, "learning_rate_init"),
        ({"class_weight": "auto"}, "class_weight"),
        ({"max_iter": 0}, "max_iter"),
        ({"momentum": 1.5}, "momentum"),
        ({"beta_1": 1.0}, "beta_1"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_invalid_parameters_raise_value_error_naming_them(params, name):
    clf = NumpyMLPClassifier(**{"max_iter": 2, **params})
    with pytest.raises(ValueError, match=name):
        clf.fit(X_SMALL[:50], Y_SMALL[:50])


@pytest.mark.parametrize("dropout, rates", [
    (0.0, []), (0.25, [0.25, 0.25]), ([0.1, 0.0], [0.1]), ((0.5, 0.2), [0.5, 0.2]),
    (np.array([0.3, 0.3]), [0.3, 0.3]),
])
def test_valid_dropout_forms_give_one_dropout_layer_per_nonzero_rate(dropout, rates):
    from skdigits.nn import Dropout

    clf = NumpyMLPClassifier(hidden_layer_sizes=(8, 8), dropout=dropout, max_iter=1,
                             random_state=0)
    quiet_fit(clf, X_SMALL[:60], Y_SMALL[:60])
    assert [layer.rate for layer in clf._network.layers if isinstance(layer, Dropout)] == rates
    assert np.all(np.isfinite(clf.predict_proba(X_SMALL[:5])))


# ---------------------------------------------------- fit versus partial_fit
@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_fit_one_epoch_equals_one_partial_fit(solver, shuffle):
    common = dict(hidden_layer_sizes=(16,), solver=solver, shuffle=shuffle,
                  random_state=0, dtype="float64")
    fitted = quiet_fit(NumpyMLPClassifier(max_iter=1, **common), X_SMALL, Y_SMALL)
    partial = NumpyMLPClassifier(**common).partial_fit(X_SMALL, Y_SMALL, classes=CLASSES)
    assert_same_params(fitted, partial)
    assert fitted.loss_curve_ == partial.loss_curve_
    assert fitted.n_iter_ == partial.n_iter_ == 1
    assert fitted.t_ == partial.t_ == len(Y_SMALL)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_repeated_partial_fit_equals_fit_without_shuffle(solver):
    # With shuffle=False the only randomness is the initialisation, both paths
    # keep one optimizer across epochs, and tol=0 with a large
    # n_iter_no_change lets fit run exactly k epochs.
    k = 5
    common = dict(hidden_layer_sizes=(16,), solver=solver, shuffle=False, random_state=0,
                  dtype="float64", learning_rate="invscaling" if solver == "sgd" else "constant",
                  learning_rate_init=0.05 if solver == "sgd" else 0.001)
    fitted = quiet_fit(NumpyMLPClassifier(max_iter=k, tol=0.0, n_iter_no_change=100, **common),
                       X_SMALL, Y_SMALL)
    assert fitted.n_iter_ == k
    partial = NumpyMLPClassifier(**common)
    for _ in range(k):
        partial.partial_fit(X_SMALL, Y_SMALL, classes=CLASSES)
    assert_same_params(fitted, partial)
    assert fitted.loss_curve_ == partial.loss_curve_
    assert fitted.t_ == partial.t_ == k * len(Y_SMALL)
    # n_iter_ counts the epochs of the last call.
    assert partial.n_iter_ == 1
    assert_array_equal(fitted.predict_proba(X_TEST), partial.predict_proba(X_TEST))


def test_partial_fit_needs_classes_on_first_call():
    with pytest.raises(ValueError, match="classes"):
        NumpyMLPClassifier(solver="sgd").partial_fit(X_SMALL, Y_SMALL)


def test_partial_fit_batches_with_subset_of_classes():
    clf = NumpyMLPClassifier(hidden_layer_sizes=(16,), random_state=0, learning_rate_init=0.01)
    for _ in range(15):
        for part in np.array_split(np.arange(len(Y_TRAIN)), 4):
            rows = part[Y_TRAIN[part] < 5] if part[0] == 0 else part
            clf.partial_fit(X_TRAIN[rows], Y_TRAIN[rows], classes=CLASSES)
    assert_array_equal(clf.classes_, CLASSES)
    assert clf.score(X_TEST, Y_TEST) > 0.85


def test_partial_fit_rejects_unknown_class():
    clf = NumpyMLPClassifier(hidden_layer_sizes=(4,))
    clf.partial_fit(X_SMALL[:20], Y_SMALL[:20] % 2, classes=[0, 1])
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X_SMALL[:20], Y_SMALL[:20] % 3)


# ---------------------------------------------------------------- warm_start
def test_warm_start_continues_from_previous_weights():
    params = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=0)
    warm = NumpyMLPClassifier(warm_start=True, **params)
    quiet_fit(warm, X_SMALL, Y_SMALL)
    first_curve = list(warm.loss_curve_)
    quiet_fit(warm, X_SMALL, Y_SMALL)
    # The curve goes on (it is not restarted) and n_iter_ counts the last call.
    assert len(warm.loss_curve_) == 10
    assert warm.loss_curve_[:5] == first_curve
    assert warm.n_iter_ == 5
    assert warm.t_ == 10 * len(Y_SMALL)
    # The second call starts where the first ended: its first epoch is far
    # below a cold start's first epoch and the curve keeps going down.
    assert warm.loss_curve_[5] < first_curve[0]
    assert warm.loss_curve_[-1] < first_curve[-1]

    cold = NumpyMLPClassifier(warm_start=False, **params)
    quiet_fit(cold, X_SMALL, Y_SMALL)
    assert cold.loss_curve_ == first_curve
    quiet_fit(cold, X_SMALL, Y_SMALL)
    assert cold.loss_curve_ == first_curve  # re-initialised: same run again


def test_warm_start_rejects_changed_architecture():
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(16,), max_iter=2, warm_start=True,
                                       random_state=0), X_SMALL, Y_SMALL)
    clf.set_params(hidden_layer_sizes=(8,))
    with pytest.raises(ValueError):
        quiet_fit(clf, X_SMALL, Y_SMALL)


def test_warm_start_rejects_changed_classes():
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(4,), max_iter=2, warm_start=True),
                    X_SMALL, Y_SMALL)
    with pytest.raises(ValueError, match="warm_start"):
        quiet_fit(clf, X_SMALL, Y_SMALL % 3)


# ------------------------------------------------------------ early stopping
ES_PARAMS = dict(hidden_layer_sizes=(16,), max_iter=200, early_stopping=True, random_state=0,
                 n_iter_no_change=5, learning_rate_init=0.01, dtype="float64")


@pytest.fixture(scope="module")
def early_stopped():
    return quiet_fit(NumpyMLPClassifier(**ES_PARAMS), DIGITS_X, DIGITS_Y)


def test_early_stopping_attributes(early_stopped):
    clf = early_stopped
    assert clf.n_iter_ < ES_PARAMS["max_iter"]
    assert len(clf.validation_scores_) == clf.n_iter_ == len(clf.loss_curve_)
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.best_loss_ is None
    # It stopped because the last n_iter_no_change + 1 epochs did not beat the
    # best score by tol.
    best_epoch = int(np.argmax(clf.validation_scores_))
    assert clf.n_iter_ - 1 - best_epoch >= ES_PARAMS["n_iter_no_change"]


def test_early_stopping_restores_best_weights(early_stopped):
    clf = early_stopped
    best_epoch = int(np.argmax(clf.validation_scores_))
    assert best_epoch + 1 < clf.n_iter_, "the scenario needs epochs after the best one"
    # The same run cut at the best epoch ends with the best weights.
    cut = quiet_fit(NumpyMLPClassifier(**{**ES_PARAMS, "max_iter": best_epoch + 1}),
                    DIGITS_X, DIGITS_Y)
    assert cut.validation_scores_ == clf.validation_scores_[: best_epoch + 1]
    assert_same_params(clf, cut)


def test_early_stopping_validation_split_matches_sklearn_procedure(early_stopped):
    # Glorot init draws W then b per layer from RandomState(random_state);
    # the validation split is then drawn from the same generator.  Scoring
    # the restored model on that split gives best_validation_score_.
    clf = early_stopped
    rng = np.random.RandomState(ES_PARAMS["random_state"])
    for fan_in, fan_out in [(64, 16), (16, 10)]:
        rng.uniform(-1, 1, (fan_in, fan_out))
        rng.uniform(-1, 1, fan_out)
    _, val = train_test_split(np.arange(len(DIGITS_Y)), random_state=rng,
                              test_size=ES_PARAMS.get("validation_fraction", 0.1))
    assert clf.score(DIGITS_X[val], DIGITS_Y[val]) == clf.best_validation_score_


def test_partial_fit_with_early_stopping_raises():
    clf = NumpyMLPClassifier(early_stopping=True, hidden_layer_sizes=(4,))
    with pytest.raises(ValueError, match="early_stopping"):
        clf.partial_fit(X_SMALL, Y_SMALL, classes=CLASSES)


def test_early_stopping_validation_fraction_too_small():
    with pytest.raises(ValueError, match="validation set is too small"):
        NumpyMLPClassifier(early_stopping=True).fit(DIGITS_X[:3], [0, 1, 2])


# ------------------------------------------------------------- sample_weight
@pytest.mark.parametrize("solver", ["lbfgs", "adam"])
def test_zero_sample_weight_equals_removing_rows(solver):
    rng = np.random.RandomState(0)
    X, y = DIGITS_X[:300], DIGITS_Y[:300]
    keep = rng.rand(len(y)) > 0.3
    common = dict(hidden_layer_sizes=(12,), solver=solver, random_state=0, dtype="float64",
                  shuffle=False, max_iter=25)
    # Full batch, so the zero-weight rows change no batch composition.
    weighted = quiet_fit(NumpyMLPClassifier(batch_size=len(y), **common), X, y,
                         sample_weight=keep.astype(float))
    removed = quiet_fit(NumpyMLPClassifier(batch_size=int(keep.sum()), **common),
                        X[keep], y[keep])
    for a, b in zip(model_params(weighted), model_params(removed)):
        assert_allclose(a, b, rtol=1e-7, atol=1e-10)
    assert_allclose(weighted.loss_curve_, removed.loss_curve_, rtol=1e-9)
    assert_array_equal(weighted.predict(X_TEST), removed.predict(X_TEST))


def test_sample_weight_changes_the_model():
    rng = np.random.RandomState(1)
    sw = rng.uniform(0.0, 2.0, len(Y_SMALL))
    common = dict(hidden_layer_sizes=(12,), random_state=0, max_iter=10)
    plain = quiet_fit(NumpyMLPClassifier(**common), X_SMALL, Y_SMALL)
    weighted = quiet_fit(NumpyMLPClassifier(**common), X_SMALL, Y_SMALL, sample_weight=sw)
    assert params_differ(plain, weighted)
    assert not np.allclose(plain.predict_proba(X_TEST), weighted.predict_proba(X_TEST))


def test_unit_sample_weight_is_no_weight():
    common = dict(hidden_layer_sizes=(12,), random_state=0, max_iter=10, dtype="float64")
    plain = quiet_fit(NumpyMLPClassifier(**common), X_SMALL, Y_SMALL)
    ones = quiet_fit(NumpyMLPClassifier(**common), X_SMALL, Y_SMALL,
                     sample_weight=np.ones(len(Y_SMALL)))
    for a, b in zip(model_params(plain), model_params(ones)):
        assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_invalid_sample_weights_raise():
    clf = NumpyMLPClassifier(hidden_layer_sizes=(4,), max_iter=1)
    with pytest.raises(ValueError):
        clf.fit(X_SMALL, Y_SMALL, sample_weight=-np.ones(len(Y_SMALL)))
    with pytest.raises(ValueError, match="zero"):
        clf.fit(X_SMALL, Y_SMALL, sample_weight=np.zeros(len(Y_SMALL)))
    with pytest.raises(ValueError):
        clf.fit(X_SMALL, Y_SMALL, sample_weight=np.ones(3))


# -------------------------------------------------------------- class_weight
def test_class_weight_dict_favours_the_class():
    common = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=8)
    plain = quiet_fit(NumpyMLPClassifier(**common), X_TRAIN, Y_TRAIN)
    heavy = quiet_fit(NumpyMLPClassifier(class_weight={8: 5.0}, **common), X_TRAIN, Y_TRAIN)
    p_plain, p_heavy = plain.predict(X_TEST), heavy.predict(X_TEST)
    assert np.mean(p_heavy == 8) > np.mean(p_plain == 8)
    assert (recall_score(Y_TEST, p_heavy, average=None)[8]
            > recall_score(Y_TEST, p_plain, average=None)[8])


def test_class_weight_balanced_equals_balanced_sample_weight():
    # An imbalanced subset: most 0s and 1s dropped.
    rows = np.flatnonzero((DIGITS_Y > 1) | (np.arange(len(DIGITS_Y)) % 6 == 0))[:500]
    X, y = DIGITS_X[rows], DIGITS_Y[rows]
    common = dict(hidden_layer_sizes=(12,), random_state=0, max_iter=8, dtype="float64")
    balanced = quiet_fit(NumpyMLPClassifier(class_weight="balanced", **common), X, y)
    weighted = quiet_fit(NumpyMLPClassifier(**common), X, y,
                         sample_weight=compute_sample_weight("balanced", y))
    assert_same_params(balanced, weighted)
    assert balanced.loss_curve_ == weighted.loss_curve_


def test_class_weight_multiplies_sample_weight():
    rng = np.random.RandomState(0)
    sw = rng.uniform(0.5, 1.5, len(Y_SMALL))
    common = dict(hidden_layer_sizes=(12,), random_state=0, max_iter=5, dtype="float64")
    both = quiet_fit(NumpyMLPClassifier(class_weight={3: 4.0}, **common), X_SMALL, Y_SMALL,
                     sample_weight=sw)
    folded = quiet_fit(NumpyMLPClassifier(**common), X_SMALL, Y_SMALL,
                       sample_weight=sw * np.where(Y_SMALL == 3, 4.0, 1.0))
    assert_same_params(both, folded)


def test_class_weight_with_string_labels():
    labels = np.array(list("abcdefghij"))[Y_SMALL]
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0,
                                       class_weight={"c": 3.0}), X_SMALL, labels)
    assert set(clf.predict(X_SMALL)) <= set("abcdefghij")
    quiet_fit(clf.set_params(class_weight="balanced"), X_SMALL, labels)


def test_class_weight_balanced_with_partial_fit_raises():
    clf = NumpyMLPClassifier(class_weight="balanced")
    with pytest.raises(ValueError, match="balanced"):
        clf.partial_fit(X_SMALL, Y_SMALL, classes=CLASSES)


def test_class_weight_dict_with_partial_fit():
    clf = NumpyMLPClassifier(class_weight={1: 2.0}, hidden_layer_sizes=(8,), random_state=0)
    clf.partial_fit(X_SMALL[:100], Y_SMALL[:100], classes=CLASSES)
    clf.partial_fit(X_SMALL[100:200], Y_SMALL[100:200])
    assert clf.n_iter_ == 1


def test_class_weight_with_multilabel_raises():
    X, Y = make_multilabel_classification(n_samples=40, n_classes=3, random_state=0)
    for cw in ({0: 2.0}, "balanced"):
        with pytest.raises(ValueError, match="class_weight"):
            NumpyMLPClassifier(class_weight=cw, max_iter=2).fit(X, Y)


# ------------------------------------------------------------------- dropout
def test_dropout_changes_training_but_not_prediction():
    common = dict(hidden_layer_sizes=(32,), max_iter=5, random_state=0, dtype="float64")
    plain = quiet_fit(NumpyMLPClassifier(**common), X_SMALL, Y_SMALL)
    dropped = quiet_fit(NumpyMLPClassifier(dropout=0.3, **common), X_SMALL, Y_SMALL)
    again = quiet_fit(NumpyMLPClassifier(dropout=0.3, **common), X_SMALL, Y_SMALL)
    other_seed = quiet_fit(NumpyMLPClassifier(dropout=0.3, **{**common, "random_state": 1}),
                           X_SMALL, Y_SMALL)
    assert params_differ(plain, dropped)
    assert_same_params(dropped, again)  # reproducible with the same random_state
    assert params_differ(dropped, other_seed)
    # No dropout at prediction: the output is the plain forward pass through
    # the Dense layers alone (inverted dropout needs no rescaling there).
    hidden = np.maximum(X_TEST @ dropped.coefs_[0] + dropped.intercepts_[0], 0)
    logits = hidden @ dropped.coefs_[1] + dropped.intercepts_[1]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert_allclose(dropped.predict_proba(X_TEST), expected, rtol=1e-10)
    assert_array_equal(dropped.predict(X_TEST), again.predict(X_TEST))


def test_zero_dropout_is_no_dropout():
    common = dict(hidden_layer_sizes=(8, 8), max_iter=3, random_state=0, dtype="float64")
    plain = quiet_fit(NumpyMLPClassifier(**common), X_SMALL, Y_SMALL)
    for dropout in (0.0, [0.0, 0.0]):
        assert_same_params(plain, quiet_fit(NumpyMLPClassifier(dropout=dropout, **common),
                                            X_SMALL, Y_SMALL))


def test_per_layer_dropout_rates():
    common = dict(hidden_layer_sizes=(16, 16), max_iter=3, random_state=0, dtype="float64")
    first_only = quiet_fit(NumpyMLPClassifier(dropout=[0.5, 0.0], **common), X_SMALL, Y_SMALL)
    second_only = quiet_fit(NumpyMLPClassifier(dropout=[0.0, 0.5], **common), X_SMALL, Y_SMALL)
    assert params_differ(first_only, second_only)


def test_dropout_still_learns():
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(64,), dropout=0.2, max_iter=40,
                                       random_state=0), X_TRAIN, Y_TRAIN)
    assert clf.score(X_TEST, Y_TEST) >= 0.93


# --------------------------------------------------------------------- dtype
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_explicit_dtype(dtype):
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(32,), max_iter=20, random_state=0,
                                       learning_rate_init=0.01, dtype=dtype), X_TRAIN, Y_TRAIN)
    assert clf.dtype_ == dtype
    assert all(c.dtype == np.dtype(dtype) for c in clf.coefs_)
    assert all(b.dtype == np.dtype(dtype) for b in clf.intercepts_)
    proba = clf.predict_proba(X_TEST)
    assert proba.dtype == np.float64
    assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert clf.score(X_TEST, Y_TEST) > 0.9


def test_float32_and_float64_agree_closely():
    common = dict(hidden_layer_sizes=(32,), max_iter=10, random_state=0)
    f32 = quiet_fit(NumpyMLPClassifier(dtype="float32", **common), X_TRAIN, Y_TRAIN)
    f64 = quiet_fit(NumpyMLPClassifier(dtype="float64", **common), X_TRAIN, Y_TRAIN)
    assert_allclose(f32.loss_curve_, f64.loss_curve_, rtol=1e-3)
    assert np.mean(f32.predict(X_TEST) == f64.predict(X_TEST)) > 0.98


_BLAS_THREADS = max([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
                    or [1])


@pytest.mark.parametrize("dtype, threads", [("float32", 1), ("float32", _BLAS_THREADS),
                                            ("float64", _BLAS_THREADS)])
def test_prediction_of_a_row_does_not_depend_on_its_batch(dtype, threads):
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(64,), max_iter=10, random_state=0,
                                       dtype=dtype), X_TRAIN, Y_TRAIN)
    X = DIGITS_X[:300]
    with threadpool_limits(limits=threads, user_api="blas"):
        batch = clf.predict_proba(X)
        single = np.vstack([clf.predict_proba(X[i:i + 1]) for i in range(len(X))])
        reversed_ = clf.predict_proba(X[::-1])[::-1]
        middle = clf.predict_proba(X[100:157])
    assert_array_equal(single, batch)
    assert_array_equal(reversed_, batch)
    assert_array_equal(middle, batch[100:157])


# 784 -> 128 -> 10 does 784*128 + 128*10 multiply-adds per sample; 'auto'
# picks float32 once an epoch (n_samples times that) reaches 1e8.
MNIST_LIKE_MACS = 784 * 128 + 128 * 10
FIRST_FLOAT32_ROWS = -(-10**8 // MNIST_LIKE_MACS)  # 984


def _mnist_like(n, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 784), np.arange(n) % 10


@pytest.mark.parametrize("n_rows, expected", [(FIRST_FLOAT32_ROWS, "float32"),
                                              (FIRST_FLOAT32_ROWS - 1, "float64"),
                                              (2000, "float32"), (300, "float64")])
def test_auto_dtype_choice_by_work_per_epoch(n_rows, expected):
    X, y = _mnist_like(n_rows)
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(128,), max_iter=1, random_state=0),
                    X, y)
    assert clf.dtype_ == expected
    assert clf.coefs_[0].dtype == np.dtype(expected)
    assert clf.intercepts_[0].dtype == np.dtype(expected)


def test_auto_dtype_small_network_is_float64():
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(16,), max_iter=1), DIGITS_X,
                    DIGITS_Y)
    assert clf.dtype_ == "float64"
    assert clf.coefs_[0].dtype == np.float64


def test_auto_dtype_is_decided_on_the_first_partial_fit():
    X, y = _mnist_like(1200)
    clf = NumpyMLPClassifier(hidden_layer_sizes=(128,), random_state=0)
    clf.partial_fit(X[:100], y[:100], classes=CLASSES)
    assert clf.dtype_ == "float64"
    clf.partial_fit(X, y)
    assert clf.dtype_ == "float64"
    assert clf.coefs_[0].dtype == np.float64
    # A new fit decides again.
    quiet_fit(clf.set_params(max_iter=1), X, y)
    assert clf.dtype_ == "float32"


def test_float32_input_is_accepted_by_float64_model():
    common = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=0, dtype="float64")
    a = quiet_fit(NumpyMLPClassifier(**common), X_SMALL, Y_SMALL)
    # digits / 16 is exact in float32, so the fits are identical.
    b = quiet_fit(NumpyMLPClassifier(**common), X_SMALL.astype(np.float32), Y_SMALL)
    assert_same_params(a, b)
    assert b.coefs_[0].dtype == np.float64


# ----------------------------------------------- coefs_ / intercepts_ buffer
def test_coefs_and_intercepts_are_assignable():
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0),
                    X_SMALL, Y_SMALL)
    clf.coefs_ = [np.zeros_like(c) for c in clf.coefs_]
    clf.intercepts_ = [np.zeros_like(b) for b in clf.intercepts_]
    assert_allclose(clf.predict_proba(X_SMALL[:7]), np.full((7, 10), 0.1))
    with pytest.raises(ValueError):
        clf.coefs_ = [np.zeros((3, 3)), np.zeros((8, 10))]
    with pytest.raises(ValueError):
        clf.intercepts_ = [np.zeros(8)]


# ------------------------------------------------------ pickle, clone, repr
def test_pickle_round_trip_and_continue_partial_fit():
    clf = NumpyMLPClassifier(hidden_layer_sizes=(16,), random_state=0, dtype="float64")
    clf.partial_fit(X_SMALL, Y_SMALL, classes=CLASSES)
    clf.partial_fit(X_SMALL, Y_SMALL)
    restored = pickle.loads(pickle.dumps(clf))
    assert_array_equal(restored.predict_proba(X_TEST), clf.predict_proba(X_TEST))
    assert_array_equal(restored.predict(X_TEST), clf.predict(X_TEST))
    assert restored.loss_curve_ == clf.loss_curve_
    # Training the copy is exactly training the original (optimizer state and
    # parameter views survive the round trip) ...
    for _ in range(3):
        clf.partial_fit(X_SMALL, Y_SMALL)
        restored.partial_fit(X_SMALL, Y_SMALL)
    assert_same_params(clf, restored)
    assert restored.loss_curve_ == clf.loss_curve_
    # ... and coefs_ of the copy still are the weights it predicts with.
    restored.coefs_ = [np.zeros_like(c) for c in restored.coefs_]
    restored.intercepts_ = [np.zeros_like(b) for b in restored.intercepts_]
    assert_allclose(restored.predict_proba(X_TEST[:3]), np.full((3, 10), 0.1))
    assert not np.allclose(clf.predict_proba(X_TEST[:3]), 0.1)


def test_joblib_round_trip_and_continue_partial_fit(tmp_path):
    # joblib is how scikit-learn models are usually persisted; it stores
    # arrays outside the pickle stream, so objects that shared one array
    # before dumping must still share it after loading.
    joblib = pytest.importorskip("joblib")
    clf = NumpyMLPClassifier(hidden_layer_sizes=(16,), random_state=0, dtype="float64")
    clf.partial_fit(X_SMALL, Y_SMALL, classes=CLASSES)
    path = tmp_path / "mlp.joblib"
    joblib.dump(clf, path)
    restored = joblib.load(path)
    assert_array_equal(restored.predict_proba(X_TEST), clf.predict_proba(X_TEST))
    before = [p.copy() for p in model_params(restored)]
    restored.partial_fit(X_SMALL, Y_SMALL)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model_params(restored))), \
        "partial_fit after joblib.load did not change the weights"
    clf.partial_fit(X_SMALL, Y_SMALL)
    assert_same_params(clf, restored)
    assert_array_equal(restored.predict_proba(X_TEST), clf.predict_proba(X_TEST))


def test_pickle_with_dropout_and_float32():
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(16,), dropout=0.2, dtype="float32",
                                       max_iter=3, random_state=0), X_SMALL, Y_SMALL)
    restored = pickle.loads(pickle.dumps(clf))
    assert_array_equal(restored.predict_proba(X_TEST), clf.predict_proba(X_TEST))
    clf.partial_fit(X_SMALL, Y_SMALL)
    restored.partial_fit(X_SMALL, Y_SMALL)
    assert_same_params(clf, restored)


def test_clone_gives_unfitted_estimator_with_equal_params():
    clf = NumpyMLPClassifier(hidden_layer_sizes=(7, 5), dropout=[0.1, 0.2],
                             class_weight={1: 2.0}, dtype="float32", weight_init="he",
                             alpha=0.01, random_state=3)
    quiet_fit(clf.set_params(max_iter=2), X_SMALL, Y_SMALL)
    copy = clone(clf)
    assert copy.get_params() == clf.get_params()
    assert not hasattr(copy, "classes_")
    assert not hasattr(copy, "dtype_")
    with pytest.raises(Exception, match="not fitted"):
        copy.predict(X_SMALL)


def test_he_init_differs_from_glorot_and_learns():
    common = dict(hidden_layer_sizes=(32,), max_iter=20, random_state=0, learning_rate_init=0.01)
    he = quiet_fit(NumpyMLPClassifier(weight_init="he", **common), X_TRAIN, Y_TRAIN)
    glorot = quiet_fit(NumpyMLPClassifier(**common), X_TRAIN, Y_TRAIN)
    assert params_differ(he, glorot)
    assert he.score(X_TEST, Y_TEST) > 0.9


# ------------------------------------------------------------------- verbose
@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_verbose_prints_iterations(solver, capsys):
    quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(4,), solver=solver, max_iter=3,
                                 verbose=True, random_state=0), X_SMALL, Y_SMALL)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out
    assert "Iteration 2, loss = " in out


def test_verbose_early_stopping_prints_validation_score(capsys):
    quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(4,), max_iter=2, verbose=1,
                                 early_stopping=True, random_state=0), X_SMALL, Y_SMALL)
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out
    assert "Validation score" in out


def test_silent_by_default(capsys):
    quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(4,), max_iter=2), X_SMALL, Y_SMALL)
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------------- lbfgs
def test_lbfgs_learns_digits():
    clf = NumpyMLPClassifier(solver="lbfgs", hidden_layer_sizes=(32,), max_iter=150,
                             random_state=0)
    quiet_fit(clf, X_TRAIN, Y_TRAIN)
    assert clf.score(X_TEST, Y_TEST) >= 0.93
    assert 0 < clf.n_iter_ <= 150
    assert len(clf.loss_curve_) == clf.n_iter_
    assert clf.loss_ == pytest.approx(min(clf.loss_curve_))


def test_lbfgs_tiny_max_iter_warns():
    clf = NumpyMLPClassifier(solver="lbfgs", hidden_layer_sizes=(16,), max_iter=3,
                             random_state=0)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X_SMALL, Y_SMALL)
    assert clf.n_iter_ == 3
    assert len(clf.loss_curve_) == 3
    assert np.all(np.isfinite(clf.loss_curve_))


def test_lbfgs_has_no_partial_fit():
    assert not hasattr(NumpyMLPClassifier(solver="lbfgs"), "partial_fit")
    assert hasattr(NumpyMLPClassifier(solver="sgd"), "partial_fit")
    assert hasattr(NumpyMLPClassifier(solver="adam"), "partial_fit")


# ------------------------------------------------------- sgd learning rates
@pytest.mark.parametrize("schedule, lr_init, power_t", [("constant", 0.1, 0.5),
                                                        ("invscaling", 0.5, 0.25),
                                                        ("adaptive", 0.1, 0.5)])
def test_sgd_learning_rate_schedules(schedule, lr_init, power_t):
    clf = NumpyMLPClassifier(hidden_layer_sizes=(32,), solver="sgd", learning_rate=schedule,
                             learning_rate_init=lr_init, power_t=power_t, max_iter=15,
                             random_state=0)
    quiet_fit(clf, X_TRAIN, Y_TRAIN)
    assert np.all(np.isfinite(clf.loss_curve_))
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    assert clf.score(X_TEST, Y_TEST) > 0.85
    lr = clf._optimizer.learning_rate
    if schedule == "constant":
        assert lr == lr_init
    elif schedule == "invscaling":
        assert lr == pytest.approx(lr_init / (clf.t_ + 1) ** power_t)


def test_sgd_adaptive_learning_rate_drops_on_plateau():
    # tol is huge, so every epoch counts as "no improvement".
    clf = NumpyMLPClassifier(hidden_layer_sizes=(8,), solver="sgd", learning_rate="adaptive",
                             learning_rate_init=0.1, tol=10.0, n_iter_no_change=2,
                             max_iter=40, random_state=0)
    quiet_fit(clf, X_SMALL, Y_SMALL)
    assert clf._optimizer.learning_rate < clf.learning_rate_init
    # Once the rate falls to 1e-6 training stops before max_iter.
    assert clf._optimizer.learning_rate <= 1e-6
    assert clf.n_iter_ < 40


# ------------------------------------------------------------ target types
def test_multilabel_indicator_targets():
    X, Y = make_multilabel_classification(n_samples=200, n_classes=5, random_state=0)
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(32,), max_iter=200,
                                       learning_rate_init=0.01, random_state=0), X, Y)
    assert clf.out_activation_ == "logistic"
    assert clf.n_outputs_ == 5
    pred = clf.predict(X)
    assert pred.shape == Y.shape
    assert set(np.unique(pred)) <= {0, 1}
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape
    assert np.all((proba >= 0) & (proba <= 1))
    assert not np.allclose(proba.sum(axis=1), 1.0)  # no softmax across labels
    assert_array_equal(pred, (proba > 0.5).astype(pred.dtype))
    assert clf.score(X, Y) > 0.7  # subset accuracy


def test_multilabel_partial_fit():
    X, Y = make_multilabel_classification(n_samples=100, n_classes=4, random_state=1)
    X = (X - X.mean(0)) / X.std(0)
    clf = NumpyMLPClassifier(hidden_layer_sizes=(16,), random_state=0, learning_rate_init=0.01)
    losses = []
    for _ in range(30):
        clf.partial_fit(X, Y, classes=[0, 1, 2, 3])
        losses.append(clf.loss_)
    pred = clf.predict(X)
    assert pred.shape == Y.shape and clf.out_activation_ == "logistic"
    assert losses[-1] < 0.8 * losses[0]  # it learns, one epoch per call
    majority = np.maximum(Y.mean(0), 1 - Y.mean(0)).mean()  # 0.68 label-wise
    assert np.mean(pred == Y) > majority + 0.15
    assert clf.n_iter_ == 1 and clf.t_ == 30 * len(X)


def test_binary_targets():
    mask = DIGITS_Y < 2
    X, y = DIGITS_X[mask], DIGITS_Y[mask]
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0,
                                       learning_rate_init=0.01), X, y)
    assert clf.out_activation_ == "logistic"
    assert clf.n_outputs_ == 1
    assert clf.coefs_[-1].shape == (8, 1)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(y), 2)
    assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])
    assert_allclose(clf.predict_log_proba(X), np.log(proba), rtol=1e-7, atol=1e-12)
    assert clf.score(X, y) > 0.95


def test_binary_string_and_bool_labels():
    mask = DIGITS_Y < 2
    X = DIGITS_X[mask]
    for y in (np.where(DIGITS_Y[mask] == 1, "yes", "no"), DIGITS_Y[mask] == 1):
        clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(4,), max_iter=10,
                                           learning_rate_init=0.01, random_state=0), X, y)
        assert_array_equal(clf.classes_, np.unique(y))
        assert clf.predict(X).dtype == np.asarray(y).dtype
        assert clf.score(X, y) > 0.9


def test_string_class_labels():
    names = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                      "nine"], dtype=object)
    y_train, y_test = names[Y_TRAIN], names[Y_TEST]
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(32,), max_iter=30, random_state=0),
                    X_TRAIN, y_train)
    assert_array_equal(clf.classes_, np.sort(names))
    pred = clf.predict(X_TEST)
    assert set(pred) <= set(names)
    assert clf.score(X_TEST, y_test) > 0.9
    proba = clf.predict_proba(X_TEST)
    assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)


def test_predict_log_proba_multiclass():
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0),
                    X_SMALL, Y_SMALL)
    proba = clf.predict_proba(X_TEST)
    assert_allclose(clf.predict_log_proba(X_TEST), np.log(proba), rtol=1e-7, atol=1e-12)


# ------------------------------------------------------------ sparse input
@pytest.mark.parametrize("container", [sp.csr_matrix, sp.csc_matrix, sp.csr_array,
                                       sp.csc_array])
def test_sparse_input_matches_dense(container):
    common = dict(hidden_layer_sizes=(16,), max_iter=10, random_state=0, dtype="float64")
    dense = quiet_fit(NumpyMLPClassifier(**common), X_SMALL, Y_SMALL)
    sparse = quiet_fit(NumpyMLPClassifier(**common), container(X_SMALL), Y_SMALL)
    assert_same_params(dense, sparse)
    assert_array_equal(sparse.predict(container(X_TEST)), dense.predict(X_TEST))
    assert_array_equal(sparse.predict_proba(container(X_TEST)), dense.predict_proba(X_TEST))
    # Dense data on the sparse-trained model too.
    assert_array_equal(sparse.predict(X_TEST), dense.predict(X_TEST))


def test_sparse_input_lbfgs():
    common = dict(solver="lbfgs", hidden_layer_sizes=(8,), max_iter=5, random_state=0,
                  dtype="float64")
    dense = quiet_fit(NumpyMLPClassifier(**common), X_SMALL, Y_SMALL)
    sparse = quiet_fit(NumpyMLPClassifier(**common), sp.csr_matrix(X_SMALL), Y_SMALL)
    assert_array_equal(sparse.predict(X_TEST), dense.predict(X_TEST))


def test_sparse_input_partial_fit():
    Xs = sp.csr_matrix(X_SMALL)
    sparse = NumpyMLPClassifier(hidden_layer_sizes=(8,), random_state=0, dtype="float64")
    dense = NumpyMLPClassifier(hidden_layer_sizes=(8,), random_state=0, dtype="float64")
    for _ in range(3):
        sparse.partial_fit(Xs, Y_SMALL, classes=CLASSES)
        dense.partial_fit(X_SMALL, Y_SMALL, classes=CLASSES)
    assert_allclose(sparse.predict_proba(Xs), dense.predict_proba(X_SMALL), rtol=1e-10)
    assert_array_equal(sparse.predict(Xs), dense.predict(X_SMALL))


# ------------------------------------------------------------------- pandas
def test_dataframe_feature_names():
    pd = pytest.importorskip("pandas")
    columns = [f"pixel{i}" for i in range(64)]
    df = pd.DataFrame(X_SMALL, columns=columns)
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0,
                                       early_stopping=True), df, pd.Series(Y_SMALL))
    assert_array_equal(clf.feature_names_in_, columns)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # same names: no warning
        pred = clf.predict(pd.DataFrame(X_TEST, columns=columns))
    assert pred.shape == (len(X_TEST),)
    # Fitted with names, predicted without: scikit-learn's warning.
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(X_TEST)
    # Different names: scikit-learn (>= 1.2) refuses.
    renamed = pd.DataFrame(X_TEST, columns=["x"] + columns[1:])
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(renamed)


def test_ndarray_fit_has_no_feature_names():
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(4,), max_iter=2), X_SMALL, Y_SMALL)
    assert not hasattr(clf, "feature_names_in_")


def test_predict_log_proba_stays_finite_when_confident():
    mask = DIGITS_Y < 2
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(16,), max_iter=200,
                                       learning_rate_init=0.05, alpha=0.0, random_state=0),
                    DIGITS_X[mask] * 50, DIGITS_Y[mask])
    proba = clf.predict_proba(DIGITS_X[mask] * 50)
    assert np.any(proba == 0.0) or np.any(proba == 1.0), "scenario needs saturated outputs"
    log_proba = clf.predict_log_proba(DIGITS_X[mask] * 50)
    assert np.all(np.isfinite(log_proba))
    assert np.all(log_proba <= 0)


def test_predict_from_several_threads():
    from concurrent.futures import ThreadPoolExecutor

    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(32,), dropout=0.2, max_iter=5,
                                       random_state=0), X_TRAIN, Y_TRAIN)
    expected = clf.predict_proba(DIGITS_X)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: clf.predict_proba(DIGITS_X), range(8)))
    for result in results:
        assert_array_equal(result, expected)


def test_unfitted_predict_raises_not_fitted():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        NumpyMLPClassifier().predict(X_SMALL)
    with pytest.raises(NotFittedError):
        NumpyMLPClassifier().predict_proba(X_SMALL)


def test_batch_size_larger_than_data_is_clipped_with_warning():
    clf = NumpyMLPClassifier(hidden_layer_sizes=(4,), batch_size=10_000, max_iter=2)
    with pytest.warns(UserWarning, match="clipped"):
        quiet_fit(clf, X_SMALL, Y_SMALL)
    assert clf.t_ == 2 * len(Y_SMALL)


# ------------------------------------------------------------- bad inputs
def test_nan_and_inf_input_raise():
    X = X_SMALL.copy()
    X[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        NumpyMLPClassifier(max_iter=1).fit(X, Y_SMALL)
    X[3, 5] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        NumpyMLPClassifier(max_iter=1).fit(X, Y_SMALL)
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(4,), max_iter=1), X_SMALL, Y_SMALL)
    with pytest.raises(ValueError, match="infinity|NaN"):
        clf.predict(X)


def test_wrong_number_of_features_at_predict():
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(4,), max_iter=1), X_SMALL, Y_SMALL)
    with pytest.raises(ValueError, match="features"):
        clf.predict(X_SMALL[:, :10])


@pytest.mark.parametrize("concurrent_blas", [1, 2])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("value, word", [(np.nan, "NaN"), (np.inf, "infinity"),
                                         (-np.inf, "infinity"), (1e39, "float32")])
def test_predict_names_the_first_bad_row_in_any_chunk(value, word, sparse, concurrent_blas):
    """predict checks X chunk by chunk (no extra pass over X): whichever chunk
    and thread a bad value lands in, the error names its row."""
    clf = quiet_fit(NumpyMLPClassifier(dtype="float32", hidden_layer_sizes=(4,), max_iter=1,
                                       random_state=0), X_SMALL, Y_SMALL)
    n_rows = 4 * PREDICT_CHUNK + 3
    X = np.tile(X_SMALL, (n_rows // len(X_SMALL) + 1, 1))[:n_rows]
    for row in (0, PREDICT_CHUNK - 1, 3 * PREDICT_CHUNK + 1, n_rows - 1):
        bad = X.copy()
        bad[row, 7] = value
        bad[n_rows - 1, 2] = value  # a later bad row must not be the one named
        if sparse:
            bad = sp.csr_matrix(bad)
        with threadpool_limits(concurrent_blas), pytest.raises(ValueError, match=word) as info:
            clf.predict_proba(bad)
        assert f"row {row}" in str(info.value)


def test_values_beyond_float32_range_with_float32_raise():
    X = X_SMALL.copy()
    X[0, 0] = 1e39
    with pytest.raises(ValueError, match="float32"):
        NumpyMLPClassifier(dtype="float32", max_iter=1).fit(X, Y_SMALL)
    clf = quiet_fit(NumpyMLPClassifier(dtype="float32", hidden_layer_sizes=(4,), max_iter=1),
                    X_SMALL, Y_SMALL)
    with pytest.raises(ValueError, match="float32"):
        clf.predict(X)
    # float64 takes them.
    quiet_fit(NumpyMLPClassifier(dtype="float64", hidden_layer_sizes=(4,), max_iter=1),
              X / 1e30, Y_SMALL)


def test_float64_model_accepts_values_beyond_float32_range():
    X = X_SMALL.copy()
    X[0, 0] = 1e39
    clf = quiet_fit(NumpyMLPClassifier(dtype="float64", hidden_layer_sizes=(4,), max_iter=1,
                                       random_state=0), X_SMALL, Y_SMALL)
    with np.errstate(over="ignore"):
        try:
            pred = clf.predict(X)
        except ValueError as exc:  # an output overflow is fine; the float32 guard is not
            assert "float32" not in str(exc)
            assert "overflowed" in str(exc)
        else:
            # The other rows predict as without the huge value.
            assert_array_equal(pred[1:], clf.predict(X_SMALL[1:]))


def _fit_without_the_float32_guard(clf, X, y):
    """Fit on values beyond float32's range: any error may not be the float32
    guard's, and the fit must have run in float64."""
    try:
        with np.errstate(all="ignore"):
            quiet_fit(clf, X, y)
    except ValueError as exc:
        assert "float32" not in str(exc), str(exc)
    assert clf.dtype_ == "float64"


def test_auto_dtype_resolving_to_float64_accepts_values_beyond_float32_range():
    # A 64 -> 16 -> 10 network resolves dtype='auto' to float64, where 1e39 is
    # an ordinary number; the float32-range guard must not fire.
    X = X_SMALL.copy()
    X[0, 0] = 1e39
    clf = NumpyMLPClassifier(hidden_layer_sizes=(16,), max_iter=1, random_state=0)
    _fit_without_the_float32_guard(clf, X, Y_SMALL)


def test_refit_after_switching_dtype_to_float64_accepts_large_values():
    # The float32-range guard must use the dtype of the fit being started,
    # not dtype_ left over from the previous fit.
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(16,), max_iter=1, dtype="float32",
                                       random_state=0), X_SMALL, Y_SMALL)
    X = X_SMALL.copy()
    X[0, 0] = 1e39
    clf.set_params(dtype="float64")
    _fit_without_the_float32_guard(clf, X, Y_SMALL)


def test_refit_that_auto_resolves_to_float32_still_guards_float32_range():
    # First fit: little data, so auto -> float64.  Refit on enough data for
    # auto -> float32: values beyond float32's range must raise the
    # float32-range error, not silently become inf.
    X, y = _mnist_like(1000)
    clf = quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(128,), max_iter=1, random_state=0),
                    X[:100], y[:100])
    assert clf.dtype_ == "float64"
    X[0, 0] = 1e39
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="float32"):
        quiet_fit(clf, X, y)


def test_auto_float32_fit_guards_float32_range():
    X, y = _mnist_like(1000)
    X[0, 0] = 1e39
    with np.errstate(all="ignore"), pytest.raises(ValueError, match="float32"):
        quiet_fit(NumpyMLPClassifier(hidden_layer_sizes=(128,), max_iter=1), X, y)


# ---------------------------------------------------------------- divergence
DIVERGING = [
    # The scenario of the documentation: huge step, momentum, unscaled data.
    pytest.param(dict(solver="sgd", learning_rate_init=1e6, momentum=0.9), 1e6, id="sgd-momentum"),
    pytest.param(dict(solver="sgd", learning_rate_init=1e6, momentum=0.9, dtype="float32"), 1.0,
                 id="sgd-float32"),
    # Full batch: every batch is the first of its epoch, so "the start of the
    # diverging epoch" is exactly the weights that produced the bad loss.
    pytest.param(dict(solver="sgd", learning_rate_init=1e10, momentum=0.0, batch_size=2000,
                      activation="identity", dtype="float64"), 1e6, id="sgd-full-batch-float64"),
    pytest.param(dict(solver="sgd", learning_rate_init=100.0, momentum=0.0, batch_size=2000,
                      dtype="float32"), 1e6, id="sgd-full-batch-float32"),
    pytest.param(dict(solver="sgd", learning_rate_init=1e10, momentum=0.0, batch_size=200,
                      activation="identity", dtype="float64"), 1e6, id="sgd-batch-200"),
]


@pytest.mark.parametrize("params, scale", DIVERGING)
def test_divergence_raises_and_keeps_a_usable_model(params, scale):
    X = _DIGITS_X * scale
    clf = NumpyMLPClassifier(hidden_layer_sizes=(16,), max_iter=20, random_state=0, **params)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="learning_rate_init") as info:
            clf.fit(X, DIGITS_Y)
    assert isinstance(info.value, TrainingDiverged)
    assert all(np.all(np.isfinite(c)) for c in model_params(clf))
    with np.errstate(all="ignore"):
        proba = clf.predict_proba(X)
        pred = clf.predict(X)
    assert np.all(np.isfinite(proba))
    assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert pred.shape == DIGITS_Y.shape


def test_divergence_leaves_history_consistent_with_weights():
    # After TrainingDiverged the model is documented as usable with "the last
    # finite weights"; its fitted history should describe those epochs:
    # loss_curve_ holds the finite epochs and n_iter_ counts them.
    clf = NumpyMLPClassifier(hidden_layer_sizes=(16,), solver="sgd", learning_rate_init=1e6,
                             momentum=0.9, max_iter=20, random_state=0)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged, match=r"epoch (\d+)") as info, \
            pytest.warns(ConvergenceWarning, match="Training is diverging"):
        clf.fit(_DIGITS_X, DIGITS_Y)
    epoch = int(re.search(r"epoch (\d+)", str(info.value)).group(1))
    assert epoch > 1, "the scenario needs some finite epochs first"
    assert clf.n_iter_ == epoch - 1
    assert len(clf.loss_curve_) == epoch - 1
    assert np.all(np.isfinite(clf.loss_curve_))


def test_refit_after_divergence_equals_a_fresh_fit():
    params = dict(hidden_layer_sizes=(16,), solver="sgd", momentum=0.9, max_iter=5,
                  random_state=0, dtype="float64")
    clf = NumpyMLPClassifier(learning_rate_init=1e6, **params)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged), \
            pytest.warns(ConvergenceWarning, match="Training is diverging"):
        clf.fit(_DIGITS_X * 1e6, DIGITS_Y)
    quiet_fit(clf.set_params(learning_rate_init=0.1), X_SMALL, Y_SMALL)
    fresh = quiet_fit(NumpyMLPClassifier(learning_rate_init=0.1, **params), X_SMALL, Y_SMALL)
    assert_same_params(clf, fresh)
    assert clf.loss_curve_ == fresh.loss_curve_


def test_lbfgs_divergence_on_huge_inputs():
    X = _DIGITS_X[:200] * 1e300
    clf = NumpyMLPClassifier(solver="lbfgs", hidden_layer_sizes=(8,), max_iter=10,
                             dtype="float64", random_state=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError):
            clf.fit(X, DIGITS_Y[:200])
    assert all(np.all(np.isfinite(c)) for c in model_params(clf))


# ------------------------------------------------------------------- Ctrl-C
def _fit_with_sigint(clf, X, y, delay):
    """Fit ``clf`` and send SIGINT ``delay`` s after training installed its handler.

    The test's own SIGINT handler is active around the fit, so a signal that
    arrives outside training cannot abort pytest; it is reported instead.
    Returns (elapsed after the signal or None, caught warnings, late signals).
    """
    stray = []

    def test_handler(signum, frame):
        stray.append(time.perf_counter())

    previous = signal.signal(signal.SIGINT, test_handler)
    sent = []
    done = threading.Event()

    def sender():
        deadline = time.perf_counter() + 60
        # Wait until training replaced our handler with its own.
        while signal.getsignal(signal.SIGINT) is test_handler:
            if done.is_set() or time.perf_counter() > deadline:
                return
            time.sleep(0.005)
        if done.wait(delay):
            return
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=sender, daemon=True)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            thread.start()
            clf.fit(X, y)
            finished = time.perf_counter()
        done.set()
        thread.join(5)
        # The handler training installed is gone again.
        assert signal.getsignal(signal.SIGINT) is test_handler
    finally:
        done.set()
        signal.signal(signal.SIGINT, previous)
    elapsed = finished - sent[0] if sent else None
    return elapsed, caught, stray


def _check_interrupted(clf, X, y, max_iter, solver):
    for attempt in range(3):
        clf = clone(clf).set_params(max_iter=max_iter * (attempt + 1))
        elapsed, caught, stray = _fit_with_sigint(clf, X, y, delay=0.3)
        if elapsed is not None:
            break
    assert elapsed is not None, "fit always finished before the signal"
    assert not stray, "SIGINT arrived outside training"
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert "Training interrupted by user." in messages
    assert not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    assert elapsed < 10.0, f"fit took {elapsed:.1f}s to stop after Ctrl-C"
    assert clf.n_iter_ < clf.max_iter
    proba = clf.predict_proba(X[:500])
    assert np.all(np.isfinite(proba))
    assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert clf.predict(X[:500]).shape == (500,)
    # The interrupted model can be trained further.
    if solver != "lbfgs":
        clf.partial_fit(X[:300], y[:300])


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_ctrl_c_stops_training_with_usable_model(solver):
    rng = np.random.RandomState(0)
    n, d = 3000, 784
    X = rng.rand(n, d).astype(np.float32)
    y = rng.randint(0, 10, n)
    clf = NumpyMLPClassifier(hidden_layer_sizes=(256,), solver=solver, n_iter_no_change=np.inf,
                             tol=0.0, random_state=0)
    _check_interrupted(clf, X, y, max_iter=300, solver=solver)


@pytest.mark.slow
def test_ctrl_c_stops_training_mnist_sized():
    rng = np.random.RandomState(0)
    n, d = 20000, 784
    X = rng.rand(n, d).astype(np.float32)
    y = rng.randint(0, 10, n)
    clf = NumpyMLPClassifier(hidden_layer_sizes=(128,), n_iter_no_change=np.inf, random_state=0)
    _check_interrupted(clf, X, y, max_iter=1000, solver="adam")


def test_convergence_warning_after_an_interrupted_warm_start_fit():
    # An interrupted fit does not warn about convergence, but the next
    # (warm-started) fit that runs out of max_iter must warn again.
    rng = np.random.RandomState(0)
    X = rng.rand(3000, 784).astype(np.float32)
    y = rng.randint(0, 10, 3000)
    clf = NumpyMLPClassifier(hidden_layer_sizes=(256,), max_iter=300, n_iter_no_change=np.inf,
                             random_state=0, warm_start=True)
    elapsed, caught, stray = _fit_with_sigint(clf, X, y, delay=0.3)
    assert elapsed is not None and not stray
    assert "Training interrupted by user." in [str(w.message) for w in caught]
    clf.set_params(max_iter=2)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X[:300], y[:300])
    assert clf.n_iter_ == 2


# ---------------------------------------------------------- longer accuracy
@pytest.mark.slow
def test_full_digits_accuracy_default_network():
    clf = quiet_fit(NumpyMLPClassifier(random_state=0), X_TRAIN, Y_TRAIN)
    assert clf.score(X_TEST, Y_TEST) >= 0.97


def test_full_digits_accuracy_default_network_short():
    clf = quiet_fit(NumpyMLPClassifier(max_iter=30, random_state=0), X_TRAIN, Y_TRAIN)
    assert clf.score(X_TEST, Y_TEST) >= 0.95
