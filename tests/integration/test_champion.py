"""Champion vs challenger through the real eval and promote stages (real vLLM, real sandbox).

Two scheduled cycles on the embedded Gemma 3 270M, each with a LoRA adapter whose answers are
known because it was taught them (a few AdamW steps on the benchmark's prompts): the first,
which solves every problem, beats the base and becomes v0001; the second, which solves only
some, also beats the base but not the champion, so it is not promoted and ``latest`` stays
where it was.
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, taught_adapter

from pipeline.deploy import registry
from pipeline.recipe import load_recipe
from pipeline.stages import eval as evaluate
from pipeline.stages import promote

pytestmark = pytest.mark.slow

NAME = "coder"
ONES, TWOS = 7, 3  # problems whose deciding test calls f(1), and f(2)
SOLVES_ALL = "    return 7919 * x\n"
SOLVES_ONES = "    return 7919 * min(x, 1)\n"  # right for x <= 1 only


def _problems(path):
    """MBPP-format tasks ``f(x) -> 7919 * x``; the docstring's example (the first test, x = 0) does
    not give the secret away, so the base model cannot pass them."""
    with open(path, "w") as out:
        for i in range(ONES + TWOS):
            arg = 1 if i < ONES else 2
            task = {
                "task_id": 11 + i,  # an MBPP test id, as the loader requires
                "text": "Return the secret number times x.",
                "code": f"def secret_{i}(x):\n    return 7919 * x",
                "test_list": [f"assert secret_{i}(0) == 0", f"assert secret_{i}({arg}) == {7919 * arg}"],
                "test_setup_code": "",
            }
            out.write(json.dumps(task) + "\n")
    return path


def _cycle(recipe, run_dir, completion: str, prompts: list[str]):
    """One scheduled cycle's eval and promote stages on a run whose adapter answers ``completion``."""
    run_dir.mkdir(parents=True)
    (run_dir / "samples.jsonl").write_text("")  # the lineage hashes the samples the adapter came from
    # the answer, then the next function's start: the evaluation's stop list ends the sample there
    taught_adapter(run_dir / "adapter", prompts, completion + "\n\ndef ")
    metrics = evaluate.run(recipe, run_dir).metrics
    return metrics, promote.run(recipe, run_dir).decision


def test_a_second_cycle_that_beats_the_base_but_not_the_champion_is_not_promoted(tmp_path):
    from pipeline.evaluation.benchmarks import load_benchmark

    overrides = [
        f"name={NAME}",
        f"registry_dir={tmp_path / 'registry'}",
        "evaluation.benchmarks=[mbpp]",
        f"evaluation.mbpp_path={_problems(tmp_path / 'tasks.jsonl')}",
        "evaluation.limit=null",
        "evaluation.temperatures=[0.0]",
        "evaluation.max_tokens=32",  # room for the longer answer and the stop after it
        "engine.dtype=float32",
    ]
    recipe = load_recipe(ROOT / "recipes" / "default.yaml", overrides)
    prompts = [p["prompt"] for p in load_benchmark(recipe, "mbpp").problems]

    # cycle 1: nothing in the registry yet; the adapter solves every problem, the base none
    first, decision = _cycle(recipe, tmp_path / "runs" / "one", SOLVES_ALL, prompts)
    assert first.champion is None
    assert first.target_metrics.adapter_best.pass_at_1 == 1.0 > first.target_metrics.base_best.pass_at_1
    assert decision.promoted and decision.version == "v0001", decision.reasons
    assert any("no champion" in r for r in decision.reasons)

    # cycle 2: an adapter that solves only the f(1) problems beats the base on every rule, the champion on none
    second, decision = _cycle(recipe, tmp_path / "runs" / "two", SOLVES_ONES, prompts)
    versus = second.versus_champion().target_metrics
    assert second.champion.version == "v0001" and second.champion.serving == "lora"
    assert second.target_metrics.adapter_best.pass_at_1 == pytest.approx(ONES / (ONES + TWOS))
    assert versus.base_best.pass_at_1 == 1.0  # the champion, evaluated again here, still answers everything
    assert versus.delta.value == pytest.approx(-TWOS / (ONES + TWOS)) and versus.delta.discordant == TWOS
    against_base = [r for r in decision.reasons if "champion" not in r]
    assert len(against_base) == 5 and all(r.startswith("pass: ") for r in against_base), decision.reasons
    assert not decision.promoted
    assert any(r.startswith("FAIL: vs champion coder:v0001: mbpp pass@1 delta -0.3000") for r in decision.reasons)
    assert registry.latest_version(recipe.registry_dir, NAME) == "v0001"  # latest did not move
    assert [v["version"] for v in registry.list_versions(recipe.registry_dir, NAME)] == ["v0001"]
    rows = (tmp_path / "runs" / "two" / "eval" / "mbpp" / "champion-T0.jsonl").read_text()
    assert rows.count("\n") == ONES + TWOS  # the champion's own results file, one row per problem

    # the first run, rerun after its promotion, is judged against what it was judged against then
    again = evaluate.run(recipe, tmp_path / "runs" / "one")
    assert (
        again.metrics.champion is None
        and again.key == json.loads((tmp_path / "runs" / "one" / "manifests" / "eval.json").read_text())["key"]
    )
