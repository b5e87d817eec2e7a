"""Results out of the store: CSV and Parquet files of :func:`lab.store.load`'s frame, and MLflow runs."""

from __future__ import annotations

import importlib
import json
import os
import statistics
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from lab import files, store
from lab.record import seed_mean

FORMATS = ("csv", "parquet")


def export(
    path_out: str | os.PathLike[str],
    format: str = "csv",
    sweep: str | None = None,
    *,
    path: str | os.PathLike[str] = store.DEFAULT_PATH,
    force: bool = False,
) -> Path:
    """Write :func:`load`'s DataFrame to ``path_out`` as CSV or Parquet; returns the path written.

    In CSV, lists and dicts (per-seed metrics, curves, parameters) are JSON text. In
    Parquet, per-seed lists stay lists and dict-valued columns are JSON text. A file at
    ``path_out`` that is not of ``format`` (a results store, say) is replaced only when
    ``force``, and the store exported never.
    """
    if format not in FORMATS:
        raise ValueError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    files.check_output_path(path_out, "export output")
    files.check_replaceable(
        path_out, "export output", format, force=force, keep={path: "the results store this command exports"}
    )
    frame = store.load(sweep, path=path)
    if sweep is not None and frame.empty:
        raise ValueError(f"no sweep named {sweep!r} in {path}; `lab runs list` shows the sweeps")
    if format == "csv":
        encoded = _json_columns(frame, lambda value: isinstance(value, (list, dict)))
        files.write_together({path_out: lambda temporary: encoded.to_csv(temporary, index=False)})
    else:
        try:  # pandas imports pyarrow itself; this only says how to get it
            importlib.import_module("pyarrow")
        except ImportError as error:
            raise ImportError("Parquet export needs pyarrow: pip install 'lab[parquet]'") from error
        encoded = _json_columns(frame, lambda value: isinstance(value, dict) or _is_nested_list(value))
        files.write_together({path_out: lambda temporary: encoded.to_parquet(temporary, index=False)})
    return Path(path_out)


def _json_columns(frame: pd.DataFrame, needs_encoding: Callable[[Any], bool]) -> pd.DataFrame:
    """``frame`` with each column that holds a value that ``needs_encoding`` as JSON text."""
    return json_text(frame, [column for column in frame.columns if any(needs_encoding(v) for v in frame[column])])


def _is_nested_list(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(item, (list, dict)) for item in value)


def json_text(frame: pd.DataFrame, columns: Iterable[str]) -> pd.DataFrame:
    """``frame`` with the list and dict values of ``columns`` as JSON text (sorted keys), e.g. to group on them."""
    encoded = frame.copy()
    for column in columns:
        encoded[column] = encoded[column].map(
            lambda value: json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
        )
    return encoded


def export_mlflow(
    sweep: str,
    tracking_uri: str | None = None,
    *,
    path: str | os.PathLike[str] = store.DEFAULT_PATH,
) -> list[str]:
    """Copy the done points of ``sweep`` to MLflow, one MLflow run per point; returns the MLflow run ids.

    The MLflow experiment is named after the sweep. Each run gets the notebook
    parameters as params; per metric the mean over seeds (``accuracy``), the
    standard deviation (``accuracy_std``) and each seed's value (``accuracy_seed_3``);
    learning curves as step-wise means (``curve_accuracy``), and an active-learning run's label curve
    as means with the labels in total for steps (``label_curve_accuracy``); the git commit and
    library versions as tags; and the executed notebook as an artifact. Exporting
    twice makes a second set of runs.
    """
    try:
        import mlflow
    except ImportError as error:
        raise ImportError("MLflow export needs mlflow: pip install 'lab[mlflow]'") from error
    rows = [row for row in store.ResultsStore(path, create=False).rows(sweep) if row.status == "done"]
    if not rows:
        raise ValueError(f"sweep {sweep!r} has no done points in {path}")
    if tracking_uri is not None:
        mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(sweep)
    run_ids = []
    for row in rows:
        assert row.payload is not None  # done rows always hold their record
        tags = {"lab.sweep": sweep, "lab.point_id": row.point_id, "lab.git_commit": row.git_commit or "unknown"}
        tags.update({f"lab.version.{library}": str(version) for library, version in (row.versions or {}).items()})
        with mlflow.start_run(run_name=row.point_id, tags=tags) as run:
            mlflow.log_params(
                {
                    name: json.dumps(value) if isinstance(value, (list, dict)) else value
                    for name, value in row.parameters.items()
                }
            )
            mlflow.log_metrics(_mlflow_metrics(row.payload))
            for name, per_step in (row.payload.get("curves") or {}).items():
                if name != "step":
                    for step, values in zip(row.payload["curves"]["step"], per_step, strict=True):
                        mlflow.log_metric(f"curve_{name}", seed_mean(values), step=step)
            active = row.payload.get("active") or {}  # an active-learning run: its label curve, by labels in total
            for name, per_budget in active.get("curve", {}).items():
                for budget, values in zip(active["budgets"], per_budget, strict=True):
                    mlflow.log_metric(f"label_curve_{name}", seed_mean(values), step=budget)
            if row.output_notebook and Path(row.output_notebook).exists():
                mlflow.log_artifact(row.output_notebook)
            run_ids.append(run.info.run_id)
    return run_ids


def _mlflow_metrics(payload: Mapping[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, values in payload["metrics"].items():
        metrics[name] = seed_mean(values)
        if len(values) > 1:
            metrics[f"{name}_std"] = statistics.stdev(values)
        for seed, value in zip(payload["seeds"], values, strict=True):
            metrics[f"{name}_seed_{seed}"] = value
    for phase, seconds in (payload.get("wall_time_s") or {}).items():
        metrics[f"{phase}_time_s"] = seconds
    return metrics
