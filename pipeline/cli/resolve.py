"""``ssd resolve MODEL_ID``: the local directory of a model id (an embedded or random model is built once)."""

from __future__ import annotations

import argparse

from pipeline.cli import EXIT_OK, setup_logging


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("resolve", help="print the local path of a model id (building it if needed)")
    p.add_argument("model", help="embedded:gemma3-270m, random:gemma4-tiny, a directory or a hub id")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from pipeline import models

    setup_logging()
    print(models.resolve(args.model))
    return EXIT_OK
