"""The run report: ``report.md`` and a self-contained ``report.html`` with the plots that matter.

What a reader needs to trust a promotion: pass@1 of base and adapter with uncertainty, how
both behave across the evaluation temperature grid (SSD moves the best T), where on the
difficulty scale the gain is, whether training converged, what the samples looked like
(lengths; cut-off samples teach nothing about stopping), and the "locks and forks" view:
the distribution of per-token entropy. SSD is expected to sharpen "locks" (positions with
one right token, entropy near 0) while keeping "forks" (several plausible continuations)
open, so base and adapter entropy histograms side by side show whether that happened.

Every section degrades on its own: what a run did not record is reported as "not recorded"
with the file that would hold it, so a partial or older run still gets a report.

The uncertainty shown is the eval stage's, read from ``eval/metrics.json``: on the
confirmation part of the problems, the paired 95% interval of the delta (the inversion of the
exact sign-flip test; same problems, same seeds) and the test's one-sided p-value. The
"Statistics" section says how T_eval was chosen and on which problems, what the comparison can
detect (smallest gain at 80% power), and warns when a guard cannot resolve its own margin.
The report draws no bootstrap of its own: per-model intervals would
carry the between-problem variance that pairing removes, and two overlapping bars would
suggest "no difference" where the paired interval excludes 0.

Plots are SVG from matplotlib's ``Figure`` API (no pyplot, so no GUI backend is ever
loaded and nothing is shared between calls). ``report.html`` (``templates/run.html.j2``)
embeds them as ``data:`` URIs under a Content-Security-Policy that forbids any other
resource, so it opens offline and from an e-mail attachment; ``report.md`` links the same
files under ``report/``.
"""

from __future__ import annotations

import io
import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from pipeline import artifacts, runs
from pipeline.artifacts import Decision, EvalMetrics
from pipeline.evaluation.mechanism import FORK_MIN, LOCK_MAX
from pipeline.report.format import Table, delta, interval, num
from pipeline.report.render import page

log = logging.getLogger(__name__)

ASSETS = "report"
MODELS = ("base", "adapter")
COLORS = {"base": "#7a7a7a", "adapter": "#1f6fb4"}
PLOT_IDS = ("pass1", "grid", "difficulty", "loss", "lengths", "entropy", "mechanism")
_NO_METRICS = "not recorded: eval/metrics.json is missing (the eval stage has not finished)"


@dataclass
class Section:
    """One report section, rendered the same way to Markdown and HTML.

    ``plot_id`` names the plot slot (``plot-<id>`` in the HTML); a section with a slot has
    either ``svg`` or ``missing`` (why the data is not there).
    """

    title: str
    text: list[str] = field(default_factory=list)
    table: Table | None = None
    plot_id: str | None = None
    svg: str | None = None
    caption: str = ""
    missing: str | None = None
    emphasis: str | None = None  # CSS class of the first line (the decision's verdict)


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return buf.getvalue()


def _figure(width: float = 7.0, height: float = 3.2) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    fig.set_facecolor("white")
    return fig


class ResultFiles:
    """Per-sample JSONL files of the eval stage, read once each (they can be large)."""

    def __init__(self, run_dir: Path, base_dir: str | None = None):
        self.eval_dir = run_dir / "eval"
        self.base_dir = Path(base_dir) if base_dir else self.eval_dir  # a sweep shares the base's results
        self._cache: dict[Path, list[dict]] = {}

    def path(self, bench: str, model: str, temperature: float) -> Path | None:
        """``eval/<bench>/<model>-T<temp>.jsonl`` however the temperature was spelled (0.7, 0.70, 1)."""
        root = self.base_dir if model == "base" else self.eval_dir
        for candidate in sorted((root / bench).glob(f"{model}-T*.jsonl")):
            try:
                if math.isclose(float(candidate.stem[len(model) + 2 :]), temperature):
                    return candidate
            except ValueError:
                continue
        return None

    def get(self, bench: str, model: str, temperature: float) -> list[dict] | None:
        path = self.path(bench, model, temperature)
        if path is None:
            return None
        if path not in self._cache:
            self._cache[path] = runs.read_jsonl(path)
        return self._cache[path]


def _decision_section(run_dir: Path) -> Section:
    path = run_dir / "promotion.json"
    if not path.is_file():
        return Section("Decision", [f"not recorded: {path.name} is missing (the promote stage has not run)"])
    decision = Decision.load(path)
    verdict = "PROMOTED" if decision.promoted else "not promoted"
    where = f" as {decision.name} {decision.version}" if decision.promoted and decision.version else ""
    return Section(
        "Decision",
        [f"{verdict}{where}", *decision.reasons],
        emphasis="promoted" if decision.promoted else "not-promoted",
    )


def _pass1_section(metrics: EvalMetrics | None) -> Section:
    section = Section("pass@1, base vs adapter", plot_id="pass1")
    if metrics is None:
        section.missing = _NO_METRICS
        return section
    benches = list(metrics.benchmarks)
    section.table = Table(
        ["benchmark", "base pass@1 (its T)", "adapter pass@1 (its T)", "delta", "95% CI", "p (one-sided)", "problems"]
    )
    fig = _figure(8.0, 3.2)
    left, right = fig.subplots(1, 2, width_ratios=[3, 2])
    x = np.arange(len(benches))
    for offset, model in ((-0.2, "base"), (0.2, "adapter")):
        values = [metrics.benchmarks[bench].best(model).pass_at_1 for bench in benches]
        left.bar(x + offset, values, width=0.4, color=COLORS[model], label=f"{model} (best T)")
    left.set_xticks(x, benches)
    left.set_ylabel("pass@1")
    left.set_title("each model at its best T_eval")
    left.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2)
    deltas = [metrics.benchmarks[bench].delta for bench in benches]
    right.errorbar(
        x,
        [d.value for d in deltas],
        yerr=[[max(d.value - d.ci_low, 0.0) for d in deltas], [max(d.ci_high - d.value, 0.0) for d in deltas]],
        fmt="o",
        color=COLORS["adapter"],
        capsize=5,
    )
    right.axhline(0.0, color="black", linewidth=0.8)
    right.set_xticks(x, benches)
    right.set_xlim(-0.5, len(benches) - 0.5)
    right.set_ylabel("adapter - base")
    right.set_title("delta with 95% CI")
    for bench, d in zip(benches, deltas, strict=True):
        base, adapter = metrics.benchmarks[bench].base_best, metrics.benchmarks[bench].adapter_best
        section.table.rows.append(
            [
                bench + (" (target)" if bench == metrics.target else ""),
                f"{num(base.pass_at_1)} (T={base.temperature:g})",
                f"{num(adapter.pass_at_1)} (T={adapter.temperature:g})",
                delta(d.value),
                interval(d.ci_low, d.ci_high),
                num(d.p_value),
                num(d.problems, "d"),
            ]
        )
    section.svg = _svg(fig)
    section.caption = (
        "Left: pass@1 of each model at its own T_eval, on the confirmation problems. Right: the paired delta "
        "(adapter - base, same problems) with its 95% interval (inverted exact sign-flip test); that interval and the "
        "test, not two per-model intervals, say whether the adapter is better."
    )
    return section


def _champion_section(metrics: EvalMetrics | None) -> Section:
    """Base, champion (the registry's version when the run was evaluated) and challenger side by side."""
    section = Section("Champion vs challenger")
    champion = metrics.champion if metrics else None
    if champion is None:
        section.text = [
            "No champion: the registry served no version under this name when the run was evaluated (a first "
            "cycle), or the recipe set promotion.against_champion: false. The adapter was compared with the base only."
        ]
        return section
    who = f"{champion.name}:{champion.version}"
    if champion.skipped:
        section.text = [f"Champion {who} was not evaluated: {champion.skipped}."]
        return section
    section.text = [
        f"Champion {who} (the registry's latest when this run was evaluated), served as {champion.serving}, "
        "evaluated on the same problems, seeds and T_eval protocol. The delta is challenger - champion on the "
        "confirmation problems; the gate applies every rule to it as to the base."
    ]
    section.table = Table(
        ["benchmark", "base (its T)", "champion (its T)", "challenger (its T)", "delta vs champion", "95% CI", "p"]
    )
    for bench, versus in champion.benchmarks.items():
        base = metrics.benchmarks[bench].base_best if bench in metrics.benchmarks else None
        held, challenger, d = versus.base_best, versus.adapter_best, versus.delta
        section.table.rows.append(
            [
                bench + (" (target)" if bench == metrics.target else ""),
                f"{num(base.pass_at_1)} (T={base.temperature:g})" if base else "-",
                f"{num(held.pass_at_1)} (T={held.temperature:g})",
                f"{num(challenger.pass_at_1)} (T={challenger.temperature:g})",
                delta(d.value),
                interval(d.ci_low, d.ci_high),
                num(d.p_value),
            ]
        )
    return section


def _statistics_section(metrics: EvalMetrics | None) -> Section:
    """How each verdict was reached and what it could have seen (README, "Statistics")."""
    section = Section("Statistics")
    if metrics is None:
        section.text = [_NO_METRICS]
        return section
    for name, bench in metrics.benchmarks.items():
        role = "target" if name == metrics.target else "guard"
        protocol, sizing, finish = bench.protocol, bench.sizing, bench.finish
        if protocol is None:
            section.text.append(f"{name} ({role}): not recorded (metrics.json written before the protocol).")
            continue
        line = f"{name} ({role}): {protocol.decided_by}."
        if protocol.selection is not None:
            means = ", ".join(
                f"{label} "
                + " / ".join(f"{v:.4f} at T={t:g}" for t, v in sorted(getattr(protocol.selection, label).items()))
                for label in MODELS
            )
            line += f" Selection part pass@1: {means}."
        d = bench.delta
        if d.p_value is not None:
            how = "exact" if d.exact else f"{d.resamples} drawn assignments"
            line += f" Exact paired test: {d.discordant} problems differ, one-sided p {num(d.p_value)} ({how})."
        if d.bootstrap_low is not None:
            line += f" Percentile bootstrap interval, for comparison: {interval(d.bootstrap_low, d.bootstrap_high)}."
        if finish is not None and role == "target":
            line += (
                f" Finish rate change at the adapter's T={bench.adapter_best.temperature:g}, both models: "
                f"{delta(finish.value)} {interval(finish.ci_low, finish.ci_high)}."
            )
        if sizing is not None:
            line += (
                f" Smallest change detected with {sizing.power:.0%} power: {sizing.detectable:.4f} "
                f"({sizing.problems} problems x {sizing.n} samples, base pass@1 {sizing.pass_rate:.4f})."
            )
            if sizing.margin is not None:
                line += f" A harmless adapter passes this guard with probability {sizing.harmless_pass:.2f}."
                if not sizing.reaches_margin:
                    line += (
                        f" WARNING: this guard cannot detect its own threshold (max_regression {sizing.margin:g} "
                        f"< {sizing.detectable:.4f}): evaluate more guard problems or samples, or widen the margin."
                    )
        section.text.append(line)
        for part_name, part in bench.parts.items():
            d = part.delta
            section.text.append(
                f"{name}, its {part_name} part (descriptive: the gate reads {name}): "
                f"{d.problems or len(part.protocol.confirmation.problems)} confirmation problems, pass@1 base "
                f"{part.base_best.pass_at_1:.4f}, adapter {part.adapter_best.pass_at_1:.4f}, delta {delta(d.value)} "
                f"{interval(d.ci_low, d.ci_high)}, one-sided p {num(d.p_value)}"
                + (f", finish rate change {delta(part.finish.value)}" if part.finish else "")
                + (f"; smallest change detected with 80% power: {part.sizing.detectable:.4f}" if part.sizing else "")
                + "."
            )
    return section


def _grid_section(metrics: EvalMetrics | None) -> Section:
    section = Section("pass@1 over the T_eval grid", plot_id="grid")
    if metrics is None:
        section.missing = _NO_METRICS
        return section
    fig = _figure(3.6 * len(metrics.benchmarks), 3.0)
    axes = fig.subplots(1, len(metrics.benchmarks), squeeze=False)[0]
    header = [
        "benchmark",
        "T",
        "base pass@1",
        "adapter pass@1",
        "base finish",
        "adapter finish",
        "base cut",
        "adapter cut",
        "base tokens",
        "adapter tokens",
        "finish change",
    ]
    has_pass5 = any(5 in row.model(m).pass_at for b in metrics.benchmarks.values() for row in b.grid for m in MODELS)
    section.table = Table(header + (["base pass@5", "adapter pass@5"] if has_pass5 else []))
    for ax, (bench, m) in zip(axes, metrics.benchmarks.items(), strict=True):
        grid = sorted(m.grid, key=lambda row: row.temperature)
        temps = [row.temperature for row in grid]
        for model in MODELS:
            ax.plot(temps, [row.model(model).pass1 for row in grid], marker="o", color=COLORS[model], label=model)
            best = m.best(model)
            ax.plot(
                [best.temperature], [best.pass_at_1], marker="*", markersize=14, color=COLORS[model], linestyle="none"
            )
        ax.set_title(bench)
        ax.set_xlabel("T_eval")
        ax.set_ylabel("pass@1")
        ax.legend(fontsize="small")
        for row in grid:
            summaries = [row.model(model) for model in MODELS]
            cells = [bench, f"{row.temperature:g}"]
            cells += [num(s.pass1) for s in summaries]
            cells += [num(s.finish_rate, ".3f") for s in summaries]
            cells += [num(s.cut_share, ".3f") for s in summaries]
            cells += [num(s.mean_completion_tokens, ".1f") for s in summaries]
            cells.append(num(summaries[1].finish_rate - summaries[0].finish_rate, "+.3f"))
            if has_pass5:
                cells += [num(s.pass_at.get(5)) for s in summaries]
            section.table.rows.append(cells)
    section.svg = _svg(fig)
    section.caption = (
        "pass@1 at each evaluation temperature over all problems (descriptive: the verdict uses the confirmation "
        "part); a star marks each model's T_eval. The finish change (adapter - base) is at the same T_eval."
    )
    return section


def _difficulty_section(metrics: EvalMetrics | None) -> Section:
    section = Section("pass@1 per difficulty", plot_id="difficulty")
    if metrics is None:
        section.missing = _NO_METRICS
        return section
    found = {
        bench: {model: m.at_best(model).per_difficulty for model in MODELS}
        for bench, m in metrics.benchmarks.items()
        if all(m.at_best(model).per_difficulty for model in MODELS)
    }
    if not found:
        section.missing = "not recorded: no benchmark in eval/metrics.json has per_difficulty for both models"
        return section
    fig = _figure(3.6 * len(found), 3.0)
    axes = fig.subplots(1, len(found), squeeze=False)[0]
    section.table = Table(["benchmark", "difficulty", "problems", "base pass@1", "adapter pass@1", "delta"])
    for ax, (bench, per) in zip(axes, found.items(), strict=True):
        levels = list(dict.fromkeys([*per["base"], *per["adapter"]]))
        x = np.arange(len(levels))
        for offset, model in ((-0.2, "base"), (0.2, "adapter")):
            ax.bar(
                x + offset,
                [per[model][level].pass_at_1 if level in per[model] else 0.0 for level in levels],
                width=0.4,
                color=COLORS[model],
                label=model,
            )
        ax.set_xticks(x, levels)
        ax.set_title(bench)
        ax.set_ylabel("pass@1")
        ax.legend(fontsize="small")
        for level in levels:
            b, a = per["base"].get(level), per["adapter"].get(level)
            section.table.rows.append(
                [
                    bench,
                    level,
                    str((b or a).problems),
                    num(b.pass_at_1 if b else None),
                    num(a.pass_at_1 if a else None),
                    delta(a.pass_at_1 - b.pass_at_1 if a and b else None),
                ]
            )
    section.svg = _svg(fig)
    section.caption = "pass@1 per difficulty level, each model at its best T_eval."
    return section


def _loss_section(run_dir: Path, recipe: dict) -> Section:
    section = Section("Training loss", plot_id="loss")
    train = artifacts.load_manifest(run_dir, "train")
    losses = train.counts.get("losses") if train else None
    if not losses:
        where = runs.manifest_path(run_dir, "train").relative_to(run_dir)
        section.missing = f"not recorded: {where} has no counts.losses (the train stage has not finished)"
        return section
    every = (recipe.get("training") or {}).get("logging_steps") or 1
    steps = [every * (i + 1) for i in range(len(losses))]
    fig = _figure(6.0, 3.0)
    ax = fig.subplots()
    ax.plot(steps, losses, marker="." if len(losses) < 50 else None, color=COLORS["adapter"])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (completion tokens)")
    section.svg = _svg(fig)
    section.text = [
        f"{len(losses)} logged steps; first {losses[0]:.4f}, last {losses[-1]:.4f}, lowest {min(losses):.4f}."
    ]
    section.caption = f"Training loss, logged every {every} optimizer step(s)."
    return section


def _lengths_section(run_dir: Path, recipe: dict) -> Section:
    section = Section("Sample lengths", plot_id="lengths")
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        section.missing = "not recorded: samples.jsonl is missing (the sample stage has not finished)"
        return section
    samples = runs.read_jsonl(path)
    lengths = [len(s["completion_token_ids"]) for s in samples if "completion_token_ids" in s]
    if not lengths:
        section.missing = "not recorded: samples.jsonl rows have no completion_token_ids"
        return section
    max_tokens = (recipe.get("sampling") or {}).get("max_tokens")
    fig = _figure(6.0, 3.0)
    ax = fig.subplots()
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color=COLORS["base"])
    if max_tokens:
        ax.axvline(max_tokens, color="#c03030", linestyle="--", label=f"max_tokens {max_tokens}")
        ax.legend(fontsize="small")
    ax.set_xlabel("completion tokens")
    ax.set_ylabel("samples")
    cut = sum(s.get("finish_reason") == "length" for s in samples)
    section.text = [
        f"{len(lengths)} samples; mean {statistics.fmean(lengths):.1f} tokens, median {statistics.median(lengths):g}, "
        f"max {max(lengths)}; {cut} cut at max_tokens (finish_reason length)."
    ]
    section.svg = _svg(fig)
    section.caption = "Lengths of the model's own samples the adapter was trained on."
    return section


def _entropy_axes(ax, title: str, ylabel: str) -> None:
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("per-token entropy (nats)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")


def _entropy_section(metrics: EvalMetrics | None, rows: ResultFiles) -> Section:
    section = Section("Locks and forks: per-token entropy", plot_id="entropy")
    if metrics is None:
        section.missing = _NO_METRICS
        return section
    target = metrics.target
    per_t: list[tuple[float, dict[str, np.ndarray]]] = []
    for temp in sorted(row.temperature for row in metrics.target_metrics.grid):
        found = {}
        for model in MODELS:
            sample_rows = rows.get(target, model, temp) or []
            values = [e for r in sample_rows for e in (r.get("entropies") or [])]
            if values:
                found[model] = np.asarray(values, dtype=float)
        if len(found) == len(MODELS):
            per_t.append((temp, found))
    if not per_t:
        section.missing = (
            f"not recorded: no eval/{target}/<base|adapter>-T<temp>.jsonl rows carry entropies for both models "
            "(the eval stage records them when asked to)"
        )
        return section
    fig = _figure(3.4 * len(per_t), 3.0)
    axes = fig.subplots(1, len(per_t), squeeze=False)[0]
    section.table = Table(
        ["T_eval", "model", "tokens", "mean entropy", f"locks (< {LOCK_MAX:g})", f"forks (> {FORK_MIN:g})"]
    )
    for ax, (temp, found) in zip(axes, per_t, strict=True):
        top = max(float(v.max()) for v in found.values())
        bins = np.linspace(0.0, max(top, FORK_MIN) * 1.02, 41)
        for model in MODELS:
            values = found[model]
            ax.hist(values, bins=bins, density=True, histtype="step", linewidth=1.6, color=COLORS[model], label=model)
            section.table.rows.append(
                [
                    f"{temp:g}",
                    model,
                    str(values.size),
                    f"{values.mean():.3f}",
                    f"{(values < LOCK_MAX).mean():.1%}",
                    f"{(values > FORK_MIN).mean():.1%}",
                ]
            )
        ax.axvspan(0.0, LOCK_MAX, color="#e8e8e8", zorder=0)
        ax.axvline(FORK_MIN, color="#c03030", linestyle=":", linewidth=1)
        _entropy_axes(ax, f"{target}, T={temp:g}", "density (log)")
    section.svg = _svg(fig)
    section.caption = (
        f"Per-token entropy of the evaluation samples. Shaded: locks (entropy < {LOCK_MAX:g}); dotted line: forks "
        f"begin (> {FORK_MIN:g}). SSD should move mass into the locks without emptying the forks."
    )
    return section


def _mechanism_section(run_dir: Path) -> Section:
    """``ssd entropy``'s measurement: both models at the same positions of the base's samples."""
    section = Section("Locks and forks at the same positions", plot_id="mechanism")
    results, summary_path = run_dir / "eval" / "mechanism.jsonl", run_dir / "eval" / "mechanism.json"
    if not (results.is_file() and summary_path.is_file()):
        section.missing = "not measured: `ssd entropy RUN_DIR` scores the base's samples with both models"
        return section
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    rows = runs.read_jsonl(results)
    base = np.asarray([e for r in rows for e in r["base"]], dtype=float)
    tuned = np.asarray([e for r in rows for e in r["adapter"]], dtype=float)
    section.text = [
        f"{summary['problems']} base samples of {summary['target']} at T_eval {summary['temperature']:g}, each "
        "scored token by token by the base and by the adapter (teacher-forced, full-vocabulary entropy in nats). "
        f"Positions are classed by the base's entropy: locks below {LOCK_MAX:g}, forks above {FORK_MIN:g}. "
        "Intervals: 95% bootstrap over sequences."
    ]
    section.table = Table(["positions", "count", "base mean", "adapter mean", "change [95% CI]", "adapter sharper"])
    for cls, c in summary["classes"].items():
        if not c.get("positions"):
            section.table.rows.append([cls, "0", "", "", "", ""])
            continue
        section.table.rows.append(
            [
                cls,
                str(c["positions"]),
                f"{c['base_mean']:.3f}",
                f"{c['adapter_mean']:.3f}",
                f"{delta(c['change'])} {interval(*c['change_ci'])}",
                f"{c['sharper_share']:.1%}",
            ]
        )
    if base.size == 0:
        section.missing = "no completion tokens were scored"
        return section
    fig = _figure(7.0, 3.0)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, (name, mask) in zip(axes, (("locks", base < LOCK_MAX), ("forks", base > FORK_MIN)), strict=True):
        top = max(float(base.max()), float(tuned.max()), FORK_MIN)
        bins = np.linspace(0.0, top * 1.02, 41)
        for model, values in (("base", base[mask]), ("adapter", tuned[mask])):
            if values.size:
                ax.hist(values, bins=bins, histtype="step", linewidth=1.6, color=COLORS[model], label=model)
        _entropy_axes(ax, f"{name}: {int(mask.sum())} positions", "positions (log)")
    section.svg = _svg(fig)
    section.caption = (
        "Entropy at the base's lock positions (left) and fork positions (right), base and adapter at the same "
        "positions. The paper's mechanism: locks move left (sharper), forks stay right (kept open)."
    )
    return section


def _markdown(run_dir: Path, sections: list[Section]) -> str:
    lines = [f"# SSD run report: {run_dir.name}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        lines += [f"{t}  " if i < len(s.text) - 1 else t for i, t in enumerate(s.text)]
        if s.text:
            lines.append("")
        if s.table:
            lines += [*s.table.markdown(), ""]
        if s.plot_id and s.svg:
            lines += [f"![{s.title}]({ASSETS}/plot-{s.plot_id}.svg)", "", f"*{s.caption}*", ""]
        elif s.plot_id:
            lines += [f"*{s.missing}*", ""]
    return "\n".join(lines)


def write_report(run_dir: Path | str) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` and ``report/plot-*.svg`` in ``run_dir``; return the two reports."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"{run_dir}: no such run directory; pass a directory under runs_dir (e.g. checkpoints/runs/<run-id>)"
        )
    metrics_path = run_dir / "eval" / "metrics.json"
    metrics = EvalMetrics.load(metrics_path) if metrics_path.is_file() else None
    recipe_path = run_dir / "recipe.yaml"
    recipe = (yaml.safe_load(recipe_path.read_text()) or {}) if recipe_path.is_file() else {}
    rows = ResultFiles(run_dir, (recipe.get("evaluation") or {}).get("base_dir"))
    sections = [
        _decision_section(run_dir),
        _pass1_section(metrics),
        _champion_section(metrics),
        _statistics_section(metrics),
        _grid_section(metrics),
        _difficulty_section(metrics),
        _loss_section(run_dir, recipe),
        _lengths_section(run_dir, recipe),
        _entropy_section(metrics, rows),
        _mechanism_section(run_dir),
    ]
    for s in sections:
        if s.svg:
            runs.atomic_write_text(run_dir / ASSETS / f"plot-{s.plot_id}.svg", s.svg)
        elif s.plot_id:
            (run_dir / ASSETS / f"plot-{s.plot_id}.svg").unlink(missing_ok=True)
    md_path, html_path = run_dir / "report.md", run_dir / "report.html"
    runs.atomic_write_text(md_path, _markdown(run_dir, sections))
    runs.atomic_write_text(
        html_path, page("run.html.j2", title=f"SSD run report: {run_dir.name}", wide=False, sections=sections)
    )
    drawn = [s.plot_id for s in sections if s.svg]
    log.info(
        "report: %s and %s (%d of %d plots; not recorded: %s)",
        md_path,
        html_path,
        len(drawn),
        len(PLOT_IDS),
        ", ".join(sorted(set(PLOT_IDS) - set(drawn))) or "none",
    )
    return md_path, html_path
