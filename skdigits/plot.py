"""Pictures of training and results: learning curves, confusion matrices, the
worst mistakes, and the MLP comparison of ``skdigits compare``.

matplotlib is optional (``pip install skdigits[plot]``) and only imported
when a function here is called.  Functions taking ``ax=None`` draw on the
current pyplot figure's new axes, as scikit-learn's displays do; pass an
``Axes`` (for instance from a ``matplotlib.figure.Figure`` you save yourself)
to stay away from pyplot's global state.
"""

from pathlib import Path

import numpy as np

__all__ = [
    "plot_augmentation",
    "plot_comparison",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_misclassified",
    "save_figure",
]

_HINT = "skdigits.plot needs matplotlib: pip install skdigits[plot]"


def _matplotlib():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError(_HINT) from exc
    return matplotlib


def _new_axes(ax, **figure_kw):
    if ax is not None:
        return ax
    _matplotlib()
    import matplotlib.pyplot as plt

    return plt.figure(**figure_kw).subplots()


def _new_figure(fig, **figure_kw):
    if fig is not None:
        return fig
    _matplotlib()
    import matplotlib.pyplot as plt

    return plt.figure(**figure_kw)


def save_figure(fig, path, dpi=100):
    """Save `fig` to `path` atomically; the format follows the file ending.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    path : str or path-like
        e.g. ``"curves.png"``, ``"curves.pdf"``, ``"curves.svg"``.
    dpi : int, default=100

    Returns
    -------
    path : pathlib.Path
    """
    from .data import atomic_write

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight")
    return path


# ---------------------------------------------------------------- learning curves
def _final_step(estimator):
    """The classifier at the end of a Pipeline, or the estimator itself."""
    steps = getattr(estimator, "steps", None)
    return steps[-1][1] if steps else estimator


def _named_estimators(estimators_or_dict):
    if isinstance(estimators_or_dict, dict):
        return list(estimators_or_dict.items())
    if isinstance(estimators_or_dict, (list, tuple)):
        items = list(estimators_or_dict)
        names = [type(_final_step(e)).__name__ for e in items]
        if len(set(names)) < len(names):
            names = [f"{name} #{i + 1}" for i, name in enumerate(names)]
        return list(zip(names, items))
    return [(type(_final_step(estimators_or_dict)).__name__, estimators_or_dict)]


def plot_learning_curves(estimators_or_dict, ax=None):
    """Plot the training loss per epoch and, where recorded, the validation accuracy.

    Parameters
    ----------
    estimators_or_dict : estimator, list of estimators, or dict name -> estimator
        Fitted skdigits classifiers, or pipelines ending in one (anything
        with ``loss_curve_``; ``validation_scores_`` is drawn when it is not
        None, e.g. with ``early_stopping=True`` or a model trained by
        ``skdigits train``).
    ax : matplotlib Axes, optional
        Where to draw the losses (left axis); validation accuracy goes on a
        twin axis on the right, dashed, in the same colour.

    Returns
    -------
    ax : matplotlib Axes
        The loss axes.
    """
    named = _named_estimators(estimators_or_dict)
    if not named:
        raise ValueError("no estimator to plot")
    curves = []
    for name, estimator in named:
        final = _final_step(estimator)
        loss = getattr(final, "loss_curve_", None)
        if loss is None:
            raise ValueError(f"{name}: no loss_curve_; is it a fitted skdigits classifier?")
        curves.append((name, np.asarray(loss, dtype=float),
                       getattr(final, "validation_scores_", None)))

    ax = _new_axes(ax, figsize=(7, 4.5))
    colors = [f"C{i % 10}" for i in range(len(curves))]
    val_ax = None
    handles = []
    for (name, loss, val), color in zip(curves, colors):
        epochs = np.arange(1, len(loss) + 1)
        (line,) = ax.plot(epochs, loss, color=color, marker="o" if len(loss) <= 30 else None,
                          markersize=3, label=f"{name} loss")
        handles.append(line)
        if val is not None and len(val):
            if val_ax is None:
                val_ax = ax.twinx()
                val_ax.set_ylabel("validation accuracy")
            val = np.asarray(val, dtype=float)
            (vline,) = val_ax.plot(np.arange(1, len(val) + 1), val, color=color,
                                   linestyle="--", marker="s" if len(val) <= 30 else None,
                                   markersize=3, label=f"{name} validation accuracy")
            handles.append(vline)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title("Learning curves")
    ax.grid(True, alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=2 if len(handles) > 1 else 1, fontsize="small", frameon=False)
    return ax


# ---------------------------------------------------------------- confusion matrix
def plot_confusion_matrix(y_true, y_pred, ax=None, *, labels=None, normalize=None):
    """Confusion matrix of true against predicted labels, with the counts written in.

    A thin wrapper around scikit-learn's ``ConfusionMatrixDisplay``.

    Parameters
    ----------
    y_true, y_pred : array-like of shape (n_samples,)
    ax : matplotlib Axes, optional
    labels : array-like, optional
        Classes to show, in order; by default those in `y_true` or `y_pred`.
    normalize : {'true', 'pred', 'all'} or None
        As in :func:`sklearn.metrics.confusion_matrix`.

    Returns
    -------
    display : sklearn.metrics.ConfusionMatrixDisplay
    """
    _matplotlib()
    from sklearn.metrics import ConfusionMatrixDisplay

    ax = _new_axes(ax, figsize=(6.5, 5.5))
    display = ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=labels, normalize=normalize, ax=ax, cmap="Blues",
        colorbar=True, values_format=None if normalize else "d")
    n = len(y_true)
    accuracy = float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if n else float("nan")
    ax.set_title(f"Confusion matrix ({n} digits, accuracy {accuracy:.4f})")
    return display


# ---------------------------------------------------------------- mistakes
def _as_images(images):
    from .augmentation import square_images

    images = square_images(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (n, pixels) or (n, height, width), "
                         f"got {images.shape}")
    return images


def plot_misclassified(images, y_true, y_pred, confidence, n=16, fig=None):
    """A grid of the `n` most confident mistakes: image, true and predicted label, confidence.

    Parameters
    ----------
    images : array of shape (n_samples, height * width) or (n_samples, height, width)
        What the model saw (e.g. 28 x 28 rows, ink high).
    y_true, y_pred : array-like of shape (n_samples,)
    confidence : array-like of shape (n_samples,)
        Probability the model gave its prediction (``predict_proba(X).max(axis=1)``).
    n : int, default=16
        At most this many digits, the most confident mistakes first.
    fig : matplotlib Figure, optional
        Figure to draw on (cleared and resized to fit the grid); a new pyplot
        figure by default.

    Returns
    -------
    fig : matplotlib Figure
    """
    images = _as_images(images)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    confidence = np.asarray(confidence, dtype=float)
    if not (len(images) == len(y_true) == len(y_pred) == len(confidence)):
        raise ValueError("images, y_true, y_pred and confidence must have the same length, "
                         f"got {len(images)}, {len(y_true)}, {len(y_pred)}, {len(confidence)}")
    wrong = np.flatnonzero(y_true != y_pred)
    worst = wrong[np.argsort(-confidence[wrong], kind="stable")][:max(int(n), 0)]

    cols = min(8, max(len(worst), 1))
    rows = max(1, int(np.ceil(len(worst) / cols)))
    size = (max(1.5 * cols, 4.0), 1.8 * rows + 0.7)
    fig = _new_figure(fig, figsize=size)
    fig.clear()
    fig.set_size_inches(*size)
    if len(worst) == 0:
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "No misclassified digits", ha="center", va="center", fontsize=14)
        return fig
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, worst):
        ax.imshow(images[i], cmap="gray_r", interpolation="nearest")
        ax.set_title(f"true {y_true[i]}, pred {y_pred[i]}\n{confidence[i]:.0%} sure",
                     fontsize=8, color="firebrick")
    fig.suptitle(f"Most confident mistakes ({len(worst)} of {len(wrong)} misclassified)",
                 fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- compare
def plot_comparison(rows, path=None):
    """Picture of ``skdigits compare``: accuracy per fold and total fit time per model.

    Parameters
    ----------
    rows : sequence of (name, test_scores, fit_times)
        One per model; `test_scores` and `fit_times` hold one value per fold.
    path : str or path-like, optional
        Save the figure there (atomically; format from the file ending).

    Returns
    -------
    fig : matplotlib Figure
        Not registered with pyplot, so nothing piles up in loops or servers.
    """
    _matplotlib()
    from matplotlib.figure import Figure

    rows = [(str(name), np.asarray(s, dtype=float), np.asarray(t, dtype=float))
            for name, s, t in rows]
    if not rows:
        raise ValueError("nothing to plot: rows is empty")
    fig = Figure(figsize=(9, 1.2 + 0.8 * len(rows)))
    acc_ax, time_ax = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    positions = np.arange(len(rows))[::-1]
    for pos, (name, scores, times), color in zip(positions, rows,
                                                 (f"C{i}" for i in range(len(rows)))):
        jitter = np.linspace(-0.12, 0.12, len(scores)) if len(scores) > 1 else np.zeros(1)
        acc_ax.scatter(scores, pos + jitter, color=color, alpha=0.6, s=18, zorder=3)
        acc_ax.errorbar(scores.mean(), pos, xerr=scores.std(), fmt="D", color=color,
                        markersize=7, capsize=4, zorder=4)
        acc_ax.annotate(f"{scores.mean():.4f} ± {scores.std():.4f}", (scores.mean(), pos),
                        xytext=(0, 12), textcoords="offset points", ha="center", fontsize=8)
        time_ax.barh(pos, times.sum(), color=color, alpha=0.8)
        time_ax.annotate(f"{times.sum():.2f} s", (times.sum(), pos), xytext=(3, 0),
                         textcoords="offset points", va="center", fontsize=8)
    acc_ax.set_yticks(positions, [name for name, _, _ in rows])
    acc_ax.set_xlabel(f"accuracy per fold ({len(rows[0][1])} folds; ◆ mean ± std)")
    acc_ax.grid(True, axis="x", alpha=0.3)
    acc_ax.set_ylim(-0.6, len(rows) - 0.4)
    time_ax.set_xlabel("total fit time (s)")
    time_ax.set_xlim(0, max(t.sum() for _, _, t in rows) * 1.3 or 1)
    time_ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("Cross-validated comparison")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig



# ---------------------------------------------------------------- augmentation
def _as_picture_stack(images):
    """(n, h, w) grey or (n, h, w, 3 | 4) colour images from rows or stacks."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    if images.ndim == 4:
        if images.shape[3] not in (3, 4):
            raise ValueError(f"images with {images.shape[3]} channels cannot be shown; "
                             "pass 1 (grey), 3 (RGB) or 4 (RGBA) channels")
        return images
    return _as_images(images)


def plot_augmentation(images, augmentation="affine", *, n_copies=5, n_images=6,
                      random_state=0, fig=None):
    """Originals beside randomly distorted copies, to tune an augmentation by eye.

    One row per image: the original on the left (titled "original"), then
    `n_copies` distortions of it.  All pictures of a row share one grey scale,
    so fading or thickened strokes show as such.

    Parameters
    ----------
    images : array of shape (n, height * width), (n, height, width) or (n, height, width, channels)
        Floating-point digits, ink high (e.g. MNIST / 255); channels last
        (1, 3 or 4).
    augmentation : "affine", "elastic" or Augmentation, default="affine"
        What :func:`skdigits.augmentation.make_augmentation` accepts, except
        None; presets are sized for these images.
    n_copies : int, default=5
        Distorted copies per image (1 to 20).
    n_images : int, default=6
        Show the first `n_images` images (1 to 50).
    random_state : int, numpy.random.Generator or None, default=0
        Seed of the distortions: the same value draws the same picture.
    fig : matplotlib Figure, optional
        Figure to draw on (cleared and resized to fit the grid); a new pyplot
        figure by default.

    Returns
    -------
    fig : matplotlib Figure
    """
    from .augmentation import _as_generator, make_augmentation

    pictures = _as_picture_stack(images)
    for name, value, high in (("n_copies", n_copies, 20), ("n_images", n_images, 50)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not 1 <= value <= high:
            raise ValueError(f"{name} must be an integer from 1 to {high}, got {value!r}")
    if augmentation is None:
        raise ValueError("augmentation is None: nothing to show; pass 'affine', "
                         "'elastic' or an Augmentation")
    if len(pictures) == 0:
        raise ValueError("no images to show")
    settings = make_augmentation(augmentation, image_shape=pictures.shape[1:3]).frozen()
    rng = _as_generator(random_state)
    originals = pictures[:n_images]
    if not np.issubdtype(originals.dtype, np.floating):
        originals = originals.astype(np.float32)
    # All copies of all images in one batch: image i's copies are rows
    # i * n_copies ... (i + 1) * n_copies - 1.
    batch = np.repeat(originals, n_copies, axis=0)
    copies = settings.transform_batch(batch, rng).reshape(
        len(originals), n_copies, *originals.shape[1:])

    rows, cols = len(originals), 1 + n_copies
    size = (1.3 * cols + 0.4, 1.35 * rows + 0.8)
    fig = _new_figure(fig, figsize=size)
    fig.clear()
    fig.set_size_inches(*size)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i, (original, distorted) in enumerate(zip(originals, copies)):
        low = min(float(original.min()), float(distorted.min()))
        high = max(float(original.max()), float(distorted.max()))
        for j, picture in enumerate([original, *distorted]):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if picture.ndim == 3:  # colour: imshow wants [0, 1]
                ax.imshow(np.clip(picture, 0, 1), interpolation="nearest")
            else:
                ax.imshow(picture, cmap="gray_r", vmin=low, vmax=high if high > low else low + 1,
                          interpolation="nearest")
            if i == 0:
                ax.set_title("original" if j == 0 else f"copy {j}", fontsize=8)
        for spine in axes[i, 0].spines.values():
            spine.set_color("C0")
            spine.set_linewidth(2)
    name = augmentation if isinstance(augmentation, str) else type(augmentation).__name__
    fig.suptitle(f"Augmentation: {name} ({n_copies} random copies per digit)", fontsize=11)
    fig.tight_layout()
    return fig
