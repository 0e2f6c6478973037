"""The 26B-A4B training plan, measured: a few LoRA steps of the real architecture on one device.

    python3 bench/gpu_train.py                      # what bench/device.sh runs on a lent GPU
    python3 bench/gpu_train.py --device cpu --layers 1 --seq 32 --vocab 16384 --steps 2   # same code, one layer

Builds google/gemma-4-26B-A4B's architecture (``targets.gemma4_26b_a4b_config``, the vision
tower included, as ``AutoModelForCausalLM`` loads the checkpoint) with random weights (bf16 on
a GPU, fp32 on CPU: the stage's dtypes),
directly on the device (PyTorch's default-device context: no download, no copy in CPU memory).
Then the train stage's own pieces: the recipe's LoRA targets through ``targets.peft_lora_config``
(experts included, PEFT ``target_parameters``), gradient checkpointing (non-reentrant, as the
stage's trainer sets it), bf16 autocast, the loss path ``fastloss.choose_loss_path`` picks for
the device (the one ``ssd plan`` prices), AdamW with the recipe's settings, gradient clipping at
1.0 as the Trainer does. It imports neither TRL nor vLLM (the GPU image has neither).

Each batch is ``micro_batch_size`` rows of ``--seq`` random tokens, the first eighth a prompt
(label -100), the rest supervised. ``--layers N`` builds N decoder layers at full width in
the real pattern (five sliding, then one global), the last one global (``build_config``): a CPU
run of one layer proves the expert shapes and the wider global attention; ``--vocab`` shrinks
the output layer, the one part a CPU cannot afford at full width.

Prints a table and writes JSON (``--out``): memory measured beside ``ssd plan``'s figure for the
same shape (per component, and the two peak moments), time to build, tokens/s and MFU
(6 x active parameters per token over the datasheet's dense bf16 rate). On CPU the memory
figures are null (PyTorch keeps no allocator statistics there) and the run proves the code path.

``--extra-shapes 2x4096,1x8192`` then runs two steps at each further shape on the same model (the
recipe's trade-offs: a larger micro batch, longer rows), each beside the plan for that shape; an
out-of-memory error is recorded as that shape's result.

Then the export check (``--no-export`` skips it): the trained adapter's first global layer goes
through the registry and ``ssd export --format peft-per-expert``'s own code, at full width: a
one-layer base (``build_config(1)``, whose one layer is global) is written to disk in bf16 as the
checkpoint is, the layer's trained LoRA is promoted as that base's adapter into a throwaway
registry, and ``export.export`` rewrites the fused expert LoRA per expert and proves every
projection against PEFT's merge in float32, as it does for a user. It runs in a child process (on
the CPU, as ``ssd export`` does) so its time and peak memory are its own; the JSON is written
before it starts, so a run stopped during the export keeps the training figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1024**3
RECIPE = ROOT / "recipes" / "gemma4-26b-a4b.yaml"
# Dense bf16 matrix rate by device name, from the vendors' datasheets (FLOP/s); MFU is against this.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def build_config(layers: int, vocab: int | None = None):
    """The 26B-A4B config with ``layers`` decoder layers (all 30 by default), optionally a smaller
    vocabulary (a CPU run: the output layer is most of its time).

    A reduced model keeps the real pattern of sliding and global layers except its last layer, which
    is global: transformers makes the last layer of any Gemma 4 config global, so only such a
    config saves and reloads with the same shapes (the export check reloads one from disk).
    """
    from pipeline.training import targets

    full = targets.gemma4_26b_a4b_config().text_config
    if not 1 <= layers <= full.num_hidden_layers:
        raise SystemExit(f"--layers {layers}: between 1 and {full.num_hidden_layers}")
    types = [*full.layer_types[: layers - 1], "full_attention"]
    return targets.gemma4_26b_a4b_config(
        num_hidden_layers=layers, layer_types=types, vocab_size=vocab or full.vocab_size
    )


def active_parameters(causal_lm, config) -> int:
    """Parameters one token goes through: the language model without its embedding table, the routed
    share of the experts (top-k of E), and the output layer (tied to the embedding, computed once)."""
    from pipeline.training import plan

    text = config.get_text_config()
    share = text.top_k_experts / text.num_experts
    total = 0
    for name, p in plan.language_model(causal_lm).named_parameters():
        if "embed_tokens" in name or ".lora_" in name:
            continue
        total += p.numel() * (share if ".experts." in name else 1)
    return int(total) + text.vocab_size * text.hidden_size


def randomize(model, std: float = 0.02, block: int = 1_000_003) -> None:
    """Random weights for a model built without initialisation (``no_init_weights``): every matrix
    drawn from N(0, std), vectors (norm weights, built as ones) and buffers left as built.

    On CUDA each tensor is drawn whole. On CPU, drawing 2B bf16 values takes minutes, so each tensor
    is filled with one drawn block of a prime length, rolled by a per-tensor offset: varied, finite
    values, which is all a CPU run that proves the code path needs.
    """
    import torch

    params = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]
    if params and params[0][1].device.type == "cuda":
        for _, p in params:
            torch.nn.init.normal_(p, 0.0, std)
        return
    values = torch.randn(block, dtype=torch.float32).mul_(std).to(params[0][1].dtype)
    with torch.no_grad():
        for i, (_, p) in enumerate(params):
            flat, rolled = p.view(-1), values.roll(7919 * i)
            for start in range(0, flat.numel(), block):
                part = flat[start : start + block]
                part.copy_(rolled[: part.numel()])


def build_model(config, dtype, device):
    """``AutoModelForCausalLM`` of ``config`` built directly on ``device`` without initialisation,
    its output layer tied to the embedding as the checkpoint's is (``no_init_weights`` skips the
    tying ``from_config`` otherwise does: an untied 262k x 2816 head would be 1.4 GiB the plan
    rightly does not count), then random weights."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    with device, no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.tie_weights()
    if config.get_text_config().tie_word_embeddings and model.get_output_embeddings().weight is not (
        model.get_input_embeddings().weight
    ):
        raise SystemExit("the output layer is not tied to the embedding: the measured weights would not be the model's")
    randomize(model)
    return model


class Memory:
    """Allocator figures on CUDA; None elsewhere (CPU keeps no allocator statistics)."""

    def __init__(self, device):
        import torch

        self.torch, self.cuda = torch, device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def allocated(self) -> int | None:
        return self.torch.cuda.memory_allocated() if self.cuda else None

    def reset_peak(self):
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peak(self) -> tuple[int | None, int | None]:
        if not self.cuda:
            return None, None
        return self.torch.cuda.max_memory_allocated(), self.torch.cuda.max_memory_reserved()


def batch(config, seq: int, micro_batch: int, device) -> dict:
    """Random tokens; the first eighth of each row is prompt (label -100), the rest supervised."""
    import torch

    vocab = config.get_text_config().vocab_size
    ids = torch.randint(3, vocab, (micro_batch, seq), device=device)
    labels = ids.clone()
    labels[:, : seq // 8] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def parse_shapes(text: str | None) -> list[tuple[int, int]]:
    """``"2x4096,1x8192"`` -> ``[(2, 4096), (1, 8192)]`` (micro batch x tokens per row)."""
    shapes = []
    for part in (text or "").split(","):
        if part.strip():
            rows, _, seq = part.strip().partition("x")
            if not (rows.isdigit() and seq.isdigit() and int(rows) > 0 and int(seq) > 1):
                raise SystemExit(f"--extra-shapes {text!r}: expected ROWSxTOKENS[,...], e.g. 2x4096,1x8192")
            shapes.append((int(rows), int(seq)))
    return shapes


class Steps:
    """Optimizer steps of one model at one shape, with the allocator's figures of each step."""

    def __init__(self, causal_lm, config, trainable, optimizer, mem, device):
        self.causal_lm, self.config, self.trainable = causal_lm, config, trainable
        self.optimizer, self.mem, self.device = optimizer, mem, device

    def run(self, micro_batch: int, seq: int, count: int) -> dict:
        """``count`` steps of ``micro_batch`` rows of ``seq`` tokens; an out-of-memory error ends
        them and is recorded (a result too: the plan said it fits)."""
        import torch

        from pipeline.training import fastloss

        mem, steps, grads, states, oom = self.mem, [], None, None, None
        for step in range(count):
            inputs = batch(self.config, seq, micro_batch, self.device)
            mem.sync()
            t0 = time.perf_counter()
            mem.reset_peak()
            start_alloc = mem.allocated()
            try:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=mem.cuda):
                    loss, supervised, _ = fastloss.supervised_loss(self.causal_lm, inputs)
                head_peak, _ = mem.peak()
                mem.reset_peak()
                loss.backward()
            except torch.OutOfMemoryError as error:
                oom = {"step": step, "peak_allocated": mem.peak()[0], "error": str(error)[:500]}
                print(f"{micro_batch}x{seq} step {step}: out of memory", flush=True)
                loss = None
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                break
            mem.sync()
            layer_peak, _ = mem.peak()
            after_backward = mem.allocated()
            torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
            self.optimizer.step()
            mem.sync()
            if step == 0 and start_alloc is not None:
                grads = after_backward - start_alloc
                states = mem.allocated() - after_backward
            self.optimizer.zero_grad(set_to_none=True)
            mem.sync()
            _, reserved = mem.peak()
            steps.append(
                {
                    "loss": round(loss.item(), 4),
                    "supervised_tokens": supervised,
                    "seconds": round(time.perf_counter() - t0, 3),
                    "peak_allocated_loss_head": head_peak,
                    "peak_allocated_backward": layer_peak,
                    "peak_reserved": reserved,
                }
            )
            print(f"{micro_batch}x{seq} step {step}: loss {steps[-1]['loss']}, {steps[-1]['seconds']} s", flush=True)
        return {"steps": steps, "out_of_memory": oom, "grads": grads, "states": states}


def summarize(measured: dict, micro_batch: int, seq: int, estimate, active: int, peak_flops, cuda: bool) -> dict:
    """One shape's steps beside the plan for that shape: tokens/s and MFU over the steps after the
    first (which also creates the optimizer's states), peak memory at the plan's two moments."""
    steps = measured["steps"]
    steady = steps[1:] or steps
    timed = [s["seconds"] for s in steady]
    tokens_per_s = micro_batch * seq / statistics.median(timed) if timed else None

    def peak(key):
        return max((s[key] for s in steady), default=None) if cuda else None

    return {
        "micro_batch": micro_batch,
        "seq": seq,
        "steps": steps,
        "out_of_memory": measured["out_of_memory"],
        "tokens_per_s": None if tokens_per_s is None else round(tokens_per_s, 2),
        "mfu": None if peak_flops is None or tokens_per_s is None else round(6 * active * tokens_per_s / peak_flops, 4),
        "moments": [
            _compare("peak allocated: loss head", peak("peak_allocated_loss_head"), estimate.moments["loss head"]),
            _compare(
                "peak allocated: backward through a layer",
                peak("peak_allocated_backward"),
                estimate.moments["backward through a decoder layer"],
            ),
            _compare("peak reserved vs plan peak (incl. allowance)", peak("peak_reserved"), estimate.peak_bytes),
        ],
        "plan_peak_gib": round(estimate.peak_bytes / GIB, 3),
        "plan_fits": estimate.fits,
    }


def run(args) -> dict:
    import peft
    import torch
    import transformers
    from peft import get_peft_model

    from pipeline import recipe as recipe_mod
    from pipeline.training import fastloss, peft_layout, plan, targets

    recipe = recipe_mod.load_recipe(args.recipe, args.overrides)
    cfg = recipe.training
    seq = args.seq or cfg.max_length
    micro_batch = cfg.micro_batch_size
    extra_shapes = parse_shapes(args.extra_shapes)
    device = torch.device(args.device)
    loss_path = fastloss.choose_loss_path(cfg.loss_path, device.type)
    if loss_path != "supervised":
        raise SystemExit(f"loss path {loss_path}: this check runs without TRL, only the supervised path")
    config = build_config(args.layers, args.vocab)
    # The stage's dtypes: bf16 weights under bf16 autocast on a GPU, fp32 on CPU (where bf16 matrix
    # products are far slower: minutes for one step of one layer on this project's CPU machine).
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mem = Memory(device)
    torch.manual_seed(0)

    started = time.perf_counter()
    model = build_model(config, dtype, device)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    mem.sync()
    build_s = time.perf_counter() - started
    weights = mem.allocated()
    peft_model = get_peft_model(model, targets.peft_lora_config(config, cfg.lora))
    peft_model.train()
    mem.sync()
    setup_s = time.perf_counter() - started
    lora_params = None if weights is None else mem.allocated() - weights
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    causal_lm = peft_layout.causal_lm(peft_model)
    experts = peft_layout.expert_loras(peft_model)
    if not experts:
        raise SystemExit("no LoRA on the fused experts: the recipe's target_parameters did not reach them")
    before = {e.tensor: e.wrapper.lora_B[peft_layout.ADAPTER].weight.detach().clone() for e in experts}

    optimizer = torch.optim.AdamW(
        trainable,
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",
    )
    steps = Steps(causal_lm, config, trainable, optimizer, mem, device)
    main = steps.run(micro_batch, seq, args.steps)
    trained = {
        name: bool((e.wrapper.lora_B[peft_layout.ADAPTER].weight != before[name]).any())
        for name, e in ((e.tensor, e) for e in experts)
    }
    if args.export:
        save_global_layer(peft_model, config, Path(args.work) / "adapter")
    # Further shapes on the same model (the recipe's trade-offs: a larger micro batch, longer rows),
    # two steps each; none after an out-of-memory error at the recipe's own shape.
    extras = (
        [] if main["out_of_memory"] else [(rows, tokens, steps.run(rows, tokens, 2)) for rows, tokens in extra_shapes]
    )

    active = active_parameters(causal_lm, config)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak_flops = (
        args.peak_tflops * 1e12
        if args.peak_tflops
        else next((rate for key, rate in PEAK_BF16.items() if key in name), None)
    )
    device_gib = torch.cuda.get_device_properties(device).total_memory / GIB if mem.cuda else 80.0

    def estimate(rows, tokens):
        return plan.estimate(
            config,
            cfg.lora,
            seq_len=tokens,
            micro_batch_size=rows,
            gradient_checkpointing=True,
            loss_path=loss_path,
            weight_dtype=str(dtype).removeprefix("torch."),
            device_gib=device_gib,
        )

    planned = estimate(micro_batch, seq)
    shape_summary = summarize(main, micro_batch, seq, planned, active, peak_flops, mem.cuda)
    measured = {
        "weights": weights,
        "LoRA parameters": lora_params,
        "LoRA gradients": main["grads"],
        "AdamW states (m, v)": main["states"],
    }
    comparison = [_compare(row, measured[row], planned.row(row).bytes) for row in measured]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "device": {
            "type": device.type,
            "name": name,
            "total_gib": round(device_gib, 2) if mem.cuda else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "imported_from": {module.__name__: str(Path(module.__file__).parent) for module in (transformers, peft)},
        "imported_trl": "trl" in sys.modules,
        "imported_distributions": imported_distributions(),
        "shape": {
            "layers": args.layers,
            "seq": seq,
            "micro_batch": micro_batch,
            "hidden": config.text_config.hidden_size,
            "experts": config.text_config.num_experts,
            "moe_intermediate": config.text_config.moe_intermediate_size,
            "gradient_checkpointing": True,
            "vocab": config.text_config.vocab_size,
            "dtype": str(dtype).removeprefix("torch."),
            "loss_path": loss_path,
            "lora_r": cfg.lora.r,
        },
        "build_s": round(build_s, 2),
        "build_and_peft_s": round(setup_s, 2),
        "parameters": {
            "total": planned.total_parameters,
            "trainable": sum(p.numel() for p in trainable),
            "active_per_token": active,
        },
        "expert_lora_trained": trained,
        "steps": main["steps"],
        "tokens_per_s": shape_summary["tokens_per_s"],
        "out_of_memory": main["out_of_memory"],
        "mfu": shape_summary["mfu"],
        "peak_flops": peak_flops,
        "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2),
        "memory": comparison + shape_summary["moments"],
        "plan": planned.to_dict(),
        "extra_shapes": [
            summarize(measured, rows, tokens, estimate(rows, tokens), active, peak_flops, mem.cuda)
            for rows, tokens, measured in extras
        ],
    }


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def save_global_layer(peft_model, config, out: Path) -> None:
    """The trained LoRA of the first global decoder layer, renamed layer 0 (the one layer of
    ``build_config(1)``), saved as PEFT saves an adapter (``adapter_config.json``,
    ``adapter_model.safetensors``); expert, attention and MLP LoRA alike."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    from pipeline.training import peft_layout

    layer = config.get_text_config().layer_types.index("full_attention")
    state = get_peft_model_state_dict(peft_model, adapter_name=peft_layout.ADAPTER)
    kept = {}
    for key, value in state.items():
        found = _LAYER.search(key)
        if found is not None and int(found.group(1)) == layer:
            kept[_LAYER.sub(".layers.0.", key, count=1)] = value.detach().float().cpu().contiguous()
    if not kept:
        raise SystemExit(f"export check: no LoRA tensors of layer {layer} in the trained adapter")
    out.mkdir(parents=True, exist_ok=True)
    peft_model.peft_config[peft_layout.ADAPTER].save_pretrained(str(out))
    save_file(kept, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


def export_check(work: Path, vocab: int | None) -> dict:
    """Run ``export_in_child`` in a fresh interpreter; its result with wall time and peak RSS."""
    started = time.perf_counter()
    command = [sys.executable, __file__, "--export-child", str(work)]
    if vocab:
        command += ["--vocab", str(vocab)]
    proc = subprocess.run(command, cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(proc.stdout, end="", flush=True)
    result_file = work / "export.json"
    result = json.loads(result_file.read_text()) if proc.returncode == 0 and result_file.is_file() else {}
    result.update(
        returncode=proc.returncode,
        wall_s=round(time.perf_counter() - started, 2),
        max_rss_gib=round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / GIB, 2),
    )
    if proc.returncode != 0:
        result["error"] = proc.stdout[-2000:]
    return result


def export_in_child(work: Path, vocab: int | None) -> dict:
    """``ssd export --format peft-per-expert`` of ``work/adapter`` on a bf16 base of one full-width
    global layer (random weights, written to ``work/base``), through a throwaway registry."""
    import torch

    from pipeline.deploy import export, registry

    timings = {}
    t0 = time.perf_counter()
    model = build_model(build_config(1, vocab), torch.bfloat16, torch.device("cpu"))  # as the checkpoint is
    model.save_pretrained(str(work / "base"))
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    timings["base_written_s"] = round(time.perf_counter() - t0, 2)
    manifest = {
        "base_model": {"id": str(work / "base"), "revision": None},
        "recipe": {"name": "bench/gpu_train.py"},
        "samples_sha256": None,
        "metrics": {},
        "decision": {"promoted": True, "reasons": ["bench: the GPU check's export step"]},
        "code_version": {"package_version": "bench"},
    }
    registry.promote(work / "registry", "gpu-check", work / "adapter", manifest)
    t0 = time.perf_counter()
    record = export.export(work / "registry", "gpu-check", work / "per-expert", "peft-per-expert")
    timings["export_s"] = round(time.perf_counter() - t0, 2)
    written = work / "per-expert" / "adapter_model.safetensors"
    return {
        "layers": 1,
        "base_bf16_gib": round(base_bytes / GIB, 3),
        "per_expert_adapter_mib": round(written.stat().st_size / 2**20, 2),
        **timings,
        "verification": record["verification"],
        "target_modules": record["target_modules"],
        "imported_distributions": imported_distributions(),
    }


def imported_distributions() -> list[str]:
    """The installed distributions this process imported from (the project itself excluded): what
    the GPU image, or the wheels carried to it, must provide."""
    import importlib.metadata

    owners = importlib.metadata.packages_distributions()
    found = set()
    for name in list(sys.modules):
        top = name.partition(".")[0]
        if top != "pipeline" and top in owners:
            found.update(owners[top])
    return sorted(found - {"ssd-pipeline"})


def _compare(component: str, measured: int | None, planned: int) -> dict:
    return {
        "component": component,
        "measured_gib": None if measured is None else round(measured / GIB, 3),
        "plan_gib": round(planned / GIB, 3),
        "measured_over_plan": None if measured is None else round(measured / planned, 3),
    }


def table(result: dict) -> str:
    shape = result["shape"]
    lines = [
        f"{result['device']['name']} ({result['device']['type']}): {shape['layers']} layers, {shape['seq']} tokens x "
        f"{shape['micro_batch']}, loss path {shape['loss_path']}, checkpointing on",
        f"build {result['build_s']} s (+ PEFT: {result['build_and_peft_s']} s); "
        f"{result['tokens_per_s']} tokens/s; MFU {result['mfu']} on {result['parameters']['active_per_token']:,} "
        f"active parameters",
        f"{'component':<46}{'measured GiB':>14}{'plan GiB':>10}{'ratio':>8}",
    ]
    for row in result["memory"]:
        lines.append(
            f"{row['component']:<46}{row['measured_gib'] if row['measured_gib'] is not None else '-':>14}"
            f"{row['plan_gib']:>10}{row['measured_over_plan'] if row['measured_over_plan'] is not None else '-':>8}"
        )
    for extra in result["extra_shapes"]:
        moments = ", ".join(
            f"{row['component'].removeprefix('peak ')} {row['measured_gib']} of {row['plan_gib']} GiB"
            for row in extra["moments"]
        )
        status = f"out of memory at step {extra['out_of_memory']['step']}" if extra["out_of_memory"] else "ran"
        lines.append(
            f"{extra['micro_batch']}x{extra['seq']}: {status}; {extra['tokens_per_s']} tokens/s, MFU {extra['mfu']}; "
            f"{moments}"
        )
    lines.append(f"expert LoRA trained: {result['expert_lora_trained']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default=str(RECIPE), help="recipe whose training section is used")
    parser.add_argument("--layers", type=int, default=30, help="decoder layers kept (30: the whole model)")
    parser.add_argument("--seq", type=int, help="tokens per row (default: the recipe's training.max_length)")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps (the first is not timed)")
    parser.add_argument("--device", default="cuda", help="cuda or cpu")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default: the real 262,144)")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 rate for MFU (default: by device name)")
    parser.add_argument(
        "--no-export", dest="export", action="store_false", help="skip the per-expert export check of one layer"
    )
    parser.add_argument(
        "--extra-shapes", help="more shapes after the recipe's, two steps each, e.g. 2x4096,1x8192 (rows x tokens)"
    )
    parser.add_argument("--work", help="scratch directory for the export check (default: a temporary one)")
    parser.add_argument("--export-child", help=argparse.SUPPRESS)  # the export check's own process
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("overrides", nargs="*", help="dotted recipe overrides: training.lora.r=8")
    args = parser.parse_args(argv)
    if args.export_child:
        work = Path(args.export_child)
        result = export_in_child(work, args.vocab)
        (work / "export.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    with tempfile.TemporaryDirectory(prefix="gpu-train-", dir=args.work) as work:
        args.work = work
        result = run(args)
        print(table(result))
        write(result, args.out)
        if args.export:
            print("export check: one global layer at full width, per expert", flush=True)
            result["export"] = export_check(Path(work), args.vocab)
            print(export_line(result["export"]), flush=True)
            write(result, args.out)
    return 0 if not args.export or result["export"]["returncode"] == 0 else 1


def write(result: dict, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}", flush=True)


def export_line(export: dict) -> str:
    if export["returncode"] != 0:
        return f"export check FAILED (exit {export['returncode']}), {export['wall_s']} s"
    check = export["verification"]
    return (
        f"export check: {check['expert_projections']} expert projections equal PEFT's merge (max diff "
        f"{check['max_abs_diff']:.3g}); export {export['export_s']} s, {export['wall_s']} s in all, "
        f"peak RSS {export['max_rss_gib']} GiB, bf16 base {export['base_bf16_gib']} GiB"
    )


if __name__ == "__main__":
    sys.exit(main())
