"""``ssd export``: each format from a real registry version of a tiny Gemma 4 MoE adapter (experts
included), the merge check refusing broken merges, the per-expert layout equal to PEFT's fused
delta, and clear errors for unknown names and versions. Seconds each: the model has 17M
parameters."""

from __future__ import annotations

import json

import pytest
from conftest import lineage, moe_adapter, ssd

from pipeline import cli, models, runs
from pipeline.deploy import export, registry
from pipeline.training import peft_layout

NAME = "moe"
TARGETS = ["experts.gate_up_proj", "experts.down_proj"]


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    """A registry with two versions of NAME (v0002 latest) and a dense-only adapter named ``dense``."""
    root = tmp_path_factory.mktemp("export")
    reg = root / "registry"
    for seed in (1, 2):
        registry.promote(reg, NAME, moe_adapter(root / f"adapter-{seed}", seed), lineage(models.RANDOM_TINY))
    dense = root / "dense-adapter"
    dense.mkdir()
    (dense / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]})
    )
    registry.promote(reg, "dense", dense, lineage(models.RANDOM_TINY))
    return reg


def _export_cli(reg, *args: str) -> int:
    return cli.main(["export", *args, "--registry-dir", str(reg)])


def _peft_and_base():
    """(base parameters, PEFT model) for comparisons made independently of the export code."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models.resolve(models.RANDOM_TINY), dtype=torch.float32)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, model


def test_peft_export_copies_adapter_card_andlineage(reg, tmp_path, capsys):
    out = tmp_path / "peft"
    assert _export_cli(reg, NAME, str(out)) == 0  # default format peft, default version latest
    version_dir = reg / NAME / "v0002"
    assert runs.hash_file(out / "adapter_model.safetensors") == runs.hash_file(
        version_dir / "adapter" / "adapter_model.safetensors"
    )
    assert (out / "adapter_config.json").read_text() == (version_dir / "adapter" / "adapter_config.json").read_text()
    assert (out / "manifest.json").read_text() == (version_dir / "manifest.json").read_text()
    card = (out / "README.md").read_text()
    assert (
        card.startswith(f"# {NAME} v0002: PEFT LoRA adapter") and "# moe v0002\n" in card
    )  # the registry's card follows
    record = json.loads((out / "export.json").read_text())
    assert record["format"] == "peft" and record["source"]["version"] == "v0002"
    assert record["adapter_sha256"] == json.loads((version_dir / "manifest.json").read_text())["adapter_sha256"]
    assert f"exported {NAME}:v0002 as peft" in capsys.readouterr().out
    assert _export_cli(reg, f"{NAME}:1", str(tmp_path / "v1")) == 0  # an older version by its short form
    assert json.loads((tmp_path / "v1" / "export.json").read_text())["source"]["version"] == "v0001"


def test_merged_export_is_verified_loads_without_peft_and_stops_on_end_of_turn(reg, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = tmp_path / "merged"
    assert _export_cli(reg, NAME, str(out), "--format", "merged", "--dtype", "bfloat16") == 0
    assert not (out / "adapter_config.json").exists()  # a plain model directory
    record = json.loads((out / "export.json").read_text())
    check = record["verification"]
    assert check["max_logit_diff"] <= check["atol"] == export.MERGE_ATOL and check["dtype_verified"] == "float32"
    assert check["written"]["dtype"] == "bfloat16" and check["written"]["error"] < 0.5 * check["written"]["effect"]
    assert check["trained_tensors"] == 18 and check["changed_tensors"] == 18  # 6 layers x (q_proj, gate_up, down)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    tokenizer = AutoTokenizer.from_pretrained(out)
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert GenerationConfig.from_pretrained(out).eos_token_id == [tokenizer.eos_token_id, end_of_turn] == [1, 106]
    assert record["stop_token_ids"] == [1, 106]

    merged = AutoModelForCausalLM.from_pretrained(out)  # transformers, no PEFT
    assert merged.dtype == torch.bfloat16 and merged.generation_config.eos_token_id == [
        1,
        106,
    ]  # what generate() stops on
    base, model = _peft_and_base()
    for layer in range(6):  # the expert weights carry the adapter
        for param in ("gate_up_proj", "down_proj"):
            name = f"model.layers.{layer}.experts.{param}"
            assert not torch.equal(merged.get_parameter(name).float(), base[name].to(torch.bfloat16).float())

    # float32: the merged directory as loaded reproduces the PEFT model's logits
    out32 = tmp_path / "merged32"
    assert _export_cli(reg, NAME, str(out32), "--format", "merged", "--dtype", "float32") == 0
    peft_model = PeftModel.from_pretrained(model, str(reg / NAME / "v0002" / "adapter"))
    inputs = tokenizer(["def fibonacci(n):", "import numpy as np\n"], return_tensors="pt", padding=True)
    merged32 = AutoModelForCausalLM.from_pretrained(out32, dtype=torch.float32)
    with torch.no_grad():
        expected = peft_model(**inputs).logits
        got = merged32(**inputs).logits
    assert (expected - got).abs().max().item() < 1e-3
    # and the bfloat16 export is that verified float32 merge, rounded
    for name, p in merged32.named_parameters():
        assert torch.equal(merged.get_parameter(name), p.to(torch.bfloat16)), name


def test_broken_merge_is_refused_with_the_measured_difference_and_nothing_written(reg, tmp_path, monkeypatch, capsys):
    import torch
    from peft.tuners.lora.layer import ParamWrapper
    from peft.tuners.lora.model import LoraModel

    real = LoraModel.merge_and_unload  # what PeftModel.merge_and_unload runs

    def corrupt(self, *args, **kwargs):
        merged = real(self, *args, **kwargs)
        with torch.no_grad():  # a trained tensor, off by a little: only the logits can tell
            merged.model.layers[0].experts.down_proj.add_(0.02)
        return merged

    monkeypatch.setattr(LoraModel, "merge_and_unload", corrupt)
    out = tmp_path / "broken"
    assert _export_cli(reg, NAME, str(out), "--format", "merged") == 1
    err = capsys.readouterr().err
    assert "merged logits differ from the adapter's by" in err and "(> 0.001)" in err and "nothing written" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no output, no temporary directory left
    monkeypatch.undo()

    # vLLM's old failure: a merge that silently drops the expert LoRA
    monkeypatch.setattr(ParamWrapper, "merge", lambda self, *args, **kwargs: None)
    with pytest.raises(
        models.MergeError,
        match=r"12 of the 18 tensors the adapter trains are unchanged by the merge \(model\.layers\.0\.experts",
    ):
        export.export(reg, NAME, out, "merged")
    assert not out.exists()


def _expert_delta_from_peft(adapter):
    """Merged minus base weights from PEFT's own merge: the fused delta, by parameter name."""
    from peft import PeftModel

    base, model = _peft_and_base()
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return {n: p.detach() - base[n] for n, p in merged.named_parameters() if ".experts." in n}


def test_per_expert_layout_equals_the_fused_adapter(reg, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "per-expert"
    assert _export_cli(reg, NAME, str(out), "--format", "peft-per-expert") == 0
    config = json.loads((out / "adapter_config.json").read_text())
    tensors = load_file(out / "adapter_model.safetensors")
    assert config["target_parameters"] is None and config["r"] == 4 and config["lora_alpha"] == 8
    assert (
        "model.layers.5.experts.7.up_proj" in config["target_modules"]
        and "model.layers.0.self_attn.q_proj" in config["target_modules"]
    )
    assert len(config["target_modules"]) == 6 * (1 + 8 * 3)
    assert len(tensors) == 2 * len(config["target_modules"])
    assert not any(".base_layer." in k for k in tensors)
    fused = load_file(reg / NAME / "v0002" / "adapter" / "adapter_model.safetensors")
    q = "base_model.model.model.layers.2.self_attn.q_proj.lora_B.weight"
    assert (tensors[q] == fused[q]).all()  # dense modules copied as they were

    deltas = _expert_delta_from_peft(reg / NAME / "v0002" / "adapter")
    scale = config["lora_alpha"] / config["r"]
    worst = 0.0
    for layer in range(6):
        gate_up, down = (
            deltas[f"model.layers.{layer}.experts.gate_up_proj"],
            deltas[f"model.layers.{layer}.experts.down_proj"],
        )
        half = gate_up.shape[1] // 2
        for e in range(8):
            for proj, delta in (
                ("gate_proj", gate_up[e, :half]),
                ("up_proj", gate_up[e, half:]),
                ("down_proj", down[e]),
            ):
                prefix = f"base_model.model.model.layers.{layer}.experts.{e}.{proj}"
                a, b = tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"]
                assert a.shape[0] == b.shape[1] == 4
                assert delta.abs().max() > 1e-3  # a trained expert: equality below is not 0 == 0
                worst = max(worst, (b @ a * scale - delta).abs().max().item())
    assert worst < 1e-6, worst
    record = json.loads((out / "export.json").read_text())["verification"]
    assert record["expert_projections"] == 6 * 8 * 3 and record["max_abs_diff"] < 1e-6


def test_per_expert_export_of_a_bf16_base_keeps_the_float32_factors(reg, tmp_path):
    """A base stored in bf16 (as Gemma 4's checkpoints are) loads in bf16, and each fused expert
    tensor is upcast only while it is read and merged: the written factors are the ones a float32
    base gives, bit for bit, and the merge check passes at the same tolerance. PEFT casts the
    factors it hands out to the parameter's dtype, so without the upcast they would be rounded to
    bf16, and a bf16 merge would round the delta the check compares them with."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    bf16 = tmp_path / "tiny-bf16"
    AutoModelForCausalLM.from_pretrained(models.resolve(models.RANDOM_TINY), dtype=torch.bfloat16).save_pretrained(bf16)
    adapter = reg / NAME / "v0002" / "adapter"
    registry.promote(tmp_path / "registry", NAME, adapter, lineage(str(bf16)))
    out = tmp_path / "per-expert-bf16"
    export.export(tmp_path / "registry", NAME, out, "peft-per-expert")
    reference = tmp_path / "per-expert-f32"
    export.export(reg, f"{NAME}:v0002", reference, "peft-per-expert")

    written, expected = load_file(out / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert written.keys() == expected.keys() and all(t.dtype == torch.float32 for t in written.values())
    assert all(torch.equal(written[key], expected[key]) for key in expected)
    check = json.loads((out / "export.json").read_text())["verification"]
    assert check["expert_projections"] == 6 * 8 * 3 and check["fused_tensors_changed_by_merge"] == 12
    assert check["max_abs_diff"] < 1e-6


def test_per_expert_adapter_loads_as_expert_modules_in_vllm(reg, tmp_path):
    """vLLM's own adapter loader, with vLLM's Gemma 4 expert names, reads one module per expert and projection."""
    from vllm.config.lora import LoRAConfig
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper
    from vllm.model_executor.layers.fused_moe.routed_experts import RoutedExperts

    out = tmp_path / "per-expert"
    export.export(reg, NAME, out, "peft-per-expert")
    mapping = RoutedExperts.build_expert_params_mapping(
        "gate_proj", "down_proj", "up_proj", num_experts=8, routed_experts_prefix=""
    )
    expected = {weight.rstrip(".") for _, weight, _, _ in mapping} | {"q_proj", "k_proj", "v_proj", "o_proj"}
    helper = PEFTHelper.from_local_dir(str(out), 4096)
    helper.validate_legal(LoRAConfig(max_lora_rank=8))  # what the server checks before loading
    lora = LoRAModel.from_local_checkpoint(str(out), expected, helper, lora_model_id=1, device="cpu")
    assert len(lora.loras) == 6 * (1 + 8 * 3)
    up = lora.loras["model.layers.3.experts.5.up_proj"]
    assert tuple(up.lora_a.shape) == (4, 64) and tuple(up.lora_b.shape) == (32, 4) and up.scaling == 2.0


def test_misread_expert_layout_is_caught(reg, tmp_path, monkeypatch):
    """Reading PEFT's B as expert-major (the natural guess; PEFT keeps it rank-major) must not get through."""

    def naive(wrapper, adapter_name="default"):
        a = wrapper.lora_A[adapter_name].weight
        b = wrapper.lora_B[adapter_name].weight
        experts = wrapper.num_experts
        return (
            b.reshape(b.shape[0], experts, -1).permute(1, 0, 2),
            a.reshape(experts, -1, a.shape[-1]),
            wrapper.scaling[adapter_name],
        )

    monkeypatch.setattr(peft_layout, "expert_factors", naive)
    out = tmp_path / "wrong"
    with pytest.raises(
        export.ExportError,
        match=r"per-expert factors of model\.layers\.0\.experts\.0\.\w+_proj differ from PEFT.s fused delta by",
    ):
        export.export(reg, NAME, out, "peft-per-expert")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_name_or_version_and_unusable_input_are_clear_errors(reg, tmp_path, capsys):
    out = tmp_path / "out"
    assert _export_cli(reg, "nope", str(out)) == 2
    assert "no adapter named 'nope'" in (err := capsys.readouterr().err) and "names there: dense, moe" in err
    assert _export_cli(reg, f"{NAME}:v0009", str(out), "--format", "merged") == 2
    assert "'moe' has no version v0009; versions of 'moe': v0001, v0002" in capsys.readouterr().err
    assert _export_cli(reg, "dense", str(out), "--format", "peft-per-expert") == 2
    err = capsys.readouterr().err
    assert "'dense' has no version" not in err and "has no expert LoRA" in err and "export it with --format peft" in err
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _export_cli(reg, NAME, str(out)) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    out.joinpath("keep.txt").unlink()
    out.rmdir()
    assert not out.exists()
    # the real command line: exit status and message
    result = ssd("export", f"{NAME}:v7", str(out), "--registry-dir", str(reg))
    assert result.returncode == 2 and "'moe' has no version v0007" in result.stderr
    assert not out.exists()
