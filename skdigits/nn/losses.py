"""Output functions fused with their losses, computed from logits.

Two for classification (cross-entropies) and two for regression:

- 'softmax' with the multiclass cross-entropy, 'logistic' with the binary
  (per output) cross-entropy;
- 'identity' with the half squared error, 'exp' with the half Poisson
  deviance (a log link: the network's output is ``log`` of the mean).

Working from the logits ``Z`` (never from probabilities) keeps the maths
stable: softmax subtracts the row maximum and uses log-sum-exp, the logistic
loss uses ``softplus``, the Poisson deviance uses ``z`` where it would take
``log(exp(z))``.  Each loss returns the weighted mean loss, summed over the
outputs, and writes d loss / d Z into ``grad`` (in place when ``grad`` is
given; ``Z`` and ``Y`` are never modified); for these canonical pairs that
is simply ``(f(z) - y) * w / sum(w)`` with ``f`` the output function.

Shapes: ``Z`` and ``Y`` are (n_samples, n_outputs); ``weights`` is
(n_samples,) or None.
"""

import numpy as np

from .activations import logistic


def _floor(dtype):
    # exp() below this is subnormal in `dtype`; subnormals make x86 float
    # arithmetic crawl, and probabilities that small are 0 for every purpose.
    return float(np.log(np.finfo(dtype).tiny)) + 8.0


def softmax(Z, out=None):
    """Row-wise softmax of logits ``Z`` (n, k), stabilised by the row max."""
    out = np.subtract(Z, Z.max(axis=1, keepdims=True), out=out)
    np.maximum(out, _floor(out.dtype), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def log_softmax(Z):
    """Row-wise log of the softmax, by log-sum-exp (no ``log(0)``)."""
    shifted = Z - Z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def sigmoid(Z, out=None):
    """Element-wise logistic function without overflow."""
    if out is None:
        out = np.empty_like(Z)
    limit = -_floor(out.dtype)
    np.clip(Z, -limit, limit, out=out)
    return logistic(out)


def log_sigmoid(Z):
    """``log(sigmoid(z)) = -softplus(-z)``, stable for any ``z``."""
    return -(np.maximum(-Z, 0) + np.log1p(np.exp(-np.abs(Z))))


def _weighted_mean(per_sample, weights, weight_sum):
    per_sample = per_sample.astype(np.float64, copy=False)
    if weights is None:
        return float(per_sample.sum() / weight_sum)
    return float(np.dot(weights, per_sample) / weight_sum)


def _scale_gradient(grad, weights, weight_sum):
    if weights is None:
        grad *= grad.dtype.type(1.0 / weight_sum)
    else:
        grad *= (weights / weight_sum).astype(grad.dtype, copy=False)[:, None]


def softmax_cross_entropy(Z, Y, weights=None, grad=None, weight_sum=None):
    """Multiclass cross-entropy of softmax(Z) against one-hot ``Y``.

    Returns
    -------
    loss : float
        ``sum_i w_i * -log p_{i, y_i} / sum_i w_i``.
    grad : ndarray (n, k)
        d loss / d Z, written into ``grad`` when given.
    """
    if weight_sum is None:
        weight_sum = Z.shape[0] if weights is None else float(np.sum(weights))
    shifted = np.subtract(Z, Z.max(axis=1, keepdims=True), out=grad)
    # Y is one-hot, so the row-wise dot picks the true class's shifted logit.
    true_logit = np.einsum("ij,ij->i", Y, shifted)
    np.maximum(shifted, _floor(shifted.dtype), out=shifted)
    P = np.exp(shifted, out=shifted)
    norm = P.sum(axis=1, keepdims=True)
    # -log p_y = log(sum_j exp(shifted_j)) - shifted_y  (log-sum-exp)
    loss = _weighted_mean(np.log(norm[:, 0]) - true_logit, weights, weight_sum)
    P /= norm
    P -= Y
    _scale_gradient(P, weights, weight_sum)
    return loss, P


def binary_cross_entropy(Z, Y, weights=None, grad=None, weight_sum=None):
    """Sum over outputs of the logistic loss of sigmoid(Z) against 0/1 ``Y``.

    Used for binary targets (one output) and multilabel indicator targets.
    Returns the weighted mean loss and d loss / d Z (see
    :func:`softmax_cross_entropy`).
    """
    if weight_sum is None:
        weight_sum = Z.shape[0] if weights is None else float(np.sum(weights))
    # softplus(z) - y z is -[y log p + (1 - y) log(1 - p)] without log(0).
    per_element = np.maximum(Z, 0) - Y * Z + np.log1p(np.exp(-np.abs(Z)))
    loss = _weighted_mean(per_element.sum(axis=1), weights, weight_sum)
    P = sigmoid(Z, out=grad)
    P -= Y
    _scale_gradient(P, weights, weight_sum)
    return loss, P


def identity(Z, out=None):
    """The identity output of regression: a copy of ``Z`` (into ``out``)."""
    if out is None:
        return Z.copy()
    out[...] = Z
    return out


def exp(Z, out=None):
    """Element-wise ``exp(z)``, the output of the Poisson loss's log link.

    Overflow gives ``inf`` without a warning: callers check for it and say
    what went wrong (a diverged fit, inputs far outside the training range).
    """
    with np.errstate(over="ignore"):
        return np.exp(Z, out=out)


def _floored_exp(Z, out):
    # exp() of logits below the subnormal floor is 0 for every purpose, and
    # a subnormal result would make the float arithmetic after it crawl.
    floored = np.maximum(Z, _floor(Z.dtype), out=out)
    return exp(floored, out=floored)


def squared_error(Z, Y, weights=None, grad=None, weight_sum=None):
    """Half squared error of the identity output, summed over outputs.

    Returns
    -------
    loss : float
        ``sum_i w_i * 0.5 * sum_k (z_ik - y_ik)^2 / sum_i w_i``.  For one
        output this is scikit-learn's ``squared_loss``; for several it is
        ``n_outputs`` times it, since scikit-learn averages over outputs
        while its gradient is that of the sum (scikit-learn issue #8349):
        here loss and gradient belong to the same function.
    grad : ndarray (n, k)
        d loss / d Z ``= (z - y) * w / sum(w)``, written into ``grad`` when given.
    """
    if weight_sum is None:
        weight_sum = Z.shape[0] if weights is None else float(np.sum(weights))
    R = np.subtract(Z, Y, out=grad)
    loss = _weighted_mean(0.5 * np.einsum("ij,ij->i", R, R), weights, weight_sum)
    _scale_gradient(R, weights, weight_sum)
    return loss, R


def _y_log_y(Y):
    """``y log y`` with ``0 log 0 = 0`` (scipy's ``xlogy(y, y)``), in float64."""
    Y = np.asarray(Y, dtype=np.float64)
    positive = Y > 0
    return np.where(positive, Y * np.log(np.where(positive, Y, 1.0)), 0.0)


def poisson_deviance(Z, Y, weights=None, grad=None, weight_sum=None):
    """Half Poisson deviance of the mean ``mu = exp(z)``, summed over outputs.

    ``Y`` holds counts or rates, ``y >= 0``.

    Returns
    -------
    loss : float
        ``sum_i w_i * sum_k (y log(y / mu) - y + mu)_ik / sum_i w_i``, computed
        as ``y log y - y z - y + exp(z)`` (no ``log`` of a rounded ``mu``);
        scikit-learn's ``poisson_loss``.  ``inf`` once ``exp(z)`` overflows.
    grad : ndarray (n, k)
        d loss / d Z ``= (exp(z) - y) * w / sum(w)``, written into ``grad``
        when given.
    """
    if weight_sum is None:
        weight_sum = Z.shape[0] if weights is None else float(np.sum(weights))
    mu = _floored_exp(Z, out=grad)
    Z64 = Z.astype(np.float64, copy=False)
    per_element = _y_log_y(Y) - Y * Z64 - Y + mu
    loss = _weighted_mean(per_element.sum(axis=1), weights, weight_sum)
    mu -= Y
    _scale_gradient(mu, weights, weight_sum)
    return loss, mu


#: Loss of each output function, by the output function's name.
LOSSES = {"softmax": softmax_cross_entropy, "logistic": binary_cross_entropy,
          "identity": squared_error, "exp": poisson_deviance}
OUTPUT_ACTIVATIONS = {"softmax": softmax, "logistic": sigmoid, "identity": identity, "exp": exp}
#: Log of the classification outputs (the regression outputs have no use for one).
LOG_OUTPUT_ACTIVATIONS = {"softmax": log_softmax, "logistic": log_sigmoid}
