"""The TRL backend: LoRA SFT in this process with TRL's ``SFTTrainer`` and PEFT.

The examples are built from the token ids the sampler recorded (prompt ids + completion ids),
not re-tokenized text: what is trained is exactly what the model saw and produced. TRL gets
them pre-tokenized with a ``completion_mask``, which also keeps TRL from appending an EOS to
every completion (it does that for text data, and would teach a length-cut sample to stop).

Silent-failure checks (docs/facts.md, "Traps that fail silently"): every example must have
supervised tokens, and the labels TRL actually built are checked again (TRL drops fully masked
rows on its own).

``training.loss_path`` is an option of the trainer built here (``SSDTrainer.loss_path``), resolved
for the device by ``fastloss.choose_loss_path`` (``auto``: ``supervised`` on CPU and GPU):
``supervised`` computes the training loss with ``fastloss`` (logits only where the loss is
taken), after checking on the first batch that it equals TRL's; ``trl`` is TRL's own loss.

Checkpoints every ``save_steps`` steps in the output directory let a killed run resume with the
same data order; a checkpoint cut short by the kill is moved aside, never resumed from.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from trl import SFTConfig, SFTTrainer

from pipeline import runs
from pipeline.recipe import Recipe
from pipeline.training import fastloss, peft_layout

log = logging.getLogger(__name__)

INCOMPLETE = "incomplete"  # where checkpoints cut short by a kill are moved, inside the output directory


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


def sft_config(recipe: Recipe, output_dir: Path, gpu: bool) -> SFTConfig:
    """TRL's arguments for the recipe: the paper's optimizer, completion-only loss, checkpoints."""
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


class SSDTrainer(SFTTrainer):
    """TRL's ``SFTTrainer`` with one option, ``loss_path`` (``"supervised"`` or ``"trl"``).

    With ``"supervised"``, training steps take their loss from ``fastloss.supervised_loss``;
    evaluation, ``return_outputs`` and MoE auxiliary losses still take TRL's path (they need
    the full outputs). Setting ``loss_path = "trl"`` at any time gives plain ``SFTTrainer``.
    """

    def __init__(self, *args, loss_path: str = "trl", **kwargs):
        if loss_path not in fastloss.LOSS_PATHS:
            raise ValueError(f"loss_path {loss_path!r}: one of {', '.join(fastloss.LOSS_PATHS)}")
        super().__init__(*args, **kwargs)
        self.loss_path = loss_path

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.loss_path != "supervised" or return_outputs or not self.model.training or self.aux_loss_enabled:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        causal_lm = peft_layout.causal_lm(self.accelerator.unwrap_model(model))
        loss, count, correct = fastloss.supervised_loss(causal_lm, inputs, num_items_in_batch)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as TRL's compute_loss does
        self._record_train_metrics(inputs, count, correct)
        return loss

    def loss_agrees_with_trl(self, atol: float = 1e-4) -> tuple[bool, float, float]:
        """``(agree, ours, TRL's)``: the supervised-only loss and TRL's own on the first training batch.

        No gradients, and dropout off, so both paths see the same network.
        """
        batch = self._prepare_inputs(next(iter(self.get_train_dataloader())))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                ours, _, _ = fastloss.supervised_loss(peft_layout.causal_lm(self.model), dict(batch))
                theirs = super().compute_loss(self.model, dict(batch))
        finally:
            self.model.train(was_training)
            self._forget_metrics("eval")  # TRL logged the check as an evaluation step: not the run's
        ours_f, theirs_f = float(ours), float(theirs)
        return abs(ours_f - theirs_f) <= atol * max(1.0, abs(theirs_f)), ours_f, theirs_f

    # --- TRL 1.16's private metric state: the one place this project touches it ----------------
    # SFTTrainer.compute_loss appends to ``self._metrics[mode]`` (averaged and cleared by ``log``)
    # and counts ``self._total_train_tokens``. A loss path that replaces compute_loss must do the
    # same, or ``mean_token_accuracy`` and ``num_tokens`` (the stage's tokens/s) vanish from the
    # logs; and a loss computed outside training must not leave its metrics behind. Re-check these
    # two names when TRL is upgraded (pyproject pins trl==1.16.0).

    def _record_train_metrics(self, inputs: dict, count: int, correct: int) -> None:
        metrics = self._metrics["train"]
        metrics["mean_token_accuracy"].append(correct / count if count else 0.0)
        mask = inputs.get("attention_mask")
        self._total_train_tokens += int(mask.sum()) if mask is not None else inputs["input_ids"].numel()
        metrics["num_tokens"] = [self._total_train_tokens]

    def _forget_metrics(self, mode: str) -> None:
        self._metrics[mode].clear()


def make_trainer(recipe: Recipe, model_path: str, examples: list[dict], output_dir: Path) -> tuple[SSDTrainer, object]:
    """An ``SSDTrainer`` with a PEFT LoRA model over pre-tokenized examples, and the tokenizer.

    TRL's labels are checked here, and with ``loss_path: supervised`` the two losses are
    compared on the first batch: where they differ the trainer falls back to TRL's, with a warning.
    """
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.training.targets import peft_lora_config

    cfg = recipe.training
    gpu = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=recipe.model.revision)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, revision=recipe.model.revision, dtype=torch.bfloat16 if gpu else torch.float32
    )
    trainer = SSDTrainer(
        model=model,
        args=sft_config(recipe, output_dir, gpu),
        train_dataset=Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=peft_lora_config(model.config, cfg.lora),
        loss_path=fastloss.choose_loss_path(cfg.loss_path, "cuda" if gpu else "cpu"),
    )
    check_labels(trainer.train_dataset, len(examples))
    if trainer.loss_path == "supervised":
        same, ours, theirs = trainer.loss_agrees_with_trl()
        if same:
            log.info("train: supervised-only loss checked against TRL's on the first batch: %.6f vs %.6f", ours, theirs)
        else:
            log.warning(
                "train: the supervised-only loss (%.6f) differs from TRL's (%.6f) for this model: using TRL's loss",
                ours,
                theirs,
            )
            trainer.loss_path = "trl"
    return trainer, tokenizer


def last_complete_checkpoint(out: Path) -> str | None:
    """The newest checkpoint whose files were all written, or None.

    The Trainer writes ``trainer_state.json`` last; a kill during a save leaves a
    ``checkpoint-N`` without it (or with half of it), which transformers'
    ``get_last_checkpoint`` would still return and the resume would die on. Such a directory is
    moved aside into ``incomplete/`` (never deleted) and the one before it is used. Not beside
    the others: the Trainer's checkpoint rotation deletes whatever matches ``checkpoint-<N>*``.
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
            log.warning("train: %s was cut short while being written: not resumed from", path)
            aside = runs.move_aside(path, INCOMPLETE)
            (out / INCOMPLETE).mkdir(exist_ok=True)
            aside.rename(out / INCOMPLETE / aside.name)
    return None


def train(recipe: Recipe, samples: Path, out: Path, model_path: str) -> tuple[Path, dict]:
    """Train the recipe's LoRA on ``samples`` with checkpoints in ``out``; ``(adapter dir, counts)``.

    Resumes from the last complete checkpoint in ``out`` (the caller keeps ``out`` for one set
    of inputs only).
    """
    examples, counts = build_examples(runs.read_jsonl(samples), recipe.training.max_length)
    trainer, tokenizer = make_trainer(recipe, model_path, examples, out)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    resume = last_complete_checkpoint(out)
    log.info(
        "train: %d examples, %d supervised tokens, %d trainable parameters%s",
        counts["examples"],
        counts["supervised_tokens"],
        trainable,
        f"; resuming from {resume}" if resume else "",
    )
    started = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    train_s = time.time() - started
    history = trainer.state.log_history
    seen = max((float(entry.get("num_tokens", 0)) for entry in history), default=0.0)
    target_modules, target_parameters = peft_layout.config_targets(trainer.model)
    with runs.atomic_dir(out / "final") as final:
        trainer.model.save_pretrained(final)
        tokenizer.save_pretrained(final)
    counts.update(
        trainable_parameters=trainable,
        loss_path=trainer.loss_path,
        steps=trainer.state.global_step,
        resumed_from=resume,
        train_loss=result.training_loss,
        losses=[entry["loss"] for entry in history if "loss" in entry],
        tokens_per_s=None if resume else round(seen / train_s, 2),
        target_modules=target_modules,
        target_parameters=target_parameters,
    )
    return out / "final", counts
