"""PEFT's names and layout: the one module that knows them.

Everything else in the pipeline talks about a LoRA in the base model's own names
(``model.layers.3.self_attn.q_proj``, ``model.layers.3.experts.gate_up_proj``). PEFT names the
same things differently, and some of what the pipeline needs is only in PEFT's private state:

- a ``PeftModel``'s modules are called ``base_model.model.<name>``, and a module that carries a
  LoRA wraps the original one as ``base_layer`` (two expert tensors on one module nest:
  ``experts`` wraps ``experts.base_layer``, which wraps the experts module);
- the saved adapter keys are ``base_model.model.<name>.lora_A.weight`` / ``lora_B.weight`` (the
  adapter name dropped, ``base_layer`` hops kept);
- a LoRA on a fused 3D expert parameter (``target_parameters``) is a ``ParamWrapper`` holding one
  pair of factors for all experts: ``lora_A`` expert-major ``(experts * r, in)`` but ``lora_B``
  rank-major ``(out, r * experts)``, expert index fastest. A plain reshape of B reads the wrong
  columns; ``ParamWrapper.get_delta_factors`` is PEFT's own reading. Whether the parameter is
  stored ``(experts, out, in)`` or ``(experts, in, out)`` is the private
  ``_did_swap_in_out_features``;
- the scaling of a module is ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), with ``r`` and
  ``alpha`` looked up in ``rank_pattern`` / ``alpha_pattern`` by a key that matches the end of the
  module name as a regular expression.

Written for PEFT 0.21 (pinned in ``pyproject.toml``). Importing this module on another PEFT
major.minor raises ``PeftVersionError`` saying what to re-verify: a changed layout does not fail
on its own, it exports wrong expert factors or miscounts memory.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

SUPPORTED = (0, 21)
PREFIX = "base_model.model."  # a PeftModel's name for the model it wraps
ADAPTER = "default"  # the adapter name TRL and ``get_peft_model`` give the one adapter a run trains


class PeftVersionError(RuntimeError):
    """The installed PEFT is not the one this module's names and layout were checked against."""


def check_version(version: str | None = None) -> None:
    """Raise ``PeftVersionError`` unless ``version`` (default: the installed PEFT) is 0.21.x."""
    version = version or importlib.metadata.version("peft")
    parts = re.match(r"(\d+)\.(\d+)", version)
    if parts and (int(parts[1]), int(parts[2])) == SUPPORTED:
        return
    wanted = ".".join(map(str, SUPPORTED))
    raise PeftVersionError(
        f"PEFT {version} is installed; pipeline/training/peft_layout.py was written for PEFT {wanted}.x. "
        f"Install peft=={wanted}.* (pyproject.toml pins it), or re-verify against PEFT {version} and then raise "
        "SUPPORTED: the 'base_model.model.' prefix and 'base_layer' nesting of module names; the "
        "'<name>.lora_A/lora_B.weight' adapter keys; ParamWrapper's lora_B layout (rank-major, expert index "
        "fastest), get_delta_factors and _did_swap_in_out_features; rank_pattern/alpha_pattern matching. "
        "tests/integration/test_export.py (per-expert export), tests/unit/test_plan.py and "
        "tests/unit/test_targets.py check them."
    )


check_version()


# --- names ------------------------------------------------------------------------------------


def model_name(peft_name: str) -> str:
    """The base model's name for a module or parameter PEFT names ``peft_name`` (also its name after a merge)."""
    return peft_name.removeprefix(PREFIX).replace(".base_layer", "")


def peft_name(name: str) -> str:
    """The ``PeftModel`` name of the base model's module ``name``."""
    return PREFIX + name


def lora_keys(peft_module: str) -> tuple[str, str]:
    """The saved adapter keys ``(A, B)`` of the LoRA on the module PEFT names ``peft_module``."""
    return f"{peft_module}.lora_A.weight", f"{peft_module}.lora_B.weight"


def module_of_key(key: str) -> str:
    """The base model's module name that a saved adapter key belongs to."""
    return key.removeprefix(PREFIX).rsplit(".lora_", 1)[0]


def is_lora_name(name: str) -> bool:
    """A module or parameter PEFT added (a LoRA factor or its container), not one of the base model."""
    return ".lora_" in name


def unwrap(module):
    """The module a PEFT wrapper wraps (itself when not wrapped)."""
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def causal_lm(model):
    """The transformers model under a ``PeftModel`` (whose layers carry the LoRA); the model itself otherwise."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def config_targets(peft_model, adapter: str = ADAPTER) -> tuple[str | list[str] | None, list[str]]:
    """``(target_modules, target_parameters)`` the adapter was built with, sorted where PEFT keeps a set."""
    config = peft_model.peft_config[adapter]
    modules = sorted(config.target_modules) if isinstance(config.target_modules, set) else config.target_modules
    return modules, sorted(config.target_parameters or [])


# --- what a PEFT model adapts ------------------------------------------------------------------


@dataclass(frozen=True)
class LoraShape:
    """The sizes of one LoRA layer: on an ``nn.Linear`` (``experts == 1``) or on a fused expert parameter."""

    kind: str  # "linear" or "parameter"
    in_features: int
    out_features: int
    rank: int  # summed over the module's adapters
    experts: int = 1
    parameter_numel: int = 0  # the wrapped parameter's size (kind "parameter")


def lora_shape(module) -> LoraShape | None:
    """The LoRA sizes of ``module`` when PEFT made it a LoRA ``Linear`` or ``ParamWrapper``; None otherwise."""
    from peft.tuners.lora import Linear, ParamWrapper

    if isinstance(module, ParamWrapper):
        return LoraShape(
            "parameter",
            module.in_features,
            module.out_features,
            sum(module.r.values()),
            module.num_experts,
            module.get_param().numel(),
        )
    if isinstance(module, Linear):
        return LoraShape("linear", module.in_features, module.out_features, sum(module.r.values()))
    return None


def inspect_peft_model(peft_model) -> tuple[list[str], list[str], list[str], dict[str, int]]:
    """(adapted modules, adapted parameters, frozen linears, trainable count per group) of a PEFT model.

    Nested ``ParamWrapper``s (two expert tensors on one module) appear as ``experts`` and
    ``experts.base_layer``; each is reported by the parameter it adapts. Groups collapse layer
    indices to ``*``.
    """
    import torch
    from peft.tuners.lora import LoraLayer, ParamWrapper

    keys: dict[str, str] = {}  # PEFT module name -> reported name
    modules, parameters, frozen = [], [], []
    for name, module in peft_model.base_model.model.named_modules():
        clean = model_name(name)
        if isinstance(module, ParamWrapper):
            keys[name] = f"{clean}.{module.parameter_name}"
            parameters.append(keys[name])
        elif isinstance(module, LoraLayer):
            keys[name] = clean
            modules.append(clean)
        elif isinstance(module, torch.nn.Linear) and not is_lora_name(name) and not name.endswith(".base_layer"):
            frozen.append(name)
    per_group: Counter = Counter()
    for name, param in peft_model.base_model.model.named_parameters():
        if param.requires_grad:
            owner = name.split(".lora_", 1)[0]
            per_group[re.sub(r"\.\d+\.", ".*.", keys.get(owner, owner))] += param.numel()
    return modules, parameters, frozen, dict(per_group)


def adapted_tensors(peft_model) -> dict[str, bool]:
    """Each base tensor the adapter adapts, by its name after a merge, and whether its LoRA is
    non-zero (a LoRA B of zeros is PEFT's initialisation: that tensor was not trained)."""
    from peft.tuners.lora import LoraLayer, ParamWrapper

    tensors = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        tensor = module.parameter_name if isinstance(module, ParamWrapper) else "weight"
        factors = [m.weight for m in module.lora_B.values()] + list(module.lora_embedding_B.values())
        tensors[f"{model_name(name)}.{tensor}"] = any(bool(f.detach().abs().max() > 0) for f in factors)
    return tensors


# --- LoRA on fused expert parameters (``target_parameters``) -----------------------------------


@dataclass
class ExpertLora:
    """One ``ParamWrapper`` over a fused 3D expert parameter, in the base model's names."""

    peft_module: str  # PEFT's module name (the saved keys derive from it)
    module: str  # the base model's name of the experts module
    parameter: str  # the fused parameter, e.g. gate_up_proj
    experts: int
    out_in: bool  # stored (experts, out, in), as F.linear uses each expert; else (experts, in, out)
    wrapper: Any

    @property
    def tensor(self) -> str:
        """The fused parameter's name in the base (and merged) model."""
        return f"{self.module}.{self.parameter}"

    def as_linear(self, tensor):
        """A tensor of the fused parameter's shape, viewed ``(experts, out, in)``."""
        return tensor if self.out_in else tensor.transpose(-2, -1)


def expert_loras(peft_model) -> list[ExpertLora]:
    """Every LoRA on a fused expert parameter (more than one expert) of a ``PeftModel``."""
    from peft.tuners.lora import ParamWrapper

    return [
        ExpertLora(
            name, model_name(name), module.parameter_name, module.num_experts, module._did_swap_in_out_features, module
        )
        for name, module in peft_model.named_modules()
        if isinstance(module, ParamWrapper) and module.num_experts > 1
    ]


def expert_factors(wrapper, adapter: str = ADAPTER):
    """Per-expert ``(B, A, scale)`` of a LoRA on a fused 3D expert parameter, from PEFT itself.

    ``B`` is ``(experts, out, r)`` and ``A`` ``(experts, r, in)`` such that expert ``e``'s linear
    weight (``out x in``, as ``F.linear`` uses it) changes by ``scale * B[e] @ A[e]``. PEFT keeps
    B rank-major, so the factors come from ``get_delta_factors`` rather than a reshape here.
    """
    lhs, rhs, scale = wrapper.get_delta_factors(adapter)
    if wrapper._did_swap_in_out_features:  # parameter stored (experts, out, in): delta = lhs @ rhs
        return lhs, rhs, scale
    return rhs.transpose(-2, -1), lhs.transpose(-2, -1), scale  # stored (experts, in, out): transpose


def _pattern_value(pattern: dict | None, module: str, default):
    """PEFT's rank/alpha pattern lookup: a key matches a module name ending in it (as a regex)."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def scaling(config: dict, module: str) -> float:
    """The LoRA scaling of ``module`` under an ``adapter_config.json`` (rank and alpha patterns, rsLoRA)."""
    r = _pattern_value(config.get("rank_pattern"), module, config["r"])
    alpha = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
    return alpha / r**0.5 if config.get("use_rslora") else alpha / r
