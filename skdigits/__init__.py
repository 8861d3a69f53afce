"""skdigits: from-scratch NumPy neural networks that speak scikit-learn."""

from .cnn import NumpyCNNClassifier
from .data import ImageTransformer, load_digit_csv, load_image_folder, write_submission
from .mlp import NumpyMLPClassifier, NumpyMLPRegressor
from .persistence import load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "ImageTransformer",
    "NumpyCNNClassifier",
    "NumpyMLPClassifier",
    "NumpyMLPRegressor",
    "load_digit_csv",
    "load_image_folder",
    "load_model",
    "save_model",
    "write_submission",
]
