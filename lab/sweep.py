"""Sweeps: run a notebook over a grid of parameters, one papermill run per point.

The library behind ``lab sweep`` (:mod:`lab.cli`)::

    lab sweep notebooks/02_semi_supervised.ipynb --name ssl-digits \\
        -p method fixmatch,pseudo_label -p labels_per_class 1,2,4,10 -p seed 0:5 --workers 2

Grid values are comma-separated lists or half-open integer ranges ``a:b`` (like
``range(a, b)``); ``--grid FILE`` gives the same as a YAML mapping of names to
lists. Each value is converted to the type of the parameter's default in the
notebook's ``parameters`` cell. When the notebook has a list parameter ``seeds``,
a ``seed`` axis is folded into it: all seeds of a point run in one notebook (which
trains them together) as ``seeds=[...]``.

Everything is checked before the first run: the notebook (one cell tagged
``parameters``, valid Python), parameter names, value types, and each point
through an optional ``validate`` callable. Each point gets an id, a
short hash of its parameters, and runs as ``runs/<name>/<point-id>.ipynb`` with its
output streams in ``runs/<name>/<point-id>.log``. When the notebook has an
``output_dir`` parameter that the grid does not set, each point gets its own,
``runs/<name>/<point-id>/``, so runs never overwrite each other's files. An executed
notebook becomes ``<point-id>.ipynb`` only once it reads back whole; a run whose
notebook could not be written (a full disk) fails, naming it.

Each finished run is saved at once in the results store (``runs/results.db``, see
:mod:`lab.store`), as done with the notebook's record, or as failed with the error
and traceback, while the other runs go on. Running the same sweep again skips the
points that are done (and, unless ``retry_failed``, those that failed); points left
pending by an interrupted (Ctrl-C) sweep, or running by a killed one (the store
records each running point's process; ``lab runs`` shows them as interrupted), run
again. Each point is claimed in the store just before it runs, so several sweeps of
one name at once share the points instead of running each twice. Ctrl-C stops the
local pool's workers at once (their kernels end with them, as they do when the sweep
is killed); Dask workers finish their runs, unsaved. When the store cannot be
written, a finished run's outcome is kept beside its notebook, no more runs start,
and the next run of the sweep saves it. A run whose kernel does not start is started
again on a new kernel (up to ``KERNEL_START_ATTEMPTS`` kernels) before it counts as failed.

Runs execute in a local process pool, or on a Dask cluster (``executor="dask"``:
a scheduler address, or a local cluster on 127.0.0.1). With Dask, the workers
must see the same files as this process (a shared file system): they read the
notebook and write the executed notebooks and logs under the runs folder; only
this process writes the results store.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import ctypes
import dataclasses
import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import platform
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import traitlets
import yaml
from jupyter_client import AsyncKernelManager
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from tqdm.auto import tqdm
from traitlets.config import Config

import lab
from lab import files, provenance, record, store
from lab.store import RunRow
# Imported by name: `validate` is also this module's name for a config validator.
from lab.validate import coerce, from_text, integer, yaml_loader

SEED_AXIS = "seed"
SEEDS_PARAMETER = "seeds"
OUTPUT_DIR_PARAMETER = "output_dir"
# A parameter naming a dataset: its own data's relative path (csv:PATH) is made absolute before the
# kernels start, since they run in the notebook's folder, not this one.
DATASET_PARAMETER = "dataset"
EXECUTORS = ("local", "dask")
STORE_FILENAME = "results.db"
# A kernel that does not start (jupyter_client's kernel_info handshake times out or the
# process dies first) gets replaced: no cell has run, so the run is simply started again.
KERNEL_START_ATTEMPTS = 3
KERNEL_START_TIMEOUT_S = 60
# How often the sweep's wait for runs checks for Ctrl-C, and how long it waits for a Dask scheduler.
INTERRUPT_CHECK_S = 0.5
SCHEDULER_CONNECT_TIMEOUT_S = 10
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_KERNEL_START_FAILURES = ("Kernel didn't respond", "Kernel died before replying to kernel_info")

_SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_INTEGER_RANGE = re.compile(r"\s*(-?\d+)\s*:\s*(-?\d+)\s*\Z")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TYPES: dict[str, type] = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "dict": dict}

Validator = Callable[[dict[str, Any]], None]


class GridError(ValueError):
    """A sweep's grid or parameters are invalid; raised before anything runs."""


class NotebookWriteError(OSError):
    """A run's executed notebook could not be written whole (a full disk); ``notebook`` is it, when in memory."""

    def __init__(self, message: str, notebook: Any = None) -> None:
        super().__init__(message)
        self.notebook = notebook


# --------------------------------------------------------------------------------------
# The notebook's parameters
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class NotebookParameter:
    """A parameter of a notebook's ``parameters`` cell."""

    name: str
    type: type | None  # what grid values become; None when neither an annotation nor a literal default tells
    default_source: str  # the default as written in the cell
    default: Any  # its value, when default_source is a Python literal (else None)
    has_literal_default: bool


def notebook_parameters(notebook: str | os.PathLike[str]) -> dict[str, NotebookParameter]:
    """The parameters of ``notebook``'s cell tagged ``parameters``, read by papermill's Python translator.

    A parameter's type is its annotation (``lr: float = 1e-3``) when that is one of
    bool, int, float, str, list, dict; otherwise the type of its literal default.
    (Sweeps run every notebook on a Python kernel, so the notebook's kernelspec,
    which papermill.inspect_notebook insists on, does not matter.)
    """
    from papermill.translators import PythonTranslator  # here: it takes seconds to import

    cells = read_notebook(notebook).cells
    tagged = [number for number, cell in enumerate(cells, 1) if "parameters" in cell.metadata.get("tags", [])]
    if len(tagged) > 1:
        # papermill injects the grid's values after the first one, so a later one would silently undo them.
        numbers = ", ".join(map(str, tagged[:-1])) + f" and {tagged[-1]}"
        raise GridError(
            f"{notebook} has {len(tagged)} cells tagged 'parameters' (cells {numbers}, counting from 1); keep the tag "
            "on one: papermill sets the grid's values after the first, and a later one would override them"
        )
    inspected = []
    if tagged:
        _check_syntax(notebook, tagged[0], cells[tagged[0] - 1].source)
        inspected = PythonTranslator.inspect(cells[tagged[0] - 1])
    if not inspected:
        raise GridError(
            f"{notebook} has no cell tagged 'parameters' (or it assigns no parameters), so it cannot be swept"
        )
    parameters = {}
    for info in inspected:
        try:
            value, literal = ast.literal_eval(info.default), True
        except (ValueError, SyntaxError):
            value, literal = None, False
        expected = _TYPES.get(info.inferred_type_name)
        if expected is None and literal and value is not None:
            expected = _TYPES.get(type(value).__name__)
        parameters[info.name] = NotebookParameter(info.name, expected, info.default, value, literal)
    return parameters


def read_notebook(notebook: str | os.PathLike[str]) -> Any:
    """``notebook`` read by nbformat, or a GridError naming it when it is missing, a folder or not a notebook."""
    import nbformat  # here, like papermill: it takes a while to import, which other lab commands need not pay

    path = Path(notebook)
    if path.is_dir():
        raise GridError(f"notebook {path} is a folder; expected a Jupyter notebook (.ipynb) file")
    if not path.is_file():
        raise GridError(f"notebook {path} does not exist; expected a Jupyter notebook (.ipynb) file")
    try:
        return nbformat.read(os.fspath(path), as_version=4)
    except (ValueError, LookupError) as error:  # not UTF-8, not JSON, or JSON without a notebook's fields
        reason = " ".join(str(error).split())[:120]
        raise GridError(
            f"notebook {path} is not a Jupyter notebook ({reason}); expected an .ipynb file as Jupyter saves it"
        ) from None


def _check_syntax(notebook: str | os.PathLike[str], number: int, source: str) -> None:
    """Raise a GridError naming the line of a syntax error in the parameters cell (cell ``number``)."""
    from IPython.core.inputtransformer2 import TransformerManager  # magics such as %matplotlib are allowed

    try:
        ast.parse(TransformerManager().transform_cell(source))
    except SyntaxError as error:
        line = (error.text or "").strip()
        raise GridError(
            f"{notebook}: the parameters cell (cell {number}) has a syntax error at line {error.lineno}: {error.msg}"
            + (f": {line}" if line else "")
        ) from None


# --------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------


def parse_grid(
    options: Iterable[tuple[str, str]] = (),
    grid_file: str | os.PathLike[str] | None = None,
) -> dict[str, list[Any]]:
    """Build a grid from ``-p NAME VALUES`` pairs and/or a YAML grid file.

    ``VALUES`` is a comma-separated list (commas inside brackets, as in ``[64,64]``,
    do not split) whose items may be integer ranges ``a:b`` (half-open). The YAML
    file maps names to a list of values or to one value; its strings may be ranges
    too. Values stay as written (strings from the command line) until
    :func:`expand_grid` converts them to the notebook's parameter types.
    """
    grid: dict[str, list[Any]] = {}
    if grid_file is not None:
        if Path(grid_file).is_dir():
            raise GridError(f"grid file {grid_file} is a folder; expected a YAML file of parameter names and values")
        try:
            loaded = yaml.load(Path(grid_file).read_text(encoding="utf-8"), Loader=yaml_loader())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise GridError(
                f"grid file {grid_file} is not valid YAML ({getattr(error, 'problem', None) or error}{where}); "
                "expected a mapping of parameter names to lists of values, e.g. 'x: [1, 2]'"
            ) from None
        if not isinstance(loaded, dict):
            raise GridError(
                f"grid file {grid_file} must be a YAML mapping of parameter names to lists of values, "
                f"got {type(loaded).__name__}"
            )
        for name, values in loaded.items():
            grid[str(name)] = _expand_ranges(str(name), values if isinstance(values, list) else [values])
    for name, text in options:
        if name in grid:
            raise GridError(
                f"parameter {name!r} is given more than once; give all its values in one place, comma-separated"
            )
        grid[name] = _expand_ranges(name, _split_values(name, text))
    return grid


def _split_values(name: str, text: str) -> list[str]:
    """Split on commas outside brackets, so list values such as ``[64,64],[128]`` stay whole."""
    items, depth, current = [], 0, []
    for character in text:
        if character in "[{(":
            depth += 1
        elif character in "]})":
            depth -= 1
        if character == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(character)
    items.append("".join(current).strip())
    if "" in items:
        raise GridError(f"parameter {name!r}: {text!r} has an empty value; separate values with single commas")
    return items


def _expand_ranges(name: str, values: list[Any]) -> list[Any]:
    expanded: list[Any] = []
    for value in values:
        match = _INTEGER_RANGE.match(value) if isinstance(value, str) else None
        if match is None:
            expanded.append(value)
            continue
        start, stop = int(match[1]), int(match[2])
        if stop <= start:
            raise GridError(f"parameter {name!r}: range {value!r} is empty; a:b means a, a+1, ..., b-1")
        expanded.extend(range(start, stop))
    return expanded


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: the parameters given to the notebook, and their id."""

    point_id: str
    parameters: dict[str, Any]


def point_id(parameters: Mapping[str, Any]) -> str:
    """A short, stable id for a point: a hash of its parameters as canonical JSON (sorted keys)."""
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def expand_grid(
    notebook: str | os.PathLike[str],
    grid: Mapping[str, list[Any]],
    *,
    extra_parameters: Mapping[str, Any] | None = None,
    validate: Validator | None = None,
) -> list[SweepPoint]:
    """The points of ``grid`` (the cartesian product of its axes) for ``notebook``.

    Checks every name against the notebook's parameters, converts every value to
    its parameter's type, folds a ``seed`` axis into ``seeds`` when the notebook has
    that list parameter, adds ``extra_parameters`` (fixed values) to every point,
    and passes each point, completed with the notebook's defaults, to ``validate``.
    Raises :class:`GridError` naming the bad value and what is allowed.
    """
    extra_parameters = dict(extra_parameters or {})
    if not grid:
        raise GridError("the grid is empty: give at least one parameter with values (-p NAME VALUES or --grid FILE)")
    parameters = notebook_parameters(notebook)
    folds_seeds = (
        SEEDS_PARAMETER in parameters and parameters[SEEDS_PARAMETER].type is list and SEED_AXIS not in parameters
    )
    allowed = sorted(parameters) + ([SEED_AXIS] if folds_seeds else [])
    unknown = [name for name in [*grid, *extra_parameters] if name not in allowed]
    if unknown:
        note = f" ('{SEED_AXIS}' values are folded into the list parameter '{SEEDS_PARAMETER}')" if folds_seeds else ""
        raise GridError(
            f"{notebook} has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters cell defines: {', '.join(allowed)}{note}"
        )
    both = sorted(set(grid) & set(extra_parameters))
    if both:
        raise GridError(f"parameter {', '.join(map(repr, both))} is both a grid axis and a fixed extra parameter")
    if folds_seeds and SEED_AXIS in grid and SEEDS_PARAMETER in {*grid, *extra_parameters}:
        raise GridError(f"give either a '{SEED_AXIS}' axis or '{SEEDS_PARAMETER}', not both")
    if SEED_AXIS in extra_parameters and folds_seeds:
        raise GridError(
            f"'{SEED_AXIS}' is a grid axis folded into '{SEEDS_PARAMETER}'; pass fixed seeds as '{SEEDS_PARAMETER}'"
        )

    targets = dict(parameters)
    if folds_seeds:  # each seed value is one element of the notebook's seeds list
        seeds_default = f"{SEEDS_PARAMETER}={parameters[SEEDS_PARAMETER].default_source}"
        targets[SEED_AXIS] = NotebookParameter(SEED_AXIS, int, seeds_default, None, False)
    axes: dict[str, list[Any]] = {}
    for name, values in grid.items():
        if not isinstance(values, list) or not values:
            raise GridError(f"parameter {name!r} has no values; give a non-empty list")
        converted = [_convert(targets[name], value) for value in values]
        repeated = [value for index, value in enumerate(converted) if value in converted[:index]]
        if repeated:
            raise GridError(f"parameter {name!r} lists {repeated[0]!r} more than once")
        axes[name] = converted
    fixed = {name: _convert(parameters[name], value) for name, value in extra_parameters.items()}
    seeds = axes.pop(SEED_AXIS, None) if folds_seeds else None

    points = []
    for combination in itertools.product(*axes.values()):
        point = {**fixed, **dict(zip(axes, combination, strict=True))}
        if DATASET_PARAMETER in point:
            point[DATASET_PARAMETER] = _absolute_dataset(point[DATASET_PARAMETER])
        if seeds is not None:
            point[SEEDS_PARAMETER] = seeds
        points.append(SweepPoint(point_id(point), point))
    if validate is not None:
        defaults = {name: parameter.default for name, parameter in parameters.items() if parameter.has_literal_default}
        for point in points:
            try:
                validate({**defaults, **point.parameters})
            except ValueError as error:
                raise GridError(f"point {json.dumps(point.parameters, sort_keys=True)} is invalid: {error}") from error
    return points


def _absolute_dataset(name: Any) -> Any:
    """A dataset name whose path names the same file from any folder (other values: the validator's to refuse)."""
    from lab import data  # tokenizers and scikit-learn: imported only for a sweep with a dataset parameter

    return data.absolute_name(name) if data.is_known(name) else name


def _convert(parameter: NotebookParameter, value: Any) -> Any:
    """``value`` as the parameter's type, or a GridError naming parameter, value and type."""
    expected = parameter.type
    if expected is None:
        return value
    try:
        # A grid file gives typed values; the command line gives text.
        if isinstance(value, str) and expected is not str:
            return coerce(parameter.name, from_text(parameter.name, value, expected), expected)
        return coerce(parameter.name, value, expected)
    except ValueError:
        hint = {bool: " (true/false, yes/no, on/off or 1/0)", list: " (e.g. [1,2])", dict: " (e.g. {a: 1})"}.get(
            expected, ""
        )
        raise GridError(
            f"parameter {parameter.name!r} takes {expected.__name__} values{hint} "
            f"(its default is {parameter.default_source}); cannot use {value!r}"
        ) from None


# --------------------------------------------------------------------------------------
# Running one point
# --------------------------------------------------------------------------------------


def _kernel_environment() -> dict[str, str]:
    # The kernel imports the same lab as this process (records must be written by
    # the code that reads them), even when lab is not installed, e.g. in a checkout.
    lab_root = str(Path(lab.__file__).resolve().parent.parent)
    python_path = [lab_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    # Several workers' kernels may share one GPU: JAX would otherwise reserve 75% of its
    # memory for the first kernel (a user's own setting wins).
    preallocate = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return {"PYTHONPATH": os.pathsep.join(python_path), "XLA_PYTHON_CLIENT_PREALLOCATE": preallocate}


class CurrentPythonKernelSpecManager(KernelSpecManager):
    """Resolves every kernel name to IPython on the interpreter running this code.

    Installed kernelspecs may point to another Python (a ``python3`` spec from a
    global Jupyter install, or none at all in a fresh virtualenv); sweeps must run
    notebooks with the packages of the environment that launched them.
    """

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name=f"Python {platform.python_version()} ({sys.executable})",
            language="python",
            env=_kernel_environment(),
        )


class CurrentPythonKernelManager(AsyncKernelManager):
    """The kernel manager papermill uses for sweeps: see :class:`CurrentPythonKernelSpecManager`."""

    output_fd = traitlets.Integer(
        None,
        allow_none=True,
        help="file descriptor for the kernel process's own stdout and stderr: what it prints outside cells, "
        "such as startup warnings and native crash messages (default: this process's)",
    ).tag(config=True)

    @traitlets.default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return CurrentPythonKernelSpecManager()

    async def start_kernel(self, **kwargs: Any) -> None:
        if self.output_fd is not None:
            kwargs.setdefault("stdout", self.output_fd)
            kwargs.setdefault("stderr", self.output_fd)
        await super().start_kernel(**kwargs)


@dataclasses.dataclass(frozen=True)
class RunTask:
    """What a worker needs to run one point; paths are absolute so any worker can use them."""

    sweep: str
    point_id: str
    notebook: str
    parameters: dict[str, Any]
    output_notebook: str
    log_path: str
    working_dir: str


@dataclasses.dataclass(frozen=True)
class RunOutcome:
    """How one run ended, as the worker saw it."""

    status: str  # "done" or "failed"
    started_at: str
    ended_at: str
    duration_s: float
    payload: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    versions: dict[str, str | None] | None = None
    git_commit: str | None = None


def execute_run(task: RunTask) -> RunOutcome:
    """Execute one point with papermill; failures are returned, not raised.

    The notebook's stdout and stderr stream into the run's log as it runs, followed
    by the outcome. A failed run keeps its executed notebook, and its record too if
    the notebook made one before failing.
    """
    from papermill.exceptions import PapermillExecutionError

    started_at, clock = provenance.utc_now(), time.monotonic()
    payload = error = failure_traceback = None
    with open(task.log_path, "w", encoding="utf-8") as log:
        log.write(f"lab sweep {task.sweep}, point {task.point_id}\nnotebook: {task.notebook}\n")
        log.write(f"parameters: {json.dumps(task.parameters, sort_keys=True)}\nstarted: {started_at}\n\n")
        log.flush()
        try:
            executed = _execute_notebook(task, log)
            payload = record.from_notebook(executed, task.output_notebook).to_dict()
        except PapermillExecutionError as failure:
            error = f"{failure.ename}: {failure.evalue}"
            failure_traceback = _ANSI_ESCAPE.sub("", "\n".join(failure.traceback))
            payload = _record_if_any(task.output_notebook)
        except NotebookWriteError as failure:  # the results may be in memory all the same: kept in the store
            error, failure_traceback = str(failure), traceback.format_exc()
            payload = _record_if_any(failure.notebook) if failure.notebook is not None else None
        except Exception as failure:  # any failure of one run is stored, and the sweep goes on
            error = f"{type(failure).__name__}: {failure}"
            failure_traceback = traceback.format_exc()
        ended_at, duration_s = provenance.utc_now(), time.monotonic() - clock
        status = "failed" if error else "done"
        log.write(f"\n{status} at {ended_at} after {duration_s:.1f} s\n")
        if error:
            log.write(f"{error}\n{failure_traceback}\n")
    return RunOutcome(
        status=status,
        started_at=started_at,
        ended_at=ended_at,
        duration_s=duration_s,
        payload=payload,
        error=error,
        traceback=failure_traceback,
        versions=provenance.library_versions(),
        git_commit=provenance.git_commit(task.working_dir),
    )


def _execute_notebook(task: RunTask, log: TextIO) -> Any:
    """papermill's run of the task's notebook, on a new kernel if the first ones do not start.

    papermill writes the executed notebook under a temporary name beside the output, which
    becomes the output only once it reads back whole: a full disk leaves no truncated notebook
    posing as a result, but a :class:`NotebookWriteError` naming the output.
    """
    import papermill

    # Ending in .ipynb, or papermill warns about the file type.
    written = files.temporary_sibling(task.output_notebook).with_suffix(".tmp.ipynb")
    run = functools.partial(
        _in_fresh_context,
        papermill.execute_notebook,
        task.notebook,
        str(written),
        parameters=task.parameters,
        kernel_name="python3",  # resolved to this interpreter by CurrentPythonKernelManager
        language="python",
        progress_bar=False,
        stdout_file=log,
        stderr_file=log,
        start_timeout=KERNEL_START_TIMEOUT_S,
        kernel_manager_class=CurrentPythonKernelManager,
        config=Config({"CurrentPythonKernelManager": {"output_fd": log.fileno()}}),
        # The kernel's working directory, passed to nbclient rather than as papermill's
        # cwd=, which changes the whole process's directory (unsafe in threaded Dask workers).
        resources={"metadata": {"path": task.working_dir}},
    )
    try:
        executed, failure = _on_a_starting_kernel(run, log), None
    except Exception as error:
        executed, failure = None, error
    try:
        if written.exists():  # else papermill failed before writing, e.g. reading the notebook
            _publish(written, task.output_notebook, executed, failure)
    except NotebookWriteError as write_error:
        if failure is not None and not isinstance(failure, OSError):
            log.write(f"\n{write_error}\n")  # the run's own error (a cell's) says more
            raise failure from None
        raise write_error from failure
    finally:
        written.unlink(missing_ok=True)
    if failure is not None:
        raise failure
    return executed


def _on_a_starting_kernel(run: Callable[[], Any], log: TextIO) -> Any:
    """``run()``, again on a new kernel when the kernel does not start (up to KERNEL_START_ATTEMPTS)."""
    for attempt in range(1, KERNEL_START_ATTEMPTS):
        try:
            return run()
        except RuntimeError as failure:
            if not str(failure).startswith(_KERNEL_START_FAILURES):
                raise
            log.write(f"\nthe kernel did not start ({failure}); starting a new one, attempt {attempt + 1}\n\n")
            log.flush()
    return run()


def _publish(written: Path, output: str, executed: Any, failure: Exception | None) -> None:
    """Rename the notebook papermill ``written`` to ``output`` once it reads back whole; else a NotebookWriteError
    (with ``failure``, papermill's own error, when that was an OSError such as a full disk)."""
    import nbformat

    try:
        nbformat.read(os.fspath(written), as_version=4)
    except (OSError, ValueError):  # not UTF-8 or not JSON: cut short
        cause = f"{failure}" if isinstance(failure, OSError) else "it does not read back whole"
        raise NotebookWriteError(
            f"the executed notebook could not be written to {output} ({cause}); is the disk full? "
            "Free some space and run the sweep again with --retry-failed",
            executed,
        ) from None
    os.replace(written, output)


def _in_fresh_context(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``function`` in an empty contextvars context, then close the event loops it left there.

    papermill runs its async client on an event loop that jupyter_core caches in a
    context variable. Threads of a Dask worker start from a copy of the submitting
    thread's context, so without this two runs could share one cached loop and fail
    with "This event loop is already running".
    """
    context = contextvars.Context()
    try:
        return context.run(function, *args, **kwargs)
    finally:
        for value in context.values():
            if isinstance(value, asyncio.AbstractEventLoop) and not value.is_closed():
                value.close()


def _record_if_any(executed_notebook: Any) -> dict[str, Any] | None:
    """The record of an executed notebook (a path, or a notebook in memory), or None when it holds none."""
    try:
        if isinstance(executed_notebook, str):
            return record.read(executed_notebook).to_dict()
        return record.from_notebook(executed_notebook, "the executed notebook").to_dict()
    except (OSError, ValueError, LookupError):
        return None


# --------------------------------------------------------------------------------------
# Running a sweep
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class SweepSummary:
    """What one ``run_sweep`` call did."""

    name: str
    store_path: Path
    runs_dir: Path
    points: int
    done: list[str] = dataclasses.field(default_factory=list)  # point ids finished in this call
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # point id -> error, failed in this call
    already_done: list[str] = dataclasses.field(default_factory=list)  # skipped: done before
    not_retried: list[str] = dataclasses.field(default_factory=list)  # skipped: failed before, retry_failed not set
    # skipped: another live sweep process runs them; point id -> "process PID on HOST"
    running_elsewhere: dict[str, str] = dataclasses.field(default_factory=dict)
    # finished by an earlier call that could not write the store, saved now without running again
    recovered: list[str] = dataclasses.field(default_factory=list)
    store_error: str | None = None  # why the store could not be written; no run started after it
    unsaved: dict[str, str] = dataclasses.field(default_factory=dict)  # point id -> its result, where it is kept

    @property
    def complete(self) -> bool:
        """Whether every point of the sweep is done and saved."""
        return not (self.failed or self.not_retried or self.running_elsewhere or self.store_error)

    def describe(self) -> str:
        """A few lines for people: what ran, what was skipped, where things are, why runs failed."""
        ran = len(self.done) + len(self.failed)
        headline = (
            f"sweep {self.name}: {self.points} points; ran {ran} ({len(self.done)} done, {len(self.failed)} failed)"
        )
        if self.recovered:
            headline += f"; saved {len(self.recovered)} finished by an earlier run that could not save them"
        if self.already_done:
            headline += f"; skipped {len(self.already_done)} done before"
        if self.not_retried:
            headline += f"; skipped {len(self.not_retried)} that failed before (--retry-failed runs them again)"
        if self.running_elsewhere:
            owners = ", ".join(sorted(set(self.running_elsewhere.values())))
            headline += f"; skipped {len(self.running_elsewhere)} running in another sweep ({owners})"
        lines = [headline, f"results: {self.store_path}; notebooks and logs: {self.runs_dir / self.name}"]
        lines += [
            f"  failed {point}: {error}  (log: {self.runs_dir / self.name / point}.log)"
            for point, error in self.failed.items()
        ]
        if self.store_error:
            lines.append(f"could not write the results store, so no more runs were started: {self.store_error}")
            lines += [f"  not saved {point}: {note}" for point, note in self.unsaved.items()]
        return "\n".join(lines)


def check_name(name: str) -> None:
    """Raise ValueError unless ``name`` can name a sweep (its folder under the runs folder, its rows in the store)."""
    if not _SWEEP_NAME.match(name):
        raise ValueError(
            f"sweep name {name!r} is not allowed: "
            "use letters, digits, '.', '_' and '-', starting with a letter or digit"
        )


def run_sweep(
    notebook: str | os.PathLike[str],
    grid: Mapping[str, list[Any]],
    *,
    name: str,
    runs_dir: str | os.PathLike[str] = "runs",
    workers: int | None = None,
    executor: str = "local",
    scheduler: str | None = None,
    retry_failed: bool = False,
    validate: Validator | None = None,
    extra_parameters: Mapping[str, Any] | None = None,
) -> SweepSummary:
    """Run ``notebook`` at every point of ``grid``; see the module docstring.

    ``workers`` is how many runs execute at once: the process pool's size, or the
    number of Dask workers of the local cluster; with a ``scheduler`` address it
    defaults to the cluster's worker threads. Results go to ``<runs_dir>/results.db``
    as each run ends. Returns the ids of what ran and what was skipped.

    The local executor starts its workers with ``spawn``, which imports the calling
    script again: in a script, call ``run_sweep`` under ``if __name__ == "__main__":``.
    """
    check_name(name)
    if executor not in EXECUTORS:
        raise ValueError(f"executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    if scheduler is not None and executor != "dask":
        raise ValueError(f"a scheduler address ({scheduler}) needs executor 'dask', not {executor!r}")
    if workers is not None:
        integer("workers", workers, minimum=1)
    notebook = Path(notebook)
    points = expand_grid(notebook, grid, extra_parameters=extra_parameters, validate=validate)

    runs_dir = Path(runs_dir)
    files.check_output_path(runs_dir, "runs folder", folder=True)
    results = store.ResultsStore(runs_dir / STORE_FILENAME)
    previous = {row.point_id: row for row in results.rows(name)}
    other_notebooks = {row.notebook for row in previous.values() if Path(row.notebook).resolve() != notebook.resolve()}
    if other_notebooks:
        raise ValueError(
            f"sweep {name!r} already holds runs of {', '.join(sorted(other_notebooks))}; "
            f"give this sweep of {notebook} another --name"
        )

    summary = SweepSummary(name, runs_dir / STORE_FILENAME, runs_dir, len(points))
    tasks = []
    sweep_dir = runs_dir / name
    with_output_dir = OUTPUT_DIR_PARAMETER in notebook_parameters(notebook)
    for point in points:
        status = previous[point.point_id].status if point.point_id in previous else None
        if status == "done":
            summary.already_done.append(point.point_id)
        elif status == "failed" and not retry_failed:
            summary.not_retried.append(point.point_id)
        else:
            parameters = dict(point.parameters)
            if with_output_dir and OUTPUT_DIR_PARAMETER not in parameters:
                # Absolute: a notebook resolves a relative output_dir against its project root
                # (lab.notebook.project_path), which need not be the folder this sweep runs in.
                parameters[OUTPUT_DIR_PARAMETER] = str((sweep_dir / point.point_id).absolute())
            tasks.append(
                RunTask(
                    sweep=name,
                    point_id=point.point_id,
                    notebook=str(notebook.resolve()),
                    parameters=parameters,
                    output_notebook=str((sweep_dir / f"{point.point_id}.ipynb").resolve()),
                    log_path=str((sweep_dir / f"{point.point_id}.log").resolve()),
                    working_dir=os.getcwd(),
                )
            )
    if not tasks:
        return summary
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # The executor first: an unreachable cluster fails here, before the store holds any new row.
    with _executor(executor, workers, scheduler) as (pool, capacity):
        results.add_pending(*(_row(notebook, task, "pending") for task in tasks))
        _run_tasks(notebook, tasks, results, summary, pool, capacity, retry_failed)
    return summary


def _row(
    notebook: Path,
    task: RunTask,
    status: str,
    outcome: RunOutcome | None = None,
    started_at: str | None = None,
    owner: store.Owner | None = None,
) -> RunRow:
    row = RunRow(
        sweep=task.sweep,
        point_id=task.point_id,
        notebook=str(notebook),
        parameters=task.parameters,
        status=status,
        started_at=started_at,
        output_notebook=os.path.relpath(task.output_notebook, task.working_dir),
        log_path=os.path.relpath(task.log_path, task.working_dir),
    )
    if owner is not None:
        row = dataclasses.replace(row, owner_host=owner.host, owner_pid=owner.pid, owner_start=owner.start)
    if outcome is not None:
        fields = dataclasses.asdict(outcome)
        del fields["status"]
        row = dataclasses.replace(row, **fields)
    return row


def _run_tasks(
    notebook: Path,
    tasks: list[RunTask],
    results: store.ResultsStore,
    summary: SweepSummary,
    pool: concurrent.futures.Executor,
    capacity: int,
    retry_failed: bool,
) -> None:
    """Run ``tasks``, at most ``capacity`` at a time, saving each outcome as soon as it arrives.

    Each point is claimed in the store just before it is submitted, so a point runs
    in one process only, even with several sweeps of the same name at once; and
    submitting no more runs than the executor runs at once means that a point the
    store marks as running is running, with the right start time, not queued.
    """
    owner = store.Owner.current()
    waiting = collections.deque(tasks)
    in_flight: dict[concurrent.futures.Future[RunOutcome], RunTask] = {}
    with (
        _interrupt_flag() as interrupted,
        tqdm(total=len(tasks), desc=summary.name, unit="run") as progress,
    ):
        try:
            while waiting or in_flight:
                while waiting and len(in_flight) < capacity and summary.store_error is None:
                    task = waiting.popleft()
                    running = _row(notebook, task, "running", started_at=provenance.utc_now(), owner=owner)
                    try:
                        stored = results.claim(running, retry_failed=retry_failed)
                    except store.StoreError as error:
                        summary.store_error = str(error)  # the runs in flight still end, and are kept
                        break
                    if stored is not None:
                        _skip(summary, stored)
                        progress.update()
                    elif (kept := _kept_outcome(task)) is not None:
                        _save_outcome(notebook, task, kept, results, summary, progress, recovered=True)
                    else:
                        in_flight[pool.submit(execute_run, task)] = task
                if not in_flight:
                    break  # everything left was skipped, or the store cannot be written
                # A timeout, so that an interrupt that Python swallowed still stops the sweep.
                finished, _ = concurrent.futures.wait(
                    in_flight, timeout=INTERRUPT_CHECK_S, return_when=concurrent.futures.FIRST_COMPLETED
                )
                if interrupted():
                    raise KeyboardInterrupt
                for future in finished:
                    task = in_flight.pop(future)
                    _save_outcome(notebook, task, _outcome(future), results, summary, progress)
        except BaseException:
            # Interrupted (Ctrl-C) or the executor broke: finished runs are already saved; this
            # process's runs still in flight go back to pending, so the next run of this sweep redoes them.
            _release(results, [_row(notebook, task, "running") for task in in_flight.values()], owner)
            raise
        # Finished runs that could not be saved are free for the next run of this sweep, which saves them.
        unsaved = [_row(notebook, task, "running") for task in tasks if task.point_id in summary.unsaved]
        _release(results, unsaved, owner)


def _release(results: store.ResultsStore, rows: list[RunRow], owner: store.Owner) -> None:
    # When even this cannot be written, the rows show as interrupted once this process is gone,
    # and the next run of the sweep takes them all the same.
    with contextlib.suppress(store.StoreError):
        results.release(rows, owner)


def _skip(summary: SweepSummary, stored: RunRow) -> None:
    """Note a point that another process claimed after this sweep planned to run it."""
    if stored.status == "done":
        summary.already_done.append(stored.point_id)
    elif stored.status == "failed":
        summary.not_retried.append(stored.point_id)
    else:
        owner = stored.owner
        summary.running_elsewhere[stored.point_id] = (
            "another lab" if owner is None else f"process {owner.pid} on {owner.host}"
        )


def _save_outcome(
    notebook: Path,
    task: RunTask,
    outcome: RunOutcome,
    results: store.ResultsStore,
    summary: SweepSummary,
    progress: tqdm,
    recovered: bool = False,
) -> None:
    """Save a finished run (``recovered``: one that an earlier call could not save); when the store
    cannot be written, keep its outcome in a file beside its notebook."""
    kept = Path(_kept_outcome_path(task))
    try:
        results.save(_row(notebook, task, outcome.status, outcome))
    except store.StoreError as error:
        summary.store_error = str(error)
        # A run is done only once its notebook was written whole (see _execute_notebook).
        result = (
            f"{os.path.relpath(task.output_notebook, task.working_dir)} holds its result"
            if outcome.status == "done"
            else f"it failed ({outcome.error})"
        )
        try:
            files.write_atomic(kept, json.dumps(dataclasses.asdict(outcome)))
            note = f"its outcome is kept in {kept}; the next run of this sweep saves it"
        except OSError as keep_error:
            note = f"its outcome could not be kept either ({keep_error}); the next run of this sweep runs it again"
        summary.unsaved[task.point_id] = f"{result}; {note}"
        return
    kept.unlink(missing_ok=True)
    if outcome.status == "done":
        (summary.recovered if recovered else summary.done).append(task.point_id)
    else:
        summary.failed[task.point_id] = outcome.error or "unknown error"
    progress.update()
    progress.set_postfix(done=len(summary.done), failed=len(summary.failed))


def _kept_outcome_path(task: RunTask) -> str:
    return str(Path(task.output_notebook).with_suffix(".outcome.json"))


def _kept_outcome(task: RunTask) -> RunOutcome | None:
    """The outcome of a run that finished but could not be saved, if an earlier call kept one."""
    try:
        return RunOutcome(**json.loads(Path(_kept_outcome_path(task)).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None


def _outcome(future: concurrent.futures.Future[RunOutcome]) -> RunOutcome:
    """The run's outcome, or a failed one when its worker itself died (killed, out of memory).

    A broken executor (a process pool that lost a worker process) is raised: the
    runs are not at fault and stay pending for the next attempt.
    """
    try:
        return future.result()
    except concurrent.futures.BrokenExecutor:
        raise
    except Exception as failure:  # the worker is gone: record why, and go on
        now = provenance.utc_now()
        return RunOutcome(
            status="failed",
            started_at=now,
            ended_at=now,
            duration_s=0.0,
            error=f"worker failed: {type(failure).__name__}: {failure}",
            traceback="".join(traceback.format_exception(failure)),
        )


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[Callable[[], bool]]:
    """Yield a function that tells whether SIGINT (Ctrl-C) arrived since entering.

    SIGINT still raises KeyboardInterrupt, but Python drops an exception raised inside a
    garbage-collector callback or ``__del__`` (such as JAX's), so the sweep checks this
    record too. Only the main thread receives signals; elsewhere nothing is recorded.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # someone else's handler, or ignored
    ):
        yield lambda: False
        return
    received = threading.Event()

    def record_and_raise(signum: int, frame: Any) -> None:
        received.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, record_and_raise)
    try:
        yield received.is_set
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _die_with_parent(parent_pid: int) -> None:
    """Initializer of local pool workers: make the worker die with the sweep process.

    On Linux the kernel sends the worker SIGKILL when its parent ends, even when the parent
    is killed with SIGKILL; the worker's notebook kernel polls its own parent and ends too.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent_pid:  # the sweep died before the line above took effect
        os._exit(1)


@contextlib.contextmanager
def _executor(
    kind: str, workers: int | None, scheduler: str | None
) -> Iterator[tuple[concurrent.futures.Executor, int]]:
    """A concurrent.futures executor for the runs, and how many runs it executes at once."""
    if kind == "local":
        # spawn: a fresh interpreter per worker; forking this process (with tqdm's and
        # possibly Dask's threads) could deadlock the child.
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers or 1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        try:
            yield pool, workers or 1
        except BaseException:
            # Interrupted, or the sweep failed: the runs in flight were set back to pending,
            # so stop them now instead of waiting for them. (Python 3.14 has pool.terminate_workers().)
            for process in list(pool._processes.values()):
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as error:
        raise ImportError("executor 'dask' needs dask.distributed: pip install 'lab[distributed]'") from error
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            # Loopback only; port 0 picks a free port for the scheduler's HTTP server, which
            # is started even without a dashboard and would otherwise clash with another cluster's 8787.
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers or 1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
                )
            )
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(scheduler, timeout=SCHEDULER_CONNECT_TIMEOUT_S))
            except (OSError, TimeoutError) as error:
                raise ConnectionError(
                    f"cannot reach the Dask scheduler at {scheduler} ({error}); "
                    "check the address (e.g. tcp://HOST:8786) and that the scheduler runs, "
                    "or leave out --scheduler for a local cluster"
                ) from None
        capacity = workers or max(1, sum(client.nthreads().values()))
        # pure=False: every submission is a run to execute, never a cached result.
        yield client.get_executor(pure=False), capacity
