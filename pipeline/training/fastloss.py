"""The training stage's loss: logits only where the loss is taken, in chunks.

On a 262k-token vocabulary the output layer is most of a training step on CPU. TRL 1.16's
``SFTTrainer`` already projects through the LM head in tiles, but off Triton devices (CPU) it
scores *every* position of the padded batch (prompt, completion and padding) and computes the
entropy of each, for metrics. Here the backbone runs once, the hidden states of supervised
positions (next-token label not -100) are selected, and the head, the Gemma logit soft-cap and
the cross-entropy run on those rows only, ``chunk`` rows at a time: the full logits tensor is
never materialised. The gradient with respect to the hidden states (and the head's weight, if
it trains) is computed chunk by chunk in the forward pass and scaled in the backward pass.

``SupervisedLossTrainer`` also groups examples of similar length into a batch
(``train_sampling_strategy="group_by_length"``), so padding is small.

The result is the loss TRL computes (sum of token losses over ``num_items_in_batch``): a
start-up check compares the two on the first batch and falls back to TRL's path, with a
warning, for an architecture where they differ.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 28  # fp32 logits per chunk: 256 MiB (256 rows of a 262k vocabulary)


class _SupervisedCrossEntropy(torch.autograd.Function):
    """Sum of token cross-entropies of ``hidden @ weight.T`` (soft-capped) against ``targets``."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, scale, chunk):  # noqa: D401 - autograd API
        rows = hidden.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if weight.requires_grad else None
        with torch.no_grad():
            for start in range(0, rows, chunk):
                h = hidden[start : start + chunk]
                t = targets[start : start + chunk]
                logits = (h @ weight.T).float()
                if scale != 1.0:
                    logits.mul_(scale)
                capped = None
                if softcap:
                    capped = torch.tanh(logits / softcap)
                    logits = capped * softcap
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, t[:, None])[:, 0]
                total += (lse - picked).sum()
                correct += (logits.argmax(-1) == t).sum()
                if grad_hidden is None and grad_weight is None:
                    continue
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place
                grad[torch.arange(len(t), device=grad.device), t] -= 1.0
                if capped is not None:
                    grad.mul_(1.0 - capped.square_())
                if scale != 1.0:
                    grad.mul_(scale)
                grad = grad.to(weight.dtype)
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk] = (grad @ weight).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (grad.T @ h.to(weight.dtype)).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_total, _grad_correct):
        grad_hidden, grad_weight = ctx.saved_tensors
        gh = None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype)
        gw = None if grad_weight is None else (grad_weight * grad_total).to(ctx.weight_dtype)
        return gh, gw, None, None, None, None


def head_settings(causal_lm) -> tuple[float | None, float]:
    """The logit soft-cap and scale the model's own forward applies after its LM head."""
    text = causal_lm.config.get_text_config()
    scale = getattr(text, "logit_scale", None)
    if scale is None:
        scale = getattr(text, "output_multiplier", None)
    return getattr(text, "final_logit_softcapping", None), 1.0 if scale is None else float(scale)


def supervised_loss(causal_lm, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, int, int]:
    """(loss, supervised tokens, correct top-1) for a batch with ``labels`` (-100 = ignored).

    ``causal_lm`` is the transformers model (under PEFT: ``peft_model.get_base_model()``, whose
    layers carry the LoRA). The loss is the sum over supervised tokens divided by
    ``num_items_in_batch`` (the whole accumulated batch, as the Trainer counts it) or, without
    it, by this batch's supervised tokens.
    """
    labels = inputs["labels"]
    forward = {k: v for k, v in inputs.items() if k not in ("labels", "completion_mask", "num_items_in_batch")}
    forward["use_cache"] = False
    hidden = causal_lm.base_model(**forward).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    head = causal_lm.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise NotImplementedError("supervised-only loss: LM heads with a bias are not supported")
    softcap, scale = head_settings(causal_lm)
    rows = hidden[mask]
    chunk = max(1, _CHUNK_BYTES // (4 * head.weight.shape[0]))
    total, correct = _SupervisedCrossEntropy.apply(rows, head.weight, targets[mask], softcap, scale, chunk)
    count = int(mask.sum())
    denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
    if isinstance(denominator, torch.Tensor):
        denominator = denominator.to(total.device)
    return total / denominator, count, int(correct)


def make_trainer_class():
    """``SFTTrainer`` whose loss is ``supervised_loss`` (imported lazily: TRL is heavy)."""
    from trl import SFTTrainer

    class SupervisedLossTrainer(SFTTrainer):
        """TRL's SFTTrainer with logits computed only at supervised positions."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not self.model.training or getattr(self, "aux_loss_enabled", False):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            causal_lm = self.accelerator.unwrap_model(model)
            if hasattr(causal_lm, "get_base_model"):
                causal_lm = causal_lm.get_base_model()
            loss, count, correct = supervised_loss(causal_lm, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            metrics = self._metrics["train"]
            metrics["mean_token_accuracy"].append(correct / count if count else 0.0)
            self._total_train_tokens += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else inputs["input_ids"].numel()
            metrics["num_tokens"] = [self._total_train_tokens]
            return loss

    return SupervisedLossTrainer


def agrees_with_trl(trainer, atol: float = 1e-4) -> tuple[bool, float, float]:
    """Compare this path's loss with TRL's own on the first training batch (no gradients)."""
    from trl import SFTTrainer

    batch = next(iter(trainer.get_train_dataloader()))
    batch = trainer._prepare_inputs(batch)
    model = trainer.model
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training = model.training
    model.eval()  # no dropout: both paths see the same network
    try:
        with torch.no_grad():
            ours, _, _ = supervised_loss(causal_lm, dict(batch))
            theirs = SFTTrainer.compute_loss(trainer, model, dict(batch))
    finally:
        model.train(was_training)
        trainer._metrics["eval"].clear()  # the check's metrics are not the run's
    ours_f, theirs_f = float(ours), float(theirs)
    return abs(ours_f - theirs_f) <= atol * max(1.0, abs(theirs_f)), ours_f, theirs_f
