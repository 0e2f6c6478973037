"""Training data and labels on the real tokenizer and the real TRL preparation."""

from pathlib import Path

import pytest
from conftest import ROOT, ssd

from pipeline import models
from pipeline.recipe import Recipe
from pipeline.training.trl import (
    TrainingDataError,
    build_examples,
    check_labels,
    last_complete_checkpoint,
    make_trainer,
)

EOS, BOS = 1, 2


def _row(prompt, completion, finish):
    return {"prompt_token_ids": prompt, "completion_token_ids": completion, "finish_reason": finish}


def test_examples_supervise_exactly_the_completion():
    examples, counts = build_examples([_row([BOS, 5, 6], [7, 8, EOS], "stop")], max_length=64)
    assert examples == [{"input_ids": [BOS, 5, 6, 7, 8, EOS], "completion_mask": [0, 0, 0, 1, 1, 1]}]
    assert counts["supervised_tokens"] == 3 and counts["skipped_prompt_too_long"] == 0


def test_prompt_that_fills_max_length_is_skipped_and_counted():
    rows = [_row([BOS] + [5] * 10, [7, EOS], "stop"), _row([BOS, 5], [7, 8], "length")]
    examples, counts = build_examples(rows, max_length=8)
    assert len(examples) == 1 and counts["skipped_prompt_too_long"] == 1
    with pytest.raises(TrainingDataError, match="no example has a supervised token"):
        build_examples(rows[:1], max_length=8)


def test_check_labels_catches_empty_masks_and_dropped_rows():
    with pytest.raises(TrainingDataError, match="example 1 has no supervised token"):
        check_labels(_FakeDataset([[-100, 3], [-100, -100]]), 2)
    with pytest.raises(TrainingDataError, match="TRL kept 1 of 2 examples"):
        check_labels(_FakeDataset([[-100, 3]]), 2)


class _FakeDataset(dict):
    """The two things check_labels reads from a datasets.Dataset: len() and ["labels"]."""

    def __init__(self, labels):
        super().__init__(labels=labels)

    def __len__(self):
        return len(self["labels"])


@pytest.mark.slow
def test_trl_labels_keep_the_terminator_only_where_the_model_stopped(tmp_path):
    """On the real Gemma tokenizer and TRL's own preparation: a sample that stopped on <eos>
    supervises <eos> as its last token; a sample cut at max_tokens gets no terminator added."""
    path = models.resolve("random:gemma4-tiny")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    prompt = tok("def add(a, b):\n").input_ids
    body = tok("    return a + b\n", add_special_tokens=False).input_ids
    rows = [_row(prompt, body + [tok.eos_token_id], "stop"), _row(prompt, body, "length")]
    examples, _ = build_examples(rows, max_length=128)
    recipe = Recipe(model={"id": "random:gemma4-tiny"}, training={"micro_batch_size": 2, "max_steps": 1})
    trainer, _ = make_trainer(recipe, path, examples, tmp_path)
    stopped, cut = trainer.train_dataset["labels"]
    assert stopped[: len(prompt)] == [-100] * len(prompt)
    assert stopped[len(prompt) :] == body + [tok.eos_token_id]
    assert cut[len(prompt) :] == body and tok.eos_token_id not in cut
    assert trainer.train_dataset["input_ids"][1] == prompt + body  # TRL appended nothing


# --- the train stage through the CLI: resume after kill -9, refusal of a run that cannot fit --

TRAIN = ["training.max_steps=6", "training.save_steps=2", "training.micro_batch_size=2"]


def _seed_run(base, *overrides):
    """A run directory holding samples.jsonl made from real prompts and the real tokenizer."""
    import json

    from transformers import AutoTokenizer

    from pipeline.prompts import load_prompts
    from pipeline.recipe import load_recipe

    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml", [f"runs_dir={base}", *overrides])
    run = base / recipe.resolved_run_id()
    run.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(models.resolve(models.RANDOM_TINY))
    rows = []
    for i, p in enumerate(load_prompts(ROOT / "data" / "mbpp_train.jsonl", limit=12)):
        body = tok(f"    return {i} + sum(range({i}))\n", add_special_tokens=False).input_ids
        rows.append(_row(tok(p["prompt"]).input_ids, body + [tok.eos_token_id], "stop"))
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _adapter_tensors(run):
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_adapter(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    whole = _seed_run(tmp_path / "whole", *TRAIN)
    proc = ssd("train", "recipes/tiny.yaml", f"runs_dir={tmp_path / 'whole'}", *TRAIN)
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = _seed_run(tmp_path / "killed", *TRAIN)
    cmd = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "train",
        "recipes/tiny.yaml",
        f"runs_dir={tmp_path / 'killed'}",
        *TRAIN,
    ]
    child = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    marker = killed / "train" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 600
    while not marker.exists() and time.time() < deadline and child.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)  # let the checkpoint's files land
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert marker.exists(), "no checkpoint was written before the kill"
    assert not (killed / "adapter").exists()
    proc = ssd("train", "recipes/tiny.yaml", f"runs_dir={tmp_path / 'killed'}", *TRAIN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "checkpoint-" in proc.stderr
    a, b = _adapter_tensors(whole), _adapter_tensors(killed)
    assert a.keys() == b.keys() and any("experts" in k for k in a)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=1e-5), name
    assert any(a[name].abs().sum() > 0 for name in a if "lora_B" in name)


def test_a_run_that_cannot_fit_is_refused_with_the_numbers(tmp_path):
    run = _seed_run(tmp_path, "training.device_gib=0.01")
    proc = ssd("train", "recipes/tiny.yaml", f"runs_dir={tmp_path}", "training.device_gib=0.01")
    assert proc.returncode == 1
    assert "GiB at its peak but the device has 0.0 GiB" in proc.stderr and "weights" in proc.stderr
    assert not (run / "adapter").exists() and not (run / "train").exists()


# --- the turn terminator on real tokenizers: kept where the model stopped, absent where cut ---

GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def _gemma4_tokenizer(tmp_path):
    """The Gemma 3 tokenizer with ids 105/106 named as Gemma 4 names them (<|turn>, <turn|>)."""
    import json

    from transformers import AutoTokenizer

    src = models.resolve("embedded:gemma3-270m")
    data = json.loads((Path(src) / "tokenizer.json").read_text())
    rename = {"<start_of_turn>": "<|turn>", "<end_of_turn>": "<turn|>"}
    for token in data["added_tokens"]:
        token["content"] = rename.get(token["content"], token["content"])
    vocab = data["model"]["vocab"]
    if isinstance(vocab, dict):
        data["model"]["vocab"] = {rename.get(k, k): v for k, v in vocab.items()}
    else:
        data["model"]["vocab"] = [[rename.get(k, k), v] for k, v in vocab]
    out = tmp_path / "gemma4-tok"
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    (out / "tokenizer.json").write_text(json.dumps(data))
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = (ROOT / "tests" / "data" / "gemma4_chat_template.jinja").read_text()
    return tok


def _stopped_and_cut_labels(tok, tmp_path, terminator: str):
    from pipeline import generation

    end = generation.end_of_turn_ids(tok)
    assert end == [tok.convert_tokens_to_ids(terminator)] == [106]
    _, prompt = generation.render(
        tok, {"id": "x", "prompt": "Write add(a, b)."}, chat=True, system_prompt=None, enable_thinking=False
    )
    body = tok("```python\ndef add(a, b):\n    return a + b\n```", add_special_tokens=False).input_ids
    rows = [_row(prompt, body + end, "stop"), _row(prompt, body, "length")]
    examples, _ = build_examples(rows, max_length=256)
    recipe = Recipe(model={"id": "random:gemma4-tiny"}, training={"micro_batch_size": 2, "max_steps": 1})
    trainer, _ = make_trainer(recipe, models.resolve("random:gemma4-tiny"), examples, tmp_path / "trl")
    stopped, cut = trainer.train_dataset["labels"]
    assert stopped[: len(prompt)] == [-100] * len(prompt)
    assert stopped[len(prompt) :] == body + [106]  # the terminator is a trained label
    assert tok.decode(stopped[-1:]) == terminator
    assert cut[len(prompt) :] == body and 106 not in cut and tok.eos_token_id not in cut  # nothing appended


@pytest.mark.slow
def test_gemma3_end_of_turn_is_trained_only_where_the_sample_stopped(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models.resolve("embedded:gemma3-270m"))
    tok.chat_template = GEMMA3_TEMPLATE
    _stopped_and_cut_labels(tok, tmp_path, "<end_of_turn>")


@pytest.mark.slow
def test_gemma4_turn_terminator_is_trained_only_where_the_sample_stopped(tmp_path):
    _stopped_and_cut_labels(_gemma4_tokenizer(tmp_path), tmp_path, "<turn|>")


def test_chat_sampling_stops_on_the_end_of_turn_token(tmp_path):
    """The sampler asks vLLM to stop on <turn|> for chat prompts (a checkpoint's generation
    config may list only <eos>); raw prompts keep their stop strings only."""
    import io

    from pipeline.stages.sample import build_requests

    tok = _gemma4_tokenizer(tmp_path)

    class Bar:
        def update(self, n):
            pass

    chat = Recipe(model={"id": "random:gemma4-tiny"}, prompts={"chat": True})
    _, params, _ = build_requests(chat, tok, [{"id": "x", "prompt": "Write add."}], set(), io.StringIO(), Bar())
    assert params[0].stop_token_ids == [106]
    raw = Recipe(model={"id": "random:gemma4-tiny"}, sampling={"stop": ["\ndef "]})
    _, params, _ = build_requests(raw, tok, [{"id": "x", "prompt": "def f():\n"}], set(), io.StringIO(), Bar())
    assert not params[0].stop_token_ids and params[0].stop == ["\ndef "]


def test_a_checkpoint_cut_short_by_a_kill_is_set_aside(tmp_path):
    """kill -9 during a save leaves checkpoint-N without trainer_state.json (the Trainer writes it
    last): the resume must use the checkpoint before it, and keep the broken one aside."""
    import json

    for step, state in ((2, json.dumps({"global_step": 2})), (4, None), (6, '{"global_st')):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "adapter_model.safetensors").write_bytes(b"x")
        if state is not None:
            (ckpt / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    # out of the Trainer's sight: its checkpoint rotation deletes anything named checkpoint-<N>*
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "incomplete"]
    aside = sorted(p.name for p in (tmp_path / "incomplete").iterdir())
    assert (
        len(aside) == 2
        and aside[0].startswith("checkpoint-4.incomplete-")
        and aside[1].startswith("checkpoint-6.incomplete-")
    )
    assert (tmp_path / "incomplete" / aside[0] / "adapter_model.safetensors").read_bytes() == b"x"  # kept, not deleted
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")  # and a rerun finds the same
    assert last_complete_checkpoint(tmp_path / "none") is None
