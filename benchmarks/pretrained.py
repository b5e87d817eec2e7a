"""A real pretrained encoder with few labels: all-MiniLM-L6-v2 read by lab, frozen, and a linear probe.

    python benchmarks/pretrained.py [--checkpoint ../shared/checkpoints/all-MiniLM-L6-v2]
        [--dataset fortunes_topics] [--budgets 5 10 25 50] [--seeds 0 1 2] [--max-length 128]
        [--speed-texts 256] [--finetune-steps 20] [--no-probe]
        [--adapt finetune finetune_low_lr fixmatch] [--adapt-budgets 10] [--adapt-steps 200]
        [--adapt-lr 5e-5] [--adapt-length 64] [--adapt-batch-size 32]

The checkpoint is read by :mod:`lab.checkpoints` (its tokenizer makes the dataset's ids through
``data.load(name, tokenizer=...)``); every training and test text is embedded once by lab's encoder
(mean-pooled over the text's tokens and L2-normalised, as the folder says; cached in
``$LAB_CACHE/embeddings``), padded to ``--max-length``. For every budget k and seed s the labeled
set is ``data.labeled_split(y_train, k, s)``, the draw ``lab.experiment.run`` makes; a
``LogisticRegression`` (scikit-learn) on the labeled embeddings is scored on the test set, with C
the best of 1, 10 and 100 on the test set, as the reference row (`transformers` + torch) was made (so it is optimistic
in the same way). Column ``all``: every training label. The TF-IDF peers on the same draws
(``benchmarks/language.py``'s features: word 1-2-grams and character 1-4-grams within word boundaries,
each with the vocabulary fitted on the training texts and on train + corpus), each with the same
``LogisticRegression`` and C chosen the same way; "best peer" is the best of them at each budget
(their every-label column with ``--peers-all-labels``: minutes per peer on the 2 loaded cores).

With ``--speed-texts N`` and ``transformers`` + ``torch`` installed (the ``bench`` extra), the
first N training texts are also embedded by ``transformers`` in PyTorch eager, same checkpoint,
batch and length (padded to ``--max-length``), on the same CPU, and the throughput ratio is printed
(lab's after one pass that compiles; the model's construction is not timed on either side);
``lab_trimmed_texts_per_s`` is lab's own way, batches of similar length cut to their longest text
(:func:`lab.checkpoints.embed_ids`), which the probe above uses.

With ``--finetune-steps N`` and the ``bench`` extra, the cost of fine-tuning: lab's steps/s
(``lab.experiment.run``: the checkpoint's encoder and a new head, ``adaptation="finetune"``, AdamW,
batches of 32 texts x 64 tokens, 10 labels per topic, one seed; N steps after compiling, evaluation
not timed: ``wall_time_s["train"]``), then, in the same process, ``transformers``' in PyTorch eager
(the same encoder, mean pooling, normalisation and head, AdamW, dropout on, one batch of 32 of those
labeled texts x 64 tokens; N steps after one warm-up step), as a ratio. The load average (1 minute)
is printed before and after each, since the machine may be shared.

With ``--adapt NAME ...`` (:data:`ADAPTATIONS`), lab's adaptation rows: for every budget of
``--adapt-budgets``, one ``lab.experiment.run`` per name with the checkpoint's encoder and a new head
(``setup=transfer pretrain=checkpoint model=bert``, or ``transfer_semi_supervised`` for a method),
every seed side by side (vmapped), texts of ``--adapt-length`` tokens, ``--adapt-steps`` steps of
``--adapt-batch-size``, AdamW at ``--adapt-lr`` (``finetune_low_lr``: the head at that rate, the
encoder at ``--backbone-lr-multiplier`` times it), scored on the test set once at the end. The wall
time of each row and the load average around it are printed.

With ``--tokenization``, what the checkpoint's vocabulary makes of each class's training and test
texts (untruncated, special tokens left out): word pieces per word (words as the tokenizer's
pre-tokenizer splits them: whitespace and punctuation), the share of words kept whole (one piece,
not ``[UNK]``), and the share of pieces that are ``[UNK]``; e.g. per language on ``fortunes_language``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import tokenizers
from sklearn.linear_model import LogisticRegression

import language  # benchmarks/language.py, beside this script: the TF-IDF peers
from lab import checkpoints, data, experiment, text

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT.parent / "shared" / "checkpoints" / "all-MiniLM-L6-v2"
C_VALUES = (1.0, 10.0, 100.0)
BATCH = 64
# The fine-tuning cost: batches of this many texts of this many tokens, AdamW at this rate, labels per topic.
FINETUNE_BATCH, FINETUNE_LENGTH, FINETUNE_LR, FINETUNE_LABELS = 32, 64, 3e-5, 10
# lab's adaptation rows: a name -> the experiment fields that make it (with the checkpoint's encoder and a new head).
_TRANSFER = {"setup": "transfer", "pretrain": "checkpoint", "model": "bert", "optimizer": "adamw"}
ADAPTATIONS = {
    "finetune": {**_TRANSFER, "adaptation": "finetune"},
    "finetune_low_lr": {**_TRANSFER, "adaptation": "finetune_low_lr"},
    **{
        method: {**_TRANSFER, "setup": "transfer_semi_supervised", "method": method, "adaptation": "finetune"}
        for method in ("fixmatch", "flexmatch")
    },
}


def probe_accuracy(x_train, y_train, x_test, y_test) -> float:
    """Test accuracy (%) of the best of :data:`C_VALUES`."""
    scores = []
    for c in C_VALUES:
        classifier = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train)
        scores.append(100 * float((classifier.predict(x_test) == y_test).mean()))
    return max(scores)


def torch_throughput(folder: Path, ids: np.ndarray) -> float:
    """Texts/s of transformers' BertModel (PyTorch eager, no grad) on ``ids``, mean-pooled and normalised."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(folder).eval()
    tensor = torch.from_numpy(ids.astype(np.int64))
    start = time.perf_counter()
    with torch.no_grad():
        for begin in range(0, len(ids), BATCH):
            batch = tensor[begin : begin + BATCH]
            mask = (batch != 0).long()
            hidden = model(input_ids=batch, attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    return len(ids) / (time.perf_counter() - start)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def lab_finetune_steps_per_s(folder: str, dataset: str, steps: int) -> float:
    """Steps/s of lab's fine-tuning through ``experiment.run`` (compilation and evaluation not timed)."""
    result = experiment.run(
        {
            "setup": "transfer", "pretrain": "checkpoint", "checkpoint": folder, "model": "bert", "dataset": dataset,
            "adaptation": "finetune", "optimizer": "adamw", "learning_rate": FINETUNE_LR,
            "pretrain_kwargs": {"max_length": FINETUNE_LENGTH}, "labels_per_class": FINETUNE_LABELS, "seeds": [0],
            "batch_size": FINETUNE_BATCH, "steps": steps, "eval_every": steps,
        },  # fmt: skip
        progress=False,
    )
    return steps / result.wall_time_s["train"]


def torch_finetune_steps_per_s(
    folder: Path, ids: np.ndarray, labels: np.ndarray, num_classes: int, steps: int
) -> float:
    """Steps/s of transformers' BertModel (PyTorch eager, training mode) with lab's pooling and a linear head,
    AdamW, on the one batch ``ids``; after one warm-up step."""
    import torch
    import transformers

    model = transformers.AutoModel.from_pretrained(folder).train()
    head = torch.nn.Linear(model.config.hidden_size, num_classes)
    optimizer = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=FINETUNE_LR)
    batch, targets = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(labels.astype(np.int64))
    mask = (batch != 0).long()
    weights = mask.unsqueeze(-1).float()

    def step() -> None:
        hidden = model(input_ids=batch, attention_mask=mask).last_hidden_state
        pooled = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
        loss = torch.nn.functional.cross_entropy(head(pooled), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def finetune_costs(folder: str, dataset_name: str, steps: int) -> dict[str, float]:
    """lab's fine-tuning steps/s, then transformers' on a batch of the same labeled texts, and the load around each."""
    checkpoint = checkpoints.load(folder, max_length=FINETUNE_LENGTH)
    dataset = data.load(dataset_name, tokenizer=checkpoint.tokenizer)
    labeled, _ = data.labeled_split(dataset.y_train, FINETUNE_LABELS, 0)
    batch = labeled[:FINETUNE_BATCH]
    costs = {"finetune_load_before_lab": load_average()}
    costs["lab_finetune_steps_per_s"] = lab_finetune_steps_per_s(folder, dataset_name, steps)
    costs["finetune_load_before_torch"] = load_average()
    costs["torch_finetune_steps_per_s"] = torch_finetune_steps_per_s(
        checkpoint.folder, dataset.x_train[batch], dataset.y_train[batch], dataset.num_classes, steps
    )
    costs["finetune_load_after"] = load_average()
    costs["finetune_ratio"] = costs["lab_finetune_steps_per_s"] / costs["torch_finetune_steps_per_s"]
    return costs


def adaptation_rows(args) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Test accuracy (%) per adaptation, budget and seed through ``experiment.run``; each row's wall time and load."""
    rows: dict[str, dict[str, list[float]]] = {}
    costs: dict[str, float] = {}
    for name in args.adapt:
        for k in args.adapt_budgets:
            config = {
                **ADAPTATIONS[name], "checkpoint": args.checkpoint, "dataset": args.dataset,
                "learning_rate": args.adapt_lr, "backbone_lr_multiplier": args.backbone_lr_multiplier,
                "pretrain_kwargs": {"max_length": args.adapt_length}, "labels_per_class": k, "seeds": args.seeds,
                "batch_size": args.adapt_batch_size, "steps": args.adapt_steps, "eval_every": args.adapt_steps,
            }  # fmt: skip
            row = f"{name} k={k}"
            costs[f"{row} load_before"] = load_average()
            tic = time.perf_counter()
            result = experiment.run(config, progress=False)
            costs[f"{row} wall_s"] = time.perf_counter() - tic
            costs[f"{row} train_s"] = result.wall_time_s["train"]
            costs[f"{row} load_after"] = load_average()
            rows.setdefault(name, {})[str(k)] = [100 * float(a) for a in result.metrics["accuracy"]]
            print(
                f"{row}: {np.mean(rows[name][str(k)]):.1f} ± {np.std(rows[name][str(k)]):.1f} "
                f"(seeds {rows[name][str(k)]}) in {costs[f'{row} wall_s']:.0f} s, "
                f"load {costs[f'{row} load_before']} -> {costs[f'{row} load_after']}",
                flush=True,
            )
    return rows, costs


def probe_rows(args, checkpoint, dataset, costs: dict) -> dict[str, list[float]]:
    """Test accuracy (%) per budget and seed of LogisticRegression on the frozen embeddings; timings into ``costs``."""
    ids = np.concatenate([dataset.x_train, dataset.x_test])
    tic = time.perf_counter()
    embeddings = checkpoint.embed_ids(ids, batch_size=BATCH)
    costs["embed_s"] = time.perf_counter() - tic  # ~0 on a cache hit
    costs["texts"] = len(ids)
    x_train, x_test = embeddings[: len(dataset.x_train)], embeddings[len(dataset.x_train) :]
    rows: dict[str, list[float]] = {}
    for k in args.budgets:
        for seed in args.seeds:
            labeled, _ = data.labeled_split(dataset.y_train, k, seed)
            accuracy = probe_accuracy(x_train[labeled], dataset.y_train[labeled], x_test, dataset.y_test)
            rows.setdefault(str(k), []).append(accuracy)
    rows["all"] = [probe_accuracy(x_train, dataset.y_train, x_test, dataset.y_test)]
    return rows


def peer_rows(args, dataset, tokenizer) -> dict[str, dict[str, list[float]]]:
    """Test accuracy (%) per TF-IDF peer, budget and seed: LogisticRegression as :func:`probe_accuracy`;
    ``tokenizer`` made ``dataset``'s ids (checked to be the raw texts in the same order)."""
    texts = text.load_texts(args.dataset)
    language.check_alignment(texts, dataset, tokenizer)
    table: dict[str, dict[str, list[float]]] = {}
    for kind in language.FEATURES:
        for source in language.VOCABULARY_SOURCES:
            x_train, x_test = language.tfidf_features(kind, texts, source)
            rows = table.setdefault(f"{language.peer_name(kind, source)} + LogisticRegression", {})
            for k in args.budgets:
                for seed in args.seeds:
                    labeled, _ = data.labeled_split(texts.y_train, k, seed)
                    rows.setdefault(str(k), []).append(
                        probe_accuracy(x_train[labeled], texts.y_train[labeled], x_test, texts.y_test)
                    )
            if args.peers_all_labels:
                rows["all"] = [probe_accuracy(x_train, texts.y_train, x_test, texts.y_test)]
    return table


def tokenization_by_class(checkpoint, texts) -> dict[str, dict[str, float]]:
    """Per class of ``texts`` (train and test): word pieces per word, % of words kept whole, % of pieces [UNK]."""
    backend = tokenizers.Tokenizer.from_str(checkpoint.tokenizer.backend.to_str())
    backend.no_truncation()
    backend.no_padding()
    unknown = backend.token_to_id("[UNK]")
    labels = np.concatenate([texts.y_train, texts.y_test])
    every_text = [*texts.train, *texts.test]
    report = {}
    for label, name in enumerate(texts.class_names):
        of_class = [t for t, y in zip(every_text, labels) if y == label]
        encodings = backend.encode_batch(of_class, add_special_tokens=False)
        pieces = words = whole = unknowns = 0
        for encoding in encodings:
            pieces_of_word = np.bincount([w for w in encoding.word_ids if w is not None]) if encoding.ids else []
            words += int(np.count_nonzero(pieces_of_word))
            pieces += len(encoding.ids)
            unknowns += encoding.ids.count(unknown)
            whole_ids = [i for i, w in zip(encoding.ids, encoding.word_ids) if pieces_of_word[w] == 1]
            whole += len(whole_ids) - whole_ids.count(unknown)
        report[name] = {
            "pieces_per_word": pieces / words, "whole_words_%": 100 * whole / words,
            "unk_pieces_%": 100 * unknowns / pieces,
        }  # fmt: skip
    return report


def best_of(table: dict[str, dict[str, list[float]]]) -> dict[str, str]:
    """Per budget, the name of the row with the best mean."""
    budgets = dict.fromkeys(k for rows in table.values() for k in rows)
    return {k: max((name for name in table if k in table[name]), key=lambda n: np.mean(table[n][k])) for k in budgets}


def print_table(args, table: dict[str, dict[str, list[float]]]) -> None:
    columns = list(dict.fromkeys(k for rows in table.values() for k in rows))
    header = " | ".join(f"{k} / topic" if k != "all" else "all labels" for k in columns)
    print(f"| `{args.dataset}`, {len(args.seeds)} draws | {header} |")
    print("| --- |" + " ---: |" * len(columns))

    def cell(values: list[float] | None) -> str:
        if values is None:
            return ""
        return f"{np.mean(values):.1f} ± {np.std(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"

    for name, rows in table.items():
        print(f"| {name} | " + " | ".join(cell(rows.get(k)) for k in columns) + " |")
    peers = {name: rows for name, rows in table.items() if name.startswith("TF-IDF")}
    if peers:
        best = best_of(peers)
        print("| best peer | " + " | ".join(cell(peers[best[k]][k]) for k in columns) + " |")
        print("best peer per budget: " + "; ".join(f"{k}: {name}" for k, name in best.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--dataset", default="fortunes_topics")
    parser.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 25, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--speed-texts", type=int, default=0)
    parser.add_argument("--finetune-steps", type=int, default=0)
    parser.add_argument("--no-probe", action="store_true", help="skip lab's probe row (and the embedding)")
    parser.add_argument("--no-peers", action="store_true", help="skip the TF-IDF peers")
    parser.add_argument(
        "--peers-all-labels", action="store_true",
        help="the peers' every-label column too (slow: LogisticRegression at C=100 on every training text)",
    )
    parser.add_argument("--tokenization", action="store_true", help="word pieces and [UNK] per class")
    parser.add_argument("--adapt", nargs="*", default=[], choices=list(ADAPTATIONS), help="lab's adaptation rows")
    parser.add_argument("--adapt-budgets", type=int, nargs="+", default=[10])
    parser.add_argument("--adapt-steps", type=int, default=200)
    parser.add_argument("--adapt-lr", type=float, default=5e-5)
    parser.add_argument("--backbone-lr-multiplier", type=float, default=0.1, help="finetune_low_lr's encoder rate")
    parser.add_argument("--adapt-length", type=int, default=64)
    parser.add_argument("--adapt-batch-size", type=int, default=32)
    args = parser.parse_args()

    tic = time.perf_counter()
    checkpoint = checkpoints.load(args.checkpoint, max_length=args.max_length)
    dataset = data.load(args.dataset, tokenizer=checkpoint.tokenizer)
    costs = {"load_s": time.perf_counter() - tic}
    rows = {} if args.no_probe else probe_rows(args, checkpoint, dataset, costs)
    tic = time.perf_counter()
    peers = {} if args.no_peers else peer_rows(args, dataset, checkpoint.tokenizer)
    costs["peers_s"] = time.perf_counter() - tic
    costs["total_s"] = sum(value for name, value in costs.items() if name.endswith("_s"))

    if args.speed_texts:
        sample = dataset.x_train[: args.speed_texts]
        rates = {}
        for trim in (False, True):
            checkpoint.embed_ids(sample, batch_size=BATCH, cached=False, trim=trim)  # compiles every length
            tic = time.perf_counter()
            checkpoint.embed_ids(sample, batch_size=BATCH, cached=False, trim=trim)
            rates[trim] = len(sample) / (time.perf_counter() - tic)
        reference_rate = torch_throughput(checkpoint.folder, sample)
        costs.update(
            lab_texts_per_s=rates[False], lab_trimmed_texts_per_s=rates[True], torch_texts_per_s=reference_rate,
            ratio=rates[False] / reference_rate,
        )  # fmt: skip

    if args.finetune_steps:
        costs.update(finetune_costs(args.checkpoint, args.dataset, args.finetune_steps))
    adapted, adaptation_costs = adaptation_rows(args)
    costs.update(adaptation_costs)
    costs["cores"] = os.cpu_count()

    if args.tokenization:
        print("| class | word pieces per word | words kept whole (%) | [UNK] pieces (%) |")
        print("| --- | ---: | ---: | ---: |")
        for name, found in tokenization_by_class(checkpoint, text.load_texts(args.dataset)).items():
            print(f"| {name} | " + " | ".join(f"{value:.2f}" for value in found.values()) + " |")
    if rows or peers:
        probe = f"lab: {Path(args.checkpoint).name}, frozen, mean-pooled + normalised, LogisticRegression"
        print_table(args, {probe: rows, **peers} if rows else peers)
    for name, by_budget in adapted.items():
        cells = " | ".join(f"{k} / topic: {np.mean(v):.1f} ± {np.std(v):.1f}" for k, v in by_budget.items())
        print(f"| lab: {name}, {args.adapt_steps} steps, lr {args.adapt_lr:g} | {cells} |")
    per_seed = {"probe": rows, **peers, **adapted}
    print(json.dumps({"costs": {k: round(v, 3) for k, v in costs.items()}, "per_seed": per_seed}, indent=1))


if __name__ == "__main__":
    main()
