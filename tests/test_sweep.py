"""`lab sweep`: grid parsing and checks before any run, seed folding, point ids, and
real papermill runs of tests/data/tiny.ipynb on a process pool and on Dask: failure
isolation, resume, --retry-failed, interruption, and the kernel's interpreter."""

import argparse
import concurrent.futures
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import psutil  # a dependency of orbax-checkpoint, so always installed with lab
import pytest
from jupyter_client.kernelspec import KernelSpec

from lab import cli, store, sweep
from lab.store import RunRow
from lab.sweep import GridError

TINY = Path(__file__).parent / "data" / "tiny.ipynb"


def expected_accuracy(x, seeds):
    """What tiny.ipynb records."""
    return [0.5 + 0.1 * x + 0.01 * seed for seed in seeds]


# --------------------------------------------------------------------------------------
# Grids, checked before anything runs
# --------------------------------------------------------------------------------------


def test_parse_grid_from_options_and_yaml(tmp_path):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("seed: 1:4\nmode: [ok, fail]\nx: 3\nseeds: ['[0, 1]', [2]]\n")
    assert sweep.parse_grid(grid_file=grid_file) == {
        "seed": [1, 2, 3],
        "mode": ["ok", "fail"],
        "x": [3],
        "seeds": ["[0, 1]", [2]],
    }
    assert sweep.parse_grid([("method", "fixmatch, pseudo_label"), ("seed", "0:2,7"), ("hidden", "[64,64],[128]")]) == {
        "method": ["fixmatch", "pseudo_label"],
        "seed": [0, 1, "7"],  # ranges are expanded here; other values are converted by expand_grid
        "hidden": ["[64,64]", "[128]"],
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ([("seed", "5:5")], "range '5:5' is empty"),
        ([("x", "1,,2")], "has an empty value"),
        ([("x", "1"), ("x", "2")], "'x' is given more than once"),
    ],
)
def test_parse_grid_errors(options, message):
    with pytest.raises(GridError, match=message):
        sweep.parse_grid(options)


def test_values_take_the_type_of_the_notebook_default():
    points = sweep.expand_grid(TINY, {"x": ["2", 3], "mode": ["fail"], "seeds": ["[4, 5]"]})
    assert [point.parameters for point in points] == [
        {"x": 2, "mode": "fail", "seeds": [4, 5]},
        {"x": 3, "mode": "fail", "seeds": [4, 5]},
    ]


def test_values_are_converted_to_each_parameter_type(tmp_path):
    notebook = tmp_path / "typed.ipynb"
    parameters = 'flag = False\nlr = 1e-3\nsteps: int = 10\nsizes = [64]\noptions = {"a": 1}\nhome = os.getcwd()'
    cell = nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]})
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), notebook)
    grid = {
        "flag": ["yes", False],
        "lr": ["0.1", 1],
        "steps": ["5"],
        "sizes": ["[32, 32]", [8]],
        "options": ["{a: 2}"],
        "home": ["/data"],  # no literal default: the value is passed as given
    }
    points = sweep.expand_grid(notebook, grid)
    assert len(points) == 2 * 2 * 2
    assert points[0].parameters == {
        "flag": True, "lr": 0.1, "steps": 5, "sizes": [32, 32], "options": {"a": 2}, "home": "/data"
    }  # fmt: skip
    assert {type(point.parameters["lr"]) for point in points} == {float}
    assert {point.parameters["flag"] for point in points} == {True, False}
    with pytest.raises(GridError, match=r"'flag' takes bool values \(true/false, yes/no, on/off or 1/0\)"):
        sweep.expand_grid(notebook, {"flag": ["maybe"]})
    with pytest.raises(GridError, match="'options' takes dict values"):
        sweep.expand_grid(notebook, {"options": ["[1]"]})


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        ({"x": ["1.5"]}, r"parameter 'x' takes int values \(its default is 1\); cannot use '1.5'"),
        ({"x": [True]}, "parameter 'x' takes int values"),
        ({"mode": [3]}, r"parameter 'mode' takes str values \(its default is \"ok\"\); cannot use 3"),
        ({"seeds": ["0"]}, "parameter 'seeds' takes list values"),
        ({"seed": ["first"]}, "parameter 'seed' takes int values"),
        (
            {"learning_rate": ["0.1"], "x": ["1"]},
            r"has no parameter 'learning_rate'; its parameters cell defines: mode, output_dir, seeds, x, seed",
        ),
        ({}, "the grid is empty"),
        ({"x": []}, "parameter 'x' has no values"),
        ({"x": ["1", "01"]}, "parameter 'x' lists 1 more than once"),
        ({"seed": [0], "seeds": ["[1]"]}, "either a 'seed' axis or 'seeds'"),
    ],
)
def test_bad_grids_fail_naming_the_value_and_what_is_allowed(grid, message):
    with pytest.raises(GridError, match=message):
        sweep.expand_grid(TINY, grid)


def test_seed_axis_is_folded_into_one_run_per_point():
    points = sweep.expand_grid(TINY, sweep.parse_grid([("x", "1,2"), ("seed", "0:3")]))
    assert [point.parameters for point in points] == [{"x": 1, "seeds": [0, 1, 2]}, {"x": 2, "seeds": [0, 1, 2]}]


def test_point_ids_are_stable_hashes_of_the_parameters():
    assert sweep.point_id({"x": 1, "seeds": [0, 1]}) == sweep.point_id({"seeds": [0, 1], "x": 1})
    assert sweep.point_id({"x": 1, "seeds": [0, 1]}) != sweep.point_id({"x": 1, "seeds": [0]})
    # Fixed forever: results stored by earlier versions must still be found when a sweep resumes.
    assert sweep.point_id({"x": 1, "seeds": [0, 1]}) == "a8097aa1d83b"
    points = sweep.expand_grid(TINY, {"x": [1]}, extra_parameters={"mode": "ok"})
    assert points[0].point_id == sweep.point_id({"x": 1, "mode": "ok"})


def test_validate_rejects_a_point_before_any_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []

    def validate(config):
        seen.append(config)
        if config["x"] > 2:
            raise ValueError(f"x must be at most 2, got {config['x']}")

    with pytest.raises(GridError, match=r'point \{"seeds": \[0\], "x": 3\} is invalid: x must be at most 2, got 3'):
        sweep.run_sweep(TINY, {"x": [1, 3], "seed": [0]}, name="checked", validate=validate)
    # The validator saw complete configurations: the notebook's defaults plus the point.
    assert seen[0] == {"x": 1, "seeds": [0], "mode": "ok", "output_dir": "runs/scratch"}
    assert not (tmp_path / "runs").exists()


def _notebook(path, *cells):
    """A notebook of code cells; a cell given as (source, tags) is tagged."""
    code = [
        nbformat.v4.new_code_cell(cell[0], metadata={"tags": cell[1]})
        if isinstance(cell, tuple)
        else nbformat.v4.new_code_cell(cell)
        for cell in cells
    ]
    nbformat.write(nbformat.v4.new_notebook(cells=code), path)
    return path


def test_a_notebook_with_several_parameters_cells_is_refused_naming_them(tmp_path, monkeypatch):
    # papermill injects after the first tagged cell, so the second would undo the grid's value unrecorded.
    notebook = _notebook(tmp_path / "two.ipynb", ("steps = 20", ["parameters"]), "x = 1", ("steps = 5", ["parameters"]))
    monkeypatch.chdir(tmp_path)
    message = r"two\.ipynb has 2 cells tagged 'parameters' \(cells 1 and 3, counting from 1\); keep the tag on one"
    with pytest.raises(GridError, match=message) as error:
        sweep.run_sweep(notebook, {"steps": ["7"]}, name="two")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("steps = 20\nlr = (1,", r"line 2: '\(' was never closed"),
        ("steps: int = 2 0", r"line 1: invalid syntax"),
    ],
)
def test_a_syntax_error_in_the_parameters_cell_is_named_with_its_line(tmp_path, source, message):
    notebook = _notebook(tmp_path / "broken.ipynb", "import os", (source, ["parameters"]))
    expected = r"broken\.ipynb: the parameters cell \(cell 2\) has a syntax error at " + message
    with pytest.raises(GridError, match=expected):
        sweep.expand_grid(notebook, {"steps": ["1"]})


def test_ipython_syntax_in_the_parameters_cell_is_allowed(tmp_path):
    notebook = _notebook(tmp_path / "magic.ipynb", ("%matplotlib inline\nsteps = 20", ["parameters"]))
    assert sweep.expand_grid(notebook, {"steps": ["3"]})[0].parameters == {"steps": 3}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.mkdir(), r"notebook {path} is a folder; expected a Jupyter notebook \(\.ipynb\) file"),
        (lambda path: path.write_bytes(bytes(range(256))), r"notebook {path} is not a Jupyter notebook \(.*\)"),
        (lambda path: path.write_text("{\"cells\": ["), r"notebook {path} is not a Jupyter notebook \(.*\)"),
    ],
)
def test_a_notebook_that_is_not_one_is_named_in_one_line(tmp_path, monkeypatch, make, message):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.ipynb"
    make(path)
    with pytest.raises(ValueError, match=message.format(path=re.escape(str(path)))) as error:
        sweep.run_sweep(path, {"x": ["1"]}, name="bad")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "../escape"}, "sweep name '../escape' is not allowed"),
        ({"name": "ok", "executor": "slurm"}, "executor 'slurm' is not one of local, dask"),
        ({"name": "ok", "scheduler": "tcp://127.0.0.1:1"}, "needs executor 'dask'"),
        ({"name": "ok", "workers": 0}, "workers must be a positive integer, got 0"),
    ],
)
def test_bad_sweep_options_fail_before_any_run(tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=message):
        sweep.run_sweep(TINY, {"x": [1]}, **options)
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------------------
# Real sweeps on a local process pool
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, stale_jupyter_path):
    """x in {1, 2} times mode in {ok, fail}, three seeds each: four runs, two of which fail.

    A stale ``python3`` kernelspec comes first on JUPYTER_PATH: runs must still use this interpreter.
    """
    root = tmp_path_factory.mktemp("local")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("JUPYTER_PATH", str(stale_jupyter_path))
        grid = sweep.parse_grid([("x", "1,2"), ("mode", "ok,fail"), ("seed", "0:3")])
        summary = sweep.run_sweep(TINY, grid, name="tiny-local", workers=2)
    return root, grid, summary


def _rows(root, sweep_name):
    return {
        row.point_id: row for row in store.ResultsStore(root / "runs" / "results.db", create=False).rows(sweep_name)
    }


def test_local_sweep_records_results_and_isolates_failures(local_sweep):
    root, _, summary = local_sweep
    assert len(summary.done) == 2 and len(summary.failed) == 2 and not summary.complete
    rows = _rows(root, "tiny-local")
    assert sorted(row.status for row in rows.values()) == ["done", "done", "failed", "failed"]
    for point_id, row in rows.items():
        x, mode = row.parameters["x"], row.parameters["mode"]
        assert row.point_id == sweep.point_id({"x": x, "mode": mode, "seeds": [0, 1, 2]})
        assert row.parameters["output_dir"] == str(root / "runs" / "tiny-local" / point_id)
        assert row.output_notebook == f"runs/tiny-local/{point_id}.ipynb" and (root / row.output_notebook).is_file()
        assert f"tiny notebook: x={x} seeds=[0, 1, 2] mode={mode}" in (root / row.log_path).read_text()
        assert row.started_at <= row.ended_at and row.duration_s > 0
        assert row.versions["python"] == ".".join(map(str, sys.version_info[:3])) and row.git_commit is None
        if mode == "ok":
            assert row.status == "done" and row.error is None
            assert row.payload["metrics"]["accuracy"] == pytest.approx(expected_accuracy(x, [0, 1, 2]))
            assert row.payload["python"] == sys.executable  # the kernel ran on this interpreter
            assert (root / row.parameters["output_dir"] / "marker.txt").read_text() == f"x={x}"
        else:
            assert row.status == "failed" and row.payload is None
            assert row.error == f"RuntimeError: asked to fail (x={x})"
            assert 'raise RuntimeError(f"asked to fail (x={x})")' in row.traceback and "\x1b[" not in row.traceback
            assert summary.failed[point_id] == row.error
            executed = nbformat.read(root / row.output_notebook, as_version=4)
            assert any(
                output.get("ename") == "RuntimeError" for cell in executed.cells for output in cell.get("outputs", [])
            )


def test_resume_skips_done_points_and_retry_failed_reruns_only_failures(local_sweep):
    root, grid, _ = local_sweep
    before = _rows(root, "tiny-local")
    notebook_times = {point_id: (root / row.output_notebook).stat().st_mtime_ns for point_id, row in before.items()}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        resumed = sweep.run_sweep(TINY, grid, name="tiny-local", workers=2)
        assert (resumed.done, resumed.failed) == ([], {})
        assert (len(resumed.already_done), len(resumed.not_retried)) == (2, 2)
        assert _rows(root, "tiny-local") == before

        retried = sweep.run_sweep(TINY, grid, name="tiny-local", workers=2, retry_failed=True)
    after = _rows(root, "tiny-local")
    failed_before = {point_id for point_id, row in before.items() if row.status == "failed"}
    assert set(retried.failed) == failed_before and retried.done == [] and len(retried.already_done) == 2
    for point_id, row in after.items():
        rewritten = (root / row.output_notebook).stat().st_mtime_ns != notebook_times[point_id]
        if point_id in failed_before:
            assert row.status == "failed" and rewritten and row.updated_at >= before[point_id].updated_at
        else:
            assert row == before[point_id] and not rewritten


def test_a_sweep_name_belongs_to_one_notebook(local_sweep, tmp_path):
    root, _, _ = local_sweep
    other = tmp_path / "other.ipynb"
    other.write_bytes(TINY.read_bytes())
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        with pytest.raises(
            ValueError,
            match=r"sweep 'tiny-local' already holds runs of .*tiny\.ipynb; give this sweep of .*other\.ipynb another",
        ):
            sweep.run_sweep(other, {"x": [1]}, name="tiny-local")


def _cli(*argv, validate=None):
    parser = argparse.ArgumentParser(prog="lab")
    cli.add_sweep_command(parser.add_subparsers(dest="command", required=True), validate=validate)
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_resumes_a_sweep_and_reports_incomplete_ones(local_sweep, capsys):
    root, _, _ = local_sweep
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        exit_code = _cli(
            "sweep",
            str(TINY),
            "-p",
            "x",
            "1,2",
            "-p",
            "mode",
            "ok,fail",
            "-p",
            "seed",
            "0:3",
            "--name",
            "tiny-local",
            "--workers",
            "2",
        )
        assert exit_code == 1  # two points are still failed
        assert (
            "ran 0 (0 done, 0 failed); skipped 2 done before; skipped 2 that failed before" in capsys.readouterr().out
        )
        with pytest.raises(GridError, match="has no parameter 'lr'"):
            _cli("sweep", str(TINY), "-p", "lr", "0.1", "--name", "tiny-local")


# --------------------------------------------------------------------------------------
# Dask
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_scheduler():
    distributed = pytest.importorskip("distributed")
    # Threads in this process, reached over TCP on the loopback interface only.
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        yield cluster.scheduler_address


def test_dask_sweep_keeps_the_record_of_a_run_that_failed_afterwards(dask_scheduler, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    summary = sweep.run_sweep(
        TINY,
        {"mode": ["ok", "fail_after_record"], "x": [3]},
        name="tiny-dask",
        executor="dask",
        scheduler=dask_scheduler,
    )
    assert len(summary.done) == 1 and len(summary.failed) == 1
    rows = {row.parameters["mode"]: row for row in _rows(tmp_path, "tiny-dask").values()}
    assert rows["ok"].status == "done" and rows["ok"].payload["metrics"]["accuracy"] == pytest.approx(
        expected_accuracy(3, [0])
    )
    failed = rows["fail_after_record"]
    assert failed.status == "failed" and failed.error == "RuntimeError: failed after recording"
    assert failed.payload["metrics"]["accuracy"] == pytest.approx(
        expected_accuracy(3, [0])
    )  # computed before the failure: kept


def test_an_interrupted_sweep_keeps_finished_runs_and_redoes_the_rest(dask_scheduler, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class InterruptAfterFirstRun(sweep.tqdm):
        def update(self, n=1):
            super().update(n)
            raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "tqdm", InterruptAfterFirstRun)
    with pytest.raises(KeyboardInterrupt):
        # The local pool stops the interrupted run before run_sweep returns (Dask threads
        # would go on running it, beside its re-run below).
        sweep.run_sweep(TINY, {"x": [1, 2, 4]}, name="tiny-interrupted", workers=2)
    # One run finished and is kept; the one still running went back to pending, like the one not started.
    statuses = sorted(row.status for row in _rows(tmp_path, "tiny-interrupted").values())
    assert statuses == ["done", "pending", "pending"]

    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    resumed = sweep.run_sweep(
        TINY, {"x": [1, 2, 4]}, name="tiny-interrupted", executor="dask", scheduler=dask_scheduler
    )
    assert len(resumed.already_done) == 1 and len(resumed.done) == 2
    final = {row.point_id: (row.parameters, row.status, row.started_at, row.ended_at) for row in _rows(tmp_path, "tiny-interrupted").values()}
    assert {status for _, status, _, _ in final.values()} == {"done"}, (final, resumed)


def test_worker_threads_that_change_directory_do_not_redirect_results(tmp_path, monkeypatch):
    """papermill changes the process's working directory around every notebook read and
    write (papermill's GitHub issue #473). Threads of an in-process Dask cluster run in the sweep's
    own process: the sweep must still save to its own store, with paths from its own directory."""
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    store.ResultsStore(elsewhere / "runs" / "results.db")  # a decoy the results must not reach
    monkeypatch.chdir(home)
    execute_run = sweep.execute_run

    def move_away_then_run(task):
        os.chdir(elsewhere)
        return execute_run(task)

    @contextlib.contextmanager
    def threads_in_this_process(kind, workers, scheduler):
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            yield pool, 2

    monkeypatch.setattr(sweep, "execute_run", move_away_then_run)
    monkeypatch.setattr(sweep, "_executor", threads_in_this_process)
    summary = sweep.run_sweep(TINY, {"x": [1, 2]}, name="tiny-threads")
    assert len(summary.done) == 2
    rows = _rows(home, "tiny-threads")
    assert {row.status for row in rows.values()} == {"done"}
    for point_id, row in rows.items():
        assert row.log_path == os.path.join("runs", "tiny-threads", f"{point_id}.log")
        assert row.output_notebook == os.path.join("runs", "tiny-threads", f"{point_id}.ipynb")
        assert (home / row.output_notebook).is_file()
    assert store.ResultsStore(elsewhere / "runs" / "results.db").rows() == []


KERNEL_WRAPPER = """
import os, runpy, sys, time

attempts_file, connection_file, behaviour, *kernel_options = sys.argv[1:]
attempt = int(open(attempts_file).read()) + 1 if os.path.exists(attempts_file) else 1
open(attempts_file, "w").write(str(attempt))
if behaviour == "die":
    sys.exit(3)
if behaviour == "hang_once" and attempt == 1:
    time.sleep(600)
sys.argv = ["ipykernel_launcher", "-f", connection_file, *kernel_options]
runpy.run_module("ipykernel_launcher", run_name="__main__")
"""


def _run_on_flaky_kernels(tmp_path, monkeypatch, behaviour):
    """Execute tiny.ipynb once, on kernels started through KERNEL_WRAPPER; return the outcome,
    the log and how many kernels were started."""
    wrapper, attempts_file = tmp_path / "kernel_wrapper.py", tmp_path / "attempts"
    wrapper.write_text(KERNEL_WRAPPER)
    argv = [sys.executable, str(wrapper), str(attempts_file), "{connection_file}", behaviour]
    spec = KernelSpec(argv=argv, display_name="flaky", language="python", env=sweep._kernel_environment())
    monkeypatch.setattr(sweep.CurrentPythonKernelSpecManager, "get_kernel_spec", lambda self, name: spec)
    monkeypatch.setattr(sweep, "KERNEL_START_TIMEOUT_S", 3)
    task = sweep.RunTask(
        sweep="flaky",
        point_id="p",
        notebook=str(TINY),
        parameters={"x": 2, "output_dir": str(tmp_path / "out")},
        output_notebook=str(tmp_path / "p.ipynb"),
        log_path=str(tmp_path / "p.log"),
        working_dir=str(tmp_path),
    )
    outcome = sweep.execute_run(task)
    return outcome, Path(task.log_path).read_text(), int(attempts_file.read_text())


def test_a_kernel_that_does_not_start_is_replaced(tmp_path, monkeypatch):
    outcome, log, kernels = _run_on_flaky_kernels(tmp_path, monkeypatch, "hang_once")
    assert outcome.status == "done" and kernels == 2
    assert outcome.payload["metrics"]["accuracy"] == pytest.approx(expected_accuracy(2, [0]))
    assert "the kernel did not start (Kernel didn't respond in 3 seconds); starting a new one, attempt 2" in log


def test_a_run_whose_kernels_never_start_fails_after_the_last_attempt(tmp_path, monkeypatch):
    outcome, log, kernels = _run_on_flaky_kernels(tmp_path, monkeypatch, "die")
    assert kernels == sweep.KERNEL_START_ATTEMPTS == 3
    assert outcome.status == "failed"
    assert outcome.error == "RuntimeError: Kernel died before replying to kernel_info"
    assert log.count("the kernel did not start") == 2


def test_dask_local_cluster_when_no_scheduler_is_given(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.chdir(tmp_path)
    summary = sweep.run_sweep(TINY, {"x": [2]}, name="tiny-cluster", executor="dask", workers=1)
    assert summary.complete and len(summary.done) == 1
    (row,) = _rows(tmp_path, "tiny-cluster").values()
    assert row.payload["python"] == sys.executable and os.path.isfile(tmp_path / row.log_path)


# --------------------------------------------------------------------------------------
# Several sweeps at once, kills, Ctrl-C, and a store that cannot be written
# --------------------------------------------------------------------------------------

HOLD_NOTEBOOK_CODE = """
import os, time
import lab.record

print(f"started x={x}", flush=True)
if tally:
    with open(tally, "a") as file:
        file.write(f"{x}\\n")
deadline = time.monotonic() + 120  # a safety bound: the tests remove the hold file or kill the run
while hold and os.path.exists(hold) and time.monotonic() < deadline:
    time.sleep(0.05)
lab.record.emit({"dataset": "tiny", "setup": "supervised", "method": "hold", "labels_per_class": x,
                 "seeds": [0], "metrics": {"accuracy": [0.5]}})
"""


def _hold_notebook(folder):
    """A notebook that appends x to the file ``tally`` and then waits while the file ``hold`` exists."""
    notebook = folder / "hold.ipynb"
    cells = [
        nbformat.v4.new_code_cell('x = 1\nhold = ""\ntally = ""', metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(HOLD_NOTEBOOK_CODE),
    ]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), notebook)
    return notebook


def _lab(folder, *arguments):
    """``lab ARGUMENTS`` as a process of its own, in ``folder``."""
    lab_root = str(Path(sweep.__file__).resolve().parent.parent)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([lab_root, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "lab.cli", *arguments],
        cwd=folder,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_until(condition, what, bound_s=120):
    """Poll ``condition``; the bound only keeps a broken test from hanging."""
    deadline = time.monotonic() + bound_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _runs_started(folder, name, count):
    logs = list((folder / "runs" / name).glob("*.log"))
    return sum("started x=" in log.read_text() for log in logs) >= count


def _still_running(processes):
    alive = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.status() != psutil.STATUS_ZOMBIE:  # ended; not every container's init reaps
                alive.append(process)
    return alive


def _wait_for_the_end_of(processes):
    """Fail unless every one of ``processes`` ends (within a bound); kill those left, so none outlives the test."""
    try:
        _wait_until(lambda: _still_running(processes) == [], "the sweep's processes to end", bound_s=60)
    finally:
        for orphan in _still_running(processes):
            orphan.kill()


def _descendants_and_kernels(pid):
    descendants = psutil.Process(pid).children(recursive=True)
    kernels = [process for process in descendants if "ipykernel_launcher" in " ".join(process.cmdline())]
    return descendants, kernels


def test_two_sweeps_of_one_name_at_once_run_each_point_once(tmp_path):
    notebook, tally = _hold_notebook(tmp_path), tmp_path / "tally.txt"
    arguments = ["sweep", str(notebook), "-p", "x", "1:7", "-p", "tally", str(tally), "--name", "twice"]
    processes = [_lab(tmp_path, *arguments) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]
    # One of them may end while the other still runs a point: it says so, and exits 1.
    assert {process.returncode for process in processes} <= {0, 1}, outputs
    assert sorted(tally.read_text().split()) == [str(x) for x in range(1, 7)], outputs
    assert {row.status for row in _rows(tmp_path, "twice").values()} == {"done"}


def test_ctrl_c_stops_a_sweep_at_once_and_gives_back_only_its_own_points(tmp_path):
    other_sweep_owner = store.Owner.of(os.getppid())  # this test's parent stands for another live sweep
    notebook, hold = _hold_notebook(tmp_path), tmp_path / "hold"
    hold.touch()  # the first run would wait for 120 s: the sweep must not wait for it
    elsewhere = sweep.point_id({"x": 3, "hold": str(hold)})
    results = store.ResultsStore(tmp_path / "runs" / "results.db")
    results.save(
        RunRow(
            "ctrl-c", elsewhere, str(notebook.resolve()), {"x": 3, "hold": str(hold)}, "running",
            owner_host=other_sweep_owner.host, owner_pid=other_sweep_owner.pid, owner_start=other_sweep_owner.start,
        )
    )  # fmt: skip
    process = _lab(tmp_path, "sweep", str(notebook), "-p", "x", "1,2,3", "-p", "hold", str(hold), "--name", "ctrl-c")
    _wait_until(lambda: _runs_started(tmp_path, "ctrl-c", 1), "the first run to start")
    descendants, kernels = _descendants_and_kernels(process.pid)
    assert kernels
    process.send_signal(signal.SIGINT)  # to the sweep process only, as `kill -INT` does
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.splitlines()[-1].startswith("lab sweep: interrupted;") and "Traceback" not in err, err
    assert hold.exists()  # the run in progress was stopped, not waited for
    # The pool's workers are terminated as the sweep exits; they and their kernels end just after it.
    _wait_for_the_end_of(descendants)
    rows = _rows(tmp_path, "ctrl-c")
    assert {point: row.status for point, row in rows.items() if point != elsewhere} == dict.fromkeys(
        set(rows) - {elsewhere}, "pending"
    )
    assert rows[elsewhere].status == "running" and rows[elsewhere].owner == other_sweep_owner


def test_a_killed_sweep_leaves_no_processes_and_its_next_run_redoes_its_points(tmp_path, monkeypatch):
    notebook, hold = _hold_notebook(tmp_path), tmp_path / "hold"
    hold.touch()
    grid = ["-p", "x", "1,2", "-p", "hold", str(hold)]
    process = _lab(tmp_path, "sweep", str(notebook), *grid, "--name", "killed", "--workers", "2")
    _wait_until(lambda: _runs_started(tmp_path, "killed", 2), "both runs to start")
    descendants, kernels = _descendants_and_kernels(process.pid)
    assert len(kernels) == 2
    process.kill()
    process.wait()
    _wait_for_the_end_of(descendants)  # workers, their kernels and multiprocessing's resource tracker
    rows = _rows(tmp_path, "killed")
    assert {row.current_status() for row in rows.values()} == {"interrupted"}

    hold.unlink()
    monkeypatch.chdir(tmp_path)
    summary = sweep.run_sweep(notebook, sweep.parse_grid([("x", "1,2"), ("hold", str(hold))]), name="killed")
    assert sorted(summary.done) == sorted(rows) and summary.complete
    assert {row.status for row in _rows(tmp_path, "killed").values()} == {"done"}


@contextlib.contextmanager
def _threads(kind, workers, scheduler):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        yield pool, 1


def test_an_interrupt_that_python_swallows_still_stops_the_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    swallowed = []

    class InterruptSwallowedAfterFirstRun(sweep.tqdm):
        def update(self, n=1):
            super().update(n)
            try:  # as Python does with a KeyboardInterrupt raised in a gc callback, such as JAX's
                signal.raise_signal(signal.SIGINT)
                time.sleep(0.01)
            except KeyboardInterrupt:
                swallowed.append(n)

    monkeypatch.setattr(sweep, "tqdm", InterruptSwallowedAfterFirstRun)
    monkeypatch.setattr(sweep, "_executor", _threads)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(TINY, {"x": [1, 2, 4]}, name="swallowed")
    assert swallowed == [1]
    assert sorted(row.status for row in _rows(tmp_path, "swallowed").values()) == ["done", "pending", "pending"]


def test_a_finished_run_that_the_store_cannot_save_is_kept_and_saved_by_the_next_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "_executor", _threads)

    def read_only(self, *rows):
        raise store.StoreError(f"cannot use the results store {self.path} (attempt to write a readonly database)")

    with monkeypatch.context() as patch:
        patch.setattr(store.ResultsStore, "save", read_only)
        summary = sweep.run_sweep(TINY, {"x": [1, 2]}, name="read-only")
    first, second = (sweep.point_id({"x": x}) for x in (1, 2))
    assert not summary.complete and summary.done == [] and list(summary.unsaved) == [first]
    described = summary.describe()
    assert "attempt to write a readonly database" in described
    assert f"not saved {first}: runs/read-only/{first}.ipynb holds its result" in described
    notebook_time = (tmp_path / "runs" / "read-only" / f"{first}.ipynb").stat().st_mtime_ns
    assert {row.point_id: row.status for row in _rows(tmp_path, "read-only").values()} == {
        first: "pending",
        second: "pending",
    }

    resumed = sweep.run_sweep(TINY, {"x": [1, 2]}, name="read-only")
    assert (resumed.recovered, resumed.done, resumed.complete) == ([first], [second], True)
    rows = _rows(tmp_path, "read-only")
    assert rows[first].status == "done" and rows[first].payload["metrics"]["accuracy"] == expected_accuracy(1, [0])
    assert (tmp_path / "runs" / "read-only" / f"{first}.ipynb").stat().st_mtime_ns == notebook_time  # not run again
    assert not list((tmp_path / "runs" / "read-only").glob("*.outcome.json"))


def _fill_the_disk(monkeypatch, raises):
    """papermill's notebook writes stop halfway, as on a full disk: silently, or raising ENOSPC."""
    from papermill.iorw import LocalHandler

    def write_half(self, buf, path):
        Path(path).write_text(buf[: len(buf) // 2], encoding="utf-8")
        if raises:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(LocalHandler, "write", write_half)


@pytest.mark.parametrize("raises", [False, True], ids=["silently", "ENOSPC"])
def test_a_notebook_that_was_not_written_completely_is_a_failure_naming_it(tmp_path, monkeypatch, raises):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "_executor", _threads)
    _fill_the_disk(monkeypatch, raises)
    summary = sweep.run_sweep(TINY, {"x": [1]}, name="full-disk")
    point = sweep.point_id({"x": 1})
    output = tmp_path / "runs" / "full-disk" / f"{point}.ipynb"
    assert summary.done == [] and list(summary.failed) == [point]
    assert summary.failed[point].startswith(f"the executed notebook could not be written to {output}")
    assert ("No space left on device" in summary.failed[point]) == raises
    assert not output.exists()  # no truncated notebook poses as a result
    assert not [path.name for path in output.parent.iterdir() if path.name.startswith(".")]  # nor a temporary one
    row = _rows(tmp_path, "full-disk")[point]
    assert row.status == "failed" and row.error == summary.failed[point]
    if not raises:  # the kernel's results were in memory: kept in the store all the same
        assert row.payload["metrics"]["accuracy"] == expected_accuracy(1, [0])


def test_an_unsaved_run_whose_notebook_was_not_written_is_not_said_to_hold_its_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "_executor", _threads)
    _fill_the_disk(monkeypatch, raises=False)

    def read_only(self, *rows):
        raise store.StoreError(f"cannot use the results store {self.path} (database or disk is full)")

    monkeypatch.setattr(store.ResultsStore, "save", read_only)
    summary = sweep.run_sweep(TINY, {"x": [1]}, name="full-disk")
    point = sweep.point_id({"x": 1})
    described = summary.describe()
    assert "holds its result" not in described
    assert f"not saved {point}: it failed (the executed notebook could not be written to " in described


def test_an_unreachable_scheduler_fails_fast_and_saves_no_rows(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "SCHEDULER_CONNECT_TIMEOUT_S", 2)
    with pytest.raises(ConnectionError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:1 \("):
        sweep.run_sweep(TINY, {"x": [1]}, name="nowhere", executor="dask", scheduler="tcp://127.0.0.1:1")
    assert store.ResultsStore(tmp_path / "runs" / "results.db").rows() == []


# --------------------------------------------------------------------------------------
# Active learning: strategies x learners x seeds as one grid
# --------------------------------------------------------------------------------------

ACTIVE_PARAMETERS = 'strategy = "random"\nsetup = "supervised"\nbudgets = [5, 8]\nseeds = [0]\nsteps = 5'
ACTIVE_CODE = """from lab import active, record
result = active.run({"strategy": strategy, "cold_start": "random", "budgets": budgets, "setup": setup,
                     "model": "logreg", "seeds": seeds, "steps": steps, "eval_every": steps}, progress=False)
record.emit(result.record())"""


def test_a_sweep_of_strategies_and_learners_stores_each_active_run_and_reports_their_label_curves(tmp_path, capsys):
    notebook = _notebook(tmp_path / "active.ipynb", (ACTIVE_PARAMETERS, ["parameters"]), ACTIVE_CODE)
    runs = tmp_path / "runs"
    grid = ["-p", "strategy", "random,margin", "-p", "setup", "supervised", "-p", "seed", "0:2"]
    assert cli.main(["sweep", str(notebook), *grid, "--name", "al", "--runs-dir", str(runs)]) == 0
    rows = store.ResultsStore(runs / "results.db", create=False).rows("al")
    assert sorted(row.payload["active"]["strategy"] for row in rows) == ["margin", "random"]
    for row in rows:
        assert row.status == "done" and row.payload["seeds"] == [0, 1] and row.payload["active"]["budgets"] == [5, 8]
        assert [len(picked) for picked in row.payload["active"]["selections"][1]] == [5, 3]
    capsys.readouterr()
    out = tmp_path / "figures"
    assert cli.main(["report", "--store", str(runs / "results.db"), "--out", str(out), "--target", "0.99"]) == 0
    table = (out / "label_curves.md").read_text().splitlines()
    assert sorted(line.split(" | ")[0] for line in table[2:]) == [
        "| supervised: random, then margin", "| supervised: random, then random"
    ]
    by_strategy = {row.payload["active"]["strategy"]: row.payload["active"]["curve"]["accuracy"] for row in rows}
    margin = next(line for line in table if "then margin" in line)
    accuracy = [100 * sum(values) / 2 for values in by_strategy["margin"]]
    assert f"| {accuracy[0]:.1f} ± " in margin and f"| {accuracy[1]:.1f} ± " in margin


def test_a_sweep_refuses_an_unknown_strategy_before_any_run(tmp_path, capsys):
    notebook = _notebook(tmp_path / "active.ipynb", (ACTIVE_PARAMETERS, ["parameters"]), ACTIVE_CODE)
    runs = tmp_path / "runs"
    grid = ["-p", "strategy", "margin,oracle"]
    assert cli.main(["sweep", str(notebook), *grid, "--name", "al", "--runs-dir", str(runs)]) == 2
    assert "unknown strategy 'oracle'" in capsys.readouterr().err
    assert not runs.exists()
