"""NumpyMLPClassifier against scikit-learn's MLPClassifier (and PyTorch when
installed), side by side in one process, on the workload users compare on:

MNIST 60,000 x 784 -> 128 (ReLU) -> 10, Adam, learning_rate_init=1e-3,
alpha=1e-4, float64 input in [0, 1], a fixed number of epochs, random_state=0,
accuracy on the 10,000 test digits.

    python benchmarks/bench_mlp.py                  # 10 epochs, batch 200 and 64
    python benchmarks/bench_mlp.py --epochs 2       # quicker
    python benchmarks/bench_mlp.py --data other.npz

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

from _common import load_average, load_mnist, machine, peak_traced_mib, sgemm_gflops, timed
from skdigits import NumpyMLPClassifier


def params(epochs, batch_size):
    return dict(hidden_layer_sizes=(128,), activation="relu", solver="adam",
                learning_rate_init=1e-3, alpha=1e-4, batch_size=batch_size,
                max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1, random_state=0)


class TorchMLP:
    """The same network and optimizer in PyTorch eager mode, for reference."""

    def __init__(self, epochs, batch_size):
        self.epochs, self.batch_size = epochs, batch_size

    def fit(self, X, y):
        import torch

        torch.manual_seed(0)
        Xt = torch.from_numpy(X.astype(np.float32))
        yt = torch.from_numpy(y.astype(np.int64))
        self.model = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 128), torch.nn.ReLU(),
                                         torch.nn.Linear(128, int(y.max()) + 1))
        # Adam's weight_decay adds alpha * w to the gradient, like sklearn's L2 / n.
        optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3,
                                     weight_decay=1e-4 / len(X))
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


def run(name, model, X, y, X_test, y_test, epochs, warm_up):
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm_up.fit(X[:WARM_UP_ROWS], y[:WARM_UP_ROWS])
        warm_up.predict_proba(X_test[:WARM_UP_ROWS])
        _, fit_s = timed(model.fit, X, y)
        proba, predict_s = timed(model.predict_proba, X_test)
    accuracy = float(np.mean(np.argmax(proba, axis=1) == y_test))
    return {"name": name, "s_epoch": fit_s / epochs, "predict_s": predict_s, "accuracy": accuracy}


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
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    args = parser.parse_args(argv)

    X, y, X_test, y_test, description = load_mnist(args.data)
    print(f"# bench_mlp  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}")
    print(f"# {load_average()} at the start")
    print(f"# data: {description}; train {X.shape}, test {X_test.shape}; {args.epochs} epochs")
    gflops = sgemm_gflops()
    # Forward and weight-gradient products for both layers, input-gradient
    # product for the output layer only (nothing needs d loss / d X).
    flop_per_epoch = 2 * len(X) * (2 * X.shape[1] * 128 + 3 * 128 * 10)
    floor = flop_per_epoch / (gflops * 1e9)
    print(f"# sgemm at 200x784x128: {gflops:.0f} GFLOP/s -> GEMM floor {floor:.3f} s/epoch "
          f"({flop_per_epoch / 1e9:.1f} GFLOP/epoch)")
    use_torch = torch_available() and not args.no_torch

    for batch in args.batch_sizes:
        p = params(args.epochs, batch)
        contenders = [
            ("skdigits", lambda: NumpyMLPClassifier(**p)),
            ("sklearn", lambda: MLPClassifier(**p)),
        ]
        if use_torch:
            contenders.append(("pytorch", lambda: TorchMLP(args.epochs, batch)))
        results = [run(name, make(), X, y, X_test, y_test, args.epochs, make())
                   for name, make in contenders]
        mem_epoch = params(1, batch)
        mems = {"skdigits": memory(lambda: NumpyMLPClassifier(**mem_epoch), X, y),
                "sklearn": memory(lambda: MLPClassifier(**mem_epoch), X, y)}
        ref = {r["name"]: r for r in results}
        print(f"\n## batch {batch}")
        print(f"| model | s/epoch | x sklearn | x pytorch | predict_proba s | x sklearn "
              f"| test acc | peak MiB (1 epoch) | % GEMM floor |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in results:
            vs_torch = (f"{r['s_epoch'] / ref['pytorch']['s_epoch']:.2f}" if "pytorch" in ref else "-")
            mem = mems.get(r["name"])
            print(f"| {r['name']} | {r['s_epoch']:.3f} | {r['s_epoch'] / ref['sklearn']['s_epoch']:.2f} "
                  f"| {vs_torch} | {r['predict_s']:.3f} "
                  f"| {r['predict_s'] / ref['sklearn']['predict_s']:.2f} | {100 * r['accuracy']:.2f}% "
                  f"| {'-' if mem is None else f'{mem:.1f}'} | {100 * floor / r['s_epoch']:.0f}% |")
        print(f"accuracy difference skdigits - sklearn: "
              f"{100 * (ref['skdigits']['accuracy'] - ref['sklearn']['accuracy']):+.2f} points; "
              f"extra peak memory: {mems['skdigits'] - mems['sklearn']:+.1f} MiB")
    print(f"\n# {load_average()} at the end")


if __name__ == "__main__":
    main()
