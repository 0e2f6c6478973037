"""Write ``lcb_fixture.jsonl``: hand-made problems in LiveCodeBench's ``code_generation_lite`` format.

    python tests/data/build_lcb_fixture.py

No real LiveCodeBench file is available here (see ../shared/data/README.md), so these records
are written by hand with the lite format's exact fields and encodings: ``public_test_cases`` and
``metadata`` are JSON strings, ``private_test_cases`` is base64(zlib(pickle(JSON string))), and
``metadata`` names ``func_name`` for LeetCode (functional) problems. The problems, statements
and tests are invented and their expected outputs computed by hand; the correct solutions in
``tests/test_lcb.py`` must pass them and the wrong ones must fail.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.evaluation.lcb_decode import encode_private_tests  # noqa: E402


def stdin_tests(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"input": i, "output": o, "testtype": "stdin"} for i, o in pairs]


def functional_tests(pairs: list[tuple[list, object]]) -> list[dict]:
    return [
        {"input": "\n".join(json.dumps(a) for a in args), "output": json.dumps(out), "testtype": "functional"}
        for args, out in pairs
    ]


def record(qid, title, content, platform, contest, date, difficulty, public, private, starter="", func=None):
    return {
        "question_title": title,
        "question_content": content,
        "platform": platform,
        "question_id": qid,
        "contest_id": contest,
        "contest_date": date,
        "starter_code": starter,
        "difficulty": difficulty,
        "public_test_cases": json.dumps(public),
        "private_test_cases": encode_private_tests(private),
        "metadata": json.dumps({"func_name": func} if func else {}),
    }


big = 10**18
RECORDS = [
    record(
        "abc900_a",
        "A. Add Two",
        "You are given integers A and B. Print A+B.\n\nInput\n\nA B\n\nOutput\n\nPrint the answer.",
        "atcoder",
        "abc900",
        "2025-02-15T00:00:00",
        "easy",
        stdin_tests([("1 2\n", "3\n"), ("10 -4\n", "6\n")]),
        stdin_tests(
            [("0 0\n", "0\n"), (f"{big} {big}\n", f"{2 * big}\n"), ("-5 -7\n", "-12\n"), ("123 877\n", "1000\n")]
        ),
    ),
    record(
        "2090_B",
        "B. Triangle Sums",
        "Given t test cases, each a single integer n, print 1+2+...+n for each on its own line.",
        "codeforces",
        "2090",
        "2025-03-10T00:00:00",
        "medium",
        stdin_tests([("3\n1\n2\n3\n", "1\n3\n6\n")]),
        stdin_tests(
            [("2\n10\n100\n", "55\n5050\n"), ("1\n100000\n", "5000050000\n"), ("4\n4\n5\n6\n7\n", "10\n15\n21\n28\n")]
        ),
    ),
    record(
        "abc901_c",
        "C. Mean",
        "Given N and N integers, print their mean with exactly 10 digits after the point.",
        "atcoder",
        "abc901",
        "2025-04-20T00:00:00",
        "hard",
        stdin_tests([("4\n1 2 3 4\n", "2.5000000000\n")]),
        stdin_tests([("3\n1 1 2\n", "1.3333333333\n"), ("1\n7\n", "7.0000000000\n"), ("2\n-1 2\n", "0.5000000000\n")]),
    ),
    record(
        "abc300_a",
        "A. Old Problem",
        "Print the input integer doubled.",
        "atcoder",
        "abc300",
        "2023-04-29T00:00:00",
        "easy",
        stdin_tests([("2\n", "4\n")]),
        stdin_tests([("0\n", "0\n"), ("-3\n", "-6\n")]),
    ),
    record(
        "3800",
        "max-pair-sum",
        "Return the largest sum of two distinct elements of nums.",
        "leetcode",
        "weekly-contest-440",
        "2025-03-01T14:30:00",
        "medium",
        functional_tests([([[1, 5, 3]], 8), ([[2, 2]], 4)]),
        functional_tests([([[-1, -2, -3]], -3), ([[0, 10, 10, 1]], 20), ([list(range(1000))], 1997)]),
        starter="class Solution:\n    def maxPairSum(self, nums: List[int]) -> int:\n        ",
        func="maxPairSum",
    ),
    record(
        "3801",
        "repeat-string",
        "Return s repeated k times.",
        "leetcode",
        "biweekly-contest-158",
        "2025-05-31T02:30:00",
        "easy",
        functional_tests([(["ab", 3], "ababab")]),
        functional_tests([(["x", 0], ""), (["xyz", 1], "xyz"), (["a", 5], "aaaaa")]),
        starter="class Solution:\n    def repeatString(self, s: str, k: int) -> str:\n        ",
        func="repeatString",
    ),
    record(
        "3802",
        "sorted-squares",
        "Return the squares of nums in non-decreasing order.",
        "leetcode",
        "weekly-contest-450",
        "2025-06-02T02:30:00",
        "hard",
        functional_tests([([[-2, 1, 3]], [1, 4, 9])]),
        functional_tests([([[]], []), ([[-3, -1, 0]], [0, 1, 9]), ([[5]], [25])]),
        starter="class Solution:\n    def sortedSquares(self, nums: List[int]) -> List[int]:\n        ",
        func="sortedSquares",
    ),
]

if __name__ == "__main__":
    out = Path(__file__).with_name("lcb_fixture.jsonl")
    out.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    print(f"wrote {len(RECORDS)} problems to {out}")
