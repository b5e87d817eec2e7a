"""lab.devices: the platform a run computes on is a validated parameter; "auto" is the accelerator when
JAX sees one, a named platform that is missing fails in one line naming what JAX sees. The suite runs on
the CPU (conftest.py), so "gpu" and "tpu" are the missing platforms here."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lab import cli, devices, experiment, notebook, sweep

TINY = {"labels_per_class": 2, "steps": 4, "eval_every": 4, "batch_size": 8, "model_kwargs": {"hidden": (16,)}}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))


def test_platform_is_validated_like_every_other_field():
    assert experiment.ExperimentConfig().platform == "auto"
    assert experiment.ExperimentConfig.from_dict({"platform": "gpu"}).platform == "gpu"  # checked when it runs
    with pytest.raises(ValueError, match="^unknown platform 'cuda'; choose one of: auto, cpu, gpu, tpu$"):
        experiment.ExperimentConfig.from_dict({"platform": "cuda"})
    with pytest.raises(ValueError, match="platform must be of type str, got 1"):
        experiment.ExperimentConfig.from_dict({"platform": 1})


@pytest.mark.parametrize("platform", ["gpu", "tpu"])
def test_a_missing_platform_fails_naming_what_jax_sees(platform):
    with pytest.raises(ValueError) as error:
        devices.available(platform)
    message = str(error.value)
    assert message.startswith(f"platform '{platform}' is not available here: JAX sees cpu (1 device); ")
    assert "JAX_PLATFORMS=cpu limits it to those" in message  # the suite's own pin (conftest.py) is named
    assert f"pip install -e '.[{'cuda12' if platform == 'gpu' else 'tpu'}]'" in message
    assert "\n" not in message


def test_a_run_on_a_missing_platform_fails_before_loading_anything(monkeypatch):
    def load(config, name):
        pytest.fail("data loaded before the platform was checked")

    monkeypatch.setattr(experiment, "_load_named", load)
    with pytest.raises(ValueError, match="platform 'gpu' is not available here"):
        experiment.run({**TINY, "platform": "gpu"}, progress=False)


@pytest.mark.parametrize(
    "arguments",
    [["run", "platform=gpu", "steps=1", "--no-progress"], ["train", "--platform", "gpu", "--steps", "1", "--no-progress"]],
)
def test_the_command_line_says_so_in_one_line(arguments, capsys):
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lab {arguments[0]}: error: platform 'gpu' is not available here: JAX sees cpu (1 device)")
    assert err.count("\n") == 1


def test_lab_train_refuses_an_unknown_platform(capsys):
    assert cli.main(["train", "--platform", "cuda"]) == 2
    assert "argument --platform: invalid choice: 'cuda'" in capsys.readouterr().err


def test_a_named_platform_becomes_the_default_device_inside_use():
    cpu = jax.devices("cpu")[0]
    with devices.use("cpu") as used:
        assert used == [cpu]
        assert devices.current_platform() == "cpu"
        assert jnp.ones(3).devices() == {cpu}
        assert jax.jit(lambda x: x + 1)(np.ones(2)).devices() == {cpu}
    assert jax.config.jax_default_device is None  # restored on leaving
    with devices.use("auto") as used:
        assert used == jax.devices() and jax.config.jax_default_device is None


def test_platform_cpu_runs_and_gives_the_numbers_of_auto_here():
    """Here "auto" is the CPU, so naming it must change nothing but the recorded field."""
    on_cpu = experiment.run({**TINY, "platform": "cpu"}, progress=False)
    on_auto = experiment.run(TINY, progress=False)
    assert on_cpu.config["platform"] == "cpu" and on_auto.config["platform"] == "auto"
    assert on_cpu.metrics == on_auto.metrics
    assert on_cpu.curves == on_auto.curves


def test_descriptions_name_the_kind_and_count():
    assert devices.describe() == devices.describe("cpu") == notebook.device_summary() == "cpu (1 device)"
    gpu = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200")
    assert devices.summary([gpu, gpu]) == "NVIDIA H200 x2"
    cpus = [types.SimpleNamespace(platform="cpu", device_kind="cpu")] * 4
    assert devices.summary(cpus) == "cpu (4 devices)"
    with pytest.raises(ValueError, match="platform 'gpu' is not available here"):
        notebook.device_summary("gpu")


def test_sweep_kernels_share_a_gpu_without_reserving_most_of_it(monkeypatch):
    monkeypatch.delenv("XLA_PYTHON_CLIENT_PREALLOCATE", raising=False)
    assert sweep._kernel_environment()["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "true")  # the user's own choice wins
    assert sweep._kernel_environment()["XLA_PYTHON_CLIENT_PREALLOCATE"] == "true"


def test_a_workdir_resumes_on_another_platform(tmp_path):
    """A checkpoint taken on one platform (a laptop's CPU) resumes on another (a GPU): same training."""
    workdir = tmp_path / "run"
    small = {"steps": 2, "eval_every": 2, "batch_size": 16}
    for platform in ("cpu", "auto"):
        with experiment._claimed_workdir(workdir, experiment.TrainConfig(**small, platform=platform)):
            pass
    with pytest.raises(ValueError, match="holds a run of another config"):
        with experiment._claimed_workdir(workdir, experiment.TrainConfig(**{**small, "steps": 3})):
            pass
