"""The results store: where sweeps and ``lab run --store`` keep their records.

Each row is one sweep point: its notebook parameters, its status, and once it
finished its :class:`lab.record.Record` (as JSON, in ``payload``) with provenance
(:mod:`lab.provenance`). Rows live in a SQLite database, ``runs/results.db`` by
default, through :class:`ResultsStore`. A running row names the process that runs
it (:class:`lab.processes.Owner`): a sweep claims a point only when no live process runs it, and
a row left running by a process that is gone reads as ``interrupted``. :func:`load`
turns the rows into a pandas DataFrame; :mod:`lab.export` writes them out, and
``lab runs`` (:mod:`lab.cli`) shows them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

import lab
from lab import files, provenance
from lab.processes import Owner
from lab.record import DESCRIPTORS, is_int

DEFAULT_PATH = Path("runs/results.db")
SCHEMA_VERSION = 2
STATUSES = ("pending", "running", "done", "failed")
# Not stored: how a row left "running" by a process that is gone (killed, crashed) is shown.
INTERRUPTED = "interrupted"

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


class StoreError(RuntimeError):
    """The results database cannot be read or written; the message names the file and what to do."""


class StoreVersionError(StoreError):
    """The results database was written by a lab with a different schema."""


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
    payload: dict[str, Any] | None = None  # the point's record as JSON (lab.record.Record.to_dict)
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
    if ("malformed" in message or "not a database" in message) and not _is_sqlite(path):
        # Replaced while in use (by an output written over it, say): SQLite's recovery cannot read it.
        return _not_a_store(path)
    if "malformed" in message or "not a database" in message:
        return (
            f"{path} is damaged ({message}); recover what it holds with "
            f"`sqlite3 {path} .recover | sqlite3 recovered.db` and use recovered.db, or restore a back-up"
        )
    if "full" in message or "disk I/O" in message:
        return f"cannot use the results store {path} ({message}); its disk may be full: free space there and retry"
    if "readonly" in message or "unable to open" in message:
        return f"cannot use the results store {path} ({message}); make it, and its folder, writable"
    return f"results store {path}: {message}"


def _fold_write_ahead_log(connection: sqlite3.Connection) -> None:
    """Copy the write-ahead log into the database file and check the file, raising sqlite3.Error if it is not complete.

    Closing the last connection would fold the log too, but fails silently (on a full disk, say),
    which would leave a partial file that every later command calls damaged.
    """
    busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if busy:
        raise sqlite3.OperationalError("its write-ahead log could not be copied into the file")
    problems = [line for (line,) in connection.execute("PRAGMA integrity_check")]
    if problems != ["ok"]:
        raise sqlite3.DatabaseError(f"the new file fails its integrity check: {'; '.join(problems[:3])}")


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(len(files.SQLITE_HEADER)) == files.SQLITE_HEADER


def _not_a_store(path: Path) -> str:
    return (
        f"{path} is {files.describe(path)}, not a lab results store; lab leaves it as it is: "
        "restore it from a back-up, or move it away to start a new store"
    )


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
        """Write a complete new store under a temporary name, check it, then link it into place.

        So a store file that exists is always complete (any other file there is not a
        store, and is refused, never overwritten), and when several processes create
        it at once, one wins and the others use its store. On a full disk nothing is
        published and the temporary files are removed.
        """
        if not self.path.parent.is_dir() and self.path.parent.exists():
            raise StoreError(f"cannot create the results store {self.path}: {self.path.parent} is not a folder")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = files.temporary_sibling(self.path)
        try:
            connection = sqlite3.connect(temporary, isolation_level=None)
            try:
                # Exclusive: nobody else sees the file yet, and the log's index then needs no -shm file.
                connection.execute("PRAGMA locking_mode=EXCLUSIVE")
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("BEGIN")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                connection.execute("COMMIT")
                _fold_write_ahead_log(connection)
            finally:
                connection.close()
            with contextlib.suppress(FileExistsError):  # another process created it first
                os.link(temporary, self.path)
        except (sqlite3.Error, OSError) as error:
            raise StoreError(
                f"cannot create the results store {self.path} ({error}); nothing was written there: "
                "free space on its disk (or make its folder writable), or give a store path elsewhere"
            ) from error
        finally:
            for leftover in (temporary, *(Path(f"{temporary}{suffix}") for suffix in ("-wal", "-shm", "-journal"))):
                leftover.unlink(missing_ok=True)

    def _check_header(self) -> None:
        if not _is_sqlite(self.path):
            raise StoreError(_not_a_store(self.path))

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
        updated_at = provenance.utc_now()
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
                [tuple(_encoded(row, provenance.utc_now()).values()) for row in rows],
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
                [(provenance.utc_now(), row.sweep, row.point_id, owner.host, owner.pid, owner.start) for row in rows],
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
# pandas view
# --------------------------------------------------------------------------------------

# Columns of the store that load() keeps as they are, in the order they close the frame.
_BOOKKEEPING = (
    "notebook", "parameters", "started_at", "ended_at", "duration_s", "error", "traceback",
    "output_notebook", "log_path", "git_commit", "updated_at",
)  # fmt: skip
_LEADING = ("sweep", "point_id", "status", *DESCRIPTORS)
_RESERVED = {*_LEADING, *_BOOKKEEPING, "curves", "active"} - set(DESCRIPTORS)


def load(sweep: str | None = None, *, path: str | os.PathLike[str] = DEFAULT_PATH) -> pd.DataFrame:
    """The store as a DataFrame, one row per sweep point (all sweeps unless ``sweep`` is given).

    Columns, in order: sweep, point_id, status; the record's dataset, setup, method,
    labels_per_class and seeds (they win over the parameters of the same names:
    they are what the notebook actually ran); one column per other notebook
    parameter; one column per metric holding the per-seed list (aligned with
    ``seeds``, so means and spreads are computed later); ``<phase>_time_s`` per
    wall-time phase; ``curves`` and ``active`` (the record's dicts, or None: an active-learning
    run's settings, label curve and selections, see :mod:`lab.record`); the bookkeeping columns
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
        if present and all(is_int(value) for value in present):
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
    entry["active"] = payload.get("active")
    entry.update({column: getattr(row, column) for column in _BOOKKEEPING})
    for library, version in (row.versions or {}).items():
        entry[f"{library}_version"] = version
    return entry
