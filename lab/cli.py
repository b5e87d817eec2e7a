"""The ``lab`` command line: ``lab train``, ``lab data``, and the subcommands that
other modules register (``sweep``, ``runs``, ``report``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
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
    parser.add_argument("--workdir", default=None, help="checkpoint here and resume from the latest checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from lab import train

    config = train.TrainConfig(
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
    result = train.train_and_evaluate(config, args.workdir, progress=not args.no_progress)
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
    import yaml

    fields = {}
    for pair in pairs:
        name, separator, value = pair.partition("=")
        if not separator or not name:
            raise ValueError(f"expected FIELD=VALUE, got {pair!r}")
        fields[name] = yaml.safe_load(value)
    return fields


def run_experiment(args: argparse.Namespace) -> int:
    import yaml

    from lab import experiment

    fields = {}
    if args.config:
        with open(args.config) as file:
            fields.update(yaml.safe_load(file) or {})
    fields.update(parse_fields(args.fields))
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
    parser.add_argument("--data-dir", default=None, help="folder with the IDX files (fashion_mnist, mnist)")
    parser.set_defaults(handler=run_data)


def run_data(args: argparse.Namespace) -> int:
    from lab import data

    kwargs = {}
    if args.dataset in ("fashion_mnist", "mnist"):
        kwargs = {"data_dir": args.data_dir, "download": args.action == "download"}
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
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_command(subparsers)
    add_run_command(subparsers)
    add_data_command(subparsers)
    sweep.register_cli(subparsers, validate=experiment.validate_parameters)
    store.register_cli(subparsers)
    report.register_cli(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        parser.exit(130, f"lab {args.command}: interrupted; finished runs are saved, run the same command again to resume\n")
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as error:
        parser.exit(2, f"lab {args.command}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
