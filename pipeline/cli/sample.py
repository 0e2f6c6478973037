"""``ssd sample RECIPE``: only the sample stage (resumable), or one shard of it, or the merge of the shards.

Shards of one run sample in parallel (one process or GPU each), each into its own file, and
take no run lock; ``--merge N`` joins them into ``samples.jsonl`` under the lock.
"""

from __future__ import annotations

import argparse
import json

from pipeline.cli import (
    EXIT_FAILED,
    EXIT_OK,
    UsageError,
    load,
    log,
    positive_int,
    recipe_text,
    run_dir_of,
    setup_logging,
)
from pipeline.runs import RunBusyError, atomic_write_text, run_lock


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="only the sample stage (resumable, shardable)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides: sampling.temperature=1.2")
    p.add_argument("--run-id", help="run directory name (default: <name>-<recipe hash>)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--shard", help="I/N: sample every N-th prompt starting at I (one process or GPU each)")
    group.add_argument("--merge", type=positive_int, metavar="N", help="join the N finished shards into samples.jsonl")
    p.set_defaults(func=command)


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` as ``(I, N)`` with ``0 <= I < N``."""
    try:
        index, count = (int(x) for x in text.split("/"))
        if not 0 <= index < count:
            raise ValueError
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4") from None
    return index, count


def command(args: argparse.Namespace) -> int:
    recipe = load(args)
    shard = parse_shard(args.shard) if args.shard else None
    from pipeline import generation
    from pipeline.stages import sample

    run_dir = run_dir_of(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir)
    atomic_write_text(run_dir / "recipe.yaml", recipe_text(recipe))
    try:
        if shard:
            counts = sample.run_shard(recipe, run_dir, *shard)
        else:
            with run_lock(run_dir):
                manifest = sample.merge(recipe, run_dir, args.merge) if args.merge else sample.run(recipe, run_dir)
            counts = manifest.counts
    except RunBusyError:
        raise
    except Exception:
        log.exception("sampling failed; what was sampled is kept and a rerun continues from it")
        return EXIT_FAILED
    finally:
        generation.close_engine()
    print(f"run: {run_dir}")
    print(json.dumps(counts, indent=2))
    return EXIT_OK
