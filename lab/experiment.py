"""One entry point for the setups: ``run(config) -> Result``.

``setup`` is ``supervised`` (the labeled examples only), ``semi_supervised`` (the
labeled examples plus the unlabeled pool, through a method of :mod:`lab.semisupervised`),
``transfer`` (a backbone pretrained by :mod:`lab.transfer`, then adapted on the
labeled examples) or ``transfer_semi_supervised`` (that backbone adapted by a
semi-supervised method, on both). All train in the same loop (:func:`lab.train.fit`) with
the same labeled-set draw, so their numbers are comparable. What a setup changes
(its classifier, objective, parameter groups, pretraining, method label and checks)
is its :class:`Plan` in :data:`SETUPS`; :func:`run` is one straight line for all.

``lab train`` (:func:`train_and_evaluate`) trains the supervised plan's classifier
with the same objective on a whole dataset, with checkpoints in a workdir. Both build
their optimizer, train state and test logits, and call :func:`lab.train.fit`, through
the same functions (:func:`_optimizer`, :func:`_initial_state`, :func:`_test_logits`, :func:`_fit`).

Several seeds train together: each seed draws its own labeled set and its own
initialisation, and the runs are stacked on a leading axis and trained under one
``jax.vmap``-ed compiled program. The results equal separate single-seed runs.

A *preset* (:data:`PRESETS`) is a named, ordinary config: ``from_dict({"preset":
"fixmatch_cifar10", **overrides})`` starts from its fields and applies the overrides
on top (see :func:`resolve_preset`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import sys
import time
import typing
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lab import (
    checkpoints, data, devices, files, memory, metrics, models, optim, parallel, processes, provenance,
    semisupervised, tensorboard, train, transfer, validate,
)  # fmt: skip
from lab.modality import SpecialIds
from lab.record import Record

# Results name the git commit of lab's own source, wherever the run is started from.
_SOURCE_DIR = Path(__file__).parent
MAX_SEED = 2**31 - 1  # seeds are stacked into an int32 array for the vmapped initialisation


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run. ``ExperimentConfig.from_dict`` validates input."""

    setup: str = "supervised"
    dataset: str = "digits"
    data_dir: str | None = None  # folder with IDX files for fashion_mnist / mnist
    # the dataset's other loader options (lab.data.loader_keywords), e.g. svhn's extra or stl10's unlabeled
    dataset_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    classes: tuple[int, ...] | None = None  # keep only these classes (relabelled 0..n-1), e.g. for class-split transfer
    labels_per_class: int = 4
    seeds: tuple[int, ...] = (0,)
    # model and optimisation
    model: str = "mlp"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "constant"
    steps: int = 1000
    batch_size: int = 32
    eval_every: int = 250
    precision: str = "float32"  # what training steps compute in: float32 or bfloat16 (mixed precision)
    # semi-supervised (setup == "semi_supervised" or "transfer_semi_supervised")
    method: str = "fixmatch"
    method_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # transfer (setup == "transfer" or "transfer_semi_supervised")
    pretrain: str = "simclr"
    pretrain_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # pretrain == "checkpoint": a Hugging Face model folder or hub id (lab.checkpoints), whose tokenizer
    # makes the dataset's ids; pretrain_kwargs then take max_length, pooling and normalize
    checkpoint: str | None = None
    adaptation: str = "finetune"
    backbone_lr_multiplier: float = 0.1
    # the FixMatch protocol's pieces (see PRESETS), open to every setup; the defaults change nothing
    weight_decay_mode: str = "decoupled"  # or "l2": added to the gradient, as torch's SGD (and USB) do
    ema_decay: float = 0.0  # > 0: evaluate an EMA of the weights with this decay (USB, FixMatch: 0.999)
    download: bool = False  # fetch missing dataset files from their official host (datasets that read files)
    # where it computes (lab.devices): auto is the accelerator when JAX sees one, else the CPU
    platform: str = "auto"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExperimentConfig:
        """Build and validate a config; unknown keys, wrong types and out-of-range
        values fail with a message that lists what is allowed. A ``"preset"`` key
        starts from that preset's fields (see :func:`resolve_preset`)."""
        values = resolve_preset(values)
        known = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown experiment parameter(s) {unknown}; allowed: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        converted = {name: validate.coerce(name, value, hints[name]) for name, value in values.items()}
        config = cls(**converted)
        config.validate()
        return config

    def validate(self) -> None:
        """Check every value that can be checked without loading data."""
        validate.choice("setup", self.setup, SETUPS)
        validate.choice("dataset", self.dataset, data.DATASETS)
        validate.choice("model", self.model, sorted(models.MODELS))
        validate.choice("optimizer", self.optimizer, optim.OPTIMIZERS)
        validate.choice("schedule", self.schedule, optim.SCHEDULES)
        validate.choice("method", self.method, sorted(semisupervised.METHODS))
        validate.choice("pretrain", self.pretrain, (*transfer.PRETRAIN_SOURCES, transfer.CHECKPOINT))
        validate.choice("adaptation", self.adaptation, transfer.ADAPTATIONS)
        validate.choice("precision", self.precision, train.PRECISIONS)
        for name in ("labels_per_class", "steps", "batch_size", "eval_every"):
            validate.integer(name, getattr(self, name), minimum=1, wording=">= 1")  # from_dict checked the type
        if not self.seeds:
            raise ValueError("seeds must name at least one seed, got ()")
        _distinct("seeds", self.seeds)
        if not all(0 <= seed <= MAX_SEED for seed in self.seeds):
            raise ValueError(f"seeds must be integers in 0..{MAX_SEED}, got {list(self.seeds)}")
        validate.number("learning_rate", self.learning_rate, minimum=0, exclusive_minimum=True)
        for name in ("weight_decay", "backbone_lr_multiplier"):
            validate.number(name, getattr(self, name), minimum=0)
        validate.choice("weight_decay_mode", self.weight_decay_mode, optim.WEIGHT_DECAY_MODES)
        validate.number("ema_decay", self.ema_decay, minimum=0, maximum=1, exclusive_maximum=True)
        # data_dir and download also serve the datasets a setup loads besides this one (see _load_named).
        loaded = (self.dataset, *SETUPS[self.setup].other_datasets(self))
        data.check_data_dir(self.data_dir, *loaded)
        if self.download and not set(loaded) & set(data.DATA_DIR_DATASETS):
            raise ValueError(
                f"download=True fetches only {', '.join(data.DATA_DIR_DATASETS)}; {' and '.join(loaded)} "
                f"{'is' if len(loaded) == 1 else 'are'} made locally"
            )
        models.check_takes(self.model, data.DATASET_ENTRIES[self.dataset].modality)
        devices.check(self.platform)
        for settings in ("model_kwargs", "dataset_kwargs"):
            owner, accepted_by = _SETTINGS_OF[settings]
            allowed = accepted_by(getattr(self, owner))
            unknown = sorted(set(getattr(self, settings)) - set(allowed))
            if unknown:
                raise ValueError(
                    f"unknown {settings} {unknown} for {owner} {getattr(self, owner)!r}; allowed: {sorted(allowed)}"
                )
        if self.classes is not None:
            _distinct("classes", self.classes)
            num_classes = len(data.DATASET_ENTRIES[self.dataset].class_names)
            if len(self.classes) < 2 or not all(0 <= c < num_classes for c in self.classes):
                raise ValueError(f"classes must list at least 2 labels of {self.dataset} in 0..{num_classes - 1}, got {list(self.classes)}")
        reads_checkpoint = self.pretrain == transfer.CHECKPOINT and self.setup in _TRANSFER_SETUPS
        if self.checkpoint is not None and not reads_checkpoint:
            raise ValueError(
                f"checkpoint={self.checkpoint!r} is read by setup={' or '.join(_TRANSFER_SETUPS)} with "
                f"pretrain='{transfer.CHECKPOINT}' (got setup={self.setup!r}, pretrain={self.pretrain!r})"
            )
        SETUPS[self.setup].check(self)

    @property
    def method_label(self) -> str:
        """The name a comparison shows for this run's method."""
        return SETUPS[self.setup].method_label(self)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["seeds"] = list(self.seeds)
        return values

    def replaced(self, **changes: Any) -> ExperimentConfig:
        """This config with ``changes``, validated as :meth:`from_dict` validates."""
        return ExperimentConfig.from_dict({**self.to_dict(), **changes})

    def run_by(self, method_label: str) -> ExperimentConfig:
        """The same experiment run by ``"supervised"`` or a semi-supervised method (with its
        default hyperparameters, and the same views: see :func:`_view_settings`); this config
        itself for its own :attr:`method_label`."""
        if method_label == self.method_label:
            return self
        validate.choice("method", method_label, sorted(semisupervised.METHODS))
        setup = "supervised" if method_label == "supervised" else "semi_supervised"
        return self.replaced(setup=setup, method=method_label, method_kwargs=_view_settings(self, method_label))


# ------------------------------------------------------------------------ presets

_FIXMATCH_PROTOCOL: dict[str, Any] = {
    # USB's classic FixMatch configuration (config/classic_cv/fixmatch/*.yaml in
    # microsoft/Semi-supervised-learning), after Sohn et al. (2020).
    "setup": "semi_supervised",
    "method": "fixmatch",  # τ = 0.95 is FixMatch's default threshold
    # μ = 7 unlabeled per labeled example, λ_u = 1; flip + reflect-padded crop (weak) and
    # RandAugment over the paper's full ranges, then Cutout (strong)
    "method_kwargs": {"mu": 7, "unlabeled_weight": 1.0, "flip": True, "policy": "randaugment", "magnitude": 1.0},
    "model": "wrn",
    "model_kwargs": {"depth": 28, "widen": 2},
    "optimizer": "nesterov",  # momentum 0.9 (optim's default)
    "learning_rate": 0.03,
    "schedule": "fixmatch_cosine",  # lr * cos(7πk / 16K)
    "weight_decay": 5e-4,  # on kernels only: USB exempts biases and BatchNorm
    "weight_decay_mode": "l2",
    "batch_size": 64,
    "steps": 2**20,
    "eval_every": 5120,
    "ema_decay": 0.999,
    "labels_per_class": 4,
    "seeds": [0, 1, 2],  # USB reports mean ± std over three seeds
}

PRESETS: dict[str, dict[str, Any]] = {
    # Label splits of the papers, as labels_per_class: CIFAR-10 4 / 25 / 400 (40 / 250 / 4000 labels);
    # CIFAR-100 4 / 25 / 100 (400 / 2500 / 10000); SVHN and STL-10 4 / 25 / 100 (40 / 250 / 1000).
    "fixmatch_cifar10": {**_FIXMATCH_PROTOCOL, "dataset": "cifar10"},
    # WRN-28-8 and weight decay 1e-3 for CIFAR-100, as in the FixMatch paper.
    "fixmatch_cifar100": {
        **_FIXMATCH_PROTOCOL, "dataset": "cifar100", "model_kwargs": {"depth": 28, "widen": 8}, "weight_decay": 1e-3,
    },  # fmt: skip
    # USB also adds SVHN's 531k `extra` images (svhn(extra=True)); this preset uses the training set,
    # and dataset_kwargs={"extra": True} adds them (6.5 GB as float32).
    "fixmatch_svhn": {**_FIXMATCH_PROTOCOL, "dataset": "svhn"},
    # 96x96 images; the unlabeled batches come from the training images and the 100k unlabeled ones
    # (Dataset.unlabeled_in_pool), as in USB. The views scale with the image: the weak crop pads 12.5%
    # of each side, 12 pixels as USB's crop_ratio 0.875 gives, and RandAugment's translations and
    # Cutout are fractions of the side. The model is WRN-28-2, as the FixMatch paper's
    # CIFAR-10 runs use; USB's STL-10 table uses wrn_var_37_2 (a fourth stage of 256 channels and a
    # strided first stage), which lab's wrn does not build, so these runs do not compare one-to-one with it.
    "fixmatch_stl10": {**_FIXMATCH_PROTOCOL, "dataset": "stl10"},
}


def _method_settings(name: str) -> Collection[str]:
    return semisupervised.hyperparameters_of(semisupervised.METHODS[name]) if name in semisupervised.METHODS else ()


def _model_settings(name: str) -> Collection[str]:
    return models.default_hyperparameters(name) if name in models.MODELS else ()


def _dataset_settings(name: str) -> Collection[str]:
    # data_dir and download are fields of their own: they also reach the datasets a setup loads besides;
    # a text dataset's tokenizer is a checkpoint's, set by the checkpoint field.
    own_fields = ("data_dir", "download", "tokenizer")
    return [key for key in data.loader_keywords(name) if key not in own_fields] if name in data.DATASETS else ()


# Settings fields, the field naming what they configure, and the settings that thing accepts.
_SETTINGS_OF: dict[str, tuple[str, Callable[[str], Collection[str]]]] = {
    "method_kwargs": ("method", _method_settings),
    "model_kwargs": ("model", _model_settings),
    "dataset_kwargs": ("dataset", _dataset_settings),
}


def resolve_preset(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with its ``"preset"`` key replaced by that preset's fields, ``values`` winning.

    ``method_kwargs``, ``model_kwargs`` and ``dataset_kwargs`` given with a preset are merged
    into the preset's key by key: ``method_kwargs={"threshold": 0.9}`` changes the threshold and
    keeps the preset's augmentations. If ``values`` choose another method (model, dataset), the
    preset's settings that it does not accept are dropped: ``method=freematch`` keeps
    FixMatch's augmentations and μ, ``model=logreg`` drops the WRN's depth and width.
    Without a ``"preset"`` key, ``values`` as they are.
    """
    values = dict(values)
    if "preset" not in values:
        return values
    name = values.pop("preset")
    validate.choice("preset", name, tuple(PRESETS))
    resolved = json.loads(json.dumps(PRESETS[name]))  # a deep copy: the table is never changed
    for settings, (owner, accepted_by) in _SETTINGS_OF.items():
        if settings in resolved and owner in values and values[owner] != resolved.get(owner):
            accepted = accepted_by(values[owner])
            resolved[settings] = {key: value for key, value in resolved[settings].items() if key in accepted}
    for field, value in values.items():
        if field in _SETTINGS_OF and field in resolved:
            value = {**resolved[field], **validate.coerce(field, value, dict)}
        resolved[field] = value
    return resolved


def validate_parameters(parameters: Mapping[str, Any]) -> None:
    """Validate notebook/sweep parameters that are experiment fields (others pass)."""
    known = {field.name for field in dataclasses.fields(ExperimentConfig)}
    ExperimentConfig.from_dict({k: v for k, v in parameters.items() if k in known})


def _distinct(name: str, values: Sequence[int]) -> None:
    if len(set(values)) != len(values):
        raise ValueError(f"{name} must be distinct, got {list(values)}")


# ------------------------------------------------------------------------- setups


ModuleFactory = Callable[[int], nnx.Module]  # seed -> a freshly initialised classifier
FeatureMap = Callable[[np.ndarray], np.ndarray]  # inputs -> a frozen backbone's features of them


def _fresh_classifier(config, dataset: data.Dataset, backbone: None = None) -> ModuleFactory:
    """A :mod:`lab.models` classifier initialised from the seed alone (``config`` is an
    :class:`ExperimentConfig` or a :class:`TrainConfig`: both name ``model`` and ``model_kwargs``)."""

    def make_module(seed: int) -> nnx.Module:
        return models.make_model(
            config.model, dataset.input_shape, dataset.num_classes, seed=seed,
            **dataset.model_inputs, **config.model_kwargs,
        )

    return make_module


def _nothing(config: ExperimentConfig) -> None:
    return None


def _no_datasets(config: ExperimentConfig) -> tuple[str, ...]:
    return ()


def _no_backbone(config: ExperimentConfig, progress: bool) -> None:
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one setup trains: the pieces :func:`run` assembles, each a function of the config.

    ``run`` is the same for every setup (load, split, pretrain, build, fit, evaluate);
    what differs is listed here, once.
    """

    method_label: Callable[[ExperimentConfig], str]  # the name a comparison shows
    check: Callable[[ExperimentConfig], None]  # setup-specific validation, before any data is loaded
    # (config, input shape, the special ids of a text dataset's tokenizer: Dataset.special_ids)
    objective: Callable[[ExperimentConfig, tuple[int, ...], SpecialIds | None], train.Objective]
    # (config, progress): a backbone pretrained (or read from the cache), with a progress bar when progress
    pretrain: Callable[[ExperimentConfig, bool], transfer.Backbone | None] = _no_backbone
    classifier: Callable[[ExperimentConfig, data.Dataset, Any], ModuleFactory] = _fresh_classifier  # pretrained too
    param_groups: Callable[[ExperimentConfig], Mapping[str, str | float] | None] = _nothing
    other_datasets: Callable[[ExperimentConfig], tuple[str, ...]] = _no_datasets  # loaded besides config.dataset
    # (config, pretrained) -> the frozen backbone's feature map when only a head trains on it and the backbone
    # can embed once (transfer.Backbone.embed); the head then trains on those features (see _trainee)
    frozen_features: Callable[[ExperimentConfig, Any], FeatureMap | None] = lambda config, pretrained: None


@dataclasses.dataclass(frozen=True)
class Trainee:
    """What a run trains: on which inputs (the dataset's examples, or a frozen backbone's features of
    them), which module, under which objective and parameter groups."""

    dataset: data.Dataset
    make_module: ModuleFactory
    objective: train.Objective
    param_groups: Mapping[str, str | float] | None


def _trainee(plan: Plan, config: ExperimentConfig, dataset: data.Dataset, pretrained: Any) -> Trainee:
    """The plan's classifier, objective and parameter groups on ``dataset``; or, where the plan has a frozen
    feature map, the classifier's head alone on the features of the training and test examples, computed
    once: the same head, initial values and batches, unaugmented, as a frozen encoder in eval mode gives."""
    embed = plan.frozen_features(config, pretrained)
    if embed is None:
        return Trainee(
            dataset, plan.classifier(config, dataset, pretrained),
            plan.objective(config, dataset.input_shape, dataset.special_ids), plan.param_groups(config),
        )  # fmt: skip
    features = embed(np.concatenate([dataset.x_train, dataset.x_test]))
    embedded = dataclasses.replace(
        dataset, x_train=features[: len(dataset.x_train)], x_test=features[len(dataset.x_train) :],
        vocab_size=None, tokenizer=None, special_ids=None, x_unlabeled=None, unlabeled_in_pool=False,
    )  # fmt: skip
    return Trainee(
        embedded,
        lambda seed: pretrained.probe_head(dataset.num_classes, seed=seed),
        semisupervised.Supervised(input_shape=embedded.input_shape, augmentation="none"),
        None,
    )


# Settings of method_kwargs that say how examples are seen: properties of the data rather than of the method.
_VIEWS = ("flip", "policy", "magnitude")


def _view_settings(config: ExperimentConfig, method: str = "supervised") -> dict[str, Any]:
    """The view settings of ``config.method_kwargs`` that ``method`` takes. A preset's supervised
    baseline thus sees the weak view its method sees (CIFAR mirrored), and another threshold
    method the same strong view (RandAugment at the preset's magnitude)."""
    taken = semisupervised.hyperparameters_of(semisupervised.METHODS[method])
    return {name: value for name, value in config.method_kwargs.items() if name in _VIEWS and name in taken}


def _check_view_settings(config: ExperimentConfig) -> None:
    semisupervised.check_hyperparameters("supervised", **_view_settings(config))


def _weakly_augmented_supervised(
    config: ExperimentConfig, input_shape: tuple[int, ...], special_ids: SpecialIds | None = None
) -> train.Objective:
    return semisupervised.Supervised(
        input_shape=input_shape, special_ids=special_ids, augmentation="weak", **_view_settings(config)
    )


def _pretrained(config: ExperimentConfig, progress: bool) -> transfer.Backbone:
    if config.pretrain == transfer.CHECKPOINT:
        return transfer.from_checkpoint(_checkpoint(config), **config.model_kwargs)
    return transfer.pretrain(
        _pretrain_config(config), load_dataset=functools.partial(_load_named, config), progress=progress
    )


# What pretrain_kwargs set for a checkpoint: the length its tokenizer cuts texts to and its pooling
# (checkpoints.model_of refuses those a checkpoint does not take: a ViT has no max_length).
_CHECKPOINT_KWARGS = ("max_length", "pooling", "normalize")


def _checkpoint(config: ExperimentConfig) -> checkpoints.Checkpoint:
    return checkpoints.load(config.checkpoint, **config.pretrain_kwargs)


def _check_checkpoint(config: ExperimentConfig) -> None:
    """A checkpoint run's settings, and the checkpoint's config.json, before any data is loaded."""
    if config.checkpoint is None:
        raise ValueError(
            f"pretrain='{transfer.CHECKPOINT}' reads a Hugging Face checkpoint: set checkpoint to its folder "
            "or hub id (e.g. checkpoint=sentence-transformers/all-MiniLM-L6-v2)"
        )
    unknown = sorted(set(config.pretrain_kwargs) - set(_CHECKPOINT_KWARGS))
    if unknown:
        raise ValueError(f"unknown pretrain_kwargs {unknown} for a checkpoint; allowed: {list(_CHECKPOINT_KWARGS)}")
    model = checkpoints.model_of(config.checkpoint, **config.pretrain_kwargs)
    if config.model != model:
        raise ValueError(
            f"checkpoint {config.checkpoint!r} is a {model!r} model: set model={model!r} (got {config.model!r})"
        )


def _adapted_classifier(config: ExperimentConfig, dataset: data.Dataset, backbone: transfer.Backbone) -> ModuleFactory:
    return lambda seed: backbone.classifier(dataset.num_classes, seed=seed, model_inputs=dataset.model_inputs)


def _adaptation_param_groups(config: ExperimentConfig) -> dict[str, str | float]:
    return transfer.adaptation_param_groups(config.adaptation, config.backbone_lr_multiplier)


def _probed_features(config: ExperimentConfig, backbone: transfer.Backbone) -> FeatureMap | None:
    return backbone.embed if config.adaptation == "linear_probe" else None


def _pretraining_datasets(config: ExperimentConfig) -> tuple[str, ...]:
    source = config.pretrain_kwargs.get("source_dataset")
    return (source,) if source else ()


def _check_method(config: ExperimentConfig) -> None:
    semisupervised.check_hyperparameters(config.method, **config.method_kwargs)


def _semi_supervised_objective(
    config: ExperimentConfig, input_shape: tuple[int, ...], special_ids: SpecialIds | None = None
) -> train.Objective:
    return semisupervised.make_method(
        config.method, input_shape=input_shape, special_ids=special_ids, **config.method_kwargs
    )


def _check_pretraining(config: ExperimentConfig) -> None:
    if config.dataset_kwargs:
        raise ValueError(
            f"dataset_kwargs={dict(config.dataset_kwargs)} would change the data a cached backbone was pretrained on "
            "without changing its cache key; transfer runs take the dataset's defaults"
        )
    if config.pretrain == transfer.CHECKPOINT:
        _check_checkpoint(config)
    else:
        _pretrain_config(config)
    _adaptation_param_groups(config)


def _check_transfer(config: ExperimentConfig) -> None:
    _check_pretraining(config)
    _check_view_settings(config)


def _check_transfer_semi_supervised(config: ExperimentConfig) -> None:
    _check_pretraining(config)
    _check_method(config)


# The pieces of a plan that adapts a pretrained backbone, whatever its objective.
_ADAPTED_BACKBONE: dict[str, Callable] = {
    "pretrain": _pretrained,
    "classifier": _adapted_classifier,
    "param_groups": _adaptation_param_groups,
    "other_datasets": _pretraining_datasets,
}

_TRANSFER_SETUPS = ("transfer", "transfer_semi_supervised")

SETUPS: dict[str, Plan] = {
    # the labeled examples only, seen at weak augmentation like the methods see them
    "supervised": Plan(
        method_label=lambda config: "supervised",
        check=_check_view_settings,
        objective=_weakly_augmented_supervised,
    ),
    # the labeled examples plus the unlabeled pool, through a method of lab.semisupervised
    "semi_supervised": Plan(
        method_label=lambda config: config.method,
        check=_check_method,
        objective=_semi_supervised_objective,
    ),
    # a backbone pretrained by lab.transfer (cached), adapted on the labeled examples
    # (a linear probe of a backbone that embeds once trains its head on the embeddings: see _trainee)
    "transfer": Plan(
        method_label=lambda config: f"{config.pretrain}+{config.adaptation}",
        check=_check_transfer,
        objective=_weakly_augmented_supervised,
        frozen_features=_probed_features,
        **_ADAPTED_BACKBONE,
    ),
    # the same pretrained backbone, adapted on the labeled examples and the unlabeled pool by a
    # method of lab.semisupervised, as USB adapts pretrained models
    "transfer_semi_supervised": Plan(
        method_label=lambda config: f"{config.pretrain}+{config.adaptation}+{config.method}",
        check=_check_transfer_semi_supervised,
        objective=_semi_supervised_objective,
        **_ADAPTED_BACKBONE,
    ),
}


# ---------------------------------------------------------------------------- run


@dataclasses.dataclass
class Result:
    """What a run produced, JSON-ready. Per-seed values are lists aligned with ``seeds``."""

    config: dict[str, Any]
    seeds: list[int]
    metrics: dict[str, list[float]]  # final test metrics per seed: accuracy, macro_f1, ece, ...
    curves: dict[str, list]  # "step", then per evaluation one list per seed (test_accuracy, train_loss, ...)
    wall_time_s: dict[str, float]  # pretrain (0 on a cache hit), compile, train
    environment: dict[str, Any]  # library versions, git commit, host, devices (lab.provenance.environment)
    # XLA's estimate for every seed at once and the limit (lab.memory.limit), in bytes; the seeds trained at once
    memory: dict[str, int] = dataclasses.field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean and (population) standard deviation over seeds of each final metric."""
        return {
            name: {"mean": float(np.mean(values)), "std": float(np.std(values))} for name, values in self.metrics.items()
        }

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON, as ``lab run --output`` writes it: the fields above, and under ``"record"``
        the :class:`~lab.record.Record` of :meth:`record`, as sweeps and the results store keep it."""
        return {**dataclasses.asdict(self), "record": self.record().to_dict()}

    def record(self) -> Record:
        """The run's record, the schema that notebooks (:func:`lab.record.emit`), sweeps and reports share."""
        return Record.from_dict(
            {
                "dataset": self.config["dataset"],
                "setup": self.config["setup"],
                "method": ExperimentConfig.from_dict(self.config).method_label,
                "labels_per_class": self.config["labels_per_class"],
                "seeds": self.seeds,
                "metrics": self.metrics,
                "curves": {"step": self.curves["step"], "accuracy": self.curves["test_accuracy"]},
                "wall_time_s": self.wall_time_s,
            }
        )

    def seed_history(self, index: int) -> list[dict[str, Any]]:
        """The history of seed ``seeds[index]``: a row per evaluation of :attr:`curves` (``step``, then its
        value of each curve), the last row with its final test metrics too (``test_macro_f1``, ...)."""
        names = [name for name in self.curves if name != "step"]
        rows = [
            {"step": step, **{name: self.curves[name][row][index] for name in names}}
            for row, step in enumerate(self.curves["step"])
        ]
        return tensorboard.with_final(rows, {name: values[index] for name, values in self.metrics.items()})

    def tensorboard_runs(self, directory: str | Path) -> dict[Path, list[dict[str, Any]]]:
        """Each seed's :meth:`seed_history` by the folder its TensorBoard logs go to, ``directory/seed_<seed>``
        (one run per seed, so that their curves overlay): write them with :func:`lab.tensorboard.write`."""
        return {Path(directory) / f"seed_{seed}": self.seed_history(index) for index, seed in enumerate(self.seeds)}

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON, atomically (see :mod:`lab.files`)."""
        return files.write_atomic(path, json.dumps(self.to_dict(), indent=2))


# Called once per group of seeds trained together (see _seed_groups), in seed order, with the trained classifier's
# graphs, the group's stacked final state, the dataset and how many of the group's seeds are real (the first ones;
# the rest repeat a seed to fill the group). Active learning scores the pool with them.
TrainedCallback = Callable[[train.Graphs, train.TrainState, data.Dataset, int], None]


def run(
    config: ExperimentConfig | Mapping[str, Any],
    *,
    progress: bool = True,
    labeled: Sequence[Sequence[int]] | None = None,
    trained: TrainedCallback | None = None,
) -> Result:
    """Train and evaluate ``config`` for every seed in ``config.seeds``, side by side, on ``config.platform``.

    Seeds that would need more memory together than :func:`lab.memory.limit` train in groups that fit,
    to the same numbers (see :func:`_seed_groups`). ``labeled`` gives each seed's labeled training indices
    instead of its stratified draw (``labels_per_class`` is then not used); ``trained`` is called with the
    trained seeds (see :data:`TrainedCallback`)."""
    if isinstance(config, ExperimentConfig):
        config.validate()  # built directly, not by from_dict, which validates
    else:
        config = ExperimentConfig.from_dict(config)
    with devices.use(config.platform) as platform_devices:
        return _run(config, progress, platform_devices[0], labeled, trained)


def _splits(
    config: ExperimentConfig, dataset: data.Dataset, labeled: Sequence[Sequence[int]] | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each seed's ``(labeled, rest)`` training indices: its stratified draw, or the ``labeled`` indices given."""
    if labeled is None:
        return [data.labeled_split(dataset.y_train, config.labels_per_class, seed) for seed in config.seeds]
    if len(labeled) != len(config.seeds):
        raise ValueError(f"labeled must give one index set per seed ({len(config.seeds)}), got {len(labeled)}")
    n = len(dataset.y_train)
    splits = []
    for indices in labeled:
        indices = np.asarray(indices, np.int64)
        if indices.size == 0 or len(np.unique(indices)) != indices.size or not np.all((0 <= indices) & (indices < n)):
            raise ValueError(
                f"labeled index sets must be distinct training indices in 0..{n - 1}, got {indices.tolist()}"
            )
        splits.append((np.sort(indices), np.setdiff1d(np.arange(n), indices)))
    return splits


def _run(
    config: ExperimentConfig,
    progress: bool,
    device: jax.Device,
    labeled: Sequence[Sequence[int]] | None = None,
    trained: TrainedCallback | None = None,
) -> Result:
    train.enable_compilation_cache()
    plan = SETUPS[config.setup]
    dataset = _load(config)
    dataset.check_batch_size(config.batch_size)
    dataset.check_classes(config.labels_per_class if labeled is None else 1)
    splits = _splits(config, dataset, labeled)

    tic = time.perf_counter()
    trainee = _trainee(plan, config, dataset, plan.pretrain(config, progress))
    # The pretraining and a frozen probe's embeddings (0 on cache hits).
    wall = {"pretrain": time.perf_counter() - tic, "compile": 0.0, "train": 0.0}
    dataset, make_module, objective = trainee.dataset, trainee.make_module, trainee.objective
    tx = _optimizer(config, param_groups=trainee.param_groups)
    model, _, _ = train.Graphs.split(nnx.eval_shape(lambda: make_module(0)))
    # One compiled, vmapped initialisation per group of seeds: built eagerly, every
    # initializer would compile on its own, which costs more than the training.
    initial_states = jax.jit(jax.vmap(_initial_state(make_module, objective, tx, config.ema_decay)))
    pools = _pools(dataset, splits, with_unlabeled_split="unlabeled" in objective.batch_sizes(config.batch_size))
    test_program = _test_logits_program(model, dataset.x_test, seed_axis=True)
    tic = time.perf_counter()
    groups, memory_use = _seed_groups(config, model, initial_states, tx, objective, pools, test_program, device)
    wall["compile"] += time.perf_counter() - tic  # the estimate compiles the training program (fit reuses it)
    test_logits = _test_logits(test_program)

    def evaluate(state: train.TrainState) -> dict[str, np.ndarray]:
        per_seed = [metrics.accuracy(seed_logits, dataset.y_test) for seed_logits in test_logits(state)]
        return {"test_accuracy": np.array(per_seed)}

    def train_group(rows: np.ndarray, kept: int) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
        """The history and final test logits of the first ``kept`` seeds of ``rows``; a function, so that
        a group's train state is freed before the next group's is made."""
        # A run keeps no checkpoints: its last finite state ends with the process.
        fit = _fit(
            config, model, initial_states(jnp.asarray(config.seeds)[rows]), tx, objective,
            {name: _seed_rows(pool, rows) for name, pool in pools.items()}, evaluate, progress,
            kept=lambda error: "Nothing was saved", seed_axis=True, label=f"train {config.method_label}",
        )  # fmt: skip
        if trained is not None:
            trained(model, fit.state, dataset, kept)
        for phase, seconds in fit.wall_time_s.items():
            wall[phase] += seconds
        history = [{name: _kept_seeds(value, kept) for name, value in row.items()} for row in fit.history]
        return history, list(test_logits(fit.state)[:kept])

    histories, final_logits = [], []
    for rows, kept in groups:
        group_history, group_logits = train_group(rows, kept)
        histories.append(group_history)
        final_logits += group_logits
    history = [_joined_rows(rows) for rows in zip(*histories, strict=True)]
    per_seed = [metrics.classification_metrics(seed_logits, dataset.y_test) for seed_logits in final_logits]
    return Result(
        config=config.to_dict(),
        seeds=list(config.seeds),
        metrics={name: [row[name] for row in per_seed] for name in per_seed[0]},
        curves=_curves(history),
        wall_time_s={name: round(seconds, 3) for name, seconds in wall.items()},
        environment=provenance.environment(_SOURCE_DIR),
        memory=memory_use,
    )


# The fields of a pool that hold one row per seed (see _pools); the others are the data, shared by all seeds.
_PER_SEED_FIELDS = ("index", "count")


def _seed_groups(
    config: ExperimentConfig,
    model: train.Graphs,
    initial_states: Callable[[jax.Array], train.TrainState],
    tx: optax.GradientTransformation,
    objective: train.Objective,
    pools: train.Pools,
    test_program: Callable,
    device: jax.Device,
) -> tuple[list[tuple[np.ndarray, int]], dict[str, int]]:
    """The groups of seeds to train one after another, as (rows of ``config.seeds``, how many of them to keep),
    so that each group fits in :func:`lab.memory.limit`; and the memory figures (bytes) behind them.

    The estimate is XLA's, compiled from shapes alone, of the larger of training (:func:`lab.train.fit_memory`)
    and evaluating (``test_program``'s own memory beside the three copies of the state that ``fit`` then
    holds, and the data), for every seed at once and, when that does not fit, for one seed, to learn what
    each seed adds. Every group has the same size,
    so one program serves them all: the last is filled up with repeats of its first seed, whose results
    are dropped. Each seed trains as it would with all the others; XLA may round a program of another
    number of seeds differently, by a few ulps (tests/test_experiment.py checks this on the CPU)."""
    count = len(config.seeds)

    def needed_by(rows: np.ndarray) -> int:
        states = jax.eval_shape(initial_states, jnp.asarray(config.seeds)[rows])
        group_pools = {name: _seed_rows(pool, rows) for name, pool in pools.items()}
        training = train.fit_memory(
            model, states, tx, objective, group_pools, steps=config.steps, batch_size=config.batch_size,
            eval_every=config.eval_every, seed_axis=True, precision=config.precision,
        )  # fmt: skip
        evaluation = test_program.lower(states.eval_params, states.model_state).compile()
        evaluating = 3 * memory.tree_bytes(states) + memory.tree_bytes(group_pools)
        return max(training, evaluating + memory.compiled_bytes(evaluation, arguments=False))

    needed, allowed = needed_by(np.arange(count)), memory.limit(device)
    # One seed alone is compiled only when all do not fit, to learn what a seed adds.
    needed_by_one = needed if needed <= allowed or count == 1 else needed_by(np.arange(1))
    size = memory.seeds_per_group(count, needed, needed_by_one, allowed)
    if size == 0:
        raise ValueError(
            f"one seed of this run needs about {memory.describe(needed_by_one)} of memory, more than the limit "
            f"of {memory.describe(allowed)}; raise it with {memory.LIMIT_VARIABLE}=<size> (e.g. "
            f"{memory.LIMIT_VARIABLE}={math.ceil(needed_by_one / 1e9)}GB) if the device has the memory, "
            "or train a smaller model or batch"
        )
    if size < count:
        sys.stderr.write(
            f"lab: {count} seeds need about {memory.describe(needed)} of memory, more than the limit of "
            f"{memory.describe(allowed)} ({memory.LIMIT_VARIABLE}); training them in {math.ceil(count / size)} "
            f"groups of {size}\n"
        )
    groups = []
    for start in range(0, count, size):
        rows = np.arange(start, min(start + size, count))
        groups.append((np.concatenate([rows, np.full(size - len(rows), start)]), len(rows)))
    return groups, {"estimate_bytes": needed, "limit_bytes": allowed, "seeds_per_group": size}


def _seed_rows(pool: Mapping[str, jax.Array], rows: np.ndarray) -> dict[str, jax.Array]:
    """``pool`` for the seeds in ``rows`` (of its per-seed fields), sharing its data."""
    return {name: array[rows] if name in _PER_SEED_FIELDS else array for name, array in pool.items()}


def _kept_seeds(value: Any, kept: int) -> Any:
    """A history value of a group without its filler seeds: per-seed lists cut to ``kept``; the step as it is."""
    return value[:kept] if isinstance(value, list) else value


def _joined_rows(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One history row of the same row of every group: the step, and each per-seed list in seed order."""
    return {name: [v for row in rows for v in row[name]] if isinstance(value, list) else value
            for name, value in rows[0].items()}  # fmt: skip


# ------------------------------------------------- what run and lab train share


def _optimizer(config: ExperimentConfig | TrainConfig, **options: Any) -> optax.GradientTransformation:
    """The optimizer of the fields both configs have; ``options`` are those only one of them has."""
    return optim.make_optimizer(
        config.optimizer,
        config.learning_rate,
        schedule=config.schedule,
        total_steps=config.steps,
        weight_decay=config.weight_decay,
        weight_decay_mode=config.weight_decay_mode,
        **options,
    )


def _initial_state(
    make_module: ModuleFactory, objective: train.Objective, tx: optax.GradientTransformation, ema_decay: float
) -> Callable[[int | jax.Array], train.TrainState]:
    """seed -> the train state of a fresh classifier (vmap it for several seeds)."""

    def initial_state(seed: int | jax.Array) -> train.TrainState:
        _, params, model_state = nnx.split(make_module(seed), nnx.Param, ...)
        objective_state = objective.init_objective_state(params, model_state)
        return train.create_train_state(
            params, model_state, tx, seed, objective_state=objective_state, ema_decay=ema_decay
        )

    return initial_state


def _test_logits_program(model: train.Graphs, x_test: np.ndarray, *, seed_axis: bool) -> Callable:
    """The jitted ``(eval params, model state) -> logits of the test inputs`` (over seeds with ``seed_axis``)."""
    x_test = jnp.asarray(x_test)

    def logits(params: nnx.State, model_state: nnx.State) -> jax.Array:
        return train.predict(model, params, model_state, x_test)

    return jax.jit(jax.vmap(logits) if seed_axis else logits)


def _test_logits(program: Callable) -> Callable[[train.TrainState], np.ndarray]:
    """state -> the logits of the test inputs (by ``program``, :func:`_test_logits_program`) under its
    evaluation weights (the EMA's, when it keeps one)."""
    return lambda state: np.asarray(program(state.eval_params, state.model_state))


def _fit(
    config: ExperimentConfig | TrainConfig,
    model: train.Graphs,
    state: train.TrainState,
    tx: optax.GradientTransformation,
    objective: train.Objective,
    pools: train.Pools,
    evaluate: Callable[[train.TrainState], dict],
    progress: bool,
    *,
    kept: Callable[[train.NonFiniteLossError], str],
    **options: Any,
) -> train.FitResult:
    """:func:`lab.train.fit` for the config's steps, batch size, evaluations and precision; if the loss
    turns non-finite, the error says what ``kept(error)`` returns (what was saved, if anything)."""
    try:
        return train.fit(
            model,
            state,
            tx,
            objective,
            pools,
            steps=config.steps,
            batch_size=config.batch_size,
            eval_every=min(config.eval_every, config.steps),
            evaluate=evaluate,
            precision=config.precision,
            progress=progress,
            **options,
        )
    except train.NonFiniteLossError as error:
        raise train.NonFiniteLossError(error.step, error.last_finite_loss, error.state, kept(error)) from None


# ------------------------------------------------------- lab train: a whole dataset


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Supervised training on a whole dataset (``lab train``)."""

    dataset: str = "digits"
    model: str = "mlp"
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    weight_decay_mode: str = "decoupled"  # or "l2", as ExperimentConfig
    ema_decay: float = 0.0  # > 0: evaluate an EMA of the weights with this decay, as ExperimentConfig
    clip_norm: float | None = None
    label_smoothing: float = 0.0
    steps: int = 2000
    batch_size: int = 64
    eval_every: int = 500
    seed: int = 0
    data_parallel: bool = False
    precision: str = "float32"
    platform: str = "auto"  # lab.devices: data parallelism spans this platform's devices


def train_and_evaluate(
    config: TrainConfig,
    workdir: str | Path | None = None,
    *,
    checkpoint_every: int = 500,
    progress: bool = True,
) -> dict:
    """Train ``config.model`` on ``config.dataset`` and return JSON-ready results.

    Not :func:`run`: it trains on every training example, one seed, with warmup,
    clipping, label smoothing, data parallelism and checkpoints, none of which a run
    has; it shares the supervised plan's classifier and its objective, unaugmented, and a
    run's optimizer, weight decay mode and EMA of the weights (``ema_decay`` > 0: evaluated
    on the average, as :class:`ExperimentConfig`), through the same code. With ``workdir``,
    the config is recorded in ``workdir/config.json`` and checkpoints go to
    ``workdir/checkpoints`` every ``checkpoint_every`` steps and at the end; a run
    resumes from the latest one, and a workdir refuses a run of another config. If
    the loss turns NaN/Inf, the last finite state is saved there as a checkpoint.
    """
    with devices.use(config.platform) as platform_devices:
        return _train_and_evaluate(config, workdir, checkpoint_every, progress, platform_devices)


def _train_and_evaluate(
    config: TrainConfig, workdir: str | Path | None, checkpoint_every: int, progress: bool, platform_devices: list
) -> dict:
    train.enable_compilation_cache()
    dataset = data.load(config.dataset)
    dataset.check_batch_size(config.batch_size)
    dataset.check_classes()
    make_module = SETUPS["supervised"].classifier(config, dataset, None)
    # The supervised objective on the inputs as they are, as `lab train` has always trained.
    objective = semisupervised.Supervised(
        input_shape=dataset.input_shape, augmentation="none", label_smoothing=config.label_smoothing
    )
    tx = _optimizer(config, warmup_steps=config.warmup_steps, clip_norm=config.clip_norm)
    model, _, _ = train.Graphs.split(nnx.eval_shape(lambda: make_module(0)))
    state = _initial_state(make_module, objective, tx, config.ema_decay)(config.seed)
    pools = {"labeled": {"x": jnp.asarray(dataset.x_train), "y": jnp.asarray(dataset.y_train)}}
    test_logits = _test_logits(_test_logits_program(model, dataset.x_test, seed_axis=False))

    def evaluate(state: train.TrainState) -> dict[str, float]:
        return {"test_accuracy": metrics.accuracy(test_logits(state), dataset.y_test)}

    with contextlib.ExitStack() as claimed:
        # Claimed only once the config has passed every check above, so a refused config is never recorded.
        checkpoints = None
        if workdir is not None:
            claimed_workdir = claimed.enter_context(_claimed_workdir(Path(workdir), config))
            checkpoints = train.Checkpointer(claimed_workdir / "checkpoints")
            claimed.callback(checkpoints.close)

        def kept(error: train.NonFiniteLossError) -> str:
            if checkpoints is None:
                return "Nothing was saved (no --workdir)"
            if checkpoints.latest_step() != error.step:  # it may have diverged right after a checkpoint
                checkpoints.save(error.state)
            return f"The last finite state (step {error.step}) is saved in {checkpoints.directory / str(error.step)}"

        result = _fit(
            config, model, state, tx, objective, pools, evaluate, progress, kept=kept,
            checkpoints=checkpoints,
            checkpoint_every=None if checkpoints is None else checkpoint_every,
            parallel=parallel.DataParallel(parallel.data_mesh(platform_devices)) if config.data_parallel else None,
        )  # fmt: skip
    final = metrics.classification_metrics(test_logits(result.state), dataset.y_test)
    if workdir is not None:
        tensorboard.write_or_say({workdir: tensorboard.with_final(result.history, final)})
    return {
        "config": dataclasses.asdict(config),
        "dataset": {
            "name": dataset.name, "source": dataset.source, "train": len(dataset.y_train), "test": len(dataset.y_test),
        },  # fmt: skip
        "test": final,
        "history": result.history,
        "wall_time_s": result.wall_time_s,
        "devices": len(platform_devices) if config.data_parallel else 1,
    }


# Fields that do not change what is trained, so a workdir resumes across them: eval_every
# only moves where evaluations (and chunk ends) fall, and chunking does not change the numbers;
# platform moves the same training to another device (to float tolerance), e.g. a checkpoint
# taken on a laptop's CPU resumes on a GPU.
_RESUMABLE_ACROSS = ("eval_every", "platform")


@contextlib.contextmanager
def _claimed_workdir(workdir: Path, config: TrainConfig) -> Iterator[Path]:
    """Hold ``workdir`` for this process (its ``lock``), and record ``config`` in ``workdir/config.json``
    or check it against the one recorded there.

    Two processes training in one workdir would write the same checkpoints; the second is refused,
    naming the first (a lock left by a killed process does not count, see :func:`lab.processes.exclusive`).
    Resuming another config's checkpoints would report that config's model as this one's.
    """
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"workdir {workdir} is not a folder (a file is in the way); choose a folder path") from None
    with processes.exclusive(workdir / "lock", f"workdir {workdir}"):
        _check_record(workdir, config)
        yield workdir


def _check_record(workdir: Path, config: TrainConfig) -> None:
    record = workdir / "config.json"
    current = json.loads(json.dumps(dataclasses.asdict(config)))  # as JSON reads it back: tuples become lists
    if not record.exists():
        if (workdir / "checkpoints").exists():
            raise ValueError(
                f"workdir {workdir} has checkpoints but no config.json recording their config; "
                "use another --workdir (or delete its checkpoints)"
            )
        files.write_atomic(record, json.dumps(current, indent=2))
        return
    # A field added since the record was written stands at its default there.
    recorded = {**json.loads(json.dumps(dataclasses.asdict(TrainConfig()))), **json.loads(record.read_text())}
    differences = [
        f"{name}: {recorded.get(name)!r} -> {value!r}"
        for name, value in current.items()
        if name not in _RESUMABLE_ACROSS and recorded.get(name) != value
    ]
    if differences:
        raise ValueError(
            f"workdir {workdir} holds a run of another config ({'; '.join(differences)}); "
            "use another --workdir for this config, or the recorded one to resume"
        )


def _pools(
    dataset: data.Dataset, splits: Sequence[tuple[np.ndarray, np.ndarray]], *, with_unlabeled_split: bool
) -> dict[str, dict[str, jax.Array]]:
    """The labeled and unlabeled pools of each seed's ``(labeled, rest)`` split, sharing one device copy of the data.

    The unlabeled pool is the rest of the training split. For a dataset whose ``x_unlabeled`` joins it
    (``Dataset.unlabeled_in_pool``: STL-10) and an objective that draws it (``with_unlabeled_split``),
    it is every training example, the labeled ones included, and then ``x_unlabeled``, as USB builds
    STL-10's (semilearn/datasets/cv_datasets/stl10.py). Those examples have no label; the pool says -1,
    which no loss reads and ``pseudo_label_accuracy`` skips. The labeled pool is the same either way.
    """
    x, y = dataset.x_train, dataset.y_train
    joins = with_unlabeled_split and dataset.unlabeled_in_pool and dataset.x_unlabeled is not None
    unlabeled = [rest for _, rest in splits]
    if joins:
        x = np.concatenate([x, dataset.x_unlabeled])
        y = np.concatenate([y, np.full(len(dataset.x_unlabeled), -1, y.dtype)])
        unlabeled = [np.arange(len(y))] * len(splits)
    x, y = jnp.asarray(x), jnp.asarray(y)
    return {
        "labeled": {"x": x, "y": y, **_padded_index([labeled for labeled, _ in splits], len(dataset.y_train))},
        "unlabeled": {"x": x, "y": y, **_padded_index(unlabeled, len(y))},
    }


def _padded_index(indices: Sequence[np.ndarray], length: int) -> dict[str, jax.Array]:
    """Per-seed index arrays padded to ``length`` plus their ``count``: every label
    budget then has the same array shapes, so one compiled program (and the
    persistent compilation cache) serves them all."""
    index = np.zeros((len(indices), length), np.int32)
    for row, values in zip(index, indices):
        row[: len(values)] = values
    return {"index": jnp.asarray(index), "count": jnp.asarray([len(values) for values in indices], jnp.int32)}


def load_dataset(config: ExperimentConfig) -> data.Dataset:
    """The dataset a run of ``config`` trains on (its ``classes`` only, when it names some)."""
    return _load(config)


def _load(config: ExperimentConfig) -> data.Dataset:
    dataset = _load_named(config, config.dataset)
    return dataset if config.classes is None else dataset.subset(config.classes)


def _load_named(config: ExperimentConfig, name: str) -> data.Dataset:
    files_of = {"data_dir": config.data_dir, "download": config.download} if name in data.DATA_DIR_DATASETS else {}
    load = functools.partial(data.load, name, **files_of, **(config.dataset_kwargs if name == config.dataset else {}))
    # A checkpoint's encoder reads the ids of its own tokenizer, or images as its image processor makes them.
    return load() if config.checkpoint is None else _checkpoint(config).inputs.read(load)


def _pretrain_config(config: ExperimentConfig) -> transfer.PretrainConfig:
    """The pretraining of a transfer run. For ``pretrain="classes"`` the source classes
    default to every class outside ``config.classes``."""
    inherited = {"source", "dataset", "model", "model_kwargs"}  # set by the experiment itself
    allowed = sorted({field.name for field in dataclasses.fields(transfer.PretrainConfig)} - inherited)
    kwargs = dict(config.pretrain_kwargs)
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown pretrain_kwargs {unknown}; allowed: {allowed}")
    if config.pretrain == "classes" and "source_classes" not in kwargs:
        if config.classes is None:
            raise ValueError(
                "pretrain='classes' pretrains on the classes outside the target task: set classes "
                "(e.g. classes=[5, 6, 7, 8, 9]) or pretrain_kwargs={'source_classes': [...]}"
            )
        num_classes = len(data.DATASET_ENTRIES[config.dataset].class_names)
        kwargs["source_classes"] = tuple(c for c in range(num_classes) if c not in config.classes)
    return transfer.PretrainConfig(
        source=config.pretrain, dataset=config.dataset, model=config.model, model_kwargs=dict(config.model_kwargs), **kwargs
    )


def _curves(history: list[dict[str, Any]]) -> dict[str, list]:
    """Columns of the evaluated history rows (every row that has a test accuracy)."""
    rows = [row for row in history if "test_accuracy" in row]
    return {name: [row[name] for row in rows] for name in rows[0]} if rows else {"step": [], "test_accuracy": []}
