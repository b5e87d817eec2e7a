"""Which device a run computes on: the accelerator by default, or the platform a user names.

``platform`` is one of :data:`PLATFORMS`:

- ``"auto"`` (the default everywhere): JAX's default backend, a GPU or TPU when JAX
  sees one (``pip install -e '.[cuda12]'``, ``'.[cuda13]'`` or ``'.[tpu]'``), else the CPU;
- ``"cpu"``, ``"gpu"``, ``"tpu"``: that platform's first device, and all of its devices
  for data parallelism. A platform that JAX does not see fails at once with one line
  naming the devices it does see.

How: :func:`use` makes the platform's first device ``jax.default_device``, which JAX
honours at any time, also after its backends have started (the ``JAX_PLATFORMS``
variable, by contrast, counts only before the first computation of the process, so a
run's parameter cannot rely on it). Arrays created and computations compiled inside
:func:`use` live on that device. ``JAX_PLATFORMS=cpu`` stays the way to keep a whole
process off an accelerator (the test suite and ``make notebooks`` do this: their
expected numbers are bit-reproducible on the CPU only); ``platform="cpu"`` on a GPU
machine computes on the CPU but JAX still starts (and reserves memory on) the GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import jax

from lab import validate

PLATFORMS = ("auto", "cpu", "gpu", "tpu")

# What to install when a named accelerator is missing.
_INSTALL_HINTS = {
    "gpu": "install JAX's CUDA build (pip install -e '.[cuda12]' or '.[cuda13]')",
    "tpu": "install JAX's TPU build (pip install -e '.[tpu]') on a TPU VM",
}


def check(platform: str) -> str:
    """``platform`` if it is one of :data:`PLATFORMS` (nothing is started: sweeps check points with it)."""
    return validate.choice("platform", platform, PLATFORMS)


def available(platform: str = "auto") -> list[jax.Device]:
    """Every device of ``platform`` (all hosts'), JAX's default backend's for ``"auto"``.

    Raises ValueError naming what JAX sees when ``platform`` has no device here.
    """
    return _devices(jax.devices, platform)


def local(platform: str = "auto") -> list[jax.Device]:
    """This process's devices of ``platform`` (see :func:`available`)."""
    return _devices(jax.local_devices, platform)


def _devices(listing, platform: str) -> list[jax.Device]:
    check(platform)
    if platform == "auto":
        return listing()
    try:
        return listing(backend=platform)
    except RuntimeError:
        pass
    reasons = [f"JAX sees {describe()}"]
    if os.environ.get("JAX_PLATFORMS"):
        reasons.append(f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']} limits it to those")
    reasons.append(_INSTALL_HINTS.get(platform, "use platform=auto"))
    raise ValueError(f"platform {platform!r} is not available here: {'; '.join(reasons)}")


@contextlib.contextmanager
def use(platform: str = "auto") -> Iterator[list[jax.Device]]:
    """Compute on ``platform`` inside the block; yields its devices (see :func:`available`)."""
    devices = available(platform)
    if platform == "auto":
        yield devices
        return
    with jax.default_device(devices[0]):
        yield devices


def current_platform() -> str:
    """The platform computations go to here and now: ``jax.default_device`` inside :func:`use`, else JAX's default."""
    default = jax.config.jax_default_device
    if default is None:
        return jax.default_backend()
    return default if isinstance(default, str) else default.platform


def describe(platform: str | None = None) -> str:
    """``"cpu (1 device)"``, ``"NVIDIA H200 x1"``: the kind and count of this process's devices of
    ``platform`` (default: the platform computations go to, :func:`current_platform`)."""
    devices = local(platform) if platform is not None else jax.local_devices(backend=current_platform())
    return summary(devices)


def summary(devices: list[jax.Device]) -> str:
    """The kind and count of ``devices`` (of one platform), as :func:`describe` words them."""
    if devices[0].platform == "cpu":
        return f"cpu ({len(devices)} device{'s' if len(devices) != 1 else ''})"
    return f"{devices[0].device_kind} x{len(devices)}"
