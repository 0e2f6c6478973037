"""``ssd serve NAME[:VERSION]``: a registry adapter behind vLLM's OpenAI-compatible server.

Exit 0 the server was stopped cleanly on SIGINT/SIGTERM, 2 an unknown name or version, a taken
port or an unservable layout, 1 the server failed (or a merged export it needs did).
"""

from __future__ import annotations

import argparse
import json
import shlex

from pipeline.cli import EXIT_FAILED, EXIT_OK, CommandFailed, positive_int, setup_logging
from pipeline.deploy import registry, serve


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a registry adapter with vLLM's OpenAI-compatible server",
        epilog="Arguments after -- go to vLLM unchanged, after ssd's own (so they win): "
        "ssd serve coder -- --max-num-seqs 8",
    )
    p.add_argument("ref", metavar="NAME[:VERSION]", help="registry name, optionally :VERSION (default: latest)")
    p.add_argument(
        "--host", default=serve.DEFAULT_HOST, help=f"interface to bind (default {serve.DEFAULT_HOST}; 0.0.0.0 for all)"
    )
    p.add_argument("--port", type=int, default=serve.DEFAULT_PORT, help=f"default {serve.DEFAULT_PORT}")
    p.add_argument(
        "--max-model-len", type=positive_int, help="context length (default: the recipe's engine.max_model_len)"
    )
    p.add_argument(
        "--moe-lora", action="store_true", help="MoE on GPU: serve per-expert LoRA instead of the merged model"
    )
    p.add_argument("--dry-run", action="store_true", help="print the vLLM command, URL and model names; start nothing")
    p.add_argument(
        "--registry-dir", default=registry.DEFAULT_REGISTRY_DIR, help=f"default: {registry.DEFAULT_REGISTRY_DIR}"
    )
    p.set_defaults(func=command, passthrough=[])


def command(args: argparse.Namespace) -> int:
    setup_logging()
    if not args.dry_run and not serve.port_free(args.host, args.port):
        raise serve.ServeError(f"port {args.port} on {args.host} is in use; pick another with --port")
    p = serve.plan(
        args.registry_dir,
        args.ref,
        host=args.host,
        port=args.port,
        max_model_len=args.max_model_len,
        extra=args.passthrough,
        moe_lora=args.moe_lora,
        prepare=not args.dry_run,
    )
    if args.dry_run:
        for note in p.notes:
            print(note)
        print(shlex.join(p.cmd))
        print(f"url: {p.url}")
        print(f"models: {json.dumps(p.models)}")
        return EXIT_OK
    return run_server(p)


def banner(p: serve.Plan, pid: int, start_s: float) -> str:
    """What a user needs once the server answers: its URL, the model names, a request to try."""
    model = p.models["adapter"]
    body = json.dumps({"model": model, "prompt": "def fibonacci(n):", "max_tokens": 64, "temperature": 0})
    lines = [f"vLLM OpenAI server ready at {p.url} (pid {pid}, {start_s:.0f} s to start)"]
    if "base" in p.models:
        lines.append(f"  base model: {p.models['base']}")
    lines.append(f"  adapter:    {model} ({p.source}, {p.mode})")
    lines.append(f"  try: curl {p.url}/completions -H 'Content-Type: application/json' -d '{body}'")
    lines.append("  stop: Ctrl-C or SIGTERM")
    return "\n".join(lines)


def run_server(p: serve.Plan) -> int:
    """Run the planned server in the foreground, saying when it started and when it is ready."""
    for note in p.notes:
        print(note, flush=True)
    print(f"starting: {shlex.join(p.cmd)}", flush=True)
    stopped = serve.run(
        p,
        on_start=lambda pid: print(f"vLLM server pid {pid}", flush=True),
        on_ready=lambda pid, start_s: print(banner(p, pid, start_s), flush=True),
    )
    if not stopped.by_signal:
        when = "after" if stopped.ready else "before"
        raise CommandFailed(f"the vLLM server exited with code {stopped.code} {when} it was ready (its log is above)")
    print(f"vLLM server stopped (exit {stopped.code}){'' if stopped.clean else ': not a clean shutdown'}", flush=True)
    return EXIT_OK if stopped.clean else EXIT_FAILED
