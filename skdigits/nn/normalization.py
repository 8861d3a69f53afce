"""Batch normalisation (Ioffe & Szegedy, 2015), with per-sample weights.

In training, each channel is normalised with the statistics of the current
mini-batch, then scaled and shifted by the learned ``gamma`` and ``beta``.
Per-sample weights enter those statistics, so a sample of weight 3 counts
exactly like three copies of it (and a sample of weight 0 like no sample):
the estimators' ``sample_weight`` keeps the meaning it has without batch
normalisation.  At inference the layer uses running averages of the batch
statistics instead, so a sample's output depends on that sample alone.

As elsewhere in the engine, training mode reuses buffers between batches of
one size, and inference mode allocates fresh arrays and keeps nothing.
"""

import math

import numpy as np

from .layers import Layer


class BatchNorm(Layer):
    """Batch normalisation over the last axis (units or channels).

    Training, with batch rows ``x_r`` and normalised weights ``p_r = w_r / sum(w)``
    (``p_r = 1 / m`` without weights)::

        mean  = sum_r p_r x_r
        var   = sum_r p_r (x_r - mean)**2           (biased)
        x̂_r   = (x_r - mean) / sqrt(var + epsilon)
        y_r   = gamma * x̂_r + beta

    and, per channel, the exact gradient of that map::

        d beta  = sum_r dy_r
        d gamma = sum_r dy_r x̂_r
        d x_r   = gamma / sqrt(var + epsilon) * (dy_r - p_r (d beta + x̂_r d gamma))

    Inference: ``y = gamma * (x - running_mean) / sqrt(running_var + epsilon) + beta``.

    Parameters
    ----------
    momentum : float in (0, 1], default=0.1
        Weight of the current batch in the running averages, as in PyTorch:
        ``running = (1 - momentum) * running + momentum * batch``.
    epsilon : float > 0, default=1e-5
        Added to the variance inside the square root; keeps a constant
        feature (variance 0) finite.

    Attributes
    ----------
    running_mean, running_var : ndarray of float64, shape (channels,)
        Moving averages of the weighted batch mean and of the biased weighted
        batch variance (the variance the training pass normalised with; it
        differs from PyTorch's unbiased running variance by ``(m - 1) / m``).
        Start at 0 and 1.  They are model state, not parameters: the
        optimizer never sees them, pickling keeps them, and :meth:`build`
        keeps them when the channel count is unchanged (a network re-builds
        its layers on load); :meth:`initial_params` starts them afresh.

    Notes
    -----
    Shapes: X and Y (n, ..., c), e.g. (n, units) after a Dense layer or
    (n, h, w, c) after a Conv2D one.  Statistics are per channel ``c`` over
    the ``m = n * h * w`` rows of ``X.reshape(-1, c)``; a sample's weight
    applies to each of its ``h * w`` positions.  gamma and beta (c,) are not
    penalized by L2.

    The output of a training pass couples the samples of a batch, so the
    layer sets ``rows_independent = False``.  A batch may still be computed
    as two row shards (``sums_across_shards``): each shard's layer adds its
    per-channel sums (the mean, the variance, ``d beta`` and ``d gamma``) to
    the other's through the batch's :class:`~skdigits.nn.layers.Shard`,
    and ``p_r`` divides by the whole batch's weight sum, so both normalise
    with the whole batch's statistics and their gradients add up to the
    batch's.  Only one of them updates the running statistics.

    Edge cases of a training batch:

    * One sample (or several identical ones) on a Dense layer: every
      ``x̂`` is 0, so the output is ``beta``; no gradient reaches the
      layers below or ``gamma``.  This is the exact map, as in Keras;
      PyTorch refuses such a batch.  A single row (m = 1) leaves the running
      statistics unchanged: its variance of 0 is no estimate of the spread.
    * Weights summing to 0: the batch carries no information.  It is
      normalised with unweighted statistics (so the output stays finite and
      the backward pass is still that map's exact gradient; the upstream
      gradient is 0 anyway) and leaves the running statistics unchanged,
      as if it had not been seen.

    Running statistics are updated in place.  A network's ``replica()``
    copies the layer shallowly, so it shares them with the original, as it
    shares the parameters.

    Examples
    --------
    >>> import numpy as np
    >>> from skdigits.nn import BatchNorm
    >>> bn = BatchNorm(momentum=0.5)
    >>> bn.build((2,), "float64")
    (2,)
    >>> bn.bind(bn.initial_params(None, None, None), {"gamma": np.zeros(2), "beta": np.zeros(2)})
    >>> X = np.array([[1.0, 10.0], [3.0, 10.0]])
    >>> bn.forward(X, training=True).round(4)
    array([[-1.,  0.],
           [ 1.,  0.]])
    >>> bn.running_mean, bn.running_var
    (array([1., 5.]), array([1. , 0.5]))
    """

    rows_independent = False
    sums_across_shards = True

    def __init__(self, momentum=0.1, epsilon=1e-5):
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"BatchNorm momentum must be in (0, 1], got {momentum!r}.")
        if not epsilon > 0.0:
            raise ValueError(f"BatchNorm epsilon must be > 0, got {epsilon!r}.")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    # ----------------------------------------------------------- construction
    def build(self, input_shape, dtype):
        shape = super().build(input_shape, dtype)
        if len(shape) == 0:
            raise ValueError("BatchNorm needs per-sample input with at least one axis, got ().")
        self.channels = shape[-1]
        # Rows per sample: the h * w positions of an image, 1 for a vector.
        self.positions = int(np.prod(shape[:-1]))
        stats = getattr(self, "running_mean", None)
        if stats is None or stats.shape != (self.channels,):
            self.reset_running_stats()
        return shape

    def state_arrays(self):
        return [self.running_mean, self.running_var]

    def reset_running_stats(self):
        """Running mean 0 and running variance 1 (the identity at inference)."""
        self.running_mean = np.zeros(self.channels)
        self.running_var = np.ones(self.channels)

    def param_specs(self):
        return [("gamma", (self.channels,), False), ("beta", (self.channels,), False)]

    def initial_params(self, random_state, initializer, activation):
        """gamma = 1 and beta = 0; fresh parameters start fresh running statistics."""
        self.reset_running_stats()
        return {"gamma": np.ones(self.channels, dtype=self.dtype),
                "beta": np.zeros(self.channels, dtype=self.dtype)}

    def multiply_adds(self):
        # Inference is one multiply-add per value: x * scale + shift.
        return self.positions * self.channels

    # ------------------------------------------------------------ computation
    def forward(self, X, training=False, batch=None):
        """X (n, ..., c) -> Y (n, ..., c); batch statistics in training."""
        if not training:
            return self._inference(X)
        if X.shape[0] == 0:
            raise ValueError("BatchNorm cannot compute batch statistics of an empty batch.")
        c = self.channels
        rows = X.reshape(-1, c)  # (m, c), a view of a contiguous X
        shard = None if batch is None else batch.shard
        p, informative = self._row_fractions(X.shape[0], batch)
        mean = _whole(shard, np.matmul(p, rows, out=self._buffer("mean", (c,))))
        xhat = np.subtract(rows, mean, out=self._buffer("xhat", rows.shape))
        squares = np.multiply(xhat, xhat, out=self._buffer("Y", rows.shape))
        var = _whole(shard, np.matmul(p, squares, out=self._buffer("var", (c,))))
        inv_std = self._buffer("inv_std", (c,))
        np.sqrt(np.add(var, self.dtype.type(self.epsilon), out=inv_std), out=inv_std)
        np.divide(1, inv_std, out=inv_std)
        xhat *= inv_std
        Y = np.multiply(xhat, self.params["gamma"], out=squares)  # squares are spent
        Y += self.params["beta"]
        # One row says nothing about the spread: its variance of 0 would
        # drag the running variance (and so every prediction) towards 0.
        if informative and self._statistics_rows(rows.shape[0], shard) > 1 \
                and (shard is None or shard.keeps_state):
            self._update_running_stats(mean, var)
        self._p, self._xhat, self._inv_std, self._shard = p, xhat, inv_std, shard
        return Y.reshape(X.shape)

    def backward(self, dY, need_input_grad=True):
        """dY: d loss / d Y (n, ..., c), overwritten.  Returns d loss / d X."""
        shape = dY.shape
        dY = dY.reshape(-1, self.channels)  # copies only if dY was a strided view
        xhat, ones = self._xhat, self._ones(dY.shape[0])
        d_gamma, d_beta = self.grads["gamma"], self.grads["beta"]
        # Column sums as products with ones (see Dense.backward).
        np.matmul(ones, dY, out=d_beta)
        work = np.multiply(dY, xhat, out=self._buffer("work", dY.shape))
        np.matmul(ones, work, out=d_gamma)
        if not need_input_grad:
            return None
        if self._shard is not None:  # the sums over the whole batch
            sums = _whole(self._shard, np.concatenate([d_beta, d_gamma]))
            d_beta, d_gamma = sums[:self.channels], sums[self.channels:]
        # d x_r = gamma / std * (dy_r - p_r (d beta + x̂_r d gamma)), in place in dY.
        np.multiply(xhat, d_gamma, out=work)
        work += d_beta
        work *= self._p[:, None]
        dY -= work
        dY *= self.params["gamma"] * self._inv_std
        return dY.reshape(shape)

    # -------------------------------------------------------------- helpers
    def _row_fractions(self, n, batch):
        """Each row's share ``p_r`` (m,) of the batch statistics, and whether
        the batch is informative (its weights do not sum to 0).

        A sample's weight is spread over its ``positions`` rows.  For a row
        shard, the shares are of the whole batch (:class:`~skdigits.nn.layers.Shard`).
        """
        weights, shard = (None, None) if batch is None else (batch.weights, batch.shard)
        p = self._buffer("p", (n * self.positions,))
        whole_rows = self._statistics_rows(p.shape[0], shard)
        if weights is None:
            p.fill(1.0 / whole_rows)
            return p, True
        weights = np.asarray(weights)
        if weights.shape != (n,):
            raise ValueError(f"BatchNorm got sample weights of shape {weights.shape} "
                             f"for a batch of {n} samples.")
        total, smallest = float(weights.sum()), float(weights.min())
        # NaN fails both tests; the checks cost ~2 us of a batch's ~40.
        if not (smallest >= 0.0 and math.isfinite(total)):
            raise ValueError("BatchNorm sample weights must be finite and >= 0, "
                             f"got min {smallest!r} and sum {total!r}.")
        if shard is not None:
            total = shard.weight_sum
        if total == 0.0:
            p.fill(1.0 / whole_rows)
            return p, False
        np.divide(weights[:, None], total * self.positions, out=p.reshape(n, self.positions))
        return p, True

    def _statistics_rows(self, rows, shard):
        """Rows the batch statistics span: this pass's ``rows``, or for a row
        shard the whole batch's."""
        return rows if shard is None else shard.samples * self.positions

    def _update_running_stats(self, mean, var):
        # In place: a replica and the original keep seeing the same arrays.
        keep = 1.0 - self.momentum
        self.running_mean *= keep
        self.running_mean += self.momentum * mean.astype(np.float64)
        self.running_var *= keep
        self.running_var += self.momentum * var.astype(np.float64)

    def _inference(self, X):
        """``X * scale + shift`` with the running statistics; a fresh array."""
        scale = self.params["gamma"] / np.sqrt(self.running_var + self.epsilon)
        shift = self.params["beta"] - self.running_mean * scale
        Y = np.multiply(X, scale.astype(self.dtype))
        Y += shift.astype(self.dtype)
        return Y


def _whole(shard, partial):
    """A per-channel sum over this pass's rows, made the sum over the whole
    batch when the rows are a row shard; ``partial`` itself otherwise."""
    return partial if shard is None else shard.total(partial)
