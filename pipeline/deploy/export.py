"""``ssd export``: a registry adapter in the form a server loads, each form proven before it is written.

    ssd export NAME[:VERSION] OUT --format peft|merged|peft-per-expert [--dtype float32]

- ``peft``: the adapter as promoted (``adapter_config.json``, ``adapter_model.safetensors``)
  at the top of ``OUT``, with its model card (``README.md``) and lineage (``manifest.json``).
- ``merged``: the adapter merged into its base: a plain model directory that vLLM and
  transformers load without PEFT. The merge runs in float32 and is checked there (logits equal
  the PEFT model's within ``atol`` on fixed prompts; every tensor the adapter trains, MoE
  experts included, changed); only then is it cast to ``--dtype`` and written, with the base's
  tokenizer and chat template and a ``generation_config.json`` whose stop ids include the
  end-of-turn token (Gemma 3 ``<end_of_turn>``, Gemma 4 ``<turn|>``). The written file is then
  reloaded in that dtype and must still carry the adapter's effect on next-token log-probs
  (``evaluation.serving``): a cast that rounds the adapter away is refused, nothing written.
- ``peft-per-expert``: PEFT stores a LoRA on fused 3D expert weights (``target_parameters``) as
  one pair of factors for all experts; servers that load only per-expert projections (vLLM's
  native MoE LoRA layout for Gemma 4 is one) need ``experts.{e}.gate_proj``/``up_proj``/
  ``down_proj`` modules with ordinary 2D factors. Each expert's factors are read the way PEFT
  itself reads them (``peft_layout.expert_factors``) and written out; then, for every expert and projection,
  ``B_e @ A_e * scale`` read back from the written file is compared with the delta PEFT's merge
  puts into the base weights (merged minus base), within ``PER_EXPERT_RTOL`` of that delta. The base
  stays in its checkpoint's dtype; each fused tensor is upcast to float32 only while its factors
  are read and while PEFT merges it, one at a time (``_in_float32``), so the export needs about the
  base's own size in memory, not twice its float32 size.

Every form lands in ``OUT`` through a temporary directory renamed at the end: a failed check
leaves no ``OUT``. ``export.json`` records the source version and the measured figures.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline import runs
from pipeline.deploy import registry

log = logging.getLogger(__name__)

FORMATS = ("peft", "merged", "peft-per-expert")
DTYPES = ("bfloat16", "float16", "float32")
MERGE_ATOL = 1e-3  # float32 merged vs unmerged PEFT logits: measured 7e-6 (tiny MoE), 4e-4 .. 5e-4 (Gemma 3 270M)
PER_EXPERT_RTOL = 1e-4  # of the largest delta entry of the tensor, plus float32 rounding of W + delta
TOKENIZER_EXTRAS = (  # files beside the weights that servers read for prompts (copied when the base has them)
    "chat_template.jinja",
    "chat_template.json",
    "processor_config.json",
    "preprocessor_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
)


class ExportError(Exception):
    """Input the export cannot use (unknown name or version, wrong format for the adapter, OUT taken)."""


def source(registry_dir: Path | str, ref: str) -> dict[str, Any]:
    """The registry version ``ref`` (``NAME`` means its ``latest``) as ``registry.show`` returns it."""
    name, _, version = ref.partition(":")
    try:
        return registry.show(registry_dir, name, version or None)
    except registry.RegistryError as exc:
        raise ExportError(str(exc)) from None


def base_of(manifest: dict[str, Any]) -> tuple[str, str | None]:
    """(local path or hub id that from_pretrained loads, revision) of the version's base model."""
    from pipeline import models

    base = manifest.get("base_model")
    model_id, revision = (base.get("id"), base.get("revision")) if isinstance(base, dict) else (base, None)
    if not model_id:
        raise ExportError(f"{manifest['path']}/manifest.json names no base model")
    try:
        return models.resolve(str(model_id)), revision
    except ValueError as exc:
        raise ExportError(f"{manifest['name']}:{manifest['version']}: {exc}") from None


def _record(manifest: dict[str, Any], fmt: str, **extra: Any) -> dict[str, Any]:
    return {
        "format": fmt,
        "source": {
            "name": manifest["name"],
            "version": manifest["version"],
            "path": manifest["path"],
            "adapter_sha256": manifest.get("adapter_sha256"),
        },
        "base_model": manifest.get("base_model"),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _card(manifest: dict[str, Any], heading: str, body: list[str]) -> str:
    """This export's card: what the directory is and how to load it, then the registry's card."""
    version_dir = Path(manifest["path"])
    original = (version_dir / registry.CARD).read_text() if (version_dir / registry.CARD).is_file() else ""
    lines = [f"# {manifest['name']} {manifest['version']}: {heading}", "", *body, "", "---", "", original]
    return "\n".join(lines)


def _lineage(tmp: Path, manifest: dict[str, Any]) -> None:
    shutil.copy2(Path(manifest["path"]) / registry.MANIFEST, tmp / registry.MANIFEST)


def export_peft(manifest: dict[str, Any], tmp: Path) -> dict[str, Any]:
    adapter = Path(manifest["path"]) / registry.ADAPTER
    shutil.copytree(adapter, tmp, dirs_exist_ok=True)
    _lineage(tmp, manifest)
    base = registry.base_model(manifest)[0]
    (tmp / registry.CARD).write_text(
        _card(
            manifest,
            "PEFT LoRA adapter",
            [
                "The adapter exactly as promoted (`adapter_sha256` in manifest.json). Load it with",
                '`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), "<this directory>")` '
                "with BASE the "
                f"base model `{base}`,",
                f"or serve it with vLLM: `--enable-lora --lora-modules {manifest['name']}=<this directory>`.",
            ],
        )
    )
    return {"adapter_sha256": runs.hash_path(adapter)}


def generation_config(base: str, tokenizer, revision: str | None = None):
    """The base's generation config with every stop id the tokenizer has: ``<eos>`` and the end of turn.

    A chat model's answer ends on ``<end_of_turn>``/``<turn|>``, which is not ``eos_token_id``;
    without it in the list, a server that stops on the config's ids runs on to ``max_tokens``.
    """
    from transformers import AutoConfig, GenerationConfig

    from pipeline.generation import end_of_turn_ids

    try:
        config = GenerationConfig.from_pretrained(base, revision=revision)
    except OSError:
        config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(base, revision=revision))
    stops = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    stops += [tokenizer.eos_token_id, *end_of_turn_ids(tokenizer)]
    ids = sorted({int(i) for i in stops if i is not None})
    config.eos_token_id = ids if len(ids) > 1 else ids[0]
    if config.pad_token_id is None and tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    if config.bos_token_id is None and tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    config._from_model_config = False  # else transformers' generate may rebuild it from config.json's single eos
    return config


def export_merged(
    manifest: dict[str, Any], tmp: Path, *, dtype: str = "float32", atol: float = MERGE_ATOL
) -> dict[str, Any]:
    import torch

    from pipeline import models

    base, revision = base_of(manifest)
    adapter = Path(manifest["path"]) / registry.ADAPTER
    log.info("export: merging %s into %s in float32 and checking the logits", adapter, base)
    merged, tokenizer, figures = models.merge_verified(base, adapter, atol=atol, revision=revision)
    merged = merged.to(getattr(torch, dtype))
    merged.generation_config = generation_config(base, tokenizer, revision)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    stops = merged.generation_config.eos_token_id
    del merged  # the check reloads the written file: one copy of the weights at a time
    served = served_check(base, adapter, tmp, dtype, revision)
    if Path(base).is_dir():
        for extra in TOKENIZER_EXTRAS:
            if (Path(base) / extra).is_file() and not (tmp / extra).exists():
                shutil.copy2(Path(base) / extra, tmp / extra)
    _lineage(tmp, manifest)
    (tmp / registry.CARD).write_text(
        _card(
            manifest,
            f"merged model ({dtype})",
            [
                f"`{manifest['name']}` {manifest['version']} merged into its base `{base}`: a plain "
                "model directory, no PEFT needed.",
                f"Verified before writing: float32 merged logits equal the PEFT model's within {atol:g} "
                f"(measured {figures['max_logit_diff']:.3g} on {figures['prompts']} prompts); "
                f"{figures['changed_tensors']} tensors changed, every one of the "
                f"{figures['trained_tensors']} the adapter trains "
                f"among them. Then cast to {dtype}, and the written file reloaded in {dtype}: its effect on next-token "
                f"log-probs is PEFT's within {served['error']:.3g} (the effect is {served['effect']:.3g}). "
                f"Stop ids (generation_config.json): {stops}.",
                "",
                '`AutoModelForCausalLM.from_pretrained("<this directory>")`, or vLLM: `LLM(model="<this directory>")`, '
                "`python -m vllm.entrypoints.openai.api_server --model <this directory>`.",
            ],
        )
    )
    log.info(
        "export: merge verified (max logit diff %.3g <= %g), written as %s", figures["max_logit_diff"], atol, dtype
    )
    return {
        "dtype": dtype,
        "stop_token_ids": stops if isinstance(stops, list) else [stops],
        "verification": {k: v for k, v in figures.items() if k != "changed"}
        | {"dtype_verified": "float32", "written": served},
    }


def served_check(base: str, adapter: Path, written: Path, dtype: str, revision: str | None = None) -> dict[str, Any]:
    """The written merged model, reloaded and run in ``dtype``, must carry the adapter's effect on
    next-token log-probs (``evaluation.serving``): a cast that rounds the adapter away is refused."""
    from pipeline.evaluation import serving

    peft_base, peft_adapted = serving.peft_logprobs(base, adapter, revision=revision)
    figures = serving.adapter_effect(serving.transformers_logprobs(written, dtype), peft_base, peft_adapted)
    try:
        return serving.check(figures, f"the merged model written in {dtype}") | {"dtype": dtype}
    except serving.ServingError as exc:
        hint = "; export with --dtype float32" if dtype != "float32" else ""
        raise serving.ServingError(f"{exc}{hint}") from None


# Transformers' fused Gemma 4 experts: ``gate_up_proj`` is ``[gate; up]`` along its output rows.
GEMMA4_EXPERT_PROJECTIONS = {"gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)}


def _projections(parameter: str, out_features: int) -> dict[str, slice]:
    """The per-expert projections of a fused Gemma 4 expert tensor, as row slices of its ``(out, in)`` view."""
    names = GEMMA4_EXPERT_PROJECTIONS[parameter]
    rows = out_features // len(names)
    return {name: slice(i * rows, (i + 1) * rows) for i, name in enumerate(names)}


def _fused_adapter(manifest: dict[str, Any], adapter: Path, base: str, revision: str | None) -> tuple[dict, Path]:
    """The adapter's config and safetensors file, once it is known to be a fused expert LoRA on Gemma 4."""
    from transformers import AutoConfig

    config = json.loads((adapter / "adapter_config.json").read_text())
    if not config.get("target_parameters"):
        raise ExportError(
            f"{manifest['name']}:{manifest['version']} has no expert LoRA (adapter_config.json has no "
            "target_parameters): "
            "its modules are already ordinary 2D LoRA; export it with --format peft"
        )
    model_type = AutoConfig.from_pretrained(base, revision=revision).get_text_config().model_type
    if not model_type.startswith("gemma4"):
        raise ExportError(
            f"--format peft-per-expert knows the fused expert layout of Gemma 4 only (gate_up_proj = [gate; up]); "
            f"the base of {manifest['name']}:{manifest['version']} is {model_type!r}"
        )
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise ExportError(f"{weights} not found: the per-expert export reads safetensors adapters")
    return config, weights


def _read_tensors(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {key: fh.get_tensor(key) for key in fh.keys()}


def _split_experts(loras: list, original: dict[str, Any], weights: Path) -> tuple[dict[str, Any], set[str]]:
    """The adapter's tensors with each fused expert LoRA replaced by 2D factors per expert and
    projection, and the fused keys that were replaced. ``original`` is the saved adapter."""
    from pipeline.training import peft_layout

    dtype = next(iter(original.values())).dtype
    tensors, fused_keys = {}, set()
    for lora in loras:
        if lora.parameter not in GEMMA4_EXPERT_PROJECTIONS:
            raise ExportError(
                f"{weights.parent}: LoRA on {lora.tensor}; the per-expert layout knows gate_up_proj and down_proj"
            )
        fused_keys |= set(peft_layout.lora_keys(lora.peft_module))
        with _in_float32(lora):
            b, a, _ = peft_layout.expert_factors(lora.wrapper)
        b, a = b.detach().to(dtype), a.detach().to(dtype)
        for e in range(lora.experts):
            for proj, rows in _projections(lora.parameter, b.shape[1]).items():
                key_a, key_b = peft_layout.lora_keys(peft_layout.peft_name(f"{lora.module}.{e}.{proj}"))
                tensors[key_a] = a[e].clone()  # gate and up share A: one copy each
                tensors[key_b] = b[e, rows].clone()
    missing = sorted(fused_keys - original.keys())
    if missing:
        raise ExportError(
            f"{weights} lacks {', '.join(missing[:2])}: not the layout PEFT {importlib.metadata.version('peft')} writes"
        )
    tensors.update({key: value for key, value in original.items() if key not in fused_keys})
    return tensors, fused_keys


@contextmanager
def _in_float32(lora):
    """The fused tensor under ``lora`` as a float32 copy for the duration (exact from bf16); yields
    the original, which the parameter gets back on exit, unchanged: what was done to the copy (a
    merge) is not kept.

    PEFT hands out a fused LoRA's factors cast to its parameter's dtype and merges in that dtype: on
    a bf16 base both would round the adapter. One tensor at a time, so the whole model never exists
    in float32 (for Gemma 4 26B-A4B: the 48 GiB bf16 base plus about 4 GiB for the largest expert
    tensor at hand, instead of 96 GiB in float32 plus an 85 GiB copy of every expert tensor).
    """
    import torch

    param = lora.wrapper.get_param()
    original = param.data
    param.data = original.to(torch.float32, copy=True)
    try:
        yield original
    finally:
        param.data = original


def _merged_by_peft(lora) -> tuple[Any, Any]:
    """``(base as stored, merged in float32)`` of one fused expert tensor: PEFT's own merge of that
    one module, made on a float32 copy of it."""
    from pipeline.training import peft_layout

    with _in_float32(lora) as original:
        lora.wrapper.merge(adapter_names=[peft_layout.ADAPTER])
        merged = lora.wrapper.get_param().detach()
    lora.wrapper.merged_adapters.clear()  # the parameter has its unmerged tensor back
    return original, merged


def _check_against_merge(loras: list, written: dict, config: dict, rtol: float) -> tuple[int, float, str, int]:
    """Compare every written expert projection's ``B_e @ A_e * scale`` with the delta PEFT's merge
    adds to the base weights; ``(projections checked, largest difference, where, tensors the merge
    changed)``.

    The tolerance per fused tensor is ``rtol`` of its largest delta entry plus the float32
    rounding of ``W + delta``. The first projection beyond it raises ``ExportError``.
    """
    import torch

    from pipeline.training import peft_layout

    def abs_max(tensor) -> float:  # without a temporary the size of the tensor
        low, high = torch.aminmax(tensor)
        return max(-low.item(), high.item())

    eps = torch.finfo(torch.float32).eps
    worst, worst_where, checked, changed = 0.0, "", 0, 0
    for lora in loras:
        start, after = _merged_by_peft(lora)
        # (experts, out, in) views, as F.linear sees each expert; deltas are taken one expert at a time
        base, merged = lora.as_linear(start), lora.as_linear(after)
        largest = max(abs_max(merged[e] - base[e].float()) for e in range(lora.experts))
        changed += largest > 0
        tol = rtol * largest + 4 * eps * max(abs_max(after), abs_max(start))
        for e in range(lora.experts):
            delta = merged[e] - base[e].float()
            for proj, rows in _projections(lora.parameter, delta.shape[0]).items():
                module = f"{lora.module}.{e}.{proj}"
                key_a, key_b = peft_layout.lora_keys(peft_layout.peft_name(module))
                update = written[key_b].float() @ written[key_a].float() * peft_layout.scaling(config, module)
                diff = (update - delta[rows]).abs().max().item()
                checked += 1
                if diff > worst:
                    worst, worst_where = diff, module
                if not diff <= tol:
                    raise ExportError(
                        f"per-expert factors of {module} differ from PEFT's fused delta by {diff:.3g} "
                        f"(tolerance {tol:.3g}): "
                        "the expert layout was misread; nothing written"
                    )
        del start, after, base, merged
    return checked, worst, worst_where, changed


def export_per_expert(manifest: dict[str, Any], tmp: Path, *, rtol: float = PER_EXPERT_RTOL) -> dict[str, Any]:
    """Rewrite a fused expert LoRA as 2D LoRA per expert and projection, proven against PEFT's own merge."""
    import torch
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from pipeline.training import peft_layout

    base, revision = base_of(manifest)
    adapter = Path(manifest["path"]) / registry.ADAPTER
    config, weights = _fused_adapter(manifest, adapter, base, revision)
    # The checkpoint's own dtype: the check upcasts one expert tensor at a time (_merged_by_peft).
    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto", revision=revision)
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    loras = peft_layout.expert_loras(peft_model)
    if not loras:
        raise ExportError(f"{adapter}: PEFT found no LoRA on fused 3D expert weights in this adapter")
    original = _read_tensors(weights)
    tensors, fused_keys = _split_experts(loras, original, weights)
    modules = sorted({peft_layout.module_of_key(key) for key in tensors})
    new_config = dict(config, target_modules=modules, target_parameters=None)
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    runs.atomic_write_json(tmp / "adapter_config.json", new_config)

    # The proof: what was written, read back, against the delta PEFT's merge adds to the base.
    written = _read_tensors(tmp / "adapter_model.safetensors")
    if not all(torch.equal(written[key], value) for key, value in original.items() if key not in fused_keys):
        raise ExportError(f"{adapter}: the non-expert LoRA tensors did not survive the rewrite unchanged")
    checked, worst, worst_where, trained = _check_against_merge(loras, written, new_config, rtol)
    log.info(
        "export: %d per-expert projections equal PEFT's fused delta, max diff %.3g (%s)", checked, worst, worst_where
    )
    _lineage(tmp, manifest)
    (tmp / registry.CARD).write_text(
        _card(
            manifest,
            "per-expert LoRA adapter",
            [
                "The fused expert LoRA (PEFT `target_parameters`) rewritten as ordinary 2D LoRA per "
                "expert and projection "
                "(`...experts.{e}.gate_proj` / `up_proj` / `down_proj`), the other modules unchanged.",
                f"Verified before writing: for each of the {checked} expert projections, "
                "`B_e @ A_e * scale` equals the delta "
                f"PEFT's merge adds to the base (max difference {worst:.3g}, tolerance {rtol:g} of the largest delta).",
                "",
                "vLLM: `--enable-lora --lora-modules NAME=<this directory>` (its native MoE LoRA layout for Gemma 4; "
                "the fused adapter needs `--enable-mixed-moe-lora-format` and `is_3d_lora_weight`). "
                "PEFT cannot load this form into transformers' fused Gemma 4 experts: use --format peft there.",
            ],
        )
    )
    return {
        "verification": {
            "expert_projections": checked,
            "fused_tensors": len(loras),
            "fused_tensors_changed_by_merge": trained,
            "max_abs_diff": worst,
            "rtol": rtol,
        },
        "target_modules": len(modules),
    }


def export(
    registry_dir: Path | str,
    ref: str,
    out: Path | str,
    fmt: str,
    *,
    dtype: str = "float32",
    atol: float = MERGE_ATOL,
    force: bool = False,
) -> dict[str, Any]:
    """Export the registry version ``ref`` to ``out`` in ``fmt``; returns what ``export.json`` records."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}: one of {', '.join(DTYPES)}")
    out = Path(out)
    manifest = source(registry_dir, ref)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ExportError(f"{out} exists and is not empty; choose another OUT or pass --force to replace it")
    with runs.atomic_dir(out) as tmp:
        if fmt == "peft":
            details = export_peft(manifest, tmp)
        elif fmt == "merged":
            details = export_merged(manifest, tmp, dtype=dtype, atol=atol)
        else:
            details = export_per_expert(manifest, tmp)
        record = _record(manifest, fmt, **details)
        runs.atomic_write_json(tmp / "export.json", record)
    log.info("export: %s:%s -> %s (%s)", manifest["name"], manifest["version"], out, fmt)
    return record
