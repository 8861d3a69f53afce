"""Optimizers, learning-rate schedules, L-BFGS and initialisers of ``skdigits.nn``.

The update rules are checked three ways: against numbers worked out by hand
(constant gradients, where the recurrences have closed forms), against the
formulas written out element by element in plain Python, and against
scikit-learn's own ``SGDOptimizer`` / ``AdamOptimizer``.
"""

import math
import warnings

import numpy as np
import pytest

from skdigits.nn import SGD, Adam, Dense, INITIALIZERS, Network, glorot_uniform, he_normal, minimize_lbfgs

P0 = [1.0, -2.0, 0.5, 3.0]
G_CONST = [1.0, -2.0, 4.0, 0.0]
# Three different gradients, one per step, for the written-out recurrences.
G_SEQ = [[0.5, -1.0, 2.0, 0.0],
         [-0.25, 0.75, 1.5, 1e-3],
         [1.0, 0.1, -3.0, -2.0]]


# ---------------------------------------------------------------- SGD
@pytest.mark.parametrize("momentum,nesterov,total", [
    (0.0, False, 0.3),      # 0.1 + 0.1 + 0.1
    (0.0, True, 0.3),       # Nesterov with zero momentum is plain SGD
    (0.9, False, 0.561),    # v: 0.1, 0.19, 0.271
    (0.9, True, 0.8049),    # u = 0.9 v - 0.1 g: 0.19, 0.271, 0.3439
])
def test_sgd_hand_computed_constant_gradient(momentum, nesterov, total):
    p = np.array(P0)
    g = np.array(G_CONST)
    opt = SGD(p, learning_rate_init=0.1, momentum=momentum, nesterov=nesterov)
    for _ in range(3):
        opt.step(g)
    np.testing.assert_allclose(p, np.array(P0) - total * g, rtol=1e-14, atol=1e-15)
    assert opt.params is p  # updated in place


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_written_out_recurrence(momentum, nesterov):
    lr = 0.05
    p = np.array(P0)
    opt = SGD(p, learning_rate_init=lr, momentum=momentum, nesterov=nesterov)
    expected = list(P0)
    velocity = [0.0] * len(P0)
    for g in G_SEQ:
        for j in range(len(P0)):
            velocity[j] = momentum * velocity[j] - lr * g[j]
            update = momentum * velocity[j] - lr * g[j] if nesterov else velocity[j]
            expected[j] += update
        opt.step(np.array(g))
        np.testing.assert_allclose(p, expected, rtol=1e-14, atol=1e-16)
        np.testing.assert_allclose(opt.velocity, velocity, rtol=1e-14, atol=1e-16)


def test_sgd_invscaling_schedule():
    p = np.zeros(3)
    opt = SGD(p, learning_rate_init=0.1, lr_schedule="invscaling", momentum=0.0, power_t=0.5)
    assert opt.learning_rate == 0.1
    opt.iteration_ends(99)
    assert opt.learning_rate == pytest.approx(0.1 / 100 ** 0.5, rel=1e-15)  # 0.01
    opt.step(np.array([1.0, -2.0, 0.0]))
    np.testing.assert_allclose(p, [-0.01, 0.02, 0.0], rtol=1e-14)
    opt.iteration_ends(15)  # computed from the initial rate, not compounded
    assert opt.learning_rate == pytest.approx(0.1 / 16 ** 0.5, rel=1e-15)
    opt2 = SGD(np.zeros(1), learning_rate_init=0.2, lr_schedule="invscaling", power_t=0.25)
    opt2.iteration_ends(80)
    assert opt2.learning_rate == pytest.approx(0.2 / 3.0, rel=1e-14)  # 81 ** 0.25 = 3
    # The invscaling rate does not stop training early: stopping is immediate.
    assert opt2.trigger_stopping("no improvement.", verbose=False) is True


@pytest.mark.parametrize("schedule", ["constant", "adaptive"])
def test_sgd_iteration_ends_leaves_rate_for_other_schedules(schedule):
    opt = SGD(np.zeros(2), learning_rate_init=0.3, lr_schedule=schedule)
    opt.iteration_ends(1000)
    assert opt.learning_rate == 0.3


def test_sgd_adaptive_schedule_divides_by_five_then_stops(capsys):
    opt = SGD(np.zeros(2), learning_rate_init=1e-3, lr_schedule="adaptive")
    rates = []
    while not opt.trigger_stopping("Validation score did not improve.", verbose=True):
        rates.append(opt.learning_rate)
        assert len(rates) < 50
    np.testing.assert_allclose(rates, [2e-4, 4e-5, 8e-6, 1.6e-6, 3.2e-7], rtol=1e-12)
    assert opt.learning_rate <= 1e-6
    assert opt.learning_rate == pytest.approx(3.2e-7, rel=1e-12)  # unchanged by the final call
    out = capsys.readouterr().out
    assert "Setting learning rate to" in out
    assert "Learning rate too small. Stopping." in out


def test_sgd_adaptive_rate_used_by_step():
    p = np.zeros(1)
    opt = SGD(p, learning_rate_init=1.0, lr_schedule="adaptive", momentum=0.0)
    assert opt.trigger_stopping("", verbose=False) is False
    opt.step(np.array([1.0]))
    assert p[0] == pytest.approx(-0.2, rel=1e-15)


def test_sgd_adaptive_at_threshold_stops():
    opt = SGD(np.zeros(1), learning_rate_init=1e-6, lr_schedule="adaptive")
    assert opt.trigger_stopping("", verbose=False) is True
    assert opt.learning_rate == 1e-6


@pytest.mark.parametrize("schedule", ["constant", "invscaling"])
def test_sgd_non_adaptive_stops_immediately(schedule, capsys):
    opt = SGD(np.zeros(2), learning_rate_init=0.01, lr_schedule=schedule)
    assert opt.trigger_stopping("Training loss did not improve.", verbose=True) is True
    assert opt.learning_rate == 0.01
    assert "Training loss did not improve. Stopping." in capsys.readouterr().out
    assert opt.trigger_stopping("quiet", verbose=False) is True
    assert capsys.readouterr().out == ""


# --------------------------------------------------------------- Adam
def test_adam_hand_computed_constant_gradient_no_epsilon():
    # With a constant gradient g: m_t = (1 - b1^t) g, v_t = (1 - b2^t) g^2, so
    # lr_t m_t / sqrt(v_t) = lr * sign(g) exactly: every step moves lr.
    lr = 0.01
    p = np.array(P0)
    g = np.array([1.0, -2.0, 4.0, -0.5])
    opt = Adam(p, learning_rate_init=lr, epsilon=0.0)
    for t in range(1, 4):
        opt.step(g)
        np.testing.assert_allclose(p, np.array(P0) - t * lr * np.sign(g), rtol=1e-13)
        np.testing.assert_allclose(opt.m, (1 - 0.9 ** t) * g, rtol=1e-13)
        np.testing.assert_allclose(opt.v, (1 - 0.999 ** t) * g ** 2, rtol=1e-13)
        assert opt.t == t
        assert opt.learning_rate == pytest.approx(lr * math.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t), rel=1e-15)


def test_adam_first_step_by_hand():
    # t = 1: m = 0.1 g, v = 0.001 g^2, lr_1 = lr sqrt(0.001) / 0.1,
    # update = -lr_1 * 0.1 g / (sqrt(0.001) |g| + eps).
    lr, eps = 0.001, 1e-8
    g = np.array([2.0, -1e-6, 0.0])
    p = np.zeros(3)
    Adam(p, learning_rate_init=lr, epsilon=eps).step(g)
    lr1 = lr * math.sqrt(0.001) / 0.1
    expected = [-lr1 * 0.1 * 2.0 / (math.sqrt(0.001) * 2.0 + eps),
                -lr1 * 0.1 * -1e-6 / (math.sqrt(0.001) * 1e-6 + eps),
                0.0]
    np.testing.assert_allclose(p, expected, rtol=1e-14, atol=0)
    assert p[0] == pytest.approx(-lr, rel=1e-6)           # |g| >> eps: step is ~lr
    assert abs(p[1]) < 0.97 * lr                             # |g| ~ eps: damped


@pytest.mark.parametrize("beta_1,beta_2,epsilon", [(0.9, 0.999, 1e-8), (0.5, 0.9, 1e-3)])
def test_adam_written_out_recurrence(beta_1, beta_2, epsilon):
    lr = 0.02
    p = np.array(P0)
    opt = Adam(p, learning_rate_init=lr, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon)
    expected = list(P0)
    m = [0.0] * 4
    v = [0.0] * 4
    for t, g in enumerate(G_SEQ, start=1):
        lr_t = lr * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        for j in range(4):
            m[j] = beta_1 * m[j] + (1 - beta_1) * g[j]
            v[j] = beta_2 * v[j] + (1 - beta_2) * g[j] ** 2
            expected[j] += -lr_t * m[j] / (math.sqrt(v[j]) + epsilon)
        opt.step(np.array(g))
        np.testing.assert_allclose(p, expected, rtol=1e-13, atol=1e-16)
        np.testing.assert_allclose(opt.m, m, rtol=1e-13, atol=1e-300)
        np.testing.assert_allclose(opt.v, v, rtol=1e-13, atol=1e-290)  # v floor ~2e-300
        assert opt.learning_rate == pytest.approx(lr_t, rel=1e-14)


def test_adam_stopping_and_iteration_ends():
    opt = Adam(np.zeros(2), learning_rate_init=0.01)
    opt.iteration_ends(1000)
    assert opt.learning_rate == 0.01
    assert opt.trigger_stopping("done.", verbose=False) is True


def test_adam_float32_zero_gradient_no_subnormals_params_unchanged():
    tiny = np.finfo(np.float32).tiny
    p = np.array([0.5, -1.25, 3.0, 0.0], dtype=np.float32)
    p0 = p.copy()
    opt = Adam(p, learning_rate_init=0.01)
    assert opt.m.dtype == opt.v.dtype == np.float32
    zero = np.zeros(4, dtype=np.float32)
    for _ in range(3000):
        opt.step(zero)
    np.testing.assert_array_equal(p, p0)
    assert p.dtype == np.float32
    assert np.all(opt.v >= tiny)
    assert np.all(opt.m == 0)


def test_adam_float32_v_floor_after_gradient_vanishes():
    # A parameter that had a gradient once and then none (a ReLU that died):
    # v decays by beta_2 each step and would reach the subnormal range after
    # ~800 steps with beta_2 = 0.9; it must stop at a normal floor.
    tiny = np.finfo(np.float32).tiny
    p = np.zeros(4, dtype=np.float32)
    opt = Adam(p, learning_rate_init=1e-3, beta_2=0.9)
    opt.step(np.array([1.0, -1e-3, 1e-10, 0.0], dtype=np.float32))
    zero = np.zeros(4, dtype=np.float32)
    for _ in range(2000):
        opt.step(zero)
        assert np.all(opt.v >= tiny)
    assert np.all(np.isfinite(p))
    # The floor is tiny: a parameter with a genuine gradient still moves ~lr.
    q = np.zeros(1, dtype=np.float32)
    Adam(q, learning_rate_init=1e-3).step(np.array([0.5], dtype=np.float32))
    assert q[0] == pytest.approx(-1e-3, rel=1e-5)


def test_adam_pickle_round_trip_continues_bit_identically_without_saving_the_floor():
    """The floor array is derived scratch: not pickled, rebuilt on the next
    step, and the resumed run equals the uninterrupted one bit for bit."""
    import pickle

    rng = np.random.RandomState(0)
    grads = [rng.standard_normal(50).astype(np.float32) * 1e-3 for _ in range(6)]
    straight = Adam(np.zeros(50, dtype=np.float32))
    resumed = Adam(np.zeros(50, dtype=np.float32))
    for g in grads[:3]:
        straight.step(g)
        resumed.step(g)
    state = pickle.dumps(resumed)
    assert "_floor_values" not in resumed.__getstate__()
    resumed = pickle.loads(state)
    for g in grads[3:]:
        straight.step(g)
        resumed.step(g)
    assert np.array_equal(straight.params, resumed.params)
    assert np.array_equal(straight.v, resumed.v)
    assert isinstance(straight.learning_rate, float)


def test_adam_float32_matches_float64():
    rng = np.random.default_rng(3)
    p64 = rng.normal(size=20)
    p32 = p64.astype(np.float32)
    o64, o32 = Adam(p64, 0.01), Adam(p32, 0.01)
    for _ in range(5):
        g = rng.normal(size=20)
        o64.step(g)
        o32.step(g.astype(np.float32))
    assert p32.dtype == np.float32
    np.testing.assert_allclose(p32, p64, rtol=1e-5, atol=1e-6)


# ------------------------------------------------- against scikit-learn
def _split(flat):
    return [flat[:7].reshape(7).copy(), flat[7:].reshape(3, 4).copy()]


def _flat(arrays):
    return np.concatenate([a.ravel() for a in arrays])


def test_adam_equals_sklearn():
    from sklearn.neural_network._stochastic_optimizers import AdamOptimizer

    rng = np.random.default_rng(0)
    p = rng.normal(size=19)
    p_init = p.copy()
    theirs = _split(p)
    ours = Adam(p, learning_rate_init=0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-7)
    ref = AdamOptimizer(theirs, learning_rate_init=0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-7)
    for _ in range(5):
        g = rng.normal(size=19)
        g[3] = 0.0
        ours.step(g)
        ref.update_params(theirs, _split(g))
        np.testing.assert_allclose(p, _flat(theirs), rtol=1e-12, atol=1e-12)
        assert ours.learning_rate == pytest.approx(ref.learning_rate, rel=1e-14)
    assert np.all(np.abs(p - p_init)[np.arange(19) != 3] > 1e-4)  # every live parameter moved


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True), (0.5, True)])
@pytest.mark.parametrize("schedule", ["constant", "invscaling"])
def test_sgd_equals_sklearn(momentum, nesterov, schedule):
    from sklearn.neural_network._stochastic_optimizers import SGDOptimizer

    rng = np.random.default_rng(1)
    p = rng.normal(size=19)
    p_init = p.copy()
    theirs = _split(p)
    kw = dict(learning_rate_init=0.05, lr_schedule=schedule, momentum=momentum,
              nesterov=nesterov, power_t=0.3)
    ours = SGD(p, **kw)
    ref = SGDOptimizer(theirs, **kw)
    for step in range(5):
        g = rng.normal(size=19)
        ours.step(g)
        ref.update_params(theirs, _split(g))
        ours.iteration_ends(10 * (step + 1))
        ref.iteration_ends(10 * (step + 1))
        assert ours.learning_rate == pytest.approx(ref.learning_rate, rel=1e-15)
        np.testing.assert_allclose(p, _flat(theirs), rtol=1e-12, atol=1e-12)
    assert not np.allclose(p, p_init)


def test_sgd_adaptive_stopping_equals_sklearn():
    from sklearn.neural_network._stochastic_optimizers import SGDOptimizer

    ours = SGD(np.zeros(3), learning_rate_init=0.01, lr_schedule="adaptive")
    ref = SGDOptimizer([np.zeros(3)], learning_rate_init=0.01, lr_schedule="adaptive")
    for _ in range(10):
        a = ours.trigger_stopping("", verbose=False)
        b = ref.trigger_stopping("", verbose=False)
        assert a == b
        assert ours.learning_rate == pytest.approx(ref.learning_rate, rel=1e-15)


# -------------------------------------------------------------- L-BFGS
def _quadratic(n=6, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(n, n))
    A = M @ M.T + n * np.eye(n)
    b = rng.normal(size=n)

    def f(x):
        Ax = A @ x
        return 0.5 * x @ Ax - b @ x, Ax - b

    return f, np.linalg.solve(A, b)


def test_lbfgs_minimises_quadratic():
    f, x_star = _quadratic()
    calls = []
    res = minimize_lbfgs(f, np.zeros(6), max_iter=200, max_fun=1000, tol=1e-10,
                         callback=lambda x: calls.append(np.array(x)))
    # scipy also stops on a relative reduction of f below ~2e-9 (ftol), so
    # x is accurate to ~sqrt(ftol) while f is accurate to ~ftol.
    np.testing.assert_allclose(res.x, x_star, rtol=1e-4, atol=1e-5)
    assert res.success
    assert res.fun == pytest.approx(f(x_star)[0], rel=1e-10)
    assert res.nit <= 200
    assert len(calls) == res.nit >= 1
    assert res.x.dtype == np.float64


def test_lbfgs_respects_max_iter():
    f, x_star = _quadratic(n=30, seed=1)
    calls = []
    res = minimize_lbfgs(f, np.full(30, 5.0), max_iter=3, max_fun=1000, tol=1e-12,
                         callback=lambda x: calls.append(1))
    assert res.nit <= 3
    assert len(calls) <= 3
    assert not np.allclose(res.x, x_star, atol=1e-8)  # stopped early: not converged
    assert res.fun < f(np.full(30, 5.0))[0]           # but made progress


def test_lbfgs_respects_max_fun():
    f, _ = _quadratic(n=30, seed=2)
    n_evals = []

    def counted(x):
        n_evals.append(1)
        return f(x)

    res = minimize_lbfgs(counted, np.full(30, 5.0), max_iter=1000, max_fun=5, tol=1e-12)
    # scipy may overshoot maxfun by the evaluations of one line search.
    assert res.nfev <= 5 + 20
    assert len(n_evals) == res.nfev


def test_lbfgs_accepts_float32_start():
    f, x_star = _quadratic()
    res = minimize_lbfgs(f, np.zeros(6, dtype=np.float32), max_iter=200, max_fun=1000, tol=1e-10)
    assert res.x.dtype == np.float64
    np.testing.assert_allclose(res.x, x_star, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------- initialisers
@pytest.mark.parametrize("activation,factor", [("relu", 6.0), ("tanh", 6.0), ("logistic", 2.0)])
def test_glorot_uniform_bounds(activation, factor):
    fan_in, fan_out = 300, 200
    W, b = glorot_uniform(np.random.RandomState(0), fan_in, fan_out, (fan_in, fan_out), activation)
    bound = math.sqrt(factor / (fan_in + fan_out))
    assert W.shape == (fan_in, fan_out) and b.shape == (fan_out,)
    assert np.abs(W).max() <= bound and np.abs(b).max() <= bound
    # The whole interval is used (U(-b, b) on 60 000 draws reaches 0.99 b).
    assert W.max() > 0.99 * bound and W.min() < -0.99 * bound
    assert W.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert abs(W.mean()) < 0.01 * bound


def test_glorot_draw_order_is_weights_then_bias():
    rs = np.random.RandomState(7)
    W, b = glorot_uniform(np.random.RandomState(7), 4, 3, (4, 3))
    bound = math.sqrt(6.0 / 7)
    np.testing.assert_array_equal(W, rs.uniform(-bound, bound, (4, 3)))
    np.testing.assert_array_equal(b, rs.uniform(-bound, bound, 3))


def test_he_normal_statistics():
    fan_in, fan_out = 500, 400
    W, b = he_normal(np.random.RandomState(0), fan_in, fan_out, (fan_in, fan_out))
    assert W.shape == (fan_in, fan_out)
    np.testing.assert_array_equal(b, np.zeros(fan_out))
    assert W.std() == pytest.approx(math.sqrt(2.0 / fan_in), rel=0.01)
    assert abs(W.mean()) < 0.01 * math.sqrt(2.0 / fan_in)


def test_initializers_registry():
    assert INITIALIZERS["glorot"] is glorot_uniform
    assert INITIALIZERS["he"] is he_normal


def _sklearn_init(layer_units, activation, seed):
    """scikit-learn's MLP ``_initialize`` / ``_init_coef``, written out."""
    rs = np.random.RandomState(seed)
    factor = 2.0 if activation == "logistic" else 6.0
    coefs, intercepts = [], []
    for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        coefs.append(rs.uniform(-bound, bound, (fan_in, fan_out)))
        intercepts.append(rs.uniform(-bound, bound, fan_out))
    return coefs, intercepts


@pytest.mark.parametrize("activation", ["relu", "logistic"])
def test_network_init_matches_sklearn_reproduction(activation):
    n_features, h, k = 6, 8, 3
    net = Network([Dense(h, activation), Dense(k)], "softmax", dtype="float64")
    net.build((n_features,), np.random.RandomState(0), init="glorot", activation=activation)
    coefs, intercepts = _sklearn_init([n_features, h, k], activation, 0)
    Ws, bs = net.parameter_arrays("W"), net.parameter_arrays("b")
    assert len(Ws) == len(bs) == 2
    for ours, theirs in zip(Ws + bs, coefs + intercepts):
        np.testing.assert_array_equal(ours, theirs)
    # Flat layout: all penalized weights first, then the biases.
    assert net.n_penalized == n_features * h + h * k
    np.testing.assert_array_equal(net.params, np.concatenate([c.ravel() for c in coefs + intercepts]))


def test_network_init_matches_sklearn_mlpclassifier():
    # A real MLPClassifier, fitted one epoch with a learning rate so small
    # (1e-300) that no weight can move: its coefs_ are its initial weights.
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 5))
    y = np.arange(30) % 3
    clf = MLPClassifier(hidden_layer_sizes=(7,), random_state=0, max_iter=1, solver="sgd",
                        learning_rate_init=1e-300, momentum=0.0, alpha=0.0, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    net = Network([Dense(7, "relu"), Dense(3)], "softmax", dtype="float64")
    net.build((5,), np.random.RandomState(0))
    for ours, theirs in zip(net.parameter_arrays("W") + net.parameter_arrays("b"),
                            clf.coefs_ + clf.intercepts_):
        np.testing.assert_array_equal(ours, theirs)


def test_network_he_init_zero_biases():
    net = Network([Dense(300, "relu"), Dense(200)], "softmax", dtype="float64")
    net.build((400,), np.random.RandomState(1), init="he")
    for b in net.parameter_arrays("b"):
        np.testing.assert_array_equal(b, 0.0)
    W1, W2 = net.parameter_arrays("W")
    assert W1.std() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    assert W2.std() == pytest.approx(math.sqrt(2 / 300), rel=0.02)


def test_network_float32_init_is_rounded_float64_init():
    kw = dict(init="glorot", activation="relu")
    n64 = Network([Dense(5, "relu"), Dense(3)], "softmax", "float64").build((4,), np.random.RandomState(3), **kw)
    n32 = Network([Dense(5, "relu"), Dense(3)], "softmax", "float32").build((4,), np.random.RandomState(3), **kw)
    assert n32.params.dtype == np.float32
    np.testing.assert_array_equal(n32.params, n64.params.astype(np.float32))
