"""End to end on real pictures: a model trained on MNIST arrays reads real PNG files.

The 300 PNGs in ``shared/data/mnist_png_sample`` (30 per digit, folders 0-9)
are dark digits on white with grey levels on a non-linear curve, i.e. not
MNIST's own encoding. They are read with ``load_image_folder``; the model is
trained on MNIST arrays passed through the same ``ImageTransformer``.

The data live outside the repository, next to it: ``../shared/data`` from the
repository root, or wherever ``SKDIGITS_DATA`` points. Without them the tests
skip.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

from skdigits.data import ImageTransformer, load_image_folder

DATA = Path(os.environ.get("SKDIGITS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
PNG_DIR = DATA / "mnist_png_sample"
MNIST = DATA / "mnist.npz"

# Measured with the settings below (15,000 training digits, 15 epochs):
# 0.937 for subset seed 0 and 0.937-0.960 over subset seeds 0-4. The bound
# sits about three standard errors (300 images: ~1.4 points) under the lowest,
# and far above what broken preprocessing gives (0.10 with invert=False: the
# white paper is taken as the background level, so every row comes out blank).
MIN_ACCURACY = 0.90
N_TRAIN = 15_000


@pytest.fixture(scope="module")
def real_data():
    if not PNG_DIR.is_dir() or not MNIST.is_file():
        pytest.skip(f"real digit data not found under {DATA} (set SKDIGITS_DATA)")
    with np.load(MNIST) as mnist:
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(len(mnist["y_train"]), N_TRAIN, replace=False))
        return mnist["X_train"][idx], mnist["y_train"][idx].astype(np.int64)


def accuracy_on_pngs(X_train, y_train, **params):
    features = ImageTransformer(**params).fit_transform(X_train)
    clf = MLPClassifier(hidden_layer_sizes=(128,), max_iter=15, random_state=0)
    # One BLAS thread: as fast on an idle machine and no thread thrashing on a busy one.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(features, y_train)
    pngs = load_image_folder(PNG_DIR, **params)
    assert pngs.data.shape == (300, 784)
    truth = pngs.target_names[pngs.target].astype(np.int64)
    return float((clf.predict(pngs.data) == truth).mean())


def test_folder_layout_and_rows(real_data):
    pngs = load_image_folder(PNG_DIR)
    assert pngs.target_names.tolist() == [str(d) for d in range(10)]
    assert np.bincount(pngs.target).tolist() == [30] * 10
    assert pngs.data.dtype == np.float32
    assert 0.0 <= pngs.data.min() and pngs.data.max() <= 1.0
    # Ink high, like MNIST: the mean pixel is MNIST's 0.13-ish, not paper-white.
    assert 0.05 < pngs.data.mean() < 0.25


def test_mnist_trained_model_reads_real_pngs(real_data):
    X_train, y_train = real_data
    preprocessed = accuracy_on_pngs(X_train, y_train)
    uncentred = accuracy_on_pngs(X_train, y_train, center=False)
    naive = accuracy_on_pngs(X_train, y_train, center=False, invert=False)
    print(
        f"\nreal PNG accuracy: {preprocessed:.3f} (invert='auto', center=True), "
        f"{uncentred:.3f} (invert='auto', center=False), "
        f"{naive:.3f} (invert=False, center=False)"
    )
    assert preprocessed >= MIN_ACCURACY
    assert naive < preprocessed
