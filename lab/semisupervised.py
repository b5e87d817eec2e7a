"""Semi-supervised learning methods, each a small :class:`lab.train.Objective`.

In the style of USB (``semilearn``), every method plugs into the one training loop
of :mod:`lab.train` and differs from the others only in its *unlabeled term*. What
they share is written once, here:

* :class:`SemiSupervised` draws a labeled batch of ``B`` and an unlabeled batch of
  ``mu * B``, feeds the weak view of the labeled batch and the views of the
  unlabeled batch a method asks for through the model in a single call (as USB does,
  so that batch statistics see them all; a model without batch statistics gets the
  views used only as stop-gradient targets in a second call, which spares their
  backward pass), and minimises::

      loss = CE(labeled, weak view) + unlabeled_weight * ramp_up(step) * unlabeled term

* helpers used by the unlabeled terms: :func:`pseudo_labels`,
  :func:`confidence_mask`, :func:`masked_cross_entropy`,
  :func:`consistency_loss`, :func:`ema_update` and the :func:`ramp_up` schedule.

Methods (:data:`METHODS`, built with :func:`make_method`):

=================  =============================================================
``supervised``     the labeled term alone: the baseline, trained in the same loop
``pseudo_label``   Lee (2013): learn the model's own confident hard predictions
``pi_model``       Laine & Aila (2017): agree on two random weak views
``mean_teacher``   Tarvainen & Valpola (2017): agree with an EMA of the model
``fixmatch``       Sohn et al. (2020): confident weak-view labels teach the strong view
``flexmatch``      Zhang et al. (2021): FixMatch with class-wise flexible thresholds
``freematch``      Wang et al. (2023): FixMatch with self-adaptive thresholds
=================  =============================================================

Each method's hyperparameters are the fields of its class (:func:`hyperparameters_of`),
with defaults chosen for small data and runs of a few thousand steps; every method
also takes ``flip`` (default False) and ``policy`` (the augmentation policy, default
``"default"``):

================  ====  ======  ======  =================================================
method            mu    weight  ramp-up others
================  ====  ======  ======  =================================================
``pseudo_label``  3     1       1000    ``threshold`` 0.95
``pi_model``      3     10      1000
``mean_teacher``  3     10      1000    ``ema_decay`` 0.99
``fixmatch``      7     1       0       ``threshold`` 0.95, ``magnitude`` 0.5
``flexmatch``     7     1       0       ``threshold`` 0.95, ``magnitude`` 0.5, ``ema_decay`` 0.99
``freematch``     7     1       0       ``magnitude`` 0.5, ``ema_decay`` 0.999, ``fairness_weight`` 0.01
================  ====  ======  ======  =================================================

(weight: ``unlabeled_weight``; ramp-up: ``rampup_steps``, sigmoid by default.)

:func:`check_hyperparameters` checks a method's name and hyperparameters without an
input shape, e.g. before a config's data is loaded; :func:`make_method` builds it.

Usage::

    objective = semisupervised.make_method("fixmatch", input_shape=dataset.input_shape, threshold=0.9)
    state = train.create_train_state(params, model_state, tx, seed,
                                     objective_state=objective.init_objective_state(params, model_state))
    pools = {"labeled": {"x": x_l, "y": y_l}, "unlabeled": {"x": x_u, "y": y_u}}
    train.fit(model, state, tx, objective, pools, steps=..., batch_size=...)

The unlabeled pool carries its true labels only so that every step can report how
accurate its pseudo-labels are (``pseudo_label_accuracy``); no loss reads them. Where
a label is unknown (-1, e.g. STL-10's unlabeled split), that example is not scored.

Every method returns these per-step metrics: ``loss``, ``labeled_loss``,
``unlabeled_loss`` (the unweighted unlabeled term), ``unlabeled_weight`` (its weight
this step), ``labeled_accuracy`` (on the weak labeled batch), ``mask_rate`` (fraction
of unlabeled examples the unlabeled term uses) and ``pseudo_label_accuracy``
(accuracy of the pseudo-labels, or of the argmax of the consistency targets, over
the examples in the mask whose label is known). ``pseudo_label_accuracy`` is NaN when no
such example is in the mask, e.g. always for ``supervised``; average it with ``nanmean``.

Methods that keep state across steps (an EMA teacher, adaptive thresholds) keep it
in ``TrainState.objective_state``: pass ``objective.init_objective_state(params,
model_state)`` to ``train.create_train_state``. To train several seeds side by side
(``fit(..., seed_axis=True)``), build each seed's state, objective state included, and stack.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lab import augment, losses, metrics, train, validate
from lab.modality import SpecialIds

__all__ = [
    "METHODS",
    "RAMP_UPS",
    "FixMatch",
    "FlexMatch",
    "FreeMatch",
    "MeanTeacher",
    "Method",
    "PiModel",
    "PseudoLabel",
    "SemiSupervised",
    "Supervised",
    "UnlabeledTerm",
    "WeakToStrong",
    "confidence_mask",
    "consistency_loss",
    "ema_update",
    "check_hyperparameters",
    "hyperparameters_of",
    "make_method",
    "masked_cross_entropy",
    "pseudo_labels",
    "ramp_up",
    "register",
]

PyTree = Any

# ------------------------------------------------------------------ registry

METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a :class:`Method` available to :func:`make_method` as ``name``."""

    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"a method named {name!r} is already registered ({METHODS[name].__qualname__})")
        unchecked = sorted(set(hyperparameters_of(cls)) - set(_CHECKS))
        if unchecked:
            raise ValueError(f"{cls.__qualname__} has hyperparameters without a check in _CHECKS: {unchecked}")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def make_method(
    name: str, *, input_shape: tuple[int, ...], special_ids: SpecialIds | None = None, **hyperparameters: Any
) -> Method:
    """The objective of method ``name`` for examples of ``input_shape``, e.g. ``(8, 8, 1)``; token
    sequences are augmented with the ``special_ids`` of their tokenizer (:attr:`lab.data.Dataset.special_ids`).

    ``hyperparameters`` override the method's defaults; :func:`hyperparameters_of`
    lists them.
    """
    return _method_class(name, hyperparameters)(input_shape=input_shape, special_ids=special_ids, **hyperparameters)


def check_hyperparameters(name: str, **hyperparameters: Any) -> None:
    """Refuse what :func:`make_method` would refuse about ``name`` and ``hyperparameters``,
    without building the method: no input shape is needed (e.g. to validate a config
    before its data is loaded)."""
    _check_values({**hyperparameters_of(_method_class(name, hyperparameters)), **hyperparameters})


def _method_class(name: str, hyperparameters: Mapping[str, Any]) -> type[Method]:
    validate.choice("semi-supervised method", name, tuple(METHODS))
    cls = METHODS[name]
    accepted = hyperparameters_of(cls)
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise ValueError(
            f"{name} has no hyperparameter {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted) or 'none'}"
        )
    return cls


def hyperparameters_of(cls: type[Method]) -> dict[str, Any]:
    """``{name: default}`` of the hyperparameters a method class accepts."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.init and f.metadata.get("hyperparameter", True)}


def _setting(**field_options: Any) -> Any:
    """A field set by the code that builds a method (the input shape, how the labeled
    batch is seen), not a hyperparameter that :func:`make_method` accepts."""
    return dataclasses.field(metadata={"hyperparameter": False}, **field_options)


# ------------------------------------------------------------------ shared mechanics


ema_update = train.ema_update  # the one EMA recursion, shared with the evaluation model


def pseudo_labels(probs: jax.Array) -> jax.Array:
    """Hard pseudo-labels: the most probable class of each row of ``(N, C)`` probabilities."""
    return jnp.argmax(probs, axis=-1)


def confidence_mask(probs: jax.Array, threshold: float | jax.Array) -> jax.Array:
    """1.0 where a row's highest probability reaches ``threshold``, else 0.0.

    ``threshold`` is one number for all classes, or a ``(C,)`` array of class-wise
    thresholds, each applied to the rows whose pseudo-label is that class.
    """
    threshold = jnp.asarray(threshold, probs.dtype)
    if threshold.ndim == 1:
        threshold = threshold[pseudo_labels(probs)]
    elif threshold.ndim != 0:
        raise ValueError(f"threshold must be a scalar or a (C,) array of class thresholds, got shape {threshold.shape}")
    return (jnp.max(probs, axis=-1) >= threshold).astype(probs.dtype)


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Cross-entropy of the rows in ``mask``, averaged over *all* rows, as FixMatch does.

    Dividing by the batch size rather than the mask count makes the term grow with the
    fraction of confident examples instead of staying large when only a few pass.
    """
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels) * mask)


def consistency_loss(logits: jax.Array, target_probs: jax.Array) -> jax.Array:
    """Mean over rows of the squared distance ``||softmax(logits) - target||²``.

    The Π-model's and Mean Teacher's consistency cost: bounded (at most 2), so a
    wrong target cannot produce the large gradients a cross-entropy would. Stop the
    gradient of ``target_probs`` before calling if it comes from the model.
    """
    return jnp.mean(jnp.sum((jax.nn.softmax(logits, axis=-1) - target_probs) ** 2, axis=-1))


RAMP_UPS = ("sigmoid", "linear")


def ramp_up(step: jax.Array | int, rampup_steps: int, schedule: str = "sigmoid") -> jax.Array:
    """Factor in (0, 1] for the unlabeled weight: rising over ``rampup_steps``, then 1.

    With ``t = clip(step / rampup_steps, 0, 1)``: ``"sigmoid"`` is Laine & Aila's
    ``exp(-5 (1 - t)²)`` (0.0067 at the start), ``"linear"`` is ``t``. With
    ``rampup_steps=0`` the factor is always 1.
    """
    validate.choice("ramp-up schedule", schedule, RAMP_UPS)
    if rampup_steps == 0:
        return jnp.ones((), jnp.float32)
    t = jnp.clip(jnp.asarray(step, jnp.float32) / rampup_steps, 0.0, 1.0)
    return jnp.exp(-5.0 * (1.0 - t) ** 2) if schedule == "sigmoid" else t


class UnlabeledTerm(NamedTuple):
    """What a method's unlabeled term returns for one unlabeled batch of M examples."""

    loss: jax.Array  # scalar, before the unlabeled weight
    pseudo_labels: jax.Array  # (M,) int: the class each example is pushed towards
    mask: jax.Array  # (M,) 1.0 for the examples the loss uses, else 0.0


# ------------------------------------------------------------------ argument checks


# What every hyperparameter must be, by name: a name means the same thing in every method.
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "flip": lambda name, value: augment.check_options(flip=value),
    "policy": lambda name, value: augment.check_options(policy=value),
    "magnitude": lambda name, value: augment.check_options(magnitude=value),
    "mu": functools.partial(validate.integer, minimum=1, wording="an integer >= 1"),
    "rampup_steps": functools.partial(validate.integer, minimum=0),
    "rampup": lambda name, value: ramp_up(0, 1, value),  # refuses an unknown schedule
    "unlabeled_weight": functools.partial(validate.number, minimum=0),
    "fairness_weight": functools.partial(validate.number, minimum=0),
    "threshold": functools.partial(validate.number, minimum=0, maximum=1, exclusive_minimum=True),
    "ema_decay": functools.partial(validate.number, minimum=0, maximum=1, exclusive_maximum=True),
}


def _check_values(hyperparameters: Mapping[str, Any]) -> None:
    """Refuse out-of-range values; checks no input shape, so a config can be checked before its data loads."""
    for name, value in hyperparameters.items():
        _CHECKS[name](name, value)


def _num_classes(params: nnx.State) -> int:
    """Number of classes of a :mod:`lab.models` classifier, read off its ``head`` layer."""
    try:
        return int(params["head"]["kernel"].shape[-1])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            "this method keeps class-wise statistics and reads the number of classes from the "
            "parameters of the model's linear 'head' layer (as in lab.models), which were not found"
        ) from error


def _rows_independent(model: nnx.Module) -> bool:
    """Whether ``model`` maps every example on its own, and two calls on parts of a batch
    give what one call on the whole gives: no BatchNorm on batch statistics, no active dropout."""
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm) and not node.use_running_average:
            return False
        if isinstance(node, nnx.Dropout) and node.rate > 0 and not node.deterministic:
            return False
    return True


# ------------------------------------------------------------------ base classes


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method(train.Objective):
    """What every method shares: the weak-augmented labeled cross-entropy and the metrics.

    ``flip``: whether weak (and strong) augmentations may mirror examples; off by
    default, since a mirrored digit is a different symbol or none. ``policy``: the
    :data:`lab.augment.POLICIES` entry the views come from (``"randaugment"`` is
    FixMatch's, for natural images). ``special_ids``: the special tokens of the tokenizer that made
    token sequences, which their augmentations never edit and mask with (lab's own when None).
    """

    name: ClassVar[str]
    input_shape: tuple[int, ...] = _setting()
    special_ids: SpecialIds | None = _setting(default=None)
    flip: bool = False
    policy: str = "default"
    augmentations: dict[str, augment.Augmentation] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        _check_values({name: getattr(self, name) for name in hyperparameters_of(type(self))})
        weak = self.view("weak")  # checks input_shape
        object.__setattr__(self, "input_shape", tuple(int(n) for n in self.input_shape))  # hashable, for jit caches
        object.__setattr__(self, "augmentations", {"weak": weak})

    def view(self, strength: str, **options: Any) -> augment.Augmentation:
        """The :func:`lab.augment.make_augmentation` of ``strength`` for this method's examples and views."""
        return augment.make_augmentation(
            strength, self.input_shape, flip=self.flip, policy=self.policy, special_ids=self.special_ids, **options
        )

    def labeled_term(
        self, logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
    ) -> tuple[jax.Array, jax.Array]:
        """(cross-entropy, accuracy) on the labeled batch."""
        loss = losses.softmax_cross_entropy(logits, labels, label_smoothing=label_smoothing)
        return loss, metrics.batch_accuracy(logits, labels)

    @staticmethod
    def step_metrics(
        labeled_loss: jax.Array,
        labeled_accuracy: jax.Array,
        unlabeled_weight: jax.Array | float = 0.0,
        term: UnlabeledTerm | None = None,
        hidden_labels: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(total loss, the metrics every method reports); no ``term`` for the labeled loss alone.

        ``hidden_labels`` are the unlabeled batch's true labels: they only score the
        pseudo-labels and never enter the loss. An example whose label is unknown (-1, e.g.
        STL-10's unlabeled split) is not scored.
        """
        if term is None:
            unlabeled_loss, mask_rate, pseudo_label_accuracy = jnp.zeros(()), jnp.zeros(()), jnp.full((), jnp.nan)
        else:
            unlabeled_loss, mask_rate = term.loss, jnp.mean(term.mask)
            correct = (term.pseudo_labels == hidden_labels).astype(term.mask.dtype)
            scored = term.mask * (hidden_labels >= 0)
            # 0/0 = NaN when no example is scored: there is no pseudo-label to score.
            pseudo_label_accuracy = jnp.sum(correct * scored) / jnp.sum(scored)
        loss = labeled_loss + unlabeled_weight * unlabeled_loss
        return loss, {
            "loss": loss,
            "labeled_loss": labeled_loss,
            "unlabeled_loss": unlabeled_loss,
            "unlabeled_weight": jnp.asarray(unlabeled_weight, jnp.float32),
            "labeled_accuracy": labeled_accuracy,
            "mask_rate": mask_rate,
            "pseudo_label_accuracy": pseudo_label_accuracy,
        }


@register("supervised")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Supervised(Method):
    """The labeled term alone: the baseline every semi-supervised method must beat.

    It draws only the labeled pool, and the same labeled batches as the other methods
    (``train.draw_batch`` seeds each pool by its place in sorted order, and "labeled"
    comes first). It reports the same metrics: 0 for the unlabeled ones, and NaN for
    ``pseudo_label_accuracy``.

    The one supervised objective of :mod:`lab`: besides this baseline it pretrains
    backbones (:mod:`lab.transfer`) and trains ``lab train``. Two settings, which are
    not method hyperparameters: ``augmentation``, the :mod:`lab.augment` strength the
    labeled batch is seen at (``"weak"`` as the other methods see it, or ``"none"``),
    and ``label_smoothing`` of the cross-entropy.
    """

    augmentation: str = _setting(default="weak")
    label_smoothing: float = _setting(default=0.0)

    def __post_init__(self):
        super().__post_init__()
        if self.augmentation not in self.augmentations:
            self.augmentations[self.augmentation] = self.view(self.augmentation)

    def loss(self, model, batch, key, objective_state, step):
        labeled = batch["labeled"]
        logits = model(self.augmentations[self.augmentation](key, labeled["x"]))
        loss, step_metrics = self.step_metrics(*self.labeled_term(logits, labeled["y"], self.label_smoothing))
        return loss, step_metrics, objective_state


@dataclasses.dataclass(frozen=True, kw_only=True)
class SemiSupervised(Method):
    """The shared semi-supervised step; subclasses implement :meth:`unlabeled_term`.

    Hyperparameters:

    * ``mu``: unlabeled examples per labeled example in a step (an integer >= 1).
    * ``unlabeled_weight``: the weight of the unlabeled term once ramped up (>= 0).
    * ``rampup_steps`` and ``rampup``: the unlabeled weight grows over the first
      ``rampup_steps`` steps following the ``rampup`` schedule (:func:`ramp_up`);
      0 means full weight from the start.
    """

    unlabeled_views: ClassVar[tuple[str, ...]]  # augmentation strengths of the unlabeled batch the model sees
    # Positions in unlabeled_views of the views whose logits the unlabeled term reads only
    # under stop_gradient (targets): no gradient flows through them.
    target_views: ClassVar[tuple[int, ...]] = ()

    mu: int = 1
    unlabeled_weight: float = 1.0
    rampup_steps: int = 0
    rampup: str = "sigmoid"

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        return {"labeled": batch_size, "unlabeled": self.mu * batch_size}

    def unlabeled_weight_at(self, step: jax.Array) -> jax.Array:
        return self.unlabeled_weight * ramp_up(step, self.rampup_steps, self.rampup)

    def loss(self, model, batch, key, objective_state, step):
        labeled, unlabeled = batch["labeled"], batch["unlabeled"]
        augment_key, term_key = jax.random.split(key)
        labeled_logits, *unlabeled_logits = self._forward_views(
            model,
            augment_key,
            [("weak", labeled["x"])] + [(view, unlabeled["x"]) for view in self.unlabeled_views],
            targets={1 + view for view in self.target_views},
        )
        term, objective_state = self.unlabeled_term(
            model, unlabeled["x"], tuple(unlabeled_logits), term_key, objective_state, step
        )
        loss, step_metrics = self.step_metrics(
            *self.labeled_term(labeled_logits, labeled["y"]),
            unlabeled_weight=self.unlabeled_weight_at(step),
            term=term,
            hidden_labels=unlabeled["y"],
        )
        return loss, step_metrics, objective_state

    def _forward_views(self, model, key, views: list[tuple[str, jax.Array]], targets=frozenset()) -> list[jax.Array]:
        """Logits of each (strength, batch) view, in order, from one call of the model.

        All views of one strength are augmented in one call, as a single batch: each
        call is a sizeable piece of compiled code, so this keeps compilation fast. One
        model call on everything lets batch statistics (BatchNorm) see all the views,
        as in USB. The exception: when the model treats every example on its own
        (:func:`_rows_independent`), the ``targets`` views (positions in ``views``) go
        through a second call under ``stop_gradient``, which gives the same logits but
        spares the backward pass their rows (with BatchNorm it could not: the batch
        statistics carry gradients through every row).
        """
        strengths = list(dict.fromkeys(strength for strength, _ in views))
        order = [i for strength in strengths for i, (s, _) in enumerate(views) if s == strength]
        augmented = [
            self.augmentations[strength](k, jnp.concatenate([x for s, x in views if s == strength]))
            for strength, k in zip(strengths, jax.random.split(key, len(strengths)))
        ]
        sizes = [len(views[i][1]) for i in order]
        inputs = dict(zip(order, jnp.split(jnp.concatenate(augmented), np.cumsum(sizes)[:-1])))
        calls = [order]
        if targets and _rows_independent(model):
            calls = [[i for i in order if i not in targets], [i for i in order if i in targets]]
        logits = [None] * len(views)
        for call, blocked in zip(calls, (False, True)):
            out = model(jnp.concatenate([inputs[i] for i in call]))
            out = jax.lax.stop_gradient(out) if blocked else out
            for i, piece in zip(call, jnp.split(out, np.cumsum([len(inputs[i]) for i in call])[:-1])):
                logits[i] = piece
        return logits

    def unlabeled_term(
        self,
        model: nnx.Module,
        unlabeled_x: jax.Array,
        logits: tuple[jax.Array, ...],
        key: jax.Array,
        objective_state: PyTree,
        step: jax.Array,
    ) -> tuple[UnlabeledTerm, PyTree]:
        """The method's unlabeled term and its new ``objective_state``.

        ``logits`` holds the model's logits for each of :attr:`unlabeled_views` of
        ``unlabeled_x`` (the raw batch, for methods that make further views from
        ``key``); ``model`` is the bound student, in train mode.
        """
        raise NotImplementedError


# ------------------------------------------------------------------ methods


@register("pseudo_label")
@dataclasses.dataclass(frozen=True, kw_only=True)
class PseudoLabel(SemiSupervised):
    """Lee (2013): cross-entropy towards the model's own confident predictions.

    The pseudo-label and the prediction learning it come from the same weak view;
    only predictions with confidence >= ``threshold`` are used (as in USB). The
    weight ramps up (sigmoid, 1000 steps) because early predictions are mostly wrong.
    """

    unlabeled_views = ("weak",)

    threshold: float = 0.95
    mu: int = 3
    rampup_steps: int = 1000

    def unlabeled_term(self, model, unlabeled_x, logits, key, objective_state, step):
        (weak,) = logits
        probs = jax.nn.softmax(jax.lax.stop_gradient(weak))
        return _hard_pseudo_label_term(weak, probs, self.threshold), objective_state


def _hard_pseudo_label_term(student_logits: jax.Array, target_probs: jax.Array, threshold) -> UnlabeledTerm:
    labels = pseudo_labels(target_probs)
    mask = confidence_mask(target_probs, threshold)
    return UnlabeledTerm(masked_cross_entropy(student_logits, labels, mask), labels, mask)


@register("pi_model")
@dataclasses.dataclass(frozen=True, kw_only=True)
class PiModel(SemiSupervised):
    """Laine & Aila (2017): predictions on two random weak views should agree.

    The second view's prediction is the (stop-gradient) target of the first, through
    :func:`consistency_loss`. Weight 10 reached by a sigmoid ramp-up over 1000 steps.
    """

    unlabeled_views = ("weak", "weak")
    target_views = (1,)

    unlabeled_weight: float = 10.0
    rampup_steps: int = 1000
    mu: int = 3

    def unlabeled_term(self, model, unlabeled_x, logits, key, objective_state, step):
        student, target = logits
        return _consistency_term(student, jax.nn.softmax(jax.lax.stop_gradient(target))), objective_state


def _consistency_term(student_logits: jax.Array, target_probs: jax.Array) -> UnlabeledTerm:
    """Consistency with soft targets: every example is used, and its "pseudo-label" is the target's argmax."""
    everything = jnp.ones(target_probs.shape[0], target_probs.dtype)
    return UnlabeledTerm(consistency_loss(student_logits, target_probs), pseudo_labels(target_probs), everything)


@register("mean_teacher")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MeanTeacher(SemiSupervised):
    """Tarvainen & Valpola (2017): agree with a teacher whose weights are an EMA of the model's.

    The student sees one weak view, the teacher (the same network with the EMA
    weights, kept in ``objective_state["teacher"]``) another; the teacher's prediction is the
    target of :func:`consistency_loss`. After each update the teacher moves towards
    the student with decay ``min(ema_decay, 1 - 1/(t + 1))`` at step ``t`` (counted
    from 0), so early on it is the plain average of the students so far, as in the
    paper. Defaults: ``ema_decay`` 0.99 (suits runs of a few thousand steps; the
    paper uses 0.999 late in long runs), weight 10 ramped up over 1000 steps.

    Only the parameters are averaged. The teacher runs in train mode like the student
    (dropout on, BatchNorm on batch statistics), and its pass leaves the student's
    BatchNorm running statistics untouched.
    """

    unlabeled_views = ("weak",)

    ema_decay: float = 0.99
    unlabeled_weight: float = 10.0
    rampup_steps: int = 1000
    mu: int = 3

    def init_objective_state(self, params, model_state):
        # A copy, so that the teacher never aliases (or gets donated with) the student's buffers.
        return {"teacher": jax.tree.map(jnp.copy, params)}

    def unlabeled_term(self, model, unlabeled_x, logits, key, objective_state, step):
        (student,) = logits
        graph, _, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        # The teacher draws its dropout masks from the student's RNG streams (so they differ
        # from the student's), but updates a throwaway copy of the BatchNorm statistics.
        teacher = nnx.merge(graph, objective_state["teacher"], jax.tree.map(jnp.copy, batch_stats), rest)
        target_logits = jax.lax.stop_gradient(teacher(self.augmentations["weak"](key, unlabeled_x)))
        return _consistency_term(student, jax.nn.softmax(target_logits)), objective_state

    def after_update(self, objective_state, params, model_state, step):
        decay = jnp.minimum(self.ema_decay, 1.0 - 1.0 / (step + 1.0))
        return {"teacher": ema_update(objective_state["teacher"], params, decay)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class WeakToStrong(SemiSupervised):
    """FixMatch's scheme: confident hard labels from the weak view teach the strong view.

    Subclasses decide the confidence threshold (:meth:`thresholds`). ``magnitude``
    in [0, 1] sets the strength of the strong augmentation (:mod:`lab.augment`).
    Defaults follow FixMatch: ``mu`` 7, weight 1 from the start.
    """

    unlabeled_views = ("weak", "strong")
    target_views = (0,)

    mu: int = 7
    magnitude: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        self.augmentations["strong"] = self.view("strong", magnitude=self.magnitude)

    def thresholds(self, probs: jax.Array, objective_state: PyTree) -> tuple[jax.Array | float, PyTree]:
        """(threshold, scalar or per class, for these weak-view ``probs``; new ``objective_state``)."""
        raise NotImplementedError

    def unlabeled_term(self, model, unlabeled_x, logits, key, objective_state, step):
        weak, strong = logits
        probs = jax.nn.softmax(jax.lax.stop_gradient(weak))
        threshold, objective_state = self.thresholds(probs, objective_state)
        return _hard_pseudo_label_term(strong, probs, threshold), objective_state


@register("fixmatch")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FixMatch(WeakToStrong):
    """Sohn et al. (2020): a fixed confidence ``threshold`` (0.95) for every class."""

    threshold: float = 0.95

    def thresholds(self, probs, objective_state):
        return self.threshold, objective_state


@register("flexmatch")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FlexMatch(FixMatch):
    """Zhang et al. (2021): lower thresholds for the classes that are learned more slowly.

    A class's learning effect σ_c is the share of unlabeled examples predicted as c
    with confidence >= ``threshold``. FlexMatch counts it over the whole unlabeled
    set, remembering each example's last confident prediction; the loop gives no
    example identities, so here σ is an EMA (``ema_decay``, default 0.99) of each
    batch's share, kept in ``objective_state["learning_effect"]``. With threshold warm-up, the
    class thresholds are ``threshold * M(β_c)`` with ``β_c = σ_c / max(max σ,
    1 - Σ σ)`` and the convex mapping ``M(β) = β / (2 - β)``: all thresholds start at
    0 and rise to ``threshold`` for a class as it becomes well learned.
    """

    ema_decay: float = 0.99

    def init_objective_state(self, params, model_state):
        return {"learning_effect": jnp.zeros(_num_classes(params), jnp.float32)}

    def thresholds(self, probs, objective_state):
        effect = objective_state["learning_effect"]
        # While most examples are still unconfident, 1 - Σσ dominates and keeps every β small.
        normalised = effect / jnp.maximum(jnp.max(effect), 1.0 - jnp.sum(effect))
        class_thresholds = self.threshold * normalised / (2.0 - normalised)
        confident = confidence_mask(probs, self.threshold)
        batch_effect = jnp.mean(jax.nn.one_hot(pseudo_labels(probs), probs.shape[-1]) * confident[:, None], axis=0)
        return class_thresholds, {"learning_effect": ema_update(effect, batch_effect, self.ema_decay)}


@register("freematch")
@dataclasses.dataclass(frozen=True, kw_only=True)
class FreeMatch(WeakToStrong):
    """Wang et al. (2023): self-adaptive thresholds, from the model's own confidence.

    Kept in ``objective_state`` as EMAs (decay ``ema_decay``, default 0.999 as in the paper)
    over the weak-view predictions of each unlabeled batch, all starting at 1/C:

    * ``global_threshold``: the mean highest probability (τ_t);
    * ``class_probs``: the mean probability vector (p̃_t);
    * ``label_histogram``: the share of each pseudo-label (h̃_t), used by the
      fairness term.

    Class c's threshold is ``τ_t * p̃_t[c] / max(p̃_t)``: low while the model is
    unsure, and lower for the classes it predicts less. The statistics are updated
    with the current batch before it is masked, as in the paper.

    ``fairness_weight`` (default 0.01, as in USB; 0 turns it off) weighs the
    self-adaptive fairness term ``-H(SumNorm(p̃_t / h̃_t), SumNorm(p̄ / h̄))``, where
    p̄ and h̄ are the mean strong-view probability and the histogram of strong-view
    predictions over the masked examples; it discourages collapsing onto a few
    classes, which the paper finds helps when labels are extremely scarce.
    """

    ema_decay: float = 0.999
    fairness_weight: float = 0.01

    def init_objective_state(self, params, model_state):
        num_classes = _num_classes(params)
        uniform = jnp.full((num_classes,), 1.0 / num_classes, jnp.float32)
        return {"global_threshold": uniform[0], "class_probs": uniform, "label_histogram": uniform}

    def thresholds(self, probs, objective_state):
        batch = {
            "global_threshold": jnp.mean(jnp.max(probs, axis=-1)),
            "class_probs": jnp.mean(probs, axis=0),
            "label_histogram": jnp.mean(jax.nn.one_hot(pseudo_labels(probs), probs.shape[-1]), axis=0),
        }
        objective_state = ema_update(objective_state, batch, self.ema_decay)
        class_probs = objective_state["class_probs"]
        return objective_state["global_threshold"] * class_probs / jnp.max(class_probs), objective_state

    def unlabeled_term(self, model, unlabeled_x, logits, key, objective_state, step):
        term, objective_state = super().unlabeled_term(model, unlabeled_x, logits, key, objective_state, step)
        if self.fairness_weight == 0.0:
            return term, objective_state
        fairness = _fairness_loss(
            logits[1], term.mask, objective_state["class_probs"], objective_state["label_histogram"]
        )
        return term._replace(loss=term.loss + self.fairness_weight * fairness), objective_state


def _fairness_loss(strong_logits, mask, class_probs, label_histogram) -> jax.Array:
    """FreeMatch's self-adaptive fairness term, ``-H(SumNorm(p̃/h̃), SumNorm(p̄/h̄))``; 0 for an empty mask."""

    def sum_normalised(values):  # both sums are positive: some class always has weight
        return values / jnp.sum(values)

    def scaled_by_inverse(values, histogram):  # 1/h with empty bins contributing 0 (USB's replace_inf_to_zero)
        return values * jnp.where(histogram > 0, 1.0 / jnp.where(histogram > 0, histogram, 1.0), 0.0)

    any_masked = jnp.sum(mask) > 0
    # With an empty mask, compute on every row instead and discard the result: the
    # gradient of the discarded branch must still be finite, or 0 * NaN poisons it.
    weights = jnp.where(any_masked, mask, 1.0)[:, None]
    probs = jax.nn.softmax(strong_logits)
    mean_probs = jnp.sum(probs * weights, axis=0) / jnp.sum(weights)
    predicted = jax.nn.one_hot(pseudo_labels(probs), probs.shape[-1])
    histogram = jax.lax.stop_gradient(jnp.sum(predicted * weights, axis=0) / jnp.sum(weights))
    expected = sum_normalised(scaled_by_inverse(class_probs, label_histogram))
    observed = sum_normalised(scaled_by_inverse(mean_probs, histogram))
    return jnp.where(any_masked, jnp.sum(expected * jnp.log(observed + 1e-12)), 0.0)
