"""Time to accuracy: seconds from the start of ``fit`` to the end of the first
epoch whose MNIST test accuracy reaches a target, ours and PyTorch's eager
mode with the same recipe, taking turns in one process.

    python benchmarks/bench_time_to_accuracy.py                  # both recipes
    python benchmarks/bench_time_to_accuracy.py --recipe mlp --turns 3
    python benchmarks/bench_time_to_accuracy.py --recipe cnn --lr-schedule one-cycle
    python benchmarks/bench_time_to_accuracy.py --recipe mlp --hidden 256 --batch-size 64
    python benchmarks/bench_time_to_accuracy.py --recipe mlp --turns 7 --vary-seed
    python benchmarks/bench_time_to_accuracy.py --rows 6000 --max-epochs 2   # a quick check

Recipes (the same on both sides: network, He-normal initialisation with zero
biases, Adam with scikit-learn's L2 penalty ``alpha * W / batch rows`` on the
weights only, batch size, epochs planned, shuffling every epoch, float32):

- ``mlp``: 784-512-10 ReLU, Adam 1e-3, alpha 1e-4, batch 128; target 98.0%
  (``--hidden``, ``--batch-size`` and ``--learning-rate`` change them).
- ``cnn``: NumpyCNNClassifier's defaults (conv 3x3 x32 -> pool -> conv 3x3
  x64 -> pool -> dropout 0.25 -> dense 128 -> dropout 0.5 -> 10), Adam 1e-3,
  alpha 1e-4, batch 64; target 99.0%.

``--lr-schedule`` applies one of skdigits' schedules (the same factor per
mini-batch, computed by the same function) on both sides.  The clock stops
while the test accuracy is measured after each epoch: what is timed is
training, including each side's per-epoch overhead (for skdigits the
snapshot of the fitted attributes scikit-learn's callback API hands over).
The two libraries draw different weights and batch orders from a seed, so
one seed per side compares two random trajectories as much as two speeds:
``--vary-seed`` seeds turn k of both sides with k, and the medians are then
over seeds.  Each contender first fits 3,000 rows for one epoch, untimed: PyTorch's first
epoch in a process is several times slower than later ones.
"""

import argparse
import dataclasses
import datetime
import math
import time
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from _common import load_average, load_mnist, machine
from skdigits import NumpyCNNClassifier, NumpyMLPClassifier
from skdigits.training import LR_SCHEDULES

WARM_UP_ROWS = 3000


@dataclasses.dataclass
class Recipe:
    target: float
    batch_size: int
    max_epochs: int
    hidden: int = 128
    learning_rate: float = 1e-3
    seed: int = 0

    def description(self, name):
        network = (f"784-{self.hidden}-10" if name == "mlp"
                   else "NumpyCNNClassifier's network")
        return (f"{network}, He init, Adam {self.learning_rate:g}, alpha 1e-4, "
                f"batch {self.batch_size}")


RECIPES = {"mlp": Recipe(0.98, 128, 15, hidden=512), "cnn": Recipe(0.99, 64, 10)}


# ------------------------------------------------------------------ skdigits
def our_estimator(recipe, name, max_epochs, lr_schedule):
    common = dict(learning_rate_init=recipe.learning_rate, alpha=1e-4,
                  batch_size=recipe.batch_size, max_iter=max_epochs, tol=0.0,
                  n_iter_no_change=max_epochs + 1,
                  lr_schedule=lr_schedule, random_state=recipe.seed)
    if name == "mlp":
        return NumpyMLPClassifier(hidden_layer_sizes=(recipe.hidden,), weight_init="he",
                                  **common)
    return NumpyCNNClassifier(**common)


class TargetAccuracy:
    """A scikit-learn FitCallback: after each epoch, score the snapshot on the
    test set with the clock stopped; stop the fit once the target is met."""

    def __init__(self, X_test, y_test, target):
        self.X_test, self.y_test, self.target = X_test, y_test, target

    def setup(self, estimator, context):
        self.start, self.paused, self.epochs = time.perf_counter(), 0.0, []

    def on_fit_task_begin(self, estimator, context):
        pass

    def on_fit_task_end(self, estimator, context, *, metadata=None, fitted_estimator=None):
        if context.task_name != "epoch" or fitted_estimator is None:
            return False
        now = time.perf_counter()
        accuracy = float(np.mean(fitted_estimator.predict(self.X_test) == self.y_test))
        self.epochs.append((now - self.start - self.paused, accuracy))
        self.paused += time.perf_counter() - now
        return accuracy >= self.target

    def teardown(self, estimator, context):
        pass


def time_ours(recipe, name, X, y, X_test, y_test, max_epochs, lr_schedule):
    monitor = TargetAccuracy(X_test, y_test, recipe.target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        our_estimator(recipe, name, max_epochs, lr_schedule).set_callbacks(monitor).fit(X, y)
    return monitor.epochs


# ------------------------------------------------------------------- PyTorch
def torch_network(recipe, name):
    import torch
    from torch import nn

    torch.manual_seed(recipe.seed)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(784, recipe.hidden), nn.ReLU(),
                              nn.Linear(recipe.hidden, 10))
    else:
        model = nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(7 * 7 * 64, 128), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(128, 10))
    for layer in model:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):  # He normal, as skdigits' "he"
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return model


def torch_accuracy(model, X_test, y_test):
    import torch

    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in X_test.split(2000)])
    model.train()
    return float((predicted == y_test).float().mean())


def time_torch(recipe, name, X, y, X_test, y_test, max_epochs, lr_schedule):
    import torch

    model = torch_network(recipe, name)
    weights = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim == 1]
    optimizer = torch.optim.Adam(
        [{"params": weights, "weight_decay": 1e-4 / recipe.batch_size},
         {"params": biases, "weight_decay": 0.0}], lr=recipe.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    Xv, yv = torch.from_numpy(X_test), torch.from_numpy(y_test.astype(np.int64))
    generator = torch.Generator().manual_seed(recipe.seed)
    total_steps = max_epochs * math.ceil(len(X) / recipe.batch_size)
    schedule = LR_SCHEDULES[lr_schedule] if lr_schedule else None
    epochs, step, paused, start = [], 0, 0.0, time.perf_counter()
    for _ in range(max_epochs):
        order = torch.randperm(len(Xt), generator=generator)
        for first in range(0, len(Xt), recipe.batch_size):
            if schedule is not None:
                for group in optimizer.param_groups:
                    group["lr"] = recipe.learning_rate * schedule(step / total_steps)
            rows = order[first:first + recipe.batch_size]
            optimizer.zero_grad()
            loss_fn(model(Xt[rows]), yt[rows]).backward()
            optimizer.step()
            step += 1
        now = time.perf_counter()
        accuracy = torch_accuracy(model, Xv, yv)
        epochs.append((now - start - paused, accuracy))
        paused += time.perf_counter() - now
        if accuracy >= recipe.target:
            break
    return epochs


# ---------------------------------------------------------------------- report
def reached(epochs, target):
    """(epochs, seconds) at the first epoch meeting the target, or None."""
    for number, (seconds, accuracy) in enumerate(epochs, start=1):
        if accuracy >= target:
            return number, seconds
    return None


def report(recipe, name, runs, max_epochs):
    print(f"\n### {name}: {recipe.description(name)}; target {100 * recipe.target:.1f}%, "
          f"at most {max_epochs} epochs")
    print("| contender | epochs to target | s to target (median) | min-max | s/epoch "
          "| x pytorch | accuracy per epoch (first turn) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    medians = {}
    for contender, turns in runs.items():
        hits = [reached(epochs, recipe.target) for epochs in turns]
        curve = ", ".join(f"{100 * a:.2f}" for _, a in turns[0])
        if any(hit is None for hit in hits):
            per_epoch = np.median([epochs[-1][0] / len(epochs) for epochs in turns])
            print(f"| {contender} | not reached | - | - | {per_epoch:.2f} | - | {curve} |")
            continue
        seconds = [s for _, s in hits]
        medians[contender] = float(np.median(seconds))
        per_epoch = np.median([s / n for n, s in hits])
        ratio = (f"{medians[contender] / medians['pytorch']:.2f}"
                 if "pytorch" in medians and contender != "pytorch" else "-")
        print(f"| {contender} | {'/'.join(str(n) for n, _ in hits)} | {medians[contender]:.1f} "
              f"| {min(seconds):.1f}-{max(seconds):.1f} | {per_epoch:.2f} | {ratio} | {curve} |")
    if len(medians) == 2:
        print(f"# skdigits / pytorch, median time to target: "
              f"{medians['skdigits'] / medians['pytorch']:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=[*RECIPES, "all"], default="all")
    parser.add_argument("--data", help="npz with X_train, y_train, X_test, y_test")
    parser.add_argument("--turns", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, help="epochs planned (default per recipe)")
    parser.add_argument("--lr-schedule", choices=sorted(LR_SCHEDULES),
                        help="a skdigits schedule, on both sides (default: none)")
    parser.add_argument("--hidden", type=int, help="the MLP's hidden units (default 512)")
    parser.add_argument("--batch-size", type=int, help="batch size (default per recipe)")
    parser.add_argument("--learning-rate", type=float,
                        help="Adam's step size, the schedule's peak (default 1e-3)")
    parser.add_argument("--vary-seed", action="store_true",
                        help="turn k seeds both sides with k: medians over seeds, not one draw")
    parser.add_argument("--rows", type=int, help="train on the first ROWS digits only")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    args = parser.parse_args(argv)

    X, y, X_test, y_test, description = load_mnist(args.data)
    if args.rows:
        X, y = X[:args.rows], y[:args.rows]
    X, X_test = X.astype(np.float32), X_test.astype(np.float32)
    contenders = {"skdigits": time_ours}
    if not args.no_torch:
        try:
            import torch
            contenders = {"pytorch": time_torch, **contenders}
            torch_info = f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
        except ImportError:
            torch_info = "PyTorch not installed"
    else:
        torch_info = "PyTorch skipped"
    print(f"# bench_time_to_accuracy  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}; {torch_info}")
    print(f"# {load_average()} at the start; data: {description}; train {X.shape}; "
          f"schedule: {args.lr_schedule or 'none'}; "
          f"seeds: {'0 to turns - 1, both sides' if args.vary_seed else '0'}")
    names = list(RECIPES) if args.recipe == "all" else [args.recipe]
    for name in names:
        overrides = {"batch_size": args.batch_size, "hidden": args.hidden,
                     "learning_rate": args.learning_rate}
        recipe = dataclasses.replace(
            RECIPES[name], **{key: value for key, value in overrides.items() if value})
        max_epochs = args.max_epochs or recipe.max_epochs
        for fit in contenders.values():  # untimed warm-up
            fit(recipe, name, X[:WARM_UP_ROWS], y[:WARM_UP_ROWS], X_test[:500], y_test[:500],
                1, None)
        runs = {contender: [] for contender in contenders}
        for turn in range(args.turns):
            seeded = dataclasses.replace(recipe, seed=turn if args.vary_seed else 0)
            for contender, fit in contenders.items():
                runs[contender].append(
                    fit(seeded, name, X, y, X_test, y_test, max_epochs, args.lr_schedule))
        report(recipe, name, runs, max_epochs)
    print(f"# {load_average()} at the end")


if __name__ == "__main__":
    main()
