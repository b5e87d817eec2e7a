"""ViT checkpoints read into lab (lab.checkpoints, model_type vit) against `transformers`' own outputs.

The reference under tests/data/hf/ was computed once by ``tests/data/make_hf_fixtures.py vit`` with
`transformers` + `torch`; these tests need neither.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lab import checkpoints, data, experiment

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data" / "hf"
TINY_VIT = FIXTURES / "tiny-vit"


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURES / "tiny-vit-reference.npz") as arrays:
        return {name: arrays[name] for name in arrays.files}


def test_tiny_vit_matches_transformers_last_hidden_states_and_pooler_output(reference):
    # lab's images are 8-bit values / 255; the model rescales and normalises them as the processor did.
    images = reference["images"].astype(np.float32) / 255
    model = checkpoints.load(TINY_VIT, pooling="pooler").classifier(3, seed=0)
    model.eval()
    np.testing.assert_allclose(model.backbone.token_features(images), reference["hidden"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.backbone(images), reference["pooled"], rtol=0, atol=1e-5)
    assert model(images).shape == (4, 3)


def test_a_vits_features_are_cls_after_the_final_layernorm_by_default(reference):
    # What ViTForImageClassification feeds its classifier.
    checkpoint = checkpoints.load(TINY_VIT)
    assert checkpoint.model_kwargs["pooling"] == "cls"
    backbone = checkpoint.classifier(2, seed=0).backbone
    images = reference["images"].astype(np.float32) / 255
    np.testing.assert_allclose(checkpoints.embed_ids(backbone, images, batch_size=3, trim=False),
                               reference["hidden"][:, 0], rtol=0, atol=1e-5)  # fmt: skip


def test_the_image_processor_resizes_and_makes_grey_images_rgb_as_transformers_does(reference):
    # transformers resized the 8x8 uint8 images (repeated to RGB) with PIL's bilinear filter, in 8-bit steps.
    processor = checkpoints.load(TINY_VIT).inputs
    resized = processor(reference["small_images"][..., None].astype(np.float32) / 255)
    assert resized.shape == (4, 16, 16, 3) and resized.dtype == np.float32
    pixels = reference["small_pixel_values"].transpose(0, 2, 3, 1)
    expected = pixels * np.array(processor.std) + np.array(processor.mean)  # undo the normalisation on [0, 1]
    np.testing.assert_allclose(resized, expected, rtol=0, atol=1.01 / 255)
    assert np.abs(resized - expected).mean() < 0.5 / 255
    np.testing.assert_allclose(processor.mean, [0.485, 0.456, 0.406], rtol=1e-12)
    # Images of the model's size pass unchanged.
    same = reference["images"].astype(np.float32) / 255
    np.testing.assert_array_equal(processor(same), same)


# --------------------------------------------------------------------------- bad checkpoints and inputs


def copy_of_tiny_vit(tmp_path: Path) -> Path:
    folder = tmp_path / "vit"
    shutil.copytree(TINY_VIT, folder)
    return folder


def rewrite(folder: Path, name: str, change) -> None:
    if name.endswith(".safetensors"):
        weights = load_file(folder / name)
        change(weights)
        save_file(weights, folder / name)
    else:
        settings = json.loads((folder / name).read_text())
        change(settings)
        (folder / name).write_text(json.dumps(settings))


def one_line_error(source, **kwargs) -> str:
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load(source, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_the_name_table_covers_every_tensor_of_a_vit(tmp_path):
    table = checkpoints.ARCHITECTURES["vit"].table({"depth": 2, "pooling": "pooler"})
    mapped = {name for _, names, _ in table for name in names}
    assert mapped == set(load_file(TINY_VIT / "model.safetensors"))
    assert len({path for path, _, _ in table}) == len(table)


def test_missing_unexpected_and_misshapen_vit_tensors_are_named_in_one_line(tmp_path):
    folder = copy_of_tiny_vit(tmp_path)

    def change(weights):
        del weights["encoder.layer.1.layernorm_after.bias"]
        weights["encoder.layer.2.output.dense.weight"] = np.zeros((32, 64), np.float32)
        weights["embeddings.patch_embeddings.projection.weight"] = np.zeros((32, 3, 8, 8), np.float32)

    rewrite(folder, "model.safetensors", change)
    assert one_line_error(folder) == (
        f"{folder / 'model.safetensors'}: missing tensors encoder.layer.1.layernorm_after.bias; "
        "unexpected tensors encoder.layer.2.output.dense.weight; "
        "embeddings.patch_embeddings.projection.weight has shape (32, 3, 8, 8), the config says (32, 3, 4, 4)"
    )


def test_an_image_classifiers_vit_prefix_and_head_are_accepted_and_its_missing_pooler_named(tmp_path):
    # ViTForImageClassification saves the encoder under "vit." beside its "classifier.", without a pooler.
    folder = copy_of_tiny_vit(tmp_path)

    def change(weights):
        for name in list(weights):
            tensor = weights.pop(name)
            if not name.startswith("pooler."):
                weights[f"vit.{name}"] = tensor
        weights["classifier.weight"] = np.zeros((10, 32), np.float32)

    rewrite(folder, "model.safetensors", change)
    loaded, original = checkpoints.load(folder), checkpoints.load(TINY_VIT)
    assert loaded.params.keys() == original.params.keys()
    assert all(np.array_equal(loaded.params[path], original.params[path]) for path in original.params)
    assert one_line_error(folder, pooling="pooler") == (
        f"{folder / 'model.safetensors'}: missing tensors pooler.dense.bias, pooler.dense.weight"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.update(do_center_crop=True, crop_size={"height": 16, "width": 16}),
         "do_center_crop=true; lab applies do_resize, do_rescale, do_normalize, do_convert_rgb only"),
        (lambda s: s.update(size={"shortest_edge": 16}),
         "size={'shortest_edge': 16}, but the model reads 16x16 images (config.json's image_size)"),
        (lambda s: s.update(resample=1), "resample=1; lab resizes with 0, 2, 3"),
        (lambda s: s.update(image_std=[0.5, 0.5]), "image_mean and image_std one per channel, 3"),
    ],
)  # fmt: skip
def test_unsupported_preprocessing_is_refused_in_one_line(tmp_path, change, expected):
    folder = copy_of_tiny_vit(tmp_path)
    rewrite(folder, "preprocessor_config.json", change)
    message = one_line_error(folder)
    assert message.startswith(f"{folder / 'preprocessor_config.json'}: ") and expected in message


def test_a_vit_without_a_preprocessor_config_or_with_text_options_is_refused(tmp_path):
    assert one_line_error(TINY_VIT, max_length=16) == (
        f"{TINY_VIT / 'config.json'}: max_length=16 is for text checkpoints; a vit checkpoint reads images "
        "of the size in its preprocessor_config.json"
    )
    assert one_line_error(TINY_VIT, normalize=True) == (
        f"{TINY_VIT / 'config.json'}: a 'vit' checkpoint has no normalize to choose; it takes pooling"
    )
    folder = copy_of_tiny_vit(tmp_path)
    (folder / "preprocessor_config.json").unlink()
    assert one_line_error(folder) == (
        f"{folder / 'preprocessor_config.json'}: no such file; a Hugging Face model folder has preprocessor_config.json"
    )
    with pytest.raises(checkpoints.CheckpointError, match="reads images; it has no tokenizer"):
        checkpoints.load(TINY_VIT).tokenizer  # noqa: B018


def test_images_of_other_channels_or_sizes_are_refused_naming_both(tmp_path):
    processor = checkpoints.load(TINY_VIT).inputs
    with pytest.raises(checkpoints.CheckpointError) as error:
        processor(np.zeros((2, 16, 16, 2), np.float32), what="two_channels")
    assert str(error.value) == (
        f"two_channels: inputs of shape (16, 16, 2); the checkpoint {TINY_VIT} reads 16x16 images of 3 channel(s) "
        "(grey images, 1 channel, are repeated)"
    )
    folder = copy_of_tiny_vit(tmp_path)
    rewrite(folder, "preprocessor_config.json", lambda settings: settings.update(do_resize=False))
    with pytest.raises(checkpoints.CheckpointError) as error:
        checkpoints.load(folder).inputs(np.zeros((2, 8, 8, 1), np.float32), what="digits")
    assert str(error.value) == (
        f"digits: 8x8 images; the checkpoint reads 16x16 and {folder / 'preprocessor_config.json'} says "
        "do_resize=false: resize them to 16x16"
    )
    # The model itself reads one size: its positions are not interpolated.
    model = checkpoints.load(TINY_VIT).classifier(2, seed=0)
    with pytest.raises(ValueError, match=r"this ViT reads images of shape \(16, 16, 3\), got \(32, 32, 3\)"):
        model(np.zeros((1, 32, 32, 3), np.float32))


# --------------------------------------------------------------------------- adapting a ViT


VIT_RUN = {
    "dataset": "digits",
    "model": "vit",
    "setup": "transfer",
    "pretrain": "checkpoint",
    "checkpoint": str(TINY_VIT),
    "labels_per_class": 2,
    "seeds": [0, 1],
    "batch_size": 8,
    "steps": 6,
    "eval_every": 3,
}


@pytest.mark.parametrize("adaptation", ["linear_probe", "finetune"])
def test_the_tiny_vit_adapts_on_digits_through_experiment_run_with_two_seeds(adaptation):
    # digits' 8x8 grey images go through the checkpoint's processor: 16x16, RGB.
    result = experiment.run({**VIT_RUN, "adaptation": adaptation}, progress=False)
    accuracy = np.asarray(result.metrics["accuracy"])
    assert accuracy.shape == (2,) and np.all((0 <= accuracy) & (accuracy <= 1))
    assert result.curves["step"] == [3, 6]
    assert experiment.ExperimentConfig.from_dict({**VIT_RUN, "adaptation": adaptation}).method_label == (
        f"checkpoint+{adaptation}"
    )


def test_the_door_gives_an_image_dataset_the_checkpoints_size_and_channels():
    config = experiment.ExperimentConfig.from_dict({**VIT_RUN, "adaptation": "linear_probe"})
    dataset = experiment.load_dataset(config)
    digits = data.load("digits")
    assert dataset.x_train.shape == (len(digits.x_train), 16, 16, 3) and dataset.model_inputs == {}
    np.testing.assert_array_equal(dataset.y_test, digits.y_test)
    np.testing.assert_array_equal(dataset.x_test[..., 0], dataset.x_test[..., 2])


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"model": "transformer"}, f"checkpoint '{TINY_VIT}' is a 'vit' model: set model='vit'"),
        ({"dataset": "mnist1d"}, "model 'vit' does not take signal inputs"),
        ({"pretrain_kwargs": {"max_length": 16}}, "max_length=16 is for text checkpoints"),
        ({"pretrain_kwargs": {"pooling": "mean"}}, "unknown pooling 'mean'; choose one of: cls, pooler"),
    ],
)
def test_a_vit_run_is_checked_before_any_data_is_loaded(changes, expected, monkeypatch):
    monkeypatch.setattr(data, "load", lambda *args, **kwargs: pytest.fail("data loaded before the config was checked"))
    with pytest.raises(ValueError) as error:
        experiment.ExperimentConfig.from_dict({**VIT_RUN, "adaptation": "finetune", **changes})
    assert expected in str(error.value)
