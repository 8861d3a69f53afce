"""Output functions and fused losses of ``skdigits.nn.losses``.

Every quantity is checked against a naive formula written out here (softmax by
``exp / sum exp``, log-loss by ``log`` of clipped probabilities, the squared
error and the Poisson deviance of ``exp(z)`` term by term) on moderate logits,
where the naive formula is accurate, and against known closed forms on huge
logits, where it is not.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scipy.special import xlogy

from skdigits.nn import LOSSES, binary_cross_entropy, log_softmax, sigmoid, softmax, softmax_cross_entropy
from skdigits.nn.losses import (OUTPUT_ACTIVATIONS, exp, identity, log_sigmoid, poisson_deviance,
                                squared_error)


# --------------------------------------------------------------- references
def naive_softmax(Z):
    E = np.exp(Z)
    return E / E.sum(axis=1, keepdims=True)


def naive_sigmoid(Z):
    return 1.0 / (1.0 + np.exp(-Z))


def naive_softmax_ce(Z, Y, w=None):
    P = np.clip(naive_softmax(Z), 1e-300, 1.0)
    per_sample = -(Y * np.log(P)).sum(axis=1)
    w = np.ones(len(Z)) if w is None else w
    return float((w * per_sample).sum() / w.sum())


def naive_binary_ce(Z, Y, w=None):
    P = np.clip(naive_sigmoid(Z), 1e-300, 1 - 1e-16)
    per_sample = -(Y * np.log(P) + (1 - Y) * np.log(1 - P)).sum(axis=1)
    w = np.ones(len(Z)) if w is None else w
    return float((w * per_sample).sum() / w.sum())


def naive_squared_error(Z, Y, w=None):
    per_sample = 0.5 * ((Z - Y) ** 2).sum(axis=1)
    w = np.ones(len(Z)) if w is None else w
    return float((w * per_sample).sum() / w.sum())


def naive_poisson_deviance(Z, Y, w=None):
    mu = np.exp(Z)
    per_sample = (xlogy(Y, Y / mu) - Y + mu).sum(axis=1)
    w = np.ones(len(Z)) if w is None else w
    return float((w * per_sample).sum() / w.sum())


def one_hot(labels, k):
    return np.eye(k)[labels]


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def moderate_problem(rng, n=7, k=4, kind="softmax"):
    Z = rng.normal(scale=2.0, size=(n, k))
    if kind == "softmax":
        Y = one_hot(rng.integers(0, k, n), k)
    elif kind == "regression":
        Y = rng.normal(scale=3.0, size=(n, k))
    elif kind == "counts":  # Poisson counts around exp(z), zeros included
        Z = rng.normal(scale=0.8, size=(n, k))
        Y = rng.poisson(np.exp(Z) + 0.2).astype(np.float64)
        Y[0, 0] = 0.0
    else:
        Y = (rng.random((n, k)) < 0.5).astype(np.float64)
    w = rng.uniform(0.2, 3.0, n)
    return Z, Y, w


#: Every loss with the kind of targets it takes (see moderate_problem).
ALL_LOSSES = [(softmax_cross_entropy, "softmax"), (binary_cross_entropy, "logistic"),
              (squared_error, "regression"), (poisson_deviance, "counts")]


# ------------------------------------------------------ values vs naive
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_matches_naive(rng, weighted):
    Z, Y, w = moderate_problem(rng)
    w = w if weighted else None
    loss, _ = softmax_cross_entropy(Z, Y, w)
    assert isinstance(loss, float)
    assert loss == pytest.approx(naive_softmax_ce(Z, Y, w), rel=1e-12)


@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_cross_entropy_matches_naive(rng, n_outputs, weighted):
    Z, Y, w = moderate_problem(rng, k=n_outputs, kind="logistic")
    w = w if weighted else None
    loss, _ = binary_cross_entropy(Z, Y, w)
    assert isinstance(loss, float)
    assert loss == pytest.approx(naive_binary_ce(Z, Y, w), rel=1e-12)


def test_softmax_cross_entropy_matches_sklearn_log_loss(rng):
    from sklearn.metrics import log_loss

    Z, Y, w = moderate_problem(rng, n=20, k=3)
    labels = Y.argmax(axis=1)
    expected = log_loss(labels, naive_softmax(Z), sample_weight=w, labels=[0, 1, 2])
    assert softmax_cross_entropy(Z, Y, w)[0] == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss_fn,kind,naive", [
    (squared_error, "regression", naive_squared_error),
    (poisson_deviance, "counts", naive_poisson_deviance)])
def test_regression_losses_match_naive(rng, loss_fn, kind, naive, n_outputs, weighted):
    Z, Y, w = moderate_problem(rng, k=n_outputs, kind=kind)
    w = w if weighted else None
    loss, _ = loss_fn(Z, Y, w)
    assert isinstance(loss, float)
    assert loss == pytest.approx(naive(Z, Y, w), rel=1e-12)


@pytest.mark.parametrize("n_outputs", [1, 3])
def test_regression_losses_against_sklearns(rng, n_outputs):
    from sklearn.neural_network._base import poisson_loss, squared_loss

    Z, Y, w = moderate_problem(rng, n=20, k=n_outputs, kind="regression")
    # scikit-learn averages the squared error over outputs (and follows the
    # gradient of their sum, issue #8349); ours is the sum, whose gradient it is.
    assert squared_error(Z, Y, w)[0] == pytest.approx(n_outputs * squared_loss(Y, Z, w),
                                                       rel=1e-12)
    Z, Y, w = moderate_problem(rng, n=20, k=n_outputs, kind="counts")
    assert poisson_deviance(Z, Y, w)[0] == pytest.approx(poisson_loss(Y, np.exp(Z), w),
                                                          rel=1e-12)


def test_losses_registry():
    assert LOSSES["softmax"] is softmax_cross_entropy
    assert LOSSES["logistic"] is binary_cross_entropy
    assert LOSSES["identity"] is squared_error
    assert LOSSES["exp"] is poisson_deviance
    # Every loss has its output function, named alike.
    assert set(OUTPUT_ACTIVATIONS) == set(LOSSES)


# ------------------------------------------------------------- gradients
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_gradient_is_p_minus_y_scaled(rng, weighted):
    Z, Y, w = moderate_problem(rng)
    w_eff = w if weighted else np.ones(len(Z))
    _, grad = softmax_cross_entropy(Z, Y, w if weighted else None)
    expected = (naive_softmax(Z) - Y) * w_eff[:, None] / w_eff.sum()
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_gradient_is_p_minus_y_scaled(rng, n_outputs, weighted):
    Z, Y, w = moderate_problem(rng, k=n_outputs, kind="logistic")
    w_eff = w if weighted else np.ones(len(Z))
    _, grad = binary_cross_entropy(Z, Y, w if weighted else None)
    expected = (naive_sigmoid(Z) - Y) * w_eff[:, None] / w_eff.sum()
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("loss_fn,kind,output", [(squared_error, "regression", identity),
                                                 (poisson_deviance, "counts", np.exp)])
def test_regression_gradient_is_output_minus_y_scaled(rng, loss_fn, kind, output, weighted):
    Z, Y, w = moderate_problem(rng, kind=kind)
    w_eff = w if weighted else np.ones(len(Z))
    _, grad = loss_fn(Z, Y, w if weighted else None)
    expected = (output(Z) - Y) * w_eff[:, None] / w_eff.sum()
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss_fn,kind", ALL_LOSSES)
def test_loss_gradient_matches_finite_differences(rng, loss_fn, kind):
    Z, Y, w = moderate_problem(rng, n=5, k=3, kind=kind)
    _, grad = loss_fn(Z, Y, w)
    h = 1e-6
    num = np.empty_like(Z)
    for idx in np.ndindex(Z.shape):
        Zp, Zm = Z.copy(), Z.copy()
        Zp[idx] += h
        Zm[idx] -= h
        num[idx] = (loss_fn(Zp, Y, w)[0] - loss_fn(Zm, Y, w)[0]) / (2 * h)
    rel = np.linalg.norm(num - grad) / (np.linalg.norm(num) + np.linalg.norm(grad))
    assert rel < 1e-7


@pytest.mark.parametrize("loss_fn,kind", ALL_LOSSES)
def test_gradient_written_into_given_buffer_and_logits_untouched(rng, loss_fn, kind):
    Z, Y, w = moderate_problem(rng, kind=kind)
    Z0 = Z.copy()
    buf = np.full_like(Z, np.nan)
    _, grad = loss_fn(Z, Y, w, grad=buf)
    assert grad is buf
    assert np.all(np.isfinite(buf))
    np.testing.assert_array_equal(Z, Z0)
    # Without a buffer, a fresh array comes back and Z is left alone too.
    _, grad2 = loss_fn(Z, Y, w)
    np.testing.assert_array_equal(Z, Z0)
    np.testing.assert_allclose(grad2, buf, rtol=1e-15)


# ----------------------------------------------------------- weighting
@pytest.mark.parametrize("loss_fn,kind", ALL_LOSSES)
def test_integer_weight_equals_duplicated_row(rng, loss_fn, kind):
    Z, Y, _ = moderate_problem(rng, n=6, k=3, kind=kind)
    w = np.array([1.0, 2.0, 1.0, 3.0, 1.0, 1.0])
    reps = w.astype(int)
    Zd, Yd = np.repeat(Z, reps, axis=0), np.repeat(Y, reps, axis=0)
    assert loss_fn(Z, Y, w)[0] == pytest.approx(loss_fn(Zd, Yd)[0], rel=1e-12)


@pytest.mark.parametrize("loss_fn,kind", ALL_LOSSES)
def test_weighted_mean_and_weight_sum_override(rng, loss_fn, kind):
    Z, Y, w = moderate_problem(rng, kind=kind)
    per_sample = np.array([loss_fn(Z[i:i + 1], Y[i:i + 1])[0] for i in range(len(Z))])
    assert loss_fn(Z, Y, w)[0] == pytest.approx(np.dot(w, per_sample) / w.sum(), rel=1e-12)
    assert loss_fn(Z, Y)[0] == pytest.approx(per_sample.mean(), rel=1e-12)
    # An explicit weight_sum (e.g. of the whole epoch) replaces sum(w) everywhere.
    S = 17.5
    loss, grad = loss_fn(Z, Y, w, weight_sum=S)
    assert loss == pytest.approx(np.dot(w, per_sample) / S, rel=1e-12)
    ref = loss_fn(Z, Y, w)[1] * w.sum() / S
    np.testing.assert_allclose(grad, ref, rtol=1e-12)
    # Unit weights are the unweighted loss.
    ones = np.ones(len(Z))
    assert loss_fn(Z, Y, ones)[0] == pytest.approx(loss_fn(Z, Y)[0], rel=1e-14)


def test_zero_weight_sample_is_ignored(rng):
    Z, Y, w = moderate_problem(rng)
    w[2] = 0.0
    Z2 = Z.copy()
    Z2[2] = [50.0, -50.0, 3.0, 0.0]  # anything: its weight is zero
    l1, g1 = softmax_cross_entropy(Z, Y, w)
    l2, g2 = softmax_cross_entropy(Z2, Y, w)
    assert l1 == pytest.approx(l2, rel=1e-14)
    assert np.all(g2[2] == 0)


# ------------------------------------------------------------ stability
def test_softmax_cross_entropy_huge_logits():
    Z = np.array([[1e4, 0.0], [1e4, 0.0], [-1e4, 1e4], [1e4, -1e4]])
    Y = one_hot([1, 0, 0, 0], 2)
    loss_wrong, grad = softmax_cross_entropy(Z[:1], Y[:1])
    assert np.isfinite(loss_wrong)
    assert loss_wrong == pytest.approx(1e4, rel=1e-12)
    np.testing.assert_allclose(grad, [[1.0, -1.0]], atol=1e-12)
    loss_right, grad = softmax_cross_entropy(Z[1:2], Y[1:2])
    assert 0.0 <= loss_right < 1e-12
    np.testing.assert_allclose(grad, [[0.0, 0.0]], atol=1e-12)
    loss_all, grad = softmax_cross_entropy(Z, Y)
    assert loss_all == pytest.approx((1e4 + 0 + 2e4 + 0) / 4, rel=1e-12)
    assert np.all(np.isfinite(grad))
    P = softmax(Z)
    assert np.all(np.isfinite(P))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-15)
    np.testing.assert_allclose(P, one_hot([0, 0, 1, 0], 2), atol=1e-12)
    L = log_softmax(Z)
    np.testing.assert_allclose(L, [[0, -1e4], [0, -1e4], [-2e4, 0], [0, -2e4]], rtol=1e-14, atol=1e-12)


def test_binary_cross_entropy_huge_logits():
    Z = np.array([[1e4], [-1e4], [1e4], [-1e4]])
    Y = np.array([[0.0], [1.0], [1.0], [0.0]])
    for i, expected in enumerate([1e4, 1e4, 0.0, 0.0]):
        loss, grad = binary_cross_entropy(Z[i:i + 1], Y[i:i + 1])
        assert np.isfinite(loss)
        assert loss == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert np.all(np.isfinite(grad))
    loss, grad = binary_cross_entropy(Z, Y)
    assert loss == pytest.approx(5e3, rel=1e-12)
    np.testing.assert_allclose(grad, [[0.25], [-0.25], [0.0], [0.0]], atol=1e-12)
    p = sigmoid(Z)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p[:, 0], [1, 0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(log_sigmoid(Z)[:, 0], [0, -1e4, 0, -1e4], atol=1e-12)


def test_huge_logits_produce_no_warnings():
    Z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]])
    # Underflow of exp() to 0 is expected and harmless; overflow, 0/0 and
    # log(0) are not.
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        softmax_cross_entropy(Z, one_hot([1, 0], 3))
        binary_cross_entropy(Z, (Z > 0).astype(float))
        softmax(Z)
        log_softmax(Z)
        sigmoid(Z)
        log_sigmoid(Z)


@pytest.mark.parametrize("scale", [1e4, 1e30])
def test_float32_huge_gaps_no_nan_no_subnormals(scale):
    Z = np.array([[0.0, -scale, -80.0, -86.0, -100.0],
                  [scale, 0.0, -scale, 1.0, -87.0],
                  [-scale, -scale, -scale, -scale, 0.0]], dtype=np.float32)
    Y = one_hot([1, 0, 2], 5).astype(np.float32)
    tiny = np.finfo(np.float32).tiny
    P = softmax(Z)
    assert P.dtype == np.float32
    assert not np.any(np.isnan(P))
    assert np.abs(P)[P != 0].min() >= tiny
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-6)
    loss, grad = softmax_cross_entropy(Z, Y)
    assert np.isfinite(loss)
    assert loss == pytest.approx((scale + 0.0 + scale) / 3, rel=1e-5)
    assert grad.dtype == np.float32
    assert not np.any(np.isnan(grad))
    assert np.abs(grad)[grad != 0].min() >= tiny
    S = sigmoid(Z)
    assert S.dtype == np.float32
    assert not np.any(np.isnan(S))
    assert np.abs(S)[S != 0].min() >= tiny
    bloss, bgrad = binary_cross_entropy(Z, (Z > 0.5).astype(np.float32))
    assert np.isfinite(bloss)
    assert bgrad.dtype == np.float32 and not np.any(np.isnan(bgrad))
    assert np.abs(bgrad)[bgrad != 0].min() >= tiny


def test_float32_loss_matches_float64(rng):
    Z, Y, w = moderate_problem(rng)
    l64, g64 = softmax_cross_entropy(Z, Y, w)
    l32, g32 = softmax_cross_entropy(Z.astype(np.float32), Y.astype(np.float32), w)
    assert g32.dtype == np.float32
    assert l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-6)
    Zb, Yb, _ = moderate_problem(rng, kind="logistic")
    b64, h64 = binary_cross_entropy(Zb, Yb, w)
    b32, h32 = binary_cross_entropy(Zb.astype(np.float32), Yb.astype(np.float32), w)
    assert b32 == pytest.approx(b64, rel=1e-5)
    np.testing.assert_allclose(h32, h64, rtol=1e-4, atol=1e-6)


def test_poisson_overflow_is_an_inf_loss_without_warnings():
    # exp(1000) overflows: the loss says so with inf (the training loop's
    # divergence guard turns that into a clear error), quietly.
    Z = np.array([[1000.0], [0.0]])
    Y = np.array([[1.0], [1.0]])
    with np.errstate(all="raise"):
        loss, grad = poisson_deviance(Z, Y)
        assert loss == np.inf
        assert np.isinf(grad[0, 0]) and np.isfinite(grad[1, 0])
        assert np.isinf(exp(Z)).any()


def test_poisson_zero_counts_and_very_negative_logits():
    # y = 0 contributes exp(z) (0 log 0 = 0); a logit far below the subnormal
    # range contributes its -y z term exactly and no subnormal gradient.
    Z = np.array([[-200.0, 0.0, 2.0], [-5000.0, 1.0, -1.0]], dtype=np.float32)
    Y = np.array([[0.0, 0.0, 3.0], [2.0, 1.0, 0.0]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        loss, grad = poisson_deviance(Z, Y)
    Z64, Y64 = Z.astype(np.float64), Y.astype(np.float64)
    expected = (xlogy(Y64, Y64) - Y64 * Z64 - Y64 + np.exp(Z64)).sum() / 2
    assert loss == pytest.approx(expected, rel=1e-6)
    assert grad.dtype == np.float32
    tiny = np.finfo(np.float32).tiny
    assert np.abs(grad)[grad != 0].min() >= tiny
    np.testing.assert_allclose(grad[1, 0], -1.0, rtol=1e-6)  # (0 - 2) / 2


@pytest.mark.parametrize("loss_fn,kind", [(squared_error, "regression"),
                                          (poisson_deviance, "counts")])
def test_float32_regression_loss_matches_float64(rng, loss_fn, kind):
    Z, Y, w = moderate_problem(rng, kind=kind)
    l64, g64 = loss_fn(Z, Y, w)
    l32, g32 = loss_fn(Z.astype(np.float32), Y.astype(np.float32), w)
    assert g32.dtype == np.float32
    assert l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-6)


def test_regression_outputs(rng):
    Z = rng.normal(size=(4, 2))
    Z0 = Z.copy()
    copy = identity(Z)
    assert copy is not Z
    np.testing.assert_array_equal(copy, Z0)
    out = np.empty_like(Z)
    assert identity(Z, out=out) is out
    np.testing.assert_array_equal(out, Z0)
    np.testing.assert_allclose(exp(Z), np.exp(Z0), rtol=1e-15)
    np.testing.assert_array_equal(Z, Z0)  # no out: input untouched
    assert exp(Z, out=Z) is Z
    np.testing.assert_allclose(Z, np.exp(Z0), rtol=1e-15)


# --------------------------------------------------------- consistency
def test_softmax_matches_naive_and_rows_sum_to_one(rng):
    Z = rng.normal(scale=3.0, size=(10, 6))
    P = softmax(Z)
    np.testing.assert_allclose(P, naive_softmax(Z), rtol=1e-13)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-15)
    # Shift invariance: adding a constant per row changes nothing.
    np.testing.assert_allclose(softmax(Z + 1000.0 * rng.normal(size=(10, 1))), P, rtol=1e-9)


def test_softmax_out_argument_in_place(rng):
    Z = rng.normal(size=(4, 3))
    expected = naive_softmax(Z)
    out = softmax(Z, out=Z)
    assert out is Z
    np.testing.assert_allclose(Z, expected, rtol=1e-13)


def test_sigmoid_matches_naive_and_in_place(rng):
    Z = rng.normal(scale=5.0, size=(8, 3))
    Z0 = Z.copy()
    S = sigmoid(Z)
    np.testing.assert_array_equal(Z, Z0)  # no out: input untouched
    np.testing.assert_allclose(S, naive_sigmoid(Z0), rtol=1e-14)
    out = sigmoid(Z, out=Z)
    assert out is Z
    np.testing.assert_allclose(Z, naive_sigmoid(Z0), rtol=1e-14)


def test_two_class_softmax_is_sigmoid_of_difference(rng):
    Z = rng.normal(scale=4.0, size=(9, 2))
    P = softmax(Z)
    np.testing.assert_allclose(P[:, 1], sigmoid(Z[:, 1:] - Z[:, :1])[:, 0], rtol=1e-12)
    # And the two losses agree: softmax CE on 2 classes == logistic CE on the difference.
    labels = rng.integers(0, 2, 9)
    l_soft = softmax_cross_entropy(Z, one_hot(labels, 2))[0]
    l_bin = binary_cross_entropy(Z[:, 1:] - Z[:, :1], labels[:, None].astype(float))[0]
    assert l_soft == pytest.approx(l_bin, rel=1e-12)


def test_log_softmax_equals_log_softmax_where_not_underflowing(rng):
    Z = rng.normal(scale=3.0, size=(20, 5))
    Z[::3, 0] += 2000.0  # every third row: the other classes underflow
    L = log_softmax(Z)
    with np.errstate(divide="ignore"):
        logP = np.log(softmax(Z))
    ok = L > -600.0  # softmax is floored near exp(-700): compare only above it
    assert ok.sum() > 20 and (~ok).sum() > 5  # both regimes present in this draw
    np.testing.assert_allclose(L[ok], logP[ok], rtol=1e-12, atol=1e-12)
    assert np.all(np.isfinite(L))
    # log-sum-exp identity holds everywhere, including the underflowing part.
    np.testing.assert_allclose(np.log(np.exp(L).sum(axis=1)), 0.0, atol=1e-12)
    # Loss is -log_softmax at the true class.
    labels = rng.integers(0, 5, 20)
    loss = softmax_cross_entropy(Z, one_hot(labels, 5))[0]
    assert loss == pytest.approx(-L[np.arange(20), labels].mean(), rel=1e-12)


def test_log_sigmoid_consistency(rng):
    Z = rng.normal(scale=20.0, size=(50,))
    np.testing.assert_allclose(log_sigmoid(Z) - log_sigmoid(-Z), Z, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.exp(log_sigmoid(Z)), sigmoid(Z), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(sigmoid(Z) + sigmoid(-Z), 1.0, rtol=1e-15)
    Y = (rng.random((50, 1)) < 0.5).astype(float)
    loss = binary_cross_entropy(Z[:, None], Y)[0]
    manual = -(Y[:, 0] * log_sigmoid(Z) + (1 - Y[:, 0]) * log_sigmoid(-Z)).mean()
    assert loss == pytest.approx(manual, rel=1e-12)


finite_logits = hnp.arrays(
    np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6),
    elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


@settings(max_examples=60, deadline=None)
@given(finite_logits)
def test_property_softmax_is_distribution_and_log_softmax_finite(Z):
    P = softmax(Z)
    assert np.all(np.isfinite(P)) and np.all(P >= 0) and np.all(P <= 1)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-12)
    # The arg-max class keeps the largest probability.
    assert np.all(P[np.arange(len(Z)), Z.argmax(axis=1)] == P.max(axis=1))
    L = log_softmax(Z)
    assert np.all(np.isfinite(L)) and np.all(L <= 1e-12)


@settings(max_examples=60, deadline=None)
@given(finite_logits, st.integers(0, 2**32 - 1))
def test_property_losses_finite_nonnegative(Z, seed):
    r = np.random.default_rng(seed)
    n, k = Z.shape
    Y = one_hot(r.integers(0, k, n), k)
    loss, grad = softmax_cross_entropy(Z, Y)
    assert np.isfinite(loss) and loss >= 0
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-12)  # (p - y) rows sum to 0
    Yb = (r.random((n, k)) < 0.5).astype(float)
    bloss, bgrad = binary_cross_entropy(Z, Yb)
    assert np.isfinite(bloss) and bloss >= 0
    assert np.all(np.abs(bgrad) <= 1.0 / n + 1e-15)
