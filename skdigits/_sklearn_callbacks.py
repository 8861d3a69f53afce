"""Reporting a fit's progress to scikit-learn's callbacks (``sklearn.callback``).

Each epoch (each L-BFGS iteration) is a subtask of the fit task, as
``LogisticRegression`` reports its iterations: callbacks such as
``ProgressBar`` and ``ScoringMonitor`` see a task begin and end, and the
``metadata`` routed with it is what scorers accept (``sample_weight``).
"""

try:  # scikit-learn >= 1.9: progress bars and monitors through sklearn.callback
    from sklearn.callback import CallbackSupportMixin, with_callbacks
except ImportError:  # older scikit-learn: the estimators work without callbacks
    class CallbackSupportMixin:
        pass

    def with_callbacks(method):
        return method


def fit_task_metadata(sample_weight):
    """What scikit-learn's hooks route to scorers for this fit."""
    return None if sample_weight is None else {"sample_weight": sample_weight}


class EpochTasks:
    """A training-loop callback reporting every epoch as a fit subtask.

    Parameters
    ----------
    context : sklearn callback context
        The fit task's context (``_init_callback_context``).
    estimator : estimator
        The estimator being fitted.
    X, y : the training data, as the estimator received it
    metadata : dict or None
        See :func:`fit_task_metadata`.
    snapshot : callable
        ``() -> dict`` of fitted attributes that make a copy of the
        estimator predict as it is now (``reconstruction_attributes``).
    task_name : str
    """

    def __init__(self, context, estimator, X, y, metadata, snapshot, task_name="epoch"):
        self.context = context
        self.estimator = estimator
        self.X, self.y = X, y
        self.metadata = metadata
        self.snapshot = snapshot
        self.task_name = task_name
        self._current = None

    def begin_task(self):
        self._current = self.context.subcontext(task_name=self.task_name)
        self._current.call_on_fit_task_begin(estimator=self.estimator, X=self.X, y=self.y,
                                             metadata=self.metadata)

    def end_task(self):
        """End the current subtask; True when a callback asks to stop."""
        current, self._current = self._current, None
        stop = current.call_on_fit_task_end(
            estimator=self.estimator, X=self.X, y=self.y, metadata=self.metadata,
            reconstruction_attributes=self.snapshot)
        return bool(stop)

    # ------------------------------------------------ stochastic solvers' loop
    def on_epoch_begin(self, loop):
        self.begin_task()

    def on_epoch_end(self, loop):
        return "callback" if self.end_task() else None

    def on_fit_end(self, loop):
        # An epoch cut short (Ctrl-C) still ends its task, as an empty one.
        if self._current is not None:
            self._current.call_on_fit_task_end(estimator=self.estimator)
            self._current = None

    # ------------------------------------------------ L-BFGS
    def lbfgs_iteration(self, history):
        """scipy reports an iteration once it is done: begin and end it together."""
        self.begin_task()
        return self.end_task()
