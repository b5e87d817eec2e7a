"""Who is running what: processes named so that others can tell whether they still run, and
locks that only a live process holds.

A sweep's points (:mod:`lab.store`), a training workdir (:func:`lab.experiment.train_and_evaluate`)
and a cache entry being written (:mod:`lab.cache`) each name their process as an :class:`Owner`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from lab import provenance


@dataclasses.dataclass(frozen=True)
class Owner:
    """A process: its host, PID, and start time (which tells it apart from a later process
    that reuses the PID; None where the system does not say)."""

    host: str
    pid: int
    start: str | None

    @classmethod
    def of(cls, pid: int) -> Owner:
        """The process ``pid`` of this host."""
        return cls(provenance.host(), pid, _process_stat(pid)[19])

    @classmethod
    def current(cls) -> Owner:
        return cls.of(os.getpid())

    def is_gone(self) -> bool:
        """Whether the process has certainly ended. Processes of other hosts cannot be seen: never gone."""
        if self.host != provenance.host():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, run by another user
            pass
        stat = _process_stat(self.pid)
        return stat[0] == "Z" or (self.start is not None and stat[19] not in (None, self.start))

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "since": provenance.utc_now()})

    @classmethod
    def from_json(cls, text: str) -> tuple[Owner, str | None] | None:
        """The owner written by :meth:`to_json` and since when, or None for text that is not one."""
        try:
            fields = json.loads(text)
            return cls(str(fields["host"]), int(fields["pid"]), fields["start"]), fields.get("since")
        except (ValueError, TypeError, KeyError):
            return None


def _process_stat(pid: int) -> list[str | None]:
    """The fields of /proc/PID/stat after the command name (state first, start time at 19); Nones without /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return [None] * 20
    return text.rsplit(")", 1)[1].split()


class LockHeldError(RuntimeError):
    """Another live process holds the lock; the message names it."""


@contextlib.contextmanager
def exclusive(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the block, or raise :class:`LockHeldError` naming its holder at once.

    The operating system holds the lock (``flock``) for the process, and lets it go when the process
    ends however it ends (``kill -9`` too): a lock left by a killed process never blocks. The file
    keeps the holder (:class:`Owner`) and since when, to name it to the next process that asks.
    """
    path = Path(path)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Owner.from_json(path.read_text())
            named = "another process" if holder is None else (
                f"process {holder[0].pid} on {holder[0].host} since {holder[1]}"
            )
            raise LockHeldError(
                f"{what} is in use by {named} (lock {path}); wait for it to finish, or stop it"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, Owner.current().to_json().encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock
