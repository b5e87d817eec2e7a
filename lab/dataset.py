"""The :class:`Dataset` every loader returns, and the error a loader raises when a dataset's files are missing.

Below the loaders (:mod:`lab.data`, :mod:`lab.image_benchmarks`, :mod:`lab.text`) and their
registry (:data:`lab.data.DATASET_ENTRIES`), which all build on it; :mod:`lab.data` re-exports
both names, so callers keep writing ``data.Dataset``.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
from collections.abc import Sequence

import numpy as np

from lab import cache
from lab.modality import SpecialIds

__all__ = ["DIGIT_NAMES", "DataNotFoundError", "Dataset", "PathLike"]

PathLike = str | os.PathLike[str]
DIGIT_NAMES = tuple(str(digit) for digit in range(10))  # the classes of digits, MNIST-1D, MNIST and SVHN


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the places looked at (or could not be downloaded)."""


# eq=False: the generated __eq__ would compare arrays elementwise and fail on `bool(...)`;
# identity equality (and hashing) is what a bundle of large arrays wants.
@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test pair of a classification dataset, as numpy arrays."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str
    vocab_size: int | None = None  # token sequences: ids are in 0..vocab_size-1; None for other inputs
    # Examples that come without labels besides the training split (STL-10's unlabeled split, a
    # text corpus): pretraining and unlabeled pools may draw on them; never test examples.
    x_unlabeled: np.ndarray | None = None
    # Whether semi-supervised runs also draw their unlabeled batches from x_unlabeled: true for
    # STL-10's unlabeled split, which the benchmark provides for that; a text corpus is for pretraining.
    unlabeled_in_pool: bool = False
    tokenizer: str | None = None  # token sequences: the fingerprint of the tokenizer that made the ids
    special_ids: SpecialIds | None = None  # token sequences: that tokenizer's special tokens, for augmentations

    def __post_init__(self) -> None:
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if len(x) != len(y):
                raise ValueError(f"{self.name}: x_{split} has {len(x)} examples but y_{split} has {len(y)} labels")
            if len(y) and not (0 <= y.min() and y.max() < self.num_classes):
                raise ValueError(
                    f"{self.name}: y_{split} has labels in {y.min()}..{y.max()}, "
                    f"but there are {self.num_classes} class names (labels 0..{self.num_classes - 1})"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"{self.name}: train inputs have shape {self.x_train.shape[1:]} but test inputs {self.x_test.shape[1:]}"
            )
        if self.unlabeled_in_pool and self.x_unlabeled is not None and self.x_unlabeled.shape[1:] != self.input_shape:
            raise ValueError(
                f"{self.name}: unlabeled inputs have shape {self.x_unlabeled.shape[1:]} but train inputs "
                f"{self.input_shape}; examples of one pool need one shape"
            )
        # One class trains a constant predictor and reports chance accuracy as a result.
        present = np.unique(self.y_train)
        if len(present) < 2:
            raise ValueError(
                f"{self.name}: the training labels hold {len(present)} class{'es' if len(present) != 1 else ''} "
                f"({present.tolist()}); a classifier needs at least 2"
            )

    @functools.cached_property
    def digest(self) -> str:
        """The SHA-256 of the content (:func:`lab.cache.content_digest`): every array, the class names and
        what token ids mean (the vocabulary size, the tokenizer's fingerprint and special ids); not the name or
        where it was read from. What a cache entry derived from the data is keyed by. Computed once per
        Dataset: its arrays are never changed in place (a changed dataset is a new one)."""
        return cache.content_digest(
            self.x_train, self.y_train, self.x_test, self.y_test, self.x_unlabeled, self.unlabeled_in_pool,
            self.class_names, self.vocab_size, self.tokenizer,
            None if self.special_ids is None else dataclasses.asdict(self.special_ids),
        )  # fmt: skip

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.x_train.shape[1:]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def model_inputs(self) -> dict[str, int]:
        """What the data fixes in a model beyond its input shape: the vocabulary size of token sequences."""
        return {} if self.vocab_size is None else {"vocab_size": self.vocab_size}

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse batches drawn from the training set that are larger than it."""
        if batch_size > len(self.y_train):
            raise ValueError(
                f"batch_size={batch_size} is larger than the {len(self.y_train)} training examples of {self.name}; "
                f"choose at most {len(self.y_train)}"
            )

    def check_classes(self, per_class: int = 1) -> None:
        """Refuse, before any training, a dataset whose training split has fewer than ``per_class``
        examples of some class (a labeled set draws ``per_class`` of each) or whose test split misses a
        class (ROC-AUC and the per-class metrics need every one); the message names those classes."""
        for split, labels, needed in (("training", self.y_train, per_class), ("test", self.y_test, 1)):
            counts = np.bincount(labels, minlength=self.num_classes)
            short = np.flatnonzero(counts < needed)
            if short.size:
                named = ", ".join(f"{c} ({self.class_names[c]!r}: {counts[c]})" for c in short)
                why = f"labels_per_class={per_class} draws" if split == "training" else "the test metrics need"
                raise ValueError(
                    f"{self.name}: the {split} split has fewer than {needed} example{'s' if needed != 1 else ''} "
                    f"of class{'es' if short.size > 1 else ''} {named}, but {why} {needed} of each of its "
                    f"{self.num_classes} classes; check the {split} labels in {self.source}"
                )

    def subset(self, classes: Sequence[int]) -> Dataset:
        """Keep only ``classes``; label ``classes[i]`` becomes ``i``.

        The order of ``classes`` sets the new labels, so ``subset([5, 6, 7, 8, 9])``
        gives a 5-class dataset for class-split transfer from ``subset([0, 1, 2, 3, 4])``.
        """
        classes = [operator.index(c) for c in classes]  # ints only: a float label is a bug upstream
        valid = range(self.num_classes)
        if not classes or len(set(classes)) != len(classes) or any(c not in valid for c in classes):
            raise ValueError(
                f"classes={classes} must be a non-empty list of distinct labels in 0..{self.num_classes - 1}"
            )
        new_label = np.full(self.num_classes, -1, dtype=np.int32)
        new_label[classes] = np.arange(len(classes), dtype=np.int32)

        def keep(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            mask = new_label[y] >= 0
            return x[mask], new_label[y[mask]]

        x_train, y_train = keep(self.x_train, self.y_train)
        x_test, y_test = keep(self.x_test, self.y_test)
        return Dataset(
            name=f"{self.name}[{','.join(map(str, classes))}]",
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            class_names=tuple(self.class_names[c] for c in classes),
            source=self.source,
            vocab_size=self.vocab_size,
            tokenizer=self.tokenizer,
            special_ids=self.special_ids,
            x_unlabeled=self.x_unlabeled,
            unlabeled_in_pool=self.unlabeled_in_pool,
        )
