"""Small objects the training loop calls at fixed points.

A callback may define any of these methods; the loop calls those it has:

- ``on_fit_begin(loop)`` / ``on_fit_end(loop)``: once per fit;
- ``on_epoch_begin(loop)``;
- ``on_batch_begin(loop)``: before each mini-batch's loss and gradient;
- ``on_epoch_end(loop)``: after the epoch's loss is in ``loop.history``;
  returns a stop reason (see :data:`~skdigits.training.STOP_REASONS`) to end
  the fit after this epoch, or None to go on.

Stopping is a return value, never an exception.  The loop's state a
callback may read: ``loop.history`` (a :class:`TrainingHistory`),
``loop.network``, ``loop.optimizer``, ``loop.steps_per_epoch``.
"""

import math

import numpy as np

from .guards import refresh, restore, snapshot


class Verbose:
    """Print the loss after every epoch, as scikit-learn's MLP does."""

    def on_epoch_end(self, loop):
        history = loop.history
        print("Iteration %d, loss = %.8f" % (history.n_iter, history.loss_curve[-1]))


class ImprovementStopping:
    """Stop when training stops improving, as scikit-learn's MLP does.

    Without a validation score, the training loss must fall by ``tol``;
    with one (early stopping), the score must rise by ``tol`` and the best
    weights are kept and restored at the end.  After ``n_iter_no_change``
    epochs without improvement the optimizer decides
    (``trigger_stopping``: the 'adaptive' schedule lowers its learning rate
    instead of stopping).  This is ``_update_no_improvement_count`` of
    ``sklearn/neural_network/_multilayer_perceptron.py``, as an object.

    Parameters
    ----------
    tol : float
    n_iter_no_change : int or inf
    validation_score : callable, optional
        ``() -> float``, the score of the current weights on held-out data.
    verbose : bool
    start_step : int
        Training steps (``history.steps``) before which epochs without
        improvement are not counted, e.g. a learning-rate warm-up, whose
        first epochs learn slowly by design.
    """

    def __init__(self, tol, n_iter_no_change, validation_score=None, verbose=False,
                 start_step=0):
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.validation_score = validation_score
        self.verbose = verbose
        self.start_step = start_step
        self._best_model = None
        self._history = None

    @property
    def early_stopping(self):
        return self.validation_score is not None

    def best_model(self):
        """A snapshot of the best model so far (early stopping, once scored), or None."""
        if self._best_model is None or not np.isfinite(self._history.best_validation_score):
            return None
        return self._best_model

    def on_fit_begin(self, loop):
        history = self._history = loop.history
        if self.early_stopping:
            self._best_model = snapshot(loop.network)
            if history.validation_scores is None:
                history.validation_scores, history.best_validation_score = [], -np.inf
                history.best_loss = None
        elif history.best_loss is None:  # early stopping was on before
            history.best_loss = np.inf

    def on_epoch_end(self, loop):
        history = loop.history
        if self.early_stopping:
            improved = self._update_from_score(loop)
        else:
            improved = self._update_from_loss(history)
        counting = history.steps >= self.start_step
        history.no_improvement_count = 0 if improved or not counting \
            else history.no_improvement_count + 1
        if history.no_improvement_count <= self.n_iter_no_change:
            return None
        what = "Validation score" if self.early_stopping else "Training loss"
        message = (f"{what} did not improve more than tol={self.tol:f} for "
                   f"{self.n_iter_no_change} consecutive epochs.")
        if loop.optimizer.trigger_stopping(message, self.verbose):
            return "converged"
        history.no_improvement_count = 0
        return None

    def _update_from_score(self, loop):
        history = loop.history
        score = float(self.validation_score())
        history.validation_scores.append(score)
        if self.verbose:
            print("Validation score: %f" % score)
        improved = not score < history.best_validation_score + self.tol
        if score > history.best_validation_score:
            history.best_validation_score = score
            refresh(self._best_model, loop.network)
        return improved

    def _update_from_loss(self, history):
        last = history.loss_curve[-1]
        improved = not last > history.best_loss - self.tol
        history.best_loss = min(history.best_loss, last)
        return improved

    def on_fit_end(self, loop):
        best = self.best_model()
        if best is not None:
            restore(loop.network, best)


def cosine_factor(progress):
    """Cosine decay from 1 at ``progress`` 0 to 0 at 1 (Loshchilov & Hutter, 2017)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


#: Share of the planned steps the one-cycle schedule spends warming up.
ONE_CYCLE_WARMUP = 0.3


def one_cycle_factor(progress, warmup=ONE_CYCLE_WARMUP, start=1 / 25):
    """Linear warm-up from ``start`` to 1 over the first ``warmup`` of training,
    then cosine decay to 0 (Smith & Topin's one-cycle policy, as PyTorch's
    ``OneCycleLR`` with its defaults ``pct_start=0.3``, ``div_factor=25``)."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return start + (1.0 - start) * progress / warmup
    return cosine_factor((progress - warmup) / (1.0 - warmup))


#: Learning-rate schedules by name: progress in [0, 1] -> factor on the step size.
LR_SCHEDULES = {"cosine": cosine_factor, "one-cycle": one_cycle_factor}

#: Share of the planned steps each schedule spends warming up.
LR_WARMUP = {"cosine": 0.0, "one-cycle": ONE_CYCLE_WARMUP}


class ScheduledLearningRate:
    """Scale the optimizer's step size by ``schedule(progress)`` before each batch.

    ``progress`` is the share of the planned ``total_steps`` taken so far,
    counted over the whole fit (``history.steps`` since ``start_step``).
    The optimizer's own schedules ('invscaling', 'adaptive') still apply on
    top: this sets ``optimizer.lr_scale`` only.

    Parameters
    ----------
    name : {'cosine', 'one-cycle'}
    total_steps : int
        Mini-batches the fit plans to run (max_iter x batches per epoch).
    start_step : int
        ``history.steps`` when the schedule began.
    """

    def __init__(self, name, total_steps, start_step=0):
        self.schedule = LR_SCHEDULES[name]
        self.total_steps = max(int(total_steps), 1)
        self.start_step = int(start_step)
        #: ``history.steps`` at which the warm-up ends.
        self.warmup_end = self.start_step + int(LR_WARMUP[name] * self.total_steps)

    def on_batch_begin(self, loop):
        progress = (loop.history.steps - self.start_step) / self.total_steps
        loop.optimizer.lr_scale = self.schedule(progress)
