"""The training loop shared by every estimator: batching, shuffling, early
stopping, learning-rate schedules, epoch callbacks, divergence and Ctrl-C.

It drives an engine :class:`~skdigits.nn.Network` and optimizer and uses
nothing of scikit-learn but its ConvergenceWarning: estimators prepare arrays
and a validation scorer, then hand over.  What happened is recorded in a :class:`TrainingHistory`,
plain data that survives between ``partial_fit`` calls and that callbacks and
plots read.
"""

import signal
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from .nn.optimizers import minimize_lbfgs
from .nn.parallel import DataParallel


class TrainingDiverged(ValueError):
    """Training produced a non-finite loss; the model keeps its last finite weights."""


@dataclass
class TrainingHistory:
    """What training did, epoch by epoch; scikit-learn's fitted attributes read it."""

    loss_curve: list = field(default_factory=list)
    validation_scores: list | None = None
    best_loss: float | None = np.inf
    best_validation_score: float | None = None
    no_improvement_count: int = 0
    n_iter: int = 0
    t: int = 0
    steps: int = 0
    epoch_seconds: list = field(default_factory=list)
    interrupted: bool = False
    stop_reason: str = ""
    warned_divergence: bool = False
    first_batch_loss: float | None = None


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
        """Yield ``(positions, (X, Y, weights))`` for consecutive slices of ``order``.

        The next batch is gathered on a helper thread while the caller
        computes on this one (NumPy releases the GIL for the copy), so the
        core that single-threaded BLAS leaves idle does the gathering.  A
        batch stays valid until the next one is requested.
        """
        starts = list(range(0, len(order), batch_size))
        if len(starts) == 1:
            yield order, self.gather(order)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(self.gather, order[:batch_size], 0)
            for k, start in enumerate(starts):
                batch = pending.result()
                if k + 1 < len(starts):
                    following = order[starts[k + 1]:starts[k + 1] + batch_size]
                    pending = pool.submit(self.gather, following, (k + 1) % 2)
                yield order[start:start + batch_size], batch


class _InterruptFlag:
    """Turns the first Ctrl-C during training into a request to stop at the
    next batch boundary (weights are never left half-updated); a second Ctrl-C
    interrupts at once.  Outside the main thread, signals cannot be caught,
    and a KeyboardInterrupt is handled where it lands."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(signal.SIGINT, self._handle)
            except ValueError:  # e.g. an embedded interpreter without signals
                self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _divergence_error(epoch, loss, learning_rate=None):
    if learning_rate is None:
        cause = "The inputs are probably too large; scale them (e.g. with StandardScaler)."
    else:
        cause = (f"The learning rate (learning_rate_init={learning_rate:g}) is probably "
                 "too large for this data; lower it, or scale the inputs (e.g. with "
                 "StandardScaler).")
    return TrainingDiverged(
        f"Training diverged at epoch {epoch}: the loss became {loss}. {cause} "
        "The model keeps its last finite weights."
    )


def _warn_if_exploding(history, learning_rate):
    """Warn once per fit when the epoch loss is ten times the first batch's."""
    first, last = history.first_batch_loss, history.loss_curve[-1]
    if first is not None and last > 10 * first and not history.warned_divergence:
        history.warned_divergence = True
        warnings.warn(
            f"Training is diverging: the loss grew from {first:.4g} to {last:.4g}. "
            f"Lower the learning rate (learning_rate_init={learning_rate:g}) or scale the "
            "inputs (e.g. with StandardScaler).",
            ConvergenceWarning, stacklevel=3)


def train_stochastic(network, optimizer, source, *, batch_size, max_iter, shuffle,
                     random_state, tol, n_iter_no_change, alpha, history,
                     validation_score=None, incremental=False, verbose=False,
                     epoch_callbacks=(), on_epoch_begin=(), concurrent=False):
    """Run mini-batch epochs of ``optimizer`` on ``network`` over ``source``.

    Parameters
    ----------
    network : skdigits.nn.Network
    optimizer : skdigits.nn.StochasticOptimizer
        Updates ``network.params``.
    source : BatchSource
    batch_size : int
    max_iter : int
        Maximum number of epochs (one epoch if ``incremental``).
    shuffle : bool
        Reshuffle the sample order every epoch with ``random_state``.
    random_state : numpy.random.RandomState
    tol, n_iter_no_change :
        Stop (or, for the adaptive schedule, divide the learning rate by 5)
        when the training loss, or the validation score with early stopping,
        has not improved by ``tol`` for ``n_iter_no_change`` epochs.
    alpha : float
        L2 penalty.
    history : TrainingHistory
        Updated in place; carries state across ``partial_fit`` calls.
    validation_score : callable, optional
        ``() -> float``, the score of the current weights on held-out data.
        When given, early stopping is on and the best weights are restored.
    incremental : bool
        One epoch, no convergence warning (``partial_fit``).
    epoch_callbacks : sequence of callables
        ``callback(history) -> bool`` after each epoch; True stops training.
    on_epoch_begin : sequence of callables
        ``callback(history)`` before each epoch.
    concurrent : bool
        Compute the two row shards of a large batch on two threads at once
        (:class:`~skdigits.nn.DataParallel`); the results are the same either way.

    Returns
    -------
    converged : bool
        False when ``max_iter`` was reached without meeting the stopping rule.
    """
    n = len(source)
    order = np.arange(n)
    early_stopping = validation_score is not None
    best_params = network.params.copy() if early_stopping else None
    # Weights at the start of this epoch and of the previous one: when the loss
    # turns non-finite on an epoch's first batch, this epoch's start is what
    # produced it, and the previous start is the last one known to be finite.
    epoch_start_params = network.params.copy()
    previous_start_params = epoch_start_params.copy()
    history.interrupted = False
    history.warned_divergence = False
    history.first_batch_loss = None
    if early_stopping and history.validation_scores is None:
        history.validation_scores, history.best_validation_score = [], -np.inf
        history.best_loss = None
    converged = False
    history.stop_reason = "max_iter"
    with _InterruptFlag() as interrupt, DataParallel(network, concurrent) as parallel:
        try:
            for _ in range(max_iter):
                started = time.perf_counter()
                for callback in on_epoch_begin:
                    callback(history)
                previous_start_params, epoch_start_params = epoch_start_params, previous_start_params
                epoch_start_params[...] = network.params
                if shuffle:
                    permutation = np.arange(n)
                    random_state.shuffle(permutation)
                    order = order[permutation]
                accumulated = 0.0
                for start, (positions, (Xb, Yb, wb)) in zip(
                        range(0, n, batch_size), source.batches(order, batch_size)):
                    if wb is not None and not wb.sum() > 0:
                        continue  # zero-weight samples only: nothing to learn here
                    loss = parallel.loss_and_gradient(Xb, Yb, wb, alpha, step=history.steps)
                    if not np.isfinite(loss):
                        first_step = history.n_iter == 0 and start == 0 and not history.t
                        if early_stopping and np.isfinite(history.best_validation_score):
                            network.params[...] = best_params
                        else:
                            network.params[...] = (epoch_start_params if start > 0
                                                   else previous_start_params)
                        # Non-finite before any update: the data, not the step size.
                        raise _divergence_error(history.n_iter + 1, loss,
                                                None if first_step else optimizer.learning_rate_init)
                    if history.first_batch_loss is None:
                        history.first_batch_loss = loss
                    optimizer.step(network.grads)
                    history.steps += 1
                    accumulated += loss * len(positions)
                    if interrupt.requested:
                        break
                if interrupt.requested:
                    history.interrupted = True
                    history.stop_reason = "interrupted"
                    warnings.warn("Training interrupted by user.")
                    break

                if not np.all(np.isfinite(network.params)):
                    # The last step overflowed without a loss to show it.
                    network.params[...] = epoch_start_params
                    raise _divergence_error(history.n_iter + 1, "non-finite weights",
                                            optimizer.learning_rate_init)
                history.n_iter += 1
                history.t += n
                history.loss_curve.append(accumulated / n)
                _warn_if_exploding(history, optimizer.learning_rate_init)
                history.epoch_seconds.append(time.perf_counter() - started)
                if verbose:
                    print("Iteration %d, loss = %.8f" % (history.n_iter, history.loss_curve[-1]))

                if early_stopping:
                    score = float(validation_score())
                    history.validation_scores.append(score)
                    if verbose:
                        print("Validation score: %f" % score)
                    if score < history.best_validation_score + tol:
                        history.no_improvement_count += 1
                    else:
                        history.no_improvement_count = 0
                    if score > history.best_validation_score:
                        history.best_validation_score = score
                        best_params[...] = network.params
                else:
                    last = history.loss_curve[-1]
                    if history.best_loss is None:  # early stopping was on before
                        history.best_loss = np.inf
                    if last > history.best_loss - tol:
                        history.no_improvement_count += 1
                    else:
                        history.no_improvement_count = 0
                    history.best_loss = min(history.best_loss, last)

                optimizer.iteration_ends(history.t)

                if history.no_improvement_count > n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    msg = (f"{what} did not improve more than tol={tol:f} for "
                           f"{n_iter_no_change} consecutive epochs.")
                    if optimizer.trigger_stopping(msg, verbose):
                        converged = True
                        history.stop_reason = "converged"
                        break
                    history.no_improvement_count = 0

                if any([callback(history) for callback in epoch_callbacks]):
                    history.stop_reason = "callback"
                    converged = True
                    break
                if incremental:
                    converged = True
                    history.stop_reason = "partial_fit"
                    break
        except KeyboardInterrupt:
            # A second Ctrl-C, or one outside the main thread: the batch in
            # flight may be half applied, so go back to the epoch's start.
            network.params[...] = epoch_start_params
            history.interrupted = True
            history.stop_reason = "interrupted"
            warnings.warn("Training interrupted by user.")
    if early_stopping and np.isfinite(history.best_validation_score):
        network.params[...] = best_params
    return converged or history.interrupted


def full_batch_objective(network, source, alpha, parallel, history, chunk_rows=4096):
    """``params -> (loss, grad)`` over all of ``source``, for L-BFGS.

    Rows are processed ``chunk_rows`` at a time (memory stays at one chunk's
    activations), each chunk through ``parallel`` (a :class:`DataParallel`),
    and gradients are accumulated in float64.
    """
    total_weight = source.weight_sum()
    n = len(source)
    grad_sum = np.empty(network.n_params, dtype=np.float64)

    def objective(x):
        network.params[...] = x
        grad_sum[...] = 0.0
        loss = 0.0
        for start in range(0, n, chunk_rows):
            Xb, Yb, wb = source.gather(np.arange(start, min(start + chunk_rows, n)))
            loss += parallel.loss_and_gradient(Xb, Yb, wb, 0.0, weight_sum=total_weight,
                                               step=history.steps)
            np.add(grad_sum, network.grads, out=grad_sum)
        history.steps += 1  # one evaluation: one dropout mask over all chunks
        W = x[:network.n_penalized]
        loss += 0.5 * alpha * float(np.dot(W, W)) / total_weight
        grad_sum[:network.n_penalized] += (alpha / total_weight) * W
        return loss, grad_sum.copy()

    return objective


def train_lbfgs(network, source, *, alpha, max_iter, max_fun, tol, history, verbose=False,
                iteration_callbacks=(), concurrent=False):
    """Fit ``network`` with scipy's L-BFGS-B on the full batch.

    Returns the scipy ``OptimizeResult``.  The network ends on the best
    parameters evaluated; Ctrl-C stops with those too.  ``concurrent`` as
    for :func:`train_stochastic`.
    """
    parallel = DataParallel(network, concurrent)
    objective = full_batch_objective(network, source, alpha, parallel, history)
    best = {"loss": np.inf, "x": network.params.astype(np.float64)}

    def tracked(x):
        loss, grad = objective(x)
        if not np.isfinite(loss):
            raise _divergence_error(len(history.loss_curve) + 1, loss)
        if loss < best["loss"]:
            best["loss"], best["x"] = loss, np.array(x, dtype=np.float64)
        return loss, grad

    def on_iteration(intermediate_result):
        history.loss_curve.append(float(intermediate_result.fun))
        for callback in iteration_callbacks:
            callback(history)
        if verbose:
            print("Iteration %d, loss = %.8f" % (len(history.loss_curve), history.loss_curve[-1]))

    result = None
    with _InterruptFlag() as interrupt, parallel:
        def guarded(x):
            if interrupt.requested:
                raise KeyboardInterrupt
            return tracked(x)

        try:
            result = minimize_lbfgs(guarded, network.params, max_iter=max_iter,
                                    max_fun=max_fun, tol=tol, callback=on_iteration)
        except KeyboardInterrupt:
            history.interrupted = True
            history.stop_reason = "interrupted"
            warnings.warn("Training interrupted by user.")
        except TrainingDiverged:
            network.params[...] = best["x"]
            raise
    network.params[...] = best["x"] if result is None else result.x
    return result
