"""BatchNorm and Activation: references, finite differences, weights, state.

The weighted batch statistics are checked against a loop-based reference and
against the same batch with repeated rows; every backward pass against
central differences of its forward pass, alone and inside a network.
"""

import copy
import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skops.io as sio

from skdigits.concurrency import DataParallel
from skdigits.nn import (ACTIVATIONS, Activation, Batch, BatchNorm, Conv2D, Dense, Flatten,
                         Network)
from skdigits.persistence import trusted_types

ACTIVATION_NAMES = ["identity", "logistic", "tanh", "relu"]
EPS = 1e-5
H = 1e-5  # finite-difference step
# Per-sample shapes: after a Dense layer, after a Conv2D layer, one image.
BATCH_SHAPES = {"dense": (6, 4), "conv": (3, 2, 3, 2), "one-image": (1, 3, 2, 2)}


# ------------------------------------------------------------ helpers
def make_bn(shape, dtype="float64", momentum=0.1, seed=0):
    """A built, bound BatchNorm for batches of ``shape`` with generic gamma, beta."""
    rng = np.random.default_rng(seed)
    layer = BatchNorm(momentum=momentum)
    layer.build(shape[1:], dtype)
    c = shape[-1]
    params = {"gamma": rng.uniform(0.5, 2.0, c).astype(dtype),
              "beta": rng.normal(size=c).astype(dtype)}
    layer.bind(params, {name: np.zeros(c, dtype=dtype) for name in params})
    return layer


def draw(shape, seed, dtype="float64"):
    rng = np.random.default_rng(seed)
    # An offset and a scale per channel, so normalising has work to do.
    return (rng.normal(size=shape) * rng.uniform(0.5, 3.0, shape[-1])
            + rng.normal(scale=2.0, size=shape[-1])).astype(dtype)


def naive_batchnorm(X, gamma, beta, weights=None, eps=EPS):
    """Loop-based training forward: weighted mean and biased variance per channel."""
    n, c = X.shape[0], X.shape[-1]
    rows = X.reshape(n, -1, c)
    w = np.ones(n) if weights is None else weights
    Y = np.empty(rows.shape)
    means, variances = np.empty(c), np.empty(c)
    for k in range(c):
        total = s = 0.0
        for i in range(n):
            for q in range(rows.shape[1]):
                total += w[i]
                s += w[i] * rows[i, q, k]
        mean = s / total
        var = sum(w[i] * (rows[i, q, k] - mean) ** 2
                  for i in range(n) for q in range(rows.shape[1])) / total
        for i in range(n):
            for q in range(rows.shape[1]):
                Y[i, q, k] = gamma[k] * (rows[i, q, k] - mean) / np.sqrt(var + eps) + beta[k]
        means[k], variances[k] = mean, var
    return Y.reshape(X.shape), means, variances


def central_differences(f, x):
    """d f() / d x by central differences, perturbing ``x`` in place."""
    grad = np.empty(x.shape)
    flat = x.reshape(-1)
    assert np.shares_memory(flat, x)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        plus = f()
        flat[i] = old - H
        minus = f()
        flat[i] = old
        grad.flat[i] = (plus - minus) / (2 * H)
    return grad


def assert_gradients_close(analytic, numeric):
    denom = np.linalg.norm(analytic) + np.linalg.norm(numeric)
    assert denom > 0
    assert np.linalg.norm(analytic - numeric) / denom < 1e-7
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def sample_weights(n, seed):
    return np.random.default_rng(seed).uniform(0.2, 3.0, n)


# ----------------------------------------------------------- forward pass
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", list(BATCH_SHAPES.values()), ids=list(BATCH_SHAPES))
def test_training_forward_matches_naive_reference(shape, weighted):
    layer = make_bn(shape, momentum=1.0)  # running stats become the batch stats
    X = draw(shape, seed=1)
    w = sample_weights(shape[0], seed=2) if weighted else None
    Y = layer.forward(X, training=True, batch=Batch(weights=w))
    Y_ref, mean, var = naive_batchnorm(X, layer.params["gamma"], layer.params["beta"], w)
    assert Y.shape == X.shape
    np.testing.assert_allclose(Y, Y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.running_mean, mean, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(layer.running_var, var, rtol=1e-12)


def test_input_is_not_modified():
    layer = make_bn((6, 4))
    X = draw((6, 4), seed=3)
    X0 = X.copy()
    layer.forward(X, training=True)
    layer.backward(np.ones_like(X))
    layer.forward(X)
    np.testing.assert_array_equal(X, X0)


# --------------------------------------------------------- finite differences
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("shape", list(BATCH_SHAPES.values()), ids=list(BATCH_SHAPES))
def test_gradients_by_finite_differences(shape, weighted):
    layer = make_bn(shape, seed=4)
    X = draw(shape, seed=5)
    R = np.random.default_rng(6).normal(size=shape)  # d loss / d Y of loss = sum(Y * R)
    batch = Batch(weights=sample_weights(shape[0], seed=7) if weighted else None)

    def loss():
        return float(np.sum(layer.forward(X, training=True, batch=batch) * R))

    loss()
    dX = layer.backward(R.copy()).copy()
    d_gamma, d_beta = layer.grads["gamma"].copy(), layer.grads["beta"].copy()
    assert_gradients_close(dX, central_differences(loss, X))
    assert_gradients_close(d_gamma, central_differences(loss, layer.params["gamma"]))
    assert_gradients_close(d_beta, central_differences(loss, layer.params["beta"]))
    # need_input_grad=False writes the same parameter gradients and returns None.
    loss()
    assert layer.backward(R.copy(), need_input_grad=False) is None
    np.testing.assert_array_equal(layer.grads["gamma"], d_gamma)
    np.testing.assert_array_equal(layer.grads["beta"], d_beta)


def make_bn_network(k, seed, weighted):
    """Dense(identity) -> BatchNorm -> ReLU -> Dense, drawn until no ReLU input is near 0."""
    for attempt in range(100):
        rng = np.random.default_rng(100 * seed + attempt)
        net = Network([Dense(5, "identity"), BatchNorm(), Activation("relu"), Dense(k)],
                      "softmax", "float64").build((3,), np.random.RandomState(attempt), seed=0)
        net.params[:] = rng.normal(scale=0.7, size=net.n_params)
        X = rng.normal(size=(7, 3))
        w = rng.uniform(0.3, 2.5, len(X)) if weighted else None
        dense, bn = net.layers[0], net.layers[1]
        Z, _, _ = naive_batchnorm(X @ dense.params["W"] + dense.params["b"],
                                  bn.params["gamma"], bn.params["beta"], w)
        if np.abs(Z).min() > 1e-3 and (Z > 0).any() and (Z < 0).any():
            Y = np.eye(k)[rng.integers(0, k, len(X))]
            return net, X, Y, w
    raise RuntimeError("could not draw a kink-free problem")


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_network_gradient_by_finite_differences(weighted):
    net, X, Y, w = make_bn_network(3, seed=1, weighted=weighted)
    alpha = 0.1
    net.loss_and_gradient(X, Y, w, alpha)
    analytic = net.grads.copy()
    numeric = central_differences(lambda: net.loss_and_gradient(X, Y, w, alpha), net.params)
    assert_gradients_close(analytic, numeric)
    bn = net.layers[1]
    assert np.abs(bn.grads["gamma"]).max() > 1e-4 and np.abs(bn.grads["beta"]).max() > 1e-4


def test_conv_network_gradient_by_finite_differences():
    rng = np.random.default_rng(8)
    net = Network([Conv2D(2, kernel_size=2, activation="identity"), BatchNorm(),
                   Activation("tanh"), Flatten(), Dense(3)], "softmax", "float64")
    net.build((4, 4, 1), np.random.RandomState(0), seed=0)
    net.params[:] = rng.normal(scale=0.7, size=net.n_params)
    X = rng.normal(size=(3, 4, 4, 1))
    Y = np.eye(3)
    w = rng.uniform(0.3, 2.5, 3)
    net.loss_and_gradient(X, Y, w)
    analytic = net.grads.copy()
    numeric = central_differences(lambda: net.loss_and_gradient(X, Y, w), net.params)
    assert_gradients_close(analytic, numeric)


def test_gamma_and_beta_are_not_penalized():
    net, X, Y, w = make_bn_network(3, seed=2, weighted=False)
    assert net.layers[1].param_specs() == [("gamma", (5,), False), ("beta", (5,), False)]
    assert net.n_penalized == 3 * 5 + 5 * 3
    assert net.n_params == net.n_penalized + 5 + 5 + 5 + 3
    net.loss_and_gradient(X, Y, w, 0.0)
    g0 = net.grads.copy()
    net.loss_and_gradient(X, Y, w, 0.5)
    np.testing.assert_array_equal(net.grads[net.n_penalized:], g0[net.n_penalized:])


# ---------------------------------------------------------- sample weights
@pytest.mark.parametrize("shape", [(5, 3), (5, 2, 3, 2)], ids=["dense", "conv"])
def test_integer_weights_equal_repeated_rows(shape):
    counts = np.array([1, 3, 0, 2, 1])
    X = draw(shape, seed=9)
    weighted, repeated = make_bn(shape, seed=10), make_bn(shape, seed=10)
    Y_w = weighted.forward(X, training=True, batch=Batch(weights=counts.astype(float)))
    X_rep = np.repeat(X, counts, axis=0)  # the weight-0 row is gone
    Y_rep = repeated.forward(X_rep, training=True)
    np.testing.assert_allclose(np.repeat(Y_w, counts, axis=0), Y_rep, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weighted.running_mean, repeated.running_mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(weighted.running_var, repeated.running_var, rtol=1e-12)

    # Per-sample loss gradients G; the weighted loss scales them by the weights.
    G = np.random.default_rng(11).normal(size=shape)
    dX_w = weighted.backward(G * counts.reshape((-1,) + (1,) * (len(shape) - 1)))
    dX_rep = repeated.backward(np.repeat(G, counts, axis=0))
    np.testing.assert_allclose(weighted.grads["gamma"], repeated.grads["gamma"], rtol=1e-11)
    np.testing.assert_allclose(weighted.grads["beta"], repeated.grads["beta"], rtol=1e-11)
    # A sample of weight c gets the summed gradient of its c copies.
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    summed = np.add.reduceat(dX_rep, starts[counts > 0], axis=0)
    np.testing.assert_allclose(dX_w[counts > 0], summed, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(dX_w[counts == 0], 0)


def test_unit_weights_equal_no_weights():
    X = draw((6, 4), seed=12)
    a, b = make_bn((6, 4)), make_bn((6, 4))
    np.testing.assert_allclose(a.forward(X, training=True, batch=Batch(weights=np.ones(6))),
                               b.forward(X, training=True), rtol=1e-14, atol=1e-14)
    dY = draw((6, 4), seed=13)
    np.testing.assert_allclose(a.backward(dY.copy()), b.backward(dY.copy()), rtol=1e-13, atol=1e-14)


def test_weights_summing_to_zero_leave_running_stats_alone():
    X = draw((6, 4), seed=14)
    layer, unweighted = make_bn((6, 4)), make_bn((6, 4))
    Y = layer.forward(X, training=True, batch=Batch(weights=np.zeros(6)))
    assert np.isfinite(Y).all()
    np.testing.assert_allclose(Y, unweighted.forward(X, training=True), rtol=1e-14)
    np.testing.assert_array_equal(layer.running_mean, 0.0)
    np.testing.assert_array_equal(layer.running_var, 1.0)
    # The upstream gradient of zero-weight samples is 0, and so is dX.
    np.testing.assert_array_equal(layer.backward(np.zeros_like(X)), 0.0)


@pytest.mark.parametrize("weights, match", [
    (np.array([1.0, -1.0, 2.0]), "finite and >= 0"),
    (np.array([1.0, np.nan, 2.0]), "finite and >= 0"),
    (np.array([1.0, 2.0]), r"shape \(2,\) for a batch of 3"),
])
def test_bad_weights_are_refused(weights, match):
    layer = make_bn((3, 2))
    with pytest.raises(ValueError, match=match):
        layer.forward(draw((3, 2), seed=0), training=True, batch=Batch(weights=weights))


# ------------------------------------------------------- running statistics
def test_running_stats_follow_batches_and_inference_uses_them():
    layer = make_bn((8, 3), momentum=0.1)
    X1, X2 = draw((8, 3), seed=15), draw((8, 3), seed=16)
    layer.forward(X1, training=True)
    np.testing.assert_allclose(layer.running_mean, 0.1 * X1.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * X1.var(axis=0), rtol=1e-13)
    Y_train = layer.forward(X2, training=True).copy()
    mean = 0.9 * 0.1 * X1.mean(axis=0) + 0.1 * X2.mean(axis=0)
    var = 0.9 * (0.9 + 0.1 * X1.var(axis=0)) + 0.1 * X2.var(axis=0)
    np.testing.assert_allclose(layer.running_mean, mean, rtol=1e-13)
    np.testing.assert_allclose(layer.running_var, var, rtol=1e-13)

    gamma, beta = layer.params["gamma"], layer.params["beta"]
    state = layer.running_mean.copy(), layer.running_var.copy()
    Y = layer.forward(X2)
    np.testing.assert_allclose(Y, gamma * (X2 - mean) / np.sqrt(var + EPS) + beta, rtol=1e-13, atol=1e-13)
    assert not np.allclose(Y, Y_train)  # not the batch statistics
    np.testing.assert_array_equal(layer.running_mean, state[0])  # inference updates nothing
    np.testing.assert_array_equal(layer.running_var, state[1])


def test_inference_keeps_no_state_and_runs_from_several_threads():
    layer = make_bn((5, 2, 2, 3))
    layer.forward(draw((5, 2, 2, 3), seed=17), training=True)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(layer).items()}
    buffers = dict(layer._buffers)
    batches = [draw((4, 2, 2, 3), seed=s) for s in range(6)]
    serial = [layer.forward(X) for X in batches]
    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = list(pool.map(layer.forward, batches))
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)
    assert not any(np.shares_memory(Y, buf) for Y in serial for buf in buffers.values())
    assert vars(layer).keys() == before.keys()
    for key, value in before.items():
        np.testing.assert_array_equal(vars(layer)[key], value)
    assert all(layer._buffers[k] is buf for k, buf in buffers.items())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(9, 5), (6, 3, 3, 4)], ids=["dense", "conv"])
def test_inference_on_one_row_equals_that_row_in_a_batch(shape, dtype):
    layer = make_bn(shape, dtype)
    layer.forward(draw(shape, seed=18, dtype=dtype), training=True)
    X = draw(shape, seed=19, dtype=dtype)
    Y = layer.forward(X)
    assert Y.dtype == dtype
    for i in (0, 4):
        np.testing.assert_array_equal(layer.forward(X[i:i + 1])[0], Y[i])


def test_build_keeps_running_stats_and_initial_params_reset_them():
    layer = make_bn((8, 3))
    layer.forward(draw((8, 3), seed=20), training=True)
    mean, var = layer.running_mean.copy(), layer.running_var.copy()
    layer.build((3,), "float64")  # a network re-builds its layers on load
    np.testing.assert_array_equal(layer.running_mean, mean)
    np.testing.assert_array_equal(layer.running_var, var)
    layer.build((4,), "float64")  # another channel count: fresh statistics
    np.testing.assert_array_equal(layer.running_mean, np.zeros(4))
    np.testing.assert_array_equal(layer.running_var, np.ones(4))
    layer = make_bn((8, 3))
    layer.forward(draw((8, 3), seed=20), training=True)
    init = layer.initial_params(None, None, None)  # new parameters, new statistics
    np.testing.assert_array_equal(init["gamma"], 1.0)
    np.testing.assert_array_equal(init["beta"], 0.0)
    np.testing.assert_array_equal(layer.running_mean, 0.0)
    np.testing.assert_array_equal(layer.running_var, 1.0)


def trained_bn_network(dtype="float64"):
    rng = np.random.default_rng(21)
    net = Network([Dense(6, "identity"), BatchNorm(), Activation("relu"), Dense(3)],
                  "softmax", dtype).build((4,), np.random.RandomState(0), seed=0)
    X = rng.normal(size=(30, 4)).astype(dtype)
    Y = np.eye(3, dtype=dtype)[rng.integers(0, 3, 30)]
    for step in range(5):
        rows = slice(6 * step, 6 * step + 6)
        net.loss_and_gradient(X[rows], Y[rows], step=step)
        net.params -= net.dtype.type(0.1) * net.grads
    return net, X


def test_pickle_skops_and_deepcopy_keep_running_stats_and_predictions():
    net, X = trained_bn_network()
    bn = net.layers[1]
    assert not np.allclose(bn.running_mean, 0.0) and not np.allclose(bn.running_var, 1.0)
    expected = net.predict_logits(X)
    from_pickle = pickle.loads(pickle.dumps(net))
    data = sio.dumps(net)
    assert set(sio.get_untrusted_types(data=data)) <= set(trusted_types())
    from_skops = sio.loads(data, trusted=trusted_types())
    for loaded in (from_pickle, from_skops, copy.deepcopy(net)):  # deepcopy: snapshots
        loaded_bn = loaded.layers[1]
        np.testing.assert_array_equal(loaded_bn.running_mean, bn.running_mean)
        np.testing.assert_array_equal(loaded_bn.running_var, bn.running_var)
        np.testing.assert_array_equal(loaded.predict_logits(X), expected)
        assert np.shares_memory(loaded_bn.params["gamma"], loaded.params)
        # The copy trains on its own statistics.
        loaded.loss_and_gradient(X[:6], np.eye(3)[[0, 1, 2, 0, 1, 2]])
        assert not np.array_equal(loaded_bn.running_mean, bn.running_mean)
    np.testing.assert_array_equal(net.predict_logits(X), expected)


def test_network_inference_matches_the_formula():
    net, X = trained_bn_network()
    dense, bn, _, out = net.layers
    Z = X @ dense.params["W"] + dense.params["b"]
    Z = bn.params["gamma"] * (Z - bn.running_mean) / np.sqrt(bn.running_var + EPS) + bn.params["beta"]
    logits = np.maximum(Z, 0) @ out.params["W"] + out.params["b"]
    np.testing.assert_allclose(net.predict_logits(X), logits, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------ row coupling
def test_batchnorm_couples_rows_but_sums_across_shards():
    """Batch norm's rows are not independent, but its statistics add up over
    row shards, so its networks still shard (tests/test_nn_parallel.py
    checks the sums)."""
    assert BatchNorm.rows_independent is False and Activation.rows_independent is True
    assert BatchNorm.sums_across_shards is True and Dense.sums_across_shards is False
    net, _ = trained_bn_network()
    assert net.rows_independent is False and net.shardable is True
    # An MLP with batch norm splits its products by default (test_nn_parallel.py).
    assert DataParallel(net, concurrent=False, strategy="rows").splits(10**7)
    plain = Network([Dense(6, "identity"), Activation("relu"), Dense(3)], "softmax", "float64")
    plain.build((4,), np.random.RandomState(0))
    assert plain.rows_independent and plain.shardable
    assert DataParallel(plain, concurrent=False).splits(10**7)


def test_replica_shares_running_stats_like_parameters():
    net, X = trained_bn_network()
    twin = net.replica()
    bn, twin_bn = net.layers[1], twin.layers[1]
    assert twin_bn is not bn
    assert twin_bn.running_mean is bn.running_mean and twin_bn.running_var is bn.running_var
    twin.loss_and_gradient(X[:6], np.eye(3)[[0, 1, 2, 0, 1, 2]])
    np.testing.assert_array_equal(net.predict_logits(X), twin.predict_logits(X))


# ------------------------------------------------------------- edge cases
def test_single_row_batch_outputs_beta_and_stays_finite():
    layer = make_bn((1, 4))
    X = draw((1, 4), seed=22)
    with np.errstate(all="raise"):
        Y = layer.forward(X, training=True)
        np.testing.assert_array_equal(Y, layer.params["beta"][None, :])
        dY = draw((1, 4), seed=23)
        dX = layer.backward(dY.copy())
    np.testing.assert_array_equal(dX, 0.0)
    np.testing.assert_array_equal(layer.grads["gamma"], 0.0)
    np.testing.assert_array_equal(layer.grads["beta"], dY[0])
    # A single row is no estimate of the spread: the running statistics stay.
    np.testing.assert_array_equal(layer.running_var, 1.0)
    np.testing.assert_array_equal(layer.running_mean, 0.0)


def test_constant_feature_stays_finite():
    layer = make_bn((6, 3))
    X = draw((6, 3), seed=24)
    X[:, 1] = 7.25
    dY = draw((6, 3), seed=25)
    with np.errstate(all="raise"):
        Y = layer.forward(X, training=True)
        dX = layer.backward(dY.copy())
    np.testing.assert_allclose(Y[:, 1], layer.params["beta"][1], atol=1e-9)
    assert np.isfinite(dX).all()
    # Variance 0: the map is x -> gamma (x - mean) / sqrt(epsilon) + beta, and so is its gradient.
    expected = layer.params["gamma"][1] / np.sqrt(EPS) * (dY[:, 1] - dY[:, 1].mean())
    np.testing.assert_allclose(dX[:, 1], expected, rtol=1e-9)


def test_float32_close_to_float64():
    shape = (6, 2, 2, 3)
    X = draw(shape, seed=26)
    w = sample_weights(shape[0], seed=27)
    dY = draw(shape, seed=28)
    results = {}
    for dtype in ("float32", "float64"):
        layer = make_bn(shape, dtype)
        Y = layer.forward(X.astype(dtype), training=True, batch=Batch(weights=w)).copy()
        dX = layer.backward(dY.astype(dtype))
        assert Y.dtype == dX.dtype == layer.grads["gamma"].dtype == dtype
        results[dtype] = Y, dX, layer.grads["gamma"].copy(), layer.grads["beta"].copy(), layer.forward(X.astype(dtype))
    for r32, r64 in zip(results["float32"], results["float64"]):
        np.testing.assert_allclose(r32, r64, rtol=1e-4, atol=1e-4 * np.abs(r64).max())


@pytest.mark.parametrize("kwargs, match", [
    ({"momentum": 0.0}, "momentum"), ({"momentum": 1.5}, "momentum"),
    ({"epsilon": 0.0}, "epsilon"), ({"epsilon": float("nan")}, "epsilon"),
])
def test_bad_hyperparameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchNorm(**kwargs)


def test_empty_batch_and_scalar_samples_are_refused():
    with pytest.raises(ValueError, match="empty batch"):
        make_bn((3, 2)).forward(np.empty((0, 2)), training=True)
    with pytest.raises(ValueError, match="at least one axis"):
        BatchNorm().build((), "float64")


# ------------------------------------------------------------ Activation
@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 2, 3)], ids=["dense", "conv"])
@pytest.mark.parametrize("name", ACTIVATION_NAMES)
def test_activation_gradient_by_finite_differences(name, shape):
    rng = np.random.default_rng(29)
    X = rng.normal(scale=2.0, size=shape)
    X[np.abs(X) < 1e-2] = 0.5  # away from the ReLU kink
    R = rng.normal(size=shape)
    layer = Activation(name)
    layer.build(shape[1:], "float64")

    def loss():
        return float(np.sum(layer.forward(X, training=True) * R))

    X0 = X.copy()
    A = layer.forward(X, training=True)
    np.testing.assert_array_equal(X, X0)  # the input is left alone
    np.testing.assert_allclose(A, ACTIVATIONS[name](X.copy()), rtol=1e-15)
    np.testing.assert_array_equal(layer.forward(X), A)  # inference equals training
    dA = R.copy()
    dX = layer.backward(dA)
    assert dX is dA  # in place
    assert_gradients_close(dX, central_differences(loss, X))
    assert layer.backward(R.copy(), need_input_grad=False) is None


def test_activation_float32_and_bad_name():
    layer = Activation("tanh")
    layer.build((4,), "float32")
    X = np.random.default_rng(30).normal(size=(3, 4)).astype(np.float32)
    assert layer.forward(X, training=True).dtype == layer.forward(X).dtype == np.float32
    identity = Activation("identity")
    identity.build((4,), "float32")
    assert identity.forward(X) is X
    with pytest.raises(ValueError, match="'softplus'"):
        Activation("softplus")


def test_dense_batchnorm_activation_replaces_fused_dense():
    """Dense(identity) -> Activation(relu) computes what Dense(relu) does, forward and backward."""
    rng = np.random.default_rng(31)
    fused = Network([Dense(5, "relu"), Dense(3)], "softmax", "float64").build(
        (4,), np.random.RandomState(0))
    split = Network([Dense(5, "identity"), Activation("relu"), Dense(3)], "softmax", "float64").build(
        (4,), np.random.RandomState(0))
    split.params[:] = fused.params
    X, Y = rng.normal(size=(8, 4)), np.eye(3)[rng.integers(0, 3, 8)]
    assert split.loss_and_gradient(X, Y) == pytest.approx(fused.loss_and_gradient(X, Y), rel=1e-14)
    np.testing.assert_allclose(split.grads, fused.grads, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(split.predict_logits(X), fused.predict_logits(X), rtol=1e-14)
