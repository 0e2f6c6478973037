"""The sample stage against raw ``vllm.LLM.generate``: same engine, prompts and parameters.

    .venv/bin/python bench/sample.py [--model embedded:gemma3-270m] [--prompts 48] [--max-tokens 64]

Both paths get the same per-prompt seeded SamplingParams, so they generate the same tokens
(checked) and the ratio compares equal work. The stage path includes what makes it resumable:
rendering and tokenizing prompts, streaming results, and appending each prompt's rows to disk.
Engine start is excluded from both (one engine serves both, after a warm-up). Prints tokens/s
of each and stage/raw (target >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from pipeline import generation, models, runs
from pipeline.prompts import load_source
from pipeline.recipe import Recipe
from pipeline.stages.sample import sample_into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded:gemma3-270m")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    recipe = Recipe(
        model={"id": args.model},
        prompts={"path": "data/mbpp_train.jsonl", "limit": args.prompts},
        sampling={
            "temperature": 0.8,
            "top_k": 20,
            "top_p": 0.8,
            "max_tokens": args.max_tokens,
            "drop_single_line": False,
        },
        engine={"max_model_len": 1024},
    )
    prompts, _ = load_source(recipe.prompts)
    # the engine the stage uses (prefix caching off), so sample_into reuses it: no second start
    llm = generation.get_engine(models.resolve(recipe.model.id), recipe.engine, prefix_caching=False)
    tokenizer = llm.get_tokenizer()
    cfg = recipe.sampling
    params = [
        generation.sampling_params(
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            seed=generation.derive_seed(cfg.seed, p["id"]),
            include_stop_str_in_output=True,
        )
        for p in prompts
    ]
    llm.generate([p["prompt"] for p in prompts[:4]], params[:4], use_tqdm=False)  # warm-up

    start = time.perf_counter()
    raw_outputs = llm.generate(
        [{"prompt_token_ids": list(tokenizer(p["prompt"]).input_ids)} for p in prompts], params, use_tqdm=False
    )
    raw_s = time.perf_counter() - start
    raw_tokens = sum(len(o.outputs[0].token_ids) for o in raw_outputs)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "samples.raw.jsonl"
        start = time.perf_counter()
        sample_into(recipe, prompts, path)
        stage_s = time.perf_counter() - start
        rows = {r["id"]: r for r in runs.read_log(path)}
    stage_tokens = sum(len(r["completion_token_ids"]) for r in rows.values())
    same = all(
        rows[p["id"]]["completion_token_ids"] == list(o.outputs[0].token_ids)
        for p, o in zip(prompts, raw_outputs, strict=False)
    )
    generation.close_engine()

    result = {
        "model": args.model,
        "prompts": len(prompts),
        "max_tokens": args.max_tokens,
        "raw_generate_tok_s": round(raw_tokens / raw_s, 2),
        "stage_tok_s": round(stage_tokens / stage_s, 2),
        "ratio": round((stage_tokens / stage_s) / (raw_tokens / raw_s), 3),
        "identical_tokens": same,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
