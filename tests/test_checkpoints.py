"""Hugging Face checkpoints read into lab (lab.checkpoints) against `transformers`' own outputs.

The references under tests/data/hf/ were computed once by tests/data/make_hf_fixtures.py with
`transformers` + `torch`; these tests need neither.
"""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from lab import augment, checkpoints, cli, data, experiment, train, transfer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data" / "hf"
TINY = FIXTURES / "tiny-bert"
MINILM = ROOT.parent / "shared" / "checkpoints" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def tiny_reference():
    with np.load(FIXTURES / "tiny-bert-reference.npz") as reference:
        return {name: reference[name] for name in reference.files}


@pytest.fixture(scope="module")
def tiny(tiny_reference):
    return checkpoints.load(TINY, max_length=tiny_reference["ids"].shape[1])


def test_tiny_checkpoint_matches_transformers_token_ids_hidden_states_and_pooled_embeddings(tiny, tiny_reference):
    texts = [str(text) for text in tiny_reference["texts"]]
    with pytest.warns(UserWarning, match="3 of 6 texts are longer than max_length=16"):
        ids = tiny.tokenizer.encode(texts)
    np.testing.assert_array_equal(ids, tiny_reference["ids"])
    model = tiny.classifier(3, seed=0)
    model.eval()
    # Every position, padding included: a padding query attends to the text as transformers' does.
    np.testing.assert_allclose(model.backbone.token_features(ids), tiny_reference["hidden"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.backbone(ids), tiny_reference["pooled"], rtol=0, atol=1e-5)
    assert model(ids).shape == (6, 3)


def test_pooling_is_read_from_the_folder_and_can_be_overridden(tiny, tiny_reference, tmp_path):
    assert (tiny.model_kwargs["pooling"], tiny.model_kwargs["normalize"]) == ("mean", True)
    cls = checkpoints.load(TINY, max_length=16, pooling="cls", normalize=False)
    model = cls.classifier(2, seed=0)
    model.eval()
    np.testing.assert_allclose(model.backbone(tiny_reference["ids"]), tiny_reference["hidden"][:, 0], atol=1e-5)
    # Without sentence-transformers' files, a BERT folder pools by [CLS], unnormalised.
    bare = tmp_path / "bare"
    shutil.copytree(TINY, bare, ignore=shutil.ignore_patterns("modules.json", "1_Pooling"))
    assert checkpoints.read_pooling(bare) == ("cls", False)


@pytest.mark.skipif(not MINILM.is_dir(), reason=f"the shared all-MiniLM-L6-v2 checkpoint is not at {MINILM}")
def test_all_minilm_l6_v2_matches_transformers_on_32_fortunes():
    texts = json.loads((FIXTURES / "minilm-texts.json").read_text())
    with np.load(FIXTURES / "minilm-reference.npz") as reference:
        expected_ids, expected = reference["ids"], reference["pooled"]
    checkpoint = checkpoints.load(MINILM, max_length=128)
    with pytest.warns(UserWarning, match="2 of 32 texts"):
        np.testing.assert_array_equal(checkpoint.tokenizer.encode(texts), expected_ids)
    with pytest.warns(UserWarning):
        embeddings = checkpoint.embed(texts, batch_size=32)
    cosine = (embeddings * expected).sum(1) / np.linalg.norm(embeddings, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.99999
    assert np.abs(embeddings - expected).max() <= 1e-4


# --------------------------------------------------------------------------- bad checkpoints


def copy_of_tiny(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoint"
    shutil.copytree(TINY, folder)
    return folder


def rewrite_weights(folder: Path, change) -> None:
    weights = load_file(folder / "model.safetensors")
    change(weights)
    save_file(weights, folder / "model.safetensors")


def one_line_error(source, **kwargs) -> str:
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load(source, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_a_folder_without_config_json_is_named(tmp_path):
    folder = copy_of_tiny(tmp_path)
    (folder / "config.json").unlink()
    expected = f"{folder / 'config.json'}: no such file; a Hugging Face model folder has config.json"
    assert one_line_error(folder) == expected


def test_a_model_type_lab_does_not_build_lists_those_it_does(tmp_path):
    folder = copy_of_tiny(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    message = one_line_error(folder)
    assert message == f"{folder / 'config.json'}: model_type 'gpt2' is not one lab builds; it builds bert, vit"


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    folder = copy_of_tiny(tmp_path)

    def change(weights):
        del weights["encoder.layer.1.attention.self.key.bias"]
        weights["encoder.layer.2.output.dense.weight"] = np.zeros((32, 64), np.float32)

    rewrite_weights(folder, change)
    message = one_line_error(folder, max_length=16)
    assert message == (
        f"{folder / 'model.safetensors'}: missing tensors encoder.layer.1.attention.self.key.bias; "
        "unexpected tensors encoder.layer.2.output.dense.weight"
    )


def test_a_tensor_of_the_wrong_shape_is_named_with_both_shapes(tmp_path):
    folder = copy_of_tiny(tmp_path)
    misshapen = {"encoder.layer.0.intermediate.dense.weight": np.zeros((64, 31), np.float32)}
    rewrite_weights(folder, lambda weights: weights.update(misshapen))
    message = one_line_error(folder, max_length=16)
    assert message == (
        f"{folder / 'model.safetensors'}: encoder.layer.0.intermediate.dense.weight has shape (64, 31), "
        "the config says (64, 32)"
    )


def test_a_heads_prefix_and_unused_heads_are_accepted(tmp_path, tiny, tiny_reference):
    # BertForMaskedLM and friends save the encoder under "bert." beside their "cls." head.
    folder = copy_of_tiny(tmp_path)

    def change(weights):
        for name in list(weights):
            weights[f"bert.{name}"] = weights.pop(name)
        weights["cls.predictions.bias"] = np.zeros(101, np.float32)

    rewrite_weights(folder, change)
    loaded = checkpoints.load(folder, max_length=16)
    assert all(np.array_equal(loaded.params[path], tiny.params[path]) for path in tiny.params)


def test_a_pytorch_only_folder_says_how_to_convert_and_is_never_unpickled(tmp_path):
    folder = copy_of_tiny(tmp_path)
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not a pickle: reading it would fail loudly")
    message = one_line_error(folder, max_length=16)
    assert message.startswith(f"{folder}: has pytorch_model.bin but no model.safetensors; lab never unpickles")
    assert "save_pretrained(folder, safe_serialization=True)" in message


def test_a_damaged_safetensors_file_is_named(tmp_path):
    folder = copy_of_tiny(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert one_line_error(folder, max_length=16).startswith(f"{weights}: not a readable safetensors file (")


def test_a_hub_id_without_the_extra_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if it were not installed
    message = one_line_error("sentence-transformers/all-MiniLM-L6-v2")
    assert message == (
        "checkpoint 'sentence-transformers/all-MiniLM-L6-v2' is not a local folder; to fetch it from the hub, "
        "pip install 'lab[hub]' (huggingface_hub)"
    )


def test_a_hub_id_offline_and_not_cached_fails_in_one_line(monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # A repository no hub cache holds (the hub reads HF_HOME when it is imported, so that cannot be emptied here).
    assert one_line_error("lab-tests/no-such-model") == (
        "checkpoint 'lab-tests/no-such-model' could not be fetched from the Hugging Face hub "
        "(HF_HUB_OFFLINE is set and it is not in the hub's cache); "
        "download it where there is a network and give its folder"
    )


def test_a_path_that_is_neither_folder_nor_hub_id_is_refused(tmp_path):
    message = one_line_error(tmp_path / "nowhere")
    assert message.startswith(f"checkpoint '{tmp_path / 'nowhere'}' is not a folder;")


def test_an_absent_checkpoint_folder_is_missing_data(tmp_path):
    # So that a notebook's stop_on_missing_data shows it in one line, as it shows absent dataset files.
    from lab.dataset import DataNotFoundError

    for absent in (tmp_path / "nowhere", "../no-such-folder/all-MiniLM-L6-v2"):
        with pytest.raises(DataNotFoundError, match="is not a folder"):
            checkpoints.load(absent)
    (tmp_path / "a-file").write_text("")
    with pytest.raises(checkpoints.CheckpointError) as error:  # there, but not a folder: not missing
        checkpoints.load(tmp_path / "a-file")
    assert not isinstance(error.value, DataNotFoundError)


# --------------------------------------------------------------------------- adapting a checkpoint


@pytest.mark.skipif(not MINILM.is_dir(), reason=f"the shared all-MiniLM-L6-v2 checkpoint is not at {MINILM}")
def test_a_text_dataset_takes_its_ids_from_the_checkpoints_tokenizer():
    # The one door: fortunes_topics' test texts, as transformers tokenizes them for all-MiniLM-L6-v2.
    tokenizer = checkpoints.load(MINILM, max_length=128).tokenizer
    with pytest.warns(UserWarning, match="fortunes_topics: .* longer than max_length=128"):
        dataset = data.load("fortunes_topics", tokenizer=tokenizer)
    with np.load(FIXTURES / "minilm-reference.npz") as reference:
        np.testing.assert_array_equal(dataset.x_test[:32], reference["ids"])
    assert (dataset.vocab_size, dataset.tokenizer) == (30522, tokenizer.fingerprint)


TINY_RUN = {
    "dataset": "fortunes_topics",
    "model": "bert",
    "pretrain": "checkpoint",
    "checkpoint": str(TINY),
    "pretrain_kwargs": {"max_length": 16},
    "labels_per_class": 2,
    "seeds": [0, 1],
    "batch_size": 8,
    "steps": 6,
    "eval_every": 3,
}


@pytest.mark.parametrize(
    ("setup", "adaptation"),
    [("transfer", "linear_probe"), ("transfer", "finetune"), ("transfer_semi_supervised", "finetune_low_lr")],
)
def test_the_tiny_checkpoint_adapts_through_experiment_run_with_two_seeds(setup, adaptation):
    config = {**TINY_RUN, "setup": setup, "adaptation": adaptation, "method": "fixmatch"}
    with pytest.warns(UserWarning, match="longer than max_length=16"):
        result = experiment.run(config, progress=False)
    accuracy = np.asarray(result.metrics["accuracy"])
    assert accuracy.shape == (2,) and np.all((0 <= accuracy) & (accuracy <= 1))
    assert result.curves["step"] == [3, 6]
    suffix = "+fixmatch" if setup == "transfer_semi_supervised" else ""
    assert experiment.ExperimentConfig.from_dict(config).method_label == f"checkpoint+{adaptation}{suffix}"


def test_the_adapted_classifier_starts_from_the_checkpoints_encoder(tiny, tiny_reference):
    backbone = transfer.from_checkpoint(tiny)
    model = backbone.classifier(4, seed=3, model_inputs={"vocab_size": 101})
    model.eval()
    np.testing.assert_allclose(model.backbone(tiny_reference["ids"]), tiny_reference["pooled"], atol=1e-5)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"checkpoint": None}, "pretrain='checkpoint' reads a Hugging Face checkpoint: set checkpoint"),
        ({"model": "text_transformer"}, f"checkpoint '{TINY}' is a 'bert' model: set model='bert'"),
        ({"pretrain_kwargs": {"steps": 3}}, "unknown pretrain_kwargs ['steps'] for a checkpoint"),
        ({"setup": "supervised"}, "is read by setup=transfer or transfer_semi_supervised with pretrain='checkpoint'"),
        ({"checkpoint": str(FIXTURES)}, f"{FIXTURES / 'config.json'}: no such file"),
    ],
)
def test_a_checkpoint_run_is_checked_before_any_data_is_loaded(changes, expected, monkeypatch):
    monkeypatch.setattr(data, "load", lambda *args, **kwargs: pytest.fail("data loaded before the config was checked"))
    with pytest.raises(ValueError) as error:
        experiment.ExperimentConfig.from_dict({**TINY_RUN, "setup": "transfer", **changes})
    assert expected in str(error.value)


def test_the_cli_names_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    status = cli.main(
        ["run", "setup=transfer", "pretrain=checkpoint", f"checkpoint={tmp_path}", "model=bert",
         "dataset=fortunes_topics"]
    )
    assert status == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lab run: error: {tmp_path / 'config.json'}: no such file; a Hugging Face model folder has config.json"
    ]


def test_a_frozen_encoders_embeddings_are_computed_once_and_cached(tiny, tiny_reference, monkeypatch):
    first = tiny.embed_ids(tiny_reference["ids"])
    np.testing.assert_allclose(first, tiny_reference["pooled"], atol=1e-5)
    monkeypatch.setattr(checkpoints, "embed_ids", lambda *args, **kwargs: pytest.fail("the encoder ran again"))
    np.testing.assert_array_equal(tiny.embed_ids(tiny_reference["ids"]), first)
    # Other ids are another entry.
    with pytest.raises(pytest.fail.Exception, match="the encoder ran again"):
        tiny.embed_ids(tiny_reference["ids"][::-1])


def test_batches_cut_to_their_longest_text_embed_as_the_padded_ids_do(tiny_reference):
    # Length 32: every text fits, and the batches of 2 are cut to 16 tokens, in length order.
    checkpoint = checkpoints.load(TINY, max_length=32)
    ids = checkpoint.tokenizer.encode([str(text) for text in tiny_reference["texts"]])
    backbone = checkpoint.classifier(1, seed=0).backbone
    padded = checkpoints.embed_ids(backbone, ids, batch_size=2, trim=False)
    np.testing.assert_allclose(checkpoints.embed_ids(backbone, ids, batch_size=2), padded, rtol=0, atol=1e-6)
    np.testing.assert_allclose(padded[[1, 4]], tiny_reference["pooled"][[1, 4]], atol=1e-5)  # the untruncated two


def _fitted_parameter_paths(monkeypatch) -> list[set[str]]:
    """Records the parameter paths of the state every train.fit call of experiment.run trains."""
    paths = []
    fit = train.fit

    def recording_fit(model, state, *args, **kwargs):
        paths.append({"/".join(map(str, path)) for path, _ in nnx.to_flat_state(state.params)})
        return fit(model, state, *args, **kwargs)

    monkeypatch.setattr(train, "fit", recording_fit)
    return paths


def test_a_frozen_probe_of_a_checkpoint_trains_its_head_on_embeddings_as_the_step_by_step_probe(monkeypatch):
    # The step-by-step reference: the encoder inside every step, without dropout or token masking, so that it
    # computes what the encoder computes in eval mode; the probe embeds once and trains the same head.
    config = {**TINY_RUN, "setup": "transfer", "adaptation": "linear_probe", "model_kwargs": {"dropout": 0.0}}
    trained = _fitted_parameter_paths(monkeypatch)
    with pytest.warns(UserWarning, match="longer than max_length=16"):
        probe = experiment.run(config, progress=False)
    assert trained == [{"head/kernel", "head/bias"}]  # the compiled step holds no encoder parameter
    with monkeypatch.context() as step_by_step:
        plan = experiment.SETUPS["transfer"]
        step_by_step.setitem(experiment.SETUPS, "transfer", dataclasses.replace(plan, frozen_features=lambda *_: None))
        step_by_step.setattr(augment, "_WEAK_MASK", 0.0)
        with pytest.warns(UserWarning, match="longer than max_length=16"):
            reference = experiment.run(config, progress=False)
    assert any(path.startswith("backbone/") for path in trained[1])
    assert probe.curves["step"] == reference.curves["step"] == [3, 6]
    for name, values in reference.metrics.items():
        np.testing.assert_allclose(probe.metrics[name], values, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(probe.curves["train_loss"], reference.curves["train_loss"], rtol=1e-5)
