"""``ssd train RECIPE``: only the train stage, on the run's samples (resumes from its last checkpoint);
``--list-targets`` shows what LoRA would train and trains nothing."""

from __future__ import annotations

import argparse
import json

from pipeline.cli import EXIT_FAILED, EXIT_OK, UsageError, load, log, run_dir_of, setup_logging
from pipeline.runs import RunBusyError, run_lock


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="only the train stage (on the run's samples), or --list-targets")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides: training.lora.r=32")
    p.add_argument("--run-id", help="run directory name (default: <name>-<recipe hash>)")
    p.add_argument(
        "--list-targets", action="store_true", help="list the modules and parameters LoRA will train; no training"
    )
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    recipe = load(args)
    setup_logging()
    if args.list_targets:
        from pipeline.training.targets import list_targets

        print(list_targets(recipe.model.id, recipe.training.lora, revision=recipe.model.revision).table())
        return EXIT_OK
    from pipeline.stages import train

    run_dir = run_dir_of(recipe)
    if not (run_dir / "samples.jsonl").is_file():
        raise UsageError(f"{run_dir / 'samples.jsonl'} not found: run `ssd sample {args.recipe}` first")
    setup_logging(run_dir)
    try:
        with run_lock(run_dir):
            manifest = train.run(recipe, run_dir)
    except RunBusyError:
        raise
    except Exception:
        log.exception("training failed; rerun the same command to resume from the last checkpoint")
        return EXIT_FAILED
    print(json.dumps({k: v for k, v in manifest.counts.items() if k != "losses"}, indent=2))
    return EXIT_OK
