"""Axolotl as a training backend: the same recipe, written as Axolotl's YAML and dataset, run as a subprocess.

Axolotl lives in its own virtual environment (``.venv-axolotl``; its torch/transformers/PEFT
pins differ from vLLM's), so this module never imports it: it writes files, validates them by
running Axolotl's own schema in that environment, and launches ``axolotl train``.

Data: ``type: input_output`` with ``train_on_inputs: false`` gives completion-only labels. Each
row is ``{"segments": [{"label": false, "text": PROMPT}, {"label": true, "text": COMPLETION}]}``.
Axolotl tokenizes every segment with ``add_special_tokens=False``, so the texts are decoded
from the token ids the sampler recorded, special tokens included: the prompt starts with the
BOS the model saw, a completion that stopped on a terminator ends with it, and one cut at
``max_tokens`` (``finish_reason == "length"``) ends without one. Rows are checked to tokenize
back to exactly those ids; rows that do not (a sampled token sequence that is not the
tokenizer's own segmentation of its text) are counted, because Axolotl would train on the
re-tokenized ids.

Validation: Axolotl drops unknown keys silently, so a misspelt or version-skewed key would
simply not apply. ``validate`` compares the written keys with Axolotl's validated config and
fails on any key that did not survive.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.training import targets

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENV = ROOT / ".venv-axolotl"
AXOLOTL_VERSION = "0.19.0"
DATASET_FILE = "axolotl_dataset.jsonl"
CONFIG_FILE = "axolotl.yaml"
INSTALL_HINT = "./run.sh setup-axolotl"
GEMMA4_END_OF_TURN = "<turn|>"
GEMMA4_MOE_GPU = {
    # Axolotl's Gemma 4 MoE examples: ScatterMoE kernels for the routed experts (with expert LoRA),
    # instead of transformers' grouped_mm over a materialised W + BA per layer.
    "plugins": ["axolotl.integrations.kernels.KernelsPlugin"],
    "use_kernels": True,
    "use_scattermoe": True,
    "experts_implementation": "scattermoe",
}
CPU_SAFE = {
    # Axolotl auto-enables Triton LoRA kernels for lora adapters; there is no Triton on CPU.
    "lora_mlp_kernel": False,
    "lora_qkv_kernel": False,
    "lora_o_kernel": False,
    "lora_embedding_kernel": False,
}


class AxolotlError(RuntimeError):
    """Axolotl is missing, refused the config, or failed to train; the message says what to do."""


def venv_path() -> Path:
    """Axolotl's environment: ``$SSD_AXOLOTL_VENV`` or ``.venv-axolotl`` at the repository root."""
    return Path(os.environ.get("SSD_AXOLOTL_VENV", DEFAULT_VENV))


def executable(name: str, venv: Path | None = None) -> Path:
    """A program inside Axolotl's environment, or an error naming the install command."""
    path = (venv or venv_path()) / "bin" / name
    if not path.is_file():
        raise AxolotlError(f"{path} not found: Axolotl is not installed; run: {INSTALL_HINT}")
    return path


def axolotl_env() -> dict[str, str]:
    """This process's environment for Axolotl.

    Without AXOLOTL_DO_NOT_TRACK, Axolotl's telemetry upload hangs at exit when offline.
    """
    return {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}


# ---------------------------------------------------------------------------------------- data


def _terminators(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    for token in (GEMMA4_END_OF_TURN, "<end_of_turn>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return ids - {None}


def dataset_rows(samples: list[dict], tokenizer, max_length: int, source: str = "samples") -> tuple[list[dict], dict]:
    """Axolotl ``input_output`` rows from sample rows, and counts (see the module docstring).

    Completions longer than ``max_length`` minus the prompt are cut (as the TRL path does); a
    prompt that fills ``max_length`` is skipped and counted. A ``stop`` sample must end on a
    terminator token unless a stop string ended it; anything else means the sample file does not
    say what the model produced, and is an error naming the row.
    """
    terminators = _terminators(tokenizer)
    rows, counts = [], {"rows": 0, "skipped_prompt_too_long": 0, "cut": 0, "stopped": 0, "retokenized_differently": 0}
    for line, sample in enumerate(samples, 1):
        prompt, completion = sample["prompt_token_ids"], sample["completion_token_ids"]
        finish, stop_reason = sample.get("finish_reason"), sample.get("stop_reason")
        if finish == "stop" and not isinstance(stop_reason, str):  # a stop token, not a stop string
            allowed = terminators | ({stop_reason} if isinstance(stop_reason, int) else set())
            if not completion or completion[-1] not in allowed:
                raise AxolotlError(
                    f"{source}:{line}: finish_reason 'stop' but completion_token_ids end with "
                    f"{completion[-1:]} (terminators {sorted(allowed)})"
                )
            counts["stopped"] += 1
        room = max_length - len(prompt)
        if room <= 0:
            counts["skipped_prompt_too_long"] += 1
            continue
        if len(completion) > room:
            completion = completion[:room]
            counts["cut"] += 1
        if not completion:
            raise AxolotlError(f"{source}:{line}: empty completion_token_ids: nothing to supervise")
        prompt_text = tokenizer.decode(prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        completion_text = tokenizer.decode(completion, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        again = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (prompt_text, completion_text)]
        if again != [prompt, completion]:
            counts["retokenized_differently"] += 1
        rows.append({"segments": [{"label": False, "text": prompt_text}, {"label": True, "text": completion_text}]})
    if not rows:
        raise AxolotlError(
            f"{source}: no row has a supervised token "
            f"({counts['skipped_prompt_too_long']} prompts fill max_length={max_length})"
        )
    counts["rows"] = len(rows)
    if counts["retokenized_differently"]:
        log.warning(
            "axolotl data: %d of %d rows do not tokenize back to the sampled ids; "
            "Axolotl trains on the re-tokenized ids",
            counts["retokenized_differently"],
            len(rows),
        )
    return rows, counts


def write_dataset(samples_path: Path, out_path: Path, tokenizer, max_length: int) -> dict:
    """Write ``out_path`` (JSONL for Axolotl) from ``samples.jsonl``; return the counts."""
    from pipeline import runs

    samples = runs.read_jsonl(samples_path)
    rows, counts = dataset_rows(samples, tokenizer, max_length, source=str(samples_path))
    runs.atomic_write_jsonl(out_path, rows)
    log.info("axolotl data: %d rows in %s (%s)", len(rows), out_path, counts)
    return counts


# -------------------------------------------------------------------------------------- config


def build_config(
    recipe, model_path: str, dataset_path: Path, output_dir: Path, tokenizer, *, gpu: bool | None = None
) -> dict[str, Any]:
    """Axolotl's config for the recipe's train stage, as a dict (``write_config`` adds comments).

    ``gpu`` (default: whether this process sees CUDA) picks bf16 and, for Gemma 4 MoE, the
    ScatterMoE kernels; without a GPU, the CPU-safe values of ``CPU_SAFE``.
    """
    import torch

    if gpu is None:
        gpu = torch.cuda.is_available()
    cfg = recipe.training
    lora = cfg.lora
    model_config = targets.load_config(model_path, recipe.model.revision)
    modules, parameters = targets.resolve_targets(model_config, lora)
    config: dict[str, Any] = {"base_model": str(model_path)}
    if recipe.model.revision:
        config["revision_of_model"] = recipe.model.revision
    config.update(
        adapter="lora",
        lora_r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
    )
    if modules == targets.ALL_LINEAR:
        config["lora_target_linear"] = True
    elif modules:
        config["lora_target_modules"] = modules
    if parameters:
        config["lora_target_parameters"] = parameters
    config.update(
        datasets=[{"path": str(dataset_path), "type": "input_output", "ds_type": "json"}],
        train_on_inputs=False,
        dataset_prepared_path=str(output_dir.parent / "axolotl_prepared"),
        val_set_size=0.0,
        sequence_len=cfg.max_length,
        excess_length_strategy="truncate",
        sample_packing=False,
        micro_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        lr_scheduler="cosine",
        cosine_min_lr_ratio=cfg.min_learning_rate / cfg.learning_rate,
        warmup_ratio=cfg.warmup_ratio,
        optimizer="adamw_torch",
        adam_beta1=cfg.adam_beta1,
        adam_beta2=cfg.adam_beta2,
        weight_decay=cfg.weight_decay,
        bf16=gpu,
        fp16=False,
        gradient_checkpointing=cfg.gradient_checkpointing,
        seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="no",
        save_safetensors=True,
        output_dir=str(output_dir),
    )
    if cfg.max_steps > 0:
        config["max_steps"] = cfg.max_steps
    if gpu and targets.is_gemma4_moe(model_config):
        config.update(GEMMA4_MOE_GPU)
    if not gpu:
        config.update(CPU_SAFE)
    if targets.is_gemma4_moe(model_config) and GEMMA4_END_OF_TURN in tokenizer.get_vocab():
        config["eot_tokens"] = [GEMMA4_END_OF_TURN]
    return config


_COMMENTS = {
    "adapter": "LoRA on the frozen base; the adapter is what the registry promotes",
    "lora_target_parameters": "fused MoE expert weights (3D parameters, not nn.Linear)",
    "train_on_inputs": "loss on completion tokens only",
    "excess_length_strategy": "rows are pre-cut to sequence_len; truncate guards re-tokenization",
    "sample_packing": "off: a micro batch is micro_batch_size samples, as in the TRL path",
    "cosine_min_lr_ratio": "min_learning_rate / learning_rate",
    "optimizer": "plain AdamW (the default is the fused variant)",
    "bf16": "true on GPU; on CPU false (unset resolves to fp16, 15x slower)",
    "save_strategy": "only the final adapter is written",
    "use_scattermoe": "ScatterMoE expert kernels with expert LoRA (GPU only)",
    "lora_mlp_kernel": "Triton kernels are auto-enabled for LoRA and do not exist on CPU",
    "eot_tokens": "Gemma 4's end of turn",
}


def write_config(config: dict[str, Any], path: Path, recipe_name: str) -> Path:
    """Write ``config`` as YAML with the launch command on top and a reason beside key lines."""
    from pipeline import runs

    header = textwrap.dedent(
        f"""\
        # Axolotl config written by the SSD pipeline from recipe '{recipe_name}'.
        #
        #   AXOLOTL_DO_NOT_TRACK=1 .venv-axolotl/bin/axolotl train {path.name} --launcher python
        #
        # Needs: {INSTALL_HINT}
        """
    )
    lines = []
    for line in yaml.safe_dump(config, sort_keys=False, width=200).splitlines():
        key = line.split(":", 1)[0]
        note = _COMMENTS.get(key) if not line.startswith((" ", "-")) else None
        lines.append(f"{line}  # {note}" if note else line)
    runs.atomic_write_text(path, header + "\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------- validation

_VALIDATE = textwrap.dedent(
    """
    import json, sys, yaml
    from axolotl.cli.config import prepare_plugins
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    written = yaml.safe_load(open(sys.argv[1]))
    cfg = DictDefault(yaml.safe_load(open(sys.argv[1])))
    prepare_plugins(cfg)
    try:
        validated = validate_config(cfg)
    except Exception as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(0)

    dropped, changed = [], {}

    def compare(a, b, where):
        if isinstance(a, dict):
            for key, value in a.items():
                if not isinstance(b, dict) or key not in b:
                    dropped.append(where + key)
                else:
                    compare(value, b[key], where + key + ".")
        elif isinstance(a, list) and a and isinstance(a[0], dict):
            for i, item in enumerate(a):
                compare(item, b[i] if isinstance(b, list) and i < len(b) else None, f"{where[:-1]}[{i}].")
        elif a != b:
            changed[where[:-1]] = [a, b]

    compare(written, validated.to_dict() if hasattr(validated, "to_dict") else dict(validated), "")
    print(json.dumps({"dropped": dropped, "changed": changed}, default=str))
    """
)


@dataclass
class Validation:
    """What Axolotl made of a written config."""

    dropped: list[str] = field(default_factory=list)  # keys Axolotl's schema did not keep
    changed: dict[str, list] = field(default_factory=dict)  # key -> [written, validated]


def validate(config_path: Path, venv: Path | None = None, timeout: float = 600) -> Validation:
    """Validate with Axolotl's own schema (in its environment); raise ``AxolotlError`` on errors or dropped keys."""
    python = executable("python", venv)
    proc = subprocess.run(
        [str(python), "-c", _VALIDATE, str(config_path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=axolotl_env(),
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AxolotlError(
            f"{config_path}: Axolotl's validation did not run (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    result = json.loads(lines[-1])
    if "error" in result:
        raise AxolotlError(f"{config_path}: Axolotl rejected the config: {result['error']}")
    validation = Validation(dropped=result["dropped"], changed=result["changed"])
    if validation.dropped:
        raise AxolotlError(
            f"{config_path}: Axolotl {AXOLOTL_VERSION} dropped keys it does not know: {', '.join(validation.dropped)} "
            "(they would silently not apply)"
        )
    if validation.changed:
        log.info("axolotl: values Axolotl normalised: %s", validation.changed)
    return validation


# ------------------------------------------------------------------------------------ training


def train(config_path: Path, log_path: Path, venv: Path | None = None, timeout: float | None = None) -> Path:
    """Run ``axolotl train CONFIG --launcher python``, its output streamed to ``log_path``; return the adapter dir.

    The adapter directory is the config's ``output_dir``; it must hold a PEFT adapter when
    Axolotl exits, or this raises with the end of the log.
    """
    program = executable("axolotl", venv)
    config = yaml.safe_load(config_path.read_text())
    output_dir = Path(config["output_dir"])
    if output_dir.exists() and any(output_dir.iterdir()):
        raise AxolotlError(
            f"{config_path}: output_dir {output_dir} is not empty; a stale adapter there would pass for this run's"
        )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [str(program), "train", str(config_path), "--launcher", "python"]
    log.info("axolotl: %s (log: %s)", " ".join(command), log_path)
    started = time.time()
    with open(log_path, "w") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=axolotl_env(),
            cwd=config_path.parent,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: Axolotl and any dataloader workers
            proc.wait()
            raise AxolotlError(f"axolotl train ran past {timeout} s and was stopped; see {log_path}") from None
    tail = log_path.read_text()[-3000:]
    if code != 0:
        raise AxolotlError(
            f"axolotl train exited with {code} after {time.time() - started:.0f} s; end of {log_path}:\n{tail}"
        )
    if not (output_dir / "adapter_config.json").is_file():
        raise AxolotlError(
            f"axolotl train finished but {output_dir} has no adapter_config.json; end of {log_path}:\n{tail}"
        )
    log.info("axolotl: adapter in %s after %.0f s", output_dir, time.time() - started)
    return output_dir


def train_recipe(recipe, samples: Path, work: Path, model_path: str) -> tuple[Path, dict]:
    """The recipe's train stage through Axolotl, in ``work``: dataset, config, validation, training.

    Returns ``(adapter directory, counts)``. Axolotl refuses a non-empty output directory, so
    the output of an interrupted earlier attempt is moved aside and the run restarts cleanly.
    """
    import torch
    from transformers import AutoTokenizer

    from pipeline import runs

    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=recipe.model.revision)
    counts = write_dataset(samples, work / DATASET_FILE, tokenizer, recipe.training.max_length)
    output = work / "output"
    if output.exists():
        runs.move_aside(output, "interrupted")
    config = build_config(recipe, model_path, work / DATASET_FILE, output, tokenizer, gpu=torch.cuda.is_available())
    config_path = write_config(config, work / CONFIG_FILE, recipe.name)
    validate(config_path)
    adapter = train(config_path, work / "axolotl.log")
    counts["config"] = str(config_path)
    return adapter, counts
