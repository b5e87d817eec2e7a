"""Fully supervised accuracy on the embedded datasets, with scikit-learn peers.

    python benchmarks/accuracy.py [--digits-steps 3000] [--mnist1d-steps 6000]

digits: the standard split (25% test, stratified, random_state=0); lab's CNN vs an
RBF SVM. MNIST-1D: the default 4,000 / 1,000 split; lab's CNN vs an RBF SVM. The
same numbers come from ``lab train --dataset digits --model cnn --steps 3000``.
"""

from __future__ import annotations

import argparse
import json
import time

from lab import data, experiment


def svm_accuracy(dataset: data.Dataset) -> float:
    from sklearn.svm import SVC

    x_train = dataset.x_train.reshape(len(dataset.x_train), -1)
    x_test = dataset.x_test.reshape(len(dataset.x_test), -1)
    return float(SVC(kernel="rbf").fit(x_train, dataset.y_train).score(x_test, dataset.y_test))


def lab_accuracy(dataset: str, model: str, steps: int, seed: int) -> tuple[float, dict]:
    config = experiment.TrainConfig(dataset=dataset, model=model, steps=steps, eval_every=steps, seed=seed)
    result = experiment.train_and_evaluate(config, progress=False)
    return result["test"]["accuracy"], result["wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits-steps", type=int, default=3000)
    parser.add_argument("--mnist1d-steps", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for name, steps in (("digits", args.digits_steps), ("mnist1d", args.mnist1d_steps)):
        tic = time.perf_counter()
        accuracy, wall = lab_accuracy(name, "cnn", steps, args.seed)
        rows.append({"dataset": name, "contender": f"lab cnn, {steps} steps, seed {args.seed}", "test_accuracy": accuracy,
                     "seconds": round(time.perf_counter() - tic, 1), "compile_s": round(wall["compile"], 1)})
        rows.append({"dataset": name, "contender": "sklearn SVC(rbf)", "test_accuracy": svm_accuracy(data.load(name))})
    print(f"{'dataset':<9}{'contender':<34}{'test accuracy':>14}")
    for row in rows:
        print(f"{row['dataset']:<9}{row['contender']:<34}{row['test_accuracy']:>14.4f}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
