"""Hugging Face checkpoints: a standard model folder read into a Flax NNX model of :mod:`lab.models`.

A checkpoint is a folder holding ``config.json``, ``model.safetensors`` and, for text, ``tokenizer.json``
and optionally sentence-transformers' ``modules.json`` and ``1_Pooling/config.json``; for images
``preprocessor_config.json``. It is named
by a local path or, with the ``hub`` extra (``huggingface_hub``), by a hub id such as
``sentence-transformers/all-MiniLM-L6-v2``, downloaded into the hub's own cache
(``HF_HUB_OFFLINE=1`` is respected: then only what is cached there is found).

* **Architecture**: ``config.json``'s ``model_type`` picks a reader in :data:`ARCHITECTURES`
  (``bert``, which covers MiniLM; ``vit``), which turns the config into the hyperparameters of a model of
  :data:`lab.models.MODELS` (``bert``: post-LN, token-type embeddings, exact GELU,
  ``layer_norm_eps``; ``vit``: patch convolution, ``[CLS]``, pre-LN, exact GELU), gives the one
  ordered table that maps the safetensors names onto the model's parameter paths, and reads what
  turns a dataset into the model's inputs (its tokenizer, or its image preprocessor).
* **Weights** are read with ``safetensors``' numpy API (no torch; ``pytorch_model.bin`` is never
  unpickled). Missing, unexpected and misshapen tensors are named.
* **Tokenizer**: ``tokenizer.json`` through Hugging Face ``tokenizers``: its normaliser
  (lower-casing), its ``[CLS] ... [SEP]`` template, its padding token; lab only sets the length to
  cut and pad to (:class:`CheckpointTokenizer`, which :func:`lab.text.load_dataset` takes).
* **Images**: ``preprocessor_config.json`` as :class:`ImageProcessor` reads it: images are resized
  to the model's size (nearest, bilinear or bicubic, with antialiasing) and grey ones repeated to RGB
  in numpy; rescaling and normalisation are the model's first step (:class:`lab.models.ViT`), so that
  augmentations still see lab's images in [0, 1].
* **Pooling**: mean over the text's tokens then L2 normalisation when ``modules.json`` and
  ``1_Pooling`` say so, else the features of ``[CLS]``; either can be overridden. A ViT gives the
  features of ``[CLS]`` after the final LayerNorm, or its pooler's output (``pooling="pooler"``).

Every problem with a checkpoint raises :class:`CheckpointError`, one line naming the file.
:attr:`Checkpoint.digest` is the SHA-256 of the files read, for cache keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tokenizers
from flax import nnx

from lab import cache, devices, files, models, validate
from lab.dataset import DataNotFoundError, Dataset
from lab.modality import PAD_ID, SpecialIds

CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, MODULES_FILE, PREPROCESSOR_FILE = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "modules.json",
    "preprocessor_config.json",
)
# What a hub download fetches: the files read here, nothing else (no pytorch_model.bin, no ONNX).
HUB_PATTERNS = [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, MODULES_FILE, PREPROCESSOR_FILE, "*_Pooling/config.json"]
HUB_EXTRA = "pip install 'lab[hub]' (huggingface_hub)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: the message is one line naming the file and what is wrong."""


class CheckpointInputs(Protocol):
    """What turns a dataset into a checkpoint model's inputs: a :class:`CheckpointTokenizer` (text) or an
    :class:`ImageProcessor` (images). ``read`` is the one door: it takes a dataset loader (``lab.data.load``
    with the dataset's name and options) and returns the dataset as the model reads it."""

    input_shape: tuple[int, ...]  # one example's, as the model reads it
    model_inputs: dict[str, Any]  # what the data fixes in the model (lab.data.Dataset.model_inputs)
    dtype: type  # of the inputs
    trims_padding: bool  # whether trailing padding can be cut from a batch (token ids)

    def read(self, load: Callable[..., Dataset]) -> Dataset: ...


class CheckpointNotFoundError(CheckpointError, DataNotFoundError):
    """A checkpoint folder that is not there: missing data, as absent dataset files are (so a notebook's
    :func:`lab.notebook.stop_on_missing_data` shows its one line)."""


# --------------------------------------------------------------------------- where from


def locate(source: str | os.PathLike[str]) -> Path:
    """The folder of checkpoint ``source``: a local folder as it is, else a hub id fetched by ``huggingface_hub``."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    name = str(source)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        error = CheckpointError if path.exists() else CheckpointNotFoundError
        raise error(
            f"checkpoint {name!r} is not a folder; give a Hugging Face model folder (config.json, model.safetensors, "
            "tokenizer.json) or a hub id such as sentence-transformers/all-MiniLM-L6-v2"
        )
    return _download(name)


def _download(repo_id: str) -> Path:
    try:
        import huggingface_hub
    except ImportError:
        raise CheckpointError(
            f"checkpoint {repo_id!r} is not a local folder; to fetch it from the hub, {HUB_EXTRA}"
        ) from None
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        folder = huggingface_hub.snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=offline)
    except Exception as error:  # the hub's errors (offline, unknown repo, network) are many types; one line each
        reason = "HF_HUB_OFFLINE is set and it is not in the hub's cache" if offline else type(error).__name__
        raise CheckpointError(
            f"checkpoint {repo_id!r} could not be fetched from the Hugging Face hub ({reason}); "
            "download it where there is a network and give its folder"
        ) from None
    return Path(folder)


# --------------------------------------------------------------------------- architectures


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file; a Hugging Face model folder has {path.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({error})") from None


def _bert_kwargs(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The hyperparameters of :class:`lab.models.Bert` from a BERT ``config.json``."""
    expected = {"hidden_act": "gelu", "position_embedding_type": "absolute", "pad_token_id": PAD_ID}
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise CheckpointError(
                f"{path}: {key}={config[key]!r}; lab builds BERT checkpoints with {key}={value!r} only"
            )
    try:
        return {
            "dim": int(config["hidden_size"]),
            "depth": int(config["num_hidden_layers"]),
            "heads": int(config["num_attention_heads"]),
            "mlp_dim": int(config["intermediate_size"]),
            "max_positions": int(config["max_position_embeddings"]),
            "type_vocab_size": int(config.get("type_vocab_size", 2)),
            "epsilon": float(config.get("layer_norm_eps", 1e-12)),
            "dropout": float(config.get("hidden_dropout_prob", 0.1)),
        }
    except KeyError as error:
        raise CheckpointError(f"{path}: no {error.args[0]!r}, which a BERT config has") from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: a size is not a number ({error})") from None


def _linear(lab: str, hf: str) -> list[tuple[str, tuple[str, ...], str]]:
    # torch.nn.Linear keeps (out, in) weights, nnx.Linear (in, out) kernels.
    return [(f"{lab}/kernel", (f"{hf}.weight",), "transpose"), (f"{lab}/bias", (f"{hf}.bias",), "copy")]


def _layer_norm(lab: str, hf: str) -> list[tuple[str, tuple[str, ...], str]]:
    return [(f"{lab}/scale", (f"{hf}.weight",), "copy"), (f"{lab}/bias", (f"{hf}.bias",), "copy")]


def _blocks(depth: int, attention: str, attention_norm: str, mlp_norm: str) -> list[tuple[str, tuple[str, ...], str]]:
    """The table of :class:`lab.models.EncoderBlock` ``i`` < ``depth`` from Hugging Face's ``encoder.layer.{i}``
    (BERT's and ViT's share its layout), whose queries, keys and values are ``{attention}.query`` etc. and
    whose LayerNorms are named ``attention_norm`` and ``mlp_norm``."""
    table = []
    for i in range(depth):
        lab, hf = f"backbone/blocks/layers/{i}", f"encoder.layer.{i}"
        projections = tuple(f"{hf}.{attention}.{name}" for name in ("query", "key", "value"))
        table += [
            # lab's attention projects queries, keys and values with one fused Linear.
            (f"{lab}/attention/qkv/kernel", tuple(f"{name}.weight" for name in projections), "concatenate_transposed"),
            (f"{lab}/attention/qkv/bias", tuple(f"{name}.bias" for name in projections), "concatenate"),
            *_linear(f"{lab}/attention/out", f"{hf}.attention.output.dense"),
            *_layer_norm(f"{lab}/attention_norm", f"{hf}.{attention_norm}"),
            *_linear(f"{lab}/mlp/layers/0", f"{hf}.intermediate.dense"),
            *_linear(f"{lab}/mlp/layers/3", f"{hf}.output.dense"),
            *_layer_norm(f"{lab}/mlp_norm", f"{hf}.{mlp_norm}"),
        ]
    return table


def _bert_table(kwargs: dict[str, Any]) -> list[tuple[str, tuple[str, ...], str]]:
    """(lab parameter path, safetensors names, conversion) for every parameter of a BERT backbone."""
    return [
        ("backbone/embed/embedding", ("embeddings.word_embeddings.weight",), "copy"),
        ("backbone/position", ("embeddings.position_embeddings.weight",), "copy"),
        ("backbone/token_type", ("embeddings.token_type_embeddings.weight",), "copy"),
        *_layer_norm("backbone/norm", "embeddings.LayerNorm"),
        *_blocks(kwargs["depth"], "attention.self", "attention.output.LayerNorm", "output.LayerNorm"),
    ]


def _pair(config: dict[str, Any], key: str, path: Path) -> tuple[int, int]:
    """An image size in config.json: one number or (height, width)."""
    value = config.get(key)
    pair = (value, value) if isinstance(value, int) else tuple(value) if isinstance(value, list) else ()
    if len(pair) != 2 or not all(isinstance(size, int) and size >= 1 for size in pair):
        raise CheckpointError(f"{path}: {key}={value!r}; a ViT config has a positive integer or [height, width]")
    return pair


def _vit_kwargs(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The hyperparameters of :class:`lab.models.ViT` from a ViT ``config.json`` and the folder's image
    preprocessor (its normalisation, on lab's [0, 1] scale)."""
    expected = {"hidden_act": "gelu", "qkv_bias": True, "pooler_act": "tanh"}
    for key, value in expected.items():
        if config.get(key, value) != value:
            raise CheckpointError(
                f"{path}: {key}={config[key]!r}; lab builds ViT checkpoints with {key}={value!r} only"
            )
    patch_height, patch_width = _pair(config, "patch_size", path)
    if patch_height != patch_width:
        raise CheckpointError(f"{path}: patch_size={config['patch_size']!r}; lab builds square patches only")
    processor = ImageProcessor.read_file(path.parent, config)
    try:
        return {
            "patch_size": patch_height,
            "dim": int(config["hidden_size"]),
            "depth": int(config["num_hidden_layers"]),
            "heads": int(config["num_attention_heads"]),
            "mlp_dim": int(config["intermediate_size"]),
            "epsilon": float(config.get("layer_norm_eps", 1e-12)),
            "dropout": float(config.get("hidden_dropout_prob", 0.0)),
            "image_mean": processor.mean,
            "image_std": processor.std,
        }
    except KeyError as error:
        raise CheckpointError(f"{path}: no {error.args[0]!r}, which a ViT config has") from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: a size is not a number ({error})") from None


def _vit_table(kwargs: dict[str, Any]) -> list[tuple[str, tuple[str, ...], str]]:
    """(lab parameter path, safetensors names, conversion) for every parameter of a ViT backbone."""
    pooler = _linear("backbone/pooler", "pooler.dense") if kwargs["pooling"] == "pooler" else []
    return [
        ("backbone/embed/kernel", ("embeddings.patch_embeddings.projection.weight",), "convolution"),
        ("backbone/embed/bias", ("embeddings.patch_embeddings.projection.bias",), "copy"),
        ("backbone/cls", ("embeddings.cls_token",), "unbatch"),
        ("backbone/position", ("embeddings.position_embeddings",), "unbatch"),
        *_blocks(kwargs["depth"], "attention.attention", "layernorm_before", "layernorm_after"),
        *_layer_norm("backbone/norm", "layernorm"),
        *pooler,
    ]


@dataclasses.dataclass(frozen=True)
class ArchitectureReader:
    """How one ``model_type`` is read: the lab model, its hyperparameters from ``config.json``, the
    table of its parameters (of the hyperparameters), the pooling the folder asks for by default
    (the hyperparameters :func:`load` may override), what turns a dataset into the model's inputs
    (:class:`CheckpointTokenizer`, :class:`ImageProcessor`; from the folder, the config, its path, the
    hyperparameters and the ``max_length`` asked for), the prefix heads put before the encoder's
    names, and the tensors a checkpoint may carry that lab does not use (pooler, pretraining heads)."""

    model: str
    kwargs: Callable[[dict[str, Any], Path], dict[str, Any]]
    table: Callable[[dict[str, Any]], list[tuple[str, tuple[str, ...], str]]]
    pooling: Callable[[Path], dict[str, Any]]
    inputs: Callable[[Path, dict[str, Any], Path, dict[str, Any], int | None], CheckpointInputs]
    prefix: str
    unused: tuple[str, ...]


def _bert_pooling(folder: Path) -> dict[str, Any]:
    return dict(zip(("pooling", "normalize"), read_pooling(folder), strict=True))


def _bert_inputs(
    folder: Path, config: dict[str, Any], config_path: Path, kwargs: dict[str, Any], max_length: int | None
) -> CheckpointTokenizer:
    max_length = DEFAULT_MAX_LENGTH if max_length is None else max_length
    try:
        vocab_size = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{config_path}: no integer 'vocab_size', which a BERT config has") from None
    tokenizer = CheckpointTokenizer(folder / TOKENIZER_FILE, max_length=max_length, vocab_size=vocab_size)
    if max_length > kwargs["max_positions"]:
        raise CheckpointError(
            f"{config_path}: max_position_embeddings={kwargs['max_positions']}, shorter than max_length={max_length}; "
            "choose a max_length within it"
        )
    return tokenizer


def _vit_inputs(
    folder: Path, config: dict[str, Any], config_path: Path, kwargs: dict[str, Any], max_length: int | None
) -> ImageProcessor:
    if max_length is not None:
        raise CheckpointError(
            f"{config_path}: max_length={max_length} is for text checkpoints; a vit checkpoint reads images "
            f"of the size in its {PREPROCESSOR_FILE}"
        )
    return ImageProcessor.read_file(folder, config)


ARCHITECTURES: dict[str, ArchitectureReader] = {
    "bert": ArchitectureReader(
        "bert",
        _bert_kwargs,
        _bert_table,
        _bert_pooling,
        _bert_inputs,
        prefix="bert.",
        unused=("pooler.", "cls.", "embeddings.position_ids"),
    ),
    # ViTModel's names; ViTForImageClassification puts "vit." before them beside its "classifier.".
    "vit": ArchitectureReader(
        "vit",
        _vit_kwargs,
        _vit_table,
        lambda folder: {"pooling": "cls"},
        _vit_inputs,
        prefix="vit.",
        unused=("pooler.", "classifier.", "embeddings.mask_token"),
    ),
}

# How each safetensors tensor becomes (part of) a lab parameter, and the tensor shape each expects
# of a lab parameter's shape and the number of tensors that make it.
_CONVERSIONS: dict[str, tuple[Callable[[list[np.ndarray]], np.ndarray], Callable[[tuple, int], tuple]]] = {
    "copy": (lambda tensors: tensors[0], lambda shape, count: shape),
    "transpose": (lambda tensors: tensors[0].T, lambda shape, count: shape[::-1]),
    "concatenate": (np.concatenate, lambda shape, count: (shape[0] // count,)),
    "concatenate_transposed": (
        lambda tensors: np.concatenate([tensor.T for tensor in tensors], axis=1),
        lambda shape, count: (shape[1] // count, shape[0]),
    ),
    # torch.nn.Conv2d keeps (out, in, height, width) kernels, nnx.Conv (height, width, in, out).
    "convolution": (
        lambda tensors: tensors[0].transpose(2, 3, 1, 0),
        lambda shape, count: (shape[3], shape[2], shape[0], shape[1]),
    ),
    # ViT keeps its [CLS] token and positions with a leading batch axis of 1.
    "unbatch": (lambda tensors: tensors[0][0], lambda shape, count: (1, *shape)),
}


# --------------------------------------------------------------------------- weights


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        torch_file = path.with_name("pytorch_model.bin")
        if torch_file.is_file():
            raise CheckpointError(
                f"{path.parent}: has pytorch_model.bin but no {path.name}; lab never unpickles torch files. Convert it "
                "once where torch is installed: transformers.AutoModel.from_pretrained(folder)"
                ".save_pretrained(folder, safe_serialization=True)"
            )
        raise CheckpointError(f"{path}: no such file; a Hugging Face model folder has its weights in {path.name}")
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as error:  # safetensors' own error type, for any damage
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(error).splitlines()[0]})") from None


def _convert(
    weights: dict[str, np.ndarray],
    reader: ArchitectureReader,
    kwargs: dict[str, Any],
    shapes: dict[str, tuple],
    path: Path,
) -> dict[str, np.ndarray]:
    """The lab parameters by path from the checkpoint's tensors by name, after checking names and shapes."""
    if reader.prefix and all(name.startswith(reader.prefix) or name.startswith(reader.unused) for name in weights):
        weights = {name.removeprefix(reader.prefix): tensor for name, tensor in weights.items()}
    table = reader.table(kwargs)
    used = {name for _, names, _ in table for name in names}
    missing = [name for name in sorted(used) if name not in weights]
    unexpected = [name for name in sorted(weights) if name not in used and not name.startswith(reader.unused)]
    misshapen = []
    for lab_path, names, conversion in table:
        expected = _CONVERSIONS[conversion][1](shapes[lab_path], len(names))
        misshapen += [
            f"{name} has shape {tuple(weights[name].shape)}, the config says {expected}"
            for name in names
            if name in weights and tuple(weights[name].shape) != expected
        ]
    problems = [
        *([f"missing tensors {', '.join(missing)}"] if missing else []),
        *([f"unexpected tensors {', '.join(unexpected)}"] if unexpected else []),
        *misshapen,
    ]
    if problems:
        raise CheckpointError(f"{path}: " + "; ".join(problems))
    return {
        lab_path: np.asarray(_CONVERSIONS[conversion][0]([weights[name] for name in names]), np.float32)
        for lab_path, names, conversion in table
    }


# --------------------------------------------------------------------------- tokenizer


class CheckpointTokenizer:
    """A checkpoint's ``tokenizer.json`` with fixed-length encoding: the file's normaliser, special
    tokens and padding token, cut and padded to ``max_length`` tokens. It has what
    :func:`lab.text.load_dataset` asks of a tokenizer: ``vocab_size``, ``fingerprint``, ``max_length``,
    ``settings``, ``encode`` and ``special_ids``. ``vocab_size`` is that of the model reading the ids (its
    embeddings, which may outnumber the file's tokens); the file's by default."""

    # The mask token's names in the vocabularies of the models lab reads (BERT's; RoBERTa's).
    MASK_TOKENS = ("[MASK]", "<mask>")
    dtype = np.int32
    trims_padding = True

    def __init__(self, path: Path, *, max_length: int, vocab_size: int | None = None) -> None:
        self.path = path
        self.max_length = validate.integer("max_length", max_length, minimum=2)
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except FileNotFoundError:
            raise CheckpointError(
                f"{path}: no such file; lab reads a checkpoint's tokenizer from {path.name}"
            ) from None
        except Exception as error:  # tokenizers raises Exception for a malformed file
            raise CheckpointError(f"{path}: not a readable tokenizer ({str(error).splitlines()[0]})") from None
        padding = backend.padding or {}
        pad_token = padding.get("pad_token", "[PAD]")
        pad_id = backend.token_to_id(pad_token)
        if pad_id != PAD_ID:
            raise CheckpointError(
                f"{path}: the padding token {pad_token!r} has id {pad_id}; "
                f"lab's text models read id {PAD_ID} as padding"
            )
        # The file's own truncation strategy and padding token, at the length asked for.
        backend.enable_truncation(self.max_length)
        backend.enable_padding(length=self.max_length, pad_id=pad_id, pad_token=pad_token)
        self.backend = backend
        self.vocab_size = backend.get_vocab_size() if vocab_size is None else vocab_size
        if self.vocab_size < backend.get_vocab_size():
            raise CheckpointError(
                f"{path}: {backend.get_vocab_size()} tokens, more than the vocab_size={vocab_size} embeddings "
                "of the model's config.json"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.max_length,)

    @property
    def model_inputs(self) -> dict[str, Any]:
        return {"vocab_size": self.vocab_size}

    def read(self, load: Callable[..., Dataset]) -> Dataset:
        """The text dataset ``load`` reads, tokenized by this tokenizer (:func:`lab.text.load_dataset`)."""
        return load(tokenizer=self)

    @property
    def fingerprint(self) -> str:
        """A hash of the vocabulary and settings (the length included): equal fingerprints, equal ids."""
        return hashlib.sha256(self.backend.to_str().encode()).hexdigest()[:16]

    @property
    def settings(self) -> dict[str, Any]:
        return {"max_length": self.max_length}

    @property
    def special_ids(self) -> SpecialIds:
        """The file's mask token, and the ids its template adds to every text ([CLS], [SEP]) with padding:
        those of an empty text."""
        masks = [found for token in self.MASK_TOKENS if (found := self.backend.token_to_id(token)) is not None]
        if not masks:
            raise CheckpointError(
                f"{self.path}: no mask token ({' or '.join(self.MASK_TOKENS)}); lab's text augmentations mask with it"
            )
        return SpecialIds(mask=masks[0], kept=tuple(sorted(set(self.backend.encode("").ids))))

    def encode(self, texts: Sequence[str], *, what: str = "") -> np.ndarray:
        """``(len(texts), max_length)`` int32 ids; longer texts are cut, with one warning per call."""
        ids, truncated = self._encode(texts)
        if truncated:
            warnings.warn(
                f"{what + ': ' if what else ''}{truncated} of {len(ids)} texts are longer than "
                f"max_length={self.max_length} tokens and were truncated",
                stacklevel=2,
            )
        return ids

    def _encode(self, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings, got one string; wrap it in a list")
        encodings = self.backend.encode_batch(list(texts))
        ids = np.array([encoding.ids for encoding in encodings], np.int32).reshape(len(encodings), self.max_length)
        return ids, sum(bool(encoding.overflowing) for encoding in encodings)

    def word_pieces(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """How the vocabulary covers ``texts``, uncut and without special tokens, per text: ``words`` (the
        file's pre-tokenizer's words: BERT's split at spaces and punctuation), ``pieces`` (the tokens they
        became) and ``unknown`` (the words that became the unknown token, e.g. ``[UNK]``)."""
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of strings, got one string; wrap it in a list")
        uncut = tokenizers.Tokenizer.from_str(self.backend.to_str())
        uncut.no_truncation()
        uncut.no_padding()
        unknown_id = uncut.token_to_id(getattr(uncut.model, "unk_token", None) or "")
        counts: dict[str, list[int]] = {"words": [], "pieces": [], "unknown": []}
        for encoding in uncut.encode_batch(list(texts), add_special_tokens=False):
            counts["words"].append(len(set(encoding.word_ids) - {None}))
            counts["pieces"].append(len(encoding.ids))
            unknown = {word for word, id_ in zip(encoding.word_ids, encoding.ids, strict=True) if id_ == unknown_id}
            counts["unknown"].append(len(unknown))
        return {name: np.array(values, np.int64) for name, values in counts.items()}

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self.backend.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=True)


# --------------------------------------------------------------------------- images

# Hugging Face's `resample` (PIL's filter codes) -> jax.image.resize's method, which antialiases as PIL does.
RESAMPLING = {0: "nearest", 2: "linear", 3: "cubic"}
# What lab applies of an image preprocessor; other do_* options set true are refused.
IMAGE_STEPS = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")
# Images resized per call of jax.image.resize, to bound the memory it takes.
RESIZE_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    """A checkpoint's ``preprocessor_config.json`` (Hugging Face's ``ViTImageProcessor``) for lab's images,
    ``(N, H, W, C)`` in [0, 1] (8-bit values / 255). :meth:`read` resizes a dataset's images to the model's
    ``input_shape`` (``do_resize``, ``size`` and ``resample``: nearest, bilinear or bicubic) and repeats grey
    images to the model's channels, as the processor's RGB conversion does; other sizes and channels are
    refused when it does not resize. ``mean`` and ``std`` are the processor's rescaling and normalisation on
    lab's scale, ``(x * 255 * rescale_factor - image_mean) / image_std = (x - mean) / std``, which the model
    applies (:class:`lab.models.ViT`). Center crops and other steps are refused."""

    path: Path
    input_shape: tuple[int, int, int]
    resize: bool
    resample: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dtype = np.float32
    trims_padding = False

    @property
    def model_inputs(self) -> dict[str, Any]:
        return {}

    @classmethod
    def read_file(cls, folder: Path, config: dict[str, Any]) -> ImageProcessor:
        """The processor of the checkpoint in ``folder``, whose ``config.json`` is ``config``."""
        path = folder / PREPROCESSOR_FILE
        settings = _read_json(path)
        if not isinstance(settings, dict):
            raise CheckpointError(f"{path}: expected a JSON object of preprocessing settings")
        refused = sorted(
            key for key, value in settings.items() if key.startswith("do_") and key not in IMAGE_STEPS and value
        )
        if refused:
            raise CheckpointError(
                f"{path}: {', '.join(f'{key}=true' for key in refused)}; lab applies {', '.join(IMAGE_STEPS)} only"
            )
        config_path = folder / CONFIG_FILE
        height, width = _pair(config, "image_size", config_path)
        channels = config.get("num_channels", 3)
        if not isinstance(channels, int) or channels < 1:
            raise CheckpointError(f"{config_path}: num_channels={channels!r}; a ViT config has a positive integer")
        size = settings.get("size", {"height": height, "width": width})
        if size != {"height": height, "width": width}:
            raise CheckpointError(
                f"{path}: size={size!r}, but the model reads {height}x{width} images (config.json's image_size); "
                "lab resizes to {'height': H, 'width': W} of the model's size only"
            )
        resample = settings.get("resample", 2)
        if resample not in RESAMPLING:
            raise CheckpointError(
                f"{path}: resample={resample!r}; lab resizes with {', '.join(map(str, RESAMPLING))} "
                "(PIL's nearest, bilinear, bicubic)"
            )
        scale = 255.0 * (settings.get("rescale_factor", 1 / 255) if settings.get("do_rescale", True) else 1.0)
        normalize = settings.get("do_normalize", True)
        try:
            mean = models.per_channel("image_mean", settings.get("image_mean", 0.5) if normalize else 0.0, channels)
            std = models.per_channel("image_std", settings.get("image_std", 0.5) if normalize else 1.0, channels)
            scale = float(scale)
        except (TypeError, ValueError):
            raise CheckpointError(
                f"{path}: image_mean, image_std and rescale_factor must be numbers (image_mean and image_std one "
                f"per channel, {channels})"
            ) from None
        if min(std) <= 0 or scale <= 0:
            raise CheckpointError(f"{path}: image_std and rescale_factor must be positive")
        return cls(
            path,
            (height, width, channels),
            bool(settings.get("do_resize", True)),
            RESAMPLING[resample],
            tuple(value / scale for value in mean),
            tuple(value / scale for value in std),
        )

    def read(self, load: Callable[..., Dataset]) -> Dataset:
        """The image dataset ``load`` reads, its images (unlabeled ones too) as the model reads them."""
        dataset = load()
        unlabeled = dataset.x_unlabeled
        return dataclasses.replace(
            dataset,
            x_train=self(dataset.x_train, what=dataset.name),
            x_test=self(dataset.x_test, what=dataset.name),
            x_unlabeled=None if unlabeled is None else self(unlabeled, what=dataset.name),
        )

    def __call__(self, images: np.ndarray, *, what: str = "images") -> np.ndarray:
        """``(N, h, w, c)`` images in [0, 1] -> ``(N, *input_shape)``, resized and with grey repeated."""
        height, width, channels = self.input_shape
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, channels):
            raise CheckpointError(
                f"{what}: inputs of shape {images.shape[1:]}; the checkpoint {self.path.parent} reads "
                f"{height}x{width} images of {channels} channel(s) (grey images, 1 channel, are repeated)"
            )
        if images.shape[1:3] != (height, width):
            if not self.resize:
                raise CheckpointError(
                    f"{what}: {images.shape[1]}x{images.shape[2]} images; the checkpoint reads {height}x{width} and "
                    f"{self.path} says do_resize=false: resize them to {height}x{width}"
                )
            images = np.concatenate(
                [self._resized(images[start : start + RESIZE_CHUNK]) for start in range(0, len(images), RESIZE_CHUNK)]
            )
        return np.repeat(images, channels // images.shape[-1], axis=-1).astype(np.float32, copy=False)

    def _resized(self, images: np.ndarray) -> np.ndarray:
        import jax

        shape = (len(images), *self.input_shape[:2], images.shape[-1])
        return np.asarray(jax.image.resize(images.astype(np.float32), shape, self.resample, antialias=True))


# --------------------------------------------------------------------------- pooling


def read_pooling(folder: Path) -> tuple[str, bool]:
    """(pooling, normalize) from sentence-transformers' ``modules.json``: its Pooling module's mode
    (mean or [CLS]) and whether a Normalize module follows; ``("cls", False)`` without the file."""
    path = folder / MODULES_FILE
    if not path.is_file():
        return "cls", False
    modules = _read_json(path)
    if not isinstance(modules, list) or not all(isinstance(module, dict) for module in modules):
        raise CheckpointError(f"{path}: expected a list of modules, each with a type and a path")
    types = [str(module.get("type", "")) for module in modules]
    normalize = any(kind.endswith(".Normalize") for kind in types)
    poolers = [module for module, kind in zip(modules, types, strict=True) if kind.endswith(".Pooling")]
    if not poolers:
        return "cls", normalize
    pooling_path = folder / str(poolers[0].get("path", "")) / CONFIG_FILE
    config = _read_json(pooling_path)
    if config.get("pooling_mode_mean_tokens"):
        return "mean", normalize
    if config.get("pooling_mode_cls_token"):
        return "cls", normalize
    modes = sorted(key for key, value in config.items() if key.startswith("pooling_mode") and value)
    raise CheckpointError(
        f"{pooling_path}: pooling {', '.join(modes) or 'none'}; lab pools by pooling_mode_mean_tokens or "
        "pooling_mode_cls_token (or give pooling= to choose)"
    )


# --------------------------------------------------------------------------- the checkpoint


def _file_digest(folder: Path, names: Sequence[str]) -> str:
    """SHA-256 over the names and bytes of the files a checkpoint was read from."""
    digest = hashlib.sha256()
    for name in names:
        path = folder / name
        if path.is_file():
            digest.update(f"{name}\0".encode())
            with path.open("rb") as file:
                while chunk := file.read(1 << 20):
                    digest.update(chunk)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True, eq=False)
class Checkpoint:
    """A checkpoint read into lab: the model name and hyperparameters (``model_kwargs``, with the
    pooling), the converted ``params`` by lab parameter path (``backbone/...``), what turns a dataset
    into its inputs (``inputs``: a tokenizer or an image processor) and the SHA-256 ``digest`` of its files."""

    folder: Path
    model: str
    model_kwargs: dict[str, Any]
    params: dict[str, np.ndarray]
    inputs: CheckpointInputs
    digest: str

    @property
    def tokenizer(self) -> CheckpointTokenizer:
        """The tokenizer of a text checkpoint."""
        if not isinstance(self.inputs, CheckpointTokenizer):
            raise CheckpointError(f"{self.folder}: a {self.model!r} checkpoint reads images; it has no tokenizer")
        return self.inputs

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    def classifier(self, num_classes: int, *, seed: int, **overrides) -> models.Classifier:
        """The checkpoint's encoder with a new ``num_classes`` head initialised from ``seed`` (training
        mode, as :func:`lab.models.make_model` builds). ``overrides`` replace hyperparameters (``dropout``)."""
        kwargs = {**self.model_kwargs, **overrides}
        model = models.make_model(
            self.model, self.inputs.input_shape, num_classes, seed=seed, **self.inputs.model_inputs, **kwargs
        )
        for path, variable in nnx.to_flat_state(nnx.state(model.backbone, nnx.Param)):
            variable.set_value(np.asarray(self.params["/".join(("backbone", *map(str, path)))]))
        return model

    def embed(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """``(N, dim)`` float32 embeddings of ``texts`` by the pooled, frozen encoder (eval mode)."""
        return self.embed_ids(self.tokenizer.encode(texts, what="embed"), batch_size=batch_size)

    def embed_ids(
        self, ids: np.ndarray, *, batch_size: int = 64, cached: bool = True, trim: bool = True
    ) -> np.ndarray:
        """The embeddings of ``(N, max_length)`` token ids of this checkpoint's tokenizer (or of the images
        its image processor made); with ``cached``, kept in ``cache_dir()/embeddings`` keyed by the inputs'
        content digest, :attr:`digest`, the pooling and the code (:func:`lab.cache.fingerprint`), so a frozen
        encoder embeds a dataset once."""
        ids = np.ascontiguousarray(ids, self.inputs.dtype)
        path = cache.cache_dir() / "embeddings" / f"{self.model}-{self._embedding_key(ids)}.npy"
        if cached and path.is_file():
            return np.load(path)
        backbone = self.classifier(1, seed=0).backbone
        embeddings = embed_ids(backbone, ids, batch_size=batch_size, trim=trim and self.inputs.trims_padding)
        if cached:
            buffer = io.BytesIO()
            np.save(buffer, embeddings)
            files.write_atomic(path, buffer.getvalue())
        return embeddings

    def _embedding_key(self, ids: np.ndarray) -> str:
        pooling = {name: self.model_kwargs.get(name) for name in ("pooling", "normalize")}
        producer = (cache.fingerprint(__name__), devices.current_platform())
        return cache.key(self.digest, cache.content_digest(ids), pooling, *producer)


# The length texts are cut and padded to unless a run asks for another.
DEFAULT_MAX_LENGTH = 128
# Texts are embedded in batches of similar length, cut to a multiple of this many tokens: trailing
# padding changes nothing (it is masked), and a few lengths compile a few times.
LENGTH_STEP = 16


def embed_ids(backbone: nnx.Module, ids: np.ndarray, *, batch_size: int = 64, trim: bool = True) -> np.ndarray:
    """``backbone(ids)`` in eval mode, batch by batch (the last padded to the batch size); ``ids`` may be
    any inputs when not ``trim``. With ``trim``, the texts go by length and each batch drops the padding
    columns beyond its longest text, rounded up to :data:`LENGTH_STEP` tokens; the embeddings come back in
    the order of ``ids``."""
    import jax

    backbone = nnx.view(backbone, deterministic=True, raise_if_not_found=False)
    graph, state = nnx.split(backbone)
    forward = jax.jit(lambda state, batch: nnx.merge(graph, state)(batch))
    ids = np.asarray(ids)
    lengths = (ids != PAD_ID).sum(axis=1) if trim else None
    order = np.argsort(lengths, kind="stable") if trim else np.arange(len(ids))
    batch_size = max(1, min(batch_size, len(ids)))
    outputs = []
    for start in range(0, len(ids), batch_size):
        rows = order[start : start + batch_size]
        width = ids.shape[1]
        if trim:
            width = min(width, -(-int(lengths[rows].max()) // LENGTH_STEP) * LENGTH_STEP)
        # All-[PAD] (all-0) rows, cut off below.
        batch = np.pad(ids[rows, :width], ((0, batch_size - len(rows)), *[(0, 0)] * (ids.ndim - 1)))
        outputs.append(np.asarray(forward(state, batch))[: len(rows)])
    if not outputs:
        return np.zeros((0, 0), np.float32)
    embeddings = np.empty((len(ids), outputs[0].shape[1]), outputs[0].dtype)
    embeddings[order] = np.concatenate(outputs)
    return embeddings


def _read_config(path: Path) -> tuple[dict[str, Any], ArchitectureReader]:
    config = _read_json(path)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: model_type {model_type!r} is not one lab builds; it builds {', '.join(ARCHITECTURES)}"
        )
    return config, ARCHITECTURES[model_type]


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What a checkpoint's folder says before its weights are read: the reader, the model's hyperparameters,
    its inputs and the shapes of its backbone's parameters by path."""

    folder: Path
    reader: ArchitectureReader
    kwargs: dict[str, Any]
    inputs: CheckpointInputs
    shapes: dict[str, tuple[int, ...]]


def _plan(
    source: str | os.PathLike[str], *, max_length: int | None, pooling: str | None, normalize: bool | None
) -> _Plan:
    folder = locate(source)
    config_path = folder / CONFIG_FILE
    config, reader = _read_config(config_path)
    kwargs = reader.kwargs(config, config_path)
    pooling_kwargs = reader.pooling(folder)
    overrides = {name: value for name, value in (("pooling", pooling), ("normalize", normalize)) if value is not None}
    if unknown := sorted(set(overrides) - set(pooling_kwargs)):
        raise CheckpointError(
            f"{config_path}: a {reader.model!r} checkpoint has no {', '.join(unknown)} to choose; "
            f"it takes {', '.join(pooling_kwargs)}"
        )
    kwargs.update(pooling_kwargs, **overrides)
    inputs = reader.inputs(folder, config, config_path, kwargs, max_length)
    abstract = nnx.eval_shape(
        lambda: models.make_model(reader.model, inputs.input_shape, 1, seed=0, **inputs.model_inputs, **kwargs)
    )
    shapes = {
        "/".join(("backbone", *map(str, path))): tuple(variable.shape)
        for path, variable in nnx.to_flat_state(nnx.state(abstract.backbone, nnx.Param))
    }
    return _Plan(folder, reader, kwargs, inputs, shapes)


def model_of(source: str | os.PathLike[str], **options: Any) -> str:
    """The :data:`lab.models.MODELS` name checkpoint ``source`` builds, checking its folder and the
    ``options`` of :func:`load` but reading no weights (a quick check before a run)."""
    return _plan(source, **{"max_length": None, "pooling": None, "normalize": None, **options}).reader.model


def load(
    source: str | os.PathLike[str],
    *,
    max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
) -> Checkpoint:
    """Read checkpoint ``source`` (a folder or a hub id, see :func:`locate`); a text checkpoint for texts of
    up to ``max_length`` tokens (:data:`DEFAULT_MAX_LENGTH` by default), an image checkpoint for images of
    its size. ``pooling`` (``"mean"`` or ``"cls"`` for text, ``"cls"`` or ``"pooler"`` for a ViT) and
    ``normalize`` (text) override what the folder says (:func:`read_pooling`)."""
    plan = _plan(source, max_length=max_length, pooling=pooling, normalize=normalize)
    weights_path = plan.folder / WEIGHTS_FILE
    params = _convert(_read_weights(weights_path), plan.reader, plan.kwargs, plan.shapes, weights_path)
    read = [CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE, MODULES_FILE, "1_Pooling/config.json", PREPROCESSOR_FILE]
    digest = _file_digest(plan.folder, read)
    return Checkpoint(plan.folder, plan.reader.model, plan.kwargs, params, plan.inputs, digest)
