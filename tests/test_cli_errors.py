"""Bad input to the ``lab`` command line: each case ends in exit status 2 and a message that
names the bad value, never a Python traceback.

The cases are a table, grouped by command. Each is ``(arguments, expected)``: the
arguments after ``lab`` (``{tmp}`` is replaced by a fresh temporary folder, prepared by
``SETUP`` when the case names a setup) and a piece of text the message must contain.
"""

from __future__ import annotations

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
    (["train", "--dataset", "cifar"], "argument --dataset: invalid choice: 'cifar'"),
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
