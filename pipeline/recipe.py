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
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class RecipeError(ValueError):
    """A recipe that cannot be used: the message names the file and the field or path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Strict):
    """Which model SSD improves.

    ``id`` is ``embedded:gemma3-270m`` (the packaged Gemma 3 270M, CPU friendly),
    ``random:gemma4-tiny`` (a randomly initialised tiny Gemma 4 MoE for tests), a local
    Hugging Face model directory, or a hub id (downloaded by transformers/vLLM as usual).
    """

    id: str = "embedded:gemma3-270m"
    revision: str | None = None  # hub revision; ignored for embedded/random/local models


class PromptsConfig(_Strict):
    """The coding prompts the model answers to produce its own training data.

    ``source`` picks the adapter (see pipeline/prompts.py): ``jsonl`` (``id`` + ``prompt`` or
    ``messages`` per line), ``hf`` (local dataset directory or hub name), ``rstar-coder`` (the
    paper's ``seed_sft`` set), ``livecodebench``, ``mbpp``, ``humaneval``.
    """

    source: Literal["jsonl", "hf", "rstar-coder", "livecodebench", "mbpp", "humaneval"] = "jsonl"
    path: str | None = "data/mbpp_train.jsonl"  # file, dataset directory or hub name (None: the source's hub default)
    subset: str | None = None  # hub config, e.g. seed_sft
    split: str = "train"
    id_field: str = "id"  # for source hf
    prompt_field: str = "prompt"  # for source hf
    limit: int | None = Field(None, ge=1)  # first N prompts only (None: all)
    dedupe: bool = True  # drop prompts whose whitespace-normalised text repeats (the paper)
    chat: bool = False  # render with the tokenizer's chat template (instruction-tuned models)
    system_prompt: str | None = None  # prepended as a system turn when chat is on
    enable_thinking: bool = False  # chat template switch; Gemma 4: False gives the empty thought channel


class SamplingConfig(_Strict):
    """Decoding for the training samples. vLLM applies temperature, then top-k, then top-p.

    Defaults are the paper's Qwen3-30B-A3B-Instruct row: T_train 1.6, top-k 20, top-p 0.8.
    T = 1 with no truncation gives SSD zero expected gradient: keep top-k/top-p or T != 1.
    """

    backend: Literal["vllm"] = "vllm"
    temperature: float = Field(1.6, ge=0.0, le=4.0)
    top_k: int = Field(20, ge=0)  # 0 disables top-k
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=64)  # samples per prompt (the paper: 1)
    max_tokens: int = Field(2048, ge=1)  # vLLM's own default is 16: always set
    stop: list[str] = Field(default_factory=list)
    seed: int = 0  # each prompt's seed is derived from this and the prompt id
    drop_single_line: bool = True  # the paper drops one-line stubs; off for function-body completion
    chunk_size: int = Field(256, ge=1)  # prompts per batch unit: resume and shards work in whole chunks


class LoraConfig(_Strict):
    """LoRA adapter shape and targets.

    ``auto`` picks the architecture's preset (pipeline/training/targets.py): for Gemma 4 MoE the
    language model's attention and dense MLP plus the fused experts through PEFT
    ``target_parameters`` (vision/audio towers excluded); ``all-linear`` for dense models.
    ``ssd train RECIPE --list-targets`` shows what will train without loading weights.
    """

    r: int = Field(16, ge=1, le=1024)  # higher: more capacity and memory
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # must be 0 when experts are targeted
    target_modules: str | list[str] = "auto"  # "auto", "all-linear" (leaves MoE experts frozen), names or a regex
    target_parameters: Literal["auto"] | list[str] = "auto"  # e.g. [experts.gate_up_proj, experts.down_proj]; [] for none

    @model_validator(mode="after")
    def _dropout_with_parameters(self) -> "LoraConfig":
        if isinstance(self.target_parameters, list) and self.target_parameters and self.dropout > 0:
            raise ValueError("dropout must be 0 when target_parameters is set (PEFT expert LoRA)")
        return self


class TrainingConfig(_Strict):
    """Plain SFT on the raw samples, loss on completion tokens only.

    Optimizer defaults are the paper's: AdamW (0.9, 0.95), weight decay 0.1, cosine from
    5e-6 to 1e-6, global batch 32 (micro_batch_size x gradient_accumulation_steps).
    """

    backend: Literal["trl", "axolotl"] = "trl"  # axolotl: a YAML written from this recipe, run in .venv-axolotl
    lora: LoraConfig = Field(default_factory=LoraConfig)
    learning_rate: float = Field(5e-6, gt=0.0, le=1.0)
    min_learning_rate: float = Field(1e-6, ge=0.0)  # end of the cosine schedule
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    adam_beta1: float = Field(0.9, ge=0.0, lt=1.0)
    adam_beta2: float = Field(0.95, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.1, ge=0.0)
    micro_batch_size: int = Field(4, ge=1)  # per step on one device; higher: faster, more memory
    gradient_accumulation_steps: int = Field(8, ge=1)
    epochs: float = Field(1.0, gt=0.0)
    max_steps: int = Field(-1, ge=-1)  # -1: as many as `epochs` needs
    max_length: int = Field(4096, ge=16)  # tokens per example; longer completions are cut
    gradient_checkpointing: bool = False  # True reduces activation memory, costs ~30% time
    loss_path: Literal["supervised", "trl"] = "supervised"  # supervised: LM head only where the loss is taken (faster)
    group_by_length: bool = True  # batches of similar lengths: little padding
    save_steps: int = Field(50, ge=0)  # checkpoint every N optimizer steps: a killed run resumes there (0: never)
    device_gib: float | None = Field(None, gt=0.0)  # memory the plan is checked against (None: the GPU's; CPU: not checked)
    seed: int = 0
    logging_steps: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _lr_order(self) -> "TrainingConfig":
        if self.min_learning_rate > self.learning_rate:
            raise ValueError("min_learning_rate must not exceed learning_rate")
        return self


class LiveCodeBenchConfig(_Strict):
    """Which LiveCodeBench problems: the paper's v6 window is 2025-02-01..2025-05-31."""

    path: str | None = None  # JSONL file or directory of the hub's files; None: the hub (network)
    release: str = "release_v6"
    start_date: str | None = None  # inclusive, YYYY-MM-DD
    end_date: str | None = None
    platforms: list[str] | None = None  # leetcode, codeforces, atcoder
    difficulties: list[str] | None = None  # easy, medium, hard
    timeout_s: float = Field(6.0, gt=0.0)  # per test case, as LiveCodeBench


class EvaluationConfig(_Strict):
    """pass@k of the base model and of the adapter, from real sandboxed executions.

    The first benchmark is the target the gate judges; the others are guards (they must not
    regress). Each model is evaluated at every temperature of the grid and reported at its own
    best: the paper tuned the base model's decoding too. Decoding defaults are the paper's
    T_eval row for Qwen3-30B-A3B-Instruct (0.9, 20, 0.8); the stop strings are HumanEval's.
    """

    benchmarks: list[Literal["humaneval", "mbpp", "livecodebench"]] = Field(default_factory=lambda: ["humaneval"], min_length=1)
    limit: int | None = Field(None, ge=1)  # first N problems of each benchmark (None: all)
    temperatures: list[float] = Field(default_factory=lambda: [0.9], min_length=1)  # the T_eval grid
    top_k: int = Field(20, ge=0)
    top_p: float = Field(0.8, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=200)  # samples per problem
    k: list[int] = Field(default_factory=lambda: [1])  # pass@k reported for each k <= n
    max_tokens: int = Field(512, ge=1)
    stop: list[str] = Field(
        default_factory=lambda: ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
    )
    chat: bool = False  # chat template for prompts, code from the last fenced block (instruction-tuned)
    seed: int = 1234  # per-problem seeds, the same for base and adapter: a paired comparison
    timeout_s: float = Field(10.0, gt=0.0, le=600.0)  # wall clock per program (HumanEval, MBPP)
    workers: int = Field(2, ge=1, le=256)  # programs executed in parallel
    chunk_size: int = Field(64, ge=1)  # problems generated and scored together: the unit of resume
    bootstrap_resamples: int = Field(10000, ge=100)
    bootstrap_seed: int = 0
    adapter_serving: Literal["auto", "lora", "merged"] = "auto"  # auto: merged for MoE models
    record_entropy: bool = False  # per-token entropy (top-20 logprobs) for the report's locks/forks view
    mbpp_path: str = "data/mbpp_test.jsonl"  # MBPP test tasks 11-510
    base_dir: str | None = None  # where the base model's results live (None: the run's eval/); a sweep shares one
    # Guards (every benchmark after the first) can be evaluated more cheaply than the target:
    guard_temperatures: list[float] | None = None  # None: the T_eval grid
    guard_n: int | None = Field(None, ge=1, le=200)  # None: n
    guard_limit: int | None = Field(None, ge=1)  # None: limit
    livecodebench: LiveCodeBenchConfig = Field(default_factory=LiveCodeBenchConfig)

    @model_validator(mode="after")
    def _k_le_n(self) -> "EvaluationConfig":
        if any(k < 1 or k > self.n for k in self.k):
            raise ValueError(f"every k must be between 1 and n={self.n}, got {self.k}")
        return self


class PromotionConfig(_Strict):
    """The gate: the adapter enters the registry only if every rule passes.

    On the target benchmark (``evaluation.benchmarks[0]``): the adapter's pass@1 at its best
    T_eval beats the base's at its best by more than ``min_delta``, the delta's 95% CI lower
    bound is above ``min_ci_lower``, and its finish rate drops by at most
    ``max_finish_rate_drop``; on each guard benchmark, best pass@1 drops by at most
    ``max_regression``.
    """

    enabled: bool = True
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # registry name; default: the recipe's
    min_delta: float = Field(0.0, ge=-1.0, le=1.0)
    min_ci_lower: float = Field(0.0, ge=-1.0, le=1.0)
    max_regression: float = Field(0.02, ge=0.0, le=1.0)
    guards: list[str] | None = None  # None: every evaluated benchmark after the target
    max_finish_rate_drop: float = Field(0.05, ge=0.0, le=1.0)  # an adapter that stops finishing never ships


class EngineConfig(_Strict):
    """vLLM engine options shared by sampling and evaluation."""

    max_model_len: int = Field(4096, ge=64)
    gpu_memory_utilization: float | None = Field(None, gt=0.0, le=1.0)  # None: 0.9 GPU, 0.3 CPU
    enforce_eager: bool = True  # False compiles: slower start, faster decode on GPU
    tensor_parallel_size: int = Field(1, ge=1)
    dtype: str = "auto"
    max_num_seqs: int = Field(256, ge=1)


class TrackingConfig(_Strict):
    """Where metrics go besides ``metrics.jsonl`` in the run directory (always written)."""

    mode: Literal["offline", "online", "disabled"] = "offline"  # wandb; offline needs no account or network
    project: str = "ssd"


class SweepConfig(_Strict):
    """``ssd sweep``: one cycle per grid point, in one sweep directory.

    ``grid`` maps dotted recipe keys to value lists (the cartesian product is swept);
    ``evaluation.temperatures`` is the T_eval axis inside every point, not a grid key.
    ``control`` adds the point with T_train 1.0 and no truncation (top-k off, top-p 1.0), which
    has zero expected gradient in the paper's analysis.
    """

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    control: bool = False

    @model_validator(mode="after")
    def _keys(self) -> "SweepConfig":
        for key, values in self.grid.items():
            if key == "evaluation.temperatures":
                raise ValueError("evaluation.temperatures is the T_eval axis of every point: set it in the evaluation section")
            if not values:
                raise ValueError(f"grid key {key!r} has no values")
        return self


class Recipe(_Strict):
    """A whole SSD cycle. See recipes/*.yaml for commented examples."""

    name: str = Field("ssd", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    run_id: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    runs_dir: str = "checkpoints/runs"
    registry_dir: str = "checkpoints/registry"
    model: ModelConfig = Field(default_factory=ModelConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    def fingerprint(self) -> str:
        """Stable hash of every value that changes results, used for the default run id."""
        text = json.dumps(self.model_dump(mode="json", exclude={"tracking", "run_id", "sweep"}), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def resolved_run_id(self) -> str:
        return self.run_id or f"{self.name}-{self.fingerprint()}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value), the value parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {text!r}: expected KEY.SUB=VALUE, e.g. sampling.temperature=1.2")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return key.split("."), value


def _apply_override(data: dict, path: list[str], value: Any, text: str) -> None:
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


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise RecipeError naming the file, field and line."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    for text_override in overrides or []:
        keys, value = parse_override(text_override)
        _apply_override(data, keys, value, text_override)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            line = _line_of(root, err["loc"])
            where = f"{path}:{line}" if line else str(path)
            lines.append(f"{where}: {field}: {err['msg']} (got {err.get('input')!r})")
        raise RecipeError("invalid recipe\n  " + "\n  ".join(lines)) from None
    cfg = recipe.prompts
    if cfg.source in ("jsonl", "mbpp") and (cfg.path is None or not Path(cfg.path).is_file()):
        line = _line_of(root, ("prompts", "path"))
        where = f"{path}:{line}" if line else str(path)
        raise RecipeError(f"{where}: prompts.path: file not found: {cfg.path} (relative to {Path.cwd()})")
    return recipe
