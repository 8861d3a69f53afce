"""NumpyCNNClassifier on MNIST beside the same network in PyTorch eager mode,
in one process: time per epoch, the share of the direct convolution's GEMM
floor, peak memory and test accuracy.

    python benchmarks/bench_cnn.py                          # accuracy fit + 3 timing turns
    python benchmarks/bench_cnn.py --epochs 0 --turns 5     # timing turns only
    python benchmarks/bench_cnn.py --rows 6000 --epochs 2   # quick look
    python benchmarks/bench_cnn.py --epochs 0 --batch-norm --one-thread
                                                            # with batch norm; ours on one core too

Architecture (the estimator's defaults): conv 3x3 32 'same' -> ReLU ->
maxpool 2 -> conv 3x3 64 'same' -> ReLU -> maxpool 2 -> dropout 0.25 ->
dense 128 ReLU -> dropout 0.5 -> dense 10, Adam 1e-3, L2 1e-4, batch 64.

First, unless ``--epochs 0``, the estimator is fitted with its defaults on
``--rows`` training digits (all 60,000 by default) and scored on the 10,000
test digits.  Then the contenders take ``--turns`` turns (this VM's speed
drifts within minutes, so every figure is the median of its turns); in each
turn, one after the other:

- skdigits: one epoch on ``--timing-rows`` rows, ``algorithm='auto'`` (the
  default: Winograd for the second convolution);
- skdigits with every convolution on the direct (im2col) algorithm (each
  still one layer with its ReLU and pool);
- PyTorch: ``--torch-batches`` batches of 64 after 10 warm-up ones;
- the floor: the matrix products of the direct convolution and the dense
  layers alone, for the same batches, computed the way skdigits computes
  them (two row shards of 32 on two threads, one BLAS thread each).

``--batch-norm`` puts batch norm after every convolution and the hidden
dense layer, before the ReLU, on both sides (``batch_norm=True``;
``BatchNorm2d``/``BatchNorm1d``).  ``--one-thread`` adds ours under
``threadpool_limits(1)``, its shards taking turns on one core.

All s/epoch figures are per 60,000 images.  ``--threads 1`` puts every
contender on one core (ours computes its shards one after the other, PyTorch
gets one thread): steadier when other jobs share the machine, where
PyTorch's spinning thread pool loses far more than ours.  PyTorch is
optional: without it the script times ours only.
"""

import argparse
import contextlib
import datetime
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from _common import load_average, load_mnist, machine, peak_traced_mib, torch_cnn
from skdigits import NumpyCNNClassifier
from skdigits.nn import Conv2D, Dense, conv

BATCH = 64
EPOCH_IMAGES = 60000


# ------------------------------------------------------------------ skdigits
@contextlib.contextmanager
def direct_convolutions():
    """Every Conv2D built inside takes the direct algorithm.  The estimator
    leaves ``Conv2D(algorithm=...)`` at 'auto'; raising the channel count
    from which 'auto' takes Winograd does the same as 'direct' here."""
    saved = conv._WINOGRAD_MIN_CHANNELS
    conv._WINOGRAD_MIN_CHANNELS = np.inf
    try:
        yield
    finally:
        conv._WINOGRAD_MIN_CHANNELS = saved


def fit_quietly(clf, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(X, y)


def ours_epoch_seconds(X, y, direct=False, batch_norm=False):
    """Seconds per 60,000 images of one training epoch on the rows of X."""
    with direct_convolutions() if direct else contextlib.nullcontext():
        clf = fit_quietly(NumpyCNNClassifier(max_iter=1, random_state=0, batch_norm=batch_norm),
                          X, y)
    algorithms = {layer.algorithm_ for layer in clf._network.layers if isinstance(layer, Conv2D)}
    assert ("winograd" in algorithms) != direct, algorithms
    return clf._history.epoch_seconds[0] * EPOCH_IMAGES / len(X)


def ours_peak_mib(X, y, direct=False, batch_norm=False):
    with direct_convolutions() if direct else contextlib.nullcontext(), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = NumpyCNNClassifier(max_iter=1, random_state=0, batch_norm=batch_norm)
        return peak_traced_mib(clf.fit, X, y)


# ------------------------------------------------------------------- PyTorch
def torch_model(batch_norm=False):
    """The same network in PyTorch, with dropout where NumpyCNNClassifier's
    defaults have it (and batch norm before each hidden ReLU with
    ``batch_norm``), and its optimizer with the same L2 penalty."""
    import torch

    torch.manual_seed(0)
    model = torch_cnn(batch_norm)
    # skdigits adds alpha * W / (rows in the batch) to the weights' gradients only.
    weights = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim == 1]
    optimizer = torch.optim.Adam([{"params": weights, "weight_decay": 1e-4 / BATCH},
                                  {"params": biases, "weight_decay": 0.0}], lr=1e-3)
    return model, optimizer


def torch_epoch_seconds(X, y, batches, warm_up=10, batch_norm=False):
    """Seconds per 60,000 images of the same network in PyTorch (eager, CPU).

    ``batches`` full batches of 64 are timed after ``warm_up`` untimed ones;
    X must hold them all (a slice past its end is an empty batch, which would
    make PyTorch look several times faster than it is).
    """
    import torch

    needed = (warm_up + batches) * BATCH
    if len(X) < needed:
        raise ValueError(f"timing {batches} PyTorch batches needs {needed} rows, got {len(X)}")
    model, optimizer = torch_model(batch_norm)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt = torch.from_numpy(X[:needed].reshape(-1, 1, 28, 28).astype(np.float32))
    yt = torch.from_numpy(y[:needed].astype(np.int64))

    def step(b):
        optimizer.zero_grad()
        loss_fn(model(Xt[b * BATCH:(b + 1) * BATCH]), yt[b * BATCH:(b + 1) * BATCH]).backward()
        optimizer.step()

    for b in range(warm_up):
        step(b)
    start = time.perf_counter()
    for b in range(warm_up, warm_up + batches):
        step(b)
    return (time.perf_counter() - start) / batches * EPOCH_IMAGES / BATCH


# --------------------------------------------------------------------- floor
def direct_products(network, rows):
    """(m, k, n) of every matrix product of a training step on ``rows``
    images with direct (im2col) convolutions: per layer the forward product,
    the weight gradient and, except for the first layer, the input gradient."""
    shapes = []
    for i, layer in enumerate(network.layers):
        if isinstance(layer, Conv2D):
            m, k, n = rows * layer.h_out * layer.w_out, layer.fan_in, layer.filters
        elif isinstance(layer, Dense):
            m, k, n = rows, layer.n_in, layer.units
        else:
            continue
        shapes += [(m, k, n), (k, m, n)] + ([(m, n, k)] if i > 0 else [])
    return shapes


def floor_epoch_seconds(network, concurrent=True, batches=20):
    """Seconds per 60,000 images of the direct convolution's matrix products
    alone, as skdigits runs them: each batch as two row shards of 32, one
    BLAS thread each, on two threads at once when ``concurrent``."""
    rng = np.random.default_rng(0)
    operands = [(rng.random((m, k), dtype=np.float32), rng.random((k, n), dtype=np.float32),
                 np.empty((m, n), dtype=np.float32))
                for m, k, n in direct_products(network, BATCH // 2)]

    def shard():
        for a, b, out in operands:
            np.matmul(a, b, out=out)

    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(1) as helper:
        shard()
        start = time.perf_counter()
        for _ in range(batches):
            if concurrent:
                second = helper.submit(shard)
                shard()
                second.result()
            else:
                shard()
                shard()
        per_batch = (time.perf_counter() - start) / batches
    return per_batch * EPOCH_IMAGES / BATCH


def floor_gflop(network):
    """Multiply-adds of the direct convolution's products per 60,000-image epoch, x2."""
    return sum(2 * m * k * n for m, k, n in direct_products(network, EPOCH_IMAGES)) / 1e9


# ---------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--rows", type=int, default=None,
                        help="training rows of the accuracy fit (default all)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of the accuracy fit (default: the estimator's; 0: none)")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--timing-rows", type=int, default=6400,
                        help="rows of each timed epoch of ours")
    parser.add_argument("--torch-batches", type=int, default=150)
    parser.add_argument("--threads", type=int, choices=(1, 2), default=2,
                        help="cores per contender in the timing turns (default 2)")
    parser.add_argument("--batch-norm", action="store_true",
                        help="batch norm before every hidden ReLU, both sides")
    parser.add_argument("--one-thread", action="store_true",
                        help="also time ours under threadpool_limits(1)")
    args = parser.parse_args(argv)
    X_all, y_all, X_test, y_test, description = load_mnist(args.data)
    X, y = (X_all[:args.rows], y_all[:args.rows]) if args.rows else (X_all, y_all)
    X_time, y_time = X_all[:args.timing_rows], y_all[:args.timing_rows]
    print(f"# bench_cnn  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}")
    print(f"# {load_average()} at the start")
    print(f"# data: {description}; accuracy fit on {X.shape}, timed epochs on "
          f"{X_time.shape}, test {X_test.shape}"
          f"{'; batch norm on both sides' if args.batch_norm else ''}")
    bn = args.batch_norm

    if args.epochs != 0:
        params = {"random_state": 0, "batch_norm": bn} | (
            {"max_iter": args.epochs} if args.epochs else {})
        clf = fit_quietly(NumpyCNNClassifier(**params), X, y)
        accuracy = clf.score(X_test, y_test)
        fit_epoch = np.median(clf._history.epoch_seconds) * EPOCH_IMAGES / len(X)
        print(f"# accuracy fit: {clf.n_iter_} epochs, median {fit_epoch:.1f} s/epoch, "
              f"test accuracy {100 * accuracy:.2f}%")
    else:
        fit_quietly(NumpyCNNClassifier(max_iter=1, random_state=0), X[:640], y[:640])  # warm-up
        accuracy = None
    network = fit_quietly(NumpyCNNClassifier(max_iter=1, random_state=0),
                          X[:128], y[:128])._network

    try:
        import torch
        if args.threads == 1:
            torch.set_num_threads(1)
        torch_info = f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_info = None
    def ours_limit():
        # One BLAS thread: the estimator then computes its two shards one after the other.
        return threadpool_limits(1) if args.threads == 1 else contextlib.nullcontext()
    print(f"# timing turns: {args.threads} core(s) per contender")
    times = {"ours": [], "ours, direct": [], "pytorch": [], "floor": []}
    if args.one_thread:
        times["ours, one core"] = []
    for turn in range(args.turns):
        with ours_limit():
            times["ours"].append(ours_epoch_seconds(X_time, y_time, batch_norm=bn))
            times["ours, direct"].append(ours_epoch_seconds(X_time, y_time, direct=True,
                                                           batch_norm=bn))
        if args.one_thread:
            with threadpool_limits(1):
                times["ours, one core"].append(ours_epoch_seconds(X_time, y_time, batch_norm=bn))
        if torch_info:
            try:
                times["pytorch"].append(torch_epoch_seconds(X_all, y_all, args.torch_batches,
                                                            batch_norm=bn))
            except ValueError as exc:  # e.g. the small fallback data set without MNIST
                print(f"# PyTorch not timed: {exc}")
                torch_info = None
        times["floor"].append(floor_epoch_seconds(network, concurrent=args.threads == 2))
        print(f"# turn {turn + 1}: " + ", ".join(f"{name} {values[-1]:.2f}"
                                                 for name, values in times.items() if values))
    median = {name: float(np.median(values)) for name, values in times.items() if values}
    peaks = {"ours": ours_peak_mib(X_time, y_time, batch_norm=bn),
             "ours, direct": ours_peak_mib(X_time, y_time, direct=True, batch_norm=bn)}

    print(f"# direct-convolution products: {floor_gflop(network):.0f} GFLOP per epoch; "
          f"{torch_info or 'PyTorch not installed'}")
    print(f"| contender | s/epoch (median of {args.turns}) | min-max | x pytorch "
          f"| % of direct-conv floor | peak MiB (1 epoch, {len(X_time)} rows) | test acc |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    labels = {"ours": "skdigits (algorithm='auto': Winograd conv 2)",
              "ours, direct": "skdigits, direct convolutions", "pytorch": "pytorch eager, same net",
              "ours, one core": "skdigits (auto) on one core, shards taking turns",
              "floor": "direct-conv + dense products alone (floor)"}
    for name, seconds in median.items():
        ratio = f"{seconds / median['pytorch']:.2f}" if "pytorch" in median else "-"
        share = f"{100 * median['floor'] / seconds:.0f}%"
        peak = f"{peaks[name]:.1f}" if name in peaks else "-"
        acc = f"{100 * accuracy:.2f}%" if name == "ours" and accuracy is not None else "-"
        print(f"| {labels[name]} | {seconds:.2f} | {min(times[name]):.2f}-{max(times[name]):.2f} "
              f"| {ratio} | {share} | {peak} | {acc} |")
    if "pytorch" in median:
        per_turn = [o / p for o, p in zip(times["ours"], times["pytorch"])]
        print("# per-turn ratio ours / pytorch: " + ", ".join(f"{r:.2f}" for r in per_turn))
    print(f"# ours with Winograd / ours direct: {median['ours'] / median['ours, direct']:.2f}")
    print(f"# {load_average()} at the end")


if __name__ == "__main__":
    main()
