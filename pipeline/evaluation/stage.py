"""Eval stage: pass@k of the base model and of the adapter, from real sandboxed executions.

For every benchmark (the first is the gate's target, the rest are guards), every temperature
of the T_eval grid, and both models, samples are generated with vLLM and each program runs in
the sandbox. Both models get the same prompts, decoding and per-problem seeds (paired).

Fair comparison: each model is reported at its own best T_eval (the paper tuned the base's
decoding too), and the delta between the two bests comes with a paired bootstrap 95% CI over
problems.

Serving the adapter: ``LoRARequest`` on one LoRA-enabled engine, after a check that vLLM's
adapter output differs from its base output wherever PEFT's does in transformers (vLLM has
silently dropped expert LoRA); MoE models, or a failed check, use a verified merged copy.

Files (``eval/``): ``<benchmark>/<base|adapter>-T<t>.jsonl`` (one row per sample with its
verdict; appended per chunk of problems, so a killed evaluation resumes without redoing
finished problems) and ``metrics.json``. Base results do not depend on the adapter and are
reused when only the adapter changed.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from tqdm import tqdm

from pipeline import generation, models, runs
from pipeline.evaluation import benchmarks, stats
from pipeline.evaluation.metrics import pass_at_k
from pipeline.evaluation.score import score_samples
from pipeline.recipe import Recipe
from pipeline.sampling.stage import read_raw

log = logging.getLogger(__name__)

STAGE = "eval"
ADAPTER = "adapter"
PROBES = ["def fibonacci(n):\n", "def is_palindrome(s: str) -> bool:\n", "Write a function that returns the sum of a list."]


def serving_mode(recipe: Recipe, model_path: str) -> str:
    mode = recipe.evaluation.adapter_serving
    if mode == "auto":
        mode = "merged" if models.is_moe(model_path) else "lora"
        log.info("eval: adapter served as %s (%s model)", mode, "MoE" if mode == "merged" else "dense")
    return mode


def bench_settings(recipe: Recipe, name: str) -> tuple[list[float], int, int | None]:
    """(temperatures, n, limit) for a benchmark: the target uses the grid, guards may use less."""
    cfg = recipe.evaluation
    if name == cfg.benchmarks[0]:
        return cfg.temperatures, cfg.n, cfg.limit
    return cfg.guard_temperatures or cfg.temperatures, cfg.guard_n or cfg.n, cfg.guard_limit or cfg.limit


def load_problems(recipe: Recipe, name: str) -> list[dict]:
    cfg = recipe.evaluation
    options: dict = {}
    if name == "mbpp":
        options["path"] = cfg.mbpp_path
    elif name == "livecodebench":
        lcb = cfg.livecodebench
        options = {
            "source": lcb.path,
            "release": lcb.release,
            "start_date": lcb.start_date,
            "end_date": lcb.end_date,
            "platforms": lcb.platforms,
            "difficulties": lcb.difficulties,
        }
    return benchmarks.load(name, limit=bench_settings(recipe, name)[2], **options)


def _timeout(recipe: Recipe, problem: dict) -> float:
    cfg = recipe.evaluation
    per_case = cfg.livecodebench.timeout_s if problem["benchmark"] == "livecodebench" else cfg.timeout_s
    return per_case


def entropy(top_logprobs: dict) -> float:
    """Entropy (nats) of the renormalised top-k next-token distribution: a lower bound that is
    tight when the distribution is peaked, which is what the locks-and-forks view reads."""
    logps = [lp.logprob for lp in top_logprobs.values()]
    m = max(logps)
    weights = [math.exp(lp - m) for lp in logps]
    total = sum(weights)
    return -sum(w / total * (lp - m - math.log(total)) for w, lp in zip(weights, logps))


def _evaluate(
    engine, recipe: Recipe, problems: list[dict], path: Path, temperature: float, key: str, lora_request=None,
    generated: dict | None = None, n: int | None = None,
) -> list[dict]:
    """Rows of ``path`` for every problem: finished chunks are read back, the rest generated,
    executed and appended (a chunk at a time, regenerated whole for the same batches).

    ``engine`` is called for the vLLM engine only when something is left to generate; the
    number of problems generated is added to ``generated[str(path)]``.
    """
    cfg = recipe.evaluation
    n = n or cfg.n
    key_file = path.with_name(path.name + ".key")
    if path.exists() and (not key_file.exists() or key_file.read_text() != key):
        aside = path.with_name(f"{path.stem}.stale{path.suffix}")
        log.warning("%s was computed with other inputs: moved to %s", path, aside)
        path.replace(aside)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs.atomic_write_text(key_file, key)
    counted: dict[str, set] = {}
    for row in read_raw(path):
        counted.setdefault(row["task_id"], set()).add(row["sample_index"])
    done = {task for task, indices in counted.items() if len(indices) >= n}  # a cut-short problem is redone
    if generated is not None:
        generated.setdefault(str(path), 0)
    llm = tokenizer = None
    for start in range(0, len(problems), cfg.chunk_size):
        chunk = problems[start : start + cfg.chunk_size]
        if all(p["task_id"] in done for p in chunk):
            continue
        if llm is None:
            llm = engine()
            tokenizer = llm.get_tokenizer()
        requests, params = [], []
        for p in chunk:
            _, ids = generation.render(tokenizer, {"id": p["task_id"], "prompt": p["prompt"]}, chat=cfg.chat, system_prompt=None, enable_thinking=False)
            requests.append({"prompt_token_ids": ids})
            params.append(
                generation.sampling_params(
                    temperature=temperature,
                    top_k=cfg.top_k,
                    top_p=cfg.top_p,
                    n=n,
                    max_tokens=min(cfg.max_tokens, recipe.engine.max_model_len - len(ids)),
                    stop=[] if cfg.chat else cfg.stop,
                    seed=generation.derive_seed(cfg.seed, p["task_id"]),
                    logprobs=20 if cfg.record_entropy else None,
                    stop_token_ids=generation.end_of_turn_ids(tokenizer) if cfg.chat else None,
                )
            )
        results = {}
        bar = tqdm(total=len(chunk), unit="problem", desc=f"generating {path.parent.name}/{path.stem} {start}+")
        for i, result in generation.stream(llm, requests, params, lora_request=lora_request):
            results[i] = result
            bar.update(1)
        bar.close()
        rows = []
        for i, p in enumerate(chunk):
            if p["task_id"] in done:
                continue
            if len(results[i].outputs) != n:  # every sample or a loud failure, never a silent subset
                raise RuntimeError(f"{p['task_id']}: vLLM returned {len(results[i].outputs)} of {n} samples")
            for c in sorted(results[i].outputs, key=lambda c: c.index):
                row = {
                    "task_id": p["task_id"],
                    "sample_index": c.index,
                    "completion": c.text,
                    "completion_tokens": len(c.token_ids),
                    "finish_reason": c.finish_reason,
                }
                if cfg.record_entropy and c.logprobs:
                    row["entropies"] = [round(entropy(step), 4) for step in c.logprobs]
                rows.append(row)
        pending = [p for p in chunk if p["task_id"] not in done]
        scored, _ = score_samples(
            pending,
            rows,
            style="chat" if cfg.chat else "base",
            ks=[1],
            workers=cfg.workers,
            timeout_s=_timeout(recipe, pending[0]),
            desc=f"executing {path.parent.name}/{path.stem}",
        )
        with open(path, "a") as out:
            out.write("".join(json.dumps(row) + "\n" for row in scored))
            out.flush()
        done.update(p["task_id"] for p in pending)
        if generated is not None:
            generated[str(path)] += len(pending)
    order = {p["task_id"]: i for i, p in enumerate(problems)}
    latest = {(r["task_id"], r["sample_index"]): r for r in read_raw(path) if r["task_id"] in order}
    return sorted(latest.values(), key=lambda r: (order[r["task_id"]], r["sample_index"]))


def per_problem(rows: list[dict]) -> dict[str, float]:
    """Each problem's pass@1 (the share of its samples that passed)."""
    by_task: dict[str, list[bool]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row["passed"])
    return {task: sum(v) / len(v) for task, v in by_task.items()}


def summarize(rows: list[dict], ks: list[int] = (1,), problems: list[dict] | None = None) -> dict:
    """pass@k (mean over problems of the unbiased estimator), finish rate, mean length, and
    pass@1 per difficulty when the problems have one."""
    by_task: dict[str, list[bool]] = {}
    for row in rows:
        by_task.setdefault(row["task_id"], []).append(row["passed"])
    summary: dict = {}
    for k in sorted(set(ks) | {1}):
        if all(len(v) >= k for v in by_task.values()):
            scores = [pass_at_k(len(v), sum(v), k) for v in by_task.values()]
            summary[f"pass@{k}"] = sum(scores) / len(scores)
    summary.update(
        problems=len(by_task),
        samples=len(rows),
        passed_samples=sum(r["passed"] for r in rows),
        finish_rate=sum(r["finish_reason"] == "stop" for r in rows) / len(rows),
        mean_completion_tokens=sum(r["completion_tokens"] for r in rows) / len(rows),
    )
    difficulty = {p["task_id"]: p.get("difficulty") for p in problems or []}
    if any(difficulty.values()):
        scores = per_problem(rows)
        groups: dict[str, list[float]] = {}
        for task, score in scores.items():
            groups.setdefault(difficulty.get(task) or "unknown", []).append(score)
        summary["per_difficulty"] = {d: {"pass@1": sum(v) / len(v), "problems": len(v)} for d, v in sorted(groups.items())}
    return summary


def lora_effect(llm, lora_request, model_path: str, adapter: Path) -> dict:
    """How the adapter moves next-token log-probs after a few probes, in vLLM and in PEFT.

    For each probe, over the tokens in vLLM's top-20 with and without the adapter: the change
    in log-probability the adapter causes in vLLM, and in transformers with PEFT. ``effect`` is
    the mean size of PEFT's change, ``error`` the mean difference between the two changes.
    A dropped adapter (vLLM silently ignoring expert LoRA) gives error ~ effect; a served one
    leaves only numeric noise (bf16 vs fp32).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    params = generation.sampling_params(temperature=0.0, top_k=0, top_p=1.0, max_tokens=1, seed=0, logprobs=20)
    vllm_base = [o.outputs[0].logprobs[0] for o in llm.generate(PROBES, [params] * len(PROBES), use_tqdm=False)]
    vllm_lora = [
        o.outputs[0].logprobs[0]
        for o in llm.generate(PROBES, [params] * len(PROBES), lora_request=lora_request, use_tqdm=False)
    ]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    effect, error, count = 0.0, 0.0, 0
    with torch.no_grad():
        for probe, vb, vl in zip(PROBES, vllm_base, vllm_lora):
            ids = tokenizer(probe, return_tensors="pt").input_ids
            with peft_model.disable_adapter():
                hf_base = torch.log_softmax(peft_model(ids).logits[0, -1].float(), -1)
            hf_lora = torch.log_softmax(peft_model(ids).logits[0, -1].float(), -1)
            for token in set(vb) & set(vl):
                d_vllm = vl[token].logprob - vb[token].logprob
                d_hf = float(hf_lora[token] - hf_base[token])
                effect += abs(d_hf)
                error += abs(d_vllm - d_hf)
                count += 1
    return {"effect": effect / max(count, 1), "error": error / max(count, 1), "tokens": count}


def _lora_is_served(llm, lora_request, model_path: str, adapter: Path, tolerance: float = 0.5) -> bool:
    """Does vLLM apply the whole adapter? Its effect on log-probs must match PEFT's."""
    figures = lora_effect(llm, lora_request, model_path, adapter)
    log.info("eval: adapter effect on next-token log-probs: PEFT %.4f, vLLM-vs-PEFT difference %.4f (%d tokens)",
             figures["effect"], figures["error"], figures["tokens"])
    if figures["effect"] < 1e-3:
        return True  # the adapter barely moves PEFT's output either: nothing vLLM could drop
    return figures["error"] <= tolerance * figures["effect"]


def run(recipe: Recipe, run_dir: Path) -> dict:
    started = time.time()
    cfg = recipe.evaluation
    eval_dir = run_dir / "eval"
    params = {"model": recipe.model.model_dump(), "evaluation": cfg.model_dump(), "max_model_len": recipe.engine.max_model_len}
    key, inputs = runs.stage_key(params, {"adapter": run_dir / ADAPTER})
    if manifest := runs.reusable(run_dir, STAGE, key):
        log.info("eval: reusing %s (inputs unchanged)", eval_dir / "metrics.json")
        return manifest

    problems = {name: load_problems(recipe, name) for name in cfg.benchmarks}
    model_path = models.resolve(recipe.model.id)
    mode = serving_mode(recipe, model_path)
    rank = recipe.training.lora.r if mode == "lora" else 0
    # A base result depends on the model and decoding, not on the T_eval grid it is part of or on
    # where it is stored: one key per temperature file, shared by every run that points there.
    shared = cfg.model_dump(exclude={"temperatures", "base_dir", "adapter_serving", "bootstrap_resamples", "bootstrap_seed", "k",
                                     "n", "limit", "guard_temperatures", "guard_n", "guard_limit", "benchmarks"})
    settings = {name: bench_settings(recipe, name) for name in problems}

    def base_key(name: str) -> str:
        return runs.hash_obj({**params, "evaluation": shared, "benchmark": name, "n": settings[name][1], "limit": settings[name][2]})

    adapter_key = runs.hash_obj({**params, "adapter": inputs["adapter"]})
    base_dir = Path(cfg.base_dir) if cfg.base_dir else eval_dir
    results: dict[str, dict[float, dict[str, list[dict]]]] = {name: {t: {} for t in settings[name][0]} for name in problems}
    timings: dict[str, float] = {}
    generated: dict[str, dict[str, int]] = {"base": {}, "adapter": {}}

    def base_engine():
        return generation.get_engine(model_path, recipe.engine, revision=recipe.model.revision, max_lora_rank=rank)

    t = time.time()
    for name, probs in problems.items():
        for temp in results[name]:
            results[name][temp]["base"] = _evaluate(
                base_engine, recipe, probs, base_dir / name / f"base-T{temp:g}.jsonl", temp, base_key(name),
                generated=generated["base"], n=settings[name][1],
            )
    timings["base_s"] = round(time.time() - t, 2)

    t = time.time()
    merge_check, lora_request = None, None
    if mode == "lora":
        from vllm.lora.request import LoRARequest

        lora_request = LoRARequest("adapter", 1, str(run_dir / ADAPTER))
        llm = base_engine()
        if not _lora_is_served(llm, lora_request, model_path, run_dir / ADAPTER):
            log.warning("eval: vLLM ignores this adapter (its output does not change where PEFT's does): evaluating a merged copy")
            mode, lora_request = "merged", None
    if mode == "merged":
        merged = eval_dir / "merged-model"
        merge_check = models.merge_adapter(model_path, run_dir / ADAPTER, merged)
        merge_check = {k: v for k, v in merge_check.items() if k != "changed"} | {"changed_sample": merge_check["changed"][:8]}
    adapter_engine = (lambda: generation.get_engine(str(merged), recipe.engine)) if mode == "merged" else base_engine
    for name, probs in problems.items():
        for temp in results[name]:
            results[name][temp]["adapter"] = _evaluate(
                adapter_engine, recipe, probs, eval_dir / name / f"adapter-T{temp:g}.jsonl", temp, adapter_key, lora_request,
                generated=generated["adapter"], n=settings[name][1],
            )
    timings["adapter_s"] = round(time.time() - t, 2)

    metrics = {"target": cfg.benchmarks[0], "adapter_serving": mode, "merge_check": merge_check, "benchmarks": {}}
    for name, probs in problems.items():
        grid = []
        for temp, r in results[name].items():
            at_t = stats.paired_bootstrap(
                per_problem(r["base"]), per_problem(r["adapter"]), resamples=cfg.bootstrap_resamples, seed=cfg.bootstrap_seed
            )
            grid.append({
                "temperature": temp,
                "base": summarize(r["base"], cfg.k, probs),
                "adapter": summarize(r["adapter"], cfg.k, probs),
                "delta": {"value": at_t.mean_delta, "ci_low": at_t.low, "ci_high": at_t.high},
            })
        best = {
            label: stats.best_temperature({temp: per_problem(r[label]) for temp, r in results[name].items()})
            for label in ("base", "adapter")
        }
        ci = stats.paired_bootstrap(
            per_problem(results[name][best["base"].temperature]["base"]),
            per_problem(results[name][best["adapter"].temperature]["adapter"]),
            resamples=cfg.bootstrap_resamples,
            seed=cfg.bootstrap_seed,
        )
        same_t = results[name][settings[name][0][0]]
        metrics["benchmarks"][name] = {
            "grid": grid,
            "base_best": {"temperature": best["base"].temperature, "pass@1": best["base"].mean},
            "adapter_best": {"temperature": best["adapter"].temperature, "pass@1": best["adapter"].mean},
            "delta": {"value": ci.mean_delta, "ci_low": ci.low, "ci_high": ci.high, "resamples": ci.resamples, "seed": ci.seed},
            "identical_completions": sum(a["completion"] == b["completion"] for a, b in zip(same_t["base"], same_t["adapter"])),
        }
        log.info(
            "eval %s: pass@1 base %.4f (T=%g) adapter %.4f (T=%g) delta %+.4f [%+.4f, %+.4f]",
            name, best["base"].mean, best["base"].temperature, best["adapter"].mean, best["adapter"].temperature,
            ci.mean_delta, ci.low, ci.high,
        )
    runs.atomic_write_json(eval_dir / "metrics.json", metrics)
    return runs.write_manifest(
        run_dir,
        STAGE,
        key=key,
        params=params,
        inputs=inputs,
        outputs={"metrics.json": runs.hash_file(eval_dir / "metrics.json")},
        counts={
            "problems": {name: len(p) for name, p in problems.items()},
            **timings,
            "base_problems_generated": sum(generated["base"].values()),
            "adapter_problems_generated": sum(generated["adapter"].values()),
            "base_dir": str(base_dir),
        },
        started=started,
        extra={"metrics": metrics},
    )
