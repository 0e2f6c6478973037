"""``ssd diff RUN_A RUN_B``: why two runs' numbers disagree, stage by stage.

For each stage both runs finished: whether its key is the same (then the outputs must be the
same work: copied from one run to the other by the stage cache, or recomputed), which
parameters differ (dotted names, both values), which input hashes differ, and how many outputs
differ: samples (same prompt id and sample index, another completion), the adapter's files,
completions and verdicts of every evaluation results file both runs hold, and the decision.
Reading only: nothing in either run is changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import artifacts, runs

STAGES = runs.STAGES
MISSING = "(absent)"


@dataclass
class StageDiff:
    stage: str
    finished: tuple[bool, bool]
    same_key: bool = False
    shared_from: tuple[str | None, str | None] = (None, None)
    params: list[tuple[str, Any, Any]] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # one line per output compared


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; lists are leaves."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _changed(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    flat_a, flat_b = flatten(a), flatten(b)
    return [
        (name, flat_a.get(name, MISSING), flat_b.get(name, MISSING))
        for name in sorted(set(flat_a) | set(flat_b))
        if flat_a.get(name, MISSING) != flat_b.get(name, MISSING)
    ]


def _rows(path: Path, key: tuple[str, str]) -> dict[tuple, dict]:
    """A JSONL file's rows by (id, sample index); the last copy wins, as resume keeps it."""
    if not path.is_file():
        return {}
    return {(str(row.get(key[0])), row.get(key[1], 0)): row for _, row in runs.iter_jsonl(path)}


def _compare_rows(a: dict[tuple, dict], b: dict[tuple, dict], fields: tuple[str, ...]) -> str:
    common = set(a) & set(b)
    parts = [f"{len(common)} in both"]
    for name in fields:
        parts.append(f"{sum(a[k].get(name) != b[k].get(name) for k in common)} differ in {name}")
    if only := len(set(a) - set(b)):
        parts.append(f"{only} only in A")
    if only := len(set(b) - set(a)):
        parts.append(f"{only} only in B")
    return ", ".join(parts)


def _sample_outputs(a: Path, b: Path) -> list[str]:
    lines = []
    for name in ("samples.raw.jsonl", "samples.jsonl"):
        rows_a, rows_b = _rows(a / name, ("id", "sample_index")), _rows(b / name, ("id", "sample_index"))
        lines.append(f"{name}: {_compare_rows(rows_a, rows_b, ('completion',))}")
    return lines


def _train_outputs(a: Path, b: Path) -> list[str]:
    if not (a / "adapter").is_dir() or not (b / "adapter").is_dir():
        return ["adapter/: missing in " + ("A" if not (a / "adapter").is_dir() else "B")]
    files_a = {p.relative_to(a / "adapter"): runs.hash_file(p) for p in (a / "adapter").rglob("*") if p.is_file()}
    files_b = {p.relative_to(b / "adapter"): runs.hash_file(p) for p in (b / "adapter").rglob("*") if p.is_file()}
    differ = sorted(str(name) for name in set(files_a) | set(files_b) if files_a.get(name) != files_b.get(name))
    return [
        f"adapter/: {len(differ)} of {len(set(files_a) | set(files_b))} files differ"
        + (f" ({', '.join(differ)})" if differ else "")
    ]


def _results_dirs(run: Path) -> list[Path]:
    """Where a run's evaluation results files are: its ``eval/`` and the shared base directory, if any."""
    dirs = [run / "eval"]
    manifest = artifacts.load_manifest(run, "eval")
    base_dir = manifest.counts.get("base_dir") if manifest else None
    if base_dir and Path(base_dir) != run / "eval":
        dirs.append(Path(base_dir))
    return dirs


def _results_files(run: Path) -> dict[str, Path]:
    found = {}
    for root in _results_dirs(run):
        for path in sorted(root.glob("*/*.jsonl")):
            found.setdefault(f"{path.parent.name}/{path.name}", path)
    return found


def _eval_outputs(a: Path, b: Path) -> list[str]:
    files_a, files_b = _results_files(a), _results_files(b)
    lines = []
    for name in sorted(set(files_a) | set(files_b)):
        if name not in files_a or name not in files_b:
            lines.append(f"{name}: only in {'A' if name in files_a else 'B'}")
            continue
        rows_a, rows_b = (
            _rows(files_a[name], ("task_id", "sample_index")),
            _rows(files_b[name], ("task_id", "sample_index")),
        )
        lines.append(f"{name}: {_compare_rows(rows_a, rows_b, ('completion', 'passed'))}")
    return lines


def _promote_outputs(a: Path, b: Path) -> list[str]:
    decisions = []
    for run in (a, b):
        path = run / "promotion.json"
        decisions.append(artifacts.Decision.load(path) if path.is_file() else None)
    if None in decisions:
        return []
    da, db = decisions
    verdict = lambda d: f"promoted as {d.name}:{d.version}" if d.promoted else "not promoted"  # noqa: E731
    changed = len(set(da.reasons) ^ set(db.reasons))
    return [f"decision: A {verdict(da)}, B {verdict(db)}; {changed} reason lines differ"]


OUTPUTS = {"sample": _sample_outputs, "train": _train_outputs, "eval": _eval_outputs, "promote": _promote_outputs}


def diff(a: Path, b: Path) -> list[StageDiff]:
    """Per stage, what differs between run directories ``a`` and ``b``."""
    for run in (a, b):
        if not (run / runs.MANIFESTS).is_dir():
            raise FileNotFoundError(
                f"{run}: not a run directory (no {runs.MANIFESTS}/); pass two directories under runs_dir"
            )
    found = []
    for stage in STAGES:
        ma, mb = artifacts.load_manifest(a, stage), artifacts.load_manifest(b, stage)
        entry = StageDiff(stage, (ma is not None, mb is not None))
        if ma is not None and mb is not None:
            entry.same_key = ma.key == mb.key
            entry.shared_from = (ma.shared_from, mb.shared_from)
            entry.params = _changed(ma.params, mb.params)
            entry.inputs = sorted(n for n in set(ma.inputs) | set(mb.inputs) if ma.inputs.get(n) != mb.inputs.get(n))
            entry.outputs = OUTPUTS[stage](a, b)
        found.append(entry)
    return found


def render(a: Path, b: Path, stages: list[StageDiff]) -> str:
    """The text ``ssd diff`` prints."""
    lines = [f"A: {a}", f"B: {b}"]
    for entry in stages:
        lines.append("")
        if not all(entry.finished):
            where = " and ".join(run for run, done in zip("AB", entry.finished, strict=True) if not done)
            lines.append(f"{entry.stage}: not finished in {where}")
            continue
        shared = [
            f"{run} took it from run {donor}" for run, donor in zip("AB", entry.shared_from, strict=True) if donor
        ]
        same = "same key (same parameters and inputs)" if entry.same_key else "different key"
        lines.append(f"{entry.stage}: {same}" + (f"; {'; '.join(shared)}" if shared else ""))
        for name, va, vb in entry.params:
            lines.append(f"  param {name}: A {json.dumps(va, default=str)} | B {json.dumps(vb, default=str)}")
        for name in entry.inputs:
            lines.append(f"  input {name}: different content")
        lines.extend(f"  {line}" for line in entry.outputs)
    return "\n".join(lines) + "\n"
