"""Transfer learning: pretrain a backbone once, then adapt it to a few labels.

Pretraining trains a *pretraining model*: any NNX module with a ``backbone`` (the
backbone of a :func:`lab.models.make_model` classifier, so it has exactly the
architecture of the classifier it will initialise) and a ``head`` that the
pretraining task needs. Only the backbone is kept, as a :class:`Backbone`; the head
is thrown away. The sources (:data:`PRETRAIN_SOURCES`):

* ``"classes"``: supervised on other classes of the target dataset (digits 0-4,
  then adapt on 5-9), through :meth:`lab.data.Dataset.subset`;
* ``"dataset"``: supervised on another dataset, resized to the target input shape
  (28x28 MNIST for 8x8 digits) by :func:`match_input_shape`;
* ``"simclr"``: contrastive self-supervision, :class:`SimCLR`: the NT-Xent loss
  between projections of two augmented views of each unlabeled example;
* ``"autoencoder"``: :class:`Reconstruction` of the input by a decoder head;
* ``"mlm"``: :class:`MaskedLanguageModelling` of token sequences (BERT's), on the source's
  training texts and its unlabeled corpus (``Dataset.x_unlabeled``).

Each source declares the modalities it makes sense for (``PretrainingTask.modalities``):
a source asked for another fails before any training, naming those that fit.

Each source is a :class:`PretrainingTask` in :data:`PRETRAIN_SOURCES` (its module, its
:class:`lab.train.Objective` and its pools), trained by :func:`lab.train.fit`; a new
source is a new entry.
:func:`pretrain` caches its result on disk by a hash of its :class:`PretrainConfig` and of
the content of the data it pretrains on, so a sweep pretrains each backbone once.

Adaptation (:data:`ADAPTATIONS`) trains a classifier whose backbone starts from the
pretrained one and whose head is freshly initialised for the target classes. The
modes differ only in the optimizer, through the ``param_groups`` of
:func:`lab.optim.make_optimizer` (:func:`adaptation_param_groups`). The pieces
compose like this (``lab.experiment.run`` with ``setup="transfer"`` does this for several seeds)::

    backbone = transfer.pretrain(transfer.PretrainConfig("classes", "digits", source_classes=(0, 1, 2, 3, 4)))
    module = backbone.classifier(5, seed=0)
    tx = optim.make_optimizer("adam", 1e-3, param_groups=transfer.adaptation_param_groups("linear_probe"))
    model, params, model_state = train.Graphs.split(module)
    objective = semisupervised.Supervised(input_shape=(8, 8, 1))
    result = train.fit(model, train.create_train_state(params, model_state, tx, 0), tx, objective, ...)
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, traverse_util

from lab import (
    augment, cache, checkpoints, data, devices, losses, modality, models, optim, semisupervised, train, validate,
)  # fmt: skip

ADAPTATIONS = ("linear_probe", "finetune", "finetune_low_lr")
# The source of a backbone read from a Hugging Face checkpoint (lab.checkpoints) rather than pretrained here.
CHECKPOINT = "checkpoint"


# What a Backbone carries, by the variables of the module's `backbone` it is read from.
# RNG streams (dropout keys) stay with the run: the adapted classifier draws its own from its seed.
_TRANSFERRED = {
    "params": nnx.Param,
    "model_state": nnx.All(nnx.Not(nnx.Param), nnx.Not(nnx.RngState)),
}


# --------------------------------------------------------------------------- backbones


@dataclasses.dataclass(frozen=True)
class Architecture:
    """What :func:`lab.models.make_model` needs to rebuild a backbone, the head aside.

    ``model_inputs`` is what the data fixed in the model (:attr:`lab.data.Dataset.model_inputs`:
    the vocabulary size of token sequences).
    """

    model: str
    input_shape: tuple[int, ...]
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    model_inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def build(self, num_classes: int, *, seed: int) -> nnx.Module:
        """A freshly initialised classifier with this backbone and a ``num_classes`` head."""
        return models.make_model(
            self.model, self.input_shape, num_classes, seed=seed, **self.model_inputs, **self.model_kwargs
        )

    def __str__(self) -> str:
        kwargs = ", ".join(f"{name}={value!r}" for name, value in sorted(self.model_kwargs.items()))
        inputs = "".join(f", {name}={value!r}" for name, value in sorted(self.model_inputs.items()))
        return f"{self.model}({kwargs}) for inputs of shape {self.input_shape}{inputs}"


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: `==` on dicts of arrays is ambiguous
class Backbone:
    """A trained backbone: its variables by parameter path (``"backbone/..."``) and its architecture.

    ``params`` are the ``nnx.Param`` values; ``model_state`` the other variables
    (BatchNorm statistics), except RNG streams. ``log`` holds every pretraining step's
    metrics by name (``loss``, and e.g. ``masked_accuracy`` for ``"mlm"``), empty for a
    backbone that was not pretrained by :func:`pretrain`. ``pretraining_head`` holds the
    variables of the head its pretraining task trained, by group (``"params"``,
    ``"model_state"``) then path (``"head/..."``), which :func:`pretraining_model` puts back
    (MLM's token predictor, to fill blanks); adaptation never reads it.
    """

    architecture: Architecture
    params: Mapping[str, jax.Array]
    model_state: Mapping[str, jax.Array]
    log: Mapping[str, list[float]] = dataclasses.field(default_factory=dict)
    pretraining_head: Mapping[str, Mapping[str, jax.Array]] = dataclasses.field(default_factory=dict)
    # inputs -> the frozen backbone's features of them, in eval mode and cached, for a probe that embeds
    # once (a checkpoint's Checkpoint.embed_ids); None: the backbone runs inside every step
    embed: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def from_module(
        cls, module: nnx.Module, architecture: Architecture, log: Mapping[str, list[float]] | None = None
    ) -> Backbone:
        """The current values of ``module.backbone``, e.g. of a pretraining model after training."""
        return cls(architecture, **_values(module, "backbone"), log=dict(log or {}))

    def classifier(
        self, num_classes: int, *, seed: int, model_inputs: Mapping[str, Any] | None = None
    ) -> nnx.Module:
        """A classifier with this backbone and a new ``num_classes`` head initialised from ``seed``.

        ``model_inputs`` is what the target data fixes (:attr:`lab.data.Dataset.model_inputs`):
        a backbone made for other ones (token ids of another vocabulary) is refused.
        """
        if model_inputs is not None and dict(model_inputs) != dict(self.architecture.model_inputs):
            raise ValueError(
                f"the pretrained backbone was made for {_describe_inputs(self.architecture.model_inputs)}, but the "
                f"data has {_describe_inputs(model_inputs)}: token ids of another vocabulary mean other tokens; "
                "pretrain on data of this vocabulary"
            )
        return init_from_backbone(self.architecture.build(num_classes, seed=seed), self)

    def probe_head(self, num_classes: int, *, seed: int) -> ProbeHead:
        """The head alone of :meth:`classifier` (the same initial values for ``seed``), to train on
        the features :attr:`embed` computed once."""
        return ProbeHead(self.architecture.build(num_classes, seed=seed).head)


class ProbeHead(nnx.Module):
    """A classifier's linear ``head`` on features a frozen backbone computed beforehand: parameter
    paths ``head/...`` as in the whole classifier."""

    def __init__(self, head: nnx.Linear):
        self.head = head

    def features(self, features: jax.Array) -> jax.Array:
        """The classifiers' ``features``: here the frozen backbone's, computed beforehand."""
        return features

    def __call__(self, features: jax.Array) -> jax.Array:
        return self.head(features)


def from_checkpoint(checkpoint: checkpoints.Checkpoint, **model_kwargs: Any) -> Backbone:
    """The encoder of a Hugging Face checkpoint as a backbone; ``model_kwargs`` override its
    hyperparameters that do not change its parameters (``dropout``, ``pooling``, ``normalize``)."""
    architecture = Architecture(
        checkpoint.model,
        checkpoint.inputs.input_shape,
        {**checkpoint.model_kwargs, **model_kwargs},
        checkpoint.inputs.model_inputs,
    )
    embedding = dataclasses.replace(checkpoint, model_kwargs=dict(architecture.model_kwargs))
    return Backbone(architecture, params=dict(checkpoint.params), model_state={}, embed=embedding.embed_ids)


def _describe_inputs(model_inputs: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in sorted(model_inputs.items())) or "no vocabulary"


def init_from_backbone(module: nnx.Module, backbone: Backbone) -> nnx.Module:
    """Load ``backbone`` into ``module.backbone`` (in place) and return ``module``.

    Only ``backbone/*`` variables change: the head keeps its fresh initialisation.
    Fails, naming the parameter paths, when the two backbones do not have the same
    variables with the same shapes and dtypes.
    """
    values = {group: getattr(backbone, group) for group in _TRANSFERRED}
    _load(module, "backbone", values, f"backbone ({backbone.architecture})")
    return module


def _load(module: nnx.Module, part: str, values: Mapping[str, Mapping[str, jax.Array]], what: str) -> None:
    """Set the variables of ``module.<part>`` to ``values`` (by group, then path), after checking that they match."""
    targets = _variables(module, part)
    problems = [line for group, variables in targets.items() for line in _mismatches(variables, values[group])]
    if problems:
        raise ValueError(
            f"the pretrained {what} does not match the {part} of this {type(module).__name__}:\n  "
            + "\n  ".join(problems)
        )
    for group, variables in targets.items():
        for path, variable in variables.items():
            # A copy: fit() donates the train state's buffers, which must not be the backbone's own.
            variable.set_value(jnp.array(values[group][path]))


def _variables(module: nnx.Module, part: str) -> dict[str, dict[str, nnx.Variable]]:
    """The transferred variables of ``module.<part>`` (``backbone`` or ``head``) by group, then by parameter path."""
    if not hasattr(module, "backbone"):
        raise TypeError(
            f"{type(module).__name__} has no `backbone` attribute; transfer needs a module with a "
            "`backbone` and a `head`, like the classifiers of lab.models"
        )
    return {
        group: {
            "/".join((part, *map(str, path))): variable
            for path, variable in nnx.to_flat_state(nnx.state(getattr(module, part), kind))
        }
        for group, kind in _TRANSFERRED.items()
    }


def _values(module: nnx.Module, part: str) -> dict[str, dict[str, jax.Array]]:
    """The current values of :func:`_variables`."""
    return {
        group: {path: variable.get_value() for path, variable in variables.items()}
        for group, variables in _variables(module, part).items()
    }


def _mismatches(expected: Mapping[str, nnx.Variable], found: Mapping[str, jax.Array]) -> list[str]:
    """One line per difference between the model's variables and the backbone's arrays."""

    def describe(array) -> str:
        return f"{tuple(array.shape)} {np.dtype(array.dtype).name}"

    lines = [
        f"missing from the pretrained backbone: {path} {describe(expected[path])}"
        for path in sorted(expected.keys() - found.keys())
    ]
    lines += [
        f"unexpected in the pretrained backbone: {path} {describe(found[path])}"
        for path in sorted(found.keys() - expected.keys())
    ]
    lines += [
        f"{path}: {describe(found[path])} in the pretrained backbone, {describe(expected[path])} in the model"
        for path in sorted(expected.keys() & found.keys())
        if describe(expected[path]) != describe(found[path])
    ]
    return lines


# --------------------------------------------------------------------------- pretraining objectives


def nt_xent(first: jax.Array, second: jax.Array, *, temperature: float) -> jax.Array:
    """SimCLR's normalised-temperature cross-entropy for ``N`` positive pairs ``(first[i], second[i])``.

    The ``2N`` embeddings are L2-normalised; each is a query whose positive is the
    other view of its example and whose negatives are the other ``2N - 2`` embeddings.
    The loss is the mean over all ``2N`` queries of the cross-entropy of the softmax
    over cosine similarities divided by ``temperature`` (Chen et al., 2020).
    """
    if first.ndim != 2 or first.shape != second.shape:
        raise ValueError(
            f"first and second must be (N, D) embeddings of the same shape, got {first.shape} and {second.shape}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    n = first.shape[0]
    embeddings = jnp.concatenate([first, second]).astype(jnp.float32)
    embeddings = embeddings * jax.lax.rsqrt(jnp.maximum(jnp.sum(embeddings**2, -1, keepdims=True), 1e-12))
    similarity = embeddings @ embeddings.T / temperature
    # An embedding is neither its own positive nor a negative.
    similarity = jnp.where(jnp.eye(2 * n, dtype=bool), -jnp.inf, similarity)
    positive = jnp.concatenate([jnp.arange(n, 2 * n), jnp.arange(n)])
    log_probabilities = jax.nn.log_softmax(similarity, axis=-1)
    return -jnp.mean(log_probabilities[jnp.arange(2 * n), positive])


@dataclasses.dataclass(frozen=True)
class SimCLR(train.Objective):
    """NT-Xent between the projections of two augmented views of each unlabeled example.

    ``augmentation(key, x)`` draws a random view of a batch (:func:`lab.augment.make_augmentation`).
    Both views go through the model in one batch, so BatchNorm sees both.
    """

    augmentation: augment.Augmentation
    temperature: float = 0.5

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        return {"unlabeled": batch_size}

    def loss(self, model, batch, key, objective_state, step):
        x = batch["unlabeled"]["x"]
        first_key, second_key = jax.random.split(key)
        projections = model(jnp.concatenate([self.augmentation(first_key, x), self.augmentation(second_key, x)]))
        first, second = jnp.split(projections, 2)
        loss = nt_xent(first, second, temperature=self.temperature)
        return loss, {"loss": loss}, objective_state


class Reconstruction(train.Objective):
    """Mean squared error between the model's output and its flattened input (an autoencoder)."""

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        return {"unlabeled": batch_size}

    def loss(self, model, batch, key, objective_state, step):
        x = batch["unlabeled"]["x"]
        loss = losses.mse(model(x), x.reshape(x.shape[0], -1))
        return loss, {"loss": loss}, objective_state


# BERT's corruption of the tokens chosen for prediction (Devlin et al., 2019): most become
# [MASK], some a random token, the rest stay as they are, so the model cannot tell from the
# input which positions it will be asked about.
MASKED_SHARE, RANDOM_SHARE = 0.8, 0.1  # the remaining 0.1 unchanged


def max_predictions(length: int, rate: float) -> int:
    """How many positions of a sequence of ``length`` tokens masked-language modelling predicts at
    most: ``ceil(rate * length)`` (BERT's ``max_predictions_per_seq``); a static shape for jit."""
    return max(1, math.ceil(rate * length))


def mask_tokens(
    key: jax.Array, x: jax.Array, vocab_size: int, *, rate: float = 0.15
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """BERT's masking of a batch of ``(N, L)`` token ids: ``(inputs, positions, weights)``.

    A sequence of ``n`` ordinary tokens (not padding nor another special token, see
    :data:`lab.models.NUM_SPECIAL_TOKENS`) has ``max(1, round(rate * n))`` of them (halves
    rounded up; none when ``n = 0``) chosen at random for prediction, as BERT's data
    pipeline chooses them; of the chosen, :data:`MASKED_SHARE` become ``[MASK]``,
    :data:`RANDOM_SHARE` a random ordinary token and the rest stay. ``positions`` ``(N, P)``
    int32, ``P =`` :func:`max_predictions`, holds the chosen positions first, then others
    whose ``weights`` (boolean, ``(N, P)``) are False; :func:`selected_positions` turns the two
    into an ``(N, L)`` mask. ``inputs`` keeps the dtype of ``x``.
    """
    select_key, action_key, token_key = jax.random.split(key, 3)
    eligible = x >= models.NUM_SPECIAL_TOKENS
    count = eligible.sum(axis=1)
    chosen = jnp.where(count > 0, jnp.maximum(1, jnp.floor(count * jnp.float32(rate) + 0.5)), 0)
    # The eligible positions in a random order, then the others: the chosen are the first `chosen`.
    priority = jnp.where(eligible, jax.random.uniform(select_key, x.shape), -1.0)
    _, positions = jax.lax.top_k(priority, max_predictions(x.shape[1], rate))
    weights = jnp.arange(positions.shape[1]) < chosen[:, None]
    selected = selected_positions(positions, weights, x.shape[1])
    action = jax.random.uniform(action_key, x.shape)
    random_tokens = jax.random.randint(token_key, x.shape, models.NUM_SPECIAL_TOKENS, vocab_size, dtype=x.dtype)
    inputs = jnp.where(selected & (action < MASKED_SHARE), jnp.asarray(modality.MASK_ID, x.dtype), x)
    replaced = selected & (action >= MASKED_SHARE) & (action < MASKED_SHARE + RANDOM_SHARE)
    return jnp.where(replaced, random_tokens, inputs), positions.astype(jnp.int32), weights


def selected_positions(positions: jax.Array, weights: jax.Array, length: int) -> jax.Array:
    """The ``(N, length)`` boolean mask of the ``(N, P)`` ``positions`` whose ``weights`` are True."""
    rows = jnp.arange(positions.shape[0])[:, None]
    return jnp.zeros((positions.shape[0], length), bool).at[rows, positions].max(weights)


def masked_token_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(cross-entropy, accuracy) of ``(N, P, V)`` token logits against the ``(N, P)`` original
    tokens, averaged over the positions whose ``weights`` are True only (0 when none is)."""
    weights = weights.astype(jnp.float32)
    count = jnp.maximum(weights.sum(), 1)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = (logits.argmax(axis=-1) == targets).astype(jnp.float32)
    return (cross_entropy * weights).sum() / count, (correct * weights).sum() / count


@dataclasses.dataclass(frozen=True)
class MaskedLanguageModelling(train.Objective):
    """BERT's masked-language-model loss on unlabeled token sequences: a fresh :func:`mask_tokens`
    draw every step, and the cross-entropy of the model's logits over the vocabulary at the
    chosen positions: ``model(inputs, positions)`` computes them there only (``(N, P, vocab_size)``,
    as :class:`TokenPredictor` does), not at every position. Logs ``loss`` and
    ``masked_accuracy`` (of the chosen positions)."""

    vocab_size: int
    rate: float = 0.15

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        return {"unlabeled": batch_size}

    def loss(self, model, batch, key, objective_state, step):
        x = batch["unlabeled"]["x"]
        inputs, positions, weights = mask_tokens(key, x, self.vocab_size, rate=self.rate)
        targets = jnp.take_along_axis(x, positions, axis=1)
        loss, accuracy = masked_token_loss(model(inputs, positions), targets, weights)
        return loss, {"loss": loss, "masked_accuracy": accuracy}, objective_state


class TokenPredictor(nnx.Module):
    """A text ``backbone`` and a ``head`` that reads its per-position features
    (``backbone.token_features``, see :class:`lab.models.Classifier`) into logits over the
    vocabulary: ``(N, L)`` token ids -> ``(N, L, vocab_size)``, or ``(N, P, vocab_size)`` at
    ``(N, P)`` ``positions`` only (the head's cost is per position, and its last layer is the
    widest of the model)."""

    def __init__(self, backbone: nnx.Module, head: nnx.Module):
        if not hasattr(backbone, "token_features"):
            raise TypeError(
                f"{type(backbone).__name__} has no token_features(x): masked-token prediction needs the "
                "features of every position, which the text backbones of lab.models give"
            )
        self.backbone = backbone
        self.head = head

    def __call__(self, x: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        features = self.backbone.token_features(x)
        if positions is not None:
            features = jnp.take_along_axis(features, positions[..., None], axis=1)
        return self.head(features)


# --------------------------------------------------------------------------- pretraining


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pretrained backbone; its hash names the cache entry.

    ``dataset`` is the target: it fixes the input shape, and its training inputs are
    what is pretrained on unless ``source_dataset`` names another dataset. With
    ``source_classes``, only those classes of the pretraining data are used:
    ``"classes"`` requires them, ``"dataset"`` requires ``source_dataset``;
    ``"simclr"``, ``"autoencoder"`` and ``"mlm"`` ignore labels and take either.
    """

    source: str
    dataset: str
    model: str = "mlp"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    source_dataset: str | None = None
    source_classes: tuple[int, ...] | None = None
    steps: int = 1000
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    seed: int = 0
    head_width: int = 128  # hidden width of the SimCLR projector, the autoencoder's decoder and the MLM head
    projection_dim: int = 64  # simclr
    temperature: float = 0.5  # simclr
    augmentation: str = "strong"  # simclr: lab.augment strength of each view
    flip: bool = False  # simclr
    magnitude: float = 0.5  # simclr
    mask_rate: float = 0.15  # mlm: the share of tokens to predict

    def __post_init__(self) -> None:
        validate.choice("pretraining source", self.source, PRETRAIN_SOURCES)
        if data.is_known(self.dataset):  # others are loaded by the caller's load_dataset
            check_modality(self.source, data.modality_of(self.dataset))
        validate.choice("model", self.model, tuple(models.MODELS))
        validate.choice("optimizer", self.optimizer, optim.OPTIMIZERS)
        validate.choice("augmentation", self.augmentation, augment.STRENGTHS)
        if self.source_classes is not None:
            if isinstance(self.source_classes, (str, bytes)) or not isinstance(self.source_classes, Sequence):
                raise ValueError(
                    f"source_classes must be a sequence of class labels or None, got {self.source_classes!r}"
                )
            object.__setattr__(self, "source_classes", tuple(int(label) for label in self.source_classes))
        if self.source == "classes" and (self.source_classes is None or self.source_dataset is not None):
            raise ValueError(
                "source='classes' pretrains on source_classes of the target dataset: set source_classes "
                f"and leave source_dataset unset (got source_classes={self.source_classes!r}, "
                f"source_dataset={self.source_dataset!r})"
            )
        if self.source == "dataset" and self.source_dataset in (None, self.dataset):
            raise ValueError(
                f"source='dataset' pretrains on another dataset than the target {self.dataset!r}: "
                f"set source_dataset to its name (got {self.source_dataset!r})"
            )
        for name in ("steps", "batch_size", "head_width", "projection_dim"):
            validate.integer(name, getattr(self, name), minimum=1)
        for name in ("learning_rate", "temperature"):
            validate.number(name, getattr(self, name), minimum=0, exclusive_minimum=True, finite=False, wording="> 0")
        validate.number("mask_rate", self.mask_rate, minimum=0, maximum=1, exclusive_minimum=True)
        # The cache key is made from the JSON form: fail now rather than after training.
        try:
            json.dumps(dataclasses.asdict(self))
        except TypeError as error:
            raise ValueError(f"every PretrainConfig value must be JSON-serialisable: {error}") from None

    def key_for(self, target: data.Dataset, source: data.Dataset | None = None) -> str:
        """The name of this config's cache entry when pretrained for ``target`` on ``source`` (the
        target itself unless :attr:`source_dataset` names another): a stable hash of the config, of what
        else decides the backbone (:func:`producer`: the code and the backend) and of the data it is
        pretrained on: the content digest of the source (:attr:`lab.data.Dataset.digest`, which holds
        what its token ids mean too) and the target's input shape the source is resized to. Other data
        under the same name, or token ids of another tokenizer, give another key."""
        source = target if source is None else source
        pretrained_on = {"data": source.digest, "input_shape": list(target.input_shape)}
        return cache.key(self.to_dict(), producer(), pretrained_on)

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON types (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def producer() -> dict[str, str]:
    """What makes a pretrained backbone besides its config: the fingerprint of the code and the JAX backend."""
    return {"code": cache.fingerprint(__name__), "backend": devices.current_platform()}


def cache_key(config: PretrainConfig, *, load_dataset: Callable[[str], data.Dataset] = data.load) -> str:
    """The name of ``config``'s entry in the cache of :func:`pretrain` (:meth:`PretrainConfig.key_for`
    the data ``load_dataset`` loads)."""
    return config.key_for(*_pretraining_data(config, load_dataset))


def _pretraining_data(
    config: PretrainConfig, load_dataset: Callable[[str], data.Dataset]
) -> tuple[data.Dataset, data.Dataset]:
    """The target and the dataset pretrained on (the target itself unless ``config.source_dataset``)."""
    target = load_dataset(config.dataset)
    return target, target if config.source_dataset is None else load_dataset(config.source_dataset)


def pretrain(
    config: PretrainConfig,
    *,
    cache_dir: str | Path | None = None,
    load_dataset: Callable[[str], data.Dataset] = data.load,
    progress: bool = False,
) -> Backbone:
    """The backbone ``config`` describes: loaded from the cache, else trained and cached.

    Entries live in ``cache_dir/<key>/`` (``cache_dir`` defaults to
    ``lab.cache.cache_dir()/pretrained``; the key is :meth:`PretrainConfig.key_for` the data):
    ``config.json`` (the config, its :func:`producer`, the data's digest and tokenizer) and the
    arrays as an orbax checkpoint. Code or library versions other than those that made an entry,
    or other data (another tokenizer's ids, one pixel or text edited under the same name), give
    another key, so the backbone is pretrained again. An entry is written in a temporary folder
    and renamed into place when complete, so an interrupted run never leaves a half-written entry behind;
    its files' digests are checked before it is read, and a damaged entry is pretrained again
    (:func:`lab.cache.read_checked`, :func:`lab.cache.publish`).
    ``load_dataset(name)`` loads datasets by name (e.g. with a ``data_dir`` bound); the target and
    the source are loaded (and digested) even when the backbone is read from the cache.
    """
    root = Path(cache_dir) if cache_dir is not None else cache.cache_dir() / "pretrained"
    target, source = _pretraining_data(config, load_dataset)
    entry = (root / config.key_for(target, source)).absolute()
    cached = cache.read_checked(entry, lambda entry: _read_entry(entry, config), "the pretrained backbone")
    if cached is not None:
        return cached
    backbone = _train_backbone(config, target, source, progress)
    cache.publish(entry, lambda folder: _write_entry(folder, config, backbone, source), "the pretrained backbone")
    return backbone


def pretraining_model(
    config: PretrainConfig,
    *,
    cache_dir: str | Path | None = None,
    load_dataset: Callable[[str], data.Dataset] = data.load,
    progress: bool = False,
) -> nnx.Module:
    """The whole model ``config`` pretrains, in eval mode: the backbone of :func:`pretrain` (the same
    cache entry, pretrained if absent) with the head its task trained, e.g. MLM's
    :class:`TokenPredictor`, whose logits over the vocabulary fill blanks (:func:`lab.text.fill_masks`)."""
    target, source = _pretraining_data(config, load_dataset)
    loaded = {config.dataset: target, config.source_dataset: source}  # each loaded once, for pretrain too
    backbone = pretrain(config, cache_dir=cache_dir, load_dataset=loaded.__getitem__, progress=progress)
    source = _checked_source(config, target, source)
    module = init_from_backbone(PRETRAIN_SOURCES[config.source].module(backbone.architecture, config, source), backbone)
    _load(module, "head", backbone.pretraining_head, "pretraining head")
    module.eval()
    return module


def match_input_shape(x: np.ndarray, input_shape: Sequence[int]) -> np.ndarray:
    """Area-resize a batch of images ``(N, H, W, C)`` or signals ``(N, L, C)`` to ``input_shape``.

    Only the spatial size can change: the rank and the number of channels must agree.
    """
    x, input_shape = np.asarray(x), tuple(input_shape)
    shape = x.shape[1:]
    if shape == input_shape:
        return x
    kind = modality.of_shape(shape)
    if len(shape) != len(input_shape) or kind is None or shape[-1] != input_shape[-1]:
        raise ValueError(
            f"cannot match inputs of shape {shape} to the target input shape {input_shape}: only the size of "
            "images (H, W, C) -> (H', W', C) or signals (L, C) -> (L', C) can be changed; rank and channels must agree"
        )
    return _RESIZE[kind.name](x, input_shape[:-1])


def _resize_signals(x: np.ndarray, length: tuple[int]) -> np.ndarray:
    # A signal is resized as a one-pixel-wide image.
    return data.resize_images(x[:, :, None, :], (*length, 1))[:, :, 0, :]


# How a batch of each modality is resized to new spatial sizes.
_RESIZE: dict[str, Callable[[np.ndarray, tuple[int, ...]], np.ndarray]] = {
    "image": data.resize_images,
    "signal": _resize_signals,
}


def check_modality(source: str, kind: str) -> None:
    """Refuse pretraining ``source`` for inputs of modality ``kind``, naming the sources that fit them."""
    if kind not in PRETRAIN_SOURCES[source].modalities:
        fitting = [name for name, task in PRETRAIN_SOURCES.items() if kind in task.modalities]
        raise ValueError(
            f"pretraining source {source!r} does not make sense for {kind} inputs; "
            f"for {kind} inputs choose one of: {', '.join(fitting)}"
        )


def _checked_source(config: PretrainConfig, target: data.Dataset, source: data.Dataset) -> data.Dataset:
    """The data ``config`` pretrains on (``source``, its ``source_classes`` only), checked against the ``target``'s."""
    check_modality(config.source, modality.of_shape(target.input_shape).name)
    if source.model_inputs != target.model_inputs:
        raise ValueError(
            f"the source dataset {source.name} has {_describe_inputs(source.model_inputs)} but the target "
            f"{target.name} has {_describe_inputs(target.model_inputs)}: a backbone reads the tokens of one vocabulary"
        )
    if source.tokenizer != target.tokenizer:
        raise ValueError(
            f"the source dataset {source.name} was tokenized by tokenizer {source.tokenizer} but the target "
            f"{target.name} by {target.tokenizer}: a backbone reads the tokens of one vocabulary"
        )
    return source if config.source_classes is None else source.subset(config.source_classes)


def _train_backbone(config: PretrainConfig, target: data.Dataset, source: data.Dataset, progress: bool) -> Backbone:
    source = _checked_source(config, target, source)
    # JSON types, as a backbone read back from the cache has them.
    architecture = Architecture(
        config.model, tuple(target.input_shape), config.to_dict()["model_kwargs"], dict(target.model_inputs)
    )
    x = jnp.asarray(match_input_shape(source.x_train, architecture.input_shape))
    task = PRETRAIN_SOURCES[config.source]
    module = task.module(architecture, config, source)
    objective = task.objective(config, architecture)
    model, params, model_state = train.Graphs.split(module)
    tx = optim.make_optimizer(config.optimizer, config.learning_rate)
    state = train.create_train_state(params, model_state, tx, config.seed)
    pools = task.pools(x, source)
    result = train.fit(
        model, state, tx, objective, pools, steps=config.steps, batch_size=config.batch_size, progress=progress,
        label=f"pretrain {config.source}",
    )  # fmt: skip
    # Metrics the objective does not measure are NaN throughout (the supervised objective's
    # pseudo-label accuracy): left out, which keeps the cache entry's JSON standard.
    log = {name: np.asarray(values).tolist() for name, values in result.log.items() if np.isfinite(values).any()}
    trained = model.bind(result.state.params, result.state.model_state, train=False)
    return dataclasses.replace(
        Backbone.from_module(trained, architecture, log), pretraining_head=_values(trained, "head")
    )


@dataclasses.dataclass(frozen=True)
class PretrainingTask:
    """How a pretraining source trains a backbone: the module (the backbone with the head its task
    needs), the objective (of the config and the architecture), the pools it draws from (the
    source's inputs ``x``, already matched to the target's input shape, and the source dataset),
    and the modalities (:mod:`lab.modality`) it makes sense for."""

    module: Callable[[Architecture, PretrainConfig, data.Dataset], nnx.Module]
    objective: Callable[[PretrainConfig, Architecture], train.Objective]
    pools: Callable[[jax.Array, data.Dataset], dict]
    modalities: tuple[str, ...]


def _with_pretraining_head(outputs: Callable[[PretrainConfig, Architecture], int]):
    """A module factory: a classifier of the architecture whose head is a two-layer MLP with
    ``outputs(config, architecture)`` outputs (the SimCLR projector, the autoencoder's decoder)."""

    def module(architecture: Architecture, config: PretrainConfig, source: data.Dataset) -> nnx.Module:
        width = outputs(config, architecture)
        classifier = architecture.build(width, seed=config.seed)
        # Folding in keeps the head's initialisation independent of the backbone's, which used `seed` itself.
        rngs = nnx.Rngs(jax.random.fold_in(jax.random.key(config.seed), 1))
        classifier.head = nnx.Sequential(
            nnx.Linear(classifier.feature_dim, config.head_width, rngs=rngs),
            nnx.relu,
            nnx.Linear(config.head_width, width, rngs=rngs),
        )
        return classifier

    return module


def _simclr(config: PretrainConfig, architecture: Architecture) -> SimCLR:
    augmentation = augment.make_augmentation(
        config.augmentation, architecture.input_shape, flip=config.flip, magnitude=config.magnitude
    )
    return SimCLR(augmentation, config.temperature)


def _token_predictor(architecture: Architecture, config: PretrainConfig, source: data.Dataset) -> TokenPredictor:
    """The backbone of the architecture with BERT's prediction head: dense-GELU-LayerNorm, then
    logits over the vocabulary."""
    classifier = architecture.build(1, seed=config.seed)  # its head is not used
    rngs = nnx.Rngs(jax.random.fold_in(jax.random.key(config.seed), 1))  # as _with_pretraining_head
    head = nnx.Sequential(
        nnx.Linear(classifier.feature_dim, config.head_width, rngs=rngs),
        nnx.gelu,
        nnx.LayerNorm(config.head_width, rngs=rngs),
        nnx.Linear(config.head_width, architecture.model_inputs["vocab_size"], rngs=rngs),
    )
    return TokenPredictor(classifier.backbone, head)


_SUPERVISED = PretrainingTask(
    module=lambda architecture, config, source: architecture.build(source.num_classes, seed=config.seed),
    # Pretraining has always seen the inputs as they are.
    objective=lambda config, architecture: semisupervised.Supervised(
        input_shape=architecture.input_shape, augmentation="none"
    ),
    pools=lambda x, source: {"labeled": {"x": x, "y": jnp.asarray(source.y_train)}},
    modalities=("image", "signal", "text"),
)


def _unlabeled(x: jax.Array, source: data.Dataset) -> dict:
    return {"unlabeled": {"x": x}}


def _corpus(x: jax.Array, source: data.Dataset) -> dict:
    """The training inputs and the examples that came without labels (a text corpus), never test ones."""
    if source.x_unlabeled is not None:
        x = jnp.concatenate([x, jnp.asarray(match_input_shape(source.x_unlabeled, x.shape[1:]))])
    return {"unlabeled": {"x": x}}


PRETRAIN_SOURCES: dict[str, PretrainingTask] = {
    "classes": _SUPERVISED,
    "dataset": _SUPERVISED,
    "simclr": PretrainingTask(
        module=_with_pretraining_head(lambda config, architecture: config.projection_dim),
        objective=_simclr,
        pools=_unlabeled,
        modalities=("image", "signal", "text"),  # the views of a text: lab.augment's strong token edits
    ),
    "autoencoder": PretrainingTask(
        module=_with_pretraining_head(lambda config, architecture: math.prod(architecture.input_shape)),
        objective=lambda config, architecture: Reconstruction(),
        pools=_unlabeled,
        # The mean squared error between token ids measures nothing.
        modalities=("image", "signal"),
    ),
    "mlm": PretrainingTask(
        module=_token_predictor,
        objective=lambda config, architecture: MaskedLanguageModelling(
            architecture.model_inputs["vocab_size"], config.mask_rate
        ),
        pools=_corpus,
        modalities=("text",),
    ),
}


# --------------------------------------------------------------------------- cache entries

_CONFIG_FILE = "config.json"
_ARRAYS_DIR = "arrays"


def _write_entry(folder: Path, config: PretrainConfig, backbone: Backbone, source: data.Dataset) -> None:
    import orbax.checkpoint as ocp  # imported here: it takes half a second, and only the cache needs it

    arrays = {group: traverse_util.unflatten_dict(getattr(backbone, group), sep="/") for group in _TRANSFERRED}
    arrays["pretraining_head"] = {
        group: traverse_util.unflatten_dict(values, sep="/") for group, values in backbone.pretraining_head.items()
    }
    description = {
        "config": config.to_dict(),
        "producer": producer(),
        "data": {"name": source.name, "digest": source.digest, "tokenizer": source.tokenizer},
        "architecture": dataclasses.asdict(backbone.architecture),
        "log": dict(backbone.log),
    }
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(folder / _ARRAYS_DIR, arrays)
    (folder / _CONFIG_FILE).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")


def _read_entry(entry: Path, config: PretrainConfig) -> Backbone:
    import orbax.checkpoint as ocp

    description = json.loads((entry / _CONFIG_FILE).read_text())
    if description["config"] != config.to_dict():
        raise ValueError(
            f"the pretrained backbone cached in {entry} was made by another config than the one asked for "
            f"(cached: {description['config']}); delete that folder to pretrain again"
        )
    with ocp.StandardCheckpointer() as checkpointer:
        arrays = checkpointer.restore(entry / _ARRAYS_DIR)
    architecture = description["architecture"]
    architecture["input_shape"] = tuple(architecture["input_shape"])
    return Backbone(
        Architecture(**architecture),
        **{group: traverse_util.flatten_dict(arrays[group], sep="/") for group in _TRANSFERRED},
        log=description["log"],
        pretraining_head={
            group: traverse_util.flatten_dict(arrays["pretraining_head"].get(group, {}), sep="/")
            for group in _TRANSFERRED
        },
    )


# --------------------------------------------------------------------------- adaptation


def adaptation_param_groups(mode: str, backbone_lr_multiplier: float = 0.1) -> dict[str, str | float]:
    """``param_groups`` for :func:`lab.optim.make_optimizer` that adapt in ``mode``.

    ``"linear_probe"`` freezes the backbone, ``"finetune"`` trains everything at the
    learning rate, ``"finetune_low_lr"`` trains the backbone at ``backbone_lr_multiplier``
    times it. The head always trains at the full learning rate.
    """
    validate.choice("adaptation", mode, ADAPTATIONS)
    if mode == "linear_probe":
        return {"backbone/*": "frozen"}
    if mode == "finetune":
        return {}
    if not backbone_lr_multiplier > 0:
        raise ValueError(
            f"backbone_lr_multiplier must be > 0 for finetune_low_lr, got {backbone_lr_multiplier!r} "
            "(linear_probe freezes the backbone)"
        )
    return {"backbone/*": float(backbone_lr_multiplier)}
