"""How much memory a run may take, and how many of its seeds fit in that at once.

``experiment.run`` trains its seeds side by side under one ``jax.vmap``, so its memory grows with the
number of seeds. Before training, it asks XLA how many bytes its compiled training chunk and its
evaluation need (:func:`compiled_bytes`, from ``Compiled.memory_analysis()``, besides the arrays that
stay alive, :func:`tree_bytes`), and when that passes :func:`limit`, it trains the seeds in groups that
fit (:func:`seeds_per_group`). The process itself (Python, JAX, compiled code) takes more: 1,024 MLP
seeds on digits were estimated at 5.3 GB and peaked at 6.0 GB of resident memory on the CPU.

The limit is ``$LAB_MEMORY_LIMIT`` when set (bytes, or a number with a unit: ``8GB``, ``512MiB``), else
a fraction of the device's memory: :data:`ACCELERATOR_FRACTION` of what JAX's allocator may take on a
GPU or TPU, :data:`HOST_FRACTION` of the machine's physical memory on the CPU (other processes share it).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import jax

__all__ = [
    "ACCELERATOR_FRACTION",
    "HOST_FRACTION",
    "LIMIT_VARIABLE",
    "compiled_bytes",
    "describe",
    "limit",
    "parse_size",
    "seeds_per_group",
    "tree_bytes",
]

LIMIT_VARIABLE = "LAB_MEMORY_LIMIT"
ACCELERATOR_FRACTION = 0.8
HOST_FRACTION = 0.5

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", re.IGNORECASE)


def parse_size(text: str, name: str = LIMIT_VARIABLE) -> int:
    """Bytes of a size such as ``"8GB"``, ``"512 MiB"`` or ``"1000000"``; ``name`` is said in errors."""
    match = _SIZE.fullmatch(text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS or float(match.group(1)) * _UNITS[unit] < 1:
        raise ValueError(
            f"{name}={text!r} is not a memory size; give bytes or a number with a unit "
            f"(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. {name}=8GB"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def limit(device: Any) -> int:
    """The bytes a run may take on ``device`` (a ``jax.Device``): see the module docstring."""
    setting = os.environ.get(LIMIT_VARIABLE)
    if setting:
        return parse_size(setting)
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(ACCELERATOR_FRACTION * stats["bytes_limit"])
    return int(HOST_FRACTION * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def compiled_bytes(compiled: Any, *, arguments: bool = True) -> int:
    """The bytes a compiled program holds while it runs, by XLA's memory analysis: its arguments (unless
    ``arguments`` is false: they are counted elsewhere), its outputs that do not reuse (alias) a donated
    argument, and its temporaries."""
    stats = compiled.memory_analysis()
    if stats is None:  # a backend without the analysis: nothing is known
        return 0
    outputs = stats.output_size_in_bytes - stats.alias_size_in_bytes
    return int(stats.argument_size_in_bytes * arguments + outputs + stats.temp_size_in_bytes)


def tree_bytes(tree: Any) -> int:
    """The bytes of a pytree's arrays (or of their ``jax.ShapeDtypeStruct``)."""
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def seeds_per_group(seeds: int, needed: int, needed_by_one: int, allowed: int) -> int:
    """How many of ``seeds`` to train at once when all of them together need ``needed`` bytes, one alone
    ``needed_by_one``, and ``allowed`` bytes may be used; 0 if not even one fits. The bytes are taken to
    grow linearly with the seeds: what one needs besides the per-seed share is shared (the data)."""
    if needed <= allowed:
        return seeds
    if needed_by_one > allowed:
        return 0
    per_seed = (needed - needed_by_one) / (seeds - 1)  # > 0: needed_by_one <= allowed < needed
    shared = needed_by_one - per_seed
    return min(seeds - 1, math.floor((allowed - shared) / per_seed))


def describe(size: float) -> str:
    """``size`` bytes in words, e.g. ``"6.1 GB"``."""
    for unit, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{int(size)} B"
