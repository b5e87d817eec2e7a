"""Writing files so that readers never see half of one.

Every file lab writes for others to read (datasets, results, exports, reports,
kept sweep outcomes) is written under a temporary name beside its target and then
renamed into place in one step: readers see the old file or the complete new one,
and an error (or Ctrl-C) while writing leaves the old file as it was.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

SQLITE_HEADER = b"SQLite format 3\x00"
# Below this much free space a folder counts as full: checked before hours of training, not after.
MIN_FREE_BYTES = 1 << 20
# Per format written here, its name and what describe() calls a file of it: such a file (or an empty one)
# may be replaced by one of that format.
FORMATS = {"csv": ("CSV", "a text file"), "parquet": ("Parquet", "a Parquet file"), "json": ("JSON", "a JSON file")}


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A new, hidden name in ``path``'s folder for writing ``path``'s content before it is renamed into place.

    Unique per call (several processes may write the same target at once) and not
    created here, so a file written there gets the user's umask (``tempfile.mkstemp``
    would make it private).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write; on success it replaces ``path`` in one step.

    The folder is created when missing. When the block raises, the temporary file is
    removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def _naming(target: Path) -> Iterator[None]:
    """Re-raise an OSError of writing ``target`` (a full disk, say) as one naming ``target``, not the temporary file."""
    try:
        yield
    except OSError as error:
        raise OSError(error.errno, f"cannot write {target}: {error.strerror or error}") from error


def write_together(writers: Mapping[str | os.PathLike[str], Callable[[Path], object]]) -> list[Path]:
    """Write several files as one set: each ``writers[path](temporary)`` writes a temporary file, and only
    when all are written are they renamed into place, so a failure (a full disk) leaves none of them.

    Returns the paths written. An OSError names the path whose writing failed.
    """
    temporaries = {Path(path): temporary_sibling(path) for path in writers}
    try:
        for (target, temporary), write in zip(temporaries.items(), writers.values(), strict=True):
            target.parent.mkdir(parents=True, exist_ok=True)
            with _naming(target):
                write(temporary)
        for target, temporary in temporaries.items():
            with _naming(target):
                os.replace(temporary, target)
    finally:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)
    return list(temporaries)


def write_atomic(path: str | os.PathLike[str], content: bytes | str) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` through :func:`atomic_path`; returns the path.

    An OSError (a full disk) names ``path``."""
    with atomic_path(path) as temporary, _naming(Path(path)):
        temporary.write_bytes(content.encode() if isinstance(content, str) else content)
    return Path(path)


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
    folder_found = existing if existing is None or existing.is_dir() else existing.parent
    if folder_found is not None:
        if not os.access(folder_found, os.W_OK):
            raise ValueError(f"{what} {path} cannot be written: {folder_found} is not writable")
        check_free_space(folder_found, f"{what} {path}")


def check_free_space(folder: str | os.PathLike[str], what: str) -> None:
    """Raise ValueError naming ``what`` when the disk of ``folder`` (a folder that exists) is full."""
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise ValueError(
            f"{what} cannot be written: the disk of {folder} is full ({free // 1024} KiB free); "
            "free some space or give a path on another disk"
        )


def describe(path: str | os.PathLike[str]) -> str:
    """What the file at ``path`` looks like, from its first bytes, e.g. ``"a JSON file"`` (for messages)."""
    with open(path, "rb") as file:
        head = file.read(4096)
    if not head:
        return "an empty file"
    if head.startswith(SQLITE_HEADER):
        return _describe_database(Path(path))
    if head.startswith(b"PAR1"):
        return "a Parquet file"
    try:  # an incremental decoder: the 4096 bytes may end inside a character
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        return "a binary file"
    return "a JSON file" if text.lstrip().startswith(("{", "[")) else "a text file"


def _describe_database(path: Path) -> str:
    # The results store (lab.store) is the SQLite file that users most need to keep: say so, with its size.
    try:
        connection = sqlite3.connect(path)  # read only by what it runs; a read-only one would leave its WAL files
        try:
            runs = connection.execute("SELECT count(*) FROM runs").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error:
        return "an SQLite database"
    return f"a lab results store ({runs} run{'' if runs == 1 else 's'})"


def check_replaceable(
    path: str | os.PathLike[str],
    what: str,
    format: str,
    *,
    force: bool = False,
    keep: Mapping[str | os.PathLike[str], str] | None = None,
) -> None:
    """Raise ValueError naming ``path`` and what it holds unless writing a ``format`` file there loses nothing.

    A file of another format (a results store, say) is replaced only when ``force``; ``keep``
    maps paths that are never replaced, such as the store the same command writes, to what they are.
    """
    path = Path(path)
    for kept, role in (keep or {}).items():
        if kept is not None and path.resolve() == Path(kept).resolve():
            raise ValueError(f"{what} {path} is {role}; give another file name")
    if not path.is_file() or force:
        return
    name, looks = FORMATS[format]
    found = describe(path)
    if found not in ("an empty file", looks):
        raise ValueError(
            f"{what} {path} is {found}, not a {name} file; "
            "lab leaves it as it is: give another file name, or pass --force to replace it"
        )
