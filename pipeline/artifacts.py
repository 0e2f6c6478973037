"""What stages write and other code reads: one pydantic model per file, and nothing else.

Stages talk through files. Each file that more than one module reads has its schema here:
writers build the model and ``save`` it (atomically), readers ``load`` it and get attributes,
so no module reads ``metrics.json``'s or a manifest's keys by string. A file that does not
match its schema is a ``ArtifactError`` naming the file and the field, with what to do next.

- ``EvalMetrics`` (``eval/metrics.json``): per benchmark, the T_eval grid over all problems (both
  models' summaries and the paired delta at each temperature), the protocol (selection and
  confirmation parts, which decided), each model's T_eval, and on the confirmation part the delta
  with its interval and exact test, the finish-rate difference at the adapter's T_eval, and the
  comparison's sizing.
  When the registry already serves a version under the name, ``champion`` holds the same
  comparisons with that version in the base's place.
- ``Decision`` (``promotion.json``): the gate's verdict, one reason line per rule.
- ``Manifest`` (``manifests/<stage>.json``): a finished stage's key, parameters, input hashes,
  outputs, counts, timings and versions.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from pipeline import runs

log = logging.getLogger(__name__)

Label = Literal["base", "adapter"]


class ArtifactError(ValueError):
    """A run file that is missing or does not match its schema; the message names it."""


class _Artifact(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @classmethod
    def load(cls, path: Path | str):
        """The file at ``path``, validated; an ``ArtifactError`` naming the file and field otherwise."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ArtifactError(f"{path}: missing; rerun the stage that writes it") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path}: cannot be read ({exc}); rerun the stage that writes it") from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "(top level)"
            raise ArtifactError(
                f"{path}: field {field}: {first['msg']} ({exc.error_count()} problem(s)); "
                "rerun the stage that writes it"
            ) from None

    def save(self, path: Path | str) -> None:
        runs.atomic_write_text(Path(path), self.model_dump_json(indent=2, by_alias=True) + "\n")


# --- eval/metrics.json -----------------------------------------------------------------------


class DifficultyScore(_Artifact):
    pass_at_1: float = Field(alias="pass@1")
    problems: int


class ModelSummary(_Artifact):
    """One model at one temperature on one benchmark. ``pass_at[k]`` is stored as ``pass@k``."""

    pass_at: dict[int, float]
    problems: int
    samples: int
    passed_samples: int
    finish_rate: float = Field(description="share of samples that ended on a stop (not cut at max_tokens)")
    cut_share: float | None = Field(
        None,
        description="share of samples cut at max_tokens (vLLM finish_reason `length`): their verdict is about "
        "stopping as much as about code; null in files written before it was recorded",
    )
    mean_completion_tokens: float
    per_difficulty: dict[str, DifficultyScore] | None = None

    @model_validator(mode="before")
    @classmethod
    def _collect_pass_at(cls, data: Any) -> Any:
        if isinstance(data, dict) and "pass_at" not in data:
            data = dict(data)
            data["pass_at"] = {int(key[len("pass@") :]): data.pop(key) for key in list(data) if key.startswith("pass@")}
        return data

    @model_serializer(mode="wrap")
    def _flatten_pass_at(self, handler) -> dict[str, Any]:
        out = handler(self)
        pass_at = out.pop("pass_at")
        for optional in ("per_difficulty", "cut_share"):  # absent, not null, where not recorded
            if out.get(optional) is None:
                out.pop(optional, None)
        return {**{f"pass@{k}": v for k, v in sorted(pass_at.items())}, **out}

    @property
    def pass1(self) -> float:
        return self.pass_at[1]


class Delta(_Artifact):
    """Mean paired difference adapter - base over problems, with its 95% interval.

    The interval inverts the exact sign-flip test (``stats.sign_flip_interval``); the decided
    comparison also records the test's one-sided ``p_value`` and, for comparison, the percentile
    bootstrap interval. Fields a row does not have are left out of the file, not written as null.
    """

    value: float
    ci_low: float
    ci_high: float
    resamples: int | None = None
    seed: int | None = None
    problems: int | None = Field(None, description="problems the difference is taken over")
    p_value: float | None = Field(None, description="one-sided exact paired sign-flip test of 'adapter no better'")
    discordant: int | None = Field(None, description="problems whose scores differ (the test's information)")
    exact: bool | None = Field(None, description="the p-value enumerated every sign assignment (else drawn)")
    bootstrap_low: float | None = Field(None, description="percentile bootstrap interval, for comparison only")
    bootstrap_high: float | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class GridRow(_Artifact):
    temperature: float
    base: ModelSummary
    adapter: ModelSummary
    delta: Delta

    def model(self, label: Label) -> ModelSummary:
        return self.base if label == "base" else self.adapter


class Best(_Artifact):
    """A model's best temperature on a benchmark and its pass@1 there."""

    temperature: float
    pass_at_1: float = Field(alias="pass@1")


class Part(_Artifact):
    """pass@1 of both models at every T_eval on one part of a benchmark's problems."""

    problems: list[str]
    base: dict[float, float]
    adapter: dict[float, float]


class Protocol(_Artifact):
    """How a benchmark's verdict was reached: where T_eval came from and which problems decided."""

    t_choice: Literal["selection", "pre-registered", "single"] = Field(
        description="selection: each model's best T_eval on the selection part; pre-registered: evaluation.t_eval; "
        "single: a grid of one T_eval"
    )
    decided_by: str = Field(description="the protocol in one sentence, as the report prints it")
    fraction: float | None = None
    seed: int | None = None
    stratified_by: str | None = None
    selection: Part | None = Field(None, description="where choices were made (absent when nothing was split off)")
    confirmation: Part = Field(description="the problems the delta, its interval, the test and the gate use")


class Sizing(_Artifact):
    """What the confirmation comparison can detect (``stats.size``): the smallest gain found with
    ``power`` at one-sided ``level``; for a guard, its margin and whether it is within reach."""

    problems: int
    n: int
    pass_rate: float
    sd: float
    level: float
    power: float
    detectable: float
    margin: float | None = None
    harmless_pass: float | None = Field(None, description="guard: probability a no-effect adapter passes")
    reaches_margin: bool | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class BenchmarkMetrics(_Artifact):
    """One benchmark: the grid over all problems (descriptive), and the verdict's numbers.

    ``base_best``/``adapter_best``: each model's T_eval (chosen on the selection part, pre-registered,
    or the only one) and its pass@1 on the confirmation part; ``delta``: the paired comparison of
    those two on the confirmation part; ``finish``: the finish-rate difference there, both models at
    the adapter's T_eval. A file written before the protocol existed has no ``protocol``, ``finish``
    or ``sizing``: it still loads, and the gate refuses it with what to do.
    """

    grid: list[GridRow]
    base_best: Best
    adapter_best: Best
    delta: Delta
    identical_completions: int
    protocol: Protocol | None = None
    finish: Delta | None = Field(None, description="adapter - base finish rate at the adapter's T_eval, paired")
    sizing: Sizing | None = None
    parts: dict[str, BenchmarkMetrics] = Field(
        default_factory=dict,
        description="a pooled benchmark's parts, each at the pool's T_eval on its share of the pool's confirmation "
        "part (descriptive: the gate reads the pooled numbers)",
    )

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler) -> dict[str, Any]:
        out = handler(self)
        return {
            key: value
            for key, value in out.items()
            if not (key in ("protocol", "finish", "sizing") and value is None) and not (key == "parts" and not value)
        }

    def best(self, label: Label) -> Best:
        return self.base_best if label == "base" else self.adapter_best

    def row_at(self, temperature: float) -> GridRow:
        """The grid row at ``temperature``: the one place that matches a temperature."""
        for row in self.grid:
            if math.isclose(row.temperature, temperature, abs_tol=1e-9):
                return row
        have = ", ".join(f"{row.temperature:g}" for row in self.grid) or "none"
        raise ArtifactError(f"no grid row at T_eval {temperature:g} (grid: {have}); rerun the eval stage")

    def at_best(self, label: Label) -> ModelSummary:
        """``label``'s summary at its own best temperature."""
        return self.row_at(self.best(label).temperature).model(label)


class ChampionMetrics(_Artifact):
    """The registry's current version (the champion) against the adapter (the challenger).

    Evaluated like the adapter (same problems, seeds, T_eval grid and protocol); ``benchmarks``
    holds the paired comparisons with the champion in the base's place (``base_best``, ``delta``:
    challenger - champion), so the gate applies its rules to it unchanged. ``skipped`` says why a
    champion was not evaluated (then ``benchmarks`` is empty and the gate refuses to promote).
    """

    name: str
    version: str
    adapter_sha256: str
    serving: str | None = None
    serving_check: dict[str, Any] | None = None
    skipped: str | None = None
    benchmarks: dict[str, BenchmarkMetrics] = {}


class EvalMetrics(_Artifact):
    target: str
    adapter_serving: str
    merge_check: dict[str, Any] | None = None
    serving_check: dict[str, Any] | None = Field(
        None,
        description="the served adapter's effect on next-token log-probs against PEFT's in float32 "
        "(``evaluation.serving``): effect, error, tokens, tolerance, the served dtype",
    )
    benchmarks: dict[str, BenchmarkMetrics]
    champion: ChampionMetrics | None = Field(
        None, description="the registry's current version, evaluated beside the base (absent in a first cycle)"
    )

    @model_serializer(mode="wrap")
    def _omit_unrecorded(self, handler) -> dict[str, Any]:
        out = handler(self)
        for optional in ("serving_check", "champion"):
            if out.get(optional) is None:
                out.pop(optional, None)
        return out

    @model_validator(mode="after")
    def _target_evaluated(self) -> EvalMetrics:
        if self.target not in self.benchmarks:
            raise ValueError(f"target {self.target!r} is not among the benchmarks ({', '.join(self.benchmarks)})")
        for name, bench in self.benchmarks.items():
            for label in ("base", "adapter"):
                try:
                    bench.row_at(bench.best(label).temperature)
                except ArtifactError as exc:
                    raise ValueError(f"benchmarks.{name}.{label}_best: {exc}") from None
        return self

    @property
    def target_metrics(self) -> BenchmarkMetrics:
        return self.benchmarks[self.target]

    def versus_champion(self) -> EvalMetrics | None:
        """The adapter against the champion as metrics the gate reads (the champion as "base"), or
        None when no champion was evaluated."""
        champion = self.champion
        if champion is None or champion.skipped or self.target not in champion.benchmarks:
            return None
        return self.model_copy(update={"benchmarks": champion.benchmarks, "champion": None})


# --- promotion.json --------------------------------------------------------------------------


class Decision(_Artifact):
    """The gate's verdict: promoted only if every rule passed; one reason line per rule."""

    promoted: bool
    reasons: list[str]
    name: str | None = None
    version: str | None = None


# --- manifests/<stage>.json ------------------------------------------------------------------


class Manifest(_Artifact):
    """A finished stage: what decides its reuse (``key``) and what it did."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    stage: str
    status: Literal["complete"] = "complete"
    key: str
    params: dict[str, Any]
    inputs: dict[str, str]
    outputs: dict[str, Any]
    counts: dict[str, Any]
    started_at: str
    wall_s: float
    versions: dict[str, str]
    shared_from: str | None = Field(None, description="the run whose finished stage this one reuses")
    metrics: EvalMetrics | None = Field(None, description="eval stage: the metrics it wrote")
    decision: Decision | None = Field(None, description="promote stage: the gate's verdict")
    model_path: str | None = Field(None, description="train stage: the base model trained on")
    memory_plan: dict[str, Any] | None = Field(None, description="train stage: the memory estimate it checked")
    backend: str | None = Field(None, description="train stage: trl or axolotl")
    reproduction: dict[str, Any] | None = Field(
        None, description="sample stage: the model's weights, tokenizer and chat template hashes, and the seeds"
    )

    def save(self, path: Path | str) -> None:
        runs.atomic_write_text(Path(path), self.model_dump_json(indent=2, by_alias=True, exclude_none=True) + "\n")


def load_manifest(run_dir: Path, stage: str) -> Manifest | None:
    """The stage's manifest in ``run_dir``, or None when it has not finished there."""
    path = runs.manifest_path(run_dir, stage)
    return Manifest.load(path) if path.is_file() else None


def reusable(run_dir: Path, stage: str, key: str) -> Manifest | None:
    """The stage's manifest when it finished with this exact key, else None.

    The stage cache: when this run has not finished the stage under ``key`` but another run in the
    same runs directory has (same parameters, same input hashes), that run's outputs are copied
    here and its manifest is written here naming it (``shared_from``): a changed gate threshold
    reruns only promote, a changed T_eval grid only eval. Only finished stages are found (a
    manifest is the last thing a stage writes), a stage whose inputs changed has another key, and
    a stage that ``--force`` asked for is recomputed. Promote is never shared: its work is the
    registry's, done once per run.
    """
    manifest = load_manifest(run_dir, stage)
    if manifest is not None and manifest.key == key:
        return manifest
    if stage not in runs.CACHED_OUTPUTS or runs.forced_path(run_dir, stage).exists():
        return None
    for donor in sorted(p for p in run_dir.parent.iterdir() if p.is_dir() and p.resolve() != run_dir.resolve()):
        try:
            found = load_manifest(donor, stage)
        except (ArtifactError, OSError):
            continue  # a broken run is no donor
        if found is not None and found.key == key and all((donor / item).exists() for item in runs.outputs_of(stage)):
            runs.copy_stage_outputs(donor, run_dir, stage)
            shared = found.model_copy(update={"shared_from": found.shared_from or donor.name})
            shared.save(runs.manifest_path(run_dir, stage))
            log.info("%s: reusing the finished stage of run %s (same parameters and inputs)", stage, donor.name)
            return shared
    return None


def write_manifest(
    run_dir: Path,
    stage: str,
    *,
    key: str,
    params: dict,
    inputs: dict[str, str],
    outputs: dict[str, Any],
    counts: dict[str, Any],
    started: float,
    **extra: Any,
) -> Manifest:
    """Record a finished stage (the last thing it writes: a stage without one is not finished)."""
    manifest = Manifest(
        stage=stage,
        key=key,
        params=params,
        inputs=inputs,
        outputs=outputs,
        counts=counts,
        started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        wall_s=round(time.time() - started, 2),
        versions=runs.versions(),
        **extra,
    )
    manifest.save(runs.manifest_path(run_dir, stage))
    runs.forced_path(run_dir, stage).unlink(missing_ok=True)
    return manifest
