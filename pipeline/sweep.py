"""``ssd sweep``: one SSD cycle per grid point, sharing what the points have in common.

    ssd sweep RECIPE --grid sampling.temperature=0.6,1.0,1.6 [--grid KEY=V1,V2 ...] [--control]

Each point is a full run (sample, train, eval, promote) in its own run directory,
``<sweep>/points/<name>/``, with the recipe plus the point's overrides. What does not change
is computed once:

- the base model's evaluation, per benchmark and T_eval: every point reads and writes it in
  ``<sweep>/base-eval/`` (``evaluation.base_dir``), so the base is generated once for the
  whole sweep;
- samples, for points that differ only after sampling (training or evaluation keys), and
  adapters, for points that differ only in evaluation: the stage cache of ``ssd run``
  (``artifacts.reusable``) copies a stage another point finished with the same key, its
  manifest naming that point.

``evaluation.temperatures`` is the T_eval axis of every point (one engine start per model
for the whole axis); the grid keys are the other axis.

Choosing among points is a choice on data like choosing T_eval: every point splits its problems
(``evaluation.always_split``), the best point is the one best on the selection part, and each
candidate point's p-value is Holm-adjusted over the points that reached confirmation
(``holm_verdicts``): the report shows each point's decision alone and with the adjusted p-value.

Points never touch the production registry: the gate runs and its decision is reported,
promotions go to ``<sweep>/registry``.

Resumable like ``ssd run``: a rerun skips finished points and resumes the interrupted one.
``sweep.json`` (the manifest: recipe, grid, points, their status and results), ``sweep.md``
and ``sweep.html`` are rewritten after every point.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from pathlib import Path
from typing import Any

from pipeline import artifacts, gate, runs
from pipeline.evaluation import stats
from pipeline.recipe import Recipe, RecipeError, apply_override, parse_value
from pipeline.report import sweep as sweep_report

log = logging.getLogger(__name__)

CONTROL = "control"
CONTROL_OVERRIDES = {"sampling.temperature": 1.0, "sampling.top_k": 0, "sampling.top_p": 1.0, "sampling.min_p": 0.0}
POINTS = "points"
BASE_EVAL = "base-eval"


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
            values.append(parse_value(text, f"--grid {item!r}: value {text!r}"))
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
    text = "_".join(f"{k}-{_value_name(v)}" for k, v in zip(keys, overrides.values(), strict=True))
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text)[:120]


def expand(grid: dict[str, list[Any]], control: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """(name, overrides) for every point of the cartesian product, then the control point."""
    keys = list(grid)
    points = (
        [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))] if keys else [{}]
    )
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
        apply_override(data, key.split("."), value, f"{key}={value}")
    data.update(run_id=name, runs_dir=str(sweep_dir / POINTS), registry_dir=str(sweep_dir / "registry"))
    data["evaluation"]["base_dir"] = str(sweep_dir / BASE_EVAL)
    data["evaluation"]["always_split"] = True  # the best point is chosen on the selection part
    # Points are judged against the base (and, through Holm, against each other), not in sweep
    # order against whichever earlier point reached the sweep's own registry first.
    data["promotion"]["against_champion"] = False
    try:
        return Recipe.model_validate(data)
    except Exception as exc:  # pydantic's message names the field
        raise RecipeError(f"sweep point {name} ({overrides}): {exc}") from None


# --- results ---------------------------------------------------------------------------------


def point_results(run_dir: Path, recipe: Recipe) -> dict | None:
    """What the sweep report shows of a point (per benchmark and T_eval) and its gate decision, once evaluated."""
    evaluation = artifacts.load_manifest(run_dir, "eval")
    if evaluation is None or evaluation.metrics is None:
        return None
    promote, train, sample = (artifacts.load_manifest(run_dir, stage) for stage in ("promote", "train", "sample"))
    train_counts, sample_counts = (train.counts if train else {}), (sample.counts if sample else {})
    s = recipe.sampling
    return {
        "T_train": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "benchmarks": {
            name: sweep_report.PointBenchmark.from_metrics(bench).model_dump(by_alias=True)
            for name, bench in evaluation.metrics.benchmarks.items()
        },
        "decision": promote.decision.model_dump() if promote and promote.decision else {},
        "wall_s": {
            "sample": sample.wall_s if sample else None,
            "train": train.wall_s if train else None,
            "eval": evaluation.wall_s,
        },
        "shared": {stage: m.shared_from for stage, m in (("sample", sample), ("train", train)) if m and m.shared_from},
        "eval_generated": {
            "base": evaluation.counts.get("base_problems_generated"),
            "adapter": evaluation.counts.get("adapter_problems_generated"),
        },
        "train_counts": {
            k: train_counts.get(k) for k in ("examples", "supervised_tokens", "steps", "train_loss", "tokens_per_s")
        },
        "sample_counts": {k: v for k, v in sample_counts.items() if isinstance(v, (int, float, dict))},
    }


def holm_verdicts(manifest: dict, evaluated: list[tuple[dict, Path, Recipe]]) -> None:
    """Judge every candidate point with its Holm-adjusted p-value: ``results["holm"]`` of each.

    The candidates are the points that reached confirmation (evaluated, with a p-value on the
    target), less the control (a negative control is not a candidate for promotion). Each point's
    own promote stage saw only its own p-value; promoting the best of m points on unadjusted
    p-values would find a false winner up to m times as often. Recomputed whenever a point finishes,
    since the family grows.
    """
    target = manifest["benchmarks"][0]
    p_values = {}
    for entry, _, _ in evaluated:
        delta = (((entry.get("results") or {}).get("benchmarks") or {}).get(target) or {}).get("delta") or {}
        if entry["name"] != CONTROL and delta.get("p_value") is not None:
            p_values[entry["name"]] = delta["p_value"]
    adjusted = stats.holm(p_values)
    for entry, run_dir, recipe in evaluated:
        if entry["name"] not in adjusted:
            continue
        metrics = artifacts.load_manifest(run_dir, "eval").metrics
        decision = gate.decide(metrics, recipe.promotion, p_value=adjusted[entry["name"]])
        entry["results"]["holm"] = {
            "p_adjusted": adjusted[entry["name"]],
            "candidates": len(adjusted),
            "promoted": decision.promoted,
            "reasons": decision.reasons,
        }


def write_reports(sweep_dir: Path, manifest: dict) -> tuple[Path, Path]:
    """Write ``sweep.json`` (the manifest) and, from it, ``sweep.md`` and ``sweep.html``."""
    runs.atomic_write_json(sweep_dir / "sweep.json", manifest)
    return sweep_report.write(sweep_dir, manifest)


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
            {
                "name": name,
                "overrides": overrides,
                "run_dir": str(sweep_dir / POINTS / name),
                "status": "pending",
                "T_train": r.sampling.temperature,
                "top_k": r.sampling.top_k,
                "top_p": r.sampling.top_p,
            }
            for name, overrides, r in recipes
        ],
    }
    evaluated: list[tuple[dict, Path, Recipe]] = []
    for entry, (name, _overrides, point) in zip(manifest["points"], recipes, strict=True):
        run_dir = sweep_dir / POINTS / name
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        entry["status"] = "running"
        write_reports(sweep_dir, manifest)
        try:
            with runs.run_lock(run_dir):
                run_point(point)  # stages equal to an earlier point's are taken from it (the stage cache)
            entry["status"] = "complete"
        except Exception as exc:  # noqa: BLE001 - one failed point must not stop the others
            log.exception("sweep: point %s failed; its finished stages are kept and a rerun resumes it", name)
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {exc}"
        entry["wall_s"] = round(time.time() - t0, 1)
        entry["results"] = point_results(run_dir, point)
        evaluated.append((entry, run_dir, point))
        holm_verdicts(manifest, [e for e in evaluated if e[0]["results"]])
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
