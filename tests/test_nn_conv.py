"""Tests of the convolutional layers against slow, obvious references."""

import itertools
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from skdigits.nn import conv
from skdigits.nn.conv import Conv2D, Flatten, MaxPool2D
from skdigits.nn.initializers import INITIALIZERS
from skdigits.nn.layers import Dense
from skdigits.nn.network import Network


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
]


@pytest.mark.parametrize("n, h, w, c, f, k, s, padding", CONV_CASES)
@pytest.mark.parametrize("im2col", ["sliced", "single_copy"])
def test_conv2d_forward_matches_naive(monkeypatch, im2col, n, h, w, c, f, k, s, padding):
    # Force either im2col strategy, whatever the number of channels.
    monkeypatch.setattr(conv, "_SLICED_IM2COL_MAX_BYTES", 10**9 if im2col == "sliced" else 0)
    rng = np.random.default_rng(0)
    layer = _standalone(Conv2D(f, k, s, padding, activation="identity"), (h, w, c))
    X = rng.standard_normal((n, h, w, c))
    expected = conv2d_naive(X, layer.params["W"], layer.params["b"], s, padding)
    for training in (False, True):
        out = layer.forward(X, training=training)
        assert out.shape == expected.shape and out.dtype == np.float64
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


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


# ------------------------------------------------------------ gradient checks
@pytest.mark.parametrize("activation", ["identity", "logistic", "tanh", "relu"])
@pytest.mark.parametrize("n, h, w, c, f, k, s, padding", [
    (2, 6, 5, 2, 3, 3, 1, "valid"),
    (1, 6, 7, 3, 2, 3, 2, "same"),
    (2, 5, 5, 1, 2, (2, 3), (2, 1), "same"),
    (2, 7, 6, 5, 2, 3, 2, "valid"),
])
def test_conv2d_gradients(activation, n, h, w, c, f, k, s, padding):
    rng = np.random.default_rng(2)
    layer = _standalone(Conv2D(f, k, s, padding, activation=activation), (h, w, c))
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


def _pixel_rows(net, n, seed, dtype=np.float32):
    """Random images as the estimators pass them: 2-D rows of pixels."""
    return np.random.default_rng(seed).random((n, int(np.prod(net.input_shape)))).astype(dtype)


@pytest.mark.parametrize("make", [_small_cnn, _digit_cnn])
def test_prediction_does_not_depend_on_batch(make):
    net = make("float32")
    X = _pixel_rows(net, 300, 6)
    together = net.predict_logits(X)
    for i in [0, 1, 137, 255, 256, 299]:
        np.testing.assert_array_equal(net.predict_logits(X[i:i + 1])[0], together[i])
    np.testing.assert_array_equal(net.predict_logits(X[250:260]), together[250:260])


@pytest.mark.parametrize("make", [_small_cnn, _digit_cnn])
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


def test_concurrent_predictions_agree():
    net = _digit_cnn("float32")
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
