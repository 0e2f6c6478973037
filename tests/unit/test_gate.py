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


def _bench(grid: dict[float, tuple[float, float]], delta_ci: tuple[float, float] = (0.01, 0.05), finish=None) -> dict:
    """A benchmark entry as metrics.json holds it, from {T: (base pass@1, adapter pass@1)}."""
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
    return {
        "grid": rows,
        "base_best": {"temperature": base_t, "pass@1": base_best},
        "adapter_best": {"temperature": adapter_t, "pass@1": adapter_best},
        "delta": {
            "value": adapter_best - base_best,
            "ci_low": delta_ci[0],
            "ci_high": delta_ci[1],
            "resamples": 10000,
            "seed": 0,
        },
        "identical_completions": 0,
    }


def _layout(**overrides) -> dict:
    """metrics.json's layout where every rule passes: adapter better on humaneval, mbpp steady."""
    metrics = {
        "target": "humaneval",
        "adapter_serving": "lora",
        "merge_check": None,
        "benchmarks": {
            "humaneval": _bench({0.7: (0.30, 0.33), 1.0: (0.28, 0.36)}, delta_ci=(0.01, 0.11)),
            "mbpp": _bench({0.7: (0.40, 0.40), 1.0: (0.38, 0.39)}, delta_ci=(-0.03, 0.03)),
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
    assert len(decision.reasons) == 4
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


def test_guard_rule():
    regressed = _metrics(mbpp=_bench({0.7: (0.40, 0.36), 1.0: (0.38, 0.37)}))
    decision = decide(regressed, GUARDED)
    assert not decision.promoted
    guard = _reason(decision, "guard mbpp")
    assert guard.startswith("FAIL") and "drop +0.0300 > max_regression 0.02" in guard
    assert decide(regressed, PromotionConfig(guards=["mbpp"], max_regression=0.03)).promoted
    # without guards the regression is not looked at, and the reason says so
    unguarded = decide(regressed, UNGUARDED)
    assert unguarded.promoted and "promotion.guards is empty" in _reason(unguarded, "guard")
    # benchmark names may contain dots
    dotted = decide(_metrics(**{"mbpp.plus": _bench({0.7: (0.40, 0.36)})}), PromotionConfig(guards=["mbpp.plus"]))
    assert "drop +0.0400 > max_regression" in _reason(dotted, "guard mbpp.plus pass@1")


def test_guard_that_was_not_evaluated_fails_closed():
    decision = decide(_metrics(), PromotionConfig(guards=["mbpp", "livecodebench"]))
    assert not decision.promoted
    missing = _reason(decision, "livecodebench")
    assert missing.startswith("FAIL") and "humaneval, mbpp" in missing and "promotion.guards" in missing
    assert _reason(decision, "guard mbpp").startswith("pass")


def test_finish_rate_rule_uses_each_models_best_temperature():
    # adapter is best at T=1.0 where it finishes only 85% of answers; base finishes 95% at its best T=0.7
    bench = _bench({0.7: (0.30, 0.33), 1.0: (0.28, 0.36)}, delta_ci=(0.01, 0.11), finish={("adapter", 1.0): 0.85})
    decision = decide(_metrics(humaneval=bench), UNGUARDED)
    assert not decision.promoted
    rate = _reason(decision, "finish rate")
    assert rate.startswith("FAIL") and "0.950 (base, T=0.7) -> 0.850 (adapter, T=1)" in rate
    assert decide(_metrics(humaneval=bench), PromotionConfig(guards=[], max_finish_rate_drop=0.1)).promoted
    # a poor finish rate at a temperature that is nobody's best does not matter
    other = _bench({0.7: (0.30, 0.33), 1.0: (0.28, 0.36)}, delta_ci=(0.01, 0.11), finish={("adapter", 0.7): 0.5})
    assert decide(_metrics(humaneval=other), UNGUARDED).promoted


def test_disabled_promotion_is_a_rule_of_the_gate():
    decision = decide(_metrics(), PromotionConfig(enabled=False, guards=["mbpp"]))
    assert not decision.promoted
    assert decision.reasons == ["promotion disabled in the recipe (promotion.enabled: false)"]


def test_default_guards_are_the_evaluated_benchmarks_after_the_target():
    """promotion.guards: null means every benchmark in metrics.json other than the target."""
    regressed = _metrics(mbpp=_bench({0.7: (0.40, 0.30)}))
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
