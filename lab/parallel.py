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

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from lab import data, models, optim, semisupervised, train

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


def compare_here(
    *, dataset: str, model: str, labels_per_class: int, seed: int, steps: int, batch_size: int, learning_rate: float
) -> dict[str, Any]:
    """Train ``model`` on a labeled split twice: on one device, and data parallel over this process's devices.

    Plain cross-entropy without augmentation (random augmentation would differ per
    device's slice) and Adam. Returns ``devices`` (the count), ``moved`` (the largest
    parameter change of the single-device run) and ``difference`` (the largest
    parameter difference between the two runs).
    """
    loaded = data.load(dataset)
    labeled, _ = data.labeled_split(loaded.y_train, labels_per_class, seed)
    pools = {"labeled": {"x": jnp.asarray(loaded.x_train[labeled]), "y": jnp.asarray(loaded.y_train[labeled])}}

    def initial():
        return train.Graphs.split(models.make_model(model, loaded.input_shape, loaded.num_classes, seed=seed))

    def fit(data_parallel: DataParallel | None):
        split_model, params, model_state = initial()
        tx = optim.make_optimizer("adam", learning_rate)
        state = train.create_train_state(params, model_state, tx, seed)
        objective = semisupervised.Supervised(input_shape=loaded.input_shape, augmentation="none")
        fitted = train.fit(
            split_model, state, tx, objective, pools, steps=steps, batch_size=batch_size, parallel=data_parallel,
            progress=False,
        )
        return fitted.state.params

    one = fit(None)
    return {
        "devices": jax.device_count(),
        "moved": _max_difference(one, initial()[1]),
        "difference": _max_difference(one, fit(DataParallel())),
    }


def compare_on_devices(devices: int, **settings: Any) -> dict[str, Any]:
    """:func:`compare_here` with ``settings``, in a fresh Python process whose CPU is split into ``devices`` devices.

    The device count is fixed when JAX starts, hence the separate process
    (``XLA_FLAGS=--xla_force_host_platform_device_count``).
    """
    worker = (
        "import json, sys; from lab import parallel; "
        "print(json.dumps(parallel.compare_here(**json.loads(sys.argv[1]))))"
    )
    environment = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    command = [sys.executable, "-c", worker, json.dumps(settings)]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the {devices}-device comparison failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _max_difference(a: Any, b: Any) -> float:
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in pairs)
