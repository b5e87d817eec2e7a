"""Every notebook in notebooks/ runs end to end, headless, with small non-default parameters.

Each notebook is executed once with papermill, the way ``lab sweep`` executes it: kernel
name ``python3`` resolved to the interpreter running the tests (lab.sweep's kernel
manager, so a fresh virtualenv without any installed kernelspec works, and a stale
``python3`` kernelspec pointing at another Python is never used), ``LAB_PROGRESS=text``
and papermill's ``log_output``. Then the test reads the notebook's record back with
``lab.record.read`` and checks that the parameters came through, that metrics
hold one value per seed, that accuracies lie in [0, 1], and that the logged progress
output is a few lines per progress bar, not one line per refresh.

Notebooks 00-04 must all exist: a missing one fails (it is never skipped). Any other
notebook in notebooks/ runs too, with the generic small parameters below.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from pathlib import Path

import nbformat
import papermill
import pytest
from jupyter_client.kernelspec import KernelSpecManager

from lab import record as lab_record, store
from lab.sweep import CurrentPythonKernelManager, notebook_parameters

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
REQUIRED = ("00", "01", "02", "03", "04")

# Small values for parameters that most notebooks share; each is passed only to a notebook
# that declares it. All differ from the notebooks' defaults, so a parameter that does not
# reach the notebook shows up in its record.
GENERIC = {
    "seeds": [1, 2],
    "seed": 1,
    "labels_per_class": 2,
    "label_budgets": [1, 2],
    "steps": 40,
    "eval_every": 20,
    "pretrain_steps": 50,
    "save_figures": True,
}

# Notebook-specific parameters (on top of GENERIC; None drops a GENERIC entry). Every name
# here must be a parameter of the notebook: a renamed parameter fails the test.
SPECIFIC = {
    # 00's `steps` counts gradient-descent steps of its worked examples, not training steps.
    "00": {"steps": None},
    "01": {"datasets": ["digits"], "models": ["logreg", "mlp"]},
    "02": {"methods": ["supervised", "pseudo_label", "fixmatch"], "explorer_budgets": [1, 2]},
    "03": {
        "self_supervised": ["autoencoder"],
        # No MNIST in an empty data_dir: exercises the "optional data not available" path.
        "cross_dataset_sources": ["mnist"],
    },
    "04": {
        "semi_supervised_methods": ["pseudo_label"],
        "transfer_methods": ["autoencoder+linear_probe"],
        "seeds": [3],
        "label_budgets": [2],
    },
    # Two methods at one budget: the MLM backbone (pretrained twice: once with its head for the
    # fill-the-blank section, once by experiment.run into the cache) dominates the time.
    "06": {"methods": ["supervised", "mlm+finetune"], "label_budgets": [2], "explorer_budgets": [2]},
    # Two rounds, two compared strategies, few cheap draws; the headline run's own cold start and strategy.
    "07": {
        "budgets": [10, 15],
        "strategies": ["random", "typiclust"],
        "learners": ["supervised"],
        "strategy": "entropy",
        "cold_start": "coreset",
        "random_draws": 200,
        "cold_start_seeds": 2,
    },
    # The tiny random BERT of tests/data/hf (its 32 positions) in place of all-MiniLM-L6-v2: every path, fast.
    "08": {
        "checkpoint": str(Path(__file__).resolve().parent / "data" / "hf" / "tiny-bert"),
        "max_length": 16,
        "finetune_steps": 2,
        "finetune_batch_size": 8,
        "projection_texts": 40,
        "language_labels_per_class": 1,
    },
}

# Notebooks whose records must hold an accuracy (00 derives losses and gradients; it trains no classifier).
CLASSIFIERS_FROM = "01"
PROGRESS_LINE = re.compile(r"\d+%\|")
BAR_START = re.compile(r"(?<![\d.])0%\|")


def _notebook_ids() -> list[str]:
    """The numbers 00-04, then the other notebooks of notebooks/ by their number (or whole name)."""
    others = {path.stem.split("_", 1)[0] if "_" in path.stem else path.stem for path in NOTEBOOKS.glob("*.ipynb")}
    return sorted(set(REQUIRED) | others)


def notebook_path(prefix: str) -> Path:
    if (NOTEBOOKS / f"{prefix}.ipynb").is_file():
        return NOTEBOOKS / f"{prefix}.ipynb"
    matches = sorted(NOTEBOOKS.glob(f"{prefix}_*.ipynb"))
    if not matches:
        pytest.fail(f"notebooks/{prefix}_*.ipynb is missing: every notebook of 00-04 must exist and run")
    assert len(matches) == 1, f"several notebooks share the number {prefix}: {[path.name for path in matches]}"
    return matches[0]


def small_parameters(prefix: str, notebook: Path, tmp_path: Path) -> dict:
    declared = notebook_parameters(notebook)
    specific = {
        **SPECIFIC.get(prefix, {}),
        "output_dir": str(tmp_path / "figures"),
        **({"data_dir": str(tmp_path / "no-data")} if prefix == "03" else {}),
        **({"results_db": str(tmp_path / "no-store" / "results.db")} if prefix == "04" else {}),
    }
    undeclared = sorted(name for name, value in specific.items() if value is not None and name not in declared)
    assert not undeclared, f"{notebook.name} has no parameter {undeclared}; its parameters: {sorted(declared)}"
    merged = {**GENERIC, **specific}
    return {name: value for name, value in merged.items() if value is not None and name in declared}


def execute(notebook, output: Path, parameters: dict, cwd: Path) -> nbformat.NotebookNode:
    """Run ``notebook`` headless as ``lab sweep`` does, with papermill's --log-output logging."""
    return papermill.execute_notebook(
        notebook,
        str(output),
        parameters=parameters,
        engine_name="nbclient",
        kernel_name="python3",  # resolved to sys.executable by CurrentPythonKernelManager
        kernel_manager_class=CurrentPythonKernelManager,
        language="python",
        log_output=True,
        progress_bar=False,
        cwd=str(cwd),
        execution_timeout=600,
    )


@pytest.fixture
def headless(monkeypatch):
    monkeypatch.setenv("LAB_PROGRESS", "text")  # lab.train.progress_bar: plain text, refreshed at most every 10 s


def progress_lines(caplog) -> list[str]:
    pieces = (piece.strip() for record in caplog.records for piece in re.split(r"[\r\n]", record.getMessage()))
    return [piece for piece in pieces if PROGRESS_LINE.search(piece)]


def check_record(record: dict, parameters: dict, prefix: str) -> None:
    seeds = record["seeds"]
    if "seeds" in parameters:
        assert seeds == parameters["seeds"], f"seeds {parameters['seeds']} did not come through: recorded {seeds}"
    if "seed" in parameters:
        assert parameters["seed"] in seeds, f"seed {parameters['seed']} did not come through: recorded {seeds}"
    if "labels_per_class" in parameters:
        assert record["labels_per_class"] == parameters["labels_per_class"]
    for name, values in record["metrics"].items():
        assert len(values) == len(seeds), f"metric {name}: {len(values)} values for seeds {seeds}"
        assert all(math.isfinite(value) for value in values), f"metric {name}: {values}"
    if prefix >= CLASSIFIERS_FROM:
        assert "accuracy" in record["metrics"], f"no accuracy recorded: {sorted(record['metrics'])}"
    for name in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc", "ece"):
        for value in record["metrics"].get(name, []):
            assert 0.0 <= value <= 1.0, f"{name} {value} outside [0, 1]"
    curves = record.get("curves") or {}
    for name, per_step in curves.items():
        if name != "step":
            assert len(per_step) == len(curves["step"])
            assert all(len(values) == len(seeds) for values in per_step)


@pytest.mark.parametrize("prefix", _notebook_ids())
def test_notebook_runs_with_small_parameters(prefix, tmp_path, headless, caplog):
    notebook = notebook_path(prefix)
    parameters = small_parameters(prefix, notebook, tmp_path)
    output = tmp_path / notebook.name
    caplog.set_level(logging.INFO, logger="papermill")
    started = time.monotonic()
    executed = execute(str(notebook), output, parameters, cwd=tmp_path)
    duration = time.monotonic() - started

    errors = [out for cell in executed.cells for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert not errors, errors
    record = lab_record.read(output).to_dict()
    check_record(record, parameters, prefix)

    # --log-output logs every stream message; LAB_PROGRESS=text keeps a progress bar to a few
    # lines (start, one per 10 s, end), where a fast-refreshing bar would log one line per refresh.
    lines = progress_lines(caplog)
    bars = sum(1 for line in lines if BAR_START.search(line))
    assert len(lines) <= 3 * bars + duration / 10 + 2, (
        f"{len(lines)} progress lines logged for {bars} progress bars in {duration:.0f} s:\n" + "\n".join(lines[:40])
    )
    if prefix in ("03", "04"):  # they train: their bars must reach the log as text
        assert bars >= 1, "no text progress bar in the log: LAB_PROGRESS=text did not reach the kernel"

    if prefix == "03":
        assert record["dataset"].endswith("[5,6,7,8,9]")  # the class subset, not the whole dataset
        assert record["method"] == "classes+linear_probe"
        assert all(len(entry["accuracy"]) == len(parameters["seeds"]) for entry in record["comparison"])
        assert {entry["labels_per_class"] for entry in record["comparison"]} == set(parameters["label_budgets"])
        assert len(list((tmp_path / "figures").glob("*.png"))) >= 3
    if prefix == "05":  # each seed's curves as TensorBoard logs in the output folder
        logs = sorted(path.parent.name for path in (tmp_path / "figures").glob("seed_*/*tfevents*"))
        assert logs == [f"seed_{seed}" for seed in parameters["seeds"]]
    if prefix == "07":  # the label curves of the compared strategies and the headline run
        assert (tmp_path / "figures" / "label_curves.png").is_file()
    if prefix == "04":
        assert record["source"] == "computed"  # there is no store at results_db
        assert {entry["setup"] for entry in record["comparison"]} == {"supervised", "semi_supervised", "transfer"}
        assert (tmp_path / "figures" / "accuracy_vs_labels.png").is_file()


def _point(sweep, point_id, setup, method, budget, seeds, accuracy, dataset="digits", status="done"):
    payload = {
        "dataset": dataset,
        "setup": setup,
        "method": method,
        "labels_per_class": budget,
        "seeds": seeds,
        "metrics": {"accuracy": accuracy, "macro_f1": accuracy, "ece": [0.1] * len(seeds)},
    }
    return store.RunRow(
        sweep=sweep,
        point_id=point_id,
        notebook="notebooks/05_experiment.ipynb",
        parameters={"setup": setup, "labels_per_class": budget, "seeds": seeds},
        status=status,
        payload=payload if status == "done" else None,
    )


def test_comparison_reads_the_results_store(tmp_path, headless):
    """Notebook 04 draws from a results store when it holds the sweep: no training, the store's seeds."""
    db = tmp_path / "runs" / "results.db"
    results = store.ResultsStore(db)
    points = []
    for budget, offset in ((1, 0.0), (4, 0.1)):
        points += [
            _point("demo", f"sup{budget}", "supervised", "supervised", budget, [0, 1], [0.5 + offset, 0.6 + offset]),
            _point(
                "demo", f"pl{budget}", "semi_supervised", "pseudo_label", budget, [0, 1], [0.55 + offset, 0.65 + offset]
            ),
            _point("demo", f"fm{budget}", "semi_supervised", "fixmatch", budget, [0, 1], [0.7 + offset, 0.8 + offset]),
            _point("demo", f"tr{budget}", "transfer", "simclr+finetune", budget, [0, 1], [0.6 + offset, 0.7 + offset]),
        ]
    points.append(
        _point("demo", "other-dataset", "transfer", "simclr+finetune", 4, [0, 1], [0.99, 0.99], dataset="mnist1d")
    )
    points.append(_point("demo", "failed", "semi_supervised", "fixmatch", 4, [2], [0.0], status="failed"))
    points.append(_point("other-sweep", "x", "supervised", "supervised", 4, [0, 1], [0.99, 0.99]))
    results.save(*points)

    output = tmp_path / "04.ipynb"
    parameters = {"results_db": str(db), "sweep": "demo", "labels_per_class": 4, "output_dir": str(tmp_path / "figures")}
    execute(str(notebook_path("04")), output, parameters, cwd=tmp_path)
    record = lab_record.read(output).to_dict()
    assert record["source"] == "store" and record["sweep"] == ["demo"]
    assert (record["setup"], record["method"], record["labels_per_class"]) == ("semi_supervised", "fixmatch", 4)
    assert record["seeds"] == [0, 1] and record["metrics"]["accuracy"] == pytest.approx([0.8, 0.9])
    best = {(entry["setup"], entry["configuration"]) for entry in record["comparison"] if entry["best"]}
    assert best == {("supervised", "supervised"), ("semi_supervised", "fixmatch"), ("transfer", "simclr+finetune")}
    assert max(entry["accuracy_mean"] for entry in record["comparison"]) < 0.9  # other dataset, other sweep left out


def test_kernel_python3_is_the_running_interpreter(tmp_path, monkeypatch, stale_jupyter_path):
    """Even where a ``python3`` kernelspec points at another (here: no) Python, as a stale global
    Jupyter install may, or where none is installed (a fresh virtualenv), notebooks run on the
    interpreter and packages of the test run."""
    monkeypatch.setenv("JUPYTER_PATH", str(stale_jupyter_path))
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == "/nonexistent/python"  # what Jupyter would run

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell("import sys\nimport lab\nprint(sys.executable)")]
    executed = execute(notebook, tmp_path / "out.ipynb", {}, cwd=tmp_path)
    assert executed.cells[0].outputs[0]["text"].strip() == sys.executable


@pytest.mark.parametrize("prefix", _notebook_ids())
def test_notebook_defaults_save_figures_where_the_readme_says(prefix):
    # README: "Every notebook writes its figures under runs/notebooks/<NN>/"; 00 once saved none by default.
    parameters = notebook_parameters(notebook_path(prefix))
    assert parameters["output_dir"].default == f"runs/notebooks/{prefix}"
    if "save_figures" in parameters:  # 04 has no switch: it always saves its figure
        assert parameters["save_figures"].default is True
