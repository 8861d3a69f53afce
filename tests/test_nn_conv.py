"""Tests of the convolutional layers against slow, obvious references."""

import itertools
import pickle
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

import skdigits.concurrency
from skdigits import NumpyCNNClassifier
from skdigits.nn import conv, winograd
from skdigits.nn.conv import Conv2D, Flatten, MaxPool2D
from skdigits.nn.initializers import INITIALIZERS
from skdigits.nn.layers import Dense
from skdigits.nn.network import PREDICT_CHUNK, Network
from skdigits.concurrency import DataParallel


# --------------------------------------------------------------- references
def _same_pad(size, kernel, stride):
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d_naive(X, W, b, stride=1, padding="valid"):
    """Cross-correlation by explicit loops over output positions.

    X (n, h, w, c_in), W (kh, kw, c_in, f), b (f,) -> (n, h_out, w_out, f).
    """
    kh, kw, _, f = W.shape
    sh, sw = (stride, stride) if np.ndim(stride) == 0 else stride
    if padding == "same":
        pads = [(0, 0), _same_pad(X.shape[1], kh, sh), _same_pad(X.shape[2], kw, sw), (0, 0)]
        X = np.pad(X, pads)
        h_out, w_out = -(-(X.shape[1] - kh + 1) // sh), -(-(X.shape[2] - kw + 1) // sw)
    else:
        h_out, w_out = (X.shape[1] - kh) // sh + 1, (X.shape[2] - kw) // sw + 1
    out = np.empty((X.shape[0], h_out, w_out, f), dtype=X.dtype)
    for y in range(h_out):
        for x in range(w_out):
            patch = X[:, y * sh:y * sh + kh, x * sw:x * sw + kw, :]
            out[:, y, x, :] = np.tensordot(patch, W, axes=3) + b
    return out


def conv2d_backward_naive(X, W, dZ, stride=1, padding="valid"):
    """Gradients of ``sum(dZ * conv2d_naive(X, W, b))`` by explicit loops over
    samples, output positions and kernel offsets: every product
    ``X_padded[s, y * sh + i, x * sw + j, :] * W[i, j]`` that made output
    (s, y, x) sends ``dZ[s, y, x]`` back to both factors.

    X (n, h, w, c_in), W (kh, kw, c_in, f), dZ (n, h_out, w_out, f)
    -> (dX like X, dW like W, db (f,)).
    """
    kh, kw, _, _ = W.shape
    sh, sw = (stride, stride) if np.ndim(stride) == 0 else stride
    (top, bottom), (left, right) = (0, 0), (0, 0)
    if padding == "same":
        top, bottom = _same_pad(X.shape[1], kh, sh)
        left, right = _same_pad(X.shape[2], kw, sw)
    Xp = np.pad(X, [(0, 0), (top, bottom), (left, right), (0, 0)])
    dXp, dW = np.zeros_like(Xp), np.zeros_like(W)
    n, h_out, w_out, _ = dZ.shape
    for s in range(n):
        for y in range(h_out):
            for x in range(w_out):
                g = dZ[s, y, x]
                for i in range(kh):
                    for j in range(kw):
                        dW[i, j] += np.outer(Xp[s, y * sh + i, x * sw + j], g)
                        dXp[s, y * sh + i, x * sw + j] += W[i, j] @ g
    dX = dXp[:, top:top + X.shape[1], left:left + X.shape[2]]
    return dX, dW, dZ.sum(axis=(0, 1, 2))


def maxpool_naive(X, pool_size=2, stride=None):
    """Max over each window by explicit loops over output positions."""
    ph, pw = (pool_size, pool_size) if np.ndim(pool_size) == 0 else pool_size
    stride = (ph, pw) if stride is None else stride
    sh, sw = (stride, stride) if np.ndim(stride) == 0 else stride
    h_out, w_out = (X.shape[1] - ph) // sh + 1, (X.shape[2] - pw) // sw + 1
    out = np.empty((X.shape[0], h_out, w_out, X.shape[3]), dtype=X.dtype)
    for y in range(h_out):
        for x in range(w_out):
            out[:, y, x, :] = X[:, y * sh:y * sh + ph, x * sw:x * sw + pw, :].max(axis=(1, 2))
    return out


# ------------------------------------------------------------------ helpers
def _standalone(layer, input_shape, dtype="float64", seed=0, init="glorot"):
    """Build a layer outside a Network, with its own parameter/gradient arrays."""
    layer.build(input_shape, dtype)
    params = {name: np.zeros(shape, dtype=dtype) for name, shape, _ in layer.param_specs()}
    grads = {name: np.zeros(shape, dtype=dtype) for name, shape, _ in layer.param_specs()}
    layer.bind(params, grads)
    rs = np.random.RandomState(seed)
    for name, value in layer.initial_params(rs, INITIALIZERS[init], "relu").items():
        params[name][...] = value
    if "b" in params:  # non-zero biases so the bias path is exercised
        params["b"][...] = rs.uniform(-0.5, 0.5, params["b"].shape)
    return layer


def _numerical_grad(f, x, eps=1e-6):
    """Central differences of scalar f() with respect to array x (perturbed in place)."""
    grad = np.empty_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def _check_layer_gradients(layer, X, rng, kink=None, eps=1e-6):
    """Finite-difference check of a layer's backward for L = sum(R * layer(X)).

    ``kink`` (the pre-activation for ReLU) zeroes R where |kink| is small, so
    a perturbation crossing a kink cannot change L.  Piecewise-linear layers
    can take a large ``eps`` (less rounding noise) when no kink is that close.
    """
    Y = layer.forward(X, training=True)
    R = rng.standard_normal(Y.shape)
    if kink is not None:
        R[np.abs(kink) < 1e-3] = 0.0

    def loss():
        return float(np.sum(R * layer.forward(X, training=False)))

    dX = layer.backward(R.copy(), need_input_grad=True)
    np.testing.assert_allclose(dX, _numerical_grad(loss, X, eps), rtol=1e-6, atol=1e-8)
    params = getattr(layer, "params", {})
    for name in params:
        # backward ran before the perturbations; grads hold its result.
        np.testing.assert_allclose(layer.grads[name], _numerical_grad(loss, params[name], eps),
                                   rtol=1e-6, atol=1e-8, err_msg=name)


# -------------------------------------------------------------- Conv2D forward
CONV_CASES = [
    # (n, h, w, c_in, filters, kernel, stride, padding)
    (1, 7, 7, 1, 2, 3, 1, "valid"),
    (4, 8, 6, 1, 3, 3, 1, "same"),
    (4, 9, 7, 3, 4, 5, 1, "valid"),
    (1, 9, 7, 3, 4, 5, 2, "same"),
    (4, 6, 9, 3, 2, 1, 1, "valid"),
    (4, 6, 9, 3, 2, 1, 2, "same"),
    (1, 8, 5, 1, 5, 3, 2, "valid"),
    (4, 10, 7, 3, 3, 3, 2, "same"),
    (4, 7, 8, 3, 2, 5, 2, "valid"),
    (4, 5, 6, 1, 2, 5, 1, "same"),
    (4, 6, 7, 3, 2, (2, 3), (1, 2), "same"),  # even kernel: asymmetric padding
    (4, 9, 9, 8, 4, 3, 1, "valid"),  # enough channels for the single-copy im2col
    (4, 9, 9, 8, 4, 3, 2, "same"),
    # 3x3 of stride 1 (Winograd too): odd and even sides, chunks of 2 images
    # with a smaller last one, outputs of a single pixel.
    (5, 5, 8, 3, 4, 3, 1, "same"),
    (3, 6, 7, 4, 3, 3, 1, "valid"),
    (2, 3, 3, 2, 3, 3, 1, "valid"),
    (2, 1, 1, 2, 3, 3, 1, "same"),
    (1, 2, 9, 1, 2, 3, 1, "same"),
]

#: The ways Conv2D computes: both im2col branches of the direct algorithm, forced
#: whatever the number of channels, and Winograd.
PATHS = ["sliced", "single_copy", "winograd"]


def _winograd_applies(case):
    kernel, stride = case[5], case[6]
    return kernel == 3 and stride == 1


PATH_CASES = [(path, case) for case in CONV_CASES for path in PATHS
              if path != "winograd" or _winograd_applies(case)]


def _force_path(monkeypatch, path):
    """Patch the im2col branch (direct paths) or cut Winograd's chunks to 2
    images (so batches run as several chunks); return Conv2D's algorithm."""
    monkeypatch.setattr(conv, "_SLICED_IM2COL_MAX_BYTES", 10**9 if path == "sliced" else 0)
    monkeypatch.setattr(conv, "_winograd_chunk_images", lambda *shape: 2)
    return "winograd" if path == "winograd" else "direct"


@pytest.mark.parametrize("path, case", PATH_CASES)
def test_conv2d_forward_matches_naive(monkeypatch, path, case):
    n, h, w, c, f, k, s, padding = case
    algorithm = _force_path(monkeypatch, path)
    rng = np.random.default_rng(0)
    layer = _standalone(Conv2D(f, k, s, padding, activation="identity", algorithm=algorithm),
                        (h, w, c))
    assert layer.algorithm_ == algorithm
    X = rng.standard_normal((n, h, w, c))
    expected = conv2d_naive(X, layer.params["W"], layer.params["b"], s, padding)
    for training in (False, True):
        out = layer.forward(X, training=training)
        assert out.shape == expected.shape and out.dtype == np.float64
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("activation", ["identity", "relu"])
@pytest.mark.parametrize("path, case", PATH_CASES)
def test_conv2d_backward_matches_naive(monkeypatch, path, case, activation):
    n, h, w, c, f, k, s, padding = case
    algorithm = _force_path(monkeypatch, path)
    rng = np.random.default_rng(1)
    layer = _standalone(Conv2D(f, k, s, padding, activation=activation, algorithm=algorithm),
                        (h, w, c))
    X = rng.standard_normal((n, h, w, c))
    A = layer.forward(X, training=True)
    dA = rng.standard_normal(A.shape)
    dX = layer.backward(dA.copy())
    dZ = dA * (A > 0) if activation == "relu" else dA
    dX_ref, dW_ref, db_ref = conv2d_backward_naive(X, layer.params["W"], dZ, s, padding)
    assert dX.shape == X.shape
    np.testing.assert_allclose(dX, dX_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], dW_ref, rtol=0, atol=1e-11)
    np.testing.assert_allclose(layer.grads["b"], db_ref, rtol=0, atol=1e-11)
    # The first layer of a network skips dX, not the parameter gradients.
    layer.grads["W"][...] = 0
    layer.forward(X, training=True)
    assert layer.backward(dA.copy(), need_input_grad=False) is None
    np.testing.assert_allclose(layer.grads["W"], dW_ref, rtol=0, atol=1e-11)


@pytest.mark.parametrize("path", PATHS)
def test_conv2d_float32_matches_naive(monkeypatch, path):
    """Rounding of every path in float32, against the float64 reference."""
    algorithm = _force_path(monkeypatch, path)
    rng = np.random.default_rng(2)
    layer = _standalone(Conv2D(16, 3, padding="same", algorithm=algorithm), (12, 10, 24),
                        dtype="float32", init="he")
    X = rng.random((5, 12, 10, 24), dtype=np.float32)
    W64 = layer.params["W"].astype(np.float64)
    Z = conv2d_naive(X.astype(np.float64), W64, layer.params["b"].astype(np.float64), 1, "same")
    A = layer.forward(X, training=True)
    scale = np.abs(Z).max()
    np.testing.assert_allclose(A, np.maximum(Z, 0), rtol=0, atol=1e-6 * scale)
    dA = rng.standard_normal(A.shape).astype(np.float32)
    dX = layer.backward(dA.copy())
    dX_ref, dW_ref, _ = conv2d_backward_naive(X.astype(np.float64), W64, dA * (Z > 0), 1, "same")
    np.testing.assert_allclose(dX, dX_ref, rtol=0, atol=1e-5 * np.abs(dX_ref).max())
    np.testing.assert_allclose(layer.grads["W"], dW_ref, rtol=0, atol=1e-5 * np.abs(dW_ref).max())


def test_conv2d_output_shapes_and_relu():
    layer = _standalone(Conv2D(6, 3, 2, "same"), (9, 8, 2))
    assert layer.input_shape == (9, 8, 2) and (layer.h_out, layer.w_out) == (5, 4)
    assert Conv2D(6, 3, 2, "valid").build((9, 8, 2), "float64") == (4, 3, 6)
    X = np.random.default_rng(1).standard_normal((3, 9, 8, 2))
    expected = np.maximum(conv2d_naive(X, layer.params["W"], layer.params["b"], 2, "same"), 0)
    np.testing.assert_allclose(layer.forward(X), expected, rtol=0, atol=1e-12)


def test_conv2d_weight_layout_matches_initializer():
    # glorot draws a (fan_in, fan_out) matrix: W.reshape(fan_in, filters) must be it.
    layer = Conv2D(5, (3, 2))
    layer.build((6, 6, 4), "float64")
    assert layer.param_specs() == [("W", (3, 2, 4, 5), True), ("b", (5,), False)]
    params = layer.initial_params(np.random.RandomState(3), INITIALIZERS["glorot"], "relu")
    expected = INITIALIZERS["glorot"](np.random.RandomState(3), 24, 5, (24, 5), "relu")
    np.testing.assert_array_equal(params["W"].reshape(24, 5), expected[0])
    np.testing.assert_array_equal(params["b"], expected[1])


def test_invalid_arguments():
    with pytest.raises(ValueError, match="padding"):
        Conv2D(4, padding="full")
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2D(4, kernel_size=0)
    with pytest.raises(ValueError, match="fit"):
        Conv2D(4, 5).build((4, 4, 1), "float64")
    with pytest.raises(ValueError, match="fit"):
        MaxPool2D(3).build((2, 5, 1), "float64")
    with pytest.raises(ValueError, match="h, w, c"):
        Conv2D(4).build((16,), "float64")
    with pytest.raises(ValueError, match="'fft'"):
        Conv2D(4, algorithm="fft")
    with pytest.raises(ValueError, match=r"3x3 kernel of stride 1.*\(5, 5\)"):
        Conv2D(4, 5, algorithm="winograd")
    with pytest.raises(ValueError, match=r"3x3 kernel of stride 1.*stride=\(2, 2\)"):
        Conv2D(4, 3, stride=2, algorithm="winograd")


@pytest.mark.parametrize("kwargs, c_in, expected", [
    ({}, conv._WINOGRAD_MIN_CHANNELS, "winograd"),
    ({"padding": "same"}, 64, "winograd"),
    ({}, conv._WINOGRAD_MIN_CHANNELS - 1, "direct"),   # too few channels to pay
    ({"kernel_size": 5}, 64, "direct"),
    ({"stride": 2}, 64, "direct"),
    ({"algorithm": "direct"}, 64, "direct"),
    ({"algorithm": "winograd"}, 1, "winograd"),
])
def test_conv2d_algorithm_choice(kwargs, c_in, expected):
    """'auto' decides from the layer's shape at build time, never per batch."""
    layer = Conv2D(4, **kwargs)
    layer.build((9, 9, c_in), "float32")
    assert layer.algorithm_ == expected


def test_conv2d_saved_without_algorithm_computes_directly():
    """A layer saved before the keyword existed has no 'algorithm' in its
    state; it loads as 'direct' and so computes exactly as it did."""
    layer = _standalone(Conv2D(4, padding="same"), (6, 6, 16))
    assert layer.algorithm_ == "winograd"
    state = layer.__getstate__()
    del state["algorithm"], state["algorithm_"]
    old = Conv2D.__new__(Conv2D)
    old.__dict__.update(state)
    old.build((6, 6, 16), "float64")
    assert old.algorithm_ == "direct"
    assert pickle.loads(pickle.dumps(layer)).algorithm == "auto"


# ------------------------------------------------------------ Winograd maths
def _correlate_valid(d, g):
    """2-D cross-correlation of an image d with kernel g, 'valid' outputs."""
    kh, kw = g.shape
    return np.array([[np.sum(d[y:y + kh, x:x + kw] * g) for x in range(d.shape[1] - kw + 1)]
                     for y in range(d.shape[0] - kh + 1)])


def test_winograd_identity():
    """Y = A^T [(G g G^T) * (B^T d B)] A is the 2x2 correlation of a 4x4 tile."""
    rng = np.random.default_rng(10)
    B_T, G, A_T = winograd.B_T, winograd.G, winograd.A_T
    for _ in range(5):
        d, g = rng.standard_normal((4, 4)), rng.standard_normal((3, 3))
        Y = A_T @ ((G @ g @ G.T) * (B_T @ d @ B_T.T)) @ A_T.T
        np.testing.assert_allclose(Y, _correlate_valid(d, g), rtol=0, atol=1e-12)


def _padded_from_split(P):
    """The padded image (n, H, W, c) that a parity-split array P holds."""
    _, half_w, n, _, half_h, c = P.shape
    image = np.empty((n, 2 * half_h, 2 * half_w, c))
    for p in (0, 1):
        for q in (0, 1):
            image[:, q::2, p::2] = P[p, :, :, q].transpose(1, 2, 0, 3)
    return image


def _tiles_of(image, th, tw):
    """The 4x4 input tiles of a padded image, by slicing: (n, th, tw, 4, 4, c)."""
    return np.stack([np.stack([image[:, 2 * y:2 * y + 4, 2 * x:2 * x + 4] for x in range(tw)], 1)
                     for y in range(th)], 1)


def test_winograd_transforms_are_the_matrix_formulas():
    """Every tile of the vectorised transforms against the 4x4 matrix products."""
    rng = np.random.default_rng(11)
    n, th, tw, c, f = 2, 3, 2, 3, 4
    P = rng.standard_normal((2, tw + 1, n, 2, th + 1, c))
    V = winograd.input_transform(P, th, tw, np.empty((4, 2, tw + 1, n, th, c)),
                                 np.empty((4, 4, tw, n, th, c)))
    tiles = _tiles_of(_padded_from_split(P), th, tw)
    expected = np.einsum("ak,nyxklc,bl->abxnyc", winograd.B_T, tiles, winograd.B_T)
    np.testing.assert_allclose(V, expected, rtol=0, atol=1e-12)

    M = rng.standard_normal((4, 4, tw, n, th, f))
    Y = winograd.output_transform(M, np.empty((4, 2, tw, n, th, f)), np.empty((2, 2, tw, n, th, f)))
    expected = np.einsum("ak,klxnyf,bl->abxnyf", winograd.A_T, M, winograd.A_T)
    np.testing.assert_allclose(Y, expected, rtol=0, atol=1e-12)

    W = rng.standard_normal((3, 3, c, f))
    U = winograd.kernel_transform(W, np.empty((4, 4, c, f)))
    np.testing.assert_allclose(U, np.einsum("ai,ijcf,bj->abcf", winograd.G, W, winograd.G),
                               rtol=0, atol=1e-12)


def _inner(a, b):
    return float(np.sum(a * b))


def test_winograd_adjoints():
    """Each backward transform is the transpose of its forward one:
    <T x, y> == <x, T* y> for random x and y."""
    rng = np.random.default_rng(12)
    n, th, tw, c, f = 3, 2, 4, 2, 5
    P = rng.standard_normal((2, tw + 1, n, 2, th + 1, c))
    dV = rng.standard_normal((4, 4, tw, n, th, c))
    scratch = np.empty((4, 2, tw + 1, n, th, c))
    V = winograd.input_transform(P, th, tw, scratch, np.empty_like(dV))
    dP = winograd.input_transform_adjoint(dV, th, tw, scratch, np.full_like(P, np.nan))
    assert _inner(V, dV) == pytest.approx(_inner(P, dP), rel=1e-12)

    M, dY = rng.standard_normal((4, 4, tw, n, th, f)), rng.standard_normal((2, 2, tw, n, th, f))
    scratch = np.empty((4, 2, tw, n, th, f))
    Y = winograd.output_transform(M, scratch, np.empty_like(dY))
    dM = winograd.output_transform_adjoint(dY, scratch, np.empty_like(M))
    assert _inner(Y, dY) == pytest.approx(_inner(M, dM), rel=1e-12)

    W, dU = rng.standard_normal((3, 3, c, f)), rng.standard_normal((4, 4, c, f))
    U = winograd.kernel_transform(W, np.empty_like(dU))
    dW = winograd.kernel_transform_adjoint(dU, np.empty_like(W))
    assert _inner(U, dU) == pytest.approx(_inner(W, dW), rel=1e-12)


@pytest.mark.parametrize("h, w, top, left", [(5, 6, 1, 1), (4, 7, 0, 0), (3, 3, 1, 0)])
def test_winograd_layouts_round_trip(h, w, top, left):
    rng = np.random.default_rng(13)
    X = rng.standard_normal((2, h, w, 3))
    half_h, half_w = (h + top + 3) // 2, (w + left + 3) // 2
    P = np.full((2, half_w, 2, 2, half_h, 3), np.nan)
    winograd.split_image(X, top, left, P)
    padded = _padded_from_split(P)
    assert np.isfinite(padded).all() and np.sum(padded) == pytest.approx(np.sum(X))
    np.testing.assert_array_equal(padded[:, top:top + h, left:left + w], X)
    np.testing.assert_array_equal(winograd.merge_image(P, top, left, np.empty_like(X)), X)
    image = rng.standard_normal((2, 2 * h, 2 * w, 3))
    tiles = winograd.split_tiles(image, np.empty((2, 2, w, 2, h, 3)))
    # Output (2 ty + a, 2 tx + b) of image s sits at [a, b, tx, s, ty].
    np.testing.assert_array_equal(tiles[1, 0, w - 1, :, h - 1], image[:, 2 * h - 1, 2 * w - 2])
    np.testing.assert_array_equal(winograd.merge_tiles(tiles, np.empty_like(image)), image)


def test_winograd_split_into_a_zero_framed_buffer_writes_only_the_image():
    rng = np.random.default_rng(14)
    first, later = rng.standard_normal((2, 2, 5, 6, 3))
    shape = (2, (6 + 1 + 3) // 2, 2, 2, (5 + 1 + 3) // 2, 3)
    P = winograd.split_image(first, 1, 1, np.full(shape, np.nan))
    reused = winograd.split_image(later, 1, 1, P, frame_is_zero=True)
    np.testing.assert_array_equal(reused, winograd.split_image(later, 1, 1, np.full(shape, np.nan)))
    # The frame is left as it was: NaNs there stay, the image is written.
    untouched = winograd.split_image(later, 1, 1, np.full(shape, np.nan), frame_is_zero=True)
    padded = _padded_from_split(untouched)
    np.testing.assert_array_equal(padded[:, 1:6, 1:7], later)
    assert np.isnan(untouched).sum() == untouched.size - later.size


# ------------------------------------------------------------ gradient checks
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("algorithm, n, h, w, c, f, k, s, padding", [
    ("direct", 2, 6, 5, 2, 3, 3, 1, "valid"),
    ("direct", 1, 6, 7, 3, 2, 3, 2, "same"),
    ("direct", 2, 5, 5, 1, 2, (2, 3), (2, 1), "same"),
    ("direct", 2, 7, 6, 5, 2, 3, 2, "valid"),
    ("winograd", 2, 6, 5, 2, 3, 3, 1, "valid"),
    ("winograd", 3, 5, 6, 3, 2, 3, 1, "same"),
])
def test_conv2d_gradients(monkeypatch, activation, algorithm, n, h, w, c, f, k, s, padding):
    monkeypatch.setattr(conv, "_winograd_chunk_images", lambda *shape: 2)
    rng = np.random.default_rng(2)
    layer = _standalone(Conv2D(f, k, s, padding, activation=activation, algorithm=algorithm),
                        (h, w, c))
    X = rng.standard_normal((n, h, w, c))
    kink = None
    if activation == "relu":
        kink = conv2d_naive(X, layer.params["W"], layer.params["b"], s, padding)
    _check_layer_gradients(layer, X, rng, kink)


@pytest.mark.parametrize("h, w, pool, stride", [
    (6, 6, 2, None),
    (7, 5, 2, None),   # odd sizes: the remainder is dropped
    (7, 8, 3, 2),      # overlapping windows
    (6, 7, (2, 3), (1, 2)),
    (8, 7, 2, 3),      # gaps between windows get zero gradient
])
def test_maxpool_forward_and_gradient(h, w, pool, stride):
    rng = np.random.default_rng(3)
    n, c = 2, 3
    layer = MaxPool2D(pool, stride)
    layer.build((h, w, c), "float64")
    # A permutation: all values distinct, so no window has a tie.
    X = rng.permutation(n * h * w * c).reshape(n, h, w, c) / 7.0
    expected = maxpool_naive(X, pool, stride)
    np.testing.assert_array_equal(layer.forward(X), expected)
    np.testing.assert_array_equal(layer.forward(X, training=True), expected)
    # Distinct values are >= 1/7 apart: an eps of 0.01 never changes a window's argmax.
    _check_layer_gradients(layer, X, rng, eps=1e-2)


def test_maxpool_ties_and_remainder():
    layer = MaxPool2D(2)
    layer.build((3, 5, 1), "float64")
    X = np.ones((1, 3, 5, 1))
    X[0, 0, 1, 0] = 0.0  # first window's first max is still (0, 0)
    X[0, 1, 2, 0] = X[0, 1, 3, 0] = 2.0  # second window: tie in the second row
    layer.forward(X, training=True)
    dX = layer.backward(np.full((1, 1, 2, 1), 5.0))
    expected = np.zeros((3, 5))
    expected[0, 0] = 5.0
    expected[1, 2] = 5.0
    np.testing.assert_array_equal(dX[0, :, :, 0], expected)


def test_flatten():
    rng = np.random.default_rng(4)
    layer = Flatten()
    assert layer.build((3, 4, 2), "float64") == (24,)
    X = rng.standard_normal((5, 3, 4, 2))
    Y = layer.forward(X, training=True)
    np.testing.assert_array_equal(Y, X.reshape(5, 24))
    np.testing.assert_array_equal(Y[1], X[1].ravel())
    _check_layer_gradients(layer, X, rng)


# ------------------------------------------------------------ whole networks
def _small_cnn(dtype="float64", seed=0):
    layers = [Conv2D(4, 3, activation="relu"), MaxPool2D(2), Flatten(), Dense(5, "relu"), Dense(3)]
    net = Network(layers, "softmax", dtype)
    return net.build((8, 8, 1), np.random.RandomState(seed), init="he")


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_network_gradient(alpha):
    rng = np.random.default_rng(5)
    net = _small_cnn()
    # Distinct pixel values: max pooling has no ties, so it is differentiable.
    X = rng.permutation(6 * 64).reshape(6, 8, 8, 1) / 64.0
    Y = np.eye(3)[rng.integers(0, 3, 6)]
    net.loss_and_gradient(X, Y, alpha=alpha)
    analytic = net.grads.copy()
    numeric = _numerical_grad(lambda: net.loss_and_gradient(X, Y, alpha=alpha), net.params)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def _digit_cnn(dtype, seed=0):
    layers = [Conv2D(6, 3, padding="same"), MaxPool2D(2), Conv2D(8, 3, stride=2), Flatten(),
              Dense(16, "tanh"), Dense(10)]
    net = Network(layers, "softmax", dtype)
    return net.build((9, 9, 1), np.random.RandomState(seed), init="he")


def _winograd_cnn(dtype, seed=0):
    """The estimator's shape of network, small: its second convolution
    (16 input channels, an odd 5x5 side) takes Winograd."""
    layers = [Conv2D(16, 3, padding="same"), MaxPool2D(2),
              Conv2D(6, 3, padding="same"), MaxPool2D(2), Flatten(),
              Dense(12, "relu"), Dense(10)]
    net = Network(layers, "softmax", dtype).build((10, 10, 1), np.random.RandomState(seed),
                                                  init="he")
    assert [layer.algorithm_ for layer in net.layers[::2][:2]] == ["direct", "winograd"]
    return net


def test_winograd_network_gradient(monkeypatch):
    monkeypatch.setattr(conv, "_winograd_chunk_images", lambda *shape: 2)
    rng = np.random.default_rng(14)
    # Smooth activations: no kinks to step over.
    layers = [Conv2D(3, 3, padding="same", activation="tanh"), MaxPool2D(2),
              Conv2D(4, 3, padding="same", activation="tanh", algorithm="winograd"),
              Flatten(), Dense(4)]
    net = Network(layers, "softmax", "float64").build((6, 6, 1), np.random.RandomState(0))
    X = rng.permutation(5 * 36).reshape(5, 6, 6, 1) / 36.0
    Y = np.eye(4)[rng.integers(0, 4, 5)]
    net.loss_and_gradient(X, Y, alpha=0.1)
    analytic = net.grads.copy()
    numeric = _numerical_grad(lambda: net.loss_and_gradient(X, Y, alpha=0.1), net.params)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def _pixel_rows(net, n, seed, dtype=np.float32):
    """Random images as the estimators pass them: 2-D rows of pixels."""
    return np.random.default_rng(seed).random((n, int(np.prod(net.input_shape)))).astype(dtype)


@pytest.mark.parametrize("make", [_small_cnn, _digit_cnn, _winograd_cnn])
def test_prediction_does_not_depend_on_batch(make):
    net = make("float32")
    X = _pixel_rows(net, 300, 6)
    together = net.predict_logits(X)
    for i in [0, 1, 137, 255, 256, 299]:
        np.testing.assert_array_equal(net.predict_logits(X[i:i + 1])[0], together[i])
    np.testing.assert_array_equal(net.predict_logits(X[250:260]), together[250:260])


@pytest.mark.parametrize("make", [_small_cnn, _digit_cnn, _winograd_cnn])
def test_float32_matches_float64(make):
    net64, net32 = make("float64"), make("float32")
    X = _pixel_rows(net64, 40, 7, np.float64)
    k = net64.output_shape[0]
    Y = np.eye(k)[np.arange(40) % k]
    np.testing.assert_allclose(net32.predict_logits(X), net64.predict_logits(X),
                               rtol=1e-4, atol=1e-4)
    images = X.reshape((40,) + net64.input_shape)
    loss64 = net64.loss_and_gradient(images, Y, alpha=0.1)
    loss32 = net32.loss_and_gradient(images.astype(np.float32), Y.astype(np.float32), alpha=0.1)
    assert net32.grads.dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-4)
    np.testing.assert_allclose(net32.grads, net64.grads, rtol=1e-3, atol=1e-4)


def test_pickled_network_predicts_the_same():
    net = _digit_cnn("float32")
    X = _pixel_rows(net, 20, 11)
    images = X.reshape((20,) + net.input_shape)
    net.loss_and_gradient(images, np.eye(10, dtype=np.float32)[np.arange(20) % 10])
    clone = pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(clone.predict_logits(X), net.predict_logits(X))
    assert clone.layers[0].multiply_adds() == 9 * 9 * 9 * 6


def test_inference_keeps_no_state_and_training_reuses_buffers():
    net = _digit_cnn("float32")
    X = np.random.default_rng(8).random((4, 9, 9, 1), dtype=np.float32)
    out = net.forward(X)
    assert out.dtype == np.float32
    assert all(not layer._buffers for layer in net.layers)
    assert not hasattr(net.layers[0], "_cols") and not hasattr(net.layers[1], "_routes")

    Y = np.eye(10, dtype=np.float32)[[1, 2, 3, 4]]
    net.loss_and_gradient(X, Y)
    cols = net.layers[2]._buffers["cols"]
    first = net.grads.copy()
    net.loss_and_gradient(X[:1], Y[:1])  # a different batch size reallocates...
    net.loss_and_gradient(X, Y)          # ...and the same size reuses
    assert net.layers[2]._buffers["cols"].shape == cols.shape
    np.testing.assert_array_equal(net.grads, first)
    np.testing.assert_array_equal(net.forward(X), out)


def test_winograd_chunk_sizes():
    # MNIST's second layer: 7x7 tiles of 32 -> 64 channels, chunks of 8 images.
    assert conv._winograd_chunk_images(49, 32, 64) == 8
    assert conv._winograd_chunk_images(2, 32, 64) == 256   # small images: few, large chunks
    assert conv._winograd_chunk_images(10**6, 512, 512) == 1
    sizes = [conv._winograd_chunk_images(t, c, f) for t in (1, 3, 49, 300) for c, f in
             [(8, 8), (32, 64), (100, 3)]]
    assert all(size & (size - 1) == 0 and (PREDICT_CHUNK % size == 0 or size > PREDICT_CHUNK)
               for size in sizes)


def test_winograd_inference_keeps_no_state_and_training_reuses_buffers(monkeypatch):
    monkeypatch.setattr(conv, "_winograd_chunk_images", lambda *shape: 8)
    net = _winograd_cnn("float32")
    layer = net.layers[2]
    X = np.random.default_rng(15).random((20, 10, 10, 1), dtype=np.float32)
    out = net.forward(X)
    assert all(not layer._buffers for layer in net.layers)
    assert not hasattr(layer, "_V")

    Y = np.eye(10, dtype=np.float32)[np.arange(20) % 10]
    net.loss_and_gradient(X, Y)
    first, buffers = net.grads.copy(), dict(layer._buffers)
    net.loss_and_gradient(X, Y)  # the same batch size reuses every buffer
    assert all(layer._buffers[key] is buffer for key, buffer in buffers.items())
    # 20 images are chunks of 8, 8 and 4; scratch space is kept per chunk
    # size, so a batch of 3 leaves the 8-image chunks' space alone.
    assert ("M", 8) in buffers and ("M", 4) in buffers
    net.loss_and_gradient(X[:3], Y[:3])
    assert layer._buffers[("M", 8)] is buffers[("M", 8)]
    net.loss_and_gradient(X, Y)
    np.testing.assert_array_equal(net.grads, first)
    np.testing.assert_array_equal(net.forward(X), out)


@pytest.mark.parametrize("make", [_digit_cnn, _winograd_cnn])
def test_concurrent_predictions_agree(make):
    net = make("float32")
    X = _pixel_rows(net, 64, 10)
    expected = net.predict_logits(X)
    images = X.reshape((64,) + net.input_shape)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: net.forward(images[i:i + 16]), [0, 16, 32, 48] * 4))
    for k, out in enumerate(results):
        start = 16 * (k % 4)
        np.testing.assert_allclose(out, expected[start:start + 16], rtol=1e-5, atol=1e-6)


def test_layers_take_batch_of_one_in_both_dtypes():
    for dtype, padding in itertools.product(["float32", "float64"], ["valid", "same"]):
        layer = _standalone(Conv2D(3, 3, padding=padding), (5, 6, 2), dtype=dtype)
        X = np.random.default_rng(9).standard_normal((1, 5, 6, 2)).astype(dtype)
        A = layer.forward(X, training=True)
        assert A.dtype == dtype and A.shape[0] == 1
        dX = layer.backward(np.ones_like(A))
        assert dX.dtype == dtype and dX.shape == X.shape
        pool = MaxPool2D(2)
        pool.build(A.shape[1:], dtype)
        assert pool.forward(A, training=True).dtype == dtype


def test_winograd_replicas_compute_shards_at_once(monkeypatch):
    """Two replicas (copy.copy, then build: each with its own buffers) compute
    the two row shards of every batch on two threads: the same bits as one
    after the other."""
    monkeypatch.setattr(skdigits.concurrency, "SHARD_MIN_MULTIPLY_ADDS", 1)
    rng = np.random.default_rng(16)
    X = rng.random((40, 10, 10, 1), dtype=np.float32)
    Y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 40)]
    results = []
    for concurrent in (False, True):
        net = _winograd_cnn("float32")
        with DataParallel(net, concurrent) as parallel:
            losses = []
            for step in range(3):
                losses.append(parallel.loss_and_gradient(X, Y, alpha=1e-3, step=step))
                net.params -= np.float32(0.05) * net.grads
        assert parallel._twin.layers[2].algorithm_ == "winograd"
        results.append((losses, net.params.copy()))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_winograd_cnn_fit_independent_of_blas_threads():
    """The estimator with a Winograd layer: bit-identical fits whether the
    BLAS setting allows one thread or two (shards then run at once)."""
    rng = np.random.RandomState(0)
    X = rng.uniform(size=(150, 64)).astype(np.float32)
    y = rng.randint(10, size=150)
    fits = []
    for threads in (1, 2):
        model = NumpyCNNClassifier(conv_filters=(16, 8), hidden_layer_sizes=(16,), max_iter=2,
                                   batch_size=50, random_state=0)
        with threadpool_limits(threads, user_api="blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(X, y)
        fits.append((model, model.predict_proba(X)))
    (one, proba_one), (two, proba_two) = fits
    assert [layer.algorithm_ for layer in one._network.layers[:2]] == ["direct", "winograd"]
    np.testing.assert_array_equal(one._network.params, two._network.params)
    np.testing.assert_array_equal(proba_one, proba_two)
