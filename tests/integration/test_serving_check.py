"""The served-model check (``evaluation.serving``) on real models, with transformers on the served
side (the eval stage gives it vLLM's log-probs; the comparison is the same function): a merged copy
that carries the adapter passes; a copy whose adapter was erased (the delta removed, or rounded
away by a bf16 cast of a small adapter) is refused, and so is a merged export in that dtype."""

from __future__ import annotations

import json

import pytest
from conftest import lineage, moe_adapter

from pipeline import cli, models
from pipeline.deploy import registry
from pipeline.evaluation import serving


def _small_adapter(path, std: float):
    """The tiny MoE's adapter with LoRA B drawn at ``std``: 1e-5 moves the weights less than a
    bf16 rounding step does (the size of a short LoRA run's change on a real model)."""
    import torch
    from peft import PeftModel

    moe_adapter(path, seed=3)
    model = PeftModel.from_pretrained(
        __import__("transformers").AutoModelForCausalLM.from_pretrained(models.resolve(models.RANDOM_TINY)), str(path)
    )
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=std)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    base = models.resolve(models.RANDOM_TINY)
    return root, base


def test_a_served_copy_that_carries_the_adapter_passes_and_an_erased_one_is_refused(setting):
    root, base = setting
    adapter = moe_adapter(root / "adapter", seed=1)
    peft_base, peft_adapted = serving.peft_logprobs(base, adapter)
    models.merge_adapter(base, adapter, root / "merged", dtype="float32")
    figures = serving.check(
        serving.adapter_effect(serving.transformers_logprobs(root / "merged", "float32"), peft_base, peft_adapted),
        "merged copy",
    )
    assert figures["effect"] > 1e-2 and figures["error"] < 1e-3 * figures["effect"]
    # the delta removed: the base served under the adapter's name
    erased = serving.adapter_effect(serving.transformers_logprobs(base, "float32"), peft_base, peft_adapted)
    assert erased["error"] == pytest.approx(erased["effect"], rel=1e-6)
    with pytest.raises(serving.ServingError, match="does not carry the adapter"):
        serving.check(erased, "the base model")


def test_a_bf16_cast_that_rounds_a_small_adapter_away_is_refused(setting):
    root, base = setting
    adapter = _small_adapter(root / "small", std=1e-5)
    peft_base, peft_adapted = serving.peft_logprobs(base, adapter)
    for dtype in ("float32", "bfloat16"):
        models.merge_adapter(base, adapter, root / f"small-{dtype}", dtype=dtype)
    kept = serving.adapter_effect(
        serving.transformers_logprobs(root / "small-float32", "float32"), peft_base, peft_adapted
    )
    assert serving.check(kept, "float32 copy")["error"] < 0.1 * kept["effect"]
    rounded = serving.adapter_effect(
        serving.transformers_logprobs(root / "small-bfloat16", "bfloat16"), peft_base, peft_adapted
    )
    assert rounded["error"] > rounded["effect"]  # what bf16 serves is mostly rounding, not the adapter
    with pytest.raises(serving.ServingError):
        serving.check(rounded, "bf16 copy")


def test_merged_export_refuses_a_dtype_that_erases_the_adapter(setting, capsys):
    root, _ = setting
    reg = root / "registry"
    registry.promote(reg, "small", _small_adapter(root / "small-export", std=1e-5), lineage(models.RANDOM_TINY))
    args = ["export", "small", "--format", "merged", "--registry-dir", str(reg)]
    assert cli.main([*args[:2], str(root / "out16"), *args[2:], "--dtype", "bfloat16"]) == 1
    assert "does not carry the adapter" in capsys.readouterr().err and not (root / "out16").exists()
    assert cli.main([*args[:2], str(root / "out32"), *args[2:], "--dtype", "float32"]) == 0
    written = json.loads((root / "out32" / "export.json").read_text())["verification"]["written"]
    assert written["dtype"] == "float32" and written["error"] < 0.1 * written["effect"]
