"""Train stage: LoRA SFT on the model's own samples, loss on completion tokens only.

Backends (``training.backend``): ``trl`` trains in this process with TRL's ``SFTTrainer`` and
PEFT; ``axolotl`` writes an Axolotl YAML and dataset from the same recipe and runs
``axolotl train`` in its own environment (``.venv-axolotl``, made by ``./run.sh setup-axolotl``).

The TRL examples are built from the token ids the sampler recorded (prompt ids + completion
ids), not re-tokenized text: what is trained is exactly what the model saw and produced. TRL gets
them pre-tokenized with a ``completion_mask``, which also keeps TRL from appending an EOS to
every completion (it does that for text data, and would teach a length-cut sample to stop).

Silent-failure checks (FACTS.md "Traps"): every example must have supervised tokens, and the
labels TRL actually built are checked again (TRL drops fully masked rows on its own).

Before a GPU run starts, the memory plan (``ssd plan``) must fit the device, or the stage
refuses with the numbers. Checkpoints every ``save_steps`` steps let a killed run resume on
rerun, with the same data order.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from pipeline import models, runs
from pipeline.recipe import Recipe

log = logging.getLogger(__name__)

STAGE = "train"
ADAPTER = "adapter"
SAMPLES = "samples.jsonl"
CHECKPOINTS = "train"


class TrainingDataError(ValueError):
    """Training data that would train on nothing, or on the wrong tokens."""


def build_examples(rows: list[dict], max_length: int) -> tuple[list[dict], dict]:
    """Token-id examples with a completion mask; completions longer than ``max_length`` are cut.

    A sample whose prompt alone fills ``max_length`` would have no supervised token: it is
    skipped and counted rather than trained on silently.
    """
    examples, too_long = [], 0
    for row in rows:
        prompt, completion = row["prompt_token_ids"], row["completion_token_ids"]
        ids = (prompt + completion)[:max_length]
        mask = ([0] * len(prompt) + [1] * len(completion))[:max_length]
        if sum(mask) == 0:
            too_long += 1
            continue
        examples.append({"input_ids": ids, "completion_mask": mask})
    if not examples:
        raise TrainingDataError(
            f"no example has a supervised token ({too_long} prompts fill training.max_length={max_length})"
        )
    counts = {
        "examples": len(examples),
        "skipped_prompt_too_long": too_long,
        "tokens": sum(len(e["input_ids"]) for e in examples),
        "supervised_tokens": sum(sum(e["completion_mask"]) for e in examples),
    }
    return examples, counts


def check_labels(dataset, expected: int) -> None:
    """Fail loudly if TRL's prepared labels supervise nothing, or TRL dropped examples.

    TRL drops fully masked examples on its own, so a run whose masks went wrong can still
    train on a few rows and look healthy: the count must match too.
    """
    if len(dataset) != expected:
        raise TrainingDataError(f"TRL kept {len(dataset)} of {expected} examples (the rest had no supervised token)")
    for i, labels in enumerate(dataset["labels"]):
        if all(label == -100 for label in labels):
            raise TrainingDataError(f"example {i} has no supervised token after TRL's preparation")


def check_memory(recipe: Recipe) -> dict | None:
    """Refuse a GPU run whose memory plan does not fit the device; the plan's figures, or None on CPU."""
    import torch

    from pipeline.training import plan

    device_gib = recipe.training.device_gib
    if device_gib is None:
        if not torch.cuda.is_available():
            return None
        device_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    estimate = plan.plan_recipe(recipe, device_gib=device_gib)
    log.info("train: memory plan\n%s", estimate.table())
    plan.check_fits(estimate)
    return {"peak_gib": round(estimate.peak_bytes / 2**30, 2), "device_gib": round(device_gib, 2)}


def sft_config(recipe: Recipe, output_dir: Path, gpu: bool):
    """TRL's arguments for the recipe: the paper's optimizer, completion-only loss, checkpoints."""
    from trl import SFTConfig

    cfg = recipe.training
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": cfg.min_learning_rate},
        warmup_steps=cfg.warmup_ratio,
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        max_length=cfg.max_length,
        completion_only_loss=True,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        bf16=gpu,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=False,
    )


def make_trainer(recipe: Recipe, model_path: str, examples: list[dict], output_dir: Path):
    """A TRL ``SFTTrainer`` with a PEFT LoRA model over pre-tokenized examples, and the tokenizer."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from pipeline.training.targets import peft_lora_config

    cfg = recipe.training
    gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=recipe.model.revision)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, revision=recipe.model.revision, dtype=torch.bfloat16 if gpu else torch.float32
    )
    args = sft_config(recipe, output_dir, gpu)
    trainer_class = SFTTrainer
    if cfg.loss_path == "supervised":
        from pipeline.training.fastloss import make_trainer_class

        trainer_class = make_trainer_class()
    trainer = trainer_class(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=peft_lora_config(model.config, cfg.lora),
    )
    check_labels(trainer.train_dataset, len(examples))
    if cfg.loss_path == "supervised":
        from pipeline.training.fastloss import agrees_with_trl

        same, ours, theirs = agrees_with_trl(trainer)
        if not same:
            log.warning("train: the supervised-only loss (%.6f) differs from TRL's (%.6f) for this model: using TRL's loss", ours, theirs)
            trainer.__class__ = SFTTrainer
        else:
            log.info("train: supervised-only loss checked against TRL's on the first batch: %.6f vs %.6f", ours, theirs)
    return trainer, tokenizer


def _checkpoint_dir(run_dir: Path, key: str) -> Path:
    """The checkpoint directory for this key; checkpoints of other inputs are moved aside."""
    path = run_dir / CHECKPOINTS
    key_file = path / "key"
    if path.exists() and (not key_file.exists() or key_file.read_text() != key):
        aside = run_dir / f"{CHECKPOINTS}.stale-{int(time.time())}"
        log.warning("train: checkpoints in %s belong to other inputs: moved to %s", path, aside)
        os.replace(path, aside)
    path.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(key_file, key)
    return path


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint whose files were all written, or None.

    The Trainer writes ``trainer_state.json`` last; a kill during a save leaves a
    ``checkpoint-N`` without it (or with half of it), which transformers'
    ``get_last_checkpoint`` would still return and the resume would die on. Such a directory is
    moved aside (never deleted) and the one before it is used.
    """
    steps = []
    for path in out.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if path.is_dir() and suffix.isdigit():
            steps.append((int(suffix), path))
    for _, path in sorted(steps, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return str(path)
        except (OSError, ValueError):
            aside = path.with_name(f"incomplete-{path.name}-{int(time.time())}")
            log.warning("train: %s was cut short while being written: moved to %s", path, aside)
            os.replace(path, aside)
    return None


def _train_trl(recipe: Recipe, run_dir: Path, model_path: str, key: str) -> tuple[Path, dict]:
    examples, counts = build_examples(runs.read_jsonl(run_dir / SAMPLES), recipe.training.max_length)
    out = _checkpoint_dir(run_dir, key)
    trainer, tokenizer = make_trainer(recipe, model_path, examples, out)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    resume = last_complete_checkpoint(out)
    log.info(
        "train: %d examples, %d supervised tokens, %d trainable parameters%s",
        counts["examples"], counts["supervised_tokens"], trainable, f"; resuming from {resume}" if resume else "",
    )
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    train_s = time.time() - started
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    seen = max((float(e.get("num_tokens", 0)) for e in trainer.state.log_history), default=0.0)
    peft_config = trainer.model.peft_config["default"]
    final = out / "final"
    if final.exists():
        shutil.rmtree(final)
    trainer.model.save_pretrained(final)
    tokenizer.save_pretrained(final)
    counts.update(
        trainable_parameters=trainable,
        loss_path="supervised" if type(trainer).__name__ == "SupervisedLossTrainer" else "trl",
        steps=trainer.state.global_step,
        resumed_from=resume,
        train_loss=result.training_loss,
        losses=losses,
        tokens_per_s=None if resume else round(seen / train_s, 2),
        target_modules=sorted(peft_config.target_modules) if isinstance(peft_config.target_modules, set) else peft_config.target_modules,
        target_parameters=sorted(peft_config.target_parameters or []),
    )
    return final, counts


def _train_axolotl(recipe: Recipe, run_dir: Path, model_path: str, key: str) -> tuple[Path, dict]:
    import torch
    from transformers import AutoTokenizer

    from pipeline.training import axolotl

    work = _checkpoint_dir(run_dir, key)
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=recipe.model.revision)
    counts = axolotl.write_dataset(run_dir / SAMPLES, work / axolotl.DATASET_FILE, tokenizer, recipe.training.max_length)
    output = work / "output"
    if output.exists():  # axolotl refuses a non-empty output directory: restart the run cleanly
        shutil.rmtree(output)
    config = axolotl.build_config(recipe, model_path, work / axolotl.DATASET_FILE, output, tokenizer, gpu=torch.cuda.is_available())
    config_path = axolotl.write_config(config, work / axolotl.CONFIG_FILE, recipe.name)
    axolotl.validate(config_path)
    adapter = axolotl.train(config_path, work / "axolotl.log")
    counts["config"] = str(config_path)
    return adapter, counts


def run(recipe: Recipe, run_dir: Path) -> dict:
    started = time.time()
    cfg = recipe.training
    params = {"model": recipe.model.model_dump(), **cfg.model_dump(exclude={"save_steps", "device_gib"})}
    key, inputs = runs.stage_key(params, {"samples": run_dir / SAMPLES})
    if manifest := runs.reusable(run_dir, STAGE, key):
        log.info("train: reusing %s (inputs unchanged)", run_dir / ADAPTER)
        return manifest

    model_path = models.resolve(recipe.model.id)
    memory = check_memory(recipe)
    train = _train_axolotl if cfg.backend == "axolotl" else _train_trl
    trained, counts = train(recipe, run_dir, model_path, key)
    with runs.atomic_dir(run_dir / ADAPTER) as tmp:
        shutil.copytree(trained, tmp, dirs_exist_ok=True)
        (tmp / "README.md").write_text(_model_card(recipe, model_path, inputs["samples"], counts))
    return runs.write_manifest(
        run_dir,
        STAGE,
        key=key,
        params=params,
        inputs=inputs,
        outputs={ADAPTER: runs.hash_path(run_dir / ADAPTER)},
        counts=counts,
        started=started,
        extra={"model_path": model_path, "memory_plan": memory, "backend": cfg.backend},
    )


def _model_card(recipe: Recipe, model_path: str, samples_hash: str, counts: dict) -> str:
    lora = recipe.training.lora
    losses = counts.get("losses") or []
    return f"""---
base_model: {recipe.model.id}
library_name: peft
tags: [lora, ssd, self-distillation]
---
# {recipe.name}: SSD LoRA adapter

Simple self-distillation: LoRA SFT on {recipe.model.id}'s own unfiltered samples.

- base model: `{recipe.model.id}` (revision `{recipe.model.revision}`, resolved to `{model_path}`)
- samples: sha256 `{samples_hash}`, {counts.get('examples', counts.get('rows'))} examples
- sampling: T={recipe.sampling.temperature}, top_k={recipe.sampling.top_k}, top_p={recipe.sampling.top_p}
- LoRA: r={lora.r}, alpha={lora.alpha}, target_modules={counts.get('target_modules', lora.target_modules)}, target_parameters={counts.get('target_parameters', lora.target_parameters)}
- training: {recipe.training.backend}, lr {recipe.training.learning_rate} -> {recipe.training.min_learning_rate}, epochs {recipe.training.epochs}
- loss: first {losses[0] if losses else None}, last {losses[-1] if losses else None}

Load: `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), THIS_DIR)`, or serve
with vLLM `--enable-lora --lora-modules NAME=THIS_DIR`. Metrics: the run's `eval/metrics.json`
and, once promoted, the registry's `manifest.json`.
"""
