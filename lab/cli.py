"""The ``lab`` command line: ``lab train``, ``lab run``, ``lab data``, ``lab sweep``, ``lab runs`` and
``lab report``. The modules behind them (:mod:`lab.sweep`, :mod:`lab.store`, :mod:`lab.export`,
:mod:`lab.report`) are libraries; their arguments and messages live here."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.validate import argument, integer, number
from lab.record import seed_mean

if TYPE_CHECKING:
    import pandas as pd

    from lab import store


# argparse types: the option's text read as a number, then checked by lab.validate
# (which keeps the messages one vocabulary; argparse puts the option's name in front).
positive_int = argument(integer, int, minimum=1)
non_negative_int = argument(integer, int, minimum=0)
positive_float = argument(number, float, minimum=0, exclusive_minimum=True)
non_negative_float = argument(number, float, minimum=0)
ema_decay = argument(number, float, minimum=0, maximum=1, exclusive_maximum=True)
fraction = argument(number, float, minimum=0, maximum=1)


def seed(text: str) -> int:
    from lab.experiment import MAX_SEED  # imported when used: lab.experiment loads JAX

    return argument(integer, int, minimum=0, maximum=MAX_SEED)(text)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other ``lab`` error (sub-commands
    inherit it): the bad argument, what it allows, and where the options are listed."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def add_train_command(subparsers) -> None:
    from lab import data, devices, models, optim, train

    parser = subparsers.add_parser(
        "train", help="supervised training on a whole dataset; prints final test metrics as JSON"
    )
    parser.add_argument(
        "--dataset", default="digits", type=dataset_name, help=f"one of {', '.join(data.DATASETS)}, or your own data"
    )
    parser.add_argument("--model", default="mlp", choices=sorted(models.MODELS))
    parser.add_argument("--optimizer", default="adam", choices=optim.OPTIMIZERS)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)
    parser.add_argument("--schedule", default="constant", choices=optim.SCHEDULES)
    parser.add_argument("--warmup-steps", type=non_negative_int, default=0)
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    parser.add_argument(
        "--weight-decay-mode", default="decoupled", choices=optim.WEIGHT_DECAY_MODES,
        help="decoupled (AdamW-style) or l2 (added to the gradient, as torch's SGD)",
    )  # fmt: skip
    parser.add_argument(
        "--ema-decay", type=ema_decay, default=0.0,
        help="evaluate an exponential moving average of the weights with this decay, e.g. 0.999 (default 0: none)",
    )  # fmt: skip
    parser.add_argument("--clip-norm", type=positive_float, default=None)
    parser.add_argument("--label-smoothing", type=non_negative_float, default=0.0)
    parser.add_argument("--steps", type=positive_int, default=2000)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--eval-every", type=positive_int, default=500)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--data-parallel", action="store_true", help="shard each batch over all local devices")
    parser.add_argument(
        "--precision", default="float32", choices=train.PRECISIONS, help="what training steps compute in (mixed precision)"
    )
    parser.add_argument(
        "--platform", default="auto", choices=devices.PLATFORMS,
        help="where to compute (default: auto, the accelerator when JAX sees one, else the CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--workdir", default=None,
        help="record the config and checkpoint here; resume from the latest checkpoint; TensorBoard logs go here too",
    )
    parser.add_argument(
        "--checkpoint-every", type=positive_int, default=500, help="steps between checkpoints (with --workdir)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from lab import data, experiment

    config = experiment.TrainConfig(
        dataset=data.absolute_name(args.dataset),
        model=args.model,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        weight_decay_mode=args.weight_decay_mode,
        ema_decay=args.ema_decay,
        clip_norm=args.clip_norm,
        label_smoothing=args.label_smoothing,
        steps=args.steps,
        batch_size=args.batch_size,
        eval_every=min(args.eval_every, args.steps),
        seed=args.seed,
        data_parallel=args.data_parallel,
        precision=args.precision,
        platform=args.platform,
    )
    result = experiment.train_and_evaluate(
        config, args.workdir, checkpoint_every=args.checkpoint_every, progress=not args.no_progress
    )
    print(json.dumps({"config": result["config"], "test": result["test"], "wall_time_s": result["wall_time_s"]}, indent=2))
    return 0


# The sweep that `lab run --store` saves single runs under, unless told otherwise.
RUNS_SWEEP = "runs"


def add_run_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="one experiment (supervised, semi_supervised, transfer or transfer_semi_supervised); "
        "prints per-seed metrics as JSON",
        description="Run lab.experiment.run with the given config fields, e.g. "
        "`lab run setup=semi_supervised method=fixmatch labels_per_class=4 seeds=[0,1,2]`. "
        "Values are read as YAML (numbers, lists, mappings); a --config YAML file gives defaults. "
        "preset=NAME starts from a named config (e.g. fixmatch_cifar10) that the other fields override.",
    )
    parser.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="experiment config fields")
    parser.add_argument("--config", default=None, help="YAML file with config fields")
    parser.add_argument(
        "--output", default=None, metavar="FILE",
        help="also write the full result as JSON here: config, per-seed metrics, curves, wall times, "
        "environment, and the record that sweeps store; and TensorBoard logs beside it, in FILE's name "
        "with .tensorboard for its suffix, one folder per seed (with tensorboardX installed)",
    )  # fmt: skip
    parser.add_argument(
        "--store", default=None, metavar="PATH", help="also save the record as a done point in this results database"
    )
    parser.add_argument(
        "--force", action="store_true",
        help="replace an --output file that is not JSON (a results store, say); never the --store of the same run",
    )  # fmt: skip
    parser.add_argument(
        "--sweep", default=RUNS_SWEEP, help=f"the sweep the point is saved under with --store (default: {RUNS_SWEEP})"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--show-config", action="store_true", help="print the resolved, validated config as JSON and run nothing"
    )
    parser.set_defaults(handler=run_experiment)


def parse_fields(pairs: Sequence[str]) -> dict:
    """``["a=1", "b=[0,1]"]`` -> ``{"a": 1, "b": [0, 1]}`` (values parsed as YAML)."""
    fields = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise ValueError(f"expected FIELD=VALUE, got {pair!r}")
        fields[name] = _yaml_value(value, f"the value of {name}")
    return fields


def _yaml_value(text: str, what: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(
            f"{what} is not valid YAML ({problem}): {text!r}; quote text with spaces and close every [ and {{"
        ) from None


def read_config_file(path: str) -> dict:
    """The fields of a ``--config`` YAML file: a mapping of field names to values."""
    try:
        text = open(path).read()
    except IsADirectoryError:
        raise ValueError(f"--config {path} is a folder; expected a YAML file of FIELD: VALUE lines") from None
    fields = _yaml_value(text, f"--config {path}")
    if fields is None:
        return {}
    if not isinstance(fields, dict):
        raise ValueError(
            f"--config {path} holds a YAML {type(fields).__name__}; expected a mapping of FIELD: VALUE lines"
        )
    return fields


def run_experiment(args: argparse.Namespace) -> int:
    from lab import experiment, provenance, tensorboard

    fields = read_config_file(args.config) if args.config else {}
    fields.update(parse_fields(args.fields))
    if args.show_config:
        print(json.dumps(experiment.ExperimentConfig.from_dict(fields).to_dict(), indent=2))
        return 0
    # Checked before the run, so that an output that cannot be written fails before any training.
    if args.output:
        writes = {args.store: "the results store this command writes (--store)"} if args.store else None
        _check_json_output(args, keep=writes)
    results = _open_store(args)
    started_at, clock = provenance.utc_now(), time.monotonic()
    result = experiment.run(fields, progress=not args.no_progress)
    # A write that fails (a disk filled during the run) loses nothing: the result is printed all the same.
    unsaved = []
    if args.output:
        if (problem := _unsaved_output(result, args.output)) is not None:
            unsaved.append(problem)
        else:
            tensorboard.write_or_say(result.tensorboard_runs(Path(args.output).with_suffix(".tensorboard")))
    if results is not None:
        saved = _save_point(results, args.sweep, "lab run", result.config, result.record(), started_at, clock,
                            result.environment)  # fmt: skip
        unsaved += [saved] if saved else []
    summary = {name: {k: round(v, 4) for k, v in stats.items()} for name, stats in result.summary().items()}
    print(json.dumps({"config": result.config, "metrics": result.metrics, "summary": summary,
                      "wall_time_s": result.wall_time_s}, indent=2))
    return _done(unsaved)


def _open_store(args: argparse.Namespace) -> store.ResultsStore | None:
    """``--store``'s results database (created if new), checked before the run: a sweep name, room on its disk."""
    from lab import files, store, sweep

    if not args.store:
        return None
    sweep.check_name(args.sweep)
    results = store.ResultsStore(args.store)
    files.check_free_space(results.path.parent, f"--store {args.store}")
    return results


def _save_point(
    results: store.ResultsStore, sweep_name: str, notebook: str, parameters: dict[str, Any], record,
    started_at: str, clock: float, environment: dict[str, Any],
) -> str | None:  # fmt: skip
    """Save a finished run's ``record`` as a done point of ``sweep_name``; None, or why it was not saved."""
    from lab import provenance, store, sweep

    point_id = sweep.point_id(parameters)
    try:
        results.save(
            store.RunRow(
                sweep=sweep_name,
                point_id=point_id,
                notebook=notebook,
                parameters=parameters,
                status="done",
                payload=record.to_dict(),
                started_at=started_at,
                ended_at=provenance.utc_now(),
                duration_s=time.monotonic() - clock,
                versions=environment["versions"],
                git_commit=environment["git_commit"],
            )
        )
    except (store.StoreError, OSError) as error:
        return f"--store: {error}"
    # on stderr: stdout is the result's JSON, for other programs to read
    sys.stderr.write(f"saved as point {point_id} of sweep {sweep_name} in {results.path}\n")
    return None


def _check_json_output(args: argparse.Namespace, keep: dict[str, str] | None = None) -> None:
    """``--output``, before anything runs: a folder that can be written, a disk with room, and no file of another
    format there (a results store, say) unless ``--force``; never a file named in ``keep``."""
    from lab import files

    files.check_output_path(args.output, "--output")
    files.check_replaceable(args.output, "--output", "json", force=args.force, keep=keep)


def _unsaved_output(result, path: str) -> str | None:
    """Why ``result.save(path)`` failed (a disk filled during the run), or None when it saved."""
    try:
        result.save(path)
    except OSError as error:
        # A failed write names the file in its text (lab.files); another error (mkdir) in its filename.
        return f"--output: {error if error.filename else error.strerror or error}"
    return None


def _done(unsaved: Sequence[str]) -> int:
    """0, or the one-line error naming each write that failed, once the result is printed: nothing computed is lost."""
    if unsaved:
        sys.stdout.flush()  # the result first: the error that follows ends the command
        raise RuntimeError(
            f"the run finished and its result is printed above, but it was not saved: {'; '.join(unsaved)}"
        )
    return 0


# The sweep that `lab active --store` saves runs under, unless told otherwise.
ACTIVE_SWEEP = "active"


def add_active_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "active",
        help="pool-based active learning: a cold start, then train, score the pool and query, per budget",
        description="Run lab.active.run: `lab active strategy=margin cold_start=typiclust budgets=[10,20,40] "
        "setup=semi_supervised method=flexmatch model=cnn seeds=[0,1,2]`. The fields that are not the loop's "
        "(strategy, cold_start, budgets, initial, embeddings) are the learner's experiment config.",
    )
    parser.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="loop and learner config fields")
    parser.add_argument("--config", default=None, help="YAML file with config fields")
    parser.add_argument(
        "--output", default=None, metavar="FILE",
        help="also write the full result as JSON: selections per seed and round, the label curve, wall times",
    )  # fmt: skip
    parser.add_argument(
        "--store", default=None, metavar="PATH",
        help="also save the record (settings, label curve, selections) as a done point in this results database",
    )  # fmt: skip
    parser.add_argument(
        "--sweep", default=ACTIVE_SWEEP,
        help=f"the sweep the point is saved under with --store (default: {ACTIVE_SWEEP})",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true",
        help="replace an --output file that is not JSON (a results store, say); never the --store of the same run",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--report", nargs="+", default=None, metavar="RESULT",
        help="run nothing: compare the --output files of earlier runs (label curves, labels needed to reach --target)",
    )  # fmt: skip
    parser.add_argument(
        "--target", type=fraction, default=0.95, help="accuracy the report's table asks for (a fraction, default 0.95)"
    )
    parser.add_argument("--out", default="figures", help="folder for the report's label_curves.md and .png")
    parser.set_defaults(handler=run_active)


def report_active(args: argparse.Namespace) -> int:
    from lab import active, files, report

    results = []
    for path in args.report:
        try:
            results.append(active.ActiveResult(**json.loads(Path(path).read_text())))
        except (OSError, ValueError, TypeError) as error:
            raise ValueError(f"--report {path} is not the --output of a `lab active` run ({error})") from None
    files.check_output_path(args.out, "--out", folder=True)
    table, writers = report.label_curve_writers(results, args.target, Path(args.out))
    files.write_together(writers)  # both files or neither, as lab report writes its set
    print(table, end="")
    return 0


def run_active(args: argparse.Namespace) -> int:
    from lab import active, provenance

    if args.report:
        return report_active(args)
    fields = read_config_file(args.config) if args.config else {}
    fields.update(parse_fields(args.fields))
    config = active.ActiveConfig.from_dict(fields)  # refused here, before any data is loaded
    if args.output:
        writes = {args.store: "the results store this command writes (--store)"} if args.store else None
        _check_json_output(args, keep=writes)
    results = _open_store(args)
    started_at, clock = provenance.utc_now(), time.monotonic()
    result = active.run(config, progress=not args.no_progress)
    unsaved = [problem] if args.output and (problem := _unsaved_output(result, args.output)) is not None else []
    if results is not None:
        environment = provenance.environment(Path(active.__file__).parent)
        saved = _save_point(results, args.sweep, "lab active", result.config, result.record(), started_at, clock,
                            environment)  # fmt: skip
        unsaved += [saved] if saved else []
    summary = {name: [{k: round(v, 4) for k, v in stats.items()} for stats in per_budget]
               for name, per_budget in result.summary().items()}  # fmt: skip
    print(json.dumps({"budgets": result.budgets, "summary": summary, "wall_time_s": result.wall_time_s}, indent=2))
    return _done(unsaved)


def add_data_command(subparsers) -> None:
    from lab import data

    parser = subparsers.add_parser("data", help="find, download (opt-in) and describe datasets")
    parser.add_argument("action", choices=("info", "download"))
    parser.add_argument(
        "dataset", type=dataset_name, help=f"one of {', '.join(data.DATASETS)}, or your own data (csv:PATH, ...)"
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"folder with the dataset's files (read by {', '.join(data.DATA_DIR_DATASETS)})",
    )
    parser.set_defaults(handler=run_data)


def dataset_name(text: str) -> str:
    """An argparse type: ``text`` if it names a dataset (:func:`lab.data.check_name`)."""
    from lab import data

    try:
        return data.check_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_data(args: argparse.Namespace) -> int:
    from lab import data

    kwargs = {} if args.data_dir is None else {"data_dir": args.data_dir}
    if args.dataset in data.DATA_DIR_DATASETS:
        kwargs["download"] = args.action == "download"
    dataset = data.load(args.dataset, **kwargs)
    info = {
        "name": dataset.name,
        "source": dataset.source,
        "input_shape": list(dataset.input_shape),
        "classes": list(dataset.class_names),
        "train": int(len(dataset.y_train)),
        "test": int(len(dataset.y_test)),
    }
    print(json.dumps(info, indent=2))
    return 0


def add_sweep_command(
    subparsers: argparse._SubParsersAction, validate: Callable[[dict[str, Any]], None] | None = None
) -> argparse.ArgumentParser:
    """Add ``lab sweep``; ``validate`` checks every point before any run."""
    from lab import sweep

    parser = subparsers.add_parser(
        "sweep",
        help="run a notebook over a grid of parameters (papermill), saving results in runs/results.db",
        description="Run a notebook once per point of a parameter grid with papermill. Each result is saved in "
        "<runs-dir>/results.db as its run ends; running the same --name again skips the points already done.",
        epilog="example: lab sweep notebooks/02_semi_supervised.ipynb --name ssl-digits "
        "-p method fixmatch,pseudo_label -p labels_per_class 1,2,4,10 -p seed 0:5 --workers 2",
    )
    parser.add_argument("notebook", help="the notebook to run; it needs a cell tagged 'parameters'")
    parser.add_argument(
        "-p", "--parameter", nargs=2, action="append", default=[], dest="parameters", metavar=("NAME", "VALUES"),
        help="a grid axis: comma-separated values and integer ranges a:b (b excluded); repeat for more axes",
    )  # fmt: skip
    parser.add_argument(
        "--grid", metavar="FILE", help="YAML mapping of parameter names to lists of values (the same forms as -p)"
    )
    parser.add_argument("--name", required=True, help="sweep name; running the same name again resumes the sweep")
    parser.add_argument("--runs-dir", default="runs", help="where notebooks, logs and results.db go (default: runs)")
    parser.add_argument(
        "--workers", type=int, default=None, help="runs at once (default: 1; with --scheduler, the cluster's threads)"
    )
    parser.add_argument(
        "--executor", choices=sweep.EXECUTORS, default="local", help="local process pool or Dask (default: local)"
    )
    parser.add_argument(
        "--scheduler", metavar="ADDRESS", help="Dask scheduler, e.g. tcp://127.0.0.1:8786 (default: a local cluster)"
    )
    parser.add_argument("--retry-failed", action="store_true", help="run the points that failed before again")
    parser.set_defaults(handler=functools.partial(sweep_notebook, validate=validate))
    return parser


def sweep_notebook(args: argparse.Namespace, validate: Callable[[dict[str, Any]], None] | None) -> int:
    from lab import sweep

    summary = sweep.run_sweep(
        args.notebook,
        sweep.parse_grid(args.parameters, args.grid),
        name=args.name,
        runs_dir=args.runs_dir,
        workers=args.workers,
        executor=args.executor,
        scheduler=args.scheduler,
        retry_failed=args.retry_failed,
        validate=validate,
    )
    print(summary.describe())
    return 0 if summary.complete else 1


def _add_store_argument(parser: argparse.ArgumentParser) -> None:
    from lab import store

    parser.add_argument(
        "--store", default=str(store.DEFAULT_PATH), help=f"results database (default: {store.DEFAULT_PATH})"
    )


def add_runs_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``lab runs {list,show,export}``."""
    from lab import export

    parser = subparsers.add_parser("runs", help="list, inspect and export stored sweep results")
    _add_store_argument(parser)
    actions = parser.add_subparsers(dest="runs_command", required=True)

    list_parser = actions.add_parser("list", help="one line per sweep with its point counts by status")
    list_parser.set_defaults(handler=list_runs)

    show_parser = actions.add_parser("show", help="the points of a sweep, or the details of one point")
    show_parser.add_argument(
        "target", metavar="SWEEP_OR_POINT",
        help="a sweep name, or a point id (or a unique prefix of one), or SWEEP/POINT for a point of one sweep",
    )  # fmt: skip
    show_parser.set_defaults(handler=show_runs)

    export_parser = actions.add_parser("export", help="write the results as CSV or Parquet")
    export_parser.add_argument("--format", choices=export.FORMATS, default="csv")
    export_parser.add_argument("--output", required=True, metavar="FILE")
    export_parser.add_argument("--sweep", default=None, help="only this sweep (default: all)")
    export_parser.add_argument(
        "--force", action="store_true",
        help="replace an --output file of another format (a results store, say); never the store exported",
    )  # fmt: skip
    export_parser.set_defaults(handler=export_runs)
    return parser


def list_runs(args: argparse.Namespace) -> int:
    from lab import store

    sweeps = store.ResultsStore(args.store, create=False).sweeps()
    if sweeps.empty:
        print(f"{args.store} holds no sweeps yet")
    else:
        print(sweeps.to_string(index=False))
    return 0


def show_runs(args: argparse.Namespace) -> int:
    from lab import store

    results = store.ResultsStore(args.store, create=False)
    rows = results.rows(args.target)
    if rows:
        print(_points_table(rows).to_string(index=False))
        return 0
    sweep, in_sweep, prefix = args.target.rpartition("/")  # SWEEP/POINT names a point of one sweep
    matches = [row for row in results.find_points(prefix) if not in_sweep or row.sweep == sweep]
    if not matches:
        raise ValueError(
            f"{args.target!r} is neither a sweep nor a point id (or SWEEP/POINT) in {args.store}; "
            "`lab runs list` shows the sweeps"
        )
    if len(matches) > 1:
        raise ValueError(
            f"point id prefix {args.target!r} is ambiguous: "
            + ", ".join(f"{row.sweep}/{row.point_id}" for row in matches)
            + " (show one as SWEEP/POINT)"
        )
    print(_point_details(matches[0]))
    return 0


def _points_table(rows: list[store.RunRow]) -> pd.DataFrame:
    import pandas as pd

    lines = []
    for row in rows:
        accuracy = (row.payload or {}).get("metrics", {}).get("accuracy")
        line = {"point_id": row.point_id, "status": row.current_status()}
        # an active-learning run: its strategies and budgets (its accuracy is the last budget's)
        if active := (row.payload or {}).get("active"):
            line.update(strategy=f"{active['cold_start']}, then {active['strategy']}", budgets=str(active["budgets"]))
        line.update(
            parameters=json.dumps(row.parameters, sort_keys=True),
            accuracy=f"{seed_mean(accuracy):.4f}" if accuracy else "",
            duration_s="" if row.duration_s is None else f"{row.duration_s:.1f}",
            error=row.error.splitlines()[0][:80] if row.error else "",
        )
        lines.append(line)
    frame = pd.DataFrame(lines)
    return frame.fillna("") if "strategy" in frame.columns else frame


def _point_details(row: store.RunRow) -> str:
    lines = [
        f"sweep:           {row.sweep}",
        f"point:           {row.point_id}",
        f"status:          {row.current_status()}"
        + ("" if row.owner is None else f" (process {row.owner.pid} on {row.owner.host})"),
        f"notebook:        {row.notebook}",
        f"output notebook: {row.output_notebook}",
        f"log:             {row.log_path}",
        f"started / ended: {row.started_at} / {row.ended_at}"
        + ("" if row.duration_s is None else f" ({row.duration_s:.1f} s)"),
        f"git commit:      {row.git_commit or 'unknown (not run in a git work tree)'}",
        f"versions:        {json.dumps(row.versions, sort_keys=True)}",
        f"parameters:      {json.dumps(row.parameters, sort_keys=True)}",
    ]
    if row.payload:
        for name, values in row.payload["metrics"].items():
            lines.append(
                f"{name + ':':<17}{seed_mean(values):.4f} "
                f"(per seed {dict(zip(row.payload['seeds'], values, strict=True))})"
            )
        if row.payload.get("active"):
            lines += _active_details(row.payload["active"], row.payload["seeds"])
    if row.error:
        lines += [f"error:           {row.error}", "traceback:", row.traceback or ""]
    return "\n".join(lines)


def _active_details(active: dict[str, Any], seeds: list[int]) -> list[str]:
    """An active-learning point's settings, label curve (mean ± std over seeds per budget) and selections."""
    import numpy as np

    width = max(len(name) for name in ("labels", *active["curve"]))
    lines = [
        f"strategy:        {active['cold_start']} (cold start), then {active['strategy']}; "
        f"embeddings {active['embeddings']}",
        f"budgets:         {active['budgets']}" + (f" (from {len(active['initial'])} given)" * bool(active["initial"])),
        f"label curve:     {'labels':>{width}}" + "".join(f"{budget:>16}" for budget in active["budgets"]),
    ]
    for name, per_budget in active["curve"].items():
        cells = "".join(f"{f'{np.mean(v):.4f} ± {np.std(v):.4f}':>16}" for v in per_budget)
        lines.append(f"{'':17}{name:>{width}}{cells}")
    lines.append("selections:      (pool indices labeled per round)")
    for seed, rounds in zip(seeds, active["selections"], strict=True):
        for budget, picked in zip(active["budgets"], rounds, strict=True):
            lines.append(f"{'':17}seed {seed}, to {budget} labels: {picked}")
    return lines


def export_runs(args: argparse.Namespace) -> int:
    from lab import export

    written = export.export(args.output, format=args.format, sweep=args.sweep, path=args.store, force=args.force)
    print(f"wrote {written}")
    return 0


def add_report_command(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``lab report``."""
    from lab import report

    parser = subparsers.add_parser(
        "report", help="figures and a summary table (Markdown, CSV) from stored sweep results"
    )
    parser.add_argument("--sweep", default=None, help="only this sweep (default: every done point in the store)")
    parser.add_argument(
        "--out", default=str(report.DEFAULT_OUT_DIR), help=f"output folder (default: {report.DEFAULT_OUT_DIR})"
    )
    parser.add_argument(
        "--target", type=fraction, default=report.DEFAULT_TARGET,
        help="for active-learning runs: the accuracy whose labels needed the table lists "
        f"(a fraction, default {report.DEFAULT_TARGET})",
    )  # fmt: skip
    _add_store_argument(parser)
    parser.set_defaults(handler=write_report)
    return parser


def write_report(args: argparse.Namespace) -> int:
    from lab import files, report, store

    files.check_output_path(args.out, "--out", folder=True)
    frame = store.load(args.sweep, path=args.store)
    if args.sweep is not None and frame.empty:
        raise ValueError(f"no sweep named {args.sweep!r} in {args.store}; `lab runs list` shows the sweeps")
    written = report.build_report(frame, args.out, target=args.target)
    for path in written:
        print(f"wrote {path}")
    if Path(args.out) / "summary.md" in written:
        table = report.summary_table(frame)
        apart = [key for key in report.ORIGIN_KEYS if key in table.columns]
        if apart:
            sys.stderr.write(
                f"note: configurations stored by more than one {' or '.join(apart)} are not pooled: one row per "
                f"{' and '.join(apart)}" + ("; --sweep NAME reports one sweep\n" if "sweep" in apart else "\n")
            )
        print()
        print(report.summary_markdown(table))
    if Path(args.out) / "label_curves.md" in written:
        print()
        print((Path(args.out) / "label_curves.md").read_text(encoding="utf-8"))
    return 0


def validate_point(parameters: dict[str, Any]) -> None:
    """A sweep point's check before any run: its experiment fields, and its active-learning fields if it has any."""
    from lab import active, experiment

    experiment.validate_parameters(parameters)
    active.validate_parameters(parameters)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lab",
        description="lab: label-efficient deep learning in JAX. Train, run experiments, sweep notebooks over "
        "parameter grids, and report their results.",
    )
    parser.add_argument(
        "--debug", action="store_true", help=f"show the Python traceback of an error (or set {DEBUG_VARIABLE}=1)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_command(subparsers)
    add_run_command(subparsers)
    add_active_command(subparsers)
    add_data_command(subparsers)
    add_sweep_command(subparsers, validate=validate_point)
    add_runs_command(subparsers)
    add_report_command(subparsers)
    return parser


def parse_arguments(parser: argparse.ArgumentParser, arguments: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args(arguments)``, except that ``lab run``'s FIELD=VALUE pairs may also follow its options:
    ``lab run model=mlp --no-progress setup=supervised`` (argparse reads a list of positionals in one piece)."""
    args, extras = parser.parse_known_args(arguments)
    if extras and hasattr(args, "fields") and not any(extra.startswith("-") for extra in extras):
        args.fields += extras  # after the first pairs, in order: a field given twice keeps its last value
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


DEBUG_VARIABLE = "LAB_DEBUG"


# Errors whose message is written for the user; any other is a bug or an unforeseen input, named by its type.
_USER_ERRORS = (ValueError, LookupError, OSError, RuntimeError, ImportError)


def error_line(error: BaseException) -> str:
    """What the CLI prints for ``error``: its message, or for an unforeseen error its type, message and
    where to find the traceback."""
    message = str(error).strip()
    if isinstance(error, _USER_ERRORS) and message:
        return message
    return f"{type(error).__name__}: {message} (--debug shows the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``lab`` command. Every error ends in one message and exit status 2 (130 for Ctrl-C);
    ``--debug`` or ``LAB_DEBUG=1`` shows the traceback instead."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in arguments or os.environ.get(DEBUG_VARIABLE, "") not in ("", "0")
    command = next((word for word in arguments if not word.startswith("-")), "")
    try:
        args = parse_arguments(build_parser(), arguments)
        return args.handler(args)
    except SystemExit as exit:  # argparse's own: --help (0) or a bad argument (2, its one line printed)
        return exit.code if isinstance(exit.code, int) else 2
    except KeyboardInterrupt:
        if debug:
            raise
        # A checkpoint save that Ctrl-C cut short fails in orbax's threads as the process exits, and orbax
        # logs that with a traceback: the interruption is all there is to say.
        logging.getLogger("absl").disabled = True
        sys.stderr.write(f"lab {command}: interrupted; finished runs are saved, run the same command again to resume\n")
        return 130
    except Exception as error:
        if debug:
            raise
        sys.stderr.write(f"lab {command}: error: {error_line(error)}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
