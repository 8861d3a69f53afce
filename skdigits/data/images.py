"""Turn digit pictures (files, PIL images, arrays) into MNIST-like rows.

MNIST digits are white ink on black, their longer side is 20 px and their
centre of mass sits at the centre of a 28 x 28 field. Photos and scans of
handwriting are usually dark ink on light paper, of any size and position.
This module applies MNIST's own recipe to such pictures so that a model
trained on MNIST can read them:

1. decode, apply the EXIF orientation, flatten alpha, convert to grey;
2. decide whether the background is light and, if so, invert;
3. subtract the background level (median of the border pixels) and stretch
   the contrast so that the strongest ink is 1;
4. with ``center=True``: crop to the ink's bounding box, scale its longer side
   to 20 px (for 28 x 28 output, proportionally otherwise) keeping the aspect
   ratio, and paste it so that its centre of mass is at the centre; with
   ``center=False``: only resize to the output size.
"""

import errno
import os
import stat
import warnings
from numbers import Integral
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import Bunch
from sklearn.utils.validation import check_array, validate_data

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageTransformer",
    "load_image_folder",
]

#: Largest image, in pixels, that will be decoded. Far below Pillow's own
#: limit (about 89 million) because a digit never needs more and a 16 Mpx
#: float32 working copy already takes 64 MB.
MAX_IMAGE_PIXELS = 4096 * 4096

#: File name endings recognised as images by :func:`load_image_folder`.
IMAGE_EXTENSIONS = frozenset(
    {
        ".png",
        ".jpg",
        ".jpeg",
        ".jpe",
        ".bmp",
        ".dib",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
    }
)

# MNIST fits each digit in a 20 x 20 box inside the 28 x 28 field.
_BOX_FRACTION = 20 / 28

# Images whose ink is fainter than this fraction of the full scale (about 25
# grey levels out of 255) are treated as blank: stretching them would only
# amplify sensor noise or JPEG artefacts into a fake digit.
_MIN_CONTRAST = 0.1

# Pixels at or below this normalised level do not count towards the bounding
# box; it ignores faint smudges and keeps MNIST's own boxes at exactly 20 px.
_CROP_LEVEL = 0.1

# ITU-R 601-2 luma, the weights Pillow's convert("L") uses.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)

_ON_ERROR_OPTIONS = ("raise", "skip")

# The on_error="skip" warning names this many items and counts the rest.
_WARN_FIRST = 5
_WARN_REASON_CHARS = 200

# Opening a named pipe for reading waits for a writer; O_NONBLOCK returns at
# once (0 where the flag does not exist).
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class _UnreadableImage(Exception):
    """An image source that cannot be decoded; carries the reason."""


# ---------------------------------------------------------------- parameters


def _check_size(size):
    try:
        h, w = size
    except (TypeError, ValueError):
        raise ValueError(
            f"size must be a pair of positive integers (height, width), got {size!r}"
        ) from None
    for v in (h, w):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, Integral) or v < 1:
            raise ValueError(
                f"size must be a pair of positive integers (height, width), got {size!r}"
            )
    h, w = int(h), int(w)
    # Every output row holds h * w values, so an absurd size would otherwise
    # surface as an allocation failure (or an endless feature-name loop).
    if h * w > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"size={size!r} asks for {h * w:,} pixels per image; the largest "
            f"supported output is MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS:,} (4096 x 4096)"
        )
    return h, w


def _allocate_rows(n_images, size):
    try:
        return np.empty((n_images, size[0] * size[1]), dtype=np.float32)
    except MemoryError:
        n_bytes = n_images * size[0] * size[1] * np.dtype(np.float32).itemsize
        raise MemoryError(
            f"{n_images} images at size={size!r} need {n_bytes / 2**30:.1f} GiB of "
            f"float32 rows, more than this machine can allocate; transform them "
            f"in smaller chunks or choose a smaller size"
        ) from None


def _check_invert(invert):
    if isinstance(invert, (bool, np.bool_)):
        return bool(invert)
    if isinstance(invert, str) and invert == "auto":
        return "auto"
    # A plain `in` test would let 1, 0 and 1.0 through as True/False.
    raise ValueError(f"invert must be 'auto', True or False, got {invert!r}")


def _check_center(center):
    if not isinstance(center, (bool, np.bool_)):
        raise ValueError(f"center must be True or False, got {center!r}")
    return bool(center)


def _check_on_error(on_error):
    if not isinstance(on_error, str) or on_error not in _ON_ERROR_OPTIONS:
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error


def _check_extensions(extensions):
    if extensions is None:
        return IMAGE_EXTENSIONS
    if isinstance(extensions, str):
        extensions = [extensions]
    try:
        items = list(extensions)
    except TypeError:
        raise ValueError(
            f"extensions must be a collection of file endings such as {{'.png'}}, "
            f"got {extensions!r}"
        ) from None
    result = set()
    for ext in items:
        if not isinstance(ext, str) or not ext.strip(". "):
            raise ValueError(f"extensions must be non-empty strings such as '.png', got {ext!r}")
        ext = ext.strip().lower()
        result.add(ext if ext.startswith(".") else "." + ext)
    if not result:
        raise ValueError("extensions must name at least one file ending, got an empty collection")
    return frozenset(result)


# ------------------------------------------------------------------ decoding


def _rgb_to_gray(rgb):
    return rgb[..., :3].astype(np.float32) @ _LUMA


def _flatten_alpha(gray, alpha, full_scale):
    """Composite a grey image with its alpha channel onto a plain background.

    The background is chosen opposite to the visible content: dark strokes on
    a transparent canvas (what drawing apps export) go onto white, light
    strokes onto black, so the ink stays visible either way.
    """
    a = alpha.astype(np.float32) / np.float32(full_scale)
    if a.min() >= 1.0:
        return gray
    coverage = float(a.sum())
    if coverage == 0.0:
        return np.zeros_like(gray)
    mean_level = float((a * gray).sum()) / coverage
    background = full_scale if mean_level < full_scale / 2 else 0.0
    return a * gray + (1.0 - a) * np.float32(background)


def _array_to_gray(arr):
    """Grey float32 image and its full-scale value from a (h, w[, c]) array."""
    arr = np.asarray(arr)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise _UnreadableImage(f"pixel values must be numbers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise _UnreadableImage(
            f"an image array must have shape (height, width) or (height, width, "
            f"channels), got shape {arr.shape}"
        )
    if arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4):
        raise _UnreadableImage(
            f"an image array must have 1 (grey), 2 (grey+alpha), 3 (RGB) or "
            f"4 (RGBA) channels, got {arr.shape[2]}"
        )
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise _UnreadableImage("pixel values contain NaN or infinity")
        full_scale = 1.0
        peak = float(np.abs(arr).max())
        if peak > 1e30:
            # Beyond float32's range the grey conversion would overflow to inf;
            # normalisation is per image, so only the shape of the values matters.
            arr = arr.astype(np.float64) / peak
    elif arr.dtype == np.uint16:
        full_scale = 65535.0
    else:
        full_scale = 255.0
    if arr.ndim == 2:
        return arr.astype(np.float32), full_scale
    channels = arr.shape[2]
    gray = _rgb_to_gray(arr) if channels >= 3 else arr[..., 0].astype(np.float32)
    if channels in (2, 4):
        gray = _flatten_alpha(gray, arr[..., -1], full_scale)
    return gray, full_scale


def _pil_to_gray(img):
    """Grey float32 image and its full-scale value from a decoded PIL image."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("L", "LA", "RGB", "RGBA", "F"):
        return _array_to_gray(np.asarray(img))
    if mode.startswith("I;16"):
        return _array_to_gray(np.asarray(img).astype(np.uint16))
    if mode == "I":
        arr = np.asarray(img)
        # Pillow decodes 16-bit PNG and TIFF files as 32-bit "I"; the data
        # range is the only hint of the bit depth.
        full_scale = 65535.0 if arr.max() > 255 else 255.0
        return arr.astype(np.float32), full_scale
    if mode == "1":
        return _array_to_gray(np.asarray(img.convert("L")))
    if mode in ("P", "PA", "La", "RGBa"):
        return _array_to_gray(np.asarray(img.convert("RGBA")))
    return _array_to_gray(np.asarray(img.convert("RGB")))


def _check_pixel_count(img):
    w, h = img.size
    if w * h > MAX_IMAGE_PIXELS:
        raise _UnreadableImage(
            f"{w} x {h} = {w * h} pixels exceeds MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS} "
            "(possible decompression bomb)"
        )


def _file_kind(mode):
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "a special file"


def _not_regular(mode):
    return f"{_file_kind(mode)}, not a regular file; only regular files are read"


def _require_regular_file(mode):
    if not stat.S_ISREG(mode):
        raise _UnreadableImage(_not_regular(mode))


def _open_nonblocking(path, flags):
    return os.open(path, flags | _O_NONBLOCK)


def _open_regular_file(path):
    """Open `path` for binary reading if it is a regular file.

    The name is checked before opening, so a pipe or a device is never
    opened; the open file is checked again, in case the name was swapped in
    between (the non-blocking open keeps even that case from hanging).
    """
    try:
        _require_regular_file(os.stat(path).st_mode)
        f = open(path, "rb", opener=_open_nonblocking)
    except OSError as exc:  # missing, unreadable, a symbolic-link loop, ...
        raise _UnreadableImage(f"{type(exc).__name__}: {exc}") from exc
    try:
        _require_regular_file(os.fstat(f.fileno()).st_mode)
        if _O_NONBLOCK:
            os.set_blocking(f.fileno(), True)
    except BaseException:
        f.close()
        raise
    return f


def _read_image_file(path):
    """Decode an image file into a grey float32 array and its full scale."""
    with warnings.catch_warnings(), _open_regular_file(path) as f:
        # Pillow warns about large images at open() (and some formats at
        # load()); the stricter MAX_IMAGE_PIXELS check in _read_pil_image
        # turns them into an error instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(f)
        except MemoryError:
            raise
        except Exception as exc:  # Pillow raises many types for malformed data
            raise _UnreadableImage(f"{type(exc).__name__}: {exc}") from exc
        with img:
            return _read_pil_image(img)


def _read_pil_image(img):
    """Decode an open Pillow image into a grey float32 array and its full scale."""
    try:
        _check_pixel_count(img)
        # verify() accepts some truncated files; decoding every pixel does not.
        img.load()
        return _pil_to_gray(img)
    except (_UnreadableImage, MemoryError):
        raise
    except Exception as exc:
        raise _UnreadableImage(f"{type(exc).__name__}: {exc}") from exc


def _to_gray(item):
    if isinstance(item, (str, os.PathLike)):
        return _read_image_file(item)
    if isinstance(item, Image.Image):
        return _read_pil_image(item)
    return _array_to_gray(item)


# ------------------------------------------------------------- preprocessing


def _border(g):
    if g.shape[0] <= 2 or g.shape[1] <= 2:
        return g.ravel()
    return np.concatenate([g[0], g[-1], g[1:-1, 0], g[1:-1, -1]])


def _normalise(gray, full_scale, invert):
    """Ink-high image in [0, 1] with background 0, or None when there is no ink."""
    lo, hi = float(gray.min()), float(gray.max())
    min_contrast = _MIN_CONTRAST * full_scale
    if hi - lo <= min_contrast:
        return None
    background = float(np.median(_border(gray)))
    if invert == "auto":
        invert = background > (lo + hi) / 2
    if invert:
        ink, contrast = np.float32(background) - gray, background - lo
    else:
        ink, contrast = gray - np.float32(background), hi - background
    if contrast <= min_contrast:
        return None  # the "ink" is no stronger than noise against the background
    ink /= np.float32(contrast)
    return np.clip(ink, 0.0, 1.0, out=ink)


def _resize(g, shape):
    h, w = shape
    if g.shape == (h, w):
        return g
    img = Image.fromarray(np.ascontiguousarray(g, dtype=np.float32))
    # Pillow widens the bilinear kernel when shrinking, so large photos are
    # area-averaged instead of aliased.
    out = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def _round_half_up(x):
    return int(np.floor(x + 0.5))


def _center(g, size):
    """MNIST recipe: crop to the ink, fit the box, centre of mass to the middle."""
    h, w = size
    ink = g > _CROP_LEVEL
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    crop = g[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    box_h = max(1, _round_half_up(h * _BOX_FRACTION))
    box_w = max(1, _round_half_up(w * _BOX_FRACTION))
    scale = min(box_h / crop.shape[0], box_w / crop.shape[1])
    ph = min(box_h, max(1, _round_half_up(crop.shape[0] * scale)))
    pw = min(box_w, max(1, _round_half_up(crop.shape[1] * scale)))
    patch = _resize(crop, (ph, pw))
    out = np.zeros((h, w), dtype=np.float32)
    mass = float(patch.sum())
    if mass <= 0.0:
        return out
    cy = float(patch.sum(axis=1) @ np.arange(ph)) / mass
    cx = float(patch.sum(axis=0) @ np.arange(pw)) / mass
    # Clamping keeps every stroke inside the field when the ink is very
    # lopsided; the centre of mass is then as close to the middle as possible.
    top = min(max(_round_half_up(h / 2 - cy), 0), h - ph)
    left = min(max(_round_half_up(w / 2 - cx), 0), w - pw)
    out[top : top + ph, left : left + pw] = patch
    return out


def _preprocess(gray, full_scale, size, invert, center):
    g = _normalise(gray, full_scale, invert)
    if g is None:
        return np.zeros(size[0] * size[1], dtype=np.float32)
    g = _center(g, size) if center else _resize(g, size)
    return g.ravel()


# --------------------------------------------------------------- input forms


def _describe(item, index):
    if isinstance(item, (str, os.PathLike)):
        return f"image file {os.fspath(item)!r}"
    filename = getattr(item, "filename", "")
    if isinstance(item, Image.Image) and filename:
        return f"PIL image at index {index} (from {filename!r})"
    return f"image at index {index}"


def _is_image_item(item):
    return (
        isinstance(item, (str, os.PathLike, Image.Image))
        or (isinstance(item, np.ndarray) and item.ndim in (2, 3))
    )


def _image_sequence(X):
    """The images in X as a list if X is a sequence of images, else None (numeric array)."""
    if isinstance(X, (list, tuple)):
        candidates = X
    elif getattr(X, "ndim", None) == 1:
        candidates = X
    elif getattr(X, "ndim", None) == 2 and X.shape[1] == 1:
        # A one-column table of paths, as ColumnTransformer passes for ["path"].
        candidates = X.iloc[:, 0] if hasattr(X, "iloc") else X[:, 0]
    else:
        return None
    if not isinstance(candidates, (list, tuple)):
        if getattr(getattr(candidates, "dtype", None), "kind", None) not in ("O", "U", "S", "T"):
            return None
        candidates = list(candidates)
    if not candidates or not _is_image_item(candidates[0]):
        return None
    return _check_image_sequence(candidates)


def _check_image_sequence(X):
    items = list(X)
    for i, item in enumerate(items):
        if not _is_image_item(item):
            raise ValueError(
                f"every element of X must be a path, a PIL image or an image array; "
                f"element {i} is {type(item).__name__}: {item!r:.60}"
            )
    return items


def _reject_single_image(X):
    if isinstance(X, (str, bytes, os.PathLike, Image.Image)):
        raise ValueError(
            f"X must be a sequence of images, got a single {type(X).__name__}; "
            "wrap it in a list: [X]"
        )


def _square_shape(n_features):
    """Most nearly square (rows, cols) with rows * cols == n_features."""
    rows = int(np.sqrt(n_features))
    while n_features % rows:
        rows -= 1
    return rows, n_features // rows


def _stack_to_images(X):
    """View a validated numeric array as a stack of images."""
    if X.ndim == 2:
        return X.reshape(X.shape[0], *_square_shape(X.shape[1]))
    if X.ndim == 4 and X.shape[3] not in (1, 2, 3, 4):
        raise ValueError(
            f"a 4-D X must have shape (n_samples, height, width, channels) with 1 to 4 "
            f"channels, got shape {X.shape}"
        )
    if X.ndim not in (3, 4):
        raise ValueError(
            f"X must be 2-D (n_samples, height*width), 3-D (n_samples, height, width) or "
            f"4-D (n_samples, height, width, channels), got shape {X.shape}"
        )
    return X


# ------------------------------------------------------------- transformer


class ImageTransformer(TransformerMixin, BaseEstimator):
    """Preprocess digit images into MNIST-like feature rows.

    A stateless transformer: each image is turned into one row of
    ``size[0] * size[1]`` float32 values in [0, 1] with the ink high and the
    background 0, as in MNIST. Use it as the first step of a pipeline so that
    a classifier can be fitted on, and predict from, image files directly.

    Parameters
    ----------
    size : (int, int), default=(28, 28)
        Output height and width.
    invert : {"auto", True, False}, default="auto"
        Whether to invert grey levels so that the ink becomes bright.
        ``"auto"`` inverts when the background (the median of the border
        pixels) is lighter than the middle of the image's grey range, i.e. for
        dark ink on paper.
    center : bool, default=True
        Apply MNIST's recipe: crop to the ink's bounding box, scale its
        longer side to 20 px (for 28 x 28, proportionally for other sizes)
        keeping the aspect ratio and place it with its centre of mass at the
        centre. ``False`` only resizes the whole picture to `size`.

    Attributes
    ----------
    n_features_in_ : int
        Only set when :meth:`fit` receives a 2-D numeric array: the row
        length that :meth:`transform` then requires of 2-D input.
    feature_names_in_ : ndarray of str
        Only set when :meth:`fit` receives a DataFrame with string column
        names.

    See Also
    --------
    load_image_folder : Load a folder of class sub-folders with the same preprocessing.

    Notes
    -----
    Accepted forms of `X`:

    * a sequence (list, tuple, 1-D object/str array or Series) of image file
      paths (str or path-like), PIL images, or per-image arrays of shape
      (h, w) or (h, w, channels) -- the images may differ in size; a
      one-column DataFrame or (n, 1) array of paths counts as such a
      sequence, which is what :class:`~sklearn.compose.ColumnTransformer`
      passes for a ``["path"]`` column selection;
    * an array of shape (n_samples, h, w) -- grey images;
    * an array of shape (n_samples, h, w, channels) with 1 (grey), 2
      (grey + alpha), 3 (RGB) or 4 (RGBA) channels;
    * a 2-D array of shape (n_samples, n_pixels): each row is one image
      flattened in row-major order, of the most nearly square shape
      ``rows x cols`` with ``rows * cols == n_pixels`` (784 -> 28 x 28,
      64 -> 8 x 8, as in MNIST, Kaggle's CSV and ``load_digits``). For
      non-square images pass a 3-D array instead.

    Pixel values may be on any scale (uint8 0-255, floats in [0, 1], ...):
    intensities are normalised per image, the background level going to 0
    and the strongest ink to 1. Integer arrays are taken to span 0-255
    (uint16: 0-65535) and float arrays 0-1 when judging whether an image is
    blank: an image whose grey levels span less than 10% of that range gives
    a row of zeros. NaN and infinity are rejected.

    The same picture gives the same row as a file path, a PIL image or a
    uint8 array, because all three go through the same NumPy code; EXIF
    orientation is applied to files and PIL images (arrays carry none).

    The transformer learns nothing. :meth:`fit` only checks the parameters
    and the form of `X`, and :meth:`transform` may be called without it.

    A file that cannot be read (corrupt, truncated, larger than
    ``MAX_IMAGE_PIXELS``, not a regular file) always raises a ValueError
    naming it: there is deliberately no ``on_error`` parameter. A
    transformer must return one row per input, and in a pipeline it cannot
    drop the label that goes with a bad file; a stand-in row (zeros or NaN)
    would be fitted or predicted as if it were a digit. To leave bad files
    out, load the folder with ``load_image_folder(root, on_error="skip")``,
    which drops each bad file together with its label, and pass its
    ``filenames`` and ``target`` on.

    Examples
    --------
    >>> import numpy as np
    >>> from skdigits.data import ImageTransformer
    >>> page = np.full((40, 30), 255, dtype=np.uint8)   # white paper
    >>> page[10:30, 12:16] = 0                          # a dark "1"
    >>> rows = ImageTransformer().fit_transform(page[np.newaxis])
    >>> rows.shape, rows.dtype, float(rows.max())
    ((1, 784), dtype('float32'), 1.0)
    """

    def __init__(self, size=(28, 28), invert="auto", center=True):
        self.size = size
        self.invert = invert
        self.center = center

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Stateless: transform works on an unfitted instance.
        tags.requires_fit = False
        # Flattened images (n_samples, n_pixels) and image stacks are accepted;
        # the path/PIL sequences have no sklearn tag of their own.
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = True
        # Per-image normalisation makes any real-valued scale meaningful.
        tags.input_tags.positive_only = False
        tags.input_tags.allow_nan = False
        tags.input_tags.sparse = False
        # "string" means string-valued features (as for text vectorisers);
        # path strings here are file references and a 2-D array of strings
        # is rejected, so the tag stays False.
        tags.input_tags.string = False
        # Output is always float32, so float32 is the one dtype preserved.
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

    def _validated_params(self):
        return _check_size(self.size), _check_invert(self.invert), _check_center(self.center)

    def _as_items(self, X, *, reset):
        """Split X into per-image items; numeric arrays are validated like sklearn does."""
        _reject_single_image(X)
        if isinstance(X, (list, tuple)) and not X:
            raise ValueError("X is empty: found 0 sample(s) (images), while a minimum of 1 is required")
        items = _image_sequence(X)
        if items is not None:
            if reset:
                self._forget_input_features()
            return items
        if getattr(X, "ndim", None) is None:
            X = np.asarray(X)
        if X.ndim == 2:
            # Rows are flattened images: their length is the one thing a fit
            # can pin down, so it is recorded and checked like any feature count.
            X = validate_data(self, X, reset=reset, dtype="numeric")
        else:
            X = check_array(X, dtype="numeric", allow_nd=True, input_name="X")
            if reset:
                self._forget_input_features()
        return list(_stack_to_images(X))

    def _forget_input_features(self):
        # A refit on images must not leave a stale row length from a 2-D fit.
        for attr in ("n_features_in_", "feature_names_in_"):
            if attr in self.__dict__:
                delattr(self, attr)

    def fit(self, X, y=None):
        """Check the parameters and the form of `X`; nothing is learned.

        Image files are not opened here, only in :meth:`transform`.

        Parameters
        ----------
        X : sequence of paths or PIL images, or array-like
            See the class Notes for the accepted forms.
        y : None
            Ignored; accepted for pipeline compatibility.

        Returns
        -------
        self : ImageTransformer
            The transformer.

        Examples
        --------
        >>> import numpy as np
        >>> from skdigits.data import ImageTransformer
        >>> ImageTransformer().fit(np.zeros((2, 784))).n_features_in_
        784
        """
        self._validated_params()
        self._as_items(X, reset=True)
        return self

    def transform(self, X):
        """Preprocess every image of `X` into one MNIST-like row.

        Parameters
        ----------
        X : sequence of paths or PIL images, or array-like
            See the class Notes for the accepted forms.

        Returns
        -------
        X_out : ndarray of shape (n_samples, size[0] * size[1]), dtype float32
            Rows in [0, 1], ink high, background 0.

        Raises
        ------
        ValueError
            If an image cannot be read or decoded (the message names the file
            or the index), is larger than ``MAX_IMAGE_PIXELS``, or `X` has an
            unsupported form.

        Examples
        --------
        >>> import numpy as np
        >>> from skdigits.data import ImageTransformer
        >>> ImageTransformer(size=(8, 8)).transform(np.zeros((3, 20, 20))).shape
        (3, 64)
        """
        size, invert, center = self._validated_params()
        items = self._as_items(X, reset=False)
        out = _allocate_rows(len(items), size)
        for i, item in enumerate(items):
            try:
                gray, full_scale = _to_gray(item)
            except _UnreadableImage as exc:
                raise ValueError(f"cannot read {_describe(item, i)}: {exc}") from exc
            out[i] = _preprocess(gray, full_scale, size, invert, center)
        return out

    def get_feature_names_out(self, input_features=None):
        """Output feature names ``pixel0, pixel1, ...`` (Kaggle's naming).

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only checked against what :meth:`fit` saw; the output names do
            not depend on it.

        Returns
        -------
        feature_names_out : ndarray of str objects
            ``size[0] * size[1]`` names.

        Examples
        --------
        >>> from skdigits.data import ImageTransformer
        >>> ImageTransformer(size=(2, 2)).get_feature_names_out().tolist()
        ['pixel0', 'pixel1', 'pixel2', 'pixel3']
        """
        if input_features is not None:
            self._check_input_features(np.asarray(input_features, dtype=object))
        h, w = _check_size(self.size)
        return np.asarray([f"pixel{i}" for i in range(h * w)], dtype=object)

    def _check_input_features(self, input_features):
        n_in = getattr(self, "n_features_in_", None)
        if n_in is not None and len(input_features) != n_in:
            raise ValueError(
                f"input_features should have length equal to number of features "
                f"({n_in}), got {len(input_features)}"
            )
        names_in = getattr(self, "feature_names_in_", None)
        if names_in is not None and not np.array_equal(names_in, input_features):
            raise ValueError("input_features is not equal to feature_names_in_")


# ------------------------------------------------------------ image folder


def _is_hidden(name):
    # ".DS_Store", "._foo.png" (macOS resource forks), ".git", ...
    return name.startswith(".")


def _has_extension(name, extensions):
    return os.path.splitext(name)[1].lower() in extensions


def _visible_entries(folder):
    """The folder's entries without hidden ones, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not _is_hidden(e.name)), key=lambda e: e.name)


def _unreachable(exc):
    return f"a symbolic link or entry that cannot be followed ({exc.strerror or exc})"


def _class_folders(root):
    """Sorted class folder names, and (path, reason) for entries that cannot be examined.

    Plain files and broken links in `root` are passed over (files directly in
    `root` belong to no class); a link loop or an unreadable entry could be a
    class folder, so it is reported.
    """
    names, problems = [], []
    for entry in _visible_entries(root):
        try:
            is_folder = entry.is_dir()  # follows symbolic links
        except OSError as exc:  # e.g. ELOOP: a link to itself
            problems.append((entry.path, _unreachable(exc)))
            continue
        if is_folder:
            names.append(entry.name)
    return names, problems


def _is_within(real, root_real):
    return real == root_real or real.startswith(os.path.join(root_real, ""))


class _FolderScan:
    """Image files below a folder, walked depth first in name order.

    Symbolic links to folders are followed only when they lead inside
    `root` (so a class folder linked to "/" is never walked), and each folder
    is read once: a link back to a folder already read -- a loop -- is
    reported instead of followed. Only regular files are listed; a named pipe
    or a device with an image name is reported, never opened. Reported
    entries are (path, reason) pairs in `problems`.
    """

    def __init__(self, root, extensions):
        self.root_real = os.path.realpath(root)
        self.extensions = extensions
        self.files, self.problems = [], []
        self._read = {}  # (st_dev, st_ino) -> the path it was read as
        self._mark_read(root)  # a link up to the root is a loop too

    def _mark_read(self, folder):
        """Record `folder` as read; return the other path it was read as before, or None."""
        st = os.stat(folder)
        key = (st.st_dev, st.st_ino)
        first = self._read.setdefault(key, str(folder))
        return first if first != str(folder) else None

    def _refusal(self, folder):
        """Why `folder` is not read, or None (and it is marked read)."""
        real = os.path.realpath(folder)
        if not _is_within(real, self.root_real):
            return (f"a symbolic link to {real!r}, outside the image folder "
                    f"{self.root_real!r}; not followed")
        try:
            first = self._mark_read(folder)
        except OSError as exc:
            return _unreachable(exc)
        if first is not None:
            return (f"leads to the folder already read as {first!r} (a symbolic-link "
                    "loop or a second link to it); not read again")
        return None

    def walk(self, folder):
        pending = [str(folder)]
        while pending:
            current = pending.pop()
            refusal = self._refusal(current)
            if refusal is None:
                pending.extend(reversed(self._read_folder(current)))
            else:
                self.problems.append((current, refusal))
        return self

    def _read_folder(self, folder):
        """List the image files of `folder`; return its sub-folders."""
        try:
            entries = _visible_entries(folder)
        except OSError as exc:
            self.problems.append((folder, f"cannot list this folder ({exc.strerror or exc})"))
            return []
        subfolders = []
        for entry in entries:
            is_image = _has_extension(entry.name, self.extensions)
            try:
                mode = entry.stat().st_mode  # follows symbolic links
            except OSError as exc:
                # A broken link is only worth reporting if it was meant as an image.
                if is_image or exc.errno != errno.ENOENT:
                    self.problems.append((entry.path, _unreachable(exc)))
                continue
            if stat.S_ISDIR(mode):
                subfolders.append(entry.path)
            elif is_image and stat.S_ISREG(mode):
                self.files.append(entry.path)
            elif is_image:
                self.problems.append((entry.path, _not_regular(mode)))
        return subfolders


def list_image_files(folder, extensions=IMAGE_EXTENSIONS):
    """Image files below `folder`, recursively, skipping hidden files and folders.

    Symbolic links to folders are followed while they stay inside `folder`,
    each folder once; only regular files are listed.

    Raises
    ------
    ValueError
        Naming the first entry that cannot be used: a named pipe or device
        with an image name, a link leading out of `folder` or back to a
        folder already read, an unreadable folder.
    """
    scan = _FolderScan(folder, extensions).walk(folder)
    if scan.problems:
        path, reason = scan.problems[0]
        raise ValueError(f"cannot use {path!r}: {reason}")
    return scan.files


def _check_root(root):
    try:
        root = Path(root)
    except TypeError:
        raise ValueError(f"root must be a path to a folder, got {root!r}") from None
    try:
        mode = os.stat(root).st_mode
    except FileNotFoundError:
        raise ValueError(f"image folder {str(root)!r} does not exist") from None
    except OSError as exc:
        raise ValueError(f"image folder {str(root)!r} cannot be opened ({exc.strerror})") from None
    if not stat.S_ISDIR(mode):
        raise ValueError(f"image folder {str(root)!r} is not a folder")
    return root


class _Skipped:
    """What on_error does with an unusable item: raise, or keep a list and warn once."""

    def __init__(self, on_error):
        self.on_error = on_error
        self.items = []

    def add(self, path, reason, message, cause=None):
        if self.on_error == "raise":
            raise ValueError(message) from cause
        self.items.append((str(path), reason))

    def warn(self):
        if not self.items:
            return
        n = len(self.items)
        shown = "\n".join(f"  {path}: {reason[:_WARN_REASON_CHARS]}"
                          for path, reason in self.items[:_WARN_FIRST])
        more = f"\n  ... and {n - _WARN_FIRST} more" if n > _WARN_FIRST else ""
        warnings.warn(
            f"load_image_folder skipped {n} item(s) that could not be used "
            f"(the result's 'skipped' lists them all):\n{shown}{more}",
            UserWarning,
            stacklevel=3,
        )


def load_image_folder(
    root, *, size=(28, 28), invert="auto", center=True, extensions=None, on_error="raise"
):
    """Load a folder of digit pictures, one sub-folder per class.

    The layout is that of torchvision's ``ImageFolder``: ``root/<class>/...``.
    Class names are the sub-folder names, sorted as strings; the files of a
    class may sit in nested folders. Hidden files and folders (names starting
    with ".") and files without an image extension are passed over, as are
    files directly inside `root`. Symbolic links to folders are followed
    while they stay inside `root`, each folder once per class; only regular
    files are read. Every image goes through the same preprocessing as
    :class:`ImageTransformer`.

    Parameters
    ----------
    root : str or path-like
        Folder holding one sub-folder per class.
    size : (int, int), default=(28, 28)
        Output image height and width.
    invert : {"auto", True, False}, default="auto"
        See :class:`ImageTransformer`.
    center : bool, default=True
        See :class:`ImageTransformer`.
    extensions : collection of str or None, default=None
        File endings to load, case-insensitive, with or without the dot.
        None means :data:`IMAGE_EXTENSIONS` (PNG, JPEG, BMP, GIF, TIFF, WebP,
        PGM/PPM/PBM/PNM).
    on_error : {"raise", "skip"}, default="raise"
        What to do with an item that cannot be used: a file that cannot be
        decoded (or is larger than ``MAX_IMAGE_PIXELS``), an image name that
        is not a regular file (a named pipe, a device), a symbolic link that
        leads out of `root`, back to a folder already read or nowhere, a
        folder that cannot be listed, and a class folder without images.
        ``"raise"`` raises a ValueError naming it; ``"skip"`` leaves it out
        (with its label, so `filenames` and `target` stay aligned), lists it
        in `skipped` and emits one UserWarning counting the items left out
        and naming the first five. An empty class keeps its place in
        `target_names`.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With the fields

        data : ndarray of shape (n_samples, size[0] * size[1]), float32
            Rows in [0, 1], ink high, as in MNIST.
        images : ndarray of shape (n_samples, size[0], size[1]), float32
            The same values as images (a view of `data`).
        target : ndarray of shape (n_samples,), int64
            Index of the class in `target_names`.
        target_names : ndarray of str
            Sorted class folder names.
        filenames : ndarray of str
            Path of each file.
        skipped : list of (str, str)
            ``(path, reason)`` for every item left out with
            ``on_error="skip"``; empty otherwise.

    Raises
    ------
    ValueError
        If a parameter is invalid, `root` does not exist or has no class
        sub-folders, no image could be loaded, or (with ``on_error="raise"``)
        a file is unreadable or a class folder has no images.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skdigits.data import load_image_folder
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for digit in "17":
    ...     (root / digit).mkdir()
    ...     page = np.full((32, 32), 255, dtype=np.uint8)
    ...     page[6:26, 14:18] = 0
    ...     Image.fromarray(page).save(root / digit / "a.png")
    >>> digits = load_image_folder(root)
    >>> digits.data.shape, digits.target.tolist(), digits.target_names.tolist()
    ((2, 784), [0, 1], ['1', '7'])
    """
    size = _check_size(size)
    invert = _check_invert(invert)
    center = _check_center(center)
    extensions = _check_extensions(extensions)
    on_error = _check_on_error(on_error)
    root = _check_root(root)

    skipped = _Skipped(on_error)
    class_names, problems = _class_folders(root)
    for path, reason in problems:
        skipped.add(path, reason, f"cannot use {path!r}: {reason}")
    if not class_names:
        skipped.warn()
        raise ValueError(
            f"image folder {str(root)!r} has no class sub-folders; expected root/<class>/<image>"
        )

    rows, targets, filenames = [], [], []
    for label, name in enumerate(class_names):
        folder = str(root / name)
        scan = _FolderScan(root, extensions).walk(folder)
        for path, reason in scan.problems:
            skipped.add(path, reason, f"cannot use {path!r}: {reason}")
        if not scan.files and not scan.problems:
            skipped.add(folder, "no image files in this class folder",
                        f"class folder {folder!r} has no image files")
        for path in scan.files:
            try:
                gray, full_scale = _read_image_file(path)
            except _UnreadableImage as exc:
                skipped.add(path, str(exc), f"cannot read image file {path!r}: {exc}", exc)
                continue
            rows.append(_preprocess(gray, full_scale, size, invert, center))
            targets.append(label)
            filenames.append(path)

    skipped.warn()
    if not rows:
        raise ValueError(f"no image in {str(root)!r} could be loaded")

    data = np.stack(rows)
    return Bunch(
        data=data,
        images=data.reshape(len(rows), *size),
        target=np.asarray(targets, dtype=np.int64),
        target_names=np.asarray(class_names, dtype=str),
        filenames=np.asarray(filenames, dtype=str),
        skipped=skipped.items,
    )
