"""``ssd sweep``: one SSD cycle per grid point, sharing what the points have in common.

    ssd sweep RECIPE --grid sampling.temperature=0.6,1.0,1.6 [--grid KEY=V1,V2 ...] [--control]

Each point is a full run (sample, train, eval, promote) in its own run directory,
``<sweep>/points/<name>/``, with the recipe plus the point's overrides. What does not change
is computed once:

- the base model's evaluation, per benchmark and T_eval: every point reads and writes it in
  ``<sweep>/base-eval/`` (``evaluation.base_dir``), so the base is generated once for the
  whole sweep;
- samples, for points that differ only after sampling (training or evaluation keys), and
  adapters, for points that differ only in evaluation: copied from the first point that made
  them, with their manifests, so the stage sees finished work.

``evaluation.temperatures`` is the T_eval axis of every point (one engine start per model
for the whole axis); the grid keys are the other axis. Points never touch the production
registry: the gate runs and its decision is reported, promotions go to ``<sweep>/registry``.

Resumable like ``ssd run``: a rerun skips finished points and resumes the interrupted one.
``sweep.json`` (the manifest: recipe, grid, points, their status and results), ``sweep.md``
and ``sweep.html`` are rewritten after every point.
"""

from __future__ import annotations

import html
import itertools
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from pipeline import runs
from pipeline.recipe import Recipe, RecipeError, _apply_override

log = logging.getLogger(__name__)

CONTROL = "control"
CONTROL_OVERRIDES = {"sampling.temperature": 1.0, "sampling.top_k": 0, "sampling.top_p": 1.0, "sampling.min_p": 0.0}
POINTS = "points"
BASE_EVAL = "base-eval"
# Recipe sections each stage's output depends on: points equal on them share that stage's files.
SHARED_STAGES = {
    "sample": ("model", "prompts", "sampling", "engine"),
    "train": ("model", "prompts", "sampling", "engine", "training"),
}
STAGE_OUTPUTS = {"sample": ("samples.raw.jsonl", "samples.jsonl"), "train": ("adapter",)}


# --- the grid -------------------------------------------------------------------------------


def split_values(raw: str) -> list[str]:
    """``a,b,[c,d]`` -> ``["a", "b", "[c,d]"]``: commas inside brackets or quotes do not split."""
    parts, depth, quote, current = [], 0, None, []
    for ch in raw:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["sampling.temperature=0.6,1.0"]`` -> ``{"sampling.temperature": [0.6, 1.0]}`` (values as YAML)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")) or not raw.strip():
            raise RecipeError(f"--grid {item!r}: expected KEY.SUB=V1,V2,..., e.g. sampling.temperature=0.6,1.0,1.6")
        if key == "evaluation.temperatures":
            raise RecipeError(
                f"--grid {item!r}: evaluation.temperatures is the T_eval axis of every point; "
                f"set it as an override instead: evaluation.temperatures=[{raw}]"
            )
        values = []
        for text in split_values(raw):
            try:
                values.append(yaml.safe_load(text))
            except yaml.YAMLError as exc:
                raise RecipeError(f"--grid {item!r}: value {text!r} is not valid YAML: {exc}") from None
        if key in grid:
            raise RecipeError(f"--grid {item!r}: key {key} given twice")
        grid[key] = values
    return grid


def _value_name(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def point_name(overrides: dict[str, Any]) -> str:
    """A directory-safe name from the overrides' last key parts: ``temperature-0.6_top_k-20``."""
    if not overrides:
        return "recipe"
    short = [key.split(".")[-1] for key in overrides]
    keys = short if len(set(short)) == len(short) else list(overrides)
    text = "_".join(f"{k}-{_value_name(v)}" for k, v in zip(keys, overrides.values()))
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)[:120]


def expand(grid: dict[str, list[Any]], control: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(name, overrides) for every point of the cartesian product, then the control point."""
    keys = list(grid)
    points = [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))] if keys else [{}]
    named = [(point_name(p), p) for p in points]
    if control:
        named.append((CONTROL, dict(CONTROL_OVERRIDES)))
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise RecipeError(f"grid points with the same name: {sorted({n for n in names if names.count(n) > 1})}")
    return named


def point_recipe(base: Recipe, name: str, overrides: dict[str, Any], sweep_dir: Path) -> Recipe:
    """The recipe of one point: the sweep's recipe, the point's overrides, the sweep's directories."""
    data = base.model_dump(mode="json")
    data["sweep"] = {}
    for key, value in overrides.items():
        _apply_override(data, key.split("."), value, f"{key}={value}")
    data.update(run_id=name, runs_dir=str(sweep_dir / POINTS), registry_dir=str(sweep_dir / "registry"))
    data["evaluation"]["base_dir"] = str(sweep_dir / BASE_EVAL)
    try:
        return Recipe.model_validate(data)
    except Exception as exc:  # pydantic's message names the field
        raise RecipeError(f"sweep point {name} ({overrides}): {exc}") from None


# --- sharing finished stages between points --------------------------------------------------


def _signature(recipe: Recipe, stage: str) -> str:
    dump = recipe.model_dump(mode="json")
    return runs.hash_obj({section: dump[section] for section in SHARED_STAGES[stage]})


def share_stages(run_dir: Path, recipe: Recipe, earlier: list[tuple[Path, Recipe]]) -> list[str]:
    """Copy the sample/train outputs of an earlier point whose inputs are the same; what was copied."""
    copied = []
    for stage in SHARED_STAGES:
        if runs.load_manifest(run_dir, stage):
            continue  # this point has (or had) its own: its stage decides whether it is still valid
        signature = _signature(recipe, stage)
        donor = next(
            (d for d, r in earlier if _signature(r, stage) == signature and (runs.load_manifest(d, stage) or {}).get("status") == "complete"),
            None,
        )
        if donor is None:
            return copied  # a later stage cannot be shared if this one was not
        for item in STAGE_OUTPUTS[stage]:
            src, dst = donor / item, run_dir / item
            if src.is_dir():
                with runs.atomic_dir(dst) as tmp:
                    shutil.copytree(src, tmp, dirs_exist_ok=True)
            else:
                runs.atomic_write_text(dst, src.read_text())
        manifest = runs.load_manifest(donor, stage) | {"shared_from": donor.name}
        runs.atomic_write_json(runs.manifest_path(run_dir, stage), manifest)
        copied.append(stage)
        log.info("sweep: %s reuses %s's %s stage", run_dir.name, donor.name, stage)
    return copied


# --- results and the report ------------------------------------------------------------------


def point_results(run_dir: Path, recipe: Recipe) -> dict | None:
    """The point's table rows (per benchmark and T_eval) and its gate decision, once evaluated."""
    evaluation = runs.load_manifest(run_dir, "eval")
    if not evaluation or evaluation.get("status") != "complete":
        return None
    promote = runs.load_manifest(run_dir, "promote") or {}
    train = runs.load_manifest(run_dir, "train") or {}
    sample = runs.load_manifest(run_dir, "sample") or {}
    s = recipe.sampling
    benches = {}
    for bench, m in evaluation["metrics"]["benchmarks"].items():
        benches[bench] = {
            "grid": [
                {
                    "T_eval": g["temperature"],
                    "base_pass@1": g["base"]["pass@1"],
                    "adapter_pass@1": g["adapter"]["pass@1"],
                    "delta": g.get("delta", {}).get("value", g["adapter"]["pass@1"] - g["base"]["pass@1"]),
                    "ci_low": g.get("delta", {}).get("ci_low"),
                    "ci_high": g.get("delta", {}).get("ci_high"),
                    "base_finish_rate": g["base"]["finish_rate"],
                    "adapter_finish_rate": g["adapter"]["finish_rate"],
                    "base_mean_tokens": g["base"]["mean_completion_tokens"],
                    "adapter_mean_tokens": g["adapter"]["mean_completion_tokens"],
                }
                for g in m["grid"]
            ],
            "base_best": m["base_best"],
            "adapter_best": m["adapter_best"],
            "delta": m["delta"],
        }
    return {
        "T_train": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "benchmarks": benches,
        "decision": (promote.get("decision") or {}),
        "wall_s": {
            "sample": sample.get("wall_s"), "train": train.get("wall_s"), "eval": evaluation.get("wall_s"),
        },
        "shared": {stage: m.get("shared_from") for stage, m in (("sample", sample), ("train", train)) if m.get("shared_from")},
        "eval_generated": {
            "base": evaluation["counts"].get("base_problems_generated"),
            "adapter": evaluation["counts"].get("adapter_problems_generated"),
        },
        "train_counts": {k: train.get("counts", {}).get(k) for k in ("examples", "supervised_tokens", "steps", "train_loss", "tokens_per_s")},
        "sample_counts": {k: v for k, v in sample.get("counts", {}).items() if isinstance(v, (int, float, dict))},
    }


def best(points: list[dict], bench: str) -> dict | None:
    """The point whose adapter, at its own best T_eval, has the highest pass@1 on ``bench``."""
    scored = [p for p in points if p.get("results") and bench in p["results"]["benchmarks"]]
    if not scored:
        return None
    return max(scored, key=lambda p: p["results"]["benchmarks"][bench]["adapter_best"]["pass@1"])


def _f(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _ci(row: dict) -> str:
    if row.get("ci_low") is None:
        return "-"
    return f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"


def _topk(k: int) -> str:
    return "off" if not k else str(k)


def tables(manifest: dict) -> dict:
    """Everything the two reports show, as rows of strings (shared by Markdown and HTML)."""
    points = manifest["points"]
    benches = manifest["benchmarks"]
    temps = manifest["t_eval"]
    out: dict[str, Any] = {"benchmarks": {}}
    for bench in benches:
        header = ["point", "T_train", "top-k", "top-p", "T_eval", "base pass@1", "adapter pass@1", "delta", "95% CI",
                  "finish base", "finish adapter", "mean tokens base", "mean tokens adapter"]
        rows = [header]
        heat: list[list[Any]] = []
        base_by_t: dict[float, dict] = {}
        for p in points:
            r = (p.get("results") or {}).get("benchmarks", {}).get(bench)
            if not r:  # not evaluated (yet): its status where the base's pass@1 would be
                rows.append([p["name"], _f(p["T_train"], "g"), _topk(p["top_k"]), _f(p["top_p"], "g"), "-",
                             p.get("status", "pending"), *["-"] * 7])
                heat.append([p["name"], p["T_train"], *[None] * len(temps)])
                continue
            cells = {g["T_eval"]: g for g in r["grid"]}
            for t in temps:
                g = cells.get(t)
                if g is None:
                    continue
                base_by_t.setdefault(t, g)
                rows.append([
                    p["name"], _f(p["T_train"], "g"), _topk(p["top_k"]), _f(p["top_p"], "g"), _f(t, "g"),
                    _f(g["base_pass@1"]), _f(g["adapter_pass@1"]), _f(g["delta"], "+.4f"), _ci(g),
                    _f(g["base_finish_rate"], ".3f"), _f(g["adapter_finish_rate"], ".3f"),
                    _f(g["base_mean_tokens"], ".1f"), _f(g["adapter_mean_tokens"], ".1f"),
                ])
            heat.append([p["name"], p["T_train"], *[cells[t]["delta"] if t in cells else None for t in temps]])
        base_row = ["base"] + [_f(base_by_t[t]["base_pass@1"]) if t in base_by_t else "-" for t in temps]
        base_best = None
        if base_by_t:
            t_best = max(base_by_t, key=lambda t: (base_by_t[t]["base_pass@1"], -t))
            base_best = {"T_eval": t_best, "pass@1": base_by_t[t_best]["base_pass@1"]}
        top = best(points, bench)
        out["benchmarks"][bench] = {"table": rows, "heat": heat, "base_row": base_row, "base_best": base_best, "best": top}
    return out


def _best_lines(bench: str, t: dict) -> list[str]:
    lines = []
    if t["base_best"]:
        lines.append(f"Base model at its best T_eval: pass@1 {t['base_best']['pass@1']:.4f} at T_eval {t['base_best']['T_eval']:g}.")
    top = t["best"]
    if top:
        r = top["results"]["benchmarks"][bench]
        d = r["delta"]
        verdict = "above 0" if d["ci_low"] > 0 else "not above 0"
        lines.append(
            f"Best point: **{top['name']}** (T_train {top['T_train']:g}, top-k {_topk(top['top_k'])}, top-p {top['top_p']:g}): "
            f"adapter pass@1 {r['adapter_best']['pass@1']:.4f} at T_eval {r['adapter_best']['temperature']:g} vs base "
            f"{r['base_best']['pass@1']:.4f} at T_eval {r['base_best']['temperature']:g}: delta {d['value']:+.4f}, "
            f"95% CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] (lower bound {verdict}; each model at its own best T_eval)."
        )
    return lines


def render_markdown(manifest: dict) -> str:
    t = tables(manifest)
    temps = manifest["t_eval"]
    lines = [
        f"# SSD sweep: {manifest['name']}",
        "",
        f"Model `{manifest['model']}`; target benchmark `{manifest['benchmarks'][0]}`"
        + (f", guards {', '.join(manifest['benchmarks'][1:])}" if len(manifest["benchmarks"]) > 1 else "")
        + f"; T_eval grid {', '.join(f'{x:g}' for x in temps)}; {manifest['n']} samples per problem.",
        f"Grid: {json.dumps(manifest['grid'])}" + ("; with the control point (T_train 1.0, top-k off, top-p 1.0)" if manifest["control"] else "") + ".",
        f"Status: {manifest['status']} ({sum(p['status'] == 'complete' for p in manifest['points'])} of {len(manifest['points'])} points complete).",
        "",
    ]
    for bench, b in t["benchmarks"].items():
        lines += [f"## {bench}", ""]
        lines += _best_lines(bench, b)
        lines += ["", "### Every point", ""]
        lines += ["| " + " | ".join(b["table"][0]) + " |", "|" + "---|" * len(b["table"][0])]
        lines += ["| " + " | ".join(row) + " |" for row in b["table"][1:]]
        lines += ["", "### Delta heatmap (adapter - base pass@1; rows: points by T_train, columns: T_eval)", ""]
        lines += ["| point | T_train | " + " | ".join(f"T_eval {x:g}" for x in temps) + " |", "|" + "---|" * (len(temps) + 2)]
        for row in b["heat"]:
            lines.append(f"| {row[0]} | {_f(row[1], 'g')} | " + " | ".join(_f(v, "+.4f") for v in row[2:]) + " |")
        lines.append("| base pass@1 | | " + " | ".join(b["base_row"][1:]) + " |")
        lines.append("")
    lines += ["## Gate decisions", "", "| point | promoted | reasons |", "|---|---|---|"]
    for p in manifest["points"]:
        d = (p.get("results") or {}).get("decision") or {}
        reasons = "; ".join(d.get("reasons", [])) or "-"
        lines.append(f"| {p['name']} | {'yes' if d.get('promoted') else ('no' if d else '-')} | {reasons} |")
    lines += ["", "## Wall time per stage (s)", "", "| point | sample | train | eval | shared from an earlier point |", "|---|---|---|---|---|"]
    for p in manifest["points"]:
        r = p.get("results") or {}
        w = r.get("wall_s", {})
        shared = ", ".join(f"{k}: {v}" for k, v in r.get("shared", {}).items()) or "-"
        lines.append(f"| {p['name']} | {_f(w.get('sample'), '.0f')} | {_f(w.get('train'), '.0f')} | {_f(w.get('eval'), '.0f')} | {shared} |")
    lines.append("")
    return "\n".join(lines)


def _heat_color(value: float | None, scale: float) -> str:
    if value is None or not math.isfinite(value):
        return "#eeeeee"
    x = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    if x >= 0:  # white -> green
        r, g, b = int(255 - 180 * x), int(255 - 80 * x), int(255 - 180 * x)
    else:  # white -> red
        r, g, b = 255, int(255 + 180 * x), int(255 + 180 * x)
    return f"#{r:02x}{g:02x}{b:02x}"


def render_html(manifest: dict) -> str:
    esc = html.escape
    t = tables(manifest)
    temps = manifest["t_eval"]
    md_intro = render_markdown(manifest).split("\n## ")[0].splitlines()[2:]
    body = [f"<h1>SSD sweep: {esc(manifest['name'])}</h1>"] + [f"<p>{esc(line)}</p>" for line in md_intro if line.strip()]
    for bench, b in t["benchmarks"].items():
        body.append(f"<section><h2>{esc(bench)}</h2>")
        body += [f"<p class=\"best\">{esc(line.replace('**', ''))}</p>" for line in _best_lines(bench, b)]
        values = [v for row in b["heat"] for v in row[2:] if isinstance(v, (int, float))]
        scale = max((abs(v) for v in values), default=0.0) or 0.01
        body.append(f"<h3>Delta heatmap (adapter - base pass@1)</h3><table class=\"heatmap\"><thead><tr><th>point</th><th>T_train</th>"
                    + "".join(f"<th>T_eval {x:g}</th>" for x in temps) + "</tr></thead><tbody>")
        for row in b["heat"]:
            cells = "".join(
                f'<td class="heat" style="background:{_heat_color(v, scale)}">{esc(_f(v, "+.4f"))}</td>' for v in row[2:]
            )
            body.append(f"<tr><td>{esc(row[0])}</td><td>{esc(_f(row[1], 'g'))}</td>{cells}</tr>")
        body.append("<tr><td>base pass@1</td><td></td>" + "".join(f"<td>{esc(c)}</td>" for c in b["base_row"][1:]) + "</tr>")
        body.append(f"</tbody></table><p class=\"note\">Colour scale: red -{scale:.4f} .. white 0 .. green +{scale:.4f}.</p>")
        body.append("<h3>Every point</h3><table><thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in b["table"][0]) + "</tr></thead><tbody>")
        body += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in b["table"][1:]]
        body.append("</tbody></table></section>")
    rest = render_markdown(manifest).split("## Gate decisions")[1]
    body.append("<section><h2>Gate decisions and wall time</h2><pre>" + esc("## Gate decisions" + rest) + "</pre></section>")
    css = (
        "body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.85rem}"
        "th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}th:first-child,td:first-child{text-align:left}"
        ".best{font-weight:bold}.note{color:#555;font-size:.85rem}pre{font-size:.8rem;white-space:pre-wrap}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>SSD sweep: {esc(manifest['name'])}</title><style>{css}</style></head><body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


def write_reports(sweep_dir: Path, manifest: dict) -> tuple[Path, Path]:
    runs.atomic_write_json(sweep_dir / "sweep.json", manifest)
    md, page = sweep_dir / "sweep.md", sweep_dir / "sweep.html"
    runs.atomic_write_text(md, render_markdown(manifest))
    runs.atomic_write_text(page, render_html(manifest))
    return md, page


# --- running ---------------------------------------------------------------------------------


def run_sweep(recipe: Recipe, sweep_dir: Path, grid: dict[str, list[Any]], control: bool, run_point) -> dict:
    """Run every point (``run_point(recipe) -> None`` runs one cycle); return the sweep manifest.

    A point that fails is recorded and the sweep goes on; its rerun resumes it.
    """
    points = expand(grid, control)
    recipes = [(name, overrides, point_recipe(recipe, name, overrides, sweep_dir)) for name, overrides in points]
    started = time.time()
    manifest = {
        "name": sweep_dir.name,
        "model": recipe.model.id,
        "recipe": recipe.model_dump(mode="json"),
        "grid": grid,
        "control": control,
        "benchmarks": recipe.evaluation.benchmarks,
        "t_eval": recipe.evaluation.temperatures,
        "n": recipe.evaluation.n,
        "versions": runs.versions(),
        "status": "running",
        "points": [
            {"name": name, "overrides": overrides, "run_dir": str(sweep_dir / POINTS / name), "status": "pending",
             "T_train": r.sampling.temperature, "top_k": r.sampling.top_k, "top_p": r.sampling.top_p}
            for name, overrides, r in recipes
        ],
    }
    done: list[tuple[Path, Recipe]] = []
    for entry, (name, _overrides, point) in zip(manifest["points"], recipes):
        run_dir = sweep_dir / POINTS / name
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        entry["status"] = "running"
        write_reports(sweep_dir, manifest)
        try:
            with runs.run_lock(run_dir):
                share_stages(run_dir, point, done)
                run_point(point)
            entry["status"] = "complete"
        except Exception as exc:  # noqa: BLE001 - one failed point must not stop the others
            log.exception("sweep: point %s failed; its finished stages are kept and a rerun resumes it", name)
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["wall_s"] = round(time.time() - t0, 1)
        entry["results"] = point_results(run_dir, point)
        done.append((run_dir, point))
        write_reports(sweep_dir, manifest)
    manifest["status"] = "complete" if all(p["status"] == "complete" for p in manifest["points"]) else "failed"
    manifest["wall_s"] = round(time.time() - started, 1)
    write_reports(sweep_dir, manifest)
    return manifest


def load_manifest(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "sweep.json").read_text())


def rerender(sweep_dir: Path) -> tuple[Path, Path]:
    """Rewrite sweep.md and sweep.html from sweep.json (after a change to the report code)."""
    return write_reports(sweep_dir, load_manifest(sweep_dir))
