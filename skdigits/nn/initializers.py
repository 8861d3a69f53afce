"""Weight initialisers.

``glorot_uniform`` is scikit-learn's MLP initialisation (Glorot & Bengio,
2010): U(-b, b) with ``b = sqrt(6 / (fan_in + fan_out))``, or ``sqrt(2 / ...)``
for the logistic activation.  It draws weights then biases from the same
``RandomState`` in the same order as scikit-learn, so a float64 network starts
exactly where ``MLPClassifier`` with the same ``random_state`` starts.

``he_normal`` (He et al., 2015) keeps the variance of ReLU activations
constant through depth: N(0, 2 / fan_in) weights and zero biases.  It is the
usual choice for ReLU networks and the CNN's default.
"""

import numpy as np


def glorot_uniform(random_state, fan_in, fan_out, weight_shape, activation="relu"):
    """Return (weights, bias) drawn the way scikit-learn's MLP draws them."""
    factor = 2.0 if activation == "logistic" else 6.0
    bound = np.sqrt(factor / (fan_in + fan_out))
    weights = random_state.uniform(-bound, bound, (fan_in, fan_out))
    bias = random_state.uniform(-bound, bound, fan_out)
    return weights.reshape(weight_shape), bias


def he_normal(random_state, fan_in, fan_out, weight_shape, activation="relu"):
    """Return (weights, bias): N(0, 2 / fan_in) weights and zero biases."""
    weights = random_state.normal(0.0, np.sqrt(2.0 / fan_in), (fan_in, fan_out))
    return weights.reshape(weight_shape), np.zeros(fan_out)


INITIALIZERS = {"glorot": glorot_uniform, "he": he_normal}
