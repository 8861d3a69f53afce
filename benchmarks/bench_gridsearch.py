"""GridSearchCV with n_jobs=2 over 4 configurations: NumpyMLPClassifier against
scikit-learn's MLPClassifier, side by side in one process.

    python benchmarks/bench_gridsearch.py              # MNIST subset (10,000 digits)
    python benchmarks/bench_gridsearch.py --rows 3000

joblib's process workers get cores // n_jobs BLAS threads each, and our
estimator always uses one BLAS thread, so BLAS threads x workers never
exceeds the cores.  The script prints the BLAS threads a worker sees, read
in the same workers just before the timed searches.
"""

import argparse
import datetime
import warnings

from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier

from _common import load_average, load_mnist, machine, timed
from skdigits import NumpyMLPClassifier

GRID = {"hidden_layer_sizes": [(64,), (128,)], "alpha": [1e-4, 1e-2]}


def blas_threads_in_worker():
    # Importing both libraries here also warms the workers up: otherwise the
    # first timed search would pay for importing scikit-learn in each (~1 s).
    import skdigits  # noqa: F401
    import sklearn.neural_network  # noqa: F401
    from threadpoolctl import threadpool_info

    return max((i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"),
               default=0)


def search(estimator, X, y, n_jobs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid, seconds = timed(GridSearchCV(estimator, GRID, cv=3, n_jobs=n_jobs).fit, X, y)
    return seconds, grid.best_params_, grid.best_score_


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args(argv)
    X, y, _, _, description = load_mnist(args.data)
    X, y = X[: args.rows], y[: args.rows]
    print(f"# bench_gridsearch  {datetime.datetime.now():%Y-%m-%d %H:%M}")
    print(f"# machine: {machine()}")
    print(f"# {load_average()} at the start")
    print(f"# data: {description}, first {len(X)} rows; grid {GRID}, cv=3, "
          f"{args.epochs} epochs, n_jobs=2")
    workers = Parallel(n_jobs=2)(delayed(blas_threads_in_worker)() for _ in range(2))
    print(f"# BLAS threads inside a joblib worker: {workers}")
    common = dict(max_iter=args.epochs, random_state=0)
    rows = []
    for name, est in [("skdigits", NumpyMLPClassifier(**common)),
                      ("sklearn", MLPClassifier(**common))]:
        seconds, best, score = search(est, X, y, n_jobs=2)
        rows.append((name, seconds, best, score))
    print("| model | GridSearchCV s | x sklearn | best params | best CV accuracy |")
    print("| --- | --- | --- | --- | --- |")
    for name, seconds, best, score in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / rows[1][1]:.2f} | {best} | {score:.4f} |")


if __name__ == "__main__":
    main()
