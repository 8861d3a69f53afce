"""NumpyMLPClassifier against scikit-learn's MLPClassifier (and PyTorch when
installed), side by side in one process, on the workload users compare on:

MNIST 60,000 x 784 -> 128 (ReLU) -> 10, Adam, learning_rate_init=1e-3,
alpha=1e-4, float64 input in [0, 1], a fixed number of epochs, random_state=0,
accuracy on the 10,000 test digits.

    python benchmarks/bench_mlp.py                  # 10 epochs, batch 200 and 64
    python benchmarks/bench_mlp.py --epochs 2       # quicker
    python benchmarks/bench_mlp.py --data other.npz
    python benchmarks/bench_mlp.py --repeats 1      # one timing per contender
    python benchmarks/bench_mlp.py --hidden 512 --batch-sizes 128 --no-sklearn
                                                    # a wide MLP against PyTorch
    python benchmarks/bench_mlp.py --hidden 800 --batch-sizes 200 --batch-norm --one-thread
                                                    # batch norm (no scikit-learn peer);
                                                    # skdigits on one core as well

The contenders take turns, ``--repeats`` times (default 3): this VM's speed
drifts by up to 1.5x within minutes, so each contender's s/epoch is the
median of its turns (the spread is printed too) and its predict_proba time
the best of five calls per turn.

``--batch-norm`` normalises the hidden layer's pre-activations on both
sides (skdigits' ``batch_norm=True``; PyTorch's ``BatchNorm1d`` between the
Linear layer and the ReLU, the same momentum and epsilon); scikit-learn has
no batch norm, so it sits out.  ``--one-thread`` adds skdigits fitted under
``threadpool_limits(1)``: the same bits on one core.

Prints s/epoch, predict_proba time, test accuracy, peak traced memory during
fit, the ratios to scikit-learn (and PyTorch), and the share of the GEMM floor
reached, with the float32 GEMM rate measured in the same run.
"""

import argparse
import datetime
import gc
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from _common import (load_average, load_mnist, machine, peak_traced_mib, sgemm_gflops, timed,
                     torch_mlp)
from skdigits import NumpyMLPClassifier


def params(epochs, batch_size, hidden=128):
    return dict(hidden_layer_sizes=(hidden,), activation="relu", solver="adam",
                learning_rate_init=1e-3, alpha=1e-4, batch_size=batch_size,
                max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1, random_state=0)


class OneThread:
    """An estimator fitted and used under ``threadpool_limits(1)``: skdigits
    then runs its two halves of the work one after the other."""

    def __init__(self, estimator):
        self.estimator = estimator

    def fit(self, X, y):
        with threadpool_limits(1):
            self.estimator.fit(X, y)
        return self

    def predict_proba(self, X):
        with threadpool_limits(1):
            return self.estimator.predict_proba(X)


class TorchMLP:
    """The same network and optimizer in PyTorch eager mode, for reference."""

    def __init__(self, epochs, batch_size, hidden=128, batch_norm=False):
        self.epochs, self.batch_size, self.hidden = epochs, batch_size, hidden
        self.batch_norm = batch_norm

    def fit(self, X, y):
        import torch

        torch.manual_seed(0)
        Xt = torch.from_numpy(X.astype(np.float32))
        yt = torch.from_numpy(y.astype(np.int64))
        self.model = torch_mlp(X.shape[1], self.hidden, int(y.max()) + 1, self.batch_norm)
        # Adam's weight_decay adds decay * w to the gradient. scikit-learn adds
        # alpha * w / (rows in the batch), to the weights only, not the biases.
        weights = [p for p in self.model.parameters() if p.ndim > 1]
        biases = [p for p in self.model.parameters() if p.ndim == 1]
        optimizer = torch.optim.Adam([{"params": weights, "weight_decay": 1e-4 / self.batch_size},
                                      {"params": biases, "weight_decay": 0.0}], lr=1e-3)
        loss_fn = torch.nn.CrossEntropyLoss()
        generator = torch.Generator().manual_seed(0)
        for _ in range(self.epochs):
            order = torch.randperm(len(Xt), generator=generator)
            for start in range(0, len(Xt), self.batch_size):
                idx = order[start:start + self.batch_size]
                optimizer.zero_grad()
                loss_fn(self.model(Xt[idx]), yt[idx]).backward()
                optimizer.step()
        return self

    def predict_proba(self, X):
        import torch

        self.model.eval()
        with torch.no_grad():
            return torch.softmax(self.model(torch.from_numpy(X.astype(np.float32))), 1).numpy()


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


#: Rows of the untimed warm-up fit each contender gets first: PyTorch's first
#: epoch in a process was measured at 1.7 s against 0.41 s for later ones
#: (allocator and kernel set-up), and every peer deserves its steady state.
WARM_UP_ROWS = 3000


def run(name, model, X, y, X_test, y_test, epochs, warm_up=None):
    """One timed fit and the best of five predict_proba calls."""
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        if warm_up is not None:
            warm_up.fit(X[:WARM_UP_ROWS], y[:WARM_UP_ROWS])
            warm_up.predict_proba(X_test[:WARM_UP_ROWS])
        _, fit_s = timed(model.fit, X, y)
        calls = [timed(model.predict_proba, X_test) for _ in range(5)]
    proba, predict_s = calls[0][0], min(seconds for _, seconds in calls)
    accuracy = float(np.mean(np.argmax(proba, axis=1) == y_test))
    return {"name": name, "s_epoch": fit_s / epochs, "predict_s": predict_s, "accuracy": accuracy}


def median_of_turns(turns):
    """One result per contender: median s/epoch (with its spread), best
    predict time, and the accuracy of the first turn (all fits are seeded)."""
    s_epochs = [t["s_epoch"] for t in turns]
    return {**turns[0], "s_epoch": float(np.median(s_epochs)),
            "spread": (min(s_epochs), max(s_epochs)),
            "predict_s": min(t["predict_s"] for t in turns)}


def memory(model_factory, X, y):
    """Peak traced memory of a one-epoch fit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return peak_traced_mib(model_factory().fit, X, y)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="npz with X_train, y_train, X_test, y_test")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[200, 64])
    parser.add_argument("--hidden", type=int, default=128, help="hidden units (default 128)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--no-sklearn", action="store_true",
                        help="skip scikit-learn (slow on wide networks); ratios to PyTorch only")
    parser.add_argument("--batch-norm", action="store_true",
                        help="batch norm on the hidden layer (skdigits and PyTorch only)")
    parser.add_argument("--one-thread", action="store_true",
                        help="also skdigits under threadpool_limits(1)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed turns per contender, taken in rotation (default 3)")
    args = parser.parse_args(argv)
    if args.batch_norm:
        args.no_sklearn = True  # scikit-learn's MLP has no batch norm

    X, y, X_test, y_test, description = load_mnist(args.data)
    print(f"# bench_mlp  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}")
    print(f"# {load_average()} at the start")
    print(f"# data: {description}; train {X.shape}, test {X_test.shape}; {args.epochs} epochs; "
          f"{args.repeats} turns per contender; 784-{args.hidden}-10"
          f"{' with batch norm' if args.batch_norm else ''}")
    gflops = sgemm_gflops()
    # Forward and weight-gradient products for both layers, input-gradient
    # product for the output layer only (nothing needs d loss / d X).
    flop_per_epoch = 2 * len(X) * (2 * X.shape[1] * args.hidden + 3 * args.hidden * 10)
    floor = flop_per_epoch / (gflops * 1e9)
    print(f"# sgemm at 200x784x128: {gflops:.0f} GFLOP/s -> GEMM floor {floor:.3f} s/epoch "
          f"({flop_per_epoch / 1e9:.1f} GFLOP/epoch)")
    use_torch = torch_available() and not args.no_torch

    for batch in args.batch_sizes:
        shared = params(args.epochs, batch, args.hidden)  # ours add batch_norm
        ours = lambda: NumpyMLPClassifier(**shared, batch_norm=args.batch_norm)  # noqa: E731
        contenders = [("skdigits", ours)]
        if args.one_thread:
            contenders.append(("skdigits 1 thread", lambda: OneThread(ours())))
        if not args.no_sklearn:
            contenders.append(("sklearn", lambda: MLPClassifier(**shared)))
        if use_torch:
            contenders.append(("pytorch", lambda: TorchMLP(args.epochs, batch, args.hidden,
                                                           args.batch_norm)))
        turns = {name: [] for name, _ in contenders}
        for turn in range(args.repeats):
            for name, make in contenders:
                warm_up = make() if turn == 0 else None
                turns[name].append(run(name, make(), X, y, X_test, y_test, args.epochs, warm_up))
        results = [median_of_turns(turns[name]) for name, _ in contenders]
        one_epoch = params(1, batch, args.hidden)
        mems = {"skdigits": memory(
            lambda: NumpyMLPClassifier(**one_epoch, batch_norm=args.batch_norm), X, y)}
        if not args.no_sklearn:
            mems["sklearn"] = memory(lambda: MLPClassifier(**one_epoch), X, y)
        ref = {r["name"]: r for r in results}
        print(f"\n## batch {batch}")
        print(f"| model | s/epoch (median) | min-max | x sklearn | x pytorch | predict_proba s "
              f"| x sklearn | test acc | peak MiB (1 epoch) | % float32 GEMM floor |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in results:
            vs_torch = (f"{r['s_epoch'] / ref['pytorch']['s_epoch']:.2f}" if "pytorch" in ref else "-")
            vs_sk = (f"{r['s_epoch'] / ref['sklearn']['s_epoch']:.2f}" if "sklearn" in ref else "-")
            vs_sk_predict = (f"{r['predict_s'] / ref['sklearn']['predict_s']:.2f}"
                             if "sklearn" in ref else "-")
            mem = mems.get(r["name"])
            low, high = r["spread"]
            print(f"| {r['name']} | {r['s_epoch']:.3f} | {low:.3f}-{high:.3f} "
                  f"| {vs_sk} "
                  f"| {vs_torch} | {r['predict_s']:.3f} "
                  f"| {vs_sk_predict} | {100 * r['accuracy']:.2f}% "
                  f"| {'-' if mem is None else f'{mem:.1f}'} | {100 * floor / r['s_epoch']:.0f}% |")
        if "sklearn" in ref:
            print(f"accuracy difference skdigits - sklearn: "
                  f"{100 * (ref['skdigits']['accuracy'] - ref['sklearn']['accuracy']):+.2f} "
                  f"points; extra peak memory: {mems['skdigits'] - mems['sklearn']:+.1f} MiB")
    print(f"\n# {load_average()} at the end")


if __name__ == "__main__":
    main()
