"""The ``lab`` command line: ``lab train``, ``lab data``, and the subcommands that
other modules register (``sweep``, ``runs``, ``report``)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def add_train_command(subparsers) -> None:
    from lab import data, models, optim

    parser = subparsers.add_parser(
        "train", help="supervised training on a whole dataset; prints final test metrics as JSON"
    )
    parser.add_argument("--dataset", default="digits", choices=data.DATASETS)
    parser.add_argument("--model", default="mlp", choices=sorted(models.MODELS))
    parser.add_argument("--optimizer", default="adam", choices=optim.OPTIMIZERS)
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3)
    parser.add_argument("--schedule", default="constant", choices=optim.SCHEDULES)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--weight-decay", type=non_negative_float, default=0.0)
    parser.add_argument("--clip-norm", type=positive_float, default=None)
    parser.add_argument("--label-smoothing", type=non_negative_float, default=0.0)
    parser.add_argument("--steps", type=positive_int, default=2000)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--eval-every", type=positive_int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-parallel", action="store_true", help="shard each batch over all local devices")
    parser.add_argument(
        "--workdir", default=None, help="record the config and checkpoint here; resume from the latest checkpoint"
    )
    parser.add_argument(
        "--checkpoint-every", type=positive_int, default=500, help="steps between checkpoints (with --workdir)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from lab import experiment

    config = experiment.TrainConfig(
        dataset=args.dataset,
        model=args.model,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        clip_norm=args.clip_norm,
        label_smoothing=args.label_smoothing,
        steps=args.steps,
        batch_size=args.batch_size,
        eval_every=min(args.eval_every, args.steps),
        seed=args.seed,
        data_parallel=args.data_parallel,
    )
    result = experiment.train_and_evaluate(
        config, args.workdir, checkpoint_every=args.checkpoint_every, progress=not args.no_progress
    )
    print(json.dumps({"config": result["config"], "test": result["test"], "wall_time_s": result["wall_time_s"]}, indent=2))
    return 0


def add_run_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="one experiment (supervised, semi_supervised or transfer); prints per-seed metrics as JSON",
        description="Run lab.experiment.run with the given config fields, e.g. "
        "`lab run setup=semi_supervised method=fixmatch labels_per_class=4 seeds=[0,1,2]`. "
        "Values are read as YAML (numbers, lists, mappings); a --config YAML file gives defaults.",
    )
    parser.add_argument("fields", nargs="*", metavar="FIELD=VALUE", help="experiment config fields")
    parser.add_argument("--config", default=None, help="YAML file with config fields")
    parser.add_argument("--output", default=None, help="also write the full result as JSON here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    from lab import experiment

    fields = read_config_file(args.config) if args.config else {}
    fields.update(parse_fields(args.fields))
    if args.output:
        experiment.check_output(args.output)  # now, not after training
    result = experiment.run(fields, progress=not args.no_progress)
    if args.output:
        result.save(args.output)
    summary = {name: {k: round(v, 4) for k, v in stats.items()} for name, stats in result.summary().items()}
    print(json.dumps({"config": result.config, "metrics": result.metrics, "summary": summary,
                      "wall_time_s": result.wall_time_s}, indent=2))
    return 0


def add_data_command(subparsers) -> None:
    from lab import data

    parser = subparsers.add_parser("data", help="find, download (opt-in) and describe datasets")
    parser.add_argument("action", choices=("info", "download"))
    parser.add_argument("dataset", choices=data.DATASETS)
    parser.add_argument(
        "--data-dir", default=None, help=f"folder with the IDX files ({', '.join(data.DATA_DIR_DATASETS)})"
    )
    parser.set_defaults(handler=run_data)


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


def build_parser() -> argparse.ArgumentParser:
    from lab import experiment, report, store, sweep

    parser = argparse.ArgumentParser(prog="lab", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help=f"show the Python traceback of an error (or set {DEBUG_VARIABLE}=1)"
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_command(subparsers)
    add_run_command(subparsers)
    add_data_command(subparsers)
    sweep.register_cli(subparsers, validate=experiment.validate_parameters)
    store.register_cli(subparsers)
    report.register_cli(subparsers)
    return parser


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
        args = build_parser().parse_args(arguments)
        return args.handler(args)
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write(f"lab {command}: interrupted; finished runs are saved, run the same command again to resume\n")
        return 130
    except Exception as error:
        if debug:
            raise
        sys.stderr.write(f"lab {command}: error: {error_line(error)}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
