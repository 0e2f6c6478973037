"""The training stage's loss: logits only where the loss is taken, in chunks.

On a 262k-token vocabulary the output layer is most of a training step on CPU. TRL 1.16's
``SFTTrainer`` already projects through the LM head in tiles, but off Triton devices (CPU) it
scores *every* position of the padded batch (prompt, completion and padding) and computes the
entropy of each, for metrics. Here the backbone runs once, the hidden states of supervised
positions (next-token label not -100) are selected, and the head, the Gemma logit soft-cap and
the cross-entropy run on those rows only, ``chunk`` rows at a time: the full logits tensor is
never materialised. The gradient with respect to the hidden states (and the head's weight, if
it trains) is computed chunk by chunk in the forward pass and scaled in the backward pass.

This module is plain PyTorch: ``pipeline.training.trl`` builds the trainer that uses it
(``training.loss_path: supervised``), which also groups examples of similar length into a batch
(``train_sampling_strategy="group_by_length"``), so padding is small.

The result is the loss TRL computes (sum of token losses over ``num_items_in_batch``): a
start-up check there compares the two on the first batch and falls back to TRL's path, with a
warning, for an architecture where they differ.

Which path a run takes is decided in one place, ``choose_loss_path``: the train stage, the
memory plan (``ssd plan``) and the GPU check (``bench/gpu_train.py``) all ask it, so the plan
prices what the stage runs and the GPU measures what the plan priced. ``chunk_rows`` is the
other number they share.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 28  # fp32 logits per chunk: 256 MiB (256 rows of a 262k vocabulary)

LOSS_PATHS = ("supervised", "trl")
AUTO = "auto"
# What ``training.loss_path: auto`` runs on each device type (the reasons: ``choose_loss_path``).
AUTO_LOSS_PATH = {"cpu": "supervised", "cuda": "supervised"}


def choose_loss_path(requested: str, device_type: str) -> str:
    """The loss path the train stage runs on ``device_type`` (``"cpu"`` or ``"cuda"``) for the recipe's choice.

    ``supervised`` or ``trl`` are taken as written. ``auto`` picks per device:

    - cpu: ``supervised``. Measured on the embedded model: 2.06x raw TRL's tokens/s with the same
      loss (``bench/RESULTS.md``); off Triton devices TRL 1.16 scores every position, padding
      and prompt included, and their entropies.
    - cuda: ``supervised``. TRL 1.16's fused head also scores only supervised rows there, so
      neither path builds the full ``tokens x vocabulary`` logits; but TRL's recomputes the
      projection in its backward (three passes of the head's matrix product against two here)
      and needs TRL, which the GPU image lacks. This is the path ``bench/gpu_train.py``
      measures and ``ssd plan`` prices; ``trl`` stays available as the recipe's explicit choice.
    """
    if requested in LOSS_PATHS:
        return requested
    if requested != AUTO:
        raise ValueError(f"loss path {requested!r}: one of {AUTO}, {', '.join(LOSS_PATHS)}")
    if device_type not in AUTO_LOSS_PATH:
        raise ValueError(f"device type {device_type!r}: one of {', '.join(AUTO_LOSS_PATH)}")
    return AUTO_LOSS_PATH[device_type]


def chunk_rows(vocab: int) -> int:
    """Rows of logits computed at once: 256 MiB of fp32 logits (256 rows of a 262k vocabulary)."""
    return max(1, _CHUNK_BYTES // (4 * vocab))


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


def supervised_cross_entropy(hidden, weight, targets, softcap: float | None, scale: float, chunk: int):
    """``(sum of token cross-entropies, correct top-1 count)`` of ``hidden @ weight.T``, computed
    ``chunk`` rows at a time; differentiable with respect to ``hidden`` and ``weight``."""
    return _SupervisedCrossEntropy.apply(hidden, weight, targets, softcap, scale, chunk)


def head_settings(causal_lm) -> tuple[float | None, float]:
    """The logit soft-cap and scale the model's own forward applies after its LM head."""
    text = causal_lm.config.get_text_config()
    scale = getattr(text, "logit_scale", None)
    if scale is None:
        scale = getattr(text, "output_multiplier", None)
    return getattr(text, "final_logit_softcapping", None), 1.0 if scale is None else float(scale)


def supervised_loss(causal_lm, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, int, int]:
    """(loss, supervised tokens, correct top-1) for a batch with ``labels`` (-100 = ignored).

    ``causal_lm`` is the transformers model (under PEFT: ``peft_layout.causal_lm(model)``, whose
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
    chunk = chunk_rows(head.weight.shape[0])
    total, correct = supervised_cross_entropy(rows, head.weight, targets[mask], softcap, scale, chunk)
    count = int(mask.sum())
    denominator = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
    if isinstance(denominator, torch.Tensor):
        denominator = denominator.to(total.device)
    return total / denominator, count, int(correct)
