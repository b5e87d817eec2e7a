"""Data parallelism over all local devices with ``jax.shard_map``.

Every device holds a replica of the train state and of the (small) dataset. A
chunk of training steps runs inside ``shard_map`` over a one-axis mesh named
``data``: each device draws the same *global* batch indices, keeps its contiguous
slice, and ``lax.pmean`` averages gradients, metrics and BatchNorm statistics over
the axis -- the semantics of the old ``jax.pmap`` recipe (now in maintenance mode).
Because the mean of equal-sized per-device means is the global mean, one
data-parallel step equals the single-device step on the same global batch up to
floating-point reassociation. Two deliberate differences remain: BatchNorm
normalises each device's slice with that slice's statistics (as pmap did), and
dropout masks are drawn from the same replicated key on every device.

Multi-host: call ``jax.distributed.initialize()`` (coordinator address, process
count and id, or the cluster's environment) in every process before building the
mesh; ``jax.devices()`` then lists the devices of all hosts and
:func:`data_mesh` spans them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, PartitionSpec

AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-dimensional mesh named ``data`` over ``devices`` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device")
    return Mesh(np.array(devices), (AXIS,))


class DataParallel:
    """Wraps a ``chunk(state, pools)`` function to run data parallel on ``mesh``.

    Pass an instance as ``fit(..., parallel=DataParallel())``; the global batch size
    must be divisible by the number of devices.
    """

    axis_name = AXIS

    def __init__(self, mesh: Mesh | None = None):
        self.mesh = mesh or data_mesh()

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.num_devices:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by the {self.num_devices} devices of the data mesh; "
                f"use a multiple of {self.num_devices}"
            )

    def __call__(self, chunk: Callable) -> Callable:
        replicated = PartitionSpec()
        # check_vma=False keeps pmap's semantics: gradients taken inside the body are
        # per-device and averaged by the explicit lax.pmean in train_step. (With the
        # varying-manual-axes checker on, jax.grad would already psum the gradient of
        # the replicated parameters, and the pmean would count it again.)
        return jax.shard_map(
            chunk, mesh=self.mesh, in_specs=(replicated, replicated), out_specs=replicated, check_vma=False
        )
