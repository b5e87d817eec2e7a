"""Your own texts: CSV and JSON Lines files named ``csv:PATH`` / ``jsonl:PATH``, read,
split and de-duplicated as the fortune datasets are, validated in one line naming the file, and run from
``experiment.run``, ``lab run``, ``lab sweep`` over notebooks/05 and benchmarks/language.py."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lab import cli, data, experiment, store, sweep, text

ROOT = Path(__file__).resolve().parents[1]
WORDS = {
    "animals": ["cat", "dog", "horse", "fish", "bird", "cow"],
    "money": ["bank", "stock", "bond", "cash", "loan", "price"],
    "weather": ["rain", "snow", "wind", "storm", "sun", "cloud"],
}


def ticket_rows(per_class: int = 12) -> list[dict[str, str]]:
    """``per_class`` distinct texts of each class (its words and a number), then three unlabeled texts."""
    rows = [
        {"text": f"the {words[i % 6]} and the {words[(i + 1) % 6]} number {i}", "label": label}
        for label, words in WORDS.items()
        for i in range(per_class)
    ]
    return rows + [{"text": f"an unlabeled note about zebra {i}", "label": ""} for i in range(3)]


def write_csv(path: Path, rows: list[dict[str, str]], columns=("text", "label")) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps({k: v or None for k, v in row.items()}) + "\n" for row in rows))
    return path


# --------------------------------------------------------------------------- reading, splitting, counting


def test_csv_duplicates_conflicts_and_unlabeled_rows_are_counted_and_split_as_the_fortunes(tmp_path):
    rows = ticket_rows()
    extra = [
        {"text": "THE cat and the dog, number 0!", "label": "animals"},  # the same text as row 0 (same_text_key)
        {"text": "a shared sentence", "label": "money"},
        {"text": "A shared   sentence.", "label": "weather"},  # the same text under another label: dropped
        {"text": "   ", "label": "money"},  # no text
    ]
    path = write_csv(tmp_path / "tickets.csv", rows + extra)
    texts = data.texts(f"csv:{path}")

    assert texts.class_names == ("animals", "money", "weather")
    assert texts.counts["rows"] == len(rows) + 4 and texts.counts["no_text"] == 1
    assert texts.counts["unlabeled"] == 3
    assert texts.counts["repeats_merged"] == 1
    assert texts.counts["shared_texts"] == 1 and texts.counts["shared_dropped"] == 2
    for count in ("1 duplicates dropped", "1 texts under several labels dropped (2 rows)", "3 unlabeled"):
        assert count in texts.source
    labeled = [row for row in rows if row["label"]]
    # Every distinct labeled text once, under its label; the split is sklearn's stratified 25%, seed 0.
    got = dict(zip([*texts.train, *texts.test], [*texts.y_train, *texts.y_test], strict=True))
    assert got == {row["text"]: texts.class_names.index(row["label"]) for row in labeled}
    assert len(texts.test) == round(0.25 * len(labeled))
    assert np.bincount(texts.y_test).tolist() == [3, 3, 3]
    # The corpus: every distinct text, the unlabeled ones included, but no test text.
    assert set(texts.corpus) == ({row["text"] for row in rows} | {"a shared sentence"}) - set(texts.test)
    assert text.same_text_key("THE cat and the dog, number 0!") == text.same_text_key(rows[0]["text"])


def test_a_split_column_decides_the_split_and_jsonl_reads_as_csv(tmp_path):
    rows = [{**row, "split": "test" if i % 4 == 0 and row["label"] else "train"} for i, row in enumerate(ticket_rows())]
    from_csv = data.texts(f"csv:{write_csv(tmp_path / 't.csv', rows, ('text', 'label', 'split'))}")
    from_jsonl = data.texts(f"jsonl:{write_jsonl(tmp_path / 't.jsonl', rows)}")
    expected_test = [row["text"] for row in rows if row["split"] == "test"]
    for texts in (from_csv, from_jsonl):
        assert sorted(texts.test) == sorted(expected_test)
        assert "split by column 'split'" in texts.source
    assert from_csv.train == from_jsonl.train and from_csv.corpus == from_jsonl.corpus
    assert np.array_equal(from_csv.y_test, from_jsonl.y_test)


def test_other_column_names_come_in_dataset_kwargs(tmp_path):
    rows = [{"body": row["text"], "category": row["label"]} for row in ticket_rows()]
    name = f"csv:{write_csv(tmp_path / 't.csv', rows, ('body', 'category'))}"
    options = {"text_column": "body", "label_column": "category"}
    assert data.class_names(name, options) == tuple(WORDS)
    config = experiment.ExperimentConfig.from_dict({"dataset": name, "dataset_kwargs": options, "model": "bag"})
    assert data.load(config.dataset, **config.dataset_kwargs, vocab_size=60).num_classes == 3


def test_load_tokenizes_with_a_tokenizer_trained_on_the_corpus_or_the_one_given(tmp_path):
    name = f"jsonl:{write_jsonl(tmp_path / 't.jsonl', ticket_rows())}"
    texts = data.texts(name)
    dataset = data.load(name, vocab_size=80, max_length=32)
    trained = text.train_tokenizer(texts.corpus, vocab_size=80, max_length=32)
    assert dataset.name == name and dataset.source == texts.source and dataset.class_names == tuple(WORDS)
    assert np.array_equal(dataset.x_train, trained.encode(texts.train))
    assert np.array_equal(dataset.x_test, trained.encode(texts.test))
    assert np.array_equal(dataset.x_unlabeled, trained.encode(texts.corpus))
    assert trained.decode(dataset.x_unlabeled[-1]).startswith("an unlabeled note")  # the unlabeled rows are too
    other = text.train_tokenizer(["something else entirely"], vocab_size=40, max_length=64)
    given = data.load(name, tokenizer=other)
    assert given.tokenizer == other.fingerprint and np.array_equal(given.x_train, other.encode(texts.train))


# --------------------------------------------------------------------------- bad input: one line naming the file


def _bad_files(tmp: Path) -> list[tuple[str, dict, str]]:
    good = ticket_rows()
    (tmp / "quote.csv").write_text('text,label\n"fine",a\n"an unclosed quote,b\n')
    (tmp / "fields.csv").write_text("text,label\nfine,a\ntoo,many,fields\n")
    (tmp / "bad.jsonl").write_text('{"text": "fine", "label": "a"}\n{"text": "broken", \n')
    (tmp / "list.jsonl").write_text('{"text": "fine", "label": "a"}\n["text"]\n')
    (tmp / "binary.csv").write_bytes(b"text,label\nfine,a\n\xff\xfe,b\n")
    write_csv(tmp / "one.csv", [row for row in good if row["label"] in ("money", "")])
    write_csv(tmp / "body.csv", [{"body": "x", "label": "a"}], ("body", "label"))
    write_jsonl(tmp / "nolabel.jsonl", [{"text": row["text"]} for row in good])
    write_csv(tmp / "small.csv", [*good, *({"text": f"tiny {i}", "label": "tiny"} for i in range(3))])
    split = [{**row, "split": "train" if row["label"] != "money" else "nowhere"} for row in good]
    write_csv(tmp / "split.csv", split, ("text", "label", "split"))
    onesided = [{**row, "split": "test" if row["label"] == "weather" else "train"} for row in good]
    write_csv(tmp / "onesided.csv", onesided, ("text", "label", "split"))
    return [
        ("csv:missing.csv", {}, "missing.csv: no such file or folder; csv:PATH names a CSV file of texts"),
        ("xlsx:t.xlsx", {}, "unknown dataset scheme 'xlsx' in 'xlsx:t.xlsx'; choose one of: csv:PATH, jsonl:PATH"),
        ("csv:quote.csv", {}, r"quote.csv, line 3: not well-formed CSV"),
        ("csv:fields.csv", {}, "fields.csv, line 3: 3 fields, but the header names 2 columns"),
        ("jsonl:bad.jsonl", {}, r"bad.jsonl, line 2: not valid JSON"),
        ("jsonl:list.jsonl", {}, "list.jsonl, line 2: a JSON list; each line holds one object"),
        ("csv:binary.csv", {}, "binary.csv, line 3: not UTF-8 text"),
        ("csv:one.csv", {}, r"one.csv: the label column 'label' holds 1 class \['money'\]; a classifier needs"),
        ("csv:body.csv", {}, "body.csv: no column 'text' .dataset_kwargs text_column.; its columns are: body, label"),
        ("jsonl:nolabel.jsonl", {}, "nolabel.jsonl: no line has the key 'label'"),
        ("csv:small.csv", {}, "small.csv: class 'tiny' has 3 distinct texts; the stratified 25% test split needs"),
        ("csv:small.csv", {"text_column": ""}, "text_column must be a column name"),
        ("csv:split.csv", {}, r"split.csv, line \d+: split is 'nowhere'; a labeled row's split is train or test"),
        ("csv:onesided.csv", {}, "onesided.csv: the train split .column 'split'. has no text of class 'weather'"),
        ("csv:.", {}, "is a folder; csv:PATH names a CSV file of texts"),
    ]


def test_each_bad_file_fails_in_one_line_naming_it_before_anything_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, options, message in _bad_files(tmp_path):
        with pytest.raises((ValueError, OSError), match=message) as raised:
            experiment.ExperimentConfig.from_dict({"dataset": name, "dataset_kwargs": options, "model": "bag"})
        assert "\n" not in str(raised.value), name


def test_a_class_smaller_than_labels_per_class_is_refused_by_the_config(tmp_path):
    name = f"csv:{write_csv(tmp_path / 't.csv', ticket_rows(per_class=6))}"  # 6 texts: 4 or 5 train per class
    smallest = int(np.bincount(data.texts(name).y_train).min())
    experiment.ExperimentConfig.from_dict({"dataset": name, "model": "bag", "labels_per_class": smallest})
    with pytest.raises(ValueError, match=rf"t.csv: class '\w+' has {smallest} training examples, fewer than "
                       rf"labels_per_class={smallest + 1}; choose labels_per_class <= {smallest}"):  # fmt: skip
        experiment.ExperimentConfig.from_dict({"dataset": name, "model": "bag", "labels_per_class": smallest + 1})
    with pytest.raises(ValueError, match="unknown dataset_kwargs \\['colour'\\] for dataset .*allowed: .*label_column"):
        experiment.ExperimentConfig.from_dict({"dataset": name, "model": "bag", "dataset_kwargs": {"colour": 1}})
    with pytest.raises(ValueError, match="model 'cnn'|cnn"):
        experiment.ExperimentConfig.from_dict({"dataset": name, "model": "cnn"})


def test_the_cli_refuses_a_bad_file_in_one_line_without_traceback(tmp_path, capsys):
    (tmp_path / "body.csv").write_text("body,label\nx,a\n")
    assert cli.main(["run", f"dataset=csv:{tmp_path / 'body.csv'}", "model=bag"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{tmp_path / 'body.csv'}: no column 'text'" in err
    assert cli.main(["data", "info", "xlsx:t.xlsx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown dataset scheme 'xlsx' in 'xlsx:t.xlsx'" in err


# --------------------------------------------------------------------------- every entry point

RUN = {"model": "bag", "labels_per_class": 2, "steps": 20, "eval_every": 10, "batch_size": 8}


def test_experiment_run_trains_two_seeds_on_a_csv_and_a_jsonl(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "t.csv", ticket_rows())
    write_jsonl(tmp_path / "t.jsonl", ticket_rows())
    for name in ("csv:t.csv", "jsonl:t.jsonl"):
        result = experiment.run({"dataset": name, "seeds": [0, 1], **RUN}, progress=False)
        assert result.config["dataset"] == f"{name.split(':')[0]}:{tmp_path / name.split(':')[1]}"  # absolute
        assert len(result.metrics["accuracy"]) == 2 and all(0 <= a <= 1 for a in result.metrics["accuracy"])


def test_a_transfer_run_pretrains_on_the_file_and_adapts(tmp_path):
    name = f"csv:{write_csv(tmp_path / 't.csv', ticket_rows())}"
    config = {**RUN, "dataset": name, "setup": "transfer", "pretrain": "mlm", "pretrain_kwargs": {"steps": 5}}
    result = experiment.run(config, progress=False)
    assert result.wall_time_s["pretrain"] > 0 and len(result.metrics["accuracy"]) == 1


def test_editing_one_row_of_a_csv_pretrains_again_and_an_unchanged_file_does_not(tmp_path, monkeypatch):
    """The backbone's cache key holds the file's content, not its name: the edit keeps every word count, so
    the tokenizer trained on the file is the same and only the content digest can tell the files apart."""
    from lab import transfer

    pretrained, train_backbone = [], transfer._train_backbone
    monkeypatch.setattr(transfer, "_train_backbone", lambda *args: pretrained.append(1) or train_backbone(*args))
    path = write_csv(tmp_path / "t.csv", ticket_rows())
    config = {**RUN, "dataset": f"csv:{path}", "setup": "transfer", "pretrain": "mlm", "pretrain_kwargs": {"steps": 2}}
    before = data.load(f"csv:{path}").tokenizer  # the fingerprint of the tokenizer that made the ids
    experiment.run(config, progress=False)
    experiment.run(config, progress=False)  # unchanged file: the cached backbone
    assert len(pretrained) == 1
    rows = ticket_rows()
    rows[0]["text"] = "the dog and the cat number 0"  # was "the cat and the dog number 0": the same words
    write_csv(path, rows)
    assert data.load(f"csv:{path}").tokenizer == before
    experiment.run(config, progress=False)
    assert len(pretrained) == 2


def test_lab_run_takes_a_csv(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "t.csv", ticket_rows())
    fields = [f"{key}={value}" for key, value in RUN.items()]
    assert cli.main(["run", "dataset=csv:t.csv", "seeds=[0]", "--no-progress", *fields]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["dataset"] == f"csv:{tmp_path / 't.csv'}" and len(printed["metrics"]["accuracy"]) == 1
    assert cli.main(["data", "info", "csv:t.csv"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["classes"] == list(WORDS) and info["train"] + info["test"] == 36 and "3 unlabeled" in info["source"]


def test_lab_sweep_runs_notebook_05_on_a_relative_csv_path_with_its_columns(tmp_path, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    rows = [{"body": row["text"], "category": row["label"]} for row in ticket_rows()]
    write_csv(project / "data" / "t.csv", rows, ("body", "category"))
    monkeypatch.chdir(project)  # the kernels may run elsewhere (Dask workers): the path must be absolute
    notebook = ROOT / "notebooks" / "05_experiment.ipynb"
    parameters = {
        **RUN, "setup": "supervised", "seeds": "[0]", "save_figures": "false",
        "dataset_kwargs": "{text_column: body, label_column: category}",
    }  # fmt: skip
    options = [word for key, value in parameters.items() for word in ("-p", key, str(value))]
    exit_code = cli.main(["sweep", str(notebook), "-p", "dataset", "csv:data/t.csv", *options, "--name", "own"])
    assert exit_code == 0, capsys.readouterr()
    (row,) = store.ResultsStore(project / "runs" / "results.db", create=False).rows("own")
    assert row.status == "done" and row.parameters["dataset"] == f"csv:{project / 'data' / 't.csv'}"
    assert row.payload["dataset"] == row.parameters["dataset"] and len(row.payload["metrics"]["accuracy"]) == 1


def test_a_sweep_point_names_the_file_by_its_absolute_path_from_any_folder(tmp_path, monkeypatch):
    (tmp_path / "project" / "data").mkdir(parents=True)
    absolute = write_csv(tmp_path / "project" / "data" / "t.csv", ticket_rows())
    notebook = ROOT / "notebooks" / "05_experiment.ipynb"
    ids = []
    for folder, name in ((tmp_path / "project", "csv:data/t.csv"), (tmp_path, "csv:project/data/t.csv")):
        monkeypatch.chdir(folder)
        grid = {"dataset": [name], "model": ["bag"], "labels_per_class": [2]}
        (point,) = sweep.expand_grid(notebook, grid, validate=experiment.validate_parameters)
        assert point.parameters["dataset"] == f"csv:{absolute}"
        ids.append(point.point_id)
    assert ids[0] == ids[1]


def test_the_language_benchmark_takes_a_csv_with_word_and_character_peers(tmp_path):
    path = write_csv(tmp_path / "t.csv", ticket_rows())
    command = [sys.executable, str(ROOT / "benchmarks" / "language.py"), "--dataset", f"csv:{path}", "--runs",
               "--budgets", "2", "--seeds", "0", "--peers", "LogReg"]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "| TF-IDF word + LogReg |" in finished.stdout and "| TF-IDF char + LogReg |" in finished.stdout
