"""Is the served model the trained one? The adapter's effect on next-token log-probs, served vs PEFT.

A served adapter can lose its effect without any error: vLLM has silently dropped expert LoRA,
and a merge verified in float32 then cast to bf16 rounds every weight to a grid whose step
(about 1e-4 on Gemma 3 270M) is the size of a short LoRA run's weight change. So the check
compares effects, not outputs: on a few probe prompts, the change the adapter makes to the
next-token log-probs where it is served (served model minus the base as the same engine serves
it) against the change PEFT makes in float32 (adapter minus base). The engine's own numeric
noise is common to both of its runs and mostly cancels; an erased adapter leaves an error the
size of the effect itself.

The served side is any list of top-k log-probs per probe: vLLM's (the eval stage collects them
after the engine loaded the adapter or the merged copy) or transformers' (``ssd export
--format merged`` reloads the file it wrote, in the dtype it wrote).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

PROBES = [
    "def fibonacci(n):\n",
    "def is_palindrome(s: str) -> bool:\n",
    "Write a function that returns the sum of a list.",
]
TOP = 20  # log-probs per probe the served side reports (vLLM's limit without extra settings)
TOLERANCE = 0.5  # the error must stay under this share of the effect
MIN_EFFECT = 1e-6  # below this PEFT's own change is float32 rounding: there is no adapter to lose

TopLogprobs = list[dict[int, float]]  # per probe: token id -> log-prob, the served model's top tokens


class ServingError(RuntimeError):
    """The served model does not carry the adapter's effect; the message has the figures."""


def peft_logprobs(model_path: str, adapter: Path | str, probes: list[str] = PROBES, revision: str | None = None):
    """Next-token log-probs (float32, full vocabulary) of the base and of base + adapter in PEFT,
    one row per probe: ``(base, adapted)``, each a ``(probes, vocab)`` tensor."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, revision=revision)
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    base, adapted = [], []
    with torch.no_grad():
        for probe in probes:
            ids = tokenizer(probe, return_tensors="pt").input_ids
            with peft_model.disable_adapter():
                base.append(torch.log_softmax(peft_model(ids).logits[0, -1].float(), -1))
            adapted.append(torch.log_softmax(peft_model(ids).logits[0, -1].float(), -1))
    return torch.stack(base), torch.stack(adapted)


def transformers_logprobs(model_dir: str | Path, dtype: str, probes: list[str] = PROBES, top: int = TOP) -> TopLogprobs:
    """The top-``top`` next-token log-probs of a model directory loaded and run in ``dtype``:
    how a server that loads that file in that dtype sees the probes (a plain model, no PEFT)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    out = []
    with torch.no_grad():
        for probe in probes:
            ids = tokenizer(probe, return_tensors="pt").input_ids
            logprobs = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
            values, index = logprobs.topk(top)
            out.append({int(i): float(v) for i, v in zip(index, values, strict=True)})
    return out


def adapter_effect(served: TopLogprobs, peft_base, peft_adapted, served_base: TopLogprobs | None = None) -> dict:
    """The adapter's effect on log-probs and how far the served model's effect is from PEFT's.

    For each probe, over the served model's top tokens (and the served base's, when given):
    ``effect`` is the mean size of PEFT's change (adapted minus base, float32), ``error`` the
    mean difference between the served change and PEFT's. The served change is served minus
    ``served_base`` (the same engine without the adapter: its numeric noise cancels), or minus
    PEFT's float32 base when there is none (a merged copy runs on an engine of its own; then
    ``error`` also holds the served dtype's rounding, which is part of what is served). A served
    model that carries the adapter leaves numeric noise in ``error``; one that lost it (dropped
    LoRA, a merge rounded away) leaves ``error`` close to ``effect``.
    """
    effect, error, count = 0.0, 0.0, 0
    for row, top in enumerate(served):
        base = served_base[row] if served_base is not None else None
        for token in set(top) & set(base) if base is not None else set(top):
            d_peft = float(peft_adapted[row, token] - peft_base[row, token])
            d_served = top[token] - (base[token] if base is not None else float(peft_base[row, token]))
            effect += abs(d_peft)
            error += abs(d_served - d_peft)
            count += 1
    if count == 0:
        raise ServingError("the served model and its base share no top token on any probe: not the same base model")
    return {"effect": effect / count, "error": error / count, "tokens": count}


def check(figures: dict, what: str, tolerance: float = TOLERANCE) -> dict:
    """``figures`` (from ``adapter_effect``) with ``tolerance`` added, or ``ServingError`` when
    the served effect is not PEFT's: the error must be under ``tolerance`` x the effect."""
    log.info(
        "%s: adapter effect on next-token log-probs %.4g (PEFT, float32), served-vs-PEFT error %.4g (%d tokens)",
        what,
        figures["effect"],
        figures["error"],
        figures["tokens"],
    )
    figures = {**figures, "tolerance": tolerance}
    if figures["effect"] < MIN_EFFECT:
        return figures  # the adapter changes nothing in PEFT either: nothing a server could drop
    if not figures["error"] <= tolerance * figures["effect"]:
        raise ServingError(
            f"{what} does not carry the adapter: its effect on next-token log-probs differs from PEFT's by "
            f"{figures['error']:.3g}, {figures['error'] / figures['effect']:.0%} of the effect {figures['effect']:.3g} "
            f"(allowed {tolerance:.0%}); the adapter was dropped or rounded away: serve it in float32"
        )
    return figures
