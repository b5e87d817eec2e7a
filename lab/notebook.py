"""What the narrative notebooks share: where their files go, saving figures, memoised runs, curves.

Output paths. A notebook's relative paths (its ``output_dir``, a results store) are
relative to one root, the same wherever the kernel starts: papermill and ``make
notebooks`` start it in the repository root, JupyterLab and nbval in ``notebooks/``.
The root is, in this order:

1. ``$LAB_ROOT``, when set;
2. the nearest folder, from the working directory upward, that holds a
   ``pyproject.toml`` (the checkout);
3. the working directory (lab installed and used outside a checkout).

So ``output_dir = "runs/notebooks/01"`` is ``<checkout>/runs/notebooks/01`` from
either folder. Absolute paths are used as they are.

>>> save = FigureSaver(output_dir, enabled=save_figures)
>>> save(fig, "learning_curves")            # <root>/<output_dir>/learning_curves.png
>>> run = ExperimentRuns()
>>> result = run(config)                     # lab.experiment.run, once per configuration
>>> seed_mean(per_step(result, "test_accuracy"))

List parameters. ``papermill -p seeds "[0, 1]"`` hands a notebook the text
``"[0, 1]"``; :func:`list_parameter` reads it back (and checks it is a list).

Missing data. After :func:`stop_on_missing_data`, a cell that needs data files that
are not there stops the notebook with lab's one-line message (what to install or
download), as the CLI prints it, instead of a traceback through lab's loaders.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ROOT_VARIABLE",
    "ExperimentRuns",
    "FigureSaver",
    "checkpoint_source",
    "device_summary",
    "explorer_curves",
    "explorer_runs",
    "list_parameter",
    "per_step",
    "project_path",
    "project_root",
    "seed_mean",
    "stop_on_missing_data",
]

#: The environment variable that, when set, names the root of the notebooks' relative paths.
ROOT_VARIABLE = "LAB_ROOT"


def project_root() -> Path:
    """The folder the notebooks' relative paths start from (see the module docstring)."""
    if os.environ.get(ROOT_VARIABLE):
        return Path(os.environ[ROOT_VARIABLE]).expanduser().resolve()
    cwd = Path.cwd().resolve()
    return next((folder for folder in (cwd, *cwd.parents) if (folder / "pyproject.toml").is_file()), cwd)


def project_path(path: str | os.PathLike) -> Path:
    """``path`` under :func:`project_root` when it is relative; as it is when absolute."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def checkpoint_source(name: str | os.PathLike) -> str:
    """A notebook's ``checkpoint`` parameter as ``lab.checkpoints.load`` takes it: a path (one that is a folder
    under :func:`project_root`, or that starts with ``.``, ``/`` or ``~``) from the project root, as every
    relative path of a notebook; anything else, a hub id such as ``sentence-transformers/all-MiniLM-L6-v2``,
    as it is."""
    path = project_path(name)
    return str(path) if path.is_dir() or str(name).startswith((".", "/", "~")) else str(name)


def device_summary(platform: str = "auto") -> str:
    """What this kernel computes on, e.g. ``"cpu (1 device)"`` or ``"NVIDIA H200 x1"``: the devices of
    ``platform`` (``lab.devices``; ``"auto"``, the default, is the accelerator when JAX sees one)."""
    from lab import devices  # imported when used: this module does not load JAX

    return devices.describe(platform)


def list_parameter(name: str, value: Any, example: str = "[0, 1]", *, empty_ok: bool = False) -> list:
    """``value`` as a list: a list or tuple as it is, text as the Python literal it spells.

    Raises ValueError, naming the parameter and showing ``example``, for anything
    else, and for an empty list unless ``empty_ok``.
    """
    if isinstance(value, str):
        with contextlib.suppress(ValueError, SyntaxError):  # not a literal: reported below, as any non-list
            value = ast.literal_eval(value)
    if not isinstance(value, (list, tuple)) or not (value or empty_ok):
        raise ValueError(f"{name} must be a {'' if empty_ok else 'non-empty '}list such as {example}, got {value!r}")
    return list(value)


def stop_on_missing_data() -> None:
    """From now on, a ``DataNotFoundError`` in a cell of this IPython kernel shows as its one line
    (absent dataset files; an absent checkpoint folder, ``lab.checkpoints.CheckpointNotFoundError``).

    The cell still fails (error output, error reply): papermill, ``lab sweep``, nbval and
    JupyterLab's Run All stop there, as they should, and report the message; only the
    traceback is left out, as the CLI leaves it out. Outside IPython this does nothing.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is None:
        return
    from lab.dataset import DataNotFoundError

    def one_line(shell: Any, kind: type, error: BaseException, traceback: Any, tb_offset: int | None = None) -> list:
        lines = [f"{kind.__name__}: {error}"]
        shell._showtraceback(kind, error, lines)  # IPython's hook that shows (and, in a kernel, sends) a traceback
        return lines

    shell.set_custom_exc((DataNotFoundError,), one_line)


class FigureSaver:
    """Saves a notebook's figures as PNG files in ``output_dir`` (under the project root).

    ``saver(figure, name)`` writes ``<output_dir>/<name>.png`` and returns its path, or
    does nothing and returns None when not ``enabled``. The folder is created at the
    first save; ``saver.saved`` lists the file names written.
    """

    def __init__(self, output_dir: str | os.PathLike, *, enabled: bool = True, dpi: int = 120) -> None:
        self.directory = project_path(output_dir)
        self.enabled = bool(enabled)
        self.dpi = dpi
        self.saved: list[str] = []

    def __call__(self, figure: Any, name: str) -> Path | None:
        if not self.enabled:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.png"
        figure.savefig(path, dpi=self.dpi, bbox_inches="tight")
        self.saved.append(path.name)
        return path


class ExperimentRuns:
    """``lab.experiment.run`` once per configuration: a notebook (and its explorer) never trains twice.

    ``runs(config)`` returns the result of ``config`` (an ``ExperimentConfig``), from
    ``runs.results`` (keyed by the configuration's JSON) or by running it with a
    progress bar when ``progress``. With ``describe`` (config -> text), each run that
    trains prints ``"<describe(config)>: <seconds> s (compile ..., train ...)"``.
    ``quiet=True`` (e.g. in an explorer's callbacks) shows neither bar nor line.
    """

    def __init__(
        self,
        *,
        progress: bool = True,
        describe: Callable[[Any], str] | None = None,
        run_fn: Callable[..., Any] | None = None,
    ) -> None:
        self.progress = progress
        self.describe = describe
        self._run_fn = run_fn
        self.results: dict[str, Any] = {}

    def __call__(self, config: Any, *, quiet: bool = False) -> Any:
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key not in self.results:
            run_fn = self._run_fn
            if run_fn is None:
                from lab import experiment  # imported late: notebook 00 trains nothing

                run_fn = experiment.run
            tic = time.perf_counter()
            self.results[key] = run_fn(config, progress=self.progress and not quiet)
            if self.describe is not None and not quiet:
                wall = self.results[key].wall_time_s
                print(
                    f"{self.describe(config)}: {time.perf_counter() - tic:5.1f} s "
                    f"(compile {wall['compile']:.1f} s, train {wall['train']:.1f} s)"
                )
        return self.results[key]


def per_step(result: Any, name: str) -> np.ndarray:
    """The curve ``name`` of a result as an (evaluations, seeds) array, NaN where nothing was measured."""
    steps = len(result.curves["step"])
    return np.array(result.curves[name], dtype=float).reshape(steps, -1)


def seed_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis (seeds), ignoring NaN; NaN where no seed has a value."""
    values = np.asarray(values, dtype=float)
    counts = np.isfinite(values).sum(-1)
    return np.where(counts > 0, np.nansum(values, -1) / np.maximum(counts, 1), np.nan)


def explorer_curves(result: Any) -> dict[str, dict[str, Any]]:
    """What an ``ExperimentExplorer``'s ``run_fn`` returns for a result: training loss and test accuracy, seed means."""
    return {
        "curves": {
            "step": result.curves["step"],
            "train_loss": seed_mean(per_step(result, "train_loss")),
            "accuracy": seed_mean(per_step(result, "test_accuracy")),
        }
    }


def explorer_runs(runs: ExperimentRuns, config_of: Callable[[str], Any]) -> Callable[[int, str, float], dict]:
    """An ``ExperimentExplorer``'s ``run_fn``: ``config_of(method)`` at the chosen label budget and
    learning rate, run (once) through ``runs`` without a progress bar, as :func:`explorer_curves`."""

    def run_fn(labels_per_class: int, method: str, learning_rate: float) -> dict:
        config = config_of(method).replaced(labels_per_class=labels_per_class, learning_rate=learning_rate)
        return explorer_curves(runs(config, quiet=True))

    return run_fn
