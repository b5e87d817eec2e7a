"""The record of an experiment: the one schema that notebooks, ``lab run``, sweeps and reports share.

A :class:`Record` holds::

    dataset: str                      # e.g. "digits"
    setup: str                        # e.g. "semi_supervised"
    method: str                       # e.g. "fixmatch"
    labels_per_class: int            # null for an active-learning run (see active)
    seeds: [int, ...]
    metrics: {                        # one value per seed, aligned with seeds
        "accuracy": [float, ...],
        "macro_f1": [float, ...],
        "ece": [float, ...],
    }
    curves: {                         # optional learning curves
        "step": [int, ...],
        "accuracy": [[float per seed], ...],   # one inner list per step
    }
    wall_time_s: {"compile": float, "train": float}   # optional
    active: {                         # optional: an active-learning run (lab.active)
        "strategy": str, "cold_start": str, "embeddings": str,
        "learner": {...},             # the learner's experiment config
        "initial": [int, ...],        # labeled indices every seed started from
        "budgets": [int, ...],        # total labels after each round, increasing
        "curve": {"accuracy": [[float per seed], ...], ...},   # one inner list per budget
        "selections": [[[int, ...] per round] per seed],       # the pool indices labeled each round
    }
    extra: {...}                      # any other keys, kept as they are

Other metric names may be added to ``metrics`` and ``curves``. An active-learning record
counts its labels in total (``active.budgets``), so its ``labels_per_class`` is null, and its
``metrics`` are those at the last budget. As JSON
(:meth:`Record.to_dict`) a record is one flat object: the keys above, with the
``extra`` keys beside them.

A notebook reports its results with :func:`emit`, which displays the record as a
cell output of MIME type :data:`MIME_TYPE`, so it is saved inside the executed
notebook; :func:`read` reads it back from the ``.ipynb`` file (``lab sweep`` does,
then keeps it in the results store, :mod:`lab.store`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import nbformat

MIME_TYPE = "application/vnd.lab.record+json"
# The keys that say which experiment a record is of; every record has them.
DESCRIPTORS = ("dataset", "setup", "method", "labels_per_class", "seeds")
# The metrics every experiment of lab.experiment records.
METRICS = ("accuracy", "macro_f1", "ece")
_OPTIONAL = ("curves", "wall_time_s", "active")
# What an active-learning record's "active" holds besides its per-seed curve and selections.
ACTIVE_SETTINGS = ("strategy", "cold_start", "embeddings", "learner", "initial", "budgets")


class RecordNotFoundError(LookupError):
    """An executed notebook holds no lab record."""


@dataclasses.dataclass(frozen=True)
class Record:
    """What one experiment measured; see the module docstring. Build one with :meth:`from_dict`, which checks it."""

    dataset: str
    setup: str
    method: str
    labels_per_class: int | None  # None for an active-learning record (its labels are counted in total)
    seeds: list[int]
    metrics: dict[str, list[float]]
    curves: dict[str, list] | None = None
    wall_time_s: dict[str, float] | None = None
    active: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> Record:
        """The record of a JSON object (see the module docstring), its NumPy and JAX numbers and arrays
        made plain JSON values; raises ValueError naming what is wrong when it does not follow the schema."""
        checked = _validated(payload)
        fields = {key: checked.pop(key) for key in (*DESCRIPTORS, "metrics", *_OPTIONAL) if key in checked}
        return cls(**fields, extra=checked)

    def to_dict(self) -> dict[str, Any]:
        """The record as one JSON object, as it is displayed in notebooks and kept in the results store."""
        values = {key: getattr(self, key) for key in (*DESCRIPTORS, "metrics")}
        values.update({key: getattr(self, key) for key in _OPTIONAL if getattr(self, key) is not None})
        return {**values, **self.extra}

    def summary_line(self) -> str:
        """One line for people reading the notebook: the experiment and the mean of each metric."""
        parts = [f"lab record: {self.dataset} / {self.setup} / {self.method}"]
        if self.active is None:
            parts.append(f"{self.labels_per_class} labels per class")
        else:
            active = self.active
            parts.append(f"active: {active['cold_start']}, then {active['strategy']}, budgets {active['budgets']}")
        parts.append(f"seeds {self.seeds}")
        at = "" if self.active is None else f" at {self.active['budgets'][-1]} labels"
        parts += [f"{name} {seed_mean(values):.4f}{at}" for name, values in self.metrics.items()]
        return ", ".join(parts)


def seed_mean(values: list[float]) -> float:
    """The mean of per-seed values (NaN for none)."""
    return math.fsum(values) / len(values) if values else math.nan


def emit(record: Record | Mapping[str, Any]) -> None:
    """Report a notebook's results: check ``record`` and display it as a cell output.

    The output carries the record as :data:`MIME_TYPE` (saved in the executed
    notebook, where :func:`read` and ``lab sweep`` find it) and a one-line
    ``text/plain`` summary for people reading the notebook. A dict is checked with
    :meth:`Record.from_dict` first (ValueError naming what is wrong).
    """
    from IPython.display import display  # IPython is only needed inside notebooks

    if not isinstance(record, Record):
        record = Record.from_dict(record)
    display({MIME_TYPE: record.to_dict(), "text/plain": record.summary_line()}, raw=True)


def read(notebook_path: str | os.PathLike[str]) -> Record:
    """The record that an executed notebook reported with :func:`emit`.

    When a notebook recorded several times (for example once per seed), the records
    are merged into one (see :func:`merge`). Raises :class:`RecordNotFoundError`
    naming the notebook when it holds no record.
    """
    import nbformat  # imported here: it takes seconds to import, and emit() in every notebook does not need it

    notebook = nbformat.read(os.fspath(notebook_path), as_version=4)
    return from_notebook(notebook, str(notebook_path))


def from_notebook(notebook: nbformat.NotebookNode, name: str) -> Record:
    """Like :func:`read`, for a notebook already in memory; ``name`` is used in errors."""
    payloads = [
        output["data"][MIME_TYPE]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if MIME_TYPE in output.get("data", {})
    ]
    if not payloads:
        raise RecordNotFoundError(
            f"{name} holds no lab record: the notebook must call lab.record.emit(record) once it has results"
        )
    merged = Record.from_dict(payloads[0])
    for payload in payloads[1:]:
        merged = merge(merged, Record.from_dict(payload), name)
    return merged


def merge(first: Record, second: Record, name: str) -> Record:
    """One record of two records of the same experiment (``name`` says where they are from, in errors).

    They must agree on dataset, setup, method and labels_per_class, and their seeds
    must not overlap; seeds, per-seed metrics and curves are concatenated in order,
    wall times add up, and extra keys of the first win.
    """
    for key in ("dataset", "setup", "method", "labels_per_class"):
        if getattr(first, key) != getattr(second, key):
            raise ValueError(
                f"{name} holds records of different experiments: "
                f"{key} is {getattr(first, key)!r} in one and {getattr(second, key)!r} in another"
            )
    overlap = sorted(set(first.seeds) & set(second.seeds))
    if overlap:
        raise ValueError(f"{name} records seeds {overlap} more than once")
    if set(first.metrics) != set(second.metrics):
        raise ValueError(
            f"{name} holds records with different metrics: {sorted(first.metrics)} and {sorted(second.metrics)}"
        )
    curves = None
    first_curves, second_curves = first.curves or {}, second.curves or {}
    if first_curves or second_curves:
        if first_curves.keys() != second_curves.keys() or first_curves["step"] != second_curves["step"]:
            raise ValueError(
                f"{name} holds records whose learning curves have different steps or metrics; they cannot be merged"
            )
        curves = {"step": first_curves["step"]}
        for metric in first_curves.keys() - {"step"}:
            per_step = zip(first_curves[metric], second_curves[metric], strict=True)
            curves[metric] = [first_seeds + second_seeds for first_seeds, second_seeds in per_step]
    active = _merged_active(first.active, second.active, name)
    wall_time_s = None
    first_wall, second_wall = first.wall_time_s or {}, second.wall_time_s or {}
    if first_wall or second_wall:
        phases = {**first_wall, **second_wall}
        wall_time_s = {phase: first_wall.get(phase, 0.0) + second_wall.get(phase, 0.0) for phase in phases}
    return dataclasses.replace(
        first,
        seeds=first.seeds + second.seeds,
        metrics={metric: first.metrics[metric] + second.metrics[metric] for metric in first.metrics},
        curves=curves,
        wall_time_s=wall_time_s,
        active=active,
        extra={**first.extra, **{key: value for key, value in second.extra.items() if key not in first.extra}},
    )


def _merged_active(first: dict | None, second: dict | None, name: str) -> dict | None:
    """The active-learning sections of two records of the same run's settings, their seeds concatenated."""
    if first is None and second is None:
        return None
    if (
        first is None or second is None
        or active_settings(first) != active_settings(second) or first["curve"].keys() != second["curve"].keys()
    ):  # fmt: skip
        raise ValueError(
            f"{name} holds records of different active-learning runs (strategy, cold start, learner, budgets or "
            "metrics differ); they cannot be merged"
        )
    curve = {
        metric: [a + b for a, b in zip(first["curve"][metric], second["curve"][metric], strict=True)]
        for metric in first["curve"]
    }
    merged = {**first, "curve": curve, "selections": first["selections"] + second["selections"]}
    if "seeds" in first["learner"]:
        merged["learner"] = {**first["learner"], "seeds": first["learner"]["seeds"] + second["learner"]["seeds"]}
    return merged


def active_settings(active: dict[str, Any]) -> dict[str, Any]:
    """What two records of the same active-learning run share: all but their seeds' curve and selections."""
    learner = {key: value for key, value in active["learner"].items() if key != "seeds"}
    return {**{key: active[key] for key in ACTIVE_SETTINGS}, "learner": learner}


def _validated(payload: Mapping[str, Any]) -> dict[str, Any]:
    """``payload`` as plain JSON values, or a ``ValueError`` naming what is wrong."""
    if not isinstance(payload, Mapping):
        raise ValueError(f"a lab record must be a dict, got {type(payload).__name__}")
    checked = _to_json_value(payload, "record")
    missing = [key for key in (*DESCRIPTORS, "metrics") if key not in checked]
    if missing:
        raise ValueError(
            f"lab record is missing {', '.join(map(repr, missing))}; required: {', '.join((*DESCRIPTORS, 'metrics'))}"
        )
    for key in ("dataset", "setup", "method"):
        if not isinstance(checked[key], str) or not checked[key]:
            raise ValueError(f"lab record: {key!r} must be a non-empty string, got {checked[key]!r}")
    labels = checked["labels_per_class"]
    if "active" in checked and labels is not None:
        raise ValueError(
            f"lab record: an active-learning record counts its labels in 'active.budgets'; its 'labels_per_class' "
            f"must be null, got {labels!r}"
        )
    if "active" not in checked and (not is_int(labels) or labels < 1):
        raise ValueError(f"lab record: 'labels_per_class' must be a positive integer, got {labels!r}")
    seeds = checked["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(is_int(seed) for seed in seeds):
        raise ValueError(f"lab record: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"lab record: 'seeds' lists a seed more than once: {seeds!r}")

    metrics = checked["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise ValueError(f"lab record: 'metrics' must be a non-empty dict of per-seed lists, got {metrics!r}")
    for name, values in metrics.items():
        _check_per_seed(values, len(seeds), f"metrics.{name}")

    if "curves" in checked:
        curves = checked["curves"]
        if not isinstance(curves, dict) or "step" not in curves:
            raise ValueError(f"lab record: 'curves' must be a dict with a 'step' list, got {curves!r}")
        steps = curves["step"]
        if not isinstance(steps, list) or not all(is_int(step) for step in steps):
            raise ValueError(f"lab record: 'curves.step' must be a list of integers, got {steps!r}")
        for name, per_step in curves.items():
            if name == "step":
                continue
            if not isinstance(per_step, list) or len(per_step) != len(steps):
                raise ValueError(
                    f"lab record: 'curves.{name}' must have one list per step ({len(steps)} steps), got {per_step!r}"
                )
            for index, values in enumerate(per_step):
                _check_per_seed(values, len(seeds), f"curves.{name}[{index}]")

    if "wall_time_s" in checked:
        wall_time = checked["wall_time_s"]
        if not isinstance(wall_time, dict) or not all(_is_number(value) for value in wall_time.values()):
            raise ValueError(f"lab record: 'wall_time_s' must map phase names to seconds, got {wall_time!r}")
    if "active" in checked:
        _check_active(checked["active"], len(seeds))
    return checked


def _check_active(active: Any, n_seeds: int) -> None:
    required = (*ACTIVE_SETTINGS, "curve", "selections")
    if not isinstance(active, dict):
        raise ValueError(f"lab record: 'active' must be a dict with {', '.join(required)}, got {active!r}")
    missing = [key for key in required if key not in active]
    if missing:
        raise ValueError(f"lab record: 'active' lacks {', '.join(missing)}; it must hold {', '.join(required)}")
    for key in ("strategy", "cold_start", "embeddings"):
        if not isinstance(active[key], str) or not active[key]:
            raise ValueError(f"lab record: 'active.{key}' must be a non-empty string, got {active[key]!r}")
    if not isinstance(active["learner"], dict):
        raise ValueError(
            f"lab record: 'active.learner' must be the learner's config (a dict), got {active['learner']!r}"
        )
    if not _is_int_list(active["initial"]):
        raise ValueError(f"lab record: 'active.initial' must be a list of pool indices, got {active['initial']!r}")
    budgets = active["budgets"]
    if (
        not _is_int_list(budgets) or not budgets or budgets[0] < 1
        or any(later <= earlier for earlier, later in zip(budgets, budgets[1:]))
    ):  # fmt: skip
        raise ValueError(f"lab record: 'active.budgets' must be increasing positive integers, got {budgets!r}")
    curve = active["curve"]
    if not isinstance(curve, dict) or not curve:
        raise ValueError(f"lab record: 'active.curve' must map metric names to per-budget lists, got {curve!r}")
    for name, per_budget in curve.items():
        if not isinstance(per_budget, list) or len(per_budget) != len(budgets):
            raise ValueError(
                f"lab record: 'active.curve.{name}' must have one list per budget ({len(budgets)}), got {per_budget!r}"
            )
        for index, values in enumerate(per_budget):
            _check_per_seed(values, n_seeds, f"active.curve.{name}[{index}]")
    selections = active["selections"]
    if (
        not isinstance(selections, list) or len(selections) != n_seeds
        or not all(isinstance(rounds, list) and len(rounds) == len(budgets) for rounds in selections)
        or not all(_is_int_list(picked) for rounds in selections for picked in rounds)
    ):  # fmt: skip
        raise ValueError(
            f"lab record: 'active.selections' must hold, per seed ({n_seeds}), one list of pool indices per round "
            f"({len(budgets)}), got {str(selections)[:80]}"
        )


def _is_int_list(values: Any) -> bool:
    return isinstance(values, list) and all(is_int(value) for value in values)


def _check_per_seed(values: Any, n_seeds: int, where: str) -> None:
    if not isinstance(values, list) or not all(_is_number(value) for value in values):
        raise ValueError(f"lab record: {where!r} must be a list of numbers, one per seed, got {values!r}")
    if len(values) != n_seeds:
        raise ValueError(
            f"lab record: {where!r} has {len(values)} values but 'seeds' has {n_seeds}; "
            "values are per seed, aligned with 'seeds'"
        )


def is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (and not a bool, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_json_value(value: Any, where: str) -> Any:
    """Deep-copy ``value`` into JSON types; arrays and scalars of NumPy or JAX become lists and numbers."""
    if isinstance(value, Mapping):
        return {str(key): _to_json_value(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if hasattr(value, "tolist"):  # numpy.ndarray, numpy scalars, jax.Array
        return _to_json_value(value.tolist(), where)
    raise ValueError(
        f"lab record: {where!r} is a {type(value).__name__}, which is not JSON; use numbers, strings, lists and dicts"
    )
