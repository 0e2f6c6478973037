"""Promote stage: the adapter enters the registry only if the gate passes.

The gate (``pipeline/gate.py``) reads ``eval/metrics.json`` and the recipe's thresholds; its
decision and every reason are written to ``promotion.json`` in the run either way. A promoted
adapter becomes the next version in ``<registry_dir>/<name>/`` (``pipeline/deploy/registry.py``:
built in a temporary directory and renamed under a lock; ``latest`` moves atomically), and only
if ``latest`` still names the champion the eval stage compared it with.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pipeline import artifacts, gate, runs
from pipeline.deploy import registry
from pipeline.recipe import Recipe

log = logging.getLogger(__name__)

STAGE = "promote"


def run(recipe: Recipe, run_dir: Path) -> artifacts.Manifest:
    started = time.time()
    metrics_file = run_dir / "eval" / "metrics.json"
    params = recipe.promotion.model_dump()
    key, inputs = runs.stage_key(params, {"metrics": metrics_file, "adapter": run_dir / "adapter"})
    if manifest := artifacts.reusable(run_dir, STAGE, key):
        log.info("promote: reusing decision in %s", run_dir / "promotion.json")
        return manifest

    metrics = artifacts.EvalMetrics.load(metrics_file)
    name = recipe.promotion.name or recipe.name
    decision = gate.decide(metrics, recipe.promotion).model_copy(update={"name": name})
    if decision.promoted:
        lineage = {
            "base_model": recipe.model.model_dump(),
            "recipe": recipe.model_dump(mode="json"),
            "samples_sha256": runs.hash_file(run_dir / "samples.jsonl"),
            "metrics": metrics.model_dump(mode="json", by_alias=True),
            "decision": decision.model_dump(include={"promoted", "reasons"}),
            "run_id": run_dir.name,
            "run_dir": str(run_dir.resolve()),
            "reproduction": reproduction(recipe, run_dir),
        }
        # judged against the champion of the eval stage: if another job moved `latest` since, nothing is promoted
        champion = metrics.champion.version if metrics.champion else None
        expect = champion if recipe.promotion.against_champion else registry.ANY_LATEST
        try:
            version = registry.promote(recipe.registry_dir, name, run_dir / "adapter", lineage, expect_latest=expect)
            decision = decision.model_copy(update={"version": version})
        except registry.ChampionMovedError as exc:
            decision = decision.model_copy(update={"promoted": False, "reasons": [*decision.reasons, f"FAIL: {exc}"]})
    decision.save(run_dir / "promotion.json")
    for reason in decision.reasons:
        log.info("promote: %s", reason)
    log.info("promote: %s", f"PROMOTED as {name}:{decision.version}" if decision.promoted else "not promoted")
    return artifacts.write_manifest(
        run_dir,
        STAGE,
        key=key,
        params=params,
        inputs=inputs,
        outputs={"promotion.json": runs.hash_file(run_dir / "promotion.json")},
        counts={},
        started=started,
        decision=decision,
    )


FILTER_COUNTS = ("prompts", "duplicates_dropped", "skipped_prompt_too_long", "generated", "kept")


def reproduction(recipe: Recipe, run_dir: Path) -> dict:
    """The registry card's reproduction record: package versions, the model's file hashes, the
    prompt file's hash, the sampling filters' counts and every seed."""
    sample = artifacts.load_manifest(run_dir, "sample")
    record = (sample.reproduction or {}) if sample else {}
    counts = sample.counts if sample else {}
    return {
        "versions": runs.versions(),
        "model": record.get("model", recipe.model.model_dump()),
        "prompts_sha256": sample.inputs.get("prompts") if sample else None,
        "sample_counts": {k: v for k, v in counts.items() if k in FILTER_COUNTS or k.startswith("dropped_")},
        "seeds": {
            "sampling": recipe.sampling.seed,
            "training": recipe.training.seed,
            "evaluation": recipe.evaluation.seed,
            "split": recipe.evaluation.split_seed,
            "bootstrap": recipe.evaluation.bootstrap_seed,
        },
    }
