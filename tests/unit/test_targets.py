"""LoRA target presets on real Gemma configs and real PEFT models (tiny Gemma 4 MoE, CPU)."""

import time

import pytest
import torch

from pipeline import models
from pipeline.recipe import LoraConfig
from pipeline.training import targets

EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]


def _lora(**kwargs) -> LoraConfig:
    return LoraConfig(**{"r": 4, "alpha": 8, "target_modules": "auto", **kwargs})


def _tiny_multimodal_config():
    """Gemma4ForConditionalGeneration around the tiny MoE, with a 2-layer vision tower."""
    from transformers import Gemma4Config

    return Gemma4Config(
        text_config=models.tiny_gemma4_config().to_dict(),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=16,
            patch_size=4,
            position_embedding_size=16,
            pooling_kernel_size=2,
        ),
    )


def _auto(lora):
    """The recipe cannot yet say target_parameters: auto; the resolver treats None the same way."""
    return lora.model_copy(update={"target_parameters": None})


def test_auto_picks_language_model_linears_and_experts_for_gemma4_moe():
    modules, parameters = targets.resolve_targets(models.tiny_gemma4_config(), _auto(_lora()))
    assert modules == targets.GEMMA_LANGUAGE_MODEL_LINEARS and parameters == EXPERTS
    import re

    for name in ("model.layers.3.self_attn.q_proj", "model.language_model.layers.29.mlp.down_proj"):
        assert re.fullmatch(modules, name), name
    for name in (
        "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear",
        "model.language_model.layers.0.router.proj",
        "lm_head",
    ):
        assert not re.fullmatch(modules, name), name


def test_explicit_values_override_the_preset_field_by_field():
    lora = _lora(target_modules=["q_proj"], target_parameters=["experts.down_proj"])
    assert targets.resolve_targets(models.tiny_gemma4_config(), lora) == (["q_proj"], ["experts.down_proj"])
    # keep the preset's modules, drop the experts explicitly
    modules, parameters = targets.resolve_targets(models.tiny_gemma4_config(), _lora(target_parameters=[]))
    assert modules == targets.GEMMA_LANGUAGE_MODEL_LINEARS and parameters == []


def test_dense_gemma3_uses_all_linear_and_expert_dropout_is_refused():
    from transformers import Gemma3TextConfig

    dense = Gemma3TextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    )
    assert targets.resolve_targets(dense, _auto(_lora())) == ("all-linear", [])
    with pytest.raises(targets.TargetError, match=r"training\.lora\.dropout=0\.1"):
        targets.resolve_targets(models.tiny_gemma4_config(), _auto(_lora(dropout=0.1)))
    with pytest.raises(targets.TargetError, match="nothing would train"):
        targets.resolve_targets(dense, _lora(target_modules=[], target_parameters=[]))


@pytest.fixture(scope="module")
def tiny_path():
    return models.resolve(models.RANDOM_TINY)


def test_expert_lora_gets_gradients_and_changes_after_two_steps(tiny_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    peft_model = get_peft_model(model, targets.peft_lora_config(model, _auto(_lora())))
    expert = {n: p for n, p in peft_model.named_parameters() if p.requires_grad and ".experts." in n}
    assert len(expert) == 6 * 2 * 2  # 6 layers x (gate_up, down) x (A, B)
    before = {n: p.detach().clone() for n, p in expert.items()}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(3, 1000, (2, 24))
    grad_norms = []
    for _ in range(2):
        optimizer.zero_grad()
        peft_model(input_ids=ids, labels=ids).loss.backward()
        grad_norms.append({n: p.grad.norm().item() for n, p in expert.items() if p.grad is not None})
        optimizer.step()
    # step 1: B starts at zero, so only B gets a gradient; step 2: both factors do
    assert all(v > 0 for n, v in grad_norms[0].items() if "lora_B" in n) and len(grad_norms[0]) == len(expert)
    assert all(v > 0 for v in grad_norms[1].values())
    changed = [n for n, p in expert.items() if not torch.equal(before[n], p.detach())]
    assert sorted(changed) == sorted(expert)
    assert all(before[n].abs().sum() == 0 for n in expert if "lora_B" in n)  # B really started at zero


def test_listing_counts_what_a_real_peft_model_trains(tiny_path):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    lora = _auto(_lora())
    report = targets.list_targets(tiny_path, lora)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    real_total = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, targets.peft_lora_config(model, lora))
    real = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert report.trainable_parameters == real > 0
    assert report.total_parameters == real_total
    assert len(report.modules) == 6 * 7 and len(report.parameters) == 6 * 2
    assert sum(report.trainable_by_group.values()) == real
    assert "experts.gate_up_proj" in report.table()


def test_vision_tower_is_excluded_on_conditional_generation(tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import Gemma4ForConditionalGeneration

    config = _tiny_multimodal_config()
    config.save_pretrained(tmp_path)
    report = targets.list_targets(str(tmp_path), _auto(_lora()))
    assert report.architecture == "Gemma4ForConditionalGeneration"
    assert report.modules and all(m.startswith("model.language_model.layers.") for m in report.modules)
    assert len(report.modules) == 6 * 7 and len(report.parameters) == 6 * 2
    assert any("vision_tower" in name for name in report.untargeted_linears)

    torch.manual_seed(0)
    model = Gemma4ForConditionalGeneration(config)
    peft_model = get_peft_model(model, targets.peft_lora_config(config, _auto(_lora())))
    lora_names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert not any("vision" in n for n in lora_names)
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == report.trainable_parameters
    # what the preset avoids: all-linear adapts the vision tower's wrapped linears
    naive = get_peft_model(Gemma4ForConditionalGeneration(config), PeftLoraConfig(r=4, target_modules="all-linear"))
    assert any("vision_tower" in n for n, p in naive.named_parameters() if p.requires_grad)


def test_full_26b_config_lists_in_seconds_with_the_hand_counted_trainable_size():
    r = 16
    started = time.time()
    report = targets.list_targets("google/gemma-4-26B-A4B", _auto(_lora(r=r, alpha=32)))
    assert time.time() - started < 60
    h, inter, moe, experts, layers = 2816, 2112, 704, 128, 30
    sliding, full = 25, 5  # every sixth layer is global; global layers have no v_proj (K = V)
    attention = sliding * r * ((h + 16 * 256) + 2 * (h + 8 * 256) + (16 * 256 + h))
    attention += full * r * ((h + 16 * 512) + (h + 2 * 512) + (16 * 512 + h))
    mlp = layers * 3 * r * (h + inter)
    expert_lora = layers * r * experts * ((h + 2 * moe) + (moe + h))
    assert report.trainable_parameters == attention + mlp + expert_lora == 494_376_960
    assert 25.7e9 < report.total_parameters < 25.9e9  # 25.2B language model + ~0.57B vision tower
    assert not any("vision" in m for m in report.modules)


def test_peft_layout_refuses_a_peft_it_was_not_checked_against():
    from pipeline.training import peft_layout

    peft_layout.check_version("0.21.9")
    for other in ("0.22.0", "1.21.0", "0.20.1"):
        with pytest.raises(
            peft_layout.PeftVersionError, match=rf"PEFT {other} is installed; .* written for PEFT 0\.21\.x"
        ):
            peft_layout.check_version(other)


def test_peft_layout_names_match_what_peft_builds_and_saves(tiny_path):
    """The naming rules peft_layout encodes, against a real PEFT model with nested expert wrappers."""
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from pipeline.training import peft_layout

    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.float32)
    base_names = {name for name, _ in model.named_parameters()}
    peft_model = get_peft_model(model, targets.peft_lora_config(model, _auto(_lora())))
    peft_names = {
        peft_layout.model_name(n) for n, _ in peft_model.named_parameters() if not peft_layout.is_lora_name(n)
    }
    assert peft_names == base_names
    saved = set(get_peft_model_state_dict(peft_model))
    lora_modules = {n for n, m in peft_model.named_modules() if peft_layout.lora_shape(m) is not None}
    assert saved == {key for name in lora_modules for key in peft_layout.lora_keys(name)}
    assert {peft_layout.module_of_key(k) for k in saved} == {n.removeprefix(peft_layout.PREFIX) for n in lora_modules}
    experts = peft_layout.expert_loras(peft_model)
    assert sorted(lora.tensor for lora in experts) == sorted(
        f"model.layers.{i}.experts.{p}" for i in range(6) for p in ("gate_up_proj", "down_proj")
    )
    assert peft_layout.config_targets(peft_model) == (targets.GEMMA_LANGUAGE_MODEL_LINEARS, sorted(EXPERTS))
    adapted = peft_layout.adapted_tensors(peft_model)
    assert len(adapted) == 6 * 9 and not any(adapted.values())  # 7 linears + 2 expert tensors a layer; B starts at 0
