"""``ssd sweep RECIPE``: one ``ssd run`` cycle per grid point, the base evaluation shared, sweep.md/html.

Exit 0 every point completed, 1 a point failed (its finished stages are kept; a rerun resumes
it), 2 the recipe, a grid value or the inputs are invalid (no point was started).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline.cli import EXIT_FAILED, EXIT_OK, UsageError, load, recipe_text, setup_logging
from pipeline.cli.run import check_leakage, run_recipe


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep", help="one cycle per grid point (e.g. T_train values), base evaluation shared; sweep.md/html"
    )
    p.add_argument("recipe")
    p.add_argument(
        "overrides", nargs="*", help="dotted overrides for every point: evaluation.temperatures=[0.6,0.8,1.0]"
    )
    p.add_argument(
        "--grid", action="append", metavar="KEY=V1,V2", help="a grid axis (repeatable); adds to the recipe's sweep.grid"
    )
    p.add_argument("--control", action="store_true", help="add the control point: T_train 1.0, top-k off, top-p 1.0")
    p.add_argument("--sweep-id", help="sweep directory name under <runs_dir>/sweeps (default: the recipe's name)")
    p.add_argument("--wait", action="store_true", help="if another ssd process holds the sweep, wait for it")
    p.add_argument("--report-only", action="store_true", help="only rewrite sweep.md/sweep.html from sweep.json")
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from pipeline import sweep
    from pipeline.runs import run_lock

    recipe = load(args)
    grid = {**recipe.sweep.grid, **sweep.parse_grid(args.grid or [])}
    control = recipe.sweep.control or args.control
    sweep_dir = Path(recipe.runs_dir) / "sweeps" / (args.sweep_id or recipe.name)
    for name, overrides in sweep.expand(grid, control):  # every point's recipe must be valid before any starts
        sweep.point_recipe(recipe, name, overrides, sweep_dir)
    if args.report_only:
        if not (sweep_dir / "sweep.json").is_file():
            raise UsageError(f"{sweep_dir / 'sweep.json'} not found: the sweep has not started")
        md, page = sweep.rerender(sweep_dir)
        print(f"sweep report: {md}, {page}")
        return EXIT_OK
    setup_logging()
    check_leakage(recipe)
    handler = setup_logging(sweep_dir, "sweep.log")
    started = time.time()
    try:
        with run_lock(sweep_dir, wait=args.wait):
            manifest = sweep.run_sweep(
                recipe, sweep_dir, grid, control, lambda point: run_recipe(point, recipe_text(point))
            )
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    print((sweep_dir / "sweep.md").read_text())
    print(f"sweep: {sweep_dir / 'sweep.md'}, {sweep_dir / 'sweep.html'}")
    print(f"total wall time: {time.time() - started:.1f} s")
    return EXIT_OK if manifest["status"] == "complete" else EXIT_FAILED
