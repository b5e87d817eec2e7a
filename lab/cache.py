"""Where lab keeps what it computes once and reuses, and how entries are keyed.

Every on-disk cache entry is keyed by everything that decides its content: the
config that describes it, the :func:`fingerprint` of the code that produces it,
meaning the source of the producing ``lab`` module and of every ``lab`` module it
imports, and the versions of the numerical libraries, and, for an entry derived from
data, the :func:`content_digest` of those data (never their name: other data under the
same name make another entry). When any of them changes, the key changes and the entry
is made again; an entry made by other code or from other data is never reused. (JAX's
own compilation cache, kept in ``cache_dir()/jax``, keys itself.)

Every entry is also checked before it is read: when it is written, the SHA-256 digest of each
of its files is recorded (a folder's in its ``manifest.sha256``, a file's in ``<file>.sha256``,
both as ``sha256sum`` writes them, so ``sha256sum -c`` checks them too). An entry that fails the
check, or cannot be read, is discarded and made again, saying so in one line; a cache is an
optimisation, so an entry that cannot be written (a full disk, a read-only folder) is kept in
memory only, again saying so.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lab import files
from lab.processes import Owner
from lab.provenance import package_versions

# Libraries whose version can change what lab computes, in a cached entry too.
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint", "scikit-learn", "mnist1d", "tokenizers")

_PACKAGE = "lab"
_PACKAGE_DIR = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Where generated and downloaded data and pretrained backbones are kept: ``$LAB_CACHE``, else ``~/.cache/lab``."""
    return Path(os.environ.get("LAB_CACHE") or Path.home() / ".cache" / "lab").expanduser()


def key(*parts: Any, length: int = 16) -> str:
    """A short stable hash of JSON-serialisable ``parts`` (the same in every process and on every machine)."""
    text = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def content_digest(*parts: Any) -> str:
    """The SHA-256 (hex) of data's content: the one way lab digests the data an entry is derived from.

    A numpy array counts by its dtype, shape and bytes (not its memory layout), anything else as
    JSON (texts, names, numbers, None). Each part is framed by its kind and size, so ``("ab", "c")``
    and ``("a", "bc")`` differ.
    """
    import numpy as np  # imported here: keys of entries not derived from arrays need no numpy

    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray) and not part.dtype.hasobject:
            array = np.ascontiguousarray(part)
            digest.update(f"array {np.lib.format.dtype_to_descr(array.dtype)!r} {array.shape}\n".encode())
            digest.update(array.reshape(-1).view(np.uint8))
        else:
            encoded = json.dumps(part.tolist() if isinstance(part, np.ndarray) else part, sort_keys=True).encode()
            digest.update(f"json {len(encoded)}\n".encode())
            digest.update(encoded)
    return digest.hexdigest()


def fingerprint(module: str, *, package_dir: Path = _PACKAGE_DIR) -> str:
    """A hash of the code that ``module`` (e.g. ``"lab.transfer"``) runs: its source and that of every
    ``lab`` module it imports, directly or not, and the versions of :data:`LIBRARIES`.

    Read from the files each time (a few milliseconds), so a source edited in a live
    kernel is seen at once.
    """
    digest = hashlib.sha256()
    for name in sorted(imported_modules(module, package_dir)):
        digest.update(f"{name}\0".encode())
        digest.update(_module_path(name, package_dir).read_bytes())
    digest.update(json.dumps(package_versions(LIBRARIES)).encode())
    return digest.hexdigest()[:16]


def imported_modules(module: str, package_dir: Path = _PACKAGE_DIR) -> set[str]:
    """``module`` and the ``lab`` modules it imports, directly or through others, anywhere in their code
    (imports inside functions too), read from the source without importing anything."""
    found: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        if name in found:
            continue
        found.add(name)
        tree = ast.parse(_module_path(name, package_dir).read_bytes(), filename=name)
        pending.extend(_lab_imports(tree, package_dir) - found)
    return found


def _lab_imports(tree: ast.Module, package_dir: Path) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            # Relative imports (level > 0) are within the package, which is flat.
            base = node.module if node.level == 0 else ".".join(filter(None, (_PACKAGE, node.module)))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    # `from lab import data` names a module; `from lab.data import load` names a function: keep modules.
    return {name for name in names if name.startswith(f"{_PACKAGE}.") and _module_path(name, package_dir).is_file()}


def _module_path(module: str, package_dir: Path) -> Path:
    return package_dir.joinpath(*module.split(".")[1:]).with_suffix(".py")


# --------------------------------------------------------------------------- checked entries

MANIFEST = "manifest.sha256"
# Inside a folder entry being written: the process writing it, so that a live writer's folder is never removed.
_WRITER = ".writer.json"
# A temporary entry whose writer is not known to be alive is left over after this long.
STALE_AFTER_S = 6 * 3600
# What an OSError of a write that cannot succeed here says (not a bug, nothing to retry).
_DISK_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}

T = TypeVar("T")


def notice(message: str) -> None:
    """Tell the user, in one line on stderr, about something lab did on its own (e.g. rebuilt a damaged entry)."""
    sys.stderr.write(f"lab: {message}\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike[str]) -> Path:
    """Record the SHA-256 of every file under ``folder`` (but the manifest) in ``folder/manifest.sha256``."""
    folder = Path(folder)
    lines = [f"{sha256_file(path)}  {name}\n" for name, path in sorted(_files_in(folder).items())]
    return files.write_atomic(folder / MANIFEST, "".join(lines))


def damage(folder: str | os.PathLike[str]) -> str | None:
    """None if every file under ``folder`` has the digest its manifest records and none is missing or
    unrecorded; else what is wrong, naming the first damaged file (e.g. ``"damaged: arrays/d/0.data"``)."""
    folder = Path(folder)
    try:
        recorded = _parse_sha256sum((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"no readable {MANIFEST}"
    present = _files_in(folder)
    for name in sorted(recorded.keys() | present.keys()):
        if name not in present:
            return f"missing: {name}"
        if name not in recorded:
            return f"not in {MANIFEST}: {name}"
        if sha256_file(present[name]) != recorded[name]:
            return f"damaged: {name}"
    return None


def _files_in(folder: Path) -> dict[str, Path]:
    return {
        path.relative_to(folder).as_posix(): path
        for path in folder.rglob("*")
        if path.is_file() and path.relative_to(folder).as_posix() != MANIFEST
    }


def _parse_sha256sum(text: str) -> dict[str, str]:
    recorded = {}
    for line in text.splitlines():
        digest, name = line.split("  ", 1)
        if len(digest) != 64:
            raise ValueError(f"not a SHA-256 line: {line!r}")
        recorded[name] = digest
    return recorded


def disk_error(error: BaseException) -> str | None:
    """What keeps a write from succeeding here (e.g. "the disk is full"), if ``error`` or an error it
    was raised from or during is an OSError of that kind; None for any other error."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
            return _DISK_ERRORS[error.errno]
        # TensorStore (orbax's arrays) raises ValueError("RESOURCE_EXHAUSTED: ... [os_error_code='28']").
        found = re.search(r"\[os_error_code='(\d+)'\]", str(error))
        if found and int(found[1]) in _DISK_ERRORS:
            return _DISK_ERRORS[int(found[1])]
        error = error.__cause__ or error.__context__
    return None


def discard(entry: Path) -> None:
    """Remove a file or folder entry; a folder is first renamed aside, so no reader sees half of it."""
    if entry.is_dir():
        aside = files.temporary_sibling(entry)
        try:
            entry.rename(aside)
        except OSError:
            return  # another process discarded it first
        shutil.rmtree(aside, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
    _digest_file(entry).unlink(missing_ok=True)


def read_checked(path: Path, decode: Callable[[Path], T], what: str) -> T | None:
    """``decode(path)`` of an entry written by :func:`publish` or :func:`write_checked`, or None when it
    is absent, or damaged (then it is discarded, saying so: the caller makes it again)."""
    if not path.exists():
        return None
    problem = damage(path) if path.is_dir() else file_damage(path)
    if problem is None:
        try:
            return decode(path)
        except Exception as error:  # the digests match, yet it does not read: made by faulty code, make it again
            problem = f"unreadable: {type(error).__name__}: {error}".splitlines()[0]
    notice(f"{what} cached in {path} failed its check ({problem}); discarded, it is made again")
    discard(path)
    return None


def write_checked(path: Path, content: bytes | str, what: str) -> bool:
    """Write a one-file entry with its digest beside it (``<path>.sha256``). A write that cannot succeed here
    (full disk, read-only cache) is not an error: it says so in one line and returns False."""
    path = Path(path)
    try:
        _remove_stale_temporaries(path.parent)
        files.write_atomic(path, content)
        record_digest(path)
        return True
    except OSError as error:
        _not_cached(what, path, error)
        return False


def publish(entry: Path, write: Callable[[Path], None], what: str) -> bool:
    """Make the folder entry ``entry``: ``write(folder)`` fills a new temporary folder beside it, its manifest
    is recorded, and it is renamed into place, so readers never see half of it. Temporary folders left by
    writers that are gone (killed) are removed first. A write that cannot succeed here says so in one line
    and returns False (any other error is raised); the temporary folder is removed either way."""
    entry = Path(entry)
    temporary = files.temporary_sibling(entry)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(entry.parent)
        temporary.mkdir()
        (temporary / _WRITER).write_text(Owner.current().to_json())
        write(temporary)
        (temporary / _WRITER).unlink()
        write_manifest(temporary)
        try:
            temporary.rename(entry)
        except OSError:
            if not entry.is_dir():
                raise
            # Another process published the same entry first; both made the same thing, keep theirs.
        return True
    except Exception as error:
        if disk_error(error) is None:
            raise
        _not_cached(what, entry, error)
        return False
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def npz_bytes(**arrays: Any) -> bytes:
    """``arrays`` as the content of an ``.npz`` file, for :func:`write_checked`."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def read_npz(path: Path) -> dict[str, Any]:
    """Every array of the ``.npz`` file ``path``, read into memory."""
    import numpy as np

    with np.load(path) as stored:
        return {name: stored[name] for name in stored.files}


def _not_cached(what: str, path: Path, error: BaseException) -> None:
    reason = disk_error(error) or str(error)
    notice(f"{what} was not cached ({path.parent}: {reason}); going on with it in memory")


def record_digest(path: Path) -> None:
    """Write the SHA-256 of the file ``path`` beside it, in ``<path>.sha256``, for :func:`file_damage`."""
    files.write_atomic(_digest_file(path), f"{sha256_file(path)}  {path.name}\n")


def _digest_file(path: Path) -> Path:
    return path.with_name(f"{path.name}.sha256")


def has_digest(path: Path) -> bool:
    return _digest_file(path).is_file()


def file_damage(path: Path) -> str | None:
    """None if the file ``path`` has the digest recorded beside it (:func:`record_digest`), else what is wrong."""
    try:
        recorded = _parse_sha256sum(_digest_file(path).read_text())
    except (OSError, ValueError):
        return f"no readable {_digest_file(path).name}"
    return None if recorded.get(path.name) == sha256_file(path) else f"damaged: {path.name}"


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove the temporary entries (``.NAME.UUID.tmp``) left by writers that are gone (killed): a folder
    whose writer, a process of this host, has ended; any other one older than :data:`STALE_AFTER_S`."""
    for temporary in folder.glob(".*.tmp"):
        try:
            age = time.time() - temporary.stat().st_mtime
        except OSError:
            continue  # renamed into place, or removed, meanwhile
        writer = _writer_of(temporary)
        here = writer is not None and writer.host == Owner.current().host
        if writer.is_gone() if here else age > STALE_AFTER_S:
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)


def _writer_of(temporary: Path) -> Owner | None:
    try:
        found = Owner.from_json((temporary / _WRITER).read_text())
    except OSError:  # a file, or a folder whose writer has not written its name yet
        return None
    return None if found is None else found[0]
