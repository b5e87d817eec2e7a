"""Figures 2, 3 and 5 of the active-learning issue: rounds on a dataset, label curves per strategy.

    python benchmarks/active_rounds.py [--runs random:random typiclust:margin typiclust:badge]
        [--dataset digits] [--budgets 10 20 40 70 100] [--seeds 0 1 2 3 4] [--setup supervised]
        [--method flexmatch] [--model cnn] [--steps 1000] [--target 0.95] [--embeddings auto]
        [--learner FIELD=VALUE ...] [--output-dir runs/active_rounds]

``--learner`` sets any other field of the learner's config (values as YAML, as ``lab run`` reads them),
e.g. a pretrained checkpoint's frozen probe on fortunes_topics (figure 3)::

    python benchmarks/active_rounds.py --dataset fortunes_topics --setup transfer --model bert \
        --embeddings pretrained --learner pretrain=checkpoint checkpoint=../shared/checkpoints/all-MiniLM-L6-v2 \
        adaptation=linear_probe "pretrain_kwargs={max_length: 64}"

Each run is ``COLD_START:STRATEGY``: the cold start picks the first budget from nothing (embeddings:
the pixels), then per budget the learner trains on every seed's labeled set (all seeds side by side),
the strategy scores the pool (with the trained model's probabilities and backbone features) and
queries the next batch. Prints the label curves as a Markdown table with the labels each run needed
to reach ``--target``, and keeps each run's result (selections, curve) as JSON in ``--output-dir``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lab import active, cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--runs", nargs="+", default=["random:random", "typiclust:margin", "typiclust:badge"])
    parser.add_argument("--budgets", nargs="+", type=int, default=[10, 20, 40, 70, 100])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--setup", default="supervised")
    parser.add_argument("--method", default="flexmatch")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--embeddings", default="auto", choices=active.EMBEDDINGS)
    parser.add_argument("--learner", nargs="*", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--output-dir", default="runs/active_rounds")
    args = parser.parse_args()
    learner = {
        "setup": args.setup, "method": args.method, "model": args.model, "dataset": args.dataset,
        "steps": args.steps, "learning_rate": args.learning_rate, "seeds": args.seeds, "eval_every": args.steps,
        **cli.parse_fields(args.learner),
    }  # fmt: skip
    results = []
    for run in args.runs:
        cold_start, strategy = run.split(":")
        tic = time.perf_counter()
        result = active.run(
            {
                "learner": learner, "cold_start": cold_start, "strategy": strategy, "budgets": args.budgets,
                "embeddings": args.embeddings,
            },
            progress=False,
        )  # fmt: skip
        result.save(Path(args.output_dir) / f"{args.dataset}-{args.setup}-{cold_start}-{strategy}.json")
        results.append(result)
        print(f"{run}: {time.perf_counter() - tic:.0f} s, {result.wall_time_s}", flush=True)
    print(active.label_curves_markdown(results, args.target))


if __name__ == "__main__":
    main()
