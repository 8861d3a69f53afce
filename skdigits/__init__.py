"""skdigits: from-scratch NumPy neural networks that speak scikit-learn."""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public name -> module defining it, imported on first use: ``import skdigits``
# (and so the ``skdigits`` command, whose entry point lives in this package)
# starts without loading NumPy, scikit-learn and Pillow, so that a Ctrl-C in
# its first second is handled by ``cli.main`` instead of ending in a traceback.
_EXPORTS = {
    "ImageTransformer": ".data",
    "NumpyCNNClassifier": ".cnn",
    "NumpyMLPClassifier": ".mlp",
    "NumpyMLPRegressor": ".mlp",
    "load_digit_csv": ".data",
    "load_image_folder": ".data",
    "load_model": ".persistence",
    "save_model": ".persistence",
    "write_submission": ".data",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # what static analysers and IDEs see
    from .cnn import NumpyCNNClassifier
    from .data import ImageTransformer, load_digit_csv, load_image_folder, write_submission
    from .mlp import NumpyMLPClassifier, NumpyMLPRegressor
    from .persistence import load_model, save_model


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
