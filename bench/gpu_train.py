"""The 26B-A4B training plan, measured: a few LoRA steps of the real architecture on one device.

    python3 bench/gpu_train.py                      # what bench/device.sh runs on a lent GPU
    python3 bench/gpu_train.py --device cpu --layers 1 --seq 64 --steps 2   # same code, reduced depth

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
(label -100), the rest supervised. ``--layers`` keeps the first N decoder layers at full width
(layer 6 is the first global one), so a CPU run of one layer proves the same shapes; ``--vocab``
shrinks the output layer, the one part a CPU cannot afford at full width.

Prints a table and writes JSON (``--out``): memory measured beside ``ssd plan``'s figure for the
same shape (per component, and the two peak moments), time to build, tokens/s and MFU
(6 x active parameters per token over the datasheet's dense bf16 rate). On CPU the memory
figures are null (PyTorch keeps no allocator statistics there) and the run proves the code path.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GIB = 1024**3
RECIPE = ROOT / "recipes" / "gemma4-26b-a4b.yaml"
# Dense bf16 matrix rate by device name, from the vendors' datasheets (FLOP/s); MFU is against this.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def build_config(layers: int, vocab: int | None = None):
    """The 26B-A4B config with its first ``layers`` decoder layers (all of them by default), and
    optionally a smaller vocabulary (a CPU run: the output layer is most of its time)."""
    from pipeline.training import targets

    config = targets.gemma4_26b_a4b_config()
    text = config.text_config
    if not 1 <= layers <= text.num_hidden_layers:
        raise SystemExit(f"--layers {layers}: between 1 and {text.num_hidden_layers}")
    text.num_hidden_layers = layers
    text.layer_types = text.layer_types[:layers]
    if vocab:
        text.vocab_size = vocab
    return config


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


def run(args) -> dict:
    import peft
    import torch
    import transformers
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from pipeline import recipe as recipe_mod
    from pipeline.training import fastloss, peft_layout, plan, targets

    recipe = recipe_mod.load_recipe(args.recipe, args.overrides)
    cfg = recipe.training
    seq = args.seq or cfg.max_length
    micro_batch = cfg.micro_batch_size
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
    with torch.device(device), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    randomize(model)
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
    steps, grads, states, oom = [], None, None, None
    for step in range(args.steps):
        inputs = batch(config, seq, micro_batch, device)
        mem.sync()
        t0 = time.perf_counter()
        mem.reset_peak()
        start_alloc = mem.allocated()
        try:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, count, _ = fastloss.supervised_loss(causal_lm, inputs)
            head_peak, _ = mem.peak()
            mem.reset_peak()
            loss.backward()
        except torch.OutOfMemoryError as error:  # a result too: the plan said it fits
            oom = {"step": step, "peak_allocated": mem.peak()[0], "error": str(error)[:500]}
            print(f"step {step}: out of memory", flush=True)
            break
        mem.sync()
        layer_peak, _ = mem.peak()
        after_backward = mem.allocated()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        mem.sync()
        if step == 0 and start_alloc is not None:
            grads = after_backward - start_alloc
            states = mem.allocated() - after_backward
        optimizer.zero_grad(set_to_none=True)
        mem.sync()
        _, reserved = mem.peak()
        steps.append(
            {
                "loss": round(loss.item(), 4),
                "supervised_tokens": count,
                "seconds": round(time.perf_counter() - t0, 3),
                "peak_allocated_loss_head": head_peak,
                "peak_allocated_backward": layer_peak,
                "peak_reserved": reserved,
            }
        )
        print(f"step {step}: loss {steps[-1]['loss']}, {steps[-1]['seconds']} s", flush=True)
    trained = {
        name: bool((e.wrapper.lora_B[peft_layout.ADAPTER].weight != before[name]).any())
        for name, e in ((e.tensor, e) for e in experts)
    }

    tokens = seq * micro_batch
    timed = [s["seconds"] for s in steps[1:]] or [s["seconds"] for s in steps]
    tokens_per_s = tokens / statistics.median(timed) if timed else None
    active = active_parameters(causal_lm, config)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    peak_flops = (
        args.peak_tflops * 1e12
        if args.peak_tflops
        else next((rate for key, rate in PEAK_BF16.items() if key in name), None)
    )
    estimate = plan.estimate(
        config,
        cfg.lora,
        seq_len=seq,
        micro_batch_size=micro_batch,
        gradient_checkpointing=True,
        loss_path=loss_path,
        weight_dtype=str(dtype).removeprefix("torch."),
        device_gib=torch.cuda.get_device_properties(device).total_memory / GIB if device.type == "cuda" else 80.0,
    )
    steady = steps[1:] or steps
    measured = {
        "weights": weights,
        "LoRA parameters": lora_params,
        "LoRA gradients": grads,
        "AdamW states (m, v)": states,
    }
    head = max((s["peak_allocated_loss_head"] for s in steady), default=None) if mem.cuda else None
    layer = max((s["peak_allocated_backward"] for s in steady), default=None) if mem.cuda else None
    reserved = max((s["peak_reserved"] for s in steady), default=None) if mem.cuda else None
    comparison = [_compare(row, measured[row], estimate.row(row).bytes) for row in measured]
    comparison += [
        _compare("peak allocated: loss head", head, estimate.moments["loss head"]),
        _compare(
            "peak allocated: backward through a layer", layer, estimate.moments["backward through a decoder layer"]
        ),
        _compare("peak reserved vs plan peak (incl. allowance)", reserved, estimate.peak_bytes),
    ]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "device": {
            "type": device.type,
            "name": name,
            "total_gib": round(estimate.device_gib, 2) if mem.cuda else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "imported_trl": "trl" in sys.modules,
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
            "total": estimate.total_parameters,
            "trainable": sum(p.numel() for p in trainable),
            "active_per_token": active,
        },
        "expert_lora_trained": trained,
        "steps": steps,
        "tokens_per_s": None if tokens_per_s is None else round(tokens_per_s, 2),
        "out_of_memory": oom,
        "mfu": None if peak_flops is None or tokens_per_s is None else round(6 * active * tokens_per_s / peak_flops, 4),
        "peak_flops": peak_flops,
        "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2),
        "memory": comparison,
        "plan": estimate.to_dict(),
    }


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
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("overrides", nargs="*", help="dotted recipe overrides: training.lora.r=8")
    args = parser.parse_args(argv)
    result = run(args)
    print(table(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
