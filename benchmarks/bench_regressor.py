"""NumpyMLPRegressor against scikit-learn's MLPRegressor, side by side in one
process, on two regression workloads:

- speed: ``make_friedman1`` (10 features, noise 1.0), 200,000 training rows
  and 50,000 test rows, the default network (100 ReLU units, Adam,
  learning_rate_init=1e-3, batch 200, alpha=1e-4) for a fixed number of
  epochs, random_state=0, float64 input as a user passes it: fit time and
  test R².  Under ``dtype='auto'`` ours computes this in float32.
- accuracy: scikit-learn's bundled diabetes data (442 x 10), 5-fold
  cross-validated R² of StandardScaler + MLP(100,), learning_rate_init=0.01,
  max_iter=500, random_state=0.  Small enough that ours runs in float64.

    python benchmarks/bench_regressor.py               # 10 epochs, 3 turns each
    python benchmarks/bench_regressor.py --epochs 3 --repeats 1   # quicker

The contenders take turns ``--repeats`` times (this VM's speed drifts within
minutes), and each one's fit time is the median of its turns (the spread is
printed too).  Prints the fit-time ratio (ours / scikit-learn's), R² side by
side and their difference, and the load average before and after.
"""

import argparse
import datetime
import gc
import warnings

import numpy as np
from sklearn.datasets import load_diabetes, make_friedman1
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _common import load_average, machine, timed
from skdigits import NumpyMLPRegressor

TRAIN_ROWS, TEST_ROWS = 200_000, 50_000


def speed_params(epochs):
    return dict(hidden_layer_sizes=(100,), activation="relu", solver="adam",
                learning_rate_init=1e-3, alpha=1e-4, batch_size=200, max_iter=epochs,
                tol=0.0, n_iter_no_change=epochs + 1, random_state=0)


def accuracy_params():
    return dict(hidden_layer_sizes=(100,), learning_rate_init=0.01, max_iter=500,
                random_state=0)


def friedman():
    X, y = make_friedman1(n_samples=TRAIN_ROWS + TEST_ROWS, n_features=10, noise=1.0,
                          random_state=0)
    return X[:TRAIN_ROWS], y[:TRAIN_ROWS], X[TRAIN_ROWS:], y[TRAIN_ROWS:]


def quietly(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args, **kwargs)


def timed_fit(make, X, y, X_test, y_test):
    """(fit seconds, test R²) of one fresh model."""
    gc.collect()
    model, seconds = timed(quietly, make().fit, X, y)
    return seconds, float(r2_score(y_test, model.predict(X_test)))


def speed(epochs, repeats):
    X, y, X_test, y_test = friedman()
    p = speed_params(epochs)
    contenders = [("skdigits", lambda: NumpyMLPRegressor(**p)),
                  ("sklearn", lambda: MLPRegressor(**p))]
    for _, make in contenders:  # untimed warm-up: imports, first allocations
        quietly(make().set_params(max_iter=1).fit, X[:2000], y[:2000])
    turns = {name: [] for name, _ in contenders}
    for _ in range(repeats):
        for name, make in contenders:
            turns[name].append(timed_fit(make, X, y, X_test, y_test))
    print(f"\n## speed: make_friedman1, train {X.shape}, test {X_test.shape}, {epochs} epochs, "
          f"batch 200, {repeats} turns each")
    print("| model | fit s (median) | min-max | s/epoch | x sklearn | test R² |")
    print("| --- | --- | --- | --- | --- | --- |")
    medians = {name: float(np.median([s for s, _ in turns[name]])) for name in turns}
    for name, results in turns.items():
        seconds = [s for s, _ in results]
        print(f"| {name} | {medians[name]:.2f} | {min(seconds):.2f}-{max(seconds):.2f} "
              f"| {medians[name] / epochs:.3f} | {medians[name] / medians['sklearn']:.2f} "
              f"| {results[0][1]:.4f} |")
    ours, theirs = turns["skdigits"][0][1], turns["sklearn"][0][1]
    print(f"fit-time ratio skdigits / sklearn: {medians['skdigits'] / medians['sklearn']:.2f}; "
          f"R² difference skdigits - sklearn: {ours - theirs:+.4f}")


def accuracy():
    X, y = load_diabetes(return_X_y=True)
    folds = KFold(5, shuffle=True, random_state=0)
    print(f"\n## accuracy: load_diabetes {X.shape}, 5-fold CV of StandardScaler + MLP(100,), "
          f"learning_rate_init=0.01, max_iter=500")
    print("| model | R² mean | R² std | fit+score s |")
    print("| --- | --- | --- | --- |")
    means = {}
    for name, cls in (("skdigits", NumpyMLPRegressor), ("sklearn", MLPRegressor)):
        pipe = make_pipeline(StandardScaler(), cls(**accuracy_params()))
        scores, seconds = timed(quietly, cross_val_score, pipe, X, y, cv=folds)
        means[name] = scores.mean()
        print(f"| {name} | {scores.mean():.4f} | {scores.std():.4f} | {seconds:.2f} |")
    print(f"R² difference skdigits - sklearn: {means['skdigits'] - means['sklearn']:+.4f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed turns per contender, taken in rotation (default 3)")
    args = parser.parse_args(argv)
    print(f"# bench_regressor  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}")
    print(f"# {load_average()} at the start")
    speed(args.epochs, args.repeats)
    accuracy()
    print(f"\n# {load_average()} at the end")


if __name__ == "__main__":
    main()
