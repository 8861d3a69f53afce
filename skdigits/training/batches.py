"""Mini-batches gathered by row index into reused buffers."""

import numpy as np

from ..concurrency import prefetched

#: Batches of fewer values (rows x features) are gathered on the calling
#: thread: handing a gather to the prefetch thread and back costs ~50 us, more
#: than gathering 200 rows of 10 features takes (~15 us; a regressor fit on
#: 200,000 such rows ran 1.27x faster without the hand-off, medians of 5
#: turns); 200 MNIST rows (156,800 values) gather in ~180 us and gain from it.
PREFETCH_MIN_VALUES = 8192


class BatchSource:
    """Gathers mini-batches of (X, Y, weights) by row index into reused buffers.

    X stays as the caller gave it (dense of any float dtype, or a scipy sparse
    matrix); only one batch at a time is cast to the compute dtype, so memory
    grows by a batch, never by a copy of X.

    Parameters
    ----------
    X : ndarray or sparse matrix (n, n_features)
    Y : ndarray (n, n_outputs)
        Targets as 0/1 indicators.
    weights : ndarray (n,) or None
    dtype : numpy dtype
        Compute dtype of the network.
    input_shape : tuple
        Per-sample shape the network expects; batches are reshaped (a view).
    rows : ndarray of int, optional
        The rows of X that make up this data set (e.g. the training split).
    """

    def __init__(self, X, Y, weights, dtype, input_shape, rows=None):
        self.X, self.Y, self.weights = X, Y, weights
        self.dtype = np.dtype(dtype)
        self.input_shape = tuple(input_shape)
        self.rows = np.arange(X.shape[0]) if rows is None else np.asarray(rows)
        self.sparse = hasattr(X, "toarray")
        self._buffers = [None, None]

    def __len__(self):
        return len(self.rows)

    def weight_sum(self, positions=None):
        if self.weights is None:
            return len(self.rows) if positions is None else len(positions)
        rows = self.rows if positions is None else self.rows[positions]
        return float(self.weights[rows].sum())

    def gather(self, positions, slot=0):
        """Batch for ``positions`` (indices into ``rows``): (X, Y, weights).

        The batch lives in buffer set ``slot`` (0 or 1) until that slot is
        gathered into again.
        """
        rows = self.rows[positions]
        k = len(rows)
        if self._buffers[slot] is None or self._buffers[slot][0].shape[0] < k:
            self._buffers[slot] = (np.empty((k, self.X.shape[1]), dtype=self.dtype),
                                   np.empty((k, self.Y.shape[1]), dtype=self.dtype))
        Xb, Yb = self._buffers[slot][0][:k], self._buffers[slot][1][:k]
        if self.sparse:
            Xb[...] = self.X[rows].toarray()
        elif self.X.dtype == self.dtype:
            np.take(self.X, rows, axis=0, out=Xb)
        else:
            Xb[...] = self.X[rows]
        Yb[...] = self.Y[rows]
        wb = None if self.weights is None else self.weights[rows]
        return Xb.reshape((k,) + self.input_shape), Yb, wb

    def batches(self, order, batch_size):
        """Yield ``(positions, (X, Y, weights))`` for consecutive slices of
        ``order``, the next one gathered while the caller computes on this
        one (:func:`~skdigits.concurrency.prefetched`) unless batches are
        smaller than :data:`PREFETCH_MIN_VALUES`.  A batch stays valid
        until the next one is requested."""
        slices = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

        def gather(positions, slot):
            return positions, self.gather(positions, slot)

        if batch_size * self.X.shape[1] < PREFETCH_MIN_VALUES:
            return (gather(positions, 0) for positions in slices)
        return prefetched(gather, slices)
