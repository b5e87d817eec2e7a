"""Writing files so that readers never see half of one.

Every file lab writes for others to read (datasets, results, exports, reports,
kept sweep outcomes) is written under a temporary name beside its target and then
renamed into place in one step: readers see the old file or the complete new one,
and an error (or Ctrl-C) while writing leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


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


def write_atomic(path: str | os.PathLike[str], content: bytes | str) -> Path:
    """Write ``content`` (text as UTF-8) to ``path`` through :func:`atomic_path`; returns the path."""
    with atomic_path(path) as temporary:
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
    if folder_found is not None and not os.access(folder_found, os.W_OK):
        raise ValueError(f"{what} {path} cannot be written: {folder_found} is not writable")
