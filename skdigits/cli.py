"""The ``skdigits`` command line.  Argument parsing, files and printing only:
the maths lives in the estimators and the engine."""

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np


class UserError(Exception):
    """A mistake in the user's data or files: one line on stderr, exit code 1."""


# ----------------------------------------------------------------- data input
def load_labelled(path):
    """(X, y, description) from DATA: Kaggle CSV, image folder or .npz; digits if None."""
    if path is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data, digits.target, "scikit-learn's bundled digits (1797 x 64)"
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    try:
        if path.is_dir():
            from .data import load_image_folder

            bunch = load_image_folder(path)
            return bunch.data, bunch.target_names[bunch.target] if False else bunch.target, \
                f"image folder {path} ({len(bunch.target)} images)"
        if path.suffix.lower() == ".npz":
            return _load_npz(path)
        if path.suffix.lower() == ".csv":
            from .data import load_digit_csv

            bunch = load_digit_csv(path)
            if bunch.target is None:
                raise UserError(f"{path}: no 'label' column; a labelled CSV is needed here")
            return bunch.data, bunch.target, f"{path} ({len(bunch.target)} rows)"
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    raise UserError(f"{path}: expected a .csv file, a .npz file or an image folder")


def _load_npz(path):
    with np.load(path, allow_pickle=False) as arrays:
        for x_key, y_key in (("X", "y"), ("X_train", "y_train")):
            if x_key in arrays and y_key in arrays:
                X, y = arrays[x_key], arrays[y_key]
                break
        else:
            raise UserError(f"{path}: expected arrays X and y (or X_train and y_train), "
                            f"found {sorted(arrays.files)}")
    if X.ndim > 2:
        X = X.reshape(len(X), -1)
    if len(X) != len(y):
        raise UserError(f"{path}: X has {len(X)} rows but y has {len(y)}")
    return X, y, f"{path} ({len(y)} x {X.shape[1]})"


# ----------------------------------------------------------------- compare
def compare(args):
    """Cross-validate our MLP and scikit-learn's in the same Pipeline."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .mlp import NumpyMLPClassifier

    X, y, description = load_labelled(args.data)
    params = dict(hidden_layer_sizes=tuple(args.hidden), max_iter=args.max_iter,
                  alpha=args.alpha, random_state=args.random_state)
    models = [
        ("skdigits NumpyMLPClassifier", NumpyMLPClassifier(**params)),
        ("sklearn MLPClassifier", MLPClassifier(**params)),
    ]
    cv = StratifiedKFold(n_splits=args.cv, shuffle=True, random_state=args.random_state)
    print(f"Data: {description}; {args.cv}-fold cross-validation of "
          f"StandardScaler + MLP{params['hidden_layer_sizes']}, max_iter={args.max_iter}")
    rows = []
    for name, model in models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            result = cross_validate(make_pipeline(StandardScaler(), model), X, y, cv=cv)
        rows.append((name, result["test_score"], result["fit_time"]))
    reference_time = rows[1][2].sum()
    print(f"{'model':<30}{'accuracy':>18}{'fit s':>10}{'speed':>9}")
    for name, scores, fit_times in rows:
        speed = reference_time / fit_times.sum()
        print(f"{name:<30}{scores.mean():>10.4f} ± {scores.std():.4f}"
              f"{fit_times.sum():>10.2f}{speed:>8.1f}x")
    if args.plot:
        from .plot import plot_comparison

        plot_comparison(rows, args.plot)
        print(f"Saved {args.plot}")
    return 0


# ----------------------------------------------------------------- parsing
def build_parser():
    parser = argparse.ArgumentParser(
        prog="skdigits",
        description="From-scratch NumPy neural networks for digits, the scikit-learn way.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    p = commands.add_parser(
        "compare", help="cross-validate our MLP against scikit-learn's MLPClassifier",
        description="Cross-validate Pipeline([StandardScaler(), NumpyMLPClassifier()]) and the "
                    "same Pipeline around scikit-learn's MLPClassifier with matched "
                    "hyper-parameters; print accuracy, fit time and the speed ratio.")
    p.add_argument("data", nargs="?", metavar="DATA",
                   help="Kaggle CSV, image folder, or .npz with X and y "
                        "(default: scikit-learn's bundled digits)")
    p.add_argument("--cv", type=_at_least(2), default=5, help="number of folds (default 5)")
    p.add_argument("--hidden", type=_at_least(1), nargs="+", default=[128],
                   help="hidden layer sizes (default 128)")
    p.add_argument("--max-iter", type=_at_least(1), default=200, help="epochs (default 200)")
    p.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty (default 1e-4)")
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument("--plot", metavar="FILE.png", help="save a picture of the comparison")
    p.set_defaults(handler=compare)
    return parser


def _at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def main(argv=None):
    """Entry point of the ``skdigits`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"skdigits {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
