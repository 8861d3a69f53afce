"""skdigits.plot: learning curves, confusion matrix, mistakes grid, comparison."""

import sys
import warnings

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits
from sklearn.metrics import confusion_matrix
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from skdigits import NumpyMLPClassifier  # noqa: E402
from skdigits import plot as skplot  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def fitted():
    X, y = load_digits(return_X_y=True)
    X, y = X[:300] / 16, y[:300]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = NumpyMLPClassifier((16,), max_iter=5, random_state=0).fit(X, y)
        early = NumpyMLPClassifier((16,), max_iter=7, early_stopping=True,
                                   random_state=0).fit(X, y)
    return X, y, plain, early


# ----------------------------------------------------------------- learning curves
def test_learning_curves_one_estimator(fitted):
    _, _, plain, _ = fitted
    ax = skplot.plot_learning_curves(plain)
    (line,) = ax.get_lines()
    assert_array_equal(line.get_ydata(), plain.loss_curve_)
    assert_array_equal(line.get_xdata(), np.arange(1, len(plain.loss_curve_) + 1))
    assert len(ax.figure.axes) == 1  # no validation axis without validation scores


def test_learning_curves_dict_with_validation_and_pipeline(fitted):
    X, y, plain, early = fitted
    pipe = make_pipeline(StandardScaler(), NumpyMLPClassifier((8,), max_iter=3, random_state=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe.fit(X, y)
    fig = Figure()
    ax = skplot.plot_learning_curves({"plain": plain, "early": early, "pipe": pipe},
                                     ax=fig.subplots())
    assert len(ax.get_lines()) == 3
    twin = [a for a in fig.axes if a is not ax]
    assert len(twin) == 1
    (val_line,) = twin[0].get_lines()
    assert_array_equal(val_line.get_ydata(), early.validation_scores_)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["plain loss", "early loss", "early validation accuracy", "pipe loss"]


def test_learning_curves_list_names_and_unfitted(fitted):
    _, _, plain, early = fitted
    ax = skplot.plot_learning_curves([plain, early])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "NumpyMLPClassifier #1 loss"
    with pytest.raises(ValueError, match="no loss_curve_"):
        skplot.plot_learning_curves(NumpyMLPClassifier())


# ----------------------------------------------------------------- confusion matrix
def test_confusion_matrix_matches_sklearn():
    y_true = np.array([0, 1, 2, 2, 1, 0, 2])
    y_pred = np.array([0, 2, 2, 2, 1, 1, 0])
    display = skplot.plot_confusion_matrix(y_true, y_pred)
    assert_array_equal(display.confusion_matrix, confusion_matrix(y_true, y_pred))
    assert "accuracy 0.5714" in display.ax_.get_title()


# ----------------------------------------------------------------- mistakes
def test_misclassified_shows_most_confident_mistakes_first():
    rng = np.random.default_rng(0)
    images = rng.random((6, 784))
    y_true = np.array([1, 2, 3, 4, 5, 6])
    y_pred = np.array([1, 7, 3, 8, 9, 6])  # mistakes at 1, 3, 4
    confidence = np.array([0.9, 0.6, 0.99, 0.95, 0.7, 0.5])
    fig = skplot.plot_misclassified(images, y_true, y_pred, confidence, n=2)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["true 4, pred 8\n95% sure", "true 5, pred 9\n70% sure"]
    assert "2 of 3 misclassified" in fig._suptitle.get_text()


def test_misclassified_without_mistakes_and_bad_input():
    images = np.zeros((3, 8, 8))
    fig = skplot.plot_misclassified(images, [1, 2, 3], [1, 2, 3], [0.9, 0.9, 0.9])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert texts == ["No misclassified digits"]
    with pytest.raises(ValueError, match="same length"):
        skplot.plot_misclassified(images, [1, 2], [1, 2, 3], [0.9, 0.9, 0.9])
    with pytest.raises(ValueError, match="not square"):
        skplot.plot_misclassified(np.zeros((3, 10)), [1, 2, 3], [1, 2, 4], [0.9] * 3)


# ----------------------------------------------------------------- comparison
def test_plot_comparison_writes_png(tmp_path):
    rows = [("ours", np.array([0.91, 0.93, 0.92]), np.array([0.1, 0.2, 0.1])),
            ("theirs", np.array([0.90, 0.92, 0.94]), np.array([0.5, 0.4, 0.6]))]
    path = tmp_path / "compare.png"
    fig = skplot.plot_comparison(rows, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    rows_at = dict(zip([t.get_text() for t in ax.get_yticklabels()], ax.get_yticks()))
    assert rows_at["ours"] > rows_at["theirs"]  # first row on top
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
    with pytest.raises(ValueError, match="empty"):
        skplot.plot_comparison([], None)


def test_save_figure_format_follows_suffix(tmp_path):
    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    path = skplot.save_figure(fig, tmp_path / "figure.svg")
    assert b"<svg" in path.read_bytes()[:500]


def test_missing_matplotlib_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install skdigits\[plot\]"):
        skplot.plot_comparison([("a", [1.0], [1.0])], None)
    with pytest.raises(ImportError, match=r"pip install skdigits\[plot\]"):
        skplot.plot_confusion_matrix([1], [1])
    with pytest.raises(ImportError, match=r"pip install skdigits\[plot\]"):
        skplot.plot_augmentation(np.zeros((1, 8, 8)))


# ----------------------------------------------------------------- augmentation
def test_plot_augmentation_grid_of_originals_and_copies(digits):
    X, _ = digits
    fig = skplot.plot_augmentation(X[:10], "affine", n_copies=4, n_images=3, random_state=0)
    assert len(fig.axes) == 3 * (1 + 4)
    titles = [ax.get_title() for ax in fig.axes[:5]]
    assert titles == ["original", "copy 1", "copy 2", "copy 3", "copy 4"]
    first_row = [ax.get_images()[0].get_array() for ax in fig.axes[:5]]
    assert_array_equal(first_row[0], X[0].reshape(8, 8))  # the original, as given
    assert all(not np.array_equal(copy, first_row[0]) for copy in first_row[1:])
    again = skplot.plot_augmentation(X[:10], "affine", n_copies=4, n_images=3, random_state=0)
    assert_array_equal(again.axes[7].get_images()[0].get_array(),
                       fig.axes[7].get_images()[0].get_array())
    assert "affine" in fig._suptitle.get_text()


def test_plot_augmentation_on_given_figure_with_colour_and_instance():
    from skdigits.augmentation import Augmentation

    rng = np.random.default_rng(0)
    colour = rng.random((2, 12, 12, 3))
    fig = Figure()
    out = skplot.plot_augmentation(colour, Augmentation(elastic_alpha=5), n_copies=2, fig=fig)
    assert out is fig and len(fig.axes) == 2 * 3
    assert fig.axes[0].get_images()[0].get_array().shape == (12, 12, 3)
    assert "Augmentation" in fig._suptitle.get_text()


def test_plot_augmentation_bad_input(digits):
    X, _ = digits
    with pytest.raises(ValueError, match="n_copies must be an integer from 1 to 20"):
        skplot.plot_augmentation(X[:3], n_copies=0)
    with pytest.raises(ValueError, match="n_images"):
        skplot.plot_augmentation(X[:3], n_images=2.5)
    with pytest.raises(ValueError, match="augmentation is None"):
        skplot.plot_augmentation(X[:3], None)
    with pytest.raises(ValueError, match="got 'wobbly'"):
        skplot.plot_augmentation(X[:3], "wobbly")
    with pytest.raises(ValueError, match="not square"):
        skplot.plot_augmentation(np.zeros((3, 10)))
    with pytest.raises(ValueError, match="2 channels"):
        skplot.plot_augmentation(np.zeros((3, 8, 8, 2)))
    with pytest.raises(ValueError, match="no images"):
        skplot.plot_augmentation(np.zeros((0, 64)))


def test_plot_augmentation_of_real_mnist_digits(mnist_path, tmp_path):
    with np.load(mnist_path) as data:
        images = data["X_test"][:6] / 255
    fig = skplot.plot_augmentation(images, "elastic", n_copies=5)
    path = skplot.save_figure(fig, tmp_path / "augmentation.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert len(fig.axes) == 6 * 6
