"""What keeps a fit usable when it goes wrong: divergence and Ctrl-C."""

import signal
import threading
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning


class TrainingDiverged(ValueError):
    """Training produced a non-finite loss; the model keeps its last finite weights."""


def divergence_error(epoch, loss, learning_rate=None):
    """A :class:`TrainingDiverged` saying what to change.

    ``learning_rate`` None means the loss was non-finite before any update:
    the data, not the step size, is to blame.
    """
    if learning_rate is None:
        # MLPClassifier's words for this case first, then ours.
        cause = ("Solver produced non-finite parameter weights. The input data may contain "
                 "large values and need to be preprocessed: the inputs are probably too "
                 "large; scale them (e.g. with StandardScaler).")
    else:
        cause = (f"The learning rate (learning_rate_init={learning_rate:g}) is probably "
                 "too large for this data; lower it, or scale the inputs (e.g. with "
                 "StandardScaler).")
    return TrainingDiverged(
        f"Training diverged at epoch {epoch}: the loss became {loss}. {cause} "
        "The model keeps its last finite weights."
    )


class InterruptFlag:
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


def snapshot(network):
    """Copies of everything that defines the trained model: the parameters
    and the layers' trained state (BatchNorm's running statistics)."""
    return [array.copy() for array in network.state_arrays()]


def refresh(saved, network):
    """Overwrite a :func:`snapshot` with the network's current state, in place."""
    for copy, array in zip(saved, network.state_arrays()):
        copy[...] = array


def restore(network, saved):
    """Put a :func:`snapshot` back, in place (layers keep their views)."""
    for array, value in zip(network.state_arrays(), saved):
        array[...] = value


class DivergenceGuard:
    """Restore points for a stochastic fit, and the checks that use them.

    It keeps the model at the start of this epoch and of the previous one:
    when the loss turns non-finite on an epoch's first batch, this epoch's
    start is what produced it, and the previous start is the last one known
    to be finite.  With early stopping, the best model seen wins over both.

    Parameters
    ----------
    network : Network
        Restored in place (parameters and trained layer state).
    learning_rate : float
        Named in the error and warning messages.
    best : callable, optional
        ``() -> snapshot or None``, the best model so far (early stopping).
    """

    def __init__(self, network, learning_rate, best=None):
        self.network = network
        self.learning_rate = learning_rate
        self._best = best or (lambda: None)
        self._epoch_start = snapshot(network)
        self._previous_start = snapshot(network)

    def start_epoch(self):
        self._previous_start, self._epoch_start = self._epoch_start, self._previous_start
        refresh(self._epoch_start, self.network)

    def restore_epoch_start(self):
        """Back to this epoch's start (a batch in flight may be half applied)."""
        restore(self.network, self._epoch_start)

    def diverged(self, loss, history, first_batch_of_epoch):
        """Whether a non-finite ``loss`` ends the fit; the model is restored.

        With early stopping's best model at hand, the fit ends there with a
        ConvergenceWarning and this returns True (as MLPClassifier keeps its
        best weights when the loss diverges).  Without one it raises
        :class:`TrainingDiverged`.  A finite loss returns False.
        """
        if np.isfinite(loss):
            return False
        before_any_update = history.n_iter == 0 and first_batch_of_epoch and not history.t
        error = divergence_error(history.n_iter + 1, loss,
                                 None if before_any_update else self.learning_rate)
        best = self._best()
        if best is not None:
            restore(self.network, best)
            warnings.warn(f"{error} Early stopping keeps its best weights (validation "
                          f"score {history.best_validation_score:.4g}).",
                          ConvergenceWarning, stacklevel=2)
            return True
        restore(self.network, self._previous_start if first_batch_of_epoch
                else self._epoch_start)
        raise error

    def check_weights(self, history):
        # Rarer than a non-finite loss, and always an error (a step that
        # overflowed the weights says the learning rate is far too large).
        """The last step may overflow the weights without a loss to show it."""
        if not np.all(np.isfinite(self.network.params)):
            restore(self.network, self._epoch_start)
            raise divergence_error(history.n_iter + 1, "non-finite weights", self.learning_rate)

    def warn_if_exploding(self, history):
        """Warn once per fit when the epoch loss is ten times the first batch's."""
        first, last = history.first_batch_loss, history.loss_curve[-1]
        if first is not None and last > 10 * first and not history.warned_divergence:
            history.warned_divergence = True
            warnings.warn(
                f"Training is diverging: the loss grew from {first:.4g} to {last:.4g}. "
                f"Lower the learning rate (learning_rate_init={self.learning_rate:g}) or "
                "scale the inputs (e.g. with StandardScaler).",
                ConvergenceWarning, stacklevel=2)
