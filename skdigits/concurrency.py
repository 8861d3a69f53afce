"""Everything in skdigits that runs on more than one thread, in one place.

The engine (:mod:`skdigits.nn`) is single-threaded maths.  The second core
is used here, in three ways that never change a result, only when it is
ready:

- :class:`DataParallel`: a large mini-batch's loss and gradient as the sum
  over two fixed row shards, the second on a helper thread (the shards of
  a network with batch norm meet at each of its statistics,
  :class:`ShardSums`); or, for an MLP with batch norm, each large matrix
  product as two halves (:class:`SplitProducts`);
- :func:`prefetched`: the next mini-batch gathered on a helper thread while
  this one computes;
- :func:`predict_in_chunks`: prediction in fixed-size padded chunks, the
  second half of them on a helper thread.

Results are bit-identical whatever the BLAS thread setting and whichever
thread calls, because every product runs on one BLAS thread
(:func:`single_blas_thread`) and the split of the work is fixed by the data
alone: BLAS libraries split a product differently for each thread count
(OpenBLAS's 200 x 784 x 128 sgemm gives other bits on two threads than on
one).  When the BLAS setting allows one thread only (``threadpool_limits(1)``,
a joblib worker), the same pieces run one after the other: the same
operations in the same order, so the same bits.
"""

import ctypes
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager

import numpy as np
from threadpoolctl import ThreadpoolController

from .nn import Shard

#: Batches of at least this many multiply-adds (rows x forward multiply-adds
#: per sample) are computed as two shards.  Handing a shard to the second
#: thread and back costs ~60 us here, plus the two threads taking turns at
#: the GIL between products: for the MNIST 784-128-10 MLP, a batch of 64 rows
#: (6.5e6) was 25% slower split, 128 rows (1.3e7) broke even and 200 rows
#: (2.0e7) was 1.2x faster; a CNN batch of 64 MNIST images (2.7e8) is 1.7x.
SHARD_MIN_MULTIPLY_ADDS = 15 * 10**6

#: With split products (:class:`SplitProducts`), a product of at least this
#: many multiply-adds is computed as two halves of its output rows, the
#: second on the helper thread.  The hand-off costs ~60-80 us here: float32
#: 64 x 784 x 128 (6.4e6) took 134 us whole and 139 us split, 96 x 784 x 128
#: (9.6e6) 194 and 187, 128 x 784 x 128 (1.3e7) 257 and 198 us.
PRODUCT_SPLIT_MIN_MULTIPLY_ADDS = 10**7

#: Elementwise passes over at least this many parameters (the optimizer's
#: step, the L2 gradient, summing the shards' gradients) are split in two
#: halves, the second on the helper thread; NumPy releases the GIL inside
#: such loops.  A hand-off costs ~50 us: an Adam step over 101,770 float32
#: parameters (145 us) gains nothing, one over 407,050 (1.1 ms) does.
SPLIT_STEP_MIN_PARAMS = 250_000


# ------------------------------------------------------------------ BLAS threads
@functools.cache
def _blas_controller():
    # Inspecting the loaded libraries takes milliseconds: do it once.
    return ThreadpoolController()


def allowed_blas_threads():
    """Threads the BLAS may use as set outside skdigits (its default, or a
    ``threadpool_limits`` / joblib worker limit)."""
    libraries = _blas_controller().select(user_api="blas").lib_controllers
    if not libraries:
        return os.cpu_count() or 1
    return max(library.num_threads for library in libraries)


@functools.cache
def _openblas_local_setters():
    """``openblas_set_num_threads_local`` of each loaded OpenBLAS, where it has one.

    OpenBLAS (0.3.30/0.3.31 as NumPy and SciPy ship it, seen here) ignores
    ``openblas_set_num_threads`` called from any thread but the one that set
    it first, so ``threadpool_limits`` in a worker thread left products on
    two threads and their bits changed (predict_proba differed by 2e-7 on a
    quarter of the rows).  The ``_local`` setter is heeded from any thread
    and, despite its name, applies to the whole process, as the limit here
    means to.
    """
    # Cached like the controller: the loaded libraries do not change, and the
    # look-up was 7 of the 46 us a one-row predict_proba spends in this guard.
    setters = []
    for library in _blas_controller().select(internal_api="openblas").lib_controllers:
        dynlib = getattr(library, "dynlib", None)
        for name in ("openblas_set_num_threads_local",
                     "scipy_openblas_set_num_threads_local64_",
                     "scipy_openblas_set_num_threads_local"):
            setter = getattr(dynlib, name, None) if dynlib is not None else None
            if setter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], ctypes.c_int
                setters.append(setter)
                break
    return tuple(setters)


class _OneBlasThread:
    """Holds every BLAS at one thread while it is entered, then restores."""

    def __init__(self):
        self._limiter = _blas_controller().limit(limits=1, user_api="blas")
        self._local_setters = _openblas_local_setters()
        self._previous_local = [setter(1) for setter in self._local_setters]

    def restore(self):
        for setter, previous in zip(self._local_setters, self._previous_local):
            setter(previous)
        self._limiter.restore_original_limits()


_blas_lock = threading.Lock()
_blas_state = {"users": 0, "holder": None, "allowed": 1}


@contextmanager
def single_blas_thread():
    """One BLAS thread while any caller is inside; the first in limits, the
    last out restores.  (Nested threadpoolctl limits from several threads
    would each restore what the previous one set, and could leave the whole
    process on one thread.)

    Yields whether the setting found on entry allows a second thread, which
    the helpers here then use by splitting the work instead.
    """
    with _blas_lock:
        if _blas_state["users"] == 0:
            _blas_state["allowed"] = allowed_blas_threads()
            _blas_state["holder"] = _OneBlasThread()
        _blas_state["users"] += 1
        concurrent = _blas_state["allowed"] >= 2
    try:
        yield concurrent
    finally:
        with _blas_lock:
            _blas_state["users"] -= 1
            if _blas_state["users"] == 0:
                _blas_state["holder"].restore()
                _blas_state["holder"] = None


# ------------------------------------------------------------------ row shards
def parallel_strategy(network):
    """How :class:`DataParallel` uses two threads for ``network``.

    'products' (:class:`SplitProducts`) for a network whose training rows
    are not independent (batch norm) but which makes every matrix product
    through its layers' ``_matmul``: an MLP with batch norm.  Else 'rows':
    row shards, which meet at each batch-norm statistic in a conv net with
    batch norm (:class:`ShardSums`).

    Measured on MNIST (2 cores, float32, one-epoch fits in turns): without
    batch norm the two took the same epoch time within +-5%
    (784-128/256/512/800/1024-10, batches of 64-256), and shards keep the
    bits of earlier fits.  With batch norm, split products took 0.89-0.95x
    the time of meeting shards (784-512-10, batch 128; equal at 784-800-10,
    batch 200), and 0.78-0.81x under a one-thread BLAS setting (where the
    shards take turns); in the CNN, whose convolutions are more than
    products, meeting shards took 0.65-0.74x the one-thread epoch."""
    if network.rows_independent or not network.products_via_matmul:
        return "rows"
    return "products"


class DataParallel:
    """Loss and gradient of a batch on two threads: as the sum over two fixed
    row shards, or with its large matrix products split in two.

    Row shards: a mini-batch's loss is a sum over its rows, so its gradient
    is the sum of the gradients of two halves, each computed by its own copy
    of the network's per-batch state (:meth:`~skdigits.nn.Network.replica`).
    Whether a batch is split depends only on its size, the network's work
    per sample and whether its layers allow it
    (:attr:`~skdigits.nn.Network.shardable`).

    Where a layer's statistics span the batch (batch norm), the two shards
    add them up as they go (:class:`ShardSums`), so each needs a thread of
    its own: with ``concurrent=False`` the second shard still runs on a
    helper thread, but the two take turns and never compute at once.

    Split products: an MLP with batch norm instead computes each large
    matrix product as two halves (:class:`SplitProducts`), everything else
    on the calling thread (see :func:`parallel_strategy`).

    Parameters
    ----------
    network : Network
        Receives the complete gradient in ``network.grads``.
    concurrent : bool
        Run the second shard (or half product) on a helper thread at the
        same time as the first.  Does not change the results, only the time
        they take.
    strategy : {'auto', 'rows', 'products'}
        'auto' is :func:`parallel_strategy`'s choice.  For split products
        the network's layers are given :class:`SplitProducts` while the
        context is entered.

    Use as a context manager; the helper thread lives until it exits.
    """

    def __init__(self, network, concurrent=True, strategy="auto"):
        if strategy not in ("auto", "rows", "products"):
            raise ValueError(f"strategy must be 'auto', 'rows' or 'products', got {strategy!r}.")
        self.network = network
        self.concurrent = bool(concurrent)
        self.strategy = parallel_strategy(network) if strategy == "auto" else strategy
        self._work_per_row = network.multiply_adds_per_sample
        self._twin = None
        self._executor = None
        # Shards that meet need two threads even when they take turns.
        self._meets = self.strategy == "rows" and not network.rows_independent
        self._turn_taker = None

    def __enter__(self):
        if self.concurrent:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="skdigits-shard")
        if self.strategy == "products":
            self.network.use_products(SplitProducts(self._executor))
        return self

    def __exit__(self, *exc):
        if self.strategy == "products":
            self.network.use_products(None)
        for executor in (self._executor, self._turn_taker):
            if executor is not None:
                # Waits for a shard still in flight (e.g. after a second
                # Ctrl-C) so nothing computes on parameters being restored.
                executor.shutdown(wait=True)
        self._executor = self._turn_taker = None
        return False

    def splits(self, n_rows):
        """Whether a batch of ``n_rows`` is computed as two row shards."""
        return (self.strategy == "rows" and n_rows >= 2
                and n_rows * self._work_per_row >= SHARD_MIN_MULTIPLY_ADDS
                and self.network.shardable)

    def loss_and_gradient(self, X, Y, weights=None, alpha=0.0, weight_sum=None, step=0):
        """As :meth:`Network.loss_and_gradient`, over two shards when the batch is large."""
        weight_sum = self._weight_sum(X, weights, weight_sum)
        loss, twin = self._data_loss(X, Y, weights, weight_sum, step)
        if twin is not None or alpha:
            self._elementwise(self._gradient_completer(twin, alpha, weight_sum),
                              self.network.n_params)
        return self._with_penalty(loss, alpha, weight_sum)

    def train_step(self, X, Y, weights, alpha, step, optimizer, accept):
        """One optimizer step on a batch: :meth:`loss_and_gradient`, then, if
        ``accept(loss)``, ``optimizer.step`` on the gradient, with the same
        operations on every parameter (so the same bits) but one hand-off to
        the helper thread where the two would take three: summing the
        shards' gradients, adding the L2 term and the optimizer's update run
        as one pass over each half of the parameter vector, when it is large
        and a helper thread is running.  Each hand-off wakes a thread
        (~20-50 us here) and the two threads then queue at the GIL.

        The loss (penalty included) is complete before ``accept`` sees it;
        the gradient is complete only once the step is taken.  Returns the
        loss and whether the step was taken.
        """
        weight_sum = self._weight_sum(X, weights, None)
        loss, twin = self._data_loss(X, Y, weights, weight_sum, step)
        loss = self._with_penalty(loss, alpha, weight_sum)
        if not accept(loss):
            return loss, False
        optimizer.begin_step()
        complete, grads = self._gradient_completer(twin, alpha, weight_sum), self.network.grads

        def gradient_and_update(part):
            complete(part)
            optimizer.update_part(grads, part)
        self._elementwise(gradient_and_update, self.network.n_params)
        return loss, True

    @staticmethod
    def _weight_sum(X, weights, weight_sum):
        if weight_sum is not None:
            return weight_sum
        return X.shape[0] if weights is None else float(np.sum(weights))

    def _with_penalty(self, loss, alpha, weight_sum):
        return loss + self.network.penalty_loss(alpha, weight_sum) if alpha else loss

    def _gradient_completer(self, twin, alpha, weight_sum):
        """``complete(part)``: the network's gradient over ``part`` made whole,
        the replica's shard added (``twin``, None when unsplit), then the L2
        term on the penalized weights in ``part``; elementwise, so any split
        of the parameter vector gives the same bits."""
        network = self.network
        grads, n_penalized = network.grads, network.n_penalized

        def complete(part):
            if twin is not None:
                np.add(grads[part], twin.grads[part], out=grads[part])
            if alpha and part.start < n_penalized:
                penalized = slice(part.start, min(part.stop, n_penalized))
                network.add_penalty_gradient(alpha, weight_sum, penalized)
        return complete

    def _data_loss(self, X, Y, weights, weight_sum, step):
        """The data loss of the batch; the gradient is left in the network's
        ``grads`` and, when the batch was split, in the returned replica's
        (None otherwise), for the caller to add up."""
        network = self.network
        n = X.shape[0]
        if not self.splits(n):
            return network.data_loss_and_gradient(X, Y, weights, weight_sum, step), None
        twin = self._replica()
        half = n // 2
        w_first, w_second = (None, None) if weights is None else (weights[:half], weights[half:])
        # Both shards draw at the step the whole batch would have.
        first_args = (X[:half], Y[:half], w_first, weight_sum, step)
        second_args = (X[half:], Y[half:], w_second, weight_sum, step)
        if self._meets:
            batch_weight = n if weights is None else float(np.sum(weights))
            return self._meeting_shards(first_args, second_args, n, batch_weight), twin
        if self._executor is not None:
            second = self._executor.submit(twin.data_loss_and_gradient, *second_args)
            loss = network.data_loss_and_gradient(*first_args)
            loss += second.result()
        else:
            loss = network.data_loss_and_gradient(*first_args)
            loss += twin.data_loss_and_gradient(*second_args)
        return loss, twin

    def _meeting_shards(self, first_args, second_args, samples, batch_weight):
        """The two shards' data losses, added, for a network whose shards
        meet at their statistics (:class:`ShardSums`); the second on the
        helper thread, at the same time or taking turns."""
        helper = self._executor
        if helper is None:
            if self._turn_taker is None:
                self._turn_taker = ThreadPoolExecutor(max_workers=1,
                                                      thread_name_prefix="skdigits-shard")
            helper = self._turn_taker
        sums = ShardSums(take_turns=self._executor is None)
        first = functools.partial(self.network.data_loss_and_gradient, *first_args,
                                  shard=sums.shard(0, samples, batch_weight))
        second = functools.partial(self._twin.data_loss_and_gradient, *second_args,
                                   shard=sums.shard(1, samples, batch_weight))
        return sum(sums.run_pair(first, second, helper))

    def _elementwise(self, apply, n):
        """``apply(part)`` over ``slice(0, n)``: as two halves on two threads
        when ``n`` is large, else at once.  For elementwise work only, whose
        bits do not depend on the split."""
        if self._executor is None or n < SPLIT_STEP_MIN_PARAMS:
            apply(slice(0, n))
            return
        half = n // 2
        second = self._executor.submit(apply, slice(half, n))
        apply(slice(0, half))
        second.result()

    def _replica(self):
        if self._twin is None:
            self._twin = self.network.replica()
        return self._twin


class ShardFailed(RuntimeError):
    """The other row shard of a batch failed before the two could meet."""


class ShardSums:
    """Where the two row shards of a batch meet to add up their statistics.

    Each shard, computing on its own thread (shard 0 on the caller's),
    hands in a per-channel partial sum at each meeting and gets back
    ``first + second``, the same bits on both threads.  With
    ``take_turns`` the two threads never compute at the same time: a shard
    computes only while it holds the turn, and passes it on while it waits
    at a meeting (for a BLAS setting of one thread, e.g. a joblib worker).
    A shard that fails releases the other from its meeting with
    :class:`ShardFailed`.
    """

    def __init__(self, take_turns=False):
        self._meeting = threading.Condition()
        self._partials = ([], [])
        self._failed = False
        self._turn = threading.Lock() if take_turns else None
        self._holds_turn = [False, False]

    def shard(self, index, samples, weight_sum):
        """The :class:`~skdigits.nn.Shard` of shard ``index`` (0 or 1)."""
        return Shard(total=functools.partial(self.total, index), samples=samples,
                     weight_sum=weight_sum, keeps_state=index == 0)

    def run_pair(self, first, second, helper):
        """``(first(), second())``, run as shards 0 and 1: ``first`` on the
        calling thread, ``second`` on ``helper`` (an executor).  A failure
        in either is raised here, the failing shard's own error; the helper
        is done with ``second`` before this returns or raises."""
        pending = helper.submit(self.run, 1, second)
        try:
            result = self.run(0, first)
        except ShardFailed:
            pending.result()  # the helper's own error
            raise
        except BaseException:
            wait([pending])  # it stops at its next meeting
            raise
        return result, pending.result()

    def run(self, index, compute, *args, **kwargs):
        """``compute(*args, **kwargs)`` as shard ``index``, holding the turn."""
        self._take_turn(index)
        try:
            return compute(*args, **kwargs)
        except BaseException:
            with self._meeting:
                self._failed = True
                self._meeting.notify_all()
            raise
        finally:
            self._pass_turn(index)

    def total(self, index, partial):
        """The sum of shard ``index``'s ``partial`` and the other shard's
        partial from the same meeting, once both are in."""
        with self._meeting:
            mine, theirs = self._partials[index], self._partials[1 - index]
            meeting = len(mine)
            mine.append(partial.copy())
            self._meeting.notify_all()
            self._pass_turn(index)
            while len(theirs) <= meeting and not self._failed:
                self._meeting.wait()
            failed = self._failed
        self._take_turn(index)
        if failed:
            raise ShardFailed("the other row shard of this batch failed")
        return self._partials[0][meeting] + self._partials[1][meeting]

    def _take_turn(self, index):
        if self._turn is not None:
            self._turn.acquire()
            self._holds_turn[index] = True

    def _pass_turn(self, index):
        # Not held after an interruption while waiting at a meeting.
        if self._turn is not None and self._holds_turn[index]:
            self._holds_turn[index] = False
            self._turn.release()


class SplitProducts:
    """``matmul(a, b, out=)`` for training passes: a product of at least
    :data:`PRODUCT_SPLIT_MIN_MULTIPLY_ADDS` as two fixed halves of its
    output rows, the second on ``executor``'s thread (after the first, on
    the calling thread, when ``executor`` is None); a smaller one whole.

    Each half is one single-threaded BLAS call on operands fixed by the
    shapes alone, so the bits do not depend on which thread runs it.
    """

    def __init__(self, executor=None):
        self.executor = executor

    def __call__(self, a, b, out):
        rows = out.shape[0]
        if rows < 2 or rows * a.shape[-1] * out.shape[-1] < PRODUCT_SPLIT_MIN_MULTIPLY_ADDS:
            return np.matmul(a, b, out=out)
        first, second = slice(0, rows // 2), slice(rows // 2, rows)
        if self.executor is None:
            _matmul_rows(a, b, out, first)
            _matmul_rows(a, b, out, second)
        else:
            pending = self.executor.submit(_matmul_rows, a, b, out, second)
            _matmul_rows(a, b, out, first)
            pending.result()
        return out


def _matmul_rows(a, b, out, rows):
    """``out[rows] = a[rows] @ b``: one half of a split product."""
    np.matmul(a[rows], b, out=out[rows])


# ------------------------------------------------------------------ prefetch
def prefetched(gather, slices):
    """Yield ``gather(piece, slot)`` for each piece of ``slices``, computing
    the next one on a helper thread while the caller works on this one.

    ``slot`` alternates 0, 1 so that ``gather`` can fill two reused buffers:
    a result stays valid until the one after the next is requested.  NumPy
    releases the GIL for the copies, so the core that single-threaded BLAS
    leaves idle does the gathering.
    """
    slices = list(slices)
    if len(slices) == 1:
        yield gather(slices[0], 0)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="skdigits-prefetch") as pool:
        pending = pool.submit(gather, slices[0], 0)
        for k in range(len(slices)):
            ready = pending.result()
            if k + 1 < len(slices):
                pending = pool.submit(gather, slices[k + 1], (k + 1) % 2)
            yield ready


# ------------------------------------------------------------------ prediction
def predict_in_chunks(network, X, to_dense=None, concurrent=False):
    """Logits for the rows of 2-D X, in the network's fixed-size padded chunks.

    Every chunk is computed the same way on either thread
    (:meth:`~skdigits.nn.Network.predict_chunks`); with ``concurrent`` a
    helper thread does the second half of them.
    """
    n = X.shape[0]
    logits = np.empty((n,) + network.output_shape, dtype=network.dtype)
    starts = range(0, n, network.predict_chunk_rows)
    if not concurrent or len(starts) < 2:
        network.predict_chunks(X, logits, starts, to_dense)
        return logits
    middle = len(starts) // 2
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="skdigits-predict") as pool:
        second = pool.submit(network.predict_chunks, X, logits, starts[middle:], to_dense)
        network.predict_chunks(X, logits, starts[:middle], to_dense)
        second.result()
    return logits
