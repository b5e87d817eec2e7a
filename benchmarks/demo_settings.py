"""Choose `make demo`'s settings on a validation split of the digits training data, never the test split.

The digits training split (1,347 images) is divided once more: 25% of each class is held
out (``data.validation_split``, seed 0) and plays the test set; the labeled examples and
the unlabeled pool come from the remaining 75%. Each candidate runs through
``lab.experiment.run`` exactly as the demo's sweep would, and the table prints the
validation accuracy (mean ± std over seeds) and the wall time of the run.

    python benchmarks/demo_settings.py --candidates fixmatch-mlp-300 flexmatch-mlp-1000 ...
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lab import data, experiment

VALIDATION = "digits_validation"


def digits_validation() -> data.Dataset:
    digits = data.digits()
    train, held_out = data.validation_split(digits.y_train, 0.25, seed=0)
    return data.Dataset(
        name=VALIDATION,
        x_train=digits.x_train[train],
        y_train=digits.y_train[train],
        x_test=digits.x_train[held_out],
        y_test=digits.y_train[held_out],
        class_names=digits.class_names,
        source="digits training split, 25% of each class held out for validation (seed 0)",
    )


def candidate(name: str) -> dict:
    """``<setup or method>-<model>-<steps>[-cosine][-<adaptation>]`` -> experiment fields.

    The setup or method is ``supervised``, ``simclr<pretraining steps>`` (transfer) or a
    semi-supervised method; the adaptation, for transfer, one of ``lab.transfer.ADAPTATIONS``.
    """
    what, model, steps, *rest = name.split("-")
    fields = {"model": model, "steps": int(steps), "eval_every": int(steps)}
    if what in ("supervised",):
        fields["setup"] = "supervised"
    elif what.startswith("simclr"):
        fields.update(setup="transfer", pretrain="simclr", pretrain_kwargs={"steps": int(what[6:] or 300)})
    else:
        fields.update(setup="semi_supervised", method=what)
    for option in rest:
        fields.update({"schedule": "cosine"} if option == "cosine" else {"adaptation": option})
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", nargs="+", required=True)
    parser.add_argument("--labels", type=int, nargs="+", default=[4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    args = parser.parse_args()
    data.DATASET_ENTRIES[VALIDATION] = data.DatasetEntry(digits_validation, "image", data.DATASET_ENTRIES["digits"].class_names)
    for name in args.candidates:
        for k in args.labels:
            config = {"dataset": VALIDATION, "labels_per_class": k, "seeds": args.seeds, "learning_rate": args.learning_rate,
                      **candidate(name)}
            tic = time.perf_counter()
            result = experiment.run(experiment.ExperimentConfig.from_dict(config), progress=False)
            accuracy = 100 * np.asarray(result.metrics["accuracy"])
            print(f"{name:>28} {k:>3}/class  validation {accuracy.mean():5.1f} ± {accuracy.std():4.1f}  "
                  f"{time.perf_counter() - tic:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
