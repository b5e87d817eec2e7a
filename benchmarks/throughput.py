"""Training throughput: ``lab.fit`` vs a hand-written ``lax.scan`` loop vs PyTorch eager.

The same MLP (64-256-256-10, ReLU), Adam (lr 1e-3), batch 64, on the digits training
split, with batches drawn the same way (a fresh permutation per epoch). Each
contender is warmed up (compilation excluded), then timed over ``--steps`` steps,
``--repeats`` times; the median steps/s is reported, with ratios against lab.

    python benchmarks/throughput.py [--steps 5000] [--repeats 5]

PyTorch (CPU build) is optional: without it that row is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab import data, models, optim, semisupervised, train

HIDDEN = (256, 256)
BATCH = 64
LEARNING_RATE = 1e-3


def time_contenders(contenders: dict, steps: dict, repeats: int) -> dict[str, float]:
    """Median steps/s of each ``run_steps(n)`` (which must block until done).

    Every contender is warmed up first (compilation, caches); then the repeats are
    interleaved, so that a change in the machine's load hits all of them alike.
    """
    for name, run_steps in contenders.items():
        run_steps(steps[name])
    rates = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, run_steps in contenders.items():
            tic = time.perf_counter()
            run_steps(steps[name])
            rates[name].append(steps[name] / (time.perf_counter() - tic))
    return {name: statistics.median(values) for name, values in rates.items()}


def fit_contender(module, digits: data.Dataset, batch_size: int, steps_per_call: int):
    """``run_steps`` that trains ``module`` on digits with ``lab.fit`` (Adam, supervised)."""
    model, params, model_state = train.Graphs.split(module)
    tx = optim.make_optimizer("adam", LEARNING_RATE)
    pools = {"labeled": {"x": jnp.asarray(digits.x_train), "y": jnp.asarray(digits.y_train)}}
    state = train.create_train_state(params, model_state, tx, 0)
    objective = semisupervised.Supervised(input_shape=digits.input_shape, augmentation="none")

    def run_steps(steps):
        nonlocal state
        target = int(state.step) + steps
        result = train.fit(model, state, tx, objective, pools, steps=target, batch_size=batch_size,
                           eval_every=steps_per_call, progress=False)
        state = result.state
        jax.block_until_ready(state.params)

    return run_steps


def scan_contender(digits: data.Dataset, steps_per_call: int):
    """The loop a JAX user would write by hand: dict params, optax, lax.scan, donation."""
    x = jnp.asarray(digits.x_train.reshape(len(digits.x_train), -1))
    y = jnp.asarray(digits.y_train)
    sizes = (x.shape[1], *HIDDEN, digits.num_classes)
    keys = jax.random.split(jax.random.PRNGKey(0), len(sizes) - 1)
    params = [
        {"w": jax.random.normal(k, (m, n)) * jnp.sqrt(1.0 / m), "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]
    tx = optax.adam(LEARNING_RATE)
    key = jax.random.PRNGKey(1)
    n = x.shape[0]
    batches_per_epoch = n // BATCH

    def logits_fn(params, xb):
        for layer in params[:-1]:
            xb = jax.nn.relu(xb @ layer["w"] + layer["b"])
        return xb @ params[-1]["w"] + params[-1]["b"]

    def epoch_permutation(epoch):
        return jax.random.permutation(jax.random.fold_in(key, epoch), n)

    def step(carry, _):
        params, opt_state, i, permutation = carry
        epoch, position = jnp.divmod(i, batches_per_epoch)
        # Sort once per epoch, not every step (the permutation is most of a batch's cost).
        permutation = jax.lax.cond(position == 0, epoch_permutation, lambda _: permutation, epoch)
        index = permutation[position * BATCH + jnp.arange(BATCH)]

        def loss_fn(p):
            return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, x[index]), y[index]).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, i + 1, permutation), loss

    carry = (params, tx.init(params), jnp.zeros((), jnp.int32), epoch_permutation(0))

    def chunk(carry):
        return jax.lax.scan(step, carry, length=steps_per_call)

    chunk = jax.jit(chunk, donate_argnums=0)

    def run_steps(steps):
        nonlocal carry
        for _ in range(steps // steps_per_call):
            carry, _ = chunk(carry)
        jax.block_until_ready(carry)

    return run_steps


def torch_contender(digits: data.Dataset):
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    x = torch.from_numpy(digits.x_train.reshape(len(digits.x_train), -1))
    y = torch.from_numpy(digits.y_train.astype(np.int64))
    sizes = (x.shape[1], *HIDDEN, digits.num_classes)
    layers = []
    for m, n in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(m, n), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers[:-1])
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(0)
    batches_per_epoch = len(x) // BATCH
    state = {"order": torch.randperm(len(x), generator=generator), "i": 0}

    def run_steps(steps):
        for _ in range(steps):
            position = state["i"] % batches_per_epoch
            if position == 0:
                state["order"] = torch.randperm(len(x), generator=generator)
            index = state["order"][position * BATCH : (position + 1) * BATCH]
            loss = torch.nn.functional.cross_entropy(net(x[index]), y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["i"] += 1

    return run_steps, torch.__version__, torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5000, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps-per-call", type=int, default=500, help="steps fused per compiled call")
    args = parser.parse_args()
    if args.steps % args.steps_per_call:
        parser.error("--steps must be a multiple of --steps-per-call")
    digits = data.digits()

    contenders = {
        "lab.fit": fit_contender(
            models.make_model("mlp", digits.input_shape, digits.num_classes, seed=0, hidden=HIDDEN),
            digits, BATCH, args.steps_per_call,
        ),
        "hand-written lax.scan": scan_contender(digits, args.steps_per_call),
    }
    steps = {name: args.steps for name in contenders}
    torch_info = torch_contender(digits)
    notes = {}
    if torch_info is None:
        notes["pytorch"] = "not installed (pip install torch, CPU build) - row skipped"
    else:
        contenders["pytorch eager"], version, threads = torch_info
        steps["pytorch eager"] = max(args.steps // 4, 1)  # eager steps are slower; rates are per step
        notes["pytorch"] = f"torch {version}, {threads} threads"
    rates = time_contenders(contenders, steps, args.repeats)

    lab_rate = rates["lab.fit"]
    print(f"MLP 64-256-256-10, Adam, batch {BATCH}, digits; {args.steps} steps x {args.repeats} repeats (median)")
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, {platform.processor() or platform.machine()}")
    print(f"{'contender':<24}{'steps/s':>12}{'lab / contender':>18}")
    for name, rate in rates.items():
        print(f"{name:<24}{rate:>12,.0f}{lab_rate / rate:>17.2f}x")
    for name, note in notes.items():
        print(f"note: {note}")
    print(json.dumps({"steps_per_s": {k: round(v, 1) for k, v in rates.items()},
                      "lab_over": {k: round(lab_rate / v, 3) for k, v in rates.items()}}))


if __name__ == "__main__":
    main()
