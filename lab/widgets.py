"""Interactive explorers for the teaching notebooks, with a static fallback.

Three explorers, built the same way:

* :class:`OptimizerPathExplorer` (notebook 00): the path an optimizer takes on a
  2-D loss surface, for a chosen optimizer, learning rate and number of steps.
  The computation is the pure function :func:`optimizer_path`.
* :class:`ExperimentExplorer` (notebooks 01-03): the loss and accuracy curves of
  a training run, for a chosen label budget, method and learning rate. It calls a
  ``run_fn`` the notebook passes in, so this module does not depend on
  :mod:`lab.experiment`.
* :class:`ActiveExplorer` (notebook 07): the label curve of an active-learning run and
  the classes it picked, for a chosen strategy, learner and label budget, from a
  ``run_fn`` the notebook passes in (so no dependency on :mod:`lab.active` either).

Each explorer draws its figure once, for its default values, when it is built.
``show_static()`` displays that figure as a PNG image, which is all a notebook run
without a widget front end (papermill, nbval, a static HTML export) can show.
``explorer()`` returns the ipywidgets UI: its controls, plus an image of the same
figure (at its natural size) that is re-drawn only when a control changes. The
experiment and active explorers train in a background thread, one run at a time: a change made
during a run waits for it, and only the latest such change runs. Both figures are
``matplotlib.figure.Figure`` objects unknown to ``pyplot``, so the inline backend
never displays them a second time on its own, and the callbacks work without a
browser (the tests set ``control.value``, wait for the run, and read the ``Line2D``
data).
"""

from __future__ import annotations

import dataclasses
import io
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets
import jax
import jax.numpy as jnp
import matplotlib.colors
import matplotlib.figure
import numpy as np
import optax

__all__ = [
    "OPTIMIZERS",
    "ActiveExplorer",
    "SURFACES",
    "ExperimentExplorer",
    "OptimizerPathExplorer",
    "Surface",
    "draw",
    "optimizer_path",
    "quadratic",
    "rosenbrock",
]

#: Optimizer names the path explorer offers; each is built by ``lab.optim.make_optimizer``.
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")

_DPI = 80
_LEARNING_RATE_RANGE = (1e-4, 1.0)  # the path explorer's slider
_MAX_STEPS = 500
# Control labels such as "learning rate" are wider than ipywidgets' default label column.
_STYLE = {"description_width": "initial"}
# A slider's least width, label included: in a flex row (an HBox) a slider would otherwise shrink to a few
# pixels in a narrow notebook; with it, the row wraps (see _controls_row).
_SLIDER_LAYOUT = {"min_width": "280px"}


# --------------------------------------------------------------------------
# Loss surfaces
# --------------------------------------------------------------------------


def quadratic(w: jax.Array) -> jax.Array:
    """Ill-conditioned quadratic ½ (w₀² + 16 w₁²): curvatures 1 and 16, condition number 16.

    Gradient descent is stable for learning rates below 2/16 = 0.125 and, at 0.1,
    zig-zags across the narrow w₁ direction while it creeps along w₀.
    """
    return 0.5 * (w[0] ** 2 + 16.0 * w[1] ** 2)


def rosenbrock(w: jax.Array) -> jax.Array:
    """Rosenbrock's banana (1 − w₀)² + 100 (w₁ − w₀²)², minimum 0 at (1, 1).

    Its curved, flat-bottomed valley makes plain gradient descent slow: steps
    that are stable across the valley (learning rate ~1e-3) crawl along it.
    """
    return (1.0 - w[0]) ** 2 + 100.0 * (w[1] - w[0] ** 2) ** 2


@dataclasses.dataclass(frozen=True)
class Surface:
    """A 2-D loss surface with a view window for plotting."""

    loss_fn: Callable[[jax.Array], jax.Array]
    start: tuple[float, float]
    minimum: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    title: str


SURFACES: dict[str, Surface] = {
    "quadratic": Surface(
        quadratic,
        start=(-4.5, 1.5),
        minimum=(0.0, 0.0),
        xlim=(-5.0, 5.0),
        ylim=(-2.0, 2.0),
        title=r"$\frac{1}{2}(w_0^2 + 16\,w_1^2)$",
    ),
    "rosenbrock": Surface(
        rosenbrock,
        start=(-1.5, 2.0),
        minimum=(1.0, 1.0),
        xlim=(-2.0, 2.0),
        ylim=(-1.0, 3.0),
        title=r"$(1 - w_0)^2 + 100\,(w_1 - w_0^2)^2$",
    ),
}


# --------------------------------------------------------------------------
# Optimizer paths
# --------------------------------------------------------------------------


def _transformation(
    optimizer: str | Callable[[float], optax.GradientTransformation], learning_rate: float
) -> optax.GradientTransformation:
    if isinstance(optimizer, str):
        from lab import optim  # imported late: only the explorer needs it

        return optim.make_optimizer(optimizer, learning_rate)
    if callable(optimizer):
        tx = optimizer(learning_rate)
        if not isinstance(tx, optax.GradientTransformation):
            raise TypeError(
                "optimizer must be a name or a function learning_rate -> "
                f"optax.GradientTransformation, got a function returning {type(tx).__name__}."
            )
        return tx
    raise TypeError(f"optimizer must be a name such as {OPTIMIZERS} or a callable, got {optimizer!r}.")


def optimizer_path(
    loss_fn: Callable[[jax.Array], jax.Array],
    start: Sequence[float],
    optimizer: str | Callable[[float], optax.GradientTransformation],
    learning_rate: float,
    steps: int,
) -> np.ndarray:
    """The iterates of ``optimizer`` minimising ``loss_fn`` from ``start``.

    ``optimizer`` is a name understood by ``lab.optim.make_optimizer`` (e.g.
    ``"sgd"``, ``"momentum"``, ``"adam"``) or a function ``learning_rate ->
    optax.GradientTransformation`` such as ``optax.sgd``. Gradients come from
    ``jax.grad(loss_fn)``; the computation is float32, as in training.

    Returns a float array of shape ``(steps + 1, *start.shape)``: row 0 is
    ``start``, row t the parameters after t updates. A diverging run is returned
    as it is, with inf or nan in its later rows.
    """
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}.")
    tx = _transformation(optimizer, float(learning_rate))
    params = jnp.asarray(start, dtype=jnp.float32)
    grad_fn = jax.grad(loss_fn)

    def update(carry, _):
        w, state = carry
        updates, state = tx.update(grad_fn(w), state, w)
        w = optax.apply_updates(w, updates)
        return (w, state), w

    _, iterates = jax.lax.scan(update, (params, tx.init(params)), length=steps)
    return np.concatenate([np.asarray(params)[None], np.asarray(iterates)])


def _loss_grid(surface: Surface, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = np.linspace(*surface.xlim, resolution)
    ys = np.linspace(*surface.ylim, resolution)
    grid_x, grid_y = np.meshgrid(xs, ys)
    points = jnp.asarray(np.stack([grid_x.ravel(), grid_y.ravel()], axis=1), dtype=jnp.float32)
    values = np.asarray(jax.vmap(surface.loss_fn)(points)).reshape(grid_x.shape)
    return grid_x, grid_y, values


def _path_summary(path: np.ndarray, losses: np.ndarray) -> str:
    steps = len(path) - 1
    if not np.all(np.isfinite(path)):
        first_bad = int(np.argmax(~np.all(np.isfinite(path), axis=1)))
        return f"diverged: non-finite parameters at step {first_bad}"
    return f"loss {losses[-1]:.3g} after {steps} steps"


def draw(
    ax: Any,
    surface: Surface | str,
    path: np.ndarray,
    *,
    label: str = "",
    resolution: int = 120,
) -> dict[str, Any]:
    """Draw ``surface`` as log-spaced contours with ``path`` on top, into the Axes ``ax``.

    The view stays on the surface's window, so a diverging path runs off the
    plot instead of rescaling it. Returns the artists a caller updates later:
    ``{"contour", "path", "start", "minimum"}`` (``"path"`` is a ``Line2D``).
    """
    if isinstance(surface, str):
        surface = SURFACES[surface]
    grid_x, grid_y, values = _loss_grid(surface, resolution)
    # Log-spaced levels over four decades below the window's maximum; lower values
    # take the lowest colour (extend="min") instead of being left blank.
    high = float(values.max())
    low = max(float(values.min()), 1e-4 * high, 1e-12)
    levels = np.geomspace(low, high, 20)
    ax.clear()
    contour = ax.contourf(
        grid_x,
        grid_y,
        values,
        levels=levels,
        norm=matplotlib.colors.LogNorm(),
        cmap="viridis",
        alpha=0.85,
        extend="min",
    )
    (minimum,) = ax.plot(
        *surface.minimum,
        marker="*",
        markersize=14,
        color="white",
        markeredgecolor="black",
        linestyle="none",
        label="minimum",
    )
    (start,) = ax.plot(*path[0], marker="o", color="tab:red", linestyle="none", label="start")
    (line,) = ax.plot(
        path[:, 0], path[:, 1], marker=".", markersize=4, linewidth=1.2, color="tab:red", label=label or "path"
    )
    ax.set_xlim(*surface.xlim)
    ax.set_ylim(*surface.ylim)
    ax.set_xlabel(r"$w_0$")
    ax.set_ylabel(r"$w_1$")
    ax.legend(loc="upper right", fontsize="small")
    return {"contour": contour, "path": line, "start": start, "minimum": minimum}


def _png(figure: matplotlib.figure.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    return buffer.getvalue()


def _log_grid_through(value: float, bounds: tuple[float, float], step: float) -> dict[str, float]:
    """``min``, ``max`` and ``step`` of a FloatLogSlider within ``bounds`` whose grid holds ``value``."""
    exponent = math.log10(value)
    below = math.floor((exponent - math.log10(bounds[0])) / step + 1e-9)
    above = math.floor((math.log10(bounds[1]) - exponent) / step + 1e-9)
    return {"min": exponent - below * step, "max": exponent + above * step, "step": step}


def _set_png(image: ipywidgets.Image, png: bytes) -> None:
    """Show ``png`` in ``image`` at its natural size; a VBox would stretch it to the output's width."""
    width = int.from_bytes(png[16:20], "big")  # the IHDR chunk
    image.layout.width, image.layout.max_width, image.layout.height = f"{width}px", "100%", "auto"
    image.value = png


def _display_png(png: bytes) -> None:
    from IPython.display import Image, display

    display(Image(data=png, format="png"))


def _controls_row(controls: list[ipywidgets.Widget]) -> ipywidgets.HBox:
    """Controls side by side, wrapping onto the next line where the notebook is too narrow for them all."""
    return ipywidgets.HBox(controls, layout=ipywidgets.Layout(flex_flow="row wrap"))


class _ExplorerBox(ipywidgets.VBox):
    """A VBox whose text repr describes its explorer instead of listing the PNG bytes of its image."""

    def __init__(self, children: list, describe: Callable[[], str]) -> None:
        super().__init__(children)
        self._describe = describe

    def __repr__(self) -> str:
        return self._describe()


class _Explorer:
    """What both explorers share: controls whose changes re-draw a figure shown as a PNG."""

    controls: dict[str, ipywidgets.Widget]
    image: ipywidgets.Image

    def _watch_controls(self) -> None:
        for control in self.controls.values():
            control.observe(self._on_change, names="value")

    @property
    def values(self) -> dict[str, Any]:
        """The controls' current values."""
        return {name: control.value for name, control in self.controls.items()}

    def _on_change(self, _change: Mapping[str, Any]) -> None:
        self.redraw()

    def show_static(self) -> None:
        """Display the figure for the current values as a PNG (works without widgets)."""
        _display_png(bytes(self.image.value))


class OptimizerPathExplorer(_Explorer):
    """Watch an optimizer's path on a 2-D loss surface.

    >>> explorer = OptimizerPathExplorer(optimizer="momentum", learning_rate=0.05)
    >>> explorer.show_static()      # the figure for these values, as a PNG
    >>> explorer.explorer()         # the interactive version (needs a widget front end)

    The controls are in ``explorer.controls`` (``"surface"``, ``"optimizer"``,
    ``"learning_rate"``, ``"steps"``); setting a control's ``.value`` recomputes
    ``explorer.path`` and re-draws the figure ``explorer.figure``.
    """

    def __init__(
        self,
        surface: str = "quadratic",
        optimizer: str = "sgd",
        learning_rate: float = 0.1,
        steps: int = 50,
        *,
        optimizers: Sequence[str] = OPTIMIZERS,
        surfaces: Mapping[str, Surface] | None = None,
    ) -> None:
        self.surfaces = dict(SURFACES if surfaces is None else surfaces)
        if surface not in self.surfaces:
            raise ValueError(f"unknown surface {surface!r}; choose from {sorted(self.surfaces)}.")
        if optimizer not in optimizers:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose from {list(optimizers)}.")
        # The sliders would silently clamp values outside their range.
        if not _LEARNING_RATE_RANGE[0] <= learning_rate <= _LEARNING_RATE_RANGE[1]:
            raise ValueError(f"learning_rate must lie in {_LEARNING_RATE_RANGE}, got {learning_rate!r}.")
        if not 1 <= steps <= _MAX_STEPS:
            raise ValueError(f"steps must lie in [1, {_MAX_STEPS}], got {steps!r}.")
        self.figure = matplotlib.figure.Figure(figsize=(6.4, 4.4), layout="constrained")
        self.ax = self.figure.add_subplot()
        self.controls = {
            "surface": ipywidgets.Dropdown(
                options=list(self.surfaces), value=surface, description="surface", style=_STYLE
            ),
            "optimizer": ipywidgets.Dropdown(
                options=list(optimizers), value=optimizer, description="optimizer", style=_STYLE
            ),
            "learning_rate": ipywidgets.FloatLogSlider(
                value=learning_rate,
                base=10,
                # The browser moves the slider in steps from its min: a grid through the
                # given value keeps it, where a click would otherwise snap it to a neighbour.
                **_log_grid_through(learning_rate, _LEARNING_RATE_RANGE, step=0.05),
                description="learning rate",
                readout_format=".2g",
                continuous_update=False,
                style=_STYLE,
                layout=_SLIDER_LAYOUT,
            ),
            "steps": ipywidgets.IntSlider(
                value=steps,
                min=1,
                max=_MAX_STEPS,
                description="steps",
                continuous_update=False,
                style=_STYLE,
                layout=_SLIDER_LAYOUT,
            ),
        }
        self.image = ipywidgets.Image(format="png")
        self.status = ipywidgets.Label()
        self._drawn_surface: str | None = None
        self._artists: dict[str, Any] = {}
        self.path = np.empty((0, 2))
        self.redraw()
        self._watch_controls()

    def redraw(self) -> None:
        """Recompute the path for the current values and update the figure and its image."""
        values = self.values
        surface = self.surfaces[values["surface"]]
        self.path = optimizer_path(
            surface.loss_fn, surface.start, values["optimizer"], values["learning_rate"], values["steps"]
        )
        label = f"{values['optimizer']}, lr={values['learning_rate']:.2g}"
        if values["surface"] != self._drawn_surface:
            self._artists = draw(self.ax, surface, self.path, label=label)
            self._drawn_surface = values["surface"]
        else:  # same surface: keep the contours, move the path
            self._artists["path"].set_data(self.path[:, 0], self.path[:, 1])
            self._artists["path"].set_label(label)
            self._artists["start"].set_data([self.path[0, 0]], [self.path[0, 1]])
            self.ax.legend(loc="upper right", fontsize="small")
        losses = np.asarray(jax.vmap(surface.loss_fn)(jnp.asarray(self.path)))
        summary = _path_summary(self.path, losses)
        self.ax.set_title(f"{surface.title}: {label}\n{summary}", fontsize="medium")
        self.status.value = summary
        _set_png(self.image, _png(self.figure))

    @property
    def path_line(self):
        """The ``Line2D`` that shows the path."""
        return self._artists["path"]

    def explorer(self):
        """The ipywidgets UI: the controls above the figure, re-drawn on every change."""
        return _ExplorerBox(
            [
                _controls_row([self.controls["surface"], self.controls["optimizer"]]),
                _controls_row([self.controls["learning_rate"], self.controls["steps"]]),
                self.image,
                self.status,
            ],
            self._describe,
        )

    def _describe(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in self.values.items())
        return f"OptimizerPathExplorer({values})"


# --------------------------------------------------------------------------
# Experiment explorer
# --------------------------------------------------------------------------

RunFn = Callable[[int, str, float], Mapping[str, Any]]
_CURVES = ("step", "train_loss", "accuracy")


def _curves(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The step, train_loss and accuracy curves of a run_fn result, checked."""
    if not isinstance(result, Mapping) or not isinstance(result.get("curves"), Mapping):
        raise ValueError(
            "run_fn must return a dict with a 'curves' dict, got "
            f"{type(result).__name__} {list(result) if isinstance(result, Mapping) else ''}"
        )
    curves = result["curves"]
    missing = [name for name in _CURVES if name not in curves]
    if missing:
        raise ValueError(f"run_fn's 'curves' lacks {missing}; it needs {list(_CURVES)}.")
    arrays = {name: np.asarray(curves[name], dtype=float).ravel() for name in _CURVES}
    lengths = {name: len(values) for name, values in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"run_fn's curves must have one value per step, got lengths {lengths}; "
            "use nan where a curve was not measured at a step."
        )
    return arrays


def _learning_rates(low: float, high: float, default: float) -> list[float]:
    """The learning rates a slider offers: 1 and 3 times each power of ten in [low, high], the ends, and the default.

    The values are exact decimal floats (``3e-3`` itself), so choosing one reproduces a
    configuration, and the default is always among them.
    """
    exponents = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    grid = {float(f"{mantissa}e{exponent}") for exponent in exponents for mantissa in (1, 3)}
    return sorted({value for value in grid if low <= value <= high} | {low, high, default})


def _describe_run(values: Mapping[str, Any]) -> str:
    return f"{values['method']}, {values['labels_per_class']} labels/class, lr={values['learning_rate']:.1e}"


class _BackgroundExplorer(_Explorer):
    """An explorer whose figure comes from runs that take a while: one run at a time in a background thread,
    a change made during a run waits for it (replacing any change already waiting), and :meth:`wait` blocks
    until all are done. Subclasses set ``controls``, ``image``, ``status`` and call :meth:`_start`; they
    define ``_show(values)`` (run or fetch, draw, return the status line) and ``_describe_values(values)``."""

    def _start(self) -> None:
        # Guards what the worker thread and the control observers share: the run in
        # progress, the request waiting for it, the status line.
        self._lock = threading.Condition()
        self._shown: dict[str, Any] = {}  # the values of the run the plot shows
        self._running: dict[str, Any] | None = None
        self._waiting: dict[str, Any] | None = None
        self._outcome = self._show_values(self.values)  # the default values must work: fail loudly here
        self.status.value = self._outcome
        self._watch_controls()

    def _show_values(self, values: Mapping[str, Any]) -> str:
        outcome = self._show(values)
        self._shown = dict(values)
        return outcome

    def _on_change(self, _change: Mapping[str, Any]) -> None:
        self.request(self.values)

    def request(self, values: Mapping[str, Any]) -> None:
        """Show the run of ``values`` (a dict like :attr:`values`): now, or after the run in progress.

        A request for what is shown, or for the run in progress, changes nothing
        (and drops the request waiting, if any); a new request replaces the waiting one.
        """
        values = dict(values)
        with self._lock:
            if self._running is not None:
                self._waiting = None if values == self._running else values
                self._update_status()
                return
            if values == self._shown:
                return
            self._running = values
            self._update_status()
        threading.Thread(target=self._work, args=(values,), name=type(self).__name__, daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no run is in progress or waiting; False if ``timeout`` seconds passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: self._running is None, timeout)

    def _work(self, values: dict[str, Any] | None) -> None:
        """The worker thread: run ``values``, then each request that arrived meanwhile, until none waits."""
        while values is not None:
            try:
                outcome = self._show_values(values)
            except Exception as error:  # shown in the UI; the previous plot stays
                outcome = (
                    f"run failed for {self._describe_values(values)}: {type(error).__name__}: {error}; "
                    f"the plot shows {self._describe_values(self._shown)}"
                )
            with self._lock:
                self._outcome = outcome
                values, self._waiting = self._waiting, None
                self._running = values
                self._update_status()
                self._lock.notify_all()

    def _update_status(self) -> None:
        """Set the status line from the run in progress and the one waiting (call with the lock held)."""
        if self._running is None:
            self.status.value = self._outcome
            return
        line = f"running {self._describe_values(self._running)} ..."
        if self._waiting is not None:
            line += f", then {self._describe_values(self._waiting)}"
        self.status.value = f"{line}; the plot shows {self._describe_values(self._shown)}"

    def explorer(self):
        """The ipywidgets UI: the controls above the figure, re-drawn on every change."""
        return _ExplorerBox([_controls_row(list(self.controls.values())), self.image, self.status], self._describe)

    def _describe(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in self.values.items())
        return f"{type(self).__name__}({values})"


class ExperimentExplorer(_BackgroundExplorer):
    """Explore a training run's curves by label budget, method and learning rate.

    ``run_fn(labels_per_class, method, learning_rate)`` trains and returns a dict
    with ``"curves": {"step": [...], "train_loss": [...], "accuracy": [...]}``,
    one value per step (nan where a curve was not measured at that step); for
    example a function that calls ``lab.experiment.run``. Results are cached per
    combination of values, so going back to one re-draws without training again.

    >>> explorer = ExperimentExplorer(run_fn, labels_per_class=[1, 4, 10], methods=["supervised", "fixmatch"])
    >>> explorer.show_static()      # the default values' curves, as a PNG
    >>> explorer.explorer()         # the interactive version

    Controls are in ``explorer.controls`` (``"labels_per_class"``, ``"method"``,
    ``"learning_rate"``: 1 and 3 times the powers of ten in ``learning_rate_range``,
    and ``learning_rate`` itself); lines in ``explorer.lines`` (``"train_loss"``,
    ``"accuracy"``). The defaults run when the explorer is built. A control change
    runs in a background thread, so the kernel stays responsive: one run at a time,
    a change made during a run waits for it, replacing any change already waiting,
    and :meth:`wait` blocks until all are done. ``explorer.status`` names the run
    in progress and the one the plot shows. A run that raises leaves the plot as it
    was and shows the error in ``explorer.status``.
    """

    def __init__(
        self,
        run_fn: RunFn,
        *,
        labels_per_class: Sequence[int] = (1, 4, 10),
        methods: Sequence[str] = ("supervised",),
        learning_rate: float = 1e-3,
        learning_rate_range: tuple[float, float] = (1e-4, 1e-1),
        default_labels_per_class: int | None = None,
        default_method: str | None = None,
    ) -> None:
        if not callable(run_fn):
            raise TypeError(f"run_fn must be callable, got {run_fn!r}.")
        budgets = [int(budget) for budget in labels_per_class]
        methods = list(methods)
        if not budgets or not methods:
            raise ValueError("labels_per_class and methods must each offer at least one value.")
        low, high = learning_rate_range
        if not 0 < low <= learning_rate <= high:
            raise ValueError(
                f"learning_rate {learning_rate!r} must lie in learning_rate_range {learning_rate_range!r}."
            )
        self.run_fn = run_fn
        self.results: dict[tuple[int, str, float], dict[str, np.ndarray]] = {}
        self.controls = {
            "labels_per_class": ipywidgets.SelectionSlider(
                options=budgets,
                value=budgets[0] if default_labels_per_class is None else default_labels_per_class,
                description="labels/class",
                continuous_update=False,
                style=_STYLE,
                layout=_SLIDER_LAYOUT,
            ),
            "method": ipywidgets.Dropdown(
                options=methods,
                value=methods[0] if default_method is None else default_method,
                description="method",
                style=_STYLE,
            ),
            # A list of values, not a FloatLogSlider: a log slider snaps to its own grid in the
            # browser, which need not hold the default (3e-3 became 3.2e-3 at a click, and ran).
            "learning_rate": ipywidgets.SelectionSlider(
                options=[(f"{rate:.1e}", rate) for rate in _learning_rates(low, high, float(learning_rate))],
                value=float(learning_rate),
                description="learning rate",
                continuous_update=False,
                style=_STYLE,
                layout=_SLIDER_LAYOUT,
            ),
        }
        self.figure = matplotlib.figure.Figure(figsize=(9.0, 3.4), layout="constrained")
        loss_ax, accuracy_ax = self.figure.subplots(1, 2)
        self.axes = {"train_loss": loss_ax, "accuracy": accuracy_ax}
        self.lines = {
            "train_loss": loss_ax.plot([], [], color="tab:blue")[0],
            "accuracy": accuracy_ax.plot([], [], color="tab:green", marker=".")[0],
        }
        loss_ax.set(xlabel="step", ylabel="training loss", title="training loss")
        accuracy_ax.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0.0, 1.0))
        self.image = ipywidgets.Image(format="png")
        self.status = ipywidgets.Label()
        self._start()

    def result(self, labels_per_class: int, method: str, learning_rate: float) -> dict[str, np.ndarray]:
        """The checked curves of one run, from the cache or from ``run_fn``."""
        key = (int(labels_per_class), str(method), float(learning_rate))
        if key not in self.results:
            self.results[key] = _curves(self.run_fn(*key))
        return self.results[key]

    def _show(self, values: Mapping[str, Any]) -> str:
        """Run (or fetch) the curves of ``values`` and draw them; returns the status line that describes them."""
        curves = self.result(values["labels_per_class"], values["method"], values["learning_rate"])
        description = _describe_run(values)
        for name, line in self.lines.items():
            line.set_data(curves["step"], curves[name])
            self.axes[name].relim()
            self.axes[name].autoscale_view()
        self.axes["accuracy"].set_ylim(0.0, 1.0)
        self.figure.suptitle(description, fontsize="medium")
        _set_png(self.image, _png(self.figure))
        accuracy = curves["accuracy"][np.isfinite(curves["accuracy"])]
        return f"{description}: final accuracy {accuracy[-1]:.3f}" if accuracy.size else description

    def _describe_values(self, values: Mapping[str, Any]) -> str:
        return _describe_run(values)


# --------------------------------------------------------------------------
# Active-learning explorer
# --------------------------------------------------------------------------

ActiveRunFn = Callable[[str, str], Mapping[str, Any]]


def _label_curve(result: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The budgets, accuracies (budgets, seeds) and selections of an active run_fn result, checked."""
    missing = [name for name in ("budgets", "accuracy", "selections") if name not in result]
    if missing:
        raise ValueError(f"run_fn's result lacks {missing}; it needs 'budgets', 'accuracy' and 'selections'.")
    budgets = np.asarray(result["budgets"], int)
    accuracy = np.asarray(result["accuracy"], float)
    if accuracy.ndim != 2 or len(accuracy) != len(budgets):
        raise ValueError(f"run_fn's 'accuracy' must hold one list of seeds' values per budget, got {accuracy.shape}.")
    return {"budgets": budgets, "accuracy": accuracy, "selections": result["selections"]}


class ActiveExplorer(_BackgroundExplorer):
    """Explore active-learning runs by strategy, learner and label budget.

    ``run_fn(strategy, learner)`` runs the loop and returns a dict with ``"budgets"`` (the totals of
    labels), ``"accuracy"`` (per budget, one test accuracy per seed) and ``"selections"`` (per seed,
    per round, the pool indices labeled then), as ``lab.active.ActiveResult`` holds them; runs are
    cached per (strategy, learner), so a budget change re-draws without training. ``labels`` are
    the pool's true classes. The left panel is the label curve (mean ± std over seeds) with the
    chosen budget marked; the right one, how many labels of each class the strategy had picked by
    then (mean over seeds): what it covered, and a red cross where no seed has a label of a class.

    Controls: ``"strategy"``, ``"learner"``, ``"budget"``; runs go one at a time in the background,
    as :class:`ExperimentExplorer`'s do.
    """

    def __init__(
        self,
        run_fn: ActiveRunFn,
        *,
        strategies: Sequence[str],
        learners: Sequence[str],
        budgets: Sequence[int],
        labels: np.ndarray,
        class_names: Sequence[str] | None = None,
        default_strategy: str | None = None,
        default_learner: str | None = None,
    ) -> None:
        if not callable(run_fn):
            raise TypeError(f"run_fn must be callable, got {run_fn!r}.")
        strategies, learners, budgets = list(strategies), list(learners), [int(budget) for budget in budgets]
        if not strategies or not learners or not budgets:
            raise ValueError("strategies, learners and budgets must each offer at least one value.")
        self.run_fn = run_fn
        self.labels = np.asarray(labels)
        self.class_names = [str(name) for name in (class_names or range(self.labels.max() + 1))]
        self.results: dict[tuple[str, str], dict[str, Any]] = {}
        self.controls = {
            "strategy": ipywidgets.Dropdown(
                options=strategies, value=default_strategy or strategies[0], description="strategy", style=_STYLE
            ),
            "learner": ipywidgets.Dropdown(
                options=learners, value=default_learner or learners[0], description="learner", style=_STYLE
            ),
            "budget": ipywidgets.SelectionSlider(
                options=budgets,
                value=budgets[0],
                description="labels",
                continuous_update=False,
                style=_STYLE,
                layout=_SLIDER_LAYOUT,
            ),
        }
        self.figure = matplotlib.figure.Figure(figsize=(9.0, 3.4), layout="constrained")
        self.axes = dict(zip(("curve", "classes"), self.figure.subplots(1, 2)))
        self.image = ipywidgets.Image(format="png")
        self.status = ipywidgets.Label()
        self._start()

    def result(self, strategy: str, learner: str) -> dict[str, Any]:
        """The checked label curve and selections of one run, from the cache or from ``run_fn``."""
        key = (str(strategy), str(learner))
        if key not in self.results:
            self.results[key] = _label_curve(self.run_fn(*key))
        return self.results[key]

    def class_counts(self, strategy: str, learner: str, budget: int) -> np.ndarray:
        """Labels of each class picked by ``budget`` (the rounds up to it), mean over seeds."""
        result = self.result(strategy, learner)
        rounds = int(np.searchsorted(result["budgets"], budget, side="right"))
        counts = [
            np.bincount(self.labels[np.concatenate(per_round[:rounds]).astype(int)], minlength=len(self.class_names))
            for per_round in result["selections"]
        ]
        return np.mean(counts, 0)

    def _show(self, values: Mapping[str, Any]) -> str:
        result = self.result(values["strategy"], values["learner"])
        if values["budget"] not in result["budgets"]:
            raise ValueError(f"the run has no budget {values['budget']}; its budgets: {result['budgets'].tolist()}")
        mean, std = 100 * result["accuracy"].mean(1), 100 * result["accuracy"].std(1)
        at = int(np.flatnonzero(result["budgets"] == values["budget"])[0])
        curve, classes = self.axes["curve"], self.axes["classes"]
        curve.clear()
        curve.plot(result["budgets"], mean, marker="o", color="tab:blue")
        curve.fill_between(result["budgets"], mean - std, mean + std, color="tab:blue", alpha=0.2)
        curve.axvline(values["budget"], color="0.5", linestyle=":")
        curve.set_xticks(result["budgets"])
        curve.set(xlabel="labels (in total)", ylabel="test accuracy (%)", title="label curve (mean ± std over seeds)")
        counts = self.class_counts(values["strategy"], values["learner"], values["budget"])
        classes.clear()
        classes.bar(range(len(counts)), counts, color="tab:green")
        missed = np.flatnonzero(counts == 0)
        classes.plot(missed, np.zeros(len(missed)), "x", color="tab:red", markersize=10, label="no label")
        if missed.size:
            classes.legend(fontsize="small")
        classes.set_xticks(range(len(counts)), self.class_names, rotation=45 if len(counts) > 10 else 0, ha="right")
        classes.set(ylabel="labels (mean over seeds)", title="labels picked per class")
        description = self._describe_values(values)
        self.figure.suptitle(description, fontsize="medium")
        _set_png(self.image, _png(self.figure))
        return f"{description}: accuracy {mean[at]:.1f} ± {std[at]:.1f}%"

    def _describe_values(self, values: Mapping[str, Any]) -> str:
        return f"{values['strategy']}, {values['learner']}, {values['budget']} labels"
