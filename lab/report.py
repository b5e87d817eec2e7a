"""Figures and a summary table from the results store: the library behind ``lab report`` (:mod:`lab.cli`).

:func:`build_report` writes, into an output folder (``figures/`` by default):

- ``accuracy_vs_labels.png``: test accuracy against labels per class (log scale),
  mean ± standard deviation over all seeds: per dataset, each family's (setup's)
  best configuration (:func:`best_of_family`), its other configurations faintly;
- ``learning_curves.png``: accuracy against training step, when the records have
  learning curves;
- ``summary.md`` and ``summary.csv``: :func:`summary_table`, the mean, standard
  deviation and number of seeds of every metric per configuration;
- for active-learning runs (:mod:`lab.active`), instead: ``label_curves.png``, test accuracy
  against the labels in total, mean ± std over seeds per strategy × learner, and
  ``label_curves.md``, its table with the labels each needed to reach a target accuracy
  (:func:`active_results`, :func:`label_curve_writers`).

Only done points count. Results are grouped by dataset, setup, method and
labels_per_class, and also by the sweep, the notebook and any other notebook
parameter whose value differs between the points of such a group (a learning rate
swept alongside, say; the same configuration stored by two sweeps, or run by copies
of a notebook with other defaults), so that different runs of a configuration are
never averaged together; seeds are pooled. Standard deviations
are sample standard deviations (n - 1 in the denominator), empty for one seed.

Figures are drawn on :class:`matplotlib.figure.Figure` objects without pyplot, so
they render with the Agg backend on machines without a display and leave the
pyplot state of an interactive session alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from lab import files
from lab.export import json_text
from lab.record import METRICS

GROUP_KEYS = ("dataset", "setup", "method", "labels_per_class")
# Where a point comes from: its values may differ though its parameters are the same (a notebook's
# defaults are no parameters), and the same seed stored by two sweeps must not count twice.
ORIGIN_KEYS = ("sweep", "notebook")
# Parameters that never tell configurations apart: seeds are pooled, output folders differ per point.
POOLED_PARAMETERS = ("seeds", "seed", "output_dir")
CURVE_METRIC = "accuracy"
# The accuracy whose labels needed the active-learning table lists, unless told otherwise.
DEFAULT_TARGET = 0.95
DEFAULT_OUT_DIR = Path("figures")
# The families compared (setups), in the order legends and printouts list them: their names and colors.
FAMILY_NAMES = {
    "supervised": "supervised", "semi_supervised": "best semi-supervised", "transfer": "best transfer",
    "transfer_semi_supervised": "best transfer + semi-supervised",
}  # fmt: skip
FAMILY_COLORS = {
    "supervised": "black", "semi_supervised": "tab:blue", "transfer": "tab:orange",
    "transfer_semi_supervised": "tab:green",
}  # fmt: skip


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and seed count of each metric, per configuration.

    ``df`` is a frame from :func:`lab.store.load` (points that are not done, and active-learning
    points, are ignored). Returns one row per configuration, sorted, with the grouping columns
    (see the module docstring), ``n_seeds``, and ``<metric>_mean`` and
    ``<metric>_std`` for accuracy, macro_f1 and ece (those present).
    """
    done = _done(df)
    keys = _configuration_keys(done)
    metrics = [metric for metric in METRICS if metric in done.columns]
    per_point = json_text(done, keys)
    for metric in metrics:  # a notebook that does not record this metric: NaN per seed, skipped by mean and std
        per_point[metric] = [
            values if isinstance(values, list) else [math.nan] * len(seeds)
            for values, seeds in zip(per_point[metric], per_point["seeds"], strict=True)
        ]
    per_seed = per_point[[*keys, "seeds", *metrics]].explode(["seeds", *metrics])
    per_seed[metrics] = per_seed[metrics].astype(float)
    aggregations: dict[str, tuple[str, str]] = {"n_seeds": ("seeds", "size")}
    for metric in metrics:
        aggregations[f"{metric}_mean"] = (metric, "mean")
        aggregations[f"{metric}_std"] = (metric, "std")
    return per_seed.groupby(keys, sort=True, dropna=False).agg(**aggregations).reset_index()


def _done(df: pd.DataFrame, *, active: bool = False) -> pd.DataFrame:
    """The done points of fixed labeled sets, or with ``active`` those of active-learning runs (one kind is
    never pooled with the other), or a ValueError saying there are none."""
    done = _done_points(split_active(df)[active])
    if done.empty:
        kind = "active-learning points" if active else "points"
        raise ValueError(f"no done {kind} to report on: run a sweep first (`lab runs list` shows what is stored)")
    missing = [column for column in (*GROUP_KEYS, "seeds") if column not in done.columns]
    if missing:
        raise ValueError(f"results lack the record columns {', '.join(missing)}; pass a frame from lab.store.load()")
    return done


def _configuration_keys(done: pd.DataFrame) -> list[str]:
    """GROUP_KEYS, then each of ORIGIN_KEYS and of the other parameters whose value differs between points
    of the same group.

    A column that only changes along with the group keys (one value per group)
    tells nothing new and would only split the lines of the figures.
    """
    keys = list(GROUP_KEYS)
    groups = json_text(done, GROUP_KEYS).groupby(list(GROUP_KEYS), dropna=False)
    keys += [key for key in ORIGIN_KEYS if key in done.columns and (groups[key].nunique(dropna=False) > 1).any()]
    if "parameters" not in done.columns:
        return keys
    names = sorted(
        {name for parameters in done["parameters"] for name in parameters} - {*GROUP_KEYS, *POOLED_PARAMETERS}
    )
    for name in names:
        column = name if name in done.columns else f"param.{name}"
        distinct = groups["parameters"].agg(_distinct_values, name=name)
        if column in done.columns and (distinct > 1).any():
            keys.append(column)
    return keys


def _distinct_values(parameter_dicts: pd.Series, name: str) -> int:
    return len({json.dumps(parameters.get(name), sort_keys=True) for parameters in parameter_dicts})


def configuration_columns(table: pd.DataFrame) -> list[str]:
    """The columns of a :func:`summary_table` result that name a configuration (not its statistics).

    Any column added to the result counts as one: label configurations in a copy.
    """
    return [column for column in table.columns if column != "n_seeds" and not column.endswith(("_mean", "_std"))]


def configuration_label(row: pd.Series, extras: Sequence[str]) -> str:
    """A configuration's name within its setup: the method, then the ``extras`` columns it has values for.

    ``extras`` are the configuration columns besides GROUP_KEYS (a swept learning
    rate, say): ``"fixmatch (learning_rate=0.01)"``.
    """
    values = [f"{key.removeprefix('param.')}={row[key]}" for key in extras if not pd.isna(row[key])]
    return row["method"] + (f" ({', '.join(values)})" if values else "")


def configuration_labels(table: pd.DataFrame) -> pd.Series:
    """:func:`configuration_label` of every row of a :func:`summary_table` result."""
    extras = [key for key in configuration_columns(table) if key not in GROUP_KEYS]
    return pd.Series([configuration_label(row, extras) for _, row in table.iterrows()], index=table.index, dtype=object)


@dataclasses.dataclass(frozen=True)
class FamilyRanking:
    """One family's configurations, scored by their mean metric over ``budgets``, best first."""

    budgets: list[Any]  # the labels per class every configuration of the family has; empty: none shared, each its own
    scores: pd.Series  # configuration label -> score, highest first

    @property
    def best(self) -> str:
        return self.scores.index[0]


def rank_families(table: pd.DataFrame, metric: str = "accuracy") -> dict[str, FamilyRanking]:
    """Per setup of a one-dataset :func:`summary_table` result, its configurations ranked by ``metric``.

    A configuration's score is its mean ``<metric>_mean`` over the label budgets all
    configurations of the setup share, so that one choice holds for every budget (a
    line one could actually run) and no configuration gains from budgets the others lack.
    """
    datasets = sorted(table["dataset"].unique())
    if len(datasets) > 1:
        raise ValueError(f"rank the configurations of one dataset at a time, not of {datasets}")
    labelled = table.assign(configuration=configuration_labels(table))
    rankings = {}
    for setup, candidates in labelled.groupby("setup", sort=True):
        per_configuration = candidates.groupby("configuration")["labels_per_class"]
        shared = set.intersection(*(set(budgets) for _, budgets in per_configuration))
        scored = candidates[candidates["labels_per_class"].isin(shared)] if shared else candidates
        scores = scored.groupby("configuration")[f"{metric}_mean"].mean().sort_values(ascending=False, kind="stable")
        rankings[setup] = FamilyRanking(sorted(shared), scores)
    return rankings


def best_of_family(table: pd.DataFrame, metric: str = "accuracy") -> dict[str, str]:
    """Setup -> the label of its best configuration (:func:`rank_families`)."""
    return {setup: ranking.best for setup, ranking in rank_families(table, metric).items()}


def runs_of(frame: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    """The done points of ``frame`` (from :func:`lab.store.load`) that ``summary_table(frame)`` pools into ``row``."""
    done = _done(frame)
    keys = _configuration_keys(done)
    encoded = json_text(done, keys)  # as summary_table groups them
    mask = pd.Series(True, index=done.index)
    for key in keys:
        mask &= (encoded[key] == row[key]) | (encoded[key].isna() & pd.isna(row[key]))
    return done[mask]


def summary_markdown(table: pd.DataFrame) -> str:
    """``summary_table``'s result as a Markdown table with "mean ± std" cells."""
    metrics = [metric for metric in METRICS if f"{metric}_mean" in table.columns]
    keys = configuration_columns(table)
    header = [*keys, "n_seeds", *metrics]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " if column in keys else " ---: " for column in header) + "|",
    ]
    for _, row in table.iterrows():
        cells = ["" if pd.isna(row[key]) else str(row[key]) for key in keys] + [str(row["n_seeds"])]
        cells += [_mean_std(row[f"{metric}_mean"], row[f"{metric}_std"]) for metric in metrics]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def _mean_std(mean: float, std: float) -> str:
    return f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"


def _line_label(row: pd.Series, keys: list[str]) -> str:
    return f"{row['setup']} / {configuration_label(row, [key for key in keys if key not in GROUP_KEYS])}"


def _colors(labels: Iterable[str]) -> dict[str, Any]:
    """The same color for the same line in every figure."""
    cycle = mpl.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[index % len(cycle)] for index, label in enumerate(sorted(set(labels)))}


def _family_order(setup: str) -> tuple[int, str]:
    return (list(FAMILY_NAMES).index(setup) if setup in FAMILY_NAMES else len(FAMILY_NAMES), setup)


def plot_accuracy_vs_labels(table: pd.DataFrame, *, subtitle: str | None = None) -> Figure:
    """Accuracy against labels per class, one panel per dataset, one color per family (setup).

    ``table`` is a :func:`summary_table` result. In each panel, each family's best
    configuration (:func:`best_of_family` on that dataset) is drawn as mean ± std and
    named in the legend; the family's other configurations are drawn faintly, dotted.
    Panel titles are the dataset, followed by ``": <subtitle>"`` when given.
    """
    datasets = sorted(table["dataset"].unique())
    figure = Figure(figsize=(7 * len(datasets), 4.4), layout="constrained")
    for axes, dataset in zip(figure.subplots(1, len(datasets), squeeze=False)[0], datasets, strict=True):
        panel = table[table["dataset"] == dataset]
        best = best_of_family(panel)
        panel = panel.assign(configuration=configuration_labels(panel))
        others_drawn = False
        for setup in sorted(best, key=_family_order):
            color = FAMILY_COLORS.get(setup, "grey")
            family = FAMILY_NAMES.get(setup, setup)
            for configuration, points in panel[panel["setup"] == setup].groupby("configuration", sort=True):
                points = points.sort_values("labels_per_class")
                x, y = points["labels_per_class"].astype(float), points["accuracy_mean"]
                if configuration == best[setup]:
                    label = family if configuration == family else f"{family}: {configuration}"
                    spread = points["accuracy_std"].fillna(0.0)
                    axes.errorbar(x, y, yerr=spread, marker="o", capsize=3, linewidth=2, color=color, label=label)
                else:
                    axes.plot(x, y, color=color, alpha=0.5, linewidth=1.2, linestyle=":")
                    others_drawn = True
        if others_drawn:  # one legend entry for all the faint lines
            axes.plot([], [], color="grey", alpha=0.6, linewidth=1.2, linestyle=":", label="other candidates (dotted)")
        label_counts = sorted(panel["labels_per_class"].unique())
        axes.set_xscale("log")
        axes.set_xticks([float(count) for count in label_counts])
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.minorticks_off()  # ticks at the budgets only
        axes.set_xlabel("labels per class")
        axes.set_ylabel("test accuracy (mean ± std over seeds)")
        axes.set_title(dataset if subtitle is None else f"{dataset}: {subtitle}")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small", loc="lower right")
    return figure


def learning_curves(df: pd.DataFrame) -> pd.DataFrame:
    """Accuracy per training step, mean and std over seeds, per configuration (empty without curves)."""
    done = _done(df)
    keys = _configuration_keys(done)
    rows = []
    for _, point in json_text(done, keys).iterrows():
        curves = point.get("curves")
        if not isinstance(curves, dict) or CURVE_METRIC not in curves:
            continue
        for step, values in zip(curves["step"], curves[CURVE_METRIC], strict=True):
            rows += [{**{key: point[key] for key in keys}, "step": step, CURVE_METRIC: value} for value in values]
    if not rows:
        return pd.DataFrame(columns=[*keys, "step", "mean", "std", "n_seeds"])
    grouped = pd.DataFrame(rows).groupby([*keys, "step"], sort=True, dropna=False)[CURVE_METRIC]
    return grouped.agg(mean="mean", std="std", n_seeds="size").reset_index()


def plot_learning_curves(curves: pd.DataFrame) -> Figure:
    """Accuracy against step, one panel per (dataset, labels per class), one line per setup and method."""
    keys = [column for column in curves.columns if column not in ("step", "mean", "std", "n_seeds")]
    labelled = curves.assign(line=[_line_label(row, keys) for _, row in curves.iterrows()])
    colors = _colors(labelled["line"])
    panels = sorted({(row["dataset"], row["labels_per_class"]) for _, row in labelled.iterrows()})
    columns = min(len(panels), 4)
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(4.5 * columns, 3.6 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False, sharey=True)
    for axes, (dataset, labels) in zip(grid.flat, panels, strict=False):  # the grid may have spare cells
        panel = labelled[(labelled["dataset"] == dataset) & (labelled["labels_per_class"] == labels)]
        for line, points in panel.groupby("line", sort=True):
            points = points.sort_values("step")
            spread = points["std"].fillna(0.0)
            axes.plot(points["step"], points["mean"], label=line, color=colors[line])
            axes.fill_between(
                points["step"], points["mean"] - spread, points["mean"] + spread, alpha=0.2, color=colors[line]
            )
        axes.set_title(f"{dataset}, labels per class = {labels}")
        axes.set_xlabel("step")
        axes.set_ylabel(f"{CURVE_METRIC} (mean ± std)")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    for axes in grid.flat[len(panels) :]:
        axes.set_visible(False)
    return figure


def split_active(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``df``'s points of fixed labeled sets, and its active-learning points (those whose record has ``active``)."""
    is_active = df["active"].notna() if "active" in df.columns else pd.Series(False, index=df.index)
    return df[~is_active], df[is_active]


def active_results(df: pd.DataFrame) -> list:
    """The done active-learning points of ``df`` (from :func:`lab.store.load`) as :class:`lab.active.ActiveResult`
    objects, one per strategy × learner: the seeds of points that differ in nothing else are pooled (points of
    different sweeps are not, when the store holds several)."""
    from lab import active, record

    done = _done(df, active=True)
    several_sweeps = "sweep" in done.columns and done["sweep"].nunique() > 1
    groups: dict[str, list[record.Record]] = {}
    for _, point in done.iterrows():
        settings = record.active_settings(point["active"])
        key = json.dumps([point.get("sweep") if several_sweeps else None, point["dataset"], settings], sort_keys=True)
        metrics = {name: per_budget[-1] for name, per_budget in point["active"]["curve"].items()}
        groups.setdefault(key, []).append(record.Record.from_dict({
            "dataset": point["dataset"], "setup": point["setup"], "method": point["method"], "labels_per_class": None,
            "seeds": point["seeds"], "metrics": metrics, "active": point["active"],
        }))  # fmt: skip
    results = []
    for key, records in groups.items():
        pooled = records[0]
        for other in records[1:]:
            pooled = record.merge(pooled, other, f"the active-learning points of {json.loads(key)[2]['strategy']}")
        results.append(active.ActiveResult.from_record(pooled))
    return results


def label_curve_writers(results: Sequence, target: float, out_dir: Path) -> tuple[str, dict[Path, Callable]]:
    """The label-curve table (:func:`lab.active.label_curves_markdown` at ``target``) of active-learning results,
    and the writers of ``label_curves.md`` and ``label_curves.png`` into ``out_dir``."""
    from lab import active

    table = active.label_curves_markdown(results, target)
    return table, {
        out_dir / "label_curves.md": _text_writer(table),
        out_dir / "label_curves.png": _figure_writer(active.plot_label_curves(results)),
    }


def build_report(
    df: pd.DataFrame, out_dir: str | os.PathLike[str] = DEFAULT_OUT_DIR, *, target: float = DEFAULT_TARGET
) -> list[Path]:
    """Write the figures and summary tables for ``df`` (from :func:`lab.store.load`) into ``out_dir``: those of
    its fixed-label points, and the label curves of its active-learning points (``target``: the accuracy whose
    labels needed the table lists).

    The files are written as one set (:func:`lab.files.write_together`): an interrupted
    report, or one that fills the disk, leaves none of them half-written and none of
    them new. Returns the paths written.
    """
    out_dir = Path(out_dir)
    has_fixed, has_active = (not _done_points(kind).empty for kind in split_active(df))
    writers = {}
    if has_fixed or not has_active:  # neither: summary_table says there is nothing to report
        table = summary_table(df)
        writers = {
            out_dir / "summary.md": _text_writer(summary_markdown(table)),
            out_dir / "summary.csv": _text_writer(table.to_csv(index=False)),
            out_dir / "accuracy_vs_labels.png": _figure_writer(plot_accuracy_vs_labels(table)),
        }
        curves = learning_curves(df)
        if not curves.empty:
            writers[out_dir / "learning_curves.png"] = _figure_writer(plot_learning_curves(curves))
    if has_active:
        writers.update(label_curve_writers(active_results(df), target, out_dir)[1])
    return files.write_together(writers)


def _done_points(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] == "done"] if "status" in df.columns else df


def _text_writer(text: str) -> Callable[[Path], object]:
    return lambda path: path.write_text(text, encoding="utf-8")


def _figure_writer(figure: Figure) -> Callable[[Path], object]:
    return lambda path: figure.savefig(path, format="png", dpi=150)
