"""Random distortions of digit images for training: affine and elastic.

A training epoch sees every digit once; showing it rotated, slanted, resized,
shifted or gently warped instead teaches the network the variations of real
handwriting and is the classic way to lower the MNIST error (Simard,
Steinkraus & Platt 2003; Cireşan et al. 2010).

:class:`Augmentation` holds the settings like any scikit-learn estimator
(``get_params``, ``set_params``, ``clone``, nested ``augment__rotation``
keys in a grid search).  :meth:`Augmentation.transform_batch` distorts a
whole batch at once, with no Python loop over the images:

1. draw every image's angle, shear, scale and shift in one call to the
   random generator and turn them into the inverse affine maps (output pixel
   -> input position), an (n, 2, 3) array;
2. the sampling positions of the whole batch are one matrix product of those
   maps with the pixel coordinates, stored as two planes (rows, columns) of
   shape (n, height, width) so that every later pass is contiguous;
3. for elastic distortion, draw uniform(-1, 1) displacement fields for the
   whole batch, smooth them with a Gaussian of width σ written as two
   matrix products (the filter is linear: ``G_rows @ field @ G_cols.T``)
   instead of a per-image convolution, and add them to the positions;
4. one bilinear interpolation for the batch: the images are padded with the
   background value, the four neighbours of every sampling point are
   gathered with ``np.take`` from the padded stack, and blended.

Work arrays are reused from batch to batch (one set per thread), and
``transform_batch`` only reads its input and its generator: call it from a
prefetch thread with that thread's own generator.

Pixels brought in from outside an image take the background value
(``fill``): each image's minimum by default, which is 0 for MNIST-style
digits (ink high, background 0) in any scaling that keeps the background
lowest.

:func:`warp_images` applies given distortions (no randomness): the
building block, and what the tests compare with SciPy's per-image
``affine_transform`` and ``map_coordinates``.  :func:`make_augmentation`
turns ``None``, ``"affine"`` or ``"elastic"`` into settings, and
:func:`make_handwriting_variations` builds a test set of digits varied like
handwriting.

Geometry, in pixels with rows pointing down: the centre of an ``h x w``
image is ``((h - 1) / 2, (w - 1) / 2)``; a positive angle turns the digit
anticlockwise as seen on screen; a positive shear slants it forward like
italics (the top moves right); a shift is ``(down, right)``.
"""

import threading
from dataclasses import dataclass
from functools import lru_cache
from numbers import Integral, Real

import numpy as np
from scipy import ndimage
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, StrOptions

__all__ = [
    "PRESETS",
    "Augmentation",
    "FrozenAugmentation",
    "elastic_displacement",
    "make_augmentation",
    "make_handwriting_variations",
    "sampling_grid",
    "smooth_fields",
    "square_images",
    "warp_images",
]

#: Side of the images the pixel-valued preset settings are given for (MNIST).
REFERENCE_SIDE = 28

#: The named settings of :func:`make_augmentation`, for 28 x 28 digits.
#:
#: ``"affine"`` is the recipe of the widely used Keras examples for MNIST
#: (rotation up to 10 degrees, zoom 0.9-1.1, shifts up to a tenth of the
#: side, i.e. 2.8 px) plus a forward or backward slant up to 10 degrees, the
#: most common variation of handwriting that rotation does not cover.
#: ``"elastic"`` is Simard et al. (2003)'s elastic distortion with the
#: smoother field of Cireşan et al. (2010), σ = 5 px and α = 36 px (Simard's
#: σ = 4, α = 34 tears thin strokes visibly more), on top of half the affine
#: ranges: Cireşan et al. combined elastic fields with rotation, shearing and
#: scaling, and the field itself already moves pixels by about 1.2 px.
PRESETS = {
    "affine": dict(rotation=10.0, shear=10.0, scale=(0.9, 1.1), translation=0.1,
                   elastic_alpha=0.0, elastic_sigma=4.0),
    "elastic": dict(rotation=5.0, shear=5.0, scale=(0.95, 1.05), translation=0.05,
                    elastic_alpha=36.0, elastic_sigma=5.0),
}

#: "Handwriting variations" (see :func:`make_handwriting_variations`).
HANDWRITING = dict(rotation=20.0, shear=15.0, scale=(0.8, 1.15),
                   translation=3.0 / REFERENCE_SIDE, elastic_alpha=0.0)


# ----------------------------------------------------------------- settings
class Augmentation(BaseEstimator):
    """Random affine and elastic distortions of digit images.

    Each image gets its own random rotation, shear, scale and shift (all
    drawn uniformly in the given ranges) and, with ``elastic_alpha > 0``, an
    elastic distortion (Simard et al. 2003): a random displacement field,
    uniform(-1, 1) per pixel, smoothed by a Gaussian of standard deviation
    `elastic_sigma` and multiplied by `elastic_alpha`.  The defaults are the
    ``"affine"`` preset of :func:`make_augmentation`.

    Like a scikit-learn estimator, ``__init__`` only stores the settings;
    they are checked when used.

    Parameters
    ----------
    rotation : float, default=10.0
        Largest rotation, in degrees (0 to 180): angles are drawn from
        ``[-rotation, rotation]``.
    shear : float, default=10.0
        Largest slant, in degrees (0 to 80): shear angles are drawn from
        ``[-shear, shear]``; positive slants forward like italics.
    scale : float or (float, float), default=(0.9, 1.1)
        Range of the size factor: ``(low, high)`` with ``0 < low <= high``, or
        ``s`` in [0, 1) for ``(1 - s, 1 + s)``.  Same factor for height and
        width.
    translation : float, default=0.1
        Largest shift, as a fraction of the image's height (vertically) and
        width (horizontally), from 0 to 1: 0.1 is up to 2.8 px on 28 x 28
        digits.
    elastic_alpha : float, default=0.0
        Scale α of the elastic displacement field, in pixels; 0 turns elastic
        distortion off.  Simard et al. use 34 on 28 x 28 digits.
    elastic_sigma : float, default=4.0
        Standard deviation σ, in pixels, of the Gaussian that smooths the
        displacement field: small values tear strokes, large ones only
        shift the digit.  Simard et al. use 4.  The typical displacement is
        about ``0.16 * alpha / sigma`` pixels.
    probability : float, default=1.0
        Chance that an image is distorted at all; the others are returned
        unchanged (exactly).
    stroke_change : float, default=0.0
        Chance, from 0 to 1, that an image's strokes are made one pixel
        bolder or finer (half of them each way) before the other
        distortions: grey dilation or erosion with a 2 x 2 square, as pens
        of another width would write.  Drawn for every image, whatever
        `probability` decides for the geometry.
    fill : "min" or float, default="min"
        Value of the pixels brought in from outside an image: ``"min"`` takes
        each image's (and channel's) minimum, the background of digits whose
        ink is high, whatever their scaling; or a number.

    See Also
    --------
    make_augmentation : Settings from a preset name.
    warp_images : Apply given (not random) distortions.

    Notes
    -----
    :meth:`transform_batch` checks the settings on every call (tens of
    microseconds).  A training loop calls :meth:`frozen` once and then the
    snapshot's ``transform_batch`` per batch: same results, no re-checking,
    and later ``set_params`` calls cannot change a running epoch.

    References
    ----------
    P. Y. Simard, D. Steinkraus and J. C. Platt, "Best practices for
    convolutional neural networks applied to visual document analysis",
    ICDAR 2003.

    Examples
    --------
    >>> import numpy as np
    >>> from skdigits.augmentation import Augmentation
    >>> digits = np.zeros((4, 28, 28), dtype=np.float32)
    >>> digits[:, 6:22, 12:16] = 1.0                      # four "1"s
    >>> rng = np.random.default_rng(0)
    >>> varied = Augmentation(rotation=15).transform_batch(digits, rng)
    >>> varied.shape, varied.dtype
    ((4, 28, 28), dtype('float32'))
    >>> bool(np.all(varied == digits))
    False
    >>> same = Augmentation(probability=0).transform_batch(digits, rng)
    >>> bool(np.all(same == digits))
    True
    """

    _parameter_constraints: dict = {
        "rotation": [Interval(Real, 0, 180, closed="both")],
        "shear": [Interval(Real, 0, 80, closed="both")],
        "scale": [Interval(Real, 0, 1, closed="left"), "array-like"],
        "translation": [Interval(Real, 0, 1, closed="both")],
        "elastic_alpha": [Interval(Real, 0, None, closed="left")],
        "elastic_sigma": [Interval(Real, 0, None, closed="neither")],
        "probability": [Interval(Real, 0, 1, closed="both")],
        "stroke_change": [Interval(Real, 0, 1, closed="both")],
        "fill": [StrOptions({"min"}), Interval(Real, None, None, closed="neither")],
    }

    def __init__(self, rotation=10.0, shear=10.0, scale=(0.9, 1.1), translation=0.1,
                 elastic_alpha=0.0, elastic_sigma=4.0, probability=1.0, stroke_change=0.0,
                 fill="min"):
        self.rotation = rotation
        self.shear = shear
        self.scale = scale
        self.translation = translation
        self.elastic_alpha = elastic_alpha
        self.elastic_sigma = elastic_sigma
        self.probability = probability
        self.stroke_change = stroke_change
        self.fill = fill

    def __setstate__(self, state):
        # Model files written before `stroke_change` existed.
        state.setdefault("stroke_change", 0.0)
        super().__setstate__(state)

    def frozen(self):
        """Check the settings and return an immutable snapshot that applies them.

        Returns
        -------
        frozen : FrozenAugmentation
            Has the same :meth:`transform_batch` and :meth:`draw` methods,
            without re-checking; safe to share between threads.

        Raises
        ------
        sklearn.utils._param_validation.InvalidParameterError
            (a ``ValueError``) naming the bad setting.

        Examples
        --------
        >>> from skdigits.augmentation import Augmentation
        >>> Augmentation(scale=0.2).frozen().scale
        (0.8, 1.2)
        """
        self._validate_params()
        return FrozenAugmentation(
            rotation=float(self.rotation),
            shear=float(self.shear),
            scale=_scale_range(self.scale),
            translation=float(self.translation),
            elastic_alpha=float(self.elastic_alpha),
            elastic_sigma=float(self.elastic_sigma),
            probability=float(self.probability),
            stroke_change=float(self.stroke_change),
            fill=self.fill if isinstance(self.fill, str) else float(self.fill),
        )

    def transform_batch(self, images, rng, out=None):
        """Distort every image of a batch, each with its own random draw.

        Parameters
        ----------
        images : ndarray of shape (n, height, width) or (n, height, width, channels)
            Floating-point images, channels last; background low (see
            `fill`).  Not modified.
        rng : numpy.random.Generator
            Source of all randomness: the same generator state gives the same
            output, bit for bit.  Use one generator per thread.
        out : ndarray, optional
            Where to write the result: same shape and dtype as `images`, not
            overlapping it.

        Returns
        -------
        distorted : ndarray
            Same shape and dtype as `images` (`out` if given).

        Examples
        --------
        >>> import numpy as np
        >>> from skdigits.augmentation import Augmentation
        >>> batch = np.random.default_rng(0).random((2, 8, 8, 3))
        >>> Augmentation().transform_batch(batch, np.random.default_rng(1)).shape
        (2, 8, 8, 3)
        """
        return self.frozen().transform_batch(images, rng, out=out)

    def draw(self, n, image_shape, rng):
        """Draw the random distortions of `n` images (see :meth:`FrozenAugmentation.draw`)."""
        return self.frozen().draw(n, image_shape, rng)


@dataclass(frozen=True)
class FrozenAugmentation:
    """Checked, immutable settings of an :class:`Augmentation`.

    Made by :meth:`Augmentation.frozen` (which checks them; build it that way,
    not directly).  ``scale`` is always a ``(low, high)`` pair.
    """

    rotation: float
    shear: float
    scale: tuple
    translation: float
    elastic_alpha: float
    elastic_sigma: float
    probability: float
    stroke_change: float
    fill: object

    def draw(self, n, image_shape, rng):
        """Draw the random distortions of `n` images of shape `image_shape`.

        Parameters
        ----------
        n : int
        image_shape : tuple
            ``(height, width)`` (a trailing channel count is ignored).
        rng : numpy.random.Generator

        Returns
        -------
        distortions : dict
            Keyword arguments of :func:`warp_images`: ``angle``, ``shear``
            (degrees, shape (n,)), ``scale`` (n,), ``shift`` (n, 2) in pixels
            ``displacement`` (2, n, height, width) or None, and ``strokes``
            (n,): 0 keep, 1 thicken, 2 thin.  Images that `probability`
            leaves out get the identity geometry.
        """
        return self._draw(n, image_shape, _check_generator(rng), _Fresh)

    def _draw(self, n, image_shape, rng, scratch):
        """:meth:`draw`, with the displacement field in `scratch`'s array "field"."""
        height, width = (int(v) for v in image_shape[:2])
        # One call for all the small draws: columns are angle, shear, scale,
        # vertical shift, horizontal shift, apply-or-not.
        u = rng.random((6, n))
        applied = u[5] < self.probability
        low, high = self.scale
        angle = np.where(applied, (2 * u[0] - 1) * self.rotation, 0.0)
        shear = np.where(applied, (2 * u[1] - 1) * self.shear, 0.0)
        scale = np.where(applied, low + (high - low) * u[2], 1.0)
        limits = self.translation * np.array([height, width], dtype=float)
        shift = np.where(applied[:, None], (2 * u[3:5].T - 1) * limits, 0.0)
        displacement = None
        if self.elastic_alpha > 0:
            displacement = _elastic(n, (height, width), self.elastic_alpha,
                                    self.elastic_sigma, rng, np.float32, _thread_scratch(),
                                    scratch)
            if not applied.all():
                displacement[:, ~applied] = 0
        strokes = np.zeros(n, dtype=np.int8)
        if self.stroke_change > 0:  # drawn last: the other draws keep their stream
            change, bolder = rng.random((2, n))
            changed = change < self.stroke_change
            strokes[changed] = np.where(bolder[changed] < 0.5, 1, 2)
        return dict(angle=angle, shear=shear, scale=scale, shift=shift,
                    displacement=displacement, strokes=strokes)

    def transform_batch(self, images, rng, out=None):
        """Distort every image of a batch (see :meth:`Augmentation.transform_batch`)."""
        images = _check_images(images)
        out = _check_out(out, images)
        scratch = _thread_scratch()
        d = self._draw(len(images), images.shape[1:3], _check_generator(rng), scratch)
        if d["strokes"].any():
            images = _change_strokes(images, d["strokes"])
        return _warp(images, d["angle"], d["shear"], d["scale"], d["shift"],
                     d["displacement"], fill=self.fill, out=out, scratch=scratch)


def _scale_range(scale):
    if isinstance(scale, Real):
        return (1.0 - float(scale), 1.0 + float(scale))
    try:
        pair = np.asarray(scale, dtype=float)
    except (TypeError, ValueError):
        pair = None
    if pair is None or pair.shape != (2,) or not np.all(np.isfinite(pair)) \
            or not 0 < pair[0] <= pair[1]:
        raise ValueError(f"scale must be a float in [0, 1) or a pair (low, high) with "
                         f"0 < low <= high, got {scale!r}.")
    return (float(pair[0]), float(pair[1]))


# ----------------------------------------------------------------- presets
def make_augmentation(spec, *, image_shape=None):
    """Turn an ``augment=`` value into an :class:`Augmentation` (or None).

    Parameters
    ----------
    spec : None, "affine", "elastic" or Augmentation
        ``None``: no augmentation.  ``"affine"``: rotation up to ±10°, slant
        up to ±10°, size 0.9-1.1, shift up to a tenth of the side.
        ``"elastic"``: Simard et al.'s elastic distortion (σ = 5, α = 36 on
        28 x 28, after Cireşan et al.) with half those affine ranges.  See
        :data:`PRESETS`.  An ``Augmentation`` is checked and returned as it is.
    image_shape : tuple, optional
        ``(height, width[, channels])`` of the images, for the presets only:
        the elastic settings are in pixels for 28 x 28 digits and are
        rescaled for other sizes (σ by ``k = min(height, width) / 28``, α by
        ``k**2``, so that the field has the same shape and displaces pixels
        by ``k`` times as much).  Shifts are fractions of the side already.

    Returns
    -------
    augmentation : Augmentation or None

    Raises
    ------
    ValueError
        For any other `spec`, naming it and the options; or if an
        ``Augmentation``'s settings are invalid.

    Examples
    --------
    >>> from skdigits.augmentation import make_augmentation
    >>> make_augmentation("elastic").elastic_alpha
    36.0
    >>> round(make_augmentation("elastic", image_shape=(8, 8)).elastic_sigma, 3)
    1.429
    >>> make_augmentation(None) is None
    True
    """
    if spec is None:
        return None
    if isinstance(spec, Augmentation):
        spec.frozen()  # raises for invalid settings
        return spec
    if isinstance(spec, str) and spec in PRESETS:
        settings = dict(PRESETS[spec])
        if image_shape is not None:
            k = min(int(v) for v in tuple(image_shape)[:2]) / REFERENCE_SIDE
            settings["elastic_sigma"] *= k
            settings["elastic_alpha"] *= k * k
        return Augmentation(**settings)
    raise ValueError(f"augment must be None, an Augmentation or one of "
                     f"{sorted(PRESETS)}, got {spec!r}.")


# ----------------------------------------------------------------- work arrays
class _Scratch:
    """Work arrays reused from batch to batch, one set per thread.

    A batch needs a dozen temporaries of about a megabyte.  Allocated afresh,
    they are handed back to the system when freed (the C allocator trims its
    heap) and page-faulted in again by the next batch; on a loaded machine
    that cost ten times the arithmetic (an elastic batch of 200 took 10 ms
    instead of 0.5 ms).  Buffers grow to the largest request and are handed
    out as views; requests beyond `max_elements` (big one-off calls) are not
    kept, which bounds what a thread holds to some 40 MB (8 MB for batches of
    200 digits of 28 x 28).
    """

    max_elements = 2**20

    def __init__(self):
        self._buffers = {}

    def array(self, name, shape, dtype):
        """An uninitialised array of `shape`, valid until the next request for `name`."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape))
        if size > self.max_elements:
            return np.empty(shape, dtype=dtype)
        buffer = self._buffers.get((name, dtype))
        if buffer is None or buffer.size < size:
            buffer = self._buffers[(name, dtype)] = np.empty(size, dtype=dtype)
        return buffer[:size].reshape(shape)


class _Fresh:
    """Fresh arrays every time: for what is handed to the caller."""

    @staticmethod
    def array(name, shape, dtype):
        return np.empty(shape, dtype=dtype)


_THREAD_STATE = threading.local()


def _thread_scratch():
    scratch = getattr(_THREAD_STATE, "scratch", None)
    if scratch is None:
        scratch = _THREAD_STATE.scratch = _Scratch()
    return scratch


# ----------------------------------------------------------------- elastic field
@lru_cache(maxsize=32)
def _gaussian_matrix(size, sigma, dtype):
    """The `size` x `size` matrix G with ``G @ f == gaussian_filter1d(f, sigma, axis=0)``.

    Column k is the filter's response to a unit impulse at k, so the matrix
    includes scipy's border handling ("reflect") exactly.  Cached and read-only
    (shared between threads).
    """
    matrix = ndimage.gaussian_filter1d(np.eye(size), sigma, axis=0, mode="reflect")
    matrix = matrix.astype(dtype)
    matrix.flags.writeable = False
    return matrix


def smooth_fields(fields, sigma):
    """Gaussian smoothing of a stack of 2-D fields over their last two axes.

    Equal (to rounding) to ``scipy.ndimage.gaussian_filter(fields, (0, ..., sigma, sigma))``
    with scipy's default "reflect" borders, computed as two matrix products.

    Parameters
    ----------
    fields : ndarray of shape (..., height, width), float32 or float64
    sigma : float
        Standard deviation in pixels.

    Returns
    -------
    smoothed : ndarray, same shape and dtype
    """
    fields = np.asarray(fields)
    return _smooth(fields, sigma, _thread_scratch(), np.empty(fields.shape, fields.dtype))


def _smooth(fields, sigma, scratch, out):
    """:func:`smooth_fields` into `out` (contiguous), temporaries from `scratch`."""
    height, width = fields.shape[-2:]
    rows = _gaussian_matrix(height, float(sigma), fields.dtype.str)
    cols = _gaussian_matrix(width, float(sigma), fields.dtype.str)
    flat = np.ascontiguousarray(fields).reshape(-1, width)
    along_cols = scratch.array("along_cols", flat.shape, fields.dtype)
    np.matmul(flat, cols.T, out=along_cols)
    np.matmul(rows, along_cols.reshape(-1, height, width), out=out.reshape(-1, height, width))
    return out


def elastic_displacement(n, image_shape, alpha, sigma, rng, dtype=np.float32):
    """Simard et al.'s random displacement fields for `n` images.

    Parameters
    ----------
    n : int
    image_shape : (int, int)
    alpha : float
        Scale of the field, in pixels.
    sigma : float
        Standard deviation of the smoothing Gaussian, in pixels.
    rng : numpy.random.Generator
    dtype : float32 or float64

    Returns
    -------
    displacement : ndarray of shape (2, n, height, width)
        Row (down) and column (right) displacements in pixels:
        ``alpha * gaussian_filter(uniform(-1, 1))``.
    """
    if not (np.isfinite(alpha) and alpha >= 0 and np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"elastic alpha must be >= 0 and sigma > 0 (finite), got "
                         f"alpha={alpha!r}, sigma={sigma!r}.")
    return _elastic(n, image_shape, alpha, sigma, rng, dtype, _thread_scratch(), _Fresh)


def _elastic(n, image_shape, alpha, sigma, rng, dtype, scratch, result_scratch):
    """:func:`elastic_displacement`: temporaries from `scratch`, the field
    from `result_scratch`'s array "field"."""
    height, width = image_shape
    noise = scratch.array("noise", (2, n, height, width), dtype)
    rng.random(out=noise, dtype=dtype)
    noise *= 2
    noise -= 1
    field = _smooth(noise, sigma, scratch, result_scratch.array("field", noise.shape, dtype))
    field *= alpha
    return field


# ----------------------------------------------------------------- warping
def _per_image(value, n, name, shape=()):
    array = np.asarray(value, dtype=float)
    try:
        array = np.broadcast_to(array, (n, *shape))
    except ValueError:
        raise ValueError(f"{name} must be a number or one value per image "
                         f"(shape ({n}{', ' if shape else ''}{', '.join(map(str, shape))})), "
                         f"got shape {np.shape(value)}.") from None
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return array


def _inverse_maps(angle, shear, scale, shift, height, width):
    """Per image, the affine map from an output pixel (row i, col j) to the
    input position it samples: ``maps[:, 0] @ (i, j, 1)`` is the row,
    ``maps[:, 1] @ (i, j, 1)`` the column; shape (n, 2, 3).

    The forward map turns about the centre, slants, scales and shifts:
    ``q = centre + shift + s * Shear(k) @ Rot(theta) @ (p - centre)`` in
    (x right, y down) coordinates.  Its inverse is
    ``p = centre + Rot(-theta) @ Shear(-k) @ (q - centre - shift) / s``.
    """
    theta = np.deg2rad(angle)
    k = np.tan(np.deg2rad(shear))
    cos, sin = np.cos(theta), np.sin(theta)
    inv_s = 1.0 / scale
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    maps = np.empty((len(theta), 2, 3))
    maps[:, 0, 0] = (k * sin + cos) * inv_s  # d row_in / d i
    maps[:, 0, 1] = sin * inv_s              # d row_in / d j
    maps[:, 1, 0] = (k * cos - sin) * inv_s  # d col_in / d i
    maps[:, 1, 1] = cos * inv_s              # d col_in / d j
    linear = maps[:, :, :2]
    maps[:, :, 2] = centre - np.einsum("nab,nb->na", linear, centre + shift)
    return maps


@lru_cache(maxsize=32)
def _pixel_coordinates(height, width, dtype):
    """(3, height * width): every pixel's row, column and 1, row by row.  Read-only."""
    rows, cols = np.indices((height, width)).reshape(2, -1)
    coordinates = np.stack([rows, cols, np.ones_like(rows)]).astype(dtype)
    coordinates.flags.writeable = False
    return coordinates


def sampling_grid(n, image_shape, angle=0.0, shear=0.0, scale=1.0, shift=0.0,
                  displacement=None, dtype=np.float64):
    """Input positions that :func:`warp_images` samples, for checking and plotting.

    Parameters are those of :func:`warp_images`, for `n` images of shape
    ``image_shape = (height, width)``.

    Returns
    -------
    grid : ndarray of shape (2, n, height, width)
        Row and column (in pixels of the input) sampled for each output pixel.
    """
    angle, shear, scale, shift, displacement = _check_distortions(
        n, image_shape, angle, shear, scale, shift, displacement)
    return _grid(n, image_shape, angle, shear, scale, shift, displacement, dtype, _Fresh)


def _grid(n, image_shape, angle, shear, scale, shift, displacement, dtype, scratch, origin=0):
    """:func:`sampling_grid` on checked arguments, in `scratch`'s array "grid";
    `origin` is added to every position (the padding of :func:`_bilinear`),
    on the small terms."""
    height, width = image_shape
    maps = _inverse_maps(angle, shear, scale, shift, height, width)
    maps[:, :, 2] += origin
    # All positions of the batch in one matrix product: (2n, 3) maps, rows
    # first, times the (3, pixels) coordinates.  (A broadcast sum of row
    # and column terms took 7x longer: NumPy's loop restarts every 28 values.)
    grid = scratch.array("grid", (2, n, height, width), dtype)
    np.matmul(maps.transpose(1, 0, 2).reshape(2 * n, 3).astype(dtype),
              _pixel_coordinates(height, width, np.dtype(dtype).str),
              out=grid.reshape(2 * n, height * width))
    if displacement is not None:
        grid += displacement
    return grid


_MIN_SCALE = 1e-6
_MAX_PIXELS = 1e6


def _check_distortions(n, image_shape, angle, shear, scale, shift, displacement):
    angle = _per_image(angle, n, "angle")
    shear = _per_image(shear, n, "shear")
    if np.any(np.abs(shear) >= 90):
        raise ValueError(f"shear must be between -90 and 90 degrees, got "
                         f"{shear[np.abs(shear) >= 90][0]}.")
    # Bounds that keep every sampling position finite, even in float32.
    scale = _per_image(scale, n, "scale")
    if np.any(scale < _MIN_SCALE):
        raise ValueError(f"scale must be at least {_MIN_SCALE}, got "
                         f"{scale[scale < _MIN_SCALE][0]}.")
    shift = _per_image(shift, n, "shift", (2,))
    if np.any(np.abs(shift) > _MAX_PIXELS):
        raise ValueError(f"shift must be within +-{_MAX_PIXELS:g} pixels.")
    if displacement is not None:
        displacement = np.asarray(displacement)
        if displacement.shape != (2, n, *image_shape):
            raise ValueError(f"displacement must have shape (2, n, height, width) = "
                             f"{(2, n, *image_shape)}, got {displacement.shape}.")
        if not np.all(np.abs(displacement) <= _MAX_PIXELS):  # also NaN
            raise ValueError(f"displacement must be finite and within +-{_MAX_PIXELS:g} "
                             "pixels.")
    return angle, shear, scale, shift, displacement


def _check_fill(fill):
    if isinstance(fill, str):
        if fill != "min":
            raise ValueError(f"fill must be 'min' or a number, got {fill!r}.")
        return fill
    if isinstance(fill, bool) or not isinstance(fill, Real) or not np.isfinite(fill):
        raise ValueError(f"fill must be 'min' or a finite number, got {fill!r}.")
    return float(fill)


def _fill_values(images, fill, dtype):
    """Background per image (and channel), shape (n or 1, 1, 1[, channels or 1])."""
    if fill == "min":
        if len(images) == 0:
            return np.zeros((1, 1, 1) + images.shape[3:], dtype=dtype)
        return images.min(axis=(1, 2), keepdims=True).astype(dtype, copy=False)
    return np.full((1, 1, 1) + (1,) * (images.ndim - 3), fill, dtype=dtype)


def warp_images(images, *, angle=0.0, shear=0.0, scale=1.0, shift=0.0, displacement=None,
                strokes=None, fill="min", out=None):
    """Apply given affine distortions and displacement fields to a batch of images.

    Every output pixel samples the input, by bilinear interpolation, at the
    position the inverse of the image's distortion sends it to; positions
    outside the image blend with `fill` (as ``mode="grid-constant"`` in
    :mod:`scipy.ndimage`).  Angles and shears of 0, scale 1, shift 0 and no
    displacement return the images exactly.

    Parameters
    ----------
    images : ndarray of shape (n, height, width) or (n, height, width, channels)
        Floating point; not modified.
    angle : float or array of shape (n,), default=0.0
        Rotation in degrees, anticlockwise on screen, about the image centre.
    shear : float or array of shape (n,), default=0.0
        Slant in degrees (strictly between -90 and 90); positive moves the
        top to the right.
    scale : float or array of shape (n,), default=1.0
        Size factor (> 0) about the centre.
    shift : float or array of shape (n, 2), default=0.0
        Shift ``(down, right)`` in pixels, applied after the rest.
    displacement : array of shape (2, n, height, width), optional
        Added to the sampling positions (row, column) of every output pixel,
        in input pixels, e.g. from :func:`elastic_displacement`.
    strokes : array of shape (n,), optional
        Per image, before the distortion: 0 keeps its strokes, 1 thickens
        them (grey dilation with a 2 x 2 square), 2 thins them (erosion).
    fill : "min" or float, default="min"
        Value outside the images: each image's (and channel's) minimum, or a
        number.
    out : ndarray, optional
        Destination with the shape and dtype of `images`, not overlapping it.

    Returns
    -------
    warped : ndarray, same shape and dtype as `images`

    Examples
    --------
    >>> import numpy as np
    >>> from skdigits.augmentation import warp_images
    >>> image = np.zeros((1, 5, 5))
    >>> image[0, 0, 2] = 1.0                   # a dot at the top centre
    >>> turned = warp_images(image, angle=90)  # a quarter turn anticlockwise
    >>> [int(v) for v in np.argwhere(turned[0] > 0.5)[0]]   # now at the left
    [2, 0]
    """
    images = _check_images(images)
    n, height, width = images.shape[:3]
    distortions = _check_distortions(n, (height, width), angle, shear, scale, shift,
                                     displacement)
    if strokes is not None:
        images = _change_strokes(images, _check_strokes(strokes, n))
    return _warp(images, *distortions, fill=_check_fill(fill), out=_check_out(out, images),
                 scratch=_thread_scratch())


#: Pixels warped per step: bounds the temporaries (about 40 bytes per pixel)
#: for big inputs, e.g. a whole test set, and keeps them in cache.
_CHUNK_PIXELS = 2**21


def _warp(images, angle, shear, scale, shift, displacement, fill, out, scratch):
    """:func:`warp_images` on checked arguments."""
    n, height, width = images.shape[:3]
    work = np.float32 if images.dtype.itemsize <= 4 else np.float64
    direct = out is not None and out.dtype == work
    result = out if direct else np.empty(images.shape, dtype=work)
    step = max(1, _CHUNK_PIXELS // (height * width))
    for start in range(0, n, step):
        part = slice(start, start + step)
        chunk = images[part]
        grid = _grid(len(chunk), (height, width), angle[part], shear[part], scale[part],
                     shift[part], None if displacement is None else displacement[:, part],
                     work, scratch, origin=_PAD_BEFORE)
        _bilinear(chunk, grid, _fill_values(chunk, fill, work), work, result[part], scratch)
    if out is None:
        return result.astype(images.dtype, copy=False)
    if not direct:
        out[...] = result
    return out


#: Rows and columns of `fill` that :func:`_bilinear` puts before each image
#: (and twice as many after): positions clipped into [-1, side] then have all
#: four neighbours inside the padded image.
_PAD_BEFORE = 1
#: Integers up to this are exact in float32.
_FLOAT32_EXACT_INTEGERS = 2**24


def _bilinear(images, grid, fill, work, out, scratch):
    """Bilinear samples of each image at its grid positions, with `fill` outside.

    `grid` holds positions in the padded images (input position +
    ``_PAD_BEFORE``) and is used as scratch space.  The images are copied into
    a stack padded with `fill`; once positions are clipped to the pad,
    outside ones read `fill` with no per-pixel masks, and one ``take`` per
    neighbour gathers the whole batch.
    """
    n, height, width = images.shape[:3]
    channels = images.shape[3:]
    rows_p, cols_p = height + 3, width + 3
    padded = scratch.array("padded", (n, rows_p, cols_p, *channels), work)
    padded[:, 0] = fill[:, 0]
    padded[:, height + 1:] = fill
    padded[:, 1:height + 1, 0] = fill[:, 0]
    padded[:, 1:height + 1, width + 1:] = fill
    padded[:, 1:height + 1, 1:width + 1] = images

    r, c = grid
    np.clip(r, 0, height + 1, out=r)  # floor <= side + 1: its neighbour is pad
    np.clip(c, 0, width + 1, out=c)
    r0, c0 = np.floor(grid, out=scratch.array("floor", grid.shape, work))
    r -= r0  # fractional parts: the interpolation weights
    c -= c0
    # Flat index of the top-left neighbour, computed in floating point (one
    # conversion instead of integer arithmetic on twice the bytes); exact
    # below 2**24 in float32 (chunks of 28 x 28 digits stay far below).
    if work == np.float32 and padded.size >= _FLOAT32_EXACT_INTEGERS:
        r0, c0 = r0.astype(np.float64), c0.astype(np.float64)
    r0 *= cols_p
    r0 += c0
    r0 += (np.arange(n, dtype=r0.dtype) * (rows_p * cols_p))[:, None, None]
    index = scratch.array("index", r0.shape, np.intp)
    index[...] = r0  # truncation == floor, as r0 >= 0

    flat = padded.reshape(-1, *channels)
    if channels:
        r = r[..., None]
        c = c[..., None]

    top, right, bottom = scratch.array("gathered", (3, *index.shape, *channels), work)

    def gather(offset, into):  # the neighbour `offset` places after each index
        # Every index is in range by construction; mode="wrap" never wraps
        # then, and skips the error-raising path (measured ~30% faster).
        flat[offset:].take(index, axis=0, out=into, mode="wrap")

    gather(0, top)
    gather(1, right)
    right -= top
    right *= c
    top += right                      # top row blended
    gather(cols_p, bottom)
    gather(cols_p + 1, right)
    right -= bottom
    right *= c
    bottom += right                   # bottom row blended
    bottom -= top
    bottom *= r
    return np.add(top, bottom, out=out)


# ----------------------------------------------------------------- checks
def _check_images(images):
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must have shape (n, height, width) or (n, height, width, "
                         f"channels), got shape {images.shape}.")
    if not np.issubdtype(images.dtype, np.floating):
        raise TypeError(f"images must be floating point (e.g. float32), got dtype "
                        f"{images.dtype}; convert first, e.g. images / 255.")
    if min(images.shape[1:]) < 1:
        raise ValueError(f"images must have at least one pixel, got shape {images.shape}.")
    if not np.isfinite(images).all():
        bad = int(np.flatnonzero(~np.isfinite(images).reshape(len(images), -1).all(axis=1))[0])
        raise ValueError(f"images contain NaN or infinity (first in image {bad}).")
    return images


def _check_strokes(strokes, n):
    codes = np.asarray(strokes)
    if codes.shape != (n,) or not np.isin(codes, (0, 1, 2)).all():
        raise ValueError(f"strokes must hold one of 0 (keep), 1 (thicken) or 2 (thin) per "
                         f"image, shape ({n},); got {strokes!r:.80}.")
    return codes


def _check_out(out, images):
    if out is None:
        return None
    if not isinstance(out, np.ndarray) or out.shape != images.shape \
            or out.dtype != images.dtype:
        raise ValueError(f"out must be an array of shape {images.shape} and dtype "
                         f"{images.dtype}, got "
                         f"{getattr(out, 'shape', type(out).__name__)} "
                         f"{getattr(out, 'dtype', '')}".rstrip() + ".")
    if np.may_share_memory(out, images):
        raise ValueError("out must not overlap images (the input is read while "
                         "the output is written).")
    return out


def _check_generator(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (e.g. "
                        f"numpy.random.default_rng(0)), got {type(rng).__name__}.")
    return rng


def _as_generator(random_state):
    """A Generator from None, an int, a Generator or a RandomState."""
    if random_state is None or (isinstance(random_state, Integral)
                                and not isinstance(random_state, bool)):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(2**31))
    raise ValueError(f"random_state must be None, an int, a numpy Generator or "
                     f"RandomState, got {random_state!r}.")


# ----------------------------------------------------------------- test set
def square_images(rows):
    """Rows of ``side * side`` pixels as (n, side, side) images (a view);
    any other shape is returned as it is.  A row length that is no square
    is a ValueError."""
    rows = np.asarray(rows)
    if rows.ndim != 2:
        return rows
    side = int(round(np.sqrt(rows.shape[1])))
    if side * side != rows.shape[1]:
        raise ValueError(f"rows of {rows.shape[1]} pixels are not square images; "
                         "pass an array of shape (n, height, width)")
    return rows.reshape(len(rows), side, side)


def make_handwriting_variations(images, random_state=None):
    """Digits varied like handwriting, for measuring a model's robustness.

    Each image is, independently: rotated by up to ±20°, slanted by up to
    ±15°, rescaled by 0.8-1.15, shifted by up to ±3 px (on 28 x 28; 3/28 of
    the side in general) and, for a third of the images each, its strokes
    thickened or thinned (grey dilation or erosion with a 2 x 2 square: one
    pixel bolder or finer), the last third keeping its strokes.  Stronger
    than the ``"affine"`` training preset on purpose: a model must read
    digits written differently from those it learnt.

    Parameters
    ----------
    images : ndarray of shape (n, height, width), (n, height, width, channels) or (n, side**2)
        Floating-point digits, ink high, background lowest (e.g. MNIST / 255).
        Rows of a square number of pixels are read as square images.
    random_state : int, numpy.random.Generator or None
        The same value gives the same set.

    Returns
    -------
    varied : ndarray, same shape and dtype as `images`

    Examples
    --------
    >>> import numpy as np
    >>> from skdigits.augmentation import make_handwriting_variations
    >>> digits = np.zeros((3, 784), dtype=np.float32)
    >>> varied = make_handwriting_variations(digits, random_state=0)
    >>> varied.shape, varied.dtype
    ((3, 784), dtype('float32'))
    """
    array = np.asarray(images)
    if array.ndim == 2:
        return make_handwriting_variations(square_images(array),
                                           random_state).reshape(array.shape)
    array = _check_images(array)
    rng = _as_generator(random_state)
    strokes = rng.integers(0, 3, size=len(array))  # 0 keep, 1 thicken, 2 thin
    varied = _change_strokes(array, strokes)
    settings = Augmentation(**HANDWRITING, probability=1.0, fill="min").frozen()
    return settings.transform_batch(varied, rng)


def _change_strokes(images, strokes):
    """Grey dilation where ``strokes == 1``, erosion where 2, the image elsewhere."""
    footprint = np.ones((1, 2, 2) + (1,) * (images.ndim - 3), dtype=bool)
    result = images.copy()
    for code, operation in ((1, ndimage.grey_dilation), (2, ndimage.grey_erosion)):
        chosen = strokes == code
        if chosen.any():
            result[chosen] = operation(images[chosen], footprint=footprint)
    return result
