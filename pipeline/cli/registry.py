"""``ssd registry list | show | rollback``: the promoted adapters, their lineage, and moving ``latest``.

Exit 0 done, 2 an unknown name or version or other unusable input, 1 an I/O failure.
"""

from __future__ import annotations

import argparse
import json

from pipeline.cli import EXIT_OK
from pipeline.deploy import registry
from pipeline.report.format import interval, num


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry-dir",
        default=registry.DEFAULT_REGISTRY_DIR,
        help=f"registry root (default: {registry.DEFAULT_REGISTRY_DIR})",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    parser = subparsers.add_parser("registry", help="list, inspect and roll back promoted adapters")
    sub = parser.add_subparsers(dest="registry_command", required=True)
    p = sub.add_parser("list", parents=[common], help="names, or the versions of NAME")
    p.add_argument("name", nargs="?", help="registry name (default: list all names)")
    p.set_defaults(func=list_command)
    p = sub.add_parser("show", parents=[common], help="the lineage of NAME[:VERSION] (default: latest)")
    p.add_argument("ref", metavar="NAME[:VERSION]")
    p.set_defaults(func=show_command)
    p = sub.add_parser("rollback", parents=[common], help="point latest at the previous version, or at --to")
    p.add_argument("name")
    p.add_argument("--to", metavar="VERSION", help="version to point latest at, e.g. v0002")
    p.set_defaults(func=rollback_command)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _score(h: dict) -> str:
    """The headline as ``benchmark base -> adapter [delta CI]``."""
    return f"{h['benchmark']} {num(h['base'])} -> {num(h['adapter'])} {interval(*h['ci'])}"


def list_command(args: argparse.Namespace) -> int:
    if args.name is None:
        names = registry.list_names(args.registry_dir)
        if args.json:
            print(json.dumps(names, indent=2))
        elif not names:
            print(f"no adapters in {args.registry_dir}")
        else:
            print(
                _table(
                    [
                        ["NAME", "LATEST", "VERSIONS"],
                        *([n["name"], n["latest"] or "-", str(n["versions"])] for n in names),
                    ]
                )
            )
        return EXIT_OK
    rows = registry.list_versions(args.registry_dir, args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    table = [["VERSION", "LATEST", "PROMOTED AT", "RUN", "PASS@1 BASE -> ADAPTER [DELTA CI]"]]
    for row in rows:
        score = _score(row["pass@1"]) if row["pass@1"] else "-"
        table.append(
            [row["version"], "*" if row["latest"] else "", row["promoted_at"] or "-", row["run_id"] or "-", score]
        )
    print(_table(table))
    return EXIT_OK


def show_command(args: argparse.Namespace) -> int:
    name, _, version = args.ref.partition(":")
    info = registry.show(args.registry_dir, name, version or None)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return EXIT_OK
    base_id, revision = registry.base_model(info)
    print(f"{info['name']} {info['version']}{' (latest)' if info['latest'] else ''}")
    print(f"path:         {info['path']}")
    print(f"promoted at:  {info.get('promoted_at')}")
    print(f"run:          {info.get('run_id') or '-'}")
    print(f"base model:   {base_id} (revision {revision or 'default'})")
    print(f"samples:      sha256 {info.get('samples_sha256')}")
    print(f"adapter:      sha256 {info.get('adapter_sha256')}")
    print(f"code:         {(info.get('code_version') or {}).get('git_commit') or 'unknown'}")
    h = registry.headline(info.get("metrics"))
    if h:
        ci = interval(*h["ci"])
        print(f"pass@1:       {h['benchmark']} base {num(h['base'])} -> adapter {num(h['adapter'])}, delta CI {ci}")
    decision = info.get("decision")
    for reason in decision.get("reasons", []) if isinstance(decision, dict) else [decision]:
        print(f"gate:         {reason}")
    return EXIT_OK


def rollback_command(args: argparse.Namespace) -> int:
    try:
        before = registry.latest_version(args.registry_dir, args.name)
    except registry.RegistryError:
        if args.to is None:
            raise
        before = "(unreadable)"  # --to is how a corrupt `latest` is repaired (an unknown name fails below)
    after = registry.rollback(args.registry_dir, args.name, args.to)
    if args.json:
        print(json.dumps({"name": args.name, "previous": before, "latest": after}))
    else:
        print(f"{args.name}: latest {before} -> {after}")
    return EXIT_OK
