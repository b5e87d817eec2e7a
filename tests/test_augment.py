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
