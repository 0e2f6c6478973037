"""The shared base evaluation's cache key: an allow list of the settings that change samples or
verdicts, the engine settings, the package versions and the hash of the generation and scoring
code. A base result is reused only when all of them match."""

import pytest

from pipeline.evaluation.benchmarks import load_benchmark
from pipeline.recipe import EvaluationConfig, Recipe
from pipeline.stages import eval as eval_stage


def _key(recipe: Recipe, mode: str = "merged") -> str:
    bench = load_benchmark(recipe, "humaneval")
    return eval_stage.results_key(recipe, "base", bench, "adapter-hash", eval_stage.base_served(recipe, "m", mode))


def _recipe(**evaluation) -> Recipe:
    return Recipe(evaluation={"limit": 4, **evaluation})


def test_every_evaluation_setting_is_classified_with_a_reason():
    fields = set(EvaluationConfig.model_fields)
    in_key, out = set(eval_stage.BASE_KEY_FIELDS), set(eval_stage.NOT_IN_BASE_KEY)
    assert not in_key & out
    assert fields == in_key | out, f"classify {sorted(fields - in_key - out)} in BASE_KEY_FIELDS or NOT_IN_BASE_KEY"
    assert all(reason.strip() for reason in {**eval_stage.BASE_KEY_FIELDS, **eval_stage.NOT_IN_BASE_KEY}.values())
    assert "workers" not in in_key


@pytest.mark.parametrize(
    "change",
    [{"workers": 7}, {"bootstrap_resamples": 500}, {"k": [1]}, {"base_dir": "/elsewhere"}, {"temperatures": [0.2]}],
)
def test_base_key_ignores_what_does_not_change_samples(change):
    assert _key(_recipe(**change)) == _key(_recipe())


@pytest.mark.parametrize(
    "change", [{"top_p": 0.95}, {"max_tokens": 100}, {"stop": ["\ndef "]}, {"seed": 7}, {"timeout_s": 3.0}]
)
def test_base_key_changes_with_a_setting_that_changes_samples(change):
    assert _key(_recipe(**change)) != _key(_recipe())


def test_base_key_changes_with_the_engine_settings():
    base = _recipe()  # bf16 explicitly: `auto` is float32 on a CPU without bf16 instructions
    base = base.model_copy(update={"engine": base.engine.model_copy(update={"dtype": "bfloat16"})})
    assert _key(base.model_copy(update={"engine": base.engine.model_copy(update={"max_num_seqs": 8})})) != _key(base)
    as_fp16 = base.model_copy(update={"engine": base.engine.model_copy(update={"dtype": "float16"})})
    assert _key(as_fp16, mode="lora") != _key(base, mode="lora")
    assert _key(base, mode="lora") != _key(base, mode="merged")  # a LoRA-enabled engine serves the base there
    # merged serving: the base runs in the merged copy's dtype, whatever the recipe's
    as_merged = base.model_copy(update={"engine": base.engine.model_copy(update={"dtype": "float32"})})
    assert _key(as_merged, mode="lora") != _key(base, mode="lora")
    assert _key(as_merged, mode="merged") == _key(base, mode="merged")


def test_base_key_changes_with_the_generation_and_scoring_code(tmp_path, monkeypatch):
    recipe = _recipe()
    assert "evaluation/sandbox" in eval_stage.CODE_FILES and "evaluation/extract.py" in eval_stage.CODE_FILES
    code = tmp_path / "extract.py"
    code.write_text("CUT = 1\n")
    monkeypatch.setattr(eval_stage, "CODE_FILES", (*eval_stage.CODE_FILES, str(code)))
    before = _key(recipe)
    assert _key(recipe) == before  # stable
    code.write_text("CUT = 2\n")
    assert _key(recipe) != before
    parts = eval_stage.base_key_parts(recipe, eval_stage.base_served(recipe, "m", "merged"))
    assert parts["versions"]["ssd-pipeline"] and parts["engine"]["max_model_len"] == recipe.engine.max_model_len


def test_a_prompt_longer_than_the_engine_fails_its_samples_without_crashing():
    """mbpp/493's prompt (1,762 tokens) does not fit a 1,024-token engine: its samples are empty
    answers, judged like any other (they fail), and counted as not finished rather than cut."""
    from pipeline.evaluation.metrics import summarize

    recipe = Recipe(evaluation={"benchmarks": ["mbpp"], "n": 2})
    problem = next(p for p in load_benchmark(recipe, "mbpp").problems if p["task_id"] == "mbpp/493")
    rows = eval_stage.execute(recipe, [problem], eval_stage.unanswered("mbpp/493", 2), desc="too long")
    assert [r["sample_index"] for r in rows] == [0, 1]
    assert all(not r["passed"] and r["finish_reason"] == eval_stage.PROMPT_TOO_LONG for r in rows)
    summary = summarize(rows, [1], [problem])
    assert summary.finish_rate == 0.0 and summary.cut_share == 0.0 and summary.pass_at[1] == 0.0
