"""Finite-difference checks of every backward pass in ``skdigits.nn``.

``Network.loss_and_gradient`` is differentiated numerically (central
differences, one parameter at a time) for every hidden activation, output and
target type, with and without L2 penalty and sample weights.  The loss itself
is checked against a forward pass written out here in plain NumPy, so a loss
and gradient that were wrong *consistently* would still be caught.
"""

import numpy as np
import pytest

from skdigits.nn import ACTIVATIONS, DERIVATIVES, Dense, Dropout, Network
from skdigits.nn.layers import (_GOLDEN, Batch, _odd_salts, mix64, row_hashes,
                                survival_threshold)

ACTIVATION_NAMES = ["identity", "logistic", "tanh", "relu"]
# target name -> (output function, number of outputs)
TARGETS = {"softmax": ("softmax", 3), "binary": ("logistic", 1), "multilabel": ("logistic", 3)}
N_SAMPLES, N_FEATURES, HIDDEN = 6, 3, (5, 4)
KINK_MARGIN = 1e-3  # |pre-activation| must exceed this (ReLU kink), >> step * |input|
H = 1e-5            # finite-difference step


# ------------------------------------------------------------ references
def ref_activation(name, Z):
    return {"identity": lambda z: z,
            "logistic": lambda z: 1.0 / (1.0 + np.exp(-z)),
            "tanh": np.tanh,
            "relu": lambda z: np.maximum(z, 0.0)}[name](Z)


def dense_layers(net):
    return [layer for layer in net.layers if isinstance(layer, Dense)]


def pre_activations(net, X):
    """Hidden pre-activations Z of each Dense layer, recomputed by hand (no dropout)."""
    out, Zs = X, []
    for layer in dense_layers(net):
        Z = out @ layer.params["W"] + layer.params["b"]
        Zs.append(Z)
        out = ref_activation(layer.activation, Z)
    return Zs


def reference_loss(net, X, Y, w, alpha, weight_sum=None):
    """Mean weighted cross-entropy + 0.5 alpha ||W||^2 / weight_sum, naively."""
    logits = pre_activations(net, X)[-1]
    if net.output == "softmax":
        P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        per_sample = -(Y * np.log(P)).sum(axis=1)
    else:
        P = 1.0 / (1.0 + np.exp(-logits))
        per_sample = -(Y * np.log(P) + (1 - Y) * np.log(1 - P)).sum(axis=1)
    w = np.ones(len(X)) if w is None else w
    S = w.sum() if weight_sum is None else weight_sum
    penalty = 0.5 * alpha * sum(float((W ** 2).sum()) for W in net.parameter_arrays("W"))
    return float((w * per_sample).sum() / S + penalty / S)


def numerical_gradient(net, X, Y, w, alpha):
    """Central differences of ``net.loss_and_gradient`` w.r.t. every entry of
    ``net.params`` (all at training step 0, so dropout masks stay fixed)."""
    params = net.params
    num = np.empty(params.shape, dtype=np.float64)
    for i in range(params.size):
        old = params[i]
        params[i] = old + H
        plus = net.loss_and_gradient(X, Y, w, alpha)
        params[i] = old - H
        minus = net.loss_and_gradient(X, Y, w, alpha)
        params[i] = old
        num[i] = (plus - minus) / (2 * H)
    return num


def assert_gradients_close(analytic, numeric, rel_tol=1e-6):
    denom = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    assert denom > 0
    rel = np.linalg.norm(analytic - numeric) / denom
    assert rel < rel_tol, f"relative gradient error {rel:.3e}"
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-7)


def make_targets(rng, target, n):
    _, k = TARGETS[target]
    if target == "softmax":
        labels = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
        return np.eye(k)[rng.permutation(labels)]
    Y = (rng.random((n, k)) < 0.5).astype(np.float64)
    Y[0], Y[1] = 0.0, 1.0  # both values present in every column
    return Y


def make_problem(activation, target, seed=0, layers=None, dtype="float64"):
    """A small random net and batch, re-drawn until no hidden pre-activation is near 0."""
    output, k = TARGETS[target]
    for attempt in range(100):
        rng = np.random.default_rng(1000 * seed + attempt)
        if layers is None:
            arch = [Dense(HIDDEN[0], activation), Dense(HIDDEN[1], activation), Dense(k)]
        else:
            arch = layers(activation, k)
        net = Network(arch, output, dtype).build(
            (N_FEATURES,), np.random.RandomState(seed + attempt), activation=activation, seed=0)
        # Generic parameters rather than the (small, symmetric) initial ones.
        net.params[:] = rng.normal(scale=0.7, size=net.n_params)
        X = rng.normal(size=(N_SAMPLES, N_FEATURES))
        hidden_Z = pre_activations(net, X)[:-1]
        if min(np.abs(Z).min() for Z in hidden_Z) > KINK_MARGIN:
            Y = make_targets(rng, target, N_SAMPLES)
            w = rng.uniform(0.3, 2.5, N_SAMPLES)
            return net, X, Y, w
    raise RuntimeError("could not draw a kink-free problem")


# ------------------------------------------------- network gradient check
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("alpha", [0.0, 0.1])
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_network_gradient_finite_differences(activation, target, alpha, weighted):
    net, X, Y, w = make_problem(activation, target, seed=ACTIVATION_NAMES.index(activation))
    w = w if weighted else None
    loss = net.loss_and_gradient(X, Y, w, alpha)
    analytic = net.grads.copy()
    assert isinstance(loss, float)
    assert loss == pytest.approx(reference_loss(net, X, Y, w, alpha), rel=1e-12)
    numeric = numerical_gradient(net, X, Y, w, alpha)
    assert_gradients_close(analytic, numeric)
    # Every parameter group actually receives gradient (no silently-zero block).
    n_W = net.n_penalized
    assert np.abs(analytic[:n_W]).max() > 1e-6 and np.abs(analytic[n_W:]).max() > 1e-6


def test_relu_kink_avoided_and_active():
    # The ReLU problems must exercise both sides of the kink, or the ReLU
    # gradient check above would test nothing beyond the identity.
    net, X, _, _ = make_problem("relu", "softmax", seed=ACTIVATION_NAMES.index("relu"))
    for Z in pre_activations(net, X)[:-1]:
        assert (Z < 0).any() and (Z > 0).any()
        assert np.abs(Z).min() > KINK_MARGIN


def test_l2_penalty_exact_and_biases_unpenalized():
    net, X, Y, w = make_problem("tanh", "softmax", seed=5)
    alpha = 0.37
    loss0 = net.loss_and_gradient(X, Y, w, 0.0)
    g0 = net.grads.copy()
    loss1 = net.loss_and_gradient(X, Y, w, alpha)
    g1 = net.grads.copy()
    W = np.concatenate([A.ravel() for A in net.parameter_arrays("W")])
    assert W.size == net.n_penalized
    assert loss1 - loss0 == pytest.approx(0.5 * alpha * W @ W / w.sum(), rel=1e-10)
    np.testing.assert_allclose(g1[:net.n_penalized] - g0[:net.n_penalized], alpha / w.sum() * W, rtol=1e-9, atol=1e-14)
    np.testing.assert_array_equal(g1[net.n_penalized:], g0[net.n_penalized:])


def test_weight_sum_override_scales_loss_and_gradient():
    net, X, Y, w = make_problem("logistic", "multilabel", seed=6)
    alpha = 0.2
    loss = net.loss_and_gradient(X, Y, w, alpha)
    g = net.grads.copy()
    S = 3.0 * w.sum()
    loss_S = net.loss_and_gradient(X, Y, w, alpha, weight_sum=S)
    assert loss_S == pytest.approx(reference_loss(net, X, Y, w, alpha, weight_sum=S), rel=1e-12)
    assert loss_S == pytest.approx(loss / 3.0, rel=1e-12)
    np.testing.assert_allclose(net.grads, g / 3.0, rtol=1e-12, atol=1e-16)


def test_unit_weights_equal_no_weights():
    net, X, Y, _ = make_problem("relu", "binary", seed=7)
    loss_none = net.loss_and_gradient(X, Y, None, 0.1)
    g_none = net.grads.copy()
    loss_ones = net.loss_and_gradient(X, Y, np.ones(len(X)), 0.1)
    assert loss_ones == pytest.approx(loss_none, rel=1e-14)
    np.testing.assert_allclose(net.grads, g_none, rtol=1e-13, atol=1e-16)


def test_flat_buffers_are_shared_with_layers():
    net, X, Y, _ = make_problem("tanh", "softmax", seed=8)
    W1 = net.parameter_arrays("W")[0]
    assert np.shares_memory(W1, net.params[:net.n_penalized])
    assert all(np.shares_memory(b, net.params[net.n_penalized:]) for b in net.parameter_arrays("b"))
    before = net.loss_and_gradient(X, Y)
    W1[0, 0] += 0.5  # a change through the view is a change of the network
    assert net.loss_and_gradient(X, Y) != before
    assert net.n_params == 3 * 5 + 5 * 4 + 4 * 3 + 5 + 4 + 3
    assert net.n_penalized == 3 * 5 + 5 * 4 + 4 * 3


def test_repeated_calls_and_batch_size_changes_are_stateless():
    net, X, Y, w = make_problem("relu", "softmax", seed=9)
    loss_a = net.loss_and_gradient(X, Y, w, 0.1)
    g_a = net.grads.copy()
    # A different batch size (buffers re-allocated), then the original again.
    net.loss_and_gradient(X[:4], Y[:4], w[:4], 0.1)
    g_small = net.grads.copy()
    loss_b = net.loss_and_gradient(X, Y, w, 0.1)
    assert loss_a == loss_b
    np.testing.assert_array_equal(net.grads, g_a)
    assert not np.allclose(g_small, g_a)
    # The training-mode forward pass equals the inference one (no dropout here).
    np.testing.assert_allclose(net.forward(X, training=True), net.forward(X), rtol=1e-14)
    np.testing.assert_allclose(net.predict_logits(X), net.forward(X), rtol=1e-12, atol=1e-14)


def test_input_not_modified():
    net, X, Y, w = make_problem("logistic", "softmax", seed=10)
    X0, Y0, w0 = X.copy(), Y.copy(), w.copy()
    net.loss_and_gradient(X, Y, w, 0.1)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(Y, Y0)
    np.testing.assert_array_equal(w, w0)


# ------------------------------------------------------------ activations
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_in_place_and_values(name):
    rng = np.random.default_rng(1)
    Z = rng.normal(scale=3.0, size=(7, 5))
    expected = ref_activation(name, Z)
    buf = Z.copy()
    out = ACTIVATIONS[name](buf)
    assert out is buf or name == "identity" and np.shares_memory(out, buf)
    np.testing.assert_allclose(buf, expected, rtol=1e-14, atol=1e-300)


@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_derivative_finite_differences(name):
    rng = np.random.default_rng(2)
    Z = rng.normal(scale=2.0, size=(8, 6))
    Z[np.abs(Z) < 1e-2] = 0.5  # keep away from the ReLU kink
    delta = rng.normal(size=Z.shape)
    A = ACTIVATIONS[name](Z.copy())
    h = 1e-6
    fd = (ACTIVATIONS[name](Z + h) - ACTIVATIONS[name](Z - h)) / (2 * h)
    d = delta.copy()
    out = DERIVATIVES[name](A, d)
    assert out is d  # multiplied in place
    np.testing.assert_allclose(d, delta * fd, rtol=1e-7, atol=1e-10)
    np.testing.assert_array_equal(A, ACTIVATIONS[name](Z.copy()))  # A is read-only input


def test_relu_derivative_zero_on_inactive_units():
    Z = np.array([[-2.0, -1e-12, 0.0, 1e-12, 3.0]])
    A = ACTIVATIONS["relu"](Z.copy())
    d = DERIVATIVES["relu"](A, np.ones_like(Z))
    np.testing.assert_array_equal(d, [[0, 0, 0, 1, 1]])


def test_logistic_activation_stable_for_huge_inputs():
    Z = np.array([-1e4, -800.0, -40.0, 0.0, 40.0, 800.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        A = ACTIVATIONS["logistic"](Z.copy())
    assert np.all(np.isfinite(A)) and np.all((A >= 0) & (A <= 1))
    np.testing.assert_allclose(A, [0, 0, 1 / (1 + np.exp(40.0)), 0.5, 1 / (1 + np.exp(-40.0)), 1, 1],
                               rtol=1e-14, atol=1e-300)
    A32 = ACTIVATIONS["logistic"](Z.astype(np.float32))
    assert A32.dtype == np.float32 and np.all(np.isfinite(A32))


# ------------------------------------------------------------------ dropout
def build_dropout(rate, shape=(4, 10), dtype="float64", seed=0):
    layer = Dropout(rate, seed=seed)
    layer.build(shape[1:], dtype)
    return layer


def expected_keep(layer, X, step=0):
    """The mask a stand-alone layer draws for X at training ``step``."""
    keys = row_hashes(X, _odd_salts(X[0].size, layer.seed))
    return layer.keep_mask(keys, step).reshape(X.shape)


@pytest.mark.parametrize("rate", [1e-12, 0.2, 0.25, 1 / 3, 0.5, 0.999999])
def test_survival_threshold_is_the_least_surviving_hash(rate):
    top = int(survival_threshold(rate)) >> 11  # the top 53 bits of that hash
    assert top * 2.0**-53 >= rate > (top - 1) * 2.0**-53
    assert int(survival_threshold(rate)) % 2**11 == 0


@pytest.mark.parametrize("rate", [1e-12, 0.2, 0.25, 1 / 3, 0.5, 0.999999])
def test_dropout_keep_mask_is_the_uniform_formula(rate):
    """The integer threshold on the hash keeps exactly the units whose
    uniform number (top 53 bits / 2**53) reaches the rate, and the reused
    buffers give every batch size and step its own mask."""
    layer = build_dropout(rate, shape=(1, 300), seed=11)
    keys = np.random.default_rng(12).integers(0, 2**63, 40, dtype=np.uint64)
    for n, step in [(40, 0), (7, 3), (40, 2**40), (7, 3)]:
        with np.errstate(over="ignore"):
            step_salt = mix64(np.uint64(layer.seed) ^ (np.uint64(step) * _GOLDEN))
            hashes = mix64((keys[:n, None] ^ step_salt) + layer._unit_salts[None, :])
        uniform = (hashes >> np.uint64(11)).astype(np.float64) / 2.0**53
        np.testing.assert_array_equal(layer.keep_mask(keys[:n], step), uniform >= rate)
    kept = layer.keep_mask(keys, 5).mean()
    assert abs(kept - (1 - rate)) < 0.02


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_dropout_forward_backward_apply_the_mask(rate):
    X = np.random.default_rng(3).normal(size=(4, 10))
    layer = build_dropout(rate)
    keep = expected_keep(layer, X)
    Yout = layer.forward(X.copy(), training=True).copy()
    assert keep.any() and (~keep).any()
    mask = keep / (1.0 - rate)
    np.testing.assert_allclose(Yout, X * mask, rtol=1e-15)
    dY = np.random.default_rng(4).normal(size=X.shape)
    dX = layer.backward(dY.copy())
    np.testing.assert_allclose(dX, dY * mask, rtol=1e-15)
    assert np.all(dX[~keep] == 0)


def test_dropout_inference_is_identity():
    X = np.random.default_rng(5).normal(size=(4, 10))
    layer = build_dropout(0.5)
    out = layer.forward(X)
    np.testing.assert_array_equal(out, X)
    # Training mode with rate 0 is the identity too, forward and backward.
    layer0 = build_dropout(0.0)
    np.testing.assert_array_equal(layer0.forward(X, training=True), X)
    dY = np.ones_like(X)
    np.testing.assert_array_equal(layer0.backward(dY.copy()), dY)


def test_dropout_preserves_mean_scale():
    rate = 0.3
    n = 200_000
    layer = build_dropout(rate, shape=(1, n), seed=11)
    X = np.full((1, n), 2.0)
    out = layer.forward(X, training=True)
    drop_frac = np.mean(out == 0)
    sd = np.sqrt(rate * (1 - rate) / n)
    assert abs(drop_frac - rate) < 5 * sd
    # E[output] = input: survivors are scaled by 1 / (1 - rate).
    assert out.mean() == pytest.approx(2.0, abs=5 * 2.0 * sd / (1 - rate))
    np.testing.assert_allclose(np.unique(out), [0.0, 2.0 / (1 - rate)], rtol=1e-15)


def test_dropout_new_mask_each_step_same_mask_same_step():
    layer = build_dropout(0.5)
    X = np.ones((4, 10))
    a = layer.forward(X, training=True, batch=Batch(step=0)).copy()
    b = layer.forward(X, training=True, batch=Batch(step=1)).copy()
    again = layer.forward(X, training=True, batch=Batch(step=1)).copy()
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(again, b)


def test_dropout_mask_follows_the_sample_not_its_position():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(6, 10))
    batch = build_dropout(0.5, seed=3)
    masks = batch.forward(X, training=True) != 0
    shuffled = build_dropout(0.5, seed=3)
    order = rng.permutation(6)
    masks_shuffled = shuffled.forward(X[order], training=True) != 0
    np.testing.assert_array_equal(masks_shuffled, masks[order])
    repeated = build_dropout(0.5, seed=3)
    np.testing.assert_array_equal(repeated.forward(np.vstack([X[2], X[2]]), training=True) != 0,
                                  masks[[2, 2]])


def test_dropout_units_and_steps_are_roughly_independent():
    layer = build_dropout(0.5, shape=(1, 400), seed=1)
    X = np.ones((1, 400))
    masks = np.array([layer.forward(X, training=True, batch=Batch(step=k))[0] != 0
                      for k in range(200)])
    assert abs(masks.mean() - 0.5) < 0.01
    # Across steps each unit is kept about half the time; units are uncorrelated.
    assert np.all(np.abs(masks.mean(axis=0) - 0.5) < 0.2)
    corr = np.corrcoef(masks[:, :50].T.astype(float))
    assert np.abs(corr[np.triu_indices(50, 1)]).max() < 0.35


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_rate(rate):
    with pytest.raises(ValueError):
        Dropout(rate)


def test_dropout_float32_training():
    """ENGINE BUG: Dropout.forward(training=True) fails for float32.

    ``self.rng.random(out=mask)`` with a float32 ``mask`` raises
    ``TypeError: Supplied output array has the wrong type. Expected float64,
    got float32`` because ``Generator.random`` defaults to ``dtype=float64``;
    it needs ``dtype=self.dtype``.  Every float32 network (the default dtype)
    with a Dropout layer therefore cannot train.
    """
    rate = 0.4
    layer = build_dropout(rate, dtype="float32")
    X = np.random.default_rng(6).normal(size=(4, 10)).astype(np.float32)
    try:
        out = layer.forward(X, training=True)
    except TypeError as exc:
        pytest.fail(f"ENGINE BUG: float32 Dropout cannot run in training mode: {exc}")
    assert out.dtype == np.float32
    kept = out != 0
    assert kept.any() and (~kept).any()
    np.testing.assert_allclose(out[kept], X[kept] / np.float32(1 - rate), rtol=1e-6)
    dY = np.ones_like(X)
    dX = layer.backward(dY.copy())
    assert dX.dtype == np.float32
    np.testing.assert_array_equal(dX == 0, ~kept)


def dropout_arch(activation, k):
    return [Dense(5, activation), Dropout(0.4), Dense(4, activation), Dropout(0.25), Dense(k)]


@pytest.mark.parametrize("target", ["softmax", "multilabel"])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_network_with_dropout_gradient_fixed_mask(activation, target):
    net, X, Y, w = make_problem(activation, target, seed=20, layers=dropout_arch)
    dropouts = [layer for layer in net.layers if isinstance(layer, Dropout)]

    # The mask is a function of (input rows, unit, step, seed): step 0 twice.
    loss = net.loss_and_gradient(X, Y, w, 0.1, step=0)
    analytic = net.grads.copy()
    masks = [layer._buffers["mask"].copy() for layer in dropouts]
    assert all((m == 0).any() and (m != 0).any() for m in masks)  # dropout really active
    # Same mask, same loss: the loss is a deterministic function of params.
    assert net.loss_and_gradient(X, Y, w, 0.1, step=0) == loss
    # The mask makes training loss differ from the dropout-free loss.
    assert loss != pytest.approx(reference_loss(net, X, Y, w, 0.1), rel=1e-6)
    numeric = numerical_gradient(net, X, Y, w, 0.1)
    assert_gradients_close(analytic, numeric)


# ------------------------------------------------------------------ float32
@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("activation", ACTIVATION_NAMES)
def test_float32_gradient_matches_float64(activation, target):
    net64, X, Y, w = make_problem(activation, target, seed=30)
    output, k = TARGETS[target]
    net32 = Network([Dense(5, activation), Dense(4, activation), Dense(k)], output, "float32")
    net32.build((N_FEATURES,), np.random.RandomState(0), activation=activation)
    net32.params[:] = net64.params.astype(np.float32)
    params32 = net32.params.astype(np.float64)
    net64.params[:] = params32  # both nets at exactly the same point
    loss64 = net64.loss_and_gradient(X, Y, w, 0.1)
    loss32 = net32.loss_and_gradient(X.astype(np.float32), Y.astype(np.float32), w.astype(np.float32), 0.1)
    assert net32.params.dtype == net32.grads.dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    g64 = net64.grads
    g32 = net32.grads.astype(np.float64)
    scale = np.abs(g64).max()
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5 * scale)
    assert np.linalg.norm(g32 - g64) / np.linalg.norm(g64) < 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5), (2, 300, 900), (0, 4)])
def test_relu_in_blocks_equals_the_plain_maximum(dtype, shape):
    from skdigits.nn.activations import relu

    Z = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    if Z.size:
        Z.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -0.0]
    expected = np.maximum(Z, 0)
    out = relu(Z)
    assert out is Z
    np.testing.assert_array_equal(out, expected)  # NaN where NaN, spanning several blocks
    strided = np.random.default_rng(1).standard_normal((6, 8)).astype(dtype)[:, ::2]
    expected = np.maximum(strided, 0)
    assert relu(strided) is strided  # not contiguous: in place all the same
    np.testing.assert_array_equal(strided, expected)
