"""skdigits: from-scratch NumPy neural networks that speak scikit-learn."""

from .mlp import NumpyMLPClassifier

__version__ = "0.1.0"

__all__ = ["NumpyMLPClassifier"]
