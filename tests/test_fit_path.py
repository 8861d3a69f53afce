"""The fit path: why a fit stopped, warm-start architecture checks,
scikit-learn's ScoringMonitor, dtype of float32 input, log-probabilities,
learning-rate schedules, and results independent of the calling thread."""

import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdigits import NumpyCNNClassifier, NumpyMLPClassifier
from skdigits.nn import SGD, Adam
from skdigits.training import (LR_SCHEDULES, STOP_REASONS, ScheduledLearningRate,
                               cosine_factor, one_cycle_factor)

pytestmark = pytest.mark.usefixtures("one_blas_thread")

SMALL_MLP = dict(hidden_layer_sizes=(16,), random_state=0)
SMALL_CNN = dict(conv_filters=(4,), hidden_layer_sizes=(8,), batch_size=64, random_state=0)


def fit_quietly(estimator, X, y, **fit_params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X, y, **fit_params)


# ------------------------------------------------------------ stop_reason_
@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_stop_reason_max_iter_warns_and_says_so(digits, solver):
    X, y = digits
    clf = NumpyMLPClassifier(solver=solver, max_iter=2, **SMALL_MLP)
    with pytest.warns(ConvergenceWarning):
        clf.fit(X, y)
    assert clf.stop_reason_ == "max_iter"


def test_stop_reason_converged_without_warning(digits):
    X, y = digits
    clf = NumpyMLPClassifier(max_iter=500, tol=0.5, n_iter_no_change=2, **SMALL_MLP)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf.fit(X, y)
    assert clf.stop_reason_ == "converged"
    # The first epoch improves on inf; stop once the count (1, 2, 3) exceeds 2.
    assert clf.n_iter_ == 4


def test_stop_reason_partial_fit_and_values(digits):
    X, y = digits
    clf = NumpyMLPClassifier(**SMALL_MLP).partial_fit(X, y, classes=np.unique(y))
    assert clf.stop_reason_ == "partial_fit"
    assert clf.stop_reason_ in STOP_REASONS


# ------------------------------------------------------------ warm start
@pytest.mark.parametrize("make, change", [
    (lambda: NumpyMLPClassifier(max_iter=2, warm_start=True, **SMALL_MLP), {"dropout": 0.5}),
    (lambda: NumpyMLPClassifier(max_iter=2, warm_start=True, **SMALL_MLP), {"dtype": "float32"}),
    (lambda: NumpyMLPClassifier(max_iter=2, warm_start=True, **SMALL_MLP),
     {"weight_init": "he"}),
    (lambda: NumpyCNNClassifier(max_iter=1, warm_start=True, **SMALL_CNN), {"dtype": "float64"}),
    (lambda: NumpyCNNClassifier(max_iter=1, warm_start=True, **SMALL_CNN), {"conv_dropout": 0.0}),
])
def test_warm_start_refuses_an_architecture_change_naming_it(digits, make, change):
    X, y = digits
    clf = fit_quietly(make(), X[:300], y[:300])
    before = clf._network.params.copy()
    clf.set_params(**change)
    [name] = change
    with pytest.raises(ValueError, match=f"architecture changed.*{name}"):
        fit_quietly(clf, X[:300], y[:300])
    np.testing.assert_array_equal(clf._network.params, before)  # nothing was trained


def test_warm_start_accepts_training_parameter_changes(digits):
    X, y = digits
    clf = fit_quietly(NumpyMLPClassifier(max_iter=2, warm_start=True, **SMALL_MLP), X, y)
    clf.set_params(learning_rate_init=1e-4, alpha=1e-2, max_iter=1, lr_schedule="cosine",
                   hidden_layer_sizes=[16])  # a list means the same network as (16,)
    fit_quietly(clf, X, y)
    assert clf.n_iter_ == 1


# ------------------------------------------------------------ ScoringMonitor
scoring_monitor = pytest.importorskip("sklearn.callback").ScoringMonitor


def logged_scores(monitor, task_name):
    rows = monitor.get_logs().data
    return [row["accuracy"] for row in rows if row["task_name"] == task_name]


@pytest.mark.parametrize("make, task, iterations", [
    (lambda: NumpyMLPClassifier(max_iter=4, **SMALL_MLP), "epoch", lambda c: c.n_iter_),
    (lambda: NumpyMLPClassifier(solver="lbfgs", max_iter=4, **SMALL_MLP), "lbfgs-iter",
     lambda c: c.n_iter_),
    (lambda: NumpyCNNClassifier(max_iter=2, **SMALL_CNN), "epoch", lambda c: c.n_iter_),
])
def test_scoring_monitor_logs_one_score_per_epoch(digits, make, task, iterations):
    X, y = digits
    X, y = X[:400], y[:400]
    monitor = scoring_monitor(scoring="accuracy")
    clf = fit_quietly(make().set_callbacks(monitor), X, y)
    scores = logged_scores(monitor, task)
    assert len(scores) == iterations(clf) > 0
    assert all(0.0 <= s <= 1.0 for s in scores)
    # The last epoch's score is the fitted model's training accuracy.
    assert scores[-1] == pytest.approx(clf.score(X, y))


def test_scoring_monitor_routes_sample_weight(digits):
    X, y = digits
    X, y = X[:400], y[:400]
    weights = np.where(y == 3, 5.0, 1.0)
    monitor = scoring_monitor(scoring="accuracy")
    clf = fit_quietly(NumpyMLPClassifier(max_iter=3, **SMALL_MLP).set_callbacks(monitor),
                      X, y, sample_weight=weights)
    scores = logged_scores(monitor, "epoch")
    assert scores[-1] == pytest.approx(clf.score(X, y, sample_weight=weights))
    assert scores[-1] != pytest.approx(clf.score(X, y))


def test_scoring_monitor_in_a_pipeline_and_grid_search(digits):
    X, y = digits
    X, y = X[:400], y[:400]
    monitor = scoring_monitor(scoring="accuracy")
    clf = NumpyMLPClassifier(max_iter=3, **SMALL_MLP).set_callbacks(monitor)
    fit_quietly(make_pipeline(StandardScaler(), clf), X, y)
    assert len(logged_scores(monitor, "epoch")) == 3

    monitor = scoring_monitor(scoring="accuracy")
    clf = NumpyMLPClassifier(max_iter=2, **SMALL_MLP).set_callbacks(monitor)
    search = GridSearchCV(clf, {"alpha": [1e-4, 1e-2]}, cv=2)
    fit_quietly(search, X, y)
    # 2 candidates x 2 folds + the refit, 2 epochs each.
    assert len(logged_scores(monitor, "epoch")) == (2 * 2 + 1) * 2


# ------------------------------------------------------------ drop-in gaps
def test_float32_input_gives_float32_weights_like_mlpclassifier(digits):
    X, y = digits
    clf = fit_quietly(NumpyMLPClassifier(max_iter=2, **SMALL_MLP), X[:100].astype(np.float32),
                      y[:100])
    assert clf.dtype_ == "float32"
    assert all(W.dtype == np.float32 for W in clf.coefs_)
    clf = fit_quietly(NumpyMLPClassifier(max_iter=2, **SMALL_MLP), X[:100], y[:100])
    assert clf.dtype_ == "float64"


def test_log_proba_ranks_like_proba_where_probabilities_round_to_one():
    from sklearn.datasets import make_multilabel_classification

    X, Y = make_multilabel_classification(n_samples=50, random_state=0, return_indicator=True)
    clf = fit_quietly(NumpyMLPClassifier(solver="lbfgs", hidden_layer_sizes=30,
                                         random_state=0), X, Y)
    proba, log_proba = clf.predict_proba(X), clf.predict_log_proba(X)
    assert (proba == 1.0).sum() > 1  # the case the check is about really occurs
    np.testing.assert_array_equal(proba.argmax(1), log_proba.argmax(1))
    np.testing.assert_allclose(log_proba, np.log(proba), rtol=1e-12)
    assert np.all(np.isfinite(log_proba))


# ------------------------------------------------------------ schedules
def test_schedule_factors_follow_their_formulas():
    for p in np.linspace(0, 1, 11):
        assert cosine_factor(p) == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))
    assert one_cycle_factor(0.0) == pytest.approx(1 / 25)
    assert one_cycle_factor(0.15) == pytest.approx(1 / 25 + (1 - 1 / 25) * 0.5)
    assert one_cycle_factor(0.3) == pytest.approx(1.0)
    assert one_cycle_factor(0.65) == pytest.approx(0.5)
    assert one_cycle_factor(1.0) == pytest.approx(0.0, abs=1e-15)
    assert set(LR_SCHEDULES) == {"cosine", "one-cycle"}


class _FakeLoop:
    def __init__(self, optimizer, steps):
        self.optimizer = optimizer
        self.history = type("H", (), {"steps": steps})()


@pytest.mark.parametrize("optimizer", [Adam, SGD])
def test_scheduled_step_is_the_formula_times_the_factor(optimizer):
    g = np.array([0.5, -1.0, 2.0])
    plain = optimizer(np.zeros(3), 0.01)
    scheduled = optimizer(np.zeros(3), 0.01)
    ScheduledLearningRate("cosine", total_steps=10).on_batch_begin(_FakeLoop(scheduled, 5))
    assert scheduled.lr_scale == pytest.approx(0.5)
    plain.step(g)
    scheduled.step(g)
    np.testing.assert_allclose(scheduled.params, 0.5 * plain.params, rtol=1e-12)


def test_schedule_changes_the_fit_and_none_leaves_it_alone(digits):
    X, y = digits
    base = fit_quietly(NumpyMLPClassifier(max_iter=3, **SMALL_MLP), X, y)
    again = fit_quietly(NumpyMLPClassifier(max_iter=3, lr_schedule=None, **SMALL_MLP), X, y)
    assert base.loss_curve_ == again.loss_curve_
    for name in LR_SCHEDULES:
        scheduled = fit_quietly(NumpyMLPClassifier(max_iter=3, lr_schedule=name, **SMALL_MLP),
                                X, y)
        assert scheduled.loss_curve_ != base.loss_curve_
        assert scheduled._optimizer.lr_scale < 0.2  # near the end of its cosine tail


# ------------------------------------------------------------ thread determinism
@pytest.fixture
def two_blas_threads():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=2, user_api="blas"):
        yield


def _mnist_like(n=600, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.rand(n, 784)
    X[X < 0.7] = 0.0
    return X, rng.randint(0, 10, n)


def test_predictions_from_a_worker_thread_equal_the_main_threads(two_blas_threads):
    """784 inputs: the product's bits differ between one and two BLAS
    threads, so this fails whenever a worker thread's limit is not heeded."""
    X, y = _mnist_like()
    clf = fit_quietly(NumpyMLPClassifier(hidden_layer_sizes=(64,), max_iter=2, dtype="float32",
                                         random_state=0), X, y)
    main = clf.predict_proba(X)
    with ThreadPoolExecutor(max_workers=1) as pool:
        worker = pool.submit(clf.predict_proba, X).result()
    np.testing.assert_array_equal(worker, main)


def test_fit_in_a_worker_thread_equals_the_main_threads(two_blas_threads):
    X, y = _mnist_like()

    def fit():
        return fit_quietly(NumpyMLPClassifier(hidden_layer_sizes=(64,), max_iter=2,
                                              dtype="float32", random_state=0), X, y)

    main = fit()
    with ThreadPoolExecutor(max_workers=1) as pool:
        worker = pool.submit(fit).result()
    np.testing.assert_array_equal(worker._network.params, main._network.params)


# ------------------------------------------------------------ batch norm
@pytest.mark.parametrize("make", [
    lambda **kw: NumpyMLPClassifier(max_iter=3, **SMALL_MLP, **kw),
    lambda **kw: NumpyCNNClassifier(max_iter=1, **SMALL_CNN, **kw),
])
def test_batch_norm_layers_learn_running_statistics_and_round_trip(digits, make, tmp_path):
    from skdigits import load_model, save_model
    from skdigits.nn import Activation, BatchNorm

    X, y = digits
    clf = fit_quietly(make(batch_norm=True), X[:600], y[:600])
    norms = [layer for layer in clf._network.layers if isinstance(layer, BatchNorm)]
    assert norms and all(isinstance(clf._network.layers[clf._network.layers.index(n) + 1],
                                    Activation) for n in norms)
    assert all(not np.allclose(n.running_var, 1.0) for n in norms)
    loaded = load_model(save_model(clf, tmp_path / "bn.skops"))
    np.testing.assert_array_equal(loaded.predict_proba(X[600:700]), clf.predict_proba(X[600:700]))
    assert fit_quietly(make(), X[:600], y[:600]).score(X[600:], y[600:]) != clf.score(X[600:],
                                                                                       y[600:])


def test_batch_norm_refuses_lbfgs(digits):
    X, y = digits
    with pytest.raises(ValueError, match="batch_norm=True needs mini-batches"):
        NumpyMLPClassifier(solver="lbfgs", batch_norm=True).fit(X, y)


def test_restore_points_cover_batch_norm_running_statistics():
    from skdigits.nn import Activation, BatchNorm, Dense, Network
    from skdigits.training import DivergenceGuard

    network = Network([Dense(6, "identity"), BatchNorm(), Activation("relu"), Dense(3)],
                      "softmax", "float64").build((4,), np.random.RandomState(0))
    guard = DivergenceGuard(network, learning_rate=0.1)
    guard.start_epoch()
    saved = [a.copy() for a in network.state_arrays()]
    rng = np.random.RandomState(1)
    network.loss_and_gradient(rng.rand(8, 4), np.eye(3)[rng.randint(3, size=8)])
    network.params -= 0.1 * network.grads
    assert not np.array_equal(network.state_arrays()[1], saved[1])  # running mean moved
    guard.restore_epoch_start()
    for array, before in zip(network.state_arrays(), saved):
        np.testing.assert_array_equal(array, before)


def test_no_improvement_is_not_counted_during_a_warm_up():
    from skdigits.training import ImprovementStopping, TrainingHistory

    class Loop:
        history = TrainingHistory()
        optimizer = Adam(np.zeros(1))

    loop = Loop()
    stopping = ImprovementStopping(tol=1.0, n_iter_no_change=1, start_step=10)
    stopping.on_fit_begin(loop)
    for steps in range(1, 10):  # the loss never improves by tol
        loop.history.steps, loop.history.loss_curve = steps, loop.history.loss_curve + [1.0]
        assert stopping.on_epoch_end(loop) is None
    assert loop.history.no_improvement_count == 0
    reasons = []
    for steps in range(10, 13):
        loop.history.steps, loop.history.loss_curve = steps, loop.history.loss_curve + [1.0]
        reasons.append(stopping.on_epoch_end(loop))
    # Counting starts at step 10: 1 (not > 1), then 2 > 1: stop.
    assert reasons == [None, "converged", "converged"]


def test_warm_start_refuses_switching_batch_norm_on(digits):
    X, y = digits
    clf = fit_quietly(NumpyMLPClassifier(max_iter=2, warm_start=True, **SMALL_MLP), X, y)
    with pytest.raises(ValueError, match="batch_norm"):
        fit_quietly(clf.set_params(batch_norm=True), X, y)


# ------------------------------------------------------------ mutation-audit gaps
def test_interrupted_lbfgs_keeps_the_best_point_evaluated_not_the_last_trial(monkeypatch):
    """A line search tries points worse than the current one; Ctrl-C after
    such a trial must leave the network on the best point seen."""
    import skdigits.training.lbfgs as lbfgs
    from skdigits.nn import Dense, Network
    from skdigits.training import BatchSource, TrainingHistory

    rng = np.random.RandomState(0)
    X, labels = rng.rand(40, 5), rng.randint(3, size=40)
    network = Network([Dense(4, "tanh"), Dense(3)], "softmax", "float64")
    network.build((5,), rng)
    start = network.params.copy()
    worse = start + 50.0  # a far, much worse trial point
    trials = []

    def fake_minimize(objective, x0, **kwargs):
        trials.append(objective(np.array(x0)))
        trials.append(objective(worse))
        raise KeyboardInterrupt

    monkeypatch.setattr(lbfgs, "minimize_lbfgs", fake_minimize)
    source = BatchSource(X, np.eye(3)[labels], None, network.dtype, (5,))
    history = TrainingHistory()
    with pytest.warns(UserWarning, match="interrupted"):
        result = lbfgs.train_lbfgs(network, source, alpha=1e-4, max_iter=5, max_fun=50,
                                   tol=1e-4, history=history)
    assert result is None and history.stop_reason == "interrupted"
    assert trials[1][0] > trials[0][0]
    np.testing.assert_array_equal(network.params, start)


def test_cnn_tall_narrow_images_pool_each_side_by_its_own_size(digits):
    """(8, 2) images: the first block pools to (4, 1); the second cannot pool
    a width of 1 and must not (a width computed from the height would)."""
    from skdigits.nn import Conv2D, ConvReLUPool2D, Flatten

    X, y = digits
    X = X[:200, :16]
    clf = fit_quietly(NumpyCNNClassifier(conv_filters=(2, 2), hidden_layer_sizes=(4,),
                                         image_shape=(8, 2), max_iter=1, random_state=0),
                      X, y[:200])
    kinds = [type(layer) for layer in clf._network.layers]
    # The first block's convolution and pool are one layer.
    assert kinds[:3] == [ConvReLUPool2D, Conv2D, Flatten]
    assert clf._network.layers[2].input_shape == (4, 1, 2)
    assert clf.predict_proba(X[:3]).shape == (3, len(np.unique(y[:200])))


# ------------------------------------------------------------ augmentation
def test_augmentation_changes_training_reproducibly_and_never_prediction(digits):
    X, y = digits
    plain = fit_quietly(NumpyMLPClassifier(max_iter=3, **SMALL_MLP), X, y)
    runs = [fit_quietly(NumpyMLPClassifier(max_iter=3, augment="affine", **SMALL_MLP), X, y)
            for _ in range(2)]
    assert runs[0].loss_curve_ == runs[1].loss_curve_
    np.testing.assert_array_equal(runs[0].coefs_[0], runs[1].coefs_[0])
    assert runs[0].loss_curve_ != plain.loss_curve_
    # Prediction is the plain forward pass: the same input, the same output.
    np.testing.assert_array_equal(runs[0].predict_proba(X[:50]), runs[0].predict_proba(X[:50]))
    hidden = np.maximum(X[:50] @ runs[0].coefs_[0] + runs[0].intercepts_[0], 0)
    logits = hidden @ runs[0].coefs_[1] + runs[0].intercepts_[1]
    np.testing.assert_allclose(runs[0].predict_proba(X[:50]),
                               np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rtol=1e-9)


def test_augmentation_is_a_nested_estimator_for_grid_search(digits):
    from sklearn.base import clone

    from skdigits.augmentation import Augmentation

    clf = NumpyCNNClassifier(augment=Augmentation(rotation=5.0), **SMALL_CNN)
    assert clf.get_params()["augment__rotation"] == 5.0
    twin = clone(clf).set_params(augment__rotation=12.0)
    assert twin.augment.rotation == 12.0 and clf.augment.rotation == 5.0
    X, y = digits
    search = GridSearchCV(NumpyMLPClassifier(max_iter=2, augment=Augmentation(), **SMALL_MLP),
                          {"augment__rotation": [0.0, 15.0]}, cv=2)
    fit_quietly(search, X[:300], y[:300])
    assert search.best_params_["augment__rotation"] in (0.0, 15.0)


def test_augmentation_draws_follow_the_row_not_its_position():
    from skdigits.training.batches import RowKeyedGenerator

    keys = np.array([5, 9, 5, 7], dtype=np.uint64)
    a = RowKeyedGenerator(keys, draw_key=3).random((6, 4))
    b = RowKeyedGenerator(keys[::-1].copy(), draw_key=3).random((6, 4))
    np.testing.assert_array_equal(a[:, 0], a[:, 2])  # equal rows, equal draws
    np.testing.assert_array_equal(a, b[:, ::-1])     # order does not matter
    assert not np.array_equal(a, RowKeyedGenerator(keys, draw_key=4).random((6, 4)))
    assert 0.0 <= a.min() and a.max() < 1.0


@pytest.mark.parametrize("augment", ["affine", "elastic", "nonsense"])
def test_augment_needs_mini_batches_or_a_known_preset(digits, augment):
    X, y = digits
    if augment == "nonsense":
        with pytest.raises(ValueError, match="augment"):
            NumpyMLPClassifier(augment=augment).fit(X, y)
        return
    with pytest.raises(ValueError, match="augment=.* needs mini-batches"):
        NumpyMLPClassifier(solver="lbfgs", augment=augment).fit(X, y)


def test_a_schedule_run_to_its_end_does_not_warn(digits):
    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        clf = NumpyMLPClassifier(max_iter=3, lr_schedule="cosine", **SMALL_MLP).fit(X, y)
    assert clf.stop_reason_ == "max_iter" and clf.n_iter_ == 3
    with pytest.warns(ConvergenceWarning):
        NumpyMLPClassifier(max_iter=3, **SMALL_MLP).fit(X, y)


def test_a_model_with_its_own_augmentation_settings_saves_and_loads(digits, tmp_path):
    from skdigits import load_model, save_model
    from skdigits.augmentation import Augmentation

    X, y = digits
    clf = fit_quietly(NumpyMLPClassifier(max_iter=2, augment=Augmentation(rotation=7.0),
                                         **SMALL_MLP), X, y)
    loaded = load_model(save_model(clf, tmp_path / "aug.skops"))
    assert loaded.augment.rotation == 7.0
    np.testing.assert_array_equal(loaded.predict_proba(X[:20]), clf.predict_proba(X[:20]))
