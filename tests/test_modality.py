"""lab.modality and the registries that declare modalities: datasets, models, augmentations."""

from __future__ import annotations

import pytest
from flax import nnx

from lab import augment, data, experiment, modality, models


def test_a_modality_is_looked_up_by_the_rank_of_one_example():
    assert modality.of_shape((8, 8, 1)) is modality.IMAGE
    assert modality.of_shape((40, 1)) is modality.SIGNAL
    assert modality.of_shape((64,)) is modality.TEXT
    assert modality.of_shape((4, 4, 4, 1)) is None
    assert modality.shapes(("signal", "image")) == "(L, C) signals or (H, W, C) images"


def test_every_registry_names_known_modalities():
    declared = {entry.modality for entry in data.DATASET_ENTRIES.values()}
    declared |= {name for cls in models.MODELS.values() for name in cls.modalities}
    declared |= set(augment.BY_MODALITY)
    assert declared <= set(modality.MODALITIES)


@pytest.mark.parametrize("name", ["digits", "mnist1d"])
def test_a_dataset_declares_the_modality_of_its_inputs(name):
    assert modality.of_shape(data.load(name).input_shape).name == data.DATASET_ENTRIES[name].modality


def test_a_model_refuses_a_modality_it_does_not_take_naming_those_that_do(monkeypatch):
    models.check_takes("cnn", "signal")
    monkeypatch.setattr(models.CNN, "modalities", ("image",))
    message = "model 'cnn' does not take signal inputs; choose one of: logreg, mlp, resnet, transformer"
    with pytest.raises(ValueError, match=f"^{message}$"):
        models.check_takes("cnn", "signal")
    with pytest.raises(ValueError, match=f"^{message}$"):
        models.make_model("cnn", (40, 1), 10, seed=0)
    with pytest.raises(ValueError, match=r"^CNN takes \(H, W, C\) images, got input_shape=\(40, 1\)$"):
        models.CNN((40, 1), 10, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model 'cnn' does not take signal inputs"):
        experiment.ExperimentConfig.from_dict({"dataset": "mnist1d", "model": "cnn"})
