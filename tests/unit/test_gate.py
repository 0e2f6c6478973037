"""The promotion gate: each rule passes and fails on its own, and explains itself."""

from __future__ import annotations

import json

import pytest

from pipeline.artifacts import ArtifactError, Decision, EvalMetrics
from pipeline.gate import decide
from pipeline.recipe import PromotionConfig, Recipe


def _summary(pass1: float, finish_rate: float = 0.95) -> dict:
    return {
        "pass@1": pass1,
        "problems": 164,
        "samples": 164,
        "passed_samples": round(pass1 * 164),
        "finish_rate": finish_rate,
        "mean_completion_tokens": 120.0,
    }


def _bench(
    grid: dict[float, tuple[float, float]],
    delta_ci: tuple[float, float] = (0.01, 0.05),
    finish=None,
    p_value: float = 0.01,
) -> dict:
    """A benchmark entry as metrics.json holds it, from {T: (base pass@1, adapter pass@1)}; each
    model's T_eval is its best in the grid and the confirmation numbers are the grid's."""
    finish = finish or {}
    rows = [
        {
            "temperature": t,
            "base": _summary(b, finish.get(("base", t), 0.95)),
            "adapter": _summary(a, finish.get(("adapter", t), 0.95)),
            "delta": {"value": a - b, "ci_low": a - b - 0.02, "ci_high": a - b + 0.02},
        }
        for t, (b, a) in grid.items()
    ]
    base_t = max(grid, key=lambda t: grid[t][0])
    adapter_t = max(grid, key=lambda t: grid[t][1])
    base_best, adapter_best = grid[base_t][0], grid[adapter_t][1]
    finish_change = finish.get(("adapter", adapter_t), 0.95) - finish.get(("base", adapter_t), 0.95)
    return {
        "grid": rows,
        "base_best": {"temperature": base_t, "pass@1": base_best},
        "adapter_best": {"temperature": adapter_t, "pass@1": adapter_best},
        "delta": {
            "value": adapter_best - base_best,
            "ci_low": delta_ci[0],
            "ci_high": delta_ci[1],
            "resamples": 20000,
            "seed": 0,
            "problems": 115,
            "p_value": p_value,
            "discordant": 12,
            "exact": True,
        },
        "identical_completions": 0,
        "finish": {
            "value": finish_change,
            "ci_low": finish_change - 0.03,
            "ci_high": finish_change + 0.03,
            "problems": 115,
        },
    }


def _layout(**overrides) -> dict:
    """metrics.json's layout where every rule passes: adapter better on humaneval, mbpp steady."""
    metrics = {
        "target": "humaneval",
        "adapter_serving": "lora",
        "merge_check": None,
        "benchmarks": {
            "humaneval": _bench({0.7: (0.30, 0.33), 1.0: (0.28, 0.36)}, delta_ci=(0.01, 0.11)),
            "mbpp": _bench({0.7: (0.40, 0.40), 1.0: (0.38, 0.39)}, delta_ci=(-0.015, 0.03)),
        },
    }
    metrics["benchmarks"].update(overrides)
    return metrics


def _metrics(**overrides) -> EvalMetrics:
    return EvalMetrics.model_validate(_layout(**overrides))


GUARDED = PromotionConfig(guards=["mbpp"])
UNGUARDED = PromotionConfig(guards=[])


def _reason(decision: Decision, needle: str) -> str:
    found = [r for r in decision.reasons if needle in r]
    assert len(found) == 1, decision.reasons
    return found[0]


def test_all_rules_pass_and_each_gives_a_reason():
    decision = decide(_metrics(), GUARDED)
    assert decision.promoted
    assert len(decision.reasons) == 6  # five rules and the champion's (none here: a first cycle)
    assert all(r.startswith("pass: ") for r in decision.reasons)
    delta = _reason(decision, "pass@1 delta")
    # each model at its own best temperature: base 0.30 at T=0.7, adapter 0.36 at T=1
    assert "+0.0600" in delta and "T=0.7" in delta and "T=1" in delta
    assert decision.name is None and decision.version is None  # the promote stage fills them in


def test_delta_rule():
    tie = _metrics(humaneval=_bench({0.7: (0.30, 0.30)}, delta_ci=(0.01, 0.02)))
    decision = decide(tie, UNGUARDED)
    assert not decision.promoted
    assert _reason(decision, "pass@1 delta").startswith("FAIL: ") and "is not above min_delta 0" in decision.reasons[0]

    small = _metrics(humaneval=_bench({0.7: (0.30, 0.32)}, delta_ci=(0.01, 0.03)))
    assert decide(small, PromotionConfig(guards=[], min_delta=0.01)).promoted
    # exactly the threshold is not above it, float noise notwithstanding (0.32 - 0.30 != 0.02 in floats)
    failed = decide(small, PromotionConfig(guards=[], min_delta=0.02))
    assert not failed.promoted and _reason(failed, "pass@1 delta").startswith("FAIL")
    assert _reason(failed, "delta CI").startswith("pass")


def test_ci_rule():
    metrics = _metrics(humaneval=_bench({0.7: (0.30, 0.34)}, delta_ci=(-0.01, 0.09)))
    decision = decide(metrics, UNGUARDED)
    assert not decision.promoted
    assert _reason(decision, "pass@1 delta").startswith("pass")
    ci = _reason(decision, "delta CI")
    assert ci.startswith("FAIL") and "[-0.0100, +0.0900]" in ci
    assert decide(metrics, PromotionConfig(guards=[], min_ci_lower=-0.02)).promoted


def test_guard_rule_is_non_inferiority():
    """A guard passes only when the lower bound of its paired delta is above -max_regression."""
    regressed = _metrics(mbpp=_bench({0.7: (0.40, 0.36), 1.0: (0.38, 0.37)}, delta_ci=(-0.07, -0.01)))
    decision = decide(regressed, GUARDED)
    assert not decision.promoted
    guard = _reason(decision, "guard mbpp")
    assert (
        guard.startswith("FAIL")
        and "95% CI [-0.0700, -0.0100], lower bound is not above -max_regression -0.02" in guard
    )
    assert decide(regressed, PromotionConfig(guards=["mbpp"], max_regression=0.08)).promoted
    # no drop at all, but a guard too noisy to rule out a drop of the margin: not shown non-inferior
    noisy = _metrics(mbpp=_bench({0.7: (0.40, 0.40)}, delta_ci=(-0.05, 0.05)))
    assert _reason(decide(noisy, GUARDED), "guard mbpp").startswith("FAIL")
    # a small, precisely measured drop inside the margin passes (the old point-estimate rule would too)
    small = _metrics(mbpp=_bench({0.7: (0.40, 0.39)}, delta_ci=(-0.015, -0.005)))
    assert _reason(decide(small, GUARDED), "guard mbpp").startswith("pass")
    # without guards the regression is not looked at, and the reason says so
    unguarded = decide(regressed, UNGUARDED)
    assert unguarded.promoted and "promotion.guards is empty" in _reason(unguarded, "guard")
    # benchmark names may contain dots
    dotted = decide(
        _metrics(**{"mbpp.plus": _bench({0.7: (0.40, 0.36)}, delta_ci=(-0.08, 0.0))}),
        PromotionConfig(guards=["mbpp.plus"]),
    )
    assert "lower bound is not above -max_regression" in _reason(dotted, "guard mbpp.plus pass@1")


def test_guard_that_cannot_resolve_its_margin_says_so():
    layout = _bench({0.7: (0.40, 0.40)}, delta_ci=(-0.12, 0.12))
    layout["sizing"] = {
        "problems": 100,
        "n": 1,
        "pass_rate": 0.4,
        "sd": 0.69,
        "level": 0.025,
        "power": 0.8,
        "detectable": 0.19,
        "margin": 0.02,
        "harmless_pass": 0.05,
        "reaches_margin": False,
    }
    guard = _reason(decide(_metrics(mbpp=layout), GUARDED), "guard mbpp")
    assert guard.startswith("FAIL") and "cannot resolve its margin (smallest detectable change 0.1900)" in guard


def test_test_rule_needs_p_at_most_alpha():
    weak = _metrics(humaneval=_bench({0.7: (0.30, 0.33)}, delta_ci=(0.001, 0.06), p_value=0.0625))
    decision = decide(weak, UNGUARDED)
    assert not decision.promoted and _reason(decision, "delta CI").startswith("pass")
    test = _reason(decision, "sign-flip")
    assert (
        test.startswith("FAIL") and "one-sided p = 0.0625 > alpha 0.05" in test and "12 problems differ, exact" in test
    )
    assert decide(weak, PromotionConfig(guards=[], alpha=0.1)).promoted
    # a sweep judges by its Holm-adjusted p-value
    strong = _metrics()
    assert decide(strong, GUARDED).promoted
    adjusted = decide(strong, GUARDED, p_value=0.06)
    assert not adjusted.promoted and "Holm-adjusted one-sided p = 0.0600 > alpha" in _reason(adjusted, "sign-flip")


def test_metrics_written_before_the_protocol_fail_closed():
    layout = _layout()
    for key in ("p_value", "discordant", "exact", "problems"):
        del layout["benchmarks"]["humaneval"]["delta"][key]
    del layout["benchmarks"]["humaneval"]["finish"]
    decision = decide(EvalMetrics.model_validate(layout), GUARDED)
    assert not decision.promoted
    assert "no p-value" in _reason(decision, "p-value") and "rerun the eval stage" in _reason(decision, "p-value")
    assert "no paired finish rate" in _reason(decision, "finish rate")


def test_guard_that_was_not_evaluated_fails_closed():
    decision = decide(_metrics(), PromotionConfig(guards=["mbpp", "livecodebench"]))
    assert not decision.promoted
    missing = _reason(decision, "livecodebench")
    assert missing.startswith("FAIL") and "humaneval, mbpp" in missing and "promotion.guards" in missing
    assert _reason(decision, "guard mbpp").startswith("pass")


def test_finish_rate_rule_compares_both_models_at_the_adapters_temperature():
    # adapter best at T=1.0, where it finishes 85% of answers and the base 95%: a 10-point drop
    bench = _bench({0.7: (0.30, 0.33), 1.0: (0.28, 0.36)}, delta_ci=(0.01, 0.11), finish={("adapter", 1.0): 0.85})
    decision = decide(_metrics(humaneval=bench), UNGUARDED)
    assert not decision.promoted
    rate = _reason(decision, "finish rate")
    assert rate.startswith("FAIL") and "at the adapter's T=1, both models: drop +0.100" in rate
    assert decide(_metrics(humaneval=bench), PromotionConfig(guards=[], max_finish_rate_drop=0.1)).promoted
    # the base finishing poorly at its own best T does not excuse the adapter at another: only T=1.0 counts
    hidden = _bench(
        {0.7: (0.30, 0.33), 1.0: (0.28, 0.36)},
        delta_ci=(0.01, 0.11),
        finish={("base", 0.7): 0.80, ("base", 1.0): 0.97, ("adapter", 1.0): 0.86},
    )
    assert _reason(decide(_metrics(humaneval=hidden), UNGUARDED), "finish rate").startswith("FAIL")
    # a poor finish rate at a temperature that is not the adapter's does not matter
    other = _bench({0.7: (0.30, 0.33), 1.0: (0.28, 0.36)}, delta_ci=(0.01, 0.11), finish={("adapter", 0.7): 0.5})
    assert decide(_metrics(humaneval=other), UNGUARDED).promoted


def test_disabled_promotion_is_a_rule_of_the_gate():
    decision = decide(_metrics(), PromotionConfig(enabled=False, guards=["mbpp"]))
    assert not decision.promoted
    assert decision.reasons == ["promotion disabled in the recipe (promotion.enabled: false)"]


def test_default_guards_are_the_evaluated_benchmarks_after_the_target():
    """promotion.guards: null means every benchmark in metrics.json other than the target."""
    regressed = _metrics(mbpp=_bench({0.7: (0.40, 0.30)}, delta_ci=(-0.15, -0.05)))
    default = Recipe.model_validate({"evaluation": {"benchmarks": ["humaneval", "mbpp"]}}).promotion
    assert default.guards is None
    decision = decide(regressed, default)
    assert not decision.promoted and "guard mbpp" in _reason(decision, "guard")
    assert decide(regressed, PromotionConfig(guards=[])).promoted  # explicitly none


def _write(tmp_path, layout: dict):
    path = tmp_path / "runs" / "x" / "eval" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(layout))
    return path


def test_metrics_file_round_trips_in_its_layout(tmp_path):
    layout = _layout()
    path = _write(tmp_path, layout)
    metrics = EvalMetrics.load(path)
    assert decide(metrics, GUARDED).promoted
    metrics.save(path)
    assert json.loads(path.read_text()) == layout  # pass@k keys, no null resamples in grid deltas


@pytest.mark.parametrize(
    ("path", "field"),
    [
        (("benchmarks", "humaneval", "delta", "ci_low"), "benchmarks.humaneval.delta.ci_low"),
        (("benchmarks", "humaneval", "adapter_best"), "benchmarks.humaneval.adapter_best"),
        (("benchmarks", "humaneval", "grid", 0, "base", "finish_rate"), "benchmarks.humaneval.grid.0.base.finish_rate"),
        (("target",), "target"),
    ],
)
def test_missing_field_is_named(tmp_path, path, field):
    layout = _layout()
    node = layout
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    file = _write(tmp_path, layout)
    with pytest.raises(ArtifactError) as err:
        EvalMetrics.load(file)
    assert f"{file}: field {field}" in str(err.value)
    assert "rerun the stage that writes it" in str(err.value)


def test_best_temperature_missing_from_grid_and_bad_numbers(tmp_path):
    layout = _layout()
    layout["benchmarks"]["humaneval"]["adapter_best"]["temperature"] = 1.3
    missing_row = r"benchmarks.humaneval.adapter_best: no grid row at T_eval 1.3 \(grid: 0.7, 1\)"
    with pytest.raises(ArtifactError, match=missing_row):
        EvalMetrics.load(_write(tmp_path / "a", layout))
    layout = _layout()
    layout["benchmarks"]["humaneval"]["delta"]["ci_low"] = None
    with pytest.raises(ArtifactError, match=r"field benchmarks.humaneval.delta.ci_low: Input should be a valid number"):
        EvalMetrics.load(_write(tmp_path / "b", layout))
    layout = _layout()
    layout["target"] = "mbpp.plus"
    with pytest.raises(ArtifactError, match=r"target 'mbpp.plus' is not among the benchmarks \(humaneval, mbpp\)"):
        EvalMetrics.load(_write(tmp_path / "c", layout))


# --- champion vs challenger ------------------------------------------------------------------


def _with_champion(**versus) -> EvalMetrics:
    """The adapter beats the base on every rule; ``versus``: its comparisons with the champion."""
    layout = _layout()
    layout["champion"] = {"name": "coder", "version": "v0003", "adapter_sha256": "ab" * 32, "benchmarks": versus}
    return EvalMetrics.model_validate(layout)


def test_an_adapter_that_beats_the_base_but_not_the_champion_is_not_promoted():
    worse = _bench({0.7: (0.38, 0.33), 1.0: (0.36, 0.36)}, delta_ci=(-0.09, 0.01), p_value=0.9)
    steady = _bench({0.7: (0.40, 0.40), 1.0: (0.38, 0.39)}, delta_ci=(-0.015, 0.03))
    decision = decide(_with_champion(humaneval=worse, mbpp=steady), GUARDED)
    assert not decision.promoted
    vs_base = [r for r in decision.reasons if "vs champion" not in r]
    assert len(vs_base) == 5 and all(r.startswith("pass: ") for r in vs_base)  # it does beat the base
    delta = _reason(decision, "vs champion coder:v0003: humaneval pass@1 delta")
    assert delta.startswith("FAIL: ") and "champion 0.3800 at T=0.7 -> adapter 0.3600" in delta
    assert _reason(decision, "vs champion coder:v0003: humaneval paired sign-flip").startswith("FAIL: ")
    assert _reason(decision, "vs champion coder:v0003: guard mbpp").startswith("pass: ")


def test_an_adapter_that_beats_the_champion_by_every_rule_is_promoted():
    better = _bench({0.7: (0.31, 0.33), 1.0: (0.30, 0.36)}, delta_ci=(0.01, 0.09), p_value=0.02)
    steady = _bench({0.7: (0.40, 0.40), 1.0: (0.38, 0.39)}, delta_ci=(-0.015, 0.03))
    decision = decide(_with_champion(humaneval=better, mbpp=steady), GUARDED)
    assert decision.promoted and len(decision.reasons) == 10, decision.reasons


def test_a_guard_that_regresses_against_the_champion_blocks_promotion():
    better = _bench({0.7: (0.31, 0.33), 1.0: (0.30, 0.36)}, delta_ci=(0.01, 0.09), p_value=0.02)
    regressed = _bench({0.7: (0.45, 0.40), 1.0: (0.44, 0.39)}, delta_ci=(-0.09, -0.01))
    decision = decide(_with_champion(humaneval=better, mbpp=regressed), GUARDED)
    assert not decision.promoted
    assert _reason(decision, "vs champion coder:v0003: guard mbpp").startswith("FAIL: ")


def test_a_champion_that_could_not_be_evaluated_blocks_promotion_unless_the_recipe_opts_out():
    layout = _layout()
    why = "it was trained on google/other, this run's base model is x; ... set promotion.against_champion=false"
    layout["champion"] = {"name": "coder", "version": "v0001", "adapter_sha256": "cd" * 32, "skipped": why}
    metrics = EvalMetrics.model_validate(layout)
    decision = decide(metrics, GUARDED)
    assert not decision.promoted
    assert _reason(decision, "champion coder:v0001 was not evaluated").endswith(why)
    opted_out = decide(metrics, GUARDED.model_copy(update={"against_champion": False}))
    assert opted_out.promoted
    assert _reason(opted_out, "against_champion: false").startswith("pass: ")


def test_champion_metrics_round_trip_through_the_file(tmp_path):
    better = _bench({0.7: (0.31, 0.33), 1.0: (0.30, 0.36)}, delta_ci=(0.01, 0.09), p_value=0.02)
    metrics = _with_champion(humaneval=better)
    metrics.save(tmp_path / "metrics.json")
    again = EvalMetrics.load(tmp_path / "metrics.json")
    assert again == metrics and again.versus_champion().target_metrics.delta.p_value == 0.02
    assert "champion" not in json.loads(_metrics().model_dump_json())  # absent in a first cycle, not null
