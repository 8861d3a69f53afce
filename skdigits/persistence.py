"""Safe model files: skops archives loaded against a fixed allow-list of types.

A pickle (or a joblib file, which is a pickle) runs whatever code its author
chose the moment it is loaded.  Models are therefore saved with
:mod:`skops.io`, a zip archive of JSON and ``.npy`` arrays from which objects
are rebuilt by setting their attributes, and :func:`load_model` only rebuilds
types from :func:`trusted_types`: this package's estimators, layers,
optimizers and preprocessing, plus what skops already trusts (scikit-learn's
estimators such as ``Pipeline`` and ``LabelBinarizer``, builtins, NumPy
arrays and random generators).  A file naming any other type is refused
before anything in it is imported or constructed.

Example
-------
>>> import tempfile, pathlib
>>> from sklearn.datasets import load_digits
>>> from skdigits import NumpyMLPClassifier
>>> from skdigits.persistence import load_model, save_model
>>> X, y = load_digits(return_X_y=True)
>>> clf = NumpyMLPClassifier((16,), solver="lbfgs", max_iter=500, random_state=0).fit(X / 16, y)
>>> path = save_model(clf, pathlib.Path(tempfile.mkdtemp()) / "digits.skops")
>>> bool((load_model(path).predict_proba(X / 16) == clf.predict_proba(X / 16)).all())
True
"""

import os
from pathlib import Path

__all__ = ["load_model", "save_model", "trusted_types"]

#: First bytes of a zip archive, which every skops file is.
_ZIP_MAGIC = b"PK\x03\x04"
#: A pickle of protocol 2 or higher (joblib's uncompressed files too) starts
#: with the PROTO opcode.
_PICKLE_PROTO = b"\x80"
#: zlib headers, how joblib's compressed files start.
_ZLIB_HEADERS = (b"\x78\x01", b"\x78\x5e", b"\x78\x9c", b"\x78\xda")

# numpy dtypes are stored by skops as an empty .npy array (no pickle) and
# rebuilt from it; skops lists them as untrusted only because it has no
# default for them.
_NUMPY_TYPES = ("numpy.dtype",)


def _type_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def trusted_types():
    """The types :func:`load_model` rebuilds beyond skops' own defaults.

    Returns
    -------
    names : list of str
        Sorted fully qualified type names: the estimators, the engine's
        network, layers and optimizers, the training history, the image
        preprocessing, and ``numpy.dtype``.
    """
    from .cnn import NumpyCNNClassifier
    from .data.images import ImageTransformer
    from .mlp import NumpyMLPClassifier, NumpyMLPRegressor
    from .nn.conv import Conv2D, Flatten, MaxPool2D
    from .nn.layers import Activation, Dense, Dropout
    from .nn.network import Network
    from .nn.normalization import BatchNorm
    from .nn.optimizers import SGD, Adam
    from .training import TrainingHistory

    classes = [NumpyMLPClassifier, NumpyMLPRegressor, NumpyCNNClassifier, Network, Dense,
               Dropout, Conv2D, MaxPool2D, Flatten, BatchNorm, Activation, Adam, SGD,
               TrainingHistory, ImageTransformer]
    return sorted({_type_name(cls) for cls in classes} | set(_NUMPY_TYPES))


def save_model(estimator, path):
    """Save a fitted estimator or pipeline to a skops file, atomically.

    The file appears at `path` complete or not at all (it is written to a
    temporary file in the same folder and moved into place).

    Parameters
    ----------
    estimator : estimator or Pipeline
        Typically a fitted ``Pipeline`` ending in a skdigits classifier.
    path : str or path-like
        Destination; ``.skops`` is the customary ending.  Its folder must exist.

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    ValueError
        If the estimator holds a type that :func:`load_model` would refuse
        (nothing is written then).
    """
    import skops.io as sio

    from .data import atomic_write

    data = sio.dumps(estimator)
    unknown = sorted(set(sio.get_untrusted_types(data=data)) - set(trusted_types()))
    if unknown:
        raise ValueError(
            f"cannot save a model holding type(s) that load_model would refuse: "
            f"{', '.join(unknown)}"
        )
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def _refuse_non_skops(path, head):
    where = os.fspath(path)
    if head.startswith(_PICKLE_PROTO) or head[:2] in _ZLIB_HEADERS:
        raise ValueError(
            f"{where}: this looks like a pickle or joblib file; it was not loaded because "
            "loading a pickle can run arbitrary code. Re-save the model with "
            "skdigits.save_model (a .skops file) from a trusted session."
        )
    raise ValueError(f"{where}: not a skops model file (a skops file is a zip archive)")


#: A real model's schema.json is tens of kilobytes; a larger one is refused
#: before it is inflated (a 33 kB file can hold a 32 MB schema).
MAX_SCHEMA_BYTES = 16 * 2**20
#: Cap on the total inflated size of a model file's members.
MAX_UNCOMPRESSED_BYTES = 2 * 2**30


def _check_archive_sizes(where, data):
    """Refuse zip bombs from the sizes in the zip directory, before inflating."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{where}: not a readable skops model file "
                         f"({type(exc).__name__}: {exc})") from exc
    schema = [m.file_size for m in members if m.filename == "schema.json"]
    if schema and schema[0] > MAX_SCHEMA_BYTES:
        raise ValueError(f"{where}: refusing to load: its schema.json would inflate to "
                         f"{schema[0]:,} bytes (limit {MAX_SCHEMA_BYTES:,}); not a model "
                         "file written by skdigits")
    total = sum(m.file_size for m in members)
    if total > MAX_UNCOMPRESSED_BYTES:
        raise ValueError(f"{where}: refusing to load: its members would inflate to "
                         f"{total:,} bytes (limit {MAX_UNCOMPRESSED_BYTES:,})")


def load_model(path):
    """Load a model saved by :func:`save_model`, refusing anything unsafe.

    Only skops files are read.  Before any object is built, the types the
    file names are checked against :func:`trusted_types` (plus skops'
    defaults: scikit-learn estimators, builtins, NumPy arrays and random
    generators); pickles and joblib files are refused without being read
    further.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    estimator : the saved estimator or pipeline

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError
        If `path` cannot be read.
    ValueError
        If the file is not a skops file (e.g. a pickle), is damaged, or names
        a type outside the allow-list; the message names the type(s).
    """
    import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_ZIP_MAGIC):
        _refuse_non_skops(path, data[:8])
    where = os.fspath(path)
    _check_archive_sizes(where, data)
    allowed = trusted_types()
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # noqa: BLE001 - any failure to read the audit is damage
        # zipfile, zlib and json report damaged input with many exception
        # types (a bad archive, a corrupt stream, an unsupported compression
        # or encryption flag, a schema nested too deep or of the wrong shape);
        # all mean the same thing to the user, and nothing has been built.
        raise ValueError(f"{where}: not a readable skops model file "
                         f"({type(exc).__name__}: {exc})") from exc
    unknown = sorted(set(untrusted) - set(allowed))
    if unknown:
        raise ValueError(
            f"{where}: refusing to load type(s) outside skdigits' allow-list: "
            f"{', '.join(unknown)}"
        )
    try:
        return sio.loads(data, trusted=allowed)
    except UntrustedTypesFoundException as exc:  # belt and braces: skops' own audit
        raise ValueError(f"{where}: refusing to load: {exc}") from exc
    except Exception as exc:  # only allowed types are built: anything failing is damage
        raise ValueError(f"{where}: cannot rebuild the model ({type(exc).__name__}: {exc})") \
            from exc
