"""Random data augmentation for channels-last batches, as pure, jit-able functions.

:func:`make_augmentation` returns ``augment(key, batch) -> batch``: the key is split
into one key per example and a per-example transform runs under ``jax.vmap``, so a
batch is augmented in one compiled call and the result depends only on the key.
Shapes and dtypes are kept. Three strengths (:data:`STRENGTHS`), the ones FixMatch
and its successors build on:

``"none"``
    the batch, unchanged.
``"weak"``
    a random translation of up to 12.5% of each spatial side (at least one pixel),
    by zero-padding and cropping at a random offset; with ``flip=True`` also a
    mirror image half of the time (never the default: a mirrored digit is another
    symbol, or none). 1-D signals are also multiplied by a random gain in
    [0.9, 1.1].
``"strong"``
    the weak augmentation followed, for images, by RandAugment-style operations:
    two distinct operations drawn per example from :data:`IMAGE_OPS`, each of a
    random strength up to ``magnitude`` of its maximum (FixMatch's RandAugment
    draws strengths at random too), then Cutout, and finally clipping back to
    [0, 1]. For 1-D signals: a larger shift, a wider gain, Gaussian noise and
    Cutout, all growing with ``magnitude``.

Token sequences ``(N, L)`` (int32 ids, :data:`lab.modality.SPECIAL_TOKENS`: ``[CLS]`` first, ``[PAD]`` = 0
at the end) are edited UDA/EDA style, only at their tokens: ``[CLS]`` at position 0 and
the padding are never touched, and the length is kept. Weak replaces 10% of the tokens
by ``[MASK]`` (token dropout). Strong, at magnitude ``m``, masks a span of ``m / 4`` of
the tokens (cut-out), then masks each other token with probability ``0.1 + 0.2 m``,
replaces it by a token drawn from the same sequence with probability ``0.2 m`` (no
vocabulary needed), and deletes it with probability ``0.2 m``, shifting the rest left and
padding the end. ``flip`` is refused: text has no mirror image.

Images are ``(N, H, W, C)`` in [0, 1]; 1-D signals are ``(N, L, C)`` (their values
are not assumed to lie in any range, so they are never clipped). Every dataset in
:mod:`lab.data` has a dark background, so padding and geometric resampling fill
with 0; Cutout fills with mid-grey 0.5 for images, as FixMatch does, and with 0 (the
signal baseline) for 1-D signals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from lab import modality, validate
from lab.modality import MASK_ID, PAD_ID

__all__ = ["BY_MODALITY", "IMAGE_OPS", "STRENGTHS", "Augmentation", "check_options", "make_augmentation"]

STRENGTHS = ("none", "weak", "strong")

Augmentation = Callable[[jax.Array, jax.Array], jax.Array]
"""``augment(key, batch) -> batch`` of the same shape and dtype."""

# The strong image operations, each with its largest change (reached at magnitude 1).
# Geometric ones are composed into one affine map, so an image is resampled once.
IMAGE_OPS = ("translate", "rotate", "shear", "contrast", "brightness", "noise")
_MAX_TRANSLATE = 0.3  # fraction of the side
_MAX_ROTATE = math.radians(30.0)
_MAX_SHEAR = 0.3
_MAX_CONTRAST = 0.9  # factor 1 ± 0.9
_MAX_BRIGHTNESS = 0.9  # factor 1 ± 0.9
_MAX_NOISE = 0.2  # standard deviation, in units of the [0, 1] intensity range
_OPS_PER_IMAGE = 2
_CUTOUT_FRACTION = 0.5  # side of the Cutout square at magnitude 1, as a fraction of the image side (FixMatch)
_CUTOUT_FILL_IMAGE = 0.5

_WEAK_SHIFT_FRACTION = 0.125
_WEAK_GAIN = 0.1  # 1-D weak gain in [1 - 0.1, 1 + 0.1]
# 1-D strong, at magnitude 1: extra shift (fraction of L), gain spread, noise (relative to
# the signal's standard deviation) and Cutout length (fraction of L).
_STRONG_SHIFT_FRACTION = 0.25
_STRONG_GAIN = 0.5
_STRONG_NOISE = 0.2
_CUTOUT_FRACTION_SIGNAL = 0.25

# Token sequences: the weak [MASK] rate; strong at magnitude 1: span cut-out (fraction of the
# tokens), the [MASK] rate (besides the weak one), the replacement and the deletion rates.
_WEAK_MASK = 0.1
_STRONG_SPAN = 0.25
_STRONG_MASK = 0.2
_STRONG_REPLACE = 0.2
_STRONG_DELETE = 0.2


def make_augmentation(
    strength: str, input_shape: Sequence[int], *, flip: bool = False, magnitude: float = 0.5
) -> Augmentation:
    """``augment(key, batch)`` for batches of examples shaped ``input_shape``.

    ``input_shape`` is one example's shape: ``(H, W, C)`` for images, ``(L, C)`` for
    1-D signals, ``(L,)`` for token sequences. ``flip`` adds random mirroring along the
    width (time, for signals; refused for token sequences).
    ``magnitude`` in [0, 1] scales the strong augmentation (unused by the others).
    """
    validate.choice("augmentation strength", strength, STRENGTHS)
    shape, kind = _check_input_shape(input_shape)
    check_options(flip=flip, magnitude=magnitude)

    weak, strong = BY_MODALITY[kind]
    per_example = {
        "none": None,
        "weak": partial(weak, flip=flip),
        "strong": partial(strong, flip=flip, magnitude=float(magnitude)),
    }[strength]

    def augment(key: jax.Array, batch: jax.Array) -> jax.Array:
        if tuple(batch.shape[1:]) != shape:
            raise ValueError(
                f"this augmentation was made for examples of shape {shape}, "
                f"so batches of shape (N, {', '.join(map(str, shape))}); got a batch of shape {tuple(batch.shape)}"
            )
        if per_example is None:
            return batch
        keys = jax.random.split(key, batch.shape[0])
        return jax.vmap(per_example)(keys, batch).astype(batch.dtype)

    return augment


def check_options(*, flip: bool = False, magnitude: float = 0.5) -> None:
    """Refuse a ``flip`` or ``magnitude`` :func:`make_augmentation` would refuse, without an input shape."""
    if not isinstance(flip, bool):
        raise ValueError(f"flip must be True or False, got {flip!r}")
    validate.probability("magnitude", magnitude)


def _check_input_shape(input_shape: Sequence[int]) -> tuple[tuple[int, ...], str]:
    """One example's shape as ints, and its modality (one with augmentations)."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    kind = None if shape is None else modality.of_shape(shape)
    if (
        kind is None
        or kind.name not in BY_MODALITY
        or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        described = " or ".join(
            f"{modality.MODALITIES[name].example_shape} for {modality.MODALITIES[name].plural}" for name in BY_MODALITY
        )
        raise ValueError(
            f"input_shape must be one example's shape, {described}, with positive integer sizes; got {input_shape!r}"
        )
    return tuple(int(n) for n in shape), kind.name


# ------------------------------------------------------------------ shared pieces


def _uniforms(key: jax.Array, **shapes: tuple[int, ...]) -> dict[str, jax.Array]:
    """All the random numbers one example needs, uniform in [0, 1), named by use.

    They come from a single ``jax.random.uniform`` call: under ``vmap``, every
    separate random call adds its own copy of the counter-based generator to the
    compiled program, and a single draw compiles several times faster.
    """
    sizes = [math.prod(shape) for shape in shapes.values()]
    flat = jax.random.uniform(key, (sum(sizes),))
    parts = jnp.split(flat, np.cumsum(sizes)[:-1])
    return {name: part.reshape(shape) for (name, shape), part in zip(shapes.items(), parts)}


def _integers(u: jax.Array, low: int | jax.Array, high: int | jax.Array) -> jax.Array:
    """Map uniforms in [0, 1) to integers in [low, high], each equally likely."""
    return jnp.minimum(low + jnp.floor(u * (high - low + 1)).astype(jnp.int32), high)


def _symmetric(u: jax.Array, limit: float) -> jax.Array:
    """Map uniforms in [0, 1) to uniforms in [-limit, limit)."""
    return (2.0 * u - 1.0) * limit


def _normal(u: jax.Array) -> jax.Array:
    """Map uniforms in [0, 1) to standard normal samples (inverse CDF; 0 is nudged off -inf)."""
    return jax.scipy.special.ndtri(jnp.clip(u, 1e-7, 1.0 - 1e-7))


def _max_weak_shift(size: int) -> int:
    return max(1, round(_WEAK_SHIFT_FRACTION * size))


def _translate(x: jax.Array, shifts: jax.Array, max_shifts: Sequence[int]) -> jax.Array:
    """Shift every spatial axis by ``shifts`` (integers in [-max, max]): zero-pad, then crop."""
    pad = [(m, m) for m in max_shifts] + [(0, 0)]  # the channel axis is not shifted
    padded = jnp.pad(x, pad)
    return jax.lax.dynamic_slice(padded, (*(jnp.asarray(max_shifts) - shifts), 0), x.shape)


def _random_translate(u: jax.Array, x: jax.Array, max_shifts: Sequence[int]) -> jax.Array:
    """Translate by a uniformly drawn integer in [-max, max] per spatial axis (``u``: one uniform per axis)."""
    bounds = jnp.asarray(max_shifts)
    return _translate(x, _integers(u, -bounds, bounds), max_shifts)


def _maybe_flip(u: jax.Array, x: jax.Array) -> jax.Array:
    """Mirror the width (images) or time (signals) axis, the one before channels, half of the time."""
    return jnp.where(u < 0.5, jnp.flip(x, axis=-2), x)


def _cutout(u: jax.Array, x: jax.Array, sizes: Sequence[int], fill: float) -> jax.Array:
    """Fill a box of ``sizes`` (per spatial axis) centred on a random pixel; it may overhang the border."""
    spatial = x.shape[:-1]
    inside = jnp.ones(spatial, bool)
    for axis, (n, size) in enumerate(zip(spatial, sizes)):
        start = _integers(u[axis], 0, n - 1) - size // 2
        position = jnp.arange(n)
        along = (position >= start) & (position < start + size)
        inside &= jnp.expand_dims(along, [a for a in range(len(spatial)) if a != axis])
    return jnp.where(inside[..., None], fill, x)


# ------------------------------------------------------------------ images (H, W, C)


def _weak_image(key: jax.Array, image: jax.Array, *, flip: bool) -> jax.Array:
    u = _uniforms(key, flip=(), shift=(2,))
    if flip:
        image = _maybe_flip(u["flip"], image)
    return _random_translate(u["shift"], image, [_max_weak_shift(n) for n in image.shape[:2]])


def _strong_image(key: jax.Array, image: jax.Array, *, flip: bool, magnitude: float) -> jax.Array:
    ops = (len(IMAGE_OPS),)
    u = _uniforms(key, flip=(), shift=(2,), choice=ops, amount=ops, direction=(), cutout=(2,), noise=image.shape)
    if flip:
        image = _maybe_flip(u["flip"], image)
    image = _random_translate(u["shift"], image, [_max_weak_shift(n) for n in image.shape[:2]])

    # Each op's strength is a random share of its maximum, up to `magnitude`, and zero for
    # the ops not drawn: those become identities, and no branching on traced values is needed.
    _, drawn = jax.lax.top_k(u["choice"], _OPS_PER_IMAGE)  # distinct ops, uniformly drawn
    chosen = jnp.zeros(len(IMAGE_OPS)).at[drawn].set(1.0)
    strength = dict(zip(IMAGE_OPS, chosen * _symmetric(u["amount"], magnitude)))

    angle = 2.0 * jnp.pi * u["direction"]
    direction = jnp.stack([jnp.sin(angle), jnp.cos(angle)])
    image = _affine_resample(
        image,
        translate=strength["translate"] * _MAX_TRANSLATE * direction * jnp.asarray(image.shape[:2], jnp.float32),
        angle=strength["rotate"] * _MAX_ROTATE,
        shear=strength["shear"] * _MAX_SHEAR,
    )
    mean = jnp.mean(image)
    image = mean + (1.0 + strength["contrast"] * _MAX_CONTRAST) * (image - mean)
    image = image * (1.0 + strength["brightness"] * _MAX_BRIGHTNESS)
    image = image + jnp.abs(strength["noise"]) * _MAX_NOISE * _normal(u["noise"])

    cutout = [round(magnitude * _CUTOUT_FRACTION * n) for n in image.shape[:2]]
    if min(cutout) > 0:
        image = _cutout(u["cutout"], image, cutout, _CUTOUT_FILL_IMAGE)
    return jnp.clip(image, 0.0, 1.0)


def _affine_resample(image: jax.Array, *, translate: jax.Array, angle: jax.Array, shear: jax.Array) -> jax.Array:
    """Rotate by ``angle`` and shear along the width about the centre, shift by ``translate`` (pixels).

    Each output pixel reads the input at its mapped position with bilinear
    interpolation (``map_coordinates``, order 1); positions outside the image read 0.
    With all three at zero the map is the identity and pixels are copied exactly.
    """
    height, width = image.shape[:2]
    centre = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0])
    rows, cols = jnp.meshgrid(*(jnp.arange(n, dtype=jnp.float32) for n in (height, width)), indexing="ij")
    offset = jnp.stack([rows - centre[0], cols - centre[1]])  # (2, H, W)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    rotation = jnp.array([[cos, -sin], [sin, cos]])
    shearing = jnp.array([[1.0, 0.0], [shear, 1.0]])
    source = jnp.einsum("ij,jhw->ihw", rotation @ shearing, offset) + (centre - translate)[:, None, None]

    def resample(channel):
        return jax.scipy.ndimage.map_coordinates(channel, [source[0], source[1]], order=1, mode="constant", cval=0.0)

    return jax.vmap(resample, in_axes=-1, out_axes=-1)(image)


# ------------------------------------------------------------------ 1-D signals (L, C)


def _weak_signal(key: jax.Array, signal: jax.Array, *, flip: bool) -> jax.Array:
    u = _uniforms(key, flip=(), shift=(1,), gain=())
    if flip:
        signal = _maybe_flip(u["flip"], signal)
    signal = _random_translate(u["shift"], signal, [_max_weak_shift(signal.shape[0])])
    return signal * (1.0 + _symmetric(u["gain"], _WEAK_GAIN))


def _strong_signal(key: jax.Array, signal: jax.Array, *, flip: bool, magnitude: float) -> jax.Array:
    length = signal.shape[0]
    u = _uniforms(key, flip=(), shift=(1,), gain=(), cutout=(1,), noise=signal.shape)
    if flip:
        signal = _maybe_flip(u["flip"], signal)
    max_shift = _max_weak_shift(length) + round(magnitude * _STRONG_SHIFT_FRACTION * length)
    signal = _random_translate(u["shift"], signal, [max_shift])
    signal = signal * (1.0 + _symmetric(u["gain"], _WEAK_GAIN + magnitude * _STRONG_GAIN))
    signal = signal + magnitude * _STRONG_NOISE * jnp.std(signal) * _normal(u["noise"])
    cutout = round(magnitude * _CUTOUT_FRACTION_SIGNAL * length)
    if cutout > 0:
        signal = _cutout(u["cutout"], signal, [cutout], 0.0)
    return signal


# ------------------------------------------------------------------ token sequences (L,)


def _editable(ids: jax.Array) -> jax.Array:
    """Where an augmentation may edit: the tokens, not [CLS] at position 0 and not [PAD]."""
    return (ids != PAD_ID) & (jnp.arange(ids.shape[0]) > 0)


def _refuse_flip(flip: bool) -> None:
    if flip:
        raise ValueError("flip=True mirrors images and signals; token sequences have no mirror image")


def _weak_text(key: jax.Array, ids: jax.Array, *, flip: bool) -> jax.Array:
    _refuse_flip(flip)
    u = _uniforms(key, mask=ids.shape)
    return jnp.where(_editable(ids) & (u["mask"] < _WEAK_MASK), MASK_ID, ids)


def _strong_text(key: jax.Array, ids: jax.Array, *, flip: bool, magnitude: float) -> jax.Array:
    _refuse_flip(flip)
    length = ids.shape[0]
    u = _uniforms(key, span=(), mask=ids.shape, replace=ids.shape, source=ids.shape, delete=ids.shape)
    editable = _editable(ids)
    count = jnp.sum(editable)
    position = jnp.arange(length)
    # The editable positions first, in order: the k-th token of the sequence is at order[k].
    order = jnp.argsort(~editable, stable=True)

    # Cut-out: a span of round(magnitude * _STRONG_SPAN * count) tokens from a random token on.
    span = jnp.round(magnitude * _STRONG_SPAN * count).astype(jnp.int32)
    start = order[_integers(u["span"], 0, jnp.maximum(count - 1, 0))]
    masked = editable & (position >= start) & (position < start + span)
    masked |= editable & (u["mask"] < _WEAK_MASK + magnitude * _STRONG_MASK)
    out = jnp.where(masked, MASK_ID, ids)

    # Replacement by a token of the same sequence (its original id), among the unmasked ones.
    drawn = ids[order[_integers(u["source"], 0, jnp.maximum(count - 1, 0))]]
    out = jnp.where(editable & ~masked & (u["replace"] < magnitude * _STRONG_REPLACE), drawn, out)

    # Deletion: kept positions move left in order ([CLS] and padding are kept), the end fills with [PAD].
    kept = ~(editable & (u["delete"] < magnitude * _STRONG_DELETE))
    out = out[jnp.argsort(~kept, stable=True)]
    return jnp.where(position < jnp.sum(kept), out, PAD_ID)


# ------------------------------------------------------------------ registry

PerExample = Callable[..., jax.Array]
"""``augment(key, example, *, flip[, magnitude])`` for one example."""

# Each modality's weak and strong per-example augmentation: a new modality adds a row.
BY_MODALITY: dict[str, tuple[PerExample, PerExample]] = {
    "image": (_weak_image, _strong_image),
    "signal": (_weak_signal, _strong_signal),
    "text": (_weak_text, _strong_text),
}
