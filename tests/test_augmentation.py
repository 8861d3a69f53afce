"""skdigits.augmentation: batched affine + elastic distortions against per-image references."""

import threading

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage
from sklearn.base import BaseEstimator, clone
from sklearn.utils._param_validation import InvalidParameterError

from skdigits import augmentation as aug
from skdigits.augmentation import (
    PRESETS,
    Augmentation,
    elastic_displacement,
    make_augmentation,
    make_handwriting_variations,
    sampling_grid,
    smooth_fields,
    warp_images,
)


@pytest.fixture(scope="module")
def blobs():
    """Twelve smooth random 'digits' (16 x 20: not square, so rows and columns
    cannot be mixed up), ink high, background 0."""
    rng = np.random.default_rng(0)
    images = ndimage.gaussian_filter(rng.random((12, 16, 20)), (0, 1.5, 1.5))
    images = np.clip(images - 0.45, 0, None)
    images[:, :3] = images[:, -3:] = 0
    images[:, :, :3] = images[:, :, -3:] = 0
    return images / images.max()


def _reference_affine(image, angle, shear, scale, shift, fill):
    """The inverse map written as a (row, col) matrix for scipy's affine_transform."""
    theta, k = np.deg2rad(angle), np.tan(np.deg2rad(shear))
    cos, sin = np.cos(theta), np.sin(theta)
    # Inverse of x' = s * Shear(k) @ Rot(theta) @ x in (x right, y down); rows first.
    matrix = np.array([[k * sin + cos, sin], [k * cos - sin, cos]]) / scale
    centre = (np.array(image.shape[:2]) - 1) / 2
    offset = centre - matrix @ (centre + np.asarray(shift, dtype=float))
    return ndimage.affine_transform(image, matrix, offset, order=1, mode="grid-constant",
                                    cval=fill)


def _naive_bilinear(image, rows, cols, fill):
    """Bilinear sampling written out pixel by pixel, zero-knowledge of scipy."""
    h, w = image.shape
    out = np.empty(rows.shape)
    for idx in np.ndindex(rows.shape):
        r, c = rows[idx], cols[idx]
        r0, c0 = int(np.floor(r)), int(np.floor(c))
        total = 0.0
        for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
            weight = (1 - abs(r - (r0 + dr))) * (1 - abs(c - (c0 + dc)))
            rr, cc = r0 + dr, c0 + dc
            value = image[rr, cc] if 0 <= rr < h and 0 <= cc < w else fill
            total += weight * value
        out[idx] = total
    return out


# ----------------------------------------------------------------- maths against references
@pytest.mark.parametrize("fill", [0.0, 0.25, "min"])
def test_affine_matches_scipy_affine_transform_per_image(blobs, fill):
    rng = np.random.default_rng(1)
    n = len(blobs)
    angle = rng.uniform(-40, 40, n)
    shear = rng.uniform(-25, 25, n)
    scale = rng.uniform(0.7, 1.3, n)
    shift = rng.uniform(-4, 4, (n, 2))
    images = blobs - 0.1 if fill == "min" else blobs  # a background that is not 0
    out = warp_images(images, angle=angle, shear=shear, scale=scale, shift=shift, fill=fill)
    for i in range(n):
        cval = float(images[i].min()) if fill == "min" else fill
        expected = _reference_affine(images[i], angle[i], shear[i], scale[i], shift[i], cval)
        assert_allclose(out[i], expected, atol=1e-12, err_msg=f"image {i}")


def test_bilinear_gather_matches_naive_loop_including_outside(blobs):
    rng = np.random.default_rng(2)
    images = blobs[:3]
    # Positions well outside the image too, and exact integers.
    rows = rng.uniform(-3, 19, (3, 16, 20))
    cols = rng.uniform(-3, 23, (3, 16, 20))
    rows[:, 0, :5] = np.arange(5)
    grid = np.stack([rows, cols])
    out = aug._bilinear(images, grid + aug._PAD_BEFORE, np.full((1, 1, 1), 0.5), np.float64,
                        np.empty(images.shape), aug._Scratch())
    for i in range(3):
        assert_allclose(out[i], _naive_bilinear(images[i], rows[i], cols[i], 0.5), atol=1e-12)


def test_displacement_matches_map_coordinates_per_image(blobs):
    rng = np.random.default_rng(3)
    n = len(blobs)
    displacement = rng.normal(0, 1.5, (2, n, 16, 20))
    angle = rng.uniform(-10, 10, n)
    out = warp_images(blobs, angle=angle, displacement=displacement, fill=0.0)
    grid = sampling_grid(n, (16, 20), angle=angle) + displacement
    for i in range(n):
        expected = ndimage.map_coordinates(blobs[i], grid[:, i], order=1,
                                           mode="grid-constant", cval=0.0)
        assert_allclose(out[i], expected, atol=1e-12)


def test_smooth_fields_is_scipy_gaussian_filter():
    rng = np.random.default_rng(4)
    fields = rng.uniform(-1, 1, (2, 5, 28, 24))
    for sigma in (0.7, 4.0, 6.0):
        expected = ndimage.gaussian_filter(fields, (0, 0, sigma, sigma))
        assert_allclose(smooth_fields(fields, sigma), expected, atol=1e-12)
    as32 = smooth_fields(fields.astype(np.float32), 4.0)
    assert as32.dtype == np.float32
    assert_allclose(as32, ndimage.gaussian_filter(fields, (0, 0, 4, 4)), atol=1e-5)


def test_elastic_field_is_simards_recipe():
    # Same draws, per image: uniform(-1, 1) fields, Gaussian-smoothed, times alpha.
    n, shape, alpha, sigma = 6, (28, 28), 34.0, 4.0
    field = elastic_displacement(n, shape, alpha, sigma, np.random.default_rng(5),
                                 dtype=np.float64)
    raw = np.random.default_rng(5).random((2, n, *shape)) * 2 - 1
    for i in range(n):
        for axis in range(2):
            expected = alpha * ndimage.gaussian_filter(raw[axis, i], sigma)
            assert_allclose(field[axis, i], expected, atol=1e-10)


def test_elastic_displacement_size_follows_alpha_over_sigma():
    # Smoothed white noise: std = std(uniform) / (2 sqrt(pi) sigma), about
    # 0.163 alpha / sigma in pixels (away from the reflected borders).
    field = elastic_displacement(400, (40, 40), 36.0, 5.0, np.random.default_rng(6))
    centre = field[:, :, 15:25, 15:25]
    assert centre.std() == pytest.approx(0.163 * 36 / 5, rel=0.05)
    assert abs(centre.mean()) < 0.05


def test_transform_batch_is_warp_of_its_draw(blobs):
    settings = Augmentation(rotation=20, shear=10, scale=(0.8, 1.2), translation=0.2,
                            elastic_alpha=20, elastic_sigma=3, probability=0.7)
    draw = settings.draw(len(blobs), blobs.shape[1:], np.random.default_rng(7))
    expected = warp_images(blobs, **draw, fill="min")
    out = settings.transform_batch(blobs, np.random.default_rng(7))
    assert_array_equal(out, expected)
    applied = draw["scale"] != 1
    assert 0 < applied.sum() < len(blobs)
    assert np.all(draw["angle"][~applied] == 0)
    assert np.all(draw["displacement"][:, ~applied] == 0)
    assert_array_equal(out[~applied], blobs[~applied])  # untouched ones are exact


def test_drawn_parameters_stay_in_their_ranges():
    settings = Augmentation(rotation=15, shear=12, scale=(0.9, 1.05), translation=0.1)
    draw = settings.draw(2000, (28, 20), np.random.default_rng(8))
    assert np.all(np.abs(draw["angle"]) <= 15) and np.abs(draw["angle"]).max() > 14
    assert np.all(np.abs(draw["shear"]) <= 12) and np.abs(draw["shear"]).max() > 11
    assert draw["scale"].min() >= 0.9 and draw["scale"].max() <= 1.05
    assert np.all(np.abs(draw["shift"][:, 0]) <= 2.8) and np.abs(draw["shift"][:, 0]).max() > 2.7
    assert np.all(np.abs(draw["shift"][:, 1]) <= 2.0) and np.abs(draw["shift"][:, 1]).max() > 1.9
    assert draw["displacement"] is None


# ----------------------------------------------------------------- known geometry
def _dot(shape, row, col):
    image = np.zeros((1, *shape))
    image[0, row, col] = 1.0
    return image


def _where(image):
    return tuple(int(v) for v in np.argwhere(image[0] > 0.99)[0])


def test_rotation_turns_anticlockwise_about_the_centre():
    dot = _dot((29, 29), 5, 14)  # 9 px above the centre (14, 14)
    assert _where(warp_images(dot, angle=90)) == (14, 5)     # to the left
    assert _where(warp_images(dot, angle=-90)) == (14, 23)   # to the right
    assert _where(warp_images(dot, angle=180)) == (23, 14)   # below
    turned = warp_images(dot, angle=30)
    row, col = np.unravel_index(np.argmax(turned[0]), turned.shape[1:])
    assert (row, col) == (round(14 - 9 * np.cos(np.pi / 6)), round(14 - 9 * np.sin(np.pi / 6)))


def test_shear_slants_forward_scale_and_shift_move_as_documented():
    assert _where(warp_images(_dot((29, 29), 4, 14), shear=45)) == (4, 24)   # top goes right
    assert _where(warp_images(_dot((29, 29), 24, 14), shear=45)) == (24, 4)  # bottom goes left
    assert _where(warp_images(_dot((29, 29), 14, 19), scale=2.0)) == (14, 24)
    assert _where(warp_images(_dot((29, 29), 10, 10), shift=(3, -2))) == (13, 8)


def test_integer_shift_is_an_exact_translation_with_fill(blobs):
    out = warp_images(blobs, shift=(2, -3), fill=0.0)
    expected = np.zeros_like(blobs)
    expected[:, 2:, :-3] = blobs[:, :-2, 3:]
    assert_array_equal(out, expected)


def test_fill_min_follows_each_images_background(blobs):
    images = blobs * 2 - 1  # background -1
    images[0] += 0.5        # this one's background is -0.5
    out = warp_images(images, shift=(0, 10))
    assert_array_equal(out[:, :, :10], np.broadcast_to(images.min(axis=(1, 2))[:, None, None],
                                                       out[:, :, :10].shape))
    assert np.all(warp_images(images, shift=(0, 30), fill=2.0) == 2.0)


# ----------------------------------------------------------------- identity, mass, determinism
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("channels", [(), (3,)])
def test_identity_settings_return_the_input_exactly(blobs, dtype, channels):
    images = blobs.astype(dtype)
    if channels:
        images = np.stack([images, images ** 2, 1 - images], axis=-1)
    rng = np.random.default_rng(9)
    identity = Augmentation(rotation=0, shear=0, scale=0.0, translation=0)
    assert_array_equal(identity.transform_batch(images, rng), images)
    assert_array_equal(Augmentation(probability=0).transform_batch(images, rng), images)
    assert_array_equal(warp_images(images), images)
    no_elastic = Augmentation(rotation=0, shear=0, scale=0.0, translation=0, elastic_alpha=0.0,
                              elastic_sigma=2.0)
    assert_array_equal(no_elastic.transform_batch(images, rng), images)


def test_distortions_preserve_ink_as_geometry_says(digits):
    X, _ = digits
    images = np.zeros((200, 28, 28))
    images[:, 6:22, 6:22] = np.kron(X[:200].reshape(-1, 8, 8), np.ones((2, 2)))
    ink = images.sum(axis=(1, 2))
    # Rotation and shear keep areas; scaling by s multiplies them by s**2.
    affine = make_augmentation("affine")
    draw = affine.draw(200, (28, 28), np.random.default_rng(10))
    out = affine.transform_batch(images, np.random.default_rng(10))
    assert_allclose(out.sum(axis=(1, 2)) / ink, draw["scale"] ** 2, rtol=0.02)
    # A gentle elastic field moves ink around without creating or losing much.
    gentle = Augmentation(rotation=0, shear=0, scale=0.0, translation=0, elastic_alpha=5,
                          elastic_sigma=5)
    out = gentle.transform_batch(images, np.random.default_rng(10))
    ratio = out.sum(axis=(1, 2)) / ink
    assert np.all(np.abs(ratio - 1) < 0.1) and abs(ratio.mean() - 1) < 0.01
    assert out.min() >= 0 and out.max() <= images.max()  # bilinear never overshoots


def test_same_seed_same_bits_other_seed_other_images(blobs):
    settings = make_augmentation("elastic")
    first = settings.transform_batch(blobs, np.random.default_rng(11))
    np.random.seed(123)  # global state must not matter
    again = settings.transform_batch(blobs, np.random.default_rng(11))
    assert_array_equal(first, again)
    assert_array_equal(settings.frozen().transform_batch(blobs, np.random.default_rng(11)),
                       first)
    other = settings.transform_batch(blobs, np.random.default_rng(12))
    assert np.all(np.any(other != first, axis=(1, 2)))
    # Consecutive batches from one generator differ as well.
    rng = np.random.default_rng(11)
    assert not np.array_equal(settings.transform_batch(blobs, rng),
                              settings.transform_batch(blobs, rng))


def test_threads_with_their_own_generators_match_serial_runs(blobs):
    settings = make_augmentation("elastic").frozen()
    batches = [np.roll(blobs, k, axis=1).astype(np.float32) for k in range(6)]
    serial = [settings.transform_batch(b, np.random.default_rng(k)) for k, b in enumerate(batches)]
    results = [None] * len(batches)

    def work(k):
        for _ in range(20):
            results[k] = settings.transform_batch(batches[k], np.random.default_rng(k))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(len(batches)):
        assert_array_equal(results[k], serial[k])


def test_reused_work_arrays_never_leak_into_results(blobs):
    settings = make_augmentation("elastic")
    images = blobs.astype(np.float32)

    def in_new_thread(fn):  # a thread starts with no work arrays
        box = []
        worker = threading.Thread(target=lambda: box.append(fn()))
        worker.start()
        worker.join()
        return box[0]

    first = settings.transform_batch(images, np.random.default_rng(21))
    kept = first.copy()
    draw = settings.draw(5, images.shape[1:], np.random.default_rng(22))
    kept_field = draw["displacement"].copy()
    small = settings.transform_batch(images[:5], np.random.default_rng(22))  # smaller batch
    colour = settings.transform_batch(np.stack([images] * 2, -1), np.random.default_rng(23))
    assert_array_equal(first, kept)  # results are never work arrays
    assert_array_equal(draw["displacement"], kept_field)
    assert_array_equal(small, in_new_thread(
        lambda: settings.transform_batch(images[:5], np.random.default_rng(22))))
    assert_array_equal(colour, in_new_thread(
        lambda: settings.transform_batch(np.stack([images] * 2, -1), np.random.default_rng(23))))


# ----------------------------------------------------------------- shapes, dtypes, out
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_shape_and_dtype_are_preserved_and_input_untouched(blobs, dtype):
    images = blobs.astype(dtype)
    before = images.copy()
    out = make_augmentation("elastic").transform_batch(images, np.random.default_rng(13))
    assert out.shape == images.shape and out.dtype == dtype
    assert_array_equal(images, before)
    assert np.all(np.isfinite(out))


def test_channels_last_warps_every_channel_alike(blobs):
    colour = np.stack([blobs, 0.5 * blobs, blobs[::-1]], axis=-1).astype(np.float32)
    settings = make_augmentation("elastic")
    out = settings.transform_batch(colour, np.random.default_rng(14))
    assert out.shape == colour.shape and out.dtype == np.float32
    for ch in range(3):
        alone = settings.transform_batch(np.ascontiguousarray(colour[..., ch]),
                                         np.random.default_rng(14))
        assert_allclose(out[..., ch], alone, atol=1e-6)
    one = settings.transform_batch(colour[..., :1], np.random.default_rng(14))
    assert one.shape == (*blobs.shape, 1)
    assert_allclose(one[..., 0], out[..., 0], atol=1e-6)


def test_out_parameter_and_empty_batch(blobs):
    images = blobs.astype(np.float32)
    target = np.empty_like(images)
    result = make_augmentation("affine").transform_batch(images, np.random.default_rng(15),
                                                        out=target)
    assert result is target
    assert_array_equal(target, make_augmentation("affine").transform_batch(
        images, np.random.default_rng(15)))
    with pytest.raises(ValueError, match="overlap"):
        Augmentation().transform_batch(images, np.random.default_rng(0), out=images)
    with pytest.raises(ValueError, match="shape"):
        Augmentation().transform_batch(images, np.random.default_rng(0), out=target[:3])
    with pytest.raises(ValueError, match="dtype"):
        Augmentation().transform_batch(images, np.random.default_rng(0),
                                       out=target.astype(np.float64))
    empty = Augmentation(elastic_alpha=30).transform_batch(images[:0], np.random.default_rng(0))
    assert empty.shape == (0, 16, 20) and empty.dtype == np.float32


def test_big_batches_are_warped_in_chunks_with_the_same_result(blobs, monkeypatch):
    settings = make_augmentation("elastic")
    images = blobs.astype(np.float32)
    whole = settings.transform_batch(images, np.random.default_rng(19))
    monkeypatch.setattr(aug, "_CHUNK_PIXELS", 5 * 16 * 20)  # chunks of 5, 5 and 2 images
    assert_array_equal(settings.transform_batch(images, np.random.default_rng(19)), whole)
    out = np.empty_like(blobs, dtype=np.float16)
    settings.transform_batch(images.astype(np.float16), np.random.default_rng(19), out=out)
    assert_allclose(out, whole, atol=2e-3)


def test_float32_index_arithmetic_falls_back_to_float64_when_not_exact(blobs, monkeypatch):
    images = blobs.astype(np.float32)
    settings = make_augmentation("elastic")
    expected = settings.transform_batch(images, np.random.default_rng(20))
    monkeypatch.setattr(aug, "_FLOAT32_EXACT_INTEGERS", 100)
    assert_array_equal(settings.transform_batch(images, np.random.default_rng(20)), expected)


def test_digits_8x8_with_rescaled_presets(digits):
    X, _ = digits
    images = X[:100].reshape(-1, 8, 8)
    for name in PRESETS:
        settings = make_augmentation(name, image_shape=(8, 8))
        out = settings.transform_batch(images, np.random.default_rng(16))
        ratio = out.sum() / images.sum()
        assert 0.85 < ratio < 1.1, (name, ratio)


def test_presets_rescale_elastic_displacement_with_the_image_side():
    big = make_augmentation("elastic").frozen()
    small = make_augmentation("elastic", image_shape=(14, 14, 1)).frozen()
    assert small.elastic_sigma == pytest.approx(big.elastic_sigma / 2)
    field_big = elastic_displacement(300, (56, 56), big.elastic_alpha, big.elastic_sigma,
                                     np.random.default_rng(17))
    field_small = elastic_displacement(300, (28, 28), small.elastic_alpha,
                                       small.elastic_sigma, np.random.default_rng(17))
    # Half the side: the field moves pixels half as far.
    assert field_small[:, :, 10:18, 10:18].std() == pytest.approx(
        field_big[:, :, 20:36, 20:36].std() / 2, rel=0.08)
    small_affine = make_augmentation("affine", image_shape=(8, 8)).get_params()
    assert small_affine.pop("elastic_sigma") == pytest.approx(4.0 * 8 / 28)
    assert small_affine.items() <= make_augmentation("affine").get_params().items()


# ----------------------------------------------------------------- settings as an estimator
class _Holder(BaseEstimator):
    def __init__(self, augment=None):
        self.augment = augment


def test_get_params_clone_and_nested_keys():
    settings = Augmentation(rotation=12, elastic_alpha=30)
    params = settings.get_params()
    assert params["rotation"] == 12 and params["elastic_alpha"] == 30
    assert params["fill"] == "min"
    twin = clone(settings)
    assert twin is not settings and twin.get_params() == params
    holder = _Holder(augment=settings)
    assert holder.get_params()["augment__rotation"] == 12
    holder.set_params(augment__rotation=3, augment__scale=0.2)
    assert settings.rotation == 3 and settings.frozen().scale == (0.8, 1.2)
    assert clone(holder).augment.rotation == 3
    assert repr(Augmentation(rotation=3)) == "Augmentation(rotation=3)"
    assert Augmentation().get_params() == {**PRESETS["affine"], "probability": 1.0,
                                           "stroke_change": 0.0, "fill": "min"}


@pytest.mark.parametrize("bad, name", [
    (dict(rotation=-1), "rotation"),
    (dict(rotation=200), "rotation"),
    (dict(shear=85), "shear"),
    (dict(scale=1.5), "scale"),
    (dict(translation=1.5), "translation"),
    (dict(elastic_alpha=-1), "elastic_alpha"),
    (dict(elastic_sigma=0), "elastic_sigma"),
    (dict(probability=1.2), "probability"),
    (dict(fill="max"), "fill"),
    (dict(fill=float("nan")), "fill"),
    (dict(rotation="big"), "rotation"),
])
def test_invalid_settings_name_the_parameter(blobs, bad, name):
    settings = Augmentation(**bad)  # __init__ only stores
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        settings.transform_batch(blobs, np.random.default_rng(0))


@pytest.mark.parametrize("scale", [(1.2, 0.8), (0, 1), (0.9,), (0.9, float("inf")), "wide"])
def test_invalid_scale_ranges(scale):
    with pytest.raises(ValueError, match="scale"):
        Augmentation(scale=scale).frozen()


def test_invalid_images_and_generators(blobs):
    settings = Augmentation()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"shape \(n, height, width\)"):
        settings.transform_batch(blobs.reshape(12, -1), rng)
    with pytest.raises(TypeError, match="floating point.*uint8"):
        settings.transform_batch((blobs * 255).astype(np.uint8), rng)
    broken = blobs.copy()
    broken[4, 2, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity .first in image 4"):
        settings.transform_batch(broken, rng)
    with pytest.raises(TypeError, match="numpy.random.Generator.*RandomState"):
        settings.transform_batch(blobs, np.random.RandomState(0))
    with pytest.raises(TypeError, match="Generator.*int"):
        settings.transform_batch(blobs, 0)


def test_invalid_warp_arguments(blobs):
    with pytest.raises(ValueError, match="angle must be a number or one value per image"):
        warp_images(blobs, angle=np.zeros(5))
    with pytest.raises(ValueError, match="shear must be between -90 and 90"):
        warp_images(blobs, shear=90)
    with pytest.raises(ValueError, match="scale must be at least 1e-06, got 0.0"):
        warp_images(blobs, scale=0)
    with pytest.raises(ValueError, match="finite"):
        warp_images(blobs, shift=np.inf)
    with pytest.raises(ValueError, match="shift must be within"):
        warp_images(blobs, shift=1e300)
    with pytest.raises(ValueError, match="displacement must have shape"):
        warp_images(blobs, displacement=np.zeros((2, 12, 20, 16)))
    with pytest.raises(ValueError, match="displacement must be finite"):
        warp_images(blobs, displacement=np.full((2, 12, 16, 20), np.nan))
    with pytest.raises(ValueError, match="sigma > 0"):
        elastic_displacement(3, (8, 8), 10.0, 0.0, np.random.default_rng(0))
    # Extreme but accepted: everything is sampled from far outside, i.e. fill.
    far = warp_images(blobs.astype(np.float32), scale=1e-6, shift=1e6, fill=0.5)
    assert np.all(far == 0.5)
    with pytest.raises(ValueError, match="fill"):
        warp_images(blobs, fill="median")


def test_make_augmentation_specs():
    assert make_augmentation(None) is None
    affine = make_augmentation("affine")
    assert isinstance(affine, Augmentation) and affine.elastic_alpha == 0
    assert make_augmentation("elastic").elastic_alpha > 0
    mine = Augmentation(rotation=3)
    assert make_augmentation(mine) is mine
    with pytest.raises(InvalidParameterError, match="'rotation' parameter"):
        make_augmentation(Augmentation(rotation=-3))
    for bad in ("Affine", "rotate", 1, True, {"rotation": 5}):
        with pytest.raises(ValueError, match=r"augment must be None, an Augmentation or one of "
                                             r"\['affine', 'elastic'\], got"):
            make_augmentation(bad)


# ----------------------------------------------------------------- handwriting variations
def test_handwriting_variations_are_deterministic_and_varied(digits):
    X, _ = digits
    images = np.zeros((60, 28, 28), dtype=np.float32)
    images[:, 6:22, 6:22] = np.kron(X[:60].reshape(-1, 8, 8), np.ones((2, 2)))
    first = make_handwriting_variations(images, random_state=0)
    assert first.shape == images.shape and first.dtype == np.float32
    assert_array_equal(first, make_handwriting_variations(images, random_state=0))
    assert_array_equal(first, make_handwriting_variations(images,
                                                          np.random.default_rng(0)))
    assert not np.array_equal(first, make_handwriting_variations(images, random_state=1))
    assert np.all(np.any(first != images, axis=(1, 2)))
    rows = make_handwriting_variations(images.reshape(60, -1), random_state=0)
    assert_array_equal(rows, first.reshape(60, -1))
    with pytest.raises(ValueError, match="not square"):
        make_handwriting_variations(np.zeros((2, 10)), random_state=0)
    with pytest.raises(ValueError, match="random_state"):
        make_handwriting_variations(images, random_state="seed")


def test_stroke_changes_thicken_and_thin(digits):
    X, _ = digits
    images = np.kron(X[:30].reshape(-1, 8, 8), np.ones((3, 3)))
    strokes = np.repeat([0, 1, 2], 10)
    changed = aug._change_strokes(images, strokes)
    ink = images.sum(axis=(1, 2))
    assert_array_equal(changed[:10], images[:10])
    assert np.all(changed[10:20].sum(axis=(1, 2)) > 1.1 * ink[10:20])
    assert np.all(changed[20:].sum(axis=(1, 2)) < 0.9 * ink[20:])
    assert_array_equal(changed[10:20], ndimage.grey_dilation(images[10:20], size=(1, 2, 2)))


def test_stroke_change_thickens_or_thins_the_drawn_share_of_images(digits):
    X, _ = digits
    images = np.kron(X[:400].reshape(-1, 8, 8), np.ones((3, 3)))
    still = dict(rotation=0, shear=0, scale=0.0, translation=0)
    settings = Augmentation(**still, stroke_change=0.5)
    draw = settings.draw(len(images), images.shape[1:], np.random.default_rng(3))
    strokes = draw["strokes"]
    # About half the images change, about as many bolder as finer.
    assert 150 < np.sum(strokes != 0) < 250
    assert abs(np.sum(strokes == 1) - np.sum(strokes == 2)) < 50
    out = settings.transform_batch(images, np.random.default_rng(3))
    assert_array_equal(out, aug._change_strokes(images, strokes))
    assert_array_equal(out, warp_images(images, **draw))
    # All or nothing, and 0 leaves every other draw's stream as it was.
    assert np.all(Augmentation(**still, stroke_change=1.0).draw(
        50, (24, 24), np.random.default_rng(0))["strokes"] != 0)
    plain, changed = (Augmentation(stroke_change=p).draw(50, (24, 24), np.random.default_rng(4))
                      for p in (0.0, 0.7))
    assert not plain["strokes"].any()
    for key in ("angle", "shear", "scale", "shift"):
        assert_array_equal(plain[key], changed[key])


def test_strokes_argument_of_warp_images_is_checked(blobs):
    with pytest.raises(ValueError, match="strokes must hold"):
        warp_images(blobs, strokes=np.full(len(blobs), 3))
    with pytest.raises(ValueError, match="strokes must hold"):
        warp_images(blobs, strokes=[0])
    with pytest.raises(ValueError, match="stroke_change"):
        Augmentation(stroke_change=1.5).frozen()


def test_real_mnist_digits_under_the_presets(mnist_path):
    with np.load(mnist_path) as data:
        images = data["X_test"][:1024].astype(np.float32) / 255
    ink = images.sum(axis=(1, 2))
    affine = make_augmentation("affine")
    draw = affine.draw(len(images), (28, 28), np.random.default_rng(18))
    out = affine.transform_batch(images, np.random.default_rng(18))
    # Digits with a blank 4-px margin (about a quarter) stay in the field.
    border = np.ones((28, 28), dtype=bool)
    border[4:-4, 4:-4] = False
    clear = images[:, border].sum(axis=1) == 0
    assert clear.sum() > 200
    assert_allclose((out.sum(axis=(1, 2)) / ink)[clear], draw["scale"][clear] ** 2, rtol=0.03)
    # The elastic field compresses and stretches strokes locally (up to about
    # +-50% of a digit's ink for alpha 36, sigma 5) but keeps it on average.
    out = make_augmentation("elastic").transform_batch(images, np.random.default_rng(18))
    ratio = out.sum(axis=(1, 2)) / ink
    assert 0.5 < ratio.min() and ratio.max() < 2 and abs(ratio.mean() - 1) < 0.05
    varied = make_handwriting_variations(images, random_state=0)
    assert varied.shape == images.shape and 0 <= varied.min() and varied.max() <= 1


def test_settings_saved_before_stroke_change_existed_still_load():
    old = Augmentation(rotation=7).__getstate__()
    del old["stroke_change"]
    restored = Augmentation.__new__(Augmentation)
    restored.__setstate__(old)
    assert restored.stroke_change == 0.0 and restored.frozen().rotation == 7.0
