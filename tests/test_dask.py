"""Scale-out (issue #7): GridSearchCV on a Dask cluster through joblib, and
out-of-core training with dask-ml's Incremental wrapper over partial_fit.

Needs the ``distributed`` extra (dask[array], distributed, dask-ml); every
test skips cleanly when those are not importable.
"""

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import sklearn
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV

import skdigits
from skdigits import NumpyMLPClassifier

dask = pytest.importorskip("dask", reason="dask is not installed (the 'distributed' extra)")
distributed = pytest.importorskip("distributed",
                                  reason="distributed is not installed (the 'distributed' extra)")

pytestmark = pytest.mark.usefixtures("one_blas_thread")
da = pytest.importorskip("dask.array", reason="dask.array needs dask[array]")
joblib = pytest.importorskip("joblib")

#: Where the workers import skdigits from: this checkout, whether or not it is installed.
PACKAGE_ROOT = str(Path(skdigits.__file__).resolve().parent.parent)


def _incremental_class():
    """dask_ml.wrappers.Incremental, or skip saying exactly why it is unusable."""
    try:
        from dask_ml.wrappers import Incremental
    except ImportError as exc:
        pytest.skip(f"dask-ml is not installed or cannot be imported with scikit-learn "
                    f"{sklearn.__version__}: {type(exc).__name__}: {exc}")
    except Exception as exc:  # e.g. dask-ml using a scikit-learn API that was removed
        pytest.skip(f"dask-ml does not import with scikit-learn {sklearn.__version__}: "
                    f"{type(exc).__name__}: {exc}")
    return Incremental


@pytest.fixture(scope="module")
def dask_client(tmp_path_factory):
    """Two worker processes with one thread each, closed after the module."""
    python_path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
    scratch = str(tmp_path_factory.mktemp("dask-scratch"))
    with dask.config.set({"temporary-directory": scratch}):
        cluster = distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
            env={"PYTHONPATH": python_path}, silence_logs=40, local_directory=scratch)
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
            cluster.close()


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:600] / 16, y[:600]


GRID = {"hidden_layer_sizes": [(8,), (16,)], "alpha": [1e-4, 1e-1],
        "learning_rate_init": [1e-3, 1e-2]}


def _grid_search(X, y, n_jobs):
    search = GridSearchCV(NumpyMLPClassifier(max_iter=5, random_state=0), GRID, cv=3,
                          n_jobs=n_jobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return search.fit(X, y)


def test_grid_search_on_a_dask_cluster_matches_the_local_run(dask_client, digits):
    X, y = digits
    local = _grid_search(X, y, n_jobs=1)
    with distributed.get_task_stream(dask_client) as tasks:
        with joblib.parallel_backend("dask"):
            remote = _grid_search(X, y, n_jobs=-1)
    # The 8 x 3 fits ran on the cluster's worker processes (joblib batches
    # several into one task, named "batch_of__fit_and_score_<n>_calls-...") ...
    fits = sum(int(m.group(1)) for t in tasks.data
               if (m := re.search(r"_fit_and_score_(\d+)_calls", str(t["key"]))))
    assert fits == len(local.cv_results_["params"]) * 3, [t["key"] for t in tasks.data]
    assert {t["worker"] for t in tasks.data} <= set(dask_client.scheduler_info()["workers"])
    # ... and found the same model, with the same scores to the last bit.
    assert remote.best_params_ == local.best_params_
    assert remote.best_score_ == local.best_score_
    for key in ("mean_test_score", "std_test_score", "rank_test_score"):
        np.testing.assert_array_equal(remote.cv_results_[key], local.cv_results_[key])
    np.testing.assert_array_equal(remote.predict_proba(X), local.predict_proba(X))


def _manual_partial_fit(X, y, block_rows, classes, epochs=1):
    est = NumpyMLPClassifier((8,), random_state=0)
    for _ in range(epochs):
        for start in range(0, len(X), block_rows):
            est.partial_fit(X[start:start + block_rows], y[start:start + block_rows],
                            classes=classes)
    return est


def _assert_same_model(a, b):
    for u, v in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize("scheduler", ["synchronous", "distributed"])
def test_incremental_trains_out_of_core_on_a_chunked_dask_array(request, digits, scheduler):
    """Incremental feeds the blocks of a chunked dask array to partial_fit
    (classes= passed through fit's keyword arguments): the same model as
    calling partial_fit block by block, in memory.  On the distributed
    scheduler the model is pickled to a worker for every block."""
    Incremental = _incremental_class()
    X, y = digits
    block_rows = 150
    Xd = da.from_array(X, chunks=(block_rows, X.shape[1]))
    yd = da.from_array(y, chunks=block_rows)
    classes = np.unique(y)
    context = dask.config.set(scheduler="synchronous") if scheduler == "synchronous" \
        else request.getfixturevalue("dask_client").as_current()
    with context:
        inc = Incremental(NumpyMLPClassifier((8,), random_state=0), scoring="accuracy",
                          shuffle_blocks=False)
        inc.fit(Xd, yd, classes=classes)
        predicted = inc.predict(Xd).compute()  # lazy: compute before training on
        proba = inc.predict_proba(Xd).compute()
        score = inc.score(Xd, yd)
        # A further epoch: partial_fit on the wrapper continues the same model.
        inc.partial_fit(Xd, yd, classes=classes)
    reference = _manual_partial_fit(X, y, block_rows, classes, epochs=2)
    assert isinstance(inc.estimator_, NumpyMLPClassifier)
    assert inc.estimator_.t_ == 2 * len(X)
    np.testing.assert_array_equal(inc.estimator_.classes_, classes)
    _assert_same_model(inc.estimator_, reference)
    one_epoch = _manual_partial_fit(X, y, block_rows, classes, epochs=1)
    np.testing.assert_array_equal(predicted, one_epoch.predict(X))
    np.testing.assert_array_equal(proba, one_epoch.predict_proba(X))
    assert score == pytest.approx(np.mean(one_epoch.predict(X) == y))
