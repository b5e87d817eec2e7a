"""`lab report`: the summary table against hand-computed means and standard
deviations, configuration grouping, learning curves, and the files written."""

import argparse
import dataclasses
import errno
import math
import os
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lab import cli, report, store
from lab.store import ResultsStore, RunRow


def _row(
    point_id, method, labels, seeds, accuracy, *, setup="semi_supervised", status="done", curves=None, **parameters
):
    payload = {
        "dataset": "digits",
        "setup": setup,
        "method": method,
        "labels_per_class": labels,
        "seeds": seeds,
        "metrics": {
            "accuracy": accuracy,
            "macro_f1": [value - 0.1 for value in accuracy],
            "ece": [0.1 * seed for seed in seeds],
        },
    }
    if curves is not None:
        payload["curves"] = curves
    parameters = {
        "method": method,
        "labels_per_class": labels,
        "seeds": seeds,
        "output_dir": f"runs/s/{point_id}",
        **parameters,
    }
    return RunRow("s", point_id, "nb.ipynb", parameters, status, payload=payload if status == "done" else None)


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "results.db"
    ResultsStore(path).save(
        _row("a", "fixmatch", 1, [0, 1], [0.6, 0.8], curves={"step": [0, 50], "accuracy": [[0.1, 0.3], [0.6, 0.8]]}),
        _row("b", "fixmatch", 1, [2], [0.7], curves={"step": [0, 50], "accuracy": [[0.2], [0.7]]}),
        _row("c", "fixmatch", 4, [0, 1], [0.85, 0.95]),
        _row("d", "pseudo_label", 1, [0], [0.5]),
        _row("e", "pseudo_label", 4, [0], [0.99], status="failed"),
        _row("f", "erm", 1, [0, 1], [0.4, 0.6], setup="supervised"),
    )
    return path


def test_summary_table_pools_seeds_and_matches_hand_computed_numbers(results):
    table = report.summary_table(store.load(path=results))
    assert list(table.columns) == [
        "dataset", "setup", "method", "labels_per_class", "n_seeds",
        "accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std", "ece_mean", "ece_std",
    ]  # fmt: skip
    rows = {(row.setup, row.method, row.labels_per_class): row for row in table.itertuples()}
    assert set(rows) == {
        ("semi_supervised", "fixmatch", 1),
        ("semi_supervised", "fixmatch", 4),
        ("semi_supervised", "pseudo_label", 1),
        ("supervised", "erm", 1),
    }
    # fixmatch, 1 label: seeds 0, 1 (point a) and 2 (point b) pooled: 0.6, 0.8, 0.7.
    pooled = rows["semi_supervised", "fixmatch", 1]
    assert pooled.n_seeds == 3
    assert pooled.accuracy_mean == pytest.approx(0.7)
    assert pooled.accuracy_std == pytest.approx(math.sqrt((0.1**2 + 0.1**2 + 0.0) / 2))
    assert pooled.ece_mean == pytest.approx((0.0 + 0.1 + 0.2) / 3)
    assert rows["semi_supervised", "fixmatch", 4].accuracy_std == pytest.approx(math.sqrt(2 * 0.05**2))
    # One seed: no spread. The failed pseudo_label point (0.99) does not count.
    single = rows["semi_supervised", "pseudo_label", 1]
    assert (single.n_seeds, single.accuracy_mean) == (1, 0.5) and math.isnan(single.accuracy_std)


def test_summary_markdown_shows_mean_plus_minus_std(results):
    markdown = report.summary_markdown(report.summary_table(store.load(path=results)))
    lines = markdown.splitlines()
    assert lines[0] == "| dataset | setup | method | labels_per_class | n_seeds | accuracy | macro_f1 | ece |"
    assert (
        "| digits | semi_supervised | fixmatch | 1 | 3 | 0.7000 ± 0.1000 | 0.6000 ± 0.1000 | 0.1000 ± 0.1000 |" in lines
    )
    assert "| digits | semi_supervised | pseudo_label | 1 | 1 | 0.5000 | 0.4000 | 0.0000 |" in lines
    assert len(lines) == 2 + 4


def test_parameters_that_vary_within_a_configuration_keep_results_apart(tmp_path):
    path = tmp_path / "results.db"
    ResultsStore(path).save(
        _row("a", "fixmatch", 1, [0], [0.6], learning_rate=0.1, width=1),
        _row("b", "fixmatch", 1, [1], [0.8], learning_rate=0.01, width=1),
        _row("c", "fixmatch", 4, [0], [0.9], learning_rate=0.1, width=4),  # width only changes with labels_per_class
    )
    table = report.summary_table(store.load(path=path))
    assert list(table.columns[:5]) == ["dataset", "setup", "method", "labels_per_class", "learning_rate"]
    assert list(zip(table["labels_per_class"], table["learning_rate"], table["accuracy_mean"], strict=True)) == [
        (1, 0.01, 0.8),
        (1, 0.1, 0.6),
        (4, 0.1, 0.9),
    ]


def test_a_metric_that_some_notebooks_do_not_record_is_averaged_where_present(tmp_path):
    path = tmp_path / "results.db"
    without_ece = _row("b", "fixmatch", 1, [2], [0.7])
    del without_ece.payload["metrics"]["ece"]
    ResultsStore(path).save(_row("a", "fixmatch", 1, [0, 1], [0.6, 0.8]), without_ece)
    (row,) = report.summary_table(store.load(path=path)).itertuples()
    assert (row.n_seeds, row.accuracy_mean) == (3, pytest.approx(0.7))
    assert row.ece_mean == pytest.approx(0.05)  # seeds 0 and 1 of point a only


def test_learning_curves_average_over_seeds_per_step(results):
    curves = report.learning_curves(store.load(path=results))
    assert list(zip(curves["method"], curves["step"], curves["n_seeds"], strict=True)) == [
        ("fixmatch", 0, 3),
        ("fixmatch", 50, 3),
    ]
    assert curves["mean"].tolist() == pytest.approx([0.2, 0.7])
    assert curves["std"].tolist() == pytest.approx([0.1, 0.1])


def _table(*rows):
    """A summary_table-shaped frame: rows of (setup, method, labels_per_class, accuracy_mean[, extras...])."""
    columns = ["dataset", "setup", "method", "labels_per_class", "n_seeds", "accuracy_mean", "accuracy_std"]
    return pd.DataFrame(
        [{**dict(zip(columns, ("digits", setup, method, labels, 2, mean, 0.01), strict=True)), **extras}
         for setup, method, labels, mean, extras in ((*row, {})[:5] for row in rows)]
    )  # fmt: skip


def test_configuration_label_names_the_method_and_the_extra_parameters_it_has():
    row = pd.Series({"method": "fixmatch", "learning_rate": 0.01, "param.width": math.nan})
    assert report.configuration_label(row, []) == "fixmatch"
    assert report.configuration_label(row, ["learning_rate", "param.width"]) == "fixmatch (learning_rate=0.01)"


def test_best_of_family_scores_each_configuration_on_the_budgets_its_family_shares():
    table = _table(
        ("supervised", "supervised", 1, 0.5),
        ("supervised", "supervised", 4, 0.7),
        # pseudo_label wins at 1 and 4 on average (0.75 against 0.7), fixmatch only thanks to budget 40
        ("semi_supervised", "fixmatch", 1, 0.6),
        ("semi_supervised", "fixmatch", 4, 0.8),
        ("semi_supervised", "fixmatch", 40, 1.0),
        ("semi_supervised", "pseudo_label", 1, 0.7),
        ("semi_supervised", "pseudo_label", 4, 0.8),
    )
    rankings = report.rank_families(table)
    assert rankings["semi_supervised"].budgets == [1, 4]
    assert rankings["semi_supervised"].scores.to_dict() == pytest.approx({"pseudo_label": 0.75, "fixmatch": 0.7})
    assert report.best_of_family(table) == {"semi_supervised": "pseudo_label", "supervised": "supervised"}


def test_best_of_family_tells_configurations_apart_by_their_extra_parameters():
    table = _table(
        ("transfer", "simclr+finetune", 1, 0.6, {"learning_rate": 0.1}),
        ("transfer", "simclr+finetune", 1, 0.9, {"learning_rate": 0.01}),
    )
    assert report.best_of_family(table) == {"transfer": "simclr+finetune (learning_rate=0.01)"}
    assert list(report.configuration_labels(table)) == [
        "simclr+finetune (learning_rate=0.1)",
        "simclr+finetune (learning_rate=0.01)",
    ]


def test_best_of_family_ranks_one_dataset_at_a_time():
    table = pd.concat([_table(("supervised", "supervised", 1, 0.5)).assign(dataset=name) for name in ("a", "b")])
    with pytest.raises(ValueError, match="one dataset at a time"):
        report.best_of_family(table)


def test_runs_of_finds_the_points_pooled_into_a_configuration(results):
    frame = store.load(path=results)
    table = report.summary_table(frame)
    pooled = table[(table["method"] == "fixmatch") & (table["labels_per_class"] == 1)].iloc[0]
    assert sorted(report.runs_of(frame, pooled)["point_id"]) == ["a", "b"]  # the failed point e is no run
    single = table[table["method"] == "pseudo_label"].iloc[0]
    assert list(report.runs_of(frame, single)["point_id"]) == ["d"]


def test_runs_of_keeps_configurations_apart_by_their_extra_parameters(tmp_path):
    path = tmp_path / "results.db"
    ResultsStore(path).save(
        _row("a", "fixmatch", 1, [0], [0.6], learning_rate=0.1),
        _row("b", "fixmatch", 1, [1], [0.8], learning_rate=0.01),
    )
    frame = store.load(path=path)
    for _, row in report.summary_table(frame).iterrows():
        (point,) = report.runs_of(frame, row)["point_id"]
        assert point == {0.1: "a", 0.01: "b"}[row["learning_rate"]]


def test_the_accuracy_figure_highlights_the_best_configuration_of_each_family(results):
    table = report.summary_table(store.load(path=results))
    figure = report.plot_accuracy_vs_labels(table, subtitle="three ways")
    (axes,) = figure.axes
    assert axes.get_title() == "digits: three ways"
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    # fixmatch (0.7 at 1 label) beats pseudo_label (0.5), which is drawn faintly (matplotlib lists plain lines first)
    assert legend == ["other candidates (dotted)", "supervised: erm", "best semi-supervised: fixmatch"]
    faint = [line for line in axes.lines if line.get_linestyle() == ":" and len(line.get_xdata())]
    assert [list(line.get_ydata()) for line in faint] == [[0.5]]


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and matplotlib.image.imread(path).shape[0] > 100


def test_build_report_writes_figures_and_tables(results, tmp_path):
    out = tmp_path / "figures"
    written = report.build_report(store.load(path=results), out)
    assert sorted(path.name for path in written) == [
        "accuracy_vs_labels.png",
        "learning_curves.png",
        "summary.csv",
        "summary.md",
    ]
    assert sorted(path.name for path in out.iterdir()) == sorted(
        path.name for path in written
    )  # no temporary files left
    assert _is_png(out / "accuracy_vs_labels.png") and _is_png(out / "learning_curves.png")
    table = pd.read_csv(out / "summary.csv")
    assert table.loc[
        (table["method"] == "fixmatch") & (table["labels_per_class"] == 1), "accuracy_mean"
    ].item() == pytest.approx(0.7)
    assert "0.7000 ± 0.1000" in (out / "summary.md").read_text()


def test_no_learning_curves_figure_without_curves(tmp_path):
    path = tmp_path / "results.db"
    ResultsStore(path).save(_row("c", "fixmatch", 4, [0, 1], [0.85, 0.95]))
    written = report.build_report(store.load(path=path), tmp_path / "out")
    assert "learning_curves.png" not in {written_path.name for written_path in written}


def test_a_report_needs_done_points(tmp_path):
    path = tmp_path / "results.db"
    ResultsStore(path).save(_row("e", "pseudo_label", 4, [0], [0.99], status="failed"))
    with pytest.raises(ValueError, match="no done points to report on"):
        report.build_report(store.load(path=path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _cli(*argv):
    parser = argparse.ArgumentParser(prog="lab")
    cli.add_report_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_report(results, tmp_path, capsys):
    out = tmp_path / "report"
    assert _cli("report", "--sweep", "s", "--out", str(out), "--store", str(results)) == 0
    assert f"wrote {out / 'accuracy_vs_labels.png'}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no sweep named 'nope'"):
        _cli("report", "--sweep", "nope", "--out", str(out), "--store", str(results))


def _from(sweep, notebook, row):
    return dataclasses.replace(row, sweep=sweep, notebook=notebook)


def test_the_same_configuration_from_two_sweeps_or_notebooks_is_not_pooled(tmp_path):
    path = tmp_path / "results.db"
    ResultsStore(path).save(
        _from("a", "nb.ipynb", _row("p", "fixmatch", 1, [0], [0.6])),
        _from("b", "nb.ipynb", _row("p", "fixmatch", 1, [0], [0.6])),  # the same seed, stored twice
        _from("a", "copy.ipynb", _row("q", "fixmatch", 4, [0], [0.7])),  # a copy with other defaults
        _from("a", "nb.ipynb", _row("r", "fixmatch", 4, [1], [0.9])),
        _from("c", "nb.ipynb", _row("s", "erm", 1, [0], [0.5], setup="supervised")),  # alone in its group: no split
    )
    table = report.summary_table(store.load(path=path))
    assert list(table.columns[:6]) == ["dataset", "setup", "method", "labels_per_class", "sweep", "notebook"]
    assert list(zip(table["labels_per_class"], table["sweep"], table["notebook"], table["n_seeds"], strict=True)) == [
        (1, "a", "nb.ipynb", 1),
        (1, "b", "nb.ipynb", 1),
        (4, "a", "copy.ipynb", 1),
        (4, "a", "nb.ipynb", 1),
        (1, "c", "nb.ipynb", 1),
    ]
    assert report.configuration_labels(table).tolist()[:2] == [
        "fixmatch (sweep=a, notebook=nb.ipynb)",
        "fixmatch (sweep=b, notebook=nb.ipynb)",
    ]


def test_cli_report_says_when_it_keeps_sweeps_apart(tmp_path, capsys):
    path = tmp_path / "results.db"
    ResultsStore(path).save(*(_from(sweep, "nb.ipynb", _row("p", "fixmatch", 1, [0], [0.6])) for sweep in "ab"))
    assert _cli("report", "--out", str(tmp_path / "out"), "--store", str(path)) == 0
    out, err = capsys.readouterr()
    assert err == (
        "note: configurations stored by more than one sweep are not pooled: one row per sweep; "
        "--sweep NAME reports one sweep\n"
    )
    assert "| digits | semi_supervised | fixmatch | 1 | a | 1 | 0.6000 |" in out


def test_a_report_that_fails_to_write_a_file_writes_none_and_names_the_file(results, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.md").write_text("the last report")

    def full_disk(self, path, **options):
        Path(path).write_bytes(b"\x89PNG half")  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full_disk)
    status = cli.main(["report", "--out", str(out), "--store", str(results)])
    err = capsys.readouterr().err
    assert status == 2
    assert err == (
        f"lab report: error: [Errno {errno.ENOSPC}] cannot write {out / 'accuracy_vs_labels.png'}: "
        "No space left on device\n"
    )
    assert [(path.name, path.read_text()) for path in out.iterdir()] == [("summary.md", "the last report")]


def _active_row(point_id, strategy, seeds, curve, *, sweep="s", steps=10):
    """A done active-learning point: budgets 10, 20; ``curve`` per budget, one accuracy per seed."""
    learner = {"setup": "supervised", "model": "logreg", "steps": steps, "seeds": seeds}
    payload = {
        "dataset": "digits", "setup": "supervised", "method": "supervised", "labels_per_class": None,
        "seeds": seeds, "metrics": {"accuracy": curve[-1]},
        "active": {
            "strategy": strategy, "cold_start": "random", "embeddings": "auto", "learner": learner, "initial": [],
            "budgets": [10, 20], "curve": {"accuracy": curve}, "selections": [[[s], [s + 1]] for s in seeds],
        },
    }  # fmt: skip
    parameters = {"strategy": strategy, "seeds": seeds, "steps": steps}
    return RunRow(sweep, point_id, "07.ipynb", parameters, "done", payload=payload)


def test_report_draws_label_curves_of_active_runs_pooling_seeds_per_strategy_and_learner(results, tmp_path, capsys):
    ResultsStore(results).save(
        _active_row("m0", "margin", [0], [[0.90], [0.94]]),
        _active_row("m1", "margin", [1], [[0.94], [0.98]]),  # pooled with m0: seeds 0 and 1
        _active_row("r", "random", [0, 1], [[0.80, 0.90], [0.88, 0.90]]),
        _active_row("m-long", "margin", [0], [[0.97], [0.99]], steps=20),  # another learner: its own line
    )
    out = tmp_path / "figures"
    assert _cli("report", "--store", str(results), "--out", str(out), "--target", "0.95") == 0
    printed = capsys.readouterr().out
    assert {path.name for path in out.iterdir()} == {
        "accuracy_vs_labels.png", "learning_curves.png", "summary.csv", "summary.md", "label_curves.md",
        "label_curves.png",
    }  # fmt: skip
    assert "margin" not in (out / "summary.md").read_text()  # the fixed-label summary holds no active run
    assert sorted((out / "label_curves.md").read_text().splitlines()[2:]) == [
        "| supervised: random, then margin (steps=10) | 92.0 ± 2.0 | 96.0 ± 2.0 | 20 |",
        "| supervised: random, then margin (steps=20) | 97.0 ± 0.0 | 99.0 ± 0.0 | 10 |",
        "| supervised: random, then random | 85.0 ± 5.0 | 89.0 ± 1.0 | not reached |",
    ]
    assert (out / "label_curves.md").read_text() in printed and "0.7000 ± 0.1000" in printed
    assert _is_png(out / "label_curves.png")


def test_report_of_a_store_of_active_runs_only_writes_the_label_curves(tmp_path):
    path = tmp_path / "results.db"
    ResultsStore(path).save(_active_row("r", "random", [0, 1], [[0.80, 0.90], [0.88, 0.90]]))
    written = report.build_report(store.load(path=path), tmp_path / "out", target=0.85)
    assert sorted(path.name for path in written) == ["label_curves.md", "label_curves.png"]
    assert (tmp_path / "out" / "label_curves.md").read_text().splitlines()[-1].endswith("| 10 |")
