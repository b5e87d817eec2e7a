"""Cache entries derived from data are keyed by a digest of the data's content, not by the dataset's name:
different data registered under one name are made again (the backbone pretrained, the tokenizer trained,
the texts encoded), and unchanged data are read from the cache. The datasets here are registered in-process,
as a user's own dataset is."""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
import pytest

from lab import cache, data, text, transfer

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A journey of a thousand miles begins with a single step.",
    "Unbelievable results, unbelievably quick!",
    "Over the hills and far away, the quick fox went.",
]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "lab-cache"))


@pytest.fixture
def trainings(monkeypatch):
    """Counts the backbones trained; each training is a no-op that returns the untrained backbone."""
    calls = []
    real_train = transfer._train_backbone

    def counted(config, target, source, progress):
        calls.append(config)
        return real_train(dataclasses.replace(config, steps=1), target, source, progress)

    monkeypatch.setattr(transfer, "_train_backbone", counted)
    return calls


@pytest.fixture
def registered(monkeypatch):
    """``registered(name, modality, make)`` registers a dataset whose loader returns ``make()``, so a test
    can change what the same name loads, as a user editing their files does."""

    def register(name, modality, make):
        loader = lambda **kwargs: make()  # noqa: E731
        monkeypatch.setitem(data.DATASET_ENTRIES, name, data.DatasetEntry(loader, modality, make().class_names))

    return register


def _digits_with_pixel(value: float) -> data.Dataset:
    digits = data.digits()
    x_train = digits.x_train.copy()
    x_train[0, 3, 4, 0] = value
    return dataclasses.replace(digits, name="own_images", x_train=x_train, source="in-process")


# --------------------------------------------------------------------------- the digest


def test_the_digest_is_the_same_for_the_same_content_and_only_for_it():
    digits = data.digits()
    assert digits.digest == data.digits().digest  # another load, the same content
    assert dataclasses.replace(digits, name="renamed", source="elsewhere").digest == digits.digest
    pixel = digits.x_train.copy()
    pixel[0, 3, 4, 0] += 1 / 16
    label = digits.y_test.copy()
    label[0] = (label[0] + 1) % 10
    changed = [
        dataclasses.replace(digits, x_train=pixel),
        dataclasses.replace(digits, y_test=label),
        dataclasses.replace(digits, x_train=digits.x_train.astype(np.float64)),  # same values, other dtype
        dataclasses.replace(digits, x_train=digits.x_train[..., 0], x_test=digits.x_test[..., 0]),  # other shape
        dataclasses.replace(digits, class_names=tuple(reversed(digits.class_names))),
        dataclasses.replace(digits, x_unlabeled=digits.x_test),
        dataclasses.replace(digits, tokenizer="0123456789abcdef"),
    ]
    digests = {digits.digest, *(dataset.digest for dataset in changed)}
    assert len(digests) == 1 + len(changed)
    assert all(len(digest) == 64 and int(digest, 16) >= 0 for digest in digests)


def test_content_digest_frames_its_parts_and_is_sha256():
    assert cache.content_digest(["ab", "c"]) != cache.content_digest(["a", "bc"])
    assert cache.content_digest("ab", "c") != cache.content_digest("a", "bc")
    assert cache.content_digest(np.zeros(4, np.uint8)) != cache.content_digest(np.zeros((2, 2), np.uint8))
    assert cache.content_digest(np.zeros(4, np.uint8)) != cache.content_digest(np.zeros(1, np.uint32))
    assert cache.content_digest(None) != cache.content_digest()
    # An array's part is its descriptor, shape and bytes, SHA-256-ed: independent of its memory layout.
    array = np.arange(6, dtype="<i4").reshape(2, 3)
    expected = hashlib.sha256(b"array '<i4' (2, 3)\n" + array.tobytes()).hexdigest()
    assert cache.content_digest(array) == expected
    assert cache.content_digest(np.asfortranarray(array)) == expected


# --------------------------------------------------------------------------- pretrained backbones


def test_an_edited_pixel_pretrains_again_and_unchanged_images_read_the_cache(registered, trainings, tmp_path):
    """The stale-cache bug: the key held the dataset's name, so other images under that name reused the
    backbone pretrained on the first ones."""
    pixel = {"value": 0.0}
    registered("own_images", "image", lambda: _digits_with_pixel(pixel["value"]))
    config = transfer.PretrainConfig("autoencoder", "own_images", model_kwargs={"hidden": (8,)}, steps=1)
    root = tmp_path / "pretrained"

    transfer.pretrain(config, cache_dir=root)
    transfer.pretrain(config, cache_dir=root)  # the same images: read from the cache
    assert len(trainings) == 1
    pixel["value"] = 0.5
    transfer.pretrain(config, cache_dir=root)  # one pixel changed: pretrained again
    assert len(trainings) == 2
    pixel["value"] = 0.0
    transfer.pretrain(config, cache_dir=root)  # the first images again: their entry is still there
    assert len(trainings) == 2
    assert len(list(root.iterdir())) == 2


def test_a_source_dataset_edited_under_its_name_pretrains_again(registered, trainings, tmp_path):
    pixel = {"value": 0.0}
    registered("own_images", "image", lambda: _digits_with_pixel(pixel["value"]))
    config = transfer.PretrainConfig(
        "dataset", "digits", source_dataset="own_images", model_kwargs={"hidden": (8,)}, steps=1
    )
    root = tmp_path / "pretrained"
    transfer.pretrain(config, cache_dir=root)
    transfer.pretrain(config, cache_dir=root)
    assert len(trainings) == 1
    pixel["value"] = 0.5
    transfer.pretrain(config, cache_dir=root)
    assert len(trainings) == 2


def _own_texts(train_texts: list[str]) -> data.Dataset:
    """A text dataset built in-process, tokenized by a tokenizer trained on ``CORPUS`` alone: editing a
    training text changes the ids, never the tokenizer."""
    tokenizer = text.train_tokenizer(CORPUS, vocab_size=60, max_length=64)
    return data.Dataset(
        name="own_texts",
        x_train=tokenizer.encode(train_texts),
        y_train=np.array([0, 1, 0, 1]),
        x_test=tokenizer.encode(CORPUS[:2]),
        y_test=np.array([0, 1]),
        class_names=("a", "b"),
        source="in-process",
        vocab_size=tokenizer.vocab_size,
        tokenizer=tokenizer.fingerprint,
        special_ids=tokenizer.special_ids,
        x_unlabeled=tokenizer.encode(CORPUS),
    )


def test_an_edited_text_pretrains_again_even_with_the_same_tokenizer(registered, trainings, tmp_path):
    """The issue's case: different data under one name with the same tokenizer reused a stale backbone."""
    texts = list(CORPUS)
    registered("own_texts", "text", lambda: _own_texts(texts))
    config = transfer.PretrainConfig("mlm", "own_texts", model="bag", model_kwargs={"dim": 8}, steps=1, batch_size=4)
    root = tmp_path / "pretrained"
    transfer.pretrain(config, cache_dir=root)
    transfer.pretrain(config, cache_dir=root)
    assert len(trainings) == 1
    before = _own_texts(texts)
    texts[2] = "The lazy dog jumps over the quick brown fox."
    after = _own_texts(texts)
    assert after.tokenizer == before.tokenizer and not np.array_equal(after.x_train, before.x_train)
    transfer.pretrain(config, cache_dir=root)
    assert len(trainings) == 2
    assert sorted(path.name for path in root.iterdir()) == sorted(
        transfer.cache_key(config, load_dataset=lambda name: dataset) for dataset in (before, after)
    )


# --------------------------------------------------------------------------- tokenizers and token ids


@pytest.fixture
def bpe_trainings(monkeypatch):
    calls = []
    real_train = text._train

    def counted(corpus, vocab_size):
        calls.append(list(corpus))
        return real_train(corpus, vocab_size)

    monkeypatch.setattr(text, "_train", counted)
    return calls


def test_an_edited_corpus_text_trains_the_tokenizer_again(bpe_trainings):
    text.train_tokenizer(CORPUS, vocab_size=60)
    text.train_tokenizer(list(CORPUS), vocab_size=60)  # the same texts: read from the cache
    assert len(bpe_trainings) == 1
    edited = [*CORPUS[:-1], CORPUS[-1].replace("fox", "cat")]
    text.train_tokenizer(edited, vocab_size=60)
    assert bpe_trainings[-1] == edited and len(bpe_trainings) == 2


def test_an_edited_text_is_encoded_again_and_unchanged_texts_read_the_cache(monkeypatch):
    tokenizer = text.train_tokenizer(CORPUS, vocab_size=60, max_length=64)
    encoded = []
    real_encode = text.Tokenizer._encode

    def counted(self, texts):
        encoded.append(list(texts))
        return real_encode(self, texts)

    monkeypatch.setattr(text.Tokenizer, "_encode", counted)
    first = text._cached_ids("own_texts", tokenizer, list(CORPUS))
    np.testing.assert_array_equal(text._cached_ids("own_texts", tokenizer, list(CORPUS)), first)
    assert len(encoded) == 1
    edited = [CORPUS[0].replace("fox", "cat"), *CORPUS[1:]]
    again = text._cached_ids("own_texts", tokenizer, edited)
    assert len(encoded) == 2
    np.testing.assert_array_equal(again, real_encode(tokenizer, edited)[0])


# --------------------------------------------------------------------------- runs

TRANSFER = {
    "setup": "transfer", "pretrain": "autoencoder", "model": "mlp", "model_kwargs": {"hidden": [8]},
    "pretrain_kwargs": {"steps": 2, "batch_size": 16}, "steps": 2, "eval_every": 2, "batch_size": 16,
    "labels_per_class": 2, "seeds": [0],
}  # fmt: skip


def test_a_transfer_run_with_dataset_kwargs_pretrains_on_the_data_they_load(trainings, monkeypatch):
    """dataset_kwargs were refused for transfer runs while the key could not tell their data apart."""
    from lab import experiment

    loads = []
    real_digits = data.DATASET_ENTRIES["digits"].load

    @functools.wraps(real_digits)  # the same signature: dataset_kwargs are checked against it
    def counted_digits(**kwargs):
        loads.append(kwargs)
        return real_digits(**kwargs)

    counted = dataclasses.replace(data.DATASET_ENTRIES["digits"], load=counted_digits)
    monkeypatch.setitem(data.DATASET_ENTRIES, "digits", counted)
    experiment.run(TRANSFER, progress=False)
    experiment.run({**TRANSFER, "dataset_kwargs": {"seed": 1}}, progress=False)
    assert [config.steps for config in trainings] == [2, 2]
    experiment.run({**TRANSFER, "dataset_kwargs": {"seed": 1}}, progress=False)  # read from the cache
    assert len(trainings) == 2
    # Each run loads its data once, for training and for the backbone's key.
    assert loads == [{}, {"seed": 1}, {"seed": 1}]


def test_active_learning_embeds_the_pool_with_the_pretrained_backbone(trainings):
    from lab import active

    config = {"learner": TRANSFER, "strategy": "margin", "cold_start": "typiclust", "embeddings": "pretrained",
              "budgets": [10, 20]}  # fmt: skip
    result = active.run(config, progress=False)
    assert [len(selection) for selection in result.selections[0]] == [10, 10]
    assert len(trainings) == 1  # the cold start's backbone, read again by every round's run
