"""Property-based hardening suite (issue #7, "Reliability").

Awkward inputs of every kind -- NaN/inf, empty, one sample/feature/class,
object/str/complex dtypes, 1-D and 3-D where 2-D is expected, huge, tiny and
subnormal magnitudes, values beyond float32, mismatched feature counts,
hypothesis-generated constructor parameters, garbage CSV lines and random
bytes in image files -- must end in either

* a ``ValueError``/``TypeError`` whose message names the problem (checked on
  a keyword), or
* a correct result: finite probabilities in [0, 1] summing to 1, predictions
  in ``classes_``, finite weights; finite float32 rows in [0, 1] for
  ``ImageTransformer``; the right values for the loaders.

Never another exception type (IndexError, ZeroDivisionError, ...), NaN
output, or a hang (every case runs under a SIGALRM time limit where POSIX
timers exist).

The examples are derandomised so CI is reproducible.  For a longer, random
exploration run e.g.::

    SKDIGITS_FUZZ_SCALE=20 SKDIGITS_FUZZ_RANDOM=1 python -m pytest tests/test_hardening_properties.py

``SKDIGITS_HARDENING_OUTCOMES=path.jsonl`` appends per-family outcome counts
(clear error / correct result / failure) to that file.
"""

import csv
import functools
import io
import math
import re
import signal
import threading
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from hardening_support import (  # noqa: F401 - the autouse fixture must be imported
    ESTIMATORS, fuzz, make, one_blas_thread_and_outcomes, record)
from skdigits import (
    ImageTransformer,
    load_digit_csv,
    load_image_folder,
    write_submission,
)

# Fits outside run_case (fixtures, the feature-count test) warn as usual.
pytestmark = [pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
              pytest.mark.filterwarnings("ignore:Got `batch_size`:UserWarning")]

# ----------------------------------------------------------------- settings
#: Seconds one case may take before it counts as a hang.
CASE_TIME_LIMIT = 30



class CaseTimedOut(BaseException):
    """A BaseException, so that no ``except Exception`` in the code under test hides it."""


@contextmanager
def time_limit(seconds=CASE_TIME_LIMIT):
    """Raise CaseTimedOut after ``seconds`` (POSIX main thread only; else no limit)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise CaseTimedOut(f"no result after {seconds} s (hang?)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(family, func, keywords):
    """Run ``func()``; return ``(True, result)`` or ``(False, exception)``.

    A ValueError/TypeError must match the regex ``keywords`` (case-insensitive)
    -- the message names the problem.  Any other exception fails the test.
    Outcomes are counted per ``family``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with time_limit():
                result = func()
    except (ValueError, TypeError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        if not re.search(keywords, message, flags=re.IGNORECASE):
            record(family, "FAILURE: unclear message")
            pytest.fail(f"{family}: the error does not name the problem (expected /{keywords}/): "
                        f"{message[:500]}")
        record(family, "clear error")
        return False, exc
    except CaseTimedOut:
        record(family, "FAILURE: hang")
        raise
    except Exception as exc:
        record(family, f"FAILURE: {type(exc).__name__}")
        raise AssertionError(f"{family}: crashed with {type(exc).__name__} instead of a "
                             f"ValueError/TypeError: {exc}") from exc
    return True, result


def fail_result(family, message):
    record(family, "FAILURE: wrong result")
    pytest.fail(f"{family}: {message}")


def check_fitted(family, est, X):
    """A fitted classifier gives a correct result on valid X (or a clear error)."""
    if not all(np.all(np.isfinite(a)) for a in est.coefs_ + est.intercepts_):
        fail_result(family, "fit returned a model with non-finite weights")
    ok, proba = run_case(family, lambda: est.predict_proba(X),
                         r"overflow|scale|float32|range")
    if not ok:
        return
    multilabel = est._label_binarizer.y_type_.startswith("multilabel")
    if proba.dtype != np.float64 or not np.all(np.isfinite(proba)):
        fail_result(family, f"predict_proba is not finite float64: {proba!r}")
    if proba.min() < 0 or proba.max() > 1:
        fail_result(family, f"probabilities outside [0, 1]: {proba.min()} .. {proba.max()}")
    if not multilabel and not np.allclose(proba.sum(axis=1), 1.0, rtol=1e-6, atol=1e-9):
        fail_result(family, f"probabilities do not sum to 1: {proba.sum(axis=1)}")
    ok, pred = run_case(family, lambda: est.predict(X), r"overflow|scale|float32|range")
    if ok:
        if multilabel:
            if pred.shape != (X.shape[0], len(est.classes_)) or not np.isin(pred, (0, 1)).all():
                fail_result(family, f"multilabel predictions malformed: {pred!r}")
        elif not np.isin(pred, est.classes_).all():
            fail_result(family, f"predictions {pred!r} not in classes_ {est.classes_!r}")


# ----------------------------------------------------------------- values
#: Awkward finite magnitudes: zero, subnormals, the float32 limits, beyond them, the float64 limits.
SPECIAL_FLOATS = [
    0.0, -0.0, 1.0, -1.0, 0.5, 255.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1e-300,
    -1e-300, 1e-45, 1e-30, 1e30, -1e30, 3.4028234663852886e38, -3.4028234663852886e38, 3.5e38,
    -3.5e38, 1e39, -1e39, 1e300, -1e300, 1.7976931348623157e308, -1.7976931348623157e308,
]
finite_floats = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(-10, 10),
                          st.floats(allow_nan=False, allow_infinity=False))
any_floats = st.one_of(finite_floats, st.sampled_from([np.nan, np.inf, -np.inf]))

X_KINDS = ["float64"] * 5 + ["float32", "float16", "int64", "uint8", "bool", "object", "str",
                             "complex", "object_str", "csr"]


def convert(values, kind, data):
    """The float64 array ``values`` as an array of ``kind``."""
    with np.errstate(all="ignore"):
        if kind in ("float64", "float32", "float16", "complex"):
            return values.astype(kind)
        if kind == "int64":
            v = np.nan_to_num(values, nan=0.0, posinf=2.0**62, neginf=-(2.0**62))
            return np.clip(v, -(2.0**62), 2.0**62).astype(np.int64)
        if kind == "uint8":
            return np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8)
        if kind == "bool":
            return values != 0
        if kind == "object":
            return values.astype(object)
        if kind == "str":
            return values.astype(str)
        if kind == "csr":  # sparse input is accepted too (2-D only)
            return sp.csr_matrix(values) if values.ndim == 2 else values
        if kind == "object_str":
            out = values.astype(object)
            if out.size:
                out.flat[data.draw(st.integers(0, out.size - 1))] = data.draw(
                    st.text(min_size=1, max_size=5).filter(lambda s: not _is_number(s)))
            return out
    raise AssertionError(kind)


def _is_number(text):
    try:
        float(text)
    except (ValueError, OverflowError):
        return False
    return True


def x_problems(X, n_features=None):
    """Regex of the keywords a clear error about X may use (any of its problems)."""
    if sp.issparse(X):
        X = X.toarray()
    X = np.asarray(X) if not isinstance(X, np.ndarray) else X
    words = [r"float32|diverg|overflow|scale"]  # magnitudes (always possible)
    kind = X.dtype.kind
    if kind in "USa":
        words.append(r"string|bytes|numeric")
    if kind == "O" and any(isinstance(v, str) for v in X.flat):
        words.append(r"convert|string|float|number|numeric")
    if kind == "c":
        words.append(r"complex")
    if X.ndim == 1:
        words.append(r"2D|1D|reshape")
    if X.ndim >= 3:
        words.append(r"dim")
    if X.ndim >= 1 and X.shape[0] == 0:
        words.append(r"0 sample|minimum")
    if X.ndim == 2 and X.shape[1] == 0:
        words.append(r"0 feature|minimum")
    if kind in "fcO":
        with np.errstate(all="ignore"):
            try:
                numeric = np.asarray(X, dtype=np.complex128)
            except (TypeError, ValueError):
                numeric = np.zeros(1)
        if np.isnan(numeric).any():
            words.append(r"NaN")
        if np.isinf(numeric).any():
            words.append(r"infinity|inf")
    if n_features is not None and X.ndim == 2 and X.shape[1] != n_features:
        words.append(r"features")
    return "|".join(words)


@st.composite
def feature_matrices(draw, max_rows=24, cols=st.integers(1, 6)):
    """(X, description) for awkward X of every kind."""
    layout = draw(st.sampled_from(["2d"] * 8 + ["1d", "3d", "no_rows", "no_cols", "one_row",
                                                "one_col"]))
    n, d = draw(st.integers(2, max_rows)), draw(cols)
    shape = {"2d": (n, d), "1d": (n,), "3d": (n, d, 2), "no_rows": (0, d), "no_cols": (n, 0),
             "one_row": (1, d), "one_col": (n, 1)}[layout]
    elements = finite_floats if draw(st.integers(0, 3)) else any_floats
    values = draw(hnp.arrays(np.float64, shape, elements=elements))
    kind = draw(st.sampled_from(X_KINDS))
    data = draw(st.data())
    return convert(values, kind, data), f"{layout} {kind}"


# ============================================================ estimators: X
@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("dtype", ["auto", "float32", "float64"])
@fuzz(40)
@given(case=feature_matrices(), n_classes=st.integers(1, 3))
def test_fit_on_awkward_X(name, dtype, case, n_classes):
    X, _ = case
    n = X.shape[0] if X.ndim else 0
    y = np.arange(n) % n_classes
    family = f"estimator fit, awkward X ({name})"
    est = make(name, dtype=dtype)
    ok, _ = run_case(family, lambda: est.fit(X, y), x_problems(X))
    if ok:
        check_fitted(family, est, X)
        record(family, "correct result")
    elif hasattr(est, "_network"):
        # A fit stopped by an error (e.g. divergence) keeps finite weights.
        assert all(np.all(np.isfinite(a)) for a in est.coefs_)


@pytest.fixture(scope="module")
def fitted_models():
    rng = np.random.RandomState(0)
    X = rng.rand(60, 4)
    y = np.arange(60) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {(name, dtype): make(name, dtype=dtype).fit(X, y)
                for name in ESTIMATORS for dtype in ("float32", "float64")}


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@fuzz(40)
@given(case=feature_matrices(cols=st.one_of(st.just(4), st.integers(1, 6))))
def test_predict_on_awkward_X(fitted_models, name, dtype, case):
    """Includes mismatched feature counts (the models saw 4 features)."""
    X, _ = case
    est = fitted_models[(name, dtype)]
    family = f"estimator predict, awkward X ({name})"
    keywords = x_problems(X, n_features=4)
    ok, proba = run_case(family, lambda: est.predict_proba(X), keywords)
    if ok:
        if not (np.all(np.isfinite(proba)) and proba.min() >= 0 and proba.max() <= 1
                and np.allclose(proba.sum(axis=1), 1.0)):
            fail_result(family, f"bad probabilities {proba!r} for X={X!r}")
        ok, pred = run_case(family, lambda: est.predict(X), keywords)
        if ok and not np.isin(pred, est.classes_).all():
            fail_result(family, f"predictions {pred!r} not in classes_")
        record(family, "correct result")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@fuzz(25)
@given(d_fit=st.integers(1, 8), d_predict=st.integers(1, 8))
def test_feature_count_mismatch_is_named(name, d_fit, d_predict):
    assume(d_fit != d_predict)
    rng = np.random.RandomState(d_fit)
    est = make(name).fit(rng.rand(20, d_fit), np.arange(20) % 2)
    family = f"feature-count mismatch ({name})"
    ok, _ = run_case(family, lambda: est.predict(rng.rand(5, d_predict)), r"features")
    if ok:
        fail_result(family, f"predicting on {d_predict} features after fitting on {d_fit} worked")
    for method in (est.predict_proba, est.predict_log_proba):
        ok, _ = run_case(family, functools.partial(method, rng.rand(5, d_predict)), r"features")
        if ok:
            fail_result(family, f"{method.__name__} on {d_predict} features after fitting on "
                                f"{d_fit} worked")
    if name == "mlp":  # partial_fit continues with the same feature count
        ok, _ = run_case(family, lambda: est.partial_fit(rng.rand(5, d_predict),
                                                         np.arange(5) % 2), r"features")
        if ok:
            fail_result(family, f"partial_fit on {d_predict} features after fitting on "
                                f"{d_fit} worked")


# ============================================================ estimators: y
Y_KINDS = ["int", "int", "one_class", "str", "float_int", "bool", "nan", "inf", "mixed",
           "continuous", "column", "multilabel", "wrong_length", "multioutput"]
Y_PROBLEMS = {
    "nan": r"NaN", "inf": r"infinity", "mixed": r"mix|type|not supported",
    "continuous": r"continuous|label type", "wrong_length": r"inconsistent|samples",
    "multioutput": r"multioutput|multiclass-multioutput|label|target",
}


@st.composite
def label_vectors(draw, n):
    kind = draw(st.sampled_from(Y_KINDS))
    k = draw(st.integers(2, 4))
    base = np.arange(n) % k
    if kind == "int":
        y = base * draw(st.sampled_from([1, -1, 7, 10**12]))
    elif kind == "one_class":
        y = np.full(n, draw(st.integers(-5, 5)))
    elif kind == "str":
        names = draw(st.lists(st.text(max_size=4), min_size=k, max_size=k, unique=True))
        y = np.asarray(names, dtype=object)[base]
    elif kind == "float_int":
        y = base.astype(float)
    elif kind == "bool":
        y = base % 2 == 0
    elif kind == "nan":
        y = base.astype(float)
        y[draw(st.integers(0, n - 1))] = np.nan
    elif kind == "inf":
        y = base.astype(float)
        y[draw(st.integers(0, n - 1))] = np.inf
    elif kind == "mixed":
        y = base.astype(object)
        y[0] = "a"
    elif kind == "continuous":
        y = base + 0.5 * (np.arange(n) % 2) + 0.25
    elif kind == "column":
        y = base.reshape(-1, 1)
    elif kind == "multilabel":
        y = np.stack([base % 2, (base + 1) % 2, np.arange(n) % 3 == 0], axis=1).astype(int)
    elif kind == "wrong_length":
        y = base[: n - draw(st.integers(1, n - 1))]
    else:  # multioutput multiclass
        y = np.stack([base, (base + 1) % 3], axis=1)
    return kind, y


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@fuzz(40)
@given(data=st.data())
def test_fit_on_awkward_y(name, data):
    n = data.draw(st.integers(2, 20))
    kind, y = data.draw(label_vectors(n))
    X = np.random.RandomState(n).rand(n, 4)
    est = make(name)
    family = f"estimator fit, awkward y ({name})"
    ok, _ = run_case(family, lambda: est.fit(X, y), Y_PROBLEMS.get(kind, r"^$"))
    if ok:
        if kind in Y_PROBLEMS:
            fail_result(family, f"fit accepted y of kind {kind!r}: {y!r}")
        check_fitted(family, est, X)
        # Every label of y is a class, and nothing else is.
        if kind != "multilabel":
            assert set(np.ravel(y).tolist()) == set(est.classes_.tolist())
        record(family, "correct result")


# ============================================================ constructor parameters
def _scalars(ints):
    return st.one_of(
        st.none(), st.booleans(), ints, st.floats(), st.text(max_size=6),
        st.sampled_from(["auto", "relu", "adam", "sgd", "lbfgs", "float32", "float16", "balanced",
                         "he", "glorot", "constant", "adaptive", "invscaling", "tanh", "logistic",
                         "identity", "raise"]),
        st.sampled_from([np.nan, np.inf, -np.inf, np.float32(0.5), np.int64(3), np.bool_(True),
                         1e-300, 5e-324, 1e300, 0.999999, 1.0, -1e-9]),
        st.complex_numbers(max_magnitude=10, allow_nan=False),
    )


def parameter_values(name):
    """Hypothesis values for constructor parameter ``name``: anything at all,
    except that sizes and iteration counts stay small (a hidden layer of
    10**6 units or 10**6 epochs is valid, just slow)."""
    small = name in ("hidden_layer_sizes", "conv_filters", "kernel_size", "max_iter",
                     "image_shape", "pool_size")
    ints = st.integers(-3, 12) if small else st.integers(-10**6, 10**6)
    scalars = _scalars(ints)
    return st.one_of(
        scalars, st.lists(scalars, max_size=3), st.lists(scalars, max_size=3).map(tuple),
        st.dictionaries(st.integers(-1, 3), scalars, max_size=3),
        st.sampled_from([np.array([2, 3]), np.array([[0.1]]), (), [], {}, set(), object()]),
    )


#: Message words that name a parameter besides its own name.
PARAMETER_ALIASES = {
    "validation_fraction": r"validation|test_size",
    "early_stopping": r"validation|test_size",
    "learning_rate_init": r"learning.rate",
    "batch_size": r"batch",
}


def _parameter_cases():
    for est_name, (cls, _) in ESTIMATORS.items():
        for param in cls().get_params():
            yield pytest.param(est_name, param, id=f"{est_name}-{param}")


@pytest.mark.parametrize("name, param", list(_parameter_cases()))
@fuzz(12)
@given(data=st.data())
def test_constructor_parameter_fuzz(name, param, data):
    value = data.draw(parameter_values(param), label=param)
    rng = np.random.RandomState(0)
    X, y = rng.rand(24, 16), np.arange(24) % 3
    params = {param: value}
    if param == "validation_fraction":  # only used with early stopping
        params["early_stopping"] = True
    est = make(name, **params)
    family = "constructor parameters"
    keywords = "|".join([re.escape(param), PARAMETER_ALIASES.get(param, re.escape(param)),
                         r"diverg"])
    ok, _ = run_case(family, lambda: est.fit(X, y), keywords)
    if ok:
        check_fitted(family, est, X)
        record(family, "correct result")


# ------------------------------------------------------------ found by the fuzz above
@pytest.mark.parametrize("name, params, keyword", [
    ("mlp", {"dropout": [np.nan]}, "dropout"),
    ("cnn", {"dropout": np.nan}, "dropout"),   # the scalar is refused; [nan] below is not
    ("cnn", {"dropout": [np.nan]}, "dropout"),
    ("mlp", {"dropout": ["a"]}, "dropout"),
    ("mlp", {"dropout": {}}, "dropout"),
    ("mlp", {"dropout": [0.1 + 1j]}, "dropout"),
    ("mlp", {"class_weight": {0: "a"}}, "class_weight"),
    ("mlp", {"class_weight": {0: 1j}}, "class_weight"),
    ("cnn", {"image_shape": (None, 4)}, "image_shape"),
    ("cnn", {"image_shape": ("a", 4)}, "image_shape"),
    ("cnn", {"image_shape": (np.nan, 4)}, "image_shape"),
])
def test_invalid_parameter_entries_are_named(name, params, keyword):
    """Entries of list/dict parameters are validated with a message naming the
    parameter (scikit-learn's own checks only see the container)."""
    X, y = np.random.RandomState(0).rand(24, 16), np.arange(24) % 3
    with pytest.raises((ValueError, TypeError), match=keyword):
        make(name, **params).fit(X, y)


@pytest.mark.parametrize("weight", [np.nan, np.inf, -1.0])
@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_class_weight_values_are_validated(name, weight):
    """class_weight values must be finite and non-negative, like sample_weight.
    Today: NaN/inf end in 'Training diverged ... The inputs are probably too
    large' (the inputs are fine), and -1.0 in a ZeroDivisionError."""
    X, y = np.random.RandomState(0).rand(20, 4), np.arange(20) % 2
    est = make(name, class_weight={0: weight})
    with pytest.raises(ValueError, match="class_weight"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X, y)


@pytest.mark.parametrize("name, params", [
    ("mlp", {}), ("mlp", {"alpha": 0.0}), ("mlp", {"solver": "sgd"}), ("cnn", {}),
])
def test_minibatch_of_zero_weight_samples(name, params):
    """Non-negative sample weights with a zero-weight mini-batch (here the
    first 10 rows, batch_size=5, no shuffle) are legitimate: the fit succeeds
    (zero-weight batches contribute nothing) or names the weights.  Today:
    ZeroDivisionError (alpha > 0) or 'Training diverged ... inputs too large'."""
    X, y = np.random.RandomState(0).rand(20, 4), np.arange(20) % 2
    weights = np.r_[np.zeros(10), np.ones(10)]
    est = make(name, batch_size=5, shuffle=False, **params)
    family = "zero-weight mini-batch"
    ok, _ = run_case(family, lambda: est.fit(X, y, sample_weight=weights), r"sample.weight")
    if ok:
        check_fitted(family, est, X)
        record(family, "correct result")


# ============================================================ ImageTransformer
IMAGE_DTYPES = ["float64"] * 4 + ["float32", "float16", "uint8", "uint16", "int64", "bool",
                                  "complex", "str", "object"]


def _image_array(draw, shape):
    elements = finite_floats if draw(st.integers(0, 3)) else any_floats
    values = draw(hnp.arrays(np.float64, shape, elements=elements))
    kind = draw(st.sampled_from(IMAGE_DTYPES))
    with np.errstate(all="ignore"):
        if kind == "uint16":
            return np.clip(np.nan_to_num(values), 0, 65535).astype(np.uint16)
        return convert(values, kind, None)


@st.composite
def image_inputs(draw):
    form = draw(st.sampled_from(["stack3", "stack3", "stack4", "rows", "rows", "list", "list",
                                 "1d", "5d", "no_images"]))
    side = st.integers(0, 7)
    n = draw(st.integers(1, 3))
    if form == "list":
        images = []
        for _ in range(n):
            shape = (draw(side), draw(side)) + ((draw(st.integers(0, 5)),)
                                                if draw(st.booleans()) else ())
            images.append(_image_array(draw, shape))
        return form, images
    shape = {
        "stack3": (n, draw(side), draw(side)),
        "stack4": (n, draw(side), draw(side), draw(st.integers(0, 5))),
        "rows": (n, draw(st.integers(0, 30))),
        "1d": (draw(st.integers(0, 10)),),
        "5d": (n, 2, 2, 1, 1),
        "no_images": (0, 4, 4),
    }[form]
    return form, _image_array(draw, shape)


def image_problems(X):
    arrays = X if isinstance(X, list) else [X]
    words = [r"float32|range|too large|overflow|finite"]
    for a in arrays:
        words.append(x_problems(a))
        words.append(r"shape|channel|2-D|3-D|4-D|empty|minimum|sample|feature|image")
    return "|".join(words)


@fuzz(120)
@given(case=image_inputs(), center=st.booleans(), invert=st.sampled_from(["auto", True, False]))
def test_image_transformer_on_awkward_arrays(case, center, invert):
    form, X = case
    family = "ImageTransformer arrays"
    transformer = ImageTransformer(size=(8, 8), center=center, invert=invert)
    ok, out = run_case(family, lambda: transformer.fit_transform(X), image_problems(X))
    if ok:
        n = len(X) if isinstance(X, list) else X.shape[0]
        if out.shape != (n, 64) or out.dtype != np.float32:
            fail_result(family, f"output shape/dtype {out.shape} {out.dtype} for {form}")
        if not np.all(np.isfinite(out)):
            fail_result(family, f"non-finite output rows for {form} input {X!r}")
        if out.min() < 0 or out.max() > 1:
            fail_result(family, f"output outside [0, 1]: {out.min()} .. {out.max()}")
        record(family, "correct result")


@fuzz(40)
@given(size=parameter_values("image_shape"), invert=parameter_values("invert"),
       center=parameter_values("center"), which=st.sampled_from(["size", "invert", "center"]))
def test_image_transformer_parameter_fuzz(size, invert, center, which):
    params = {"size": (8, 8), "invert": "auto", "center": True}
    params[which] = {"size": size, "invert": invert, "center": center}[which]
    X = np.random.RandomState(0).rand(2, 10, 10)
    family = "ImageTransformer parameters"
    ok, out = run_case(family, lambda: ImageTransformer(**params).fit_transform(X), which)
    if ok:
        if not (np.all(np.isfinite(out)) and out.dtype == np.float32 and out.shape[0] == 2):
            fail_result(family, f"bad output for {params}")
        record(family, "correct result")


@pytest.mark.parametrize("size", [(100000, 100000), (4097, 4096), (1, 2**24 + 1)])
@pytest.mark.parametrize("call", ["fit", "transform", "feature_names", "load_image_folder"])
def test_image_transformer_size_beyond_the_pixel_cap_is_a_clear_value_error(size, call, tmp_path):
    """A size whose rows cannot exist fails on the parameter, before anything
    is allocated (it used to be a MemoryError from np.empty, or a 10**10-name
    loop in get_feature_names_out)."""
    X = np.zeros((2, 10, 10))
    transformer = ImageTransformer(size=size)
    actions = {
        "fit": lambda: transformer.fit(X),
        "transform": lambda: transformer.transform(X),
        "feature_names": transformer.get_feature_names_out,
        "load_image_folder": lambda: load_image_folder(tmp_path, size=size),
    }
    with pytest.raises(ValueError, match=r"size=\(%d, %d\).*MAX_IMAGE_PIXELS" % size):
        actions[call]()
    record("ImageTransformer parameters", "clear error")


def test_image_transformer_size_at_the_cap_is_accepted():
    out = ImageTransformer(size=(1, 4096 * 4096)).fit_transform(np.zeros((1, 4, 4)))
    assert out.shape == (1, 4096 * 4096)
    assert not out.any()


def test_output_too_large_for_memory_is_a_memory_error_naming_size_and_count():
    many_images = np.broadcast_to(np.zeros((1, 2, 2)), (10**6, 2, 2))
    transformer = ImageTransformer(size=(4096, 4096))
    with pytest.raises(MemoryError, match=r"1000000 images at size=\(4096, 4096\) need 62500\.0 GiB"):
        transformer.transform(many_images)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("pixels", [
    pytest.param(("float64", [1e39]), id="float64-1e39"),
    pytest.param(("float64", [1e300, -1e300]), id="float64-1e300"),
    pytest.param(("float32", [3e38, -3e38]), id="float32-pm3e38"),
    pytest.param(("float64", [1.7976931348623157e308, 0.0]), id="float64-max"),
])
def test_image_transformer_on_finite_values_beyond_float32(pixels, center):
    """Finite pixels whose value or range exceeds float32: a clear ValueError,
    or finite rows.  Today: IndexError in _center (center=True) or silent NaN
    rows (center=False), because _normalise computes in float32."""
    dtype, (ink, *background) = pixels
    images = np.full((1, 12, 12), background[0] if background else 0.0, dtype=np.float64)
    images[0, 3:9, 5:7] = ink
    images = images.astype(dtype)
    family = "ImageTransformer beyond float32"
    ok, out = run_case(family, lambda: ImageTransformer(center=center).fit_transform(images),
                       r"float32|range|too large|overflow|finite|scale")
    if ok:
        if not np.all(np.isfinite(out)):
            fail_result(family, f"NaN/inf in the output rows for pixels {pixels}")
        record(family, "correct result")


# ============================================================ Kaggle CSV loader
HEADER = "label," + ",".join(f"pixel{i}" for i in range(784))
N_VALID_ROWS = 3


def _valid_rows():
    return [[str(i % 10)] + [str((i * 31 + j) % 256) for j in range(784)]
            for i in range(N_VALID_ROWS)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("hardening")


def _expected_rows():
    rows = np.array(_valid_rows(), dtype=np.int64)
    return rows[:, 1:].astype(np.uint8), rows[:, 0]


@fuzz(80)
@given(garbage=st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n"), max_size=60),
                        min_size=1, max_size=3),
       position=st.integers(0, N_VALID_ROWS + 1))
def test_csv_with_garbage_lines(workdir, garbage, position):
    """Random text lines anywhere (before the header too): a ValueError naming
    the file and a line, or -- for blank lines only -- the valid rows."""
    lines = [HEADER] + [",".join(r) for r in _valid_rows()]
    lines[position:position] = garbage
    path = workdir / "garbage_lines.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("utf-8", "surrogatepass"))
    family = "CSV garbage lines"
    ok, result = run_case(family, lambda: load_digit_csv(path),
                          re.escape(str(path)) + r".*line \d+")
    if ok:
        data, target = _expected_rows()
        if not (np.array_equal(result.data, data) and np.array_equal(result.target, target)):
            fail_result(family, f"loaded wrong data with garbage lines {garbage!r} at {position}")
        record(family, "correct result")


TRICKY_FIELDS = ["", " ", "nan", "inf", "-0", "0x10", "1_0", "\u0663", "\uff11", "5.0", "5.5",
                 "1e2", "256", "-1", "\x00", "32768", "65536", "9" * 30, "\u00a05", "\u00b2",
                 "\u216b", "\u22121", "\x1c5", "+7", " 8 ", "1e400", "0.0000001", "--1"]


def _one_line(text):
    """The field without line breaks (they would start a new CSV record)."""
    return text.replace("\r", "").replace("\n", "")


@fuzz(150)
@given(field=st.one_of(st.sampled_from(TRICKY_FIELDS),
                       st.text(alphabet=st.characters(blacklist_characters='\r\n",'), max_size=12),
                       st.from_regex(r"\s*[+-]?\d{1,5}(\.\d*)?([eE][+-]?\d{1,3})?\s*",
                                     fullmatch=True).map(_one_line)),
       row=st.integers(0, N_VALID_ROWS - 1), column=st.integers(0, 784))
def test_csv_with_a_garbage_field(workdir, field, row, column):
    """One field replaced: either it is read as the number it spells, or a
    ValueError names the file, the exact line and the column."""
    rows = _valid_rows()
    rows[row][column] = field
    path = workdir / "garbage_field.csv"
    path.write_bytes(("\n".join([HEADER] + [",".join(r) for r in rows]) + "\n")
                     .encode("utf-8", "surrogatepass"))
    name = "label" if column == 0 else f"pixel{column - 1}"
    family = "CSV garbage fields"
    where = re.escape(f"{path}, line {row + 2}, column {name!r}")
    ok, result = run_case(family, lambda: load_digit_csv(path), where)
    if ok:
        got = int(result.target[row]) if column == 0 else int(result.data[row, column - 1])
        spelled = float(field)  # it was accepted, so it must spell a number ...
        if not (math.isfinite(spelled) and spelled == got):  # ... and be read as that number
            fail_result(family, f"field {field!r} was read as {got}")
        record(family, "correct result")


@pytest.mark.parametrize("field, column", [
    ("\u0663", 5), ("\uff11", 5), ("\u00a05", 5), ("1_0", 5), ("\x1c5", 5), ("\u20005", 0),
    ("9" * 30, 0),
])
def test_csv_error_names_the_line_for_python_only_numbers(workdir, field, column):
    """Fields that Python's int() accepts but pandas does not (Unicode digits,
    non-ASCII spaces, underscores) and labels beyond int64: the error must
    name the line, like every other malformed field.  Today: 'cannot parse
    the file (cannot safely convert ...)' with no line."""
    rows = _valid_rows()
    rows[1][column] = field
    path = workdir / "python_only.csv"
    path.write_bytes(("\n".join([HEADER] + [",".join(r) for r in rows]) + "\n").encode())
    with pytest.raises(ValueError, match=re.escape(f"{path}, line 3")):
        load_digit_csv(path)


@pytest.mark.parametrize("quoted_line", [1, 4])
def test_csv_with_a_stray_quote(workdir, quoted_line):
    """An unbalanced double quote in a file of 60 rows: a ValueError naming
    the file.  Today: _csv.Error 'field larger than field limit (131072)'
    from the csv module (in _read_header or _diagnose), not a ValueError."""
    lines = [HEADER] + [",".join(r) for r in (_valid_rows() * 20)]
    lines[quoted_line - 1] = '"' + lines[quoted_line - 1]
    path = workdir / "stray_quote.csv"
    path.write_text("\n".join(lines) + "\n")
    family = "CSV stray quote"
    ok, _ = run_case(family, lambda: load_digit_csv(path), re.escape(str(path)))
    if ok:
        fail_result(family, "a file with an unbalanced quote loaded")


def test_csv_with_invalid_utf8_after_the_header(workdir):
    """A data line that is not UTF-8 (here one 0xFF byte on line 3): a
    ValueError naming the file and the line, as for the header.  Today: a
    bare UnicodeDecodeError from inside _diagnose ("'utf-8' codec can't
    decode byte 0xff in position 3478") with neither.  (Found by
    test_csv_with_garbage_lines with a random seed.)"""
    rows = [",".join(r) for r in _valid_rows()]
    path = workdir / "not_utf8.csv"
    path.write_bytes("\n".join([HEADER, rows[0]]).encode() + b"\n7,\xff" +
                     b",0" * 783 + b"\n")
    family = "CSV garbage lines"
    ok, _ = run_case(family, lambda: load_digit_csv(path),
                     re.escape(str(path)) + r".*line 3")
    if ok:
        fail_result(family, "a file with a non-UTF-8 line loaded")


@fuzz(30)
@given(content=st.binary(max_size=300))
def test_csv_of_random_bytes(workdir, content):
    path = workdir / "random.csv"
    path.write_bytes(content)
    family = "CSV random bytes"
    ok, _ = run_case(family, lambda: load_digit_csv(path), re.escape(str(path)))
    if ok:
        fail_result(family, f"random bytes loaded as a CSV: {content!r}")


def _label_text(value):
    if isinstance(value, float):
        return str(int(value))
    return str(value)


@fuzz(60)
@given(labels=st.one_of(
    st.lists(st.integers(-10**20, 10**20), max_size=5),
    st.lists(st.floats(), max_size=5),
    st.lists(st.text(max_size=6), max_size=5),
    # (not a trailing NUL: NumPy str arrays drop those, np.asarray(["a\\x00"])[0] == "a")
    st.lists(st.sampled_from(["7", " 7", "\u00e9", "a\x00b", "\u2028"]), min_size=1,
             max_size=3)))
def test_write_submission_with_awkward_labels(workdir, labels):
    """A ValueError naming y_pred or the label, or a file that reads back as
    ImageId 1..n and exactly the labels."""
    path = workdir / "submission.csv"
    family = "write_submission"
    ok, _ = run_case(family, lambda: write_submission(labels, path), r"y_pred|label|empty")
    if ok:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        expected = [["ImageId", "Label"]] + [[str(i + 1), _label_text(v)]
                                             for i, v in enumerate(labels)]
        if rows != expected:
            fail_result(family, f"{labels!r} was written as {rows!r}")
        record(family, "correct result")


def test_write_submission_with_a_label_that_is_not_utf8(workdir):
    """A label that cannot be encoded as UTF-8 (a lone surrogate, as
    os.fsdecode gives for an odd file name): a ValueError naming y_pred or the
    label.  Today: a bare UnicodeEncodeError ("surrogates not allowed")."""
    with pytest.raises(ValueError, match=r"y_pred|label"):
        write_submission(["7", "\udcff"], workdir / "submission.csv")


# ============================================================ image files
def _encoded_images():
    rng = np.random.RandomState(0)
    page = np.full((16, 16), 230, dtype=np.uint8)
    page[3:13, 7:10] = rng.randint(0, 40, (10, 3))
    blobs = {}
    for fmt, ext, mode in [("PNG", ".png", "L"), ("PNG", ".png", "RGBA"), ("JPEG", ".jpg", "L"),
                           ("BMP", ".bmp", "RGB"), ("GIF", ".gif", "P"), ("TIFF", ".tif", "L"),
                           ("WEBP", ".webp", "RGB"), ("PPM", ".pgm", "L")]:
        buffer = io.BytesIO()
        Image.fromarray(page).convert(mode).save(buffer, fmt)
        blobs[f"{fmt}-{mode}"] = (ext, buffer.getvalue())
    return blobs


ENCODED = _encoded_images()
EXTENSIONS = sorted({ext for ext, _ in ENCODED.values()} | {".jpeg", ".tiff", ".ppm", ".PNG"})


@st.composite
def damaged_image_files(draw):
    kind = draw(st.sampled_from(["random", "flipped", "truncated", "header+random"]))
    key = draw(st.sampled_from(sorted(ENCODED)))
    ext, blob = ENCODED[key]
    if kind == "random":
        return draw(st.sampled_from(EXTENSIONS)), draw(st.binary(max_size=400)), kind
    if kind == "flipped":
        data = bytearray(blob)
        for position, mask in draw(st.lists(st.tuples(st.integers(0, len(blob) - 1),
                                                      st.integers(1, 255)), min_size=1, max_size=8)):
            data[position] ^= mask
        return ext, bytes(data), kind
    if kind == "truncated":
        return ext, blob[: draw(st.integers(0, len(blob) - 1))], kind
    return ext, blob[:draw(st.integers(1, 40))] + draw(st.binary(max_size=200)), kind


def check_image_output(family, out, n):
    if out.shape != (n, 784) or not np.all(np.isfinite(out)) or out.min() < 0 or out.max() > 1:
        fail_result(family, f"bad rows from an image file: shape {out.shape}, "
                            f"range {np.nanmin(out)} .. {np.nanmax(out)}")


@fuzz(120)
@given(case=damaged_image_files())
def test_image_transformer_on_damaged_files(workdir, case):
    ext, content, _ = case
    path = workdir / f"damaged{ext}"
    path.write_bytes(content)
    family = "image files (ImageTransformer)"
    ok, out = run_case(family, lambda: ImageTransformer().transform([str(path)]),
                       re.escape(str(path)))
    if ok:
        check_image_output(family, out, 1)
        record(family, "correct result")


@fuzz(40)
@given(case=damaged_image_files())
def test_load_image_folder_with_a_damaged_file(tmp_path_factory, case):
    ext, content, _ = case
    root = tmp_path_factory.mktemp("folder")
    for label in "17":
        (root / label).mkdir()
        (root / label / f"good{label}.png").write_bytes(ENCODED["PNG-L"][1])
    bad = root / "7" / f"damaged{ext}"
    bad.write_bytes(content)
    family = "image files (load_image_folder)"
    ok, bunch = run_case(family, lambda: load_image_folder(root), re.escape(str(bad)))
    if ok:
        check_image_output(family, bunch.data, len(bunch.target))
        record(family, "correct result")
    # on_error="skip": the damaged file is left out with one warning naming
    # it, and the good images are still loaded.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with time_limit():
                bunch = load_image_folder(root, on_error="skip")
        except Exception as exc:
            record(family, f"FAILURE: {type(exc).__name__}")
            raise AssertionError(f"on_error='skip' raised {type(exc).__name__}: {exc}") from exc
    if ok:
        assert len(bunch.target) == 3
    else:
        assert len(bunch.target) == 2
        assert any(str(bad) in str(w.message) for w in caught), [str(w.message) for w in caught]
    check_image_output(family, bunch.data, len(bunch.target))


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_float_tiff_with_extreme_values(tmp_path, on_error):
    """A 12x12 float32 TIFF (mode 'F') holding -3e38 paper and 3e38 ink is
    finite data; load_image_folder must give finite rows or name the file.
    Today: IndexError from _center (the float32 range arithmetic overflows)."""
    (tmp_path / "1").mkdir()
    pixels = np.full((12, 12), -3e38, dtype=np.float32)
    pixels[3:9, 5:7] = 3e38
    path = tmp_path / "1" / "extreme.tif"
    Image.fromarray(pixels, mode="F").save(path)
    family = "image files (float TIFF)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Pillow's mode= argument
        ok, bunch = run_case(family, lambda: load_image_folder(tmp_path, on_error=on_error),
                             re.escape(str(path)) + "|no image")
    if ok:
        check_image_output(family, bunch.data, len(bunch.target))
        record(family, "correct result")
