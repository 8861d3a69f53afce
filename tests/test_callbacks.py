"""scikit-learn 1.9's callback API (sklearn.callback) on our estimators."""

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdigits import NumpyCNNClassifier, NumpyMLPClassifier

callback = pytest.importorskip("sklearn.callback", reason="scikit-learn < 1.9 has no callbacks")

# The fits here stop after a few epochs on purpose.
pytestmark = pytest.mark.usefixtures("no_convergence_warnings")


class Recorder:
    """A FitCallback that records the tasks it sees and can ask to stop."""

    def __init__(self, stop_after=None):
        self.stop_after = stop_after
        self.events = []

    def setup(self, estimator, context):
        self.events.append(("setup", context.task_name))

    def on_fit_task_begin(self, estimator, context):
        self.events.append(("begin", context.task_name))

    def on_fit_task_end(self, estimator, context, *, metadata=None, fitted_estimator=None):
        self.events.append(("end", context.task_name, metadata, fitted_estimator))
        epochs = sum(1 for e in self.events if e[0] == "end" and e[1] == "epoch")
        return self.stop_after is not None and epochs >= self.stop_after

    def teardown(self, estimator, context):
        self.events.append(("teardown", context.task_name))


def test_one_subtask_per_epoch_with_its_loss_and_a_usable_snapshot(digits):
    X, y = digits
    rec = Recorder()
    clf = NumpyMLPClassifier(hidden_layer_sizes=(16,), max_iter=4, random_state=0)
    clf.set_callbacks(rec).fit(X, y)
    epochs = [e for e in rec.events if e[0] == "end" and e[1] == "epoch"]
    assert len(epochs) == clf.n_iter_ == 4
    # Metadata is what scorers accept (none without sample_weight); the
    # epoch's loss is on the snapshot, as on a fitted estimator.
    assert all(e[2] is None for e in epochs)
    assert [e[3].loss_curve_[-1] for e in epochs] == pytest.approx(clf.loss_curve_)
    # The snapshot handed over after the first epoch predicts like that epoch's weights.
    first = epochs[0][3]
    assert first.predict(X[:5]).shape == (5,)
    assert not np.array_equal(first.coefs_[0], clf.coefs_[0])
    assert rec.events[0][0] == "setup" and rec.events[-1][0] == "teardown"


def test_a_callback_can_stop_training(digits):
    X, y = digits
    clf = NumpyMLPClassifier(hidden_layer_sizes=(16,), max_iter=50, random_state=0)
    clf.set_callbacks(Recorder(stop_after=3)).fit(X, y)
    assert clf.n_iter_ == 3
    assert clf.stop_reason_ == "callback"


def test_a_callback_can_stop_lbfgs(digits):
    X, y = digits

    class StopAfterTwo(Recorder):
        def on_fit_task_end(self, estimator, context, *, metadata=None, fitted_estimator=None):
            super().on_fit_task_end(estimator, context, metadata=metadata,
                                    fitted_estimator=fitted_estimator)
            return sum(1 for e in self.events if e[0] == "end" and e[1] == "lbfgs-iter") >= 2

    clf = NumpyMLPClassifier(hidden_layer_sizes=(16,), solver="lbfgs", max_iter=50,
                             random_state=0)
    clf.set_callbacks(StopAfterTwo()).fit(X, y)
    assert clf.stop_reason_ == "callback"
    assert len(clf.loss_curve_) == 2


def test_lbfgs_reports_iterations(digits):
    X, y = digits
    rec = Recorder()
    NumpyMLPClassifier(hidden_layer_sizes=(16,), solver="lbfgs", max_iter=5,
                       random_state=0).set_callbacks(rec).fit(X, y)
    assert any(e[0] == "end" and e[1] == "lbfgs-iter" for e in rec.events)


def test_cnn_reports_epochs(digits):
    X, y = digits
    rec = Recorder()
    NumpyCNNClassifier(conv_filters=(4,), hidden_layer_sizes=(8,), max_iter=2,
                       random_state=0).set_callbacks(rec).fit(X[:200], y[:200])
    assert sum(1 for e in rec.events if e[0] == "end" and e[1] == "epoch") == 2


def test_progress_bar_in_pipeline_and_grid_search(digits):
    pytest.importorskip("rich")
    X, y = digits
    pipe = make_pipeline(StandardScaler(), NumpyMLPClassifier(hidden_layer_sizes=(8,), max_iter=2))
    pipe.set_callbacks(callback.ProgressBar()).fit(X, y)
    grid = GridSearchCV(NumpyMLPClassifier(hidden_layer_sizes=(8,), max_iter=2),
                        {"alpha": [1e-4, 1e-2]}, cv=2)
    grid.set_callbacks(callback.ProgressBar()).fit(X, y)
    assert grid.best_estimator_.n_iter_ == 2


def test_callbacks_are_not_left_on_the_estimator(digits):
    X, y = digits
    clf = NumpyMLPClassifier(hidden_layer_sizes=(8,), max_iter=2).set_callbacks(Recorder())
    clf.fit(X, y)
    assert not hasattr(clf, "_callback_ctx") and not hasattr(clf, "_callback_fit_ctx")
