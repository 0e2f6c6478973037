"""The memory plan against hand counts and against what autograd really saves (tiny Gemma 4 MoE, CPU)."""

import pytest
import torch

from pipeline import models
from pipeline.recipe import LoraConfig
from pipeline.training import fastloss, peft_layout, plan, targets

GIB = 1024**3
LORA = LoraConfig(r=8, alpha=16, target_modules="auto", target_parameters=["experts.gate_up_proj", "experts.down_proj"])


@pytest.fixture(scope="module")
def tiny_path():
    return models.resolve(models.RANDOM_TINY)


@pytest.fixture(scope="module")
def real_tiny(tiny_path):
    """The real tiny model in bf16 with the same LoRA, as the GPU run would build it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_path, dtype=torch.bfloat16)
    n_base = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    return get_peft_model(model, targets.peft_lora_config(model, LORA)), n_base


def test_static_rows_match_a_real_peft_model(tiny_path, real_tiny):
    peft_model, n_base = real_tiny
    p = plan.estimate(tiny_path, LORA, seq_len=128, micro_batch_size=2, gradient_checkpointing=False)
    n_lora = sum(q.numel() for q in peft_model.parameters() if q.requires_grad)
    assert {q.dtype for q in peft_model.parameters() if q.requires_grad} == {torch.float32}  # PEFT's fp32 adapter
    assert p.row("weights").bytes == n_base * 2
    assert p.row("LoRA parameters").bytes == p.row("LoRA gradients").bytes == n_lora * 4
    assert p.row("AdamW states (m, v)").bytes == n_lora * 8
    tokens, vocab, hidden = 2 * 128, 262_144, 64
    # the supervised loss path: norm input, rows and their gradient; one 256-row chunk of logits (no soft-cap here)
    assert p.loss_path == "supervised"
    assert p.row("loss head: rows and their gradient").bytes == tokens * hidden * (4 + 2 * 2)
    assert p.row("loss head: one chunk of logits").bytes == fastloss.chunk_rows(vocab) * vocab * 6
    # weight copies: per layer W+BA of gate_up (8x64x64) and down (8x64x32) in bf16 with bf16 factors
    # r*E*(in+out), autocast's bf16 copies of the other LoRA factors, fp32 copies of the norm weights
    experts = (8 * 64 * 64 + 8 * 64 * 32) * 2 + 8 * 8 * ((64 + 64) + (32 + 64)) * 2
    lora_linear = sum(q.numel() for n, q in peft_model.named_parameters() if "lora_" in n and ".experts" not in n)
    norms = sum(q.numel() for n, q in peft_model.named_parameters() if "layers." in n and "norm" in n)
    assert p.row("weight copies (all layers)").bytes == 6 * experts + 2 * lora_linear + 4 * norms


def _saved_bytes_per_layer(peft_model, input_ids) -> tuple[dict[str, int], int]:
    """Bytes autograd keeps for backward, by decoder layer (unique storages, parameters excluded)."""
    params = {t.untyped_storage()._cdata for t in list(peft_model.parameters()) + list(peft_model.buffers())}
    seen: dict[int, tuple[str, int]] = {}
    where = ["embed"]

    def pack(t):
        storage = t.untyped_storage()
        if storage._cdata not in params and storage._cdata not in seen:
            seen[storage._cdata] = (where[0], storage.nbytes())
        return t

    def enter(name):
        def hook(module, args):
            where[0] = name

        return hook

    stack = plan.language_model(peft_model)
    handles = [layer.register_forward_pre_hook(enter(f"layer{i}")) for i, layer in enumerate(stack.layers)]
    handles.append(stack.norm.register_forward_pre_hook(enter("head")))
    inputs = {"input_ids": input_ids, "labels": input_ids}
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = fastloss.supervised_loss(peft_layout.causal_lm(peft_model), inputs)
    for handle in handles:
        handle.remove()
    assert loss.requires_grad
    totals: dict[str, int] = {}
    for name, nbytes in seen.values():
        totals[name] = totals.get(name, 0) + nbytes
    return totals, len(seen)


def test_activation_formula_matches_what_autograd_saves(tiny_path, real_tiny):
    """Sliding layers 1-4 (layer 0 also holds the shared mask; the global layer's 512-wide heads
    take SDPA's math kernel on CPU, which keeps L x L scores that GPU kernels do not)."""
    peft_model, _ = real_tiny
    b, L = 2, 128
    measured, n = _saved_bytes_per_layer(peft_model, torch.randint(3, 100_000, (b, L)))
    assert n > 100
    stack = plan.language_model(peft_model)
    for i in range(1, 5):
        copies, largest = plan.layer_weight_copies(stack.layers[i], 2)
        expected = plan.layer_activations(stack.layers[i], 64, 2, 2, L).per_token * b * L + copies
        assert largest == 8 * 64 * 64 * 2
        # 2%: tight enough that leaving out the expert W+BA copy (7% here) would fail
        assert measured[f"layer{i}"] == pytest.approx(expected, rel=0.02), i
    estimate = plan.estimate(tiny_path, LORA, seq_len=L, micro_batch_size=b, gradient_checkpointing=False)
    # what the supervised path keeps (norm input, the rows' gradient) is within the head row, which also
    # counts the selected rows alive during the forward
    head_row = estimate.row("loss head: rows and their gradient").bytes
    assert 0.6 * head_row < measured["head"] <= head_row


def test_checkpointing_keeps_one_layers_expert_tensors_and_totals_add_up(tiny_path, real_tiny):
    off = plan.estimate(tiny_path, LORA, seq_len=512, micro_batch_size=1, gradient_checkpointing=False)
    on = plan.estimate(tiny_path, LORA, seq_len=512, micro_batch_size=1, gradient_checkpointing=True)
    copies = [plan.layer_weight_copies(layer, 2)[0] for layer in plan.language_model(real_tiny[0]).layers]
    assert off.row("weight copies (all layers)").bytes == sum(copies)
    assert on.row("recomputed weight copies").bytes == max(copies) == copies[5]  # the global layer is widest
    assert on.row("checkpointed layer inputs").bytes == 6 * 64 * 2 * 512
    assert on.peak_bytes < off.peak_bytes
    rows = sum(r.bytes for r in off.rows)
    overhead = off.row("CUDA context + fragmentation").bytes
    assert off.peak_bytes <= rows  # the two peak moments never hold every buffer at once
    assert off.peak_bytes > rows - overhead - off.row("layer backward buffers").bytes - 1
    assert "component" in off.table() and "fits" in off.table()


def test_gemma4_26b_verdicts_on_80_gib():
    lora = LORA.model_copy(update={"r": 16, "alpha": 32})
    fits = plan.estimate("google/gemma-4-26B-A4B", lora, seq_len=2048, micro_batch_size=1, gradient_checkpointing=True)
    assert fits.fits and fits.trainable_parameters == 494_376_960
    assert fits.row("weights").bytes / GIB == pytest.approx(48.07, abs=0.01)
    plan.check_fits(fits)
    too_big = plan.estimate(
        "google/gemma-4-26B-A4B", lora, seq_len=4096, micro_batch_size=1, gradient_checkpointing=False
    )
    assert not too_big.fits
    with pytest.raises(
        plan.MemoryPlanError, match=r"needs about \d+\.\d GiB .* has 80\.0 GiB .*gradient_checkpointing=true"
    ):
        plan.check_fits(too_big)


def test_one_loss_path_decision_for_stage_plan_and_gpu_check():
    assert fastloss.choose_loss_path("auto", "cpu") == fastloss.choose_loss_path("auto", "cuda") == "supervised"
    assert fastloss.choose_loss_path("trl", "cuda") == "trl"
    with pytest.raises(ValueError, match="device type 'mps'"):
        fastloss.choose_loss_path("auto", "mps")
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        plan.estimate(
            "google/gemma-4-26B-A4B",
            LORA,
            seq_len=64,
            micro_batch_size=1,
            gradient_checkpointing=True,
            loss_path="auto",
        )


def test_gemma4_26b_no_longer_prices_full_logits():
    """At 4096 tokens the full 262k logits with their gradients would be 14 GiB; neither loss path builds them."""
    lora = LORA.model_copy(update={"r": 16, "alpha": 32})
    kwargs = dict(seq_len=4096, micro_batch_size=1, gradient_checkpointing=True)
    ours = plan.estimate("google/gemma-4-26B-A4B", lora, loss_path="supervised", **kwargs)
    trl = plan.estimate("google/gemma-4-26B-A4B", lora, loss_path="trl", **kwargs)
    for p in (ours, trl):
        head = sum(r.bytes for r in p.rows if r.name.startswith("loss head"))
        assert head < 1 * GIB
        assert p.moments["loss head"] < p.moments["backward through a decoder layer"]
        assert p.peak_moment == "backward through a decoder layer"
    assert ours.row("loss head: one chunk of logits").bytes == 256 * 262_144 * 12  # soft-capped
    assert ours.peak_bytes / GIB == pytest.approx(65.35, abs=0.01)
