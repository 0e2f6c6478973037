"""The adapter registry: numbered, immutable versions of promoted adapters and a movable ``latest``.

Layout under ``registry_dir``::

    <name>/
      .lock               held while a version number is allocated or ``latest`` moves
      latest              one line, e.g. ``v0003``: the version consumers should serve
      v0001/              immutable once renamed into place
        adapter/          the PEFT adapter as the train stage wrote it
        README.md         model card: what it is, how it scored, how to load it
        manifest.json     lineage: base model and revision, recipe, samples and adapter hashes,
                          code version, metrics, gate decision, timestamps
      v0002/ ...
      .incoming-*/        a promotion in progress (or killed); never read, removed when stale

Why versions and not run ids: a rerun of the same run id (a weekly job retried) must not
overwrite what is being served, and ``rollback`` needs an order. A promotion copies the
adapter into a hidden directory first (the slow part, outside the lock), then under the lock
allocates the next number, writes the manifest and card, renames the directory into place
and rewrites ``latest`` through a temporary file. A promotion killed at any point leaves the
versions and ``latest`` as they were, except in the instant between the rename and the
pointer write, where it leaves a complete version that ``latest`` does not name yet (what a
rollback also leaves). Readers take no lock: every file they read is replaced by rename.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout
from pydantic import ValidationError

from pipeline import runs
from pipeline.artifacts import Decision, EvalMetrics
from pipeline.report.format import Table, delta, interval, num

log = logging.getLogger(__name__)

LATEST = "latest"
LOCK = ".lock"
ADAPTER = "adapter"
MANIFEST = "manifest.json"
CARD = "README.md"
DEFAULT_REGISTRY_DIR = "checkpoints/registry"
LINEAGE_KEYS = ("base_model", "recipe", "samples_sha256", "metrics", "decision")
LOCK_TIMEOUT_S = 300.0

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION = re.compile(r"^v(\d{4,})$")
_INCOMING = re.compile(r"^\.incoming-(\d+)-([0-9a-f]{8})-")
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


class RegistryError(Exception):
    """A name, version or input the registry cannot use; the message says what exists."""


class ChampionMovedError(RegistryError):
    """``latest`` moved between the evaluation and the promotion of an adapter."""


def _check_name(name: str) -> None:
    if not _NAME.match(name or ""):
        raise RegistryError(
            f"registry name {name!r} is invalid: use letters, digits, '.', '_' or '-' (like a recipe name)"
        )


def _version_label(text: str) -> str:
    """``3``, ``v3`` and ``v0003`` all mean ``v0003``: people type the short forms."""
    match = re.fullmatch(r"v?(\d+)", text.strip())
    if not match:
        raise RegistryError(f"version {text!r} is invalid: expected e.g. v0003 (or 3)")
    return f"v{int(match.group(1)):04d}"


def _versions(name_dir: Path) -> list[str]:
    """Versions in promotion order; only fully renamed ``vNNNN`` directories count."""
    if not name_dir.is_dir():
        return []
    found = [p.name for p in name_dir.iterdir() if p.is_dir() and _VERSION.match(p.name)]
    return sorted(found, key=lambda v: int(v[1:]))


def _read_latest(name_dir: Path) -> str | None:
    path = name_dir / LATEST
    if not path.is_file():
        return None
    try:
        return path.read_bytes().decode("utf-8").strip() or None
    except (OSError, UnicodeDecodeError) as exc:
        problem = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"cannot be read ({exc.strerror})"
        raise RegistryError(
            f"{path}: {problem}; it should hold one version such as v0003: repoint it with "
            f"`ssd registry rollback {name_dir.name} --to VERSION`"
        ) from None


def _read_manifest(version_dir: Path) -> dict[str, Any]:
    """A version's ``manifest.json``; a missing, unreadable or corrupt one is a ``RegistryError`` naming it."""
    path = version_dir / MANIFEST
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        problem = "missing"
    except OSError as exc:
        problem = f"cannot be read ({exc.strerror})"
    except UnicodeDecodeError:
        problem = "not UTF-8 text"
    except json.JSONDecodeError as exc:
        problem = f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    else:
        if isinstance(manifest, dict):
            return manifest
        problem = f"not a JSON object (a {type(manifest).__name__})"
    raise RegistryError(
        f"{path}: {problem}; a version's lineage is written once at promotion: restore the file from a backup, "
        f"or point latest at another version with `ssd registry rollback {version_dir.parent.name} --to VERSION`"
    )


def _names(registry_dir: Path) -> list[str]:
    if not registry_dir.is_dir():
        return []
    return sorted(p.name for p in registry_dir.iterdir() if p.is_dir() and _NAME.match(p.name) and _versions(p))


def _name_dir(registry_dir: Path, name: str) -> Path:
    """The directory of an existing name, or an error listing the names there are."""
    _check_name(name)
    name_dir = Path(registry_dir) / name
    if not _versions(name_dir):
        names = _names(Path(registry_dir))
        have = f"names there: {', '.join(names)}" if names else "it holds no adapters yet"
        raise RegistryError(f"no adapter named {name!r} in {registry_dir} ({have}); see `ssd registry list`")
    return name_dir


def _pick(registry_dir: Path, name: str, version: str | None) -> tuple[Path, str, str | None]:
    """(name dir, chosen version, latest): ``version`` or else what ``latest`` names."""
    name_dir = _name_dir(registry_dir, name)
    versions = _versions(name_dir)
    latest = _read_latest(name_dir)
    if version is None or version == LATEST:
        if latest is None:
            raise RegistryError(
                f"{name_dir / LATEST} is missing; pick a version ({', '.join(versions)}) or point latest at one "
                f"with `ssd registry rollback {name} --to VERSION`"
            )
        chosen = latest
    else:
        chosen = _version_label(version)
    if chosen not in versions and chosen == latest:
        raise RegistryError(
            f"{name_dir / LATEST} names {chosen}, which does not exist; versions of {name!r}: {', '.join(versions)}; "
            f"repoint it with `ssd registry rollback {name} --to VERSION`"
        )
    if chosen not in versions:
        raise RegistryError(f"{name!r} has no version {chosen}; versions of {name!r}: {', '.join(versions)}")
    return name_dir, chosen, latest


def code_version() -> dict[str, Any]:
    """The pipeline's git commit (and whether the tree had local edits), else its package version.

    Read-only git calls (``--no-optional-locks``); None where git or the checkout is absent,
    as in an installed wheel.
    """
    root = Path(__file__).resolve().parent.parent
    commit = dirty = None
    try:
        git = ["git", "--no-optional-locks", "-C", str(root)]
        commit = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        dirty = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        log.info("registry: no git checkout at %s; recording the package version only", root)
    try:
        package = importlib.metadata.version("ssd-pipeline")
    except importlib.metadata.PackageNotFoundError:
        package = None
    return {"git_commit": commit, "git_dirty": dirty, "package_version": package}


def _metrics(metrics: Any) -> EvalMetrics | None:
    """The lineage's ``metrics`` as the eval stage wrote them; None for an empty or foreign record.

    A version's manifest is immutable and may predate the current schema: its card and
    headline then say "not recorded" rather than making the whole registry unreadable.
    """
    try:
        return EvalMetrics.model_validate(metrics)
    except ValidationError:
        return None


def headline(metrics: Any) -> dict[str, Any] | None:
    """Target benchmark, best pass@1 of base and adapter and the delta CI, when metrics has them."""
    parsed = _metrics(metrics)
    if parsed is None:
        return None
    bench = parsed.target_metrics
    return {
        "benchmark": parsed.target,
        "base": bench.base_best.pass_at_1,
        "adapter": bench.adapter_best.pass_at_1,
        "ci": [bench.delta.ci_low, bench.delta.ci_high],
    }


def _reasons(decision: Any) -> list[str]:
    """The gate's reason lines; a decision recorded in another shape is shown as it is."""
    try:
        return Decision.model_validate(decision).reasons
    except ValidationError:
        return [str(decision)]


def base_model(manifest: dict[str, Any]) -> tuple[str, str | None]:
    """(model id, revision) from the lineage's ``base_model`` (the recipe's model section)."""
    base = manifest.get("base_model")
    if isinstance(base, dict):
        return str(base.get("id")), base.get("revision")
    return str(base), None


def _reproduction_lines(record: Any) -> list[str]:
    """The card's lines for the reproduction record (versions, model files, prompts, filters, seeds)."""
    if not isinstance(record, dict):
        return []
    model = record.get("model") or {}
    versions = ", ".join(f"{k} {v}" for k, v in sorted((record.get("versions") or {}).items()))
    counts = ", ".join(f"{k} {v}" for k, v in (record.get("sample_counts") or {}).items())
    seeds = ", ".join(f"{k} {v}" for k, v in (record.get("seeds") or {}).items())
    return [
        f"- versions: {versions or 'not recorded'}",
        f"- model files sha256: weights `{model.get('weights_sha256')}`, tokenizer `{model.get('tokenizer_sha256')}`, "
        f"chat template `{model.get('chat_template_sha256')}`",
        f"- prompt file sha256: `{record.get('prompts_sha256')}`; sampling filters: {counts or 'not recorded'}",
        f"- seeds: {seeds or 'not recorded'}",
    ]


def _card(manifest: dict[str, Any]) -> str:
    """The model card: enough to know what the adapter is and to load it without the pipeline."""
    base_id, revision = base_model(manifest)
    name, version = manifest["name"], manifest["version"]
    run = f" from run `{manifest['run_id']}`" if manifest.get("run_id") else ""
    recipe = manifest["recipe"]
    recipe = recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False)
    lines = [
        f"# {name} {version}",
        "",
        f"A LoRA adapter for `{base_id}`{f' (revision `{revision}`)' if revision else ''}, fine-tuned by simple "
        "self-distillation (SSD) on the base model's own unfiltered samples.",
        f"Promoted {manifest['promoted_at']}{run}.",
        "",
        "## Evaluation",
        "",
    ]
    metrics = _metrics(manifest["metrics"])
    if metrics is not None:
        table = Table(["benchmark", "base pass@1 (T)", "adapter pass@1 (T)", "delta [95% CI]"])
        for bench, m in metrics.benchmarks.items():
            b, a, d = m.base_best, m.adapter_best, m.delta
            table.rows.append(
                [
                    bench,
                    f"{num(b.pass_at_1)} ({b.temperature})",
                    f"{num(a.pass_at_1)} ({a.temperature})",
                    f"{delta(d.value)} {interval(d.ci_low, d.ci_high)}",
                ]
            )
        lines += table.markdown()
    else:
        lines.append("No per-benchmark metrics were recorded; see `metrics` in manifest.json.")
    lines += ["", "## Gate", "", *(f"- {r}" for r in _reasons(manifest["decision"]))]
    code = manifest.get("code_version") or {}
    edited = " (with local edits)" if code.get("git_dirty") else ""
    lines += [
        "",
        "## Lineage",
        "",
        f"- base model: `{base_id}`, revision `{revision or 'default'}`",
        f"- samples sha256: `{manifest['samples_sha256']}`",
        f"- adapter sha256: `{manifest['adapter_sha256']}`",
        f"- code: commit `{code.get('git_commit') or 'unknown'}`{edited}, "
        f"package {code.get('package_version') or 'unknown'}",
        *_reproduction_lines(manifest.get("reproduction")),
        "- recipe:",
        "",
        "```yaml",
        recipe.rstrip(),
        "```",
        "",
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base_id}"), "{ADAPTER}")',
        "```",
        "",
        *(
            [f"`{base_id}` is a pipeline model id: `ssd resolve {base_id}` prints its local directory.", ""]
            if base_id.startswith(("embedded:", "random:"))
            else []
        ),
        f'vLLM: `LLM(model="{base_id}", enable_lora=True)` and '
        f'`LoRARequest("{name}", 1, "<this directory>/{ADAPTER}")` per request '
        "(dense models; for MoE experts merge first).",
        "",
    ]
    return "\n".join(lines)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_incoming(name_dir: Path) -> None:
    """Remove what promotions killed on this host left behind (their process is gone)."""
    for path in name_dir.iterdir():
        match = _INCOMING.match(path.name)
        if match and match.group(2) == _HOST and not _pid_alive(int(match.group(1))):
            log.info("registry: removing %s, left by a promotion that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    """Make renames in ``path`` durable: without it a power loss can undo a finished promotion."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock(name_dir: Path) -> FileLock:
    return FileLock(str(name_dir / LOCK), timeout=LOCK_TIMEOUT_S)


@dataclass(frozen=True)
class Champion:
    """The version a new adapter must beat: what ``latest`` serves now."""

    name: str
    version: str
    adapter: Path
    adapter_sha256: str
    base_model: tuple[str, str | None]


def champion(registry_dir: Path | str, name: str, own_adapter_sha256: str) -> Champion | None:
    """The version ``latest`` names, or None when the registry has none under ``name`` (a first cycle).

    When ``latest`` is the adapter being judged (a finished run rerun after it was promoted), its
    champion is the version it was judged against then (``previous_latest``), so a rerun reuses
    its evaluation instead of comparing the adapter with itself.
    """
    name_dir = Path(registry_dir) / name
    _check_name(name)
    if not _versions(name_dir):
        return None
    version = _read_latest(name_dir)
    seen = set()
    while version is not None and version not in seen:
        seen.add(version)
        if version not in _versions(name_dir):
            _pick(Path(registry_dir), name, None)  # raises the error that names the broken pointer
        manifest = _read_manifest(name_dir / version)
        if manifest.get("adapter_sha256") != own_adapter_sha256:
            return Champion(
                name,
                version,
                name_dir / version / ADAPTER,
                runs.hash_path(name_dir / version / ADAPTER),
                base_model(manifest),
            )
        version = manifest.get("previous_latest")
    return None


class _Any:
    def __repr__(self) -> str:
        return "any"


ANY_LATEST: Any = _Any()


def promote(
    registry_dir: Path | str,
    name: str,
    adapter_dir: Path | str,
    manifest: dict[str, Any],
    *,
    expect_latest: str | None = ANY_LATEST,
) -> str:
    """Add ``adapter_dir`` as the next version of ``name``, point ``latest`` at it, return the version.

    ``manifest`` carries the lineage the caller knows (``LINEAGE_KEYS`` at least, plus e.g.
    ``run_id`` and ``code_version`` as recorded when the run started); the registry adds
    ``name``, ``version``, ``promoted_at``, ``adapter_sha256``, ``previous_latest`` and, if
    absent, ``code_version`` at promotion time.

    ``expect_latest``: the version the adapter was judged against (None: there was none). If
    ``latest`` names another one when the lock is held (another job promoted in between), nothing
    is added: a ``ChampionMovedError`` says to evaluate against the new champion.
    """
    _check_name(name)
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise RegistryError(
            f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json); pass the run's adapter/ "
            "directory after the train stage finished"
        )
    missing = [key for key in LINEAGE_KEYS if key not in manifest]
    if missing:
        raise RegistryError(
            f"promotion manifest for {name!r} lacks {', '.join(missing)}; the registry needs {', '.join(LINEAGE_KEYS)}"
        )
    name_dir = Path(registry_dir) / name
    name_dir.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(dir=name_dir, prefix=f".incoming-{os.getpid()}-{_HOST}-"))
    try:
        incoming.chmod(0o755)
        shutil.copytree(adapter_dir, incoming / ADAPTER)
        adapter_sha = runs.hash_path(incoming / ADAPTER)
        record = dict(manifest)
        if "code_version" not in record:
            record["code_version"] = code_version()
        try:
            with _lock(name_dir):
                _remove_stale_incoming(name_dir)
                now = _read_latest(name_dir)
                if expect_latest is not ANY_LATEST and now != expect_latest:
                    raise ChampionMovedError(
                        f"{name_dir / LATEST} names {now or 'no version'}, but this adapter was judged against "
                        f"{expect_latest or 'no champion'} (another job promoted in between); nothing was promoted: "
                        "rerun, and the eval stage evaluates it against the new champion"
                    )
                versions = _versions(name_dir)
                version = f"v{(int(versions[-1][1:]) + 1 if versions else 1):04d}"
                record.update(
                    name=name,
                    version=version,
                    promoted_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    adapter_sha256=adapter_sha,
                    previous_latest=_read_latest(name_dir),
                )
                runs.atomic_write_json(incoming / MANIFEST, record)
                runs.atomic_write_text(incoming / CARD, _card(record))
                os.rename(incoming, name_dir / version)
                runs.atomic_write_text(name_dir / LATEST, version + "\n")
                _fsync_dir(name_dir)
        except Timeout as exc:
            raise RegistryError(
                f"{name_dir / LOCK} stayed locked for {LOCK_TIMEOUT_S:.0f} s by another promotion or rollback; "
                "retry when it finished"
            ) from exc
    except BaseException:
        shutil.rmtree(incoming, ignore_errors=True)
        raise
    log.info("registry: %s %s promoted (%s)", name, version, name_dir / version)
    return version


def list_names(registry_dir: Path | str) -> list[dict[str, Any]]:
    """Every name with at least one version: its latest and how many versions it has."""
    registry_dir = Path(registry_dir)
    return [
        {"name": n, "latest": _read_latest(registry_dir / n), "versions": len(_versions(registry_dir / n))}
        for n in _names(registry_dir)
    ]


def list_versions(registry_dir: Path | str, name: str) -> list[dict[str, Any]]:
    """The versions of ``name``, oldest first, with when they were promoted and how they scored."""
    name_dir = _name_dir(Path(registry_dir), name)
    latest = _read_latest(name_dir)
    rows = []
    for version in _versions(name_dir):
        manifest = _read_manifest(name_dir / version)
        rows.append(
            {
                "name": name,
                "version": version,
                "latest": version == latest,
                "promoted_at": manifest.get("promoted_at"),
                "run_id": manifest.get("run_id"),
                "pass@1": headline(manifest.get("metrics")),
                "path": str(name_dir / version),
            }
        )
    return rows


def latest_version(registry_dir: Path | str, name: str) -> str | None:
    """The version ``latest`` names now (None when it names none)."""
    return _read_latest(_name_dir(Path(registry_dir), name))


def show(registry_dir: Path | str, name: str, version: str | None = None) -> dict[str, Any]:
    """The manifest of a version (default: latest), with its path and whether it is latest."""
    name_dir, chosen, latest = _pick(Path(registry_dir), name, version)
    manifest = _read_manifest(name_dir / chosen)
    return {"name": name, "version": chosen, **manifest, "path": str(name_dir / chosen), "latest": chosen == latest}


def resolve(registry_dir: Path | str, name: str, version: str | None = None) -> Path:
    """The ``adapter/`` directory to serve for ``name`` (default: what ``latest`` names)."""
    name_dir, chosen, _ = _pick(Path(registry_dir), name, version)
    return name_dir / chosen / ADAPTER


def _rollback_target(name_dir: Path, to_version: str | None) -> tuple[str | None, str]:
    """(latest now, the version a rollback points it at), or a ``RegistryError`` saying why there is none.

    With ``to_version`` a ``latest`` that cannot be read is no obstacle: ``--to`` is how it is repaired.
    """
    versions = _versions(name_dir)
    if to_version is not None:
        target = _version_label(to_version)
        if target not in versions:
            raise RegistryError(
                f"{name_dir.name!r} has no version {target}; versions of {name_dir.name!r}: {', '.join(versions)}"
            )
        try:
            return _read_latest(name_dir), target
        except RegistryError:
            return None, target
    current = _read_latest(name_dir)
    if current is None or current not in versions:
        raise RegistryError(
            f"{name_dir / LATEST} names {current or 'nothing'}, so there is no previous version; "
            f"choose one with --to ({', '.join(versions)})"
        )
    older = [v for v in versions if int(v[1:]) < int(current[1:])]
    if not older:
        raise RegistryError(
            f"{name_dir.name!r}: latest is {current}, its oldest version; nothing to roll back to "
            f"(versions: {', '.join(versions)}; use --to to move forward)"
        )
    return current, older[-1]


def rollback(registry_dir: Path | str, name: str, to_version: str | None = None) -> str:
    """Point ``latest`` at ``to_version``, or at the version before the current latest; return it.

    Versions are never deleted, so a rollback can itself be undone with ``--to``. A rollback that
    cannot happen is refused before the lock is taken (no ``.lock`` appears), and checked again
    under it (a promotion may have moved ``latest`` meanwhile).
    """
    name_dir = _name_dir(Path(registry_dir), name)
    _rollback_target(name_dir, to_version)
    try:
        with _lock(name_dir):
            current, target = _rollback_target(name_dir, to_version)
            runs.atomic_write_text(name_dir / LATEST, target + "\n")
            _fsync_dir(name_dir)
    except Timeout as exc:
        raise RegistryError(
            f"{name_dir / LOCK} stayed locked for {LOCK_TIMEOUT_S:.0f} s by a promotion; retry when it finished"
        ) from exc
    log.info("registry: %s latest %s -> %s", name, current, target)
    return target
