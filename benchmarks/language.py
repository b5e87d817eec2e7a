"""Few labels on text: lab's setups against TF-IDF peers on the same labeled sets.

    python benchmarks/language.py [--dataset fortunes_topics] [--budgets 5 10 25 50] [--seeds 0 1 2]
        [--runs bag mlm_finetune ...] [--steps 500] [--pretrain-steps 2000] [--peers ...] [--features word char]

``--dataset`` takes any text dataset ``lab run`` takes: ``fortunes_topics``, ``fortunes_language``, or a
file of your own (``csv:tickets.csv``, ``jsonl:tickets.jsonl``, with the default columns ``text`` and ``label``).

For every label budget k and seed s the labeled set is ``data.labeled_split(y_train, k, s)``,
the draw ``lab.experiment.run`` makes, applied to the raw texts of ``lab.data.texts``
(in the order of the token arrays; checked below); the rest of the training split is the
unlabeled pool, and the test set is the dataset's. Peers (scikit-learn), side by side on
those sets: ``TfidfVectorizer`` features (word 1-2-grams with sublinear tf; with
``--features char``, character 1-4-grams within word boundaries; both are the default for
``fortunes_language`` and your own files) fitted on the training texts (no labels are used), then

* ``LogReg``: ``LogisticRegression`` on the labeled texts;
* ``LabelSpreading``: ``LabelSpreading(kernel="knn", n_neighbors=7)`` over all training texts;
* ``SelfTraining``: ``SelfTrainingClassifier(LogisticRegression())`` over all training texts, adding the
  most confident tenth of the unlabeled texts each of its 10 rounds (``criterion="k_best"``: with
  few labels, LogisticRegression is never sure enough for the default 0.75 threshold, and
  self-training would add nothing);

and the same ``LogReg`` with every training label (column ``all``). lab's rows
(:data:`RUNS`) run through ``lab.experiment.run``, all seeds of a budget side by side;
transfer and transfer_semi_supervised rows pretrain a masked language model (``pretrain=mlm``)
on the training texts and the pretraining corpus once (cached in ``$LAB_CACHE/pretrained``) and
adapt it. Prints mean ± std of test accuracy (%) over seeds as a Markdown table, then the costs
(pretraining time and steps/s, fine-tuning steps/s, the whole run's wall time) and the per-seed
values as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

from lab import data, experiment, text

# lab's contenders: a name -> the experiment fields that make it (with the learning rate it uses
# unless --learning-rate says otherwise).
_BAG = {"setup": "supervised", "model": "bag", "learning_rate": 3e-3}
_TRANSFORMER = {"setup": "supervised", "model": "text_transformer", "learning_rate": 1e-3}
_MLM = {"setup": "transfer", "pretrain": "mlm"}
_MLM_FINETUNE = {**_MLM, "adaptation": "finetune", "model": "text_transformer", "learning_rate": 3e-4}
_MLM_BAG_PROBE = {**_MLM, "adaptation": "linear_probe", "model": "bag", "learning_rate": 1e-2}
_METHODS = ("fixmatch", "flexmatch")


def _by(method: str, run: dict, **changes) -> dict:
    """``run`` with the unlabeled pool drawn by the semi-supervised ``method``, from scratch or
    from the pretrained backbone."""
    setup = {"supervised": "semi_supervised", "transfer": "transfer_semi_supervised"}[run["setup"]]
    return {**run, "setup": setup, "method": method, **changes}


RUNS = {
    "bag": _BAG,
    "transformer": _TRANSFORMER,
    **{f"{method}_bag": _by(method, _BAG) for method in _METHODS},
    **{method: _by(method, _TRANSFORMER) for method in _METHODS},
    "mlm_finetune": _MLM_FINETUNE,
    "mlm_probe": {**_MLM, "adaptation": "linear_probe", "model": "text_transformer", "learning_rate": 3e-3},
    "mlm_low_lr": {**_MLM, "adaptation": "finetune_low_lr", "model": "text_transformer", "learning_rate": 1e-3},
    **{f"mlm_{method}": _by(method, _MLM_FINETUNE, learning_rate=1e-3) for method in _METHODS},
    "mlm_bag_finetune": {**_MLM, "adaptation": "finetune", "model": "bag", "learning_rate": 3e-3},
    "mlm_bag_probe": _MLM_BAG_PROBE,
    **{f"mlm_bag_probe_{method}": _by(method, _MLM_BAG_PROBE) for method in _METHODS},
}

PEERS = ("LogReg", "LabelSpreading", "SelfTraining")
FEATURES = ("word", "char")
# By dataset; other text datasets (your own files) get the last entry's.
DEFAULT_FEATURES = {"fortunes_topics": ["word"], "fortunes_language": ["word", "char"]}
DEFAULT_BUDGETS = {"fortunes_topics": [5, 10, 25, 50], "fortunes_language": [1, 2, 4]}


def text_dataset(name: str) -> str:
    """An argparse type: ``name`` if it names text data that ``lab run`` accepts."""
    try:
        if data.modality_of(data.check_name(name)) != "text":
            allowed = ", ".join([*text.TEXT_DATASETS, "csv:PATH", "jsonl:PATH"])
            raise ValueError(f"{name} is not text; give a text dataset: {allowed}")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name


def vectorizer(kind: str):
    from sklearn.feature_extraction.text import TfidfVectorizer

    if kind == "word":
        return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    return TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True)


VOCABULARY_SOURCES = ("train", "corpus")


def vocabulary_texts(texts: text.Texts, source: str) -> list[str]:
    """The texts a TF-IDF vocabulary and idf are fitted on (no labels, no test text): the training split
    (``"train"``), or it and the pretraining corpus (``"corpus"``)."""
    train_texts = list(texts.train)
    if source == "train":
        return train_texts
    # the corpus holds the training texts already (not all of them: see lab.text); each counts once
    return list(dict.fromkeys([*train_texts, *texts.corpus]))


def tfidf_features(kind: str, texts: text.Texts, source: str):
    """``(x_train, x_test)``: the TF-IDF features ``kind`` of the training and test texts, fitted on
    :func:`vocabulary_texts` ``source``."""
    vectors = vectorizer(kind).fit(vocabulary_texts(texts, source))
    return vectors.transform(list(texts.train)), vectors.transform(list(texts.test))


def peer_name(kind: str, source: str) -> str:
    return f"TF-IDF {kind}" + (" (vocabulary from train + corpus)" if source == "corpus" else "")


def check_alignment(texts: text.Texts, dataset: data.Dataset, encoder=None) -> None:
    """The raw texts are the token arrays' rows, in the same order (so one labeled split indexes both);
    ``encoder``: the tokenizer that made the rows (default: lab's own for the dataset)."""
    if len(texts.train) != len(dataset.x_train) or not np.array_equal(texts.y_train, dataset.y_train):
        raise AssertionError("load_texts and data.load disagree on the training split")
    sample = np.linspace(0, len(texts.train) - 1, 64).astype(int)
    encoder = encoder or text.train_tokenizer(texts.corpus)  # data.load's, with its default vocabulary size and length
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncation, already reported by data.load
        encoded = encoder.encode([texts.train[i] for i in sample])
    if not np.array_equal(encoded, dataset.x_train[sample]):
        raise AssertionError("the raw training texts are not the token arrays' rows in the same order")


def peer_accuracies(features, y_train, y_test, k: int | None, seed: int, peers=PEERS) -> dict[str, float]:
    """Test accuracy of each peer on ``features`` ``(x_train, x_test)`` with the labeled set of (k, seed);
    k None: every training label, LogReg only."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.semi_supervised import LabelSpreading, SelfTrainingClassifier

    x, x_test = features
    if k is None:
        return {"LogReg": float(LogisticRegression(max_iter=2000).fit(x, y_train).score(x_test, y_test))}
    labeled, _ = data.labeled_split(y_train, k, seed)
    partial = np.full_like(y_train, -1)
    partial[labeled] = y_train[labeled]
    fits = {
        "LogReg": lambda: LogisticRegression(max_iter=2000).fit(x[labeled], y_train[labeled]),
        "LabelSpreading": lambda: LabelSpreading(kernel="knn", n_neighbors=7).fit(x, partial),
        "SelfTraining": lambda: SelfTrainingClassifier(
            LogisticRegression(max_iter=2000), criterion="k_best", k_best=max(1, (len(y_train) - len(labeled)) // 10)
        ).fit(x, partial),
    }
    with warnings.catch_warnings():
        # LabelSpreading's 0/0 for texts no labeled neighbour reaches (they get no label), and its
        # max_iter=30 reached: the peers as scikit-learn ships them.
        warnings.filterwarnings("ignore", message="invalid value encountered in divide", category=RuntimeWarning)
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        return {name: float(fits[name]().score(x_test, y_test)) for name in peers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fortunes_topics", type=text_dataset)
    parser.add_argument(
        "--budgets", type=int, nargs="+", help="labels per class (default: 5 10 25 50 for topics, 1 2 4 for languages)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--runs", nargs="*", default=["bag", "transformer", "flexmatch_bag", "mlm_finetune"], choices=list(RUNS)
    )
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=PEERS)
    parser.add_argument(
        "--features", nargs="*", choices=FEATURES,
        help="TF-IDF features of the peers (default: word; word and char for languages)",
    )
    parser.add_argument(
        "--vocabulary-from", choices=VOCABULARY_SOURCES, default="train",
        help="texts the TF-IDF vocabulary and idf are fitted on: the training split, or it and the "
        "pretraining corpus (the unlabeled texts MLM reads; no test text is in it)",
    )
    parser.add_argument("--no-all-labels", action="store_true", help="skip the peers' every-label column")
    parser.add_argument("--steps", type=int, default=500, help="training (adaptation) steps of lab's runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model-kwargs", type=json.loads, default={},
                        help="JSON hyperparameters of the text_transformer runs, e.g. '{\"dim\": 64}'")
    parser.add_argument(
        "--learning-rate", type=float, help="one learning rate for every lab run (default: each run's own, see RUNS)"
    )
    parser.add_argument(
        "--pretrain-steps", type=int, default=2000, help="MLM pretraining steps (cached: the next run reuses them)"
    )
    parser.add_argument("--pretrain-batch-size", type=int, default=64)
    args = parser.parse_args()
    budgets = args.budgets or DEFAULT_BUDGETS.get(args.dataset, DEFAULT_BUDGETS["fortunes_language"])
    own_features = DEFAULT_FEATURES.get(args.dataset, DEFAULT_FEATURES["fortunes_language"])
    features = own_features if args.features is None else args.features
    started = time.perf_counter()

    dataset = data.load(args.dataset)
    texts = data.texts(args.dataset)
    check_alignment(texts, dataset)

    table: dict[str, dict[int | str, list[float]]] = {}
    costs: list[str] = []
    for kind in features:
        tic = time.perf_counter()
        matrices = tfidf_features(kind, texts, args.vocabulary_from)
        features_name = peer_name(kind, args.vocabulary_from)
        for k in budgets:
            for seed in args.seeds:
                found = peer_accuracies(matrices, texts.y_train, texts.y_test, k, seed, args.peers)
                for name, accuracy in found.items():
                    table.setdefault(f"{features_name} + {name}", {}).setdefault(k, []).append(accuracy)
        if not args.no_all_labels and "LogReg" in args.peers:
            every_label = peer_accuracies(matrices, texts.y_train, texts.y_test, None, 0)["LogReg"]
            table[f"{features_name} + LogReg"]["all"] = [every_label]
        seconds = time.perf_counter() - tic
        print(f"peers on TF-IDF {kind} features ({matrices[0].shape[1]} of them): {seconds:.0f} s", flush=True)

    for run in args.runs:
        fields = dict(RUNS[run])
        own_learning_rate = fields.pop("learning_rate")
        learning_rate = own_learning_rate if args.learning_rate is None else args.learning_rate
        for k in budgets:
            tic = time.perf_counter()
            config = {
                "dataset": args.dataset, "labels_per_class": k, "seeds": args.seeds, "steps": args.steps,
                "eval_every": args.steps, "batch_size": args.batch_size, "learning_rate": learning_rate, **fields,
                "model_kwargs": args.model_kwargs if fields["model"] == "text_transformer" else {},
            }  # fmt: skip
            if "pretrain" in fields:
                config["pretrain_kwargs"] = {"steps": args.pretrain_steps, "batch_size": args.pretrain_batch_size}
            result = experiment.run(config, progress=False)
            table.setdefault(f"lab {run}", {})[k] = result.metrics["accuracy"]
            wall = result.wall_time_s
            print(
                f"k={k:<3} lab {run:<16} {100 * np.mean(result.metrics['accuracy']):.1f}%  "
                f"({time.perf_counter() - tic:.0f} s: pretrain {wall['pretrain']:.0f}, compile {wall['compile']:.0f}, "
                f"train {wall['train']:.0f})",
                flush=True,
            )
            if "pretrain" in fields and k == budgets[0]:  # the later budgets read the cache
                costs.append(
                    f"MLM pretraining of {fields['model']} (a few seconds when read from the cache): "
                    f"{args.pretrain_steps} steps of {args.pretrain_batch_size} "
                    f"sequences in {wall['pretrain']:.0f} s "
                    f"({args.pretrain_steps / wall['pretrain']:.1f} steps/s, compile included)"
                )
            costs.append(
                f"{run} at k={k}: {args.steps} steps x {len(args.seeds)} seeds (vmapped) in {wall['train']:.1f} s "
                f"({args.steps / wall['train']:.1f} steps/s of all seeds; compile {wall['compile']:.1f} s)"
            )

    columns: list[int | str] = [*budgets, *(["all"] if any("all" in row for row in table.values()) else [])]
    print(
        f"\n{args.dataset}: test accuracy (%), mean ± std over seeds {args.seeds}; lab: {args.steps} steps, "
        f"batch {args.batch_size}; MLM: {args.pretrain_steps} pretraining steps"
    )
    print("| method | " + " | ".join(f"{k} / class" if k != "all" else "every label" for k in columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for name, by_budget in table.items():
        cells = [
            "" if k not in by_budget else f"{100 * np.mean(by_budget[k]):.1f} ± {100 * np.std(by_budget[k]):.1f}"
            if len(by_budget[k]) > 1 else f"{100 * by_budget[k][0]:.1f}"
            for k in columns
        ]  # fmt: skip
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\n" + "\n".join(costs))
    print(f"wall time: {time.perf_counter() - started:.0f} s")
    print(json.dumps({name: {str(k): v for k, v in by_budget.items()} for name, by_budget in table.items()}))


if __name__ == "__main__":
    main()
