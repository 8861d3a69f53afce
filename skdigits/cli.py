"""The ``skdigits`` command line.  Argument parsing, progress, files and
printing only: the data readers live in :mod:`skdigits.data.datasets`, the
maths in the estimators and the engine.

Commands: ``compare``, ``train``, ``predict``, ``evaluate``, ``serve`` (``skdigits
COMMAND --help`` for each).  Results go to stdout, progress and messages to
stderr.  Exit codes:

* 0 -- done;
* 1 -- a problem with the data or files (missing file, unreadable data,
  unsafe or damaged model file, a full disk), or training that diverged (the
  model is then not saved); one line on stderr, no traceback;
* 2 -- a usage mistake (unknown option, bad value, an output that is one of
  the inputs); one line on stderr;
* 130 -- interrupted with Ctrl-C.  ``train`` stops at the next mini-batch,
  still saves the model trained so far and says so, then exits with 130 so
  that scripts can tell the run was cut short.  Other commands write nothing.

If the reader of stdout goes away (``skdigits evaluate ... | head``), the
command still finishes its work (plots, files) and says nothing about it.
"""

import argparse
import math
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

# NumPy, scikit-learn and the rest of skdigits are imported inside the
# commands: `main` must already be running, and catching KeyboardInterrupt,
# while they load (about a second).

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UserError(Exception):
    """A mistake in the user's data or files: one line on stderr, exit code 1."""

    exit_code = EXIT_DATA


class UsageError(UserError):
    """A mistake in the command line that argparse cannot see: exit code 2."""

    exit_code = EXIT_USAGE


class Interrupted(UserError):
    """Ctrl-C after some output was written: the message says what exists."""

    exit_code = EXIT_INTERRUPTED


# ----------------------------------------------------------------- streams
class _ForgivingStream:
    """A text stream that goes quiet once its reader has gone (``| head``).

    The command's work (plots, model files) matters more than its messages:
    after a ``BrokenPipeError`` the rest of the output is dropped and the
    command carries on.  The underlying file descriptor is pointed at the
    null device so that the interpreter's own flush at exit cannot fail
    either.
    """

    def __init__(self, stream):
        self._stream = stream
        self.reader_gone = False

    def write(self, text):
        if not self.reader_gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._go_quiet()
        return len(text)

    def flush(self):
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._go_quiet()

    def _go_quiet(self):
        self.reader_gone = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass  # not a real file (e.g. a test's capture): nothing will flush it later

    def __getattr__(self, name):  # isatty, fileno, encoding, ...
        return getattr(self._stream, name)


@contextmanager
def _forgiving_streams():
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ForgivingStream(saved[0]), _ForgivingStream(saved[1])
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved


# ----------------------------------------------------------------- messages
def _one_line(exc):
    """The first line of an error message (scikit-learn's may quote whole arrays)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 400 else first[:397] + "..."


def _os_error_text(exc):
    """`file: reason` for an OSError, whatever form it came in."""
    if exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return exc.strerror or str(exc)


#: Lines of a warning shown, so that no warning floods the terminal
#: (load_image_folder's own summary of skipped files fits: a line, five
#: names and "... and N more").
_WARNING_LINES = 7


def _show_warnings(caught):
    """Print each warning once, as ``Warning: <its own text>``, shortened."""
    seen = set()
    for w in caught:
        if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
            continue  # addressed to developers, not to the user of a command
        text = str(w.message).strip()
        if (w.category, text) in seen:
            continue
        seen.add((w.category, text))
        lines = text.splitlines()
        shown = lines[:_WARNING_LINES]
        if len(lines) > _WARNING_LINES:
            shown.append(f"  ... and {len(lines) - _WARNING_LINES} more")
        print("Warning: " + "\n".join(shown), file=sys.stderr)


@contextmanager
def _shown_warnings():
    """Record the warnings of a block and show them once each when it ends."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            _show_warnings(caught)


@contextmanager
def _reading():
    """Data problems become one-line errors; the loaders' warnings are shown."""
    with _shown_warnings():
        try:
            yield
        except FileNotFoundError as exc:
            raise UserError(str(exc) if exc.strerror is None else _os_error_text(exc)) from exc
        except OSError as exc:
            raise UserError(_os_error_text(exc)) from exc
        except ValueError as exc:
            raise UserError(str(exc)) from exc


# ----------------------------------------------------------------- files
def _same_file(a, b):
    """True when `a` and `b` name one existing file, after resolving links."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one of them does not exist (yet)
        return False


def _refuse_overwriting_inputs(path, option, inputs):
    for given in inputs:
        if given is not None and _same_file(path, given):
            raise UsageError(f"{option} {path}: is the input {given}; writing it would "
                             "destroy that input, so choose another file name")


def _check_output_file(path, option, inputs=()):
    """Fail before any long work if `path` cannot be written or is one of `inputs`."""
    path = Path(path)
    _refuse_overwriting_inputs(path, option, inputs)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise UserError(f"{option} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{option} {path}: folder {parent} is not writable")
    return path


@contextmanager
def _writing(path, option):
    """A failed write (full disk, lost permission) names the file it was for."""
    try:
        yield
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write it ({exc.strerror or exc})") from exc


def _check_matplotlib(option):
    try:
        import matplotlib
    except ImportError:
        raise UserError(f"{option} needs matplotlib: pip install \"skdigits[plot]\" "
                        "(from a source checkout: pip install \".[plot]\")") from None
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


def _on_error(args):
    return "skip" if args.skip_bad_images else "raise"


# ----------------------------------------------------------------- models
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


def _model_inputs(model, data, where, on_error="raise"):
    """(features the final estimator sees, final estimator) for `data`.

    Image files are decoded here by the model's own preprocessing; with
    ``on_error="skip"`` unreadable ones are dropped from ``data.X``.
    """
    import numpy as np

    from .data.datasets import transform_images

    pre, est = _split_model(model)
    if pre is None and data.kind == "images":
        raise UserError(f"{where}: this model has no image preprocessing step, so it cannot "
                        "read image files; use a model saved by 'skdigits train'")
    try:
        if data.rows is not None and pre is not None and _is_default_image_step(pre):
            Xt = data.rows
        elif pre is None:
            Xt = data.X
        elif data.kind == "images":
            with _shown_warnings():
                Xt, data.X = transform_images(pre, data.X, on_error=on_error)
        else:
            Xt = pre.transform(data.X)
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

    from .data.datasets import bundled_digits, pixel_rows, read_labelled
    from .mlp import NumpyMLPClassifier

    if args.plot:
        _check_output_file(args.plot, "--plot", inputs=[args.data])
        _check_matplotlib("--plot")
    with _reading():
        data = bundled_digits() if args.data is None else \
            read_labelled(args.data, split="train", on_error=_on_error(args))
    X, y = pixel_rows(data), data.y
    params = dict(hidden_layer_sizes=tuple(args.hidden), max_iter=args.max_iter,
                  alpha=args.alpha, random_state=args.random_state)
    models = [
        ("skdigits NumpyMLPClassifier", NumpyMLPClassifier(**params)),
        ("sklearn MLPClassifier", MLPClassifier(**params)),
    ]
    cv = StratifiedKFold(n_splits=args.cv, shuffle=True, random_state=args.random_state)
    print(f"Data: {data.description}; {args.cv}-fold cross-validation of "
          f"StandardScaler + MLP{params['hidden_layer_sizes']}, max_iter={args.max_iter}")
    rows = []
    for name, model in models:
        with warnings.catch_warnings():
            # Both models stop at max_iter alike; the table is the point here.
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

        with _writing(args.plot, "--plot"):
            plot_comparison(rows, args.plot)
        print(f"Saved {args.plot}")
    return EXIT_OK


# ----------------------------------------------------------------- progress
def _stream_is_terminal(stream):
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class EpochProgress:
    """A scikit-learn fit callback that reports every epoch on a stream.

    On a terminal, with `rich <https://rich.readthedocs.io>`_ installed (what
    ``sklearn.callback.ProgressBar`` draws with), one bar is redrawn:
    ``epoch 3/20 ━━━━━━━━━━━╺━━━━ loss 0.1234  val 0.9650 0:00:04 0:00:23``
    (complete epochs, loss and held-out accuracy of the last one, time spent
    and left).  Elsewhere -- a file, a pipe, a CI log, or without rich -- one
    plain line is printed per epoch.  With held-out data, the validation
    accuracy after each epoch is computed on the ``fitted_estimator`` that
    scikit-learn rebuilds for the hook, and kept in ``scores``: the
    callback's own record, not the model's.

    Parameters
    ----------
    stream : text file, default=sys.stderr
    X_val, y_val : held-out features (as the classifier takes them) and labels, optional
    tty : bool, optional
        Draw a bar; by default ``stream.isatty()``.
    """

    def __init__(self, stream=None, X_val=None, y_val=None, tty=None):
        self.stream = sys.stderr if stream is None else stream
        self.X_val, self.y_val = X_val, y_val
        self.tty = _stream_is_terminal(self.stream) if tty is None else tty
        self.scores, self.losses = [], []
        self.total = None
        self._bar = None
        self._epoch_started = None

    # ---- FitCallback protocol
    def setup(self, estimator, context):
        self.total = getattr(context, "max_subtasks", None) or None
        self.scores, self.losses = [], []
        self._epoch_started = time.perf_counter()
        self._bar = _rich_progress(self.stream, self.total, self._epoch_label()) \
            if self.tty else None

    def on_fit_task_begin(self, estimator, context):
        return None

    def on_fit_task_end(self, estimator, context, *, metadata=None, fitted_estimator=None):
        if getattr(context, "task_name", None) != "epoch":
            return False
        # The epoch's loss is on the snapshot, as on any fitted estimator.
        curve = getattr(fitted_estimator, "loss_curve_", None)
        self.losses.append(float(curve[-1]) if curve else math.nan)
        if self.X_val is not None and fitted_estimator is not None:
            predicted = fitted_estimator.predict(self.X_val)
            self.scores.append(float((predicted == self.y_val).mean()))
        now = time.perf_counter()
        seconds, self._epoch_started = now - self._epoch_started, now
        if self._bar is not None:
            self._bar.update(self._bar.task_ids[0], completed=len(self.losses),
                             epoch=self._epoch_label(), metrics=self._metrics())
        else:
            self.stream.write(f"{self._epoch_label()}  {self._metrics()}  {seconds:.1f} s\n")
            self.stream.flush()
        return False

    def teardown(self, estimator, context):
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    # ---- text
    def _epoch_label(self):
        total = self.total or "?"
        return f"epoch {len(self.losses):>{len(str(total))}}/{total}"

    def _metrics(self):
        parts = [f"loss {self.losses[-1]:.4f}"] if self.losses else []
        if self.scores:
            parts.append(f"val {self.scores[-1]:.4f}")
        return "  ".join(parts)


def _rich_progress(stream, total, label):
    """rich's redrawn bar on `stream`, started; None without rich."""
    try:
        from rich.console import Console
        from rich.progress import (BarColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)
    except ImportError:
        return None
    progress = Progress(
        TextColumn("{task.fields[epoch]}"), BarColumn(), TextColumn("{task.fields[metrics]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(file=stream, force_terminal=True),
        # Our own prints come after fit: leave sys.stdout and sys.stderr alone.
        redirect_stdout=False, redirect_stderr=False)
    progress.add_task("fit", total=total, epoch=label, metrics="")
    progress.start()
    return progress


# ----------------------------------------------------------------- train: build
# The default recipe (benchmarks/bench_cli_train.py): trained on 12,000 Kaggle
# rows, 784-800-10 with batch norm, elastic distortions and a one-cycle
# schedule scored 98.4-98.9% on 3,000 other digits, the whole command taking
# 75-83 s on the 2-core VM; 784-256-10 for 20 epochs with affine distortions
# scored 97.0-97.9%, and MLPClassifier's settings 95.4%.
DEFAULT_MLP_HIDDEN = (800,)
DEFAULT_EPOCHS = {"mlp": 40, "cnn": 20}

def _make_classifier(args):
    if args.model == "mlp":
        from .mlp import NumpyMLPClassifier as cls
    else:
        cls = _cnn_class()
    epochs = args.epochs or DEFAULT_EPOCHS[args.model]
    params = dict(max_iter=epochs, batch_size=args.batch_size,
                  learning_rate_init=args.learning_rate, alpha=args.alpha,
                  random_state=args.random_state, batch_norm=args.batch_norm,
                  augment=None if args.augment == "none" else args.augment,
                  lr_schedule=None if args.lr_schedule == "none" else args.lr_schedule)
    if args.hidden is not None:
        params["hidden_layer_sizes"] = tuple(args.hidden)
    elif args.model == "mlp":
        params["hidden_layer_sizes"] = DEFAULT_MLP_HIDDEN
    accepted = cls().get_params()
    options = {"max_iter": "--epochs", "batch_size": "--batch-size",
               "learning_rate_init": "--learning-rate", "alpha": "--alpha",
               "random_state": "--random-state", "hidden_layer_sizes": "--hidden",
               "batch_norm": "--batch-norm", "augment": "--augment",
               "lr_schedule": "--lr-schedule"}
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


def _take(X, index):
    return [X[i] for i in index] if isinstance(X, list) else X[index]


class _Split:
    """The preprocessing and the rows it gives: training and held-out (or None)."""

    def __init__(self, images, X_train, y_train, X_val, y_val):
        self.images = images
        self.X_train, self.y_train, self.X_val, self.y_val = X_train, y_train, X_val, y_val


def _split_indices(data, args):
    """(training, held-out) row indices, stratified by class; prints what was held out."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    index = np.arange(len(data))
    if args.validation == 0:
        print(f"Data: {data.description}: all {len(data)} for training, none held out")
        return index, index[:0]
    try:
        train_index, val_index = train_test_split(
            index, test_size=args.validation, stratify=data.y, random_state=args.random_state)
    except ValueError as exc:
        raise UserError(f"cannot hold out {args.validation:g} of {len(data)} digits for "
                        f"validation, stratified by class ({exc}); use more data or "
                        "--validation 0") from exc
    print(f"Data: {data.description}: {len(train_index)} for training, "
          f"{len(val_index)} held out for validation")
    return train_index, val_index


def _hold_out(data, args):
    """Split `data` and preprocess both parts with the ImageTransformer the model keeps.

    The classifier is fitted on preprocessed rows, then saved behind the same
    (stateless) preprocessing, so the model file takes raw digits.
    """
    import numpy as np

    from .data import ImageTransformer

    train_index, val_index = _split_indices(data, args)
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
    y_train = data.y[train_index]
    if len(np.unique(y_train)) < 2:
        raise UserError(f"{args.data}: the training digits have a single class; "
                        "at least two are needed")
    if not len(val_index):
        return _Split(images, X_train, y_train, None, None)
    return _Split(images, X_train, y_train, X_val, data.y[val_index])


# ----------------------------------------------------------------- train: fit
def _fit(classifier, split):
    """Fit with a progress display and the estimator's warnings shown once each.

    Returns the seconds it took.
    """
    sys.stdout.flush()  # keep the order of stdout and the progress on stderr in logs
    progress = EpochProgress(sys.stderr, split.X_val, split.y_val)
    has_callbacks = hasattr(classifier, "set_callbacks")  # scikit-learn >= 1.9
    if has_callbacks:
        classifier.set_callbacks(progress)
    started = time.perf_counter()
    try:
        with _shown_warnings():
            classifier.fit(split.X_train, split.y_train)
    except ValueError as exc:  # e.g. a non-finite loss: the learning rate is too large
        raise UserError(str(exc)) from exc
    finally:
        if has_callbacks:
            classifier.set_callbacks()  # the progress display is not part of the model
    return time.perf_counter() - started


def _check_not_diverged(classifier, args):
    """Refuse to save a model that training made worse than guessing.

    A cross-entropy above twice that of guessing uniformly among the classes
    (log K) means confidently wrong predictions on the training digits
    themselves: training diverged (the estimator raises only once the loss is
    no longer finite).  Such a file would only mislead `predict`; leaving any
    earlier file at that path alone and exiting 1 lets scripts stop.
    """
    losses = getattr(classifier, "loss_curve_", None) or []
    chance = math.log(len(classifier.classes_))
    if losses and losses[-1] > 2 * chance:
        raise UserError(
            f"training diverged: the training loss ended at {losses[-1]:.4g}, more than "
            f"twice that of guessing among {len(classifier.classes_)} classes "
            f"({chance:.3g}); lower --learning-rate (it was {args.learning_rate:g}). "
            f"The model was not saved: {args.output} is untouched")


_STOP_REASONS = {"converged": "converged", "max_iter": "stopped by --epochs",
                 "callback": "stopped by a callback"}


def _report_fit(classifier, seconds):
    epochs = classifier.n_iter_
    losses = getattr(classifier, "loss_curve_", None) or []
    plural = "" if epochs == 1 else "s"
    if classifier.stop_reason_ == "interrupted":
        summary = f"Stopped during epoch {epochs + 1} ({epochs} complete epoch{plural}) " \
                  f"after {seconds:.1f} s"
    else:
        summary = f"Trained {epochs} epoch{plural} in {seconds:.1f} s"
        reason = _STOP_REASONS.get(classifier.stop_reason_)
        if reason:
            summary += f" ({reason})"
    if losses:
        summary += f"; training loss {losses[-1]:.4f}"
    print(summary)


def _report_validation(classifier, split):
    if split.X_val is None:
        return
    correct = int((classifier.predict(split.X_val) == split.y_val).sum())
    print(f"Validation accuracy: {correct / len(split.y_val):.4f} "
          f"({correct} of {len(split.y_val)} held-out digits)")


# ----------------------------------------------------------------- train: save
class _SaveGuard:
    """Once training is over, a Ctrl-C no longer loses the trained model.

    Entered as soon as ``fit`` returns (during ``fit`` the estimator's own
    handler turns Ctrl-C into a stop at the next mini-batch).  The first
    Ctrl-C is noted and the validation and the save finish; a second one
    abandons the save, and the atomic write leaves the output file as it was.
    """

    def __init__(self, out):
        self.out = out
        self.requested = False
        self._previous = None
        self._before = self._identity()

    def _identity(self):
        try:
            st = self.out.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\nCtrl-C: training is over; finishing the save of {self.out} first "
              "(Ctrl-C again abandons it)", file=sys.stderr)

    def __exit__(self, kind, exc, tb):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if kind is KeyboardInterrupt:
            if self._identity() != self._before:
                raise Interrupted(f"the save had already finished: {self.out} holds the "
                                  "trained model") from exc
            kept = "keeps its previous content" if self._before else "was not written"
            raise Interrupted(f"the save was abandoned: {self.out} {kept}") from exc
        return False


def _save_elsewhere(model, name):
    """Save `model` in a new temporary folder; its path, or None if that fails too."""
    import shutil
    import tempfile

    from .persistence import save_model

    try:
        folder = Path(tempfile.mkdtemp(prefix="skdigits-"))
    except OSError:
        return None
    try:
        return save_model(model, folder / name)
    except OSError:
        shutil.rmtree(folder, ignore_errors=True)
        return None


def _save_trained_model(model, out):
    """Save atomically; if the disk refuses, keep the model somewhere and say where."""
    from .persistence import save_model

    try:
        save_model(model, out)
    except ValueError as exc:
        raise UserError(f"-o {out}: {exc}") from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        spare = _save_elsewhere(model, out.name)
        if spare is None:
            where = "nor in the temporary folder; the trained model is lost"
        else:
            where = f"it was saved to {spare} instead: move it where it should go"
        raise UserError(f"-o {out}: cannot write the model ({reason}); {where}") from exc
    return out.stat().st_size


def train(args):
    """Fit ImageTransformer + classifier, report held-out accuracy, save the model."""
    from sklearn.pipeline import Pipeline

    from .data.datasets import read_labelled

    out = _check_output_file(args.output, "-o", inputs=[args.data])
    classifier = _make_classifier(args)
    with _reading():
        data = read_labelled(args.data, split="train", on_error=_on_error(args))
    split = _hold_out(data, args)
    print(f"Model: ImageTransformer -> {type(classifier).__name__}"
          f"({_short_params(classifier)})")
    seconds = _fit(classifier, split)
    with _SaveGuard(out) as guard:
        _check_not_diverged(classifier, args)
        _report_fit(classifier, seconds)
        _report_validation(classifier, split)
        size = _save_trained_model(Pipeline([("images", split.images),
                                             (args.model, classifier)]), out)
    if classifier.stop_reason_ == "interrupted" or guard.requested:
        print(f"Interrupted: saved the model trained so far to {out} ({_format_size(size)})")
        return EXIT_INTERRUPTED
    print(f"Saved {out} ({_format_size(size)})")
    return EXIT_OK


def _short_params(estimator):
    params = estimator.get_params(deep=False)
    keys = ("hidden_layer_sizes", "max_iter", "batch_size", "learning_rate_init", "alpha",
            "batch_norm", "augment", "lr_schedule", "random_state")
    return ", ".join(f"{k}={params[k]!r}" for k in keys if k in params)


def _format_size(n_bytes):
    for unit in ("bytes", "kB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000


# ----------------------------------------------------------------- predict
def predict(args):
    """Predict labels: a Kaggle submission for CSV/npz, filename,label rows for images."""
    from .data.datasets import is_table, read_unlabelled

    out = _check_output_file(args.output, "-o", inputs=[*args.data, args.model])
    if len(args.data) > 1 and any(is_table(p) for p in args.data):
        raise UsageError("give one .csv or .npz file, or any number of images and folders")
    model = _load_model_file(args.model)
    with _reading():
        data = read_unlabelled(args.data)
    where = args.data[0] if len(args.data) == 1 else "DATA"
    Xt, est = _model_inputs(model, data, where, on_error=_on_error(args))
    y_pred = _predict(est, Xt, where)
    if data.kind in ("csv", "npz"):
        from .data import write_submission

        try:
            with _writing(out, "-o"):
                write_submission(y_pred, out)
        except ValueError as exc:
            raise UserError(f"-o {out}: {exc}") from exc
        print(f"Wrote {len(y_pred)} predictions for {data.description} to {out} "
              "(Kaggle submission: ImageId,Label)")
    else:
        with _writing(out, "-o"):
            _write_labels(out, data.X, y_pred)  # X holds the image file paths
        print(f"Wrote {len(y_pred)} predictions for {data.description} to {out} "
              "(filename,label)")
    return EXIT_OK


def _write_labels(path, filenames, labels):
    import csv

    import numpy as np

    from .data import atomic_write

    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filename", "label"])
        writer.writerows(zip(filenames, np.asarray(labels).tolist()))


# ----------------------------------------------------------------- evaluate
_PLOT_FILES = ("confusion_matrix.png", "learning_curves.png", "misclassified.png")


def _comparable(y_true, y_pred):
    """Labels of one kind: if the data and the model disagree (int vs str), compare as text."""
    import numpy as np

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if (y_true.dtype.kind in "OUS") != (y_pred.dtype.kind in "OUS"):
        return y_true.astype(str), y_pred.astype(str)
    return y_true, y_pred


def evaluate(args):
    """Accuracy, per-class precision and recall, confusion matrix; optional plots."""
    import numpy as np
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from .data.datasets import read_labelled

    if args.plots:
        for name in _PLOT_FILES:
            _refuse_overwriting_inputs(Path(args.plots) / name, "--plots",
                                       [args.data, args.model])
        _check_matplotlib("--plots")
    model = _load_model_file(args.model)
    with _reading():
        data = read_labelled(args.data, split="test", on_error=_on_error(args))
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
    import numpy as np
    from matplotlib.figure import Figure

    from .plot import (plot_confusion_matrix, plot_learning_curves, plot_misclassified,
                       save_figure)

    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--plots {directory}: {exc.strerror or exc}") from exc
    saved = []

    def save(fig, name):
        with _writing(directory / name, "--plots"):
            saved.append(save_figure(fig, directory / name))

    try:
        fig = Figure(figsize=(7, 6))
        plot_confusion_matrix(y_true, y_pred, ax=fig.subplots(), labels=labels)
        save(fig, "confusion_matrix.png")

        if getattr(est, "loss_curve_", None):
            fig = Figure(figsize=(7, 4.5))
            plot_learning_curves({type(est).__name__: est}, ax=fig.subplots())
            save(fig, "learning_curves.png")

        images = np.asarray(Xt)
        if confidence is not None and images.ndim >= 2:
            images = images.reshape(len(images), -1)
            side = int(round(np.sqrt(images.shape[1])))
            if side * side == images.shape[1]:
                save(plot_misclassified(images, y_true, y_pred, confidence, n=24, fig=Figure()),
                     "misclassified.png")
    except KeyboardInterrupt as exc:
        done = ", ".join(str(p) for p in saved) or "no plot"
        raise Interrupted(f"saved {done} before the interruption") from exc
    return saved


# ----------------------------------------------------------------- parsing
_DATA_HELP = ("a Kaggle CSV (label,pixel0..pixel783), a .npz with arrays {keys}, "
              "or an image folder with one sub-folder per class")


def _add_skip_option(p):
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out image files that cannot be decoded (one warning lists "
                        "them) instead of stopping at the first")


def _add_compare(commands):
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
    p.add_argument("--plot", metavar="FILE.png",
                   help="save a picture of the comparison (needs matplotlib)")
    _add_skip_option(p)
    p.set_defaults(handler=compare)


def _add_train(commands):
    p = commands.add_parser(
        "train", help="train a model and save it to a .skops file",
        description="Train ImageTransformer (MNIST-style preprocessing: ink high, scaled to "
                    "[0, 1], centred) followed by a classifier. A stratified --validation "
                    "share is held out: its accuracy is shown after every epoch and at the "
                    "end. The model fitted on the rest is saved with its preprocessing, so "
                    "it reads raw CSV rows, arrays and image files. Ctrl-C stops after the "
                    "current mini-batch and still saves the model trained so far (exit "
                    "code 130). A model whose training diverged is not saved (exit code 1).")
    p.add_argument("data", metavar="DATA",
                   help=_DATA_HELP.format(keys="X_train and y_train (or X and y)"))
    p.add_argument("-o", "--output", required=True, metavar="MODEL",
                   help="model file to write (e.g. model.skops)")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="mlp: NumpyMLPClassifier (default); cnn: NumpyCNNClassifier")
    p.add_argument("--hidden", type=_at_least(1), nargs="+", metavar="UNITS",
                   help=f"hidden layer sizes (mlp default: {DEFAULT_MLP_HIDDEN[0]})")
    p.add_argument("--epochs", type=_at_least(1),
                   help=f"maximum number of epochs (default {DEFAULT_EPOCHS['mlp']} for mlp, "
                        f"{DEFAULT_EPOCHS['cnn']} for cnn)")
    p.add_argument("--validation", type=_fraction, default=0.1, metavar="FRACTION",
                   help="share held out for validation, in [0, 1) (default 0.1; 0: none)")
    p.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="mini-batch size, or 'auto' = min(200, n) (default auto)")
    p.add_argument("--learning-rate", type=_positive_float, default=3e-3,
                   help="Adam's step size, the peak of --lr-schedule (default 0.003)")
    p.add_argument("--augment", choices=("none", "affine", "elastic"), default="elastic",
                   help="distort every training batch afresh: random rotation, slant, size "
                        "and shift ('affine'), milder ones plus elastic warping ('elastic', "
                        "default), or 'none'")
    p.add_argument("--lr-schedule", choices=("none", "cosine", "one-cycle"),
                   default="one-cycle",
                   help="step-size schedule over the epochs (default one-cycle: warm-up, "
                        "then cosine decay)")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=True,
                   help="batch normalisation of the hidden layers (default on)")
    p.add_argument("--alpha", type=_non_negative_float, default=1e-4,
                   help="L2 penalty (default 1e-4)")
    p.add_argument("--random-state", type=int, default=0,
                   help="seed of the split, initial weights and shuffling (default 0)")
    _add_skip_option(p)
    p.set_defaults(handler=train)


def _add_predict(commands):
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
    _add_skip_option(p)
    p.set_defaults(handler=predict)


def _add_evaluate(commands):
    p = commands.add_parser(
        "evaluate", help="score a saved model on labelled digits",
        description="Print the accuracy, per-class precision and recall, and the confusion "
                    "matrix of a saved model on labelled DATA. With --plots (needs "
                    "matplotlib), also save confusion_matrix.png, learning_curves.png "
                    "(training loss per epoch, and the validation accuracy of models "
                    "trained with early_stopping) and misclassified.png (the most "
                    "confident mistakes).")
    p.add_argument("data", metavar="DATA",
                   help=_DATA_HELP.format(keys="X_test and y_test (or X and y)"))
    p.add_argument("-m", "--model", required=True, metavar="MODEL", help="saved model file")
    p.add_argument("--plots", metavar="DIR", help="folder for the PNG files (created if needed)")
    _add_skip_option(p)
    p.set_defaults(handler=evaluate)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="skdigits",
        description="From-scratch NumPy neural networks for digits, the scikit-learn way.",
        epilog="Exit codes: 0 done, 1 data or file problem (or training diverged), 2 usage "
               "mistake, 130 interrupted (train still saves the model trained so far). "
               "'skdigits COMMAND --help' describes each command.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    # Each command registers its parser and handler (set_defaults(handler=...)).
    for add in (_add_compare, _add_train, _add_predict, _add_evaluate):
        add(commands)
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


def _number(low, *, low_inclusive, below=None):
    """argparse type for a finite float >= low (or > low), optionally < below."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value < low if low_inclusive else value <= low
        if not math.isfinite(value) or too_low or (below is not None and value >= below):
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


# ----------------------------------------------------------------- entry point
def _run(argv):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except Interrupted as exc:
        print(f"\nskdigits {args.command}: interrupted; {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except UserError as exc:
        print(f"skdigits {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. a file that cannot be read or written
        print(f"skdigits {args.command}: error: {_os_error_text(exc)}", file=sys.stderr)
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"\nskdigits {args.command}: interrupted; nothing was saved", file=sys.stderr)
        return EXIT_INTERRUPTED


def main(argv=None):
    """Entry point of the ``skdigits`` console script; returns the exit code."""
    try:
        with _forgiving_streams():
            return _run(argv)
    except KeyboardInterrupt:  # e.g. while Python is still importing NumPy
        print("\nskdigits: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
