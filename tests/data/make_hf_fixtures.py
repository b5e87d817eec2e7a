"""Makes the Hugging Face fixtures of tests/test_checkpoints.py, once, with `transformers` + `torch`
(the ``bench`` extra); the test suite itself needs neither.

    python tests/data/make_hf_fixtures.py [bert] [minilm] [vit]

writes the parts named (all three by default), under tests/data/hf/:

* ``tiny-bert/``: a tiny random BERT as a standard Hugging Face folder (vocabulary of ~100
  WordPiece tokens, 2 layers, width 32, a ``tokenizer.json``, sentence-transformers'
  ``modules.json`` and ``1_Pooling/`` for mean pooling + L2 normalisation). Every weight,
  LayerNorms included, is random, so a tensor mapped to the wrong place shows.
* ``tiny-bert-reference.npz``: ``transformers``' token ids, attention masks, last hidden states
  and pooled, normalised embeddings of :data:`TINY_TEXTS` (padded to 16 tokens).
* ``minilm-reference.npz`` and ``minilm-texts.json``: for the first 32 test texts of
  ``fortunes_topics``, the token ids of all-MiniLM-L6-v2's tokenizer (cut and padded to 128
  tokens) and the sentence embeddings (mean over non-padding tokens of the last hidden states,
  then L2-normalised, as sentence-transformers computes them), from ``../shared/checkpoints``.
* ``tiny-vit/``: a tiny random ViT (``ViTModel`` with its pooler: 16x16 RGB images, 4x4 patches,
  2 layers, width 32, every weight random) and a ``preprocessor_config.json`` (resize to 16x16,
  bilinear, rescale by 1/255, ImageNet's mean and std).
* ``tiny-vit-reference.npz``: ``transformers``' pixel values, last hidden states and pooler outputs
  of :data:`VIT_IMAGES` random uint8 images of that size, and the pixel values its image processor
  makes of :data:`VIT_IMAGES` grey 8x8 images (as RGB), which it resizes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

HERE = Path(__file__).resolve().parent / "hf"
REPOSITORY = Path(__file__).resolve().parents[2]
MINILM = REPOSITORY.parent / "shared" / "checkpoints" / "all-MiniLM-L6-v2"
TINY_LENGTH, MINILM_LENGTH, MINILM_TEXTS = 16, 128, 32
VIT_SIZE, VIT_SMALL_SIZE, VIT_IMAGES = 16, 8, 4
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = (
    "the a an of to and in is it you that he was for on are with as his they be at one have this from or had by "
    "but not what all were we when your can said there use each which she do how their if will up other about out "
    "many then them these so some her would make like him into time has look two more write go see number no way "
    "could people my than first water been call who oil its now find long down day did get come made may part"
).split()
TINY_TEXTS = [
    "The way of the water is long.",
    "You can see it now!",
    "Who would make time for them, if not you?",
    "Zebras quietly",  # words the vocabulary lacks: pieces and [UNK]
    "a",
    "One day he had come to find his people, and they said no.",
]


def tiny_tokenizer() -> Tokenizer:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    punctuation = list(".,!?'")
    pieces = SPECIALS + letters + punctuation + [f"##{letter}" for letter in letters] + WORDS[:40]
    vocabulary = list(dict.fromkeys(pieces))  # "a" is a letter and a word
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocabulary)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(SPECIALS)
    return tokenizer


def write_tiny(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    tokenizer = tiny_tokenizer()
    config = transformers.BertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        type_vocab_size=2,
        layer_norm_eps=1e-12,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    randomize(model)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )
    fast.save_pretrained(folder)
    write_pooling(folder, dimension=32)


def write_pooling(folder: Path, dimension: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": dimension,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")


def reference(folder: Path, texts: list[str], length: int) -> dict[str, np.ndarray]:
    """transformers' ids, masks, last hidden states and sentence embeddings of ``texts``."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
    return {
        "ids": batch["input_ids"].numpy().astype(np.int32),
        "attention_mask": batch["attention_mask"].numpy().astype(bool),
        "hidden": hidden.numpy().astype(np.float32),
        "pooled": pooled.numpy().astype(np.float32),
    }


def randomize(model: torch.nn.Module) -> None:
    """Every parameter random, LayerNorms and biases too (not their 1s and 0s), so that a tensor mapped to
    the wrong place shows (from torch's global generator: seed it before building the model)."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * (0.5 if parameter.ndim > 1 else 0.2) + (parameter.ndim == 1))


def write_tiny_vit(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    config = transformers.ViTConfig(
        image_size=VIT_SIZE,
        patch_size=4,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        layer_norm_eps=1e-12,
    )
    torch.manual_seed(0)
    model = transformers.ViTModel(config).eval()
    randomize(model)
    model.save_pretrained(folder, safe_serialization=True)
    processor = transformers.ViTImageProcessor(
        size={"height": VIT_SIZE, "width": VIT_SIZE},
        resample=2,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor.save_pretrained(folder)


def vit_reference(folder: Path) -> dict[str, np.ndarray]:
    """transformers' pixel values, last hidden states and pooler outputs of random images of the model's size,
    and the pixel values of smaller grey images, which its processor resizes."""
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    generator = np.random.default_rng(0)
    images = generator.integers(0, 256, (VIT_IMAGES, VIT_SIZE, VIT_SIZE, 3), dtype=np.uint8)
    small = generator.integers(0, 256, (VIT_IMAGES, VIT_SMALL_SIZE, VIT_SMALL_SIZE), dtype=np.uint8)
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        output = model(pixel_values=pixels)
    small_rgb = [np.repeat(image[..., None], 3, axis=-1) for image in small]
    return {
        "images": images,
        "pixel_values": pixels.numpy().astype(np.float32),
        "hidden": output.last_hidden_state.numpy().astype(np.float32),
        "pooled": output.pooler_output.numpy().astype(np.float32),
        "small_images": small,
        "small_pixel_values": processor(images=small_rgb, return_tensors="np")["pixel_values"].astype(np.float32),
    }


def write_bert() -> None:
    tiny = HERE / "tiny-bert"
    write_tiny(tiny)
    found = reference(tiny, TINY_TEXTS, TINY_LENGTH)
    np.savez_compressed(HERE / "tiny-bert-reference.npz", texts=np.array(TINY_TEXTS), **found)


def write_minilm() -> None:
    import sys

    sys.path.insert(0, str(REPOSITORY))
    from lab import text

    texts = text.load_texts("fortunes_topics").test[:MINILM_TEXTS]
    (HERE / "minilm-texts.json").write_text(json.dumps(texts, indent=1, ensure_ascii=False) + "\n")
    found = reference(MINILM, texts, MINILM_LENGTH)
    np.savez_compressed(HERE / "minilm-reference.npz", ids=found["ids"], pooled=found["pooled"])


def write_vit() -> None:
    tiny = HERE / "tiny-vit"
    write_tiny_vit(tiny)
    np.savez_compressed(HERE / "tiny-vit-reference.npz", **vit_reference(tiny))


PARTS = {"bert": write_bert, "minilm": write_minilm, "vit": write_vit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="part", help=f"what to write: {', '.join(PARTS)} (all by default)")
    parts = parser.parse_args().parts or list(PARTS)
    if unknown := sorted(set(parts) - set(PARTS)):
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")
    HERE.mkdir(exist_ok=True)
    for part in parts:
        PARTS[part]()
    written = sorted(path.name for path in HERE.iterdir())
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: {written} in {HERE}")


if __name__ == "__main__":
    main()
