"""Text models and masked-language-model pretraining on token sequences the tests make themselves:
padding invariance, BERT's masking statistics, the MLM loss against a hand computation, MLM
learning a repeated pattern, which pretraining sources fit which modality, a vocabulary that does
not match a backbone, and ``experiment.run`` on a synthetic text dataset with int32 tokens end to end."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lab import data, experiment, models, train, transfer
from lab.modality import CLS_ID, MASK_ID, PAD_ID
from lab.models import NUM_SPECIAL_TOKENS

LENGTH, VOCAB, NUM_CLASSES = 16, 40, 4
# Small enough to compile in a few seconds on a CPU.
TINY = {
    "bag": {"dim": 16},
    "text_transformer": {"dim": 16, "depth": 1, "heads": 2, "mlp_dim": 32},
}
TEXT_DATASET = "toy_text"


def pad(texts, length):
    """Token lists -> (N, length) int32, [CLS] first, padded with [PAD]."""
    x = np.full((len(texts), length), PAD_ID, np.int32)
    for row, tokens in zip(x, texts):
        row[: len(tokens) + 1] = [CLS_ID, *tokens]
    return x


def topic_texts(rng, n, *, length=LENGTH, vocab=VOCAB, topic_size=6):
    """An easy task: each class has ``topic_size`` topic tokens; a text (4 to length-1 tokens) draws
    half of its tokens from its class's topic and the rest from the tokens all classes share."""
    y = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
    shared = np.arange(NUM_SPECIAL_TOKENS + topic_size * NUM_CLASSES, vocab)
    texts = []
    for label in y:
        topic = NUM_SPECIAL_TOKENS + topic_size * label + np.arange(topic_size)
        size = rng.integers(4, length)
        texts.append(np.where(rng.random(size) < 0.5, rng.choice(topic, size), rng.choice(shared, size)))
    return pad(texts, length), y


def text_dataset(seed=0, *, vocab=VOCAB, topic_size=6, n_train=150, n_test=90, n_unlabeled=60, name=TEXT_DATASET):
    rng = np.random.default_rng(seed)
    x_train, y_train = topic_texts(rng, n_train, vocab=vocab, topic_size=topic_size)
    x_test, y_test = topic_texts(rng, n_test, vocab=vocab, topic_size=topic_size)
    x_unlabeled, _ = topic_texts(rng, n_unlabeled, vocab=vocab, topic_size=topic_size)
    return data.Dataset(
        name, x_train, y_train, x_test, y_test, ("a", "b", "c", "d"), "synthetic", vocab_size=vocab, x_unlabeled=x_unlabeled
    )


@pytest.fixture
def registered(monkeypatch):
    """Registers a function ``(**dataset kwargs) -> None`` that makes TEXT_DATASET load a new synthetic text dataset."""

    def register(**kwargs):
        dataset = text_dataset(**kwargs)
        monkeypatch.setitem(data.DATASET_ENTRIES, TEXT_DATASET, data.DatasetEntry(lambda: dataset, "text", dataset.class_names))
        return dataset

    monkeypatch.setenv("LAB_COMPILATION_CACHE", "off")
    return register


@pytest.fixture
def fit_calls(monkeypatch):
    """Replaces training by a no-op that returns the initial state; lists the (objective, pools) of each call."""
    calls = []

    def no_op_fit(model, state, tx, objective, pools, **kwargs):
        calls.append((objective, pools))
        return train.FitResult(state=state, history=[], log={}, wall_time_s={})

    monkeypatch.setattr(train, "fit", no_op_fit)
    return calls


def tiny_model(name, *, seed=0, length=2 * LENGTH, **hyperparameters):
    # One length for every model built here: initializers compile once per parameter shape.
    return models.make_model(name, (length,), NUM_CLASSES, seed=seed, vocab_size=VOCAB, **{**TINY[name], **hyperparameters})


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize(("name", "pooling"), [("bag", None), ("text_transformer", "mean"), ("text_transformer", "cls")])
def test_a_padded_text_classifies_like_the_unpadded_one(name, pooling):
    rng = np.random.default_rng(0)
    texts = [rng.integers(NUM_SPECIAL_TOKENS, VOCAB, size) for size in (3, 9, 14)]
    model = tiny_model(name)  # takes up to 32 tokens
    if pooling is not None:
        model.backbone.pooling = pooling
    model.eval()

    short, long = model(pad(texts, 16)), model(pad(texts, 32))

    np.testing.assert_allclose(long, short, rtol=1e-5, atol=1e-6)
    # Not a model that ignores its input: other texts get other logits.
    assert not np.allclose(model(pad(texts[::-1], 16)), short, atol=1e-4)


@pytest.mark.parametrize("name", TINY)
def test_text_models_are_a_backbone_and_a_linear_head(name):
    model = tiny_model(name)
    x = jnp.asarray(topic_texts(np.random.default_rng(0), 4)[0])

    features, tokens = model.features(x), model.backbone.token_features(x)

    assert features.shape == (4, model.feature_dim) and tokens.shape == (4, LENGTH, model.feature_dim)
    np.testing.assert_allclose(model(x), model.head(features), rtol=1e-6)
    paths = {path for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert {path[0] for path in paths} == {"backbone", "head"}
    assert ("backbone", "embed", "embedding") in paths


def test_text_transformer_shares_the_image_transformers_encoder_and_masks_padding_keys():
    model = tiny_model("text_transformer")
    assert models.TextEncoder.encode is models.TransformerEncoder.encode
    assert all(type(block) is models.EncoderBlock for block in model.backbone.blocks.layers)
    x = pad([[5, 6, 7]], LENGTH)
    block = model.backbone.blocks.layers[0]
    tokens = model.backbone.embed(x) + model.backbone.position[:LENGTH]
    # Attention with the padding mask equals attention over the text's tokens alone.
    masked = block(tokens, models.padding_mask(x))[:, :4]
    alone = block(tokens[:, :4])
    np.testing.assert_allclose(masked, alone, rtol=1e-5, atol=1e-6)


def test_bag_token_features_are_the_mean_embedding_of_the_other_tokens():
    model = tiny_model("bag")
    x = pad([[5, 6, 7], [9]], 6)
    embedding = np.asarray(model.backbone.embed.embedding[...])

    features = np.asarray(model.backbone.token_features(x))

    np.testing.assert_allclose(features[0, 2], embedding[[CLS_ID, 5, 7]].mean(0), rtol=1e-5)
    np.testing.assert_allclose(features[1, 0], embedding[9], rtol=1e-5)  # [CLS]'s only other token
    np.testing.assert_allclose(model.features(x)[0], embedding[[CLS_ID, 5, 6, 7]].mean(0), rtol=1e-5)


def test_models_refuse_the_modalities_they_do_not_take(registered):
    registered()
    with pytest.raises(ValueError, match="^model 'cnn' does not take text inputs; choose one of: bag, text_transformer, bert$"):
        models.make_model("cnn", (64,), 3, seed=0)
    with pytest.raises(ValueError, match="^model 'mlp' does not take text inputs; choose one of: bag, text_transformer, bert$"):
        models.make_model("mlp", (64,), 3, seed=0)
    with pytest.raises(ValueError, match="^model 'bag' does not take image inputs; choose one of: logreg, mlp, cnn"):
        models.make_model("bag", (8, 8, 1), 3, seed=0, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="^model 'text_transformer' does not take signal inputs"):
        models.make_model("text_transformer", (40, 1), 3, seed=0, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="model 'transformer' does not take text inputs"):
        experiment.ExperimentConfig.from_dict({"dataset": TEXT_DATASET, "model": "transformer"})


def test_text_models_need_the_vocabulary_size_from_the_data_and_check_their_settings():
    with pytest.raises(TypeError, match=r"^model 'bag' needs vocab_size, which the data fixes"):
        models.make_model("bag", (LENGTH,), 3, seed=0)
    assert "vocab_size" not in models.default_hyperparameters("text_transformer")
    with pytest.raises(TypeError, match=r"unknown hyperparameter\(s\) \['vocab_size'\] for model 'cnn'"):
        models.make_model("cnn", (8, 8, 1), 3, seed=0, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="vocab_size must be an integer >= 5, got 4"):
        models.make_model("bag", (LENGTH,), 3, seed=0, vocab_size=4)
    with pytest.raises(ValueError, match="unknown pooling 'max'; choose one of: cls, mean"):
        tiny_model("text_transformer", pooling="max")
    with pytest.raises(ValueError, match="heads=3 must divide dim=16"):
        tiny_model("text_transformer", heads=3)


# --------------------------------------------------------------------------- MLM


def test_masking_follows_berts_rates_and_never_selects_special_tokens():
    rng = np.random.default_rng(0)
    x = rng.integers(NUM_SPECIAL_TOKENS, 1000, (2000, 64)).astype(np.int32)
    x[:, 0] = CLS_ID
    x[:, 50:] = PAD_ID
    x[:100, 3:] = PAD_ID  # two ordinary tokens: one is chosen all the same
    x[100, 1:] = PAD_ID  # none: nothing is chosen
    special = rng.random(x.shape) < 0.05
    x[special] = rng.integers(0, NUM_SPECIAL_TOKENS, special.sum())

    inputs, positions, weights = map(np.asarray, transfer.mask_tokens(jax.random.key(0), jnp.asarray(x), 1000))

    assert positions.shape == weights.shape == (2000, 10)  # ceil(0.15 * 64) predictions at most
    selected = np.zeros(x.shape, bool)
    for row, (where, weight) in enumerate(zip(positions, weights)):
        assert len(set(where)) == 10  # distinct positions, so the chosen ones are each counted once
        selected[row, where[weight]] = True
    np.testing.assert_array_equal(np.asarray(transfer.selected_positions(positions, weights, 64)), selected)
    eligible = x >= NUM_SPECIAL_TOKENS
    # BERT's count: max(1, round(0.15 n)) of the n ordinary tokens of each sequence (halves up), none of none.
    n = eligible.sum(1)
    expected = np.where(n > 0, np.maximum(1, np.floor(n * np.float32(0.15) + np.float32(0.5))), 0)
    np.testing.assert_array_equal(selected.sum(1), expected)
    assert expected[100] == 0 and (expected[:100] == 1).all()
    assert weights[:, 0].sum() == 1999 and (np.diff(weights.astype(int), axis=1) <= 0).all()  # chosen first
    assert inputs.dtype == np.int32
    assert not selected[~eligible].any()
    np.testing.assert_array_equal(inputs[~selected], x[~selected])
    assert abs(selected.sum() / eligible.sum() - 0.15) < 0.01
    masked = inputs[selected] == MASK_ID
    unchanged = inputs[selected] == x[selected]
    random = ~masked & ~unchanged
    # A random replacement draws the original token 1 time in 996.
    assert abs(masked.mean() - 0.8) < 0.01
    assert abs(random.mean() - 0.1 * 995 / 996) < 0.006
    assert abs(unchanged.mean() - (0.1 + 0.1 / 996)) < 0.006
    assert (inputs[selected][random] >= NUM_SPECIAL_TOKENS).all() and (inputs < 1000).all()
    # Which tokens are chosen is uniform over the ordinary ones: every position of the long texts alike.
    share = selected[101:, 1:50].sum(0) / eligible[101:, 1:50].sum(0)
    assert share.min() > 0.12 and share.max() < 0.18


def test_mlm_loss_is_the_cross_entropy_of_the_selected_positions():
    logits = np.array([[[2.0, 0.0, 1.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0]]], np.float32)
    targets = np.array([[0, 4, 2]], np.int32)
    selected = np.array([[True, True, False]])
    # -log softmax(row)[target] for the two selected rows; the first is right, the second wrong.
    first = -(2.0 - np.log(np.exp(2.0) + np.exp(1.0) + 3.0))
    second = -(1.0 - np.log(np.exp(3.0) + np.exp(1.0) + 3.0))

    loss, accuracy = transfer.masked_token_loss(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(selected))

    np.testing.assert_allclose(loss, (first + second) / 2, rtol=1e-6)
    np.testing.assert_allclose(accuracy, 0.5)


@pytest.mark.parametrize("model", ["bag", "text_transformer"])
def test_mlm_objective_scores_only_the_chosen_positions_as_the_logits_of_every_position_would(model):
    """The objective computes the vocabulary head at the chosen positions only; its loss and accuracy
    are those of the head at every position, averaged over the chosen ones."""
    config = transfer.PretrainConfig("mlm", "toy", model=model, model_kwargs=TINY[model], head_width=8)
    architecture = transfer.Architecture(model, (LENGTH,), TINY[model], {"vocab_size": VOCAB})
    predictor = transfer.PRETRAIN_SOURCES["mlm"].module(architecture, config, None)
    x = jnp.asarray(topic_texts(np.random.default_rng(1), 8)[0])
    objective = transfer.MaskedLanguageModelling(VOCAB)
    key = jax.random.key(2)
    seen = []
    model_at_positions = lambda ids, positions: seen.append(positions.shape) or predictor(ids, positions)  # noqa: E731

    loss, step_metrics, _ = objective.loss(model_at_positions, {"unlabeled": {"x": x}}, key, None, 0)

    assert seen == [(8, 3)]  # ceil(0.15 * 16) positions per text, not 16
    inputs, positions, weights = transfer.mask_tokens(key, x, VOCAB)
    every_position = predictor(inputs)
    assert every_position.shape == (8, LENGTH, VOCAB)
    selected = transfer.selected_positions(positions, weights, LENGTH)
    expected_loss, expected_accuracy = transfer.masked_token_loss(every_position, x, selected)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    np.testing.assert_allclose(step_metrics["masked_accuracy"], expected_accuracy, rtol=1e-6)
    # An untrained model guesses no token right: a model that predicts the input token gets the
    # chosen tokens left unchanged (1 in 10) right, so the accuracies compared are not zeros.
    table = jax.random.normal(jax.random.key(1), (VOCAB, VOCAB)) + 10 * jnp.eye(VOCAB)
    x = jnp.asarray(topic_texts(np.random.default_rng(3), 256)[0])
    copy_at_positions = lambda ids, positions: table[jnp.take_along_axis(ids, positions, axis=1)]  # noqa: E731
    _, step_metrics, _ = objective.loss(copy_at_positions, {"unlabeled": {"x": x}}, key, None, 0)
    inputs, positions, weights = transfer.mask_tokens(key, x, VOCAB)
    selected = transfer.selected_positions(positions, weights, LENGTH)
    _, expected_accuracy = transfer.masked_token_loss(table[inputs], x, selected)
    assert 0.05 < float(expected_accuracy) < 0.2
    np.testing.assert_allclose(step_metrics["masked_accuracy"], expected_accuracy, rtol=1e-6)


def repeated_patterns(rng, n):
    """Texts that repeat a random 3-token pattern: a masked token is the one 3 places away."""
    patterns = rng.integers(NUM_SPECIAL_TOKENS, VOCAB, (n, 3))
    return pad(np.tile(patterns, 5), LENGTH)


def test_mlm_learns_to_fill_in_a_repeated_pattern(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    x_train, x_unlabeled = repeated_patterns(rng, 256), repeated_patterns(rng, 256)
    y = np.arange(256, dtype=np.int32) % 2
    corpus = data.Dataset("repeats", x_train, y, x_train[:8], y[:8], ("a", "b"), "synthetic", VOCAB, x_unlabeled)
    config = transfer.PretrainConfig(
        "mlm", "repeats", model="text_transformer", model_kwargs=TINY["text_transformer"] | {"dim": 32, "mlp_dim": 64},
        steps=300, batch_size=64, learning_rate=3e-3,
    )

    backbone = transfer.pretrain(config, cache_dir=tmp_path, load_dataset=lambda name: corpus)

    accuracy = np.asarray(backbone.log["masked_accuracy"])
    assert len(accuracy) == 300 and accuracy[0] < 0.2
    assert np.mean(accuracy[-50:]) > 0.9
    assert backbone.architecture.model_inputs == {"vocab_size": VOCAB}
    # The cache keeps the log with the backbone.
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: pytest.fail("pretrained again"))
    again = transfer.pretrain(config, cache_dir=tmp_path, load_dataset=lambda name: corpus)
    assert again.log == backbone.log
    # And the token predictor's head: the pretrained model from the same entry fills blanks (with
    # the head's initial weights instead of the trained ones, 70% of them).
    loads = []
    predictor = transfer.pretraining_model(
        config, cache_dir=tmp_path, load_dataset=lambda name: loads.append(name) or corpus
    )
    assert loads == ["repeats"]  # the target is loaded once, for the cache key and for the head's source
    x = repeated_patterns(rng, 64)
    masked = x.copy()
    masked[:, 5] = MASK_ID
    guesses = np.asarray(predictor(jnp.asarray(masked))).argmax(-1)[:, 5]
    assert np.mean(guesses == x[:, 5]) > 0.9


def test_mlm_pretrains_on_the_training_texts_and_the_unlabeled_corpus_never_the_test_texts(fit_calls, tmp_path):
    dataset = text_dataset()
    config = transfer.PretrainConfig("mlm", "toy", model="bag", model_kwargs=TINY["bag"], steps=1, batch_size=8)
    transfer.pretrain(config, cache_dir=tmp_path, load_dataset=lambda name: dataset)

    ((objective, pools),) = fit_calls
    assert isinstance(objective, transfer.MaskedLanguageModelling) and objective.vocab_size == VOCAB
    (x,) = (pool["x"] for pool in pools.values())
    assert x.dtype == jnp.int32
    np.testing.assert_array_equal(x, np.concatenate([dataset.x_train, dataset.x_unlabeled]))


def test_pretraining_sources_refuse_modalities_they_make_no_sense_for(registered):
    registered()
    with pytest.raises(ValueError, match=(
        "^pretraining source 'mlm' does not make sense for image inputs; "
        "for image inputs choose one of: classes, dataset, simclr, autoencoder$"
    )):
        transfer.PretrainConfig("mlm", "digits")
    text_sources = "for text inputs choose one of: classes, dataset, simclr, mlm$"
    with pytest.raises(ValueError, match=f"^pretraining source 'autoencoder' does not make sense for text inputs; {text_sources}"):
        experiment.ExperimentConfig.from_dict(
            {"setup": "transfer", "dataset": TEXT_DATASET, "model": "bag", "pretrain": "autoencoder"}
        )
    # A dataset the registry does not know is checked once loaded, before training.
    with pytest.raises(ValueError, match=f"^pretraining source 'autoencoder' does not make sense for text inputs; {text_sources}"):
        transfer.pretrain(
            transfer.PretrainConfig("autoencoder", "unregistered", model="bag"), load_dataset=lambda name: text_dataset()
        )


def test_simclr_pretrains_a_text_backbone_on_augmented_views(tmp_path):
    config = transfer.PretrainConfig("simclr", "toy", model="bag", model_kwargs=TINY["bag"], steps=60, batch_size=32)

    backbone = transfer.pretrain(config, cache_dir=tmp_path, load_dataset=lambda name: text_dataset())

    loss = np.asarray(backbone.log["loss"])
    assert np.mean(loss[-10:]) < 0.9 * np.mean(loss[:10])


def test_a_backbone_of_another_vocabulary_is_refused_before_training(registered, monkeypatch, tmp_path, fit_calls):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    registered(vocab=VOCAB)
    config = {
        "setup": "transfer", "dataset": TEXT_DATASET, "model": "bag", "model_kwargs": TINY["bag"], "pretrain": "mlm",
        "pretrain_kwargs": {"steps": 2, "batch_size": 8}, "steps": 2, "batch_size": 8,
    }
    # Caches an (untrained) backbone for VOCAB tokens.
    pretrain_config = experiment._pretrain_config(experiment.ExperimentConfig.from_dict(config))
    backbone = transfer.pretrain(pretrain_config, load_dataset=data.load)
    registered(vocab=VOCAB + 10)  # the tokenizer changed, so did the data's digest: another key, pretrained again
    again = transfer.pretrain(pretrain_config, load_dataset=data.load)
    assert again.architecture.model_inputs == {"vocab_size": VOCAB + 10} and len(fit_calls) == 2

    with pytest.raises(ValueError, match=(
        r"the pretrained backbone was made for vocab_size=40, but the data has vocab_size=50: token ids of another "
        r"vocabulary mean other tokens; pretrain on data of this vocabulary"
    )):
        backbone.classifier(4, seed=0, model_inputs={"vocab_size": VOCAB + 10})
    # A source of another vocabulary than the target's.
    other = text_dataset(vocab=VOCAB + 10, name="other")
    with pytest.raises(ValueError, match="the source dataset other has vocab_size=50 but the target toy_text has vocab_size=40"):
        transfer.pretrain(
            transfer.PretrainConfig("dataset", TEXT_DATASET, model="bag", source_dataset="other"),
            load_dataset=lambda name: other if name == "other" else text_dataset(),
        )
    # A source of the same vocabulary size whose ids another tokenizer made.
    target, other = (dataclasses.replace(text_dataset(name=name), tokenizer=name) for name in (TEXT_DATASET, "other"))
    message = "the source dataset other was tokenized by tokenizer other but the target toy_text by toy_text"
    with pytest.raises(ValueError, match=message):
        transfer.pretrain(
            transfer.PretrainConfig("dataset", TEXT_DATASET, model="bag", source_dataset="other"),
            load_dataset=lambda name: other if name == "other" else target,
        )


# --------------------------------------------------------------------------- experiment.run


def test_experiment_transfers_to_text_with_int32_tokens_end_to_end(registered, monkeypatch):
    registered()
    seen = []
    for encoder in (models.BagEncoder, models.TextEncoder):
        for method in ("__call__", "token_features"):
            original = getattr(encoder, method)

            def recording(self, x, original=original):
                seen.append(x.dtype)
                return original(self, x)

            monkeypatch.setattr(encoder, method, recording)
    config = {
        "setup": "transfer", "dataset": TEXT_DATASET, "model": "bag", "model_kwargs": TINY["bag"],
        "labels_per_class": 10, "batch_size": 16, "learning_rate": 1e-2, "steps": 100,
    }

    mlm = experiment.run({**config, "pretrain": "mlm", "pretrain_kwargs": {"steps": 20, "batch_size": 32}}, progress=False)
    classes = experiment.run(
        {
            **config, "classes": [0, 1], "pretrain": "classes", "pretrain_kwargs": {"steps": 20, "batch_size": 16},
            "adaptation": "linear_probe",
        },
        progress=False,
    )

    assert set(seen) == {jnp.dtype(jnp.int32)}
    assert mlm.record().method == "mlm+finetune" and classes.record().method == "classes+linear_probe"
    # The easy task is learned from 10 labels per class (chance: 1/4 and 1/2).
    assert min(mlm.metrics["accuracy"]) > 0.8 and min(classes.metrics["accuracy"]) > 0.8


def test_pseudo_labels_beat_supervised_training_on_an_easy_text_task(registered):
    """12 topic tokens per class and 2 labeled texts per class: the labeled texts show some of a
    topic's tokens, and the unlabeled texts tie the others to them."""
    registered(vocab=64, topic_size=12, n_train=400, n_test=200)
    config = {
        "dataset": TEXT_DATASET, "model": "bag", "model_kwargs": TINY["bag"], "labels_per_class": 2,
        "seeds": [0, 1, 2], "batch_size": 16, "learning_rate": 1e-2, "steps": 400, "eval_every": 400,
    }

    supervised = experiment.run(config, progress=False)
    pseudo_label = experiment.run({**config, "setup": "semi_supervised", "method": "pseudo_label"}, progress=False)

    # Measured: 0.75, 0.70, 0.72 against 0.96, 0.955, 0.97.
    gain = np.array(pseudo_label.metrics["accuracy"]) - np.array(supervised.metrics["accuracy"])
    assert (gain > 0.1).all()
