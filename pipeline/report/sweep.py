"""The sweep report: ``sweep.md`` and ``sweep.html`` from ``sweep.json``, both from the same tables.

Per benchmark: the base model at its T_eval, the best point (chosen on the selection part of the
problems; its adapter at its own T_eval against the base at its own, on the confirmation part, with
the paired 95% interval, the exact test's p-value and its Holm adjustment over the sweep's candidate
points), every point at every T_eval, and a heatmap of the deltas (rows: points, columns: T_eval);
then each point's gate decision (alone, and with the Holm-adjusted p-value) and wall time. ``build``
turns the sweep manifest into sections of text and ``format.Table``s; the Markdown writer and the
HTML template only lay those out, so the two files cannot disagree.

A point's results in ``sweep.json`` hold, per benchmark, a flat row per T_eval and the eval stage's
bests and delta (``PointBenchmark``, written by ``pipeline.sweep`` from the point's ``EvalMetrics``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from pipeline import runs
from pipeline.artifacts import BenchmarkMetrics, Best, Decision, Delta
from pipeline.report.format import Table, delta, interval, num
from pipeline.report.render import page

EVERY_POINT = "Every point"
HEATMAP = "Delta heatmap (adapter - base pass@1; rows: points by T_train, columns: T_eval)"
CONTROL_NOTE = "; with the control point (T_train 1.0, top-k off, top-p 1.0)"


class GridCell(BaseModel):
    """One point at one T_eval on one benchmark: both models and the paired delta there."""

    model_config = ConfigDict(populate_by_name=True)

    T_eval: float
    base_pass1: float = Field(alias="base_pass@1")
    adapter_pass1: float = Field(alias="adapter_pass@1")
    delta: float
    ci_low: float | None = None
    ci_high: float | None = None
    base_finish_rate: float
    adapter_finish_rate: float
    base_mean_tokens: float
    adapter_mean_tokens: float


class PointBenchmark(BaseModel):
    """One point's results on one benchmark, as ``sweep.json`` keeps them."""

    grid: list[GridCell]
    base_best: Best
    adapter_best: Best
    delta: Delta
    selection_pass1: float | None = Field(
        None, description="the adapter's pass@1 at its T_eval on the selection part: what the best point is chosen on"
    )
    decided_by: str | None = None

    @classmethod
    def from_metrics(cls, bench: BenchmarkMetrics) -> PointBenchmark:
        protocol = bench.protocol
        selection = protocol.selection if protocol else None
        return cls(
            selection_pass1=selection.adapter[bench.adapter_best.temperature] if selection else None,
            decided_by=protocol.decided_by if protocol else None,
            grid=[
                GridCell(
                    T_eval=row.temperature,
                    base_pass1=row.base.pass1,
                    adapter_pass1=row.adapter.pass1,
                    delta=row.delta.value,
                    ci_low=row.delta.ci_low,
                    ci_high=row.delta.ci_high,
                    base_finish_rate=row.base.finish_rate,
                    adapter_finish_rate=row.adapter.finish_rate,
                    base_mean_tokens=row.base.mean_completion_tokens,
                    adapter_mean_tokens=row.adapter.mean_completion_tokens,
                )
                for row in bench.grid
            ],
            base_best=bench.base_best,
            adapter_best=bench.adapter_best,
            delta=bench.delta,
        )

    def at(self, temperature: float) -> GridCell | None:
        return next((c for c in self.grid if math.isclose(c.T_eval, temperature, abs_tol=1e-9)), None)


@dataclass
class Part:
    """A ``##`` section: sentences (Markdown inline markup: ``**bold**``, backquoted code), then tables."""

    title: str
    text: list[str] = field(default_factory=list)
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (``###`` subtitle or "", table)


@dataclass
class SweepView:
    title: str
    intro: list[str]
    parts: list[Part]


def _results(point: dict, bench: str) -> PointBenchmark | None:
    found = ((point.get("results") or {}).get("benchmarks") or {}).get(bench)
    return PointBenchmark.model_validate(found) if found else None


def best_point(points: list[dict], bench: str) -> tuple[dict, bool] | None:
    """The point whose adapter has the highest pass@1 on ``bench`` on the selection part (ties: the
    first), and True; choosing on the confirmation numbers instead would make the best point's delta
    the maximum of several noisy ones. Points recorded before the split have no selection part:
    then the highest adapter pass@1 at its T_eval, and False (an exploratory choice)."""
    scored = [(p, r) for p in points if (r := _results(p, bench)) is not None]
    if not scored:
        return None
    held_out = all(r.selection_pass1 is not None for _, r in scored)
    key = (lambda pr: pr[1].selection_pass1) if held_out else (lambda pr: pr[1].adapter_best.pass_at_1)
    return max(scored, key=key)[0], held_out


def heat_color(value: float | None, scale: float) -> str:
    """Background of a heatmap cell: white at 0, greener up to +scale, redder down to -scale, grey if absent."""
    if value is None or not math.isfinite(value):
        return "#eeeeee"
    x = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    if x >= 0:  # white -> green
        r, g, b = int(255 - 180 * x), int(255 - 80 * x), int(255 - 180 * x)
    else:  # white -> red
        r, g, b = 255, int(255 + 180 * x), int(255 + 180 * x)
    return f"#{r:02x}{g:02x}{b:02x}"


def _topk(k: int) -> str:
    return "off" if not k else str(k)


def _settings(point: dict) -> list[str]:
    return [point["name"], num(point["T_train"], "g"), _topk(point["top_k"]), num(point["top_p"], "g")]


def _benchmark_part(bench: str, points: list[dict], temps: list[float]) -> Part:
    every = Table(
        [
            "point",
            "T_train",
            "top-k",
            "top-p",
            "T_eval",
            "base pass@1",
            "adapter pass@1",
            "delta",
            "95% CI",
            "finish base",
            "finish adapter",
            "mean tokens base",
            "mean tokens adapter",
        ]
    )
    heat = Table(["point", "T_train", *(f"T_eval {t:g}" for t in temps)], colors=[])
    heat_values: list[list[float | None]] = []
    base_at: dict[float, GridCell] = {}  # the base is shared by the points: the first cell seen per T_eval
    base_best: Best | None = None
    for p in points:
        r = _results(p, bench)
        if r is None:  # not evaluated (yet): its status where the base's pass@1 would be
            every.rows.append([*_settings(p), "-", p.get("status", "pending"), *["-"] * 7])
            heat_values.append([None] * len(temps))
            heat.rows.append([p["name"], num(p["T_train"], "g"), *["-"] * len(temps)])
            continue
        base_best = base_best or r.base_best
        cells = [r.at(t) for t in temps]
        for t, c in zip(temps, cells, strict=True):
            if c is None:
                continue
            base_at.setdefault(t, c)
            every.rows.append(
                [
                    *_settings(p),
                    num(t, "g"),
                    num(c.base_pass1),
                    num(c.adapter_pass1),
                    delta(c.delta),
                    interval(c.ci_low, c.ci_high),
                    num(c.base_finish_rate, ".3f"),
                    num(c.adapter_finish_rate, ".3f"),
                    num(c.base_mean_tokens, ".1f"),
                    num(c.adapter_mean_tokens, ".1f"),
                ]
            )
        values = [c.delta if c else None for c in cells]
        heat_values.append(values)
        heat.rows.append([p["name"], num(p["T_train"], "g"), *(delta(v) for v in values)])
    scale = max((abs(v) for row in heat_values for v in row if v is not None), default=0.0) or 0.01
    heat.colors = [[None, None, *(heat_color(v, scale) for v in row)] for row in heat_values]
    heat.rows.append(["base pass@1", "", *(num(base_at[t].base_pass1) if t in base_at else "-" for t in temps)])
    heat.colors.append([None] * (len(temps) + 2))
    heat.legend = f"Colour scale: red -{scale:.4f} .. white 0 .. green +{scale:.4f}."

    text = []
    if base_best is not None:
        text.append(
            f"Base model at its best T_eval: pass@1 {num(base_best.pass_at_1)} at T_eval {base_best.temperature:g}."
        )
    found = best_point(points, bench)
    if found is not None:
        top, held_out = found
        r = _results(top, bench)
        d = r.delta
        settings = f"T_train {top['T_train']:g}, top-k {_topk(top['top_k'])}, top-p {top['top_p']:g}"
        chosen = (
            f"chosen on the selection part (adapter pass@1 there {num(r.selection_pass1)})"
            if held_out
            else "chosen on the same problems it is judged on (no selection part recorded): exploratory"
        )
        holm = ((top.get("results") or {}).get("holm") or {}).get("p_adjusted")
        test = f"; one-sided p {num(d.p_value)}, Holm-adjusted {num(holm)}" if d.p_value is not None else ""
        text.append(
            f"Best point: **{top['name']}** ({settings}), {chosen}: "
            f"adapter pass@1 {num(r.adapter_best.pass_at_1)} at T_eval {r.adapter_best.temperature:g} vs base "
            f"{num(r.base_best.pass_at_1)} at T_eval {r.base_best.temperature:g}: delta {delta(d.value)}, "
            f"95% CI {interval(d.ci_low, d.ci_high)} (lower bound {'above 0' if d.ci_low > 0 else 'not above 0'}"
            f"{test})."
        )
        if r.decided_by:
            text.append(f"Protocol: {r.decided_by}.")
    return Part(bench, text, [(EVERY_POINT, every), (HEATMAP, heat)])


def build(manifest: dict) -> SweepView:
    """What both reports show, from the sweep manifest (``sweep.json``)."""
    points, benches, temps = manifest["points"], manifest["benchmarks"], manifest["t_eval"]
    guards = f", guards {', '.join(benches[1:])}" if len(benches) > 1 else ""
    complete = sum(p["status"] == "complete" for p in points)
    intro = [
        f"Model `{manifest['model']}`; target benchmark `{benches[0]}`{guards}; "
        f"T_eval grid {', '.join(f'{t:g}' for t in temps)}; {manifest['n']} samples per problem.",
        f"Grid: {json.dumps(manifest['grid'])}{CONTROL_NOTE if manifest['control'] else ''}.",
        f"Status: {manifest['status']} ({complete} of {len(points)} points complete).",
    ]
    parts = [_benchmark_part(bench, points, temps) for bench in benches]
    gate = Table(["point", "promoted", "with Holm", "p", "Holm p", "reasons"], text_columns=6)
    wall = Table(["point", "sample", "train", "eval", "shared from an earlier point"])
    for p in points:
        results = p.get("results") or {}
        decision = Decision.model_validate(results["decision"]) if results.get("decision") else None
        promoted = "-" if decision is None else ("yes" if decision.promoted else "no")
        target = _results(p, benches[0])
        holm = results.get("holm") or {}
        with_holm = "-" if not holm else ("yes" if holm["promoted"] else "no")
        gate.rows.append(
            [
                p["name"],
                promoted,
                with_holm,
                num(target.delta.p_value if target else None),
                num(holm.get("p_adjusted")),
                "; ".join(decision.reasons if decision else []) or "-",
            ]
        )
        w = results.get("wall_s", {})
        shared = ", ".join(f"{stage}: {donor}" for stage, donor in results.get("shared", {}).items()) or "-"
        wall.rows.append(
            [p["name"], num(w.get("sample"), ".0f"), num(w.get("train"), ".0f"), num(w.get("eval"), ".0f"), shared]
        )
    parts += [Part("Gate decisions", tables=[("", gate)]), Part("Wall time per stage (s)", tables=[("", wall)])]
    return SweepView(f"SSD sweep: {manifest['name']}", intro, parts)


def write(sweep_dir: Path, manifest: dict) -> tuple[Path, Path]:
    """Write ``sweep.md`` and ``sweep.html`` in ``sweep_dir``; return their paths."""
    view = build(manifest)
    md, html_path = sweep_dir / "sweep.md", sweep_dir / "sweep.html"
    runs.atomic_write_text(md, _markdown(view))
    runs.atomic_write_text(html_path, _html(view))
    return md, html_path


def _markdown(view: SweepView) -> str:
    lines = [f"# {view.title}", "", *view.intro, ""]
    for part in view.parts:
        lines += [f"## {part.title}", ""]
        if part.text:
            lines += [*part.text, ""]
        for subtitle, table in part.tables:
            if subtitle:
                lines += [f"### {subtitle}", ""]
            lines += [*table.markdown(), ""]
    return "\n".join(lines)


def _html(view: SweepView) -> str:
    return page("sweep.html.j2", title=view.title, wide=True, intro=view.intro, parts=view.parts)
