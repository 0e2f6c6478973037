"""The pre-forked sandbox server: every program still gets its own fresh, limited process.

tests/unit/test_sandbox.py covers the containment layers; these tests cover what a shared server
could break: state shared between programs, descriptors inherited from the server, the
program's reach over its own verdict files, per-program limits, and recovery."""

import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.evaluation.sandbox.server import Server, execute, execute_many, layers


def test_each_program_is_a_new_process_with_fresh_randomness():
    """Six processes (their start times differ; in a PID namespace every program is PID 2)."""
    program = (
        "import os, random\nstart = open('/proc/self/stat').read().split()[21]\n"
        "raise SystemExit(f'{os.getpid()}.{start}.{os.times().elapsed} {random.random()}')\n"
    )
    verdicts = execute_many([program] * 6, timeout_s=10, workers=2)
    seen = [v.detail.split()[-2:] for v in verdicts]
    assert all(not v.passed for v in verdicts)
    assert len({value for _, value in seen}) == 6  # random is seeded per program, not by the server


def test_state_does_not_leak_between_programs():
    set_state = "import sys, builtins\nsys.modules['json'] = None\nbuiltins.len = None\nsys.setrecursionlimit(50)\n"
    check_state = "import json, sys\nassert len([1]) == 1\nassert sys.getrecursionlimit() == 1000\n"
    verdicts = execute_many([set_state, check_state, check_state], timeout_s=10, workers=1)
    assert [v.passed for v in verdicts] == [True, True, True], [v.detail for v in verdicts]


def test_no_descriptors_stdin_or_environment_from_the_server():
    # the scratch /tmp starts empty, except for the read-only path to an interpreter installed under /tmp
    prefix = Path(sys.prefix).resolve().parts
    shown = [prefix[2]] if prefix[:2] == ("/", "tmp") and len(prefix) > 2 else []
    program = f"""
import os, sys
fds = sorted(int(f) for f in os.listdir('/proc/self/fd'))
assert fds[:3] == [0, 1, 2] and len(fds) <= 4, fds   # 0-2 and the listdir handle only
assert sys.stdin.read() == ''
assert os.readlink('/proc/self/fd/0') == '/dev/null'
assert set(os.environ) <= {{'PATH', 'LANG', 'HOME', 'LC_CTYPE'}}, sorted(os.environ)
assert os.getcwd() == os.environ['HOME'] and os.listdir('.') == {shown!r}, os.listdir('.')
assert sys.flags.isolated == 1
"""
    verdict = execute(program)
    assert verdict.passed, verdict.detail


def test_stdin_reaches_the_program_and_no_path_leads_to_it():
    """The caller's stdin is readable on fd 0 after the user switch (and inside the box), but its
    file is gone before the program runs: neither ``../stdin`` nor fd 0's link reopens it. The
    program's stdout comes back without the nonce."""
    program = """
import os, sys
link = os.readlink('/proc/self/fd/0')
assert link.endswith('(deleted)') or not os.path.exists(link), link
for path in ('../stdin', link.removesuffix(' (deleted)'), '/proc/self/fd/0'):
    try:
        open(path).read()
    except OSError:
        continue
    raise SystemExit('reopened stdin by path: ' + path)
sys.stdout.write(sys.stdin.read().upper())
"""
    verdicts = execute_many([program, program], stdin=["secret tests\n", "other \u00e9"], timeout_s=10, workers=2)
    assert [v.passed for v in verdicts] == [True, True], [v.detail for v in verdicts]
    assert [v.output for v in verdicts] == ["SECRET TESTS\n", "OTHER \u00c9"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the user switch is only active as root")
def test_program_cannot_touch_its_verdict_files():
    """stdout/stderr and the program's source live one level up, owned by root (in a box: not
    visible at all, and the box's root is read-only)."""
    program = """
import os
for name in ('../stdout', '../program.py'):
    for attempt in (lambda: open(name, 'w'), lambda: os.unlink(name), lambda: os.rename(name, 'x')):
        try:
            attempt()
        except OSError:  # permission denied, no such file, read-only file system
            continue
        raise SystemExit('could modify ' + name)
try:
    open('../forged', 'w')
    raise SystemExit('could create a file beside stdout')
except OSError:
    pass
assert os.getuid() != 0 and os.getgroups() == []
"""
    verdict = execute(program)
    assert verdict.passed, verdict.detail


@pytest.mark.skipif(os.geteuid() != 0, reason="the user switch is only active as root")
def test_program_cannot_signal_the_server_and_the_server_keeps_serving():
    kill_server = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
    verdicts = execute_many([kill_server, "pass\n", "pass\n"], timeout_s=10, workers=1)
    assert "PermissionError" in verdicts[0].detail
    assert [v.passed for v in verdicts[1:]] == [True, True]


def test_per_program_timeouts():
    sleep = "import time\ntime.sleep(2)\n"
    start = time.time()
    verdicts = execute_many([sleep, sleep], timeout_s=[0.5, 5], workers=2)
    assert [v.status for v in verdicts] == ["timeout", "passed"]
    assert time.time() - start < 5
    with pytest.raises(ValueError, match="2 timeouts for 1 programs"):
        execute_many(["pass"], timeout_s=[1, 2], workers=1)


def test_output_order_and_limits_per_program():
    programs = [f"raise SystemExit('program {i}')" if i % 2 else "pass" for i in range(10)]
    verdicts = execute_many(programs, timeout_s=10, workers=2)
    for i, v in enumerate(verdicts):
        assert v.passed == (i % 2 == 0)
        assert i % 2 == 0 or re.search(rf"program {i}$", v.detail)


def test_non_daemon_threads_are_waited_for():
    """As at interpreter exit: a thread still running when the program's code ends is waited
    for before the verdict, and one that never ends makes it a timeout."""
    late = "import threading, time\nt = threading.Thread(target=lambda: time.sleep(0.3))\nt.start()\n"
    forever = "import threading, time\nthreading.Thread(target=lambda: time.sleep(60)).start()\n"
    verdicts = execute_many([late, forever], timeout_s=2, workers=2)
    assert [v.status for v in verdicts] == ["passed", "timeout"]


def test_programs_run_under_the_projects_interpreter_with_numpy():
    found = layers()
    assert found.python == sys.executable
    verdict = execute(f"import sys, numpy\nassert sys.executable == {sys.executable!r}, sys.executable\n")
    assert verdict.passed, verdict.detail


def test_a_dead_server_is_replaced():
    """Between programs: restarted before the next one (nothing of it ran). During one: that
    program fails with the reason, its process group is killed, and the next one runs."""
    server = Server()
    try:
        assert server.execute("pass\n", 10, 2048, "x").passed
        os.kill(server._proc.pid, signal.SIGKILL)
        server._proc.wait()
        assert server.execute("pass\n", 10, 2048, "x").passed

        marker = f"/tmp/ssd-sandbox-orphan-{os.getpid()}"
        program = f"import os, time\ntime.sleep(1.5)\nopen({marker!r}, 'w').write(str(os.getpid()))\n"
        threading.Timer(0.5, os.kill, (server._proc.pid, signal.SIGKILL)).start()
        verdict = server.execute(program, 10, 2048, "x")
        assert not verdict.passed and verdict.detail.startswith("sandbox server failed")
        time.sleep(2)
        assert not os.path.exists(marker)  # the program was killed with the server's failure
        assert server.execute("pass\n", 10, 2048, "x").passed
    finally:
        server.close()
