"""The kinds of input the lab knows ("modalities"), told apart by the rank of one example's shape.

Datasets (:data:`lab.data.DATASET_ENTRIES`), models (``Classifier.modalities`` in
:mod:`lab.models`) and augmentations (:mod:`lab.augment`) are registered per modality,
and code that treats them differently looks the modality up here, so a new kind of
input adds entries, not branches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Modality:
    name: str
    rank: int  # of one example's shape, channels included
    example_shape: str  # one example's shape as messages write it
    plural: str  # the examples as messages name them
    tokenized: bool = False  # examples are ids of a dataset's tokenizer (Dataset.tokenizer), which results depend on


IMAGE = Modality("image", 3, "(H, W, C)", "images")
SIGNAL = Modality("signal", 2, "(L, C)", "signals")
TEXT = Modality("text", 1, "(L,)", "token sequences", tokenized=True)  # int32 token ids; see SPECIAL_TOKENS
MODALITIES: dict[str, Modality] = {modality.name: modality for modality in (IMAGE, SIGNAL, TEXT)}
# Token sequences begin with [CLS] and are padded with [PAD] to a fixed length; the ids of
# these tokens are fixed here so models, augmentations and tokenizers (lab.text) agree.
SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[MASK]", "[UNK]")
PAD_ID, CLS_ID, MASK_ID, UNK_ID = range(len(SPECIAL_TOKENS))


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """What text augmentations need of a tokenizer: the id of its ``mask`` token, which replaces
    tokens, and the ids they never edit (``kept``: padding and the tokens its template adds, such as
    ``[CLS]`` and ``[SEP]``). Each tokenizer provides its own (``special_ids``)."""

    mask: int
    kept: tuple[int, ...]


LAB_SPECIAL_IDS = SpecialIds(mask=MASK_ID, kept=(PAD_ID, CLS_ID))  # lab's own tokenizers (lab.text)
_BY_RANK = {modality.rank: modality for modality in MODALITIES.values()}


def of_shape(input_shape: Sequence[int]) -> Modality | None:
    """The modality of examples shaped ``input_shape``, or None for a rank no modality has."""
    return _BY_RANK.get(len(input_shape))


def shapes(names: Sequence[str]) -> str:
    """``"(L, C) signals or (H, W, C) images"``: what the modalities ``names`` look like, for messages."""
    return " or ".join(f"{MODALITIES[name].example_shape} {MODALITIES[name].plural}" for name in names)
