"""Accuracy with few labels: lab's setups vs scikit-learn peers on the same labeled sets.

    python benchmarks/label_efficiency.py [--dataset digits] [--dataset-kwargs '{image_size: 16}']
        [--budgets 1 2 4 10] [--seeds 0 1 2 3 4] [--runs supervised fixmatch transfer] [--model mlp] [--steps 2000]

``--runs`` names lab's setups (``RUNS``): ``transfer*`` adapt a SimCLR backbone pretrained once on the
training images (``--pretrain-steps``, cached); ``transfer_fixmatch`` / ``transfer_flexmatch`` adapt it
with that semi-supervised method on the labeled set and the unlabeled pool.

``--dataset`` takes any image dataset that ``lab run`` takes (a built-in name, or your own
images, e.g. ``images:own_data/digits``), loaded by ``data.load`` as the runs load it, with
``--dataset-kwargs`` passed to its loader and to the runs' ``dataset_kwargs``.

For every label budget k and seed s, the labeled set is ``data.labeled_split(y_train,
k, s)`` -- the draw ``lab.experiment.run`` makes -- and the rest of the training
split is the unlabeled pool. Peers, side by side on the same sets: supervised
``SVC`` (RBF) and ``LogisticRegression`` on the labeled examples, and the
semi-supervised ``LabelSpreading(kernel="knn", n_neighbors=7)`` and
``SelfTrainingClassifier(SVC)``. Prints mean ± std of test accuracy over seeds.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

from lab import data, experiment, validate

RUNS = {
    "supervised": {"setup": "supervised"},
    "fixmatch": {"setup": "semi_supervised", "method": "fixmatch"},
    "flexmatch": {"setup": "semi_supervised", "method": "flexmatch"},
    "freematch": {"setup": "semi_supervised", "method": "freematch"},
    "mean_teacher": {"setup": "semi_supervised", "method": "mean_teacher"},
    "pseudo_label": {"setup": "semi_supervised", "method": "pseudo_label"},
    "pi_model": {"setup": "semi_supervised", "method": "pi_model"},
    "transfer": {"setup": "transfer", "pretrain": "simclr", "adaptation": "finetune"},
    "transfer_probe": {"setup": "transfer", "pretrain": "simclr", "adaptation": "linear_probe"},
    "transfer_low_lr": {"setup": "transfer", "pretrain": "simclr", "adaptation": "finetune_low_lr"},
    # the same SimCLR backbone (pretrained once on the unlabeled pool, cached), adapted by a method: USB's recipe
    **{f"transfer_{method}": {"setup": "transfer_semi_supervised", "pretrain": "simclr", "adaptation": "finetune",
                              "method": method} for method in ("fixmatch", "flexmatch")},
}


PEERS = ("SVC", "LogisticRegression", "LabelSpreading", "SelfTraining")


def peer_accuracies(dataset: data.Dataset, k: int, seed: int, peers=PEERS) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier
    from sklearn.svm import SVC

    x = dataset.x_train.reshape(len(dataset.x_train), -1)
    x_test = dataset.x_test.reshape(len(dataset.x_test), -1)
    labeled, _ = data.labeled_split(dataset.y_train, k, seed)
    partial = np.full_like(dataset.y_train, -1)
    partial[labeled] = dataset.y_train[labeled]
    models = {
        "SVC": lambda: SVC().fit(x[labeled], dataset.y_train[labeled]),
        "LogisticRegression": lambda: LogisticRegression(max_iter=2000).fit(x[labeled], dataset.y_train[labeled]),
        "LabelSpreading": lambda: LabelSpreading(kernel="knn", n_neighbors=7).fit(x, partial),
        "SelfTraining": lambda: SelfTrainingClassifier(SVC(probability=True, random_state=seed)).fit(x, partial),
    }
    with warnings.catch_warnings():
        # The peers as this benchmark specifies them: SVC(probability=True) (deprecated in scikit-learn
        # 1.9, still what SelfTrainingClassifier needs), and LabelSpreading's 0/0 for points
        # no labeled neighbour reaches (they get no label; scikit-learn handles it).
        warnings.filterwarnings("ignore", message="The `probability` parameter was deprecated", category=FutureWarning)
        warnings.filterwarnings("ignore", message="invalid value encountered in divide", category=RuntimeWarning)
        return {f"sklearn {name}": float(models[name]().score(x_test, dataset.y_test)) for name in peers}


def options(text: str) -> dict:
    """``--dataset-kwargs``' text read as lab run reads ``dataset_kwargs``: a YAML mapping."""
    try:
        return validate.coerce("dataset_kwargs", text, dict)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).splitlines()[0]) from None


def load_images(parser: argparse.ArgumentParser, name: str, kwargs: dict) -> data.Dataset:
    """The image dataset ``name`` as the runs load it; a name or file it cannot load ends the script in one line."""
    try:
        dataset = data.load(name, **kwargs)
    except (ValueError, TypeError, OSError) as error:  # an unknown name, a missing folder, a bad option
        parser.error(f"--dataset {name}: {str(error).splitlines()[0]}")
    if dataset.vocab_size is not None:  # token ids: the peers here would compare ids as pixels
        parser.error(f"--dataset {name} is text; benchmarks/language.py compares text setups and peers")
    return dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", help="an image dataset lab run takes (default: digits)")
    parser.add_argument("--dataset-kwargs", type=options, default={},
                        help="options of the dataset's loader, as lab run's dataset_kwargs (e.g. '{image_size: 16}')")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 4, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--runs", nargs="+", default=["supervised", "fixmatch", "transfer"], choices=sorted(RUNS))
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS,
                        help="scikit-learn peers to run (none: --peers with no names; the graph-based "
                        "ones take minutes on 60,000 examples)")
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--pretrain-steps", type=int, default=2000)
    args = parser.parse_args()
    dataset = load_images(parser, args.dataset, args.dataset_kwargs)

    table: dict[str, dict[int, list[float]]] = {}
    for k in args.budgets:
        for seed in args.seeds:
            for name, accuracy in peer_accuracies(dataset, k, seed, args.peers).items():
                table.setdefault(name, {}).setdefault(k, []).append(accuracy)
        for run in args.runs:
            tic = time.perf_counter()
            config = {
                "dataset": args.dataset, "dataset_kwargs": args.dataset_kwargs, "model": args.model,
                "labels_per_class": k, "seeds": args.seeds, "steps": args.steps, "eval_every": args.steps,
                "learning_rate": args.learning_rate,
                **RUNS[run],
            }
            if "pretrain" in RUNS[run]:  # transfer and transfer_semi_supervised
                config["pretrain_kwargs"] = {"steps": args.pretrain_steps}
            result = experiment.run(config, progress=False)
            table.setdefault(f"lab {run}", {})[k] = result.metrics["accuracy"]
            seeds = ", ".join(f"{accuracy:.4f}" for accuracy in result.metrics["accuracy"])  # kept if cut short
            print(f"k={k:<3} lab {run:<16} {np.mean(result.metrics['accuracy']):.4f} (seeds: {seeds}; "
                  f"{time.perf_counter() - tic:.0f} s)", flush=True)

    print(f"\n{args.dataset}: test accuracy, mean ± std over seeds {args.seeds}; {args.steps} steps, model {args.model}")
    header = "| method | " + " | ".join(f"{k} / class" for k in args.budgets) + " |"
    print(header)
    print("|" + " --- |" * (len(args.budgets) + 1))
    for name, by_budget in table.items():
        cells = [f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}" for v in (by_budget[k] for k in args.budgets)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(json.dumps({name: {str(k): v for k, v in by_budget.items()} for name, by_budget in table.items()}))


if __name__ == "__main__":
    main()
