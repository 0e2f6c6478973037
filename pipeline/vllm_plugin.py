"""A vLLM general plugin (entry point ``vllm.general_plugins``): top-k before top-p without a sort.

With both top-k and top-p set, vLLM's PyTorch sampler (what runs on CPU) sorts every row of the
logits, the whole 262k-token Gemma vocabulary, at every decoding step, then masks beyond k and
beyond p. Measured on this project's 2-core machine: sorting 256 rows takes 2.5-5 s, ``topk(20)``
0.15 s, so the sort is most of a sampling step of the 270M model. The paper's recipe always sets
both (top-k 20, then top-p), so this replaces the sort with ``topk(k)`` and applies top-p among
those k, which is the same distribution: vLLM's top-p already works on the top-k-masked,
renormalised probabilities. It keeps vLLM's exact rule: a token is dropped when the probability
mass of the tokens ranked at or below it is at most ``1 - p``, and the most likely token always
stays. Rows without top-k (k = vocabulary size) fall back to vLLM's own code, and so does any call
where vLLM may not synchronise with the host (GPU paths never reach here: they use FlashInfer or
Triton).

vLLM loads general plugins in every process it starts (engine core, workers), which is where the
sampler runs; ``SSD_FAST_TOPK=0`` turns it off.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def top_k_then_top_p(logits, k, p):
    """Mask ``logits`` in place to each row's top-k tokens, then to its top-p nucleus among them."""
    import torch

    kmax = int(k.max())
    values, index = logits.topk(kmax, dim=1)  # descending
    ranks = torch.arange(kmax, device=logits.device)
    values.masked_fill_(ranks[None, :] >= k[:, None].to(torch.long), -float("inf"))
    if p is not None:
        probs = values.softmax(dim=-1)
        # mass of the tokens ranked at or below each one (vLLM: ascending cumsum over the sort)
        tail = probs.flip(-1).cumsum(-1).flip(-1)
        drop = tail <= (1 - p)[:, None]
        drop[:, 0] = False  # at least one
        values.masked_fill_(drop, -float("inf"))
    logits.fill_(-float("inf"))
    return logits.scatter_(1, index, values)


def register() -> None:
    if os.environ.get("SSD_FAST_TOPK", "1") == "0":
        return
    try:
        from vllm.v1.sample.ops import topk_topp_sampler as sampler
    except ImportError:  # another vLLM layout: leave it alone
        return
    original = getattr(sampler, "apply_top_k_top_p_pytorch", None)
    if original is None or getattr(original, "_ssd_fast", False):
        return

    def apply_top_k_top_p_pytorch(logits, k, p, allow_cpu_sync: bool = False):
        if k is None or not allow_cpu_sync or bool((k >= logits.shape[1]).any()):
            return original(logits, k, p, allow_cpu_sync=allow_cpu_sync)
        return top_k_then_top_p(logits, k, p)

    try:  # vLLM's own logger: the engine processes print it
        from vllm.logger import init_logger

        init_logger("vllm.ssd_plugin").info("ssd plugin: top-k + top-p sampling uses topk(k), not a vocabulary sort")
    except ImportError:
        log.info("ssd plugin: top-k + top-p sampling uses topk(k), not a vocabulary sort")
    apply_top_k_top_p_pytorch._ssd_fast = True
    apply_top_k_top_p_pytorch._ssd_original = original
    sampler.apply_top_k_top_p_pytorch = apply_top_k_top_p_pytorch
