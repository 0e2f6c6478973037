"""The adapter registry: versions, the latest pointer, crash safety with real processes, the CLI."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from filelock import FileLock

from pipeline import cli, runs
from pipeline.deploy import registry

NAME = "coder"


def _adapter(root: Path, tag: str, files: int = 4, size: int = 256 * 1024) -> Path:
    """A PEFT-shaped adapter directory whose bytes depend on ``tag``."""
    path = root / f"adapter-{tag}"
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "tag": tag}))
    for i in range(files):
        (path / f"shard-{i}.bin").write_bytes((tag.encode() + bytes([i])) * (size // (len(tag) + 1)))
    return path


def _grid_row(t: float, base: float, adapter: float) -> dict:
    """One T_eval row of eval/metrics.json (artifacts.GridRow) with these pass@1 values."""
    summary = {"problems": 164, "samples": 164, "passed_samples": 0, "finish_rate": 0.9, "mean_completion_tokens": 90.0}
    return {
        "temperature": t,
        "base": {"pass@1": base, **summary},
        "adapter": {"pass@1": adapter, **summary},
        "delta": {"value": adapter - base, "ci_low": adapter - base - 0.01, "ci_high": adapter - base + 0.01},
    }


def _lineage(run_id: str) -> dict:
    return {
        "run_id": run_id,
        "base_model": {"id": "embedded:gemma3-270m", "revision": None},
        "recipe": {"name": "ssd", "sampling": {"temperature": 1.6}},
        "samples_sha256": "ab" * 32,
        "metrics": {
            "target": "humaneval",
            "adapter_serving": "lora",
            "benchmarks": {
                "humaneval": {
                    "grid": [_grid_row(0.7, 0.03, 0.04), _grid_row(1.0, 0.02, 0.05)],
                    "base_best": {"temperature": 0.7, "pass@1": 0.03},
                    "adapter_best": {"temperature": 1.0, "pass@1": 0.05},
                    "delta": {"value": 0.02, "ci_low": 0.005, "ci_high": 0.04, "resamples": 10000, "seed": 0},
                    "identical_completions": 0,
                }
            },
        },
        "decision": {"promoted": True, "reasons": ["pass: humaneval pass@1 delta +0.0200"]},
    }


def _state(registry_dir: Path) -> dict[str, str]:
    """Every file a reader can see (not in-progress promotions, not the lock), with its hash."""
    return {
        str(p.relative_to(registry_dir)): runs.hash_file(p)
        for p in sorted(registry_dir.rglob("*"))
        if p.is_file()
        and p.name != registry.LOCK
        and not any(part.startswith(".incoming-") for part in p.relative_to(registry_dir).parts)
    }


def _incoming(registry_dir: Path) -> list[Path]:
    return sorted((registry_dir / NAME).glob(".incoming-*"))


def test_promote_writes_version_card_manifest_and_latest(tmp_path):
    reg = tmp_path / "registry"
    source = _adapter(tmp_path, "a")
    assert registry.promote(reg, NAME, source, _lineage("run-a")) == "v0001"
    version_dir = reg / NAME / "v0001"
    assert (reg / NAME / "latest").read_text() == "v0001\n"
    assert runs.hash_path(version_dir / "adapter") == runs.hash_path(source)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    assert manifest["name"] == NAME and manifest["version"] == "v0001" and manifest["previous_latest"] is None
    assert manifest["adapter_sha256"] == runs.hash_path(source)
    assert manifest["base_model"]["id"] == "embedded:gemma3-270m" and manifest["samples_sha256"] == "ab" * 32
    assert manifest["recipe"]["sampling"]["temperature"] == 1.6
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert manifest["code_version"]["git_commit"] == head
    assert manifest["promoted_at"].endswith("+00:00")
    card = (version_dir / "README.md").read_text()
    assert "# coder v0001" in card and "`ssd resolve embedded:gemma3-270m` prints its local directory" in card
    assert "| humaneval | 0.0300 (0.7) | 0.0500 (1.0) | +0.0200 [+0.0050, +0.0400] |" in card
    assert "pass: humaneval pass@1 delta +0.0200" in card and "temperature: 1.6" in card
    assert registry.promote(reg, NAME, _adapter(tmp_path, "b"), _lineage("run-b")) == "v0002"
    assert json.loads((reg / NAME / "v0002" / "manifest.json").read_text())["previous_latest"] == "v0001"
    assert registry.resolve(reg, NAME) == reg / NAME / "v0002" / "adapter"
    assert [v["version"] for v in registry.list_versions(reg, NAME)] == ["v0001", "v0002"]
    assert registry.list_names(reg) == [{"name": NAME, "latest": "v0002", "versions": 2}]
    assert _incoming(reg) == []


def test_promote_rejects_bad_input_and_writes_nothing(tmp_path):
    reg = tmp_path / "registry"
    not_adapter = tmp_path / "empty"
    not_adapter.mkdir()
    with pytest.raises(registry.RegistryError, match="no adapter_config.json"):
        registry.promote(reg, NAME, not_adapter, _lineage("r"))
    lineage = _lineage("r")
    del lineage["samples_sha256"], lineage["decision"]
    with pytest.raises(registry.RegistryError, match="lacks samples_sha256, decision"):
        registry.promote(reg, NAME, _adapter(tmp_path, "a"), lineage)
    with pytest.raises(registry.RegistryError, match="registry name '../escape' is invalid"):
        registry.promote(reg, "../escape", _adapter(tmp_path, "b"), _lineage("r"))
    assert not reg.exists()


CHILD = r"""
import json, shutil, sys, time
from pipeline import runs
from pipeline.deploy import registry

registry_dir, adapter_dir, pause, lineage = sys.argv[1:5]
if pause == "copying":  # stop after two files of the adapter were copied
    real_copyfile, copied = shutil.copyfile, []
    def copyfile(src, dst, **kwargs):
        out = real_copyfile(src, dst, **kwargs)
        copied.append(dst)
        if len(copied) == 2:
            print("PAUSED", flush=True)
            time.sleep(600)
        return out
    shutil.copyfile = copyfile
elif pause == "locked":  # stop holding the lock, manifest written, before the rename
    real_write = runs.atomic_write_json
    def atomic_write_json(path, obj):
        real_write(path, obj)
        if path.name == "manifest.json":
            print("PAUSED", flush=True)
            time.sleep(600)
    runs.atomic_write_json = atomic_write_json
print(registry.promote(registry_dir, "coder", adapter_dir, json.loads(lineage)), flush=True)
"""


def _wait_for_line(proc: subprocess.Popen, expected: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            line = proc.stdout.readline()
            if line.strip() == expected:
                return
            if not line and proc.poll() is not None:
                break
    proc.kill()
    raise AssertionError(f"child never printed {expected!r}; stderr: {proc.stderr.read()}")


@pytest.mark.parametrize("pause", ["copying", "locked"])
def test_promotion_killed_midway_leaves_registry_as_it_was(tmp_path, pause):
    reg = tmp_path / "registry"
    registry.promote(reg, NAME, _adapter(tmp_path, "first"), _lineage("run-1"))
    before = _state(reg)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(reg),
            str(_adapter(tmp_path, "killed", files=6)),
            pause,
            json.dumps(_lineage("run-2")),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_line(proc, "PAUSED")
    (partial,) = _incoming(reg)  # the killed promotion really was half-way
    copied = [p for p in (partial / "adapter").iterdir() if p.is_file()]
    assert len(copied) == (2 if pause == "copying" else 7)  # two of the seven files, or all of them
    assert (partial / "manifest.json").is_file() == (pause == "locked")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()

    assert proc.returncode == -signal.SIGKILL
    assert _state(reg) == before
    assert registry.list_names(reg) == [{"name": NAME, "latest": "v0001", "versions": 1}]
    assert registry.resolve(reg, NAME) == reg / NAME / "v0001" / "adapter"
    with FileLock(str(reg / NAME / registry.LOCK), timeout=2):  # the dead process holds no lock
        pass
    assert registry.promote(reg, NAME, _adapter(tmp_path, "after"), _lineage("run-3")) == "v0002"
    assert _incoming(reg) == []  # the killed promotion's leftovers were cleaned up
    assert registry.show(reg, NAME)["run_id"] == "run-3"


CONCURRENT = r"""
import json, sys, time
from pathlib import Path
from pipeline.deploy import registry

registry_dir, adapter_dir, go, tag, count = sys.argv[1:6]
while not Path(go).exists():
    time.sleep(0.005)
for i in range(int(count)):
    lineage = {"run_id": f"{tag}-{i}", "base_model": {"id": "m"}, "recipe": {}, "samples_sha256": tag,
               "metrics": {}, "decision": {"promoted": True, "reasons": []}}
    print(registry.promote(registry_dir, "coder", adapter_dir, lineage), flush=True)
"""


def test_concurrent_promotions_from_two_processes(tmp_path):
    reg = tmp_path / "registry"
    go = tmp_path / "go"
    sources = {tag: _adapter(tmp_path, tag, files=8) for tag in ("left", "right")}
    procs = {
        tag: subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(reg), str(src), str(go), tag, "4"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag, src in sources.items()
    }
    time.sleep(1.0)  # both are importing and then waiting for the start signal
    go.touch()
    printed = {}
    for tag, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        printed[tag] = out.split()

    allocated = printed["left"] + printed["right"]
    assert sorted(allocated) == [f"v{i:04d}" for i in range(1, 9)]  # all landed, no number twice
    rows = registry.list_versions(reg, NAME)
    assert [r["version"] for r in rows] == sorted(allocated)
    assert {r["run_id"] for r in rows} == {f"{t}-{i}" for t in ("left", "right") for i in range(4)}
    previous = None
    for row in rows:
        manifest = registry.show(reg, NAME, row["version"])
        tag = manifest["samples_sha256"]
        assert manifest["version"] in printed[tag]  # the process that printed it wrote it
        assert (
            runs.hash_path(Path(row["path"]) / "adapter") == runs.hash_path(sources[tag]) == manifest["adapter_sha256"]
        )
        assert manifest["previous_latest"] == previous  # promotions were serialised
        previous = manifest["version"]
    assert (reg / NAME / "latest").read_text() == "v0008\n"
    assert _incoming(reg) == []


def test_rollback_and_resolve(tmp_path):
    reg = tmp_path / "registry"
    for tag in ("a", "b", "c"):
        registry.promote(reg, NAME, _adapter(tmp_path, tag), _lineage(f"run-{tag}"))
    assert registry.rollback(reg, NAME) == "v0002"
    assert registry.resolve(reg, NAME) == reg / NAME / "v0002" / "adapter"
    assert [v["latest"] for v in registry.list_versions(reg, NAME)] == [False, True, False]
    assert registry.rollback(reg, NAME) == "v0001"
    with pytest.raises(registry.RegistryError, match="latest is v0001, its oldest version; nothing to roll back to"):
        registry.rollback(reg, NAME)
    assert registry.rollback(reg, NAME, to_version="3") == "v0003"
    assert registry.show(reg, NAME)["run_id"] == "run-c"
    assert registry.resolve(reg, NAME, "v1") == reg / NAME / "v0001" / "adapter"
    # a promotion after a rollback still gets a new number and becomes latest
    assert registry.promote(reg, NAME, _adapter(tmp_path, "d"), _lineage("run-d")) == "v0004"
    assert registry.show(reg, NAME)["previous_latest"] == "v0003"


def test_unknown_name_and_version_list_what_exists(tmp_path):
    reg = tmp_path / "registry"
    with pytest.raises(registry.RegistryError, match="no adapter named 'coder' in .* holds no adapters yet"):
        registry.resolve(reg, NAME)
    registry.promote(reg, NAME, _adapter(tmp_path, "a"), _lineage("run-a"))
    registry.promote(reg, "other", _adapter(tmp_path, "b"), _lineage("run-b"))
    with pytest.raises(registry.RegistryError, match=r"no adapter named 'codr' .*names there: coder, other"):
        registry.show(reg, "codr")
    with pytest.raises(registry.RegistryError, match="'coder' has no version v0007; versions of 'coder': v0001"):
        registry.resolve(reg, NAME, "v0007")
    with pytest.raises(registry.RegistryError, match="'coder' has no version v0002; versions of 'coder': v0001"):
        registry.rollback(reg, NAME, to_version="v0002")
    with pytest.raises(registry.RegistryError, match="version 'newest' is invalid"):
        registry.show(reg, NAME, "newest")
    (reg / NAME / "latest").write_text("v0009\n")
    with pytest.raises(registry.RegistryError, match=r"latest names v0009, which does not exist.*rollback coder --to"):
        registry.resolve(reg, NAME)


def test_cli(tmp_path, capsys):
    reg = tmp_path / "registry"
    for tag in ("a", "b"):
        registry.promote(reg, NAME, _adapter(tmp_path, tag), _lineage(f"run-{tag}"))
    d = ["--registry-dir", str(reg)]

    assert cli.main(["registry", "list", *d, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": NAME, "latest": "v0002", "versions": 2}]
    assert cli.main(["registry", "list", NAME, *d]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["VERSION", "LATEST"] and out[2].split()[:2] == ["v0002", "*"]
    assert "humaneval 0.0300 -> 0.0500 [+0.0050, +0.0400]" in out[1]
    assert cli.main(["registry", "show", f"{NAME}:v0001", *d, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == "v0001" and shown["latest"] is False and shown["run_id"] == "run-a"
    assert cli.main(["registry", "show", NAME, *d]) == 0
    assert "coder v0002 (latest)" in capsys.readouterr().out

    assert cli.main(["registry", "rollback", NAME, *d, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"name": NAME, "previous": "v0002", "latest": "v0001"}
    assert cli.main(["registry", "rollback", NAME, "--to", "v0002", *d]) == 0
    assert capsys.readouterr().out.strip() == "coder: latest v0001 -> v0002"

    assert cli.main(["registry", "show", "nope", *d]) == cli.EXIT_INVALID
    assert "names there: coder" in capsys.readouterr().err
    assert cli.main(["registry", "show", f"{NAME}:v0005", *d]) == cli.EXIT_INVALID
    assert "versions of 'coder': v0001, v0002" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.main(["registry", "frobnicate"])
    assert exited.value.code == cli.EXIT_INVALID
    assert "invalid choice" in capsys.readouterr().err
    assert cli.main(["registry", "list", "--registry-dir", str(tmp_path / "none")]) == 0
    assert "no adapters in" in capsys.readouterr().out


# --- the champion a new adapter must beat ----------------------------------------------------


def test_the_champion_is_latest_and_a_promoted_adapter_keeps_the_one_it_was_judged_against(tmp_path):
    reg = tmp_path / "reg"
    first, second, third = (_adapter(tmp_path, tag) for tag in ("one", "two", "three"))
    sha = {p: runs.hash_path(p) for p in (first, second, third)}
    assert registry.champion(reg, NAME, sha[first]) is None  # a first cycle: nothing to beat
    registry.promote(reg, NAME, first, _lineage("r1"), expect_latest=None)
    found = registry.champion(reg, NAME, sha[second])
    assert (found.version, found.adapter_sha256, found.base_model) == (
        "v0001",
        sha[first],
        ("embedded:gemma3-270m", None),
    )
    assert found.adapter == reg / NAME / "v0001" / "adapter"
    registry.promote(reg, NAME, second, _lineage("r2"), expect_latest="v0001")
    # the second run, rerun after its promotion, still sees the version it was judged against
    assert registry.champion(reg, NAME, sha[second]).version == "v0001"
    assert registry.champion(reg, NAME, sha[third]).version == "v0002"
    assert registry.champion(reg, NAME, sha[first]).version == "v0002"  # an older adapter meets the current one
    registry.rollback(reg, NAME)  # latest -> v0001: the first run's own adapter
    assert registry.champion(reg, NAME, sha[first]) is None  # judged against nothing when it was promoted


def test_a_promotion_judged_against_a_moved_latest_adds_nothing(tmp_path):
    reg = tmp_path / "reg"
    registry.promote(reg, NAME, _adapter(tmp_path, "one"), _lineage("r1"))
    registry.promote(reg, NAME, _adapter(tmp_path, "two"), _lineage("r2"))
    before = _state(reg)
    with pytest.raises(registry.ChampionMovedError, match=r"names v0002, but this adapter was judged against v0001"):
        registry.promote(reg, NAME, _adapter(tmp_path, "three"), _lineage("r3"), expect_latest="v0001")
    with pytest.raises(registry.ChampionMovedError, match="judged against no champion"):
        registry.promote(reg, NAME, _adapter(tmp_path, "four"), _lineage("r4"), expect_latest=None)
    assert _state(reg) == before and not _incoming(reg)
    assert registry.promote(reg, NAME, _adapter(tmp_path, "five"), _lineage("r5"), expect_latest="v0002") == "v0003"
