"""Output layers fused with their cross-entropy losses, computed from logits.

Working from the logits ``Z`` (never from probabilities) keeps the maths
stable: softmax subtracts the row maximum and uses log-sum-exp, the logistic
loss uses ``softplus``.  Each loss returns the weighted mean loss and writes
d loss / d Z into ``grad``; for these canonical pairs that is simply
``(p - y) * w / sum(w)``.

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


LOSSES = {"softmax": softmax_cross_entropy, "logistic": binary_cross_entropy}
OUTPUT_ACTIVATIONS = {"softmax": softmax, "logistic": sigmoid}
LOG_OUTPUT_ACTIVATIONS = {"softmax": log_softmax, "logistic": log_sigmoid}
