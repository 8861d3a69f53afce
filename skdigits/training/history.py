"""What training did, as plain data that survives between ``partial_fit`` calls."""

from dataclasses import dataclass, field

import numpy as np

#: The values of :attr:`TrainingHistory.stop_reason` (and of the
#: estimators' ``stop_reason_``).
STOP_REASONS = ("converged", "max_iter", "interrupted", "callback", "partial_fit", "diverged")


@dataclass
class TrainingHistory:
    """What training did, epoch by epoch; scikit-learn's fitted attributes read it.

    Attributes
    ----------
    loss_curve : list of float
        The training loss after each epoch (L-BFGS: each iteration).
    validation_scores : list of float or None
        The validation score after each epoch, with early stopping.
    best_loss, best_validation_score : float or None
        The best values so far (the one not in use is None).
    no_improvement_count : int
        Epochs in a row without ``tol`` improvement.
    n_iter : int
        Epochs of the current ``fit`` (L-BFGS: iterations).
    t : int
        Training samples seen, over all epochs.
    steps : int
        Optimizer steps taken (L-BFGS: loss evaluations); Dropout draws a
        new mask per step.
    epoch_seconds : list of float
        Wall time of each epoch.
    stop_reason : str
        Why the last fit stopped: one of :data:`STOP_REASONS`.
    final_loss : float or None
        L-BFGS's loss at its solution (stochastic solvers: None, the last
        epoch's loss is ``loss_curve[-1]``).
    first_batch_loss : float or None
        The loss of the fit's first batch, against which divergence is judged.
    warned_divergence : bool
        Whether this fit has warned that its loss is exploding.
    """

    loss_curve: list = field(default_factory=list)
    validation_scores: list | None = None
    best_loss: float | None = np.inf
    best_validation_score: float | None = None
    no_improvement_count: int = 0
    n_iter: int = 0
    t: int = 0
    steps: int = 0
    epoch_seconds: list = field(default_factory=list)
    stop_reason: str = ""
    final_loss: float | None = None
    first_batch_loss: float | None = None
    warned_divergence: bool = False

    @property
    def interrupted(self):
        """Whether the last fit was stopped by Ctrl-C."""
        return self.stop_reason == "interrupted"
