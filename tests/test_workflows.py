"""``NumpyMLPClassifier`` inside scikit-learn's workflow tools: pipelines,
grid search (serial and in parallel worker processes) and cross-validation
side by side with ``MLPClassifier``."""

import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score, \
    train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skdigits import NumpyMLPClassifier

pytestmark = pytest.mark.usefixtures("one_blas_thread", "no_convergence_warnings")

X_DIGITS, Y_DIGITS = load_digits(return_X_y=True)


def _pipeline(estimator):
    return Pipeline([("scale", StandardScaler()), ("mlp", estimator)])


def test_pipeline_fit_predict_score():
    X_train, X_test, y_train, y_test = train_test_split(X_DIGITS, Y_DIGITS, test_size=0.25,
                                                        stratify=Y_DIGITS, random_state=0)
    pipe = _pipeline(NumpyMLPClassifier(hidden_layer_sizes=(64,), max_iter=40, random_state=0))
    assert pipe.fit(X_train, y_train) is pipe
    pred = pipe.predict(X_test)
    assert pred.shape == y_test.shape
    assert set(pred) <= set(range(10))
    score = pipe.score(X_test, y_test)
    assert score == np.mean(pred == y_test)
    assert score > 0.95
    proba = pipe.predict_proba(X_test)
    assert proba.shape == (len(y_test), 10)
    assert_array_equal(pipe.classes_, np.arange(10))
    assert_array_equal(pipe.classes_[proba.argmax(axis=1)], pred)
    # The pipeline's mlp is the fitted estimator itself.
    assert pipe.named_steps["mlp"].n_features_in_ == 64


def test_pipeline_sample_weight_routed_to_the_network():
    # Pipeline passes step-prefixed fit parameters on.
    rng = np.random.RandomState(0)
    sw = rng.uniform(0.5, 1.5, 600)
    X, y = X_DIGITS[:600], Y_DIGITS[:600]
    params = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=0, dtype="float64")
    pipe = _pipeline(NumpyMLPClassifier(**params)).fit(X, y, mlp__sample_weight=sw)
    direct = NumpyMLPClassifier(**params).fit(StandardScaler().fit_transform(X), y,
                                             sample_weight=sw)
    for a, b in zip(pipe.named_steps["mlp"].coefs_, direct.coefs_):
        assert_array_equal(a, b)


GRID = {"mlp__hidden_layer_sizes": [(32,), (64,)], "mlp__alpha": [1e-4, 1e-2]}


def _grid_search(n_jobs):
    pipe = _pipeline(NumpyMLPClassifier(max_iter=15, random_state=0))
    search = GridSearchCV(pipe, GRID, cv=3, n_jobs=n_jobs)
    return search.fit(X_DIGITS, Y_DIGITS)


@pytest.fixture(scope="module")
def serial_search():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _grid_search(n_jobs=1)


def test_grid_search(serial_search):
    search = serial_search
    assert set(search.best_params_) == set(GRID)
    assert search.best_params_["mlp__hidden_layer_sizes"] in GRID["mlp__hidden_layer_sizes"]
    assert search.best_params_["mlp__alpha"] in GRID["mlp__alpha"]
    assert len(search.cv_results_["params"]) == 4
    assert search.best_score_ == max(search.cv_results_["mean_test_score"])
    assert search.best_score_ > 0.85
    # refit=True: the best pipeline was refitted on all the data.
    best = search.best_estimator_.named_steps["mlp"]
    assert best.hidden_layer_sizes == search.best_params_["mlp__hidden_layer_sizes"]
    assert search.score(X_DIGITS, Y_DIGITS) > 0.9


def test_grid_search_in_parallel_agrees_with_serial(serial_search):
    # The estimators are pickled to worker processes and back: with a fixed
    # random_state each candidate trains the same way there.
    parallel = _grid_search(n_jobs=2)
    assert parallel.best_params_ == serial_search.best_params_
    assert_allclose(parallel.cv_results_["mean_test_score"],
                    serial_search.cv_results_["mean_test_score"], atol=1e-3)
    assert_array_equal(parallel.predict(X_DIGITS), serial_search.predict(X_DIGITS))


def _cross_val(estimator, cv):
    return cross_val_score(_pipeline(estimator), X_DIGITS, Y_DIGITS,
                           cv=StratifiedKFold(cv, shuffle=True, random_state=0))


MATCHED = dict(hidden_layer_sizes=(100,), max_iter=100, random_state=0)


@pytest.fixture(scope="module")
def sklearn_scores_3_folds():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return _cross_val(MLPClassifier(**MATCHED), cv=3)


@pytest.mark.parametrize("dtype", ["auto", "float32"])
def test_cross_val_score_against_sklearn(dtype, sklearn_scores_3_folds, capsys):
    ours = _cross_val(NumpyMLPClassifier(dtype=dtype, **MATCHED), cv=3)
    theirs = sklearn_scores_3_folds
    with capsys.disabled():
        print(f"\ncross_val_score, 3 folds: NumpyMLPClassifier(dtype={dtype!r}) "
              f"{ours.mean():.4f} {np.round(ours, 4)}, "
              f"MLPClassifier {theirs.mean():.4f} {np.round(theirs, 4)}")
    assert ours.mean() >= theirs.mean() - 0.01
    if dtype == "auto":
        # 64 -> 100 -> 10 resolves to float64, which reproduces MLPClassifier.
        assert_allclose(ours, theirs, atol=1e-12)


@pytest.mark.slow
def test_cross_val_score_against_sklearn_five_folds(capsys):
    ours = _cross_val(NumpyMLPClassifier(dtype="float32", **MATCHED), cv=5)
    theirs = _cross_val(MLPClassifier(**MATCHED), cv=5)
    with capsys.disabled():
        print(f"\ncross_val_score, 5 folds: NumpyMLPClassifier {ours.mean():.4f}, "
              f"MLPClassifier {theirs.mean():.4f}")
    assert ours.mean() >= theirs.mean() - 0.01
