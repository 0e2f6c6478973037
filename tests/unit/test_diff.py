"""``ssd diff``: what differs between two constructed runs, stage by stage."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline import artifacts, runs
from pipeline.cli import main


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _run(root: Path, name: str, *, temperature: float, completion: str, passed: bool, weights: str) -> Path:
    run = root / name
    samples = [{"id": f"p{i}", "sample_index": 0, "completion": completion if i == 2 else f"c{i}"} for i in range(4)]
    _jsonl(run / "samples.raw.jsonl", samples)
    _jsonl(run / "samples.jsonl", samples)
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "adapter_model.safetensors").write_text(weights)
    rows = [
        {"task_id": f"HumanEval/{i}", "sample_index": 0, "completion": "x", "passed": passed or i > 0} for i in range(3)
    ]
    _jsonl(run / "eval" / "humaneval" / "adapter-T0.7.jsonl", rows)
    sampling = {"sampling": {"temperature": temperature, "top_k": 20}, "model": {"id": "m"}}
    artifacts.write_manifest(
        run,
        "sample",
        key=f"s{temperature}",
        params=sampling,
        inputs={"prompts": "aa"},
        outputs={},
        counts={},
        started=0.0,
    )
    artifacts.write_manifest(
        run,
        "train",
        key=f"t{weights}",
        params={"lr": 1e-4},
        inputs={"samples": completion},
        outputs={},
        counts={},
        started=0.0,
    )
    artifacts.write_manifest(
        run,
        "eval",
        key="e" + str(passed),
        params={"evaluation": {"n": 1}},
        inputs={"adapter": weights},
        outputs={},
        counts={},
        started=0.0,
    )
    return run


def test_diff_names_the_changed_parameters_inputs_and_outputs(tmp_path, capsys):
    a = _run(tmp_path, "a", temperature=0.8, completion="return 1", passed=True, weights="w1")
    b = _run(tmp_path, "b", temperature=1.2, completion="return 2", passed=False, weights="w2")
    artifacts.Decision(promoted=True, reasons=["pass: x"], name="coder", version="v0002").save(a / "promotion.json")
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "sample: different key" in out
    assert "param sampling.temperature: A 0.8 | B 1.2" in out and "sampling.top_k" not in out
    assert "samples.raw.jsonl: 4 in both, 1 differ in completion" in out
    assert "train: different key" in out and "input samples: different content" in out
    assert "adapter/: 1 of 2 files differ (adapter_model.safetensors)" in out
    assert "humaneval/adapter-T0.7.jsonl: 3 in both, 0 differ in completion, 1 differ in passed" in out
    assert "promote: not finished in A and B" in out


def test_same_runs_show_no_difference_and_a_copied_stage_names_its_donor(tmp_path, capsys):
    a = _run(tmp_path, "a", temperature=0.8, completion="same", passed=True, weights="w")
    b = tmp_path / "b"
    for stage in ("sample", "train", "eval"):
        assert artifacts.reusable(b, stage, artifacts.load_manifest(a, stage).key) is not None  # the stage cache
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert out.count("same key (same parameters and inputs); B took it from run a") == 3
    assert "  param " not in out and "0 differ in completion" in out and "0 of 2 files differ" in out


def test_diff_of_something_that_is_not_a_run_exits_2(tmp_path, capsys):
    (tmp_path / "a" / runs.MANIFESTS).mkdir(parents=True)
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not a run directory" in capsys.readouterr().err
    (tmp_path / "a" / runs.MANIFESTS / "sample.json").write_text("{broken")
    (tmp_path / "b" / runs.MANIFESTS).mkdir(parents=True)
    assert main(["diff", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "sample.json" in capsys.readouterr().err
