import shutil

import pytest

from pipeline import models


def test_paths_and_hub_ids_pass_through(tmp_path):
    assert models.resolve(str(tmp_path)) == str(tmp_path)
    assert models.resolve("google/gemma-4-26B-A4B-it") == "google/gemma-4-26B-A4B-it"
    with pytest.raises(ValueError, match="unknown model 'embedded:llama'"):
        models.resolve("embedded:llama")


@pytest.mark.slow
def test_embedded_model_is_built_once_and_prepends_bos():
    from transformers import AutoConfig, AutoTokenizer

    path = models.resolve(models.EMBEDDED)
    assert models.resolve(models.EMBEDDED) == path  # cached
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "gemma3_text" and config.vocab_size == 262144
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("def f():").input_ids[0] == tok.bos_token_id == 2
    assert not models.is_moe(path)


@pytest.mark.slow
def test_tiny_gemma4_is_a_moe_with_fused_experts():
    from transformers import AutoModelForCausalLM

    path = models.resolve(models.RANDOM_TINY)
    assert models.is_moe(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if "experts" in n}
    assert shapes["model.layers.0.experts.gate_up_proj"] == (8, 64, 64)  # 8 experts, 2 x 32 fused


def _adapter(tmp_path, perturb: bool):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models.resolve(models.RANDOM_TINY), dtype=torch.float32)
    config = LoraConfig(r=4, target_modules=["q_proj"], target_parameters=["experts.down_proj"])
    peft_model = get_peft_model(model, config)
    if perturb:
        torch.manual_seed(0)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.05)
    out = tmp_path / ("trained" if perturb else "untrained")
    peft_model.save_pretrained(out)
    return out


@pytest.mark.slow
def test_merge_is_verified_and_a_no_op_merge_is_refused(tmp_path):
    base = models.resolve(models.RANDOM_TINY)
    figures = models.merge_adapter(base, _adapter(tmp_path, perturb=True), tmp_path / "merged")
    assert figures["max_logit_diff"] < 1e-3
    assert sum("experts.down_proj" in n for n in figures["changed"]) == 6  # every layer's experts
    assert sum("q_proj" in n for n in figures["changed"]) == 6
    assert not any("gate_up_proj" in n for n in figures["changed"])  # not targeted: untouched
    assert (tmp_path / "merged" / "config.json").is_file()
    with pytest.raises(models.MergeError, match="changed no weight"):
        models.merge_adapter(base, _adapter(tmp_path, perturb=False), tmp_path / "noop")
    assert not (tmp_path / "noop").exists()  # a failed check leaves no output
    shutil.rmtree(tmp_path / "merged")
