"""The NumPy engine: layers, activations, losses, initialisers, optimizers.

Plain NumPy (and SciPy for L-BFGS), no scikit-learn, one thread: a reader
can follow each layer's forward and backward pass with a pen.  What uses a
second core lives in :mod:`skdigits.concurrency`.
"""

from .activations import ACTIVATIONS, DERIVATIVES
from .conv import Conv2D, ConvReLUPool2D, Flatten, MaxPool2D
from .initializers import INITIALIZERS, glorot_uniform, he_normal
from .layers import Activation, Batch, Dense, Dropout, Layer, Shard
from .losses import LOSSES, binary_cross_entropy, log_softmax, sigmoid, softmax, softmax_cross_entropy
from .network import PREDICT_CHUNK, Network
from .normalization import BatchNorm
from .optimizers import SGD, Adam, StochasticOptimizer, minimize_lbfgs

__all__ = [
    "ACTIVATIONS", "DERIVATIVES", "INITIALIZERS", "LOSSES", "PREDICT_CHUNK",
    "Activation", "Adam", "Batch", "BatchNorm", "Conv2D", "ConvReLUPool2D", "Dense", "Dropout",
    "Flatten", "Layer", "MaxPool2D", "Network", "SGD", "Shard",
    "StochasticOptimizer",
    "binary_cross_entropy", "glorot_uniform", "he_normal", "log_softmax",
    "minimize_lbfgs", "sigmoid", "softmax", "softmax_cross_entropy",
]
