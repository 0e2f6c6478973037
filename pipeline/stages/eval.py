"""Eval stage: pass@k of the base model and of the adapter, from real sandboxed executions.

For every benchmark (the first is the gate's target, the rest are guards), every temperature
of the T_eval grid, and both models, samples are generated with vLLM and each program runs in
the sandbox. Both models get the same prompts, decoding and per-problem seeds (paired).

Fair comparison: each model at its own T_eval (the paper tuned the base's decoding too), chosen
on a selection part of the problems and judged on the rest, with an exact paired test and its
95% interval (``pipeline/evaluation/compare.py``; README, "Statistics").

Serving the adapter: ``LoRARequest`` on one LoRA-enabled engine, after a check that vLLM's
adapter output differs from its base output wherever PEFT's does in transformers (vLLM has
silently dropped expert LoRA); MoE models, or a failed check, use a verified merged copy.

Files (``eval/``): ``<benchmark>/<base|adapter>-T<t>.jsonl`` (one row per sample with its
verdict; appended per chunk of problems, so a killed evaluation resumes without redoing
finished problems; a file written under other inputs is moved aside, never reused) and
``metrics.json`` (``artifacts.EvalMetrics``). Base results do not depend on the adapter: they
live in ``evaluation.base_dir`` when set and are reused by every run with the same key.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline import artifacts, generation, models, runs
from pipeline.artifacts import EvalMetrics, Label
from pipeline.evaluation import compare
from pipeline.evaluation.benchmarks import Benchmark, load_benchmark
from pipeline.evaluation.sandbox import require_isolation
from pipeline.evaluation.score import score_samples
from pipeline.recipe import EngineConfig, Recipe

log = logging.getLogger(__name__)

STAGE = "eval"
ADAPTER = "adapter"
LABELS: tuple[Label, Label] = ("base", "adapter")
Cell = tuple[str, float, Label]  # (benchmark, temperature, model): one results file
PROBES = [
    "def fibonacci(n):\n",
    "def is_palindrome(s: str) -> bool:\n",
    "Write a function that returns the sum of a list.",
]
# A base result depends on the model and decoding, not on the T_eval grid it is part of, on where
# it is stored or on the statistics drawn from it: these settings are left out of its key.
NOT_IN_BASE_KEY = {
    "temperatures",
    "base_dir",
    "adapter_serving",
    "bootstrap_resamples",
    "bootstrap_seed",
    "permutation_resamples",
    "selection_fraction",
    "split_seed",
    "t_eval",
    "always_split",
    "k",
    "n",
    "limit",
    "guard_temperatures",
    "guard_n",
    "guard_limit",
    "benchmarks",
}


@dataclass(frozen=True)
class Served:
    """A model as vLLM serves it: what the engine loads and the LoRA request on top, if any."""

    label: Label
    serving: str  # base, lora or merged
    path: str
    revision: str | None = None
    lora_rank: int = 0  # LoRA slots in the engine (0: LoRA off)
    lora_request: Any = None
    merge_check: dict | None = None

    def engine(self, cfg: EngineConfig):
        """The vLLM engine (``generation.get_engine`` keeps one: asking again is free)."""
        return generation.get_engine(self.path, cfg, revision=self.revision, max_lora_rank=self.lora_rank)


def run(recipe: Recipe, run_dir: Path) -> artifacts.Manifest:
    started = time.time()
    cfg = recipe.evaluation
    eval_dir = run_dir / "eval"
    params = stage_params(recipe)
    key, inputs = runs.stage_key(params, {"adapter": run_dir / ADAPTER})
    if manifest := artifacts.reusable(run_dir, STAGE, key):
        log.info("eval: reusing %s (inputs unchanged)", eval_dir / "metrics.json")
        return manifest

    if cfg.require_isolation:
        require_isolation()
    benches = [load_benchmark(recipe, name) for name in cfg.benchmarks]
    model_path = models.resolve(recipe.model.id)
    mode = serving_mode(recipe, model_path)
    base = Served("base", "base", model_path, recipe.model.revision, recipe.training.lora.r if mode == "lora" else 0)
    base_dir = Path(cfg.base_dir) if cfg.base_dir else eval_dir
    counts: dict[str, Any] = {"problems": {b.name: len(b.problems) for b in benches}, "base_dir": str(base_dir)}
    rows: dict[Cell, list[dict]] = {}  # verdict rows
    adapter = None
    for label in LABELS:  # the base first: the adapter's serving check and merge come after
        clock, generated = time.time(), 0
        if label == "adapter":
            adapter = serve_adapter(recipe, mode, base, run_dir)
        model = base if label == "base" else adapter
        for bench in benches:
            for temperature in bench.temperatures:
                name = f"{label}-T{temperature:g}"
                where = (base_dir if label == "base" else eval_dir) / bench.name / f"{name}.jsonl"
                path = runs.keyed_log(where, results_key(recipe, label, bench, inputs["adapter"]))
                done = runs.complete_ids(runs.read_log(path), bench.n, "task_id")  # a cut-short problem is redone
                for chunk in runs.chunks(bench.problems, cfg.chunk_size):
                    pending = [p for p in chunk if p["task_id"] not in done]
                    if not pending:
                        continue
                    samples = generate(recipe, model, bench, temperature, chunk, pending)
                    scored = execute(recipe, pending, samples, desc=f"executing {bench.name}/{name}")
                    with open(path, "a") as out:
                        runs.append_rows(out, scored)
                    generated += len(pending)
                ids = [p["task_id"] for p in bench.problems]
                rows[bench.name, temperature, label] = runs.last_copies(runs.read_log(path), ids, "task_id")
        counts[f"{label}_s"] = round(time.time() - clock, 2)
        counts[f"{label}_problems_generated"] = generated

    per_bench = {
        b.name: {(t, label): rows[b.name, t, label] for t in b.temperatures for label in LABELS} for b in benches
    }
    metrics = EvalMetrics(
        target=cfg.benchmarks[0],
        adapter_serving=adapter.serving,
        merge_check=adapter.merge_check,
        benchmarks={bench.name: compare.benchmark_metrics(recipe, bench, per_bench[bench.name]) for bench in benches},
    )
    metrics.save(eval_dir / "metrics.json")
    return artifacts.write_manifest(
        run_dir,
        STAGE,
        key=key,
        params=params,
        inputs=inputs,
        outputs={"metrics.json": runs.hash_file(eval_dir / "metrics.json")},
        counts=counts,
        started=started,
        metrics=metrics,
    )


def stage_params(recipe: Recipe) -> dict:
    return {
        "model": recipe.model.model_dump(),
        "evaluation": recipe.evaluation.model_dump(),
        "max_model_len": recipe.engine.max_model_len,
    }


def results_key(recipe: Recipe, label: Label, bench: Benchmark, adapter_hash: str) -> str:
    """The key a results file is written under: the adapter's depends on everything the stage
    does; the base's on the model, decoding and the benchmark's own settings, so one base file
    per temperature serves every run that points at it (``evaluation.base_dir``)."""
    params = stage_params(recipe)
    if label == "adapter":
        return runs.hash_obj({**params, "adapter": adapter_hash})
    shared = recipe.evaluation.model_dump(exclude=NOT_IN_BASE_KEY)
    return runs.hash_obj({**params, "evaluation": shared, "benchmark": bench.name, "n": bench.n, "limit": bench.limit})


def serving_mode(recipe: Recipe, model_path: str) -> str:
    mode = recipe.evaluation.adapter_serving
    if mode == "auto":
        mode = "merged" if models.is_moe(model_path) else "lora"
        log.info("eval: adapter served as %s (%s model)", mode, "MoE" if mode == "merged" else "dense")
    return mode


def serve_adapter(recipe: Recipe, mode: str, base: Served, run_dir: Path) -> Served:
    """The adapter as it will be evaluated: a ``LoRARequest`` on the base engine when vLLM applies
    all of it, otherwise a merged copy whose logits were checked against PEFT's."""
    adapter = run_dir / ADAPTER
    if mode == "lora":
        from vllm.lora.request import LoRARequest

        request = LoRARequest("adapter", 1, str(adapter))
        if lora_is_served(base.engine(recipe.engine), request, base.path, adapter):
            return Served("adapter", "lora", base.path, base.revision, base.lora_rank, lora_request=request)
        log.warning(
            "eval: vLLM ignores this adapter (its output does not change where PEFT's does): evaluating a merged copy"
        )
    merged = run_dir / "eval" / "merged-model"
    check = models.merge_adapter(base.path, adapter, merged)
    check = {k: v for k, v in check.items() if k != "changed"} | {"changed_sample": check["changed"][:8]}
    return Served("adapter", "merged", str(merged), merge_check=check)


def generate(
    recipe: Recipe, model: Served, bench: Benchmark, temperature: float, chunk: list[dict], pending: list[dict]
) -> list[dict]:
    """Sample rows (``task_id``, ``sample_index``, completion, ...) of the chunk's ``pending``
    problems. The whole chunk is generated, so a resumed chunk is batched as on the first try."""
    cfg = recipe.evaluation
    llm = model.engine(recipe.engine)
    tokenizer = llm.get_tokenizer()
    requests, params = [], []
    for p in chunk:
        row = {"id": p["task_id"], "prompt": p["prompt"]}
        _, ids = generation.render(tokenizer, row, chat=cfg.chat, system_prompt=None, enable_thinking=False)
        requests.append({"prompt_token_ids": ids})
        params.append(
            generation.sampling_params(
                temperature=temperature,
                top_k=cfg.top_k,
                top_p=cfg.top_p,
                n=bench.n,
                max_tokens=min(cfg.max_tokens, recipe.engine.max_model_len - len(ids)),
                stop=[] if cfg.chat else cfg.stop,
                seed=generation.derive_seed(cfg.seed, p["task_id"]),
                logprobs=20 if cfg.record_entropy else None,
                stop_token_ids=generation.end_of_turn_ids(tokenizer) if cfg.chat else None,
            )
        )
    results = {}
    desc = f"generating {bench.name}/{model.label}-T{temperature:g} from {chunk[0]['task_id']}"
    with tqdm(total=len(chunk), unit="problem", desc=desc) as bar:
        for i, result in generation.stream(llm, requests, params, lora_request=model.lora_request):
            results[chunk[i]["task_id"]] = result
            bar.update(1)
    rows = []
    for p in pending:
        outputs = results[p["task_id"]].outputs
        if len(outputs) != bench.n:  # every sample or a loud failure, never a silent subset
            raise RuntimeError(f"{p['task_id']}: vLLM returned {len(outputs)} of {bench.n} samples")
        for c in sorted(outputs, key=lambda c: c.index):
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
    return rows


def execute(recipe: Recipe, problems: list[dict], samples: list[dict], desc: str) -> list[dict]:
    """The samples with their verdicts, each program run in the sandbox."""
    cfg = recipe.evaluation
    per_case = problems[0]["benchmark"] == "livecodebench"  # LiveCodeBench times each test case
    scored, _ = score_samples(
        problems,
        samples,
        style="chat" if cfg.chat else "base",
        ks=[1],
        workers=cfg.workers,
        timeout_s=cfg.livecodebench.timeout_s if per_case else cfg.timeout_s,
        desc=desc,
    )
    return scored


def entropy(top_logprobs: dict) -> float:
    """Entropy (nats) of the renormalised top-k next-token distribution: a lower bound that is
    tight when the distribution is peaked, which is what the locks-and-forks view reads."""
    logps = [lp.logprob for lp in top_logprobs.values()]
    m = max(logps)
    weights = [math.exp(lp - m) for lp in logps]
    total = sum(weights)
    return -sum(w / total * (lp - m - math.log(total)) for w, lp in zip(weights, logps, strict=True))


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
        for probe, vb, vl in zip(PROBES, vllm_base, vllm_lora, strict=True):
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


def lora_is_served(llm, lora_request, model_path: str, adapter: Path, tolerance: float = 0.5) -> bool:
    """Does vLLM apply the whole adapter? Its effect on log-probs must match PEFT's."""
    figures = lora_effect(llm, lora_request, model_path, adapter)
    log.info(
        "eval: adapter effect on next-token log-probs: PEFT %.4f, vLLM-vs-PEFT difference %.4f (%d tokens)",
        figures["effect"],
        figures["error"],
        figures["tokens"],
    )
    if figures["effect"] < 1e-3:
        return True  # the adapter barely moves PEFT's output either: nothing vLLM could drop
    return figures["error"] <= tolerance * figures["effect"]
