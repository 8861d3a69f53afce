"""Mini-batches gathered by row index into reused buffers, and augmented."""

import numpy as np

from ..concurrency import prefetched
from ..nn.layers import keyed_uniforms, odd_salts, row_hashes


class RowKeyedGenerator(np.random.Generator):
    """A Generator whose ``random`` draws are keyed by sample, not by order.

    Augmentation draws its per-image numbers along axis 1 (shape
    ``(a, n, ...)``).  Here each image's numbers are a hash of its own pixels
    and the draw's key (:func:`~skdigits.nn.layers.keyed_uniforms`), as
    Dropout's masks are: identical rows in a batch get identical distortions,
    so a fit with integer sample weights still equals a fit on repeated rows,
    and the result does not depend on which thread gathers the batch.
    """

    def __init__(self, row_keys, draw_key):
        super().__init__(np.random.PCG64(0))
        self.row_keys = row_keys
        self.draw_key = int(draw_key)
        self._draws = 0

    def random(self, size=None, dtype=np.float64, out=None):
        shape = out.shape if out is not None else size
        self._draws += 1
        values = keyed_uniforms(self.row_keys, self.draw_key * 1_000_003 + self._draws, shape)
        if out is None:
            return values.astype(dtype, copy=False)
        out[...] = values
        return out

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
    augmentation : FrozenAugmentation, optional
        Distorts every gathered batch afresh (training only), read as images
        of ``image_shape``; its randomness is keyed by each row's pixels,
        ``seed`` and the batch's draw key (see :class:`RowKeyedGenerator`).
    image_shape : tuple, optional
        (h, w, channels) of a row, for the augmentation.
    seed : int
        Seeds the augmentation's row keys.
    """

    def __init__(self, X, Y, weights, dtype, input_shape, rows=None, augmentation=None,
                 image_shape=None, seed=0):
        self.X, self.Y, self.weights = X, Y, weights
        self.dtype = np.dtype(dtype)
        self.input_shape = tuple(input_shape)
        self.rows = np.arange(X.shape[0]) if rows is None else np.asarray(rows)
        self.sparse = hasattr(X, "toarray")
        self.augmentation = augmentation
        self.image_shape = None if image_shape is None else tuple(image_shape)
        self._salts = None if augmentation is None else odd_salts(X.shape[1], seed)
        self._buffers = [None, None]
        self._augmented = [None, None]

    def __len__(self):
        return len(self.rows)

    def weight_sum(self, positions=None):
        if self.weights is None:
            return len(self.rows) if positions is None else len(positions)
        rows = self.rows if positions is None else self.rows[positions]
        return float(self.weights[rows].sum())

    def gather(self, positions, slot=0, draw_key=None):
        """Batch for ``positions`` (indices into ``rows``): (X, Y, weights).

        The batch lives in buffer set ``slot`` (0 or 1) until that slot is
        gathered into again.  With an augmentation and a ``draw_key`` (an int
        unique to the batch within the fit), X is distorted.
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
        if self.augmentation is not None and draw_key is not None:
            Xb = self._augment(Xb, slot, draw_key)
        return Xb.reshape((k,) + self.input_shape), Yb, wb

    def _augment(self, Xb, slot, draw_key):
        k = Xb.shape[0]
        if self._augmented[slot] is None or self._augmented[slot].shape[0] < k:
            self._augmented[slot] = np.empty_like(self._buffers[slot][0])
        out = self._augmented[slot][:k]
        rng = RowKeyedGenerator(row_hashes(Xb, self._salts), draw_key)
        images = Xb.reshape((k,) + self.image_shape)
        self.augmentation.transform_batch(images, rng, out=out.reshape(images.shape))
        return out

    def batches(self, order, batch_size, epoch_key=0):
        """Yield ``(positions, (X, Y, weights))`` for consecutive slices of
        ``order``, the next one gathered (and augmented) while the caller
        computes on this one (:func:`~skdigits.concurrency.prefetched`)
        unless batches are smaller than :data:`PREFETCH_MIN_VALUES`.  A batch
        stays valid until the next one is requested.

        ``epoch_key`` (e.g. the number of epochs before this one) makes the
        augmentation draw anew every epoch.
        """
        slices = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]

        def gather(numbered, slot):
            index, positions = numbered
            return positions, self.gather(positions, slot, draw_key=epoch_key * 1_000_003 + index)

        if batch_size * self.X.shape[1] < PREFETCH_MIN_VALUES and self.augmentation is None:
            return (gather(numbered, 0) for numbered in enumerate(slices))
        return prefetched(gather, enumerate(slices))
