"""Results store: the SQLite store under parallel writers, schema versions, the pandas view,
exports (CSV, Parquet, MLflow; lab.export) and `lab runs`."""

import argparse
import io
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lab import cli, export, store
from lab.store import ResultsStore, RunRow
from test_record import make_active_payload, make_payload


def done_row(sweep="s", point_id="p1", **payload_options):
    payload = make_payload(**payload_options)
    parameters = {
        "method": payload["method"],
        "labels_per_class": payload["labels_per_class"],
        "seeds": payload["seeds"],
    }
    return RunRow(
        sweep,
        point_id,
        "nb.ipynb",
        parameters,
        "done",
        payload=payload,
        duration_s=1.5,
        versions={"python": "3.11.7", "jax": "0.7.1"},
    )


# --------------------------------------------------------------------------------------
# The SQLite store
# --------------------------------------------------------------------------------------


def test_rows_round_trip_and_upsert_replaces(tmp_path):
    results = ResultsStore(tmp_path / "results.db")
    results.save(
        RunRow("s", "p1", "nb.ipynb", {"method": "fixmatch"}, "running", started_at="2025-01-01T00:00:00+00:00")
    )
    results.save(done_row())
    (row,) = results.rows("s")
    assert row.status == "done" and row.started_at is None
    assert row.payload == make_payload()
    assert row.parameters == {"method": "fixmatch", "labels_per_class": 4, "seeds": [0, 1]}
    with pytest.raises(ValueError, match="run status 'finished' is not one of pending, running, done, failed"):
        RunRow("s", "p1", "nb.ipynb", {}, "finished")


def test_a_store_keeps_its_file_when_the_working_directory_changes(tmp_path, monkeypatch):
    # papermill changes the process's directory around notebook reads and writes, from
    # worker threads too: a relative store path must not follow it.
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    results = ResultsStore("runs/results.db")
    monkeypatch.chdir(tmp_path / "second")
    results.save(done_row())
    assert [row.point_id for row in ResultsStore(tmp_path / "first" / "runs" / "results.db").rows()] == ["p1"]
    assert not (tmp_path / "second" / "runs").exists()


def _write_rows(path, writer, count, barrier):
    barrier.wait()  # every writer opens the (new) database and writes at the same moment
    results = ResultsStore(path)
    for index in range(count):
        results.save(
            done_row(sweep="parallel", point_id=f"w{writer}-{index}", accuracy=(writer / 10, index / 100), seeds=(0, 1))
        )


def test_parallel_writers_lose_no_rows(tmp_path):
    path, writers, rows_each = tmp_path / "results.db", 8, 10
    # fork: the writers need nothing but lab.store, already imported here; spawn would
    # re-import this test module (papermill, pandas) in each of them, for many seconds.
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(writers)
    processes = [
        context.Process(target=_write_rows, args=(path, writer, rows_each, barrier)) for writer in range(writers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * writers
    rows = ResultsStore(path).rows("parallel")
    assert len(rows) == writers * rows_each
    assert {row.point_id: row.payload["metrics"]["accuracy"] for row in rows} == {
        f"w{writer}-{index}": [writer / 10, index / 100] for writer in range(writers) for index in range(rows_each)
    }
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_store_from_a_newer_lab_is_refused(tmp_path):
    path = tmp_path / "results.db"
    ResultsStore(path).save(done_row())
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    expected = rf"schema version 99, but this lab .* reads version {store.SCHEMA_VERSION}"
    with pytest.raises(store.StoreVersionError, match=expected):
        ResultsStore(path)
    with pytest.raises(store.StoreVersionError):
        store.load(path=path)


def test_reading_a_missing_store_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no results store at .*nowhere\.db"):
        store.load(path=tmp_path / "nowhere.db")
    assert not (tmp_path / "nowhere.db").exists()


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    sweep TEXT NOT NULL, point_id TEXT NOT NULL, notebook TEXT NOT NULL, parameters TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    payload TEXT, error TEXT, traceback TEXT, started_at TEXT, ended_at TEXT, duration_s REAL, versions TEXT,
    git_commit TEXT, output_notebook TEXT, log_path TEXT, updated_at TEXT NOT NULL, PRIMARY KEY (sweep, point_id)
);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO runs (sweep, point_id, notebook, parameters, status, updated_at)
    VALUES ('old', 'p1', 'nb.ipynb', '{"x": 1}', 'running', '2025-01-01T00:00:00+00:00');
"""


def test_a_store_of_schema_version_1_is_migrated_and_keeps_its_rows(tmp_path):
    path = tmp_path / "results.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(V1_SCHEMA)
    (row,) = ResultsStore(path).rows()
    assert (row.point_id, row.parameters, row.owner) == ("p1", {"x": 1}, None)
    assert row.current_status() == "interrupted"  # running, but no process is known to run it
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT value FROM meta").fetchone() == (str(store.SCHEMA_VERSION),)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is an empty file, not a lab results store"),
        (b"a CSV export, say\n", "is a text file, not a lab results store"),
        (b'{"config": {}}', "is a JSON file, not a lab results store"),
        ("foreign-sqlite", "is an SQLite database but not a lab results store"),
    ],
)
def test_a_file_that_is_no_store_is_refused_and_kept(tmp_path, content, problem):
    path = tmp_path / "results.db"
    if content == "foreign-sqlite":
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE other (x)")
        content = path.read_bytes()
    else:
        path.write_bytes(content)
    for open_store in (lambda: ResultsStore(path), lambda: store.load(path=path)):
        with pytest.raises(store.StoreError, match=f"{path} {problem}"):
            open_store()
    assert path.read_bytes() == content


def test_a_damaged_store_names_the_file_and_how_to_recover(tmp_path):
    path = tmp_path / "results.db"
    ResultsStore(path).save(*(done_row(point_id=f"p{index}", note="x" * 2000) for index in range(200)))
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 3)
    with pytest.raises(store.StoreError, match=rf"{path} is damaged \(.*malformed.*\); recover .*\.recover"):
        store.load(path=path)


def test_a_store_replaced_while_in_use_says_what_the_file_is_not_how_to_recover_sqlite(tmp_path):
    path = tmp_path / "results.db"
    results = ResultsStore(path)
    path.write_text('{"config": {}}')  # an output written over it after it was opened
    with pytest.raises(store.StoreError, match=f"{path} is a JSON file, not a lab results store") as error:
        results.rows()
    assert ".recover" not in str(error.value)


_sqlite_connect = sqlite3.connect  # the real one, while tests replace it


class _CloseFoldsNothing:
    """A connection to a new store's temporary file whose close() leaves the file as it was before closing,
    as on a full disk: closing folds the write-ahead log into the file, and SQLite ignores that this failed."""

    def __init__(self, database, *args, **kwargs):
        self._database = Path(database)
        self._connection = _sqlite_connect(database, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._connection, name)

    def close(self):
        before = self._database.read_bytes()
        self._connection.close()
        self._database.write_bytes(before)


class _FullDisk(_CloseFoldsNothing):
    """As above, and an explicit checkpoint fails as SQLite's does when the disk is full."""

    def execute(self, statement, *parameters):
        if "wal_checkpoint" in statement:
            raise sqlite3.OperationalError("database or disk is full")
        return self._connection.execute(statement, *parameters)


def _connect_temporaries_with(monkeypatch, connection_class):
    """Connections to hidden files (a new store's temporary file) are ``connection_class``, others real ones."""
    monkeypatch.setattr(
        store.sqlite3,
        "connect",
        lambda database, *args, **kwargs: (
            connection_class if Path(database).name.startswith(".") else _sqlite_connect
        )(database, *args, **kwargs),
    )


def test_a_new_store_is_complete_even_when_closing_does_not_fold_its_log(tmp_path, monkeypatch):
    path = tmp_path / "new.db"
    _connect_temporaries_with(monkeypatch, _CloseFoldsNothing)
    assert ResultsStore(path).rows() == []
    assert list(tmp_path.iterdir()) == [path]


def test_a_store_that_cannot_be_completed_is_not_published_and_leaves_no_files(tmp_path, monkeypatch):
    path = tmp_path / "new.db"
    _connect_temporaries_with(monkeypatch, _FullDisk)
    with pytest.raises(store.StoreError, match=f"cannot create the results store {path} .*disk is full"):
        ResultsStore(path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    assert ResultsStore(path).rows() == []  # once there is space, the same command creates it


def test_a_folder_is_no_store(tmp_path):
    with pytest.raises(store.StoreError, match=f"results store {tmp_path} is a folder"):
        ResultsStore(tmp_path, create=False)


def _dead_owner():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return store.Owner(store.Owner.current().host, process.pid, "0")


def _owned(row, owner, status="running"):
    return RunRow(
        row.sweep, row.point_id, row.notebook, row.parameters, status,
        owner_host=owner.host, owner_pid=owner.pid, owner_start=owner.start,
    )  # fmt: skip


def test_claim_takes_only_free_points_and_release_only_its_own(tmp_path):
    results = ResultsStore(tmp_path / "results.db")
    # This test's parent process stands for another sweep, alive all along.
    claimer, dead, alive_elsewhere = store.Owner.current(), _dead_owner(), store.Owner.of(os.getppid())
    pending = RunRow("s", "free", "nb.ipynb", {}, "pending")
    results.add_pending(pending, RunRow("s", "failed", "nb.ipynb", {}, "pending"))
    results.save(
        _owned(RunRow("s", "orphan", "nb.ipynb", {}, "running"), dead),
        _owned(RunRow("s", "busy", "nb.ipynb", {}, "running"), alive_elsewhere),
        RunRow("s", "failed", "nb.ipynb", {}, "failed"),
        done_row(point_id="done"),
    )
    results.add_pending(RunRow("s", "done", "nb.ipynb", {}, "pending"))  # never replaces a stored row
    statuses = {row.point_id: row.current_status() for row in results.rows("s")}
    assert statuses == {
        "free": "pending", "failed": "failed", "orphan": "interrupted", "busy": "running", "done": "done"
    }  # fmt: skip

    def claim(point, retry_failed=False):
        row = _owned(RunRow("s", point, "nb.ipynb", {}, "running"), claimer)
        stored = results.claim(row, retry_failed=retry_failed)
        return None if stored is None else stored.status

    assert {point: claim(point) for point in statuses} == {
        "free": None, "orphan": None, "failed": "failed", "busy": "running", "done": "done"
    }  # fmt: skip
    assert claim("failed", retry_failed=True) is None
    assert claim("free", retry_failed=True) == "running"  # its own: taken already

    # Interrupted: the claimer gives back what it runs, and nothing else, whatever it is asked to release.
    results.release(results.rows("s"), claimer)
    after = {row.point_id: (row.status, row.owner) for row in results.rows("s")}
    assert after == {
        "free": ("pending", None), "orphan": ("pending", None), "failed": ("pending", None),
        "busy": ("running", alive_elsewhere), "done": ("done", None),
    }  # fmt: skip


def _claim_all(path, points, barrier, queue):
    results = ResultsStore(path)
    owner = store.Owner.current()
    barrier.wait()
    queue.put(
        [
            point
            for point in points
            if results.claim(_owned(RunRow("s", point, "nb.ipynb", {}, "running"), owner), retry_failed=False) is None
        ]
    )
    barrier.wait()  # stay alive until every claimer is done: the rows of a process that is gone are free again


def test_parallel_claims_give_each_point_to_one_process(tmp_path):
    path, claimers, points = tmp_path / "results.db", 6, [f"p{index}" for index in range(30)]
    ResultsStore(path).add_pending(*(RunRow("s", point, "nb.ipynb", {}, "pending") for point in points))
    context = multiprocessing.get_context("fork")
    barrier, queue = context.Barrier(claimers), context.Queue()
    processes = [context.Process(target=_claim_all, args=(path, points, barrier, queue)) for _ in range(claimers)]
    for process in processes:
        process.start()
    claimed = [point for _ in processes for point in queue.get(timeout=120)]
    for process in processes:
        process.join(timeout=120)
    assert sorted(claimed) == sorted(points)


# --------------------------------------------------------------------------------------
# pandas view and exports
# --------------------------------------------------------------------------------------


@pytest.fixture
def filled_store(tmp_path):
    path = tmp_path / "results.db"
    results = ResultsStore(path)
    results.save(
        done_row(
            point_id="a1",
            curves={"step": [0, 10], "accuracy": [[0.1, 0.2], [0.8, 0.9]]},
            wall_time_s={"compile": 2.0, "train": 30.0},
        ),
        done_row(point_id="b2", method="pseudo_label", labels=1, accuracy=(0.5, 0.7)),
        RunRow(
            "s",
            "c3",
            "nb.ipynb",
            {"method": "mixmatch", "labels_per_class": 10, "status": "x"},
            "failed",
            error="RuntimeError: boom",
            traceback="Traceback ...",
        ),
        done_row(sweep="other", point_id="d4"),
    )
    return path


def test_load_expands_parameters_and_metrics(filled_store):
    frame = store.load("s", path=filled_store)
    assert list(frame["point_id"]) == ["a1", "b2", "c3"]
    assert list(frame.columns[:8]) == [
        "sweep",
        "point_id",
        "status",
        "dataset",
        "setup",
        "method",
        "labels_per_class",
        "seeds",
    ]
    a1, b2, c3 = (frame.iloc[index] for index in range(3))
    assert a1["accuracy"] == [0.8, 0.9] and b2["accuracy"] == [0.5, 0.7]
    assert a1["train_time_s"] == 30.0 and a1["curves"]["step"] == [0, 10]
    assert a1["jax_version"] == "0.7.1"
    # The failed point keeps its parameters; its metrics are missing.
    assert c3["method"] == "mixmatch" and c3["error"] == "RuntimeError: boom" and pd.isna(c3["accuracy"])
    # A parameter named like a store column does not overwrite it.
    assert c3["status"] == "failed" and c3["param.status"] == "x"
    assert str(frame["labels_per_class"].dtype) == "Int64"
    assert len(store.load(path=filled_store)) == 4


def test_export_csv_and_parquet(filled_store, tmp_path):
    csv_path = export.export(tmp_path / "out" / "runs.csv", "csv", "s", path=filled_store)
    from_csv = pd.read_csv(csv_path)
    assert list(from_csv["point_id"]) == ["a1", "b2", "c3"]
    assert json.loads(from_csv.loc[0, "accuracy"]) == [0.8, 0.9]
    assert json.loads(from_csv.loc[0, "curves"])["accuracy"] == [[0.1, 0.2], [0.8, 0.9]]

    parquet_path = export.export(tmp_path / "runs.parquet", "parquet", path=filled_store)
    from_parquet = pd.read_parquet(parquet_path)
    assert len(from_parquet) == 4
    assert list(from_parquet.loc[0, "accuracy"]) == [0.8, 0.9]
    assert json.loads(from_parquet.loc[0, "parameters"])["method"] == "fixmatch"

    with pytest.raises(ValueError, match="export format 'xlsx' is not one of csv, parquet"):
        export.export(tmp_path / "runs.xlsx", "xlsx", path=filled_store)


def test_parquet_export_without_pyarrow_says_what_to_install(filled_store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"pip install 'lab\[parquet\]'"):
        export.export(tmp_path / "runs.parquet", "parquet", path=filled_store)
    assert not (tmp_path / "runs.parquet").exists()


# --------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------


def test_mlflow_export_without_mlflow_says_what_to_install(filled_store, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(ImportError, match=r"pip install 'lab\[mlflow\]'"):
        export.export_mlflow("s", path=filled_store)


def test_mlflow_export_logs_parameters_metrics_and_notebook(filled_store, tmp_path, monkeypatch):
    executed = tmp_path / "a1.ipynb"
    executed.write_text("{}")
    results = ResultsStore(filled_store)
    (a1,) = [row for row in results.rows("s") if row.point_id == "a1"]
    results.save(RunRow(**{**a1.__dict__, "output_notebook": str(executed)}))

    calls = []
    fake = types.ModuleType("mlflow")
    fake.set_tracking_uri = lambda uri: calls.append(("tracking_uri", uri))
    fake.set_experiment = lambda name: calls.append(("experiment", name))
    fake.log_params = lambda params: calls.append(("params", params))
    fake.log_metrics = lambda metrics: calls.append(("metrics", metrics))
    fake.log_metric = lambda key, value, step: calls.append(("metric", key, value, step))
    fake.log_artifact = lambda path: calls.append(("artifact", path))

    class FakeRun:
        def __init__(self, run_name, tags):
            calls.append(("run", run_name, tags))
            self.info = types.SimpleNamespace(run_id=f"mlflow-{run_name}")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake.start_run = FakeRun
    monkeypatch.setitem(sys.modules, "mlflow", fake)

    assert export.export_mlflow("s", "sqlite:///mlflow.db", path=filled_store) == ["mlflow-a1", "mlflow-b2"]
    assert calls[:2] == [("tracking_uri", "sqlite:///mlflow.db"), ("experiment", "s")]
    run, params, metrics = calls[2], calls[3], calls[4]
    assert run[1] == "a1" and run[2]["lab.sweep"] == "s" and run[2]["lab.version.jax"] == "0.7.1"
    assert params == ("params", {"method": "fixmatch", "labels_per_class": 4, "seeds": "[0, 1]"})
    assert metrics[1]["accuracy"] == pytest.approx(0.85)
    assert metrics[1]["accuracy_std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert metrics[1]["accuracy_seed_1"] == 0.9 and metrics[1]["train_time_s"] == 30.0
    assert ("metric", "curve_accuracy", pytest.approx(0.85), 10) in calls
    assert not [call for call in calls if call[1] == "label_curve_accuracy"]  # no active-learning run here
    assert ("artifact", str(executed)) in calls
    # Only done points are exported: the failed c3 is not.
    assert [call[1] for call in calls if call[0] == "run"] == ["a1", "b2"]

    calls.clear()
    active_payload = make_active_payload()
    results.save(RunRow("al", "m", "07.ipynb", {"strategy": "margin"}, "done", payload=active_payload))
    export.export_mlflow("al", path=filled_store)
    label_curve = [call[2:] for call in calls if call[0] == "metric" and call[1] == "label_curve_accuracy"]
    assert label_curve == [(pytest.approx(0.55), 2), (pytest.approx(0.75), 3)]  # seed means at budgets 2 and 3


# --------------------------------------------------------------------------------------
# `lab runs`
# --------------------------------------------------------------------------------------


def _run_cli(*argv):
    parser = argparse.ArgumentParser(prog="lab")
    cli.add_runs_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_list_show_and_export(filled_store, tmp_path, capsys):
    assert _run_cli("runs", "--store", str(filled_store), "list") == 0
    listing = capsys.readouterr().out
    assert "other" in listing and "s " in listing

    assert _run_cli("runs", "--store", str(filled_store), "show", "s") == 0
    table = capsys.readouterr().out
    assert "a1" in table and "0.8500" in table and "RuntimeError: boom" in table

    assert _run_cli("runs", "--store", str(filled_store), "show", "c") == 0
    details = capsys.readouterr().out
    assert "status:          failed" in details and "Traceback ..." in details

    with pytest.raises(ValueError, match="'zz' is neither a sweep nor a point id"):
        _run_cli("runs", "--store", str(filled_store), "show", "zz")

    output = tmp_path / "all.csv"
    assert _run_cli("runs", "--store", str(filled_store), "export", "--format", "csv", "--output", str(output)) == 0
    assert len(pd.read_csv(output)) == 4


def test_runs_list_and_show_call_a_running_point_of_a_dead_process_interrupted(filled_store, capsys):
    ResultsStore(filled_store).save(_owned(RunRow("s", "e5", "nb.ipynb", {}, "running"), _dead_owner()))
    assert _run_cli("runs", "--store", str(filled_store), "list") == 0
    listing = pd.read_fwf(io.StringIO(capsys.readouterr().out))
    assert listing.set_index("sweep").loc["s", ["running", "interrupted"]].tolist() == [0, 1]
    assert _run_cli("runs", "--store", str(filled_store), "show", "e5") == 0
    assert "status:          interrupted (process" in capsys.readouterr().out
    assert store.load("s", path=filled_store).set_index("point_id").loc["e5", "status"] == "interrupted"


def test_exporting_an_unknown_sweep_or_into_a_folder_says_so_before_writing(filled_store, tmp_path):
    with pytest.raises(ValueError, match=r"no sweep named 'nope' in .*; `lab runs list` shows the sweeps"):
        _run_cli("runs", "--store", str(filled_store), "export", "--sweep", "nope", "--output", str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match=f"export output {tmp_path} is a folder; give a file name"):
        export.export(tmp_path, path=tmp_path / "never-read.db")
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "never-read.db").exists()


def test_an_export_never_replaces_a_store_or_a_file_of_another_format(filled_store, tmp_path):
    other_store = tmp_path / "other.db"
    ResultsStore(other_store).save(done_row())
    kept = {other_store: other_store.read_bytes()}
    for name, content in (("result.json", '{"config": {}}'), ("notes.txt", "my notes\n"), ("table.csv", "a,b\n1,2\n")):
        kept[tmp_path / name] = content.encode()
        (tmp_path / name).write_text(content)
    refused = [
        (other_store, "csv", rf"{other_store} is a lab results store \(1 run\), not a CSV file"),
        (tmp_path / "result.json", "csv", "result.json is a JSON file, not a CSV file"),
        (tmp_path / "table.csv", "parquet", "table.csv is a text file, not a Parquet file"),
    ]
    for output, format, problem in refused:
        with pytest.raises(ValueError, match=f"export output .*{problem}; .*--force"):
            export.export(output, format, path=filled_store)
    # The store exported is never replaced, not even when forced.
    with pytest.raises(ValueError, match=f"export output {filled_store} is the results store this command exports"):
        _run_cli("runs", "--store", str(filled_store), "export", "--output", str(filled_store), "--force")
    assert all(path.read_bytes() == content for path, content in kept.items())
    assert len(store.load(path=filled_store)) == 4
    # What may be replaced: a file of the same format, an empty file, anything when forced.
    export.export(tmp_path / "table.csv", "csv", path=filled_store)
    (tmp_path / "empty.csv").write_text("")
    export.export(tmp_path / "empty.csv", "csv", path=filled_store)
    assert _run_cli(
        "runs", "--store", str(filled_store), "export", "--output", str(tmp_path / "notes.txt"), "--force"
    ) == 0  # a text file is what a CSV looks like
    assert _run_cli("runs", "--store", str(filled_store), "export", "--output", str(other_store), "--force") == 0
    assert [len(pd.read_csv(tmp_path / name)) for name in ("table.csv", "empty.csv", "other.db")] == [4, 4, 4]


def test_a_point_in_several_sweeps_is_shown_by_the_sweep_slash_point_form_the_error_suggests(filled_store, capsys):
    ResultsStore(filled_store).save(done_row(sweep="other", point_id="a1", accuracy=(0.25, 0.75)))
    with pytest.raises(ValueError, match=r"'a1' is ambiguous: other/a1, s/a1 \(show one as SWEEP/POINT\)"):
        _run_cli("runs", "--store", str(filled_store), "show", "a1")
    assert _run_cli("runs", "--store", str(filled_store), "show", "other/a1") == 0
    details = capsys.readouterr().out
    assert "sweep:           other" in details and "accuracy:        0.5000" in details
    assert _run_cli("runs", "--store", str(filled_store), "show", "s/a") == 0  # a prefix within the sweep
    assert "sweep:           s\n" in capsys.readouterr().out
    with pytest.raises(ValueError, match="'other/b2' is neither a sweep nor a point id"):
        _run_cli("runs", "--store", str(filled_store), "show", "other/b2")


def test_lab_active_keeps_its_record_in_an_old_store_and_lab_runs_shows_it(tmp_path, capsys):
    """`lab active --store` on a store of schema version 1: the store opens, and keeps the run's settings, label
    curve and selections as its --output has them; `lab runs show` lists the run and prints its details."""
    path = tmp_path / "results.db"
    with sqlite3.connect(path) as connection:
        connection.executescript(V1_SCHEMA)
    output = tmp_path / "active.json"
    assert cli.main([
        "active", "strategy=margin", "cold_start=random", "budgets=[5,8]", "model=logreg", "steps=5", "eval_every=5",
        "seeds=[0,1]", "--output", str(output), "--store", str(path), "--no-progress",
    ]) == 0  # fmt: skip
    saved = json.loads(output.read_text())
    (row,) = ResultsStore(path).rows("active")
    assert row.status == "done" and row.notebook == "lab active" and row.parameters == saved["config"]
    assert row.payload["active"]["selections"] == saved["selections"]
    assert row.payload["active"]["curve"] == saved["curve"] and row.payload["active"]["budgets"] == [5, 8]
    loaded = store.load("active", path=path)
    assert loaded.loc[0, "active"]["strategy"] == "margin"
    assert loaded.loc[0, "accuracy"] == saved["curve"]["accuracy"][-1]
    assert len(store.load(path=path)) == 2  # the old store's row is still there
    capsys.readouterr()

    assert cli.main(["runs", "--store", str(path), "show", "active"]) == 0
    listing = capsys.readouterr().out
    assert "random, then margin" in listing and "[5, 8]" in listing and row.point_id in listing
    assert cli.main(["runs", "--store", str(path), "show", row.point_id]) == 0
    details = capsys.readouterr().out
    accuracy = np.array(saved["curve"]["accuracy"])
    assert f"{accuracy[1].mean():.4f} ± {accuracy[1].std():.4f}" in details
    assert f"seed 1, to 8 labels: {saved['selections'][1][1]}" in details
