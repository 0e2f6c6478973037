"""The GPU check cannot rot: bench/gpu_train.py runs on CPU at full width, and bench/device.sh's
offline set-up installs the carried wheels with no package index."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.mark.slow
def test_gpu_train_runs_one_full_width_moe_layer_on_cpu(tmp_path):
    """One decoder layer of the real 26B-A4B width (hidden 2816, 128 experts x 704, experts in the
    LoRA), the recipe's LoRA and loss path, two optimizer steps. The output layer is cut to a 16k
    vocabulary: at 262k, CPU matrix products through it alone take minutes. Measured 2026-11-29 on
    the 2-core machine, these arguments at load 3-7: about 130 s (build 28 s, 49 s a step), 10 GiB
    peak RSS; at load 7-10 with --seq 64 it took 560 s."""
    out = tmp_path / "gpu_train.json"
    args = ["--device", "cpu", "--layers", "1", "--seq", "32", "--vocab", "16384", "--steps", "2", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "bench/gpu_train.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    shape = result["shape"]
    assert (shape["hidden"], shape["experts"], shape["moe_intermediate"], shape["layers"]) == (2816, 128, 704, 1)
    assert shape["loss_path"] == "supervised" and shape["gradient_checkpointing"]
    assert result["imported_trl"] is False  # the GPU image has no TRL
    assert len(result["steps"]) == 2 and all(s["supervised_tokens"] == 32 - 32 // 8 for s in result["steps"])
    assert all(0 < s["loss"] < 20 for s in result["steps"])
    assert result["expert_lora_trained"] and all(result["expert_lora_trained"].values())
    assert result["tokens_per_s"] > 0 and result["build_s"] > 0
    components = {row["component"]: row for row in result["memory"]}
    assert {"weights", "LoRA parameters", "AdamW states (m, v)", "peak allocated: loss head"} <= set(components)
    assert all(row["plan_gib"] > 0 and row["measured_gib"] is None for row in components.values())  # CPU: no allocator
    # the plan is the one for this shape: r=16 LoRA of one layer, fp32 on CPU
    assert result["plan"]["trainable_parameters"] == result["parameters"]["trainable"]
    assert result["plan"]["loss_path"] == "supervised" and result["plan"]["seq_len"] == 32
    assert "measured GiB" in proc.stdout


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
    env = {**os.environ, "PYTHON": sys.executable}
    if python312:
        carried = ROOT / ".whl"
        if carried.is_dir() and list(carried.glob("*.whl")):
            shutil.copytree(carried, wheels)
        else:
            fetch = subprocess.run(
                ["bench/fetch_wheels.sh", str(wheels)], cwd=ROOT, env=env, capture_output=True, text=True
            )
            assert fetch.returncode == 0, fetch.stderr[-2000:]
        subprocess.run([python312, "-m", "venv", str(tmp_path / "venv")], check=True)
        python = str(tmp_path / "venv" / "bin" / "python")
    else:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        fetch = subprocess.run(
            ["bench/fetch_wheels.sh", str(wheels)],
            cwd=ROOT,
            env={**env, "PY_VERSION": version},
            capture_output=True,
            text=True,
        )
        assert fetch.returncode == 0, fetch.stderr[-2000:]
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
