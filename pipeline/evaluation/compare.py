"""One benchmark's verdict numbers, from per-sample verdicts, under the selection/confirmation protocol.

The eval stage hands over every results file of a benchmark (both models, every T_eval); this
module applies README's "Statistics" protocol and returns the typed ``BenchmarkMetrics``:

1. the grid: both models at every T_eval over all problems, with a paired interval per row
   (descriptive: nothing is decided on it);
2. the split: when something is chosen on data (several T_eval and none pre-registered, or
   ``always_split`` in a sweep), a seeded split into selection and confirmation parts;
3. each model's T_eval: pre-registered, the only one, or its best on the selection part;
4. on the confirmation part: the paired delta, its sign-flip interval and exact p-value (and the
   bootstrap interval beside them), the finish-rate difference with both models at the adapter's
   T_eval, and the sizing (smallest detectable gain; for a guard, its margin in reach or not).
"""

from __future__ import annotations

import logging

from pipeline.artifacts import BenchmarkMetrics, Best, Delta, GridRow, Label, Part, Protocol, Sizing
from pipeline.evaluation import stats
from pipeline.evaluation.benchmarks import Benchmark
from pipeline.evaluation.metrics import per_problem_finish, per_problem_pass1, summarize
from pipeline.recipe import Recipe

log = logging.getLogger(__name__)

LABELS: tuple[Label, Label] = ("base", "adapter")
CONFIDENCE = 0.95  # the interval the gate reads: (1 - CONFIDENCE) / 2 = 2.5% per side


def benchmark_metrics(
    recipe: Recipe, bench: Benchmark, rows: dict[tuple[float, Label], list[dict]]
) -> BenchmarkMetrics:
    """``rows[(temperature, label)]``: the verdict rows of one results file of ``bench``.

    A pooled benchmark (``humaneval+mbpp``) is decided on all its problems; each part is reported
    beside it (``parts``) at the T_eval the pooled comparison chose, on its share of the pooled
    confirmation part: descriptive, the gate reads the pooled numbers only.
    """
    metrics = _metrics(recipe, bench, rows)
    if len(bench.parts) == 1:
        return metrics
    chosen = {label: metrics.best(label).temperature for label in LABELS}
    parts = {}
    for name in bench.parts:
        part = bench.part(name)
        ids = {str(p["task_id"]) for p in part.problems}
        part_rows = {key: [r for r in file_rows if r["task_id"] in ids] for key, file_rows in rows.items()}
        parts[name] = _metrics(recipe, part, part_rows, decided=(chosen, metrics.protocol, bench.name))
    return metrics.model_copy(update={"parts": parts})


def _metrics(
    recipe: Recipe,
    bench: Benchmark,
    rows: dict[tuple[float, Label], list[dict]],
    decided: tuple[dict[Label, float], Protocol, str] | None = None,
) -> BenchmarkMetrics:
    """``decided``: the T_eval per model, the protocol and the name of the pooled benchmark, when
    ``bench`` is a part of one (nothing is chosen on the part itself)."""
    cfg = recipe.evaluation
    temps = bench.temperatures
    scores = {key: per_problem_pass1(r) for key, r in rows.items()}
    finishes = {key: per_problem_finish(r) for key, r in rows.items()}
    ids = [str(p["task_id"]) for p in bench.problems]

    grid = []
    for t in temps:
        ci = interval(scores[t, "base"], scores[t, "adapter"], recipe)
        grid.append(
            GridRow(
                temperature=t,
                base=summarize(rows[t, "base"], cfg.k, bench.problems),
                adapter=summarize(rows[t, "adapter"], cfg.k, bench.problems),
                delta=Delta(value=ci.mean_delta, ci_low=ci.low, ci_high=ci.high),
            )
        )

    t_choice = "pre-registered" if cfg.t_eval else "single" if len(temps) == 1 else "selection"
    if decided:  # a part of a pooled benchmark: T_eval and the parts are the pool's
        chosen, pooled, _ = decided
        parts = None
        if pooled.selection:
            chosen_on = set(pooled.selection.problems)
            parts = stats.Split(
                [t for t in ids if t in chosen_on],
                [t for t in ids if t not in chosen_on],
                pooled.fraction,
                pooled.seed,
                pooled.stratified_by,
            )
    else:
        wanted = t_choice == "selection" or (cfg.always_split and len(ids) > 1)
        parts = stats.split(bench.problems, cfg.selection_fraction, cfg.split_seed) if wanted else None
        if t_choice == "selection":
            chosen = {
                label: stats.best_temperature(
                    {t: stats.subset(scores[t, label], parts.selection) for t in temps}
                ).temperature
                for label in LABELS
            }
        else:
            chosen = {label: cfg.t_eval[label] if cfg.t_eval else temps[0] for label in LABELS}
    confirm = parts.confirmation if parts else ids
    if not confirm:
        raise ValueError(f"{bench.name}: no problem in the confirmation part")
    chosen = {label: next(t for t in temps if abs(t - chosen[label]) < 1e-9) for label in LABELS}

    base = stats.subset(scores[chosen["base"], "base"], confirm)
    adapter = stats.subset(scores[chosen["adapter"], "adapter"], confirm)
    delta = decided_delta(base, adapter, recipe)
    t_adapter = chosen["adapter"]
    finish_base = stats.subset(finishes[t_adapter, "base"], confirm)
    finish_adapter = stats.subset(finishes[t_adapter, "adapter"], confirm)
    finish = interval(finish_base, finish_adapter, recipe)
    base_mean, adapter_mean = sum(base.values()) / len(confirm), sum(adapter.values()) / len(confirm)
    log.info(
        "eval %s, %d confirmation problems: pass@1 base %.4f (T=%g) adapter %.4f (T=%g) delta %+.4f [%+.4f, %+.4f] "
        "p=%.4f",
        bench.name,
        len(confirm),
        base_mean,
        chosen["base"],
        adapter_mean,
        chosen["adapter"],
        delta.value,
        delta.ci_low,
        delta.ci_high,
        delta.p_value,
    )
    same_t = zip(rows[temps[0], "base"], rows[temps[0], "adapter"], strict=True)
    return BenchmarkMetrics(
        grid=grid,
        base_best=Best(temperature=chosen["base"], pass_at_1=base_mean),
        adapter_best=Best(temperature=chosen["adapter"], pass_at_1=adapter_mean),
        delta=delta,
        identical_completions=sum(a["completion"] == b["completion"] for a, b in same_t),
        protocol=protocol(t_choice, chosen, parts, ids, scores, temps, pooled_in=decided[2] if decided else None),
        finish=Delta(value=finish.mean_delta, ci_low=finish.low, ci_high=finish.high, problems=len(confirm)),
        sizing=sizing(recipe, decided[2] if decided else bench.name, bench.n, base),
    )


def interval(base: dict[str, float], adapter: dict[str, float], recipe: Recipe) -> stats.BootstrapCI:
    cfg = recipe.evaluation
    return stats.sign_flip_interval(
        base, adapter, confidence=CONFIDENCE, resamples=cfg.permutation_resamples, seed=cfg.bootstrap_seed
    )


def decided_delta(base: dict[str, float], adapter: dict[str, float], recipe: Recipe) -> Delta:
    """The verdict's delta: sign-flip interval and exact one-sided p-value, bootstrap beside them."""
    cfg = recipe.evaluation
    ci = interval(base, adapter, recipe)
    test = stats.sign_flip_test(base, adapter, resamples=cfg.permutation_resamples, seed=cfg.bootstrap_seed)
    boot = stats.paired_bootstrap(
        base, adapter, resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed, confidence=CONFIDENCE
    )
    return Delta(
        value=ci.mean_delta,
        ci_low=ci.low,
        ci_high=ci.high,
        resamples=cfg.permutation_resamples,
        seed=cfg.bootstrap_seed,
        problems=ci.problems,
        p_value=test.p_value,
        discordant=test.discordant,
        exact=test.exact,
        bootstrap_low=boot.low,
        bootstrap_high=boot.high,
    )


def protocol(
    t_choice: str,
    chosen: dict[str, float],
    parts: stats.Split | None,
    ids: list[str],
    scores: dict[tuple[float, Label], dict[str, float]],
    temps: list[float],
    pooled_in: str | None = None,
) -> Protocol:
    def part(problems: list[str]) -> Part | None:
        if not problems:
            return None
        means = {
            label: {t: sum(stats.subset(scores[t, label], problems).values()) / len(problems) for t in temps}
            for label in LABELS
        }
        return Part(problems=problems, base=means["base"], adapter=means["adapter"])

    confirm = parts.confirmation if parts else ids
    how = {
        "selection": f"T_eval chosen per model on the selection part ({len(parts.selection) if parts else 0} problems)",
        "pre-registered": f"T_eval pre-registered (base {chosen['base']:g}, adapter {chosen['adapter']:g})",
        "single": f"one T_eval ({chosen['base']:g}): nothing chosen",
    }[t_choice]
    where = (
        f"the delta, its interval, the test and the gate on the confirmation part ({len(confirm)} problems)"
        if parts
        else f"every problem confirms ({len(confirm)})"
    )
    if pooled_in:
        how = f"as pooled in {pooled_in}: {how}"
    return Protocol(
        t_choice=t_choice,
        decided_by=f"{how}; {where}",
        fraction=parts.fraction if parts else None,
        seed=parts.seed if parts else None,
        stratified_by=parts.stratified_by if parts else None,
        selection=part(parts.selection) if parts else None,
        confirmation=part(confirm),
    )


def sizing(recipe: Recipe, name: str, n: int, base: dict[str, float]) -> Sizing:
    """The confirmation comparison's sizing at the gate's binding level: the stricter of the test's
    alpha and the interval's 2.5% per side (target); the interval's 2.5% (guard, with its margin).
    ``name``: the benchmark as the recipe names it (a pooled part: the pool's name)."""
    guards = recipe.promotion.guards
    is_guard = name in guards if guards is not None else name != recipe.evaluation.benchmarks[0]
    tail = (1 - CONFIDENCE) / 2
    return stats.size(
        len(base),
        n,
        sum(base.values()) / len(base),
        variance=stats.within_problem_variance(base.values(), n),
        level=tail if is_guard else min(recipe.promotion.alpha, tail),
        margin=recipe.promotion.max_regression if is_guard else None,
    )
