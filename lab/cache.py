"""Where lab keeps what it computes once and reuses, and how entries are keyed.

Every on-disk cache entry is keyed by everything that decides its content: the
config that describes it, and the :func:`fingerprint` of the code that produces it,
meaning the source of the producing ``lab`` module and of every ``lab`` module it
imports, and the versions of the numerical libraries. When any of them changes, the
key changes and the entry is made again; an entry made by other code is never
reused. (JAX's own compilation cache, kept in ``cache_dir()/jax``, keys itself.)
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path
from typing import Any

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
