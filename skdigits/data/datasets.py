"""Read the digits a command works on, whatever file they come in.

The ``skdigits`` commands take a Kaggle CSV, a ``.npz`` archive or image
folders; this module turns each into a :class:`Dataset` so that the command
line only deals with arguments, progress and files.  Every problem with the
data is a ``ValueError`` naming the file; the command line turns it into one
line on stderr.
"""

import warnings
import zipfile
from pathlib import Path

import numpy as np

from .images import IMAGE_EXTENSIONS, list_image_files, load_image_folder
from .kaggle import load_digit_csv

__all__ = ["Dataset", "MAX_NPZ_ARRAY_BYTES", "bundled_digits", "pixel_rows",
           "read_labelled", "read_unlabelled", "is_table", "transform_images"]

#: Largest array read from a ``.npz`` archive.  Its header declares the size,
#: and NumPy allocates it before reading: a small, highly compressed file can
#: otherwise ask for any amount of memory.  Full MNIST is 47 MB.
MAX_NPZ_ARRAY_BYTES = 2**31

_NPZ_KEYS = {  # split -> (X, y) key pairs, in order of preference
    "train": (("X_train", "y_train"), ("X", "y")),
    "test": (("X_test", "y_test"), ("X", "y")),
}

_TABLE_SUFFIXES = (".csv", ".npz")


class Dataset:
    """Digits as the model pipeline takes them.

    Parameters
    ----------
    X : ndarray or list of str
        Raw pixels (rows or images) or image file paths.
    y : ndarray or None
        Labels, or None for unlabelled digits.
    description : str
        What was read, for the user: ``"train.csv (42000 rows)"``.
    kind : {"csv", "npz", "images"}
        Where the digits came from.
    rows : ndarray or None, default=None
        The same digits already preprocessed by the default
        ``ImageTransformer``, when the loader did that work anyway (image
        folders); else None.
    """

    def __init__(self, X, y, description, kind, rows=None):
        self.X, self.y, self.description, self.kind = X, y, description, kind
        self.rows = rows

    def __len__(self):
        return len(self.X)


# ----------------------------------------------------------------- .npz
def _declared_bytes(archive, member):
    """Bytes that the ``.npy`` header of `member` declares."""
    with archive.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    return int(np.prod(shape, dtype=object)) * dtype.itemsize


def _check_npz_sizes(path, keys):
    try:
        with zipfile.ZipFile(path) as archive:
            for key in keys:
                member = f"{key}.npy"
                if member in archive.namelist():
                    size = _declared_bytes(archive, member)
                    if size > MAX_NPZ_ARRAY_BYTES:
                        raise ValueError(
                            f"{path}: array {key} declares {size:,} bytes, more than "
                            f"MAX_NPZ_ARRAY_BYTES = {MAX_NPZ_ARRAY_BYTES:,}")
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc


def _read_npz(path, split, need_labels):
    # The file is opened here, not by np.load, so that it is closed whatever
    # np.load raises (a damaged zip left it open).
    with open(path, "rb") as f:
        try:
            arrays = np.load(f, allow_pickle=False)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{path}: not a readable .npz file ({exc})") from exc
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise ValueError(f"{path}: holds a single array, not named arrays "
                             f"({' or '.join(x for x, _ in _NPZ_KEYS[split])})")
        with arrays:
            X, y, keys = _npz_arrays(path, arrays, split, need_labels)
    if X.ndim not in (2, 3, 4) or X.dtype.kind not in "fiub":
        raise ValueError(f"{path}: {keys[0]} must be numeric images (n, pixels) or (n, h, w), "
                         f"got {X.dtype} {X.shape}")
    if y is not None and (y.ndim != 1 or len(y) != len(X)):
        raise ValueError(f"{path}: {keys[0]} has {len(X)} rows but {keys[1]} has shape "
                         f"{y.shape}")
    return Dataset(X, y, f"{path} [{', '.join(keys)}] ({len(X)} images)", "npz")


def _npz_arrays(path, arrays, split, need_labels):
    """(X, y or None, the keys read) from an open NpzFile."""
    names = set(arrays.files)
    for x_key, y_key in _NPZ_KEYS[split]:
        if x_key in names and (y_key in names or not need_labels):
            break
    else:
        wanted = " or ".join(f"{x} and {y}" if need_labels else x for x, y in _NPZ_KEYS[split])
        raise ValueError(f"{path}: expected arrays {wanted}, found {sorted(names) or 'none'}")
    keys = [x_key, y_key] if need_labels else [x_key]
    _check_npz_sizes(path, keys)
    try:
        X = arrays[x_key]
        y = arrays[y_key] if need_labels else None
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        # object arrays would need pickle; damaged members fail here
        raise ValueError(f"{path}: cannot read {'/'.join(keys)} ({exc})") from exc
    return X, y, keys


# ----------------------------------------------------------------- labelled
def _folder_labels(bunch):
    """Class folder names as labels: integers when they all are ('0' ... '9')."""
    names = bunch.target_names
    if all(name.isdigit() for name in names):
        return names.astype(np.int64)[bunch.target]
    return names[bunch.target]


def _read_folder(path, on_error):
    bunch = load_image_folder(path, on_error=on_error)
    return Dataset(list(bunch.filenames), _folder_labels(bunch),
                   f"image folder {path} ({len(bunch.target)} images, "
                   f"{len(bunch.target_names)} classes)",
                   "images", rows=bunch.data)


def _check_exists(path):
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")


def read_labelled(path, split="train", *, on_error="raise"):
    """Read labelled digits from a Kaggle CSV, a ``.npz`` file or an image folder.

    Parameters
    ----------
    path : str or path-like
        A CSV with a ``label`` column, a ``.npz`` with arrays ``X_train`` and
        ``y_train`` (``X_test`` and ``y_test`` for ``split="test"``; ``X`` and
        ``y`` for either), or a folder with one sub-folder per class.
    split : {"train", "test"}, default="train"
        Which arrays of a ``.npz`` file to prefer.
    on_error : {"raise", "skip"}, default="raise"
        For image folders: what to do with a file that cannot be decoded
        (see :func:`~skdigits.load_image_folder`).

    Returns
    -------
    data : Dataset
        With labels; for folders, class names made of digits become integers.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file is not one of the above or its content is unusable; the
        message names the file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from skdigits.data.datasets import read_labelled
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "digits.npz"
    >>> np.savez(path, X=np.zeros((3, 784), np.uint8), y=np.array([1, 2, 3]))
    >>> data = read_labelled(path)
    >>> data.kind, len(data), data.y.tolist()
    ('npz', 3, [1, 2, 3])
    """
    path = Path(path)
    _check_exists(path)
    if path.is_dir():
        return _read_folder(path, on_error)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, split, need_labels=True)
    if suffix == ".csv":
        bunch = load_digit_csv(path)
        if bunch.target is None:
            raise ValueError(f"{path}: no 'label' column; a labelled CSV is needed here")
        return Dataset(bunch.data, bunch.target, f"{path} ({len(bunch.target)} rows)", "csv")
    raise ValueError(f"{path}: expected a Kaggle .csv file, a .npz file or an image folder "
                     "(one sub-folder per class)")


def bundled_digits():
    """scikit-learn's 1,797 bundled 8 x 8 digits as a :class:`Dataset` (no download).

    Returns
    -------
    data : Dataset
        ``X`` of shape (1797, 64), pixels 0-16.

    Examples
    --------
    >>> from skdigits.data.datasets import bundled_digits
    >>> bundled_digits().X.shape
    (1797, 64)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    return Dataset(digits.data, digits.target,
                   "scikit-learn's bundled digits (1797 x 64)", "npz")


def pixel_rows(data):
    """One row of pixels per digit: image folders' preprocessed rows, arrays flattened.

    Parameters
    ----------
    data : Dataset

    Returns
    -------
    X : ndarray of shape (n_samples, n_pixels)

    Examples
    --------
    >>> import numpy as np
    >>> from skdigits.data.datasets import Dataset, pixel_rows
    >>> pixel_rows(Dataset(np.zeros((2, 8, 8)), None, "two blank digits", "npz")).shape
    (2, 64)
    """
    if data.rows is not None:
        return data.rows
    return np.asarray(data.X).reshape(len(data), -1)


# ----------------------------------------------------------------- unlabelled
def read_unlabelled(paths):
    """Read digits to predict: one CSV or ``.npz``, or any number of images and folders.

    Parameters
    ----------
    paths : sequence of str or path-like
        One Kaggle CSV (labels, if present, are ignored) or ``.npz`` (arrays
        ``X_test`` or ``X``); or image files and folders, searched
        recursively (hidden files left out).

    Returns
    -------
    data : Dataset
        Without labels.  For images, ``X`` is the list of file paths: files
        are decoded later, by the model's own preprocessing.

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    ValueError
        If a CSV or ``.npz`` comes with other paths, a folder holds no
        images, a file is of another kind, or a table is unusable.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> from skdigits.data.datasets import read_unlabelled
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("L", (28, 28), 255).save(folder / "a.png")
    >>> data = read_unlabelled([folder])
    >>> data.kind, len(data), data.y is None
    ('images', 1, True)
    """
    paths = [Path(p) for p in paths]
    for path in paths:
        _check_exists(path)
    tables = [p for p in paths if is_table(p)]
    if tables:
        if len(paths) > 1:
            raise ValueError("give one .csv or .npz file, or any number of images and folders")
        return _read_table(tables[0])
    files = []
    for path in paths:
        files.extend(_image_files(path))
    what = f"{paths[0]}" if len(paths) == 1 else f"{len(paths)} paths"
    return Dataset(files, None, f"{what} ({len(files)} images)", "images")


def is_table(path):
    """True for an existing ``.csv`` or ``.npz`` file (a table of digits, not images)."""
    path = Path(path)
    return path.is_file() and path.suffix.lower() in _TABLE_SUFFIXES


def _read_table(path):
    if path.suffix.lower() == ".npz":
        return _read_npz(path, "test", need_labels=False)
    bunch = load_digit_csv(path)
    return Dataset(bunch.data, None, f"{path} ({len(bunch.data)} rows)", "csv")


def _image_files(path):
    if path.is_dir():
        inside = list_image_files(path)
        if not inside:
            raise ValueError(f"{path}: no image files in this folder")
        return inside
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return [str(path)]
    raise ValueError(f"{path}: expected a Kaggle .csv file, a .npz file, image files "
                     "or folders of images")


# ----------------------------------------------------------------- decoding
#: Files decoded per call when bad ones are skipped: one failing file costs a
#: retry of its chunk file by file, not of everything.
_CHUNK = 256


def transform_images(transformer, files, *, on_error="raise"):
    """Decode image files with `transformer`, optionally skipping unreadable ones.

    Parameters
    ----------
    transformer : transformer
        The model's preprocessing (e.g. an ``ImageTransformer``); its
        ``transform`` must raise ``ValueError`` for a file it cannot read.
    files : list of str
        Image file paths.
    on_error : {"raise", "skip"}, default="raise"
        ``"skip"`` leaves out each file that `transformer` refuses and emits
        one UserWarning listing them.

    Returns
    -------
    rows : ndarray
        ``transformer.transform`` of the files kept.
    kept : list of str
        The files kept, in order.

    Raises
    ------
    ValueError
        With ``on_error="raise"``, the first unreadable file; with
        ``"skip"``, when no file could be read.

    Examples
    --------
    >>> import tempfile, pathlib, warnings
    >>> from PIL import Image
    >>> from skdigits.data import ImageTransformer
    >>> from skdigits.data.datasets import transform_images
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> Image.new("L", (28, 28), 255).save(folder / "good.png")
    >>> _ = (folder / "bad.png").write_bytes(b"not an image")
    >>> files = [str(folder / "good.png"), str(folder / "bad.png")]
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     rows, kept = transform_images(ImageTransformer(), files, on_error="skip")
    >>> rows.shape, [pathlib.Path(f).name for f in kept], len(caught)
    ((1, 784), ['good.png'], 1)
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if on_error == "raise":
        return transformer.transform(files), list(files)
    parts, kept, skipped = [], [], []
    for start in range(0, len(files), _CHUNK):
        chunk = files[start:start + _CHUNK]
        try:
            parts.append(transformer.transform(chunk))
            kept.extend(chunk)
            continue
        except ValueError:
            pass
        for path in chunk:  # find the culprits one by one
            try:
                parts.append(transformer.transform([path]))
                kept.append(path)
            except ValueError as exc:
                skipped.append((path, str(exc)))
    if skipped:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
        warnings.warn(f"skipped {len(skipped)} image file(s) that could not be read:\n"
                      f"{listing}", UserWarning, stacklevel=2)
    if not parts:
        raise ValueError(f"none of the {len(files)} image files could be read")
    return np.concatenate(parts), kept

