"""``ssd plan``: will a LoRA training run fit on the target GPU? An estimate before renting one.

The estimate is for the train stage's own path: transformers + PEFT + TRL ``SFTTrainer``,
base weights in bf16, bf16 autocast, PEFT's default fp32 adapter weights, AdamW. Everything is
counted from the model built on the ``meta`` device (no weights loaded), so the numbers follow
the real module shapes of whatever checkpoint is named, and the full 26B-A4B plans in seconds.

The model (all sizes in bytes; ``a`` = 2 for bf16 activations, ``L`` = sequence length,
``b`` = micro batch, ``T = b·L`` tokens per forward pass):

- weights: every base parameter and buffer once (tied embeddings once) x its dtype size. The
  vision tower is included: ``AutoModelForCausalLM`` loads ``Gemma4ForConditionalGeneration``.
- LoRA parameters, their gradients, AdamW ``m`` and ``v``: 4 bytes each per trainable parameter.
  PEFT keeps adapter weights in fp32 when the base is bf16 (``autocast_adapter_dtype=True``;
  TRL only turns that off under ZeRO-3), so the fp32 weights *are* the master copy: no
  separate master copy is counted.
- saved activations per decoder layer per token, as transformers' Gemma code saves them for
  backward under bf16 autocast (enumerated with ``torch.autograd.graph.saved_tensors_hooks`` on
  a full-width 26B-A4B layer; ``tests/unit/test_plan.py`` checks the sum on the tiny model):
  * RMSNorms upcast their input to fp32: ``4·width + 8·rows`` for every RMSNorm in the layer (8
    of width ``h`` in a Gemma 4 MoE layer, plus the q/k/v norms over the head widths);
  * attention: ``a·(2·q + 2·kv + L) + 4·heads`` (rotated queries and the attention output, keys
    and values, the float mask SDPA builds from the boolean one on every call (seen on CPU,
    counted for GPU too), logsumexp); SDPA's memory-efficient kernel keeps no ``L x L`` scores;
  * every LoRA-adapted linear: ``a·(in + r)`` (its input re-cast by autocast, and ``x·A``);
  * dense MLP: ``a·3·i`` (gate, up, activation);
  * router ``4·E`` (fp32 probabilities) and routed experts ``a·k·(2h + 4m)`` (gathered inputs
    and outputs, fused gate/up, activation, product) plus ``(40 + a)·k`` bytes of routing
    indices and weights.
- weight copies per decoder layer, kept from forward to backward: PEFT ``target_parameters``
  build the full effective expert tensor ``W + B·A`` (``torch.baddbmm`` in a parametrization) in
  the weight dtype, with bf16 copies of its factors: ``2·(|gate_up| + |down|) + 2·r·E·(in+out)``
  bytes, 1.45 GiB per 26B-A4B layer; plus autocast's bf16 copies of the LoRA factors and the
  fp32 copies of the norm weights (small). Without gradient checkpointing every layer's copy
  is alive at once: that, not the tokens, is what makes expert LoRA expensive.
- gradient checkpointing (non-reentrant, per decoder layer): only each layer's input
  ``a·h·T`` is kept; backward recomputes one layer at a time, so one layer's activations and
  expert tensors come back, plus that layer's backward buffers.
- backward buffers of one layer: the gradient of its largest effective expert tensor (full
  size, weight dtype) plus gradients of the same size as its activations.
- the loss head: the 262k-vocabulary output layer, priced for the loss path the stage runs on the
  device (``fastloss.choose_loss_path``; neither path builds the full ``V x T`` logits):
  * ``supervised`` (``fastloss``): the final RMSNorm's fp32 input ``4·h·T``, the hidden rows at
    supervised positions and their gradient (computed in the forward) ``2·a·h·T``, and one chunk
    of ``fastloss.chunk_rows(V)`` rows at a time: fp32 logits, the ``tanh`` soft-cap and one
    temporary, 12 bytes per entry (6 without a soft-cap);
  * ``trl`` (TRL 1.16's fused head, read from ``trl/kernels/chunked_logprob.py``): the norm input
    and the hidden rows ``(4 + a)·h·T``, a ``min(T, 4096) x 32768`` tile in the compute dtype, and
    in its backward an fp32 gradient of the hidden rows ``4·h·T``.
  Every token of the micro batch is counted as supervised (the worst case).
- overhead: a fixed allowance for the CUDA context, cuBLAS workspaces and kernels (1.0 GiB)
  plus 5% of everything else for allocator fragmentation. An allowance, not a measurement.

The peak is the larger of two moments: the loss head (all saved activations + the head's
buffers; with ``supervised`` that is the end of the forward, where the head's gradient is
computed), and backward through one decoder layer (saved
activations + that layer's recomputed activations with checkpointing + its backward buffers).

``bench/gpu_train.py`` measures both moments on a GPU with the real architecture and prints them
beside these figures.

Not modelled: Axolotl's fused kernels (ScatterMoE LoRA, cut cross-entropy), which avoid the
expert tensor; SDPA falling back to its math kernel (``L x L`` scores per
head), which transformers avoids for Gemma 4's 512-wide global heads by repeating K/V
(transformers PR #46960); the optimizer step's temporaries, which come after the
activations are freed.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from pipeline.training import fastloss, peft_layout, targets

log = logging.getLogger(__name__)

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAPTER_BYTES = 4  # PEFT fp32 adapter weights (autocast_adapter_dtype=True)
CUDA_CONTEXT_BYTES = 1 * GIB
FRAGMENTATION = 0.05
TRL_TOKEN_TILE, TRL_VOCAB_TILE = 4096, 32768  # TRL 1.16's fused LM head tile (kernels/chunked_logprob.py)


class MemoryPlanError(RuntimeError):
    """A training run that will not fit on the device; the message carries the table."""


@dataclass
class LayerActivations:
    """Saved bytes per token of one decoder layer, by source (see the module docstring)."""

    norms: int = 0
    attention: int = 0
    lora_inputs: int = 0
    dense_mlp: int = 0
    experts: int = 0

    @property
    def per_token(self) -> int:
        return self.norms + self.attention + self.lora_inputs + self.dense_mlp + self.experts


@dataclass
class Row:
    """One line of the plan: a name, its bytes, and how it was computed."""

    name: str
    bytes: int
    formula: str


@dataclass
class MemoryPlan:
    """The estimate for one run on one device."""

    model: str
    seq_len: int
    micro_batch_size: int
    gradient_checkpointing: bool
    loss_path: str
    device_gib: float
    trainable_parameters: int
    total_parameters: int
    rows: list[Row]
    peak_bytes: int
    peak_moment: str
    moments: dict[str, int] = field(default_factory=dict)  # each moment's bytes before the overhead allowance
    notes: list[str] = field(default_factory=list)

    @property
    def device_bytes(self) -> int:
        return int(self.device_gib * GIB)

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.device_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.device_bytes - self.peak_bytes

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def table(self) -> str:
        """A printable table in GiB with the formula of each line and the verdict."""
        head = (
            f"memory plan: {self.model}, {self.seq_len} tokens x micro batch {self.micro_batch_size}, "
            f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}, "
            f"loss path {self.loss_path}, {self.trainable_parameters:,} LoRA parameters"
        )
        lines = [head, f"{'component':<34}{'GiB':>9}  formula"]
        lines += [f"{r.name:<34}{r.bytes / GIB:>9.2f}  {r.formula}" for r in self.rows]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        lines.append(f"{'peak (' + self.peak_moment + ')':<34}{self.peak_bytes / GIB:>9.2f}")
        lines.append(f"{'device':<34}{self.device_gib:>9.2f}  {verdict}: headroom {self.headroom_bytes / GIB:.2f} GiB")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {**asdict(self), "fits": self.fits, "headroom_bytes": self.headroom_bytes}


def language_model(model):
    """The decoder stack (the module with ``embed_tokens`` and ``layers``), not a vision encoder."""
    for module in model.modules():
        if hasattr(module, "embed_tokens") and hasattr(module, "layers"):
            return module
    raise ValueError(f"{type(model).__name__}: no decoder stack with embed_tokens and layers found")


def layer_activations(layer, hidden: int, top_k: int, act_bytes: int, seq_len: int) -> LayerActivations:
    """Saved bytes per token of one (PEFT-wrapped) decoder layer, from its module shapes."""
    attn = layer.self_attn
    q_width = peft_layout.unwrap(attn.q_proj).out_features
    kv_width = peft_layout.unwrap(attn.k_proj).out_features
    q_heads, kv_heads = q_width // attn.head_dim, kv_width // attn.head_dim
    acts = LayerActivations()
    for name, module in layer.named_modules():
        if type(module).__name__.endswith("RMSNorm"):
            if name.endswith("q_norm"):
                width, rows = q_width, q_heads
            elif name.endswith(("k_norm", "v_norm")):
                width, rows = kv_width, kv_heads
            else:
                width, rows = hidden, 1
            acts.norms += 4 * width + 8 * rows  # fp32 input, and the mean square and its rsqrt per row
        elif (lora := peft_layout.lora_shape(module)) is not None and lora.kind == "linear":
            acts.lora_inputs += act_bytes * (lora.in_features + lora.rank)
    # queries and output, keys and values, the float mask SDPA builds per call (L per token), logsumexp
    acts.attention = act_bytes * (2 * q_width + 2 * kv_width + seq_len) + 4 * q_heads
    acts.dense_mlp = act_bytes * 3 * peft_layout.unwrap(layer.mlp.gate_proj).out_features
    experts = getattr(layer, "experts", None)
    if experts is not None:
        core = peft_layout.unwrap(experts)
        routing = 32 * top_k + 8 * top_k + act_bytes * top_k  # int64 indices, fp32 and bf16 routing weights
        acts.experts = 4 * core.num_experts + act_bytes * top_k * (2 * hidden + 4 * core.intermediate_dim) + routing
    return acts


def layer_weight_copies(layer, weight_bytes: int) -> tuple[int, int]:
    """(bytes of weight-sized tensors a layer's forward keeps for backward, the largest expert tensor).

    The expert tensors ``W + B·A`` that PEFT builds for ``target_parameters`` (with bf16 copies of
    their factors) dominate; autocast's bf16 copies of the LoRA factors and the RMSNorm weights
    upcast to fp32 are the small rest.
    """
    total, largest = 0, 0
    for module in layer.modules():
        lora = peft_layout.lora_shape(module)
        if lora is not None and lora.kind == "parameter":
            size = lora.parameter_numel * weight_bytes
            factors = lora.rank * lora.experts * (lora.in_features + lora.out_features)
            total += size + factors * weight_bytes
            largest = max(largest, size)
        elif lora is not None:
            total += lora.rank * (lora.in_features + lora.out_features) * weight_bytes
        elif type(module).__name__.endswith("RMSNorm") and getattr(module, "weight", None) is not None:
            total += 4 * module.weight.numel()
    return total, largest


def estimate(
    model_path,
    lora_cfg: targets.LoraSettings,
    *,
    seq_len: int,
    micro_batch_size: int,
    gradient_checkpointing: bool,
    loss_path: str = "supervised",
    device_gib: float = 80.0,
    weight_dtype: str = "bfloat16",
    revision: str | None = None,
) -> MemoryPlan:
    """The memory plan of a LoRA SFT run (see the module docstring for every formula).

    ``model_path`` is anything ``targets.load_config`` reads, or a transformers config (a reduced
    shape, as ``bench/gpu_train.py --layers`` builds); ``loss_path`` is a resolved one
    (``fastloss.choose_loss_path``).
    """
    import torch
    from peft import get_peft_model

    if weight_dtype not in DTYPE_BYTES:
        raise ValueError(f"weight_dtype {weight_dtype!r}: expected one of {sorted(DTYPE_BYTES)}")
    if loss_path not in fastloss.LOSS_PATHS:
        raise ValueError(f"loss_path {loss_path!r}: one of {', '.join(fastloss.LOSS_PATHS)} (resolve 'auto' first)")
    w = DTYPE_BYTES[weight_dtype]
    a = w  # activations follow the compute dtype: bf16 autocast on GPU, fp32 without
    config = targets.load_config(model_path, revision) if isinstance(model_path, str) else model_path
    model_path = (
        model_path
        if isinstance(model_path, str)
        else f"{config.model_type} ({config.get_text_config().num_hidden_layers} layers)"
    )
    text = config.get_text_config()
    model = targets.build_meta_model(config, dtype=getattr(torch, weight_dtype))
    n_weights = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    with torch.device("meta"):
        peft_model = get_peft_model(model, targets.peft_lora_config(config, lora_cfg))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    layers = list(language_model(peft_model).layers)
    tokens = seq_len * micro_batch_size
    hidden, vocab = text.hidden_size, text.vocab_size
    top_k = getattr(text, "top_k_experts", None) or 0

    per_layer = [layer_activations(layer, hidden, top_k, a, seq_len) for layer in layers]
    expert = [layer_weight_copies(layer, w) for layer in layers]
    acts_all = sum(p.per_token for p in per_layer) * tokens
    expert_all = sum(e[0] for e in expert)
    widest = max(range(len(layers)), key=lambda i: per_layer[i].per_token * tokens + expert[i][0])
    one_layer = per_layer[widest].per_token * tokens
    one_expert, largest_expert = expert[widest]
    layer_backward = largest_expert + one_layer
    head_rows = head_memory(loss_path, tokens, hidden, vocab, a, bool(getattr(text, "final_logit_softcapping", None)))

    rows = [
        Row("weights", n_weights * w, f"{n_weights:,} parameters and buffers x {w} B ({weight_dtype})"),
        Row("LoRA parameters", trainable * ADAPTER_BYTES, f"{trainable:,} x 4 B (fp32 adapter weights = master copy)"),
        Row("LoRA gradients", trainable * 4, f"{trainable:,} x 4 B"),
        Row("AdamW states (m, v)", trainable * 8, f"{trainable:,} x 2 x 4 B"),
    ]
    if gradient_checkpointing:
        saved = len(layers) * hidden * a * tokens
        rows += [
            Row("checkpointed layer inputs", saved, f"{len(layers)} layers x h {hidden} x {a} B x {tokens} tokens"),
            Row(
                "recomputed layer activations",
                one_layer,
                f"{per_layer[widest].per_token:,} B/token x {tokens} tokens (one layer)",
            ),
            Row(
                "recomputed weight copies", one_expert, "one layer's expert W+BA, bf16 LoRA factors, fp32 norm weights"
            ),
        ]
        layer_peak_extra = one_layer + one_expert + layer_backward
    else:
        saved = acts_all + expert_all
        rows += [
            Row("layer activations", acts_all, f"sum over {len(layers)} layers of B/token x {tokens} tokens"),
            Row(
                "weight copies (all layers)",
                expert_all,
                f"{len(layers)} layers x (expert W+BA, bf16 LoRA factors, fp32 norm weights)",
            ),
        ]
        layer_peak_extra = layer_backward
    rows += head_rows
    rows += [
        Row(
            "layer backward buffers", layer_backward, "largest expert W+BA gradient + one layer's activation gradients"
        ),
    ]
    static = rows[0].bytes + rows[1].bytes + rows[2].bytes + rows[3].bytes
    at_head = static + saved + sum(r.bytes for r in head_rows)
    at_layer = static + saved + layer_peak_extra
    moment = "loss head" if at_head >= at_layer else "backward through a decoder layer"
    dynamic = max(at_head, at_layer)
    overhead = CUDA_CONTEXT_BYTES + int(FRAGMENTATION * dynamic)
    rows.append(Row("CUDA context + fragmentation", overhead, "1.0 GiB + 5% of the rest (allowance)"))
    notes = [
        f"peak = the larger moment plus overhead, not the sum of the lines: loss head {at_head / GIB:.2f} GiB "
        f"(static + saved + head), decoder layer {at_layer / GIB:.2f} GiB (static + saved + one layer's backward)"
    ]
    if expert_all:
        notes.append(
            f"PEFT target_parameters materialise W+BA per layer ({expert[widest][0] / GIB:.2f} GiB); "
            "gradient checkpointing keeps one layer's copy instead of all"
        )
    notes.append(
        f"loss path {loss_path}: the logits over V {vocab:,} are never built whole "
        f"(the full tensor with its gradients would be {14 * tokens * vocab / GIB:.1f} GiB)"
    )
    plan = MemoryPlan(
        model=str(model_path),
        seq_len=seq_len,
        micro_batch_size=micro_batch_size,
        gradient_checkpointing=gradient_checkpointing,
        loss_path=loss_path,
        device_gib=device_gib,
        trainable_parameters=trainable,
        total_parameters=n_weights,
        rows=rows,
        peak_bytes=dynamic + overhead,
        peak_moment=moment,
        moments={"loss head": at_head, "backward through a decoder layer": at_layer},
        notes=notes,
    )
    log.info(
        "plan: peak %.2f GiB of %.2f GiB (%s)",
        plan.peak_bytes / GIB,
        device_gib,
        "fits" if plan.fits else "does not fit",
    )
    return plan


def head_memory(loss_path: str, tokens: int, hidden: int, vocab: int, act_bytes: int, softcap: bool) -> list[Row]:
    """The loss head's rows for a resolved loss path (see the module docstring); every token supervised."""
    norm_input = 4 * hidden * tokens
    if loss_path == "supervised":
        chunk = min(tokens, fastloss.chunk_rows(vocab))
        per_entry = 12 if softcap else 6
        return [
            Row(
                "loss head: rows and their gradient",
                norm_input + 2 * act_bytes * hidden * tokens,
                f"{tokens} tokens x h {hidden} x (4 B norm input + 2 x {act_bytes} B rows and gradient)",
            ),
            Row(
                "loss head: one chunk of logits",
                chunk * vocab * per_entry,
                f"{chunk} rows x V {vocab:,} x {per_entry} B (fp32 logits{', soft-cap' if softcap else ''}, temporary)",
            ),
        ]
    tile = min(tokens, TRL_TOKEN_TILE) * min(vocab, TRL_VOCAB_TILE) * act_bytes
    return [
        Row(
            "loss head: rows and their gradient",
            norm_input + (act_bytes + 4) * hidden * tokens,
            f"{tokens} tokens x h {hidden} x (4 B norm input + {act_bytes} B rows + 4 B fp32 gradient)",
        ),
        Row("loss head: TRL tile", tile, f"min(T, {TRL_TOKEN_TILE}) x {TRL_VOCAB_TILE} x {act_bytes} B"),
    ]


def plan_recipe(recipe, device_gib: float = 80.0, device_type: str = "cuda") -> MemoryPlan:
    """The plan of a recipe's train stage on ``device_type``: its model, LoRA, ``max_length``, micro
    batch, checkpointing, and the loss path the stage runs there (``fastloss.choose_loss_path``)."""
    cfg = recipe.training
    return estimate(
        recipe.model.id,
        cfg.lora,
        seq_len=cfg.max_length,
        micro_batch_size=cfg.micro_batch_size,
        gradient_checkpointing=cfg.gradient_checkpointing,
        loss_path=fastloss.choose_loss_path(cfg.loss_path, device_type),
        device_gib=device_gib,
        revision=recipe.model.revision,
    )


def check_fits(plan: MemoryPlan) -> None:
    """Raise ``MemoryPlanError`` with the numbers, and what to change, when the plan does not fit."""
    if plan.fits:
        return
    advice = []
    if not plan.gradient_checkpointing:
        advice.append("training.gradient_checkpointing=true")
    if plan.micro_batch_size > 1:
        advice.append("a smaller training.micro_batch_size (raise gradient_accumulation_steps)")
    advice.append("a shorter training.max_length")
    raise MemoryPlanError(
        f"the training run needs about {plan.peak_bytes / GIB:.1f} GiB at its peak but the device has "
        f"{plan.device_gib:.1f} GiB (short by {-plan.headroom_bytes / GIB:.1f} GiB); try "
        + ", ".join(advice)
        + "\n"
        + plan.table()
    )


def check_device(recipe) -> dict | None:
    """Refuse a GPU run whose plan does not fit the device: the plan's figures, or None on CPU.

    The device size is ``training.device_gib`` when the recipe sets it, else the first CUDA
    device's; without either (a CPU run) there is nothing to check.
    """
    import torch

    device_gib = recipe.training.device_gib
    if device_gib is None:
        if not torch.cuda.is_available():
            return None
        device_gib = torch.cuda.get_device_properties(0).total_memory / GIB
    plan = plan_recipe(recipe, device_gib=device_gib)
    log.info("train: memory plan\n%s", plan.table())
    check_fits(plan)
    return {"peak_gib": round(plan.peak_bytes / GIB, 2), "device_gib": round(device_gib, 2)}
