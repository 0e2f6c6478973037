"""``ssd run RECIPE``: sample, train, eval and promote in one go, then a summary and a report.

Each stage reuses its finished work, so a rerun of a failed or killed run resumes after the
stages that finished. Exit 0 promoted, 3 completed and not promoted, 1 a stage failed, 2 the
recipe or its inputs are invalid.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from pipeline.artifacts import Manifest
from pipeline.cli import EXIT_FAILED, EXIT_NOT_PROMOTED, EXIT_OK, load, log, recipe_text, run_dir_of, setup_logging
from pipeline.evaluation.sandbox import require_isolation
from pipeline.recipe import Recipe
from pipeline.runs import STAGES, RunBusyError, atomic_write_text, force_from, run_lock


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="sample, train, eval and promote, as the recipe says")
    p.add_argument("recipe", help="recipe YAML, e.g. recipes/default.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides: sampling.temperature=1.2")
    p.add_argument("--run-id", help="run directory name (default: <name>-<recipe hash>)")
    p.add_argument("--force", choices=STAGES, help="rerun this stage and every later one (their files are moved aside)")
    p.add_argument("--wait", action="store_true", help="if another ssd process holds the run directory, wait for it")
    p.set_defaults(func=command)


def stages():
    """The four stages in order; imported lazily so `ssd --help` stays fast."""
    from pipeline.stages import eval as evaluate
    from pipeline.stages import promote, sample, train

    return [("sample", sample.run), ("train", train.run), ("eval", evaluate.run), ("promote", promote.run)]


def check_leakage(recipe: Recipe) -> None:
    """Refuse a recipe whose training prompts overlap its evaluation problems (``LeakageError``)."""
    from pipeline.leakage import check_recipe

    counts = check_recipe(recipe)
    log.info("no leakage: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))


def track(tracker, name: str, manifest: Manifest) -> None:
    """Log what a stage recorded: throughput, training loss per step, metrics, the decision."""
    counts = manifest.counts
    scalars = {k: v for k, v in counts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracker.log({**scalars, "wall_s": manifest.wall_s}, stage=name)
    for step, loss in enumerate(counts.get("losses", []), 1):
        tracker.log({"loss": loss}, stage=name, step=step)
    if manifest.metrics is not None:
        for bench, result in manifest.metrics.benchmarks.items():
            tracker.log(
                {
                    f"{bench}/base_pass@1": result.best("base").pass_at_1,
                    f"{bench}/adapter_pass@1": result.best("adapter").pass_at_1,
                    f"{bench}/delta": result.delta.value,
                    f"{bench}/delta_ci_low": result.delta.ci_low,
                    f"{bench}/delta_ci_high": result.delta.ci_high,
                    **({f"{bench}/p_value": result.delta.p_value} if result.delta.p_value is not None else {}),
                },
                stage=name,
            )
    if manifest.decision is not None:
        tracker.log({"promoted": int(manifest.decision.promoted)}, stage=name)


def run_recipe(recipe: Recipe, text: str, force: str | None = None) -> tuple[Path, list[tuple[str, Manifest]]]:
    """Run the four stages of ``recipe`` (its YAML is ``text``) and write the report."""
    from pipeline import generation
    from pipeline.report.run import write_report
    from pipeline.tracking import Tracker

    run_dir = run_dir_of(recipe)
    handler = setup_logging(run_dir)
    try:
        if force:
            for moved in force_from(run_dir, force):
                log.info("--force %s: moved %s aside", force, moved)
        atomic_write_text(run_dir / "recipe.yaml", text)
        log.info("run directory: %s", run_dir)
        done = []
        config = recipe.model_dump(mode="json")
        with Tracker(run_dir, project=recipe.tracking.project, mode=recipe.tracking.mode, config=config) as tracker:
            for name, stage in stages():
                log.info("=== stage %s ===", name)
                try:
                    manifest = stage(recipe, run_dir)
                finally:
                    generation.close_engine()  # free the engine's memory before training, and between models
                done.append((name, manifest))
                track(tracker, name, manifest)
        md, html = write_report(run_dir)
        log.info("report: %s, %s", md, html)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    return run_dir, done


def summary(run_dir: Path, done: list[tuple[str, Manifest]]) -> str:
    """The table printed at the end of a run: wall time per stage, both models' best pass@1, the decision."""
    by_stage = dict(done)
    metrics, decision = by_stage["eval"].metrics, by_stage["promote"].decision
    lines = [
        f"run: {run_dir}",
        "",
        f"{'stage':<10}{'wall s':>10}",
        *(f"{name:<10}{m.wall_s:>10.1f}" for name, m in done),
        "",
    ]
    lines.append(f"{'benchmark':<14}{'model':<9}{'pass@1':>8}{'T_eval':>8}{'finished':>10}{'cut':>7}")
    for name, bench in metrics.benchmarks.items():
        for label in ("base", "adapter"):
            best = bench.best(label)
            summary_at_best = bench.at_best(label)
            cut = "-" if summary_at_best.cut_share is None else f"{summary_at_best.cut_share:.2f}"
            lines.append(
                f"{name:<14}{label:<9}{best.pass_at_1:>8.4f}{best.temperature:>8g}"
                f"{summary_at_best.finish_rate:>10.2f}{cut:>7}"
            )
        d = bench.delta
        test = f", p {d.p_value:.4f}" if d.p_value is not None else ""
        where = f" on {d.problems} confirmation problems" if d.problems else ""
        lines.append(
            f"{name:<14}{'delta':<9}{d.value:>+8.4f}   95% CI [{d.ci_low:+.4f}, {d.ci_high:+.4f}]{test}{where}"
        )
    lines.append("")
    verdict = f"PROMOTED as {decision.name}:{decision.version}" if decision.promoted else "not promoted"
    lines.append(f"decision: {verdict}")
    lines.extend(f"  - {reason}" for reason in decision.reasons)
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    recipe = load(args)
    setup_logging()
    check_leakage(recipe)
    if recipe.evaluation.require_isolation:  # before hours of sampling and training, not at eval
        require_isolation()
    text = recipe_text(recipe)
    started = time.time()
    run_dir = run_dir_of(recipe)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(run_dir, wait=args.wait):
            run_dir, done = run_recipe(recipe, text, force=args.force)
    except RunBusyError:
        raise
    except Exception:
        log.exception("the run failed; finished stages are kept and a rerun resumes after them")
        return EXIT_FAILED
    print(summary(run_dir, done))
    print(f"report: {run_dir / 'report.html'}")
    print(f"total wall time: {time.time() - started:.1f} s")
    return EXIT_OK if dict(done)["promote"].decision.promoted else EXIT_NOT_PROMOTED
