"""Training as a library: a pytree train state, pure jit-able steps and a fused fit loop.

The model is a Flax NNX module, but everything compiled here is a pure function of
pytrees: the module is split once into a static ``graphdef`` (one for train mode,
one for eval mode) and its ``nnx.State`` halves (``params`` and the rest: BatchNorm
statistics, dropout RNG counters). ``jax.jit``, ``lax.scan``, ``jax.vmap`` and
``jax.shard_map`` therefore apply directly.

What a step minimises is an :class:`Objective`: the supervised cross-entropy and the
semi-supervised methods of :mod:`lab.semisupervised`, the pretraining objectives of
:mod:`lab.transfer`, all sharing this loop.
Batches are drawn *inside* compiled code from data kept on device: every step
indexes a per-epoch permutation derived from ``(seed, pool, epoch)``, so the
batch sequence depends only on the seed and the step number. That makes resuming
from a checkpoint, running seeds side by side with ``vmap`` and running data
parallel give the same numbers as one uninterrupted single-device run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm as std_tqdm
from tqdm.auto import tqdm

from lab import cache, memory, validate


PyTree = Any
Pools = Mapping[str, Mapping[str, jax.Array]]


# --------------------------------------------------------------------------- state


def ema_update(ema_tree: PyTree, new_tree: PyTree, decay: float | jax.Array) -> PyTree:
    """Exponential moving average, leaf by leaf: ``decay * ema + (1 - decay) * new``.

    The one EMA recursion of :mod:`lab`: the evaluation model (:class:`ParameterEMA`),
    Mean Teacher's teacher and the running statistics of FlexMatch and FreeMatch use it.
    """
    return jax.tree.map(lambda old, new: decay * old + (1.0 - decay) * new, ema_tree, new_tree)


@flax.struct.dataclass
class ParameterEMA:
    """An exponential moving average of the parameters, to evaluate with (USB's and FixMatch's EMA model).

    It starts at the initial parameters and moves after every optimizer step with a
    constant ``decay``, as USB's ``EMA`` does. Only parameters are averaged: USB copies
    the live model's buffers into its EMA model, so evaluation pairs these weights with
    the trained model's own BatchNorm statistics (``TrainState.model_state``), as here.
    """

    params: nnx.State
    decay: float = flax.struct.field(pytree_node=False)  # static: part of the compiled program

    @classmethod
    def start(cls, params: nnx.State, decay: float) -> ParameterEMA:
        validate.number("ema_decay", decay, minimum=0, maximum=1, exclusive_maximum=True)
        # A copy, so that the average never aliases (or gets donated with) the trained parameters.
        return cls(jax.tree.map(jnp.copy, params), float(decay))

    def update(self, params: nnx.State) -> ParameterEMA:
        return self.replace(params=ema_update(self.params, params, self.decay))


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training, as one pytree."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: nnx.State
    model_state: nnx.State  # non-parameter variables: BatchNorm statistics, RNG streams
    opt_state: optax.OptState
    key: jax.Array  # raw uint32 PRNG key; batch draws and objective noise fold in the step
    objective_state: PyTree = None  # objective-specific state, e.g. an EMA teacher
    ema: ParameterEMA | None = None  # the evaluation model's weights, if evaluation uses an EMA

    @property
    def eval_params(self) -> nnx.State:
        """The parameters to evaluate: the EMA's when there is one, else the trained ones."""
        return self.params if self.ema is None else self.ema.params


@dataclasses.dataclass(frozen=True)
class Graphs:
    """A split NNX module: static graph definitions for train and eval mode."""

    train_graph: nnx.GraphDef
    eval_graph: nnx.GraphDef

    @classmethod
    def split(cls, module: nnx.Module) -> tuple[Graphs, nnx.State, nnx.State]:
        """Split ``module`` into (Graphs, params, model_state)."""
        module.eval()
        eval_graph, _, _ = nnx.split(module, nnx.Param, ...)
        module.train()
        train_graph, params, model_state = nnx.split(module, nnx.Param, ...)
        return cls(train_graph, eval_graph), params, model_state

    def bind(self, params: nnx.State, model_state: nnx.State, *, train: bool) -> nnx.Module:
        # Merge fresh copies of the state containers: a module bound inside a trace
        # (jit, grad, scan) mutates its RNG counters, which NNX refuses on Variables
        # created outside that trace.
        params, model_state = jax.tree.map(lambda leaf: leaf, (params, model_state))
        return nnx.merge(self.train_graph if train else self.eval_graph, params, model_state)


def create_train_state(
    params: nnx.State,
    model_state: nnx.State,
    tx: optax.GradientTransformation,
    seed: int,
    objective_state: PyTree = None,
    ema_decay: float = 0.0,
) -> TrainState:
    """A fresh train state. ``ema_decay`` > 0 keeps a :class:`ParameterEMA` with that
    decay, updated after every step and used for evaluation; 0 keeps none."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        key=jax.random.PRNGKey(seed),
        objective_state=objective_state,
        ema=ParameterEMA.start(params, ema_decay) if ema_decay else None,
    )


# ------------------------------------------------------------------ mixed precision

# The dtype a training step's forward pass computes in, by ``precision`` name (None: as stored).
PRECISIONS: dict[str, Any] = {"float32": None, "bfloat16": jnp.bfloat16}


def in_precision(module: nnx.Module, precision: str) -> nnx.Module:
    """``module``, a :class:`lab.models.Classifier`, with its backbone computing in ``precision``.

    Mixed precision the Flax way: a layer computes in its ``dtype`` attribute, to which it
    casts its float inputs and parameters (integer token ids stay ids), while its
    parameters are stored in ``param_dtype``, float32. Gradients, optimizer state and
    updates therefore stay float32, and batch norm computes its statistics and running
    averages in float32 whatever its dtype. The head is left alone: it turns the bfloat16
    features into float32 logits, so softmaxes and losses are float32.
    """
    dtype = PRECISIONS[precision]
    if dtype is not None:
        module.backbone.set_attributes(dtype=dtype, raise_if_not_found=False)
    return module


def _with_dtypes_of(reference: PyTree, tree: PyTree) -> PyTree:
    """``tree`` cast leaf by leaf to the dtypes of ``reference`` (a no-op where they agree)."""
    return jax.tree.map(lambda old, new: new if new.dtype == old.dtype else new.astype(old.dtype), reference, tree)


# ---------------------------------------------------------------------- objectives


class Objective:
    """What a training step minimises.

    Subclasses implement :meth:`loss`; :meth:`init_objective_state` and :meth:`after_update`
    carry objective-specific state (an EMA teacher, adaptive thresholds) through
    ``TrainState.objective_state``. ``batch_sizes`` names the data pools a step draws from.
    """

    def batch_sizes(self, batch_size: int) -> dict[str, int]:
        return {"labeled": batch_size}

    def init_objective_state(self, params: nnx.State, model_state: nnx.State) -> PyTree:
        return None

    def loss(self, model: nnx.Module, batch: Pools, key: jax.Array, objective_state: PyTree, step: jax.Array):
        """Return ``(scalar loss, dict of scalar metrics, new objective_state)``."""
        raise NotImplementedError

    def after_update(
        self, objective_state: PyTree, params: nnx.State, model_state: nnx.State, step: jax.Array
    ) -> PyTree:
        return objective_state


# -------------------------------------------------------------------------- steps


def epoch_orders(pools: Pools, batch_sizes: Mapping[str, int], key: jax.Array, step: jax.Array) -> dict:
    """Each pool's ``(epoch, permutation)`` at ``step``, for :func:`draw_batch`."""
    orders = {}
    for pool_index, (name, size) in enumerate(sorted(batch_sizes.items())):
        _, _, capacity, count = _pool_parts(pools[name])
        epoch, _ = jnp.divmod(step, _batches_per_epoch(count, size))
        orders[name] = (epoch, _permutation(key, pool_index, epoch, capacity, count))
    return orders


def draw_batch(
    pools: Pools, batch_sizes: Mapping[str, int], key: jax.Array, step: jax.Array, orders: dict | None = None
) -> tuple[Pools, dict]:
    """Draw one batch per pool: slice ``step`` of a fresh permutation each epoch.

    A pool is a dict of equally long arrays (``x``, ``y``, ...). If it holds an
    ``index`` array, the pool is the rows of the other arrays that ``index`` names,
    and an optional ``count`` says how many leading entries of ``index`` are in use:
    several seeds can then share one copy of the data, each with its own index, and
    pools of different sizes (label budgets) padded to one length share one compiled
    program. Sampling is without replacement within an epoch; the last incomplete
    batch of an epoch is dropped. A pool smaller than its batch size wraps around.

    ``orders`` are the permutations returned by the previous step's draw (or
    :func:`epoch_orders`): a permutation is sorted anew only when the epoch changes,
    since sorting the pool is most of the cost of drawing a batch and most steps stay
    within one epoch. Returns the batch and the permutations to pass to the next step.
    """
    if orders is None:
        orders = epoch_orders(pools, batch_sizes, key, step)
    batch, new_orders = {}, {}
    for pool_index, (name, size) in enumerate(sorted(batch_sizes.items())):
        pool, rows, capacity, count = _pool_parts(pools[name])
        epoch, position = jnp.divmod(step, _batches_per_epoch(count, size))
        sorted_epoch, permutation = orders[name]
        permutation = jax.lax.cond(
            epoch == sorted_epoch,
            lambda permutation=permutation: permutation,
            lambda epoch=epoch: _permutation(key, pool_index, epoch, capacity, count),
        )
        new_orders[name] = (epoch, permutation)
        chosen = jnp.take(permutation, (position * size + jnp.arange(size)) % count)
        if rows is not None:
            chosen = jnp.take(rows, chosen)
        batch[name] = {field: jnp.take(array, chosen, axis=0) for field, array in pool.items()}
    return batch, new_orders


def _pool_parts(pool: Mapping[str, jax.Array]):
    """``(data arrays, index or None, capacity, count)`` of a pool (see :func:`draw_batch`)."""
    pool = dict(pool)
    rows = pool.pop("index", None)
    capacity = next(iter(pool.values())).shape[0] if rows is None else rows.shape[0]
    count = pool.pop("count", capacity)
    return pool, rows, capacity, count


def _batches_per_epoch(count, size: int):
    return jnp.maximum(count // size, 1)


def _permutation(key: jax.Array, pool_index: int, epoch: jax.Array, capacity: int, count) -> jax.Array:
    """A random permutation of the first ``count`` of ``capacity`` entries (unused ones sort last)."""
    pool_key = jax.random.fold_in(jax.random.fold_in(key, pool_index), epoch)
    sort_keys = jax.random.bits(pool_key, (capacity,))
    unused = jnp.array(jnp.iinfo(sort_keys.dtype).max, sort_keys.dtype)
    sort_keys = jnp.where(jnp.arange(capacity) < count, sort_keys, unused)
    return jnp.argsort(sort_keys)


def shard_batch(batch: Pools, axis_name: str) -> Pools:
    """This device's contiguous slice of a global batch (inside ``shard_map``)."""
    count = jax.lax.axis_size(axis_name)
    index = jax.lax.axis_index(axis_name)

    def local(array):
        size = array.shape[0] // count
        return jax.lax.dynamic_slice_in_dim(array, index * size, size)

    return jax.tree.map(local, batch)


def train_step(
    state: TrainState,
    batch: Pools,
    *,
    model: Graphs,
    tx: optax.GradientTransformation,
    objective: Objective,
    axis_name: str | None = None,
    precision: str = "float32",
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step. With ``axis_name`` (inside ``shard_map``), gradients,
    metrics and BatchNorm statistics are averaged over that axis like ``pmap`` did.
    The forward pass computes in ``precision`` (see :func:`in_precision`)."""
    key = jax.random.fold_in(jax.random.fold_in(state.key, 1), state.step)

    def loss_fn(params):
        module = in_precision(model.bind(params, state.model_state, train=True), precision)
        loss, step_metrics, objective_state = objective.loss(module, batch, key, state.objective_state, state.step)
        _, _, model_state = nnx.split(module, nnx.Param, ...)
        # The state keeps its dtypes whatever a layer computed its update in.
        return loss, (step_metrics, objective_state, _with_dtypes_of(state.model_state, model_state))

    grads, (step_metrics, objective_state, model_state) = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
        grads, step_metrics = jax.lax.pmean((grads, step_metrics), axis_name)
        # Average the float statistics (BatchNorm, an objective's running thresholds);
        # RNG keys and counters are the same everywhere.
        model_state, objective_state = jax.tree.map(
            lambda v: jax.lax.pmean(v, axis_name) if jnp.issubdtype(v.dtype, jnp.floating) else v,
            (model_state, objective_state),
        )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    objective_state = objective.after_update(objective_state, params, model_state, state.step)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        model_state=model_state,
        opt_state=opt_state,
        objective_state=objective_state,
        ema=None if state.ema is None else state.ema.update(params),
    )
    return new_state, step_metrics


def make_train_chunk(
    model: Graphs,
    tx: optax.GradientTransformation,
    objective: Objective,
    batch_size: int,
    num_steps: int,
    *,
    axis_name: str | None = None,
    precision: str = "float32",
) -> Callable[[TrainState, Pools], tuple[TrainState, dict[str, jax.Array]]]:
    """``chunk(state, pools) -> (state, per-step metrics)``: ``num_steps`` fused steps."""
    batch_sizes = objective.batch_sizes(batch_size)

    def chunk(state: TrainState, pools: Pools):
        def body(carry, _):
            state, orders = carry
            batch, orders = draw_batch(pools, batch_sizes, state.key, state.step, orders)
            if axis_name is not None:
                batch = shard_batch(batch, axis_name)
            state, step_metrics = train_step(
                state, batch, model=model, tx=tx, objective=objective, axis_name=axis_name, precision=precision
            )
            return (state, orders), step_metrics

        orders = epoch_orders(pools, batch_sizes, state.key, state.step)
        (state, _), step_metrics = jax.lax.scan(body, (state, orders), length=num_steps)
        return state, step_metrics

    return chunk


def predict(
    model: Graphs, params: nnx.State, model_state: nnx.State, x: jax.Array, batch_size: int = 1024
) -> jax.Array:
    """Eval-mode logits for all of ``x``, computed in fixed-size batches with ``lax.map``."""
    n = x.shape[0]
    batches = math.ceil(n / batch_size)
    padded = jnp.pad(x, [(0, batches * batch_size - n)] + [(0, 0)] * (x.ndim - 1))

    def logits(xb):
        return model.bind(params, model_state, train=False)(xb)

    out = jax.lax.map(logits, padded.reshape(batches, batch_size, *x.shape[1:]))
    return out.reshape(batches * batch_size, -1)[:n]


# ---------------------------------------------------------------------------- fit


def enable_compilation_cache(directory: str | Path | None = None) -> Path | None:
    """Keep compiled programs on disk so that the next process (another papermill run
    of a sweep, the next notebook) skips compilation, which dominates small runs.

    The folder is ``directory``, else ``$LAB_COMPILATION_CACHE``, else
    ``<lab cache>/jax`` (see :func:`lab.cache.cache_dir`); ``LAB_COMPILATION_CACHE=off``
    turns it off, and so does a folder that cannot be made (saying so). Empty entries (left by a full
    disk) are removed. Returns the folder in use, or None. JAX fixes the folder at the
    first compilation of a process, so call this early.
    """
    setting = directory or os.environ.get("LAB_COMPILATION_CACHE") or cache.cache_dir() / "jax"
    if str(setting) == "off":
        return None
    path = Path(setting).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        cache.notice(f"compiled programs are not kept on disk ({path}: {cache.disk_error(error) or error})")
        return None
    # A write that a full disk cut short leaves an empty entry (JAX's "<key>-cache" files), which JAX
    # warns about in every later run.
    for entry in path.glob("*-cache"):
        if entry.is_file() and entry.stat().st_size == 0:
            entry.unlink(missing_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path



class NonFiniteLossError(FloatingPointError, RuntimeError):
    """Training produced a NaN/Inf loss. ``state`` is the last finite train state.

    Also a RuntimeError: the message is written for the user, and the CLI shows it as it is.
    """

    def __init__(
        self,
        step: int,
        last_finite_loss: float | None,
        state: TrainState,
        kept: str = "The state from before that step was kept",
    ):
        self.step, self.last_finite_loss, self.state = step, last_finite_loss, state
        last = "none" if last_finite_loss is None else f"{last_finite_loss:.6g}"
        super().__init__(
            f"non-finite loss at step {step} (last finite loss: {last}); training stopped. {kept}. "
            "Try a lower learning rate or gradient clipping (clip_norm)."
        )


@dataclasses.dataclass
class FitResult:
    state: TrainState
    history: list[dict[str, float]]  # one row per chunk: step, train_<metric> chunk means, eval metrics
    log: dict[str, np.ndarray]  # every step's training metrics, shape (steps,) or (seeds, steps)
    wall_time_s: dict[str, float]  # seconds spent compiling and training (evaluation excluded)


def fit(
    model: Graphs,
    state: TrainState,
    tx: optax.GradientTransformation,
    objective: Objective,
    pools: Pools,
    *,
    steps: int,
    batch_size: int,
    eval_every: int | None = None,
    evaluate: Callable[[TrainState], Mapping[str, float]] | None = None,
    patience: int | None = None,
    monitor: str = "accuracy",
    checkpoints: Checkpointer | None = None,
    checkpoint_every: int | None = None,
    parallel: Callable | None = None,
    seed_axis: bool = False,
    precision: str = "float32",
    progress: bool = True,
    label: str = "train",
) -> FitResult:
    """Train ``state`` until ``steps`` optimizer steps have been taken.

    Steps run in compiled chunks of ``eval_every`` steps (fused with ``lax.scan``,
    state buffers donated); the host only syncs between chunks to log, evaluate,
    early-stop (``patience`` evaluations without ``monitor`` improving; the best state
    is returned) and checkpoint. If ``checkpoints`` holds a checkpoint, training
    resumes from it. ``parallel`` wraps a chunk function for several devices
    (see :class:`lab.parallel.DataParallel`).

    With ``seed_axis``, ``state`` holds several independent runs stacked on a leading
    axis (one per seed) and they train together under ``jax.vmap``; pools are shared
    except their ``index`` arrays, which carry the seed axis. Evaluation values may
    then be per-seed arrays; history stores them as lists.

    ``precision`` (a key of :data:`PRECISIONS`) is what training steps compute in; the
    train state stays float32 (see :func:`in_precision`), and ``evaluate`` sees it as such.

    The progress bar is named ``label`` (the phase, e.g. ``"pretrain mlm"``, ``"train fixmatch"``)
    and says "compiling" while XLA compiles a chunk, which can take far longer than the chunk.
    """
    validate.integer("steps", steps, minimum=1)
    validate.choice("precision", precision, PRECISIONS)
    validate.integer("batch_size", batch_size, minimum=1)
    eval_every = validate.integer("eval_every", eval_every or steps, minimum=1)
    boundaries = [eval_every]  # chunks end where the host has work to do
    if checkpoint_every is not None:
        validate.integer("checkpoint_every", checkpoint_every, minimum=1)
        boundaries.append(checkpoint_every)
    if parallel is not None:
        for size in objective.batch_sizes(batch_size).values():
            parallel.check_batch_size(size)
    if checkpoints is not None:
        state = checkpoints.restore_latest(state)
    # Chunks donate their input state; copy once so the caller's arrays (and the
    # module they were split from) stay valid.
    state = jax.tree.map(jnp.copy, state)
    seed_axes = _seed_axes(pools) if seed_axis else None
    wall = {"compile": 0.0, "train": 0.0}
    build = functools.partial(_compiled_chunk, model, tx, objective, batch_size, parallel, _freeze(seed_axes), precision)
    executables = {}  # chunk length -> compiled executable; the last chunk may be shorter

    def executable(length, state):
        if length not in executables:
            tic = time.perf_counter()
            executables[length] = build(length).lower(state, pools).compile()
            wall["compile"] += time.perf_counter() - tic
        return executables[length]

    history: list[dict[str, float]] = []
    log: dict[str, list[np.ndarray]] = {}
    best: tuple[float, TrainState] | None = None
    evals_since_best = 0
    last_finite_loss = None
    bar = progress_bar(total=steps, initial=_current_step(state), disable=not progress, desc=label, unit="step")
    try:
        while _current_step(state) < steps:
            step0 = _current_step(state)
            length = min([every - step0 % every for every in boundaries] + [steps - step0])
            if length not in executables:
                bar.set_description(f"{label} (compiling)")  # else the bar sits still, seemingly stuck
            run_chunk = executable(length, state)
            # The chunk donates its input; this copy (once per chunk, not per step) lets a
            # NaN be traced back to the last finite state.
            chunk_start = jax.tree.map(jnp.copy, state)
            tic = time.perf_counter()
            state, step_metrics = run_chunk(state, pools)
            step_losses = np.asarray(step_metrics["loss"]).reshape(-1, length)  # (seeds, steps)
            wall["train"] += time.perf_counter() - tic
            finite = np.isfinite(step_losses).all(0)
            if not finite.all():
                bad = int(np.argmin(finite))
                if bad > 0:
                    last_finite_loss = float(step_losses[:, bad - 1].mean())
                last_finite = chunk_start if bad == 0 else build(bad)(chunk_start, pools)[0]  # replay up to it
                raise NonFiniteLossError(step0 + bad, last_finite_loss, last_finite)
            step_losses = step_losses.mean(0)  # mean over seeds
            last_finite_loss = float(step_losses[-1])
            bar.set_description(label, refresh=False)
            bar.update(length)
            step = _current_step(state)
            chunk_log = {name: np.asarray(value) for name, value in step_metrics.items()}
            for name, value in chunk_log.items():
                log.setdefault(name, []).append(value)
            row = {"step": step, **{f"train_{name}": _to_python(_chunk_mean(value)) for name, value in chunk_log.items()}}
            if evaluate is not None and (step % eval_every == 0 or step == steps):
                row.update({k: _to_python(v) for k, v in evaluate(state).items()})
                if patience is not None:
                    score = float(np.mean(row[monitor]))
                    if best is None or score > best[0]:
                        best, evals_since_best = (score, jax.device_get(state)), 0
                    else:
                        evals_since_best += 1
            history.append(row)
            bar.set_postfix(_postfix(row), refresh=False)
            if checkpoints is not None and (step == steps or (checkpoint_every and step % checkpoint_every == 0)):
                checkpoints.save(state)
            if patience is not None and evals_since_best >= patience:
                break
    finally:
        bar.close()
    if best is not None:
        state = jax.device_put(best[1])
    steps_log = {name: np.concatenate(chunks, axis=-1) for name, chunks in log.items()}
    return FitResult(state, history, steps_log, wall)


def fit_memory(
    model: Graphs,
    state: TrainState,
    tx: optax.GradientTransformation,
    objective: Objective,
    pools: Pools,
    *,
    steps: int,
    batch_size: int,
    eval_every: int | None = None,
    seed_axis: bool = False,
    precision: str = "float32",
) -> int:
    """The bytes :func:`fit` needs for these arguments, before it runs: XLA's memory analysis of the
    compiled chunk (:func:`lab.memory.compiled_bytes`), plus the two more copies of the state that
    ``fit`` holds (its caller's, and the chunk's start, kept to trace a NaN back). ``state`` may be
    arrays or their ``jax.ShapeDtypeStruct`` (``jax.eval_shape``), allocating nothing. The chunk compiled
    here is the first one ``fit`` runs, which ``fit`` then finds in JAX's cache."""
    length = min(eval_every or steps, steps)
    seed_axes = _freeze(_seed_axes(pools)) if seed_axis else None
    chunk = _compiled_chunk(model, tx, objective, batch_size, None, seed_axes, precision, length)
    return memory.compiled_bytes(chunk.lower(state, pools).compile()) + 2 * memory.tree_bytes(state)


@functools.lru_cache(maxsize=64)
def _compiled_chunk(model, tx, objective, batch_size, parallel, seed_axes, precision, length):
    """One jitted chunk function per configuration and length, shared by every
    ``fit`` call so that calling ``fit`` again (resuming, benchmarking) does not
    recompile."""
    axis = None if parallel is None else parallel.axis_name
    fn = make_train_chunk(model, tx, objective, batch_size, length, axis_name=axis, precision=precision)
    fn = fn if parallel is None else parallel(fn)
    if seed_axes is not None:
        fn = jax.vmap(fn, in_axes=(0, _thaw(seed_axes)))
    return jax.jit(fn, donate_argnums=0)


def _freeze(tree):
    """A hashable form of a nested dict (for the compile cache key)."""
    return None if tree is None else tuple((k, _freeze(v) if isinstance(v, dict) else v) for k, v in sorted(tree.items()))


def _thaw(frozen):
    return {k: _thaw(v) if isinstance(v, tuple) else v for k, v in frozen}


def progress_bar(**kwargs) -> tqdm:
    """A tqdm bar whose kind follows ``$LAB_PROGRESS``.

    ``auto`` (default): ``tqdm.auto``, a widget in Jupyter and text in a terminal.
    ``text``: plain text refreshed at most every 10 s, for logs such as
    ``papermill --log-output`` (a widget would show nothing there, and a fast text bar
    one line per refresh). ``off``: no bar.
    """
    mode = os.environ.get("LAB_PROGRESS", "auto")
    if mode == "auto":
        bar = tqdm(mininterval=1.0, **kwargs)
        container = getattr(bar, "container", None)  # the notebook widget: HBox(description, bar, text)
        if container is not None:
            # The widget's text never wraps (its spaces are non-breaking): let it take a row of its
            # own when it does not fit, instead of squeezing the bar to nothing.
            container.layout.flex_flow = "row wrap"
            container.children[1].layout.flex = "2"
            container.children[1].layout.min_width = "200px"
        return bar
    if mode == "text":
        return std_tqdm(mininterval=10.0, **kwargs)
    if mode == "off":
        return tqdm(**{**kwargs, "disable": True})
    raise ValueError(f"LAB_PROGRESS={mode!r} is not one of: auto, text, off")


def _current_step(state: TrainState) -> int:
    return int(np.max(np.asarray(state.step)))  # all seeds of a seed axis share the step


def _seed_axes(pools: Pools) -> dict:
    """vmap axes for pools: only ``index`` and ``count`` are per seed."""
    return {name: {field: 0 if field in ("index", "count") else None for field in pool} for name, pool in pools.items()}


def _postfix(row: Mapping[str, Any]) -> dict[str, float]:
    """The progress bar's summary of a history row: the training loss and the evaluations.

    Means over seeds to 3 significant digits, measured values only, short names
    (``loss``, ``test_acc``), so that the bar keeps its room on one line; the other
    training metrics (per pool, mask rates) stay in the history.
    """
    means = {}
    for name, value in row.items():
        if name == "step" or (name.startswith("train_") and name != "train_loss"):
            continue
        array = np.asarray(value, dtype=float)  # None (not measured) becomes NaN
        if np.isfinite(array).any():
            short = name.removeprefix("train_").replace("accuracy", "acc")
            means[short] = float(f"{np.nanmean(array):.3g}")
    return means


def _chunk_mean(value: np.ndarray) -> np.ndarray:
    """Mean over a chunk's steps (the last axis), ignoring NaN (e.g. no pseudo-label in a step)."""
    finite = np.isfinite(value)
    counts = finite.sum(-1)
    total = np.where(finite, value, 0.0).sum(-1)
    return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


def _to_python(value) -> float | list | None:
    """JSON-ready: a float, or a list per seed; NaN (nothing to measure) becomes None."""
    array = np.asarray(value, dtype=float)
    if array.ndim == 0:
        return None if np.isnan(array) else float(array)
    return [_to_python(item) for item in array]


# -------------------------------------------------------------------- checkpoints


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. a full disk); the earlier ones are kept."""


class Checkpointer:
    """Orbax checkpoints of a :class:`TrainState` in ``directory``.

    Orbax writes each checkpoint to a temporary folder and renames it when complete,
    so an interrupted save never replaces the last good checkpoint. Each saved checkpoint
    then gets the SHA-256 digests of its files (:func:`lab.cache.write_manifest`), checked
    when resuming: a damaged checkpoint is named and moved aside to ``<directory>-damaged``,
    and training resumes from the newest intact one. A save that the disk refuses (full,
    read-only) raises :class:`CheckpointWriteError` in one line; the earlier checkpoints stay usable.
    """

    def __init__(self, directory: str | Path, max_to_keep: int = 3):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep))

    def save(self, state: TrainState) -> None:
        step = int(state.step)
        try:
            with _orbax_logs_held() as logs:
                self.manager.save(step, args=self._ocp.args.StandardSave(state))
                self.manager.wait_until_finished()
                cache.write_manifest(self.step_directory(step))
        except Exception as error:
            reason = cache.disk_error(error)
            if reason is None:
                logs.replay()
                raise
            # Dropped: the same error, with its traceback, from each of orbax's threads.
            kept = [kept for kept in self.manager.all_steps() if kept != step]
            raise CheckpointWriteError(
                f"the checkpoint of step {step} could not be written in {self.directory}: {reason}; "
                + (f"the checkpoint of step {max(kept)} is kept and resumes" if kept else "no checkpoint is kept")
                + " (make room and run the same command again)"
            ) from error

    def step_directory(self, step: int) -> Path:
        return self.directory / str(step)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, like: TrainState) -> TrainState:
        """The newest intact checkpoint, shaped like ``like``; ``like`` itself if there is none.

        A checkpoint whose files fail their digests, or that does not restore, is moved aside and
        named in one line; checkpoints saved without digests (by older versions) are restored as they are.
        """
        damaged = []
        restored, resumed_at = like, None
        for step in sorted(self.manager.all_steps(), reverse=True):
            folder = self.step_directory(step)
            problem = cache.damage(folder) if (folder / cache.MANIFEST).exists() else None
            if problem is None:
                try:
                    with _orbax_logs_held():
                        restored = self.manager.restore(step, args=self._ocp.args.StandardRestore(like))
                    resumed_at = step
                    break
                except Exception as error:  # damaged where no digest says so: the next older one may restore
                    problem = f"unreadable: {type(error).__name__}: {error}".splitlines()[0]
            damaged.append((step, problem))
        then = "training starts from step 0" if resumed_at is None else f"resuming from step {resumed_at}"
        for step, problem in damaged:
            aside = self._set_aside(step)
            cache.notice(f"the checkpoint of step {step} in {self.directory} failed its check ({problem}); "
                         f"moved to {aside}; {then}")  # fmt: skip
        if damaged:
            self.manager.reload()
        return restored

    def _set_aside(self, step: int) -> Path:
        aside = self.directory.with_name(f"{self.directory.name}-damaged") / str(step)
        if aside.exists():
            aside = aside.with_name(f"{step}-{uuid.uuid4().hex[:8]}")
        aside.parent.mkdir(parents=True, exist_ok=True)
        self.step_directory(step).rename(aside)
        return aside

    def close(self) -> None:
        self.manager.close()


class _HeldRecords(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def replay(self) -> None:
        for record in self.records:
            logging.getLogger(record.name).handle(record)
        self.records.clear()


@contextlib.contextmanager
def _orbax_logs_held() -> Iterator[_HeldRecords]:
    """Hold back what orbax logs (through absl) while it saves or restores, and pass it on when the block
    succeeds. When the disk is full or a checkpoint is damaged, orbax logs the same error with its
    traceback once per thread, where one line says it all: on an error, the caller drops them, or passes
    them on with ``.replay()``."""
    logger = logging.getLogger("absl")
    held = _HeldRecords()
    handlers, propagate = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [held], False
    try:
        yield held
    finally:
        logger.handlers, logger.propagate = handlers, propagate
    held.replay()
