"""The promotion gate: four rules over the eval stage's metrics, every one explained.

An adapter is promoted only when it is better on the target benchmark by enough, with a
confidence interval that excludes chance, without paying for it elsewhere: no guard
benchmark may regress and the adapter may not stop finishing its answers (a model that
rambles to ``max_tokens`` can still score on short problems while breaking real use).

Each model is judged at its own best evaluation temperature, because SSD shifts the
temperature at which a model works best; comparing both at one fixed T would penalise
whichever model that T suits less. Every rule returns a reason line whether it passed
or failed, so ``promotion.json`` and the report say exactly why.

The gate reads typed metrics (``artifacts.EvalMetrics``): a malformed ``metrics.json`` is
refused when it is loaded, naming the field, before any rule runs.
"""

from __future__ import annotations

from pipeline.artifacts import Decision, EvalMetrics
from pipeline.recipe import PromotionConfig

DISABLED = "promotion disabled in the recipe (promotion.enabled: false)"
Rule = tuple[bool, str]  # passed, and the reason line's text


def decide(metrics: EvalMetrics, cfg: PromotionConfig) -> Decision:
    """Apply the four rules to ``metrics`` with the recipe's thresholds.

    A guard benchmark that was not evaluated is a failed rule (the gate cannot vouch for it),
    so the run still records a decision. ``cfg.guards: null`` means every evaluated benchmark
    other than the target (read from ``metrics``, so a sweep point that evaluates other
    benchmarks is guarded by its own); an empty list means no guards.
    """
    if not cfg.enabled:
        return Decision(promoted=False, reasons=[DISABLED])
    rules = [
        _delta_rule(metrics, cfg),
        _ci_rule(metrics, cfg),
        *_guard_rules(metrics, cfg),
        _finish_rate_rule(metrics, cfg),
    ]
    return Decision(
        promoted=all(ok for ok, _ in rules),
        reasons=[f"{'pass' if ok else 'FAIL'}: {text}" for ok, text in rules],
    )


def _delta_rule(metrics: EvalMetrics, cfg: PromotionConfig) -> Rule:
    """The adapter's best pass@1 on the target beats the base's best by more than min_delta."""
    bench = metrics.target_metrics
    base, adapter = bench.best("base"), bench.best("adapter")
    delta = _diff(adapter.pass_at_1, base.pass_at_1)
    ok = delta > cfg.min_delta
    return ok, (
        f"{metrics.target} pass@1 delta {delta:+.4f} (base {base.pass_at_1:.4f} at T={base.temperature:g} -> adapter "
        f"{adapter.pass_at_1:.4f} at T={adapter.temperature:g}) {'>' if ok else 'is not above'} "
        f"min_delta {cfg.min_delta:g}"
    )


def _ci_rule(metrics: EvalMetrics, cfg: PromotionConfig) -> Rule:
    """The lower bound of the delta's paired bootstrap interval is above min_ci_lower."""
    ci = metrics.target_metrics.delta
    ok = ci.ci_low > cfg.min_ci_lower
    return ok, (
        f"{metrics.target} delta CI [{ci.ci_low:+.4f}, {ci.ci_high:+.4f}]: lower bound {'>' if ok else 'is not above'} "
        f"min_ci_lower {cfg.min_ci_lower:g}"
    )


def _guard_rules(metrics: EvalMetrics, cfg: PromotionConfig) -> list[Rule]:
    """Each guard's best pass@1 falls by at most max_regression (one rule per guard)."""
    guards = cfg.guards if cfg.guards is not None else [b for b in metrics.benchmarks if b != metrics.target]
    if not guards:
        return [(True, "no guard benchmarks configured (promotion.guards is empty)")]
    rules = []
    for guard in guards:
        if guard not in metrics.benchmarks:
            there = ", ".join(sorted(metrics.benchmarks))
            text = f"guard {guard}: not in eval/metrics.json (benchmarks there: {there}); "
            rules.append((False, text + "evaluate it or remove it from promotion.guards"))
            continue
        base, adapter = metrics.benchmarks[guard].best("base"), metrics.benchmarks[guard].best("adapter")
        drop = _diff(base.pass_at_1, adapter.pass_at_1)
        ok = drop <= cfg.max_regression
        text = (
            f"guard {guard} pass@1 {base.pass_at_1:.4f} (T={base.temperature:g}) -> {adapter.pass_at_1:.4f} "
            f"(T={adapter.temperature:g}): drop {drop:+.4f} {'<=' if ok else '>'} max_regression {cfg.max_regression:g}"
        )
        rules.append((ok, text))
    return rules


def _finish_rate_rule(metrics: EvalMetrics, cfg: PromotionConfig) -> Rule:
    """The adapter's finish rate on the target, each model at its best T, falls by at most
    max_finish_rate_drop (a poor rate at a temperature that is nobody's best does not count)."""
    bench = metrics.target_metrics
    base_t, adapter_t = bench.best("base").temperature, bench.best("adapter").temperature
    base_fr, adapter_fr = bench.at_best("base").finish_rate, bench.at_best("adapter").finish_rate
    drop = _diff(base_fr, adapter_fr)
    ok = drop <= cfg.max_finish_rate_drop
    return ok, (
        f"{metrics.target} finish rate {base_fr:.3f} (base, T={base_t:g}) -> {adapter_fr:.3f} "
        f"(adapter, T={adapter_t:g}): drop {drop:+.3f} {'<=' if ok else '>'} "
        f"max_finish_rate_drop {cfg.max_finish_rate_drop:g}"
    )


def _diff(a: float, b: float) -> float:
    """a - b without float noise, so a delta of exactly a threshold compares as equal to it."""
    return round(a - b, 12)
