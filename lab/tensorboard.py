"""TensorBoard event files of a run's history, as Flax's examples and USB log theirs, without TensorFlow.

A history is the rows that :func:`lab.train.fit` returns, one per evaluation or chunk: ``step`` and
scalars such as ``train_loss``, ``train_mask_rate``, ``train_pseudo_label_accuracy`` and
``test_accuracy``. :func:`write` keeps them as one event file per run folder, tagged ``train/loss``,
``test/accuracy`` ... (the first ``_`` of a name becomes ``/``, which groups the charts); values not
measured (``None``) are left out. ``tensorboard --logdir runs`` then shows every run below ``runs``.

It needs the optional ``tensorboardX`` (``pip install 'lab[tensorboard]'``), which writes the format
with protocol buffers alone. The file is written under a temporary name and renamed into place
(:mod:`lab.files`), always under the same name (:data:`EVENT_FILE`), so writing a run again
replaces its curves instead of adding a second copy.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lab import files

__all__ = ["EVENT_FILE", "INSTALL", "tag", "with_final", "write", "write_or_say"]

EVENT_FILE = "events.out.tfevents.lab"  # TensorBoard reads every file whose name holds "tfevents"
INSTALL = "pip install 'lab[tensorboard]' (or tensorboardX>=2.6)"
_GROUPS = ("train", "test", "val")


def tag(name: str) -> str:
    """The TensorBoard tag of a history column: ``train_loss`` -> ``train/loss``, ``step`` stays."""
    group, _, rest = name.partition("_")
    return f"{group}/{rest}" if group in _GROUPS and rest else name


def with_final(rows: Iterable[Mapping[str, Any]], final: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``rows`` with the final test metrics (``accuracy``, ``macro_f1``, ...) added to the last as ``test_<name>``."""
    rows = [dict(row) for row in rows]
    if rows:
        rows[-1].update({f"test_{name}": value for name, value in final.items()})
    return rows


Runs = Mapping[str | os.PathLike[str], Iterable[Mapping[str, Any]]]  # folder -> its history rows


def write(runs: Runs) -> list[Path]:
    """Write each run's rows (each a ``step`` and scalars) as the event file of its folder; returns their paths.
    A run without rows (a finished training resumed: nothing trained) leaves its folder as it is.

    Raises ModuleNotFoundError, saying what to install, when tensorboardX is missing.
    """
    try:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.record_writer import RecordWriter
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(f"TensorBoard logs need tensorboardX ({error.name} is missing): {INSTALL}") from None
    now = time.time()
    written = []
    for directory, rows in runs.items():
        rows = list(rows)
        if not rows:
            continue
        path = Path(directory) / EVENT_FILE
        with files.atomic_path(path) as temporary:
            writer = RecordWriter(str(temporary))
            try:
                writer.write(Event(wall_time=now, file_version="brain.Event:2").SerializeToString())
                for row in rows:
                    values = [
                        Summary.Value(tag=tag(name), simple_value=float(value))
                        for name, value in row.items()
                        if name != "step" and value is not None
                    ]
                    event = Event(wall_time=now, step=int(row["step"]), summary=Summary(value=values))
                    writer.write(event.SerializeToString())
            finally:
                writer.close()
        written.append(path)
    return written


def write_or_say(runs: Runs) -> list[Path]:
    """:func:`write`, or, without tensorboardX, one line on stderr saying so: the logs are optional."""
    try:
        return write(runs)
    except ModuleNotFoundError as error:
        folders = ", ".join(str(directory) for directory in runs)
        sys.stderr.write(f"lab: no TensorBoard logs written to {folders}: {error}\n")
        return []
