"""Bad input to the ``lab`` command line: each case ends in exit status 2 and a message that
names the bad value, never a Python traceback.

The cases are a table, grouped by command. Each is ``(arguments, expected)``: the
arguments after ``lab`` (``{tmp}`` is replaced by a fresh temporary folder, prepared by
``SETUP`` when the case names a setup) and a piece of text the message must contain.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab import cli

RUN_CASES = [
    (["run", "labels_per_class=[1"], "labels_per_class"),
    (["run", "pretrain_kwargs={steps: 100"], "pretrain_kwargs"),
    (["run", "--config", "{tmp}/list.yaml"], "expected a mapping"),
    (["run", "--config", "{tmp}/broken.yaml"], "broken.yaml is not valid YAML"),
    (["run", "--config", "{tmp}"], "is a folder"),
    (["run", "model_kwargs={nope: 1}"], 
        "unknown model_kwargs ['nope'] for model 'mlp'; allowed: ['dropout', 'hidden']"),
    (["run", "learning_rate=.inf"], "learning_rate must be a finite number > 0, got inf"),
    (["run", "learning_rate=.nan"], "learning_rate must be a finite number > 0, got nan"),
    (["run", "learning_rate=fast"], "learning_rate must be of type float, got 'fast'"),
    (["run", "lr=0.1"], "unknown experiment parameter(s) ['lr']"),
    (["run", "data_dir=/x"], "data_dir='/x' is read only by fashion_mnist, mnist, cifar10, cifar100, svhn, "
     "stl10, fortunes_topics, fortunes_language; digits does not read files"),
    (["run", "seeds=[-1]"], "seeds must be integers in 0..2147483647, got [-1]"),
    (["run", "steps=0"], "steps must be >= 1, got 0"),
    (["run", "steps=ten"], "steps must be of type int, got 'ten'"),
    (["run", "dataset=cifar"], "unknown dataset 'cifar'"),
    (["run", "batch_size=100000"], "batch_size=100000 is larger than the 1347 training examples of digits"),
    (["run", "--output", "{tmp}"], "--output {tmp} is a folder; give a file name"),
    (["run", "--output", "{tmp}/list.yaml/result.json"], "needs {tmp}/list.yaml to be a folder, but it is a file"),
    (["run", "optimizer=sgd", "learning_rate=1e6", "steps=50", "--no-progress"], "training stopped. Nothing was saved"),
]

ACTIVE_CASES = [
    (["active", "strategy=oracle"], "unknown strategy 'oracle'; choose one of: random, stratified_random"),
    (["active", "budgets=[]"], "budgets must name at least one total number of labels (zero rounds)"),
    (["active", "budgets=[20,10]"], "budgets must be increasing totals of labels, got [20, 10]"),
    (["active", "budgets=[10,5000]", "steps=1"], "budgets must stay below the pool's 1347 examples"),
    (["active", "cold_start=typiclust", "dataset=fortunes_topics", "model=bag"], "token ids are no embedding"),
    (["active", "rounds=3"], "unknown active-learning parameter(s) ['rounds']"),
    (["active", "--output", "{tmp}"], "--output {tmp} is a folder; give a file name"),
    (["active", "--report", "{tmp}/list.yaml"], "--report {tmp}/list.yaml is not the --output of a `lab active` run"),
]

TRAIN_CASES: list = [
    # Refused by the argument parser, in one line like the others.
    (["train", "--warmup-steps", "-1"], "argument --warmup-steps: must be an integer >= 0, got -1"),
    (["train", "--steps", "0"], "argument --steps: must be a positive integer, got 0"),
    (["train", "--steps", "ten"], "argument --steps: must be of type int, got 'ten'"),
    (["train", "--learning-rate", "fast"], "argument --learning-rate: must be of type float, got 'fast'"),
    (["train", "--learning-rate", "inf"], "argument --learning-rate: must be a finite number > 0, got inf"),
    (["train", "--seed", "-1"], "argument --seed: must be an integer in 0..2147483647, got -1"),
    (["train", "--ema-decay", "1"], "argument --ema-decay: must be a number in [0, 1), got 1.0"),
    (["train", "--ema-decay", "nan"], "argument --ema-decay: must be a number in [0, 1), got nan"),
    (["train", "--weight-decay-mode", "cubic"], "argument --weight-decay-mode: invalid choice: 'cubic'"),
    (["train", "--dataset", "cifar"], "argument --dataset: unknown dataset 'cifar'; choose one of: digits,"),
    (["train", "--dataset", "csv:{tmp}/none.csv"], "argument --dataset: {tmp}/none.csv: no such file or folder"),
    # Refused by the command.
    (["train", "--batch-size", "100000"], "batch_size=100000 is larger than the 1347 training examples of digits"),
    (["train", "--workdir", "{tmp}/list.yaml", "--steps", "1"], "workdir {tmp}/list.yaml is not a folder"),
    (["train", "--workdir", "{tmp}/list.yaml/w", "--steps", "1"], "workdir {tmp}/list.yaml/w is not a folder"),
    (["train", "--optimizer", "sgd", "--learning-rate", "1e6", "--steps", "50", "--no-progress"], "non-finite loss"),
]

DATA_CASES: list = [
    (["data", "info", "digits", "--data-dir", "/x"], "data_dir='/x' is read only by fashion_mnist, mnist, cifar10, "
     "cifar100, svhn, stl10, fortunes_topics, fortunes_language; digits"),
    (["data", "download", "mnist1d", "--data-dir", "/x"], "data_dir='/x' is read only by fashion_mnist, mnist, "
     "cifar10, cifar100, svhn, stl10, fortunes_topics, fortunes_language"),
    (["data", "info", "mnist", "--data-dir", "{tmp}/nothing"], "MNIST not found"),
]

SWEEP_CASES = [
    (["sweep", "{tmp}/tiny.ipynb", "--name", "s", "--grid", "{tmp}/broken.yaml"], "broken.yaml is not valid YAML"),
    (["sweep", "{tmp}/tiny.ipynb", "--name", "s", "--grid", "{tmp}"], "is a folder; expected a YAML file"),
    (
        ["sweep", "{tmp}/tiny.ipynb", "-p", "x", "1", "--name", "s", "--executor", "dask",
         "--scheduler", "tcp://127.0.0.1:1"],
        "cannot reach the Dask scheduler at tcp://127.0.0.1:1",
    ),
    # A runs folder that cannot be written (root ignores permission bits: a file stands where the folder should be).
    (
        ["sweep", "{tmp}/tiny.ipynb", "-p", "x", "1", "--name", "s", "--runs-dir", "{tmp}/list.yaml/runs"],
        "list.yaml to be a folder, but it is a file",
    ),
    (
        ["sweep", "{tmp}/tiny.ipynb", "-p", "x", "1", "--name", "s", "--runs-dir", "{tmp}"],
        "results.db is an empty file, not a lab results store",
    ),
]  # fmt: skip

RUNS_CASES = [
    (["runs", "--store", "{tmp}", "list"], "is a folder; give the path of a results.db file"),
    (["runs", "--store", "{tmp}/results.db", "list"], "results.db is an empty file, not a lab results store"),
    (["runs", "--store", "{tmp}/damaged.db", "show", "s"], "damaged.db is damaged"),
    (["runs", "--store", "{tmp}/results.db", "export", "--output", "{tmp}"], "is a folder; give a file name"),
]  # fmt: skip

REPORT_CASES = [
    (["report", "--out", "{tmp}/list.yaml"], "list.yaml is a file; give a folder"),
    (["report", "--out", "{tmp}/list.yaml/figures"], "list.yaml to be a folder, but it is a file"),
    (["report", "--store", "{tmp}/results.db"], "results.db is an empty file"),
    (["report", "--store", "{tmp}/damaged.db"], "recover what it holds with `sqlite3"),
]

# Files that cases read, written into the case's folder before it runs.
FILES = {
    "list.yaml": "- setup\n- supervised\n",
    "broken.yaml": "setup: [supervised\n",
    "tiny.ipynb": (Path(__file__).parent / "data" / "tiny.ipynb").read_text(),
    "results.db": "",  # a results store emptied by a full disk or a bad copy
    "damaged.db": "SQLite format 3\x00" + "not pages" * 100,
}

CASES = RUN_CASES + ACTIVE_CASES + TRAIN_CASES + DATA_CASES + SWEEP_CASES + RUNS_CASES + REPORT_CASES


def run_cli(arguments: list[str], capsys) -> tuple[int, str]:
    status = cli.main(arguments)
    return status, capsys.readouterr().err


@pytest.mark.parametrize(("arguments", "expected"), CASES, ids=[" ".join(case[0]) for case in CASES])
def test_bad_input_is_one_clear_error(arguments, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    expected = expected.replace("{tmp}", str(tmp_path))
    status, err = run_cli(arguments, capsys)
    assert status == 2, err
    assert "Traceback" not in err and err.startswith(f"lab {arguments[0]}: error: "), err
    assert err.count("\n") == 1 or "\n  " in err, err  # one line, or one with an indented list of places
    assert expected in err, err


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError):
        cli.main(["--debug", "run", "labels_per_class=[1"])


def test_an_unforeseen_error_names_its_type_and_the_debug_flag(monkeypatch, capsys):
    def broken(args):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli, "run_data", broken)
    status, err = run_cli(["data", "info", "digits"], capsys)
    assert status == 2 and err == "lab data: error: TypeError: unsupported operand (--debug shows the traceback)\n"


# --------------------------------------------------------------------------------------
# `lab run`'s outputs: never written over a store, and a finished result is never lost
# --------------------------------------------------------------------------------------


def _finished_run(fields, progress=True):
    from lab import experiment

    config = experiment.ExperimentConfig.from_dict(fields).to_dict()
    return experiment.Result(
        config, [0], {"accuracy": [0.75]}, {"step": [10], "test_accuracy": [[0.75]]}, {"train": 1.0},
        {"versions": {"jax": "0"}, "git_commit": None},
    )  # fmt: skip


def _never_run(fields, progress=True):
    raise AssertionError("trained although the command should have stopped before")


@pytest.fixture
def store_path(tmp_path, monkeypatch):
    """A results store holding one run, in the working folder."""
    from lab import experiment

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    monkeypatch.setattr(experiment, "run", _finished_run)
    assert cli.main(["run", "--store", "results.db", "--no-progress"]) == 0
    return tmp_path / "results.db"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--output", "results.db"], "--output results.db is a lab results store (1 run), not a JSON file; "
         "lab leaves it as it is: give another file name, or pass --force to replace it"),
        (["--output", "notes.txt"], "--output notes.txt is a text file, not a JSON file"),
        (["--store", "results.db", "--output", "results.db", "--force"],
         "--output results.db is the results store this command writes (--store); give another file name"),
        (["--store", "./results.db", "--output", "results.db"], "is the results store this command writes"),
    ],
)  # fmt: skip
def test_run_never_writes_its_output_over_a_store_or_a_file_of_another_format(
    store_path, arguments, expected, monkeypatch, capsys
):
    from lab import experiment, store

    Path("notes.txt").write_text("my notes\n")
    kept = {path: path.read_bytes() for path in (store_path, Path("notes.txt"))}
    capsys.readouterr()
    monkeypatch.setattr(experiment, "run", _never_run)
    status, err = run_cli(["run", "--no-progress", *arguments], capsys)
    assert status == 2 and err.startswith("lab run: error: ") and err.count("\n") == 1 and expected in err, err
    assert all(path.read_bytes() == content for path, content in kept.items())
    assert len(store.ResultsStore(store_path).rows()) == 1


def test_run_force_replaces_a_file_of_another_format(store_path, monkeypatch, capsys):
    Path("old.db").write_bytes(store_path.read_bytes())
    assert cli.main(["run", "--no-progress", "--output", "old.db", "--force"]) == 0
    assert json.loads(Path("old.db").read_text())["record"]["metrics"] == {"accuracy": [0.75]}


def test_a_finished_run_whose_writes_fail_still_prints_its_result_and_names_each_failed_write(
    store_path, monkeypatch, capsys
):
    from lab import store

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def store_full(self, *rows):
        raise store.StoreError(f"cannot use the results store {self.path} (database or disk is full)")

    monkeypatch.setattr(Path, "write_bytes", full_disk)  # the disk fills during the run
    monkeypatch.setattr(store.ResultsStore, "save", store_full)
    capsys.readouterr()
    status = cli.main(["run", "--no-progress", "--output", "result.json", "--store", "results.db"])
    out, err = capsys.readouterr()
    assert status == 2
    assert json.loads(out)["metrics"] == {"accuracy": [0.75]}  # the result, on stdout all the same
    assert err.count("\n") == 1 and err.startswith("lab run: error: the run finished and its result is printed"), err
    assert "--output: cannot write result.json: No space left on device" in err
    assert f"--store: cannot use the results store {store_path} (database or disk is full)" in err
    assert not Path("result.json").exists() and [path.name for path in Path().iterdir()] == ["results.db"]


@pytest.mark.parametrize("option", ["--output", "--store"])
def test_run_on_a_full_disk_is_refused_before_training(store_path, option, monkeypatch, capsys):
    from lab import experiment, files

    monkeypatch.setattr(experiment, "run", _never_run)
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 4096))
    capsys.readouterr()
    status, err = run_cli(["run", "--no-progress", option, "results.db"], capsys)
    assert status == 2
    assert f"{option} results.db cannot be written: the disk of " in err and "is full (4 KiB free)" in err, err


def _finished_active_run(config, progress=True):
    from lab import active

    loop = {"learner": {"setup": "supervised"}, "strategy": "margin", "cold_start": "random"}
    return active.ActiveResult(loop, [0], [10, 20], [[[1], [2]]], {"accuracy": [[0.5], [0.75]]}, {"train": 1.0})


def test_lab_active_guards_its_output_as_lab_run_does(store_path, monkeypatch, capsys):
    """`lab active --output` never replaces a results store, and a result it cannot save is printed all the same."""
    from lab import active

    kept = store_path.read_bytes()
    monkeypatch.setattr(active, "run", _never_run)
    status, err = run_cli(["active", "--no-progress", "budgets=[10,20]", "--output", "results.db"], capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert "--output results.db is a lab results store (1 run), not a JSON file" in err and "--force" in err
    assert store_path.read_bytes() == kept

    def full_disk(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(active, "run", _finished_active_run)
    monkeypatch.setattr(Path, "write_bytes", full_disk)  # the disk fills during the run
    status = cli.main(["active", "--no-progress", "budgets=[10,20]", "--output", "active.json"])
    out, err = capsys.readouterr()
    assert status == 2 and json.loads(out)["summary"]["accuracy"][1]["mean"] == 0.75  # printed all the same
    assert err.startswith("lab active: error: the run finished and its result is printed") and err.count("\n") == 1
    assert "--output: cannot write active.json: No space left on device" in err, err


def test_lab_active_report_writes_both_files_or_neither(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _finished_active_run(None).save("a.json")

    def fails_at_the_figure(figure, path, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", fails_at_the_figure)
    status, err = run_cli(["active", "--report", "a.json", "--out", "report"], capsys)
    assert status == 2 and "label_curves.png" in err and err.count("\n") == 1, err
    assert not (tmp_path / "report").exists() or not any((tmp_path / "report").iterdir())


def test_run_takes_fields_before_and_after_its_options(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status = cli.main(["run", "model=mlp", "--no-progress", "setup=supervised", "--show-config", "steps=7"])
    config = json.loads(capsys.readouterr().out)
    assert status == 0 and (config["model"], config["setup"], config["steps"]) == ("mlp", "supervised", 7)
    status, err = run_cli(["run", "model=mlp", "--no-progress", "--bogus", "setup=supervised"], capsys)
    assert status == 2 and "unrecognized arguments: --bogus" in err, err


def test_ctrl_c_during_a_checkpoint_save_prints_only_the_interrupted_line(tmp_path):
    """The issue: Ctrl-C right after a checkpoint folder appeared printed an orbax ERROR and a traceback
    before the exit-130 line (4 of 4 times): orbax's threads fail as the interrupted process exits.
    Here a save is interrupted, and a thread logs that as orbax's does, once the main thread is done."""
    script = """
import sys, threading, time
from absl import logging as absl_logging
from lab import cli, train

def interrupted_save(self, state):
    def orbax_thread():
        time.sleep(0.5)
        absl_logging.error("_SignalingThread.run() raised an exception: cannot schedule new futures after "
                           "interpreter shutdown\\nTraceback (most recent call last): ...")
    threading.Thread(target=orbax_thread).start()
    raise KeyboardInterrupt

train.Checkpointer.save = interrupted_save
sys.exit(cli.main(sys.argv[1:]))
"""
    repository = Path(__file__).resolve().parents[1]
    environment = {**os.environ, "PYTHONPATH": str(repository)}
    environment.pop(cli.DEBUG_VARIABLE, None)
    arguments = ["train", "--no-progress", "--steps", "4", "--checkpoint-every", "2", "--workdir", str(tmp_path / "w")]
    done = subprocess.run([sys.executable, "-c", script, *arguments], env=environment, capture_output=True, text=True)
    assert done.returncode == 130
    assert done.stderr == "lab train: interrupted; finished runs are saved, run the same command again to resume\n"
