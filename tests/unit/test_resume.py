"""The one resume helper (pipeline/runs.py) that sampling and evaluation share: append-only
logs keyed by their parameters, cut half-lines, "done when all n samples are present", "keep the
last copy", and the one move-aside rule that never overwrites or deletes."""

import os

import pytest

from pipeline import runs


def test_half_written_last_line_is_dropped_and_cut(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "compl')
    assert [r["id"] for r in runs.read_log(path)] == ["a", "b"]
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    path.write_text('{"id": "a"}\n{"id": \n{"id": "c"}\n')
    with pytest.raises(runs.RunFileError, match=rf"{path}:2: not valid JSON"):
        runs.read_log(path)


def test_reader_names_file_and_line_for_bad_bytes_and_directories(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "\xff"}\n')
    with pytest.raises(runs.RunFileError, match=rf"{path}:2: not UTF-8"):
        runs.read_jsonl(path)
    with pytest.raises(runs.RunFileError, match="is a directory"):
        runs.read_jsonl(tmp_path)
    assert runs.read_log(tmp_path / "missing.jsonl") == []


def test_an_item_with_missing_samples_is_not_done():
    rows = [
        {"id": "a", "sample_index": 0},
        {"id": "a", "sample_index": 1},
        {"id": "b", "sample_index": 0},  # its second sample was cut off by a kill
        {"id": "c", "dropped": "prompt_too_long", "prompt_tokens": 9000},
    ]
    skipped = lambda row: row.get("dropped") == "prompt_too_long"  # noqa: E731
    assert runs.complete_ids(rows, 2, "id", skipped) == {"a", "c"}
    assert runs.complete_ids(rows, 1, "id", skipped) == {"a", "b", "c"}
    assert runs.complete_ids(rows, 2, "id") == {"a"}


def test_last_copy_wins_in_the_given_order():
    rows = [
        {"task_id": "b", "sample_index": 0, "v": 1},
        {"task_id": "a", "sample_index": 0, "v": 2},
        {"task_id": "b", "sample_index": 0, "v": 3},  # redone after a kill
        {"task_id": "x", "sample_index": 0, "v": 4},  # not asked for
    ]
    assert [r["v"] for r in runs.last_copies(rows, ["a", "b"], "task_id")] == [2, 3]


def test_move_aside_never_overwrites(tmp_path):
    moved = []
    for content in ("first", "second", "third"):
        path = tmp_path / "eval.jsonl"
        path.write_text(content)
        moved.append(runs.move_aside(path, "stale"))
        assert not path.exists()
    assert len(set(moved)) == 3
    assert sorted(p.read_text() for p in moved) == ["first", "second", "third"]
    assert all(p.name.startswith("eval.jsonl.stale-") for p in moved)


def test_keyed_log_moves_work_of_other_parameters_aside(tmp_path):
    path = tmp_path / "samples.raw.jsonl"
    runs.keyed_log(path, "k1")
    with open(path, "a") as fh:
        runs.append_rows(fh, [{"id": "a", "sample_index": 0}])
    assert runs.keyed_log(path, "k1") == path and runs.read_log(path) == [{"id": "a", "sample_index": 0}]
    runs.keyed_log(path, "k2")
    assert not path.exists()
    (aside,) = [p for p in os.listdir(tmp_path) if ".stale-" in p]
    assert runs.read_log(tmp_path / aside) == [{"id": "a", "sample_index": 0}]
    assert (tmp_path / "samples.raw.jsonl.key").read_text() == "k2"


def test_chunks_are_fixed_batches():
    assert runs.chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
