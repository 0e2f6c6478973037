"""LiveCodeBench: loading the lite format, filters, and verdicts of the sandboxed checker.

The fixture (tests/data/lcb_fixture.jsonl, built by tests/data/build_lcb_fixture.py) is
hand-made in the exact ``code_generation_lite`` format, private tests encoded the real way."""

import json

import pytest
from conftest import DATA

from pipeline.evaluation import benchmarks, score
from pipeline.evaluation.benchmarks import BenchmarkError
from pipeline.evaluation.lcb_decode import decode_private_tests, encode_private_tests
from pipeline.evaluation.sandbox.lcb_checker import stdout_mismatch

FIXTURE = DATA / "lcb_fixture.jsonl"
TIMEOUT = 3.0


@pytest.fixture(scope="module")
def problems():
    return {p["task_id"]: p for p in benchmarks.load("livecodebench", source=FIXTURE)}


def verdicts(problems, cases, style="chat"):
    """Judge (question_id, solution code) cases; chat style wraps each in a fenced block."""
    wrap = "Here is my solution.\n```python\n{}\n```\n" if style == "chat" else "{}"
    jobs = [(problems[qid], wrap.format(code)) for qid, code in cases]
    return score.verdicts(jobs, style=style, timeout_s=TIMEOUT, workers=2)


def test_fixture_is_the_lite_format():
    for line in FIXTURE.read_text().splitlines():
        record = json.loads(line)
        assert list(record) == list(benchmarks.LCB_FIELDS)
        assert all(isinstance(v, str) for v in record.values())
        assert isinstance(json.loads(record["public_test_cases"]), list)
        assert isinstance(json.loads(record["metadata"]), dict)
        with pytest.raises(json.JSONDecodeError):
            json.loads(record["private_test_cases"])  # encoded, not JSON
        assert decode_private_tests(record["private_test_cases"], record["question_id"])


def test_problems(problems):
    assert list(problems) == ["abc900_a", "2090_B", "abc901_c", "abc300_a", "3800", "3801", "3802"]
    stdin, functional = problems["abc900_a"], problems["3800"]
    assert stdin["kind"] == "stdin" and stdin["func_name"] is None and stdin["difficulty"] == "easy"
    assert [t["public"] for t in stdin["tests"]] == [True, True, False, False, False, False]
    assert functional["kind"] == "functional" and functional["func_name"] == "maxPairSum"
    assert functional["difficulty"] == "medium" and functional["platform"] == "leetcode"
    assert functional["tests"][0] == {"input": "[1, 5, 3]", "output": "8", "public": True}
    # the prompts are apple/ml-ssd's LiveCodeBench prompts
    assert "Read the inputs from stdin solve the problem" in stdin["prompt"] and "A+B" in stdin["prompt"]
    assert functional["prompt"].endswith(f"```python\n{functional['starter_code']}\n```")


def test_datasets_reader_gives_the_same_problems(problems):
    """The hub path reads through datasets' JSON builder; on the same file it must agree."""
    via_datasets = benchmarks.load("livecodebench", source=[str(FIXTURE)])
    assert via_datasets == list(problems.values())


def test_release_files_and_hub_addresses():
    assert benchmarks.lcb_release_files("release_v1") == ["test.jsonl"]
    assert benchmarks.lcb_release_files("release_v6") == ["test.jsonl"] + [f"test{i}.jsonl" for i in range(2, 7)]
    assert benchmarks.lcb_release_files("release_latest") == benchmarks.lcb_release_files("release_v6")
    assert benchmarks.lcb_release_files("v6") == ["test6.jsonl"]
    assert benchmarks.lcb_release_files("v1_v3") == ["test.jsonl", "test2.jsonl", "test3.jsonl"]
    assert benchmarks.lcb_hub_files("v5_v6", revision="abc123") == [
        "hf://datasets/livecodebench/code_generation_lite@abc123/test5.jsonl",
        "hf://datasets/livecodebench/code_generation_lite@abc123/test6.jsonl",
    ]
    for bad in ("release_v7", "v3_v2", "v7", "latest"):
        with pytest.raises(ValueError, match="unknown LiveCodeBench release"):
            benchmarks.lcb_release_files(bad)


def test_directory_source_reads_the_release_files(tmp_path):
    (tmp_path / "test5.jsonl").write_text(FIXTURE.read_text())
    with pytest.raises(BenchmarkError, match=r"release v5_v6 needs .*test6.jsonl"):
        benchmarks.load("livecodebench", source=tmp_path, release="v5_v6")
    (tmp_path / "test6.jsonl").write_text("")
    assert len(benchmarks.load("livecodebench", source=tmp_path, release="v5_v6")) == 7


def test_filters():
    def ids(**filters):
        return [p["task_id"] for p in benchmarks.load("livecodebench", source=FIXTURE, **filters)]

    # the paper's v6 window: inclusive days; 3801 is on 2025-05-31 at 02:30, 3802 on 2025-06-02
    assert ids(start_date="2025-02-01", end_date="2025-05-31") == ["abc900_a", "2090_B", "abc901_c", "3800", "3801"]
    assert ids(start_date="2025-03-01", end_date="2025-03-10") == ["2090_B", "3800"]
    assert ids(platforms=["leetcode"]) == ["3800", "3801", "3802"]
    assert ids(platforms="atcoder", difficulties=["easy"]) == ["abc900_a", "abc300_a"]
    assert ids(difficulties=["hard"], limit=1) == ["abc901_c"]
    with pytest.raises(ValueError, match=r"platforms: unknown \['topcoder'\]"):
        ids(platforms=["topcoder"])
    with pytest.raises(ValueError, match="start_date: expected a date YYYY-MM-DD"):
        ids(start_date="Feb 2025")
    with pytest.raises(BenchmarkError, match="no problems left after the filters"):
        ids(start_date="2030-01-01")


def test_bad_records_name_file_line_and_field(tmp_path):
    lines = FIXTURE.read_text().splitlines()
    path = tmp_path / "lcb.jsonl"

    def load_with(line_2: str):
        path.write_text(lines[0] + "\n" + line_2 + "\n")
        return benchmarks.load("livecodebench", source=path)

    record = json.loads(lines[4])
    with pytest.raises(BenchmarkError, match=rf"{path}:2: not valid JSON"):
        load_with(lines[4][:-10])
    with pytest.raises(BenchmarkError, match=rf"{path}:2: field 'starter_code' missing"):
        load_with(json.dumps({k: v for k, v in record.items() if k != "starter_code"}))
    with pytest.raises(BenchmarkError, match=rf"{path}:2: field 'difficulty' is 'expert'"):
        load_with(json.dumps({**record, "difficulty": "expert"}))
    with pytest.raises(BenchmarkError, match=rf"{path}:2: field 'contest_date' missing or not an ISO date"):
        load_with(json.dumps({**record, "contest_date": "yesterday"}))
    with pytest.raises(BenchmarkError, match=rf"{path}:2: problem 3800: private_test_cases: not base64"):
        load_with(json.dumps({**record, "private_test_cases": "%%%"}))
    bad_case = [{"input": "[1, 2]\n", "output": "3", "testtype": "functional"}]  # trailing newline: "" is not JSON
    # one bad problem never stops the others: it is kept, and its samples fail with the reason
    [_, kept] = load_with(json.dumps({**record, "private_test_cases": encode_private_tests(bad_case)}))
    assert "test 3: functional input or output is not readable JSON" in kept["unusable"]
    with pytest.raises(BenchmarkError, match=rf"{path}:2: duplicate question_id 'abc900_a' \(first at {path}:1\)"):
        load_with(lines[0])


STDIN_CORRECT = [
    ("abc900_a", "a, b = map(int, input().split())\nprint(a + b)"),
    (
        "abc900_a",
        "import sys\na, b = map(int, sys.stdin.buffer.read().split())\nsys.stdout.buffer.write(b'%d\\n' % (a + b))",
    ),
    ("abc900_a", "a, b = map(int, open(0).read().split())\nprint(a + b, end='   \\n\\n')"),  # trailing blanks
    ("abc900_a", "import os\na, b = map(int, os.read(0, 100).split())\nprint(a + b)\nexit(0)"),
    (
        "abc900_a",
        "import sys, threading\ndef main():\n    print(sum(map(int, sys.stdin.readline().split())))\n"
        "threading.stack_size(1 << 26)\nthreading.Thread(target=main).start()",
    ),
    (
        "abc900_a",
        "total = 0\ndef add(x):\n    global total\n    total += x\n"
        "for x in map(int, input().split()):\n    add(x)\nif __name__ == '__main__':\n    print(total)",
    ),
    # ^ a top-level name used through `global`: LiveCodeBench's wrapping in a function breaks this one
    ("2090_B", "t = int(input())\nfor _ in range(t):\n    n = int(input())\n    print(n * (n + 1) // 2)"),
    (
        "2090_B",
        "import sys\ndata = sys.stdin.read().split()\nprint('\\n'.join(str(int(x) * (int(x) + 1) // 2) for x in data[1:]))",
    ),
    ("abc901_c", "n = int(input())\na = list(map(int, input().split()))\nprint(f'{sum(a) / n:.10f}')"),
    (
        "abc901_c",
        "n = int(input())\na = list(map(int, input().split()))\nprint(f'{sum(a) / n:.10f}0000')",
    ),  # same Decimal
    (
        "abc901_c",
        "print(input() and ' ', end='')\nfrom statistics import mean\nprint(f'{mean(map(int, input().split())):.10f}')",
    ),
]
STDIN_WRONG = [
    (
        "abc900_a",
        "a, b = map(int, input().split())\nprint(a - b)",
        "test 1/6 (public): wrong answer: line 1: got '-1', expected '3'",
    ),
    ("abc900_a", "a, b = map(int, input().split())\nprint(min(a + b, 10**9))", "test 4/6 (private): wrong answer"),
    ("abc900_a", "a, b = map(int, input().split())\nprint(a + b)\nprint('done')", "2 output lines, expected 1"),
    ("abc900_a", "a, b = map(int, input().split())\nprint(a, '+', b, '=', a + b)", "wrong answer"),
    ("abc900_a", "print(int(input()))", "test 1/6 (public): runtime error (exit 1): ValueError"),
    ("abc900_a", "while True:\n    pass", f"test 1/6 (public): time limit exceeded ({TIMEOUT}s)"),
    (
        "abc900_a",
        "import sys\nsys.stdout.write('3')\nsys.stdout.flush()\nimport os\nos._exit(0)",
        "test 2/6 (public): wrong answer",
    ),
    ("2090_B", "t = int(input())\nfor _ in range(t):\n    n = int(input())\n    print(n * (n - 1) // 2)", "test 1/4"),
    (
        "abc901_c",
        "n = int(input())\na = list(map(int, input().split()))\nprint(sum(a) / n)",
        "test 2/4 (private): wrong answer: line 1: got '1.3333333333333333'",
    ),
    (
        "abc901_c",
        "n = int(input())\na = list(map(int, input().split()))\nprint(f'{sum(a) / n:.6f}')",
        "got '1.333333', expected '1.3333333333'",
    ),
    ("abc901_c", "print(undefined_name)", "runtime error (exit 1): NameError"),
]


def test_stdin_correct_solutions_pass(problems):
    results = verdicts(problems, STDIN_CORRECT)
    assert [(qid, v.detail) for (qid, _), v in zip(STDIN_CORRECT, results, strict=False) if not v.passed] == []


def test_stdin_wrong_solutions_fail_with_the_reason(problems):
    results = verdicts(problems, [(qid, code) for qid, code, _ in STDIN_WRONG])
    for (qid, code, reason), v in zip(STDIN_WRONG, results, strict=False):
        assert not v.passed, (qid, code)
        assert v.status == "failed" and reason in v.detail, (code, v.detail)


SOLUTION_3800 = "class Solution:\n    def maxPairSum(self, nums: List[int]) -> int:\n        a = sorted(nums)\n        return a[-1] + a[-2]"
FUNCTIONAL_CORRECT = [
    ("3800", SOLUTION_3800),
    (
        "3800",
        "from typing import List\nimport heapq\nclass Solution:\n    def maxPairSum(self, nums):\n"
        "        print('debug', nums)\n        return sum(heapq.nlargest(2, nums))",
    ),  # prints go elsewhere
    ("3801", "class Solution:\n    def repeatString(self, s: str, k: int) -> str:\n        return s * k"),
    (
        "3802",
        "class Solution:\n    def sortedSquares(self, nums: List[int]) -> List[int]:\n        return sorted(x * x for x in nums)",
    ),
    (
        "3802",
        "class Solution:\n    def sortedSquares(self, nums):\n        return tuple(sorted(x * x for x in nums))",
    ),  # tuple -> list
    (
        "3801",
        "class Solution:\n    def repeatString(self, s, k):\n        return s * k\n\n"
        "if __name__ == '__main__':\n    raise SystemExit('a test block must not run')",
    ),
]
FUNCTIONAL_WRONG = [
    (
        "3800",
        "class Solution:\n    def maxPairSum(self, nums):\n        return max(nums) * 2",
        "test 1/5 (public): wrong answer: got 10, expected 8",
    ),
    (
        "3800",
        "class Solution:\n    def maxPairSum(self, nums):\n        return sum(sorted(nums)[-2:]) if len(nums) < 100 else 0",
        "test 5/5 (private)",
    ),
    ("3801", "class Solution:\n    def repeatString(self, s, k):\n        return s * (k + 1)", "wrong answer"),
    (
        "3801",
        "class Solution:\n    def repeatString(self, s, k):\n        return [s * k]",
        "got ['ababab'], expected \"ababab\"",
    ),
    (
        "3802",
        "class Solution:\n    def sortedSquares(self, nums):\n        return [(x * x,) for x in sorted(nums, key=abs)]",
        "wrong answer",
    ),
    (
        "3802",
        "class Solution:\n    def sortedSquares(self, nums):\n        return {x * x for x in nums}",
        "wrong answer",
    ),
    (
        "3802",
        "class Always:\n    def __eq__(self, other):\n        return True\n"
        "class Solution:\n    def sortedSquares(self, nums):\n        return Always()",
        "runtime error: TypeError: returned a Always",
    ),
    (
        "3800",
        "class Solution:\n    def maxPairSum(self, nums):\n        while True:\n            pass",
        f"test 1/5 (public): time limit exceeded ({TIMEOUT}s)",
    ),
    (
        "3800",
        "class Solution:\n    def maxPairSum(self, nums):\n        return nums[5]",
        "test 1/5 (public): runtime error: IndexError",
    ),
    ("3800", "class Solution:\n    def otherName(self, nums):\n        return 8", "AttributeError"),
    ("3800", "class Solution:\n    def maxPairSum(self, nums)\n        return 8", "SyntaxError"),
]


def test_functional_correct_solutions_pass(problems):
    results = verdicts(problems, FUNCTIONAL_CORRECT)
    assert [(qid, v.detail) for (qid, _), v in zip(FUNCTIONAL_CORRECT, results, strict=False) if not v.passed] == []


def test_functional_wrong_solutions_fail_with_the_reason(problems):
    results = verdicts(problems, [(qid, code) for qid, code, _ in FUNCTIONAL_WRONG])
    for (qid, code, reason), v in zip(FUNCTIONAL_WRONG, results, strict=False):
        assert not v.passed, (qid, code)
        assert reason in v.detail, (code, v.detail)


def test_styles_for_livecodebench(problems):
    results = verdicts(problems, [("3800", "\n" + SOLUTION_3800 + "\n")], style="base")
    assert results[0].passed, results[0].detail
    [v] = score.verdicts([(problems["3800"], SOLUTION_3800)], style="chat", timeout_s=TIMEOUT)  # no fence
    assert not v.passed and "no complete fenced code block" in v.detail


def test_candidate_never_sees_expected_outputs(problems):
    """The expected output of the private test (10**18 + 10**18) is nowhere in the candidate's
    process: not in its arguments, environment, files or the memory it can read."""
    probe = (
        "import os, sys, gc\n"
        "needle = str(2 * 10**18)\n"
        "def leaks(items):\n"
        "    return [x[:40] for x in items if isinstance(x, str) and x is not needle and needle in x]\n"
        "found = leaks(open(f, errors='replace').read() for f in os.listdir('.'))\n"
        "found += leaks(sys.argv) + leaks(os.environ.values())\n"
        "for o in gc.get_objects():\n"
        "    found += leaks(o.values() if isinstance(o, dict) else o if isinstance(o, (list, tuple)) else ())\n"
        "a, b = map(int, input().split())\n"
        "print(a + b if not found else found)\n"
    )
    [v] = verdicts(problems, [("abc900_a", probe)])
    assert v.passed, v.detail


@pytest.mark.parametrize(
    "got,expected,mismatch",
    [
        ("3\n", "3", None),
        ("  1 2 3  \n\n", "1 2 3\n", None),  # whole output and each line stripped
        ("a\r\nb\n", "a\nb\n", None),
        ("1.50\n", "1.5\n", None),  # equal as decimals
        ("1e3", "1000", None),
        ("0.333333", "0.3333333", "line 1"),  # no tolerance: LiveCodeBench compares decimals exactly
        ("1  2", "1 2", None),  # split() on each line when the text differs
        ("1 2", "1 2 3", "line 1"),
        ("YES\nNO", "YES\nNO\nYES", "2 output lines, expected 3"),
        ("yes", "YES", "line 1"),  # case matters
        ("", "", None),
    ],
)
def test_stdout_comparison_follows_livecodebench(got, expected, mismatch):
    why = stdout_mismatch(got, expected)
    assert (why is None) if mismatch is None else (mismatch in why)
