"""Optimizers and learning-rate schedules, assembled from optax pieces.

`make_optimizer` returns one ``optax.chain`` that transforms a gradient in this order:

1. parameters in a ``"frozen"`` group: gradient set to zero (``param_groups``);
2. ``optax.clip_by_global_norm(clip_norm)``;
3. ``weight_decay_mode="l2"``: add ``weight_decay * param`` (coupled L2 regularisation,
   so momentum and Adam's normalisation act on the decay too);
4. the optimizer's direction: the gradient itself (sgd), a momentum trace
   (momentum, nesterov) or Adam's bias-corrected moment ratio (adam, adamw);
5. ``weight_decay_mode="decoupled"``: add ``weight_decay * param`` (AdamW);
6. multiply by ``-learning_rate(step)`` from `make_schedule`;
7. ``param_groups``: multiply by the group's learning-rate multiplier; frozen
   parameters get an update of exactly zero.

Weight decay applies only to parameters with more than one axis (dense and conv
kernels, embeddings), never to biases or normalisation scales and offsets.

Decoupled decay is scaled by the learning rate, as in ``optax.adamw`` and
``torch.optim.AdamW``: the step is ``-lr * (direction + weight_decay * param)``. For
plain SGD the direction is the gradient, so the two modes give the same step; they
differ as soon as momentum or Adam reshape the gradient, because only L2 decay is
reshaped with it.

Parameter groups are keyed by parameter paths: the keys leading to a leaf, joined by
``"/"``. For the ``nnx.State`` of a ``lab.models`` classifier they look like
``backbone/layers/1/kernel`` or ``head/bias``; for nested dicts they are the dict
keys. ``param_groups`` maps glob patterns (``fnmatch``, where ``*`` also crosses
``/``) to a learning-rate multiplier or ``"frozen"``, and the first matching pattern
wins: ``{"backbone/*": "frozen"}`` is a linear probe, ``{"backbone/*": 0.1}``
fine-tunes the backbone at a tenth of the head's learning rate.
"""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lab import validate

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "fixmatch_cosine", "step")
WEIGHT_DECAY_MODES = ("decoupled", "l2")
FROZEN = "frozen"

# --------------------------------------------------------------------- validation


def _positive(name: str, value) -> float:
    # inf passes a `> 0` check, and an infinite rate or decay turns the first step's loss NaN.
    validate.number(name, value)
    return validate.number(name, value, minimum=0, exclusive_minimum=True, wording="a number > 0")


def _non_negative(name: str, value) -> float:
    validate.number(name, value)
    return validate.number(name, value, minimum=0, wording="a number >= 0")


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    # optim's messages list the names as a Python list (tests match that older wording).
    return validate.choice(name, value, choices, wording=f"choose one of {list(choices)}")

# ---------------------------------------------------------------------- schedules


def make_schedule(
    learning_rate: float,
    *,
    schedule: str = "constant",
    total_steps: int | None = None,
    warmup_steps: int = 0,
    decay_every: int | None = None,
    decay_factor: float = 0.1,
) -> optax.Schedule:
    """The learning rate as a function of the step count.

    The first `warmup_steps` steps ramp the rate linearly from 0 up to
    `learning_rate`; then the schedule proper starts from `learning_rate`:

    * ``"constant"``: stays there;
    * ``"cosine"``: follows half a cosine down to 0 at step `total_steps` (warmup
      included, as in ``optax.warmup_cosine_decay_schedule``);
    * ``"fixmatch_cosine"``: FixMatch's (and USB's) ``learning_rate * cos(7πk / 16K)``
      at step ``k`` of ``K = total_steps`` (less warmup), which ends at
      ``cos(7π/16) ≈ 0.195`` of the rate instead of 0, and stays there after ``K``;
    * ``"step"``: is multiplied by `decay_factor` every `decay_every` steps.
    """
    learning_rate = _positive("learning_rate", learning_rate)
    _choice("schedule", schedule, SCHEDULES)
    warmup_steps = validate.integer("warmup_steps", warmup_steps, minimum=0)
    if total_steps is not None:
        total_steps = validate.integer("total_steps", total_steps, minimum=1, wording="an integer >= 1")

    if schedule == "constant":
        after_warmup = optax.constant_schedule(learning_rate)
    elif schedule in ("cosine", "fixmatch_cosine"):
        if total_steps is None:
            raise ValueError(f"schedule={schedule!r} needs total_steps, the step at which the decay ends")
        if warmup_steps >= total_steps:
            raise ValueError(f"warmup_steps={warmup_steps} must be smaller than total_steps={total_steps}")
        decay = optax.cosine_decay_schedule if schedule == "cosine" else _fixmatch_cosine
        after_warmup = decay(learning_rate, decay_steps=total_steps - warmup_steps)
    else:
        if decay_every is None:
            raise ValueError("schedule='step' needs decay_every, the number of steps between decays")
        decay_every = validate.integer("decay_every", decay_every, minimum=1, wording="an integer >= 1")
        validate.number("decay_factor", decay_factor, minimum=0, maximum=1, exclusive_minimum=True)
        after_warmup = optax.exponential_decay(
            learning_rate, transition_steps=decay_every, decay_rate=decay_factor, staircase=True
        )

    if warmup_steps == 0:
        return after_warmup
    # Small first steps: early gradients of a freshly initialised network are large
    # and erratic, and Adam's second-moment estimate is still based on few samples.
    warmup = optax.linear_schedule(0.0, learning_rate, transition_steps=warmup_steps)
    return optax.join_schedules([warmup, after_warmup], boundaries=[warmup_steps])


def _fixmatch_cosine(learning_rate: float, decay_steps: int) -> optax.Schedule:
    """``learning_rate * cos(7π/16 * min(k, K) / K)``: USB's ``get_cosine_schedule_with_warmup``
    with ``num_cycles=7/16``, the schedule of the FixMatch paper."""

    def schedule(count):
        progress = jnp.minimum(count, decay_steps) / decay_steps
        return learning_rate * jnp.cos(7.0 * jnp.pi / 16.0 * progress)

    return schedule


# ---------------------------------------------------------------- parameter groups


def parameter_path(key_path) -> str:
    """The "/"-joined keys of a `jax.tree_util` key path, e.g. "backbone/layers/1/kernel"."""
    return jax.tree_util.keystr(key_path, simple=True, separator="/")


def _is_variable(node) -> bool:
    # Stopping at nnx Variables keeps their internal ".value" key out of the path, so
    # an nnx.State of Variables and its plain-array version get the same paths.
    return isinstance(node, nnx.Variable)


def _checked_param_groups(param_groups: Mapping[str, float | str]) -> dict[str, float | str]:
    checked = {}
    for pattern, setting in param_groups.items():
        if not isinstance(pattern, str):
            raise ValueError(f"param_groups keys must be path patterns (str), got {pattern!r}")
        checked[pattern] = setting if setting == FROZEN else validate.number(
            f"param_groups[{pattern!r}]", setting, minimum=0, finite=False,
            wording=f"a learning-rate multiplier >= 0 or {FROZEN!r}",
        )
    return checked


def _group_label(setting: float | str) -> str:
    return FROZEN if setting == FROZEN else f"lr*{setting!r}"


_UNGROUPED = _group_label(1.0)


def param_labels(params, param_groups: Mapping[str, float | str] | None):
    """Labels every leaf of `params` with the group its path falls into.

    Labels are ``"frozen"`` or ``"lr*<multiplier>"`` (``"lr*1.0"`` for paths that no
    pattern matches), from the first pattern in `param_groups` that matches the
    parameter's path. The result has the structure of `params` with nnx Variables
    replaced by their label, so it works as ``param_labels`` of ``optax.multi_transform``.

    Raises:
      ValueError: if a pattern labels no parameter, because it matches no path or
        only paths that earlier patterns already claimed; such a pattern is almost
        always a typo or a mistake in the order of the patterns.
    """
    groups = _checked_param_groups(param_groups or {})
    unused = set(groups)

    def label(key_path, _) -> str:
        path = parameter_path(key_path)
        for pattern, setting in groups.items():
            if fnmatch.fnmatchcase(path, pattern):
                unused.discard(pattern)
                return _group_label(setting)
        return _UNGROUPED

    labels = jax.tree_util.tree_map_with_path(label, params, is_leaf=_is_variable)
    if unused:
        leaves = jax.tree_util.tree_leaves_with_path(params, is_leaf=_is_variable)
        paths = [parameter_path(key_path) for key_path, _ in leaves]
        raise ValueError(
            f"param_groups pattern(s) {sorted(unused)} match no parameter that an earlier pattern has "
            f"not claimed; parameter paths look like {paths[:4]}"
        )
    return labels


def _per_group(param_groups: dict[str, float | str], scale: Callable[[float], optax.GradientTransformation]):
    """Sets frozen groups' updates to zero and applies `scale(multiplier)` to the others."""
    settings = {1.0, *param_groups.values()}  # 1.0 covers the parameters no pattern matches.
    transforms = {_group_label(s): optax.set_to_zero() if s == FROZEN else scale(s) for s in settings}
    return optax.multi_transform(transforms, functools.partial(param_labels, param_groups=param_groups))


# ---------------------------------------------------------------------- optimizer


def _is_kernel(params):
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _direction(name: str, momentum: float) -> optax.GradientTransformation:
    if name == "sgd":
        return optax.identity()
    if name in ("momentum", "nesterov"):
        return optax.trace(decay=momentum, nesterov=name == "nesterov")
    return optax.scale_by_adam()


def make_optimizer(
    name: str = "adam",
    learning_rate: float = 1e-3,
    *,
    schedule: str = "constant",
    total_steps: int | None = None,
    warmup_steps: int = 0,
    decay_every: int | None = None,
    decay_factor: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    weight_decay_mode: str = "decoupled",
    clip_norm: float | None = None,
    param_groups: Mapping[str, float | str] | None = None,
) -> optax.GradientTransformation:
    """An optax optimizer; see the module docstring for what each option does and in
    which order the pieces apply.

    Args:
      name: one of `OPTIMIZERS`. "momentum" and "nesterov" are SGD with (Nesterov)
        momentum `momentum`; "adamw" is "adam" with decoupled weight decay.
      learning_rate, schedule, total_steps, warmup_steps, decay_every, decay_factor:
        passed to `make_schedule`.
      momentum: the momentum coefficient in [0, 1) of "momentum" and "nesterov".
      weight_decay: decay coefficient >= 0 for kernels (parameters with ndim > 1).
      weight_decay_mode: "decoupled" (AdamW-style) or "l2" (coupled).
      clip_norm: if given, gradients are rescaled to global norm at most `clip_norm`.
      param_groups: path pattern -> learning-rate multiplier >= 0 or "frozen". The
        patterns are checked against the parameters when the optimizer is
        initialised (see `param_labels`).
    """
    _choice("optimizer", name, OPTIMIZERS)
    _choice("weight_decay_mode", weight_decay_mode, WEIGHT_DECAY_MODES)
    if name == "adamw" and weight_decay_mode != "decoupled":
        raise ValueError(
            "'adamw' always decouples weight decay; for coupled L2 decay use 'adam' with weight_decay_mode='l2'"
        )
    validate.number("momentum", momentum, minimum=0, maximum=1, exclusive_maximum=True)
    weight_decay = _non_negative("weight_decay", weight_decay)
    if clip_norm is not None:
        clip_norm = _positive("clip_norm", clip_norm)
    schedule_fn = make_schedule(
        learning_rate,
        schedule=schedule,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        decay_every=decay_every,
        decay_factor=decay_factor,
    )
    param_groups = _checked_param_groups(param_groups or {})

    decay = optax.add_decayed_weights(weight_decay, mask=_is_kernel)
    stages = []
    if param_groups:
        # Zero frozen gradients up front so that they count neither towards the
        # clipping norm nor into the optimizer's moments.
        stages.append(_per_group(param_groups, lambda _: optax.identity()))
    if clip_norm is not None:
        stages.append(optax.clip_by_global_norm(clip_norm))
    if weight_decay > 0 and weight_decay_mode == "l2":
        stages.append(decay)
    stages.append(_direction(name, momentum))
    if weight_decay > 0 and weight_decay_mode == "decoupled":
        stages.append(decay)
    stages.append(optax.scale_by_learning_rate(schedule_fn))
    if param_groups:
        # Scaling the finished step makes a multiplier act exactly like a per-group
        # learning rate, and zeroing it again keeps frozen parameters bit-identical:
        # decay and momentum added after the first zeroing never reach them.
        stages.append(_per_group(param_groups, optax.scale))
    return optax.chain(*stages)
