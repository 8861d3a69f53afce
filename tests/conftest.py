"""Fixtures shared by the test files.

Use them by name, or for a whole module with
``pytestmark = pytest.mark.usefixtures("one_blas_thread")``.
"""

import importlib.util
import os
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

#: The data at hand beside the repository (never copied into it); tests that
#: need it skip when it is absent.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def one_blas_thread():
    """One BLAS thread for the test.

    The test networks are tiny: a second BLAS thread gains nothing, and on a
    busy machine OpenBLAS's spinning threads make runs 10-40x slower.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@pytest.fixture
def no_convergence_warnings():
    """Silence ConvergenceWarning: for tests that cut max_iter short on purpose."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 1,797 8x8 digits, pixels scaled to [0, 1]."""
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


#: The benchmark scripts, which tests load as modules (benchmarks/ is not a package).
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def benchmark_script():
    """``load(name)``: benchmarks/``name``.py as a module."""
    return _load_benchmark


def _load_benchmark(name):
    """benchmarks/``name``.py as a module, its ``from _common import ...`` resolved."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.fixture(scope="session")
def mnist_path():
    """The full MNIST archive in ../shared/data, or skip."""
    path = SHARED_DATA / "mnist.npz"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


class _WatchedPipe:
    """A named pipe, and a thread that releases anything that opens it for reading.

    Opening a pipe for reading waits for a writer: code that wrongly opens
    it would hang the test run. The thread polls for a reader (a non-blocking
    open of the write end succeeds only when there is one), then opens and
    closes the write end, so the reader sees an empty file and the test fails
    on ``opened`` instead of hanging.
    """

    def __init__(self, path):
        os.mkfifo(path)
        self.path, self.opened = path, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._release_readers, daemon=True)
        self._thread.start()

    def _release_readers(self):
        while not self._stop.wait(0.02):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: nobody has it open for reading
                continue
            self.opened = True
            os.close(fd)

    def stop(self):
        self._stop.set()
        self._thread.join()


@pytest.fixture
def named_pipe():
    """Factory ``named_pipe(path)``: make a named pipe that cannot hang the test.

    The returned object's ``opened`` is True if anything opened the pipe for
    reading. Skips where named pipes do not exist.
    """
    if not hasattr(os, "mkfifo"):
        pytest.skip("named pipes (os.mkfifo) are not available")
    pipes = []
    yield lambda path: pipes.append(_WatchedPipe(path)) or pipes[-1]
    for pipe in pipes:
        pipe.stop()


def write_kaggle_csv(path, pixels, labels=None):
    """Write rows of 784 pixels (0-255) in Kaggle Digit Recognizer's layout.

    With ``labels``, a ``label`` column comes first (train.csv); without,
    the pixels alone (test.csv).
    """
    pixels = np.asarray(pixels, dtype=np.int64).reshape(len(pixels), -1)
    header = [f"pixel{i}" for i in range(pixels.shape[1])]
    rows = pixels
    if labels is not None:
        header = ["label"] + header
        rows = np.column_stack([np.asarray(labels, dtype=np.int64), pixels])
    with open(path, "w", newline="") as f:
        f.write(",".join(header) + "\n")
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    return path
