"""Shared helpers for the benchmarks: data location, machine facts, timing."""

import os
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist.npz"


def load_mnist(path=None):
    """(X_train, y_train, X_test, y_test, description): float64 in [0, 1], as a user passes it.

    Falls back to scikit-learn's digits (split 75/25) when no MNIST file exists.
    """
    path = Path(path or os.environ.get("SKDIGITS_MNIST", DEFAULT_MNIST))
    if path.exists():
        with np.load(path) as data:
            X_train = data["X_train"].reshape(len(data["X_train"]), -1) / 255.0
            X_test = data["X_test"].reshape(len(data["X_test"]), -1) / 255.0
            return X_train, data["y_train"], X_test, data["y_test"], f"MNIST ({path})"
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, random_state=0)
    return X_train, y_train, X_test, y_test, "scikit-learn digits (no MNIST file found)"


def machine():
    """One line describing this machine and its BLAS."""
    from threadpoolctl import threadpool_info

    blas = [f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads,"
            f" {i.get('architecture')})" for i in threadpool_info() if i.get("user_api") == "blas"]
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"NumPy {np.__version__}, BLAS: {'; '.join(blas) or 'unknown'}")


def load_average():
    """The 1, 5 and 15 minute load averages as text: figures taken while
    other jobs ran are not comparable, so every script prints this."""
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def timed(fn, *args, **kwargs):
    """(result, seconds)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def peak_traced_mib(fn, *args, **kwargs):
    """Peak memory (MiB) traced by tracemalloc while ``fn`` runs; NumPy reports its buffers."""
    tracemalloc.start()
    try:
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def sgemm_gflops(m=200, k=784, n=128, repeat=200):
    """Measured float32 GEMM rate (GFLOP/s) at the shape of one MNIST batch."""
    rng = np.random.default_rng(0)
    A = rng.random((m, k), dtype=np.float32)
    B = rng.random((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(A, B, out=out)
    start = time.perf_counter()
    for _ in range(repeat):
        np.matmul(A, B, out=out)
    return 2 * m * k * n * repeat / (time.perf_counter() - start) / 1e9


# ------------------------------------------------------------ PyTorch peers
def torch_mlp(n_in, hidden, n_out, batch_norm=False):
    """NumpyMLPClassifier's one-hidden-layer network in PyTorch:
    Linear -> ReLU -> Linear, with ``BatchNorm1d`` before the ReLU when
    ``batch_norm`` (where skdigits puts it; the same momentum and epsilon)."""
    from torch import nn

    return nn.Sequential(*_relu_block(nn.Linear(n_in, hidden), nn.BatchNorm1d, hidden, batch_norm),
                         nn.Linear(hidden, n_out))


def torch_cnn(batch_norm=False):
    """NumpyCNNClassifier's default network in PyTorch, on (n, 1, 28, 28)
    images: conv 3x3 32 -> ReLU -> pool -> conv 3x3 64 -> ReLU -> pool ->
    dropout 0.25 -> dense 128 -> ReLU -> dropout 0.5 -> 10, with batch norm
    before each ReLU when ``batch_norm``."""
    from torch import nn

    return nn.Sequential(
        *_relu_block(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d, 32, batch_norm),
        nn.MaxPool2d(2),
        *_relu_block(nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d, 64, batch_norm),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25),
        *_relu_block(nn.Linear(7 * 7 * 64, 128), nn.BatchNorm1d, 128, batch_norm),
        nn.Dropout(0.5), nn.Linear(128, 10))


def _relu_block(layer, norm, units, batch_norm):
    """``layer``, then ``norm(units)`` with batch norm, then a ReLU: the order
    of skdigits' ``activated()``."""
    from torch import nn

    return [layer, *([norm(units)] if batch_norm else []), nn.ReLU()]
