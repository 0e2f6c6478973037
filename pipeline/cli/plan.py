"""``ssd plan RECIPE``: the memory a training run needs on the target device. Exit 0 it fits, 1 it does not."""

from __future__ import annotations

import argparse

from pipeline.cli import EXIT_FAILED, EXIT_OK, load, positive_float


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help="memory a training run needs on the target device, and whether it fits")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides: training.max_length=2048")
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    p.add_argument(
        "--device-gib", type=positive_float, help="device memory in GiB (default: training.device_gib or 80)"
    )
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from pipeline.training.plan import plan_recipe

    recipe = load(args)
    plan = plan_recipe(recipe, device_gib=args.device_gib or recipe.training.device_gib or 80.0)
    print(plan.table())
    return EXIT_OK if plan.fits else EXIT_FAILED
