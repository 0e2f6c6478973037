"""Idempotent, resumable runs for schedules: reuse, input changes, --force, the run lock, and
resume after a kill during evaluation, all through the real CLI on the tiny recipe."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, ssd

from pipeline.runs import RunBusyError, force_from, run_lock

pytestmark = pytest.mark.slow

RUN_ID = "sched"
# Chunks of 2 problems x 128 tokens take seconds, so a kill lands between chunks; float32 keeps
# the random tiny model's greedy choices free of bf16 ties.
TINY = ["evaluation.chunk_size=2", "evaluation.max_tokens=128", "engine.dtype=float32", "--run-id", RUN_ID]


def _manifests(run):
    return {
        s: json.loads((run / "manifests" / f"{s}.json").read_text()) for s in ("sample", "train", "eval", "promote")
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    base = tmp_path_factory.mktemp("sched")
    args = ["run", "recipes/tiny.yaml", f"runs_dir={base / 'runs'}", f"registry_dir={base / 'registry'}", *TINY]
    proc = ssd(*args)
    assert proc.returncode in (0, 3), proc.stderr[-4000:]
    return {"base": base, "run": base / "runs" / RUN_ID, "args": args}


def _copy_and_rerun(finished, tmp_path, *extra: str):
    """A copy of the finished run, rerun with ``extra`` arguments: (run dir, manifests before, process)."""
    import shutil

    run = tmp_path / "runs" / RUN_ID
    shutil.copytree(finished["run"], run)
    before = _manifests(run)
    proc = ssd(
        "run", "recipes/tiny.yaml", f"runs_dir={tmp_path / 'runs'}", f"registry_dir={tmp_path / 'reg'}", *TINY, *extra
    )
    return run, before, proc


def test_force_train_reruns_train_and_later_and_keeps_the_old_files(finished, tmp_path):
    run, before, proc = _copy_and_rerun(finished, tmp_path, "--force", "train")
    assert proc.returncode in (0, 3), proc.stderr[-4000:]
    after = _manifests(run)
    assert after["sample"] == before["sample"]
    for stage in ("train", "eval", "promote"):
        assert (
            after[stage]["started_at"] != before[stage]["started_at"]
            or after[stage]["wall_s"] != before[stage]["wall_s"]
        )
    assert list(run.glob("adapter.forced-*")) and list(run.glob("eval.forced-*"))


def test_a_second_run_on_the_same_directory_is_refused(finished):
    with run_lock(finished["run"]):
        proc = ssd(*finished["args"])
        assert proc.returncode == 1 and "in use by another ssd process" in proc.stderr
        with pytest.raises(RunBusyError):
            with run_lock(finished["run"]):
                pass
    proc = ssd(*finished["args"])  # free again: a finished run does no work and exits the same
    assert proc.returncode in (0, 3) and "starting vLLM" not in proc.stderr


def test_force_rejects_unknown_stage(tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'fine-tune'"):
        force_from(tmp_path, "fine-tune")


def test_killed_evaluation_resumes_without_redoing_finished_problems(finished, tmp_path):
    import shutil

    run = tmp_path / "runs" / RUN_ID
    shutil.copytree(finished["run"], run)
    reference = (finished["run"] / "eval" / "humaneval" / "adapter-T0.jsonl").read_text()
    force_from(run, "eval")
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "run",
        "recipes/tiny.yaml",
        f"runs_dir={tmp_path / 'runs'}",
        f"registry_dir={tmp_path / 'reg'}",
        *TINY,
    ]
    child = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    partial = run / "eval" / "humaneval" / "adapter-T0.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and child.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    written = partial.read_text().count("\n")
    assert 2 <= written < 8, written
    proc = ssd("run", "recipes/tiny.yaml", f"runs_dir={tmp_path / 'runs'}", f"registry_dir={tmp_path / 'reg'}", *TINY)
    assert proc.returncode in (0, 3), proc.stderr[-4000:]
    rows = [json.loads(line) for line in open(partial)]
    assert len(rows) == len({r["task_id"] for r in rows}) == 8  # finished problems were not redone
    assert partial.read_text() == reference  # greedy: the resumed file equals the uninterrupted one


def test_new_runs_take_the_unchanged_stages_of_a_finished_run(finished, tmp_path):
    """The stage cache across runs: other run ids in the same runs directory. A loosened gate
    copies sample, train and eval (no engine starts) and reruns promote; a changed evaluation
    setting copies sample and train and reruns eval and promote."""
    import shutil

    runs_dir = tmp_path / "runs"
    shutil.copytree(finished["run"], runs_dir / RUN_ID)
    args = [a for a in TINY if a not in ("--run-id", RUN_ID)]
    old = _manifests(runs_dir / RUN_ID)

    def run(run_id: str, *extra: str):
        proc = ssd(
            "run",
            "recipes/tiny.yaml",
            f"runs_dir={runs_dir}",
            f"registry_dir={tmp_path / 'reg'}",
            *args,
            *extra,
            "--run-id",
            run_id,
        )
        assert proc.returncode in (0, 3), proc.stderr[-4000:]
        return proc, _manifests(runs_dir / run_id)

    proc, new = run("loosened", "promotion.min_delta=-1", "promotion.min_ci_lower=-1")
    assert "starting vLLM" not in proc.stderr and "trainable parameters" not in proc.stderr  # nothing recomputed
    for stage in ("sample", "train", "eval"):
        assert new[stage]["shared_from"] == RUN_ID and new[stage]["key"] == old[stage]["key"], stage
    assert "shared_from" not in new["promote"] and new["promote"]["key"] != old["promote"]["key"]
    same = [(runs_dir / r / "eval" / "metrics.json").read_bytes() for r in ("loosened", RUN_ID)]
    assert same[0] == same[1]

    proc, new = run("shorter", "evaluation.max_tokens=24")
    assert "trainable parameters" not in proc.stderr
    assert new["sample"]["shared_from"] == new["train"]["shared_from"] == RUN_ID
    assert "shared_from" not in new["eval"] and new["eval"]["key"] != old["eval"]["key"]
    assert new["eval"]["params"]["evaluation"]["max_tokens"] == 24
    rows = [json.loads(line) for line in open(runs_dir / "shorter" / "eval" / "humaneval" / "adapter-T0.jsonl")]
    assert max(r["completion_tokens"] for r in rows) <= 24  # recomputed, not the finished run's 128-token rows
