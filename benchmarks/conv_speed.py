"""CNN training speed on the CPU: ``lab`` vs a lean hand-written JAX loop vs PyTorch eager.

The default CNN (3x3 convs with 32 and 64 channels, ReLU, 2x2 max pooling after each,
global max pooling, dense 128, linear head; kernel 5 on 1-D signals), Adam (lr 1e-3),
synthetic data (uniform inputs, random labels, a pool of 2,048 examples), for each
input shape:

* ``supervised``, batch 256:
  - ``lab``: ``lab.train.fit`` (``lax.scan``-fused steps, batches drawn in compiled
    code) of ``models.make_model("cnn", ...)`` and the supervised objective;
  - ``lean jax``: the same network by hand in pure ``jnp`` (dict of arrays, optax,
    ``lax.scan``, donation): im2col convolutions (shifted windows concatenated, one
    matmul) and max pooling by reshape;
  - ``pytorch``: the same network in PyTorch eager, threads = cores.
* ``fixmatch``, 32 labeled + 7 x 32 unlabeled examples seen weak and strong:
  - ``lab``: ``lab.train.fit`` with ``semisupervised.FixMatch`` (augmentations
    included, computed in the compiled step);
  - ``pytorch``: USB's step: one forward of the concatenated 32 + 224 + 224 views,
    the weak logits detached for the pseudo-labels. Its views are the pool's
    examples as they are (no augmentation): that favours PyTorch.

Each contender is warmed up (compilation excluded), then the repeats are
interleaved (lab, lean, pytorch, lab, ...) so that a change in the machine's load
hits all of them alike; the median ms per step and each contender's ratio to lab
(> 1: slower than lab) are printed. ``--clock process`` times the process's CPU
time instead of the wall clock: steadier on a machine shared with other jobs.

    python benchmarks/conv_speed.py [--shapes 8x8x1 28x28x1 32x32x3] [--steps 20] [--repeats 5]

PyTorch (CPU build, ``pip install -e .[bench]``) is optional: without it its rows are
skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab import models, optim, semisupervised, train

POOL = 2048
CLASSES = 10
CHANNELS = (32, 64)
HIDDEN = 128
LEARNING_RATE = 1e-3
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def synthetic_pool(shape: tuple[int, ...], seed: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    x = rng.random((POOL, *shape), dtype=np.float32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(rng.integers(0, CLASSES, POOL).astype(np.int32))}


def lab_contender(shape, objective, batch_size: int, steps_per_call: int):
    """``run(steps)`` training lab's CNN with ``lab.train.fit``."""
    module = models.make_model("cnn", shape, CLASSES, seed=0)
    model, params, model_state = train.Graphs.split(module)
    tx = optim.make_optimizer("adam", LEARNING_RATE)
    state = train.create_train_state(
        params, model_state, tx, 0, objective_state=objective.init_objective_state(params, model_state)
    )
    pools = {name: synthetic_pool(shape, seed) for seed, name in enumerate(objective.batch_sizes(batch_size))}

    def run(steps):
        nonlocal state
        result = train.fit(model, state, tx, objective, pools, steps=int(state.step) + steps, batch_size=batch_size,
                           eval_every=steps_per_call, progress=False)
        state = result.state
        jax.block_until_ready(state.params)

    return run


def lean_contender(shape, batch_size: int, steps_per_call: int):
    """The network by hand: pure jnp, im2col convolutions, reshape max pooling, lax.scan."""
    *spatial, in_channels = shape
    kernel = (3, 3) if len(spatial) == 2 else (5,)
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 8))
    params = {}
    for layer, width in enumerate(CHANNELS):
        fan_in = np.prod(kernel) * in_channels
        params[f"conv{layer}"] = jax.random.normal(next(keys), (*kernel, in_channels, width)) / np.sqrt(fan_in)
        params[f"bias{layer}"] = jnp.zeros(width)
        in_channels = width
    params["dense"] = jax.random.normal(next(keys), (in_channels, HIDDEN)) / np.sqrt(in_channels)
    params["dense_bias"] = jnp.zeros(HIDDEN)
    params["head"] = jax.random.normal(next(keys), (HIDDEN, CLASSES)) / np.sqrt(HIDDEN)
    params["head_bias"] = jnp.zeros(CLASSES)

    def conv(x, w):  # 'SAME', stride 1, odd kernel
        pads = [(k // 2, k // 2) for k in w.shape[:-2]]
        padded = jnp.pad(x, [(0, 0), *pads, (0, 0)])
        offsets = np.ndindex(*w.shape[:-2])
        columns = [padded[(slice(None), *(slice(o, o + n) for o, n in zip(offset, x.shape[1:-1])))] for offset in offsets]
        return jnp.concatenate(columns, -1) @ w.reshape(-1, w.shape[-1])

    def pool(x):
        n, *sides, c = x.shape
        x = x[(slice(None), *(slice(0, s // 2 * 2) for s in sides))]
        return x.reshape(n, *(d for s in sides for d in (s // 2, 2)), c).max(tuple(range(2, 2 * len(sides) + 1, 2)))

    def logits_fn(p, x):
        for layer in range(len(CHANNELS)):
            x = jax.nn.relu(conv(x, p[f"conv{layer}"]) + p[f"bias{layer}"])
            if min(x.shape[1:-1]) >= 2:
                x = pool(x)
        x = jax.nn.relu(x.max(tuple(range(1, x.ndim - 1))) @ p["dense"] + p["dense_bias"])
        return x @ p["head"] + p["head_bias"]

    data = synthetic_pool(shape, 0)
    tx = optax.adam(LEARNING_RATE)
    key = jax.random.PRNGKey(1)
    batches_per_epoch = POOL // batch_size

    def step(carry, _):
        p, opt_state, i, permutation = carry
        epoch, position = jnp.divmod(i, batches_per_epoch)
        permutation = jax.lax.cond(
            position == 0, lambda: jax.random.permutation(jax.random.fold_in(key, epoch), POOL), lambda: permutation
        )
        index = jax.lax.dynamic_slice_in_dim(permutation, position * batch_size, batch_size)

        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(
                logits_fn(p, data["x"][index]), data["y"][index]
            ).mean()

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return (optax.apply_updates(p, updates), opt_state, i + 1, permutation), loss

    carry = (params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.permutation(key, POOL))
    chunk = jax.jit(lambda carry: jax.lax.scan(step, carry, length=steps_per_call), donate_argnums=0)

    def run(steps):
        nonlocal carry
        for _ in range(steps // steps_per_call):
            carry, _ = chunk(carry)
        jax.block_until_ready(carry)

    return run


def torch_contender(shape, batch_size: int, mu: int | None):
    """PyTorch eager: supervised steps, or (with ``mu``) USB's FixMatch step."""
    import torch

    torch.manual_seed(0)
    *spatial, in_channels = shape
    conv_layer, pool_fn = {1: (torch.nn.Conv1d, torch.nn.functional.max_pool1d),
                           2: (torch.nn.Conv2d, torch.nn.functional.max_pool2d)}[len(spatial)]
    kernel = 3 if len(spatial) == 2 else 5
    convs = []
    for width in CHANNELS:
        convs.append(conv_layer(in_channels, width, kernel, padding="same"))
        in_channels = width
    convs = torch.nn.ModuleList(convs)
    dense, head = torch.nn.Linear(in_channels, HIDDEN), torch.nn.Linear(HIDDEN, CLASSES)
    net = torch.nn.ModuleList([convs, dense, head])

    def forward(x):
        for layer in convs:
            x = torch.relu(layer(x))
            if min(x.shape[2:]) >= 2:
                x = pool_fn(x, 2)
        return head(torch.relu(dense(x.amax(tuple(range(2, x.ndim))))))

    def channels_first(pool):
        x = torch.from_numpy(np.array(pool["x"]))
        return x.permute(0, x.ndim - 1, *range(1, x.ndim - 1)).contiguous(), torch.from_numpy(np.array(pool["y"])).long()

    x, y = channels_first(synthetic_pool(shape, 0))
    x_unlabeled, _ = channels_first(synthetic_pool(shape, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(0)

    def step():
        index = torch.randint(0, POOL, (batch_size,), generator=generator)
        if mu is None:
            loss = torch.nn.functional.cross_entropy(forward(x[index]), y[index])
        else:
            weak = x_unlabeled[torch.randint(0, POOL, (mu * batch_size,), generator=generator)]
            strong = weak.flip(-1)  # stands in for augmentation, which USB does on the host per image
            logits = forward(torch.cat([x[index], weak, strong]))
            labeled, weak_logits, strong_logits = logits.split([batch_size, mu * batch_size, mu * batch_size])
            probs = torch.softmax(weak_logits.detach(), -1)
            confidence, pseudo = probs.max(-1)
            mask = (confidence >= 0.95).float()
            unlabeled = (torch.nn.functional.cross_entropy(strong_logits, pseudo, reduction="none") * mask).mean()
            loss = torch.nn.functional.cross_entropy(labeled, y[index]) + unlabeled
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def run(steps):
        for _ in range(steps):
            step()

    return run


def time_interleaved(contenders: dict, steps: int, repeats: int, clock) -> dict[str, float]:
    """Median ms per step of each ``run(steps)``, warmed up first, repeats interleaved."""
    for run in contenders.values():
        run(steps)
    samples = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            tic = clock()
            run(steps)
            samples[name].append(1000 * (clock() - tic) / steps)
    return {name: statistics.median(values) for name, values in samples.items()}


def parse_shape(text: str) -> tuple[int, ...]:
    return tuple(int(size) for size in text.lower().split("x"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["8x8x1", "28x28x1", "32x32x3"],
                        help="example shapes: HxWxC images or LxC signals (40x1 is MNIST-1D's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repeat (one compiled chunk)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps-fixmatch", type=int, default=None, help="default: --steps")
    parser.add_argument("--setups", nargs="+", default=["supervised", "fixmatch"], choices=["supervised", "fixmatch"])
    parser.add_argument("--clock", default="wall", choices=tuple(CLOCKS))
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads of PyTorch and of XLA (1: single-threaded Eigen); default: the cores")
    args = parser.parse_args()
    if args.threads == 1:  # read when JAX starts its CPU backend, i.e. at the first computation
        os.environ["XLA_FLAGS"] = " ".join(
            [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"]
        )
    try:
        import torch

        torch.set_num_threads(args.threads)
        torch_note = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch = None
        torch_note = "torch not installed (pip install -e .[bench]): PyTorch rows skipped"
    print(f"CNN {CHANNELS} + dense {HIDDEN}, Adam; median ms per step over {args.repeats} interleaved repeats "
          f"({args.clock} clock); ratio = contender / lab")
    print(f"jax {jax.__version__} ({jax.default_backend()}), {os.cpu_count()} cores, XLA threads: {args.threads}, "
          f"{platform.processor() or platform.machine()}; {torch_note}")
    table = {}
    for setup in args.setups:
        steps = args.steps if setup == "supervised" else (args.steps_fixmatch or args.steps)
        for text in args.shapes:
            shape = parse_shape(text)
            if setup == "supervised":
                objective = semisupervised.Supervised(input_shape=shape, augmentation="none")
                contenders = {"lab": lab_contender(shape, objective, 256, steps), "lean jax": lean_contender(shape, 256, steps)}
                if torch is not None:
                    contenders["pytorch"] = torch_contender(shape, 256, None)
            else:
                objective = semisupervised.FixMatch(input_shape=shape)
                contenders = {"lab": lab_contender(shape, objective, 32, steps)}
                if torch is not None:
                    contenders["pytorch"] = torch_contender(shape, 32, objective.mu)
            ms = time_interleaved(contenders, steps, args.repeats, CLOCKS[args.clock])
            table[f"{setup} {text}"] = ms
            cells = "".join(f"{name:>10} {value:8.1f} ms {value / ms['lab']:5.2f}x" for name, value in ms.items())
            print(f"{setup:<11}{text:>9}{cells}", flush=True)
    print(json.dumps({"ms_per_step": {row: {k: round(v, 2) for k, v in ms.items()} for row, ms in table.items()}}))


if __name__ == "__main__":
    main()
