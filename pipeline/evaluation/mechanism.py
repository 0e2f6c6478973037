"""The paper's mechanism, measured: per-token entropy of base and adapter at the same positions.

The SSD paper explains its gains by "locks" and "forks": training on truncated samples of the
model's own distribution sharpens the positions where one continuation is right (locks: low
entropy) and keeps open the positions where several are (forks: high entropy). The run report's
first entropy view compares each model's entropy on its *own* samples, which mixes that with where
each model's samples go. Here both models score the *same* token sequences, teacher-forced: the
base model's own evaluation samples, so every position is compared with itself. Positions are
classed by the base model's entropy (lock: below ``LOCK_MAX``; fork: above ``FORK_MIN``), and the
adapter's entropy at the same positions says whether locks sharpened and forks stayed open.

Entropies are of the full next-token distribution (the whole vocabulary, after Gemma's logit
soft-capping, at temperature 1), in nats, computed in float32 with transformers and PEFT (the
adapter switched off for the base's numbers: one model in memory). The prompt is tokenized as
vLLM tokenized it (``generation.render``); the completion's text is tokenized on its own, which can
differ from the sampled ids at a rare token boundary. Intervals are paired bootstraps over
sequences (one per problem), so positions of one answer are not counted as independent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

LOCK_MAX = 0.1  # base entropy below this: a "lock" (one continuation all but certain)
FORK_MIN = 1.0  # base entropy above this: a "fork" (several continuations plausible)
CLASSES = ("lock", "fork", "other")


def position_class(base_entropy: float) -> str:
    return "lock" if base_entropy < LOCK_MAX else "fork" if base_entropy > FORK_MIN else "other"


def entropies(
    model_path: str, adapter: Path, texts: Sequence[tuple[str, str]], *, revision: str | None = None
) -> Iterator[tuple[list[float], list[float]]]:
    """For each ``(prompt, completion)``: the base's and the adapter's entropy at every completion
    token, in order. Yields one pair of lists per text, as it is computed."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.generation import render

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=revision)
    model = AutoModelForCausalLM.from_pretrained(model_path, revision=revision, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    for prompt, completion in texts:
        _, prompt_ids = render(
            tokenizer, {"id": "-", "prompt": prompt}, chat=False, system_prompt=None, enable_thinking=False
        )
        completion_ids = tokenizer(completion, add_special_tokens=False).input_ids
        if not completion_ids:
            yield [], []
            continue
        ids = torch.tensor([prompt_ids + completion_ids])
        keep = len(completion_ids) + 1  # the logits that predict each completion token (and one after)
        with torch.inference_mode():
            with model.disable_adapter():
                base = _entropy(model(input_ids=ids, logits_to_keep=keep).logits[0, :-1])
            tuned = _entropy(model(input_ids=ids, logits_to_keep=keep).logits[0, :-1])
        yield base, tuned


def _entropy(logits) -> list[float]:
    logp = logits.float().log_softmax(-1)
    return (-(logp.exp() * logp).sum(-1)).tolist()


def summarize(rows: Sequence[dict], *, resamples: int = 10000, seed: int = 0) -> dict:
    """Per class of position (by the base's entropy): how many, both models' mean entropy, the
    adapter's mean change with a 95% bootstrap interval over sequences, and the share of positions
    the adapter made sharper. ``rows``: ``{"base": [...], "adapter": [...]}`` per sequence."""
    rng = np.random.default_rng(seed)
    out: dict = {"sequences": len(rows), "lock_max": LOCK_MAX, "fork_min": FORK_MIN, "classes": {}}
    for cls in CLASSES:
        per_seq = []  # (sum of base, sum of adapter, count, sharper) over this class's positions, per sequence
        for row in rows:
            base, tuned = np.asarray(row["base"]), np.asarray(row["adapter"])
            mask = np.array([position_class(b) == cls for b in base], dtype=bool)
            per_seq.append(
                (base[mask].sum(), tuned[mask].sum(), int(mask.sum()), int((tuned[mask] < base[mask]).sum()))
            )
        sums = np.asarray(per_seq, dtype=float).reshape(-1, 4)
        count = int(sums[:, 2].sum())
        if count == 0:
            out["classes"][cls] = {"positions": 0}
            continue
        change = (sums[:, 1].sum() - sums[:, 0].sum()) / count
        draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
        boot_count = sums[draws, 2].sum(1)
        ok = boot_count > 0
        boot = (sums[draws, 1].sum(1)[ok] - sums[draws, 0].sum(1)[ok]) / boot_count[ok]
        out["classes"][cls] = {
            "positions": count,
            "base_mean": float(sums[:, 0].sum() / count),
            "adapter_mean": float(sums[:, 1].sum() / count),
            "change": float(change),
            "change_ci": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "sharper_share": float(sums[:, 3].sum() / count),
        }
    return out
