"""CNN training speed: ``lab.models.conv_by_matmul`` vs XLA's convolution, both in ``lab.fit``.

The default CNN (channels 32, 64) on digits, Adam, batch 256: the same model trained
by ``lab.fit`` twice, once with lab's im2col-matmul convolution (the default) and
once with every ``nnx.Conv`` calling ``lax.conv_general_dilated``. Median ms per step
over interleaved repeats (compilation excluded), and the ratio.

    python benchmarks/conv_speed.py [--steps 50] [--repeats 5] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json

import jax
from flax import nnx
from throughput import fit_contender, time_contenders

from lab import data, models


def cnn(digits: data.Dataset, conv) -> nnx.Module:
    """The default CNN with every convolution computed by ``conv``."""
    module = models.make_model("cnn", digits.input_shape, digits.num_classes, seed=0)
    for _, layer in nnx.iter_graph(module):
        if isinstance(layer, nnx.Conv):
            layer.conv_general_dilated = conv
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    digits = data.digits()
    contenders = {
        "conv_by_matmul (lab)": fit_contender(cnn(digits, models.conv_by_matmul), digits, args.batch_size, args.steps),
        "lax.conv_general_dilated": fit_contender(
            cnn(digits, jax.lax.conv_general_dilated), digits, args.batch_size, args.steps
        ),
    }
    rates = time_contenders(contenders, dict.fromkeys(contenders, args.steps), args.repeats)
    print(f"CNN (32, 64) on digits, batch {args.batch_size}, lab.fit; {args.steps} steps x {args.repeats} repeats (median)")
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    lab_rate = rates["conv_by_matmul (lab)"]
    for name, rate in rates.items():
        print(f"{name:<28}{1000 / rate:>10.1f} ms/step{lab_rate / rate:>10.2f}x")
    print(json.dumps({"ms_per_step": {name: round(1000 / rate, 2) for name, rate in rates.items()}}))


if __name__ == "__main__":
    main()
