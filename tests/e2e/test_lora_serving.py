"""vLLM serves a PEFT adapter through LoRARequest on the embedded dense model, and the eval
stage's check tells a served adapter from one vLLM ignores (the expert-LoRA trap of docs/facts.md)."""

import pytest

from pipeline import generation, models
from pipeline.evaluation import serving
from pipeline.evaluation.serving import PROBES
from pipeline.recipe import EngineConfig
from pipeline.stages.eval import served_logprobs

pytestmark = pytest.mark.slow


def _adapter(path, scale: float):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models.resolve(models.EMBEDDED), dtype=torch.float32)
    torch.manual_seed(0)  # LoRA A is drawn at random by PEFT: seeded, the adapter is the same every run
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=scale) if scale else p.zero_()
    peft_model.save_pretrained(path)
    return path


def test_lora_request_changes_vllm_output_like_peft(tmp_path):
    from vllm.lora.request import LoRARequest

    base = models.resolve(models.EMBEDDED)
    trained = _adapter(tmp_path / "trained", 0.05)  # large enough to move greedy tokens on the probes
    inert = _adapter(tmp_path / "inert", 0.0)
    llm = generation.get_engine(base, EngineConfig(max_model_len=512), max_lora_rank=8)
    try:
        greedy = generation.sampling_params(temperature=0.0, top_k=0, top_p=1.0, max_tokens=8, seed=0)
        lora = LoRARequest("trained", 1, str(trained))
        plain = [o.outputs[0].token_ids for o in llm.generate(PROBES, [greedy] * 3, use_tqdm=False)]
        adapted = [
            o.outputs[0].token_ids for o in llm.generate(PROBES, [greedy] * 3, lora_request=lora, use_tqdm=False)
        ]
        assert plain != adapted  # the adapter reaches vLLM's forward pass
        peft_base, peft_adapted = serving.peft_logprobs(base, trained)
        served_base = served_logprobs(llm)
        figures = serving.adapter_effect(served_logprobs(llm, lora), peft_base, peft_adapted, served_base=served_base)
        serving.check(figures, "vLLM LoRA")
        # vLLM given an adapter with no effect while PEFT's changes the output: what a dropped
        # adapter looks like. The check must refuse it (the stage then evaluates a merged copy).
        inert_request = LoRARequest("inert", 2, str(inert))
        dropped = serving.adapter_effect(
            served_logprobs(llm, inert_request), peft_base, peft_adapted, served_base=served_base
        )
        with pytest.raises(serving.ServingError):
            serving.check(dropped, "vLLM LoRA")
    finally:
        generation.close_engine()
