"""``ssd``: the command line. The only code that parses argv, prints, or knows exit codes.

    ssd run RECIPE [KEY.SUB=VALUE ...] [--run-id ID]
    ssd sweep RECIPE [KEY.SUB=VALUE ...] [--grid KEY=V1,V2 ...] [--control] [--sweep-id ID]
    ssd sample RECIPE [KEY.SUB=VALUE ...] [--run-id ID] [--shard I/N | --merge N]
    ssd train RECIPE [KEY.SUB=VALUE ...] [--run-id ID] [--list-targets]
    ssd plan RECIPE [KEY.SUB=VALUE ...] [--device-gib GIB]
    ssd power --problems N --n N --pass-rate P [--selection-fraction F] [--guard PROBLEMS:N:P ...]
    ssd score --benchmark NAME SAMPLES.jsonl [--k 1 5] [--chat] [--lcb-path FILE]
    ssd registry list | show | rollback ...
    ssd export NAME[:VERSION] OUT [--format peft|merged|peft-per-expert]
    ssd serve NAME[:VERSION] [--port P] [--host H] [-- VLLM_ARGS ...]
    ssd resolve MODEL_ID
    ssd diff RUN_A RUN_B

One module per command (``pipeline/cli/<command>.py``: ``add_parser`` and the function it
runs); this one holds what they share: the exit codes, the logging set-up, loading a recipe,
and the mapping from errors to exit codes.

Exit codes of ``ssd run``: 0 the cycle completed and the adapter was promoted, 3 it completed
and was not promoted (a normal outcome: schedulers should treat it as success), 1 a stage
failed (finished stages are kept; a rerun resumes after them), 2 the recipe or its inputs are
invalid (nothing was started or written).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

from pipeline.artifacts import ArtifactError
from pipeline.deploy.export import ExportError
from pipeline.deploy.registry import RegistryError
from pipeline.deploy.serve import ServeError
from pipeline.evaluation.benchmarks import BenchmarkError
from pipeline.evaluation.sandbox import IsolationUnavailable
from pipeline.evaluation.score import SamplesError
from pipeline.leakage import LeakageError
from pipeline.models import MergeError
from pipeline.prompts import PromptError, load_source
from pipeline.recipe import Recipe, RecipeError, load_recipe
from pipeline.runs import RunBusyError, RunFileError
from pipeline.training.targets import TargetError

log = logging.getLogger("ssd")

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_NOT_PROMOTED = 0, 1, 2, 3
MESSAGE_CHARS = 4000  # of an error message printed: what it quotes from the input cannot flood a terminal


class UsageError(Exception):
    """Input a command cannot use, found by the command itself (exit 2)."""


class CommandFailed(Exception):
    """Work a command started that did not finish (exit 1); what it finished is kept."""


# The error-to-exit mapping. Commands raise; ``main`` prints ``error: <message>`` and returns the
# code. Exit 2: the input is unusable, nothing was started or written. Exit 1: started work
# failed. Any other exception is a bug and keeps its traceback.
INVALID = (UsageError, RecipeError, PromptError, LeakageError, BenchmarkError, SamplesError, TargetError)
INVALID += (RegistryError, ExportError, ServeError, IsolationUnavailable, RunFileError, ArtifactError)
FAILED = (CommandFailed, RunBusyError, MergeError, OSError)


def setup_logging(log_dir: Path | None = None, name: str = "run.log") -> logging.Handler | None:
    """Log to stderr, and to ``log_dir/name`` when given (the handler is returned for removal)."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S")
    if log_dir is None:
        return None
    log_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_dir / name)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    return handler


def load(args: argparse.Namespace) -> Recipe:
    """The validated recipe of a command's ``recipe``, ``overrides`` and ``--run-id``.

    A local prompt file is read here too, and the run and registry directories are checked,
    so that bad input fails before any work starts or any directory is made.
    """
    overrides = list(args.overrides)
    if args.run_id:
        overrides.append(f"run_id={args.run_id}")
    recipe = load_recipe(args.recipe, overrides)
    if recipe.prompts.source in ("jsonl", "mbpp"):
        load_source(recipe.prompts)
    check_dir(Path(recipe.runs_dir), f"runs_dir {recipe.runs_dir}")
    check_dir(Path(recipe.registry_dir), f"registry_dir {recipe.registry_dir}")
    return recipe


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (anything else exits 2 at parse time)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0. ``nan``, ``0``, negatives and ``inf`` parse as
    floats but make no sense as a time limit or a memory size (a ``nan`` timeout failed every
    program and still exited 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number above 0")
    return value


def check_dir(path: Path, what: str) -> None:
    """Refuse, before any work starts, a directory that could not be made or written: a file in
    the way (``out/x`` where ``out`` is a file) or no write permission. Nothing is created."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what}: {existing} is a file, not a directory; choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: {existing} is not writable; choose another path")


def recipe_text(recipe: Recipe) -> str:
    """The resolved recipe as YAML, as recorded in the run directory."""
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def run_dir_of(recipe: Recipe) -> Path:
    return Path(recipe.runs_dir) / recipe.resolved_run_id()


def _terminate(signum, _frame) -> None:
    """SIGTERM (a scheduler's stop, `kill`) unwinds like an error: the vLLM engine process is shut
    down in the stages' ``finally`` instead of being orphaned with its memory, and finished work
    is kept for the rerun."""
    raise SystemExit(128 + signum)


def build_parser() -> argparse.ArgumentParser:
    from pipeline.cli import (
        diff,
        entropy,
        export,
        plan,
        power,
        registry,
        resolve,
        run,
        sample,
        score,
        serve,
        sweep,
        train,
    )

    parser = argparse.ArgumentParser(prog="ssd", description="Simple self-distillation with LoRA.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (run, sweep, sample, train, plan, power, score, entropy, registry, export, serve, resolve, diff):
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough = None  # `ssd serve NAME -- --max-num-seqs 8`: what follows `--` goes to vLLM untouched
    if "--" in argv:
        argv, passthrough = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args, extra = parser.parse_known_args(argv)
    if passthrough is not None:
        if not hasattr(args, "passthrough"):
            parser.error(f"unrecognized arguments: -- {' '.join(passthrough)}")
        args.passthrough = passthrough
    # Dotted overrides may come after options too (`ssd run R --run-id X a.b=1`).
    stray = [a for a in extra if "=" not in a or a.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args)
    except INVALID as exc:
        print(f"error: {capped(str(exc))}", file=sys.stderr)
        return EXIT_INVALID
    except FAILED as exc:
        print(f"error: {capped(str(exc))}", file=sys.stderr)
        return EXIT_FAILED


def capped(message: str) -> str:
    """``message`` cut to ``MESSAGE_CHARS``, saying how much was left out."""
    if len(message) <= MESSAGE_CHARS:
        return message
    return f"{message[:MESSAGE_CHARS]}... ({len(message) - MESSAGE_CHARS} more characters)"
