"""Text augmentations edit only a text's own tokens and mask with its tokenizer's [MASK]: lab's tokenizers'
ids and a Hugging Face checkpoint's (the tiny BERT of tests/data/hf/: [PAD] 0, [CLS] 2, [SEP] 3, [MASK] 4)."""

import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from lab import augment, checkpoints, experiment, semisupervised, text, train
from lab.modality import LAB_SPECIAL_IDS, SpecialIds

TINY = Path(__file__).resolve().parent / "data" / "hf" / "tiny-bert"
TEXTS = ["the cat sat", "a dog ran far away"]


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return checkpoints.load(TINY, max_length=12).tokenizer


@pytest.fixture(scope="module")
def lab_tokenizer():
    return text.train_tokenizer(TEXTS * 3, vocab_size=40, max_length=12)


def _augmented(strength, ids, special_ids, **options):
    fn = augment.make_augmentation(strength, ids.shape[1:], special_ids=special_ids, **options)
    return np.asarray(fn(jax.random.PRNGKey(0), ids))


def test_each_tokenizer_provides_its_special_ids(tiny_tokenizer, lab_tokenizer):
    assert tiny_tokenizer.special_ids == SpecialIds(mask=4, kept=(0, 2, 3))  # [MASK]; [PAD], [CLS], [SEP]
    minilm = Path(__file__).resolve().parents[2] / "shared" / "checkpoints" / "all-MiniLM-L6-v2"
    if minilm.is_dir():
        assert checkpoints.load(minilm).tokenizer.special_ids == SpecialIds(mask=103, kept=(0, 101, 102))
    assert lab_tokenizer.special_ids == LAB_SPECIAL_IDS == SpecialIds(mask=2, kept=(0, 1))


# The two texts as each tokenizer cuts them to 12 ids (the second is truncated by the tiny BERT's, which
# keeps its [SEP]), with every token masked, and with every token deleted.
IDS = {
    "tiny_tokenizer": [[2, 62, 7, 36, 55, 23, 36, 55, 3, 0, 0, 0], [2, 5, 8, 50, 42, 22, 36, 49, 10, 36, 53, 3]],
    "lab_tokenizer": [[1, 37, 32, 36, 0, 0, 0, 0, 0, 0, 0, 0], [1, 20, 39, 35, 34, 38, 0, 0, 0, 0, 0, 0]],
}
MASKED = {
    "tiny_tokenizer": [[2, 4, 4, 4, 4, 4, 4, 4, 3, 0, 0, 0], [2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 3]],
    "lab_tokenizer": [[1, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0], [1, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0]],
}
DELETED = {
    "tiny_tokenizer": [[2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]] * 2,
    "lab_tokenizer": [[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]] * 2,
}


def _ids(name, request):
    tokenizer = request.getfixturevalue(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncation warning
        ids = tokenizer.encode(TEXTS)
    np.testing.assert_array_equal(ids, IDS[name])
    return ids, tokenizer.special_ids


@pytest.mark.parametrize("name", ["tiny_tokenizer", "lab_tokenizer"])
def test_masking_every_token_writes_the_tokenizers_mask_and_keeps_cls_sep_and_padding(name, request, monkeypatch):
    ids, special_ids = _ids(name, request)
    monkeypatch.setattr(augment, "_WEAK_MASK", 1.0)  # every token the augmentation may edit is masked
    np.testing.assert_array_equal(_augmented("weak", ids, special_ids), MASKED[name])
    monkeypatch.setattr(augment, "_STRONG_DELETE", 0.0)  # strong without deletion masks them too
    np.testing.assert_array_equal(_augmented("strong", ids, special_ids, magnitude=1.0), MASKED[name])


@pytest.mark.parametrize("name", ["tiny_tokenizer", "lab_tokenizer"])
def test_deleting_every_token_keeps_cls_and_sep_then_padding(name, request, monkeypatch):
    ids, special_ids = _ids(name, request)
    monkeypatch.setattr(augment, "_STRONG_DELETE", 5.0)  # deletes every token the augmentation may edit
    np.testing.assert_array_equal(_augmented("strong", ids, special_ids, magnitude=1.0), DELETED[name])


def test_a_checkpoint_runs_semi_supervised_methods_with_its_tokenizers_special_ids(monkeypatch):
    objectives = []
    fit = train.fit

    def recording_fit(model, state, tx, objective, *args, **kwargs):
        objectives.append(objective)
        return fit(model, state, tx, objective, *args, **kwargs)

    monkeypatch.setattr(train, "fit", recording_fit)
    config = {
        "setup": "transfer_semi_supervised", "method": "fixmatch", "dataset": "fortunes_topics", "model": "bert",
        "pretrain": "checkpoint", "checkpoint": str(TINY), "adaptation": "finetune", "pretrain_kwargs": {"max_length": 16},
        "labels_per_class": 2, "seeds": [0], "batch_size": 4, "steps": 1, "eval_every": 1,
        "method_kwargs": {"mu": 1},
    }  # fmt: skip
    with pytest.warns(UserWarning, match="longer than max_length=16"):
        experiment.run(config, progress=False)
    (objective,) = objectives
    assert isinstance(objective, semisupervised.FixMatch)
    assert objective.special_ids == SpecialIds(mask=4, kept=(0, 2, 3))
