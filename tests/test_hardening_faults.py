"""Fault-injection hardening suite (issue #7, "Reliability").

* Divergence: a huge learning rate on unscaled data ends in a clear error or
  warning, never in a model with NaN weights.
* Determinism: the same random_state gives bit-identical weights and
  predictions with 1 or 2 BLAS threads.
* Concurrency: one fitted model predicting from 8 threads at once gives the
  serial results.
* Interrupt: Ctrl-C (a real SIGINT to this process) mid-fit leaves a usable
  model; a second Ctrl-C interrupts at once and still does; ``skdigits
  train`` saves the model and exits 130.
* Model files: truncated, garbled and malicious files are refused by
  ``load_model`` with a ValueError naming the file, and nothing in them runs.

``SKDIGITS_HARDENING_OUTCOMES=path.jsonl`` appends per-family outcome counts.
"""

import functools
import io
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from threadpoolctl import threadpool_limits

import skdigits
from hardening_support import (  # noqa: F401 - the autouse fixture must be imported
    SideEffect, fuzz, make, one_blas_thread_and_outcomes, record)
from skdigits import (
    ImageTransformer,
    cli,
    load_model,
)
from skdigits.nn.network import Network




posix_signals = pytest.mark.skipif(sys.platform == "win32", reason="POSIX SIGINT semantics")

#: The folder holding the skdigits package being tested.
PACKAGE_ROOT = str(Path(skdigits.__file__).resolve().parents[1])


def all_params(est):
    return est.coefs_ + est.intercepts_


def finite_weights(est):
    return all(np.all(np.isfinite(a)) for a in all_params(est))


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:300], y[:300]  # unscaled: 0 .. 16


# ============================================================ divergence
@pytest.mark.parametrize("name, solver", [("mlp", "adam"), ("mlp", "sgd"), ("cnn", "adam"),
                                          ("cnn", "sgd")])
def test_huge_learning_rate_is_reported(digits, name, solver):
    """learning_rate_init=1e6 on unscaled digits: a ValueError naming the
    learning rate, or a warning saying training diverged -- and never NaN
    weights.  Today Adam (MLP, CNN) and the MLP's SGD end with a finite but
    exploded loss (1e9 .. 1e71 against 2.3 at the start) and only the generic
    'Maximum iterations reached' ConvergenceWarning."""
    X, y = digits
    est = make(name, solver=solver, learning_rate_init=1e6, max_iter=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            est.fit(X, y)
            error = None
        except ValueError as exc:
            error = exc
    family = "divergence (lr=1e6, unscaled)"
    assert finite_weights(est), "a diverged fit left non-finite weights"
    try:
        proba = est.predict_proba(X)
        assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1.0)
    except ValueError as exc:  # clear refusal to predict is acceptable
        assert re.search(r"overflow|scale", str(exc))
    if error is not None:
        assert re.search(r"learning.rate|diverg", str(error), re.IGNORECASE), error
        record(family, "clear error")
        return
    messages = [f"{w.category.__name__}: {w.message}" for w in caught
                if not issubclass(w.category, RuntimeWarning)]
    if not any(re.search(r"diverg|learning.rate|unstable|explod", m, re.IGNORECASE)
               for m in messages):
        record(family, "FAILURE: silent divergence")
        pytest.fail(f"loss went from ~2.3 to {est.loss_:.3g} with no clear error or warning; "
                    f"warnings were: {messages}")
    record(family, "clear warning")


@fuzz(60)
@given(name=st.sampled_from(["mlp", "cnn"]), solver=st.sampled_from(["adam", "sgd", "lbfgs"]),
       log_lr=st.floats(-3, 30), scale=st.sampled_from([1.0, 1e3, 1e6, 1e12, 1e150]),
       dtype=st.sampled_from(["auto", "float32", "float64"]), partial=st.booleans())
def test_never_nan_weights_after_any_fit(digits, name, solver, log_lr, scale, dtype, partial):
    """Whatever the learning rate and input scale: fit and partial_fit either
    succeed with finite weights and probabilities, or raise a ValueError and
    leave finite weights that still predict (or refuse clearly)."""
    if name == "cnn" and solver == "lbfgs":
        solver = "adam"
    if partial and solver == "lbfgs":
        partial = False
    X, y = digits
    X = X[:120] * scale
    y = y[:120]
    est = make(name, solver=solver, learning_rate_init=10.0**log_lr, dtype=dtype)
    family = "divergence (random lr, scale)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if partial:
                est.partial_fit(X, y, classes=np.unique(y))
                est.partial_fit(X, y)
            else:
                est.fit(X, y)
            outcome = "correct result"
        except ValueError as exc:
            assert re.search(r"diverg|float32|scale", str(exc), re.IGNORECASE), exc
            outcome = "clear error"
        if not hasattr(est, "_network"):
            record(family, outcome)
            return
        if not finite_weights(est):
            record(family, "FAILURE: NaN weights")
            pytest.fail(f"non-finite weights after {outcome}")
        # (a fit refused after initialisation, e.g. X beyond float32, has no loss_curve_)
        assert all(np.isfinite(v) for v in getattr(est, "loss_curve_", []))
        try:
            proba = est.predict_proba(X)
        except ValueError as exc:
            assert re.search(r"overflow|float32|scale", str(exc)), exc
        else:
            assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1.0)
    record(family, outcome)


@pytest.mark.parametrize("method", ["fit", "partial_fit"])
def test_a_step_to_non_finite_weights_keeps_the_last_finite_ones(digits, method):
    """The loss of the last mini-batch is finite, but its update overflows
    float32 (lr=1e35, inputs x 1e6): _fit's final check raises 'Solver
    produced non-finite parameter weights' -- and leaves the inf/NaN weights
    in the model, although the docs promise the last finite weights are
    kept.  (Found by test_never_nan_weights_after_any_fit with a random seed.)"""
    X, y = digits
    est = make("mlp", max_iter=1, learning_rate_init=1e35, dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if method == "fit":
                est.fit(X[:120] * 1e6, y[:120])
            else:
                est.partial_fit(X[:120] * 1e6, y[:120], classes=np.unique(y))
        except ValueError as exc:
            assert re.search(r"learning.rate|diverg|non-finite", str(exc)), exc
    assert finite_weights(est), "the model was left with non-finite weights"
    proba = est.predict_proba(X[:120])
    assert np.all(np.isfinite(proba))
    record("divergence (non-finite step)", "correct result")


# ============================================================ determinism
def _mnist_shaped(n, seed=0):
    rng = np.random.RandomState(seed)
    return rng.rand(n, 784).astype(np.float32), rng.randint(0, 10, n)


DETERMINISM_CASES = {
    # name: (estimator, data, dtype_ expected)
    "mlp-small-digits": (lambda: make("mlp", max_iter=5), "digits", "float64"),
    "mlp-mnist-default-batch": (lambda: make("mlp", hidden_layer_sizes=(64,), max_iter=2),
                                2000, "float32"),
    # batch 200 x 784-128-10 = 2.0e7 multiply-adds: two row shards (>= 1.5e7).
    "mlp-mnist-sharded-batch": (lambda: make("mlp", hidden_layer_sizes=(128,), max_iter=2),
                                2000, "float32"),
    # batch 2000 x 784-64-10 = 1.0e8 multiply-adds per batch: computed as two
    # row shards, on two threads when the BLAS setting allows two.
    "mlp-mnist-full-batch": (lambda: make("mlp", hidden_layer_sizes=(64,), batch_size=2000,
                                          max_iter=3), 2000, "float32"),
    "mlp-mnist-lbfgs": (lambda: make("mlp", hidden_layer_sizes=(64,), solver="lbfgs",
                                     max_iter=3), 2000, "float32"),
    "cnn-small-digits": (lambda: make("cnn", max_iter=3), "digits", "float64"),
    # float32 pixels: 'auto' computes in float32, as MLPClassifier would.
    "cnn-mnist-default-batch": (lambda: make("cnn", max_iter=1), 1000, "float32"),
    # batch 3000 x 34,576 multiply-adds per image = 1.04e8: sharded.  (It was
    # a strict xfail while large CNN products used two BLAS threads.)
    "cnn-mnist-full-batch": (lambda: make("cnn", batch_size=3000, max_iter=2), 3000, "float32"),
}


@pytest.mark.parametrize("case", list(DETERMINISM_CASES))
def test_same_random_state_is_bit_identical_with_1_or_2_blas_threads(digits, case):
    factory, data, dtype = DETERMINISM_CASES[case]
    if data == "digits":
        X, y = digits[0] / 16, digits[1]
    else:
        X, y = _mnist_shaped(data)
    runs = []
    for threads in (1, 2, 1):
        with threadpool_limits(threads, user_api="blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = factory().fit(X, y)
            runs.append((threads, est, est.predict_proba(X[:500]), est.predict(X[:500])))
    assert runs[0][1].dtype_ == dtype
    family = "determinism (1 vs 2 BLAS threads)"
    (_, a, pa, ya), (_, b, pb, yb), (_, c, pc, yc) = runs
    # Repeatable on one thread ...
    for u, v in zip(all_params(a), all_params(c)):
        assert np.array_equal(u, v), "two single-threaded fits differ"
    assert np.array_equal(pa, pc) and np.array_equal(ya, yc)
    # ... and the same on two threads.
    same = [np.array_equal(u, v) for u, v in zip(all_params(a), all_params(b))]
    if not (all(same) and np.array_equal(pa, pb) and np.array_equal(ya, yb)):
        worst = max(float(np.max(np.abs(u.astype(np.float64) - v)))
                    for u, v in zip(all_params(a), all_params(b)))
        record(family, "FAILURE: differs")
        pytest.fail(f"{case}: 1 vs 2 BLAS threads give different weights (identical per "
                    f"array: {same}; max |difference| {worst:.3g}) and predict_proba max "
                    f"|difference| {float(np.max(np.abs(pa - pb))):.3g}")
    record(family, "correct result")


# ============================================================ concurrency
@pytest.fixture(scope="module")
def concurrent_models():
    X, y = _mnist_shaped(1100, seed=1)
    X = X[:, :196]  # 14 x 14 images: several 256-row prediction chunks per call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        models = {"mlp": make("mlp", max_iter=3).fit(X, y),
                  "cnn": make("cnn", max_iter=1).fit(X, y)}
    return models, X


def _predict_from_threads(est, X, rounds=4, n_threads=8):
    chunks = np.array_split(np.arange(len(X)), n_threads)
    for _ in range(rounds):
        barrier = threading.Barrier(n_threads)

        def work(i, barrier=barrier):
            barrier.wait()
            if i % 2:
                return i, "proba", est.predict_proba(X[chunks[i]])
            return i, "predict", est.predict(X)

        with ThreadPoolExecutor(n_threads) as pool:
            results = list(pool.map(work, range(n_threads)))
        yield results


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_predictions_from_8_threads_equal_serial(concurrent_models, name):
    models, X = concurrent_models
    est = models[name]
    serial_proba, serial_pred = est.predict_proba(X), est.predict(X)
    family = "concurrency (8 threads)"
    for results in _predict_from_threads(est, X):
        for i, kind, result in results:
            chunk = np.array_split(np.arange(len(X)), 8)[i]
            expected = serial_proba[chunk] if kind == "proba" else serial_pred
            if not np.array_equal(result, expected):
                record(family, "FAILURE: differs")
                pytest.fail(f"thread {i} ({kind}) differs from the serial result")
            record(family, "correct result")


OVERLAPPING_PREDICTIONS = r"""
import json, threading, warnings
import numpy as np
from threadpoolctl import threadpool_info
from skdigits import NumpyMLPClassifier
from skdigits.nn.network import Network

def blas():
    return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")

warnings.simplefilter("ignore")
rng = np.random.RandomState(0)
X, y = rng.rand(600, 196), rng.randint(0, 10, 600)
est = NumpyMLPClassifier((8,), max_iter=3, random_state=0).fit(X, y)
expected = est.predict_proba(X)
before = blas()
original = Network.predict_chunks
inside = {"A": threading.Event(), "B": threading.Event()}
release_a, a_done = threading.Event(), threading.Event()
seen = {}

def predict_chunks(self, *args, **kwargs):
    me = threading.current_thread().name
    if me not in inside or inside[me].is_set():  # a helper thread, or A's second half
        return original(self, *args, **kwargs)
    seen[me] = blas()
    inside[me].set()
    (release_a if me == "A" else a_done).wait(5)
    return original(self, *args, **kwargs)

Network.predict_chunks = predict_chunks
results = {}

def predict(name):
    results[name] = est.predict_proba(X)
    if name == "A":
        a_done.set()

a = threading.Thread(target=predict, args=("A",), name="A")
b = threading.Thread(target=predict, args=("B",), name="B")
a.start(); inside["A"].wait(5)
b.start(); inside["B"].wait(2)  # an implementation that serialises keeps B out: fine
release_a.set(); a.join(10); b.join(10)
print(json.dumps({"before": before, "after": blas(), "inside": seen,
                  "same": all(np.array_equal(r, expected) for r in results.values())}))
"""


def test_overlapping_predictions_leave_the_blas_thread_count_alone():
    """Each prediction limits BLAS to one thread with threadpoolctl, which
    saves the process-wide setting on entry and restores it on exit.  Two
    overlapping predictions from two threads -- A enters (saves 2, sets 1),
    B enters (saves 1), A leaves (restores 2), B leaves (restores 1) -- leave
    the whole process on one BLAS thread for good.  The interleaving is
    forced (a wrapper around Network.predict_chunks, which runs inside the
    limit) in a fresh interpreter, where no other limit is active."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-c", OVERLAPPING_PREDICTIONS], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    if max(report["before"]) == 1:
        pytest.skip("BLAS has only one thread here")
    assert report["same"], "overlapping predictions gave different results"
    if report["after"] != report["before"]:
        record("concurrency (8 threads)", "FAILURE: BLAS setting leaked")
    assert report["after"] == report["before"], (
        f"BLAS threads before {report['before']}, after two overlapping predictions "
        f"{report['after']} (inside the predictions: {report['inside']})")


# ============================================================ Ctrl-C
class SigintDuringFit:
    """Send SIGINT to this process ``delay`` s after training installed its
    handler (via threading.Timer).  A test handler is active around the fit,
    so a signal outside training cannot abort pytest; it is counted as stray."""

    def __init__(self, delay=0.3):
        self.delay, self.sent_at, self.stray = delay, None, []
        self._done = threading.Event()
        self._handler = self._test_handler  # one bound method, to compare with ==

    def _test_handler(self, signum, frame):
        self.stray.append(time.perf_counter())

    def _send(self):
        deadline = time.perf_counter() + 30
        # Training replaces our handler with its own; never signal before that.
        while signal.getsignal(signal.SIGINT) == self._handler:
            if self._done.is_set() or time.perf_counter() > deadline:
                return
            time.sleep(0.005)
        if self._done.is_set():
            return
        self.sent_at = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)

    def run(self, func):
        previous = signal.signal(signal.SIGINT, self._handler)
        timer = threading.Timer(self.delay, self._send)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                timer.start()
                result = func()
                self.finished_at = time.perf_counter()
            self._done.set()
            timer.join(5)
            self.handler_after = signal.getsignal(signal.SIGINT)
            self.handler_restored = self.handler_after == self._handler
        finally:
            self._done.set()
            timer.cancel()
            signal.signal(signal.SIGINT, previous)
        self.warnings = caught
        return result


INTERRUPT_CASES = {
    "mlp-adam": lambda: make("mlp", max_iter=5000),
    "mlp-sgd": lambda: make("mlp", solver="sgd", max_iter=5000),
    "mlp-lbfgs": lambda: make("mlp", solver="lbfgs", max_iter=20000, max_fun=10**6),
    "cnn-adam": lambda: make("cnn", max_iter=2000),
}


@posix_signals
@pytest.mark.parametrize("case", list(INTERRUPT_CASES))
def test_ctrl_c_during_fit_keeps_a_usable_model(case):
    rng = np.random.RandomState(0)
    X, y = rng.rand(2000, 64), rng.randint(0, 10, 2000)
    est = INTERRUPT_CASES[case]().set_params(tol=0.0, n_iter_no_change=np.inf)
    ctrl_c = SigintDuringFit(delay=0.3)
    ctrl_c.run(lambda: est.fit(X, y))
    family = "Ctrl-C during fit"
    assert ctrl_c.sent_at is not None, "the fit finished before the timer fired"
    assert not ctrl_c.stray, "SIGINT arrived outside training"
    assert ctrl_c.handler_restored, f"SIGINT handler left installed: {ctrl_c.handler_after}"
    messages = [str(w.message) for w in ctrl_c.warnings if issubclass(w.category, UserWarning)]
    assert "Training interrupted by user." in messages
    assert not any(issubclass(w.category, ConvergenceWarning) for w in ctrl_c.warnings)
    assert ctrl_c.finished_at - ctrl_c.sent_at < 10, "fit took too long to stop"
    assert est.n_iter_ < est.max_iter
    assert finite_weights(est)
    proba = est.predict_proba(X)
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1.0)
    assert np.isin(est.predict(X), est.classes_).all()
    if est.solver != "lbfgs":  # the interrupted model trains on
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.partial_fit(X[:200], y[:200])
        assert finite_weights(est)
    record(family, "correct result")


@posix_signals
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_second_ctrl_c_interrupts_at_once_and_keeps_a_usable_model(monkeypatch, name):
    """Two real SIGINTs in the middle of epoch 3 (third mini-batch): the first
    only sets the stop flag; the second raises KeyboardInterrupt inside the
    loop at once, and the weights go back to where epoch 3 started -- never a
    half-applied update.  The signals are sent from inside the training loop
    (a wrapper around Network.data_loss_and_gradient, which every batch
    goes through), so this is deterministic."""
    rng = np.random.RandomState(0)
    X, y = rng.rand(1000, 16), rng.randint(0, 3, 1000)
    batches_per_epoch = 5  # 1000 rows, batch_size=200
    target_batch = 2 * batches_per_epoch + 2
    original = Network.data_loss_and_gradient
    seen = {"calls": 0, "epoch_starts": [], "flag_after_first": None, "raised_here": False}

    def data_loss_and_gradient(self, *args, **kwargs):
        call = seen["calls"]
        seen["calls"] += 1
        if call % batches_per_epoch == 0:
            seen["epoch_starts"].append(self.params.copy())
        if call == target_batch:
            seen["mid_epoch"] = self.params.copy()
            os.kill(os.getpid(), signal.SIGINT)  # first Ctrl-C: a request to stop
            handler = signal.getsignal(signal.SIGINT)
            seen["flag_after_first"] = getattr(getattr(handler, "__self__", None), "requested", None)
            try:
                os.kill(os.getpid(), signal.SIGINT)  # second Ctrl-C: stop now
            except KeyboardInterrupt:
                seen["raised_here"] = True
                raise
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Network, "data_loss_and_gradient", data_loss_and_gradient)
    est = make(name, max_iter=50, batch_size=200, tol=0.0, n_iter_no_change=np.inf)
    previous = signal.getsignal(signal.SIGINT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X, y)
    assert signal.getsignal(signal.SIGINT) is previous
    assert seen["flag_after_first"] is True, "the first Ctrl-C did not just set the flag"
    assert seen["raised_here"], "the second Ctrl-C did not interrupt at once"
    assert seen["calls"] == target_batch + 1, "training went on after the second Ctrl-C"
    assert "Training interrupted by user." in [str(w.message) for w in caught]
    assert est.n_iter_ == 2
    # Back at the start of epoch 3, not at the half-way weights.
    assert np.array_equal(est._network.params, seen["epoch_starts"][2])
    assert not np.array_equal(est._network.params, seen["mid_epoch"])
    assert finite_weights(est)
    proba = est.predict_proba(X)
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1.0)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.partial_fit(X[:200], y[:200])
    record("Ctrl-C twice during fit", "correct result")


@posix_signals
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_second_ctrl_c_during_concurrent_shards_keeps_a_usable_model(monkeypatch, name):
    """As above, with every batch split into two row shards computed on two
    threads: the second Ctrl-C lands in the main thread's shard while the
    helper thread is computing the other one.  The fit still returns the
    weights of the epoch's start, and no shard thread outlives it."""
    import skdigits.concurrency

    monkeypatch.setattr(skdigits.concurrency, "SHARD_MIN_MULTIPLY_ADDS", 1)
    rng = np.random.RandomState(0)
    X, y = rng.rand(1000, 16), rng.randint(0, 3, 1000)
    batches_per_epoch, target_batch = 5, 2 * 5 + 2
    original = Network.data_loss_and_gradient
    seen = {"main_calls": 0, "helper_threads": set(), "epoch_starts": []}

    def data_loss_and_gradient(self, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            seen["helper_threads"].add(threading.current_thread().name)
            return original(self, *args, **kwargs)
        call = seen["main_calls"]
        seen["main_calls"] += 1
        if call % batches_per_epoch == 0:
            seen["epoch_starts"].append(self.params.copy())
        if call == target_batch:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Network, "data_loss_and_gradient", data_loss_and_gradient)
    est = make(name, max_iter=50, batch_size=200, tol=0.0, n_iter_no_change=np.inf)
    with threadpool_limits(2, user_api="blas"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X, y)
    assert seen["helper_threads"] and all(n.startswith("skdigits-shard")
                                          for n in seen["helper_threads"])
    assert not [t for t in threading.enumerate() if t.name.startswith("skdigits-shard")]
    assert seen["main_calls"] == target_batch + 1, "training went on after the second Ctrl-C"
    assert "Training interrupted by user." in [str(w.message) for w in caught]
    assert est.n_iter_ == 2
    assert np.array_equal(est._network.params, seen["epoch_starts"][2])
    assert finite_weights(est)
    proba = est.predict_proba(X)
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1.0)
    record("Ctrl-C twice during fit", "correct result")


def _write_kaggle_csv(path, n, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 10
    X = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):  # a bar whose width and place depend on the label
        top, left = rng.randint(4, 12), rng.randint(4, 16)
        X[i, top:top + 12, left:left + 2 + y[i] % 6] = 255
    header = "label," + ",".join(f"pixel{i}" for i in range(784))
    np.savetxt(path, np.column_stack([y, X.reshape(n, -1)]), fmt="%d", delimiter=",",
               header=header, comments="")
    return X.reshape(n, -1), y


@posix_signals
def test_ctrl_c_during_cli_train_saves_a_loadable_model(tmp_path, capsys):
    csv_path, model_path = tmp_path / "train.csv", tmp_path / "model.skops"
    X, _ = _write_kaggle_csv(csv_path, 800)  # 200 epochs take seconds
    ctrl_c = SigintDuringFit(delay=0.25)
    code = ctrl_c.run(lambda: cli.main(["train", str(csv_path), "-o", str(model_path),
                                        "--epochs", "200"]))
    out, err = capsys.readouterr()
    assert ctrl_c.sent_at is not None, "training finished before the timer fired"
    assert not ctrl_c.stray and ctrl_c.handler_restored
    assert code == 130, (out, err)
    assert "Interrupted: saved the model trained so far" in out
    assert "Traceback" not in err
    model = load_model(model_path)
    assert 0 <= model[-1].n_iter_ < 200
    proba = model.predict_proba(X[:20])
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1.0)
    record("Ctrl-C during `skdigits train`", "correct result")


# ============================================================ model files
class RunsCommand:
    """Runs ``touch marker`` through os.system when unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, digits):
    """A fitted pipeline as saved by save_model (stored entries) and the same
    archive re-packed with deflate (what sio.dump(..., compression=ZIP_DEFLATED)
    writes), plus rows to predict."""
    from skdigits import save_model

    X, y = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Pipeline([("images", ImageTransformer(size=(8, 8), center=False)),
                          ("mlp", make("mlp"))]).fit(X, y)
    path = tmp_path_factory.mktemp("models") / "model.skops"
    save_model(model, path)
    stored = path.read_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(stored)) as src, \
            zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    deflated = buffer.getvalue()
    assert np.array_equal(load_model(path).predict_proba(X), model.predict_proba(X))
    return {"stored": stored, "deflated": deflated, "X": X[:50],
            "proba": model.predict_proba(X[:50])}


def expect_refusal(family, path, marker=None, keywords=None):
    """load_model(path) raises a ValueError/TypeError naming the file (and
    ``keywords``), and ``marker`` is never created."""
    try:
        model = load_model(path)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if str(path) not in message or (keywords and not re.search(keywords, message, re.IGNORECASE)):
            record(family, "FAILURE: unclear message")
            pytest.fail(f"{family}: unclear refusal: {message[:300]}")
        outcome = "clear error"
    except Exception as exc:
        record(family, f"FAILURE: {type(exc).__name__}")
        raise AssertionError(f"{family}: load_model raised {type(exc).__name__} instead of a "
                             f"ValueError: {exc}") from exc
    else:
        outcome = "loaded"
    if marker is not None and os.path.exists(marker):
        record(family, "FAILURE: payload ran")
        pytest.fail(f"{family}: the file's payload ran (marker {marker} exists)")
    if outcome == "loaded":
        return model
    record(family, outcome)
    return None


def _prefix_lengths(size, seed=0):
    rng = random.Random(seed)
    lengths = set(range(min(size, 64))) | set(range(max(0, size - 64), size))
    lengths |= {rng.randrange(size) for _ in range(120)}
    return sorted(lengths)


@pytest.mark.parametrize("variant", ["stored", "deflated"])
def test_truncated_model_files_are_refused(model_files, tmp_path, variant):
    data = model_files[variant]
    path = tmp_path / "truncated.skops"
    for length in _prefix_lengths(len(data)):
        path.write_bytes(data[:length])
        model = expect_refusal(f"model files: truncated ({variant})", path)
        assert model is None, f"a {length}-byte prefix of a {len(data)}-byte model file loaded"


@pytest.mark.parametrize("variant", ["stored", "deflated"])
@fuzz(120)
@given(data=st.data())
def test_garbled_model_files_are_refused_or_intact(model_files, tmp_path_factory, variant, data):
    """Random byte flips: refused with a ValueError, or -- when the flips only
    touched bytes that do not matter -- a model predicting exactly as before."""
    content = bytearray(model_files[variant])
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(content) - 1), st.integers(1, 255)),
                               min_size=1, max_size=6))
    for position, mask in flips:
        content[position] ^= mask
    path = tmp_path_factory.mktemp("garbled") / "garbled.skops"
    path.write_bytes(bytes(content))
    family = f"model files: garbled ({variant})"
    model = expect_refusal(family, path)
    if model is not None:
        proba = model.predict_proba(model_files["X"])
        if not np.array_equal(proba, model_files["proba"]):
            record(family, "FAILURE: silently changed model")
            pytest.fail(f"flips {flips} gave a loadable model that predicts differently")
        record(family, "correct result (intact)")


@pytest.mark.parametrize("payload", [SideEffect, RunsCommand])
@pytest.mark.parametrize("form", ["pickle-0", "pickle-2", "pickle-4", "pickle-5",
                                  "joblib", "joblib-zlib", "pickle-in-zip"])
def test_pickle_payloads_are_refused_and_never_run(tmp_path, payload, form):
    marker = tmp_path / "pwned"
    obj = payload(marker)
    path = tmp_path / "model.skops"
    if form.startswith("pickle-") and form != "pickle-in-zip":
        path.write_bytes(pickle.dumps(obj, protocol=int(form.split("-")[1])))
    elif form.startswith("joblib"):
        joblib = pytest.importorskip("joblib")
        joblib.dump(obj, path, compress=3 if form == "joblib-zlib" else 0)
    else:  # a zip holding a pickle, as torch.save and some model hubs write
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", pickle.dumps(obj))
            z.writestr("schema.json", b"{}")
    expect_refusal("model files: malicious pickles", path, marker)
    # Control: the payload is live (it does act when unpickled), checked last.
    if form.startswith("pickle-") and form != "pickle-in-zip" and payload is SideEffect:
        pickle.loads(path.read_bytes()).close()
        assert marker.exists()


def _node(cls, module, loader, **fields):
    return {"__class__": cls, "__module__": module, "__loader__": loader, **fields}


def _json_str(value):
    return _node("str", "builtins", "JsonNode", content=json.dumps(value), is_json=True)


def _tuple(*items):
    return _node("tuple", "builtins", "TupleNode", content=list(items))


def _skops_zip(schema, entries=()):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("schema.json", json.dumps(schema) if not isinstance(schema, bytes) else schema)
        for name, content in entries:
            z.writestr(name, content)
    return buffer.getvalue()


def _protocol():
    return json.loads(zipfile.ZipFile(io.BytesIO(sio.dumps(1))).read("schema.json"))["protocol"]


def _crafted_schemas(marker):
    command = _tuple(_json_str(f"touch {marker}"))
    schemas = {
        "ctor-os.system": _node("system", "os", "ConstructorFromReduceNode", content=command),
        "ctor-subprocess.call": _node("call", "subprocess", "ConstructorFromReduceNode",
                                      content=_tuple(_node("list", "builtins", "ListNode",
                                                           content=[_json_str("touch"),
                                                                    _json_str(str(marker))]))),
        "function-builtins.eval": _node("eval", "builtins", "TypeNode"),
        "function-builtins.exec": _node("exec", "builtins", "TypeNode"),
        "object-os.system": _node("system", "os", "ObjectNode"),
        "partial-posix.system": _node("partial", "functools", "PartialNode", content={
            "func": _node("system", "posix", "TypeNode"), "args": command,
            "kwds": _node("dict", "builtins", "DictNode", content={},
                          key_types=_node("list", "builtins", "ListNode", content=[])),
            "namespace": _node("dict", "builtins", "DictNode", content={},
                               key_types=_node("list", "builtins", "ListNode", content=[]))}),
        "ctor-builtins.__import__": _node("__import__", "builtins", "ConstructorFromReduceNode",
                                          content=_tuple(_json_str("antigravity"))),
    }
    for schema in schemas.values():
        schema["protocol"] = _protocol()
    return schemas


@pytest.mark.parametrize("name", list(_crafted_schemas("m")))
def test_crafted_skops_schema_naming_dangerous_callables_is_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.skops"
    path.write_bytes(_skops_zip(_crafted_schemas(marker)[name]))
    dangerous = name.split("-", 1)[1].rsplit(".", 1)[-1]
    model = expect_refusal("model files: malicious skops", path, marker,
                           keywords=rf"allow-list.*{re.escape(dangerous)}")
    assert model is None, f"{name} loaded: {model!r}"


def _dangerous_objects(marker):
    return {
        "eval": FunctionTransformer(eval),
        "os.system": FunctionTransformer(os.system),
        "partial(os.system, touch)": FunctionTransformer(
            functools.partial(os.system, f"touch {marker}")),
        "subprocess.Popen": FunctionTransformer(subprocess.Popen),
        "object with __setstate__": {"model": FunctionTransformer(), "x": SideEffect(marker)},
    }


@pytest.mark.parametrize("name", list(_dangerous_objects("m")))
def test_skops_file_of_a_pipeline_with_dangerous_parts_is_refused(tmp_path, model_files, name):
    """Real skops files (written by sio.dumps) that name dangerous callables,
    nested inside an otherwise valid Pipeline next to our own classifier."""
    from skdigits.persistence import trusted_types

    marker = tmp_path / "pwned"
    good = sio.loads(model_files["stored"], trusted=trusted_types())
    evil = Pipeline([("evil", _dangerous_objects(marker)[name]), ("model", good)])
    path = tmp_path / "model.skops"
    path.write_bytes(sio.dumps(evil))
    model = expect_refusal("model files: malicious skops", path, marker,
                           keywords=r"allow-list")
    assert model is None


def test_npy_entry_holding_pickled_objects_is_refused(tmp_path, model_files):
    """Replace an array of a real model file with an object array (pickled
    inside the .npy): skops reads arrays with allow_pickle=False."""
    marker = tmp_path / "pwned"
    payload = io.BytesIO()
    np.save(payload, np.array([SideEffect(marker), RunsCommand(marker)], dtype=object),
            allow_pickle=True)
    src = zipfile.ZipFile(io.BytesIO(model_files["stored"]))
    arrays = sorted((i for i in src.infolist() if i.filename.endswith(".npy")),
                    key=lambda i: -i.file_size)
    for victim in arrays[:3]:
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as dst:
            for info in src.infolist():
                content = payload.getvalue() if info.filename == victim.filename \
                    else src.read(info.filename)
                dst.writestr(info.filename, content)
        path = tmp_path / "model.skops"
        path.write_bytes(buffer.getvalue())
        assert expect_refusal("model files: malicious skops", path, marker) is None


def _deeply_nested_nodes(depth):
    leaf = json.dumps(_node("int", "builtins", "JsonNode", content="1", is_json=True))
    head = '{"__class__": "list", "__module__": "builtins", "__loader__": "ListNode", "content": ['
    body = head * depth + leaf + "]}" * depth
    return ('{"protocol": %d, ' % _protocol() + body[1:]).encode()


STRUCTURAL_CASES = {
    "schema-is-a-list": b"[]",
    "schema-is-a-number": b"1",
    "schema-is-null": b"null",
    "schema-is-a-string": b'"model"',
    "json-nested-100000-deep": b"[" * 100000 + b"]" * 100000,
    "nodes-nested-400-deep": None,  # filled in below (needs the protocol)
    "dict-node-content-is-a-list": None,
    "unknown-loader": None,
}


def _structural(name):
    if name == "nodes-nested-400-deep":
        return _deeply_nested_nodes(400)
    if name == "dict-node-content-is-a-list":
        return {**_node("dict", "builtins", "DictNode", content=[],
                        key_types=_node("list", "builtins", "ListNode", content=[])),
                "protocol": _protocol()}
    if name == "unknown-loader":
        return {**_node("dict", "builtins", "EvilNode", content={}), "protocol": _protocol()}
    return STRUCTURAL_CASES[name]


@pytest.mark.parametrize("name", list(STRUCTURAL_CASES))
def test_structurally_invalid_skops_files_are_refused(tmp_path, name):
    """Zip archives whose schema.json is valid JSON of the wrong shape, or
    nested deeper than Python's recursion limit (a few hundred bytes).
    Today: AttributeError ('list' object has no attribute 'get') and
    RecursionError escape load_model, which only catches
    BadZipFile/KeyError/ValueError/TypeError around skops' audit."""
    path = tmp_path / "model.skops"
    path.write_bytes(_skops_zip(_structural(name)))
    assert expect_refusal("model files: structurally invalid", path) is None


def _damaged_container(kind, stored, deflated):
    data = bytearray(stored if kind != "corrupt-deflate-stream" else deflated)
    central = bytes(data).rindex(b"PK\x01\x02")  # the last entry's central directory record
    if kind == "encryption-flag-set":
        data[central + 8] |= 0x01
    elif kind == "unknown-compression-method":
        data[central + 10] = 99
    elif kind == "corrupt-deflate-stream":
        # Flip one byte of schema.json's compressed data, the first one that
        # makes zlib itself fail (other flips end in a CRC mismatch).
        import zlib

        with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
            info = z.getinfo("schema.json")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        for position in range(start + 8, start + info.compress_size):
            candidate = bytearray(data)
            candidate[position] ^= 0xFF
            try:
                zipfile.ZipFile(io.BytesIO(bytes(candidate))).read("schema.json")
            except zlib.error:
                return bytes(candidate)
            except Exception:
                continue
        raise AssertionError("no single-byte flip breaks the deflate stream")
    elif kind == "zip-version-needed-too-high":
        data[central + 6] = 99
    return bytes(data)


@pytest.mark.parametrize("kind", ["encryption-flag-set", "unknown-compression-method",
                                  "corrupt-deflate-stream", "zip-version-needed-too-high"])
def test_damaged_zip_containers_are_refused(model_files, tmp_path, kind):
    """One damaged header field or deflate stream (an encryption flag, an
    unknown compression method, a too-new zip version, a corrupt deflate
    stream): load_model refuses each with a ValueError naming the file,
    rather than letting zipfile's or zlib's own exception types escape."""
    path = tmp_path / "model.skops"
    path.write_bytes(_damaged_container(kind, model_files["stored"], model_files["deflated"]))
    assert expect_refusal("model files: damaged zip container", path) is None


def test_zip_bomb_is_refused(model_files, tmp_path):
    """A 33 kB model file whose schema.json inflates to 32 MB (about 1000:1;
    a real schema is ~60 kB) is refused from the sizes in the zip directory,
    before anything is inflated.  Today it is inflated, parsed and loaded; the
    memory and time grow with the padding (see the report)."""
    with zipfile.ZipFile(io.BytesIO(model_files["stored"])) as src:
        schema = src.read("schema.json")
        arrays = [(i.filename, src.read(i.filename)) for i in src.infolist()
                  if i.filename != "schema.json"]
    padding = b" " * (32 << 20)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(zipfile.ZipInfo("schema.json"), padding + schema,
                   compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        for name, content in arrays:
            z.writestr(name, content)
    del padding
    path = tmp_path / "bomb.skops"
    path.write_bytes(buffer.getvalue())
    assert path.stat().st_size < 100_000
    model = expect_refusal("model files: zip bomb", path,
                           keywords=r"large|size|uncompress|inflat|bomb|limit")
    if model is not None:
        record("model files: zip bomb", "FAILURE: inflated and loaded")
        pytest.fail("a 1000:1 zip bomb was inflated and loaded")
