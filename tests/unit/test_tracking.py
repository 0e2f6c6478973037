"""Tracking: metrics.jsonl is always written; wandb mirrors offline into the run directory."""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.tracking import Tracker


def _wandb_records(path: Path) -> list:
    """Records of a ``.wandb`` transaction log (W&B's LevelDB-style log of protobuf records).

    The file opens with a 7-byte header (``:W&B``, magic, version); then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, little-endian length, type: 1 full, 2 first,
    3 middle, 4 last). wandb no longer ships a Python reader, so this is the format's reader.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    pos, pending, records = 7, b"", []
    while pos + 7 <= len(data):
        left_in_block = 32768 - pos % 32768
        if left_in_block < 7:
            pos += left_in_block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):
            break  # a chunk still being written
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        else:
            break  # zero padding at the end of the file
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
    return records


def _complete_records(path: Path, timeout: float = 30.0) -> list:
    """The records once the log holds the run's exit record.

    wandb-core writes the log asynchronously: ``finish()`` can return a moment before the
    records reach the file (seen under load); at the latest they are there at process exit.
    """
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


def _history(records: list) -> list[dict]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def test_metrics_jsonl_contents(tmp_path):
    with Tracker(tmp_path, mode="disabled") as tracker:
        tracker.log({"loss": 1.5, "grad_norm": np.float32(0.25)}, stage="train", step=1)
        tracker.log({"loss": 1.25}, stage="train", step=2)
        tracker.log({"pass@1": 0.05, "per_difficulty": {"easy": {"pass@1": 0.1}}}, stage="eval")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("train", 1), ("train", 2), ("eval", None)]
    assert rows[0]["loss"] == 1.5 and rows[0]["grad_norm"] == 0.25 and rows[1]["loss"] == 1.25
    assert rows[2]["per_difficulty"] == {"easy": {"pass@1": 0.1}}
    assert all(datetime.fromisoformat(r["timestamp"]).tzinfo is not None for r in rows)
    assert not (tmp_path / "wandb").exists()  # disabled means no wandb files at all

    # a second tracker on the same run (a resumed run) appends instead of truncating
    with Tracker(tmp_path, mode="disabled") as tracker:
        tracker.log({"decision": "promoted"}, stage="promote")
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4


def test_reserved_keys_and_bad_mode_are_rejected(tmp_path):
    with Tracker(tmp_path, mode="disabled") as tracker:
        with pytest.raises(ValueError, match="keys step are reserved"):
            tracker.log({"step": 3}, stage="train")
    with pytest.raises(ValueError, match="'offlin' is not one of offline, online, disabled"):
        Tracker(tmp_path, mode="offlin")


def test_offline_wandb_run_holds_the_logged_keys(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run_dir = tmp_path / "weekly-2026-W48"
    with Tracker(run_dir, project="ssd-test", config={"sampling": {"temperature": 1.6}}) as tracker:
        assert tracker.wandb_run is not None
        for step, loss in enumerate([2.0, 1.5, 1.25], start=1):
            tracker.log({"loss": loss}, stage="train", step=step)
        tracker.log(
            {"pass@1": 0.05, "per_difficulty": {"easy": {"pass@1": 0.1}}, "samples": [1, 2]}, stage="eval", step=0
        )

    (offline,) = (run_dir / "wandb").glob("offline-run-*")  # offline, inside the run directory
    (log_file,) = offline.glob("run-*.wandb")
    records = _complete_records(log_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "ssd-test" and run.display_name == "weekly-2026-W48"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["sampling"] == {"temperature": 1.6}
    history = _history(records)
    train = [h for h in history if "train/loss" in h]
    assert [(h["train/step"], h["train/loss"]) for h in train] == [(1, 2.0), (2, 1.5), (3, 1.25)]
    (evaluation,) = [h for h in history if "eval/pass@1" in h]
    assert evaluation["eval/per_difficulty/easy/pass@1"] == 0.1 and evaluation["eval/step"] == 0
    assert not any("eval/samples" in h for h in history)  # lists stay in metrics.jsonl only
    metrics = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
    assert any(m.glob_name == "train/*" and m.step_metric == "train/step" for m in metrics)
    assert [r for r in records if r.WhichOneof("record_type") == "exit"][0].exit.exit_code == 0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 4


def test_without_wandb_it_warns_and_still_records(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what `import wandb` sees when it is not installed
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking"):
        with Tracker(tmp_path, mode="offline") as tracker:
            assert tracker.wandb_run is None
            tracker.log({"loss": 1.0}, stage="train", step=1)
    assert "wandb is not installed" in caplog.text and str(tmp_path / "metrics.jsonl") in caplog.text
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 1.0
    assert not (tmp_path / "wandb").exists()
