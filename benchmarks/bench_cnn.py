"""NumpyCNNClassifier on MNIST: accuracy with its defaults on all 60,000
training digits, time per epoch and peak memory, side by side with the same
architecture in PyTorch eager mode when PyTorch is installed.

    python benchmarks/bench_cnn.py                   # full run (several minutes)
    python benchmarks/bench_cnn.py --rows 6000 --epochs 2   # quick look

Architecture (the defaults): conv 3x3 32 'same' -> ReLU -> maxpool 2 ->
conv 3x3 64 'same' -> ReLU -> maxpool 2 -> dense 128 ReLU -> dense 10,
Adam 1e-3, batch 64.
"""

import argparse
import datetime
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from _common import load_average, load_mnist, machine, peak_traced_mib
from skdigits import NumpyCNNClassifier


def torch_epoch_seconds(X, y, batches, warm_up=10):
    """Seconds per 60,000-image epoch of the same network in PyTorch (eager, CPU).

    ``batches`` full batches of 64 are timed after ``warm_up`` untimed ones;
    X must hold them all (a slice past its end is an empty batch, which would
    make PyTorch look several times faster than it is).
    """
    import torch

    needed = (warm_up + batches) * 64
    if len(X) < needed:
        raise ValueError(f"timing {batches} PyTorch batches needs {needed} rows, got {len(X)}")
    torch.manual_seed(0)
    # Dropout where NumpyCNNClassifier's defaults have it (conv_dropout=0.25
    # on the flattened conv output, dropout=0.5 after the dense layer).
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Dropout(0.25), torch.nn.Linear(7 * 7 * 64, 128),
        torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt = torch.from_numpy(X[:needed].reshape(-1, 1, 28, 28).astype(np.float32))
    yt = torch.from_numpy(y[:needed].astype(np.int64))

    def step(b):
        optimizer.zero_grad()
        loss_fn(model(Xt[b * 64:(b + 1) * 64]), yt[b * 64:(b + 1) * 64]).backward()
        optimizer.step()

    for b in range(warm_up):
        step(b)
    start = time.perf_counter()
    for b in range(warm_up, warm_up + batches):
        step(b)
    return (time.perf_counter() - start) / batches * (60000 / 64)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--rows", type=int, default=None, help="training rows (default all)")
    parser.add_argument("--epochs", type=int, default=None, help="default: the estimator's")
    parser.add_argument("--torch-batches", type=int, default=150)
    args = parser.parse_args(argv)
    X_all, y_all, X_test, y_test, description = load_mnist(args.data)
    X, y = (X_all[: args.rows], y_all[: args.rows]) if args.rows else (X_all, y_all)
    print(f"# bench_cnn  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}")
    print(f"# {load_average()} at the start")
    print(f"# data: {description}; train {X.shape}, test {X_test.shape}")

    params = {"random_state": 0}
    if args.epochs:
        params["max_iter"] = args.epochs
    clf = NumpyCNNClassifier(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        clf.fit(X, y)
        fit_s = time.perf_counter() - start
    accuracy = clf.score(X_test, y_test)
    per_epoch = np.median(clf._history.epoch_seconds) * 60000 / len(X)
    mem_rows = min(len(X), 6400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        peak = peak_traced_mib(NumpyCNNClassifier(max_iter=1, random_state=0).fit,
                               X[:mem_rows], y[:mem_rows])
    try:
        torch_s = torch_epoch_seconds(X_all, y_all, args.torch_batches)
    except ImportError:
        torch_s = None
    except ValueError as exc:  # e.g. the small fallback data set without MNIST
        print(f"# PyTorch not timed: {exc}")
        torch_s = None
    print(f"| model | epochs | s/epoch (60k) | x pytorch | test acc | peak MiB (1 epoch, "
          f"{mem_rows} rows) |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratio = f"{per_epoch / torch_s:.2f}" if torch_s else "-"
    print(f"| skdigits NumpyCNNClassifier (defaults) | {clf.n_iter_} | {per_epoch:.1f} | {ratio} "
          f"| {100 * accuracy:.2f}% | {peak:.1f} |")
    if torch_s:
        print(f"| pytorch eager, same net ({args.torch_batches} batches) | - | {torch_s:.1f} "
              f"| 1.00 | - | - |")
    print(f"total fit time {fit_s:.0f} s; input data held as float64 "
          f"{X.nbytes / 2**20:.0f} MiB (not copied)")
    print(f"# {load_average()} at the end")


if __name__ == "__main__":
    main()
