"""lab.widgets without a browser: set a control's .value, check the plot's Line2D data."""

import matplotlib

matplotlib.use("Agg")

import threading

import ipywidgets
import matplotlib.figure
import numpy as np
import optax
import pytest

import traitlets

from lab import widgets

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def scaled_quadratic(w):
    """½ (w₀² + 4 w₁²): gradient (w₀, 4 w₁)."""
    return 0.5 * (w[0] ** 2 + 4.0 * w[1] ** 2)


def line_xy(line) -> np.ndarray:
    return np.column_stack([np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)])


# --------------------------------------------------------------------------
# optimizer_path
# --------------------------------------------------------------------------


def test_optimizer_path_is_gradient_descent_by_hand():
    # w ← w − η ∇f(w) with ∇f = (w₀, 4 w₁) and η = 0.1, from (1, 1):
    expected = [[1.0, 1.0], [0.9, 0.6], [0.81, 0.36], [0.729, 0.216]]
    path = widgets.optimizer_path(scaled_quadratic, (1.0, 1.0), "sgd", 0.1, 3)
    assert path.shape == (4, 2)
    np.testing.assert_allclose(path, expected, rtol=1e-6)


def test_optimizer_path_momentum_by_hand():
    # Heavy ball in optax's convention: v ← g + μ v, w ← w − η v (μ = 0.9).
    w, v, rows = np.array([1.0, 1.0]), np.zeros(2), [[1.0, 1.0]]
    for _ in range(4):
        grad = np.array([w[0], 4.0 * w[1]])
        v = grad + 0.9 * v
        w = w - 0.1 * v
        rows.append(w.tolist())
    path = widgets.optimizer_path(scaled_quadratic, (1.0, 1.0), "momentum", 0.1, 4)
    np.testing.assert_allclose(path, rows, rtol=1e-5, atol=1e-6)  # float32; w₁ passes through 0


def test_optimizer_path_accepts_an_optax_constructor():
    by_name = widgets.optimizer_path(widgets.quadratic, (-4.5, 1.5), "adam", 0.05, 20)
    by_function = widgets.optimizer_path(widgets.quadratic, (-4.5, 1.5), optax.adam, 0.05, 20)
    np.testing.assert_allclose(by_name, by_function, rtol=1e-6)


def test_optimizer_path_keeps_a_diverging_run():
    # Curvature 16 on w₁: gradient descent is unstable for η > 2/16.
    path = widgets.optimizer_path(widgets.quadratic, (0.0, 1.0), "sgd", 0.2, 3)
    np.testing.assert_allclose(path[:, 1], [1.0, -2.2, 4.84, -10.648], rtol=1e-5)


def test_optimizer_path_zero_steps_and_bad_input():
    np.testing.assert_array_equal(widgets.optimizer_path(scaled_quadratic, (2.0, 3.0), "sgd", 0.1, 0), [[2.0, 3.0]])
    with pytest.raises(ValueError, match="learning_rate"):
        widgets.optimizer_path(scaled_quadratic, (1.0, 1.0), "sgd", -0.1, 3)
    with pytest.raises(ValueError, match="steps"):
        widgets.optimizer_path(scaled_quadratic, (1.0, 1.0), "sgd", 0.1, -1)
    with pytest.raises(ValueError, match="optimizer"):
        widgets.optimizer_path(scaled_quadratic, (1.0, 1.0), "rmsprop-typo", 0.1, 3)
    with pytest.raises(TypeError, match="GradientTransformation"):
        widgets.optimizer_path(scaled_quadratic, (1.0, 1.0), lambda lr: lr, 0.1, 3)


def test_draw_renders_contours_and_path_into_an_axes():
    figure = matplotlib.figure.Figure()
    ax = figure.add_subplot()
    path = widgets.optimizer_path(widgets.quadratic, (-4.5, 1.5), "sgd", 0.1, 10)
    artists = widgets.draw(ax, "quadratic", path)
    np.testing.assert_allclose(line_xy(artists["path"]), path)
    assert ax.get_xlim() == widgets.SURFACES["quadratic"].xlim
    assert ax.get_ylim() == widgets.SURFACES["quadratic"].ylim


# --------------------------------------------------------------------------
# OptimizerPathExplorer
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def path_explorer():
    return widgets.OptimizerPathExplorer(surface="quadratic", optimizer="sgd", learning_rate=0.1, steps=20)


def test_path_explorer_draws_the_default_path(path_explorer):
    expected = widgets.optimizer_path(widgets.quadratic, (-4.5, 1.5), "sgd", 0.1, 20)
    np.testing.assert_allclose(line_xy(path_explorer.path_line), expected)
    assert bytes(path_explorer.image.value).startswith(PNG_MAGIC)


def test_changing_a_control_redraws_the_path(path_explorer):
    before_line = line_xy(path_explorer.path_line)
    before_image = path_explorer.image.value

    path_explorer.controls["learning_rate"].value = 0.05
    after = widgets.optimizer_path(widgets.quadratic, (-4.5, 1.5), "sgd", 0.05, 20)
    np.testing.assert_allclose(line_xy(path_explorer.path_line), after)
    assert not np.allclose(line_xy(path_explorer.path_line), before_line)
    assert path_explorer.image.value != before_image

    path_explorer.controls["optimizer"].value = "adam"
    adam = widgets.optimizer_path(widgets.quadratic, (-4.5, 1.5), "adam", 0.05, 20)
    np.testing.assert_allclose(line_xy(path_explorer.path_line), adam)

    path_explorer.controls["steps"].value = 5
    assert len(path_explorer.path_line.get_xdata()) == 6
    assert path_explorer.status.value.endswith("after 5 steps")


def test_changing_the_surface_redraws_contours_and_start(path_explorer):
    path_explorer.controls["surface"].value = "rosenbrock"
    assert path_explorer.path[0].tolist() == list(widgets.SURFACES["rosenbrock"].start)
    np.testing.assert_allclose(line_xy(path_explorer.path_line), path_explorer.path)
    assert path_explorer.ax.get_xlim() == widgets.SURFACES["rosenbrock"].xlim
    path_explorer.controls["surface"].value = "quadratic"


def test_diverging_run_is_reported():
    explorer = widgets.OptimizerPathExplorer(optimizer="sgd", learning_rate=0.5, steps=200)
    assert explorer.status.value.startswith("diverged")
    assert "diverged" in explorer.ax.get_title()


def test_show_static_displays_one_png(path_explorer, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objects, **_: shown.extend(objects))
    path_explorer.show_static()
    assert len(shown) == 1
    assert bytes(shown[0].data).startswith(PNG_MAGIC)


def test_explorer_ui_holds_the_controls_and_a_short_repr(path_explorer):
    ui = path_explorer.explorer()
    assert isinstance(ui, ipywidgets.VBox)
    children = {id(widget) for box in ui.children for widget in getattr(box, "children", (box,))}
    assert all(id(control) in children for control in path_explorer.controls.values())
    assert id(path_explorer.image) in children
    assert repr(ui).startswith("OptimizerPathExplorer(surface=")
    assert len(repr(ui)) < 200  # not the image bytes
    path_explorer.controls["steps"].value = 7
    assert "steps=7" in repr(ui)  # the repr follows the controls


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="surface"):
        widgets.OptimizerPathExplorer(surface="saddle")
    with pytest.raises(ValueError, match="optimizer"):
        widgets.OptimizerPathExplorer(optimizer="lbfgs")
    with pytest.raises(ValueError, match="learning_rate"):
        widgets.OptimizerPathExplorer(learning_rate=3.0)  # the slider would clamp it to 1
    with pytest.raises(ValueError, match="steps"):
        widgets.OptimizerPathExplorer(steps=10_000)


# --------------------------------------------------------------------------
# ExperimentExplorer
# --------------------------------------------------------------------------


class FakeRun:
    """A run_fn whose curves encode its arguments, counting its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, labels_per_class, method, learning_rate):
        self.calls.append((labels_per_class, method, learning_rate))
        steps = np.arange(0, 100, 10)
        offset = {"supervised": 0.0, "fixmatch": 0.1}[method]
        return {
            "curves": {
                "step": steps.tolist(),
                "train_loss": (2.0 * np.exp(-learning_rate * steps) + offset).tolist(),
                "accuracy": (1.0 - 0.5 / labels_per_class - offset + 0.0 * steps).tolist(),
            }
        }


def make_experiment_explorer(run_fn):
    return widgets.ExperimentExplorer(
        run_fn,
        labels_per_class=[1, 4, 10],
        methods=["supervised", "fixmatch"],
        learning_rate=0.01,
        default_labels_per_class=4,
    )


def expected_curves(labels_per_class, method, learning_rate):
    return FakeRun()(labels_per_class, method, learning_rate)["curves"]


def test_experiment_explorer_draws_the_defaults_once():
    run = FakeRun()
    explorer = make_experiment_explorer(run)
    assert run.calls == [(4, "supervised", 0.01)]
    curves = expected_curves(4, "supervised", 0.01)
    np.testing.assert_allclose(explorer.lines["train_loss"].get_ydata(), curves["train_loss"])
    np.testing.assert_allclose(explorer.lines["accuracy"].get_xdata(), curves["step"])
    assert bytes(explorer.image.value).startswith(PNG_MAGIC)
    assert "final accuracy 0.875" in explorer.status.value


def test_experiment_controls_rerun_and_redraw():
    run = FakeRun()
    explorer = make_experiment_explorer(run)

    explorer.controls["labels_per_class"].value = 10
    assert explorer.wait(timeout=60)
    assert run.calls[-1] == (10, "supervised", 0.01)
    expected = expected_curves(10, "supervised", 0.01)
    np.testing.assert_allclose(explorer.lines["accuracy"].get_ydata(), expected["accuracy"])

    explorer.controls["method"].value = "fixmatch"
    assert explorer.wait(timeout=60)
    assert run.calls[-1] == (10, "fixmatch", 0.01)
    expected = expected_curves(10, "fixmatch", 0.01)
    np.testing.assert_allclose(explorer.lines["train_loss"].get_ydata(), expected["train_loss"])

    explorer.controls["learning_rate"].value = 0.1
    assert explorer.wait(timeout=60)
    assert run.calls[-1] == (10, "fixmatch", 0.1)
    expected = expected_curves(10, "fixmatch", 0.1)
    np.testing.assert_allclose(explorer.lines["train_loss"].get_ydata(), expected["train_loss"])
    # the loss axis follows the new data
    assert explorer.axes["train_loss"].get_ylim()[0] <= min(expected["train_loss"])


def test_experiment_results_are_cached():
    run = FakeRun()
    explorer = make_experiment_explorer(run)
    explorer.controls["labels_per_class"].value = 1
    assert explorer.wait(timeout=60)
    explorer.controls["labels_per_class"].value = 4
    assert explorer.wait(timeout=60)
    assert run.calls == [(4, "supervised", 0.01), (1, "supervised", 0.01)]
    expected = expected_curves(4, "supervised", 0.01)
    np.testing.assert_allclose(explorer.lines["accuracy"].get_ydata(), expected["accuracy"])


def test_failed_run_keeps_the_plot_and_reports():
    run = FakeRun()

    def sometimes_failing(labels_per_class, method, learning_rate):
        if labels_per_class == 1:
            raise RuntimeError("out of memory")
        return run(labels_per_class, method, learning_rate)

    explorer = make_experiment_explorer(sometimes_failing)
    before = explorer.lines["accuracy"].get_ydata().copy()
    explorer.controls["labels_per_class"].value = 1
    assert explorer.wait(timeout=60)
    assert "run failed" in explorer.status.value and "out of memory" in explorer.status.value
    assert "the plot shows supervised, 4 labels/class" in explorer.status.value
    np.testing.assert_allclose(explorer.lines["accuracy"].get_ydata(), before)


def test_default_run_must_work():
    def broken(labels_per_class, method, learning_rate):
        return {"curves": {"step": [0, 1], "train_loss": [1.0], "accuracy": [0.5, 0.6]}}

    with pytest.raises(ValueError, match="one value per step"):
        make_experiment_explorer(broken)
    with pytest.raises(ValueError, match="curves"):
        make_experiment_explorer(lambda *args: {"accuracy": 0.5})


def test_experiment_show_static_and_ui(monkeypatch):
    explorer = make_experiment_explorer(FakeRun())
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objects, **_: shown.extend(objects))
    explorer.show_static()
    assert len(shown) == 1 and bytes(shown[0].data).startswith(PNG_MAGIC)
    ui = explorer.explorer()
    assert repr(ui).startswith("ExperimentExplorer(labels_per_class=4")


# --------------------------------------------------------------------------
# lab.train.progress_bar in a notebook
# --------------------------------------------------------------------------

# A FixMatch history row for two seeds: a loss and an accuracy per pool, plus the test accuracy.
FIXMATCH_ROW = {
    "step": 100,
    "train_loss": [0.51234, 0.6],
    "train_labeled_loss": [0.1, 0.2],
    "train_unlabeled_loss": [0.3, 0.31],
    "train_unlabeled_weight": [1.0, 1.0],
    "train_labeled_accuracy": [1.0, 0.9],
    "train_mask_rate": [0.5, 0.6],
    "train_pseudo_label_accuracy": [0.9, 0.91],
    "test_accuracy": [0.7, 0.7234],
}


def test_progress_postfix_is_short():
    import tqdm

    from lab import train

    bar = tqdm.tqdm(total=300, desc="train", unit="step", disable=True)
    bar.set_postfix(train._postfix(FIXMATCH_ROW), refresh=False)
    # tqdm's notebook widget cannot wrap it (spaces become non-breaking): a long one squeezes the bar to nothing.
    assert len(bar.postfix) <= 40, bar.postfix
    assert bar.postfix == "loss=0.556, test_acc=0.712"


def test_progress_postfix_skips_unmeasured_values():
    from lab import train

    assert train._postfix({"step": 5, "train_loss": 2.0, "test_accuracy": None}) == {"loss": 2.0}


def test_notebook_progress_bar_keeps_its_bar(monkeypatch, capsys):
    import tqdm.notebook

    from lab import train

    monkeypatch.setenv("LAB_PROGRESS", "auto")
    monkeypatch.setattr(train, "tqdm", tqdm.notebook.tqdm)  # what tqdm.auto is inside Jupyter
    bar = train.progress_bar(total=300, desc="train", unit="step")
    try:
        description, progress, text = bar.container.children
        assert isinstance(progress, ipywidgets.FloatProgress)
        # Text that does not fit goes to a second row, and the bar keeps a width of its own.
        assert bar.container.layout.flex_flow == "row wrap"
        assert progress.layout.min_width and progress.layout.min_width != "0"
        assert progress.layout.flex
    finally:
        bar.close()


# --------------------------------------------------------------------------
# Explorer controls and layout (what a browser showed wrong)
# --------------------------------------------------------------------------


def png_width(png: bytes) -> int:
    return int.from_bytes(bytes(png)[16:20], "big")  # the IHDR chunk's width


def test_learning_rate_control_offers_the_default_exactly():
    run = FakeRun()
    explorer = widgets.ExperimentExplorer(
        run, labels_per_class=[1, 4], learning_rate=3e-3, learning_rate_range=(1e-4, 1e-1)
    )
    control = explorer.controls["learning_rate"]
    choices = [value for _, value in control.options]
    assert 3e-3 in choices and control.value == 3e-3
    assert choices == sorted(choices) and choices[0] == 1e-4 and choices[-1] == 1e-1
    assert {1e-3, 1e-2} <= set(choices)
    with pytest.raises(traitlets.TraitError):
        control.value = 3.2e-3  # off the grid: refused, never snapped to and run
    control.value = 1e-2
    assert explorer.wait(timeout=60)
    control.value = 3e-3  # the default can be chosen again
    assert explorer.wait(timeout=60)
    assert run.calls == [(1, "supervised", 3e-3), (1, "supervised", 1e-2)]  # back to the default: cached


def test_an_unchanged_value_starts_no_run():
    run = FakeRun()
    explorer = make_experiment_explorer(run)
    for name, control in explorer.controls.items():
        control.value = control.value
    explorer.request(dict(explorer.values))
    assert explorer.wait(timeout=60)
    assert run.calls == [(4, "supervised", 0.01)]


class BlockingRun(FakeRun):
    """A FakeRun that, once ``block`` is set, waits in each call until ``release`` is set."""

    def __init__(self):
        super().__init__()
        self.block = False
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)
        self.active = self.most_active = 0
        self._lock = threading.Lock()

    def __call__(self, labels_per_class, method, learning_rate):
        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            if self.block:
                self.entered.release()
                self.release.wait()
            return super().__call__(labels_per_class, method, learning_rate)
        finally:
            with self._lock:
                self.active -= 1


def test_explorer_runs_one_at_a_time_and_the_latest_request_wins():
    run = BlockingRun()
    explorer = make_experiment_explorer(run)
    run.block = True
    explorer.controls["labels_per_class"].value = 10
    assert run.entered.acquire(timeout=60)  # the run of 10 labels/class is in progress
    explorer.controls["labels_per_class"].value = 1  # queued ...
    explorer.controls["method"].value = "fixmatch"  # ... and replaced by this one
    assert explorer.status.value.startswith("running supervised, 10 labels/class")
    assert "then fixmatch, 1 labels/class" in explorer.status.value
    assert "the plot shows supervised, 4 labels/class" in explorer.status.value
    run.release.set()
    assert explorer.wait(timeout=60)
    assert run.calls == [(4, "supervised", 0.01), (10, "supervised", 0.01), (1, "fixmatch", 0.01)]
    assert run.most_active == 1
    expected = expected_curves(1, "fixmatch", 0.01)
    np.testing.assert_allclose(explorer.lines["accuracy"].get_ydata(), expected["accuracy"])
    assert explorer.status.value.startswith("fixmatch, 1 labels/class")
    assert explorer.figure._suptitle.get_text().startswith("fixmatch, 1 labels/class")


def test_going_back_to_the_running_values_drops_the_queued_request():
    run = BlockingRun()
    explorer = make_experiment_explorer(run)
    run.block = True
    explorer.controls["labels_per_class"].value = 10
    assert run.entered.acquire(timeout=60)
    explorer.controls["labels_per_class"].value = 1
    explorer.controls["labels_per_class"].value = 10
    run.release.set()
    assert explorer.wait(timeout=60)
    assert run.calls == [(4, "supervised", 0.01), (10, "supervised", 0.01)]
    assert explorer.status.value.startswith("supervised, 10 labels/class")


@pytest.mark.parametrize("make", [lambda: make_experiment_explorer(FakeRun()), lambda: widgets.OptimizerPathExplorer(steps=5)])
def test_explorer_image_has_its_natural_size_and_labels_their_room(make):
    explorer = make()
    width = png_width(explorer.image.value)
    assert width > 100
    assert explorer.image.layout.width == f"{width}px"  # not stretched to the output's width
    assert explorer.image.layout.max_width == "100%"  # but shrunk in a narrow one
    assert explorer.image.layout.height == "auto"  # keeping its aspect ratio
    for control in explorer.controls.values():
        assert control.style.description_width == "initial"  # "learning rate" in full


@pytest.mark.parametrize(
    "make", [lambda: make_experiment_explorer(FakeRun()), lambda: widgets.OptimizerPathExplorer(steps=5)]
)
def test_explorer_controls_wrap_instead_of_shrinking_their_sliders(make):
    # Three controls in a row of a narrow notebook (about 1,000 px with the file browser open) squeezed
    # the sliders to a few pixels: a row wraps instead, and a slider keeps a usable width.
    explorer = make()
    rows = [child for child in explorer.explorer().children if isinstance(child, ipywidgets.HBox)]
    assert {control for row in rows for control in row.children} == set(explorer.controls.values())
    assert all(row.layout.flex_flow == "row wrap" for row in rows)
    sliders = [control for control in explorer.controls.values() if "Slider" in type(control).__name__]
    assert sliders and all(int(slider.layout.min_width.removesuffix("px")) >= 250 for slider in sliders)


@pytest.mark.parametrize("learning_rate", [0.1, 0.05, 0.0123, 1e-4, 1.0])
def test_path_explorer_learning_rate_is_a_point_of_its_slider(learning_rate):
    # The browser moves a log slider in steps from its min: off that grid, a click would change the value.
    slider = widgets.OptimizerPathExplorer(learning_rate=learning_rate, steps=5).controls["learning_rate"]
    assert slider.value == learning_rate
    steps_from_min = (np.log10(learning_rate) - slider.min) / slider.step
    assert abs(steps_from_min - round(steps_from_min)) < 1e-6
    assert np.log10(widgets._LEARNING_RATE_RANGE[0]) - 1e-9 <= slider.min < slider.max <= np.log10(widgets._LEARNING_RATE_RANGE[1]) + 1e-9
    assert slider.max - slider.min > 3.9  # still about four decades


# --------------------------------------------------------------------------
# ActiveExplorer
# --------------------------------------------------------------------------

POOL_LABELS = np.array([0, 0, 1, 1, 2, 2, 0, 1])


class FakeActiveRun:
    """An active run_fn: two seeds, budgets 2 and 4, selections and accuracies that depend on the strategy."""

    def __init__(self):
        self.calls = []

    def __call__(self, strategy, learner):
        self.calls.append((strategy, learner))
        first = {"random": [[0, 6], [1, 2]], "typiclust": [[0, 2], [2, 4]]}[strategy]  # per seed: round 0
        bonus = 0.1 if learner == "fixmatch" else 0.0
        return {
            "budgets": [2, 4],
            "accuracy": [[0.3 + bonus, 0.5 + bonus], [0.6 + bonus, 0.8 + bonus]],
            "selections": [[first[0], [3, 4]], [first[1], [5, 7]]],
        }


def make_active_explorer(run_fn):
    return widgets.ActiveExplorer(
        run_fn, strategies=["random", "typiclust"], learners=["supervised", "fixmatch"], budgets=[2, 4],
        labels=POOL_LABELS, class_names=["zero", "one", "two"],
    )  # fmt: skip


def test_active_explorer_draws_the_label_curve_and_the_classes_picked():
    run = FakeActiveRun()
    explorer = make_active_explorer(run)
    assert run.calls == [("random", "supervised")]
    line = explorer.axes["curve"].lines[0]
    np.testing.assert_allclose(line.get_xdata(), [2, 4])
    np.testing.assert_allclose(line.get_ydata(), [40.0, 70.0])  # the seeds' mean, in %
    # by 2 labels: seed 0 picked two zeros, seed 1 a zero and a one
    np.testing.assert_allclose([bar.get_height() for bar in explorer.axes["classes"].patches], [1.5, 0.5, 0.0])
    assert explorer.status.value == "random, supervised, 2 labels: accuracy 40.0 ± 10.0%"
    assert bytes(explorer.image.value).startswith(PNG_MAGIC)

    explorer.controls["budget"].value = 4  # the same run: no training, the rounds up to 4 labels
    assert explorer.wait(timeout=60)
    assert run.calls == [("random", "supervised")]
    np.testing.assert_allclose(explorer.class_counts("random", "supervised", 4), [1.5, 1.5, 1.0])
    assert explorer.status.value.startswith("random, supervised, 4 labels: accuracy 70.0")

    explorer.controls["learner"].value = "fixmatch"
    explorer.controls["strategy"].value = "typiclust"
    assert explorer.wait(timeout=60)
    assert run.calls[-1] == ("typiclust", "fixmatch")
    np.testing.assert_allclose([bar.get_height() for bar in explorer.axes["classes"].patches], [0.5, 2.0, 1.5])
    assert repr(explorer.explorer()) == "ActiveExplorer(strategy='typiclust', learner='fixmatch', budget=4)"


def test_active_explorer_shows_a_failed_run_in_its_status():
    def run(strategy, learner):
        if strategy == "typiclust":
            raise ValueError("no embeddings")
        return FakeActiveRun()(strategy, learner)

    explorer = make_active_explorer(run)
    explorer.controls["strategy"].value = "typiclust"
    assert explorer.wait(timeout=60)
    assert explorer.status.value == (
        "run failed for typiclust, supervised, 2 labels: ValueError: no embeddings; "
        "the plot shows random, supervised, 2 labels"
    )


def test_active_explorer_marks_the_classes_no_seed_picked():
    explorer = make_active_explorer(FakeActiveRun())  # random by 2 labels: no seed has a "two"
    missed = [line for line in explorer.axes["classes"].lines if line.get_label() == "no label"]
    assert len(missed) == 1 and missed[0].get_xdata().tolist() == [2]
    explorer.controls["budget"].value = 4
    assert explorer.wait(timeout=60)
    assert [line.get_xdata().tolist() for line in explorer.axes["classes"].lines] == [[]]
