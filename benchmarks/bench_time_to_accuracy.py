"""Time to accuracy: seconds from the start of ``fit`` to the end of the first
epoch whose MNIST test accuracy reaches a target, ours and PyTorch's eager
mode with the same recipe, taking turns in one process.

    python benchmarks/bench_time_to_accuracy.py                  # both recipes
    python benchmarks/bench_time_to_accuracy.py --recipe mlp --turns 3
    python benchmarks/bench_time_to_accuracy.py --recipe cnn --lr-schedule one-cycle
    python benchmarks/bench_time_to_accuracy.py --recipe mlp --hidden 256 --batch-size 64
    python benchmarks/bench_time_to_accuracy.py --recipe mlp --batch-norm --same-start
    python benchmarks/bench_time_to_accuracy.py --recipe mlp --turns 7 --vary-seed
    python benchmarks/bench_time_to_accuracy.py --recipe mlp --turns 5 --vary-seed --same-start
    python benchmarks/bench_time_to_accuracy.py --rows 6000 --max-epochs 2   # a quick check

Recipes (the same on both sides: network, He-normal initialisation with zero
biases, Adam with scikit-learn's L2 penalty ``alpha * W / batch rows`` on the
weights only, batch size, epochs planned, shuffling every epoch, float32):

- ``mlp``: 784-512-10 ReLU, Adam 1e-3, alpha 1e-4, batch 128; target 98.0%
  (``--hidden``, ``--batch-size`` and ``--learning-rate`` change them).
- ``cnn``: NumpyCNNClassifier's defaults (conv 3x3 x32 -> pool -> conv 3x3
  x64 -> pool -> dropout 0.25 -> dense 128 -> dropout 0.5 -> 10), Adam 1e-3,
  alpha 1e-4, batch 64; target 99.0%.

``--batch-norm`` normalises every hidden layer's pre-activations on both
sides: skdigits' ``batch_norm=True`` (Dense or Conv2D, then BatchNorm, then
the ReLU) and PyTorch's ``BatchNorm1d``/``BatchNorm2d`` in the same place,
with the same momentum (0.1) and epsilon (1e-5), gamma and beta not
penalized.  PyTorch's running variance is the unbiased one, n / (n - 1)
times skdigits' (1.008 at batch 128): it only touches the test accuracy.

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

``--same-start`` takes that luck out: the PyTorch side starts from the
initial weights skdigits' fit draws for the turn's seed and visits the
mini-batches in the order that fit visits them, so the table compares two
speeds on one trajectory (with the MLP recipe the per-epoch accuracies agree
to a few tenths of a point).  The weights are copied into PyTorch's layouts
(a dense weight transposed; a kernel (kh, kw, c_in, f) -> (f, c_in, kh, kw);
the first dense layer after the convolutions has its inputs permuted from
skdigits' channels-last flattening to PyTorch's channels-first one); the
order repeats the draws of skdigits' fit from its ``RandomState``: the
dropout seed (only for a network with dropout), the initial weights, then a
permutation per epoch composed with the previous epoch's order.  Before the
clock starts, every turn checks both: PyTorch's logits on the first 64 test
digits must equal skdigits' to 1e-5 (relative), and an instrumented
skdigits fit of two epochs on 300 rows must have started from the
reproduced weights (bit for bit) and gathered exactly the reproduced
batches; a mismatch stops the run with a message.  What stays each
library's own: the dropout masks (the CNN recipe), the L2 term's form
(skdigits adds ``alpha * W / batch rows`` to the gradient, PyTorch the same
as ``weight_decay``: equal), and Adam's epsilon, which skdigits (as
scikit-learn) adds to ``sqrt(v)`` before the bias correction of the step,
``lr * sqrt(1 - b2**t) / (1 - b1**t) * m / (sqrt(v) + eps)``, and PyTorch
after it, ``lr / (1 - b1**t) * m / (sqrt(v / (1 - b2**t)) + eps)``: the same
step except where ``sqrt(v)`` is near ``eps``, e.g. the weights of pixels
that are always blank.  Float rounding differs too, so the trajectories
drift apart slowly.
"""

import argparse
import dataclasses
import datetime
import functools
import itertools
import math
import time
import warnings
from unittest import mock

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from _common import load_average, load_mnist, machine, torch_cnn, torch_mlp
from skdigits import NumpyCNNClassifier, NumpyMLPClassifier
from skdigits.nn import Dropout, Flatten
from skdigits.training import LR_SCHEDULES, BatchSource

WARM_UP_ROWS = 3000
#: --same-start's checks: test digits whose logits are compared, their
#: tolerance (relative to the largest logit), and the rows and epochs of the
#: instrumented fit whose initial weights and batches are compared.
CHECK_LOGIT_ROWS, CHECK_LOGIT_RTOL = 64, 1e-5
CHECK_ORDER_ROWS, CHECK_ORDER_EPOCHS = 300, 2


@dataclasses.dataclass
class Recipe:
    target: float
    batch_size: int
    max_epochs: int
    hidden: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    batch_norm: bool = False

    def description(self, name):
        network = (f"784-{self.hidden}-10" if name == "mlp"
                   else "NumpyCNNClassifier's network")
        normalised = " with batch norm" if self.batch_norm else ""
        return (f"{network}{normalised}, He init, Adam {self.learning_rate:g}, alpha 1e-4, "
                f"batch {self.batch_size}")


RECIPES = {"mlp": Recipe(0.98, 128, 15, hidden=512), "cnn": Recipe(0.99, 64, 10)}


# ------------------------------------------------------------------ skdigits
def our_estimator(recipe, name, max_epochs, lr_schedule):
    common = dict(learning_rate_init=recipe.learning_rate, alpha=1e-4,
                  batch_size=recipe.batch_size, max_iter=max_epochs, tol=0.0,
                  n_iter_no_change=max_epochs + 1,
                  lr_schedule=lr_schedule, random_state=recipe.seed,
                  batch_norm=recipe.batch_norm)
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


# ---------------------------------------------------------------- same start
def our_initial_network(recipe, name, n_features, n_outputs=10):
    """(network, random_state): the network skdigits' fit builds for this
    recipe, with the initial weights it draws for ``recipe.seed``, and the
    RandomState where that fit's first shuffle draws from.

    Repeats ``BaseNetwork._fit`` and ``_initialize``: the estimator's
    ``check_random_state``, a dropout seed drawn only when the network has
    Dropout layers, then ``Network.build`` (float32: the benchmark's X is).
    """
    estimator = our_estimator(recipe, name, 1, None)
    random_state = check_random_state(estimator.random_state)
    network, input_shape = estimator._make_network(n_features, n_outputs, "softmax", "float32")
    uses_dropout = any(isinstance(layer, Dropout) for layer in network.layers)
    seed = random_state.randint(np.iinfo(np.int32).max) if uses_dropout else None
    network.build(input_shape, random_state, init=estimator.weight_init,
                  activation=estimator.activation, seed=seed)
    return network, random_state


def our_epoch_orders(random_state, n_rows):
    """Yield, epoch after epoch, the row order skdigits' fit visits: as
    ``TrainingLoop._epoch_order``, a permutation drawn every epoch and
    composed with the previous epoch's order (not a fresh permutation)."""
    order = np.arange(n_rows)
    while True:
        permutation = np.arange(n_rows)
        random_state.shuffle(permutation)
        order = order[permutation]
        yield order


def record_our_fit(recipe, name, X, y, epochs):
    """(initial parameters, rows of every mini-batch in turn) of a real
    skdigits fit, seen where ``BatchSource`` gathers each batch."""
    estimator = our_estimator(recipe, name, epochs, None)
    initial, batches = [], []
    gather = BatchSource.gather

    def recording_gather(source, positions, *args, **kwargs):
        # The first batch is gathered before the first step (the next ones
        # while the previous one trains): the weights are still the initial ones.
        if not initial:
            initial.append(estimator._network.params.copy())
        batches.append(source.rows[positions].copy())
        return gather(source, positions, *args, **kwargs)

    with mock.patch.object(BatchSource, "gather", recording_gather), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X, y)
    return initial[0], batches


def check_our_start(recipe, name, X, y):
    """Raise RuntimeError unless a real skdigits fit on the first
    CHECK_ORDER_ROWS rows starts from :func:`our_initial_network`'s weights
    and gathers the batches :func:`our_epoch_orders` gives, epoch by epoch."""
    X, y = X[:CHECK_ORDER_ROWS], y[:CHECK_ORDER_ROWS]
    network, random_state = our_initial_network(recipe, name, X.shape[1], len(np.unique(y)))
    initial, batches = record_our_fit(recipe, name, X, y, CHECK_ORDER_EPOCHS)
    what = f"--same-start ({name}, seed {recipe.seed})"
    if initial.shape != network.params.shape or not np.array_equal(initial, network.params):
        raise RuntimeError(f"{what}: the reproduced initial weights differ from those "
                           f"skdigits' fit draws; has NumpyMLPClassifier/NumpyCNNClassifier "
                           f"changed how it initialises?")
    orders = itertools.islice(our_epoch_orders(random_state, len(X)), CHECK_ORDER_EPOCHS)
    expected = [order[first:first + recipe.batch_size] for order in orders
                for first in range(0, len(X), recipe.batch_size)]
    if len(batches) != len(expected):
        raise RuntimeError(f"{what}: skdigits' fit gathered {len(batches)} batches in "
                           f"{CHECK_ORDER_EPOCHS} epochs of {len(X)} rows, the reproduction "
                           f"{len(expected)}")
    for index, (seen, reproduced) in enumerate(zip(batches, expected)):
        if not np.array_equal(seen, reproduced):
            raise RuntimeError(
                f"{what}: batch {index} of skdigits' fit holds rows {seen[:5]}..., the "
                f"reproduced order {reproduced[:5]}...; has TrainingLoop's shuffle changed?")


def torch_logits(model, X):
    import torch

    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(X))).numpy()
    model.train()
    return logits


def copy_our_parameters(network, model):
    """Copy skdigits' ``network`` weights into the torch ``model``, layer by
    layer, in PyTorch's layouts."""
    import torch
    from torch import nn

    ours = [layer for layer in network.layers if "W" in layer.params]
    theirs = [layer for layer in model if isinstance(layer, (nn.Linear, nn.Conv2d))]
    if len(ours) != len(theirs):
        raise RuntimeError(f"--same-start: the networks differ: "
                           f"{[type(layer).__name__ for layer in ours]} against "
                           f"{[type(layer).__name__ for layer in theirs]}")
    twins = iter(theirs)
    flattened_from = None  # our per-sample shape before the Flatten layer
    with torch.no_grad():
        for layer in network.layers:
            if isinstance(layer, Flatten):
                flattened_from = layer.input_shape
            if "W" not in layer.params:
                continue
            twin = next(twins)
            W = layer.params["W"]
            if isinstance(twin, nn.Conv2d):
                weight = W.transpose(3, 2, 0, 1)  # (kh, kw, c_in, f) -> (f, c_in, kh, kw)
            else:
                if flattened_from is not None and len(flattened_from) == 3:
                    # Our Flatten reads (h, w, c) in that order, torch's (c, h, w).
                    h, w, c = flattened_from
                    W = W.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
                flattened_from = None
                weight = W.T  # (in, out) -> (out, in)
            if tuple(twin.weight.shape) != weight.shape:
                raise RuntimeError(f"--same-start: {type(layer).__name__} weights "
                                   f"{W.shape} do not fit torch's {tuple(twin.weight.shape)}")
            twin.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
            twin.bias.copy_(torch.from_numpy(np.ascontiguousarray(layer.params["b"])))


def check_same_logits(network, model, X):
    """Raise RuntimeError unless both networks' logits for X agree to
    CHECK_LOGIT_RTOL relative to the largest of ours."""
    ours = network.predict_logits(X)
    theirs = torch_logits(model, X)
    error = np.max(np.abs(ours - theirs)) / np.max(np.abs(ours))
    if not error <= CHECK_LOGIT_RTOL:  # also NaN
        raise RuntimeError(f"--same-start: PyTorch's logits on {len(X)} test digits differ from "
                           f"skdigits' by {error:.3g} (relative; at most {CHECK_LOGIT_RTOL:g} "
                           f"expected): the weights were not copied faithfully")


def start_from_ours(model, recipe, name, X, y, X_test):
    """Give the torch ``model`` skdigits' initial weights for this recipe and
    seed, check them and the batch order, and return an iterator over
    skdigits' row order of each epoch (int64 arrays) for X."""
    classes = np.unique(y)
    if not np.array_equal(classes, np.arange(10)):
        raise ValueError(f"--same-start needs every digit 0-9 among the training rows "
                         f"(ours has one output per class seen), got classes {classes}")
    network, random_state = our_initial_network(recipe, name, X.shape[1])
    copy_our_parameters(network, model)
    check_same_logits(network, model, X_test[:CHECK_LOGIT_ROWS])
    check_our_start(recipe, name, X, y)
    return our_epoch_orders(random_state, len(X))


# ------------------------------------------------------------------- PyTorch
def torch_network(recipe, name):
    import torch
    from torch import nn

    torch.manual_seed(recipe.seed)
    if name == "mlp":
        model = torch_mlp(784, recipe.hidden, 10, recipe.batch_norm)
    else:  # rows of 784 pixels in, as skdigits takes them
        model = nn.Sequential(nn.Unflatten(1, (1, 28, 28)), *torch_cnn(recipe.batch_norm))
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


def time_torch(recipe, name, X, y, X_test, y_test, max_epochs, lr_schedule, same_start=False):
    import torch

    model = torch_network(recipe, name)
    if same_start:
        orders = map(torch.from_numpy, start_from_ours(model, recipe, name, X, y, X_test))
    else:
        generator = torch.Generator().manual_seed(recipe.seed)
        orders = (torch.randperm(len(X), generator=generator) for _ in itertools.count())
    weights = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim == 1]
    optimizer = torch.optim.Adam(
        [{"params": weights, "weight_decay": 1e-4 / recipe.batch_size},
         {"params": biases, "weight_decay": 0.0}], lr=recipe.learning_rate)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    Xv, yv = torch.from_numpy(X_test), torch.from_numpy(y_test.astype(np.int64))
    total_steps = max_epochs * math.ceil(len(X) / recipe.batch_size)
    schedule = LR_SCHEDULES[lr_schedule] if lr_schedule else None
    epochs, step, paused, start = [], 0, 0.0, time.perf_counter()
    for _ in range(max_epochs):
        order = next(orders)
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
    parser.add_argument("--batch-norm", action="store_true",
                        help="batch norm on every hidden layer, both sides")
    parser.add_argument("--vary-seed", action="store_true",
                        help="turn k seeds both sides with k: medians over seeds, not one draw")
    parser.add_argument("--same-start", action="store_true",
                        help="PyTorch starts from skdigits' initial weights and visits the "
                             "batches in skdigits' order (checked every turn)")
    parser.add_argument("--rows", type=int, help="train on the first ROWS digits only")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    args = parser.parse_args(argv)
    if args.same_start and args.no_torch:
        parser.error("--same-start shares skdigits' start with PyTorch: drop --no-torch")

    X, y, X_test, y_test, description = load_mnist(args.data)
    if args.rows:
        X, y = X[:args.rows], y[:args.rows]
    X, X_test = X.astype(np.float32), X_test.astype(np.float32)
    contenders = {"skdigits": time_ours}
    if not args.no_torch:
        try:
            import torch
            contenders = {"pytorch": functools.partial(time_torch, same_start=args.same_start),
                          **contenders}
            torch_info = f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads"
        except ImportError:
            if args.same_start:
                parser.error("--same-start needs PyTorch, which is not installed")
            torch_info = "PyTorch not installed"
    else:
        torch_info = "PyTorch skipped"
    print(f"# bench_time_to_accuracy  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}; {torch_info}")
    print(f"# {load_average()} at the start; data: {description}; train {X.shape}; "
          f"schedule: {args.lr_schedule or 'none'}; "
          f"seeds: {'0 to turns - 1, both sides' if args.vary_seed else '0'}"
          + ("; start: skdigits' initial weights and batch order on both sides (checked)"
             if args.same_start else ""))
    names = list(RECIPES) if args.recipe == "all" else [args.recipe]
    for name in names:
        overrides = {"batch_size": args.batch_size, "hidden": args.hidden,
                     "learning_rate": args.learning_rate}
        recipe = dataclasses.replace(
            RECIPES[name], **{key: value for key, value in overrides.items() if value},
            batch_norm=args.batch_norm)
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
