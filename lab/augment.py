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

Token sequences ``(N, L)`` (int32 ids, ``[CLS]`` first, ``[PAD]`` = 0 at the end) are edited
UDA/EDA style, only at their tokens: the tokenizer's special ids (``special_ids``, a
:class:`lab.modality.SpecialIds` its tokenizer provides: ``[CLS]``, ``[SEP]``, padding; lab's own
by default), position 0 and the padding are never touched, and the length is kept. Weak replaces
10% of the tokens by the tokenizer's ``[MASK]`` (token dropout). Strong, at magnitude ``m``, masks
a span of ``m / 4`` of the tokens (cut-out), then masks each other token with probability ``0.1 + 0.2 m``,
replaces it by a token drawn from the same sequence with probability ``0.2 m`` (no
vocabulary needed), and deletes it with probability ``0.2 m``, shifting the rest left and
padding the end. ``flip`` is refused: text has no mirror image.

Images are ``(N, H, W, C)`` in [0, 1]; 1-D signals are ``(N, L, C)`` (their values
are not assumed to lie in any range, so they are never clipped). The small datasets
of :mod:`lab.data` have a dark background, so padding and geometric resampling fill
with 0; Cutout fills with mid-grey 0.5 for images, as FixMatch does, and with 0 (the
signal baseline) for 1-D signals.

A *policy* (:data:`POLICIES`) names the weak and strong augmentation of each
modality. ``"default"`` is the one above (:data:`BY_MODALITY`). ``"randaugment"``
is FixMatch's, for natural (colour) images such as CIFAR, SVHN and STL-10:

* weak: a mirror image half of the time (with ``flip=True``), then a random crop
  after reflect-padding 12.5% of each side (4 pixels at 32x32), as torchvision's
  ``RandomCrop(32, padding=4, padding_mode="reflect")`` in USB;
* strong: the same, then :data:`RANDAUGMENT_OPS_PER_IMAGE` operations drawn with
  replacement from :data:`RANDAUGMENT_OPS` (the FixMatch paper's list: AutoContrast,
  Brightness, Color, Contrast, Equalize, Identity, Posterize, Rotate, Sharpness,
  ShearX/Y, Solarize, TranslateX/Y), each with a value drawn uniformly from its
  range, then Cutout of a random side in [0, 0.5] of the image, filled with grey 0.5.
  The ranges and the operations are those of PIL's ``ImageOps`` / ``ImageEnhance``
  as USB applies them; ``magnitude`` shrinks every range towards its mildest value,
  and 1 gives the paper's ranges. The operations follow PIL's definitions (tested
  against PIL), except that geometric ones resample bilinearly where PIL takes the
  nearest pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lab import modality, validate
from lab.modality import LAB_SPECIAL_IDS, PAD_ID, SpecialIds

__all__ = [
    "BY_MODALITY",
    "IMAGE_OPS",
    "POLICIES",
    "RANDAUGMENT_OPS",
    "RANDAUGMENT_OPS_PER_IMAGE",
    "STRENGTHS",
    "Augmentation",
    "check_options",
    "make_augmentation",
]

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
    strength: str,
    input_shape: Sequence[int],
    *,
    flip: bool = False,
    magnitude: float = 0.5,
    policy: str = "default",
    special_ids: SpecialIds | None = None,
) -> Augmentation:
    """``augment(key, batch)`` for batches of examples shaped ``input_shape``.

    ``input_shape`` is one example's shape: ``(H, W, C)`` for images, ``(L, C)`` for
    1-D signals, ``(L,)`` for token sequences. ``flip`` adds random mirroring along the
    width (time, for signals; refused for token sequences).
    ``magnitude`` in [0, 1] scales the strong augmentation (unused by the others).
    ``policy`` is a key of :data:`POLICIES`. ``special_ids``: the special tokens of the tokenizer
    that made token sequences (its ``special_ids``); lab's own when None.
    """
    validate.choice("augmentation strength", strength, STRENGTHS)
    check_options(flip=flip, magnitude=magnitude, policy=policy)
    shape, kind = _check_input_shape(input_shape)
    if kind not in POLICIES[policy]:
        takes = " and ".join(modality.MODALITIES[name].plural for name in POLICIES[policy])
        raise ValueError(
            f"augmentation policy {policy!r} has no augmentations for {modality.MODALITIES[kind].plural}; "
            f"it augments {takes}"
        )

    weak, strong = POLICIES[policy][kind]
    tokens = {"special_ids": special_ids or LAB_SPECIAL_IDS} if modality.MODALITIES[kind].tokenized else {}
    per_example = {
        "none": None,
        "weak": partial(weak, flip=flip, **tokens),
        "strong": partial(strong, flip=flip, magnitude=float(magnitude), **tokens),
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


def check_options(*, flip: bool = False, magnitude: float = 0.5, policy: str = "default") -> None:
    """Refuse a ``flip``, ``magnitude`` or ``policy`` :func:`make_augmentation` would refuse, without an input shape."""
    if not isinstance(flip, bool):
        raise ValueError(f"flip must be True or False, got {flip!r}")
    validate.probability("magnitude", magnitude)
    validate.choice("augmentation policy", policy, tuple(POLICIES))


def _check_input_shape(input_shape: Sequence[int]) -> tuple[tuple[int, ...], str]:
    """One example's shape as ints, and its modality (one with augmentations)."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    kind = None if shape is None else modality.of_shape(shape)
    if (
        kind is None
        or not any(kind.name in policy for policy in POLICIES.values())
        or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        augmented = dict.fromkeys(name for policy in POLICIES.values() for name in policy)
        described = " or ".join(
            f"{modality.MODALITIES[name].example_shape} for {modality.MODALITIES[name].plural}" for name in augmented
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


def _translate(x: jax.Array, shifts: jax.Array, max_shifts: Sequence[int], padding: str = "constant") -> jax.Array:
    """Shift every spatial axis by ``shifts`` (integers in [-max, max]): pad (zeros, or ``"reflect"``), then crop."""
    pad = [(m, m) for m in max_shifts] + [(0, 0)]  # the channel axis is not shifted
    padded = jnp.pad(x, pad, mode=padding)
    return jax.lax.dynamic_slice(padded, (*(jnp.asarray(max_shifts) - shifts), 0), x.shape)


def _random_translate(u: jax.Array, x: jax.Array, max_shifts: Sequence[int], padding: str = "constant") -> jax.Array:
    """Translate by a uniformly drawn integer in [-max, max] per spatial axis (``u``: one uniform per axis)."""
    bounds = jnp.asarray(max_shifts)
    return _translate(x, _integers(u, -bounds, bounds), max_shifts, padding)


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


def _weak_image(key: jax.Array, image: jax.Array, *, flip: bool, padding: str = "constant") -> jax.Array:
    return _flip_and_translate(_uniforms(key, flip=(), shift=(2,)), image, flip=flip, padding=padding)


def _flip_and_translate(u: dict[str, jax.Array], image: jax.Array, *, flip: bool, padding: str) -> jax.Array:
    """The weak image view from the uniforms ``u["flip"]`` and ``u["shift"]``."""
    if flip:
        image = _maybe_flip(u["flip"], image)
    return _random_translate(u["shift"], image, [_max_weak_shift(n) for n in image.shape[:2]], padding)


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
    return _resample(image, source)


def _resample(image: jax.Array, source: jax.Array) -> jax.Array:
    """Read ``image`` at the ``(2, H, W)`` (row, column) positions ``source``, bilinearly; 0 outside."""

    def resample(channel):
        return jax.scipy.ndimage.map_coordinates(channel, [source[0], source[1]], order=1, mode="constant", cval=0.0)

    return jax.vmap(resample, in_axes=-1, out_axes=-1)(image)


# ------------------------------------------------ RandAugment as in FixMatch, images (H, W, C)
#
# Each operation takes an image in [0, 1] and one value from its range, and follows
# PIL's definition as USB calls it; PIL works on 8-bit levels, so the operations
# defined on levels (Equalize, Posterize, Solarize) read the image as levels too.


def _levels(image: jax.Array) -> jax.Array:
    return jnp.round(image * 255.0).astype(jnp.int32)


def _luminance(image: jax.Array) -> jax.Array:
    """PIL's grey ("L") image, ``(H, W, 1)``: ITU-R 601-2 luma for RGB; the channel mean otherwise."""
    if image.shape[-1] == 3:
        return (image @ jnp.array([0.299, 0.587, 0.114], image.dtype))[..., None]
    return jnp.mean(image, axis=-1, keepdims=True)


def _blend(degenerate: jax.Array, image: jax.Array, factor: jax.Array) -> jax.Array:
    """PIL's ``ImageEnhance``: ``factor`` 0 gives ``degenerate``, 1 the image, in between a mix."""
    return degenerate + factor * (image - degenerate)


def _auto_contrast(image: jax.Array, value: jax.Array) -> jax.Array:
    """Stretch each channel to span [0, 1] (``ImageOps.autocontrast``); a flat channel is kept."""
    low, high = jnp.min(image, axis=(0, 1)), jnp.max(image, axis=(0, 1))
    span = high - low
    return jnp.where(span > 0, (image - low) / jnp.where(span > 0, span, 1.0), image)


def _brightness(image: jax.Array, value: jax.Array) -> jax.Array:
    return _blend(jnp.zeros_like(image), image, value)


def _color(image: jax.Array, value: jax.Array) -> jax.Array:
    return _blend(_luminance(image), image, value)


def _contrast(image: jax.Array, value: jax.Array) -> jax.Array:
    mean_level = jnp.round(jnp.mean(_luminance(image)) * 255.0) / 255.0  # PIL rounds the mean grey to a level
    return _blend(mean_level, image, value)


def _equalize(image: jax.Array, value: jax.Array) -> jax.Array:
    """``ImageOps.equalize``: each channel's levels mapped through PIL's cumulative-histogram table."""

    def channel(levels):
        histogram = jnp.bincount(levels.ravel(), length=256)
        step = (levels.size - histogram[jnp.max(levels)]) // 255
        table = (step // 2 + jnp.cumsum(histogram) - histogram) // jnp.maximum(step, 1)
        return jnp.where(step > 0, jnp.minimum(table[levels], 255), levels)  # step 0: PIL keeps the channel

    return jax.vmap(channel, in_axes=-1, out_axes=-1)(_levels(image)).astype(image.dtype) / 255.0


def _identity(image: jax.Array, value: jax.Array) -> jax.Array:
    return image


def _posterize(image: jax.Array, value: jax.Array) -> jax.Array:
    """Keep the ``int(value)`` highest bits of every level (``ImageOps.posterize``)."""
    bits = jnp.clip(jnp.floor(value).astype(jnp.int32), 1, 8)
    mask = jnp.left_shift(255, 8 - bits) & 255
    return (_levels(image) & mask).astype(image.dtype) / 255.0


def _sharpness(image: jax.Array, value: jax.Array) -> jax.Array:
    """Blend with PIL's SMOOTH filter (3x3, centre 5, others 1, over 13), which leaves the border pixels as they are."""
    height, width = image.shape[:2]
    padded = jnp.pad(image, [(1, 1), (1, 1), (0, 0)])
    neighbours = sum(padded[i : i + height, j : j + width] for i in range(3) for j in range(3))
    smooth = (neighbours + 4.0 * image) / 13.0
    rows, cols = jnp.arange(height)[:, None, None], jnp.arange(width)[None, :, None]
    border = (rows == 0) | (rows == height - 1) | (cols == 0) | (cols == width - 1)
    return _blend(jnp.where(border, image, smooth), image, value)


def _solarize(image: jax.Array, value: jax.Array) -> jax.Array:
    """Invert every level at or above the threshold ``value`` (``ImageOps.solarize``)."""
    return jnp.where(_levels(image) < value, image, 1.0 - image)


# Geometric operations, as the map from an output pixel (row, column) to the position it
# reads: ``matrix @ (row, column) + offset``. PIL's affine transforms act on pixel
# centres at +0.5 from the top-left corner, which the offsets carry over.


def _rotation(value: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """``Image.rotate(value)``: anticlockwise by ``value`` degrees about the centre."""
    angle = jnp.deg2rad(value)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    matrix = jnp.array([[cos, sin], [-sin, cos]])
    centre = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0])
    return matrix, centre - matrix @ centre


def _shear_x(value: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """PIL's affine ``(1, v, 0, 0, 1, 0)``: row r reads from ``v * (r + 0.5)`` columns to the right."""
    return jnp.array([[1.0, 0.0], [value, 1.0]]), jnp.array([0.0, 0.5 * value])


def _shear_y(value: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    return jnp.array([[1.0, value], [0.0, 1.0]]), jnp.array([0.5 * value, 0.0])


def _translate_x(value: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """PIL's affine ``(1, 0, v * W, 0, 1, 0)``: the image moves left by ``v`` of its width."""
    return jnp.eye(2), jnp.array([0.0, value * width])


def _translate_y(value: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    return jnp.eye(2), jnp.array([value * height, 0.0])


def _warp(image: jax.Array, matrix: jax.Array, offset: jax.Array) -> jax.Array:
    """Resample ``image`` through an affine map (bilinearly, black outside); the identity copies pixels exactly."""
    height, width = image.shape[:2]
    position = jnp.stack(jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")).astype(jnp.float32)
    return _resample(image, jnp.einsum("ij,jhw->ihw", matrix, position) + offset[:, None, None])


Geometry = Callable[[jax.Array, int, int], tuple[jax.Array, jax.Array]]


class RandAugmentOp(NamedTuple):
    """One RandAugment operation: its value range ``[low, high]``, the value in it that changes
    an image least (``mildest``), and either a colour operation ``(image, value) -> image`` or
    a geometry ``(value, H, W) -> (matrix, offset)``. Calling it applies it to one image."""

    low: float
    high: float
    mildest: float
    colour: Callable[[jax.Array, jax.Array], jax.Array] | None = None
    geometry: Geometry | None = None

    def __call__(self, image: jax.Array, value: float | jax.Array) -> jax.Array:
        value = jnp.asarray(value, jnp.float32)
        if self.geometry is None:
            return self.colour(image, value)
        return _warp(image, *self.geometry(value, *image.shape[:2]))

    def range_at(self, magnitude: float) -> tuple[float, float]:
        """The range at ``magnitude``: shrunk towards ``mildest``; the whole range at 1."""
        return tuple(self.mildest + magnitude * (end - self.mildest) for end in (self.low, self.high))


# FixMatch's RandAugment (Sohn et al., 2020, table 12), with USB's value ranges.
RANDAUGMENT_OPS: dict[str, RandAugmentOp] = {
    "auto_contrast": RandAugmentOp(0.0, 1.0, 0.0, colour=_auto_contrast),
    "brightness": RandAugmentOp(0.05, 0.95, 0.95, colour=_brightness),
    "color": RandAugmentOp(0.05, 0.95, 0.95, colour=_color),
    "contrast": RandAugmentOp(0.05, 0.95, 0.95, colour=_contrast),
    "equalize": RandAugmentOp(0.0, 1.0, 0.0, colour=_equalize),
    "identity": RandAugmentOp(0.0, 1.0, 0.0, colour=_identity),
    "posterize": RandAugmentOp(4.0, 8.0, 8.0, colour=_posterize),  # bits kept
    "rotate": RandAugmentOp(-30.0, 30.0, 0.0, geometry=_rotation),  # degrees
    "sharpness": RandAugmentOp(0.05, 0.95, 0.95, colour=_sharpness),
    "shear_x": RandAugmentOp(-0.3, 0.3, 0.0, geometry=_shear_x),
    "shear_y": RandAugmentOp(-0.3, 0.3, 0.0, geometry=_shear_y),
    "solarize": RandAugmentOp(0.0, 256.0, 256.0, colour=_solarize),  # threshold level
    "translate_x": RandAugmentOp(-0.3, 0.3, 0.0, geometry=_translate_x),  # fraction of the width
    "translate_y": RandAugmentOp(-0.3, 0.3, 0.0, geometry=_translate_y),
}
RANDAUGMENT_OPS_PER_IMAGE = 2  # N = 2 in the FixMatch paper (USB's code applies 3)
_RANDAUGMENT_CUTOUT = 0.5  # the Cutout side is drawn in [0, 0.5] of the image side


def _weak_natural_image(key: jax.Array, image: jax.Array, *, flip: bool) -> jax.Array:
    return _weak_image(key, image, flip=flip, padding="reflect")


def _randaugment_image(key: jax.Array, image: jax.Array, *, flip: bool, magnitude: float) -> jax.Array:
    ops = tuple(RANDAUGMENT_OPS.values())
    rounds = (RANDAUGMENT_OPS_PER_IMAGE,)
    u = _uniforms(key, flip=(), shift=(2,), op=rounds, value=rounds, cutout=(2,), cutout_side=())
    image = _flip_and_translate(u, image, flip=flip, padding="reflect")

    lows, highs = (jnp.array(ends, jnp.float32) for ends in zip(*(op.range_at(magnitude) for op in ops)))
    height, width = image.shape[:2]
    unchanged = (jnp.eye(2), jnp.zeros(2))
    geometries = [op.geometry or (lambda value, height, width: unchanged) for op in ops]
    colours = [op.colour or _identity for op in ops]
    for op_u, value_u in zip(u["op"], u["value"]):
        index = _integers(op_u, 0, len(ops) - 1)  # drawn with replacement, as USB's random.choices
        value = lows[index] + value_u * (highs[index] - lows[index])
        # One resampling per round: a colour operation warps by the identity, which copies pixels.
        image = _warp(image, *jax.lax.switch(index, geometries, value, height, width))
        image = jax.lax.switch(index, colours, image, value)

    side = u["cutout_side"] * magnitude * _RANDAUGMENT_CUTOUT
    sides = jnp.round(side * jnp.array(image.shape[:2], jnp.float32)).astype(jnp.int32)
    return jnp.clip(_cutout(u["cutout"], image, sides, _CUTOUT_FILL_IMAGE), 0.0, 1.0)


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


def _editable(ids: jax.Array, special_ids: SpecialIds) -> jax.Array:
    """Where an augmentation may edit: the tokens, not position 0 ([CLS]) nor the special ids ([SEP], [PAD])."""
    return ~jnp.isin(ids, jnp.asarray((PAD_ID, *special_ids.kept))) & (jnp.arange(ids.shape[0]) > 0)


def _refuse_flip(flip: bool) -> None:
    if flip:
        raise ValueError("flip=True mirrors images and signals; token sequences have no mirror image")


def _weak_text(key: jax.Array, ids: jax.Array, *, flip: bool, special_ids: SpecialIds) -> jax.Array:
    _refuse_flip(flip)
    u = _uniforms(key, mask=ids.shape)
    return jnp.where(_editable(ids, special_ids) & (u["mask"] < _WEAK_MASK), special_ids.mask, ids)


def _strong_text(
    key: jax.Array, ids: jax.Array, *, flip: bool, magnitude: float, special_ids: SpecialIds
) -> jax.Array:
    _refuse_flip(flip)
    length = ids.shape[0]
    u = _uniforms(key, span=(), mask=ids.shape, replace=ids.shape, source=ids.shape, delete=ids.shape)
    editable = _editable(ids, special_ids)
    count = jnp.sum(editable)
    position = jnp.arange(length)
    # The editable positions first, in order: the k-th token of the sequence is at order[k].
    order = jnp.argsort(~editable, stable=True)

    # Cut-out: a span of round(magnitude * _STRONG_SPAN * count) tokens from a random token on.
    span = jnp.round(magnitude * _STRONG_SPAN * count).astype(jnp.int32)
    start = order[_integers(u["span"], 0, jnp.maximum(count - 1, 0))]
    masked = editable & (position >= start) & (position < start + span)
    masked |= editable & (u["mask"] < _WEAK_MASK + magnitude * _STRONG_MASK)
    out = jnp.where(masked, special_ids.mask, ids)

    # Replacement by a token of the same sequence (its original id), among the unmasked ones.
    drawn = ids[order[_integers(u["source"], 0, jnp.maximum(count - 1, 0))]]
    out = jnp.where(editable & ~masked & (u["replace"] < magnitude * _STRONG_REPLACE), drawn, out)

    # Deletion: kept positions move left in order ([CLS], [SEP] and padding are kept), the end fills with [PAD].
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

# Named policies, each a table like BY_MODALITY (see the module docstring): a new policy adds a row.
POLICIES: dict[str, dict[str, tuple[PerExample, PerExample]]] = {
    "default": BY_MODALITY,
    "randaugment": {"image": (_weak_natural_image, _randaugment_image)},  # FixMatch's, for natural images
}
