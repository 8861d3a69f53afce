"""What the ``serve`` page computes, without any web code: image bytes in,
probabilities and the picture the model receives out.

The model is read once, when :class:`DigitPredictor` is made; after that the
only input is the bytes a visitor sends, and they are treated as hostile:

* more than ``max_bytes`` is refused before it is decoded;
* the format must be one of :data:`IMAGE_FORMATS`, identified by Pillow from
  the bytes themselves (the name and type a browser sends are not trusted);
* the width and height in the header are checked against ``max_pixels``
  before any pixel is decoded, so a small file that claims a huge picture
  (a decompression bomb) costs nothing;
* decoding happens in memory: nothing a visitor sends is written to disk.

Every refusal is an :class:`ImageRejected` whose message is meant for the
page, never a traceback.
"""

import io
import time
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.images import MAX_IMAGE_PIXELS, ImageTransformer

__all__ = ["DEFAULT_MAX_BYTES", "IMAGE_FORMATS", "DigitPredictor", "ImageRejected"]

#: Largest upload accepted, in bytes: a phone photo is 2 to 6 MB; a drawing
#: sent by the page is a few kilobytes.
DEFAULT_MAX_BYTES = 10 * 2**20

#: Pillow format names accepted (what ``Image.open`` identifies, not file endings).
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")


class ImageRejected(ValueError):
    """An upload that is refused; ``status`` is the HTTP status to answer with."""

    def __init__(self, message, status=422):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------ decoding
def decode_image(data, *, max_bytes=DEFAULT_MAX_BYTES, max_pixels=MAX_IMAGE_PIXELS):
    """Decode uploaded bytes into a PIL image, refusing anything unsafe.

    Parameters
    ----------
    data : bytes
        The upload, as received.
    max_bytes : int, default=DEFAULT_MAX_BYTES
        Larger uploads are refused without being decoded.
    max_pixels : int, default=MAX_IMAGE_PIXELS
        Pictures whose header announces more pixels are refused before their
        pixels are decoded.

    Returns
    -------
    image : PIL.Image.Image
        Fully decoded (its first frame for animations).

    Raises
    ------
    ImageRejected
        With status 413 for a file or picture that is too large, 422 for
        empty input, a non-image or a damaged image.

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buffer = io.BytesIO()
    >>> Image.new("L", (30, 40), 255).save(buffer, "PNG")
    >>> decode_image(buffer.getvalue()).size
    (30, 40)
    >>> decode_image(b"hello")
    Traceback (most recent call last):
    ...
    skdigits.serve.predictor.ImageRejected: this file is not an image (expected PNG, JPEG, GIF, BMP, WEBP, TIFF or PPM)
    """
    if not data:
        raise ImageRejected("the upload is empty: no image received")
    if len(data) > max_bytes:
        raise ImageRejected(too_many_bytes_message(len(data), max_bytes), status=413)
    with warnings.catch_warnings():
        # Pillow warns about large pictures at open(); the stricter pixel
        # check below turns them into a refusal instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except UnidentifiedImageError:
            raise ImageRejected("this file is not an image (expected "
                                f"{', '.join(IMAGE_FORMATS[:-1])} or {IMAGE_FORMATS[-1]})") \
                from None
        except Image.DecompressionBombError as exc:
            raise ImageRejected(f"refused: {exc}", status=413) from None
        except Exception as exc:  # noqa: BLE001 - Pillow reports bad headers with many types
            raise ImageRejected(f"this image is damaged ({type(exc).__name__}: {exc})") from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected(
                f"refused: the picture is {width} x {height} = {width * height:,} pixels, more "
                f"than the limit of {max_pixels:,} (a small file announcing a huge picture "
                "is a decompression bomb)", status=413)
        try:
            image.load()
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt pixel data
            raise ImageRejected(f"this {image.format} image is damaged and cannot be decoded "
                                f"({type(exc).__name__}: {exc})") from None
    return image


def too_many_bytes_message(n_bytes, max_bytes):
    """The page's text for an upload over the byte limit (``n_bytes`` may be a lower bound)."""
    return (f"refused: the file is larger than the limit of {format_size(max_bytes)}"
            + ("" if n_bytes is None else f" ({format_size(n_bytes)})"))


def format_size(n_bytes):
    """``'256 kB'`` below a megabyte, ``'10.0 MB'`` from there (1 MB = 2**20 bytes)."""
    if n_bytes < 2**20:
        return f"{n_bytes / 2**10:.0f} kB"
    return f"{n_bytes / 2**20:.1f} MB"


# ------------------------------------------------------------------- models
def _square_side(n_features):
    side = int(round(np.sqrt(n_features)))
    return side if side * side == n_features else None


def split_image_step(model):
    """(ImageTransformer the model starts with or None, the rest of the model)."""
    steps = getattr(model, "steps", None)
    if steps and len(steps) > 1 and isinstance(steps[0][1], ImageTransformer):
        return steps[0][1], model[1:]
    return None, model


def final_estimator(model):
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


class DigitPredictor:
    """A loaded model and what the page needs from it.

    When the model starts with an :class:`~skdigits.ImageTransformer`, that
    step turns a picture into the row the rest of the model reads, and the
    page shows that row as the picture the model receives.  Otherwise
    MNIST's recipe is applied here (an ``ImageTransformer`` sized to the
    model's square input: ink bright, background 0, pixels in [0, 1],
    centred by mass), and the page says so.

    Parameters
    ----------
    model : estimator or Pipeline
        What :func:`skdigits.load_model` returned; it needs ``predict_proba``
        and ``classes_``.
    source : str, default="model"
        Where the model came from, for the description.

    Raises
    ------
    ValueError
        If the model cannot give probabilities or does not read square images.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skdigits import NumpyMLPClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = NumpyMLPClassifier((16,), tol=1e-2, random_state=0).fit(X / 16, y)
    >>> predictor = DigitPredictor(clf)   # no ImageTransformer: 8 x 8 MNIST-style input
    >>> predictor.input_shape, predictor.uses_model_preprocessing
    ((8, 8), False)
    >>> predictor.describe()["layers"]
    ['64 inputs', 'dense 16, relu', 'dense 10, softmax']
    """

    def __init__(self, model, source="model"):
        if not hasattr(model, "predict_proba"):
            raise ValueError(f"{source}: holds a {type(final_estimator(model)).__name__}, "
                             "which gives no probabilities (predict_proba); the page needs them")
        classes = getattr(model, "classes_", None)
        if classes is None:
            raise ValueError(f"{source}: the model is not fitted (it has no classes_)")
        self.model, self.source = model, source
        self.classes = [_label_text(c) for c in np.asarray(classes).tolist()]
        image_step, rest = split_image_step(model)
        self.uses_model_preprocessing = image_step is not None
        if image_step is None:
            n_features = getattr(model, "n_features_in_", None)
            side = 28 if n_features is None else _square_side(n_features)
            if side is None:
                raise ValueError(
                    f"{source}: the model reads {n_features} features per digit, which is not "
                    "a square image; serve needs a model that starts with ImageTransformer "
                    "(as 'skdigits train' saves) or reads square pixel rows")
            image_step = ImageTransformer(size=(side, side))
        # `rest` reads the rows `image_step` makes: the steps after the
        # model's own ImageTransformer, or the whole model.
        self.image_step, self.rest = image_step, rest
        self.input_shape = tuple(int(v) for v in image_step.size)

    # -------------------------------------------------------------- predict
    def predict_bytes(self, data, *, max_bytes=DEFAULT_MAX_BYTES, max_pixels=MAX_IMAGE_PIXELS):
        """Decode `data`, preprocess it and predict: the page's answer as a dict.

        Returns
        -------
        answer : dict
            ``label`` (the top class, or None when no ink was found),
            ``probabilities`` (one per class, in ``classes`` order, or None),
            ``input`` (the preprocessed picture as rows of 0-255 grey levels,
            ink bright), ``blank`` and ``timing_ms`` (decode, preprocess,
            predict).

        Raises
        ------
        ImageRejected
            See :func:`decode_image`; also when the model cannot read the row.
        """
        started = time.perf_counter()
        image = decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
        decoded = time.perf_counter()
        with image:
            try:
                row = self.image_step.transform([image])
            except ValueError as exc:
                raise ImageRejected(f"cannot read this image: {exc}") from None
        preprocessed = time.perf_counter()
        answer = {"blank": not row.any(), "label": None, "probabilities": None,
                  "input": _grey_levels(row[0], self.input_shape)}
        if not answer["blank"]:
            # A blank picture has no answer worth showing: the model would
            # only report its bias.
            try:
                proba = self.rest.predict_proba(row)[0]
            except ValueError as exc:
                raise ImageRejected(f"the model cannot read this image: {exc}") from None
            answer["probabilities"] = [float(p) for p in proba]
            answer["label"] = self.classes[int(np.argmax(proba))]
        finished = time.perf_counter()
        answer["timing_ms"] = {
            "decode": 1e3 * (decoded - started),
            "preprocess": 1e3 * (preprocessed - decoded),
            "predict": 1e3 * (finished - preprocessed),
        }
        return answer

    # ------------------------------------------------------------- describe
    def describe(self):
        """What the page shows about the model, as a dict of plain values."""
        estimator = final_estimator(self.model)
        return {
            "source": self.source,
            "steps": _step_names(self.model),
            "estimator": type(estimator).__name__,
            "layers": describe_layers(estimator, self.input_shape),
            "parameters": _parameter_count(estimator),
            "training": _training_record(estimator),
            "classes": self.classes,
            "input_shape": list(self.input_shape),
            "preprocessing": self.preprocessing_text(),
            "model_preprocessing": self.uses_model_preprocessing,
        }

    def preprocessing_text(self):
        h, w = self.input_shape
        if self.uses_model_preprocessing:
            step = self.image_step
            return (f"The model's own first step, ImageTransformer(size=({h}, {w}), "
                    f"invert={step.invert!r}, center={step.center!r}), turns the picture into "
                    f"the {h} x {w} input shown here.")
        return (f"This model file has no ImageTransformer, so the page prepares its input the "
                f"MNIST way: ink made bright on a black background, pixels scaled to [0, 1], "
                f"the digit's longer side scaled to {round(h * 20 / 28)} px and its centre of "
                f"mass put at the centre of a {h} x {w} field.")


def _label_text(label):
    return label if isinstance(label, str) else str(label)


def _grey_levels(row, shape):
    levels = np.rint(np.clip(row, 0.0, 1.0) * 255).astype(np.uint8)
    return levels.reshape(shape).tolist()


def _step_names(model):
    steps = getattr(model, "steps", None)
    if not steps:
        return [type(model).__name__]
    return [type(step).__name__ for _, step in steps]


def describe_layers(estimator, input_shape):
    """Layer by layer, from the fitted weights: ['784 inputs', 'dense 128, relu', ...].

    Works for any estimator with ``coefs_`` (ours, scikit-learn's MLP): a
    4-D weight is a convolution (kernel h, kernel w, channels in, filters
    out), a 2-D one a dense layer.  Returns an empty list for other models.
    """
    coefs = getattr(estimator, "coefs_", None)
    if not coefs:
        return []
    activation = getattr(estimator, "activation", None)
    out_activation = getattr(estimator, "out_activation_", None)
    first = np.shape(coefs[0])
    if len(first) == 4:
        image = getattr(estimator, "image_shape_", None) or (*input_shape, first[2])
        layers = [" x ".join(str(v) for v in image) + " image"]
    else:
        layers = [f"{first[0]} inputs"]
    pool = getattr(estimator, "pool_size", None)
    for i, coef in enumerate(coefs):
        shape = np.shape(coef)
        last = i == len(coefs) - 1
        act = out_activation if last else activation
        if len(shape) == 4:
            text = f"conv {shape[0]}x{shape[1]}, {shape[3]} filters"
            text += f", {act}" if act else ""
            text += f", max-pool {pool}" if pool else ""
        else:
            text = f"dense {shape[1]}" + (f", {act}" if act else "")
        layers.append(text)
    return layers


def _parameter_count(estimator):
    coefs = getattr(estimator, "coefs_", None) or []
    intercepts = getattr(estimator, "intercepts_", None) or []
    total = sum(int(np.size(a)) for a in list(coefs) + list(intercepts))
    return total or None


def _training_record(estimator):
    """What the file stores about the training run (absent values left out)."""
    record = {}
    epochs = getattr(estimator, "n_iter_", None)
    if epochs is not None:
        record["epochs"] = int(epochs)
    loss = getattr(estimator, "loss_", None)
    if loss is not None and np.isfinite(loss):
        record["final_loss"] = float(loss)
    scores = getattr(estimator, "validation_scores_", None)
    if scores:
        record["held_out_accuracy"] = float(scores[-1])
    best = getattr(estimator, "best_validation_score_", None)
    if best is not None and np.isfinite(best):
        record["best_held_out_accuracy"] = float(best)
    return record
