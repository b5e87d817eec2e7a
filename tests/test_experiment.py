"""experiment.run: config validation, the three setups, and vmapped seeds."""

import json

import numpy as np
import pytest

from lab import experiment

SMALL = {"labels_per_class": 2, "steps": 40, "learning_rate": 0.01, "eval_every": 20, "batch_size": 16, "model_kwargs": {"hidden": (32,)}}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"label_per_class": 4}, r"unknown experiment parameter\(s\) \['label_per_class'\]; allowed: \[.*'labels_per_class'"),
        ({"labels_per_class": "4"}, "labels_per_class must be of type int, got '4'"),
        ({"labels_per_class": 0}, "labels_per_class must be >= 1, got 0"),
        ({"setup": "unsupervised"},
         "unknown setup 'unsupervised'; choose one of: supervised, semi_supervised, transfer, "
         "transfer_semi_supervised"),
        ({"dataset": "cifar"}, "unknown dataset 'cifar'; choose one of: digits, mnist1d"),
        ({"setup": "semi_supervised", "method_kwargs": {"threshold": 0}}, r"threshold must be a number in \(0, 1\], got 0"),
        ({"setup": "semi_supervised", "method_kwargs": {"tau": 0.9}}, "fixmatch has no hyperparameter 'tau'"),
        ({"seeds": []}, "seeds must name at least one seed"),
        ({"seeds": [0, 0]}, r"seeds must be distinct, got \[0, 0\]"),
        ({"learning_rate": -1.0}, "learning_rate must be a finite number > 0, got -1.0"),
        ({"learning_rate": float("inf")}, "learning_rate must be a finite number > 0, got inf"),
        ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0, got nan"),
        ({"weight_decay": float("nan")}, "weight_decay must be a finite number >= 0, got nan"),
        ({"backbone_lr_multiplier": float("inf")}, "backbone_lr_multiplier must be a finite number >= 0, got inf"),
        ({"model_kwargs": {"nope": 1}}, r"unknown model_kwargs \['nope'\] for model 'mlp'; allowed: \['dropout', 'hid"),
        ({"seeds": [0, -1]}, r"seeds must be integers in 0\.\.2147483647, got \[0, -1\]"),
        ({"seeds": [2**40]}, r"seeds must be integers in 0\.\.2147483647, got \[1099511627776\]"),
        ({"data_dir": "/x"}, "data_dir='/x' is read only by fashion_mnist, mnist, cifar10, cifar100, svhn, stl10, "
         "fortunes_topics, fortunes_language; digits does not read files"),
        ({"setup": "transfer", "adaptation": "probe"}, "unknown adaptation 'probe'; choose one of: linear_probe"),
        ({"setup": "transfer", "pretrain": "classes"}, "pretrain='classes' pretrains on the classes outside"),
        ({"setup": "transfer", "pretrain_kwargs": {"epochs": 3}}, r"unknown pretrain_kwargs \['epochs'\]; allowed:"),
        ({"classes": [3, 12]}, r"classes must list at least 2 labels of digits in 0..9, got \[3, 12\]"),
        ({"precision": "float16"}, "unknown precision 'float16'; choose one of: float32, bfloat16"),
        ({"dataset_kwargs": {"extra": True}},
         r"^unknown dataset_kwargs \['extra'\] for dataset 'digits'; allowed: \['seed', 'test_size'\]$"),
        # data_dir and download are fields of their own, which also reach a pretraining dataset
        ({"dataset": "svhn", "dataset_kwargs": {"data_dir": "/x", "extra": True}},
         r"^unknown dataset_kwargs \['data_dir'\] for dataset 'svhn'; allowed: \['extra', 'mirror'\]$"),
        # the supervised objective's view settings are checked too
        ({"method_kwargs": {"flip": "yes"}}, "flip must be True or False, got 'yes'"),
    ],
)  # fmt: skip
def test_bad_configs_fail_before_training_with_the_allowed_values(values, message):
    with pytest.raises(ValueError, match=message):
        experiment.ExperimentConfig.from_dict(values)


def test_data_dir_is_accepted_where_the_run_reads_it():
    """data_dir also feeds pretraining on another dataset: digits pretrained on MNIST reads MNIST's files."""
    transfer_from_mnist = {"setup": "transfer", "pretrain": "dataset", "pretrain_kwargs": {"source_dataset": "mnist"}}
    assert experiment.ExperimentConfig.from_dict({**transfer_from_mnist, "data_dir": "/x"}).data_dir == "/x"
    assert experiment.ExperimentConfig.from_dict({"dataset": "mnist", "data_dir": "/x"}).data_dir == "/x"


def test_lists_and_mappings_given_as_text_are_parsed():
    config = experiment.ExperimentConfig.from_dict({"seeds": "[0, 1]", "model_kwargs": "{hidden: [32]}"})
    assert config.seeds == (0, 1) and config.model_kwargs == {"hidden": [32]}
    with pytest.raises(ValueError, match="seeds must be a list of integers"):
        experiment.ExperimentConfig.from_dict({"seeds": "zero"})
    assert experiment.ExperimentConfig.from_dict({"learning_rate": "1e-3"}).learning_rate == 0.001  # YAML's text
    with pytest.raises(ValueError, match="learning_rate must be of type float, got 'fast'"):
        experiment.ExperimentConfig.from_dict({"learning_rate": "fast"})


def test_too_many_labels_per_class_fails_naming_the_smallest_class():
    with pytest.raises(ValueError, match="per_class=1000"):
        experiment.run({**SMALL, "labels_per_class": 1000}, progress=False)


def test_a_batch_larger_than_the_training_set_fails_naming_both():
    with pytest.raises(ValueError, match="batch_size=100000 is larger than the 1347 training examples of digits"):
        experiment.run({**SMALL, "batch_size": 100000}, progress=False)


def test_validate_parameters_checks_experiment_fields_and_passes_others():
    experiment.validate_parameters({"labels_per_class": 3, "output_dir": "runs/x"})
    with pytest.raises(ValueError, match="labels_per_class must be >= 1"):
        experiment.validate_parameters({"labels_per_class": 0, "output_dir": "runs/x"})


@pytest.mark.parametrize(
    "setup_values",
    [
        {"setup": "supervised"},
        # in mixed precision: vmapped seeds, two unlabeled views and an objective state in bfloat16
        {"setup": "semi_supervised", "method": "fixmatch", "method_kwargs": {"mu": 2}, "precision": "bfloat16"},
        {"setup": "transfer", "pretrain": "autoencoder", "adaptation": "linear_probe", "pretrain_kwargs": {"steps": 20}},
        {"setup": "transfer_semi_supervised", "pretrain": "autoencoder", "adaptation": "linear_probe",
         "method": "fixmatch", "method_kwargs": {"mu": 2}, "pretrain_kwargs": {"steps": 20}},
    ],
)
def test_every_setup_runs_and_reports_per_seed_results(setup_values):
    result = experiment.run({**SMALL, **setup_values, "seeds": [0, 1]}, progress=False)
    assert result.seeds == [0, 1]
    for name in ("accuracy", "macro_f1", "ece"):
        assert len(result.metrics[name]) == 2 and all(0 <= value <= 1 for value in result.metrics[name])
    assert result.metrics["accuracy"][0] > 0.2  # at least twice chance (0.1) after 40 steps
    assert result.curves["step"] == [20, 40]
    assert np.shape(result.curves["test_accuracy"]) == (2, 2)  # evaluations x seeds
    assert set(result.wall_time_s) == {"pretrain", "compile", "train"}
    assert result.environment["versions"]["jax"]
    payload = result.record().to_dict()
    assert payload["setup"] == setup_values["setup"] and payload["labels_per_class"] == 2
    assert result.config["precision"] == setup_values.get("precision", "float32")
    json.dumps(result.to_dict())  # JSON-ready
    summary = result.summary()["accuracy"]
    assert summary["mean"] == pytest.approx(np.mean(result.metrics["accuracy"]))


def test_transfer_semi_supervised_adapts_the_cached_backbone_with_the_method(monkeypatch):
    """The plan combines the others' pieces: the transfer run's pretrained backbone (the same cache
    entry, not pretrained again), the semi-supervised run's objective, unlabeled pool included."""
    from flax import nnx

    from lab import semisupervised, train, transfer

    config = {**SMALL, "setup": "transfer_semi_supervised", "pretrain": "autoencoder", "method": "fixmatch",
              "method_kwargs": {"mu": 2}, "pretrain_kwargs": {"steps": 20}}  # fmt: skip
    backbone = transfer.pretrain(experiment._pretrain_config(experiment.ExperimentConfig.from_dict(config)))
    seen = {}

    def recording_fit(model, state, tx, objective, pools, **options):
        seen.update(state=state, objective=objective, pools=pools)
        return real_fit(model, state, tx, objective, pools, **options)

    real_fit = train.fit
    monkeypatch.setattr(train, "fit", recording_fit)
    monkeypatch.setattr(transfer, "_train_backbone", lambda *args, **kwargs: pytest.fail("pretrained again"))
    result = experiment.run({**config, "seeds": [0, 1]}, progress=False)

    assert result.record().method == "autoencoder+finetune+fixmatch"
    assert isinstance(seen["objective"], semisupervised.METHODS["fixmatch"])
    assert int(seen["pools"]["unlabeled"]["count"][0]) > int(seen["pools"]["labeled"]["count"][0])
    flat = nnx.to_flat_state(seen["state"].params)
    initial = {"/".join(map(str, path)): np.asarray(variable.get_value()) for path, variable in flat}
    for path, value in backbone.params.items():  # every seed starts from the pretrained backbone
        np.testing.assert_array_equal(initial[path], np.stack([value, value]))
    assert result.metrics["accuracy"][0] > 0.2


def test_vmapped_seeds_equal_separate_runs():
    config = {**SMALL, "setup": "semi_supervised", "method": "freematch"}  # freematch keeps objective_state
    together = experiment.run({**config, "seeds": [0, 1]}, progress=False)
    alone = [experiment.run({**config, "seeds": [seed]}, progress=False) for seed in (0, 1)]
    for i, single in enumerate(alone):
        for name, values in together.metrics.items():
            assert values[i] == pytest.approx(single.metrics[name][0], abs=1e-5), name
        np.testing.assert_allclose(np.asarray(together.curves["train_loss"])[:, i],
                                   np.asarray(single.curves["train_loss"])[:, 0], rtol=1e-4)
    assert together.metrics["accuracy"][0] != together.metrics["accuracy"][1] or \
        together.curves["train_loss"][0][0] != together.curves["train_loss"][0][1]  # the seeds really differ


def test_same_seed_same_numbers():
    first = experiment.run({**SMALL, "seeds": [3]}, progress=False)
    second = experiment.run({**SMALL, "seeds": [3]}, progress=False)
    assert first.metrics == second.metrics and first.curves == second.curves


def test_class_split_transfer_pretrains_on_the_other_classes(tmp_path):
    result = experiment.run(
        {**SMALL, "setup": "transfer", "pretrain": "classes", "classes": [5, 6, 7, 8, 9],
         "pretrain_kwargs": {"steps": 30}},
        progress=False,
    )
    assert result.record().method == "classes+finetune"
    (entry,) = (tmp_path / "cache" / "pretrained").iterdir()  # one cached backbone, pretrained on 0-4
    assert json.loads((entry / "config.json").read_text())["config"]["source_classes"] == [0, 1, 2, 3, 4]
    assert result.metrics["accuracy"][0] > 0.4  # a 5-way task, chance is 0.2


def test_result_saves_atomically_as_json(tmp_path):
    result = experiment.run({**SMALL, "steps": 20}, progress=False)
    path = result.save(tmp_path / "out" / "result.json")
    assert json.loads(path.read_text())["metrics"] == result.metrics
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]


def test_lab_run_writes_the_record_to_output_and_store(tmp_path, capsys):
    from lab import cli, store, sweep

    output, results = tmp_path / "result.json", tmp_path / "results.db"
    argv = ["run", "steps=20", "eval_every=10", "labels_per_class=2", "seeds=[0,1]", "--no-progress",
            "--output", str(output), "--store", str(results), "--sweep", "cli-runs"]
    assert cli.main(argv) == 0
    saved = json.loads(output.read_text())
    (row,) = store.ResultsStore(results).rows("cli-runs")
    assert row.status == "done" and row.payload == saved["record"] and row.parameters == saved["config"]
    assert row.point_id == sweep.point_id(saved["config"]) and row.versions == saved["environment"]["versions"]
    assert saved["record"]["seeds"] == [0, 1] and saved["record"]["metrics"]["accuracy"] == saved["metrics"]["accuracy"]
    assert f"saved as point {row.point_id} of sweep cli-runs" in capsys.readouterr().err


def test_replaced_changes_fields_and_validates_them():
    config = experiment.ExperimentConfig.from_dict({"model": "cnn", "seeds": [0, 1]})
    changed = config.replaced(labels_per_class=10, learning_rate="0.01")  # text, as from a widget or papermill
    assert (changed.labels_per_class, changed.learning_rate, changed.model, changed.seeds) == (10, 0.01, "cnn", (0, 1))
    assert config.labels_per_class == 4  # unchanged
    with pytest.raises(ValueError, match="labels_per_class"):
        config.replaced(labels_per_class=0)


def test_run_by_gives_the_same_experiment_run_by_another_method():
    headline = experiment.ExperimentConfig.from_dict(
        {"setup": "semi_supervised", "method": "fixmatch", "method_kwargs": {"threshold": 0.9}, "steps": 30}
    )
    assert headline.run_by("fixmatch") is headline  # its own label keeps its hyperparameters
    supervised = headline.run_by("supervised")
    assert (supervised.setup, supervised.method_label, supervised.steps) == ("supervised", "supervised", 30)
    other = headline.run_by("pi_model")
    assert (other.setup, other.method, dict(other.method_kwargs)) == ("semi_supervised", "pi_model", {})
    with pytest.raises(ValueError, match="^unknown method 'simclr'; choose one of: fixmatch, .*, supervised$"):
        headline.run_by("simclr")


# ------------------------------------------------------------------- presets, EMA, protocol pieces

FIXMATCH_PRESETS = ("fixmatch_cifar10", "fixmatch_cifar100", "fixmatch_svhn", "fixmatch_stl10")


@pytest.fixture
def tiny_preset(monkeypatch):
    preset = {**SMALL, "setup": "semi_supervised", "method": "fixmatch", "model": "mlp",
              "method_kwargs": {"mu": 2, "flip": False, "magnitude": 0.5}, "seeds": [0, 1]}  # fmt: skip
    monkeypatch.setitem(experiment.PRESETS, "tiny", preset)
    return preset


def test_the_fixmatch_preset_is_usbs_classic_configuration():
    config = experiment.ExperimentConfig.from_dict({"preset": "fixmatch_cifar10"})

    assert (config.setup, config.method, config.dataset, config.model) == ("semi_supervised", "fixmatch", "cifar10", "wrn")
    assert dict(config.model_kwargs) == {"depth": 28, "widen": 2}
    assert dict(config.method_kwargs) == {"mu": 7, "unlabeled_weight": 1.0, "flip": True, "policy": "randaugment",
                                          "magnitude": 1.0}  # fmt: skip
    from lab import semisupervised

    assert semisupervised.hyperparameters_of(semisupervised.FixMatch)["threshold"] == 0.95  # τ, not overridden
    assert (config.optimizer, config.learning_rate, config.schedule) == ("nesterov", 0.03, "fixmatch_cosine")
    assert (config.weight_decay, config.weight_decay_mode) == (5e-4, "l2")
    assert (config.batch_size, config.steps, config.ema_decay) == (64, 2**20, 0.999)
    assert config.labels_per_class == 4 and config.seeds == (0, 1, 2)
    cifar100 = experiment.ExperimentConfig.from_dict({"preset": "fixmatch_cifar100"})
    assert dict(cifar100.model_kwargs) == {"depth": 28, "widen": 8} and cifar100.weight_decay == 1e-3
    for name in FIXMATCH_PRESETS:  # every preset is a valid config
        assert experiment.ExperimentConfig.from_dict({"preset": name}).ema_decay == 0.999


def test_overrides_win_over_the_preset_and_settings_merge(tiny_preset):
    config = experiment.ExperimentConfig.from_dict(
        {"preset": "tiny", "steps": 7, "seeds": [4], "method_kwargs": {"threshold": 0.9}}
    )

    assert config.steps == 7 and config.seeds == (4,)  # overridden
    assert config.learning_rate == tiny_preset["learning_rate"] and config.setup == "semi_supervised"  # kept
    assert dict(config.method_kwargs) == {"mu": 2, "flip": False, "magnitude": 0.5, "threshold": 0.9}  # merged
    # Another method keeps the preset's settings it accepts (the Π-model has no strong view to scale).
    other = experiment.ExperimentConfig.from_dict({"preset": "tiny", "method": "pi_model", "method_kwargs": {"mu": 3}})
    assert other.method == "pi_model" and dict(other.method_kwargs) == {"mu": 3, "flip": False}
    # Another model drops the settings of the preset's model that it does not take.
    assert dict(experiment.ExperimentConfig.from_dict({"preset": "tiny", "model": "logreg"}).model_kwargs) == {}
    # Text (papermill, a YAML file) is read as for any other field.
    assert dict(experiment.ExperimentConfig.from_dict({"preset": "tiny", "method_kwargs": "{mu: 5}"}).method_kwargs)[
        "mu"
    ] == 5
    assert experiment.PRESETS["tiny"] == tiny_preset  # resolving never changes the table
    assert experiment.resolve_preset({"steps": 3}) == {"steps": 3}  # no preset: as given


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"preset": "fixmatch_imagenet"},
         "unknown preset 'fixmatch_imagenet'; choose one of: fixmatch_cifar10, fixmatch_cifar100, fixmatch_svhn, "
         "fixmatch_stl10, tiny"),
        ({"preset": "tiny", "labels_per_class": 0}, "labels_per_class must be >= 1, got 0"),
        ({"preset": "tiny", "method_kwargs": {"policy": "autoaugment"}},
         "unknown augmentation policy 'autoaugment'; choose one of: default, randaugment"),
        ({"preset": "tiny", "steps_": 3}, r"unknown experiment parameter\(s\) \['steps_'\]"),
        ({"ema_decay": 1.0}, r"ema_decay must be a number in \[0, 1\), got 1.0"),
        ({"weight_decay_mode": "l1"}, "unknown weight_decay_mode 'l1'; choose one of: decoupled, l2"),
        ({"download": True}, r"download=True fetches only .*cifar10.*; digits is made locally"),
        ({"download": "yes"}, "download must be of type bool, got 'yes'"),
    ],
)  # fmt: skip
def test_preset_and_protocol_fields_are_validated(tiny_preset, values, message):
    with pytest.raises(ValueError, match=message):
        experiment.ExperimentConfig.from_dict(values)


def test_show_config_prints_the_resolved_config_and_runs_nothing(capsys, monkeypatch):
    from lab import cli

    monkeypatch.setattr(experiment, "run", lambda *args, **kwargs: pytest.fail("--show-config must not run"))
    argv = ["run", "preset=fixmatch_cifar10", "labels_per_class=25", "download=true", "--show-config"]

    assert cli.main(argv) == 0

    shown = json.loads(capsys.readouterr().out)
    expected = experiment.ExperimentConfig.from_dict({"preset": "fixmatch_cifar10", "labels_per_class": 25,
                                                      "download": True}).to_dict()  # fmt: skip
    assert shown == json.loads(json.dumps(expected))
    assert shown["labels_per_class"] == 25 and shown["download"] is True and shown["dataset"] == "cifar10"


def test_the_stl10_preset_runs_the_protocol_on_96x96_images(capsys):
    """fixmatch_stl10 is the protocol on STL-10 (a WRN-28-2, as the FixMatch paper used on CIFAR-10), shown by the CLI;
    its weak view pads 12 pixels a side at 96x96 (USB: crop_ratio 0.875) and its strong view keeps the size."""
    import jax
    import jax.numpy as jnp

    from lab import cli

    assert cli.main(["run", "preset=fixmatch_stl10", "labels_per_class=25", "--show-config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    cifar10 = experiment.ExperimentConfig.from_dict({"preset": "fixmatch_cifar10"}).to_dict()
    assert shown == json.loads(json.dumps({**cifar10, "dataset": "stl10", "labels_per_class": 25}))
    assert shown["model_kwargs"] == {"depth": 28, "widen": 2} and shown["dataset_kwargs"] == {}

    config = experiment.ExperimentConfig.from_dict(shown)
    objective = experiment.SETUPS[config.setup].objective(config, (96, 96, 3))
    dot = jnp.zeros((512, 96, 96, 3)).at[:, 48, 48, :].set(1.0)  # one bright pixel in the middle of each image
    weak = np.asarray(jax.jit(objective.augmentations["weak"])(jax.random.key(0), dot))
    rows = weak[..., 0].max(axis=2).argmax(axis=1)  # where the pixel went, down the image
    assert np.abs(rows - 48).max() == 12 and weak.shape == dot.shape
    strong_view = jax.jit(objective.augmentations["strong"])  # compiled once: eagerly, each operation compiles
    strong = strong_view(jax.random.key(1), jax.random.uniform(jax.random.key(2), (4, 96, 96, 3)))
    assert strong.shape == (4, 96, 96, 3) and 0 <= float(strong.min()) and float(strong.max()) <= 1


def test_the_supervised_baseline_of_a_preset_sees_the_weak_view_of_its_method():
    """setup=supervised and run_by("supervised") keep the preset's flip and policy: the baseline's weak
    view of a batch is the one FixMatch's own weak view makes of it with the same key, mirrored images included."""
    import jax
    import jax.numpy as jnp

    fixmatch = experiment.ExperimentConfig.from_dict({"preset": "fixmatch_cifar10"})
    method = experiment.SETUPS["semi_supervised"].objective(fixmatch, (32, 32, 3))
    left_lit = jnp.zeros((256, 32, 32, 3)).at[:, :, :16].set(1.0)
    key = jax.random.key(3)
    for supervised in (fixmatch.run_by("supervised"), fixmatch.replaced(setup="supervised")):
        assert supervised.method_label == "supervised"
        baseline = experiment.SETUPS["supervised"].objective(supervised, (32, 32, 3))
        view = np.asarray(baseline.augmentations[baseline.augmentation](key, left_lit))
        np.testing.assert_array_equal(view, np.asarray(method.augmentations["weak"](key, left_lit)))
        mirrored = view[:, :, :4].mean(axis=(1, 2, 3)) < view[:, :, -4:].mean(axis=(1, 2, 3))
        assert 0.3 < mirrored.mean() < 0.7  # about half the images are mirrored
    assert dict(fixmatch.run_by("supervised").method_kwargs) == {"flip": True, "policy": "randaugment"}
    assert dict(fixmatch.run_by("pi_model").method_kwargs) == {"flip": True, "policy": "randaugment"}
    # another threshold method keeps the strong view's magnitude too (it fell back to 0.5 before)
    assert dict(fixmatch.run_by("flexmatch").method_kwargs) == {"flip": True, "policy": "randaugment", "magnitude": 1.0}
    # Without a preset nothing is mirrored, as before (digits are no mirror images).
    plain = experiment.SETUPS["supervised"].objective(experiment.ExperimentConfig(), (8, 8, 1))
    assert plain.flip is False and plain.policy == "default"


def test_dataset_kwargs_reach_the_loader_and_merge_with_a_preset(tiny_preset, monkeypatch):
    import functools

    from lab import data

    loaded = []

    @functools.wraps(data.digits)  # its signature, which dataset_kwargs are checked against
    def digits(**kwargs):
        loaded.append(kwargs)
        return data.digits(**kwargs)

    monkeypatch.setitem(data.DATASET_ENTRIES, "digits", data.DatasetEntry(digits, "image", data.CLASS_NAMES["digits"]))
    config = experiment.ExperimentConfig.from_dict({**SMALL, "dataset_kwargs": "{test_size: 0.5}", "steps": 2})
    result = experiment.run(config, progress=False)
    assert loaded == [{"test_size": 0.5}] and result.config["dataset_kwargs"] == {"test_size": 0.5}

    monkeypatch.setitem(tiny_preset, "dataset_kwargs", {"seed": 3})
    merged = experiment.ExperimentConfig.from_dict({"preset": "tiny", "dataset_kwargs": {"test_size": 0.5}})
    assert dict(merged.dataset_kwargs) == {"seed": 3, "test_size": 0.5}
    # Another dataset keeps the preset's options it takes, and drops the others.
    for dataset, kept in (("mnist1d", {"seed": 3}), ("cifar10", {})):
        assert dict(experiment.ExperimentConfig.from_dict({"preset": "tiny", "dataset": dataset}).dataset_kwargs) == kept
    svhn = experiment.ExperimentConfig.from_dict({"preset": "fixmatch_svhn", "dataset_kwargs": {"extra": True}})
    assert dict(svhn.dataset_kwargs) == {"extra": True}


def test_an_unknown_preset_is_one_line_on_the_command_line(capsys):
    from lab import cli

    assert cli.main(["run", "preset=fixmatch_imagenet", "--show-config"]) == 2
    error = capsys.readouterr().err
    assert error == ("lab run: error: unknown preset 'fixmatch_imagenet'; choose one of: fixmatch_cifar10, "
                     "fixmatch_cifar100, fixmatch_svhn, fixmatch_stl10\n")  # fmt: skip


def test_evaluation_uses_the_ema_of_the_weights():
    """With a decay so close to 1 that the average never leaves the initial weights, the reported
    accuracy is the untrained model's, though the model trains (and, without an EMA, reaches more
    than twice chance in these 40 steps: test_every_setup_runs_and_reports_per_seed_results)."""
    from lab import data, metrics, models

    averaged = experiment.run({**SMALL, "seeds": [0], "ema_decay": 1 - 1e-9}, progress=False)

    digits = data.digits()
    untrained = models.make_model("mlp", digits.input_shape, digits.num_classes, seed=0, hidden=(32,))
    initial_accuracy = metrics.accuracy(np.asarray(untrained(digits.x_test)), digits.y_test)
    assert averaged.metrics["accuracy"][0] == pytest.approx(initial_accuracy, abs=2 / len(digits.y_test))
    assert initial_accuracy < 0.2
    losses = averaged.curves["train_loss"]
    assert losses[-1][0] < losses[0][0]  # the trained weights did move


def test_the_fixmatch_protocol_trains_end_to_end_on_small_images(tiny_preset):
    """Every piece of the preset (Nesterov SGD with L2 decay, the 7π/16 cosine, RandAugment views,
    the EMA evaluation model) in one short run on the digits."""
    result = experiment.run(
        {"preset": "tiny", "labels_per_class": 2, "steps": 6, "eval_every": 3, "batch_size": 8, "seeds": [0],
         "optimizer": "nesterov", "learning_rate": 0.03, "schedule": "fixmatch_cosine", "weight_decay": 5e-4,
         "weight_decay_mode": "l2", "ema_decay": 0.999,
         "method_kwargs": {"flip": True, "policy": "randaugment", "magnitude": 1.0}},
        progress=False,
    )  # fmt: skip

    assert result.config["method_kwargs"] == {"mu": 2, "flip": True, "policy": "randaugment", "magnitude": 1.0}
    assert 0 <= result.metrics["accuracy"][0] <= 1 and np.isfinite(result.curves["train_loss"]).all()
    assert result.curves["step"] == [3, 6]


@pytest.mark.parametrize(
    ("setup_values", "phases"),
    [
        ({"setup": "semi_supervised", "method": "fixmatch", "method_kwargs": {"mu": 2}}, ["train fixmatch"]),
        (
            {"setup": "transfer", "pretrain": "autoencoder", "adaptation": "linear_probe",
             "pretrain_kwargs": {"steps": 4}},
            ["pretrain autoencoder", "train autoencoder+linear_probe"],
        ),
    ],
)
def test_progress_bars_name_each_phase(setup_values, phases, monkeypatch, capsys):
    monkeypatch.setenv("LAB_PROGRESS", "text")  # a text bar on stderr: every refresh is a line
    experiment.run({**SMALL, **setup_values, "steps": 4, "eval_every": 4}, progress=True)
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    shown = [line.split(":")[0].removesuffix(" (compiling)").strip() for line in lines if "step/s" in line]
    assert list(dict.fromkeys(shown)) == phases


def test_seeds_past_the_memory_limit_train_in_groups_to_the_same_numbers(monkeypatch, capsys):
    """A limit a byte below what five seeds need: two groups of four (the second filled up with repeats of
    seed 4, dropped), said in one line, and every seed's numbers those of the run of all five at once."""
    from lab import memory

    config = {**SMALL, "setup": "semi_supervised", "method": "freematch", "seeds": [0, 1, 2, 3, 4]}
    together = experiment.run(config, progress=False)
    estimate = together.memory["estimate_bytes"]
    assert together.memory["seeds_per_group"] == 5 and estimate < together.memory["limit_bytes"]
    monkeypatch.setenv("LAB_MEMORY_LIMIT", str(estimate - 1))
    capsys.readouterr()
    grouped = experiment.run(config, progress=False)
    assert grouped.memory == {"estimate_bytes": estimate, "limit_bytes": estimate - 1, "seeds_per_group": 4}
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"lab: 5 seeds need about {memory.describe(estimate)} of memory, more than the limit of "
        f"{memory.describe(estimate - 1)} (LAB_MEMORY_LIMIT); training them in 2 groups of 4"
    )
    assert grouped.seeds == together.seeds and grouped.curves.keys() == together.curves.keys()
    # The same training: equal where only comparisons enter (accuracies); elsewhere XLA may round a
    # program of 4 seeds otherwise than one of 5, by a few ulps.
    assert grouped.metrics["accuracy"] == together.metrics["accuracy"]
    assert grouped.curves["test_accuracy"] == together.curves["test_accuracy"]
    for name, values in together.metrics.items():
        np.testing.assert_allclose(grouped.metrics[name], values, rtol=1e-6, err_msg=name)
    for name, values in together.curves.items():
        np.testing.assert_allclose(np.asarray(grouped.curves[name], float), np.asarray(values, float), rtol=1e-6)


def test_a_seed_past_the_memory_limit_is_refused_naming_the_estimate_and_the_limit(monkeypatch):
    from lab import train

    monkeypatch.setenv("LAB_MEMORY_LIMIT", "1KB")
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: pytest.fail("trained past the memory limit"))
    message = (
        r"one seed of this run needs about [0-9.]+ [KM]B of memory, more than the limit of 1\.0 KB; "
        r"raise it with LAB_MEMORY_LIMIT=<size> \(e\.g\. LAB_MEMORY_LIMIT=1GB\) if the device has the memory"
    )
    with pytest.raises(ValueError, match=message):
        experiment.run({**SMALL, "seeds": [0, 1]}, progress=False)
    monkeypatch.setenv("LAB_MEMORY_LIMIT", "lots")
    with pytest.raises(ValueError, match=r"LAB_MEMORY_LIMIT='lots' is not a memory size; give bytes or a number"):
        experiment.run({**SMALL, "seeds": [0, 1]}, progress=False)
