"""The ``skdigits`` command line.  Argument parsing, files and printing only:
the maths lives in the estimators and the engine.

Commands: ``compare``, ``train``, ``predict``, ``evaluate`` (``skdigits
COMMAND --help`` for each).  Results go to stdout, progress and messages to
stderr.  Exit codes:

* 0 -- done;
* 1 -- a problem with the data or files (missing file, unreadable data,
  unsafe or damaged model file); one line on stderr, no traceback;
* 2 -- a usage mistake (unknown option, bad value); one line on stderr;
* 130 -- interrupted with Ctrl-C.  ``train`` stops at the next mini-batch,
  still saves the model trained so far and says so, then exits with 130 so
  that scripts can tell the run was cut short.  Other commands write nothing.
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """A mistake in the user's data or files: one line on stderr, exit code 1."""

    exit_code = EXIT_DATA


class UsageError(UserError):
    """A mistake in the command line that argparse cannot see: exit code 2."""

    exit_code = EXIT_USAGE


# ----------------------------------------------------------------- data input
class Dataset:
    """Digits as the model pipeline takes them.

    ``X`` is raw pixels (an array of rows or of images) or a list of image
    file paths; ``rows`` the same digits already preprocessed by the
    default ``ImageTransformer`` when the loader did that work anyway (image
    folders), else None.  ``y`` is None without labels.  ``kind`` is 'csv',
    'npz' or 'images'.
    """

    def __init__(self, X, y, description, kind, rows=None):
        self.X, self.y, self.description, self.kind = X, y, description, kind
        self.rows = rows

    def __len__(self):
        return len(self.X)


_NPZ_KEYS = {  # split -> (X, y) key pairs, in order of preference
    "train": (("X_train", "y_train"), ("X", "y")),
    "test": (("X_test", "y_test"), ("X", "y")),
}


def _read_npz(path, split, need_labels):
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable .npz file ({exc})") from exc
    with arrays:
        names = set(arrays.files)
        for x_key, y_key in _NPZ_KEYS[split]:
            if x_key in names and (y_key in names or not need_labels):
                try:
                    X = arrays[x_key]
                    y = arrays[y_key] if need_labels else None
                except ValueError as exc:  # object arrays would need pickle
                    raise UserError(f"{path}: cannot read {x_key}/{y_key} ({exc})") from exc
                break
        else:
            wanted = " or ".join(f"{x} and {y}" if need_labels else x
                                 for x, y in _NPZ_KEYS[split])
            raise UserError(f"{path}: expected arrays {wanted}, found {sorted(names) or 'none'}")
    if X.ndim not in (2, 3, 4) or X.dtype.kind not in "fiub":
        raise UserError(f"{path}: {x_key} must be numeric images (n, pixels) or (n, h, w), "
                        f"got {X.dtype} {X.shape}")
    if y is not None and len(y) != len(X):
        raise UserError(f"{path}: {x_key} has {len(X)} rows but {y_key} has {len(y)}")
    keys = f"{x_key}, {y_key}" if y is not None else x_key
    return Dataset(X, y, f"{path} [{keys}] ({len(X)} images)", "npz")


def _folder_labels(bunch):
    """Class folder names as labels: integers when they all are ('0' ... '9')."""
    names = bunch.target_names
    if all(name.isdigit() for name in names):
        return names.astype(np.int64)[bunch.target]
    return names[bunch.target]


def read_labelled(path, split):
    """Labelled digits for ``train`` (split='train') and ``evaluate`` (split='test')."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    try:
        if path.is_dir():
            from .data import load_image_folder

            bunch = load_image_folder(path)
            return Dataset(list(bunch.filenames), _folder_labels(bunch),
                           f"image folder {path} ({len(bunch.target)} images, "
                           f"{len(bunch.target_names)} classes)",
                           "images", rows=bunch.data)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _read_npz(path, split, need_labels=True)
        if suffix == ".csv":
            from .data import load_digit_csv

            bunch = load_digit_csv(path)
            if bunch.target is None:
                raise UserError(f"{path}: no 'label' column; a labelled CSV is needed here")
            return Dataset(bunch.data, bunch.target, f"{path} ({len(bunch.target)} rows)", "csv")
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from exc
    raise UserError(f"{path}: expected a Kaggle .csv file, a .npz file or an image folder "
                    "(one sub-folder per class)")


def _comparison_data(path):
    """(X, y, description) for ``compare``: pixel rows, the bundled digits if no path."""
    if path is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.data, digits.target, "scikit-learn's bundled digits (1797 x 64)"
    data = read_labelled(path, split="train")
    # Image folders come preprocessed by the loader; arrays of images are flattened.
    X = data.rows if data.rows is not None else np.asarray(data.X).reshape(len(data), -1)
    return X, data.y, data.description


def read_unlabelled(paths):
    """Digits to predict: one CSV or .npz, or any number of image files and folders."""
    from .data.images import IMAGE_EXTENSIONS, list_image_files

    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file or directory")
    tables = [p for p in paths if p.is_file() and p.suffix.lower() in (".csv", ".npz")]
    if tables:
        if len(paths) > 1:
            raise UsageError("give one .csv or .npz file, or any number of images and folders")
        path = tables[0]
        try:
            if path.suffix.lower() == ".npz":
                return _read_npz(path, "test", need_labels=False)
            from .data import load_digit_csv

            bunch = load_digit_csv(path)
        except (ValueError, OSError) as exc:
            raise UserError(str(exc)) from exc
        return Dataset(bunch.data, None, f"{path} ({len(bunch.data)} rows)", "csv")
    files = []
    for path in paths:
        if path.is_dir():
            inside = list_image_files(path)
            if not inside:
                raise UserError(f"{path}: no image files in this folder")
            files.extend(inside)
        elif path.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(str(path))
        else:
            raise UserError(f"{path}: expected a Kaggle .csv file, a .npz file, image files "
                            "or folders of images")
    what = f"{paths[0]}" if len(paths) == 1 else f"{len(paths)} paths"
    return Dataset(files, None, f"{what} ({len(files)} images)", "images")


# ----------------------------------------------------------------- files
def _check_output_file(path, option):
    """Fail before any long work if `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{option} {path}: folder {parent} is not writable")
    return path


def _check_matplotlib(option):
    try:
        import matplotlib
    except ImportError:
        raise UserError(f"{option} needs matplotlib: pip install skdigits[plot]") from None
    matplotlib.use("Agg")


def _load_model_file(path):
    from .persistence import load_model

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such model file")
    try:
        model = load_model(path)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not hasattr(model, "predict"):
        raise UserError(f"{path}: holds a {type(model).__name__}, not a model that predicts")
    return model


def _split_model(model):
    """(preprocessing steps or None, final estimator)."""
    steps = getattr(model, "steps", None)
    if steps and len(steps) > 1:
        return model[:-1], model[-1]
    if steps:
        return None, model[-1]
    return None, model


def _describe_model(model):
    pre, est = _split_model(model)
    parts = [] if pre is None else [type(step).__name__ for _, step in pre.steps]
    params = est.get_params(deep=False) if hasattr(est, "get_params") else {}
    shown = ", ".join(f"{k}={params[k]!r}" for k in ("hidden_layer_sizes",) if k in params)
    parts.append(f"{type(est).__name__}({shown})")
    text = " -> ".join(parts)
    if getattr(est, "n_iter_", None) is not None:
        text += f", {est.n_iter_} epochs"
    return text


def _model_inputs(model, data, where):
    """(features the final estimator sees, final estimator) for `data`."""
    pre, est = _split_model(model)
    if pre is None and data.kind == "images":
        raise UserError(f"{where}: this model has no image preprocessing step, so it cannot "
                        "read image files; use a model saved by 'skdigits train'")
    try:
        if data.rows is not None and pre is not None and _is_default_image_step(pre):
            Xt = data.rows
        else:
            Xt = data.X if pre is None else pre.transform(data.X)
        n_in = getattr(est, "n_features_in_", None)
        if n_in is not None and np.shape(Xt)[1:] and np.prod(np.shape(Xt)[1:]) != n_in:
            raise ValueError(f"the model expects {n_in} features per digit, the data "
                             f"gives {int(np.prod(np.shape(Xt)[1:]))}")
    except ValueError as exc:
        raise UserError(f"{where}: the model cannot read this data: {exc}") from exc
    return Xt, est


def _is_default_image_step(pre):
    """True when `pre` is exactly a default ImageTransformer (what image folders load with)."""
    from .data import ImageTransformer

    if len(pre.steps) != 1 or type(pre.steps[0][1]) is not ImageTransformer:
        return False
    return pre.steps[0][1].get_params() == ImageTransformer().get_params()


def _predict(est, Xt, where):
    try:
        return est.predict(Xt)
    except ValueError as exc:
        raise UserError(f"{where}: the model cannot read this data: {exc}") from exc


# ----------------------------------------------------------------- compare
def compare(args):
    """Cross-validate our MLP and scikit-learn's in the same Pipeline."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .mlp import NumpyMLPClassifier

    if args.plot:
        _check_output_file(args.plot, "--plot")
        _check_matplotlib("--plot")
    X, y, description = _comparison_data(args.data)
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
            try:
                result = cross_validate(make_pipeline(StandardScaler(), model), X, y, cv=cv,
                                        error_score="raise")
            except ValueError as exc:
                raise UserError(f"{name}: {exc}") from exc
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
    return EXIT_OK


# ----------------------------------------------------------------- train
def _format_seconds(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"


class EpochProgress:
    """A scikit-learn fit callback that reports every epoch on a stream.

    On a terminal one line is redrawn: ``epoch 3/20 [#####-----] loss 0.1234
    val 0.9650  0:04 elapsed, 0:23 left``.  Elsewhere (a file, a pipe, a CI
    log) one plain line is printed per epoch.  With held-out data, the
    validation accuracy after each epoch is computed on the ``fitted_estimator``
    that scikit-learn rebuilds for the hook, and collected in ``scores``.

    Parameters
    ----------
    stream : text file, default=sys.stderr
    X_val, y_val : held-out features (as the classifier takes them) and labels, optional
    tty : bool, optional
        Redraw one line; by default ``stream.isatty()``.
    """

    bar_width = 24

    def __init__(self, stream=None, X_val=None, y_val=None, tty=None):
        self.stream = sys.stderr if stream is None else stream
        self.X_val, self.y_val = X_val, y_val
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty()) if tty is None else tty
        self.scores, self.losses = [], []
        self.total = None
        self._started = self._epoch_started = self._epoch_seconds = None
        self._drawn = False

    # ---- FitCallback protocol
    def setup(self, estimator, context):
        self.total = getattr(context, "max_subtasks", None) or getattr(estimator, "max_iter", None)
        self._started = self._epoch_started = time.perf_counter()
        self.scores, self.losses = [], []

    def on_fit_task_begin(self, estimator, context):
        if self.tty and getattr(context, "task_name", None) == "epoch":
            self._draw(len(self.losses) + 1, running=True)

    def on_fit_task_end(self, estimator, context, *, metadata=None, fitted_estimator=None):
        if getattr(context, "task_name", None) != "epoch":
            return False
        loss = (metadata or {}).get("loss")
        self.losses.append(np.nan if loss is None else float(loss))
        now = time.perf_counter()
        self._epoch_seconds, self._epoch_started = now - self._epoch_started, now
        if self.X_val is not None and fitted_estimator is not None:
            predicted = fitted_estimator.predict(self.X_val)
            self.scores.append(float(np.mean(predicted == self.y_val)))
        epoch = len(self.losses)
        if self.tty:
            self._draw(epoch, running=False)
        else:
            self._write("  ".join(self._status(epoch)) + "\n")
        return False

    def teardown(self, estimator, context):
        if self.tty and self._drawn:
            self._write("\n")
            self._drawn = False

    # ---- rendering
    def _elapsed(self):
        return time.perf_counter() - self._started

    def _status(self, epoch):
        """(``epoch i/N``, the rest) of a progress line."""
        total = self.total or epoch
        head = f"epoch {epoch:>{len(str(total))}}/{total}"
        parts = []
        if self.losses:
            parts.append(f"loss {self.losses[-1]:.4f}")
        if self.scores:
            parts.append(f"val {self.scores[-1]:.4f}")
        if self.tty:
            elapsed, done = self._elapsed(), len(self.losses)
            timing = f"{_format_seconds(elapsed)} elapsed"
            if done:
                timing += f", {_format_seconds(elapsed / done * max(total - done, 0))} left"
            parts.append(timing)
        elif self._epoch_seconds is not None:
            parts.append(f"{self._epoch_seconds:.1f} s")
        return head, "  ".join(parts)

    def _draw(self, epoch, running):
        total = self.total or epoch
        done = len(self.losses)
        filled = int(self.bar_width * min(done, total) / total) if total else 0
        bar = "#" * filled + "-" * (self.bar_width - filled)
        head, tail = self._status(epoch)
        line = f"{head} [{bar}]  {tail}"
        if running and not self.losses:
            line += "  training..."
        self._write("\r" + line + "\x1b[K")
        self._drawn = True

    def _write(self, text):
        self.stream.write(text)
        self.stream.flush()


def _make_classifier(args):
    if args.model == "mlp":
        from .mlp import NumpyMLPClassifier as cls
    else:
        cls = _cnn_class()
    params = dict(max_iter=args.epochs, batch_size=args.batch_size,
                  learning_rate_init=args.learning_rate, alpha=args.alpha,
                  random_state=args.random_state)
    if args.hidden is not None:
        params["hidden_layer_sizes"] = tuple(args.hidden)
    elif args.model == "mlp":
        params["hidden_layer_sizes"] = (128,)
    accepted = cls().get_params()
    options = {"max_iter": "--epochs", "batch_size": "--batch-size",
               "learning_rate_init": "--learning-rate", "alpha": "--alpha",
               "random_state": "--random-state", "hidden_layer_sizes": "--hidden"}
    for name in params:
        if name not in accepted:
            raise UsageError(f"{options[name]} does not apply to --model {args.model}")
    return cls(**params)


def _cnn_class():
    try:
        from .cnn import NumpyCNNClassifier
    except ImportError:
        raise UsageError("--model cnn needs skdigits.NumpyCNNClassifier, which this "
                         "installation does not have; use --model mlp") from None
    return NumpyCNNClassifier


def _number(low, *, low_inclusive, below=None):
    """argparse type for a finite float >= low (or > low), optionally < below."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value < low if low_inclusive else value <= low
        if not np.isfinite(value) or too_low or (below is not None and value >= below):
            bound = f"[{low:g}, {below:g})" if below is not None else \
                f"{'>=' if low_inclusive else '>'} {low:g}"
            raise argparse.ArgumentTypeError(f"must be {'in ' if below else ''}{bound}, "
                                             f"got {text}")
        return value

    return parse


_fraction = _number(0, low_inclusive=True, below=1)
_positive_float = _number(0, low_inclusive=False)
_non_negative_float = _number(0, low_inclusive=True)


def _batch_size(text):
    if text == "auto":
        return text
    return _at_least(1)(text)


def _take(X, index):
    return [X[i] for i in index] if isinstance(X, list) else X[index]


def train(args):
    """Fit ImageTransformer + classifier, report held-out accuracy, save the model."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline

    from .data import ImageTransformer
    from .persistence import save_model

    out = _check_output_file(args.output, "-o")
    classifier = _make_classifier(args)
    data = read_labelled(args.data, split="train")
    n = len(data)
    index = np.arange(n)
    if args.validation > 0:
        try:
            train_index, val_index = train_test_split(
                index, test_size=args.validation, stratify=data.y,
                random_state=args.random_state)
        except ValueError as exc:
            raise UserError(f"cannot hold out {args.validation:g} of {n} digits for "
                            f"validation, stratified by class ({exc}); use more data or "
                            "--validation 0") from exc
        print(f"Data: {data.description}: {len(train_index)} for training, "
              f"{len(val_index)} held out for validation")
    else:
        train_index, val_index = index, index[:0]
        print(f"Data: {data.description}: all {n} for training, none held out")

    # The classifier is fitted on preprocessed rows, then saved behind the
    # same (stateless) preprocessing, so the model file takes raw digits.
    images = ImageTransformer()
    try:
        raw_train = _take(data.X, train_index)
        images.fit(raw_train)
        if data.rows is not None:  # image folders come preprocessed the same way
            X_train, X_val = data.rows[train_index], data.rows[val_index]
        else:
            X_train = images.transform(raw_train)
            X_val = images.transform(_take(data.X, val_index)) if len(val_index) else None
    except ValueError as exc:
        raise UserError(f"{args.data}: {exc}") from exc
    y_train, y_val = data.y[train_index], data.y[val_index]
    if len(np.unique(y_train)) < 2:
        raise UserError(f"{args.data}: the training digits have a single class; "
                        "at least two are needed")
    step = args.model
    print(f"Model: ImageTransformer -> {type(classifier).__name__}"
          f"({_short_params(classifier)})")

    sys.stdout.flush()  # keep the order of stdout and the progress on stderr in logs
    progress = EpochProgress(sys.stderr, X_val if len(val_index) else None, y_val)
    has_callbacks = hasattr(classifier, "set_callbacks")
    if has_callbacks:
        classifier.set_callbacks(progress)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            classifier.fit(X_train, y_train)
    except ValueError as exc:  # e.g. a diverging fit: the learning rate is too large
        raise UserError(str(exc)) from exc
    finally:
        if has_callbacks:
            classifier.set_callbacks()  # the progress display is not part of the model
    seconds = time.perf_counter() - started

    history = getattr(classifier, "_history", None)
    interrupted = bool(getattr(history, "interrupted", False)) or any(
        "interrupted" in str(w.message) for w in caught)
    for w in caught:
        text = str(w.message)
        if "interrupted" in text or issubclass(w.category, (DeprecationWarning,
                                                              PendingDeprecationWarning)):
            continue
        if issubclass(w.category, ConvergenceWarning):
            print(f"Note: not converged after {args.epochs} epochs; more --epochs may help",
                  file=sys.stderr)
        else:
            print(f"Warning: {text}", file=sys.stderr)

    epochs = getattr(classifier, "n_iter_", None)
    losses = getattr(classifier, "loss_curve_", None) or []
    plural = "" if epochs == 1 else "s"
    if interrupted:
        summary = f"Stopped during epoch {epochs + 1} ({epochs} complete epoch{plural}) " \
                  f"after {seconds:.1f} s"
    else:
        summary = f"Trained {epochs} epoch{plural} in {seconds:.1f} s"
    if losses:
        summary += f"; training loss {losses[-1]:.4f}"
    print(summary)
    if progress.scores and getattr(classifier, "validation_scores_", None) is None:
        # The held-out accuracy after each epoch, for `evaluate --plots`.
        classifier.validation_scores_ = list(progress.scores)
    if len(val_index):
        predicted = classifier.predict(X_val)
        correct = int(np.sum(predicted == y_val))
        print(f"Validation accuracy: {correct / len(y_val):.4f} "
              f"({correct} of {len(y_val)} held-out digits)")

    model = Pipeline([("images", images), (step, classifier)])
    try:
        save_model(model, out)
    except ValueError as exc:
        raise UserError(f"-o {out}: {exc}") from exc
    size = out.stat().st_size
    if interrupted:
        print(f"Interrupted: saved the model trained so far to {out} ({_format_size(size)})")
        return EXIT_INTERRUPTED
    print(f"Saved {out} ({_format_size(size)})")
    return EXIT_OK


def _short_params(estimator):
    params = estimator.get_params(deep=False)
    keys = ("hidden_layer_sizes", "max_iter", "batch_size", "learning_rate_init", "alpha",
            "random_state")
    return ", ".join(f"{k}={params[k]!r}" for k in keys if k in params)


def _format_size(n_bytes):
    for unit in ("bytes", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000


# ----------------------------------------------------------------- predict
def predict(args):
    """Predict labels: a Kaggle submission for CSV/npz, filename,label rows for images."""
    out = _check_output_file(args.output, "-o")
    model = _load_model_file(args.model)
    data = read_unlabelled(args.data)
    where = args.data[0] if len(args.data) == 1 else "DATA"
    Xt, est = _model_inputs(model, data, where)
    y_pred = _predict(est, Xt, where)
    if data.kind in ("csv", "npz"):
        from .data import write_submission

        try:
            write_submission(y_pred, out)
        except ValueError as exc:
            raise UserError(f"-o {out}: {exc}") from exc
        print(f"Wrote {len(y_pred)} predictions for {data.description} to {out} "
              "(Kaggle submission: ImageId,Label)")
    else:
        _write_labels(out, data.X, y_pred)  # X holds the image file paths
        print(f"Wrote {len(y_pred)} predictions for {data.description} to {out} "
              "(filename,label)")
    return EXIT_OK


def _write_labels(path, filenames, labels):
    import csv

    from .data import atomic_write

    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filename", "label"])
        writer.writerows(zip(filenames, np.asarray(labels).tolist()))


# ----------------------------------------------------------------- evaluate
def _comparable(y_true, y_pred):
    """Labels of one kind: if the data and the model disagree (int vs str), compare as text."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if (y_true.dtype.kind in "OUS") != (y_pred.dtype.kind in "OUS"):
        return y_true.astype(str), y_pred.astype(str)
    return y_true, y_pred


def evaluate(args):
    """Accuracy, per-class precision and recall, confusion matrix; optional plots."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    if args.plots:
        _check_matplotlib("--plots")
    model = _load_model_file(args.model)
    data = read_labelled(args.data, split="test")
    Xt, est = _model_inputs(model, data, args.data)
    y_pred = _predict(est, Xt, args.data)
    y_true, y_pred = _comparable(data.y, y_pred)
    labels = np.unique(np.concatenate([y_true, y_pred]))
    correct = int(np.sum(y_true == y_pred))
    n = len(y_true)

    print(f"Model: {args.model} ({_describe_model(model)})")
    print(f"Data: {data.description}")
    print(f"Accuracy: {correct / n:.4f} ({correct} of {n})")
    print()
    precision, recall, _, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    width = max(5, max(len(str(label)) for label in labels))
    print(f"{'class':>{width}}  {'precision':>9}  {'recall':>7}  {'digits':>6}")
    for label, p, r, s in zip(labels, precision, recall, support):
        print(f"{str(label):>{width}}  {p:>9.4f}  {r:>7.4f}  {int(s):>6d}")
    print()
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    cell = max(4, len(str(matrix.max())) + 1, max(len(str(label)) for label in labels) + 1)
    print("Confusion matrix (rows: true class, columns: predicted class)")
    print(" " * width + "".join(f"{str(label):>{cell}}" for label in labels))
    for label, row in zip(labels, matrix):
        print(f"{str(label):>{width}}" + "".join(f"{count:>{cell}d}" for count in row))

    if args.plots:
        confidence = None
        if hasattr(est, "predict_proba"):
            confidence = est.predict_proba(Xt).max(axis=1)
        saved = _evaluation_plots(Path(args.plots), est, Xt, y_true, y_pred, labels,
                                  confidence)
        print()
        print("Saved " + ", ".join(str(p) for p in saved))
    return EXIT_OK


def _evaluation_plots(directory, est, Xt, y_true, y_pred, labels, confidence):
    from matplotlib.figure import Figure

    from .plot import (plot_confusion_matrix, plot_learning_curves, plot_misclassified,
                       save_figure)

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--plots {directory}: {exc.strerror or exc}") from exc
    saved = []
    fig = Figure(figsize=(7, 6))
    plot_confusion_matrix(y_true, y_pred, ax=fig.subplots(), labels=labels)
    saved.append(save_figure(fig, directory / "confusion_matrix.png"))

    if getattr(est, "loss_curve_", None):
        fig = Figure(figsize=(7, 4.5))
        plot_learning_curves({type(est).__name__: est}, ax=fig.subplots())
        saved.append(save_figure(fig, directory / "learning_curves.png"))

    images = np.asarray(Xt)
    if confidence is not None and images.ndim >= 2:
        images = images.reshape(len(images), -1)
        side = int(round(np.sqrt(images.shape[1])))
        if side * side == images.shape[1]:
            fig = plot_misclassified(images, y_true, y_pred, confidence, n=24, fig=Figure())
            saved.append(save_figure(fig, directory / "misclassified.png"))
    return saved


# ----------------------------------------------------------------- parsing
_DATA_HELP = ("a Kaggle CSV (label,pixel0..pixel783), a .npz with arrays {keys}, "
              "or an image folder with one sub-folder per class")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skdigits",
        description="From-scratch NumPy neural networks for digits, the scikit-learn way.",
        epilog="Exit codes: 0 done, 1 data or file problem, 2 usage mistake, 130 "
               "interrupted (train still saves the model trained so far). "
               "'skdigits COMMAND --help' describes each command.",
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

    p = commands.add_parser(
        "train", help="train a model and save it to a .skops file",
        description="Train ImageTransformer (MNIST-style preprocessing: ink high, scaled to "
                    "[0, 1], centred) followed by a classifier. A stratified --validation "
                    "share is held out: its accuracy is shown after every epoch and at the "
                    "end, and stored as validation_scores_ for 'evaluate --plots'. The model "
                    "fitted on the rest is saved with its preprocessing, so it reads raw "
                    "CSV rows, arrays and image files. Ctrl-C stops after the current "
                    "mini-batch and still saves the model trained so far (exit code 130).")
    p.add_argument("data", metavar="DATA",
                   help=_DATA_HELP.format(keys="X_train and y_train (or X and y)"))
    p.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="model file to write (e.g. model.skops)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="mlp: NumpyMLPClassifier (default); cnn: NumpyCNNClassifier")
    p.add_argument("--hidden", type=_at_least(1), nargs="+", metavar="UNITS",
                   help="hidden layer sizes (mlp default: 128)")
    p.add_argument("--epochs", type=_at_least(1), default=20,
                   help="maximum number of epochs (default 20)")
    p.add_argument("--validation", type=_fraction, default=0.1, metavar="FRACTION",
                   help="share held out for validation, in [0, 1) (default 0.1; 0: none)")
    p.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="mini-batch size, or 'auto' = min(200, n) (default auto)")
    p.add_argument("--learning-rate", type=_positive_float, default=1e-3,
                   help="Adam's initial step size (default 0.001)")
    p.add_argument("--alpha", type=_non_negative_float, default=1e-4,
                   help="L2 penalty (default 1e-4)")
    p.add_argument("--random-state", type=int, default=0,
                   help="seed of the split, initial weights and shuffling (default 0)")
    p.set_defaults(handler=train)

    p = commands.add_parser(
        "predict", help="predict labels with a saved model",
        description="Predict the digits in DATA with a model saved by 'skdigits train'. For a "
                    "CSV (e.g. Kaggle's test.csv) or .npz, write a Kaggle submission "
                    "(ImageId,Label with ids from 1); for image files or folders (searched "
                    "recursively), write filename,label rows.")
    p.add_argument("data", nargs="+", metavar="DATA",
                   help="one .csv or .npz file (arrays X_test or X), or image files and "
                        "folders")
    p.add_argument("-m", "--model", required=True, metavar="MODEL", help="saved model file")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="CSV file to write")
    p.set_defaults(handler=predict)

    p = commands.add_parser(
        "evaluate", help="score a saved model on labelled digits",
        description="Print the accuracy, per-class precision and recall, and the confusion "
                    "matrix of a saved model on labelled DATA. With --plots, also save "
                    "confusion_matrix.png, learning_curves.png (training loss and validation "
                    "accuracy per epoch) and misclassified.png (the most confident mistakes).")
    p.add_argument("data", metavar="DATA",
                   help=_DATA_HELP.format(keys="X_test and y_test (or X and y)"))
    p.add_argument("-m", "--model", required=True, metavar="MODEL", help="saved model file")
    p.add_argument("--plots", metavar="DIR", help="folder for the PNG files (created if needed)")
    p.set_defaults(handler=evaluate)

    from . import serve  # `skdigits serve`: its web libraries load only when it runs
    serve.add_parser(commands).set_defaults(handler=serve.run)
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


def _one_line(exc):
    """The first line of an error message (scikit-learn's may quote whole arrays)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 400 else first[:397] + "..."


def main(argv=None):
    """Entry point of the ``skdigits`` console script; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"skdigits {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # e.g. `skdigits evaluate ... | head`: stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_DATA
    except OSError as exc:  # e.g. a file that cannot be read or written
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"skdigits {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"\nskdigits {args.command}: interrupted; nothing was saved", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
