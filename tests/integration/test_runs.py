"""Idempotent, resumable runs for schedules: reuse, input changes, --force, the run lock, and
resume after a kill during evaluation, all through the real CLI on the tiny recipe."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, TINY_OVERRIDES, TINY_RUN_ID, ssd

from pipeline.runs import RunBusyError, force_from, run_lock

pytestmark = pytest.mark.slow

RUN_ID = TINY_RUN_ID

TINY = [*TINY_OVERRIDES, "--run-id", RUN_ID]


def _manifests(run):
    return {
        s: json.loads((run / "manifests" / f"{s}.json").read_text()) for s in ("sample", "train", "eval", "promote")
    }


@pytest.fixture(scope="module")
def finished(tiny_run):
    """The session's finished tiny run (conftest.tiny_run); tests that change it work on a copy."""
    return tiny_run


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


def test_forced_training_killed_in_evaluation_resumes_without_redoing_finished_problems(finished, tmp_path):
    """``--force train`` sets the old adapter and evaluation aside and recomputes train and later;
    killed (SIGKILL) while it evaluates, the next run keeps the finished problems and does only the
    rest. Training and greedy decoding are deterministic, so the resumed file equals the first
    run's."""
    import shutil

    run = tmp_path / "runs" / RUN_ID
    shutil.copytree(finished["run"], run)
    before = _manifests(run)
    reference = (finished["run"] / "eval" / "humaneval" / "adapter-T0.jsonl").read_text()
    args = ["run", "recipes/tiny.yaml", f"runs_dir={tmp_path / 'runs'}", f"registry_dir={tmp_path / 'reg'}", *TINY]
    child = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", *args, "--force", "train"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    partial = run / "eval" / "humaneval" / "adapter-T0.jsonl"
    deadline = time.time() + 900
    while time.time() < deadline and child.poll() is None:
        # the copied run's finished file first goes aside (eval.forced-*), then the new one grows
        if list(run.glob("eval.forced-*")) and partial.exists() and partial.read_text().count("\n") >= 2:
            break
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert list(run.glob("adapter.forced-*")) and list(run.glob("eval.forced-*"))  # set aside, not deleted
    written = partial.read_text().count("\n")
    assert 2 <= written < 8, written

    proc = ssd(*args)
    assert proc.returncode in (0, 3), proc.stderr[-4000:]
    assert "trainable parameters" not in proc.stderr  # training had finished before the kill
    after = _manifests(run)
    assert after["sample"] == before["sample"]
    for stage in ("train", "eval", "promote"):
        assert (
            after[stage]["started_at"] != before[stage]["started_at"]
            or after[stage]["wall_s"] != before[stage]["wall_s"]
        ), stage
    rows = [json.loads(line) for line in open(partial)]
    assert len(rows) == len({r["task_id"] for r in rows}) == 8  # finished problems were not redone
    assert partial.read_text() == reference


def test_new_runs_take_the_unchanged_stages_of_a_finished_run(finished, tmp_path):
    """The stage cache across runs: other run ids in the same runs directory. A loosened gate
    copies sample, train and eval (no engine starts) and reruns promote; a changed evaluation
    setting copies sample and train and reruns eval and promote."""
    import shutil

    runs_dir = tmp_path / "runs"
    shutil.copytree(finished["run"], runs_dir / RUN_ID)
    args = TINY_OVERRIDES
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
