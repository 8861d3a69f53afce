"""The mini-batch training loop: fit -> epoch -> step, callbacks at fixed points.

:class:`TrainingLoop` reads top to bottom: :meth:`~TrainingLoop.fit` runs
epochs until one says stop, :meth:`~TrainingLoop.run_epoch` runs the
mini-batches of one shuffled pass, :meth:`~TrainingLoop.train_step` takes
one optimizer step.  What varies between fits (early stopping, learning-rate
schedules, verbose output, scikit-learn's callbacks) is a callback object
(:mod:`~skdigits.training.callbacks`); what every fit needs (restore points
against divergence, Ctrl-C) is a guard (:mod:`~skdigits.training.guards`).
"""

import time
import warnings

import numpy as np

from ..concurrency import DataParallel
from .guards import DivergenceGuard, InterruptFlag


class TrainingLoop:
    """Mini-batch epochs of ``optimizer`` on ``network`` over ``source``.

    Parameters
    ----------
    network : skdigits.nn.Network
    optimizer : skdigits.nn.StochasticOptimizer
        Updates ``network.params``.
    source : BatchSource
    history : TrainingHistory
        Updated in place; carries state across ``partial_fit`` calls.
    batch_size : int
    shuffle : bool
        Reshuffle the sample order every epoch with ``random_state``.
    random_state : numpy.random.RandomState
    alpha : float
        L2 penalty.
    callbacks : sequence
        Objects with any of the hooks of :mod:`~skdigits.training.callbacks`,
        called in this order.
    best_model : callable, optional
        ``() -> snapshot or None``: the model to fall back on if the loss
        turns non-finite (early stopping's best; see :func:`guards.snapshot`).
    concurrent : bool
        Compute a large batch on two threads at once (two row shards, or its
        large products in halves: :class:`~skdigits.concurrency.DataParallel`);
        the results are the same either way.
    """

    def __init__(self, network, optimizer, source, history, *, batch_size, shuffle,
                 random_state, alpha, callbacks=(), best_model=None, concurrent=False):
        self.network, self.optimizer, self.source, self.history = network, optimizer, source, history
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.random_state = random_state
        self.alpha = alpha
        self.callbacks = list(callbacks)
        self.concurrent = concurrent
        self.guard = DivergenceGuard(network, optimizer.learning_rate_init, best_model)
        self.steps_per_epoch = -(-len(source) // batch_size)
        self._order = np.arange(len(source))
        self._interrupt = None
        self._parallel = None
        self._stop_reason = None  # set by a step that ends the fit

    # ------------------------------------------------------------ the loop
    def fit(self, max_epochs):
        """Run up to ``max_epochs`` epochs; return why training stopped.

        'max_iter' when all epochs ran, else the reason an epoch or a
        callback gave ('converged', 'callback', 'interrupted', or 'diverged'
        when early stopping ended a diverging fit on its best model).
        """
        self.history.first_batch_loss = None
        self.history.warned_divergence = False
        reason = "max_iter"
        with InterruptFlag() as self._interrupt, \
                DataParallel(self.network, self.concurrent) as self._parallel:
            self._notify("on_fit_begin")
            try:
                for _ in range(max_epochs):
                    reason = self.run_epoch()
                    if reason is not None:
                        break
                else:
                    reason = "max_iter"
            except KeyboardInterrupt:
                # A second Ctrl-C, or one outside the main thread: the batch in
                # flight may be half applied, so go back to the epoch's start.
                self.guard.restore_epoch_start()
                reason = "interrupted"
        if reason == "interrupted":
            warnings.warn("Training interrupted by user.")
        self.history.stop_reason = reason
        self._notify("on_fit_end")
        return reason

    def run_epoch(self):
        """One pass over the data; return a stop reason or None."""
        started = time.perf_counter()
        self._notify("on_epoch_begin")
        self.guard.start_epoch()
        total = 0.0
        # Epochs so far over all calls (not samples seen: a fit on repeated
        # rows must draw as the same fit with integer sample weights).
        batches = self.source.batches(self._epoch_order(), self.batch_size,
                                      epoch_key=len(self.history.loss_curve))
        for index, (positions, (Xb, Yb, wb)) in enumerate(batches):
            loss = self.train_step(Xb, Yb, wb, first_of_epoch=index == 0)
            if loss is not None:
                total += loss * len(positions)
            if self._stop_reason is not None:
                return self._stop_reason
            if self._interrupt.requested:
                return "interrupted"
        self._record_epoch(total / len(self.source), time.perf_counter() - started)
        return self._first_stop_reason()

    def train_step(self, X, Y, weights, first_of_epoch=False):
        """One optimizer step on a mini-batch; return its loss (None: skipped)."""
        if weights is not None and not weights.sum() > 0:
            return None  # zero-weight samples only: nothing to learn here
        self._notify("on_batch_begin")
        history = self.history

        def finite(loss):  # a non-finite loss ends the fit before any update
            return not self.guard.diverged(loss, history, first_of_epoch)
        loss, stepped = self._parallel.train_step(X, Y, weights, self.alpha, history.steps,
                                                  self.optimizer, accept=finite)
        if not stepped:
            self._stop_reason = "diverged"
            return None
        if history.first_batch_loss is None:
            history.first_batch_loss = loss
        history.steps += 1
        return loss

    # ------------------------------------------------------------ helpers
    def _epoch_order(self):
        if self.shuffle:
            permutation = np.arange(len(self._order))
            self.random_state.shuffle(permutation)
            self._order = self._order[permutation]
        return self._order

    def _record_epoch(self, loss, seconds):
        self.guard.check_weights(self.history)
        history = self.history
        history.n_iter += 1
        history.t += len(self.source)
        history.loss_curve.append(loss)
        history.epoch_seconds.append(seconds)
        self.guard.warn_if_exploding(history)
        # The optimizer's own schedule ('invscaling') follows the samples seen.
        self.optimizer.iteration_ends(history.t)

    def _notify(self, hook):
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if method is not None:
                method(self)

    def _first_stop_reason(self):
        """Every callback sees the epoch end; the first stop reason wins."""
        reasons = [callback.on_epoch_end(self) for callback in self.callbacks
                   if hasattr(callback, "on_epoch_end")]
        return next((reason for reason in reasons if reason), None)
