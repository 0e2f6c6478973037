"""The verdict's protocol end to end on constructed sample verdicts (no model): the eval stage's
comparison (``compare.benchmark_metrics``) feeding the gate, the sweep's Holm verdicts and
``ssd power``.

- T selection never sees the confirmation problems, and a case built so that choosing T on all
  problems promotes an adapter whose only gain is on the problems it was chosen on;
- the finish rate is compared with both models at the adapter's T_eval;
- simulated null adapters (identical per-problem pass rates at every T_eval) are promoted at most
  alpha of the time, within Monte-Carlo error; a known gain of the predicted detectable size is
  found about 80% of the time;
- Holm over sweep points.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import verdict_rows

from pipeline import artifacts, runs, sweep
from pipeline.artifacts import EvalMetrics
from pipeline.cli import main
from pipeline.evaluation import compare, stats
from pipeline.evaluation.benchmarks import Benchmark
from pipeline.gate import decide
from pipeline.recipe import Recipe, RecipeError, load_recipe

TEMPS = [0.2, 0.6, 1.0]


def _metrics(recipe: Recipe, problems: list[dict], rows: dict) -> EvalMetrics:
    cfg = recipe.evaluation
    bench = Benchmark("humaneval", problems, cfg.temperatures, cfg.n, None)
    return EvalMetrics(
        target="humaneval",
        adapter_serving="lora",
        benchmarks={"humaneval": compare.benchmark_metrics(recipe, bench, rows)},
    )


def _problems(count: int) -> list[dict]:
    return [{"task_id": f"HumanEval/{i}"} for i in range(count)]


def _recipe(**evaluation) -> Recipe:
    return Recipe(evaluation={"temperatures": TEMPS, **evaluation}, promotion={"guards": []})


def test_choosing_t_on_all_problems_would_promote_the_held_out_rule_does_not():
    recipe = _recipe()
    problems = _problems(60)
    ids = [p["task_id"] for p in problems]
    parts = stats.split(problems, recipe.evaluation.selection_fraction, recipe.evaluation.split_seed)
    base = {task: [i < 10] for i, task in enumerate(ids)}
    lucky = {task: [ok[0] or task in parts.selection] for task, ok in base.items()}  # a gain only where T is chosen
    rows = {
        (t, m): verdict_rows(lucky if (t, m) == (1.0, "adapter") else base) for t in TEMPS for m in ("base", "adapter")
    }

    # the old protocol: each model's best T on all problems, judged on the same problems
    scores = {key: {r["task_id"]: float(r["passed"]) for r in value} for key, value in rows.items()}
    t_all = stats.best_temperature({t: scores[t, "adapter"] for t in TEMPS}).temperature
    assert t_all == 1.0
    same_problems = stats.sign_flip_test(scores[0.2, "base"], scores[t_all, "adapter"])
    assert (
        same_problems.p_value < 0.001 and stats.sign_flip_interval(scores[0.2, "base"], scores[1.0, "adapter"]).low > 0
    )

    metrics = _metrics(recipe, problems, rows)
    bench = metrics.target_metrics
    assert bench.protocol.t_choice == "selection" and bench.adapter_best.temperature == 1.0  # chosen on selection
    assert bench.protocol.selection.problems == parts.selection
    assert bench.protocol.confirmation.problems == parts.confirmation and bench.delta.problems == 42
    assert bench.delta.value == 0.0 and bench.delta.p_value == 1.0
    decision = decide(metrics, recipe.promotion)
    assert not decision.promoted and any(r.startswith("FAIL") and "p = 1.0000" in r for r in decision.reasons)


def test_t_selection_never_sees_the_confirmation_problems():
    recipe = _recipe()
    problems = _problems(50)
    parts = stats.split(problems, 0.3, 0)
    rng = np.random.default_rng(1)
    selection = {t: {task: [bool(rng.random() < 0.2 + 0.2 * t)] for task in parts.selection} for t in TEMPS}
    chosen = set()
    for _ in range(12):  # anything at all on the confirmation part: the chosen T_eval does not move
        rows = {}
        for t in TEMPS:
            for m in ("base", "adapter"):
                confirm = {task: [bool(rng.random() < rng.random())] for task in parts.confirmation}
                rows[t, m] = verdict_rows({**selection[t], **confirm})
        bench = _metrics(recipe, problems, rows).target_metrics
        chosen.add((bench.base_best.temperature, bench.adapter_best.temperature))
        assert bench.base_best.pass_at_1 == pytest.approx(
            np.mean(
                [r["passed"] for r in rows[bench.base_best.temperature, "base"] if r["task_id"] in parts.confirmation]
            )
        )
    expected = stats.best_temperature({t: {k: float(v[0]) for k, v in selection[t].items()} for t in TEMPS})
    assert chosen == {(expected.temperature, expected.temperature)}


def test_pre_registered_t_eval_confirms_on_every_problem_and_is_validated(tmp_path):
    recipe = _recipe(t_eval={"base": 0.2, "adapter": 1.0})
    problems = _problems(20)
    rows = {(t, m): verdict_rows({p["task_id"]: [True] for p in problems}) for t in TEMPS for m in ("base", "adapter")}
    bench = _metrics(recipe, problems, rows).target_metrics
    assert bench.protocol.t_choice == "pre-registered" and bench.protocol.selection is None
    assert bench.delta.problems == 20 and (bench.base_best.temperature, bench.adapter_best.temperature) == (0.2, 1.0)
    assert "every problem confirms (20)" in bench.protocol.decided_by
    split_too = _metrics(_recipe(t_eval={"base": 0.2, "adapter": 1.0}, always_split=True), problems, rows)
    assert split_too.target_metrics.delta.problems == 14  # a sweep point keeps a selection part for choosing points
    single = _metrics(
        Recipe(evaluation={"temperatures": [0.6]}), problems, {k: v for k, v in rows.items() if k[0] == 0.6}
    )
    assert single.target_metrics.protocol.t_choice == "single" and single.target_metrics.delta.problems == 20
    path = tmp_path / "r.yaml"
    path.write_text("evaluation:\n  temperatures: [0.2, 0.6]\n  t_eval: {base: 0.2, adapter: 0.7}\n")
    with pytest.raises(RecipeError, match="t_eval.adapter 0.7 is not in temperatures"):
        load_recipe(path)


def test_finish_rate_is_compared_at_the_adapters_temperature_for_both_models():
    recipe = _recipe(t_eval={"base": 0.2, "adapter": 1.0})
    problems = _problems(40)
    ids = [p["task_id"] for p in problems]
    passed = {task: [True, False] for task in ids}
    finish = {
        (0.2, "base"): 0.5,  # the base at its own T finishes poorly ...
        (1.0, "base"): 1.0,  # ... but at the adapter's T it finishes everything
        (1.0, "adapter"): 0.8,
    }
    rows = {}
    for t in TEMPS:
        for m in ("base", "adapter"):
            share = finish.get((t, m), 1.0)
            done = {task: [i < share * len(ids), True] for i, task in enumerate(ids)}
            rows[t, m] = verdict_rows(passed, done)
    bench = _metrics(recipe, problems, rows).target_metrics
    # per sample: (0.8 x 40 + 40) / 80 = 0.9 for the adapter, 1.0 for the base at T=1.0
    assert bench.finish.value == pytest.approx(-0.1) and bench.finish.problems == 40
    assert bench.finish.ci_low < -0.05 < bench.finish.ci_high or bench.finish.ci_high < 0
    rule = [
        r
        for r in decide(
            EvalMetrics(target="humaneval", adapter_serving="lora", benchmarks={"humaneval": bench}), recipe.promotion
        ).reasons
        if "finish rate" in r
    ][0]
    assert rule.startswith("FAIL") and "at the adapter's T=1, both models: drop +0.100" in rule
    # comparing each model at its own T (the old rule) would have seen a gain: 0.75 -> 0.9
    grid = {row.temperature: row for row in bench.grid}
    assert grid[0.2].base.finish_rate == 0.75 and grid[1.0].adapter.finish_rate == 0.9


def _simulate(rng, recipe: Recipe, rates: np.ndarray, gain: float, draws: int) -> float:
    """Share of ``draws`` simulated adapters the gate promotes; ``rates[j, i]``: problem i's pass
    rate at T_eval j for the base, the adapter's is the same plus ``gain``."""
    cfg = recipe.evaluation
    problems = _problems(rates.shape[1])
    ids = [p["task_id"] for p in problems]
    promoted = 0
    for _ in range(draws):
        rows = {}
        for j, t in enumerate(cfg.temperatures):
            for m, add in (("base", 0.0), ("adapter", gain)):
                hits = rng.random((len(ids), cfg.n)) < np.clip(rates[j] + add, 0, 1)[:, None]
                rows[t, m] = verdict_rows(dict(zip(ids, hits.tolist(), strict=True)))
        promoted += decide(_metrics(recipe, problems, rows), recipe.promotion).promoted
    return promoted / draws


def test_gate_false_promotion_rate_on_null_adapters_is_at_most_alpha():
    """2,000 null adapters (the base's per-problem pass rate at every T_eval), each model's T chosen
    on the selection part: the gate promotes at most alpha of them, within Monte-Carlo error."""
    rng = np.random.default_rng(2026)
    recipe = Recipe(
        evaluation={"temperatures": [0.6, 1.0], "n": 2, "permutation_resamples": 1000, "bootstrap_resamples": 100},
        promotion={"guards": []},
    )
    base = rng.beta(0.4, 2.0, size=30)
    rates = np.stack([base, np.clip(base * 1.1, 0, 1)])
    draws = 2000
    rate = _simulate(rng, recipe, rates, 0.0, draws)
    alpha = recipe.promotion.alpha
    assert rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / draws), rate


def test_gate_power_on_a_known_gain_matches_the_sizing():
    """A uniform gain of the size ``stats.size`` says is detected with 80% power is promoted about
    that often (one T_eval, so every problem confirms)."""
    rng = np.random.default_rng(7)
    recipe = Recipe(
        evaluation={"temperatures": [0.6], "n": 4, "permutation_resamples": 2000, "bootstrap_resamples": 100},
        promotion={"guards": []},
    )
    rates = rng.beta(2.0, 5.0, size=(1, 80))
    sizing = stats.size(80, 4, float(rates.mean()), variance=float((rates * (1 - rates)).mean()))
    power = _simulate(rng, recipe, rates, sizing.detectable, 300)
    assert 0.7 <= power <= 0.9, (power, sizing)  # 300 draws: Monte-Carlo error about 0.023


def test_sweep_points_are_judged_with_holm_adjusted_p_values(tmp_path):
    recipe = Recipe(evaluation={"temperatures": [0.6]}, promotion={"guards": []})
    problems = _problems(40)
    ids = [p["task_id"] for p in problems]
    evaluated, manifest = [], {"benchmarks": ["humaneval"], "points": []}
    # a gain on 6 problems: exact p = 1/64 alone; a gain on 12: p = 1/4096; nothing
    for name, gained in (("small", 6), ("large", 12), ("none", 0), ("control", 12)):
        rows = {
            (0.6, "base"): verdict_rows({task: [False] for task in ids}),
            (0.6, "adapter"): verdict_rows({task: [i < gained] for i, task in enumerate(ids)}),
        }
        metrics = _metrics(recipe, problems, rows)
        run_dir = tmp_path / name
        artifacts.Manifest(
            stage="eval",
            key="k",
            params={},
            inputs={},
            outputs={},
            counts={},
            started_at="",
            wall_s=1.0,
            versions={},
            metrics=metrics,
        ).save(runs.manifest_path(run_dir, "eval"))
        entry = {"name": name, "results": sweep.point_results(run_dir, recipe)}
        manifest["points"].append(entry)
        evaluated.append((entry, run_dir, recipe))
    sweep.holm_verdicts(manifest, evaluated)
    holm = {e["name"]: e["results"].get("holm") for e in manifest["points"]}
    assert holm["control"] is None  # the negative control is not a candidate
    assert holm["small"]["candidates"] == 3
    assert holm["large"]["p_adjusted"] == pytest.approx(3 / 4096)
    assert holm["small"]["p_adjusted"] == pytest.approx(2 / 64)  # 1/64 x 2: still <= 0.05
    assert holm["none"]["p_adjusted"] == 1.0 and not holm["none"]["promoted"]
    assert holm["large"]["promoted"] and holm["small"]["promoted"]
    # with ten candidates like "small", the adjustment removes it: 1/64 x 10 > 0.05
    assert stats.holm({f"p{i}": 1 / 64 for i in range(10)})["p0"] > 0.05


def test_ssd_power_reports_the_detectable_gain_and_warns_for_a_small_guard(capsys):
    assert main(["power", "--problems", "164", "--n", "4", "--pass-rate", "0.03", "--guard", "100:1:0.35"]) == 0
    out = capsys.readouterr().out
    expected = stats.size(164, 4, 0.03).detectable
    assert "164 confirmation problems x 4 samples" in out and f"{expected:.4f}" in out
    assert "WARNING: this guard cannot detect its own threshold (max_regression 0.02 < " in out
    assert main(["power", "--problems", "164", "--n", "4", "--pass-rate", "0.03", "--selection-fraction", "0.3"]) == 0
    assert "115 confirmation problems" in capsys.readouterr().out
    assert main(["power", "--problems", "164", "--pass-rate", "0.03", "--guard", "100:1"]) == 2
    # the observed spread of pass rates over problems (most never pass): a smaller variance, a smaller gain found
    args = ["power", "--problems", "664", "--n", "4", "--pass-rate", "0.03"]
    assert main([*args, "--variance", "0.006"]) == 0
    out = capsys.readouterr().out
    found = stats.size(664, 4, 0.03, variance=0.006).detectable
    assert f"{found:.4f}" in out and "per-sample variance 0.006" in out and found < stats.size(664, 4, 0.03).detectable
    assert main([*args, "--variance", "0.05"]) == 2  # above p (1 - p): not a variance these rates can have
    assert "--variance 0.05: must be in [0, p (1 - p) = 0.0291]" in capsys.readouterr().err
