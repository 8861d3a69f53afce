"""ConvReLUPool2D: conv -> ReLU -> 2x2 max-pool in one layer, against the
unfused Conv2D + MaxPool2D it replaces and against loops.  By Winograd's tiles
it computes the unfused bits exactly; by im2col rows grouped per window
(the direct path) the same output bits and the gradients to rounding."""

import copy
import warnings

import numpy as np
import pytest
import skops.io as sio
from sklearn.exceptions import ConvergenceWarning

import skdigits.cnn
from skdigits import NumpyCNNClassifier
from skdigits.nn import (Activation, BatchNorm, Conv2D, ConvReLUPool2D, Dense, Flatten, MaxPool2D,
                         Network, conv)
from skdigits.nn.conv import fuse_conv_relu_pool
from skdigits.persistence import load_model, save_model
from test_nn_conv import (_check_layer_gradients, _numerical_grad, _standalone,
                          conv2d_backward_naive, conv2d_naive, maxpool_naive)
from test_nn_parallel import always_shard, fit_under  # noqa: F401 - a fixture and a helper
from test_persistence_hostile import (FRESH_ID, _attributes, _refused, _repack, _schema,
                                      _tuple_node, _write)


# ------------------------------------------------------------------ helpers
def _pair(c_in, filters, input_shape, padding, dtype, seed=0, algorithm="winograd"):
    """(fused, conv, pool): a ConvReLUPool2D and the Conv2D + MaxPool2D it
    replaces, standalone, with the same parameters."""
    fused = _standalone(ConvReLUPool2D(filters, padding, algorithm), input_shape + (c_in,),
                        dtype, seed)
    unfused = _standalone(Conv2D(filters, 3, padding=padding, algorithm=algorithm),
                          input_shape + (c_in,), dtype, seed)
    assert fused.algorithm_ == unfused.algorithm_ == algorithm
    pool = MaxPool2D(2)
    pool.build((unfused.h_out, unfused.w_out, filters), dtype)
    for name in ("W", "b"):
        np.testing.assert_array_equal(fused.params[name], unfused.params[name])
    return fused, unfused, pool


def _same_bits(a, b):
    """Equal shapes, dtypes and bytes: signed zeros count too."""
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.tobytes() == b.tobytes()


def _compare(fused, unfused, pool, X, dY):
    """Forward (inference and training), input and parameter gradients: the
    same bits fused and unfused."""
    _same_bits(fused.forward(X), pool.forward(unfused.forward(X)))
    out = fused.forward(X, training=True)
    _same_bits(out, pool.forward(unfused.forward(X, training=True), training=True))
    dX = fused.backward(dY.copy())
    _same_bits(dX, unfused.backward(pool.backward(dY.copy())))
    for name in ("W", "b"):
        _same_bits(fused.grads[name], unfused.grads[name])
    return out, dX


def _images(kind, n, shape, dtype, rng):
    if kind == "normal":
        return rng.standard_normal((n,) + shape).astype(dtype)
    if kind == "zeros":  # every window a tie: its outputs are the bias alone
        return np.zeros((n,) + shape, dtype=dtype)
    # Small integers with integer weights (see below): exact outputs, many ties.
    return rng.integers(-1, 2, (n,) + shape).astype(dtype)


def _small_integer_parameters(kind, layers, rng):
    """For ``kind`` 'zeros' and 'integers' (see :func:`_images`), give the
    layers one set of biases in {-1, 0, 1}: both signs and zero make tied
    windows above and below the ReLU's kink; for 'integers' the kernels too,
    so that every output is exact."""
    if kind == "normal":
        return
    first = layers[0]
    b = rng.integers(-1, 2, first.params["b"].shape).astype(first.dtype)
    W = rng.integers(-1, 2, first.params["W"].shape).astype(first.dtype)
    for layer in layers:
        layer.params["b"][...] = b
        if kind == "integers":
            layer.params["W"][...] = W


# ------------------------------------------------------- bit for bit
CASES = [
    # (n, h, w, c_in, filters, padding)
    (1, 14, 14, 32, 64, "same"),     # MNIST's second layer, one image
    (33, 14, 14, 32, 64, "same"),    # and an odd batch over several chunks
    (5, 8, 6, 16, 16, "same"),
    (3, 10, 8, 64, 32, "valid"),     # even 'valid' output: 8x6
    (7, 7, 9, 16, 32, "same"),       # odd sides: the last row and column are dropped
    (2, 8, 5, 32, 16, "valid"),      # 6x3 output
    (4, 4, 4, 16, 64, "valid"),      # 2x2 output: one window
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["normal", "zeros", "integers"])
@pytest.mark.parametrize("n, h, w, c, f, padding", CASES)
def test_fused_is_bit_identical_to_conv_then_pool(n, h, w, c, f, padding, kind, dtype):
    rng = np.random.default_rng([n, h, w, c, f])
    fused, unfused, pool = _pair(c, f, (h, w), padding, dtype)
    _small_integer_parameters(kind, (fused, unfused), rng)
    X = _images(kind, n, (h, w, c), dtype, rng)
    dY = rng.standard_normal((n, fused.h_out // 2, fused.w_out // 2, f)).astype(dtype)
    out, _ = _compare(fused, unfused, pool, X, dY)
    assert out.shape == (n, fused.h_out // 2, fused.w_out // 2, f)


@pytest.mark.parametrize("chunk", [1, 2, 8])
def test_bit_identical_whatever_the_chunks(monkeypatch, chunk):
    monkeypatch.setattr(conv, "_winograd_chunk_images", lambda *shape: chunk)
    rng = np.random.default_rng(chunk)
    fused, unfused, pool = _pair(16, 16, (6, 7), "same", "float32")
    X = rng.standard_normal((11, 6, 7, 16)).astype(np.float32)
    dY = rng.standard_normal((11, 3, 3, 16)).astype(np.float32)
    _compare(fused, unfused, pool, X, dY)


def test_batch_sizes_reuse_and_reallocate_buffers():
    """Batches of changing size in training, then the first again: the
    buffers kept for one size never leak into another's results."""
    rng = np.random.default_rng(3)
    fused, unfused, pool = _pair(32, 64, (14, 14), "same", "float32")
    X = rng.standard_normal((37, 14, 14, 32)).astype(np.float32)
    dY = rng.standard_normal((37, 7, 7, 64)).astype(np.float32)
    first = _compare(fused, unfused, pool, X, dY)
    for n in (1, 9, 37):
        _compare(fused, unfused, pool, X[:n], dY[:n])
    again = _compare(fused, unfused, pool, X, dY)
    for a, b in zip(first, again):
        _same_bits(a, b)


# --------------------------------------------- the direct path, by window
DIRECT_CASES = [
    # (n, h, w, c_in, filters, padding)
    (32, 28, 28, 1, 32, "same"),     # MNIST's first layer, a training shard
    (1, 28, 28, 1, 32, "same"),
    (5, 7, 9, 1, 8, "same"),         # odd sides: the last row and column are dropped
    (3, 8, 6, 3, 4, "valid"),        # 6x4 output
    (2, 9, 7, 8, 16, "valid"),       # 7x5 output
    (4, 4, 4, 2, 5, "valid"),        # 2x2 output: one window
]


def _close(actual, expected, dtype, exact):
    """Equal (``exact``: integer data, every sum exact in any order), else
    equal to the rounding of sums taken in another order."""
    if exact:
        np.testing.assert_array_equal(actual, expected)
        return
    scale = max(float(np.abs(expected).max()), 1e-30)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale)


def _compare_direct(fused, unfused, pool, X, dY, exact):
    """The output's bits fused and unfused; the gradients equal to rounding."""
    dtype = fused.dtype.name
    _same_bits(fused.forward(X), pool.forward(unfused.forward(X)))
    out = fused.forward(X, training=True)
    _same_bits(out, pool.forward(unfused.forward(X, training=True), training=True))
    dX = fused.backward(dY.copy())
    _close(dX, unfused.backward(pool.backward(dY.copy())), dtype, exact)
    for name in ("W", "b"):
        _close(fused.grads[name], unfused.grads[name], dtype, exact)
    return out, dX


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["normal", "zeros", "integers"])
@pytest.mark.parametrize("n, h, w, c, f, padding", DIRECT_CASES)
def test_direct_path_output_is_the_unfused_output(n, h, w, c, f, padding, kind, dtype):
    rng = np.random.default_rng([n, h, w, c, f, 1])
    fused, unfused, pool = _pair(c, f, (h, w), padding, dtype, algorithm="direct")
    _small_integer_parameters(kind, (fused, unfused), rng)
    X = _images(kind, n, (h, w, c), dtype, rng)
    shape = (n, fused.h_out // 2, fused.w_out // 2, f)
    dY = rng.standard_normal(shape).astype(dtype)
    if kind == "integers":
        dY = np.round(dY).astype(dtype)
    out, _ = _compare_direct(fused, unfused, pool, X, dY, exact=kind == "integers")
    assert out.shape == shape


def test_direct_path_buffers_across_batch_sizes():
    rng = np.random.default_rng(13)
    fused, unfused, pool = _pair(1, 32, (28, 28), "same", "float32", algorithm="direct")
    X = rng.uniform(size=(37, 28, 28, 1)).astype(np.float32)
    dY = rng.standard_normal((37, 14, 14, 32)).astype(np.float32)
    first = _compare_direct(fused, unfused, pool, X, dY, exact=False)
    for n in (1, 9, 37):
        _compare_direct(fused, unfused, pool, X[:n], dY[:n], exact=False)
    again = _compare_direct(fused, unfused, pool, X, dY, exact=False)
    for a, b in zip(first, again):
        _same_bits(a, b)
    assert fused.grads["W"].shape == (3, 3, 1, 32)


def _window_cols_naive(X, padding):
    """The direct path's im2col matrix by loops: the row of (window position
    a, b; image s; pooled row y; pooled column x) holds, at column
    (3 i + j) c_in + k, the padded pixel (s, 2 y + a + i, 2 x + b + j, k);
    the last column is 1."""
    n, h, w, c = X.shape
    pad = 1 if padding == "same" else 0  # a 3x3 kernel of stride 1
    P = np.pad(X, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ph, pw = (h + 2 * pad - 2) // 2, (w + 2 * pad - 2) // 2
    cols = np.ones((4 * n * ph * pw, 9 * c + 1), dtype=X.dtype)
    for row, (a, b, s, y, x) in enumerate(np.ndindex(2, 2, n, ph, pw)):
        for i, j, k in np.ndindex(3, 3, c):
            cols[row, (3 * i + j) * c + k] = P[s, 2 * y + a + i, 2 * x + b + j, k]
    return cols


_EMPTY = np.empty


def _garbage_empty(shape, dtype=float, *args, **kwargs):
    """np.empty whose memory is never zero by luck: NaN (True for bools)."""
    array = _EMPTY(shape, dtype, *args, **kwargs)
    array.fill(np.nan if array.dtype.kind in "fc" else 1)
    return array


@pytest.fixture
def garbage_buffers(monkeypatch):
    """New buffers and inference arrays start as NaN, so that a value a pass
    relies on without writing it (e.g. a padding zero) shows."""
    monkeypatch.setattr(np, "empty", _garbage_empty)


WINDOW_COLS_CASES = [
    # (n, h, w, c_in, padding)
    (2, 6, 8, 1, "same"),
    (3, 7, 9, 1, "same"),    # odd sides: the last output row and column are dropped
    (2, 5, 6, 3, "same"),
    (2, 8, 6, 3, "valid"),   # 6x4 output
    (3, 9, 7, 1, "valid"),   # 7x5 output: the image's last row and column are read by nothing
    (1, 4, 5, 3, "valid"),   # 2x3 output
]


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("n, h, w, c, padding", WINDOW_COLS_CASES)
def test_direct_path_window_cols_match_loops(n, h, w, c, padding, training, garbage_buffers):
    """The im2col matrix itself: a pure copy, so exactly the loops' values."""
    rng = np.random.default_rng([n, h, w, c, 2])
    layer = _standalone(ConvReLUPool2D(4, padding, "direct"), (h, w, c))
    X = rng.uniform(1, 2, (n, h, w, c))  # no zeros: a misplaced padding zero shows
    cols = layer._window_cols(X, layer._array(training))
    _same_bits(np.ascontiguousarray(cols), _window_cols_naive(X, padding))


@pytest.mark.parametrize("c", [1, 3])
def test_direct_path_buffers_across_batch_sizes_and_modes(c, garbage_buffers):
    """Training batches of two sizes, each size twice, inference between
    them: each pass's im2col matrix and output are right, so the training
    buffers' padding zeros and 1s survive their reuse, and a reallocated
    buffer gets them anew."""
    rng = np.random.default_rng(16 + c)
    fused, unfused, pool = _pair(c, 4, (7, 6), "same", "float64", algorithm="direct")
    for n, training in [(3, True), (3, True), (3, False), (2, True), (2, False), (2, True),
                        (3, False), (3, True)]:
        X = rng.uniform(1, 2, (n, 7, 6, c))
        out = fused.forward(X, training=training)
        _same_bits(out, pool.forward(unfused.forward(X)))
        if training:
            _same_bits(np.ascontiguousarray(fused._cols), _window_cols_naive(X, "same"))


def test_direct_path_rows_are_independent():
    """A sample's output and its share of the gradient do not depend on the
    other samples of its batch (shards of a batch may be summed)."""
    rng = np.random.default_rng(14)
    fused = _standalone(ConvReLUPool2D(8, "same", "direct"), (10, 10, 1))
    X = rng.standard_normal((6, 10, 10, 1))
    dY = rng.standard_normal((6, 5, 5, 8))
    whole = fused.forward(X, training=True).copy()
    fused.backward(dY.copy(), need_input_grad=False)
    dW = fused.grads["W"].copy()
    halves = []
    for rows in (slice(0, 2), slice(2, 6)):
        _same_bits(fused.forward(X[rows], training=True), whole[rows])
        fused.backward(dY[rows].copy(), need_input_grad=False)
        halves.append(fused.grads["W"].copy())
    np.testing.assert_allclose(halves[0] + halves[1], dW, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------- references
ALGORITHMS = ["direct", "winograd"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("padding, shape", [("same", (6, 7)), ("valid", (8, 6))])
def test_matches_loops(padding, shape, algorithm):
    """Against explicit loops (a direct convolution, ReLU, pooling by windows),
    to rounding: both paths form their sums in another order."""
    rng = np.random.default_rng(4)
    fused = _standalone(ConvReLUPool2D(5, padding, algorithm), shape + (3,))
    X = rng.standard_normal((4,) + shape + (3,))
    Z = conv2d_naive(X, fused.params["W"], fused.params["b"], 1, padding)
    expected = maxpool_naive(np.maximum(Z, 0))
    np.testing.assert_allclose(fused.forward(X), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused.forward(X, training=True), expected, rtol=1e-12, atol=1e-12)


def _pooled_relu_gradient_naive(Z, dY):
    """d loss / d Z of maxpool(relu(Z)) by loops over windows: each window's
    gradient to its first (row-major) maximum, where that maximum is positive."""
    dZ = np.zeros_like(Z)
    for s, y, x, f in np.ndindex(dY.shape):
        window = Z[s, 2 * y:2 * y + 2, 2 * x:2 * x + 2, f].ravel()
        k = int(np.argmax(window))  # argmax takes the first maximum
        if window[k] > 0:
            dZ[s, 2 * y + k // 2, 2 * x + k % 2, f] = dY[s, y, x, f]
    return dZ


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("padding, shape, c_in", [("same", (6, 7), 1), ("valid", (8, 7), 3)])
def test_gradients_match_loops(padding, shape, c_in, algorithm):
    rng = np.random.default_rng(15)
    fused = _standalone(ConvReLUPool2D(4, padding, algorithm), shape + (c_in,))
    X = rng.standard_normal((3,) + shape + (c_in,))
    out = fused.forward(X, training=True)
    dY = rng.standard_normal(out.shape)
    dX = fused.backward(dY.copy())
    Z = conv2d_naive(X, fused.params["W"], fused.params["b"], 1, padding)
    dZ = _pooled_relu_gradient_naive(Z, dY)
    dX_ref, dW_ref, db_ref = conv2d_backward_naive(X, fused.params["W"], dZ, 1, padding)
    np.testing.assert_allclose(dX, dX_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fused.grads["W"], dW_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fused.grads["b"], db_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_ties_route_the_gradient_to_the_first_maximum(algorithm):
    """W = 0 makes every output its channel's bias: four-way ties in every
    window.  A positive bias sends each window's gradient to its top-left
    output only; a negative one (ReLU closed) and a zero one (ReLU's kink,
    derivative 0) send none."""
    fused = _standalone(ConvReLUPool2D(3, "valid", algorithm), (6, 6, 2))
    fused.params["W"][...] = 0
    fused.params["b"][...] = [0.5, -0.5, 0.0]
    X = np.random.default_rng(5).standard_normal((2, 6, 6, 2))
    out = fused.forward(X, training=True)
    np.testing.assert_array_equal(out, np.broadcast_to([0.5, 0.0, 0.0], (2, 2, 2, 3)))
    dY = np.random.default_rng(6).standard_normal(out.shape)
    dX = fused.backward(dY.copy())
    dZ = np.zeros((2, 4, 4, 3))
    dZ[:, ::2, ::2, 0] = dY[..., 0]
    dX_ref, dW_ref, db_ref = conv2d_backward_naive(X, fused.params["W"], dZ)
    np.testing.assert_allclose(dX, dX_ref, atol=1e-12)
    np.testing.assert_allclose(fused.grads["W"], dW_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fused.grads["b"], [dY[..., 0].sum(), 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(db_ref, fused.grads["b"], atol=1e-12)


def _kinks(layer, X):
    """Per pooled output, the distance to where the layer is not
    differentiable: the ReLU's kink (window maximum 0) or a change of the
    window's maximum (a tie between its two largest outputs)."""
    Z = conv2d_naive(X, layer.params["W"], layer.params["b"], 1, layer.padding)
    n, ph, pw, f = X.shape[0], layer.h_out // 2, layer.w_out // 2, layer.filters
    windows = Z[:, :2 * ph, :2 * pw].reshape(n, ph, 2, pw, 2, f).transpose(0, 1, 3, 5, 2, 4)
    top = np.sort(windows.reshape(n, ph, pw, f, 4), axis=-1)
    return np.minimum(np.abs(top[..., 3]), top[..., 3] - top[..., 2])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("padding, shape", [("same", (5, 6)), ("valid", (6, 7))])
def test_gradients_by_finite_differences(padding, shape, algorithm):
    rng = np.random.default_rng(7)
    fused = _standalone(ConvReLUPool2D(3, padding, algorithm), shape + (2,))
    X = rng.standard_normal((3,) + shape + (2,))
    _check_layer_gradients(fused, X, rng, kink=_kinks(fused, X))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_network_gradient_by_finite_differences(algorithm):
    rng = np.random.default_rng(8)
    layers = [ConvReLUPool2D(3, "same", algorithm), Flatten(), Dense(4)]
    net = Network(layers, "softmax", "float64").build((4, 6, 2), np.random.RandomState(0),
                                                      init="he")
    X = rng.standard_normal((5, 4, 6, 2))
    Y = np.eye(4)[rng.integers(0, 4, 5)]
    kinks = _kinks(net.layers[0], X)
    assert kinks.min() > 1e-4  # no perturbation of 1e-6 crosses a kink
    net.loss_and_gradient(X, Y, alpha=0.1)
    analytic = net.grads.copy()
    numeric = _numerical_grad(lambda: net.loss_and_gradient(X, Y, alpha=0.1), net.params)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("c_in, routes", [(16, (4, 3, 3, 3, 4)), (1, (4, 3, 3, 3, 4))])
def test_inference_keeps_no_state(c_in, routes):
    """Prediction allocates per call and keeps nothing: threads may share the layer."""
    fused = _standalone(ConvReLUPool2D(4), (6, 6, c_in), "float32")
    assert fused.algorithm_ == ("winograd" if c_in == 16 else "direct")
    X = np.random.default_rng(9).standard_normal((3, 6, 6, c_in)).astype(np.float32)
    out = fused.forward(X)
    assert not fused._buffers and not hasattr(fused, "_routes")
    _same_bits(fused.forward(X, training=True), out)
    assert fused._buffers["routes"].shape == routes


# ----------------------------------------------------- when it applies
def test_fuses_exactly_the_relu_3x3_conv_then_2x2_pool():
    relu = Conv2D(8, 3, padding="same")
    pool = MaxPool2D(2)
    assert ConvReLUPool2D.fuses(relu, pool, (14, 14, 16))
    assert ConvReLUPool2D.fuses(relu, pool, (14, 14, 8))       # by im2col there, as Conv2D
    assert ConvReLUPool2D.fuses(relu, pool, (28, 28, 1))
    assert ConvReLUPool2D.fuses(Conv2D(8, 3, padding="same", algorithm="direct"), pool,
                                (14, 14, 16))
    assert ConvReLUPool2D.fuses(Conv2D(8, 3, algorithm="winograd"), pool, (4, 4, 1))
    assert not ConvReLUPool2D.fuses(relu, pool, (1, 14, 16))   # no 2x2 window fits
    assert not ConvReLUPool2D.fuses(Conv2D(8, 3, algorithm="winograd"), pool, (3, 3, 1))
    for other in [Conv2D(8, 3, padding="same", activation="tanh"), Conv2D(8, 5, padding="same"),
                  Conv2D(8, 3, stride=2), ConvReLUPool2D(8), BatchNorm()]:
        assert not ConvReLUPool2D.fuses(other, pool, (14, 14, 16))
    for other in [MaxPool2D(3), MaxPool2D(2, 1), MaxPool2D((2, 1)), Activation("relu")]:
        assert not ConvReLUPool2D.fuses(relu, other, (14, 14, 16))
    assert not hasattr(relu, "algorithm_")  # the check built a copy, not the layer


def test_fuse_conv_relu_pool_replaces_the_pair_only():
    block = [Conv2D(8, 3, padding="same"), MaxPool2D(2)]
    [fused] = fuse_conv_relu_pool(block, (6, 6, 16))
    assert type(fused) is ConvReLUPool2D and (fused.filters, fused.padding) == (8, "same")
    normalized = [Conv2D(8, 3, padding="same", activation="identity"), BatchNorm(),
                  Activation("relu"), MaxPool2D(2)]
    assert fuse_conv_relu_pool(normalized, (6, 6, 16)) == normalized
    assert fuse_conv_relu_pool(block[:1], (6, 6, 16)) == block[:1]
    assert fuse_conv_relu_pool(block, (1, 6, 4)) == block
    for algorithm, expected in [("auto", "direct"), ("direct", "direct"),
                                ("winograd", "winograd")]:
        conv_layer = Conv2D(8, 3, padding="same", algorithm=algorithm)
        [fused] = fuse_conv_relu_pool([conv_layer, MaxPool2D(2)], (6, 6, 4))
        assert fused.algorithm == algorithm
        probe = copy.copy(conv_layer)
        for layer in (fused, probe):
            layer.build((6, 6, 4), "float32")
        assert fused.algorithm_ == probe.algorithm_ == expected


def test_invalid_configurations_are_clear_errors():
    with pytest.raises(ValueError, match="does not fit the 1x4 output"):
        ConvReLUPool2D(4, "valid").build((3, 6, 16), "float32")
    with pytest.raises(ValueError, match="padding must be 'valid' or 'same', got 'full'"):
        ConvReLUPool2D(4, "full")
    # As a file could restore it, without __init__: what it computes is checked.
    for name, value in [("stride", (2, 2)), ("kernel_size", (5, 5)), ("activation", "tanh"),
                        ("algorithm", "fft"), ("padding", "full")]:
        layer = copy.copy(ConvReLUPool2D(4))
        setattr(layer, name, value)
        with pytest.raises(ValueError, match=repr(value).replace("(", r"\(").replace(")", r"\)")):
            layer.build((8, 8, 16), "float32")


def test_same_initial_weights_as_the_unfused_network():
    def network(layers):
        return Network(layers + [Flatten(), Dense(3)], "softmax",
                       "float32").build((8, 8, 16), np.random.RandomState(0), init="he")
    fused = network([ConvReLUPool2D(4)])
    unfused = network([Conv2D(4, 3, padding="same"), MaxPool2D(2)])
    # The same parameter blocks at the same offsets (layer indices aside).
    assert [entry[1:] for entry in fused._layout] == [entry[1:] for entry in unfused._layout]
    _same_bits(fused.params, unfused.params)
    assert fused.multiply_adds_per_sample == unfused.multiply_adds_per_sample


# ------------------------------------------------------------ estimator
def _unfused(monkeypatch):
    """Make the estimator build separate convolution and pooling layers."""
    monkeypatch.setattr(skdigits.cnn, "fuse_conv_relu_pool", lambda block, shape: list(block))


def _winograd_fused_only(monkeypatch):
    """Make the estimator build the layout from before the direct path was
    fused: only blocks whose convolution takes Winograd are one layer."""
    def fuse(block, shape):
        probe = copy.copy(block[0])  # configuration only
        probe.build(shape, "float64")
        winograd = getattr(probe, "algorithm_", None) == "winograd"
        return fuse_conv_relu_pool(block, shape) if winograd else list(block)
    monkeypatch.setattr(skdigits.cnn, "fuse_conv_relu_pool", fuse)


def _fit(X, y, **params):
    model = NumpyCNNClassifier(conv_filters=(16, 16), hidden_layer_sizes=(16,), max_iter=2,
                               batch_size=64, random_state=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


def _kinds(model):
    return [type(layer).__name__ for layer in model._network.layers]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_estimator_fit_with_winograd_fused_is_the_unfused_fit(digits, monkeypatch,
                                                              one_blas_thread, dtype):
    X, y = digits
    X, y = X[:400], y[:400]
    _winograd_fused_only(monkeypatch)
    fused = _fit(X, y, dtype=dtype)
    assert _kinds(fused)[:3] == ["Conv2D", "MaxPool2D", "ConvReLUPool2D"]
    _unfused(monkeypatch)
    unfused = _fit(X, y, dtype=dtype)
    assert _kinds(unfused)[:4] == ["Conv2D", "MaxPool2D", "Conv2D", "MaxPool2D"]
    assert fused.dtype_ == unfused.dtype_ == np.dtype(dtype)
    for a, b in zip(fused.coefs_ + fused.intercepts_, unfused.coefs_ + unfused.intercepts_):
        _same_bits(a, b)
    assert fused.loss_curve_ == unfused.loss_curve_
    _same_bits(fused.predict_proba(X), unfused.predict_proba(X))


def test_estimator_fit_fully_fused_is_the_unfused_fit_to_rounding(digits, monkeypatch,
                                                                  one_blas_thread):
    """Both blocks fused (the first by im2col rows grouped per window): the
    same training, its sums taken in another order."""
    X, y = digits
    X, y = X[:400], y[:400]
    fused = _fit(X, y, dtype="float64")
    assert _kinds(fused)[:2] == ["ConvReLUPool2D", "ConvReLUPool2D"]
    assert [layer.algorithm_ for layer in fused._network.layers[:2]] == ["direct", "winograd"]
    _unfused(monkeypatch)
    unfused = _fit(X, y, dtype="float64")
    for a, b in zip(fused.coefs_ + fused.intercepts_, unfused.coefs_ + unfused.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fused.loss_curve_, unfused.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(fused.predict_proba(X), unfused.predict_proba(X), atol=1e-10)


def test_estimator_keeps_separate_layers_with_batch_norm(digits):
    X, y = digits
    model = _fit(X[:100], y[:100], batch_norm=True)
    kinds = [type(layer) for layer in model._network.layers]
    assert ConvReLUPool2D not in kinds and kinds.count(MaxPool2D) == 2


def test_estimator_fit_independent_of_blas_threads(always_shard, monkeypatch):  # noqa: F811
    """Fused, the fit is bit-identical whether the shards run one after the
    other (one BLAS thread) or at once on two threads."""
    rng = np.random.RandomState(0)
    X = rng.uniform(size=(300, 64)).astype(np.float32)
    y = rng.randint(10, size=300)

    def make():
        return NumpyCNNClassifier(conv_filters=(16, 8), hidden_layer_sizes=(8,), max_iter=2,
                                  random_state=0)
    one, proba_one, _ = fit_under(1, make, X, y, monkeypatch)
    two, proba_two, calls_two = fit_under(2, make, X, y, monkeypatch)
    assert [layer.algorithm_ for layer in one._network.layers[:2]] == ["direct", "winograd"]
    assert any(name.startswith("skdigits-shard") for name, _ in calls_two)
    _same_bits(one._network.params, two._network.params)
    _same_bits(proba_one, proba_two)


def test_model_files_round_trip(digits, tmp_path, monkeypatch):
    """A fused model saves and loads as itself; models of the layouts saved
    before (all unfused; only Winograd blocks fused) still load with their
    own layers and predict as they did."""
    X, y = digits
    X, y = X[:200], y[:200]
    fused = _fit(X, y)
    loaded = load_model(save_model(fused, tmp_path / "fused.skops"))
    assert _kinds(loaded)[:2] == ["ConvReLUPool2D", "ConvReLUPool2D"]
    assert [layer.algorithm_ for layer in loaded._network.layers[:2]] == ["direct", "winograd"]
    _same_bits(loaded.predict_proba(X), fused.predict_proba(X))
    _winograd_fused_only(monkeypatch)
    before = _fit(X, y)
    loaded = load_model(save_model(before, tmp_path / "winograd-fused.skops"))
    assert _kinds(loaded)[:3] == ["Conv2D", "MaxPool2D", "ConvReLUPool2D"]
    _same_bits(loaded.predict_proba(X), before.predict_proba(X))
    _unfused(monkeypatch)
    unfused = _fit(X, y)
    loaded = load_model(save_model(unfused, tmp_path / "unfused.skops"))
    assert [type(layer) for layer in loaded._network.layers[2:4]] == [Conv2D, MaxPool2D]
    _same_bits(loaded.predict_proba(X), unfused.predict_proba(X))
    _same_bits(loaded.predict_proba(X), before.predict_proba(X))


def test_hostile_file_with_a_strided_fused_layer_is_refused(digits, tmp_path):
    """A file claiming the fused layer strides by 2 keeps every parameter
    shape consistent; the layer's own check refuses it while the network is
    restored, before anything runs."""
    X, y = digits
    data = sio.dumps(_fit(X[:100], y[:100]))
    schema = _schema(data)
    _attributes(schema, "ConvReLUPool2D")["stride"] = _tuple_node((2, 2), FRESH_ID)
    _refused(_write(tmp_path, _repack(data, schema)), "cannot rebuild", "stride=(1, 1)")


def test_hostile_file_with_an_unknown_fused_algorithm_is_refused(digits, tmp_path):
    X, y = digits
    data = sio.dumps(_fit(X[:100], y[:100]))
    schema = _schema(data)
    # A fresh id: the layers share one "auto" string, which skops restores once.
    _attributes(schema, "ConvReLUPool2D")["algorithm"] = {
        **_attributes(schema, "ConvReLUPool2D")["algorithm"], "content": '"fft"',
        "__id__": FRESH_ID}
    _refused(_write(tmp_path, _repack(data, schema)), "cannot rebuild", "'fft'")
