"""Full-batch training with scipy's L-BFGS-B on the engine's loss and gradient."""

import warnings

import numpy as np

from ..concurrency import DataParallel
from ..nn.optimizers import minimize_lbfgs
from .guards import InterruptFlag, TrainingDiverged, divergence_error


def full_batch_objective(network, source, alpha, parallel, history, chunk_rows=4096):
    """``params -> (loss, grad)`` over all of ``source``, for L-BFGS.

    Rows are processed ``chunk_rows`` at a time (memory stays at one chunk's
    activations), each chunk through ``parallel`` (a :class:`DataParallel`),
    and gradients are accumulated in float64.  One evaluation is one
    training step: every chunk draws its dropout masks at that step.
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
        history.steps += 1
        W = x[:network.n_penalized]
        loss += 0.5 * alpha * float(np.dot(W, W)) / total_weight
        grad_sum[:network.n_penalized] += (alpha / total_weight) * W
        return loss, grad_sum.copy()

    return objective


class _BestSeen:
    """The lowest-loss parameters evaluated so far (L-BFGS line searches try
    points worse than the current one: an interrupted fit keeps the best)."""

    def __init__(self, x0):
        self.loss = np.inf
        self.x = np.array(x0, dtype=np.float64)

    def offer(self, x, loss):
        if loss < self.loss:
            self.loss, self.x = loss, np.array(x, dtype=np.float64)


def train_lbfgs(network, source, *, alpha, max_iter, max_fun, tol, history, verbose=False,
                iteration_callbacks=(), concurrent=False):
    """Fit ``network`` with scipy's L-BFGS-B on the full batch.

    ``iteration_callbacks`` are called as ``callback(history) -> bool`` after
    each iteration; True stops the fit.  Sets ``history.stop_reason`` and
    returns the scipy ``OptimizeResult`` (None when interrupted).  The
    network ends on the solution, or on the best parameters evaluated when
    interrupted or diverged.  ``concurrent`` as for
    :class:`~skdigits.training.TrainingLoop`.
    """
    parallel = DataParallel(network, concurrent)
    objective = full_batch_objective(network, source, alpha, parallel, history)
    best = _BestSeen(network.params)
    stopped_by_callback = []

    def on_iteration(intermediate_result):
        history.loss_curve.append(float(intermediate_result.fun))
        if verbose:
            print("Iteration %d, loss = %.8f" % (len(history.loss_curve), history.loss_curve[-1]))
        if any([callback(history) for callback in iteration_callbacks]):
            stopped_by_callback.append(True)
            raise StopIteration  # scipy's own way to end minimize from a callback

    result = None
    with InterruptFlag() as interrupt, parallel:
        def tracked(x):
            if interrupt.requested:
                raise KeyboardInterrupt
            loss, grad = objective(x)
            if not np.isfinite(loss):
                raise divergence_error(len(history.loss_curve) + 1, loss)
            best.offer(x, loss)
            return loss, grad

        try:
            result = minimize_lbfgs(tracked, network.params, max_iter=max_iter,
                                    max_fun=max_fun, tol=tol, callback=on_iteration)
        except KeyboardInterrupt:
            history.stop_reason = "interrupted"
            warnings.warn("Training interrupted by user.")
        except TrainingDiverged:
            network.params[...] = best.x
            raise
    if result is None:
        network.params[...] = best.x
        return None
    network.params[...] = result.x
    if stopped_by_callback:
        history.stop_reason = "callback"
    else:
        history.stop_reason = "converged" if result.status == 0 else "max_iter"
    return result
