"""Training loop: steps against a hand-written reference, sampling, NaN guard,
checkpoint resume, early stopping and chunking invariance."""

import argparse
import dataclasses
import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lab import cli, data, experiment, losses, metrics, models, optim, semisupervised, train

# Plain cross-entropy on the digits as they are (no augmentation).
SUPERVISED = semisupervised.Supervised(input_shape=(8, 8, 1), augmentation="none")


@pytest.fixture(scope="module")
def digits():
    return data.digits()


def _setup(digits, seed=0, learning_rate=1e-3, hidden=(32,), **model_kwargs):
    module = models.make_model("mlp", digits.input_shape, digits.num_classes, seed=seed, hidden=hidden, **model_kwargs)
    model, params, model_state = train.Graphs.split(module)
    tx = optim.make_optimizer("adam", learning_rate)
    state = train.create_train_state(params, model_state, tx, seed)
    pools = {"labeled": {"x": jnp.asarray(digits.x_train), "y": jnp.asarray(digits.y_train)}}
    return model, tx, state, pools


def _leaves(tree):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def assert_trees_close(a, b, **tolerance):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)


def test_fit_learns_digits(digits):
    model, tx, state, pools = _setup(digits)
    x_test = jnp.asarray(digits.x_test)
    result = train.fit(
        model,
        state,
        tx,
        SUPERVISED,
        pools,
        steps=400,
        batch_size=64,
        eval_every=200,
        progress=False,
        evaluate=lambda s: {
            "accuracy": float(
                jnp.mean(train.predict(model, s.params, s.model_state, x_test).argmax(-1) == digits.y_test)
            )
        },
    )
    assert int(result.state.step) == 400
    assert [row["step"] for row in result.history] == [200, 400]
    assert result.history[-1]["accuracy"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_train_step_matches_hand_written_update(digits):
    model, tx, state, pools = _setup(digits)
    batch = train.draw_batch(pools, {"labeled": 16}, state.key, state.step)[0]
    new_state, step_metrics = train.train_step(state, batch, model=model, tx=tx, objective=SUPERVISED)

    # Reference: plain jax.grad of the cross-entropy of an independently merged module, one Adam step.
    def loss(params):
        module = nnx.merge(model.train_graph, params, state.model_state)
        logits = module(batch["labeled"]["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["labeled"]["y"]).mean()

    value, grads = jax.value_and_grad(loss)(state.params)
    adam = optax.adam(1e-3)
    updates, _ = adam.update(grads, adam.init(state.params), state.params)
    expected = optax.apply_updates(state.params, updates)
    np.testing.assert_allclose(step_metrics["loss"], value, rtol=1e-6)
    assert_trees_close(new_state.params, expected, rtol=1e-6, atol=1e-7)
    assert int(new_state.step) == 1


def _three_steps(digits, ema_decay):
    model, tx, state, pools = _setup(digits)
    state = train.create_train_state(state.params, state.model_state, tx, 0, ema_decay=ema_decay)
    step = jax.jit(lambda s, b: train.train_step(s, b, model=model, tx=tx, objective=SUPERVISED)[0])
    states = [state]
    for _ in range(3):
        batch = train.draw_batch(pools, {"labeled": 16}, state.key, state.step)[0]
        state = step(state, batch)
        states.append(state)
    return states


def test_ema_of_the_weights_follows_its_recursion_by_hand(digits):
    decay = 0.75
    states = _three_steps(digits, ema_decay=decay)

    # ema_0 = params_0; ema_k = d ema_(k-1) + (1 - d) params_k, after each optimizer step.
    expected = _leaves(states[0].params)
    for state in states[1:]:
        expected = [decay * e + (1 - decay) * p for e, p in zip(expected, _leaves(state.params))]
        for actual, wanted in zip(_leaves(state.ema.params), expected, strict=True):
            np.testing.assert_allclose(actual, wanted, rtol=1e-6, atol=1e-7)
    assert states[-1].eval_params is states[-1].ema.params  # evaluation reads the average
    assert not np.allclose(_leaves(states[-1].ema.params)[0], _leaves(states[-1].params)[0])


def test_without_ema_the_state_and_the_training_are_as_before(digits):
    off, on = _three_steps(digits, ema_decay=0.0), _three_steps(digits, ema_decay=0.9)

    assert off[-1].ema is None and off[-1].eval_params is off[-1].params
    # No EMA adds no leaf: the state has the structure (and checkpoints) it had before the option.
    fields = [f.name for f in dataclasses.fields(train.TrainState) if f.name != "ema"]
    assert jax.tree.structure(off[-1]) == jax.tree.structure(
        train.TrainState(**{name: getattr(off[-1], name) for name in fields})
    )
    # The average only watches: training with it is bit-identical to training without it.
    for a, b in zip(_leaves(off[-1].params), _leaves(on[-1].params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ema_decay_must_be_below_one(digits):
    model, tx, state, pools = _setup(digits)
    with pytest.raises(ValueError, match=r"ema_decay must be a number in \[0, 1\), got 1.0"):
        train.create_train_state(state.params, state.model_state, tx, 0, ema_decay=1.0)


def test_draw_batch_is_an_epoch_permutation():
    pool = {"x": jnp.arange(12.0)[:, None], "y": jnp.arange(12)}
    key = jax.random.PRNGKey(3)
    epoch = [np.asarray(train.draw_batch({"p": pool}, {"p": 4}, key, jnp.int32(s))[0]["p"]["y"]) for s in range(3)]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(12))  # each example once per epoch
    again = np.asarray(train.draw_batch({"p": pool}, {"p": 4}, key, jnp.int32(1))[0]["p"]["y"])
    np.testing.assert_array_equal(again, epoch[1])  # a function of (key, step) alone
    next_epoch = [
        np.asarray(train.draw_batch({"p": pool}, {"p": 4}, key, jnp.int32(s))[0]["p"]["y"]) for s in range(3, 6)
    ]
    assert not np.array_equal(np.concatenate(next_epoch), np.concatenate(epoch))  # reshuffled
    small = train.draw_batch({"p": pool}, {"p": 20}, key, jnp.int32(0))[0]["p"]["y"]
    assert small.shape == (20,)  # wraps around a pool smaller than the batch


def test_reusing_the_epoch_permutation_draws_the_same_batches():
    pools = {
        "a": {"x": jnp.arange(10.0)[:, None], "y": jnp.arange(10)},
        "b": {"x": jnp.arange(12.0)[:, None], "y": jnp.arange(12), "index": jnp.arange(12)[::-1], "count": 7},
    }
    sizes, key = {"a": 3, "b": 2}, jax.random.PRNGKey(5)
    orders = train.epoch_orders(pools, sizes, key, jnp.int32(0))
    for step in range(12):  # several epochs of both pools, which turn over at different steps
        batch, orders = train.draw_batch(pools, sizes, key, jnp.int32(step), orders)
        expected, _ = train.draw_batch(pools, sizes, key, jnp.int32(step))
        for name in pools:
            np.testing.assert_array_equal(batch[name]["y"], expected[name]["y"])


def test_chunk_length_does_not_change_the_result(digits):
    results = []
    for eval_every in (30, 7):
        model, tx, state, pools = _setup(digits)
        fit = train.fit(
            model, state, tx, SUPERVISED, pools, steps=30, batch_size=32, eval_every=eval_every, progress=False
        )
        results.append(fit.state.params)
    assert_trees_close(*results, rtol=1e-6, atol=1e-7)


@dataclasses.dataclass(frozen=True)
class PoisonedAt(train.Objective):
    """Supervised loss that turns NaN from step ``bad_step`` on."""

    bad_step: int

    def loss(self, model, batch, key, objective_state, step):
        loss, step_metrics, objective_state = SUPERVISED.loss(model, batch, key, objective_state, step)
        loss = jnp.where(step >= self.bad_step, jnp.nan, loss)
        return loss, {**step_metrics, "loss": loss}, objective_state


def test_non_finite_loss_stops_with_step_and_keeps_checkpoint(digits, tmp_path):
    model, tx, state, pools = _setup(digits)
    checkpoints = train.Checkpointer(tmp_path / "ckpt")
    with pytest.raises(train.NonFiniteLossError, match=r"step 13 \(last finite loss: \d") as error:
        train.fit(
            model,
            state,
            tx,
            PoisonedAt(13),
            pools,
            steps=20,
            batch_size=32,
            eval_every=5,
            checkpoints=checkpoints,
            checkpoint_every=5,
            progress=False,
        )
    kept = error.value.state
    assert int(kept.step) == 13
    assert all(np.isfinite(leaf).all() for leaf in _leaves(kept.params))
    assert error.value.last_finite_loss is not None and np.isfinite(error.value.last_finite_loss)
    # The last good checkpoint (step 10) is intact and finite.
    assert checkpoints.latest_step() == 10
    restored = checkpoints.restore_latest(_setup(digits)[2])
    assert int(restored.step) == 10
    assert all(np.isfinite(leaf).all() for leaf in _leaves(restored.params))
    checkpoints.close()


def test_resume_from_checkpoint_equals_uninterrupted_run(digits, tmp_path):
    model, tx, state, pools = _setup(digits)
    straight = train.fit(
        model, state, tx, SUPERVISED, pools, steps=24, batch_size=32, eval_every=8, progress=False
    )

    model, tx, state, pools = _setup(digits)
    first = train.Checkpointer(tmp_path / "ckpt")
    train.fit(
        model,
        state,
        tx,
        SUPERVISED,
        pools,
        steps=16,
        batch_size=32,
        eval_every=8,
        checkpoints=first,
        progress=False,
    )
    first.close()

    model, tx, fresh, pools = _setup(digits)  # a new process would start here
    second = train.Checkpointer(tmp_path / "ckpt")
    resumed = train.fit(
        model,
        fresh,
        tx,
        SUPERVISED,
        pools,
        steps=24,
        batch_size=32,
        eval_every=8,
        checkpoints=second,
        progress=False,
    )
    second.close()
    assert [row["step"] for row in resumed.history] == [24]
    assert_trees_close(resumed.state.params, straight.state.params, rtol=1e-6, atol=1e-7)
    assert_trees_close(resumed.state.opt_state, straight.state.opt_state, rtol=1e-6, atol=1e-7)


def test_early_stopping_returns_the_best_state(digits):
    model, tx, state, pools = _setup(digits)
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])
    seen = {}

    def evaluate(s):
        seen[int(s.step)] = jax.device_get(s.params)
        return {"accuracy": next(scores)}

    result = train.fit(
        model,
        state,
        tx,
        SUPERVISED,
        pools,
        steps=50,
        batch_size=32,
        eval_every=10,
        evaluate=evaluate,
        patience=2,
        progress=False,
    )
    assert [row["step"] for row in result.history] == [10, 20, 30, 40]  # stopped after 2 evals without gain
    assert int(result.state.step) == 20
    assert_trees_close(result.state.params, seen[20], rtol=0, atol=0)


def test_invalid_arguments_are_named(digits):
    model, tx, state, pools = _setup(digits)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        train.fit(model, state, tx, SUPERVISED, pools, steps=0, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got -1"):
        train.fit(model, state, tx, SUPERVISED, pools, steps=5, batch_size=-1, progress=False)


def test_supervised_loss_is_the_cross_entropy(digits):
    model, tx, state, pools = _setup(digits)
    batch = train.draw_batch(pools, {"labeled": 8}, state.key, state.step)[0]
    module = model.bind(state.params, state.model_state, train=True)
    loss, step_metrics, _ = SUPERVISED.loss(module, batch, state.key, None, state.step)
    logits = module(batch["labeled"]["x"])
    np.testing.assert_allclose(loss, losses.softmax_cross_entropy(logits, batch["labeled"]["y"]), rtol=1e-6)
    accuracy = np.mean(np.argmax(logits, -1) == batch["labeled"]["y"])
    np.testing.assert_allclose(step_metrics["labeled_accuracy"], accuracy)


def test_draw_batch_uses_only_the_counted_entries_of_a_padded_index():
    pool = {"x": jnp.arange(12.0)[:, None], "y": jnp.arange(12), "index": jnp.array([7, 3, 9, 0, 0, 0]), "count": 3}
    key = jax.random.PRNGKey(0)
    epoch = [int(train.draw_batch({"p": pool}, {"p": 1}, key, jnp.int32(s))[0]["p"]["y"][0]) for s in range(3)]
    assert sorted(epoch) == [3, 7, 9]  # each counted row once per epoch, padding never drawn
    wrapped = train.draw_batch({"p": pool}, {"p": 5}, key, jnp.int32(0))[0]["p"]["y"]
    assert set(np.asarray(wrapped).tolist()) == {3, 7, 9}


def test_fit_trains_a_model_with_dropout(digits):
    model, tx, state, pools = _setup(digits, dropout=0.2)
    result = train.fit(model, state, tx, SUPERVISED, pools, steps=20, batch_size=32, eval_every=10, progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] + 1.0
    train_mode = model.bind(result.state.params, result.state.model_state, train=True)
    eval_mode = model.bind(result.state.params, result.state.model_state, train=False)
    x = jnp.asarray(digits.x_test[:8])
    assert not np.allclose(train_mode(x), eval_mode(x))  # dropout is active in train mode only
    np.testing.assert_allclose(eval_mode(x), eval_mode(x))


# ------------------------------------------------------------------ lab train workdirs


def train_cli(capsys, *arguments):
    """``lab train --no-progress ARGUMENTS`` in this process: (exit status, parsed stdout or None, stderr)."""
    status = cli.main(["train", "--no-progress", *arguments])
    out, err = capsys.readouterr()
    return status, json.loads(out) if out else None, err


def test_a_workdir_refuses_another_config_and_resumes_its_own(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    workdir = tmp_path / "w"
    base = ["--steps", "60", "--eval-every", "30", "--batch-size", "32", "--workdir", str(workdir)]
    status, first, _ = train_cli(capsys, *base)
    assert status == 0
    assert json.loads((workdir / "config.json").read_text()) == first["config"]
    # argparse keeps the last of a repeated option: each case changes one field of `base`.
    for changed, difference in [
        (["--steps", "30"], "steps: 60 -> 30"),
        (["--seed", "1"], "seed: 0 -> 1"),
        (["--learning-rate", "0.01"], "learning_rate: 0.001 -> 0.01"),
        (["--model", "logreg"], "model: 'mlp' -> 'logreg'"),
        (["--precision", "bfloat16"], "precision: 'float32' -> 'bfloat16'"),
    ]:
        status, result, err = train_cli(capsys, *base, *changed)
        assert status == 2 and result is None, err
        assert err.startswith("lab train: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert difference in err and "another --workdir" in err, err
    # Where evaluations happen does not change what is trained: the run resumes, with nothing left to train.
    config = experiment.TrainConfig(**{**first["config"], "eval_every": 20})
    resumed = experiment.train_and_evaluate(config, workdir, progress=False)
    assert resumed["history"] == [] and resumed["test"] == first["test"]
    assert json.loads((workdir / "config.json").read_text()) == first["config"]  # the record is not rewritten
    # A record from before a field existed holds its default: precision came later, float32 before it.
    older = {name: value for name, value in first["config"].items() if name != "precision"}
    (workdir / "config.json").write_text(json.dumps(older))
    assert experiment.train_and_evaluate(config, workdir, progress=False)["test"] == first["test"]


def test_lab_train_with_ema_decay_evaluates_the_average_of_the_weights(capsys, digits):
    steps, decay = 3, 0.5
    arguments = ["--steps", str(steps), "--batch-size", "16", "--learning-rate", "0.01"]
    status, with_ema, err = train_cli(capsys, *arguments, "--ema-decay", str(decay))
    assert status == 0, err
    status, without, err = train_cli(capsys, *arguments)
    assert status == 0, err
    assert with_ema["config"]["ema_decay"] == decay and with_ema["test"] != without["test"]

    # By hand: the same training, the weights after each step, their average, its test metrics.
    module = models.make_model("mlp", digits.input_shape, digits.num_classes, seed=0)
    model, params, model_state = train.Graphs.split(module)
    tx = optim.make_optimizer("adam", 0.01, total_steps=steps)
    visited = []

    def keep_weights(state):
        visited.append((_leaves(state.params), state.model_state))
        return {}

    pools = {"labeled": {"x": jnp.asarray(digits.x_train), "y": jnp.asarray(digits.y_train)}}
    train.fit(model, train.create_train_state(params, model_state, tx, 0), tx, SUPERVISED, pools,
              steps=steps, batch_size=16, eval_every=1, evaluate=keep_weights, progress=False)  # fmt: skip
    average = _leaves(params)  # ema_0 = params_0; ema_k = d ema_(k-1) + (1 - d) params_k
    for weights, _ in visited:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, weights, strict=True)]
    average = jax.tree.unflatten(jax.tree.structure(params), [jnp.asarray(a) for a in average])
    logits = train.predict(model, average, visited[-1][1], jnp.asarray(digits.x_test))
    assert with_ema["test"] == pytest.approx(metrics.classification_metrics(logits, digits.y_test), rel=1e-6)


def test_train_config_refuses_a_bad_ema_decay_or_weight_decay_mode(tmp_path):
    with pytest.raises(ValueError, match=r"ema_decay must be a number in \[0, 1\), got -0.5"):
        experiment.train_and_evaluate(experiment.TrainConfig(steps=5, ema_decay=-0.5), tmp_path / "w", progress=False)
    with pytest.raises(ValueError, match=r"unknown weight_decay_mode 'cubic'; choose one of \['decoupled', 'l2'\]"):
        experiment.train_and_evaluate(
            experiment.TrainConfig(steps=5, weight_decay_mode="cubic"), tmp_path / "w", progress=False
        )
    assert not (tmp_path / "w").exists()  # refused by the optimizer and the train state, before the workdir


def test_a_workdir_from_before_config_records_is_refused(tmp_path):
    workdir = tmp_path / "w"
    (workdir / "checkpoints" / "100").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"has checkpoints but no config.json .* another --workdir"):
        experiment.train_and_evaluate(experiment.TrainConfig(steps=5), workdir, progress=False)


def _finished_checkpoints(directory: Path) -> list[int]:
    # Orbax writes into a temporary folder and renames it to the bare step number when complete.
    return sorted(int(path.name) for path in directory.glob("*") if path.name.isdigit()) if directory.is_dir() else []


def test_a_killed_run_resumes_from_its_last_checkpoint_to_the_uninterrupted_numbers(tmp_path, capsys):
    steps = 3000
    arguments = ["--steps", str(steps), "--eval-every", str(steps), "--checkpoint-every", "100", "--batch-size", "32"]
    workdir = tmp_path / "killed"
    repository = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repository), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(
        [sys.executable, "-m", "lab.cli", "train", "--no-progress", *arguments, "--workdir", str(workdir)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        while not _finished_checkpoints(workdir / "checkpoints"):
            assert process.poll() is None, process.stderr.read().decode()
            time.sleep(0.02)
    finally:
        process.kill()  # SIGKILL: no clean-up runs
        process.wait()
        process.stderr.close()
    killed_at = train.Checkpointer(workdir / "checkpoints").latest_step()
    assert killed_at is not None and 0 < killed_at < steps  # killed mid-way, after a checkpoint

    status, resumed, err = train_cli(capsys, *arguments, "--workdir", str(workdir))
    assert status == 0, err
    status, uninterrupted, err = train_cli(capsys, *arguments)
    assert status == 0, err
    assert resumed["test"] == uninterrupted["test"]  # bit for bit


SHORT_RUN = ["--steps", "60", "--eval-every", "20", "--checkpoint-every", "20", "--batch-size", "32"]


@pytest.fixture(scope="module")
def short_run_result():
    """The test metrics of ``lab train SHORT_RUN`` without a workdir (uninterrupted)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
        return experiment.train_and_evaluate(experiment.TrainConfig(steps=60, eval_every=20, batch_size=32),
                                             progress=False)["test"]  # fmt: skip


def _largest_file(folder: Path) -> Path:
    return max((path for path in folder.rglob("*") if path.is_file()), key=lambda path: path.stat().st_size)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_checkpoint_is_named_and_the_run_resumes_from_the_newest_intact_one(
    tmp_path, capsys, monkeypatch, short_run_result, damage
):
    """The issue: one bit flipped in the latest checkpoint's largest file, and the resumed run exited 0
    with accuracy 0.10 instead of 0.99; other damage read as a non-finite loss."""
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    workdir = tmp_path / "w"
    status, first, err = train_cli(capsys, *SHORT_RUN, "--workdir", str(workdir))
    assert status == 0 and first["test"] == short_run_result, err
    checkpoints = workdir / "checkpoints"
    assert _finished_checkpoints(checkpoints) == [20, 40, 60]
    largest = _largest_file(checkpoints / "60")
    content = bytearray(largest.read_bytes())
    if damage == "flip":
        content[len(content) // 2] ^= 0x10
    else:
        del content[len(content) // 2 :]
    largest.write_bytes(bytes(content))

    status, resumed, err = train_cli(capsys, *SHORT_RUN, "--workdir", str(workdir))
    assert status == 0, err
    assert resumed["test"] == short_run_result  # trained again from step 40
    name = largest.relative_to(checkpoints / "60").as_posix()
    assert err == (
        f"lab: the checkpoint of step 60 in {checkpoints} failed its check (damaged: {name}); "
        f"moved to {tmp_path / 'w' / 'checkpoints-damaged' / '60'}; resuming from step 40\n"
    )
    assert _finished_checkpoints(checkpoints) == [20, 40, 60]  # step 60 saved again, intact


def test_checkpoints_without_digests_are_restored_and_damaged_ones_skipped(digits, tmp_path, capsys):
    """Checkpoints saved before digests were recorded still resume; one that does not restore is skipped."""
    model, tx, state, pools = _setup(digits)
    checkpoints = train.Checkpointer(tmp_path / "ckpt")
    train.fit(model, state, tx, SUPERVISED, pools, steps=10, batch_size=32, eval_every=5, checkpoints=checkpoints,
              checkpoint_every=5, progress=False)  # fmt: skip
    checkpoints.close()
    for step in (5, 10):
        (tmp_path / "ckpt" / str(step) / "manifest.sha256").unlink()
    assert int(train.Checkpointer(tmp_path / "ckpt").restore_latest(state).step) == 10
    (_largest_file(tmp_path / "ckpt" / "10")).write_bytes(b"")
    restored = train.Checkpointer(tmp_path / "ckpt").restore_latest(state)
    assert int(restored.step) == 5
    err = capsys.readouterr().err
    assert err.startswith("lab: the checkpoint of step 10 in ") and "unreadable" in err and err.count("\n") == 1, err


def test_a_full_disk_during_a_checkpoint_says_so_in_one_line_and_the_earlier_ones_resume(
    tmp_path, capsys, monkeypatch, short_run_result
):
    """The issue: 427 lines and 21 tracebacks. TensorStore reports a full disk as this ValueError, and
    orbax logs it with its traceback from each of its threads."""
    import orbax.checkpoint as ocp
    from absl import logging as absl_logging

    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    workdir = tmp_path / "w"
    real_save = ocp.CheckpointManager.save

    def full_at_40(self, step, *args, **kwargs):
        if step == 40:
            message = "RESOURCE_EXHAUSTED: Failed to write: No space left on device [os_error_code='28']"
            absl_logging.error("_SignalingThread.run() raised an exception: %s\nTraceback (most recent ...", message)
            raise ValueError(message)
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_40)
    status, result, err = train_cli(capsys, *SHORT_RUN, "--workdir", str(workdir))
    assert status == 2 and result is None
    assert err == (
        f"lab train: error: the checkpoint of step 40 could not be written in {workdir / 'checkpoints'}: "
        "the disk is full; the checkpoint of step 20 is kept and resumes (make room and run the same command again)\n"
    )
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    status, resumed, err = train_cli(capsys, *SHORT_RUN, "--workdir", str(workdir))
    assert status == 0, err
    assert resumed["test"] == short_run_result


def _hold_workdir(workdir: Path) -> subprocess.Popen:
    """Another process that holds ``workdir`` as a running ``lab train`` does, once it has said so."""
    repository = Path(__file__).resolve().parents[1]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom lab import processes\n"
         "with processes.exclusive(sys.argv[1], 'workdir'):\n    print('held', flush=True)\n    time.sleep(120)\n",
         str(workdir / "lock")],
        env={**os.environ, "PYTHONPATH": str(repository)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_second_lab_train_on_a_busy_workdir_is_refused_naming_the_first(tmp_path, capsys, monkeypatch):
    """The issue: two runs in one workdir crashed with raw orbax errors, 150-270 lines each."""
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    workdir = tmp_path / "w"
    workdir.mkdir()
    holder = _hold_workdir(workdir)
    try:
        status, result, err = train_cli(capsys, *SHORT_RUN, "--workdir", str(workdir))
    finally:
        holder.kill()  # SIGKILL: its lock is left behind, as a killed run leaves it
        holder.wait()
        holder.stdout.close()
    assert status == 2 and result is None
    assert re.fullmatch(
        rf"lab train: error: workdir {re.escape(str(workdir))} is in use by process {holder.pid} on "
        rf"{re.escape(socket.gethostname())} since \d{{4}}-\d\d-\d\dT[^ ]+ \(lock {re.escape(str(workdir))}/lock\); "
        r"wait for it to finish, or stop it\n",
        err,
    ), err
    assert not (workdir / "checkpoints").exists() and not (workdir / "config.json").exists()
    # The killed holder's lock does not block: the run takes it over.
    status, result, err = train_cli(capsys, *SHORT_RUN[:2], "--workdir", str(workdir))
    assert status == 0, err


def test_a_diverging_run_stops_with_one_line_and_saves_the_last_finite_state(tmp_path, capsys, monkeypatch, digits):
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    workdir = tmp_path / "w"
    arguments = ["--optimizer", "sgd", "--learning-rate", "1e6", "--steps", "50", "--workdir", str(workdir)]
    status, result, err = train_cli(capsys, *arguments)
    assert status == 2 and result is None
    assert err.count("\n") == 1 and "Traceback" not in err, err
    saved = re.fullmatch(
        r"lab train: error: non-finite loss at step (\d+) \(last finite loss: [^)]+\); training stopped\. "
        r"The last finite state \(step \1\) is saved in (\S+)\. Try .*\n",
        err,
    )
    assert saved, err
    assert Path(saved[2]) == workdir / "checkpoints" / saved[1]
    checkpoints = train.Checkpointer(workdir / "checkpoints")
    assert checkpoints.latest_step() == int(saved[1])
    module = models.make_model("mlp", digits.input_shape, digits.num_classes, seed=0)
    _, params, model_state = train.Graphs.split(module)
    like = train.create_train_state(params, model_state, optim.make_optimizer("sgd", 1e6), 0)
    restored = checkpoints.restore_latest(like)
    checkpoints.close()
    assert int(restored.step) == int(saved[1])
    assert all(np.isfinite(leaf).all() for leaf in _leaves(restored.params))


def test_a_diverging_run_without_workdir_says_nothing_was_saved(capsys, monkeypatch):
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    status, result, err = train_cli(capsys, "--optimizer", "sgd", "--learning-rate", "1e6", "--steps", "50")
    assert status == 2 and result is None and err.count("\n") == 1, err
    assert "non-finite loss at step" in err and "Nothing was saved (no --workdir)" in err, err


@pytest.mark.parametrize(
    ("field", "value"),
    [("learning_rate", float("inf")), ("learning_rate", float("nan")), ("weight_decay", float("inf"))],
)
def test_train_and_evaluate_refuses_non_finite_hyperparameters(field, value, tmp_path):
    config = experiment.TrainConfig(steps=5, **{field: value})
    with pytest.raises(ValueError, match=f"{field} must be a finite number, got {value}"):
        experiment.train_and_evaluate(config, tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()  # a refused config is not recorded


def test_train_and_evaluate_refuses_a_batch_larger_than_the_training_set(tmp_path):
    with pytest.raises(ValueError, match="batch_size=1348 is larger than the 1347 training examples of digits"):
        experiment.train_and_evaluate(experiment.TrainConfig(steps=5, batch_size=1348), tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (cli.positive_float, "inf", "must be a finite number > 0, got inf"),
        (cli.positive_float, "nan", "must be a finite number > 0, got nan"),
        (cli.positive_float, "0", "must be a finite number > 0, got 0"),
        (cli.non_negative_float, "inf", "must be a finite number >= 0, got inf"),
        (cli.non_negative_float, "-1", "must be a finite number >= 0, got -1"),
    ],
)
def test_train_option_values_must_be_finite(parse, text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        parse(text)


# ------------------------------------------------------------------ mixed precision


def _resnet(digits, seed=0):
    return models.make_model("resnet", digits.input_shape, digits.num_classes, seed=seed, widths=(8, 16))


def _resnet_setup(digits, seed=0):
    model, params, model_state = train.Graphs.split(_resnet(digits, seed))
    tx = optim.make_optimizer("adam", 3e-3)
    pools = {"labeled": {"x": jnp.asarray(digits.x_train), "y": jnp.asarray(digits.y_train)}}
    return model, tx, train.create_train_state(params, model_state, tx, seed), pools


def test_bfloat16_computes_the_backbone_in_bfloat16_and_the_head_in_float32(digits):
    model, params, model_state = train.Graphs.split(nnx.eval_shape(lambda: _resnet(digits)))

    def dtypes(params, model_state, x):
        module = train.in_precision(model.bind(params, model_state, train=True), "bfloat16")
        return module.backbone.layers[0](x), module.features(x), module(x), nnx.state(module, nnx.Param)

    # Types only: an abstract evaluation, nothing is computed.
    stem, features, logits, params = jax.eval_shape(dtypes, params, model_state, digits.x_train[:8])

    assert (stem.dtype, features.dtype, logits.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)  # stem: a conv
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype("float32")}  # stored as they were


def test_bfloat16_training_tracks_float32_and_keeps_the_state_float32(digits):
    model, tx, state, pools = _resnet_setup(digits)
    results = {
        precision: train.fit(model, state, tx, SUPERVISED, pools, steps=100, batch_size=32, precision=precision, progress=False)
        for precision in ("float32", "bfloat16")
    }
    exact, mixed = (results[precision].log["loss"] for precision in ("float32", "bfloat16"))

    # bfloat16 keeps 8 significant bits: each rounding is off by at most 2^-9 (0.2%), so the
    # first loss, from the same parameters and batch, is within 1% after a dozen layers; yet
    # it does differ, so the steps did compute in bfloat16.
    assert exact[0] != mixed[0] and mixed[0] == pytest.approx(exact[0], rel=0.01)
    # Then the two runs drift apart as different roundings compound (single steps, some
    # 6% apart on the last batches); the loss averaged over every 10 steps stays within 5%.
    np.testing.assert_allclose(mixed.reshape(10, 10).mean(1), exact.reshape(10, 10).mean(1), rtol=0.05)
    assert exact[-10:].mean() < 0.5 * exact[:10].mean()  # it did learn: the comparison is not of two flat curves
    # The state stays float32: parameters, optimizer moments, batch norm statistics, losses.
    float_dtypes = {
        leaf.dtype
        for leaf in jax.tree.leaves((results["bfloat16"].state.params, results["bfloat16"].state.opt_state,
                                     results["bfloat16"].state.model_state))
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    }
    assert float_dtypes == {jnp.dtype("float32")} and mixed.dtype == np.float32


def test_a_bfloat16_step_moves_the_batch_norm_statistics_as_float32_does(digits):
    model, tx, state, pools = _resnet_setup(digits)
    batch = train.draw_batch(pools, {"labeled": 32}, state.key, state.step)[0]

    def statistics(precision):
        step = jax.jit(lambda state: train.train_step(state, batch, model=model, tx=tx, objective=SUPERVISED,
                                                      precision=precision))
        return jax.tree.leaves(nnx.state(step(state)[0].model_state, nnx.BatchStat))

    for exact, mixed in zip(statistics("float32"), statistics("bfloat16"), strict=True):
        assert mixed.dtype == jnp.float32
        # From bfloat16 activations: a few roundings of 2^-9 apart, relative to the statistics' scale.
        np.testing.assert_allclose(mixed, exact, rtol=0.02, atol=0.02 * float(np.abs(exact).max()))


def test_float32_precision_is_the_step_without_mixed_precision(digits, monkeypatch):
    model, tx, state, pools = _resnet_setup(digits)
    batch = train.draw_batch(pools, {"labeled": 16}, state.key, state.step)[0]

    def lowered():
        step = jax.jit(lambda state, batch: train.train_step(state, batch, model=model, tx=tx, objective=SUPERVISED))
        return step.lower(state, batch).as_text()

    with_precision = lowered()
    monkeypatch.setattr(train, "in_precision", lambda module, precision: module)
    monkeypatch.setattr(train, "_with_dtypes_of", lambda reference, tree: tree)
    assert with_precision == lowered()


def test_the_model_state_keeps_its_dtypes_whatever_a_layer_writes(digits):
    """A layer that stores a statistic in its compute dtype does not turn the state to bfloat16."""

    class LastMean(nnx.Module):
        def __init__(self):
            self.dtype = None
            self.mean = nnx.BatchStat(jnp.zeros(()))

        def __call__(self, x):
            x = x.astype(self.dtype or x.dtype)
            self.mean[...] = x.mean()
            return x

    class Probe(models.Classifier):
        def __init__(self):
            super().__init__(nnx.Sequential(models.flatten, LastMean()), 64, 10, rngs=nnx.Rngs(0))

    model, params, model_state = train.Graphs.split(Probe())
    tx = optim.make_optimizer("adam", 1e-3)
    state = train.create_train_state(params, model_state, tx, 0)
    batch = train.draw_batch({"labeled": {"x": jnp.asarray(digits.x_train), "y": jnp.asarray(digits.y_train)}},
                             {"labeled": 8}, state.key, state.step)[0]

    new_state, _ = train.train_step(state, batch, model=model, tx=tx, objective=SUPERVISED, precision="bfloat16")

    written = nnx.state(new_state.model_state, nnx.BatchStat)
    assert [leaf.dtype for leaf in jax.tree.leaves(written)] == [jnp.float32]
    assert float(jax.tree.leaves(written)[0]) == pytest.approx(float(batch["labeled"]["x"].mean()), rel=0.01)


def test_unknown_precision_is_named(digits):
    model, tx, state, pools = _setup(digits)
    with pytest.raises(ValueError, match="unknown precision 'float16'; choose one of: float32, bfloat16"):
        train.fit(model, state, tx, SUPERVISED, pools, steps=5, batch_size=8, precision="float16", progress=False)


def test_the_progress_bar_names_its_phase_and_says_compiling_until_a_chunk_returns(digits, monkeypatch, capsys):
    # XLA's compilation of a chunk can take 25 s; a bar at 0% without a word looked stuck.
    monkeypatch.setenv("LAB_PROGRESS", "text")  # a text bar on stderr: every refresh is a line
    model, tx, state, pools = _setup(digits)
    train.fit(model, state, tx, SUPERVISED, pools, steps=12, batch_size=16, eval_every=5, label="pretrain mlm")
    lines = [line.strip() for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()]
    first_step = next(index for index, line in enumerate(lines) if "  0%" not in line)
    assert any(line.startswith("pretrain mlm (compiling):   0%") for line in lines[:first_step])
    # Chunks of 5, 5 and 2 steps: the 2-step chunk compiles too, then the bar ends at 100% under its phase.
    assert any(line.startswith("pretrain mlm (compiling):  83%") for line in lines)
    assert lines[-1].startswith("pretrain mlm: 100%")
    assert not any(line.startswith("train") for line in lines)


def test_empty_compilation_cache_entries_left_by_a_full_disk_are_removed(tmp_path, monkeypatch):
    """A full disk left 0-byte JAX compilation-cache entries, which JAX warned about in every later run."""
    folder = tmp_path / "jax"
    folder.mkdir()
    (folder / "jit_chunk-0a-cache").write_bytes(b"")
    (folder / "jit_chunk-0b-cache").write_bytes(b"compiled")
    (folder / "jit_chunk-0b-atime").write_bytes(b"")  # JAX's own bookkeeping: not an entry
    previous = jax.config.jax_compilation_cache_dir
    try:
        assert train.enable_compilation_cache(folder) == folder
    finally:
        jax.config.update("jax_compilation_cache_dir", previous)
    assert sorted(path.name for path in folder.iterdir()) == ["jit_chunk-0b-atime", "jit_chunk-0b-cache"]


def test_a_compilation_cache_that_cannot_be_made_is_off_saying_so(tmp_path, monkeypatch, capsys):
    """With a read-only LAB_CACHE, JAX warned with a traceback-like message at every compilation."""

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert train.enable_compilation_cache(tmp_path / "jax") is None
    assert capsys.readouterr().err == (
        f"lab: compiled programs are not kept on disk ({tmp_path / 'jax'}: the file system is read-only)\n"
    )
