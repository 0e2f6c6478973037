"""``ssd diff RUN_A RUN_B``: per stage, which parameters and inputs differ and how many outputs
(samples, adapter files, completions, verdicts, the decision) differ between two run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.cli import EXIT_OK, UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("diff", help="what differs between two runs, stage by stage")
    p.add_argument("run_a", type=Path, help="a run directory, e.g. checkpoints/runs/default-1a2b3c4d")
    p.add_argument("run_b", type=Path, help="another run directory")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from pipeline.report import diff

    try:
        stages = diff.diff(args.run_a, args.run_b)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    print(diff.render(args.run_a, args.run_b, stages), end="")
    return EXIT_OK
