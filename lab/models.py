"""Classifiers for channels-last images ``(N, H, W, C)``, 1-D signals ``(N, L, C)`` and
token sequences ``(N, L)`` (int32 ids, see :data:`lab.modality.TEXT`).

Every classifier is a ``backbone`` that maps a batch of inputs to ``(N, feature_dim)``
features, followed by a linear ``head`` from features to ``(N, num_classes)`` logits.
The two are attributes with exactly those names, so every parameter path (the
``"/"``-joined keys of ``nnx.state(model, nnx.Param)``, e.g. ``backbone/layers/1/kernel``)
starts with ``backbone/`` or ``head/``: ``lab.optim`` freezes or rescales parameters
by these paths, and transfer learning swaps in a new head with
``model.head = nnx.Linear(model.feature_dim, new_num_classes, rngs=...)``.

Train and eval mode
-------------------
The mode is NNX's own mechanism: the ``deterministic`` attribute of ``nnx.Dropout``
and the ``use_running_average`` attribute of ``nnx.BatchNorm``.

* Models are built in training mode (NNX's default). Dropout is active and draws its
  keys from the ``"dropout"`` stream of the ``nnx.Rngs`` passed to the constructor
  (every dropout layer holds a fork of that stream); batch norm normalises with the
  statistics of the batch and updates its running averages (``nnx.BatchStat``).
* ``model.eval()`` makes dropout the identity and batch norm use its running
  averages, in place; ``model.train()`` switches back.
* ``nnx.view(model, deterministic=True, use_running_average=True,
  raise_if_not_found=False)`` returns an eval-mode view sharing the model's variables
  and leaves the model itself in its current mode.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import itertools
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from lab import modality, validate

# --------------------------------------------------------------------- validation


def _dropout_rate(value) -> float:
    return validate.number("dropout", value, minimum=0, maximum=1, exclusive_maximum=True)


def _modality_of(model: Classifier, input_shape) -> str:
    """One example's modality, if ``model`` takes that modality."""
    validate.integers("input_shape", input_shape, minimum=1)
    kind = modality.of_shape(input_shape)
    if kind is None or kind.name not in model.modalities:
        takes = modality.shapes(model.modalities)
        raise ValueError(f"{type(model).__name__} takes {takes}, got input_shape={tuple(input_shape)!r}")
    return kind.name


def _split_shape(model: Classifier, input_shape) -> tuple[str, list[int], int]:
    """One example's modality, spatial axes and channels, if ``model`` takes that modality."""
    kind = _modality_of(model, input_shape)
    *spatial, channels = input_shape
    return kind, spatial, channels


# ------------------------------------------------- parameter-free layers (plain functions)


def flatten(x: jax.Array) -> jax.Array:
    """(N, ...) -> (N, prod(...))."""
    return x.reshape(x.shape[0], -1)


@jax.custom_vjp
def halve_spatial(x: jax.Array) -> jax.Array:
    """2x max pooling over every spatial axis of a channels-last batch (an odd last row
    or column is dropped), with the values and gradients of ``nnx.max_pool``.

    Computed as a max over the window axes of a reshape. ``nnx.max_pool``'s gradient
    (XLA's select-and-scatter) was the slowest part of the CNN's training step on CPU
    (about a third of it on 28x28 images); this one is a few elementwise operations.
    """
    return _pool_windows(x).max(axis=_window_axes(x))


def _pool_windows(x: jax.Array) -> jax.Array:
    """(N, *spatial, C) -> (N, s1 // 2, 2, s2 // 2, 2, ..., C), odd remainders cropped."""
    n, *spatial, channels = x.shape
    x = x[(slice(None), *(slice(0, size // 2 * 2) for size in spatial))]
    return x.reshape(n, *(d for size in spatial for d in (size // 2, 2)), channels)


def _window_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(2, 2 * (x.ndim - 2) + 1, 2))


def _halve_spatial_forward(x):
    return halve_spatial(x), x


def _halve_spatial_backward(x, grad):
    # Like select-and-scatter, the whole gradient of a window goes to its first maximum
    # in row-major window order, also when several elements tie (ReLU zeros often do).
    windows = _pool_windows(x)
    axes = _window_axes(x)
    position = sum(  # each element's place in its window, in row-major order
        jax.lax.broadcasted_iota(jnp.int32, windows.shape, axis) * 2 ** (len(axes) - 1 - k) for k, axis in enumerate(axes)
    )
    is_max = windows == jnp.expand_dims(windows.max(axis=axes), axes)
    first = jnp.expand_dims(jnp.where(is_max, position, 2 ** len(axes)).min(axis=axes), axes)
    windows_grad = jnp.where(position == first, jnp.expand_dims(grad, axes), 0).astype(grad.dtype)
    cropped = windows_grad.reshape(x.shape[0], *(2 * size for size in grad.shape[1:-1]), x.shape[-1])
    return (jnp.pad(cropped, [(0, full - part) for full, part in zip(x.shape, cropped.shape)]),)


halve_spatial.defvjp(_halve_spatial_forward, _halve_spatial_backward)


def conv_by_matmul(lhs, rhs, window_strides, padding, *, lhs_dilation=None, rhs_dilation=None,
                   dimension_numbers=None, feature_group_count=1, precision=None, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` for channels-last inputs, as one matrix product.

    The input is padded, its shifted (strided) windows are concatenated along the
    channels (im2col), and the result is multiplied by the flattened kernel. XLA:CPU
    compiles the weight gradient of a plain convolution inside a ``lax.scan`` loop,
    where ``lab.fit`` runs every step, to a slow generic loop: this form trains the
    CNN there about 10x faster, and is no slower elsewhere. Dilated, grouped or
    other-layout convolutions go to ``lax.conv_general_dilated`` unchanged.
    """
    spatial = lhs.ndim - 2
    channels_last = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _CHANNELS_LAST[spatial])
    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if dilated or feature_group_count != 1 or dimension_numbers != channels_last or any(kwargs.values()):
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision, **kwargs,
        )
    window = rhs.shape[:spatial]
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:-1], window, window_strides, padding)
    padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    out_shape = [(padded.shape[1 + axis] - window[axis]) // window_strides[axis] + 1 for axis in range(spatial)]
    # Offset-major, then channel: the order of rhs.reshape(-1, out_channels) over (*window, in_channels).
    columns = [
        padded[(slice(None), *(slice(o, o + (n - 1) * s + 1, s) for o, n, s in zip(offset, out_shape, window_strides)))]
        for offset in itertools.product(*(range(size) for size in window))
    ]
    return jnp.dot(jnp.concatenate(columns, axis=-1), rhs.reshape(-1, rhs.shape[-1]), precision=precision)


_CHANNELS_LAST = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}


# ------------------------------------------------------------ convolution by platform

# The implementations `conv_by_platform` chooses from, by name.
CONVOLUTIONS: dict[str, Callable[..., jax.Array]] = {
    "matmul": conv_by_matmul,
    "xla": jax.lax.conv_general_dilated,
}
_forced_convolution: contextvars.ContextVar[str | None] = contextvars.ContextVar("forced_convolution", default=None)


@contextlib.contextmanager
def convolution(name: str):
    """Within the block, every convolution traced uses ``CONVOLUTIONS[name]`` whatever the
    platform. It acts when a function is traced: a jitted function already traced keeps
    the implementation it was traced with."""
    token = _forced_convolution.set(validate.choice("convolution", name, CONVOLUTIONS))
    try:
        yield
    finally:
        _forced_convolution.reset(token)


def conv_by_platform(lhs, rhs, window_strides, padding, **kwargs) -> jax.Array:
    """``lax.conv_general_dilated`` in the form that runs best where it runs:
    :func:`conv_by_matmul` on CPU, XLA's own convolution (cuDNN on GPU) on GPU and TPU.

    The choice is made for the platform the computation is lowered for
    (``lax.platform_dependent``), not the machine's default backend, so a function
    placed on the CPU of a GPU host gets the CPU form; only the chosen form is compiled.
    :func:`convolution` forces one form (tests compare them).
    """
    forced = _forced_convolution.get()
    if forced is not None:
        return CONVOLUTIONS[forced](lhs, rhs, window_strides, padding, **kwargs)

    def form(name):
        return lambda lhs, rhs: CONVOLUTIONS[name](lhs, rhs, window_strides, padding, **kwargs)

    return jax.lax.platform_dependent(lhs, rhs, cpu=form("matmul"), default=form("xla"))


def _spatial_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim - 1))


def global_max_pool(x: jax.Array) -> jax.Array:
    """(N, *spatial, C) -> (N, C)."""
    return x.max(axis=_spatial_axes(x))


def global_average_pool(x: jax.Array) -> jax.Array:
    """(N, *spatial, C) -> (N, C)."""
    return x.mean(axis=_spatial_axes(x))


# -------------------------------------------------------------------- classifiers


class Classifier(nnx.Module):
    """A `backbone` producing `feature_dim` features and a linear `head` on top.

    ``modalities`` names the kinds of input (:mod:`lab.modality`) the model takes, in the
    order its messages list them. The backbone of a text classifier also has
    ``token_features(x)``: ``(N, L, feature_dim)`` features of every position, which
    masked-language-model pretraining (:mod:`lab.transfer`) predicts tokens from.
    """

    modalities: ClassVar[tuple[str, ...]]

    def __init__(self, backbone: nnx.Module, feature_dim: int, num_classes: int, *, rngs: nnx.Rngs):
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.head = nnx.Linear(feature_dim, validate.integer("num_classes", num_classes, minimum=1), rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        return self.backbone(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


class LogisticRegression(Classifier):
    """A linear classifier on the flattened input."""

    modalities = ("image", "signal")  # any shape is flattened

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, rngs: nnx.Rngs):
        in_features = math.prod(validate.integers("input_shape", input_shape, minimum=1))
        super().__init__(nnx.Sequential(flatten), in_features, num_classes, rngs=rngs)


def _dense_relu_dropout(in_features: int, out_features: int, dropout: float, rngs: nnx.Rngs) -> list:
    return [nnx.Linear(in_features, out_features, rngs=rngs), nnx.relu, nnx.Dropout(dropout, rngs=rngs)]


class MLP(Classifier):
    """Dense-ReLU-dropout layers on the flattened input; the last one gives the features."""

    modalities = ("image", "signal")  # any shape is flattened

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
    ):
        in_features = math.prod(validate.integers("input_shape", input_shape, minimum=1))
        hidden = validate.integers("hidden", hidden, minimum=1)
        dropout = _dropout_rate(dropout)
        layers = [flatten]
        for width in hidden:
            layers += _dense_relu_dropout(in_features, width, dropout, rngs)
            in_features = width
        super().__init__(nnx.Sequential(*layers), hidden[-1], num_classes, rngs=rngs)


class CNN(Classifier):
    """Conv-ReLU-maxpool stages, global max pooling, then a dense ReLU layer of features.

    Convolutions are 1-D with kernel 5 on (L, C) signals and 2-D with kernel 3x3 on
    (H, W, C) images, 'SAME' padded. A stage halves the spatial size only while every
    spatial axis is at least 2 long, so any number of stages fits small inputs.

    Global max pooling makes the features invariant to where a pattern occurs. On
    MNIST-1D, whose digits are randomly shifted, it lifts test accuracy of the default
    network from about 90% (flattening) to about 96%, and on 8x8 digits it is as good
    as flattening (99%).
    """

    modalities = ("signal", "image")
    kernel_sizes: ClassVar[dict[str, tuple[int, ...]]] = {"signal": (5,), "image": (3, 3)}

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        dropout: float = 0.0,
    ):
        kind, spatial, in_channels = _split_shape(self, input_shape)
        channels = validate.integers("channels", channels, minimum=1)
        hidden = validate.integer("hidden", hidden, minimum=1)
        dropout = _dropout_rate(dropout)
        kernel_size = self.kernel_sizes[kind]
        layers = []
        for width in channels:
            layers += [
                nnx.Conv(in_channels, width, kernel_size, padding="SAME", conv_general_dilated=conv_by_platform, rngs=rngs),
                nnx.relu,
            ]
            if min(spatial) >= 2:
                layers.append(halve_spatial)
                spatial = [size // 2 for size in spatial]
            in_channels = width
        layers.append(global_max_pool)
        layers += _dense_relu_dropout(in_channels, hidden, dropout, rngs)
        super().__init__(nnx.Sequential(*layers), hidden, num_classes, rngs=rngs)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, ndim: int, rngs: nnx.Rngs) -> list:
    # The batch norm's bias makes a conv bias redundant. Momentum 0.9 (Flax defaults to
    # 0.99) lets the running averages settle within the few hundred steps that
    # small-data runs take, so eval-mode accuracy is not hurt by stale statistics.
    conv = nnx.Conv(
        in_channels, out_channels, (kernel,) * ndim, strides=stride, padding="SAME", use_bias=False,
        conv_general_dilated=conv_by_platform, rngs=rngs,
    )
    return [conv, nnx.BatchNorm(out_channels, momentum=0.9, rngs=rngs)]


class BasicBlock(nnx.Module):
    """relu(x' + F(x)), F = conv-BN-ReLU-conv-BN (He et al., 2016); x' projects x by a
    strided 1x1 conv-BN when F changes the shape, and is x itself otherwise."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, ndim: int, *, rngs: nnx.Rngs):
        self.residual = nnx.Sequential(
            *_conv_bn(in_channels, out_channels, 3, stride, ndim, rngs),
            nnx.relu,
            *_conv_bn(out_channels, out_channels, 3, 1, ndim, rngs),
        )
        reshapes = stride != 1 or in_channels != out_channels
        projection = _conv_bn(in_channels, out_channels, 1, stride, ndim, rngs) if reshapes else []
        self.shortcut = nnx.Sequential(*projection)  # empty: the identity

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.relu(self.shortcut(x) + self.residual(x))


class ResNet(Classifier):
    """A residual network: conv-BN-ReLU stem, one stage of basic blocks per width with
    stride 2 entering every stage after the first, and global average pooling.

    1-D convolutions on (L, C) signals, 2-D on (H, W, C) images, kernel 3 throughout.
    """

    modalities = ("signal", "image")

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        widths: Sequence[int] = (16, 32, 64),
        blocks_per_stage: int = 1,
    ):
        _, spatial, in_channels = _split_shape(self, input_shape)
        widths = validate.integers("widths", widths, minimum=1)
        blocks_per_stage = validate.integer("blocks_per_stage", blocks_per_stage, minimum=1)
        ndim = len(spatial)
        layers = [*_conv_bn(in_channels, widths[0], 3, 1, ndim, rngs), nnx.relu]
        in_channels = widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_channels, width, stride, ndim, rngs=rngs))
                in_channels = width
        layers.append(global_average_pool)
        super().__init__(nnx.Sequential(*layers), widths[-1], num_classes, rngs=rngs)


# ------------------------------------------------------------- wide residual network


def _leaky_relu(x: jax.Array) -> jax.Array:
    return nnx.leaky_relu(x, negative_slope=0.1)


def _wrn_conv(in_channels: int, out_channels: int, kernel: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    # He-normal on the fan-out, with a bias, as in FixMatch's and USB's WRN.
    return nnx.Conv(
        in_channels, out_channels, (kernel, kernel), strides=stride, padding="SAME",
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
        conv_general_dilated=conv_by_platform, rngs=rngs,
    )


def _wrn_batch_norm(channels: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # PyTorch's momentum 0.001 (running = 0.999 * running + 0.001 * batch) is Flax's 0.999;
    # epsilon 1e-3 as TensorFlow's default, which FixMatch used.
    return nnx.BatchNorm(channels, momentum=0.999, epsilon=1e-3, rngs=rngs)


class PreActivationBlock(nnx.Module):
    """x' + F(x), F = BN-lrelu-conv3x3(stride)-BN-lrelu-conv3x3 (He et al., 2016b).

    x' is x, or a strided 1x1 conv of it when F changes the shape. With
    ``activate_shortcut`` the shortcut starts from BN-lrelu(x) as F does (FixMatch does
    this in the network's first block only; USB's copy in every block that projects).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, activate_shortcut: bool, *, rngs: nnx.Rngs):
        self.norm = _wrn_batch_norm(in_channels, rngs)
        self.residual = nnx.Sequential(
            _wrn_conv(in_channels, out_channels, 3, stride, rngs),
            _wrn_batch_norm(out_channels, rngs),
            _leaky_relu,
            _wrn_conv(out_channels, out_channels, 3, 1, rngs),
        )
        reshapes = stride != 1 or in_channels != out_channels
        self.shortcut = nnx.Sequential(*([_wrn_conv(in_channels, out_channels, 1, stride, rngs)] if reshapes else []))
        self.activate_shortcut = activate_shortcut

    def __call__(self, x: jax.Array) -> jax.Array:
        activated = _leaky_relu(self.norm(x))
        return self.shortcut(activated if self.activate_shortcut else x) + self.residual(activated)


class WideResNet(Classifier):
    """WRN-depth-widen (Zagoruyko & Komodakis, 2016) as the FixMatch code base builds it:
    a 3x3 conv to 16 channels, three stages of (depth - 4) / 6 pre-activation blocks of
    16, 32 and 64 times ``widen`` channels (strides 1, 2, 2), BN-lrelu, global average
    pooling. Batch norm has PyTorch momentum 0.001, leaky ReLUs slope 0.1.

    WRN-28-2 (the default) is the CIFAR-10 and SVHN network of FixMatch and USB, 1.47 M
    parameters with 10 classes; WRN-28-8 (``widen=8``) the CIFAR-100 one, 23.4 M with
    100 classes. The head keeps lab's default initialisation (LeCun normal, where FixMatch
    draws Glorot normal).
    """

    modalities = ("image",)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, rngs: nnx.Rngs, depth: int = 28, widen: int = 2):
        _, _, in_channels = _split_shape(self, input_shape)
        depth = validate.integer("depth", depth, minimum=10)
        if (depth - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 (10, 16, 22, 28, ...), got {depth}")
        widen = validate.integer("widen", widen, minimum=1)
        layers = [_wrn_conv(in_channels, 16, 3, 1, rngs)]
        in_channels = 16
        for stage, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for block in range((depth - 4) // 6):
                first = block == 0
                stride = 2 if stage > 0 and first else 1
                layers.append(PreActivationBlock(in_channels, width, stride, stage == 0 and first, rngs=rngs))
                in_channels = width
        layers += [_wrn_batch_norm(in_channels, rngs), _leaky_relu, global_average_pool]
        super().__init__(nnx.Sequential(*layers), in_channels, num_classes, rngs=rngs)


# -------------------------------------------------------------------- transformer


def attention_weights(q: jax.Array, k: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(d_k)) over the keys.

    Args:
      q: queries, (..., T_q, d_k).
      k: keys, (..., T_k, d_k).
      mask: optional boolean array broadcastable to (..., T_q, T_k); True where a
        query may attend to a key.

    Returns:
      (..., T_q, T_k) weights; every row is a probability distribution over the keys.
      Masked keys get weight 0. A query whose keys are all masked attends uniformly
      to all of them rather than producing NaNs.
    """
    # Dividing by sqrt(d_k) keeps the logits' variance near 1 whatever the head size,
    # so the softmax does not saturate into one-hot rows with vanishing gradients.
    logits = jnp.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        # The most negative finite number, not -inf: exp underflows to exactly 0 for
        # masked keys, and a fully masked row stays finite (uniform) instead of 0/0.
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    return jax.nn.softmax(logits, axis=-1)


def scaled_dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """softmax(q k^T / sqrt(d_k)) v: each query's output is an average of the values,
    weighted by how well the query matches each key (see `attention_weights`).

    q: (..., T_q, d_k), k: (..., T_k, d_k), v: (..., T_k, d_v) -> (..., T_q, d_v).
    """
    return jnp.einsum("...qk,...kd->...qd", attention_weights(q, k, mask), v)


class MultiHeadSelfAttention(nnx.Module):
    """Self-attention in `heads` independent subspaces of size dim // heads."""

    def __init__(self, dim: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.out = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: (N, T, dim); mask: optional (N, T) boolean, True for the tokens that may be
        attended to (False for padding)."""
        n, tokens, dim = x.shape
        # (N, T, 3 * dim) -> 3 x (N, heads, T, dim // heads): heads become a batch axis.
        qkv = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        if mask is not None:
            mask = mask[:, None, None, :]  # the same keys for every head and query
        attended = scaled_dot_product_attention(q, k, v, mask)
        return self.out(attended.transpose(0, 2, 1, 3).reshape(n, tokens, dim))


class EncoderBlock(nnx.Module):
    """Transformer block. Pre-LN (lab's own models): x + attention(LN(x)), then x + MLP(LN(x)).
    Post-LN (``post_norm=True``, BERT's): LN(x + attention(x)), then LN(x + MLP(x)).

    ``epsilon`` is the LayerNorms' and ``exact_gelu`` chooses the erf GELU of BERT checkpoints
    over the tanh approximation; the parameters are the same either way.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
        *,
        rngs: nnx.Rngs,
        post_norm: bool = False,
        epsilon: float = 1e-6,
        exact_gelu: bool = False,
    ):
        self.post_norm = post_norm
        self.attention_norm = nnx.LayerNorm(dim, epsilon=epsilon, rngs=rngs)
        self.attention = MultiHeadSelfAttention(dim, heads, rngs=rngs)
        self.mlp_norm = nnx.LayerNorm(dim, epsilon=epsilon, rngs=rngs)
        self.mlp = nnx.Sequential(
            nnx.Linear(dim, mlp_dim, rngs=rngs),
            _exact_gelu if exact_gelu else nnx.gelu,
            nnx.Dropout(dropout, rngs=rngs),
            nnx.Linear(mlp_dim, dim, rngs=rngs),
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: (N, T, dim); mask: optional (N, T), True for the tokens that may be attended to."""
        if self.post_norm:
            x = self.attention_norm(x + self.dropout(self.attention(x, mask)))
            return self.mlp_norm(x + self.dropout(self.mlp(x)))
        x = x + self.dropout(self.attention(self.attention_norm(x), mask))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


def _exact_gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


# With little data, a few large patches train best. Test accuracy of the default
# transformer (2000 Adam steps): on 8x8 digits 90% with 1x1 patches (64 tokens), 93%
# with 2x2 (16) and 98% with 4x4 (4); on MNIST-1D 50%, 73%, 82%, 81% and 80% with
# chunks of 1, 2, 4, 5 and 8 samples (40 to 5 tokens).
_MAX_DEFAULT_TOKENS = 8


def _num_patches(spatial_shape: Sequence[int], patch_size: int) -> int:
    return math.prod(spatial_shape) // patch_size ** len(spatial_shape)


def default_patch_size(spatial_shape: Sequence[int]) -> int:
    """The smallest patch size that divides every spatial axis and cuts the input into at
    most 8 patches; the largest common divisor of the axes when none gets that low."""
    common = math.gcd(*spatial_shape)
    divisors = [size for size in range(1, common + 1) if common % size == 0]
    return next((size for size in divisors if _num_patches(spatial_shape, size) <= _MAX_DEFAULT_TOKENS), common)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
    """Cuts a channels-last batch into non-overlapping patches, flattened into tokens:
    (N, L, C) -> (N, L/p, p*C) and (N, H, W, C) -> (N, H/p * W/p, p*p*C)."""
    n, *spatial, channels = x.shape
    grid = [size // patch_size for size in spatial]
    # Split each spatial axis into (grid, patch), then gather grid axes before patch axes.
    x = x.reshape(n, *(d for g in grid for d in (g, patch_size)), channels)
    ndim = len(spatial)
    x = x.transpose(0, *range(1, 2 * ndim, 2), *range(2, 2 * ndim + 1, 2), 2 * ndim + 1)
    return x.reshape(n, math.prod(grid), -1)


class _Encoder(nnx.Module):
    """What the transformers share: learned positions, blocks whose attention can skip masked
    (padding) tokens, and a LayerNorm (after pre-LN blocks in :meth:`encode`; BERT's post-LN
    encoder applies it to the embedded tokens instead). A subclass assigns its input embedding
    ``self.embed`` before calling :meth:`_add_layers` (the order in which parameters are drawn);
    ``block_options`` go to every :class:`EncoderBlock`."""

    def _add_layers(
        self,
        num_tokens: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
        rngs: nnx.Rngs,
        **block_options,
    ) -> None:
        self.position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (num_tokens, dim)))
        self.blocks = nnx.Sequential(
            *(EncoderBlock(dim, heads, mlp_dim, dropout, rngs=rngs, **block_options) for _ in range(depth))
        )
        self.norm = nnx.LayerNorm(dim, epsilon=block_options.get("epsilon", 1e-6), rngs=rngs)

    def encode(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """(N, T, dim) embedded tokens -> (N, T, dim) features. T may be less than the number of
        positions (a shorter sequence takes the first T); ``mask``: optional (N, T), True for the
        tokens that may be attended to."""
        tokens = tokens + self.position[: tokens.shape[1]]
        for block in self.blocks.layers:
            tokens = block(tokens, mask)
        return self.norm(tokens)


class TransformerEncoder(_Encoder):
    """Patches -> linear embedding + learned positions -> pre-LN blocks -> LN -> mean over tokens."""

    def __init__(
        self,
        spatial_shape: Sequence[int],
        in_channels: int,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
        *,
        rngs: nnx.Rngs,
    ):
        self.patch_size = patch_size
        self.embed = nnx.Linear(patch_size ** len(spatial_shape) * in_channels, dim, rngs=rngs)
        self._add_layers(_num_patches(spatial_shape, patch_size), dim, depth, heads, mlp_dim, dropout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.encode(self.embed(patchify(x, self.patch_size))).mean(axis=1)


class Transformer(Classifier):
    """A transformer encoder over patches of the input (ViT-style, mean-pooled).

    2-D inputs are cut into non-overlapping patch_size x patch_size patches and 1-D
    signals into chunks of patch_size samples; patch_size must divide every spatial
    axis and defaults to `default_patch_size`.
    """

    modalities = ("signal", "image")

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        patch_size: int | None = None,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 128,
        dropout: float = 0.0,
    ):
        _, spatial, in_channels = _split_shape(self, input_shape)
        if patch_size is None:
            patch_size = default_patch_size(spatial)
        patch_size = validate.integer("patch_size", patch_size, minimum=1)
        if any(size % patch_size for size in spatial):
            raise ValueError(
                f"patch_size={patch_size} must divide every spatial axis of input_shape={tuple(input_shape)}"
            )
        sizes = _encoder_sizes(dim, depth, heads, mlp_dim, dropout)
        encoder = TransformerEncoder(spatial, in_channels, patch_size, **sizes, rngs=rngs)
        super().__init__(encoder, sizes["dim"], num_classes, rngs=rngs)


class ViTEncoder(_Encoder):
    """Hugging Face's ViT encoder: images in [0, 1] normalised by ``image_mean`` / ``image_std`` (per channel,
    on that scale), patches embedded by a convolution with stride = kernel = patch size (HF's
    ``ViTPatchEmbeddings``), a learned ``[CLS]`` token before them, learned positions, pre-LN blocks with
    the exact GELU, LN; then the features of ``[CLS]`` (``pooling="cls"``, what ``ViTForImageClassification``
    classifies) or ``ViTModel``'s pooler on them (``"pooler"``: dense + tanh). :mod:`lab.checkpoints` loads
    Hugging Face weights into it."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        patch_size: int,
        pooling: str,
        epsilon: float,
        image_mean: tuple[float, ...],
        image_std: tuple[float, ...],
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
        *,
        rngs: nnx.Rngs,
    ):
        *spatial, channels = image_shape
        self.image_shape = tuple(image_shape)
        self.image_mean, self.image_std = image_mean, image_std
        patch = (patch_size,) * len(spatial)
        self.embed = nnx.Conv(channels, dim, patch, strides=patch, padding="VALID", rngs=rngs)
        self.cls = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, dim)))
        num_tokens = _num_patches(spatial, patch_size) + 1
        self._add_layers(num_tokens, dim, depth, heads, mlp_dim, dropout, rngs, epsilon=epsilon, exact_gelu=True)
        self.pooler = nnx.Linear(dim, dim, rngs=rngs) if pooling == "pooler" else None

    def token_features(self, x: jax.Array) -> jax.Array:
        """(N, H, W, C) images in [0, 1] -> (N, 1 + patches, dim): ViT's last hidden states, [CLS] first."""
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"this ViT reads images of shape {self.image_shape}, got {tuple(x.shape[1:])}; resize them "
                "(a checkpoint's preprocessor does) or build the model for that shape"
            )
        pixels = (x - jnp.asarray(self.image_mean, x.dtype)) / jnp.asarray(self.image_std, x.dtype)
        patches = self.embed(pixels)
        patches = patches.reshape(len(x), -1, patches.shape[-1])  # the grid's rows one after another, as HF's
        cls = jnp.broadcast_to(self.cls[...], (len(x), 1, patches.shape[-1])).astype(patches.dtype)
        return self.encode(jnp.concatenate([cls, patches], axis=1))

    def __call__(self, x: jax.Array) -> jax.Array:
        cls = self.token_features(x)[:, 0]
        return jnp.tanh(self.pooler(cls)) if self.pooler is not None else cls


# How a ViT turns its last hidden states into one vector.
VIT_POOLINGS = ("cls", "pooler")


def per_channel(name: str, value, channels: int) -> tuple[float, ...]:
    """``value``, one number or one per channel, as one float per channel."""
    values = (value,) * channels if isinstance(value, int | float) else tuple(value)
    if len(values) != channels:
        raise ValueError(f"{name}={value!r} must have one value per channel ({channels}) or be one number")
    return tuple(validate.number(name, v) for v in values)


class ViT(Classifier):
    """A Vision Transformer as Hugging Face's ``ViTModel`` builds it (:class:`ViTEncoder`) and a linear head:
    the shape of the checkpoints :mod:`lab.checkpoints` reads, whose config and ``preprocessor_config.json``
    set these hyperparameters (the defaults are ``google/vit-base-patch16-224``'s, images as given).
    Built by name it starts from random weights. It shares its layers with the image :class:`Transformer`;
    unlike it, it reads images of one size only (no interpolation of the positions)."""

    modalities = ("image",)

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        rngs: nnx.Rngs,
        patch_size: int = 16,
        dim: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_dim: int = 3072,
        dropout: float = 0.0,
        epsilon: float = 1e-12,
        image_mean: float | Sequence[float] = 0.5,
        image_std: float | Sequence[float] = 0.5,
        pooling: str = "cls",
    ):
        _, spatial, channels = _split_shape(self, input_shape)
        patch_size = validate.integer("patch_size", patch_size, minimum=1)
        if any(size % patch_size for size in spatial):
            raise ValueError(
                f"patch_size={patch_size} must divide every spatial axis of input_shape={tuple(input_shape)}"
            )
        std = per_channel("image_std", image_std, channels)
        if min(std) <= 0:
            raise ValueError(f"image_std={image_std!r} must be positive")
        sizes = _encoder_sizes(dim, depth, heads, mlp_dim, dropout)
        encoder = ViTEncoder(
            tuple(input_shape),
            patch_size,
            validate.choice("pooling", pooling, VIT_POOLINGS),
            validate.number("epsilon", epsilon, minimum=0, exclusive_minimum=True),
            per_channel("image_mean", image_mean, channels),
            std,
            **sizes,
            rngs=rngs,
        )
        super().__init__(encoder, sizes["dim"], num_classes, rngs=rngs)


def _encoder_sizes(dim, depth, heads, mlp_dim, dropout) -> dict[str, int | float]:
    """The checked sizes of an `_Encoder`, shared by the image and the text transformer."""
    dim = validate.integer("dim", dim, minimum=1)
    heads = validate.integer("heads", heads, minimum=1)
    if dim % heads:
        raise ValueError(f"heads={heads} must divide dim={dim}")
    return {
        "dim": dim,
        "depth": validate.integer("depth", depth, minimum=1),
        "heads": heads,
        "mlp_dim": validate.integer("mlp_dim", mlp_dim, minimum=1),
        "dropout": _dropout_rate(dropout),
    }


# --------------------------------------------------------------------------- text

# Token ids below this are special (lab.modality.SPECIAL_TOKENS: [PAD], [CLS], [MASK], [UNK]);
# the ordinary tokens come after them.
NUM_SPECIAL_TOKENS = len(modality.SPECIAL_TOKENS)


def padding_mask(x: jax.Array) -> jax.Array:
    """(N, L) token ids -> (N, L) booleans, True for the tokens of the text and False for padding."""
    return x != modality.PAD_ID


def masked_mean(features: jax.Array, mask: jax.Array) -> jax.Array:
    """(N, L, D) features, (N, L) mask -> (N, D): the mean over the positions where mask is True
    (0 for a row with none, rather than 0/0)."""
    weights = mask.astype(features.dtype)[..., None]
    return (features * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)


def _first_token(features: jax.Array, mask: jax.Array) -> jax.Array:
    return features[:, 0]


# How a text transformer turns the features of every position into one vector.
POOLINGS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cls": _first_token,  # the features of [CLS], which every text opens with
    "mean": masked_mean,  # the mean over the text's tokens, padding left out
}


def _vocab_size(value) -> int:
    # At least one ordinary token besides the specials.
    return validate.integer("vocab_size", value, minimum=NUM_SPECIAL_TOKENS + 1)


class BagEncoder(nnx.Module):
    """Token ids -> the mean embedding of the text's tokens (fastText's text vector); padding is left out."""

    def __init__(self, vocab_size: int, dim: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab_size, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return masked_mean(self.embed(x), padding_mask(x))

    def token_features(self, x: jax.Array) -> jax.Array:
        """(N, L) -> (N, L, dim): for each position, the mean embedding of the text's *other* tokens
        (word2vec's CBOW with the whole text as the window). A bag has no view of one position in
        its context but this one, and masked-token prediction from it trains the embeddings."""
        mask = padding_mask(x)[..., None].astype(jnp.float32)
        embedded = self.embed(x) * mask
        others = embedded.sum(axis=1, keepdims=True) - embedded
        return others / jnp.maximum(mask.sum(axis=1, keepdims=True) - mask, 1)


class Bag(Classifier):
    """A bag of token embeddings: the mean embedding of the text's tokens, then the linear
    head (fastText, Joulin et al., 2017). Word order and padding do not change the output."""

    modalities = ("text",)

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, *, vocab_size: int, rngs: nnx.Rngs, dim: int = 64):
        _modality_of(self, input_shape)
        dim = validate.integer("dim", dim, minimum=1)
        super().__init__(BagEncoder(_vocab_size(vocab_size), dim, rngs=rngs), dim, num_classes, rngs=rngs)


class TextEncoder(_Encoder):
    """Token ids -> embeddings + learned positions -> pre-LN blocks that attend only to the
    text's tokens -> LN; :data:`POOLINGS` ``pooling`` makes one vector of them."""

    def __init__(
        self,
        vocab_size: int,
        max_length: int,
        pooling: str,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
        *,
        rngs: nnx.Rngs,
    ):
        self.embed = nnx.Embed(vocab_size, dim, rngs=rngs)
        self._add_layers(max_length, dim, depth, heads, mlp_dim, dropout, rngs)
        self.pooling = pooling

    def token_features(self, x: jax.Array) -> jax.Array:
        """(N, L) token ids, L up to the maximum length -> (N, L, dim) features of every position."""
        return self.encode(self.embed(x), padding_mask(x))

    def __call__(self, x: jax.Array) -> jax.Array:
        return POOLINGS[self.pooling](self.token_features(x), padding_mask(x))


class TextTransformer(Classifier):
    """A small BERT: a pre-LN transformer encoder over token ids whose attention skips padding,
    pooled by the features of [CLS] (``pooling="cls"``) or the mean over the text's tokens
    (``"mean"``). It shares its layers with the image :class:`Transformer`.

    Sequences up to ``input_shape[0]`` tokens long are taken (positions are learned for
    that many); padding changes nothing, so a text padded to any length classifies the same.
    """

    modalities = ("text",)

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        vocab_size: int,
        rngs: nnx.Rngs,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 256,
        dropout: float = 0.0,
        pooling: str = "mean",
    ):
        _modality_of(self, input_shape)
        (max_length,) = input_shape
        pooling = validate.choice("pooling", pooling, POOLINGS)
        sizes = _encoder_sizes(dim, depth, heads, mlp_dim, dropout)
        encoder = TextEncoder(_vocab_size(vocab_size), max_length, pooling, **sizes, rngs=rngs)
        super().__init__(encoder, sizes["dim"], num_classes, rngs=rngs)


class BertEncoder(_Encoder):
    """BERT's encoder as Hugging Face builds it: token + learned position + token-type embeddings,
    LayerNorm, post-LN blocks with the exact GELU whose attention skips padding; then
    :data:`POOLINGS` ``pooling``, L2-normalised when ``normalize`` (sentence-transformers' embeddings).
    Every text is one segment, token type 0. :mod:`lab.checkpoints` loads Hugging Face weights into it."""

    def __init__(
        self,
        vocab_size: int,
        max_positions: int,
        type_vocab_size: int,
        pooling: str,
        normalize: bool,
        epsilon: float,
        dim: int,
        depth: int,
        heads: int,
        mlp_dim: int,
        dropout: float,
        *,
        rngs: nnx.Rngs,
    ):
        self.embed = nnx.Embed(vocab_size, dim, rngs=rngs)
        self.token_type = nnx.Param(0.02 * jax.random.normal(rngs.params(), (type_vocab_size, dim)))
        self._add_layers(
            max_positions, dim, depth, heads, mlp_dim, dropout, rngs, post_norm=True, epsilon=epsilon, exact_gelu=True
        )
        self.embed_dropout = nnx.Dropout(dropout, rngs=rngs)
        self.pooling = pooling
        self.normalize = normalize

    def token_features(self, x: jax.Array) -> jax.Array:
        """(N, L) token ids -> (N, L, dim): BERT's last hidden states."""
        mask = padding_mask(x)
        tokens = self.embed(x) + self.position[: x.shape[1]] + self.token_type[0]
        tokens = self.embed_dropout(self.norm(tokens))
        for block in self.blocks.layers:
            tokens = block(tokens, mask)
        return tokens

    def __call__(self, x: jax.Array) -> jax.Array:
        pooled = POOLINGS[self.pooling](self.token_features(x), padding_mask(x))
        if not self.normalize:
            return pooled
        # As torch.nn.functional.normalize: the norm is kept away from 0.
        return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


class Bert(Classifier):
    """A BERT-family encoder (:class:`BertEncoder`) and a linear head: the shape of the Hugging Face
    checkpoints :mod:`lab.checkpoints` reads, whose config sets these hyperparameters (the defaults
    are all-MiniLM-L6-v2's). Built by name it starts from random weights. Texts of up to
    ``input_shape[0]`` tokens, at most ``max_positions``; padding (id 0, BERT's ``[PAD]``) changes nothing.
    """

    modalities = ("text",)

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_classes: int,
        *,
        vocab_size: int,
        rngs: nnx.Rngs,
        dim: int = 384,
        depth: int = 6,
        heads: int = 12,
        mlp_dim: int = 1536,
        dropout: float = 0.1,
        max_positions: int = 512,
        type_vocab_size: int = 2,
        epsilon: float = 1e-12,
        pooling: str = "mean",
        normalize: bool = False,
    ):
        _modality_of(self, input_shape)
        (length,) = input_shape
        max_positions = validate.integer("max_positions", max_positions, minimum=1)
        if length > max_positions:
            raise ValueError(
                f"texts of {length} tokens are longer than max_positions={max_positions}; cut them shorter"
            )
        sizes = _encoder_sizes(dim, depth, heads, mlp_dim, dropout)
        encoder = BertEncoder(
            _vocab_size(vocab_size),
            max_positions,
            validate.integer("type_vocab_size", type_vocab_size, minimum=1),
            validate.choice("pooling", pooling, POOLINGS),
            bool(normalize),
            validate.number("epsilon", epsilon, minimum=0, exclusive_minimum=True),
            **sizes,
            rngs=rngs,
        )
        super().__init__(encoder, sizes["dim"], num_classes, rngs=rngs)


# ----------------------------------------------------------------------- registry

MODELS: dict[str, type[Classifier]] = {
    "logreg": LogisticRegression,
    "mlp": MLP,
    "cnn": CNN,
    "resnet": ResNet,
    "transformer": Transformer,
    "wrn": WideResNet,
    "bag": Bag,
    "text_transformer": TextTransformer,
    "bert": Bert,
    "vit": ViT,
}


def check_takes(name: str, kind: str) -> None:
    """Refuse model ``name`` for inputs of modality ``kind``, naming the models that take them."""
    if kind not in MODELS[name].modalities:
        takers = [other for other, cls in MODELS.items() if kind in cls.modalities]
        raise ValueError(f"model {name!r} does not take {kind} inputs; choose one of: {', '.join(takers)}")


def _keyword_parameters(name: str) -> list[inspect.Parameter]:
    # The names as a Python list: tests match that older wording.
    validate.choice("model", name, sorted(MODELS), wording=f"choose one of {sorted(MODELS)}")
    signature = inspect.signature(MODELS[name].__init__)
    return [
        parameter
        for parameter in signature.parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name != "rngs"
    ]


def default_hyperparameters(name: str) -> dict[str, object]:
    """The hyperparameters model `name` accepts, with their defaults."""
    return {
        parameter.name: parameter.default
        for parameter in _keyword_parameters(name)
        if parameter.default is not inspect.Parameter.empty
    }


def data_inputs(name: str) -> tuple[str, ...]:
    """What the data fixes in model `name` besides the input shape (``vocab_size`` for text models):
    its keyword arguments without a default, given by :attr:`lab.data.Dataset.model_inputs`."""
    return tuple(
        parameter.name for parameter in _keyword_parameters(name) if parameter.default is inspect.Parameter.empty
    )


def make_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, *, seed: int, **hyperparameters
) -> Classifier:
    """Builds model `name` (a key of `MODELS`) with parameters drawn from `seed`.

    The same seed gives the same parameters and the same dropout masks. The model is
    in training mode; see the module docstring. ``hyperparameters`` also carry what the
    data fixes (:func:`data_inputs`, e.g. ``vocab_size``).
    """
    accepted = default_hyperparameters(name)
    kind = modality.of_shape(input_shape)
    if kind is not None:
        check_takes(name, kind.name)
    required = data_inputs(name)
    unknown = sorted(set(hyperparameters) - set(accepted) - set(required))
    if unknown:
        raise TypeError(f"unknown hyperparameter(s) {unknown} for model {name!r}; it accepts {sorted(accepted)}")
    missing = [input_name for input_name in required if input_name not in hyperparameters]
    if missing:
        raise TypeError(
            f"model {name!r} needs {', '.join(missing)}, which the data fixes (lab.data.Dataset.model_inputs)"
        )
    # Explicit keys (the values nnx.Rngs would make from the ints) so that `seed` may be traced,
    # e.g. to initialise several seeds at once under jax.vmap.
    rngs = nnx.Rngs(params=jax.random.key(seed), dropout=jax.random.key(seed + 1))
    return MODELS[name](input_shape, num_classes, rngs=rngs, **hyperparameters)
