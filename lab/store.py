"""The results store: what notebooks report, and where sweeps keep it.

A notebook reports its results by calling :func:`record` once, with a payload of
this shape::

    {
        "dataset": str,                     # e.g. "digits"
        "setup": str,                       # e.g. "semi_supervised"
        "method": str,                      # e.g. "fixmatch"
        "labels_per_class": int,
        "seeds": [int, ...],
        "metrics": {                        # one value per seed, aligned with "seeds"
            "accuracy": [float, ...],
            "macro_f1": [float, ...],
            "ece": [float, ...],
        },
        "curves": {                         # optional learning curves
            "step": [int, ...],
            "accuracy": [[float per seed], ...],   # one inner list per step
        },
        "wall_time_s": {"compile": float, "train": float},   # optional
    }

Other metric names may be added to "metrics" and "curves"; other top-level keys
are kept as they are. ``record`` displays the payload as a cell output of MIME
type ``application/vnd.lab.record+json``, so it is saved inside the executed
notebook, and :func:`read_records` reads it back from the ``.ipynb`` file.

Sweeps (``lab sweep``) keep one row per sweep point in a SQLite database,
``runs/results.db`` by default, through :class:`ResultsStore`. A running row names
the process that runs it (:class:`Owner`): a sweep claims a point only when no live
process runs it, and a row left running by a process that is gone reads as
``interrupted``. :func:`load`
turns those rows into a pandas DataFrame, :func:`export` writes them as CSV or
Parquet, :func:`export_mlflow` copies them to MLflow, and :func:`register_cli`
adds the ``lab runs`` subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

import lab

if TYPE_CHECKING:
    import nbformat

RECORD_MIME_TYPE = "application/vnd.lab.record+json"
DEFAULT_PATH = Path("runs/results.db")
SCHEMA_VERSION = 2
STATUSES = ("pending", "running", "done", "failed")
# Not stored: how a row left "running" by a process that is gone (killed, crashed) is shown.
INTERRUPTED = "interrupted"
METRICS = ("accuracy", "macro_f1", "ece")
DESCRIPTORS = ("dataset", "setup", "method", "labels_per_class", "seeds")
EXPORT_FORMATS = ("csv", "parquet")

# Parallel writers (sweep workers, several sweeps) queue on SQLite's write lock;
# runs take seconds to hours, so waiting long is better than failing a finished run.
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    sweep TEXT NOT NULL,
    point_id TEXT NOT NULL,
    notebook TEXT NOT NULL,
    parameters TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    payload TEXT,
    error TEXT,
    traceback TEXT,
    started_at TEXT,
    ended_at TEXT,
    duration_s REAL,
    versions TEXT,
    git_commit TEXT,
    output_notebook TEXT,
    log_path TEXT,
    updated_at TEXT NOT NULL,
    owner_host TEXT,
    owner_pid INTEGER,
    owner_start TEXT,
    PRIMARY KEY (sweep, point_id)
);
"""
# Schema version 1 had no owner columns; opening such a store adds them (NULL: no owner known).
_OWNER_COLUMNS = ("owner_host", "owner_pid", "owner_start")
_SQLITE_HEADER = b"SQLite format 3\x00"


class StoreError(RuntimeError):
    """The results database cannot be read or written; the message names the file and what to do."""


class StoreVersionError(StoreError):
    """The results database was written by a lab with a different schema."""


class RecordNotFoundError(LookupError):
    """An executed notebook holds no lab record."""


# --------------------------------------------------------------------------------------
# Recording results from a notebook
# --------------------------------------------------------------------------------------


def record(payload: Mapping[str, Any]) -> None:
    """Report a notebook's results: check ``payload`` and display it as a cell output.

    The output carries the payload as ``application/vnd.lab.record+json`` (saved in
    the executed notebook, where :func:`read_records` and ``lab sweep`` find it) and
    a one-line ``text/plain`` summary for people reading the notebook. NumPy and JAX
    numbers and arrays are converted to plain JSON values first. Raises ValueError
    naming what is wrong when the payload does not follow the schema.
    """
    from IPython.display import display  # IPython is only needed inside notebooks

    checked = validate_payload(payload)
    display({RECORD_MIME_TYPE: checked, "text/plain": _summary_line(checked)}, raw=True)


def _summary_line(payload: Mapping[str, Any]) -> str:
    parts = [
        f"lab record: {payload['dataset']} / {payload['setup']} / {payload['method']}",
        f"{payload['labels_per_class']} labels per class",
        f"seeds {payload['seeds']}",
    ]
    for name, values in payload["metrics"].items():
        parts.append(f"{name} {_mean(values):.4f}")
    return ", ".join(parts)


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def validate_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``payload`` as plain JSON values, or raise ``ValueError`` naming what is wrong.

    See the module docstring for the schema.
    """
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
    if not _is_int(checked["labels_per_class"]) or checked["labels_per_class"] < 1:
        raise ValueError(
            f"lab record: 'labels_per_class' must be a positive integer, got {checked['labels_per_class']!r}"
        )
    seeds = checked["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(_is_int(seed) for seed in seeds):
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
        if not isinstance(steps, list) or not all(_is_int(step) for step in steps):
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
    return checked


def _check_per_seed(values: Any, n_seeds: int, where: str) -> None:
    if not isinstance(values, list) or not all(_is_number(value) for value in values):
        raise ValueError(f"lab record: {where!r} must be a list of numbers, one per seed, got {values!r}")
    if len(values) != n_seeds:
        raise ValueError(
            f"lab record: {where!r} has {len(values)} values but 'seeds' has {n_seeds}; "
            "values are per seed, aligned with 'seeds'"
        )


def _is_int(value: Any) -> bool:
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


def read_records(notebook_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the payload that an executed notebook reported with :func:`record`.

    When a notebook recorded several times (for example once per seed), the records
    are merged into one: they must agree on dataset, setup, method and
    labels_per_class, their seeds must not overlap, and seeds, per-seed metrics and
    curves are concatenated in the order the records were made (wall times add up).
    Raises :class:`RecordNotFoundError` naming the notebook when it holds no record.
    """
    import nbformat  # imported here: it takes seconds to import, and record() in every notebook does not need it

    notebook = nbformat.read(os.fspath(notebook_path), as_version=4)
    return records_from_notebook(notebook, str(notebook_path))


def records_from_notebook(notebook: nbformat.NotebookNode, name: str) -> dict[str, Any]:
    """Like :func:`read_records`, for a notebook already in memory; ``name`` is used in errors."""
    payloads = [
        output["data"][RECORD_MIME_TYPE]
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if RECORD_MIME_TYPE in output.get("data", {})
    ]
    if not payloads:
        raise RecordNotFoundError(
            f"{name} holds no lab record: the notebook must call lab.store.record(payload) once it has results"
        )
    merged = validate_payload(payloads[0])
    for payload in payloads[1:]:
        merged = _merge_records(merged, validate_payload(payload), name)
    return merged


def _merge_records(first: dict[str, Any], second: dict[str, Any], name: str) -> dict[str, Any]:
    for key in ("dataset", "setup", "method", "labels_per_class"):
        if first[key] != second[key]:
            raise ValueError(
                f"{name} holds records of different experiments: "
                f"{key} is {first[key]!r} in one and {second[key]!r} in another"
            )
    overlap = sorted(set(first["seeds"]) & set(second["seeds"]))
    if overlap:
        raise ValueError(f"{name} records seeds {overlap} more than once")
    if set(first["metrics"]) != set(second["metrics"]):
        raise ValueError(
            f"{name} holds records with different metrics: {sorted(first['metrics'])} and {sorted(second['metrics'])}"
        )
    merged = {**first, **{key: value for key, value in second.items() if key not in first}}
    merged["seeds"] = first["seeds"] + second["seeds"]
    merged["metrics"] = {metric: first["metrics"][metric] + second["metrics"][metric] for metric in first["metrics"]}
    first_curves, second_curves = first.get("curves", {}), second.get("curves", {})
    if first_curves or second_curves:
        if first_curves.keys() != second_curves.keys() or first_curves["step"] != second_curves["step"]:
            raise ValueError(
                f"{name} holds records whose learning curves have different steps or metrics; they cannot be merged"
            )
        merged["curves"] = {"step": first_curves["step"]}
        for metric in first_curves.keys() - {"step"}:
            per_step = zip(first_curves[metric], second_curves[metric], strict=True)
            merged["curves"][metric] = [first_seeds + second_seeds for first_seeds, second_seeds in per_step]
    first_wall, second_wall = first.get("wall_time_s", {}), second.get("wall_time_s", {})
    if first_wall or second_wall:
        phases = {**first_wall, **second_wall}
        merged["wall_time_s"] = {phase: first_wall.get(phase, 0.0) + second_wall.get(phase, 0.0) for phase in phases}
    return merged


# --------------------------------------------------------------------------------------
# Provenance of a run
# --------------------------------------------------------------------------------------


def library_versions() -> dict[str, str | None]:
    """Versions of Python and of the libraries that decide a run's numbers (None when absent)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for distribution in ("jax", "flax", "optax"):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[distribution] = None
    versions["lab"] = lab.__version__
    return versions


def git_commit(directory: str | os.PathLike[str] = ".") -> str | None:
    """The commit checked out in ``directory``, or None outside a git work tree (or without git)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp, the form the store keeps."""
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclasses.dataclass(frozen=True)
class Owner:
    """A process that runs sweep points: its host, PID, and start time (which tells it apart
    from a later process that reuses the PID; None where the system does not say)."""

    host: str
    pid: int
    start: str | None

    @classmethod
    def of(cls, pid: int) -> Owner:
        """The process ``pid`` of this host."""
        return cls(platform.node(), pid, _process_stat(pid)[19])

    @classmethod
    def current(cls) -> Owner:
        return cls.of(os.getpid())

    def is_gone(self) -> bool:
        """Whether the process has certainly ended. Processes of other hosts cannot be seen: never gone."""
        if self.host != platform.node():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, run by another user
            pass
        stat = _process_stat(self.pid)
        return stat[0] == "Z" or (self.start is not None and stat[19] not in (None, self.start))


def _process_stat(pid: int) -> list[str | None]:
    """The fields of /proc/PID/stat after the command name (state first, start time at 19); Nones without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return [None] * 20
    return text.rsplit(")", 1)[1].split()


# --------------------------------------------------------------------------------------
# The SQLite store
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunRow:
    """One sweep point as the store keeps it."""

    sweep: str
    point_id: str
    notebook: str
    parameters: dict[str, Any]
    status: str
    payload: dict[str, Any] | None = None
    error: str | None = None
    traceback: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    versions: dict[str, str | None] | None = None
    git_commit: str | None = None
    output_notebook: str | None = None
    log_path: str | None = None
    updated_at: str | None = None
    # The sweep process that runs (or ran) the point: see Owner.
    owner_host: str | None = None
    owner_pid: int | None = None
    owner_start: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"run status {self.status!r} is not one of {', '.join(STATUSES)}")

    @property
    def owner(self) -> Owner | None:
        if self.owner_host is None or self.owner_pid is None:
            return None
        return Owner(self.owner_host, self.owner_pid, self.owner_start)

    def is_orphaned(self) -> bool:
        """Whether the row is running but its process is gone (killed, crashed, or a lab without owners ran it)."""
        return self.status == "running" and (self.owner is None or self.owner.is_gone())

    def current_status(self) -> str:
        """The status, or ``interrupted`` for a running row whose process is gone (its next run redoes it)."""
        return INTERRUPTED if self.is_orphaned() else self.status


_JSON_COLUMNS = ("parameters", "payload", "versions")
_COLUMNS = tuple(field.name for field in dataclasses.fields(RunRow))


def _encoded(row: RunRow, updated_at: str) -> dict[str, Any]:
    """``row``'s column values as SQLite takes them, in column order."""
    values = dataclasses.asdict(row)
    values["updated_at"] = updated_at
    for column in _JSON_COLUMNS:
        if values[column] is not None:
            values[column] = json.dumps(values[column], sort_keys=True)
    return values


def _store_problem(path: Path, error: sqlite3.DatabaseError) -> str:
    message = str(error)
    if "malformed" in message or "not a database" in message:
        return (
            f"{path} is damaged ({message}); recover what it holds with "
            f"`sqlite3 {path} .recover | sqlite3 recovered.db` and use recovered.db, or restore a back-up"
        )
    if "readonly" in message or "unable to open" in message:
        return f"cannot use the results store {path} ({message}); make it, and its folder, writable"
    return f"results store {path}: {message}"


class ResultsStore:
    """The SQLite database of sweep results, safe for several processes writing at once.

    Every call opens its own short-lived connection, so a store object may be
    shared with (or recreated in) worker processes. Writes are single transactions:
    a row is either fully saved or not at all. The database uses write-ahead
    logging, so readers (``lab runs``, reports) never block a running sweep.
    """

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_PATH, *, create: bool = True) -> None:
        # Absolute from the start: the same file even if the process's working directory
        # changes later (papermill changes it around every notebook read and write).
        self.path = Path(path).absolute()
        if self.path.is_dir():
            raise StoreError(f"results store {self.path} is a folder; give the path of a results.db file")
        if not self.path.exists():
            if not create:
                raise FileNotFoundError(
                    f"no results store at {self.path}; run `lab sweep` first or pass the path of an existing results.db"
                )
            self._create()
        self._check_header()
        found = self._schema_version()
        if found is None:
            raise StoreError(
                f"{self.path} is an SQLite database but not a lab results store (it has no schema version); "
                "lab leaves it as it is: give another store path"
            )
        self._enable_write_ahead_log()
        if found < SCHEMA_VERSION:
            self._migrate()
        elif found != SCHEMA_VERSION:
            raise StoreVersionError(
                f"{self.path} has results schema version {found}, "
                f"but this lab (version {lab.__version__}) reads version {SCHEMA_VERSION}; "
                f"use the lab version that wrote it, or a new store path"
            )

    def _create(self) -> None:
        """Write a complete new store under a temporary name, then link it into place.

        So a store file that exists is always complete (any other file there is not a
        store, and is refused, never overwritten), and when several processes create
        it at once, one wins and the others use its store.
        """
        if not self.path.parent.is_dir() and self.path.parent.exists():
            raise StoreError(f"cannot create the results store {self.path}: {self.path.parent} is not a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(handle)
        try:
            connection = sqlite3.connect(temporary, isolation_level=None)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("BEGIN")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                connection.execute("COMMIT")
            finally:
                connection.close()  # the last connection folds the write-ahead log into the file
            with contextlib.suppress(FileExistsError):  # another process created it first
                os.link(temporary, self.path)
        finally:
            os.unlink(temporary)

    def _check_header(self) -> None:
        with open(self.path, "rb") as file:
            header = file.read(len(_SQLITE_HEADER))
        if header != _SQLITE_HEADER:
            what = "an empty file" if not header else "not an SQLite database"
            raise StoreError(
                f"{self.path} is {what}, not a lab results store; lab leaves it as it is: "
                "restore it from a back-up, or move it away to start a new store"
            )

    def _migrate(self) -> None:
        with self._write() as connection:
            # Checked again under the write lock: another process may have migrated it meanwhile.
            present = {column[1] for column in connection.execute("PRAGMA table_info(runs)")}
            for column, kind in zip(_OWNER_COLUMNS, ("TEXT", "INTEGER", "TEXT"), strict=True):
                if column not in present:
                    connection.execute(f"ALTER TABLE runs ADD COLUMN {column} {kind}")
            connection.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )

    def _enable_write_ahead_log(self) -> None:
        # WAL is stored in the file, so it is set once per database. Switching to it needs an
        # exclusive lock, and SQLite answers "database is locked" at once, without waiting on the
        # busy timeout, when another process is doing the same; so wait and retry here.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                with self._connect() as connection:
                    if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        connection.execute("PRAGMA journal_mode=WAL")
                return
            except StoreError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _schema_version(self) -> int | None:
        with self._connect() as connection:
            has_meta = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
            if not has_meta:
                return None
            found = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return None if found is None else int(found[0])

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection; any SQLite error while it is in use becomes a StoreError naming the file."""
        try:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE below).
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            try:
                yield connection
            finally:
                connection.close()
        except sqlite3.DatabaseError as error:
            raise StoreError(_store_problem(self.path, error)) from error

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front (waiting up to the busy timeout);
        # a deferred transaction that upgrades later can fail at once with SQLITE_BUSY in WAL mode.
        with self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def save(self, *rows: RunRow) -> None:
        """Insert each row, or replace the row of the same (sweep, point_id), in one transaction."""
        with self._write() as connection:
            self._upsert(connection, rows)

    @staticmethod
    def _upsert(connection: sqlite3.Connection, rows: Iterable[RunRow]) -> None:
        updated_at = utc_now()
        placeholders = ", ".join(f":{column}" for column in _COLUMNS)
        updates = ", ".join(
            f"{column} = excluded.{column}" for column in _COLUMNS if column not in ("sweep", "point_id")
        )
        connection.executemany(
            f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT (sweep, point_id) DO UPDATE SET {updates}",
            [_encoded(row, updated_at) for row in rows],
        )

    def add_pending(self, *rows: RunRow) -> None:
        """Insert each row that the store does not hold yet; rows it holds, whoever runs them, stay as they are."""
        with self._write() as connection:
            connection.executemany(
                f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                "ON CONFLICT (sweep, point_id) DO NOTHING",
                [tuple(_encoded(row, utc_now()).values()) for row in rows],
            )

    def claim(self, row: RunRow, *, retry_failed: bool) -> RunRow | None:
        """Save ``row`` (running, with its owner) if its point is free to run, in one transaction.

        Free means: not in the store, pending, left running by a process that is gone, or
        failed when ``retry_failed``. Returns None when claimed, else the stored row, which
        another process may be running (or have finished) meanwhile.
        """
        with self._write() as connection:
            found = connection.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE sweep = ? AND point_id = ?", (row.sweep, row.point_id)
            ).fetchone()
            stored = None if found is None else self._row(found)
            if stored is not None and not (
                stored.status == "pending" or stored.is_orphaned() or (retry_failed and stored.status == "failed")
            ):
                return stored
            self._upsert(connection, [row])
        return None

    def release(self, rows: Iterable[RunRow], owner: Owner) -> None:
        """Set back to pending those of ``rows`` that are still running under ``owner``; never touches other rows."""
        with self._write() as connection:
            connection.executemany(
                "UPDATE runs SET status = 'pending', started_at = NULL, owner_host = NULL, owner_pid = NULL, "
                "owner_start = NULL, updated_at = ? WHERE sweep = ? AND point_id = ? AND status = 'running' "
                "AND owner_host = ? AND owner_pid = ? AND owner_start IS ?",
                [(utc_now(), row.sweep, row.point_id, owner.host, owner.pid, owner.start) for row in rows],
            )

    def rows(self, sweep: str | None = None) -> list[RunRow]:
        """All rows, or those of one sweep, in sweep then start order."""
        query = f"SELECT {', '.join(_COLUMNS)} FROM runs"
        arguments: tuple[str, ...] = ()
        if sweep is not None:
            query += " WHERE sweep = ?"
            arguments = (sweep,)
        query += " ORDER BY sweep, started_at IS NULL, started_at, point_id"
        with self._connect() as connection:
            return [self._row(values) for values in connection.execute(query, arguments)]

    def find_points(self, point_id_prefix: str) -> list[RunRow]:
        """Rows whose point id starts with ``point_id_prefix``, across all sweeps."""
        escaped = point_id_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = f"SELECT {', '.join(_COLUMNS)} FROM runs WHERE point_id LIKE ? ESCAPE '\\' ORDER BY sweep, point_id"
        with self._connect() as connection:
            return [self._row(values) for values in connection.execute(query, (escaped + "%",))]

    def sweeps(self) -> pd.DataFrame:
        """One line per sweep: its notebook, how many points are in each status (and interrupted), its last update."""
        counted = (*STATUSES, INTERRUPTED)
        lines: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            line = lines.setdefault(
                row.sweep, {"sweep": row.sweep, "notebook": row.notebook, "points": 0, **dict.fromkeys(counted, 0)}
            )
            line["points"] += 1
            line[row.current_status()] += 1
            line["updated_at"] = max(line.get("updated_at", ""), row.updated_at or "")
        return pd.DataFrame(list(lines.values()), columns=["sweep", "notebook", "points", *counted, "updated_at"])

    @staticmethod
    def _row(values: tuple[Any, ...]) -> RunRow:
        fields = dict(zip(_COLUMNS, values, strict=True))
        for column in _JSON_COLUMNS:
            if fields[column] is not None:
                fields[column] = json.loads(fields[column])
        return RunRow(**fields)


# --------------------------------------------------------------------------------------
# pandas view and exports
# --------------------------------------------------------------------------------------

# Columns of the store that load() keeps as they are, in the order they close the frame.
_BOOKKEEPING = (
    "notebook", "parameters", "started_at", "ended_at", "duration_s", "error", "traceback",
    "output_notebook", "log_path", "git_commit", "updated_at",
)  # fmt: skip
_LEADING = ("sweep", "point_id", "status", *DESCRIPTORS)
_RESERVED = {*_LEADING, *_BOOKKEEPING, "curves"} - set(DESCRIPTORS)


def load(sweep: str | None = None, *, path: str | os.PathLike[str] = DEFAULT_PATH) -> pd.DataFrame:
    """The store as a DataFrame, one row per sweep point (all sweeps unless ``sweep`` is given).

    Columns, in order: sweep, point_id, status; the record's dataset, setup, method,
    labels_per_class and seeds (they win over the parameters of the same names:
    they are what the notebook actually ran); one column per other notebook
    parameter; one column per metric holding the per-seed list (aligned with
    ``seeds``, so means and spreads are computed later); ``<phase>_time_s`` per
    wall-time phase; ``curves`` (the record's dict, or None); the bookkeeping columns
    notebook, parameters (the dict passed to the notebook), started_at, ended_at,
    duration_s, error, traceback, output_notebook, log_path, git_commit, updated_at;
    and ``<library>_version``. A parameter or metric whose name is a bookkeeping
    column is kept as ``param.<name>`` or ``metric.<name>``. Points that are not
    done have no metric values.
    """
    entries = [_flatten(row) for row in ResultsStore(path, create=False).rows(sweep)]
    found = dict.fromkeys(column for entry in entries for column in entry)
    versions = [column for column in found if column.endswith("_version")]
    middle = [
        column for column in found if column not in _LEADING and column not in _BOOKKEEPING and column not in versions
    ]
    frame = pd.DataFrame(entries, columns=[*_LEADING, *middle, *_BOOKKEEPING, *versions])
    for column in ("started_at", "ended_at", "updated_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    # Points that are not done leave gaps, which would turn integer columns such as
    # labels_per_class into floats; a nullable integer type keeps them integers.
    for column in [*middle, "labels_per_class"]:
        present = [entry[column] for entry in entries if entry.get(column) is not None]
        if present and all(_is_int(value) for value in present):
            frame[column] = frame[column].astype("Int64")
    return frame


def _flatten(row: RunRow) -> dict[str, Any]:
    entry: dict[str, Any] = {"sweep": row.sweep, "point_id": row.point_id, "status": row.current_status()}
    for name, value in row.parameters.items():
        entry[f"param.{name}" if name in _RESERVED else name] = value
    payload = row.payload or {}
    entry.update({key: payload[key] for key in DESCRIPTORS if key in payload})
    for name, values in payload.get("metrics", {}).items():
        entry[f"metric.{name}" if name in _RESERVED or name in row.parameters else name] = values
    for phase, seconds in payload.get("wall_time_s", {}).items():
        entry[f"{phase}_time_s"] = seconds
    entry["curves"] = payload.get("curves")
    entry.update({column: getattr(row, column) for column in _BOOKKEEPING})
    for library, version in (row.versions or {}).items():
        entry[f"{library}_version"] = version
    return entry


def check_output_path(path: str | os.PathLike[str], what: str, *, folder: bool = False) -> None:
    """Raise ValueError naming ``path`` when it cannot become a file (or a folder), before any work is done."""
    path = Path(path)
    if not folder and path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name (e.g. {path / 'results.csv'})")
    existing = next((known for known in (path, *path.parents) if known.exists()), None)
    if existing is not None and (folder or existing != path) and not existing.is_dir():
        if existing == path:
            raise ValueError(f"{what} {path} is a file; give a folder")
        raise ValueError(f"{what} {path} needs {existing} to be a folder, but it is a file")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one step.

    Readers see either the old file or the complete new one, never a partial write,
    and an error (or Ctrl-C) while writing leaves the old file untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def export(
    path_out: str | os.PathLike[str],
    format: str = "csv",
    sweep: str | None = None,
    *,
    path: str | os.PathLike[str] = DEFAULT_PATH,
) -> Path:
    """Write :func:`load`'s DataFrame to ``path_out`` as CSV or Parquet; returns the path written.

    In CSV, lists and dicts (per-seed metrics, curves, parameters) are JSON text. In
    Parquet, per-seed lists stay lists and dict-valued columns are JSON text.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"export format {format!r} is not one of {', '.join(EXPORT_FORMATS)}")
    check_output_path(path_out, "export output")
    frame = load(sweep, path=path)
    if sweep is not None and frame.empty:
        raise ValueError(f"no sweep named {sweep!r} in {path}; `lab runs list` shows the sweeps")
    with atomic_output(path_out) as temporary:
        if format == "csv":
            _json_encode(frame, lambda value: isinstance(value, (list, dict))).to_csv(temporary, index=False)
        else:
            try:
                import pyarrow  # noqa: F401  (only to give a clear error; pandas imports it itself)
            except ImportError as error:
                raise ImportError("Parquet export needs pyarrow: pip install 'lab[parquet]'") from error
            _json_encode(frame, lambda value: isinstance(value, dict) or _is_nested_list(value)).to_parquet(
                temporary, index=False
            )
    return Path(path_out)


def _is_nested_list(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(item, (list, dict)) for item in value)


def _json_encode(frame: pd.DataFrame, needs_encoding: Callable[[Any], bool]) -> pd.DataFrame:
    """``frame`` with the lists and dicts of each column holding a value that ``needs_encoding`` as JSON text."""
    encoded = frame.copy()
    for column in encoded.columns:
        if any(needs_encoding(value) for value in encoded[column]):
            encoded[column] = encoded[column].map(
                lambda value: json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
            )
    return encoded


def export_mlflow(
    sweep: str,
    tracking_uri: str | None = None,
    *,
    path: str | os.PathLike[str] = DEFAULT_PATH,
) -> list[str]:
    """Copy the done points of ``sweep`` to MLflow, one MLflow run per point; returns the MLflow run ids.

    The MLflow experiment is named after the sweep. Each run gets the notebook
    parameters as params; per metric the mean over seeds (``accuracy``), the
    standard deviation (``accuracy_std``) and each seed's value (``accuracy_seed_3``);
    learning curves as step-wise means (``curve_accuracy``); the git commit and
    library versions as tags; and the executed notebook as an artifact. Exporting
    twice makes a second set of runs.
    """
    try:
        import mlflow
    except ImportError as error:
        raise ImportError("MLflow export needs mlflow: pip install 'lab[mlflow]'") from error
    rows = [row for row in ResultsStore(path, create=False).rows(sweep) if row.status == "done"]
    if not rows:
        raise ValueError(f"sweep {sweep!r} has no done points in {path}")
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(sweep)
    run_ids = []
    for row in rows:
        assert row.payload is not None  # done rows always hold their record
        tags = {"lab.sweep": sweep, "lab.point_id": row.point_id, "lab.git_commit": row.git_commit or "unknown"}
        tags.update({f"lab.version.{library}": str(version) for library, version in (row.versions or {}).items()})
        with mlflow.start_run(run_name=row.point_id, tags=tags) as run:
            mlflow.log_params(
                {
                    name: json.dumps(value) if isinstance(value, (list, dict)) else value
                    for name, value in row.parameters.items()
                }
            )
            mlflow.log_metrics(_mlflow_metrics(row.payload))
            for name, per_step in (row.payload.get("curves") or {}).items():
                if name != "step":
                    for step, values in zip(row.payload["curves"]["step"], per_step, strict=True):
                        mlflow.log_metric(f"curve_{name}", _mean(values), step=step)
            if row.output_notebook and Path(row.output_notebook).exists():
                mlflow.log_artifact(row.output_notebook)
            run_ids.append(run.info.run_id)
    return run_ids


def _mlflow_metrics(payload: Mapping[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, values in payload["metrics"].items():
        metrics[name] = _mean(values)
        if len(values) > 1:
            metrics[f"{name}_std"] = statistics.stdev(values)
        for seed, value in zip(payload["seeds"], values, strict=True):
            metrics[f"{name}_seed_{seed}"] = value
    for phase, seconds in (payload.get("wall_time_s") or {}).items():
        metrics[f"{phase}_time_s"] = seconds
    return metrics


# --------------------------------------------------------------------------------------
# `lab runs`
# --------------------------------------------------------------------------------------


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``lab runs {list,show,export}`` to the ``lab`` command line."""
    parser = subparsers.add_parser("runs", help="list, inspect and export stored sweep results")
    parser.add_argument("--store", default=str(DEFAULT_PATH), help=f"results database (default: {DEFAULT_PATH})")
    actions = parser.add_subparsers(dest="runs_command", required=True)

    list_parser = actions.add_parser("list", help="one line per sweep with its point counts by status")
    list_parser.set_defaults(handler=_cli_list)

    show_parser = actions.add_parser("show", help="the points of a sweep, or the details of one point")
    show_parser.add_argument(
        "target", metavar="SWEEP_OR_POINT", help="a sweep name, or a point id (or a unique prefix of one)"
    )
    show_parser.set_defaults(handler=_cli_show)

    export_parser = actions.add_parser("export", help="write the results as CSV or Parquet")
    export_parser.add_argument("--format", choices=EXPORT_FORMATS, default="csv")
    export_parser.add_argument("--output", required=True, metavar="FILE")
    export_parser.add_argument("--sweep", default=None, help="only this sweep (default: all)")
    export_parser.set_defaults(handler=_cli_export)
    return parser


def _cli_list(args: argparse.Namespace) -> int:
    sweeps = ResultsStore(args.store, create=False).sweeps()
    if sweeps.empty:
        print(f"{args.store} holds no sweeps yet")
    else:
        print(sweeps.to_string(index=False))
    return 0


def _cli_show(args: argparse.Namespace) -> int:
    results = ResultsStore(args.store, create=False)
    rows = results.rows(args.target)
    if rows:
        print(_points_table(rows).to_string(index=False))
        return 0
    matches = results.find_points(args.target)
    if not matches:
        raise ValueError(
            f"{args.target!r} is neither a sweep nor a point id in {args.store}; `lab runs list` shows the sweeps"
        )
    if len(matches) > 1:
        raise ValueError(
            f"point id prefix {args.target!r} is ambiguous: "
            + ", ".join(f"{row.sweep}/{row.point_id}" for row in matches)
        )
    print(_point_details(matches[0]))
    return 0


def _points_table(rows: list[RunRow]) -> pd.DataFrame:
    lines = []
    for row in rows:
        accuracy = (row.payload or {}).get("metrics", {}).get("accuracy")
        lines.append(
            {
                "point_id": row.point_id,
                "status": row.current_status(),
                "parameters": json.dumps(row.parameters, sort_keys=True),
                "accuracy": f"{_mean(accuracy):.4f}" if accuracy else "",
                "duration_s": "" if row.duration_s is None else f"{row.duration_s:.1f}",
                "error": row.error.splitlines()[0][:80] if row.error else "",
            }
        )
    return pd.DataFrame(lines)


def _point_details(row: RunRow) -> str:
    lines = [
        f"sweep:           {row.sweep}",
        f"point:           {row.point_id}",
        f"status:          {row.current_status()}"
        + ("" if row.owner is None else f" (process {row.owner.pid} on {row.owner.host})"),
        f"notebook:        {row.notebook}",
        f"output notebook: {row.output_notebook}",
        f"log:             {row.log_path}",
        f"started / ended: {row.started_at} / {row.ended_at}"
        + ("" if row.duration_s is None else f" ({row.duration_s:.1f} s)"),
        f"git commit:      {row.git_commit or 'unknown (not run in a git work tree)'}",
        f"versions:        {json.dumps(row.versions, sort_keys=True)}",
        f"parameters:      {json.dumps(row.parameters, sort_keys=True)}",
    ]
    if row.payload:
        for name, values in row.payload["metrics"].items():
            lines.append(
                f"{name + ':':<17}{_mean(values):.4f} (per seed {dict(zip(row.payload['seeds'], values, strict=True))})"
            )
    if row.error:
        lines += [f"error:           {row.error}", "traceback:", row.traceback or ""]
    return "\n".join(lines)


def _cli_export(args: argparse.Namespace) -> int:
    written = export(args.output, format=args.format, sweep=args.sweep, path=args.store)
    print(f"wrote {written}")
    return 0
