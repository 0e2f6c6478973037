"""Axolotl backend: dataset rows on the real Gemma tokenizer, the YAML, Axolotl's own validation
and label masks (in its venv), and one real `axolotl train` on the tiny Gemma 4 MoE (CPU)."""

import json
import subprocess
import textwrap

import pytest
import yaml

from pipeline import models, runs
from pipeline.recipe import Recipe
from pipeline.training import axolotl

VENV = axolotl.venv_path()
needs_axolotl = pytest.mark.skipif(
    not (VENV / "bin" / "axolotl").is_file(),
    reason=f"{VENV} is missing: create it with `{axolotl.INSTALL_HINT}` (./run.sh setup-axolotl)",
)
EXPERTS = ["experts.gate_up_proj", "experts.down_proj"]


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer

    path = models.resolve(models.RANDOM_TINY)
    return path, AutoTokenizer.from_pretrained(path)


def _samples(tok):
    prompt = tok("def add(a, b):\n").input_ids
    body = tok("    return a + b\n", add_special_tokens=False).input_ids
    return (
        prompt,
        body,
        [
            {
                "prompt_token_ids": prompt,
                "completion_token_ids": body + [tok.eos_token_id],
                "finish_reason": "stop",
                "stop_reason": None,
            },
            {"prompt_token_ids": prompt, "completion_token_ids": body, "finish_reason": "length", "stop_reason": None},
        ],
    )


def _recipe(**training) -> Recipe:
    lora = {"r": 8, "alpha": 16, "target_modules": "auto", "target_parameters": EXPERTS}
    base = {
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 2,
        "max_length": 128,
        "learning_rate": 1e-3,
        "min_learning_rate": 1e-4,
        "lora": lora,
    }
    return Recipe(name="tiny", model={"id": models.RANDOM_TINY}, training={**base, **training})


def test_rows_keep_bos_and_the_terminator_only_where_the_model_stopped(tiny):
    _, tok = tiny
    prompt, body, samples = _samples(tok)
    rows, counts = axolotl.dataset_rows(samples, tok, max_length=128)
    stopped, cut = rows
    assert [s["label"] for s in stopped["segments"]] == [False, True]
    assert stopped["segments"][0]["text"] == "<bos>def add(a, b):\n"
    assert stopped["segments"][1]["text"] == "    return a + b\n<eos>"
    assert cut["segments"][1]["text"] == "    return a + b\n"
    # Axolotl tokenizes each segment with add_special_tokens=False: the ids come back exactly
    for row, completion in ((stopped, body + [tok.eos_token_id]), (cut, body)):
        texts = [s["text"] for s in row["segments"]]
        assert [tok(t, add_special_tokens=False).input_ids for t in texts] == [prompt, completion]
    assert counts == {"rows": 2, "skipped_prompt_too_long": 0, "cut": 0, "stopped": 1, "retokenized_differently": 0}


def test_rows_fail_loudly_or_count_what_they_change(tiny):
    _, tok = tiny
    prompt, body, samples = _samples(tok)
    lying = {**samples[1], "finish_reason": "stop"}  # says it stopped, but no terminator was produced
    with pytest.raises(axolotl.AxolotlError, match=r"samples:2: finish_reason 'stop' but completion_token_ids end"):
        axolotl.dataset_rows([samples[0], lying], tok, 128)
    by_string = {**samples[1], "finish_reason": "stop", "stop_reason": "\n"}  # a stop string ended it: no terminator
    assert len(axolotl.dataset_rows([by_string], tok, 128)[0]) == 1
    start_of_turn = tok.convert_tokens_to_ids("<start_of_turn>")  # not a terminator, but a recipe may stop on it
    by_token = {
        **samples[1],
        "completion_token_ids": body + [start_of_turn],
        "finish_reason": "stop",
        "stop_reason": start_of_turn,
    }
    assert axolotl.dataset_rows([by_token], tok, 128)[1]["stopped"] == 1  # a stop_token_ids hit keeps its token
    rows, counts = axolotl.dataset_rows(samples, tok, max_length=len(prompt) + 2)
    assert counts["cut"] == 2 and all(not r["segments"][1]["text"].endswith("<eos>") for r in rows)
    with pytest.raises(axolotl.AxolotlError, match="no row has a supervised token"):
        axolotl.dataset_rows(samples, tok, max_length=len(prompt))


def test_config_carries_the_recipe_with_cpu_and_gpu_values(tiny, tmp_path):
    path, tok = tiny
    recipe = _recipe(gradient_checkpointing=True, warmup_ratio=0.1)
    cpu = axolotl.build_config(recipe, path, tmp_path / "d.jsonl", tmp_path / "out", tok, gpu=False)
    assert cpu["base_model"] == path and cpu["adapter"] == "lora"
    assert (cpu["lora_r"], cpu["lora_alpha"], cpu["lora_dropout"]) == (8, 16, 0.0)
    assert cpu["lora_target_parameters"] == EXPERTS
    assert "language_model" in cpu["lora_target_modules"] and "lora_target_linear" not in cpu
    assert cpu["datasets"] == [{"path": str(tmp_path / "d.jsonl"), "type": "input_output", "ds_type": "json"}]
    assert cpu["train_on_inputs"] is False and cpu["sequence_len"] == 128 and cpu["sample_packing"] is False
    assert (cpu["micro_batch_size"], cpu["gradient_accumulation_steps"], cpu["max_steps"]) == (2, 1, 2)
    assert cpu["learning_rate"] == 1e-3 and cpu["cosine_min_lr_ratio"] == pytest.approx(0.1)
    assert (cpu["lr_scheduler"], cpu["optimizer"], cpu["adam_beta1"], cpu["adam_beta2"], cpu["weight_decay"]) == (
        "cosine",
        "adamw_torch",
        0.9,
        0.95,
        0.1,
    )
    assert cpu["warmup_ratio"] == 0.1 and cpu["gradient_checkpointing"] is True
    assert cpu["bf16"] is False and cpu["fp16"] is False and cpu["lora_mlp_kernel"] is False
    assert (
        "plugins" not in cpu and "use_scattermoe" not in cpu and "eot_tokens" not in cpu
    )  # Gemma 3 tokenizer: no <turn|>
    gpu = axolotl.build_config(recipe, path, tmp_path / "d.jsonl", tmp_path / "out", tok, gpu=True)
    assert gpu["bf16"] is True and gpu["plugins"] == ["axolotl.integrations.kernels.KernelsPlugin"]
    assert gpu["use_kernels"] and gpu["use_scattermoe"] and gpu["experts_implementation"] == "scattermoe"
    assert "lora_mlp_kernel" not in gpu

    from transformers import Gemma3TextConfig

    dense_dir = tmp_path / "dense"
    Gemma3TextConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
    ).save_pretrained(dense_dir)
    dense = axolotl.build_config(
        _recipe(lora={"target_modules": "auto", "target_parameters": []}),
        str(dense_dir),
        tmp_path / "d.jsonl",
        tmp_path / "out",
        tok,
        gpu=True,
    )
    assert dense["lora_target_linear"] is True
    assert "lora_target_modules" not in dense and "lora_target_parameters" not in dense and "plugins" not in dense


def test_written_yaml_opens_with_the_command_and_reads_back(tiny, tmp_path):
    path, tok = tiny
    config = axolotl.build_config(_recipe(), path, tmp_path / "d.jsonl", tmp_path / "out", tok, gpu=False)
    written = axolotl.write_config(config, tmp_path / "axolotl.yaml", "tiny")
    text = written.read_text()
    assert "lora_target_parameters:  # fused MoE expert weights" in text
    assert text.startswith("# Axolotl config written by the SSD pipeline from recipe 'tiny'")
    assert "axolotl train axolotl.yaml --launcher python" in text
    assert yaml.safe_load(text) == config  # comments do not change a value


@needs_axolotl
def test_axolotl_validation_keeps_every_key_and_refuses_unknown_ones(tiny, tmp_path):
    path, tok = tiny
    # the GPU config here; the CPU one is validated before the slow test trains on it (each
    # validation starts Axolotl's Python: half a minute)
    config = axolotl.build_config(_recipe(), path, tmp_path / "d.jsonl", tmp_path / "out", tok, gpu=True)
    assert axolotl.validate(axolotl.write_config(config, tmp_path / "ok.yaml", "tiny")).dropped == []
    config["lora_target_paramters"] = ["experts.down_proj"]  # a typo Axolotl would silently ignore
    bad = axolotl.write_config(config, tmp_path / "bad.yaml", "tiny")
    with pytest.raises(axolotl.AxolotlError, match=r"bad\.yaml: Axolotl 0\.19\.0 dropped keys .*lora_target_paramters"):
        axolotl.validate(bad)
    config.pop("lora_target_paramters")
    stale = tmp_path / "out"
    stale.mkdir()
    (stale / "adapter_config.json").write_text("{}")
    with pytest.raises(axolotl.AxolotlError, match="is not empty; a stale adapter"):
        axolotl.train(bad, tmp_path / "never.log")
    config["micro_batch_size"] = "two"
    with pytest.raises(axolotl.AxolotlError, match=r"(?s)rejected the config.*micro_batch_size"):
        axolotl.validate(axolotl.write_config(config, tmp_path / "wrong_type.yaml", "tiny"))


_LABELS = textwrap.dedent(
    """
    import json, sys
    from transformers import AutoTokenizer
    from axolotl.prompt_strategies.input_output import load
    from axolotl.utils.dict import DictDefault

    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    strategy = load(tokenizer, DictDefault(train_on_inputs=False, sequence_len=128))
    rows = [json.loads(line) for line in open(sys.argv[2])]
    print(json.dumps([strategy.tokenize_prompt(row) for row in rows]))
    """
)


@needs_axolotl
def test_axolotl_tokenizes_the_rows_into_the_sampled_ids_with_completion_labels(tiny, tmp_path):
    path, tok = tiny
    prompt, body, samples = _samples(tok)
    runs.atomic_write_jsonl(tmp_path / "samples.jsonl", samples)
    counts = axolotl.write_dataset(tmp_path / "samples.jsonl", tmp_path / "data.jsonl", tok, 128)
    assert counts["rows"] == 2
    out = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", _LABELS, path, str(tmp_path / "data.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
        env=axolotl.axolotl_env(),
        check=True,
    )
    stopped, cut = json.loads(out.stdout.strip().splitlines()[-1])
    assert stopped["input_ids"] == prompt + body + [tok.eos_token_id]
    assert stopped["labels"] == [-100] * len(prompt) + body + [tok.eos_token_id]
    assert cut["input_ids"] == prompt + body and cut["labels"] == [-100] * len(prompt) + body


@needs_axolotl
@pytest.mark.slow
def test_axolotl_trains_expert_lora_on_the_tiny_moe(tiny, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path, tok = tiny
    _, _, samples = _samples(tok)
    runs.atomic_write_jsonl(tmp_path / "samples.jsonl", samples * 4)
    axolotl.write_dataset(tmp_path / "samples.jsonl", tmp_path / axolotl.DATASET_FILE, tok, 128)
    config = axolotl.build_config(
        _recipe(), path, tmp_path / axolotl.DATASET_FILE, tmp_path / "adapter", tok, gpu=False
    )
    config_path = axolotl.write_config(config, tmp_path / axolotl.CONFIG_FILE, "tiny")
    assert axolotl.validate(config_path).dropped == []  # the CPU config keeps every key
    adapter = axolotl.train(config_path, tmp_path / "axolotl.log", timeout=900)
    assert "Training completed" in (tmp_path / "axolotl.log").read_text()
    assert json.loads((adapter / "adapter_config.json").read_text())["target_parameters"] == EXPERTS
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), str(adapter))
    expert_b = {n: p for n, p in model.named_parameters() if ".experts." in n and "lora_B" in n}
    assert len(expert_b) == 6 * 2
    assert all(p.abs().max() > 0 for p in expert_b.values())  # B starts at zero: these were trained
