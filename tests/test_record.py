"""Records (lab.record): emitted in a notebook, read back and merged, checked against the schema."""

import json

import nbformat
import numpy as np
import papermill
import pytest

from lab import record
from lab.record import Record


def make_payload(method="fixmatch", labels=4, seeds=(0, 1), accuracy=(0.8, 0.9), **extra):
    return {
        "dataset": "digits",
        "setup": "semi_supervised",
        "method": method,
        "labels_per_class": labels,
        "seeds": list(seeds),
        "metrics": {"accuracy": list(accuracy), "macro_f1": [a - 0.1 for a in accuracy], "ece": [0.05] * len(seeds)},
        **extra,
    }


def test_record_round_trip_through_an_executed_notebook(tmp_path):
    """Two record() calls in a real kernel (one per seed, NumPy values) read back as one merged record."""
    from lab.sweep import CurrentPythonKernelManager  # runs the kernel on this interpreter, with this lab importable

    first = "seeds=[0], accuracy=np.array([0.75]), curve=[[0.5], [0.75]], wall=1.0"
    second = "seeds=[3], accuracy=[np.float32(0.5)], curve=[[0.25], [0.5]], wall=2.0"
    cells = [nbformat.v4.new_code_cell("import numpy as np\nimport lab.record")]
    for arguments in (first, second):
        cells.append(
            nbformat.v4.new_code_cell(
                f"def report({arguments}):\n"
                "    lab.record.emit({'dataset': 'digits', 'setup': 'supervised', 'method': 'erm',\n"
                "                    'labels_per_class': 2, 'seeds': seeds, 'metrics': {'accuracy': accuracy},\n"
                "                    'curves': {'step': [0, 100], 'accuracy': curve},\n"
                "                    'wall_time_s': {'train': wall}})\n"
                "report()"
            )
        )
    notebook = nbformat.v4.new_notebook(
        cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}
    )
    source, executed = tmp_path / "two_records.ipynb", tmp_path / "two_records.out.ipynb"
    nbformat.write(notebook, source)
    papermill.execute_notebook(
        source, executed, kernel_name="python3", progress_bar=False, kernel_manager_class=CurrentPythonKernelManager
    )

    outputs = [output for cell in nbformat.read(executed, as_version=4).cells for output in cell.get("outputs", [])]
    assert all("lab record: digits / supervised / erm" in output["data"]["text/plain"] for output in outputs)
    merged = record.read(executed)
    assert merged.seeds == [0, 3]
    assert merged.metrics["accuracy"] == [0.75, 0.5]
    assert merged.curves == {"step": [0, 100], "accuracy": [[0.5, 0.25], [0.75, 0.5]]}
    assert merged.wall_time_s == {"train": 3.0}


def _notebook_with_records(*payloads):
    outputs = [
        nbformat.v4.new_output("display_data", data={record.MIME_TYPE: payload, "text/plain": "record"})
        for payload in payloads
    ]
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("", outputs=outputs)])


def test_reading_names_the_notebook_without_a_record(tmp_path):
    path = tmp_path / "silent.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), path)
    with pytest.raises(record.RecordNotFoundError, match=r"silent\.ipynb holds no lab record"):
        record.read(path)


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (make_payload(method="mixmatch", seeds=[5], accuracy=[0.1]), "method is 'fixmatch' in one and 'mixmatch'"),
        (make_payload(seeds=[1, 2], accuracy=[0.1, 0.2]), r"records seeds \[1\] more than once"),
    ],
)
def test_records_that_cannot_be_merged_are_refused(second, message):
    with pytest.raises(ValueError, match=message):
        record.from_notebook(_notebook_with_records(make_payload(), second), "nb.ipynb")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("metrics"), "missing 'metrics'"),
        (lambda p: p["metrics"].update(accuracy=[0.5]), r"'metrics.accuracy' has 1 values but 'seeds' has 2"),
        (lambda p: p.update(labels_per_class=0), "'labels_per_class' must be a positive integer, got 0"),
        (lambda p: p.update(seeds=[1, 1]), "lists a seed more than once"),
        (lambda p: p.update(curves={"step": [0], "accuracy": [[0.1]]}), r"'curves.accuracy\[0\]' has 1 values"),
        (lambda p: p.update(notes={1, 2}), "'record.notes' is a set, which is not JSON"),
    ],
)
def test_invalid_payloads_are_refused_with_the_reason(change, message):
    payload = make_payload()
    change(payload)
    with pytest.raises(ValueError, match=message):
        record.emit(payload)


def test_payload_numbers_from_numpy_become_plain_json():
    checked = Record.from_dict(make_payload(accuracy=np.array([0.25, 0.5], dtype=np.float32), seeds=np.arange(2)))
    assert checked.metrics["accuracy"] == [0.25, 0.5]
    assert checked.seeds == [0, 1] and all(type(seed) is int for seed in checked.seeds)
    json.dumps(checked.to_dict())


def make_active_payload(seeds=(0, 1), strategy="margin"):
    per_seed = [[0.5 + 0.1 * s for s in seeds], [0.7 + 0.1 * s for s in seeds]]
    return {
        "dataset": "digits", "setup": "supervised", "method": "supervised", "labels_per_class": None,
        "seeds": list(seeds), "metrics": {"accuracy": per_seed[-1]},
        "active": {
            "strategy": strategy, "cold_start": "random", "embeddings": "auto", "learner": {"model": "logreg"},
            "initial": [], "budgets": [2, 3], "curve": {"accuracy": per_seed},
            "selections": [[[10 * s, 10 * s + 1], [10 * s + 2]] for s in seeds],
        },
    }  # fmt: skip


def test_active_record_reads_back_and_merges_its_seeds():
    first, second = Record.from_dict(make_active_payload([0])), Record.from_dict(make_active_payload([3]))
    assert Record.from_dict(json.loads(json.dumps(first.to_dict()))) == first
    assert first.labels_per_class is None and first.active["budgets"] == [2, 3]
    assert "active: random, then margin, budgets [2, 3]" in first.summary_line()
    merged = record.from_notebook(_notebook_with_records(first.to_dict(), second.to_dict()), "nb.ipynb")
    assert merged == Record.from_dict(make_active_payload([0, 3]))
    with pytest.raises(ValueError, match="different active-learning runs"):
        record.merge(first, Record.from_dict(make_active_payload([3], strategy="entropy")), "nb.ipynb")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.update(labels_per_class=2), "its 'labels_per_class' must be null, got 2"),
        (lambda p: p["active"].pop("selections"), "'active' lacks selections; it must hold strategy, cold_start"),
        (lambda p: p["active"].update(strategy=""), "'active.strategy' must be a non-empty string"),
        (lambda p: p["active"].update(budgets=[3, 2]), r"'active.budgets' must be increasing positive integers"),
        (lambda p: p["active"]["curve"].update(accuracy=[[0.5, 0.6]]), "one list per budget"),
        (lambda p: p["active"]["curve"]["accuracy"][0].pop(), r"'active.curve.accuracy\[0\]' has 1 values"),
        (lambda p: p["active"]["selections"].pop(), r"per seed \(2\), one list of pool indices per round \(2\)"),
        (lambda p: p["active"]["selections"][0][1].append(0.5), "one list of pool indices per round"),
    ],
)
def test_invalid_active_records_are_refused_in_one_line(change, message):
    payload = make_active_payload()
    change(payload)
    with pytest.raises(ValueError, match=message) as error:
        Record.from_dict(payload)
    assert "\n" not in str(error.value)
