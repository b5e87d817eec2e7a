"""Where a result comes from: library versions, git commit, host, machine, devices and time.

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


def cpu_model(cpuinfo: str | os.PathLike[str] = "/proc/cpuinfo") -> str:
    """The CPU's model name as Linux's ``cpuinfo`` gives it (e.g. ``"AMD EPYC 7B13"``), else what
    :mod:`platform` knows (e.g. ``"arm"`` or ``"x86_64"``)."""
    try:
        with open(cpuinfo) as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model") and value.strip():  # x86 / ARM boards
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # a name this system lacks, or no os.sysconf (Windows)
        return None


def machine() -> dict[str, Any]:
    """The host's CPU model, its logical core count and its memory: what a timing depends on besides the code."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "memory_bytes": memory_bytes()}


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
