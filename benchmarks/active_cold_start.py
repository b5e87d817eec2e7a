"""Figure 1 of the active-learning issue: the cold start on digits, 10 labels in all, no class knowledge.

    python benchmarks/active_cold_start.py [--strategies random stratified_random typiclust probcover coreset]
        [--seeds 0 1 2 3 4] [--budget 10] [--steps 1000] [--model cnn] [--method flexmatch]

Each strategy picks ``--budget`` examples of the digits training pool from nothing, one draw per seed
(``cold_start`` of :func:`lab.active.run`; the embeddings are the 64 pixels, as the learner has no
pretrained backbone), and FlexMatch trains the CNN on them with the rest of the pool unlabeled, all
seeds side by side. ``stratified_random`` reads the true labels (one example per class): the oracle no
user has. Prints the test accuracy (%) mean ± std over seeds, how many classes the picks cover, and the
per-seed values as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from lab import active, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--strategies", nargs="+", default=["random", "stratified_random", "typiclust", "probcover", "coreset"]
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--method", default="flexmatch")
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    args = parser.parse_args()
    y = data.load("digits").y_train
    learner = {
        "setup": "semi_supervised", "method": args.method, "model": args.model, "dataset": "digits",
        "steps": args.steps, "learning_rate": args.learning_rate, "seeds": args.seeds, "eval_every": args.steps,
    }  # fmt: skip
    rows = {}
    for strategy in args.strategies:
        tic = time.perf_counter()
        result = active.run(
            {"learner": learner, "cold_start": strategy, "strategy": "random", "budgets": [args.budget]},
            progress=False,
        )  # fmt: skip
        accuracy = 100 * np.array(result.curve["accuracy"][0])
        classes = [len(np.unique(y[selection[0]])) for selection in result.selections]
        rows[strategy] = {
            "accuracy": accuracy.round(1).tolist(), "classes": classes, "seconds": round(time.perf_counter() - tic),
            "selections": [selection[0] for selection in result.selections],
        }  # fmt: skip
        print(f"| {strategy} | {accuracy.mean():.1f} ± {accuracy.std():.1f} | {np.mean(classes):.1f} | "
              f"{rows[strategy]['seconds']} s |", flush=True)  # fmt: skip
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
