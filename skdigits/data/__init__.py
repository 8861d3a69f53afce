"""Data layer: digit images and Kaggle digit-recognizer CSV files."""

from ._atomic import atomic_write
from .images import ImageTransformer, load_image_folder
from .kaggle import load_digit_csv, write_submission

__all__ = [
    "ImageTransformer",
    "atomic_write",
    "load_digit_csv",
    "load_image_folder",
    "write_submission",
]
