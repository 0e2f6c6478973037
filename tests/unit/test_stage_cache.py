"""The stage cache: a stage another run under the same runs directory finished with the same key
is copied, not recomputed; nothing else is ever served from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import artifacts, generation, runs
from pipeline.recipe import Recipe
from pipeline.stages import sample, train


def _finish(run_dir: Path, stage: str, key: str, files: dict[str, str]) -> None:
    """A finished stage: its output files, then its manifest (the last thing a stage writes)."""
    for name, text in files.items():
        path = run_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    artifacts.write_manifest(run_dir, stage, key=key, params={}, inputs={}, outputs={}, counts={}, started=0.0)


SAMPLES = {"samples.raw.jsonl": "raw\n", "samples.raw.jsonl.key": "k", "samples.jsonl": "kept\n"}
EVAL = {"eval/metrics.json": "{}", "eval/humaneval/adapter-T0.7.jsonl": "row\n", "eval/merged-model/w.bin": "big"}


def test_a_finished_stage_of_another_run_is_copied_and_names_its_donor(tmp_path):
    donor, run = tmp_path / "runs" / "monday", tmp_path / "runs" / "tuesday"
    _finish(donor, "sample", "k-sample", SAMPLES)
    _finish(donor, "train", "k-train", {"adapter/adapter_model.safetensors": "weights"})
    _finish(donor, "eval", "k-eval", EVAL)
    for stage, key in (("sample", "k-sample"), ("train", "k-train"), ("eval", "k-eval")):
        manifest = artifacts.reusable(run, stage, key)
        assert manifest is not None and manifest.shared_from == "monday" and manifest.key == key
        assert artifacts.load_manifest(run, stage) == manifest  # recorded here: a rerun finds it locally
    assert (run / "samples.jsonl").read_text() == "kept\n" and (run / "samples.raw.jsonl.key").read_text() == "k"
    assert (run / "adapter" / "adapter_model.safetensors").read_text() == "weights"
    assert (run / "eval" / "humaneval" / "adapter-T0.7.jsonl").read_text() == "row\n"
    assert not (run / "eval" / "merged-model").exists()  # a regenerable model copy is not copied
    assert artifacts.load_manifest(donor, "sample").shared_from is None  # the donor is untouched
    third = tmp_path / "runs" / "wednesday"
    assert artifacts.reusable(third, "sample", "k-sample").shared_from == "monday"  # the first donor, not a copy


def test_another_key_or_a_half_written_stage_is_never_served(tmp_path):
    runs_dir = tmp_path / "runs"
    _finish(runs_dir / "done", "sample", "k-sample", SAMPLES)
    half = runs_dir / "killed"
    (half / "eval").mkdir(parents=True)
    (half / "eval" / "metrics.json").write_text("{}")  # outputs without a manifest: not finished
    run = runs_dir / "new"
    assert artifacts.reusable(run, "sample", "other-key") is None
    assert artifacts.reusable(run, "eval", "k-eval") is None
    assert not run.exists() or not any(run.iterdir())
    broken = runs_dir / "broken"
    (broken / "manifests").mkdir(parents=True)
    (broken / "manifests" / "train.json").write_text("{not json")
    assert artifacts.reusable(run, "train", "k-train") is None  # a broken run is no donor, and no error
    gone = runs_dir / "gone"
    _finish(gone, "train", "k-gone", {"adapter/x": "w"})
    (gone / "adapter" / "x").unlink()
    (gone / "adapter").rmdir()
    assert artifacts.reusable(run, "train", "k-gone") is None  # its outputs are missing


def test_promote_is_never_shared(tmp_path):
    _finish(tmp_path / "runs" / "a", "promote", "k-promote", {"promotion.json": "{}"})
    assert artifacts.reusable(tmp_path / "runs" / "b", "promote", "k-promote") is None


def test_force_recomputes_instead_of_taking_the_cache_until_the_stage_finishes(tmp_path):
    donor, run = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    _finish(donor, "train", "k-train", {"adapter/w": "donor"})
    _finish(run, "train", "k-train", {"adapter/w": "own"})
    runs.force_from(run, "train")
    assert artifacts.reusable(run, "train", "k-train") is None  # --force train: recompute, do not copy
    assert artifacts.reusable(run, "eval", "k-eval") is None
    _finish(run, "train", "k-train", {"adapter/w": "recomputed"})  # the stage finished: the marker is gone
    assert not runs.forced_path(run, "train").exists() and runs.forced_path(run, "eval").exists()


def test_what_the_run_had_is_moved_aside_not_lost(tmp_path):
    donor, run = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    _finish(donor, "sample", "k-new", SAMPLES)
    (run).mkdir(parents=True)
    (run / "samples.raw.jsonl").write_text("half of an older sampling\n")
    assert artifacts.reusable(run, "sample", "k-new").shared_from == "a"
    aside = list(run.glob("samples.raw.jsonl.replaced-*"))
    assert len(aside) == 1 and aside[0].read_text() == "half of an older sampling\n"


def _sample_key(recipe: Recipe) -> str:
    return runs.stage_key(sample._params(recipe), sample._inputs(recipe))[0]


def test_stage_boundaries_a_change_reruns_its_stage_and_only_what_depends_on_it(tmp_path):
    """The keys the stages compute: sampling's ignores training, evaluation and the gate; a
    changed prompt file or engine changes it; training's depends on its own section (and the
    samples' hash, an input)."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "def f():\\n"}\n')
    recipe = Recipe(prompts={"path": str(prompts)})
    key = _sample_key(recipe)
    for section, change in (
        ("training", {"learning_rate": 1e-3}),
        ("evaluation", {"temperatures": [0.2, 0.7]}),
        ("promotion", {"min_delta": 0.05}),
    ):
        changed = recipe.model_copy(update={section: getattr(recipe, section).model_copy(update=change)})
        assert _sample_key(changed) == key, section
    for dtype in ("bfloat16", "float32"):  # `auto` resolves to one of them here: the other must change the key
        as_dtype = recipe.model_copy(update={"engine": recipe.engine.model_copy(update={"dtype": dtype})})
        if generation.resolved_dtype("auto", gpu=generation.on_gpu()) != dtype:
            assert _sample_key(as_dtype) != key, dtype
    prompts.write_text('{"id": "a", "prompt": "def g():\\n"}\n')
    assert _sample_key(recipe) != key  # the prompt file's hash is an input
    params = train.stage_params(recipe)
    assert (
        train.stage_params(recipe.model_copy(update={"promotion": recipe.promotion.model_copy(update={"alpha": 0.01})}))
        == params
    )
    faster = recipe.model_copy(update={"training": recipe.training.model_copy(update={"learning_rate": 1e-3})})
    assert train.stage_params(faster) != params


@pytest.mark.parametrize("stage", ["sample", "train", "eval"])
def test_every_cached_stage_lists_its_outputs(stage):
    assert (
        set(runs.outputs_of(stage))
        <= set(runs.CACHED_OUTPUTS[stage])
        <= set(runs.STAGE_FILES[stage]) | {"samples.raw.jsonl.key"}
    )
