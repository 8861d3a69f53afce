"""Model files: skops round trips, the fixed allow-list, refusal of unsafe files."""

import copy
import importlib
import inspect
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import skops.io as sio
from numpy.testing import assert_array_equal
from sklearn.datasets import load_digits
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from hardening_support import SideEffect
from skdigits import NumpyMLPClassifier
from skdigits.data import ImageTransformer
from skdigits.persistence import load_model, save_model, trusted_types


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400], y[:400]


def fitted_pipeline(digits, **params):
    X, y = digits
    clf = NumpyMLPClassifier(**{"hidden_layer_sizes": (16,), "max_iter": 4,
                                "random_state": 0, **params})
    return Pipeline([("images", ImageTransformer(size=(8, 8), center=False)),
                     ("mlp", clf)]).fit(X, y)


# ----------------------------------------------------------------- round trips
@pytest.mark.parametrize("params", [
    dict(dtype="float32"),
    dict(dtype="float64"),
    dict(dropout=0.3, dtype="float32"),
    dict(solver="sgd", hidden_layer_sizes=(12, 8)),
    dict(solver="lbfgs", max_iter=10),
    dict(early_stopping=True, max_iter=6),
])
def test_round_trip_is_bit_identical(tmp_path, digits, params):
    model = fitted_pipeline(digits, **params)
    path = save_model(model, tmp_path / "model.skops")
    loaded = load_model(path)
    X = digits[0]
    assert type(loaded) is Pipeline
    assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.predict_proba(X).dtype == np.float64
    assert_array_equal(loaded.predict(X), model.predict(X))
    est, ref = loaded[-1], model[-1]
    assert est.dtype_ == ref.dtype_
    assert est.loss_curve_ == ref.loss_curve_
    assert est.validation_scores_ == ref.validation_scores_
    assert_array_equal(est.classes_, ref.classes_)


def test_bare_estimator_round_trip(tmp_path, digits):
    X, y = digits
    clf = NumpyMLPClassifier((10,), max_iter=3, random_state=1).fit(X / 16, y)
    loaded = load_model(save_model(clf, tmp_path / "clf.skops"))
    assert type(loaded) is NumpyMLPClassifier
    assert_array_equal(loaded.predict_proba(X / 16), clf.predict_proba(X / 16))


def test_loaded_network_is_rebound_to_one_buffer(tmp_path, digits):
    """skops honours Network.__setstate__: layer weights are views of the flat
    parameter buffer again (not copies), as the optimizer and coefs_ need."""
    loaded = load_model(save_model(fitted_pipeline(digits), tmp_path / "m.skops"))[-1]
    network = loaded._network
    for W in loaded.coefs_ + loaded.intercepts_:
        assert np.shares_memory(W, network.params)
    assert np.shares_memory(loaded._optimizer.params, network.params)
    before = loaded.predict_proba(digits[0][:5] / 16)
    loaded.coefs_[0][...] = 0.0  # writing through the view changes the model
    assert not np.array_equal(before, loaded.predict_proba(digits[0][:5] / 16))


def test_training_continues_identically_after_loading(tmp_path, digits):
    """The whole training state (Adam moments, RNGs incl. dropout's) survives."""
    X, y = digits
    clf = NumpyMLPClassifier((16,), max_iter=3, dropout=0.2, random_state=0).fit(X / 16, y)
    loaded = load_model(save_model(clf, tmp_path / "m.skops"))
    twin = copy.deepcopy(clf)
    for _ in range(2):
        twin.partial_fit(X / 16, y)
        loaded.partial_fit(X / 16, y)
    for a, b in zip(twin.coefs_, loaded.coefs_):
        assert_array_equal(a, b)


def test_save_is_atomic_and_refuses_untrusted_types(tmp_path, digits):
    path = tmp_path / "model.skops"
    save_model(fitted_pipeline(digits), path)
    before = path.read_bytes()
    bad = Pipeline([("f", FunctionTransformer(eval)), ("mlp", NumpyMLPClassifier())])
    with pytest.raises(ValueError, match="builtins.eval"):
        save_model(bad, path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.skops"]  # no temporary files left


# ----------------------------------------------------------------- allow-list
def test_allow_list_is_explicit():
    names = trusted_types()
    assert names == sorted(names)
    expected = {
        "numpy.dtype",
        "skdigits.data.images.ImageTransformer",
        "skdigits.mlp.NumpyMLPClassifier",
        "skdigits.mlp.NumpyMLPRegressor",
        "skdigits.nn.conv.Conv2D",
        "skdigits.nn.conv.ConvReLUPool2D",
        "skdigits.nn.conv.Flatten",
        "skdigits.nn.conv.MaxPool2D",
        "skdigits.nn.layers.Activation",
        "skdigits.nn.layers.Dense",
        "skdigits.nn.layers.Dropout",
        "skdigits.nn.network.Network",
        "skdigits.nn.normalization.BatchNorm",
        "skdigits.nn.optimizers.Adam",
        "skdigits.nn.optimizers.SGD",
        "skdigits.training.TrainingHistory",
        "skdigits.augmentation.Augmentation",
    }
    assert expected <= set(names)
    assert set(names) - expected <= {"skdigits.cnn.NumpyCNNClassifier"}
    for name in names:  # every entry names a real class
        module, _, attr = name.rpartition(".")
        assert inspect.isclass(getattr(importlib.import_module(module), attr))


def test_every_engine_layer_is_trusted():
    """A new layer class must be added to the allow-list (or models using it
    could be saved but never loaded)."""
    from skdigits.nn.layers import Layer

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    ours = {f"{c.__module__}.{c.__qualname__}" for c in subclasses(Layer)
            if c.__module__.startswith("skdigits.")}
    assert ours <= set(trusted_types())


def test_every_exported_estimator_is_trusted():
    """A new estimator must be added to the allow-list (or its model files
    could be saved but never loaded)."""
    import skdigits
    from sklearn.base import BaseEstimator

    objects = (getattr(skdigits, name) for name in skdigits.__all__)
    exported = {f"{obj.__module__}.{obj.__qualname__}" for obj in objects
                if isinstance(obj, type) and issubclass(obj, BaseEstimator)}
    assert "skdigits.mlp.NumpyMLPRegressor" in exported
    assert exported <= set(trusted_types())


def test_saved_pipeline_needs_nothing_beyond_the_allow_list(digits):
    data = sio.dumps(fitted_pipeline(digits, dropout=0.1, solver="sgd"))
    assert set(sio.get_untrusted_types(data=data)) <= set(trusted_types())


# ----------------------------------------------------------------- refusals
def test_side_effect_payload_works(tmp_path):
    """Control for the refusal tests: loading this payload with pickle does act."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(SideEffect(control))).close()
    assert control.exists()


def test_pickle_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(SideEffect(marker)))
    assert path.read_bytes()[:1] == b"\x80"
    with pytest.raises(ValueError, match="pickle or joblib file"):
        load_model(path)
    assert not marker.exists()


@pytest.mark.parametrize("compress", [0, 3])
def test_joblib_file_is_refused_and_never_run(tmp_path, compress):
    joblib = pytest.importorskip("joblib")
    marker = tmp_path / "pwned"
    path = tmp_path / "model.joblib"
    joblib.dump(SideEffect(marker), path, compress=compress)
    with pytest.raises(ValueError, match="pickle or joblib file"):
        load_model(path)
    assert not marker.exists()


def test_skops_file_with_unknown_type_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.skops"
    evil = {"model": Pipeline([("x", StandardScaler())]), "payload": SideEffect(marker)}
    sio.dump(evil, path)
    with pytest.raises(ValueError, match=r"allow-list: .*SideEffect"):
        load_model(path)
    assert not marker.exists()


def test_skops_file_naming_a_dangerous_function_is_refused(tmp_path):
    path = tmp_path / "model.skops"
    sio.dump(Pipeline([("f", FunctionTransformer(eval))]), path)
    with pytest.raises(ValueError, match="builtins.eval"):
        load_model(path)


@pytest.mark.parametrize("content, message", [
    (b"", "not a skops model file"),
    (b"label,pixel0\n1,0\n", "not a skops model file"),
    (b"PK\x03\x04 truncated zip", "not a readable skops model file"),
])
def test_other_files_are_refused(tmp_path, content, message):
    path = tmp_path / "model.skops"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_zip_that_is_not_skops_is_refused(tmp_path):
    path = tmp_path / "model.skops"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(ValueError, match="not a readable skops model file"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.skops")
