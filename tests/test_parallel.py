"""Data parallelism: on 4 forced CPU devices, shard_map + pmean steps equal the
single-device steps on the same global batch. Runs in a subprocess because the
device count is fixed when JAX starts (as does lab.parallel.compare_on_devices,
notebook 01's check)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from lab import parallel

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from lab import data, devices, experiment, models, optim, parallel, semisupervised, train

    assert jax.device_count() == 4, jax.devices()
    digits = data.digits()
    pools = {"labeled": {"x": jnp.asarray(digits.x_train), "y": jnp.asarray(digits.y_train)}}

    first_batch = {}  # device index -> the labels of the first step's batch that device saw

    def record(step, device, y):
        if int(step) == 0:
            first_batch[int(device)] = np.asarray(y).tolist()

    class Recording(semisupervised.Supervised):
        # The supervised objective, reporting (through the host) the rows each device trains on.

        sharded = False

        def loss(self, model, batch, key, objective_state, step):
            device = jax.lax.axis_index(parallel.AXIS) if self.sharded else 0
            jax.debug.callback(record, step, device, batch["labeled"]["y"])
            return super().loss(model, batch, key, objective_state, step)

    class ShardedRecording(Recording):
        sharded = True

    def run(model_name, steps, dp, batch_size=64, objective_type=semisupervised.Supervised, **hyper):
        module = models.make_model(model_name, digits.input_shape, digits.num_classes, seed=0, **hyper)
        model, params, model_state = train.Graphs.split(module)
        tx = optim.make_optimizer("momentum", 0.05)
        state = train.create_train_state(params, model_state, tx, 0)
        objective = objective_type(input_shape=digits.input_shape, augmentation="none")
        result = train.fit(model, state, tx, objective, pools, steps=steps, batch_size=batch_size,
                           eval_every=steps, parallel=parallel.DataParallel() if dp else None, progress=False)
        return result

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    runs = {(steps, dp): run("mlp", steps, dp, hidden=(64,)) for steps in (1, 25) for dp in (False, True)}
    out = {"moved": max_diff(runs[25, False].state.params, runs[1, False].state.params)}
    for steps in (1, 25):
        single, multi = runs[steps, False], runs[steps, True]
        out[f"params_{steps}"] = max_diff(single.state.params, multi.state.params)
        out[f"loss_{steps}"] = abs(single.history[-1]["train_loss"] - multi.history[-1]["train_loss"])
    run("mlp", 1, False, objective_type=Recording, hidden=(64,))
    out["global_batch"] = first_batch.pop(0)
    run("mlp", 1, True, objective_type=ShardedRecording, hidden=(64,))
    out["device_batches"] = [first_batch[device] for device in sorted(first_batch)]
    out["described"] = devices.describe()
    config = experiment.TrainConfig(steps=2, eval_every=2, data_parallel=True, platform="cpu")
    out["lab_train_devices"] = experiment.train_and_evaluate(config, progress=False)["devices"]
    try:
        run("mlp", 1, True, hidden=(64,), batch_size=30)
        out["error"] = None
    except ValueError as error:
        out["error"] = str(error)
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def four_device_run():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_one_data_parallel_step_equals_the_single_device_step(four_device_run):
    assert four_device_run["params_1"] < 1e-6
    assert four_device_run["loss_1"] < 1e-6


def test_many_data_parallel_steps_track_the_single_device_run(four_device_run):
    assert four_device_run["moved"] > 1e-2  # training really moved the parameters ...
    assert four_device_run["params_25"] < 1e-4  # ... and both runs moved them the same way
    assert four_device_run["loss_25"] < 1e-5


def test_a_global_batch_is_split_over_all_devices(four_device_run):
    """Batch 64 on 4 devices: device i trains on rows 16i..16i+15 of the batch one device would draw."""
    whole, parts = four_device_run["global_batch"], four_device_run["device_batches"]
    assert len(whole) == 64 and [len(part) for part in parts] == [16, 16, 16, 16]
    assert sum(parts, []) == whole
    assert len(set(map(tuple, parts))) == 4  # really different rows on each device
    assert four_device_run["described"] == "cpu (4 devices)"
    assert four_device_run["lab_train_devices"] == 4  # `lab train --data-parallel --platform cpu`


def test_batch_size_must_divide_over_devices(four_device_run):
    assert "batch_size 30 is not divisible by the 4 devices" in four_device_run["error"]


def test_compare_on_devices_fits_the_same_parameters_on_four_devices_as_on_one():
    # notebook 01's section 5, at its defaults
    check = parallel.compare_on_devices(
        4, dataset="digits", model="mlp", labels_per_class=10, seed=0, steps=50, batch_size=32, learning_rate=0.003
    )
    assert check["devices"] == 4
    assert check["moved"] > 1e-2  # training really moved the parameters ...
    assert check["difference"] < 1e-4  # ... and both runs moved them the same way
