"""Train stage: LoRA SFT on the model's own samples, loss on completion tokens only.

    samples.jsonl ──► train/ (checkpoints, keyed by the inputs) ──► adapter/ (+ model card)

Backends (``training.backend``): ``trl`` trains in this process with TRL's ``SFTTrainer`` and
PEFT (``pipeline.training.trl``); ``axolotl`` writes an Axolotl YAML and dataset from the same
recipe and runs ``axolotl train`` in its own environment (``pipeline.training.axolotl``,
``.venv-axolotl``, made by ``./run.sh setup-axolotl``).

Before a GPU run starts, the memory plan (``ssd plan``) must fit the device, or the stage
refuses with the numbers. ``train/`` belongs to one set of inputs (its ``key`` file): a rerun
with the same inputs resumes from its last checkpoint; one with other inputs moves it aside.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from pipeline import artifacts, models, runs
from pipeline.recipe import Recipe
from pipeline.training import axolotl, plan

log = logging.getLogger(__name__)

STAGE = "train"
ADAPTER = "adapter"
SAMPLES = "samples.jsonl"
WORK = "train"
# What the adapter depends on besides the recipe and the samples: in the stage's key.
PACKAGES = ("ssd-pipeline", "torch", "transformers", "peft", "trl", "axolotl", "accelerate", "datasets")
CODE_FILES = ("training", "stages/train.py", "models.py")


def stage_params(recipe: Recipe) -> dict:
    """What the adapter depends on besides the samples (the stage's other input)."""
    return {
        "model": recipe.model.model_dump(),
        **recipe.training.model_dump(exclude={"save_steps", "device_gib"}),
        **runs.code_version(PACKAGES, CODE_FILES),
    }


def run(recipe: Recipe, run_dir: Path) -> artifacts.Manifest:
    """Train ``adapter/`` from ``samples.jsonl``; the finished manifest is reused while the inputs match."""
    started = time.time()
    cfg = recipe.training
    params = stage_params(recipe)
    key, inputs = runs.stage_key(params, {"samples": run_dir / SAMPLES})
    if manifest := artifacts.reusable(run_dir, STAGE, key):
        log.info("train: reusing %s (inputs unchanged)", run_dir / ADAPTER)
        return manifest

    model_path = models.resolve(recipe.model.id)
    memory = plan.check_device(recipe)
    work = _work_dir(run_dir, key)
    if cfg.backend == "axolotl":
        trained, counts = axolotl.train_recipe(recipe, run_dir / SAMPLES, work, model_path)
    else:
        from pipeline.training import trl  # TRL and transformers: seconds to import

        trained, counts = trl.train(recipe, run_dir / SAMPLES, work, model_path)

    with runs.atomic_dir(run_dir / ADAPTER) as tmp:
        shutil.copytree(trained, tmp, dirs_exist_ok=True)
        (tmp / "README.md").write_text(_model_card(recipe, model_path, inputs["samples"], counts))
    return artifacts.write_manifest(
        run_dir,
        STAGE,
        key=key,
        params=params,
        inputs=inputs,
        outputs={ADAPTER: runs.hash_path(run_dir / ADAPTER)},
        counts=counts,
        started=started,
        model_path=model_path,
        memory_plan=memory,
        backend=cfg.backend,
    )


def _work_dir(run_dir: Path, key: str) -> Path:
    """``train/`` for this key: checkpoints of other inputs are moved aside, never resumed from."""
    path = run_dir / WORK
    key_file = path / "key"
    if path.exists() and (not key_file.is_file() or key_file.read_text() != key):
        runs.move_aside(path, "stale")
    path.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(key_file, key)
    return path


def _model_card(recipe: Recipe, model_path: str, samples_hash: str, counts: dict) -> str:
    cfg = recipe.training
    lora = cfg.lora
    modules = counts.get("target_modules", lora.target_modules)
    parameters = counts.get("target_parameters", lora.target_parameters)
    losses = counts.get("losses") or []
    return f"""---
base_model: {recipe.model.id}
library_name: peft
tags: [lora, ssd, self-distillation]
---
# {recipe.name}: SSD LoRA adapter

Simple self-distillation: LoRA SFT on {recipe.model.id}'s own unfiltered samples.

- base model: `{recipe.model.id}` (revision `{recipe.model.revision}`, resolved to `{model_path}`)
- samples: sha256 `{samples_hash}`, {counts.get("examples", counts.get("rows"))} examples
- sampling: T={recipe.sampling.temperature}, top_k={recipe.sampling.top_k}, top_p={recipe.sampling.top_p}
- LoRA: r={lora.r}, alpha={lora.alpha}, target_modules={modules}, target_parameters={parameters}
- training: {cfg.backend}, lr {cfg.learning_rate} -> {cfg.min_learning_rate}, epochs {cfg.epochs}
- loss: first {losses[0] if losses else None}, last {losses[-1] if losses else None}

Load: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), THIS_DIR)`, or serve
with vLLM `--enable-lora --lora-modules NAME=THIS_DIR`. Metrics: the run's `eval/metrics.json`
and, once promoted, the registry's `manifest.json`.
"""
