"""How much of a short LoRA run's effect survives a bf16 merge (issue 14, item 5)?

    .venv/bin/python bench/merge_dtype.py [--steps 8] [--lr 1e-4] [--out /tmp/ssd-bench-adapter]

Trains a real LoRA adapter on the embedded Gemma 3 270M the way the default recipe does (r 16,
alpha 32, all-linear, AdamW 0.9/0.95, wd 0.1, lr 1e-4), on MBPP training prompts with their
reference solutions as completions (loss on the completion), for a few steps in transformers
(no vLLM). Then merges it in float32 and measures, against the float32 merge:

- weights: of the delta the merge adds (merged minus base), the share that a bf16 cast keeps
  (``<d16, d32> / |d32|^2``), the relative error ``|d16 - d32| / |d32|`` and the share of delta
  entries that round to zero;
- log-probs: the adapter's effect on the probes' next-token log-probs (``serving.adapter_effect``)
  for the merged model written in float32, and cast to bf16 and run in bf16 (what vLLM serves
  from a bf16 file) or in float32 (rounding of the weights alone).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _train(model_path: str, out: Path, steps: int, lr: float, batch: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.prompts import MBPP_TRAIN_IDS, mbpp_prompts

    tok = AutoTokenizer.from_pretrained(model_path)
    mbpp = ROOT.parent / "shared" / "data" / "mbpp.jsonl"
    tasks = {json.loads(line)["task_id"]: json.loads(line) for line in open(mbpp)}
    examples = []
    for row in mbpp_prompts(mbpp, MBPP_TRAIN_IDS)[: steps * batch]:
        code = tasks[int(row["id"].split("/")[1])]["code"].replace("\r\n", "\n")
        body = "\n".join(code.splitlines()[1:]) + "\n"
        prompt = tok(row["prompt"]).input_ids
        completion = tok(body, add_special_tokens=False).input_ids[:48] + [tok.eos_token_id]
        examples.append((prompt[-80:], completion))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    opt = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95), weight_decay=0.1
    )
    for step in range(steps):
        clock = time.time()
        opt.zero_grad()
        total = 0.0
        for prompt, completion in examples[step * batch : (step + 1) * batch]:
            ids = torch.tensor([prompt + completion])
            labels = torch.tensor([[-100] * len(prompt) + completion])
            loss = peft_model(input_ids=ids, labels=labels).loss / batch
            loss.backward()
            total += loss.item()
        opt.step()
        print(f"step {step + 1}/{steps}: loss {total:.3f} ({time.time() - clock:.0f} s)", flush=True)
    peft_model.save_pretrained(out)


def main() -> None:
    import torch

    from pipeline import models
    from pipeline.evaluation import serving

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, default=Path("/tmp/ssd-bench-adapter"))
    args = parser.parse_args()
    base = models.resolve(models.EMBEDDED)
    if not (args.out / "adapter_config.json").is_file():
        _train(base, args.out, args.steps, args.lr, args.batch)

    from transformers import AutoModelForCausalLM

    before = {n: p.detach().clone() for n, p in AutoModelForCausalLM.from_pretrained(base).named_parameters()}
    merged, tokenizer, figures = models.merge_verified(base, args.out)
    kept, err, zero, entries, norm = 0.0, 0.0, 0, 0, 0.0
    for name in figures["changed"]:
        w0 = before[name].float()
        d32 = merged.get_parameter(name).detach() - w0
        d16 = merged.get_parameter(name).detach().to(torch.bfloat16).float() - w0
        kept += float((d16 * d32).sum())
        err += float(((d16 - d32) ** 2).sum())
        norm += float((d32**2).sum())
        zero += int(((d16 == 0) & (d32 != 0)).sum())
        entries += int((d32 != 0).sum())
    print(f"float32 merge: {figures['changed_tensors']} tensors, max logit diff {figures['max_logit_diff']:.3g}")
    print(f"weight delta kept by a bf16 cast: {kept / norm:.3f} (projection), relative error {(err / norm) ** 0.5:.3f}")
    print(f"delta entries rounded to zero: {zero / entries:.3f} of {entries}")
    rms = (norm / entries) ** 0.5
    print(f"delta rms {rms:.3g}; weight rms {torch.cat([before[n].flatten() for n in figures['changed']]).std():.3g}")

    peft_base, peft_adapted = serving.peft_logprobs(base, args.out)
    tmp = Path("/tmp/ssd-bench-merged")
    for dtype, run_dtype in (("float32", "float32"), ("bfloat16", "bfloat16"), ("bfloat16", "float32")):
        copy.deepcopy(merged).to(getattr(torch, dtype)).save_pretrained(tmp / dtype)
        tokenizer.save_pretrained(tmp / dtype)
        served = serving.transformers_logprobs(tmp / dtype, run_dtype)
        served_base = serving.transformers_logprobs(base, run_dtype)
        result = serving.adapter_effect(served, peft_base, peft_adapted, served_base=served_base)
        share = result["error"] / result["effect"]
        print(
            f"merged file {dtype}, run in {run_dtype}: effect {result['effect']:.4g}, error {result['error']:.4g} "
            f"({share:.0%} of the effect), tokens {result['tokens']}"
        )


if __name__ == "__main__":
    main()
