"""The promotion gate: five kinds of rule over the eval stage's metrics, every one explained.

An adapter is promoted only when it is better on the target benchmark by enough, with an
interval and an exact test that exclude chance, without paying for it elsewhere: no guard
benchmark may be shown worse than its margin allows and the adapter may not stop finishing its
answers (a model that rambles to ``max_tokens`` can still score on short problems while
breaking real use).

Every number the gate reads is from the confirmation part of the problems (README,
"Statistics"): each model's T_eval was chosen on the selection part (or pre-registered), so the
choice does not inflate the delta it is judged on. The target needs the delta above
``min_delta``, the lower bound of its 95% interval (the inversion of the exact sign-flip test)
above ``min_ci_lower`` and the test's one-sided p-value at most ``alpha``. A guard is a
non-inferiority test: the lower bound of its paired delta must be above ``-max_regression``; a
point estimate inside the margin is not enough, since on a small guard it is mostly noise. The
finish rate is compared with both models at the adapter's T_eval, paired, so a drop is not
hidden behind two different temperatures. When the registry already serves a version under the
name (the champion), every rule is applied a second time with the champion in the base's place:
a scheduled job never replaces the adapter in production with a worse one. Every rule returns a
reason line whether it passed or failed, so ``promotion.json`` and the report say exactly why.

The gate reads typed metrics (``artifacts.EvalMetrics``): a malformed ``metrics.json`` is
refused when it is loaded, naming the field, before any rule runs; one written before this
protocol (no p-value, no paired finish rate) fails the rules that need them, saying to rerun.
"""

from __future__ import annotations

from pipeline.artifacts import BenchmarkMetrics, Decision, EvalMetrics
from pipeline.recipe import PromotionConfig

DISABLED = "promotion disabled in the recipe (promotion.enabled: false)"
Rule = tuple[bool, str]  # passed, and the reason line's text


def decide(
    metrics: EvalMetrics,
    cfg: PromotionConfig,
    *,
    p_value: float | None = None,
) -> Decision:
    """Apply the rules to ``metrics`` with the recipe's thresholds, against the base and then
    against the champion (the registry's current version) when one was evaluated.

    ``p_value`` replaces the target's own p-value against the base (a sweep judges each point by
    its Holm-adjusted one; its points are not compared with a champion). A guard benchmark that
    was not evaluated is a failed rule (the gate cannot vouch for it), so the run still records
    a decision. ``cfg.guards: null`` means every evaluated
    benchmark other than the target (read from ``metrics``, so a sweep point that evaluates other
    benchmarks is guarded by its own); an empty list means no guards.
    """
    if not cfg.enabled:
        return Decision(promoted=False, reasons=[DISABLED])
    rules = [*_rules(metrics, cfg, p_value, "base"), *_champion_rules(metrics, cfg)]
    return Decision(
        promoted=all(ok for ok, _ in rules),
        reasons=[f"{'pass' if ok else 'FAIL'}: {text}" for ok, text in rules],
    )


def _rules(metrics: EvalMetrics, cfg: PromotionConfig, p_value: float | None, ref: str) -> list[Rule]:
    """Every rule, with ``ref`` (the base, or the champion) in the base's place."""
    return [
        _delta_rule(metrics, cfg, ref),
        _ci_rule(metrics, cfg),
        _test_rule(metrics, cfg, p_value),
        *_guard_rules(metrics, cfg, ref),
        _finish_rate_rule(metrics, cfg),
    ]


def _champion_rules(metrics: EvalMetrics, cfg: PromotionConfig) -> list[Rule]:
    """The same rules with the champion as the reference: an adapter that beats the base but not
    the version in production is not promoted, so ``latest`` never moves backwards."""
    champion = metrics.champion
    if not cfg.against_champion:
        return [(True, "the registry's current version was not compared (promotion.against_champion: false)")]
    if champion is None:
        return [(True, "no champion: the registry serves no version under this name yet (compared with the base)")]
    who = f"{champion.name}:{champion.version}"
    versus = metrics.versus_champion()
    if versus is None:
        why = champion.skipped or f"eval/metrics.json has no comparison on {metrics.target}"
        return [(False, f"champion {who} was not evaluated: {why}")]
    return [(ok, f"vs champion {who}: {text}") for ok, text in _rules(versus, cfg, None, "champion")]


def _where(bench: BenchmarkMetrics) -> str:
    return f"{bench.delta.problems} confirmation problems" if bench.delta.problems else "all problems"


def _delta_rule(metrics: EvalMetrics, cfg: PromotionConfig, ref: str) -> Rule:
    """The adapter's pass@1 on the target beats the reference's by more than min_delta (each at its T_eval)."""
    bench = metrics.target_metrics
    base, adapter = bench.best("base"), bench.best("adapter")
    delta = _diff(adapter.pass_at_1, base.pass_at_1)
    ok = delta > cfg.min_delta
    return ok, (
        f"{metrics.target} pass@1 delta {delta:+.4f} ({ref} {base.pass_at_1:.4f} at T={base.temperature:g} -> adapter "
        f"{adapter.pass_at_1:.4f} at T={adapter.temperature:g}, {_where(bench)}) {'>' if ok else 'is not above'} "
        f"min_delta {cfg.min_delta:g}"
    )


def _ci_rule(metrics: EvalMetrics, cfg: PromotionConfig) -> Rule:
    """The lower bound of the delta's paired 95% interval is above min_ci_lower."""
    ci = metrics.target_metrics.delta
    ok = ci.ci_low > cfg.min_ci_lower
    return ok, (
        f"{metrics.target} delta CI [{ci.ci_low:+.4f}, {ci.ci_high:+.4f}]: lower bound {'>' if ok else 'is not above'} "
        f"min_ci_lower {cfg.min_ci_lower:g}"
    )


def _test_rule(metrics: EvalMetrics, cfg: PromotionConfig, p_value: float | None) -> Rule:
    """The exact paired test's one-sided p-value (or the sweep's adjusted one) is at most alpha."""
    own = metrics.target_metrics.delta
    if own.p_value is None:
        return False, (
            f"{metrics.target}: eval/metrics.json has no p-value (written before the exact paired test); "
            "rerun the eval stage"
        )
    p, which = (own.p_value, "") if p_value is None else (p_value, "Holm-adjusted ")
    ok = p <= cfg.alpha
    test = "exact" if own.exact else f"{own.resamples} drawn assignments"
    return ok, (
        f"{metrics.target} paired sign-flip test ({own.discordant} problems differ, {test}): {which}one-sided "
        f"p = {p:.4f} {'<=' if ok else '>'} alpha {cfg.alpha:g}"
    )


def _guard_rules(metrics: EvalMetrics, cfg: PromotionConfig, ref: str) -> list[Rule]:
    """Each guard is a non-inferiority test: its delta's lower bound is above -max_regression."""
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
        bench = metrics.benchmarks[guard]
        base, adapter, d = bench.best("base"), bench.best("adapter"), bench.delta
        ok = d.ci_low > -cfg.max_regression
        text = (
            f"guard {guard} pass@1 {ref} {base.pass_at_1:.4f} (T={base.temperature:g}) -> adapter "
            f"{adapter.pass_at_1:.4f} (T={adapter.temperature:g}): delta {d.value:+.4f}, "
            f"95% CI [{d.ci_low:+.4f}, {d.ci_high:+.4f}], lower bound {'>' if ok else 'is not above'} "
            f"-max_regression {-cfg.max_regression:g} (non-inferiority)"
        )
        if bench.sizing is not None and bench.sizing.reaches_margin is False:
            text += (
                f"; this guard cannot resolve its margin (smallest detectable change {bench.sizing.detectable:.4f}): "
                "evaluate more guard problems or samples"
            )
        rules.append((ok, text))
    return rules


def _finish_rate_rule(metrics: EvalMetrics, cfg: PromotionConfig) -> Rule:
    """The finish rate on the target, both models at the adapter's T_eval (paired over the
    confirmation problems), falls by at most max_finish_rate_drop."""
    bench = metrics.target_metrics
    finish, t = bench.finish, bench.best("adapter").temperature
    if finish is None:
        return False, (
            f"{metrics.target}: eval/metrics.json has no paired finish rate (written before it was compared at one "
            "T_eval); rerun the eval stage"
        )
    drop = _diff(0.0, finish.value)
    ok = drop <= cfg.max_finish_rate_drop
    return ok, (
        f"{metrics.target} finish rate at the adapter's T={t:g}, both models: drop {drop:+.3f} "
        f"(95% CI of the change [{finish.ci_low:+.3f}, {finish.ci_high:+.3f}]) {'<=' if ok else '>'} "
        f"max_finish_rate_drop {cfg.max_finish_rate_drop:g}"
    )


def _diff(a: float, b: float) -> float:
    """a - b without float noise, so a delta of exactly a threshold compares as equal to it."""
    return round(a - b, 12)
