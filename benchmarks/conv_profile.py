"""Where the CNN's supervised step on 28x28 images spends its time: lab's convolutions vs PyTorch's.

``conv_speed.py`` times whole training steps. This script profiles one of them, in two parts.

1. **The compiled step, op by op**: lab's supervised step (``conv_speed.lab_contender``:
   ``train.fit``, batch 256, 28x28x1) is traced with ``jax.profiler`` for ``--steps``
   steps, and the time of each XLA:CPU operation is summed, per step, beside the
   operation's output shape and what it computes (forward pass, or ``transpose(jvp)``:
   the backward pass), read from the compiled HLO.
2. **The convolutions against PyTorch's**: the default CNN's two convolutions, taken apart at the shapes of the supervised 28x28 step (batch 256; conv 1:
28x28x1 -> 32 channels, conv 2: 14x14x32 -> 64, both 3x3 'SAME'), and times, side by
side and interleaved, each piece in JAX (jit, lab's ``models.conv_by_matmul``) and in
PyTorch eager (channels-first ``conv2d``, threads = cores):

* ``im2col``: building the patch matrix alone (JAX; PyTorch's convolution has none);
* ``matmul forward``: the convolution's one matrix product, (N·H·W, 9·C) @ (9·C, K);
* ``matmul backward``: the two products of its gradient, (N·H·W, K) @ (K, 9·C) and
  (9·C, N·H·W) @ (N·H·W, K);
* ``conv forward`` and ``conv forward + backward`` (gradients of the input and the kernel).

The matrix products are the same arithmetic in both libraries (``torch.mm`` on the
same shapes), so their ratio is the ratio of the two CPU GEMM kernels alone: XLA's
(Eigen) and PyTorch's (oneDNN / MKL).

    python benchmarks/conv_profile.py [--steps 10] [--top 15] [--repeats 7] [--calls 10]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lab import models

BATCH = 256
LAYERS = {"conv 1 (28x28x1 -> 32)": (28, 1, 32), "conv 2 (14x14x32 -> 64)": (14, 32, 64)}
SAME = ((1, 1), (1, 1))


def im2col(x):
    """The patch matrix ``conv_by_matmul`` multiplies: padded, shifted windows concatenated."""
    padded = jnp.pad(x, ((0, 0), *SAME, (0, 0)))
    side = x.shape[1]
    return jnp.concatenate([padded[:, i:i + side, j:j + side] for i in range(3) for j in range(3)], axis=-1)


def jax_pieces(side: int, channels: int, width: int) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, side, side, channels), np.float32))
    w = jnp.asarray(rng.standard_normal((3, 3, channels, width), np.float32))
    patches = jax.jit(im2col)(x).reshape(-1, 9 * channels)
    cotangent = jnp.asarray(rng.standard_normal((patches.shape[0], width), np.float32))
    w2 = w.reshape(-1, width)

    def conv(x, w):
        return models.conv_by_matmul(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    conv_grad = jax.jit(jax.grad(lambda x, w: jnp.vdot(conv(x, w), cotangent.reshape(BATCH, side, side, width)), (0, 1)))
    return {
        "im2col": (jax.jit(im2col), (x,)),
        "matmul forward": (jax.jit(jnp.dot), (patches, w2)),
        "matmul backward": (jax.jit(lambda p, g, w2: (g @ w2.T, p.T @ g)), (patches, cotangent, w2)),
        "conv forward": (jax.jit(conv), (x, w)),
        "conv forward + backward": (conv_grad, (x, w)),
    }


def torch_pieces(side: int, channels: int, width: int) -> dict:
    import torch

    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((BATCH, channels, side, side), np.float32))
    w = torch.from_numpy(rng.standard_normal((width, channels, 3, 3), np.float32))
    patches = torch.from_numpy(rng.standard_normal((BATCH * side * side, 9 * channels), np.float32))
    cotangent = torch.from_numpy(rng.standard_normal((BATCH * side * side, width), np.float32))
    w2 = w.reshape(width, -1).T.contiguous()
    conv = torch.nn.functional.conv2d
    g4 = cotangent.reshape(BATCH, side, side, width).permute(0, 3, 1, 2).contiguous()

    def forward_backward(x, w):
        x, w = x.requires_grad_(), w.requires_grad_()
        conv(x, w, padding=1).backward(g4)
        return x.grad, w.grad

    return {
        "matmul forward": (torch.mm, (patches, w2)),
        "matmul backward": (lambda p, g, w2: (g @ w2.T, p.T @ g), (patches, cotangent, w2)),
        "conv forward": (lambda x, w: conv(x, w, padding=1), (x, w)),
        "conv forward + backward": (lambda x, w: forward_backward(x.detach().clone(), w.detach().clone()), (x, w)),
    }


def timed(function, arguments, calls: int) -> float:
    tic = time.perf_counter()
    for _ in range(calls):
        out = function(*arguments)
    jax.block_until_ready(out)  # JAX dispatches asynchronously; torch on the CPU has already finished
    return 1000 * (time.perf_counter() - tic) / calls


def op_profile(steps: int, top: int, hlo_dump: str) -> None:
    """Part 1: per-operation times of lab's compiled supervised 28x28 step; ``hlo_dump`` is the folder
    where ``main`` asked XLA, before JAX started, to write the compiled HLO."""
    sys.path.insert(0, os.path.dirname(__file__))
    import conv_speed

    from lab import semisupervised

    shape = (28, 28, 1)
    run = conv_speed.lab_contender(shape, semisupervised.Supervised(input_shape=shape, augmentation="none"), 256, steps)
    run(steps)  # compile
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            run(steps)
        (trace_file,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
        with gzip.open(trace_file) as stream:
            events = json.load(stream)["traceEvents"]
    (hlo_file,) = glob.glob(f"{hlo_dump}/*jit_chunk.cpu_after_optimizations.txt")
    instructions = {}  # name -> (output shape, what it computes)
    for line in open(hlo_file):
        match = re.match(r"\s*(?:ROOT )?%?([\w.-]+) = (\S+) .*?op_name=\"([^\"]*)\"", line)
        if match:
            name, out_shape, op_name = match.groups()
            instructions[name] = (out_shape, re.sub(r"^jit\(chunk\)/while/body/(closed_call/)?", "", op_name))
    total = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event["name"] in instructions:
            total[event["name"]] += event["dur"] / 1000 / steps
    step_ms = sum(total.values())
    print(f"lab's supervised step, 28x28x1, batch 256: {step_ms:.1f} ms of XLA operations per step "
          f"({len(total)} operations); the {top} longest:")
    print(f"{'ms/step':>8} {'share':>6}  {'operation':<26}{'output':<24}computes")
    for name, ms in total.most_common(top):
        out_shape, op_name = instructions[name]
        print(f"{ms:8.2f} {ms / step_ms:6.1%}  {name:<26}{out_shape:<24}{op_name[:70]}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="traced training steps (part 1)")
    parser.add_argument("--top", type=int, default=15, help="operations listed (part 1)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="calls per timed repeat")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    hlo_dump = tempfile.mkdtemp(prefix="lab-hlo-")
    # Read when JAX starts its CPU backend, which no line above has made it do.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={hlo_dump} --xla_dump_hlo_as_text".strip()
    op_profile(args.steps, args.top, hlo_dump)
    import torch

    torch.set_num_threads(args.threads)
    print(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} cores, {platform.machine()}; median ms per call over {args.repeats} interleaved repeats")
    print(f"{'layer':<26}{'piece':<26}{'lab (jax)':>10}{'pytorch':>10}{'jax / torch':>12}")
    for layer, shape in LAYERS.items():
        contenders = {"jax": jax_pieces(*shape), "torch": torch_pieces(*shape)}
        samples = {(name, piece): [] for name, pieces in contenders.items() for piece in pieces}
        for (name, piece) in samples:  # warm up: compile, allocate
            timed(*contenders[name][piece], calls=2)
        for _ in range(args.repeats):
            for name, piece in samples:
                samples[name, piece].append(timed(*contenders[name][piece], calls=args.calls))
        for piece in contenders["jax"]:
            ms = {name: statistics.median(samples[name, piece]) for name in contenders if (name, piece) in samples}
            ratio = f"{ms['jax'] / ms['torch']:.2f}x" if "torch" in ms else ""
            torch_ms = f"{ms['torch']:.2f}" if "torch" in ms else ""
            print(f"{layer:<26}{piece:<26}{ms['jax']:>10.2f}{torch_ms:>10}{ratio:>12}", flush=True)


if __name__ == "__main__":
    main()
