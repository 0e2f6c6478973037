"""Which weights LoRA trains, chosen from the model's architecture.

``all-linear`` is right for a dense text model and wrong for Gemma 4 in two ways: it leaves
the MoE experts frozen (they are fused 3D ``nn.Parameter`` tensors, not ``nn.Linear``), and on a
multimodal checkpoint it also adapts the vision/audio towers, whose projections sit inside
``Gemma4ClippableLinear`` wrappers. The presets here name the language model's attention and
dense MLP projections by a regular expression (PEFT full-matches a string ``target_modules``
against module names) and reach the experts through PEFT ``target_parameters``.

The expression accepts both ways a Gemma checkpoint loads: as ``Gemma4ForConditionalGeneration``
(``model.language_model.layers.N...``, what ``AutoModelForCausalLM`` builds for a ``gemma4``
config) and as text-only ``Gemma4ForCausalLM`` (``model.layers.N...``). Vision and audio towers
live under ``model.vision_tower`` / ``model.audio_tower`` and never match.

``list_targets`` answers "what would this recipe train?" without loading a weight: the model
is built on PyTorch's ``meta`` device, so the full 26B-A4B configuration is listed in seconds.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

AUTO = "auto"
ALL_LINEAR = "all-linear"

# Attention (q/k/v/o) and dense MLP (gate/up/down) of the language model only. The router
# (``router.proj``) stays frozen: adapting the routing of a pretrained MoE is a different
# experiment from adapting what the experts compute.
GEMMA_LANGUAGE_MODEL_LINEARS = (
    r"(?:model\.language_model|model)\.layers\.\d+\."
    r"(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:gate_proj|up_proj|down_proj))"
)
GEMMA4_EXPERT_PARAMETERS = ["experts.gate_up_proj", "experts.down_proj"]

# Hub ids whose architecture is built in, so a plan or a target listing needs no download.
# Transcribed from google/gemma-4-26B-A4B's config.json (the -it checkpoint has the same
# architecture): 30 layers, hidden 2816, dense MLP 2112 beside 128 experts of 704 (top 8),
# sliding layers 16 heads x 256 with 8 KV heads, every sixth layer global with 16 x 512 and
# 2 KV heads shared as K = V, and a ~550M-parameter vision tower (27 layers of 1152).
GEMMA4_26B_A4B_IDS = ("google/gemma-4-26B-A4B", "google/gemma-4-26B-A4B-it")


class LoraSettings(Protocol):
    """What this module reads from a recipe's ``training.lora`` (``pipeline.recipe.LoraConfig``)."""

    r: int
    alpha: int
    dropout: float
    target_modules: str | list[str]
    target_parameters: Any  # list[str], or "auto"/None for the preset


class TargetError(ValueError):
    """LoRA targets that cannot work with this model; the message names the recipe field."""


@dataclass(frozen=True)
class Preset:
    """The targets ``auto`` selects for one architecture, and why."""

    name: str
    target_modules: str | list[str]
    target_parameters: list[str]
    reason: str


def gemma4_26b_a4b_config(**text_overrides):
    """google/gemma-4-26B-A4B's architecture as a transformers ``Gemma4Config`` (no download).

    ``text_overrides`` replace text-config fields (a reduced shape: ``num_hidden_layers``,
    ``layer_types``, ``vocab_size``); the config is built with them, so it saves and reloads as is.
    """
    from transformers import Gemma4Config

    text = dict(
        vocab_size=262_144,
        hidden_size=2816,
        intermediate_size=2112,
        num_hidden_layers=30,
        num_attention_heads=16,
        num_key_value_heads=8,
        num_global_key_value_heads=2,
        head_dim=256,
        global_head_dim=512,
        attention_k_eq_v=True,
        hidden_size_per_layer_input=0,
        num_kv_shared_layers=0,
        enable_moe_block=True,
        num_experts=128,
        top_k_experts=8,
        moe_intermediate_size=704,
        max_position_embeddings=262_144,
        sliding_window=1024,
        final_logit_softcapping=30.0,
        use_bidirectional_attention="vision",
        tie_word_embeddings=True,
    )
    text.update(text_overrides)
    vision = dict(
        hidden_size=1152,
        intermediate_size=4304,
        num_hidden_layers=27,
        num_attention_heads=16,
        num_key_value_heads=16,
        head_dim=72,
        patch_size=16,
        pooling_kernel_size=3,
        position_embedding_size=10_240,
        standardize=True,
        use_clipped_linears=False,
    )
    return Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=None,
        eos_token_id=[1, 106],
        architectures=["Gemma4ForConditionalGeneration"],
    )


def load_config(model: str, revision: str | None = None):
    """The transformers config of a model directory, hub id, ``random:``/``embedded:`` id or built-in id.

    The 26B-A4B ids use the built-in copy, so plans and listings work offline and in seconds.
    """
    from transformers import AutoConfig

    if model in GEMMA4_26B_A4B_IDS:
        log.info("using the built-in architecture of %s (no download)", model)
        return gemma4_26b_a4b_config()
    if model.startswith(("random:", "embedded:")):
        from pipeline import models

        model = models.resolve(model)
    return AutoConfig.from_pretrained(model, revision=revision)


def _config_of(model_or_config):
    """A config from a model (its ``.config``) or a config itself."""
    return getattr(model_or_config, "config", model_or_config)


def is_gemma4_moe(config) -> bool:
    """Gemma 4 with the MoE block (26B-A4B), whichever way the checkpoint's config is nested."""
    text = config.get_text_config()
    return text.model_type in ("gemma4_text", "gemma4") and bool(getattr(text, "enable_moe_block", False))


def _is_multimodal(config) -> bool:
    return any(getattr(config, key, None) is not None for key in ("vision_config", "audio_config"))


def preset_for(model_or_config) -> Preset:
    """The ``auto`` targets for this architecture."""
    config = _config_of(model_or_config)
    model_type = config.get_text_config().model_type
    if is_gemma4_moe(config):
        return Preset(
            "gemma4-moe",
            GEMMA_LANGUAGE_MODEL_LINEARS,
            list(GEMMA4_EXPERT_PARAMETERS),
            "attention + dense MLP by regex (vision/audio towers excluded), fused experts via target_parameters",
        )
    if model_type.startswith(("gemma3", "gemma4")) and _is_multimodal(config):
        return Preset(
            "gemma-multimodal-dense",
            GEMMA_LANGUAGE_MODEL_LINEARS,
            [],
            "attention + dense MLP of the language model; vision/audio towers excluded",
        )
    return Preset("dense", ALL_LINEAR, [], "every nn.Linear except the output layer")


def _has_fused_experts(config) -> bool:
    text = config.get_text_config()
    return bool(getattr(text, "enable_moe_block", False) or getattr(text, "num_experts", None))


def resolve_targets(model_or_config, lora_cfg: LoraSettings) -> tuple[str | list[str], list[str]]:
    """``(target_modules, target_parameters)`` for PEFT: ``auto`` picks the preset, anything else wins.

    The two fields resolve independently, so a recipe can keep the preset's modules and drop
    the experts (``target_parameters: []``) or the reverse. Raises ``TargetError`` when the
    result cannot train (expert LoRA with dropout, or nothing targeted at all).
    """
    config = _config_of(model_or_config)
    preset = preset_for(config)
    modules = preset.target_modules if lora_cfg.target_modules == AUTO else lora_cfg.target_modules
    raw_parameters = lora_cfg.target_parameters
    parameters = list(preset.target_parameters) if raw_parameters in (AUTO, None) else list(raw_parameters)
    if parameters and lora_cfg.dropout > 0:
        raise TargetError(
            f"training.lora.dropout={lora_cfg.dropout}: must be 0 when target_parameters is set "
            f"({parameters}); PEFT cannot apply dropout inside fused expert weights"
        )
    if not modules and not parameters:
        raise TargetError("training.lora: target_modules and target_parameters are both empty: nothing would train")
    if _has_fused_experts(config) and not parameters:
        log.warning(
            "training.lora.target_parameters is empty: the fused MoE experts of this model stay frozen "
            "(set it to 'auto' or %s to train them)",
            GEMMA4_EXPERT_PARAMETERS,
        )
    log.info(
        "LoRA targets (%s preset for %s): modules=%s parameters=%s", preset.name, config.model_type, modules, parameters
    )
    return modules, parameters


def peft_lora_config(model_or_config, lora_cfg: LoraSettings):
    """A PEFT ``LoraConfig`` with the resolved targets: the one place recipe LoRA settings become PEFT's."""
    from peft import LoraConfig

    modules, parameters = resolve_targets(model_or_config, lora_cfg)
    return LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=modules or None,
        target_parameters=parameters or None,
        task_type="CAUSAL_LM",
    )


def build_meta_model(config, dtype=None):
    """The model ``AutoModelForCausalLM`` would load for ``config``, with every tensor on ``meta``.

    No memory is allocated and nothing is initialised, so a 26B model builds in under a second.
    """
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.bfloat16)


@dataclass
class TargetReport:
    """What a LoRA configuration trains on one model, from a meta-device build."""

    model: str
    architecture: str
    preset: str
    target_modules: str | list[str]
    target_parameters: list[str]
    modules: list[str]  # adapted nn.Linear modules
    parameters: list[str]  # adapted fused parameters (module.parameter)
    untargeted_linears: list[str]  # nn.Linear modules left frozen (vision towers, router, lm_head, ...)
    trainable_parameters: int
    total_parameters: int  # base model parameters (tied weights once), LoRA excluded
    trainable_by_group: dict[str, int] = field(default_factory=dict)

    def table(self) -> str:
        """A readable summary: layer indices collapsed, counts per group."""
        lines = [
            f"model         {self.model} ({self.architecture}), preset {self.preset}",
            f"target_modules     {self.target_modules}",
            f"target_parameters  {self.target_parameters}",
            f"trainable          {self.trainable_parameters:,} of {self.total_parameters:,} base parameters "
            f"({100 * self.trainable_parameters / max(self.total_parameters, 1):.2f}%)",
            "",
            "trained (LoRA)                                                     count  trainable params",
        ]
        for pattern, count in _collapse(self.modules + self.parameters).items():
            lines.append(f"  {pattern:<64} {count:>5}  {self.trainable_by_group.get(pattern, 0):>16,}")
        lines.append("frozen nn.Linear (not adapted)")
        for pattern, count in _collapse(self.untargeted_linears).items():
            lines.append(f"  {pattern:<64} {count:>5}")
        return "\n".join(lines)


def _collapse(names: list[str]) -> dict[str, int]:
    """Group names by replacing layer indices with ``*``; keeps first-seen order."""
    return dict(Counter(re.sub(r"\.\d+\.", ".*.", name) for name in names))


def list_targets(model_path: str, lora_cfg: LoraSettings, revision: str | None = None) -> TargetReport:
    """Which modules and parameters ``lora_cfg`` trains on ``model_path``, without loading weights."""
    import torch
    from peft import get_peft_model

    from pipeline.training import peft_layout

    config = load_config(model_path, revision)
    model = build_meta_model(config)
    total = sum(p.numel() for p in model.parameters())
    lora = peft_lora_config(config, lora_cfg)
    with torch.device("meta"):
        peft_model = get_peft_model(model, lora)
    modules, parameters, frozen, per_group = peft_layout.inspect_peft_model(peft_model)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return TargetReport(
        model=str(model_path),
        architecture=type(model).__name__,
        preset=preset_for(config).name,
        target_modules=sorted(lora.target_modules) if isinstance(lora.target_modules, set) else lora.target_modules,
        target_parameters=list(lora.target_parameters or []),
        modules=modules,
        parameters=parameters,
        untargeted_linears=frozen,
        trainable_parameters=trainable,
        total_parameters=total,
        trainable_by_group=per_group,
    )
