"""Where a result comes from: library versions, git commit, host, devices and time.

Experiment results (:class:`lab.experiment.Result`), sweep rows (:mod:`lab.sweep`)
and cache fingerprints (:mod:`lab.cache`) all read them here, so every record of a
run names the same libraries in the same way.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import lab

# The libraries whose versions a result records, besides Python and lab itself.
RECORDED_LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy")


def package_versions(distributions: Iterable[str]) -> dict[str, str | None]:
    """The installed version of each distribution, in the order given; None for one not installed."""
    versions: dict[str, str | None] = {}
    for distribution in distributions:
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            versions[distribution] = None
    return versions


def library_versions() -> dict[str, str | None]:
    """Versions of Python, of :data:`RECORDED_LIBRARIES` (None when absent) and of lab."""
    return {"python": platform.python_version(), **package_versions(RECORDED_LIBRARIES), "lab": lab.__version__}


def git_commit(directory: str | os.PathLike[str] = ".") -> str | None:
    """The commit checked out in ``directory``, or None outside a git work tree (or without git)."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def host() -> str:
    """This machine's network name."""
    return platform.node()


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp, the form the results store keeps."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def environment(directory: str | os.PathLike[str] = ".") -> dict[str, Any]:
    """Library versions, the git commit of ``directory``, the host and JAX's devices, for the result of a run."""
    import jax  # imported here: sweeps and caches record provenance without JAX's import time

    return {
        "versions": library_versions(),
        "git_commit": git_commit(directory),
        "host": host(),
        "devices": [str(device) for device in jax.devices()],
    }
