"""``ssd entropy RUN_DIR``: the paper's locks and forks, measured at the same positions for base
and adapter (``pipeline/evaluation/mechanism.py``).

    ssd entropy checkpoints/runs/<run-id> [--problems 100] [--temperature T]

Both models score the base model's own evaluation samples of the target benchmark (the first
sample of each of the first ``--problems`` problems, at the base's T_eval unless ``--temperature``
says otherwise). Writes ``eval/mechanism.jsonl`` (per sequence: both models' entropy at every
completion token), ``eval/mechanism.json`` (per class of position: counts, means, the adapter's
change with a 95% interval over sequences) and refreshes the run report, which plots both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.cli import EXIT_OK, UsageError, positive_float, positive_int, setup_logging

RESULTS = "eval/mechanism.jsonl"
SUMMARY = "eval/mechanism.json"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("entropy", help="per-token entropy of base and adapter at the same positions")
    p.add_argument("run_dir", type=Path, help="a finished run directory, e.g. checkpoints/runs/default-1a2b3c4d")
    p.add_argument("--problems", type=positive_int, default=100, help="first N problems of the target (default 100)")
    p.add_argument("--temperature", type=positive_float, help="which base samples (default: the base's T_eval)")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline import models, runs
    from pipeline.artifacts import EvalMetrics
    from pipeline.evaluation import mechanism
    from pipeline.evaluation.benchmarks import load_benchmark
    from pipeline.recipe import load_recipe
    from pipeline.report.run import ResultFiles, write_report

    run_dir = args.run_dir
    for needed in ("recipe.yaml", "adapter", "eval/metrics.json"):
        if not (run_dir / needed).exists():
            raise UsageError(f"{run_dir / needed}: missing; `ssd entropy` needs a run whose eval stage finished")
    recipe = load_recipe(run_dir / "recipe.yaml")
    metrics = EvalMetrics.load(run_dir / "eval/metrics.json")
    target = metrics.target
    temperature = args.temperature or metrics.target_metrics.base_best.temperature
    files = ResultFiles(run_dir, recipe.evaluation.base_dir)
    rows = files.get(target, "base", temperature)
    if rows is None:
        raise UsageError(
            f"{run_dir}: no base samples of {target} at T_eval {temperature:g} "
            f"(looked for {files.base_dir / target}/base-T{temperature:g}.jsonl)"
        )
    setup_logging(run_dir)
    first: dict[str, dict] = {}
    for row in rows:
        first.setdefault(str(row["task_id"]), row)
    problems = [p for p in load_benchmark(recipe, target).problems if str(p["task_id"]) in first][: args.problems]
    texts = [(p["prompt"], first[str(p["task_id"])]["completion"]) for p in problems]

    started = time.time()
    model_path = models.resolve(recipe.model.id)
    scored = []
    measured = mechanism.entropies(model_path, run_dir / "adapter", texts, revision=recipe.model.revision)
    for problem, (base, tuned) in tqdm(zip(problems, measured, strict=True), total=len(texts), desc="entropy"):
        scored.append({"task_id": str(problem["task_id"]), "base": base, "adapter": tuned})
    summary = {
        "target": target,
        "temperature": temperature,
        "problems": len(scored),
        "adapter": runs.hash_path(run_dir / "adapter"),
        "wall_s": round(time.time() - started, 1),
        **mechanism.summarize(scored),
        **runs.code_version(("torch", "transformers", "peft"), ("evaluation/mechanism.py",)),
    }
    runs.atomic_write_text(
        run_dir / RESULTS,
        "".join(
            json.dumps({**r, "base": _rounded(r["base"]), "adapter": _rounded(r["adapter"])}) + "\n" for r in scored
        ),
    )
    runs.atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
    print(f"{len(scored)} base samples of {target} at T_eval {temperature:g}, scored by both models:")
    for cls, c in summary["classes"].items():
        if not c["positions"]:
            print(f"  {cls:5}: no positions")
            continue
        low, high = c["change_ci"]
        print(
            f"  {cls:5}: {c['positions']:6d} positions, entropy base {c['base_mean']:.3f} "
            f"adapter {c['adapter_mean']:.3f} change {c['change']:+.3f} [{low:+.3f}, {high:+.3f}], "
            f"sharper at {c['sharper_share']:.1%}"
        )
    md, _ = write_report(run_dir)
    print(f"wrote {run_dir / RESULTS}, {run_dir / SUMMARY}; report: {md}")
    return EXIT_OK


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 4) for v in values]
