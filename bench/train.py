"""The train stage's TRL path against raw TRL ``SFTTrainer``: same model, data and settings.

    .venv/bin/python bench/train.py [--model embedded:gemma3-270m] [--examples 16] [--steps 3]

Data: MBPP training prompts with completions written from the reference solutions (so both
arms see identical, realistic token counts). Raw TRL gets text ``prompt``/``completion`` pairs
and tokenizes them itself (and appends EOS, as TRL does); the stage gets the same pairs as
token ids with a completion mask (what it trains on in a run). Both use the stage's LoRA
targets, optimizer and batch settings. Each arm runs in its own process, so peak memory (max
RSS) is per arm. Prints tokens/s of each (TRL's own ``num_tokens`` over training time), the
ratio stage/raw (target >= 1.5 on the embedded model on CPU) and peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _data(model_path: str, count: int) -> list[dict]:
    from transformers import AutoTokenizer

    from pipeline.prompts import MBPP_TRAIN_IDS, mbpp_prompts

    tok = AutoTokenizer.from_pretrained(model_path)
    mbpp = ROOT.parent / "shared" / "data" / "mbpp.jsonl"
    tasks = {json.loads(line)["task_id"]: json.loads(line) for line in open(mbpp)}
    rows = []
    for row in mbpp_prompts(mbpp, MBPP_TRAIN_IDS)[:count]:
        code = tasks[int(row["id"].split("/")[1])]["code"].replace("\r\n", "\n")
        body = "\n".join(code.splitlines()[1:]) + "\n"
        rows.append(
            {
                "prompt": row["prompt"],
                "completion": body,
                "prompt_token_ids": tok(row["prompt"]).input_ids,
                "completion_token_ids": tok(body, add_special_tokens=False).input_ids + [tok.eos_token_id],
                "finish_reason": "stop",
            }
        )
    return rows


def _arm(which: str, model_id: str, count: int, steps: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from pipeline import models
    from pipeline.recipe import Recipe
    from pipeline.training.targets import peft_lora_config
    from pipeline.training.trl import build_examples, make_trainer, sft_config

    recipe = Recipe(
        model={"id": model_id},
        training={
            "max_steps": steps,
            "micro_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "max_length": 512,
            "learning_rate": 1e-4,
            "min_learning_rate": 2e-5,
            "save_steps": 0,
            "logging_steps": 1,
        },
    )
    path = models.resolve(model_id)
    rows = _data(path, count)
    if which == "stage":
        examples, _ = build_examples(rows, recipe.training.max_length)
        trainer, _ = make_trainer(recipe, path, examples, out)
    else:
        # A fresh model with the same LoRA targets and the same TRL arguments, through TRL's own
        # text path (it tokenizes prompt and completion and appends EOS).
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        args = sft_config(recipe, out, gpu=False)
        args.train_sampling_strategy = "random"  # TRL's default sampler; the stage groups by length
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]),
            processing_class=AutoTokenizer.from_pretrained(path),
            peft_config=peft_lora_config(model.config, recipe.training.lora),
        )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = max(float(e.get("num_tokens", 0)) for e in trainer.state.log_history)
    return {
        "which": which,
        "trainer": type(trainer).__name__,
        "loss_path": getattr(trainer, "loss_path", "trl"),
        "trainable": trainable,
        "loss": [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e],
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:gemma3-270m")
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--arm", choices=["stage", "raw"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(_arm(args.arm, args.model, args.examples, args.steps, Path(args.out))))
        return
    results = {}
    for arm in ("stage", "raw"):
        out = Path("/tmp") / f"bench-train-{arm}"
        cmd = [
            sys.executable,
            __file__,
            "--arm",
            arm,
            "--model",
            args.model,
            "--examples",
            str(args.examples),
            "--steps",
            str(args.steps),
            "--out",
            str(out),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        results[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        json.dumps(
            {
                "model": args.model,
                "examples": args.examples,
                "steps": args.steps,
                **{f"{arm}_{k}": v for arm, r in results.items() for k, v in r.items() if k != "which"},
                "ratio_stage_over_raw": round(results["stage"]["tokens_per_s"] / results["raw"]["tokens_per_s"], 3),
                "machine": platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
