"""Optimizers over one flat parameter vector.

An optimizer knows the parameters and their gradients, never the network.
``step(grads)`` updates ``params`` in place.  Work arrays are allocated once,
and every update is a few vectorised passes with ``out=``: with separate
arrays per layer and fresh temporaries per step, the optimizer (not the
matrix products) dominated an epoch at small batch sizes.

The update formulas, schedules and stopping rules are scikit-learn's
(``sklearn/neural_network/_stochastic_optimizers.py``), evaluated in the same
order, so float64 runs reproduce ``MLPClassifier`` to rounding.
"""

import numpy as np
import scipy.optimize


class StochasticOptimizer:
    """Learning-rate bookkeeping shared by SGD and Adam.

    Parameters
    ----------
    params : ndarray (n_params,)
        Updated in place by :meth:`step`.
    learning_rate_init : float
    """

    def __init__(self, params, learning_rate_init):
        self.params = params
        self.learning_rate_init = float(learning_rate_init)
        self.learning_rate = float(learning_rate_init)
        #: Factor on every step size, set by a learning-rate schedule
        #: (cosine, one-cycle) before each step; 1.0 leaves the update exact.
        self.lr_scale = 1.0
        self._update = np.zeros_like(params)

    def step(self, grads):
        """Apply one update computed from ``grads`` (same layout as params)."""
        self.begin_step()
        self.update_part(grads, slice(None))

    def begin_step(self):
        """The step's scalars (e.g. Adam's bias-corrected rate), once per step."""

    def update_part(self, grads, part):
        """Update ``params[part]`` from ``grads[part]`` after :meth:`begin_step`.

        Every operation is elementwise, so the parameter vector may be
        updated in any split of slices (on any threads) with the same bits.
        """
        self.params[part] += self._compute_update(grads, part)

    #: Work arrays, re-created on load rather than saved with the model.
    _scratch = ("_update",)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._scratch}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.__dict__.setdefault("lr_scale", 1.0)  # files saved before schedules existed
        for name in self._scratch:
            setattr(self, name, np.zeros_like(self.params))

    def iteration_ends(self, time_step):
        """Called after each epoch with the number of samples seen so far."""

    def trigger_stopping(self, msg, verbose):
        """Decide whether to stop when the loss or score stopped improving."""
        if verbose:
            print(msg + " Stopping.")
        return True


class SGD(StochasticOptimizer):
    """Stochastic gradient descent with momentum and optional Nesterov momentum.

    ``v <- momentum * v - lr * g``; the update is ``v``, or with Nesterov
    ``momentum * v - lr * g``.  Learning-rate schedules:

    - 'constant': ``lr = learning_rate_init``;
    - 'invscaling': ``lr = learning_rate_init / (t + 1) ** power_t`` after each
      epoch, ``t`` the number of samples seen;
    - 'adaptive': ``lr`` is divided by 5 each time training stops improving,
      and training stops once ``lr <= 1e-6``.
    """

    _scratch = ("_update", "_scaled_grad")

    def __init__(self, params, learning_rate_init=0.1, lr_schedule="constant",
                 momentum=0.9, nesterov=True, power_t=0.5):
        super().__init__(params, learning_rate_init)
        self.lr_schedule = lr_schedule
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.power_t = float(power_t)
        self.velocity = np.zeros_like(params)
        self._scaled_grad = np.zeros_like(params)

    def _compute_update(self, grads, part):
        velocity, update = self.velocity[part], self._update[part]
        lr_grad = np.multiply(grads[part], self.learning_rate * self.lr_scale,
                              out=self._scaled_grad[part])
        velocity *= self.momentum
        velocity -= lr_grad
        if not self.nesterov:
            return velocity
        np.multiply(velocity, self.momentum, out=update)
        update -= lr_grad
        return update

    def iteration_ends(self, time_step):
        if self.lr_schedule == "invscaling":
            self.learning_rate = self.learning_rate_init / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg, verbose):
        if self.lr_schedule != "adaptive":
            return super().trigger_stopping(msg, verbose)
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.learning_rate)
        return False


class Adam(StochasticOptimizer):
    """Adam (Kingma & Ba, 2014).

    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g**2``,
    ``lr_t = lr * sqrt(1 - b2**t) / (1 - b1**t)``,
    update ``-lr_t * m / (sqrt(v) + epsilon)``.
    """

    _scratch = ("_update", "_work")

    def __init__(self, params, learning_rate_init=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
        super().__init__(params, learning_rate_init)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.t = 0
        self.m = np.zeros_like(params)
        self.v = np.zeros_like(params)
        self._work = np.zeros_like(params)
        # A parameter whose gradient is exactly zero (a pixel that is always
        # blank, a dead ReLU) sees v decay geometrically into the subnormal
        # range, where x86 arithmetic is ~100x slower.  Holding v at a floor
        # this small changes sqrt(v) + epsilon by at most one ulp in float32
        # (sqrt(floor) ~ 1e-15 against epsilon = 1e-8) and not at all in float64.
        self._v_floor = np.finfo(params.dtype).tiny * 1e8
        self._floor_values = None

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_floor_values", None)  # derived from _v_floor, rebuilt on use
        return state

    def _floor_array(self):
        # np.maximum against a scalar ran ~4x slower than against an array
        # of the same values (40 against 13 us for 101,770 float32 values).
        floor = getattr(self, "_floor_values", None)  # absent after unpickling
        if floor is None:
            floor = self._floor_values = np.full_like(self.v, self._v_floor)
        return floor

    def begin_step(self):
        b1, b2 = self.beta_1, self.beta_2
        self.t += 1
        # A Python float, not a NumPy float64 scalar: against a float32 array
        # the latter forces a float64 loop (46 against 10 us per pass).
        self.learning_rate = float(self.learning_rate_init * self.lr_scale
                                   * np.sqrt(1 - b2**self.t) / (1 - b1**self.t))

    def _compute_update(self, grads, part):
        b1, b2 = self.beta_1, self.beta_2
        g, m, v = grads[part], self.m[part], self.v[part]
        work, update = self._work[part], self._update[part]
        m *= b1
        m += np.multiply(g, 1 - b1, out=work)
        np.multiply(g, g, out=work)
        work *= 1 - b2
        v *= b2
        v += work
        np.maximum(v, self._floor_array()[part], out=v)
        np.multiply(m, -self.learning_rate, out=update)
        np.sqrt(v, out=work)
        work += self.epsilon
        update /= work
        return update


def minimize_lbfgs(loss_and_grad, x0, *, max_iter, max_fun, tol, callback=None):
    """Minimise with scipy's L-BFGS-B on our own loss and gradient.

    Parameters
    ----------
    loss_and_grad : callable
        ``x -> (loss, grad)`` with ``x`` and ``grad`` float64 vectors.
    x0 : ndarray
    max_iter, max_fun : int
        Iteration and function-evaluation budgets.
    tol : float
        Projected-gradient tolerance (``gtol``).
    callback : callable, optional
        Called as ``callback(x)`` after each iteration.

    Returns
    -------
    scipy.optimize.OptimizeResult
    """
    return scipy.optimize.minimize(
        loss_and_grad,
        np.asarray(x0, dtype=np.float64),
        method="L-BFGS-B",
        jac=True,
        callback=callback,
        options={"maxfun": max_fun, "maxiter": max_iter, "gtol": tol},
    )
