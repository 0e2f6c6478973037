"""MBPP's test split as a benchmark: the shipped file, its prompts and its checker."""

import hashlib
import json

import pytest
from conftest import ROOT

from pipeline.evaluation import benchmarks, score
from pipeline.evaluation.benchmarks import BenchmarkError

SHIPPED = ROOT / "data" / "mbpp_test.jsonl"
MBPP = ROOT.parent / "shared" / "data" / "mbpp.jsonl"
SHIPPED_SHA256 = "9bcaa67d5c2943e95eb9d9127e844f0551a77ac910c664aa45a4ebd75d239bd9"


@pytest.fixture(scope="module")
def problems():
    return benchmarks.load("mbpp", path=SHIPPED)


def test_shipped_file_is_tasks_11_to_510_unchanged():
    data = SHIPPED.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SHIPPED_SHA256
    ids = [json.loads(line)["task_id"] for line in data.splitlines()]
    assert ids == list(range(11, 511))


@pytest.mark.skipif(not MBPP.exists(), reason="../shared/data/mbpp.jsonl is not beside this checkout")
def test_shipped_lines_are_the_real_files_bytes():
    real = MBPP.read_bytes().split(b"\n")  # line i holds task i (the last line has no newline)
    assert SHIPPED.read_bytes() == b"".join(line + b"\n" for line in real[10:510])


def test_problems_have_humaneval_shape(problems):
    assert len(problems) == 500 and problems[0]["task_id"] == "mbpp/11" and problems[-1]["task_id"] == "mbpp/510"
    p = problems[0]
    assert p["kind"] == "function" and p["benchmark"] == "mbpp"
    assert p["prompt"].startswith(f"def {p['entry_point']}(") and p["prompt"].rstrip().endswith('"""')
    assert "for i in range" not in p["prompt"]  # signature and docstring, never the reference body
    assert p["test"] == "\n" + "\n".join(p["record"]["test_list"]) + "\n"
    setup = next(q for q in problems if q["record"]["test_setup_code"])
    assert setup["test"].startswith(setup["record"]["test_setup_code"])


def test_every_reference_solution_passes_in_the_sandbox(problems):
    # 30 s: mbpp/123 (amicable numbers below 10,000) takes 11-13 s on a loaded 2-core machine;
    # this test is about correctness in the box, not speed (bench/execute.py measures that).
    verdicts = score.verdicts([(p, p["code"]) for p in problems], timeout_s=30, workers=2)
    failed = [(p["task_id"], v.detail) for p, v in zip(problems, verdicts, strict=False) if not v.passed]
    assert failed == []


def test_wrong_and_base_style_completions(problems):
    p = next(q for q in problems if q["task_id"] == "mbpp/11")  # remove_Occ(s, ch)
    right = (
        "    i = s.find(ch)\n    if i != -1:\n        s = s[:i] + s[i + 1:]\n"
        "    j = s.rfind(ch)\n    if j != -1:\n        s = s[:j] + s[j + 1:]\n    return s\n"
    )
    wrong = "    return s.replace(ch, '', 1)\n"  # removes only the first occurrence
    verdicts = score.verdicts([(p, right), (p, wrong), (p, "    return s\n")], timeout_s=10, workers=2)
    assert [v.passed for v in verdicts] == [True, False, False]
    assert "AssertionError" in verdicts[1].detail


def test_bad_file_names_file_line_and_field(tmp_path):
    good = SHIPPED.read_text().splitlines()[0]
    path = tmp_path / "mbpp.jsonl"
    path.write_text(good + "\n{broken\n")
    with pytest.raises(BenchmarkError, match=rf"{path}:2: not valid JSON"):
        benchmarks.load("mbpp", path=path)
    record = json.loads(good)
    del record["test_list"]
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(BenchmarkError, match=rf"{path}:1: field 'test_list' missing"):
        benchmarks.load("mbpp", path=path)
    path.write_text(json.dumps({**json.loads(good), "task_id": 600}) + "\n")
    with pytest.raises(BenchmarkError, match=rf"{path}:1: task_id 600 is not an MBPP test task"):
        benchmarks.load("mbpp", path=path)
    with pytest.raises(BenchmarkError, match="MBPP test file not found"):
        benchmarks.load("mbpp", path=tmp_path / "missing.jsonl")


def test_limit_and_unknown_benchmark():
    assert [p["task_id"] for p in benchmarks.load("mbpp", limit=3, path=SHIPPED)] == ["mbpp/11", "mbpp/12", "mbpp/13"]
    with pytest.raises(ValueError, match="unknown benchmark 'apps'; known: humaneval, mbpp, livecodebench"):
        benchmarks.load("apps")
