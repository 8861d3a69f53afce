"""Named training recipes -> MNIST test accuracy, accuracy on digits varied
like handwriting, epochs and wall time; scikit-learn's MLP beside them.

    python benchmarks/bench_quality.py --recipe mlp-best
    python benchmarks/bench_quality.py --recipe cnn-best --save cnn.skops
    python benchmarks/bench_quality.py --recipe all --epochs 1 --rows 6000   # a quick check

Each recipe trains on the 60,000 MNIST training digits (``--data``, default
``../shared/data/mnist.npz``; pixels scaled to [0, 1]) and is scored on the
10,000 test digits and on a "handwriting-variation" copy of them
(``skdigits.augmentation.make_handwriting_variations``: rotated up to
+-20 degrees, sheared, rescaled 0.8-1.15, shifted +-3 px, strokes thickened
or thinned; fixed by a seed).  ``--save`` writes the fitted model with
``save_model``; it predicts from rows of 784 pixels in [0, 1].

With ``--peer``, scikit-learn's MLPClassifier trains the same architecture
for the same epochs (without the extras it lacks: dropout, He
initialisation, batch norm, schedules, augmentation) in the same run.
"""

import argparse
import datetime
import time
import warnings

import numpy as np
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning

from _common import load_average, load_mnist, machine
from skdigits import NumpyCNNClassifier, NumpyMLPClassifier, save_model
from skdigits.augmentation import HANDWRITING, Augmentation, make_handwriting_variations

#: The handwriting-variation set's own geometry (rotation 20, slant 15, size
#: 0.8-1.15, shift 3 px) with Simard's elastic field on top, and two thirds
#: of the digits written with a bolder or finer pen.
HANDWRITING_AUGMENTATION = Augmentation(**{**HANDWRITING, "elastic_alpha": 36,
                                           "elastic_sigma": 5}, stroke_change=2 / 3)

#: name -> (estimator class, parameters, what it is).  Every recipe fixes
#: max_iter and turns the tol stopping rule off: a recipe is a plan.
RECIPES = {
    "mlp-baseline": (NumpyMLPClassifier, dict(hidden_layer_sizes=(128,), max_iter=10),
                     "784-128-10, MLPClassifier's defaults, 10 epochs"),
    "mlp-800-dropout": (NumpyMLPClassifier,
                        dict(hidden_layer_sizes=(800,), dropout=0.3, weight_init="he",
                             max_iter=30),
                        "784-800-10, dropout 0.3, He init, 30 epochs"),
    "mlp-best": (NumpyMLPClassifier,
                 dict(hidden_layer_sizes=(800,), dropout=0.2, weight_init="he",
                      batch_norm=True, augment="elastic", lr_schedule="one-cycle",
                      learning_rate_init=3e-3, batch_size=128, max_iter=60),
                 "784-800-10, batch norm, dropout 0.2, elastic distortions, one-cycle "
                 "3e-3, batch 128, 60 epochs"),
    "mlp-robust": (NumpyMLPClassifier,
                   dict(hidden_layer_sizes=(800,), dropout=0.2, weight_init="he",
                        batch_norm=True, augment=HANDWRITING_AUGMENTATION,
                        lr_schedule="one-cycle", learning_rate_init=3e-3, batch_size=128,
                        max_iter=60),
                   "784-800-10, batch norm, dropout 0.2, handwriting-wide distortions and "
                   "pen widths, one-cycle 3e-3, batch 128, 60 epochs"),
    "cnn-default": (NumpyCNNClassifier, dict(max_iter=12),
                    "conv 32-64, dense 128, dropout, 12 epochs (the defaults)"),
    "cnn-best": (NumpyCNNClassifier,
                 dict(batch_norm=True, augment="affine", lr_schedule="one-cycle",
                      learning_rate_init=3e-3, max_iter=30),
                 "conv 32-64, dense 128, batch norm, dropout, affine distortions, "
                 "one-cycle 3e-3, 30 epochs"),
    "cnn-elastic": (NumpyCNNClassifier,
                    dict(augment="elastic", lr_schedule="one-cycle", learning_rate_init=3e-3,
                         max_iter=30),
                    "conv 32-64, dense 128, dropout, elastic distortions, one-cycle 3e-3, "
                    "30 epochs (no batch norm: two cores)"),
    "cnn-robust": (NumpyCNNClassifier,
                   dict(augment=HANDWRITING_AUGMENTATION, lr_schedule="one-cycle",
                        learning_rate_init=3e-3, max_iter=30),
                   "conv 32-64, dense 128, dropout, handwriting-wide distortions and pen "
                   "widths, one-cycle 3e-3, 30 epochs"),
}

#: Our extras, left out for scikit-learn's peer.
EXTRAS = ("dropout", "weight_init", "batch_norm", "augment", "lr_schedule")


def build(name, epochs=None):
    cls, params, _ = RECIPES[name]
    params = {**clone(params, safe=False), "random_state": 0, "tol": 0.0}
    if epochs is not None:
        params["max_iter"] = epochs
    params["n_iter_no_change"] = params["max_iter"] + 1
    return cls(**params)


def sklearn_peer(name, epochs=None):
    """MLPClassifier with the recipe's architecture and epochs, or None for a CNN."""
    from sklearn.neural_network import MLPClassifier

    cls, params, _ = RECIPES[name]
    if cls is not NumpyMLPClassifier:
        return None
    params = {k: v for k, v in params.items() if k not in EXTRAS}
    params = {**params, "random_state": 0, "tol": 0.0}
    if epochs is not None:
        params["max_iter"] = epochs
    params["n_iter_no_change"] = params["max_iter"] + 1
    return MLPClassifier(**params)


def score(model, X_test, y_test, X_varied):
    return (float(np.mean(model.predict(X_test) == y_test)),
            float(np.mean(model.predict(X_varied) == y_test)))


def run(label, model, X, y, X_test, y_test, X_varied):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model.fit(X, y)
        seconds = time.perf_counter() - start
    clean, varied = score(model, X_test, y_test, X_varied)
    epochs = getattr(model, "n_iter_", "?")
    print(f"| {label} | {100 * clean:.2f}% | {100 * varied:.2f}% | {epochs} | {seconds:.0f} s |",
          flush=True)
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", action="append", required=True,
                        help=f"one of {', '.join(RECIPES)}, or 'all' (repeatable)")
    parser.add_argument("--data", help="npz with X_train, y_train, X_test, y_test")
    parser.add_argument("--save", help="save the (last) recipe's fitted model here")
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs")
    parser.add_argument("--rows", type=int, help="train on the first ROWS digits only")
    parser.add_argument("--peer", action="store_true", help="also fit scikit-learn's MLP")
    args = parser.parse_args(argv)
    names = list(RECIPES) if "all" in args.recipe else args.recipe
    for name in names:
        if name not in RECIPES:
            parser.error(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)} or all")

    X, y, X_test, y_test, description = load_mnist(args.data)
    if args.rows:
        X, y = X[:args.rows], y[:args.rows]
    X_varied = make_handwriting_variations(X_test, random_state=0)  # rows in, rows out
    print(f"# bench_quality  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}")
    print(f"# {load_average()} at the start; data: {description}; train {X.shape}")
    print("| recipe | MNIST test | handwriting variations | epochs | fit time |")
    print("| --- | --- | --- | --- | --- |")
    model = None
    for name in names:
        print(f"<!-- {name}: {RECIPES[name][2]} -->", flush=True)
        model = run(name, build(name, args.epochs), X, y, X_test, y_test, X_varied)
        peer = sklearn_peer(name, args.epochs) if args.peer else None
        if peer is not None:
            run(f"{name}: MLPClassifier, same net, no extras", peer, X, y, X_test, y_test,
                X_varied)
    if args.save and model is not None:
        print(f"# saved {save_model(model, args.save)}")
    print(f"# {load_average()} at the end")


if __name__ == "__main__":
    main()
