"""The training loop shared by every estimator.

It drives an engine :class:`~skdigits.nn.Network` and optimizer and knows
nothing of scikit-learn but its ConvergenceWarning: estimators prepare
arrays, a validation scorer and callbacks, then hand over.  What happened is
recorded in a :class:`TrainingHistory`, plain data that callbacks and plots
read.

- :mod:`~skdigits.training.loop`: :class:`TrainingLoop`, fit -> epoch -> step;
- :mod:`~skdigits.training.callbacks`: early stopping, schedules, verbose output;
- :mod:`~skdigits.training.guards`: divergence restore points and Ctrl-C;
- :mod:`~skdigits.training.batches`: mini-batches gathered into reused buffers;
- :mod:`~skdigits.training.lbfgs`: full-batch L-BFGS.
"""

from .batches import BatchSource
from .callbacks import (LR_SCHEDULES, ImprovementStopping, ScheduledLearningRate, Verbose,
                        cosine_factor, one_cycle_factor)
from .guards import DivergenceGuard, InterruptFlag, TrainingDiverged
from .history import STOP_REASONS, TrainingHistory
from .lbfgs import full_batch_objective, train_lbfgs
from .loop import TrainingLoop

__all__ = [
    "LR_SCHEDULES", "STOP_REASONS", "BatchSource", "DivergenceGuard", "ImprovementStopping",
    "InterruptFlag", "ScheduledLearningRate", "TrainingDiverged", "TrainingHistory",
    "TrainingLoop", "Verbose", "cosine_factor", "full_batch_objective", "one_cycle_factor",
    "train_lbfgs",
]

# Model files name the class where it was first defined; keep that name
# stable now that it lives in a submodule (files saved earlier still load).
TrainingHistory.__module__ = __name__
