"""lab.notebook: what the notebooks share (output paths, figures, memoised runs, curves)."""

import json
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.figure
import numpy as np
import pytest

from lab import notebook

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A project checkout (a folder with a pyproject.toml) holding notebooks/, and no $LAB_ROOT."""
    monkeypatch.delenv(notebook.ROOT_VARIABLE, raising=False)
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'lab'\n")
    return root


def test_relative_paths_resolve_to_the_same_place_from_the_root_and_from_notebooks(checkout, monkeypatch):
    monkeypatch.chdir(checkout)  # papermill, `make notebooks`
    from_root = notebook.project_path("runs/notebooks/01")
    monkeypatch.chdir(checkout / "notebooks")  # JupyterLab, nbval
    from_notebooks = notebook.project_path("runs/notebooks/01")
    assert from_root == from_notebooks == checkout / "runs" / "notebooks" / "01"
    assert notebook.project_root() == checkout


def test_outside_a_checkout_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(notebook.ROOT_VARIABLE, raising=False)
    monkeypatch.chdir(tmp_path)
    if any((folder / "pyproject.toml").is_file() for folder in (tmp_path, *tmp_path.parents)):
        pytest.skip("the temporary folder lies inside a project")
    assert notebook.project_path("runs/x") == tmp_path / "runs" / "x"


def test_a_checkpoint_parameter_is_a_folder_from_the_root_or_a_hub_id(checkout, monkeypatch):
    shared = checkout.parent / "shared" / "checkpoints" / "model"
    shared.mkdir(parents=True)
    (checkout / "models" / "local").mkdir(parents=True)
    monkeypatch.chdir(checkout / "notebooks")  # JupyterLab, nbval: paths still start at the checkout
    assert notebook.checkpoint_source("../shared/checkpoints/model") == str(checkout / ".." / "shared/checkpoints/model")
    assert notebook.checkpoint_source("models/local") == str(checkout / "models" / "local")
    # absent, but spelled as a path: still the root's (so that loading it says it is not there)
    assert notebook.checkpoint_source("../absent/model") == str(checkout / ".." / "absent/model")
    assert notebook.checkpoint_source("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert notebook.checkpoint_source(str(shared)) == str(shared)


def test_the_environment_variable_names_the_root(checkout, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv(notebook.ROOT_VARIABLE, str(elsewhere))
    monkeypatch.chdir(checkout / "notebooks")
    assert notebook.project_path("runs/notebooks/02") == elsewhere / "runs" / "notebooks" / "02"


def test_absolute_paths_stay_as_they_are(checkout, tmp_path, monkeypatch):
    monkeypatch.chdir(checkout / "notebooks")
    assert notebook.project_path(tmp_path / "figures") == tmp_path / "figures"


def small_figure():
    figure = matplotlib.figure.Figure(figsize=(2, 1))
    figure.add_subplot().plot([0, 1], [1, 0])
    return figure


def test_figure_saver_writes_pngs_under_the_root(checkout, monkeypatch):
    monkeypatch.chdir(checkout / "notebooks")
    save = notebook.FigureSaver("runs/notebooks/01")
    path = save(small_figure(), "curves")
    assert path == checkout / "runs" / "notebooks" / "01" / "curves.png"
    assert path.read_bytes().startswith(PNG_MAGIC)
    save(small_figure(), "confusion")
    assert save.saved == ["curves.png", "confusion.png"]


def test_a_disabled_figure_saver_writes_nothing(checkout, monkeypatch):
    monkeypatch.chdir(checkout)
    save = notebook.FigureSaver("runs/notebooks/00", enabled=False)
    assert save(small_figure(), "curves") is None
    assert not (checkout / "runs").exists() and save.saved == []


class Config:
    """The part of lab.experiment.ExperimentConfig that ExperimentRuns uses."""

    def __init__(self, **fields):
        self.fields = fields
        self.method_label = fields.get("method", "supervised")

    def to_dict(self):
        return dict(self.fields)


class FakeExperiment:
    def __init__(self):
        self.calls = []

    def __call__(self, config, progress):
        self.calls.append((config.to_dict(), progress))
        return SimpleNamespace(config=config.to_dict(), wall_time_s={"compile": 1.0, "train": 2.0})


def test_experiment_runs_train_each_configuration_once():
    experiment = FakeExperiment()
    run = notebook.ExperimentRuns(run_fn=experiment)
    first = run(Config(labels_per_class=4, seeds=[0, 1]))
    again = run(Config(seeds=[0, 1], labels_per_class=4))  # an equal configuration, built anew
    other = run(Config(labels_per_class=10, seeds=[0, 1]))
    assert again is first and other is not first
    assert experiment.calls == [({"labels_per_class": 4, "seeds": [0, 1]}, True), ({"labels_per_class": 10, "seeds": [0, 1]}, True)]
    assert [result.config["labels_per_class"] for result in run.results.values()] == [4, 10]


def test_experiment_runs_report_their_time_unless_quiet(capsys):
    experiment = FakeExperiment()
    run = notebook.ExperimentRuns(progress=False, run_fn=experiment, describe=lambda config: f"{config.method_label:>10}")
    run(Config(method="fixmatch"))
    printed = capsys.readouterr().out
    assert printed.startswith("  fixmatch: ") and "(compile 1.0 s, train 2.0 s)" in printed
    run(Config(method="fixmatch"))  # cached: trains and prints nothing
    run(Config(method="pi_model"), quiet=True)
    assert capsys.readouterr().out == ""
    assert [progress for _, progress in experiment.calls] == [False, False]
    progress_run = notebook.ExperimentRuns(run_fn=experiment)
    progress_run(Config(method="mean_teacher"), quiet=True)  # e.g. from an explorer's control
    assert experiment.calls[-1][1] is False


def result_with(curves):
    return SimpleNamespace(curves=json.loads(json.dumps(curves)))  # as read from JSON: lists, None


def test_per_step_is_evaluations_by_seeds_with_nan_where_unmeasured():
    result = result_with({"step": [10, 20, 30], "test_accuracy": [[0.1, 0.3], [None, 0.5], [0.7, 0.9]]})
    values = notebook.per_step(result, "test_accuracy")
    assert values.shape == (3, 2)
    assert np.isnan(values[1, 0]) and values[2, 1] == 0.9
    one_seed = result_with({"step": [10, 20], "train_loss": [2.0, 1.0]})
    assert notebook.per_step(one_seed, "train_loss").shape == (2, 1)


def test_seed_mean_ignores_nan_and_keeps_nan_where_no_seed_has_a_value():
    means = notebook.seed_mean(np.array([[0.1, 0.3], [np.nan, 0.5], [np.nan, np.nan]]))
    np.testing.assert_allclose(means[:2], [0.2, 0.5])
    assert np.isnan(means[2])


def test_explorer_curves_are_seed_means_of_loss_and_test_accuracy():
    result = result_with({
        "step": [10, 20],
        "train_loss": [[2.0, 4.0], [1.0, 3.0]],
        "test_accuracy": [[0.5, 0.7], [None, 0.9]],
    })
    curves = notebook.explorer_curves(result)["curves"]
    assert curves["step"] == [10, 20]
    np.testing.assert_allclose(curves["train_loss"], [3.0, 2.0])
    np.testing.assert_allclose(curves["accuracy"], [0.6, 0.9])


def test_list_parameter_reads_lists_passed_as_text():
    assert notebook.list_parameter("seeds", "[0, 1]") == [0, 1]  # papermill -p seeds "[0, 1]"
    assert notebook.list_parameter("seeds", (0, 1)) == [0, 1]
    assert notebook.list_parameter("models", ["mlp"]) == ["mlp"]
    assert notebook.list_parameter("models", "[]", empty_ok=True) == []


@pytest.mark.parametrize("value", ["mlp", "[mlp", 3, "[]", []])
def test_list_parameter_rejects_what_is_no_list_and_empty_lists(value):
    with pytest.raises(ValueError, match=r'^models must be a non-empty list such as \["mlp"\], got '):
        notebook.list_parameter("models", value, '["mlp"]')


def test_explorer_runs_run_the_chosen_method_at_the_chosen_budget_and_rate_quietly():
    from lab import experiment

    headline = experiment.ExperimentConfig.from_dict({"setup": "semi_supervised", "method": "fixmatch", "steps": 20})
    calls = []

    def fake_run(config, progress):
        calls.append((config, progress))
        return result_with({"step": [20], "train_loss": [[1.0]], "test_accuracy": [[0.5]]})

    run_fn = notebook.explorer_runs(notebook.ExperimentRuns(run_fn=fake_run), headline.run_by)
    assert run_fn(10, "supervised", 0.01)["curves"]["accuracy"].tolist() == [0.5]
    run_fn(10, "supervised", 0.01)  # memoised: trains once
    ((config, progress),) = calls
    assert progress is False
    assert (config.setup, config.method, config.labels_per_class, config.learning_rate) == ("supervised", "supervised", 10, 0.01)
    assert config.steps == 20


def test_missing_data_stops_a_notebook_with_its_one_line_message(tmp_path):
    # What papermill (and so lab sweep, nbval, a Run All) sees: the cell fails with the message, in
    # one line instead of a 25-line traceback through lab's loaders, and no later cell runs.
    import nbformat
    import papermill

    from lab.sweep import CurrentPythonKernelManager

    message = "fortunes_topics: fortune files not found; looked in /nowhere. Install them (apt-get install fortunes)"
    cells = [
        "from lab.notebook import stop_on_missing_data\nstop_on_missing_data()",
        f"from lab.dataset import DataNotFoundError\n\ndef load():\n    raise DataNotFoundError({message!r})\n\nload()",
        "print('after')",
    ]
    source = tmp_path / "missing.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell) for cell in cells]), source)
    with pytest.raises(papermill.PapermillExecutionError) as failure:
        papermill.execute_notebook(
            str(source), str(tmp_path / "out.ipynb"), kernel_name="python3", language="python",
            kernel_manager_class=CurrentPythonKernelManager, progress_bar=False, cwd=str(tmp_path),
        )  # fmt: skip
    assert (failure.value.ename, failure.value.evalue) == ("DataNotFoundError", message)
    executed = {cell.source: cell for cell in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells}
    errors = [output for output in executed[cells[1]].outputs if output.output_type == "error"]
    assert [error.traceback for error in errors] == [[f"DataNotFoundError: {message}"]]
    assert executed[cells[2]].outputs == []  # not run


def test_stop_on_missing_data_outside_ipython_does_nothing():
    notebook.stop_on_missing_data()  # a plain Python script keeps Python's own traceback
