"""Augmentations: shapes, ranges, determinism, the size of the weak shift, no
flipping unless asked, the invariants of token-sequence edits, and errors for bad arguments."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab import augment, semisupervised
from lab.text import CLS_ID, MASK_ID, PAD_ID

IMAGE = (8, 8, 1)
SIGNAL = (40, 1)
BATCH = 64


def _images(seed=0, shape=IMAGE):
    return jax.random.uniform(jax.random.PRNGKey(seed), (BATCH, *shape))


def _signals(seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (BATCH, *SIGNAL))


@functools.cache
def _augment(strength, shape, **options):
    """A jitted augmentation, compiled once per configuration for the whole module."""
    return jax.jit(augment.make_augmentation(strength, shape, **options))


def _translations(x, max_shift):
    """Every integer translation of ``x`` (H, W, C) by up to ``max_shift``, zero-filled."""
    padded = np.pad(x, [(max_shift, max_shift), (max_shift, max_shift), (0, 0)])
    h, w = x.shape[:2]
    return [padded[i : i + h, j : j + w] for i in range(2 * max_shift + 1) for j in range(2 * max_shift + 1)]


@pytest.mark.parametrize("strength", augment.STRENGTHS)
@pytest.mark.parametrize("kind", ["image", "signal"])
def test_shape_dtype_range_and_determinism(strength, kind):
    x, shape = (_images(), IMAGE) if kind == "image" else (_signals(), SIGNAL)
    fn = _augment(strength, shape, **({"magnitude": 1.0} if strength == "strong" else {}))
    key = jax.random.PRNGKey(1)
    out = fn(key, x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.all(np.isfinite(out))
    if kind == "image":
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_array_equal(fn(key, x), out)  # a function of the key
    if strength == "none":
        np.testing.assert_array_equal(out, x)
    else:
        assert not np.allclose(out, x)
        other = fn(jax.random.PRNGKey(2), x)
        assert not np.allclose(other, out)  # another key, another augmentation


def test_weak_image_translation_is_bounded_and_covers_every_shift():
    # One bright pixel in the middle: its new position is the shift.
    image = np.zeros(IMAGE, np.float32)
    image[4, 3, 0] = 1.0
    batch = jnp.broadcast_to(image, (BATCH, *IMAGE))
    seen = set()
    for seed in range(4):
        out = np.asarray(_augment("weak", IMAGE)(jax.random.PRNGKey(seed), batch))
        for example in out:
            (row,), (col,), _ = np.nonzero(example)
            assert example.sum() == 1.0  # moved, not blurred or rescaled
            seen.add((row - 4, col - 3))
    assert seen == {(dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1)}  # 12.5% of 8 = 1 pixel


def test_weak_shift_grows_with_the_image():
    image = np.zeros((28, 28, 1), np.float32)
    image[14, 14, 0] = 1.0
    out = np.asarray(_augment("weak", (28, 28, 1))(jax.random.PRNGKey(0), jnp.broadcast_to(image, (BATCH, 28, 28, 1))))
    rows, cols = np.nonzero(out[..., 0])[1:]
    shifts = np.concatenate([rows - 14, cols - 14])
    assert shifts.min() == -4 and shifts.max() == 4  # round(0.125 * 28)


def _asymmetric_batch():
    # An "L"-like glyph in the left half: mirroring would move its mass to the right half.
    image = np.zeros(IMAGE, np.float32)
    image[1:7, 1, 0] = 1.0
    image[6, 1:4, 0] = 1.0
    return jnp.broadcast_to(image, (BATCH, *IMAGE))


def _mass_centre_column(images):
    columns = np.arange(IMAGE[1])
    mass = np.asarray(images)[..., 0].sum(axis=1)  # (N, W)
    return (mass * columns).sum(-1) / mass.sum(-1)


def test_weak_never_flips_unless_asked():
    batch = _asymmetric_batch()
    unflipped = _mass_centre_column(_augment("weak", IMAGE)(jax.random.PRNGKey(0), batch))
    assert unflipped.max() < 3.5  # never mirrored: the glyph (centre 1.375, shift <= 1) stays left
    flipped = _mass_centre_column(_augment("weak", IMAGE, flip=True)(jax.random.PRNGKey(0), batch))
    share = np.mean(flipped > 3.5)
    assert 0.3 < share < 0.7  # with flip=True, about half are mirrored


def test_strong_image_does_more_than_translate():
    x = np.asarray(_images(3))
    mild = np.asarray(_augment("strong", IMAGE, magnitude=0.0)(jax.random.PRNGKey(0), x))
    strong = np.asarray(_augment("strong", IMAGE, magnitude=1.0)(jax.random.PRNGKey(0), x))

    def is_translation(example, original):
        return any(np.allclose(example, t, atol=1e-6) for t in _translations(original, 1))

    # At magnitude 0 every op is the identity and there is no Cutout: only the weak shift remains.
    assert all(is_translation(m, o) for m, o in zip(mild, x))
    assert not any(is_translation(s, o) for s, o in zip(strong, x))


def test_strong_image_ends_with_cutout():
    white = jnp.ones((BATCH, *IMAGE))
    out = np.asarray(_augment("strong", IMAGE, magnitude=1.0)(jax.random.PRNGKey(0), white))
    grey = (out == 0.5).sum(axis=(1, 2, 3))
    # A 4x4 mid-grey square (half the side at magnitude 1, as in FixMatch), painted last;
    # centred on a corner pixel at worst, a 2x2 quarter of it is still inside.
    assert grey.min() >= 4
    assert grey.max() == 16


def _spikes():
    signal = np.zeros(SIGNAL, np.float32)
    signal[20, 0] = 1.0
    return jnp.broadcast_to(signal, (BATCH, *SIGNAL))


def test_weak_signal_shifts_and_scales_a_spike():
    out = np.asarray(_augment("weak", SIGNAL)(jax.random.PRNGKey(0), _spikes()))[..., 0]
    assert np.all(np.count_nonzero(out, axis=1) == 1)  # moved and scaled, nothing else
    positions = np.argmax(np.abs(out), axis=1)
    peaks = out[np.arange(BATCH), positions]
    assert set(positions - 20) == set(range(-5, 6))  # round(0.125 * 40) = 5
    assert np.all((peaks >= 0.9) & (peaks <= 1.1)) and np.ptp(peaks) > 0.05


def test_strong_signal_adds_noise_cutout_and_larger_shifts():
    out = np.asarray(_augment("strong", SIGNAL, magnitude=1.0)(jax.random.PRNGKey(0), _spikes()))[..., 0]
    # Noise touches every sample; exact zeros are left only by Cutout, 10 samples long at
    # magnitude 1 (a quarter of 40), of which at least half lie inside the signal.
    zeros = np.sum(out == 0.0, axis=1)
    assert zeros.min() >= 5 and zeros.max() == 10
    surviving = np.abs(out).max(axis=1) > 0.3  # spikes that Cutout did not erase
    shifts = np.abs(np.argmax(np.abs(out), axis=1) - 20)[surviving]
    assert surviving.mean() > 0.5
    assert shifts.max() > 5 and shifts.max() <= 5 + 10  # weak shift plus a quarter of 40


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"unknown augmentation strength 'medium'; choose one of: none, weak, strong"):
        augment.make_augmentation("medium", IMAGE)
    for magnitude in (-0.1, 1.5, True, "high"):
        with pytest.raises(ValueError, match=rf"magnitude must be a number in \[0, 1\], got {magnitude!r}"):
            augment.make_augmentation("strong", IMAGE, magnitude=magnitude)
    for shape in ((1, 8, 8, 1), (8, 0, 1), (8.0, 8, 1), (0,), 8):
        with pytest.raises(ValueError, match=r"input_shape must be .*\(H, W, C\) for images or \(L, C\)"):
            augment.make_augmentation("weak", shape)
    with pytest.raises(ValueError, match="flip must be True or False"):
        augment.make_augmentation("weak", IMAGE, flip=1)
    fn = augment.make_augmentation("none", IMAGE)
    with pytest.raises(ValueError, match=r"made for examples of shape \(8, 8, 1\).*got a batch of shape \(4, 8, 8\)"):
        fn(jax.random.PRNGKey(0), jnp.zeros((4, 8, 8)))


# ---------------------------------------------------------------- token sequences (L,)

TEXT = (24,)
VOCAB = 500


def _token_batch(seed=0):
    """Sequences as lab.text makes them: [CLS], 0..23 tokens (ids 4..499), then [PAD] to the end."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((BATCH, *TEXT), np.int32)
    ids[:, 0] = CLS_ID
    for row, count in enumerate(rng.integers(0, TEXT[0], BATCH)):
        ids[row, 1 : 1 + count] = rng.integers(4, VOCAB, count)
    return ids


@pytest.mark.parametrize("strength", augment.STRENGTHS)
def test_text_shape_dtype_and_determinism(strength):
    x = jnp.asarray(_token_batch())
    fn = _augment(strength, TEXT)
    out = fn(jax.random.PRNGKey(1), x)
    assert out.shape == x.shape and out.dtype == jnp.int32
    np.testing.assert_array_equal(fn(jax.random.PRNGKey(1), x), out)
    if strength == "none":
        np.testing.assert_array_equal(out, x)
    else:
        assert not np.array_equal(out, x)
        assert not np.array_equal(fn(jax.random.PRNGKey(2), x), out)


@pytest.mark.parametrize("magnitude", [0.5, 1.0])
def test_text_edits_keep_cls_padding_and_draw_no_new_token(magnitude):
    x = _token_batch(3)
    tokens = (x != PAD_ID) & (np.arange(TEXT[0]) > 0)
    weak = np.asarray(_augment("weak", TEXT)(jax.random.PRNGKey(0), jnp.asarray(x)))
    strong = np.asarray(_augment("strong", TEXT, magnitude=magnitude)(jax.random.PRNGKey(0), jnp.asarray(x)))
    for out in (weak, strong):
        assert np.all(out[:, 0] == CLS_ID)
        assert np.all(out[x == PAD_ID] == PAD_ID)  # padding stays padding
        lengths = np.sum(out != PAD_ID, axis=1)
        assert np.all(out[np.arange(TEXT[0]) >= lengths[:, None]] == PAD_ID)  # tokens first, then padding
        for row, original in zip(out, x):
            # [MASK], or a token of the same sequence (replacement draws from it, deletion moves them).
            assert set(row[1:][row[1:] != PAD_ID].tolist()) <= set(original[1:].tolist()) | {MASK_ID}
    # Weak masks in place: a token is itself or [MASK], about 10% of them [MASK].
    assert np.all((weak == x) | (tokens & (weak == MASK_ID)))
    assert 0.05 < np.mean(weak[tokens] == MASK_ID) < 0.15
    # Strong also deletes: sequences shrink, never grow.
    kept = np.sum(strong != PAD_ID, axis=1)
    assert np.all(kept <= np.sum(x != PAD_ID, axis=1)) and np.any(kept < np.sum(x != PAD_ID, axis=1))


def test_strong_text_changes_more_tokens_than_weak():
    x = jnp.asarray(_token_batch(5))
    tokens = np.asarray((x != PAD_ID) & (jnp.arange(TEXT[0]) > 0))

    def changed(fn):
        return np.mean([np.mean(np.asarray(fn(jax.random.PRNGKey(k), x))[tokens] != np.asarray(x)[tokens])
                        for k in range(4)])

    weak = changed(_augment("weak", TEXT))
    mild = changed(_augment("strong", TEXT, magnitude=0.0))  # nothing but the weak masking rate
    strong = changed(_augment("strong", TEXT, magnitude=0.5))
    assert abs(mild - weak) < 0.03 and strong > weak + 0.2


def test_text_cannot_be_flipped():
    fn = augment.make_augmentation("weak", TEXT, flip=True)
    with pytest.raises(ValueError, match="token sequences have no mirror image"):
        fn(jax.random.PRNGKey(0), jnp.asarray(_token_batch()))


@pytest.mark.parametrize("name", ["supervised", "fixmatch", "mean_teacher"])
def test_semi_supervised_methods_build_on_token_sequences(name):
    method = semisupervised.make_method(name, input_shape=TEXT)
    x = jnp.asarray(_token_batch())
    assert set(method.augmentations) == ({"weak", "strong"} if name == "fixmatch" else {"weak"})
    for strength, fn in method.augmentations.items():
        out = np.asarray(jax.jit(fn)(jax.random.PRNGKey(0), x))
        assert out.shape == x.shape and out.dtype == np.int32 and np.all(out[:, 0] == CLS_ID), strength
        assert not np.array_equal(out, x), strength

# ------------------------------------------------------------- the "randaugment" policy (FixMatch)

COLOUR = (8, 8, 3)


def _pil_image(seed=0, shape=COLOUR, low=30, high=220):
    """A random RGB image as uint8 levels; not spanning 0..255, so AutoContrast has work to do."""
    return np.random.default_rng(seed).integers(low, high, size=shape, dtype=np.uint8)


def _apply(name, levels, value):
    out = augment.RANDAUGMENT_OPS[name](jnp.asarray(levels, jnp.float32) / 255.0, value)
    return np.asarray(out) * 255.0


def _pil(levels, operation):
    from PIL import Image

    return np.asarray(operation(Image.fromarray(levels)), np.float64)


def _enhance(kind):
    from PIL import ImageEnhance

    return lambda value: lambda image: getattr(ImageEnhance, kind)(image).enhance(value)


def _image_ops(kind):
    from PIL import ImageOps

    return lambda *args: lambda image: getattr(ImageOps, kind)(image, *args)


# (operation, its value, PIL's operation as USB calls it, tolerance in levels): operations defined on
# levels agree exactly; PIL truncates blends and the stretch to whole levels (up to 1 level) and
# rounds its grey and smoothed images to a level (half a level more for Color and Sharpness).
PIL_REFERENCES = [
    ("auto_contrast", 0.0, lambda: _image_ops("autocontrast")(), 1.0),
    ("brightness", 0.3, lambda: _enhance("Brightness")(0.3), 1.0),
    ("color", 0.4, lambda: _enhance("Color")(0.4), 1.5),
    ("contrast", 0.6, lambda: _enhance("Contrast")(0.6), 1.0),
    ("identity", 0.0, lambda: (lambda image: image), 0.0),
    ("posterize", 5.7, lambda: _image_ops("posterize")(5), 0.0),  # USB keeps int(v) bits
    ("sharpness", 0.2, lambda: _enhance("Sharpness")(0.2), 1.5),  # PIL rounds the smoothed image too
    ("solarize", 100.0, lambda: _image_ops("solarize")(100.0), 0.0),
]


@pytest.mark.parametrize(("name", "value", "reference", "levels"), PIL_REFERENCES, ids=[r[0] for r in PIL_REFERENCES])
def test_randaugment_colour_operations_match_pil(name, value, reference, levels):
    pytest.importorskip("PIL")
    image = _pil_image(seed=len(name))
    expected = _pil(image, reference())

    np.testing.assert_allclose(_apply(name, image, value), expected, atol=levels + 1e-3)
    assert not np.array_equal(expected, image) or name == "identity"  # the case exercises the operation


@pytest.mark.parametrize("side", [8, 48])
def test_equalize_matches_pil_on_a_skewed_histogram(side):
    pytest.importorskip("PIL")
    from PIL import ImageOps

    image = (np.random.default_rng(3).beta(0.5, 4.0, size=(side, side, 3)) * 255).astype(np.uint8)
    expected = _pil(image, ImageOps.equalize)

    np.testing.assert_array_equal(np.round(_apply("equalize", image, 0.0)), expected)
    # Below 255 pixels per channel PIL's table step is 0 and the image stays as it is; above, it spreads.
    assert np.array_equal(expected, image) == (side * side < 255)


# Geometric operations at values where PIL's nearest pixel and bilinear resampling read the same
# (whole-pixel positions): the map from output to input pixel is then exactly PIL's.
PIL_GEOMETRY = [
    ("rotate", 90.0, lambda image: image.rotate(90)),
    ("rotate", -90.0, lambda image: image.rotate(-90)),
    ("shear_x", 2.0, lambda image: image.transform(image.size, 0, (1, 2.0, 0, 0, 1, 0))),
    ("shear_y", -2.0, lambda image: image.transform(image.size, 0, (1, 0, 0, -2.0, 1, 0))),
    ("translate_x", 0.25, lambda image: image.transform(image.size, 0, (1, 0, 0.25 * 8, 0, 1, 0))),
    ("translate_y", -0.375, lambda image: image.transform(image.size, 0, (1, 0, 0, 0, 1, -0.375 * 8))),
]


@pytest.mark.parametrize(("name", "value", "reference"), PIL_GEOMETRY, ids=[f"{r[0]}{r[1]}" for r in PIL_GEOMETRY])
def test_randaugment_geometric_operations_match_pil(name, value, reference):
    pytest.importorskip("PIL")  # 0 in transform() is Image.AFFINE; PIL fills with black, as here
    image = _pil_image(seed=7)
    expected = _pil(image, reference)

    np.testing.assert_allclose(_apply(name, image, value), expected, atol=1e-3)
    assert not np.array_equal(expected, image)


def test_randaugment_ranges_are_the_papers_at_magnitude_one_and_shrink_to_the_mildest_value():
    papers = {
        "auto_contrast": (0.0, 1.0), "brightness": (0.05, 0.95), "color": (0.05, 0.95),
        "contrast": (0.05, 0.95), "equalize": (0.0, 1.0), "identity": (0.0, 1.0), "posterize": (4.0, 8.0),
        "rotate": (-30.0, 30.0), "sharpness": (0.05, 0.95), "shear_x": (-0.3, 0.3), "shear_y": (-0.3, 0.3),
        "solarize": (0.0, 256.0), "translate_x": (-0.3, 0.3), "translate_y": (-0.3, 0.3),
    }  # fmt: skip
    assert list(augment.RANDAUGMENT_OPS) == list(papers)
    np.testing.assert_allclose([op.range_at(1.0) for op in augment.RANDAUGMENT_OPS.values()], list(papers.values()))
    assert augment.RANDAUGMENT_OPS["rotate"].range_at(0.5) == (-15.0, 15.0)
    assert augment.RANDAUGMENT_OPS["solarize"].range_at(0.5) == (128.0, 256.0)


@pytest.mark.parametrize("strength", ["weak", "strong"])
def test_randaugment_policy_keeps_shape_dtype_range_and_is_a_function_of_the_key(strength):
    x = _images(shape=COLOUR)
    fn = _augment(strength, COLOUR, flip=True, magnitude=1.0, policy="randaugment")
    key = jax.random.PRNGKey(1)

    out = fn(key, x)

    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_array_equal(fn(key, x), out)
    assert not np.allclose(fn(jax.random.PRNGKey(2), x), out)
    assert not np.allclose(out, x)


def test_randaugment_weak_view_is_a_flip_and_a_reflect_padded_crop():
    x = np.asarray(_images(shape=COLOUR))
    out = np.asarray(_augment("weak", COLOUR, flip=True, policy="randaugment")(jax.random.PRNGKey(3), jnp.asarray(x)))

    def views(image):  # every crop after reflect-padding one pixel (12.5% of 8), of the image and its mirror
        for candidate in (image, image[:, ::-1]):
            padded = np.pad(candidate, [(1, 1), (1, 1), (0, 0)], mode="reflect")
            yield from (padded[i : i + 8, j : j + 8] for i in range(3) for j in range(3))

    matched = [next(k for k, view in enumerate(views(image)) if np.array_equal(view, result)) for image, result in zip(x, out)]
    assert len(set(matched)) > 9  # flips and several offsets occur


def test_randaugment_strong_view_applies_operations_and_cutout():
    x = jnp.full((BATCH, *COLOUR), 0.2)  # a flat image: only Cutout (grey 0.5) and colour operations change it
    out = np.asarray(_augment("strong", COLOUR, magnitude=1.0, policy="randaugment")(jax.random.PRNGKey(4), x))
    assert np.any(np.isclose(out, 0.5).all(axis=-1))  # Cutout's grey
    assert len(np.unique(np.round(out, 4))) > 5  # brightness, solarize, ... gave other values


def test_policies_are_named_and_cover_only_their_modalities():
    with pytest.raises(ValueError, match="unknown augmentation policy 'autoaugment'; choose one of: default, randaugment"):
        augment.make_augmentation("weak", COLOUR, policy="autoaugment")
    with pytest.raises(ValueError, match="augmentation policy 'randaugment' has no augmentations for signals; it augments images"):
        augment.make_augmentation("weak", SIGNAL, policy="randaugment")
