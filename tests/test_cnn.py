"""Behaviour of NumpyCNNClassifier on small data (the MNIST accuracy run is
in benchmarks/bench_cnn.py; a shortened version is below)."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from skdigits.cnn import NumpyCNNClassifier, infer_image_shape

SMALL = dict(conv_filters=(8,), hidden_layer_sizes=(32,), max_iter=8, learning_rate_init=0.005,
             dropout=0.0, conv_dropout=0.0, random_state=0)

pytestmark = pytest.mark.usefixtures("no_convergence_warnings")


def test_learns_digits(digits):
    from sklearn.model_selection import train_test_split

    X_train, X_test, y_train, y_test = train_test_split(*digits, stratify=digits[1],
                                                        random_state=0)
    clf = NumpyCNNClassifier(**SMALL).fit(X_train, y_train)
    assert clf.image_shape_ == (8, 8, 1)
    assert clf.score(X_test, y_test) >= 0.9


@pytest.mark.parametrize("n_features, expected", [(784, (28, 28, 1)), (64, (8, 8, 1)),
                                                  (1, (1, 1, 1)), (2, (1, 2, 1)),
                                                  (3, (1, 3, 1)), (10, (1, 10, 1))])
def test_auto_image_shape(n_features, expected):
    assert infer_image_shape(n_features) == expected


def test_explicit_image_shape_with_channels():
    rng = np.random.RandomState(0)
    X = rng.rand(40, 6 * 4 * 3)
    y = rng.randint(0, 2, 40)
    clf = NumpyCNNClassifier(image_shape=(6, 4, 3), batch_size=16, **SMALL).fit(X, y)
    assert clf.image_shape_ == (6, 4, 3)
    assert clf.coefs_[0].shape == (3, 3, 3, 8)


@pytest.mark.parametrize("shape", [(5, 5), (8, 8, 2), (0, 64)])
def test_bad_image_shape_is_a_clear_error(digits, shape):
    X, y = digits
    with pytest.raises(ValueError, match="image_shape"):
        NumpyCNNClassifier(image_shape=shape, **SMALL).fit(X[:50], y[:50])


def test_tiny_inputs_skip_pooling():
    rng = np.random.RandomState(0)
    X, y = rng.rand(30, 3), rng.randint(0, 3, 30)
    clf = NumpyCNNClassifier(batch_size=16, **SMALL).fit(X, y)
    assert clf.predict_proba(X).shape == (30, 3)
    assert np.isfinite(clf.predict_proba(X)).all()


def test_predictions_do_not_depend_on_batch_companions(digits):
    X, y = digits
    clf = NumpyCNNClassifier(dtype="float32", **SMALL).fit(X[:500], y[:500])
    batch = clf.predict_proba(X[:40])
    alone = np.vstack([clf.predict_proba(X[i:i + 1]) for i in range(40)])
    np.testing.assert_array_equal(alone, batch)


def test_dropout_inactive_at_predict_and_seeded(digits):
    X, y = digits
    a = NumpyCNNClassifier(**{**SMALL, "dropout": 0.5, "conv_dropout": 0.25}).fit(X[:400], y[:400])
    b = NumpyCNNClassifier(**{**SMALL, "dropout": 0.5, "conv_dropout": 0.25}).fit(X[:400], y[:400])
    np.testing.assert_array_equal(a.predict_proba(X[:50]), a.predict_proba(X[:50]))
    np.testing.assert_array_equal(a.predict_proba(X[:50]), b.predict_proba(X[:50]))
    c = NumpyCNNClassifier(**SMALL).fit(X[:400], y[:400])
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])


def test_partial_fit_and_warm_start(digits):
    X, y = digits
    clf = NumpyCNNClassifier(**SMALL)
    for _ in range(3):
        clf.partial_fit(X[:300], y[:300], classes=np.arange(10))
    assert len(clf.loss_curve_) == 3 and clf.loss_curve_[-1] < clf.loss_curve_[0]
    warm = NumpyCNNClassifier(warm_start=True, **{**SMALL, "max_iter": 2}).fit(X[:300], y[:300])
    first = list(warm.loss_curve_)
    warm.fit(X[:300], y[:300])
    assert len(warm.loss_curve_) == 4 and warm.loss_curve_[:2] == first
    warm.set_params(conv_filters=(4,))
    with pytest.raises(ValueError, match="architecture"):
        warm.fit(X[:300], y[:300])


def test_pickle_round_trip_and_clone(digits):
    X, y = digits
    clf = NumpyCNNClassifier(**SMALL).fit(X[:300], y[:300])
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X[:30]), clf.predict_proba(X[:30]))
    again.partial_fit(X[:300], y[:300])
    assert clone(clf).get_params() == clf.get_params()


def test_follows_image_transformer_in_a_pipeline(digits):
    from skdigits.data import ImageTransformer

    X, y = digits
    images = (X[:300].reshape(-1, 8, 8) * 255).astype(np.uint8)
    pipe = Pipeline([("img", ImageTransformer(size=(16, 16), center=False)),
                     ("cnn", NumpyCNNClassifier(**SMALL))]).fit(images, y[:300])
    assert pipe[-1].image_shape_ == (16, 16, 1)
    assert pipe.score(images, y[:300]) > 0.8


MNIST = Path(os.environ.get("SKDIGITS_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "mnist.npz"


@pytest.mark.skipif(not MNIST.exists(), reason="../shared/data/mnist.npz not present")
def test_mnist_shortened():
    """CI's shortened accuracy run: 6,000 digits, 2 epochs, the default
    architecture; the full 60,000-digit run is benchmarks/bench_cnn.py."""
    with np.load(MNIST) as data:
        X = data["X_train"][:6000].reshape(6000, -1) / 255.0
        y = data["y_train"][:6000]
        X_test = data["X_test"][:2000].reshape(2000, -1) / 255.0
        y_test = data["y_test"][:2000]
    clf = NumpyCNNClassifier(max_iter=2, random_state=0).fit(X, y)
    assert clf.score(X_test, y_test) >= 0.92  # measured 0.9465


def test_model_file_round_trip(digits, tmp_path):
    from skdigits import load_model, save_model

    X, y = digits
    clf = NumpyCNNClassifier(dtype="float32", **SMALL).fit(X[:300], y[:300])
    save_model(clf, tmp_path / "cnn.skops")
    again = load_model(tmp_path / "cnn.skops")
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    again.partial_fit(X[:300], y[:300])
    assert len(again.loss_curve_) == len(clf.loss_curve_) + 1
