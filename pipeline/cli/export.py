"""``ssd export NAME[:VERSION] OUT``: a registry adapter as PEFT, merged model or per-expert LoRA, verified.

Exit 0 written, 2 an unknown name or version or input that cannot be exported, 1 a check
failed (nothing was written to OUT).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.cli import EXIT_OK, CommandFailed, check_dir, positive_float, setup_logging
from pipeline.deploy import export, registry


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a registry adapter as PEFT, merged model or per-expert LoRA, verified"
    )
    p.add_argument("ref", metavar="NAME[:VERSION]", help="registry name, optionally :VERSION (default: latest)")
    p.add_argument("out", metavar="OUT", help="output directory (must not exist or be empty, unless --force)")
    p.add_argument(
        "--format", choices=export.FORMATS, default="peft", help="peft (default), merged, or peft-per-expert (MoE)"
    )
    p.add_argument(
        "--dtype",
        choices=export.DTYPES,
        default="float32",
        help="merged weights' dtype (default float32, as the eval stage serves merged copies; a cast that rounds "
        "the adapter away is refused)",
    )
    p.add_argument(
        "--atol",
        type=positive_float,
        default=export.MERGE_ATOL,
        help=f"merged vs PEFT float32 logits tolerance (default {export.MERGE_ATOL:g})",
    )
    p.add_argument("--force", action="store_true", help="replace a non-empty OUT (only once the new one is complete)")
    p.add_argument(
        "--registry-dir", default=registry.DEFAULT_REGISTRY_DIR, help=f"default: {registry.DEFAULT_REGISTRY_DIR}"
    )
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from pipeline.evaluation.serving import ServingError
    from pipeline.models import MergeError

    setup_logging()
    check_dir(Path(args.out).parent, f"OUT {args.out}")  # before a merge that can take minutes
    try:
        record = export.export(
            args.registry_dir, args.ref, args.out, args.format, dtype=args.dtype, atol=args.atol, force=args.force
        )
    except (MergeError, ServingError) as exc:  # the merged model failed a check
        raise CommandFailed(f"{exc}; nothing written to {args.out}") from None
    src = record["source"]
    print(f"exported {src['name']}:{src['version']} as {record['format']} to {args.out}")
    if "verification" in record:
        print(json.dumps(record["verification"], indent=2))
    return EXIT_OK
