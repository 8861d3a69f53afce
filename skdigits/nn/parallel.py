"""Data parallelism over row shards, with results independent of the thread count.

A mini-batch's loss is a sum over its rows, so its gradient can be computed
as the sum of the gradients of two halves, each by its own copy of the
network's per-batch state on its own thread.  Each half uses one BLAS
thread: BLAS libraries split a product differently for each thread count
(OpenBLAS's 200 x 784 x 128 sgemm gives other bits on two threads than on
one), while here the split is fixed by the batch alone.

Whether a batch is split depends only on its size and the network's work
per sample.  The halves then run at the same time when a second core may be
used, and one after the other when not (``threadpool_limits(1)``, a joblib
worker): the same operations in the same order, so the same bits.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Batches of at least this many multiply-adds (rows x forward multiply-adds
#: per sample) are computed as two shards.  Handing a shard to the second
#: thread and back costs ~60 us here, plus the two threads taking turns at
#: the GIL between products: for the MNIST 784-128-10 MLP, a batch of 64 rows
#: (6.5e6) was 25% slower split, 128 rows (1.3e7) broke even and 200 rows
#: (2.0e7) was 1.2x faster; a CNN batch of 64 MNIST images (2.7e8) is 1.7x.
SHARD_MIN_MULTIPLY_ADDS = 15 * 10**6


class DataParallel:
    """Loss and gradient of a batch as the sum over two fixed row shards.

    Parameters
    ----------
    network : Network
        Computes the first shard and receives the summed gradient in
        ``network.grads``.
    concurrent : bool
        Run the second shard on a helper thread at the same time as the
        first.  Does not change the results, only the time they take.

    Use as a context manager; the helper thread lives until it exits.
    """

    def __init__(self, network, concurrent=True):
        self.network = network
        self.concurrent = bool(concurrent)
        self._work_per_row = network.multiply_adds_per_sample
        self._twin = None
        self._executor = None

    def __enter__(self):
        if self.concurrent:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="skdigits-shard")
        return self

    def __exit__(self, *exc):
        if self._executor is not None:
            # Waits for a shard still in flight (e.g. after a second Ctrl-C)
            # so nothing computes on parameters the caller is restoring.
            self._executor.shutdown(wait=True)
            self._executor = None
        return False

    def splits(self, n_rows):
        """Whether a batch of ``n_rows`` is computed as two shards."""
        return (n_rows >= 2 and n_rows * self._work_per_row >= SHARD_MIN_MULTIPLY_ADDS
                and self.network.rows_independent)

    def loss_and_gradient(self, X, Y, weights=None, alpha=0.0, weight_sum=None, step=0):
        """As :meth:`Network.loss_and_gradient`, over two shards when the batch is large."""
        network = self.network
        n = X.shape[0]
        if weight_sum is None:
            weight_sum = n if weights is None else float(np.sum(weights))
        if not self.splits(n):
            return network.loss_and_gradient(X, Y, weights, alpha, weight_sum, step)

        twin = self._replica()
        half = n // 2
        w_first, w_second = (None, None) if weights is None else (weights[:half], weights[half:])
        # Both shards draw at the step the whole batch would have.
        second_args = (X[half:], Y[half:], w_second, weight_sum, step)
        first_args = (X[:half], Y[:half], w_first, weight_sum, step)
        if self._executor is not None:
            second = self._executor.submit(twin.data_loss_and_gradient, *second_args)
            loss = network.data_loss_and_gradient(*first_args)
            loss += second.result()
        else:
            loss = network.data_loss_and_gradient(*first_args)
            loss += twin.data_loss_and_gradient(*second_args)
        network.grads += twin.grads
        return loss + network.add_penalty(alpha, weight_sum)

    def _replica(self):
        if self._twin is None:
            self._twin = self.network.replica()
        return self._twin
