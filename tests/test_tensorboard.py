"""lab.tensorboard: every run's history as TensorBoard event files beside its outputs, read back here
by a reader of the file format written below (records of length, CRC, an Event protocol buffer)."""

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from lab import cli, experiment, tensorboard

pytest.importorskip("tensorboardX")  # the optional extra; the dev extra installs it
from tensorboardX.proto.event_pb2 import Event  # noqa: E402  (the format's schema, not its writer)

SMALL = [
    "steps=20", "eval_every=10", "labels_per_class=2", "batch_size=16", "learning_rate=0.01",
    "setup=semi_supervised", "method=fixmatch", "method_kwargs={mu: 2}", "seeds=[0,1]", "--no-progress",
]  # fmt: skip


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))


def read_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value, from the one event file in ``folder``."""
    (path,) = folder.glob("*tfevents*")
    content, offset, scalars = path.read_bytes(), 0, {}
    while offset < len(content):
        (length,) = struct.unpack_from("<Q", content, offset)
        event = Event.FromString(content[offset + 12 : offset + 12 + length])  # after the length and its CRC
        offset += 12 + length + 4  # and the data's CRC
        for value in event.summary.value:
            assert event.step not in scalars.setdefault(value.tag, {}), "a tag logged twice at one step"
            scalars[value.tag][event.step] = value.simple_value
    return scalars


def expected(rows) -> dict[str, dict[int, float]]:
    """The rows as TensorBoard keeps them: float32, tagged train/..., test/..., unmeasured values left out."""
    out = {}
    for row in rows:
        for name, value in row.items():
            if name != "step" and value is not None:
                out.setdefault(name.replace("_", "/", 1), {})[row["step"]] = float(np.float32(value))
    return out


def test_lab_run_logs_each_seeds_history_beside_its_output(tmp_path):
    output = tmp_path / "runs" / "result.json"
    assert cli.main(["run", *SMALL, "--output", str(output)]) == 0
    saved = json.loads(output.read_text())
    folders = sorted(p.name for p in (tmp_path / "runs" / "result.tensorboard").iterdir())
    assert folders == ["seed_0", "seed_1"]
    for index, seed in enumerate(saved["seeds"]):
        scalars = read_scalars(tmp_path / "runs" / "result.tensorboard" / f"seed_{seed}")
        curves = saved["curves"]
        history = [{name: curves[name][row] if name == "step" else curves[name][row][index] for name in curves}
                   for row in range(len(curves["step"]))]  # fmt: skip
        history[-1].update({f"test_{name}": values[index] for name, values in saved["metrics"].items()})
        assert scalars == expected(history)
        assert {"train/loss", "train/mask_rate", "train/pseudo_label_accuracy", "test/accuracy", "test/roc_auc"} <= set(
            scalars
        )
        assert scalars["test/accuracy"][20] == pytest.approx(saved["metrics"]["accuracy"][index])
    # Written again, the run's curves are replaced, not doubled (read_scalars refuses a step logged twice).
    assert cli.main(["run", *SMALL, "--output", str(output)]) == 0
    assert [p.name for p in (tmp_path / "runs" / "result.tensorboard" / "seed_0").iterdir()] == [tensorboard.EVENT_FILE]
    read_scalars(tmp_path / "runs" / "result.tensorboard" / "seed_0")


def test_lab_train_logs_its_history_in_the_workdir(tmp_path):
    config = experiment.TrainConfig(steps=20, eval_every=10, batch_size=16)
    result = experiment.train_and_evaluate(config, tmp_path / "w", checkpoint_every=10, progress=False)
    history = [dict(row) for row in result["history"]]
    history[-1].update({f"test_{name}": value for name, value in result["test"].items()})
    assert read_scalars(tmp_path / "w") == expected(history)
    assert sorted(read_scalars(tmp_path / "w")["train/loss"]) == [10, 20]
    # Resumed when finished, nothing trains: the log is left as it was.
    before = (tmp_path / "w" / tensorboard.EVENT_FILE).read_bytes()
    experiment.train_and_evaluate(config, tmp_path / "w", checkpoint_every=10, progress=False)
    assert (tmp_path / "w" / tensorboard.EVENT_FILE).read_bytes() == before


def test_without_tensorboardx_the_run_says_so_in_one_line_and_keeps_its_results(tmp_path, monkeypatch, capsys):
    for module in ("tensorboardX", "tensorboardX.proto.event_pb2", "tensorboardX.proto.summary_pb2",
                   "tensorboardX.record_writer"):  # fmt: skip
        monkeypatch.setitem(sys.modules, module, None)  # what a missing package looks like to import
    output = tmp_path / "result.json"
    assert cli.main(["run", *SMALL[:-2], "seeds=[0]", "--no-progress", "--output", str(output)]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"lab: no TensorBoard logs written to {tmp_path / 'result.tensorboard' / 'seed_0'}: ")
    assert line.endswith("pip install 'lab[tensorboard]' (or tensorboardX>=2.6)")
    assert json.loads(output.read_text())["seeds"] == [0] and not (tmp_path / "result.tensorboard").exists()


def test_tags_group_train_and_test_columns():
    assert [tensorboard.tag(n) for n in ("train_loss", "test_accuracy", "train_unlabeled_loss", "step", "lr")] == [
        "train/loss", "test/accuracy", "train/unlabeled_loss", "step", "lr",
    ]  # fmt: skip
