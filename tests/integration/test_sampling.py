"""The sample stage: prompt sources, chat rendering, filters, resume after kill -9, shards."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import DATA, ROOT, ssd

from pipeline import generation, models
from pipeline.prompts import PromptError, load_source
from pipeline.recipe import PromptsConfig, RecipeError, load_recipe
from pipeline.stages.sample import drop_reason, shard_prompts

MBPP = ROOT.parent / "shared" / "data" / "mbpp.jsonl"


# --- prompt sources ------------------------------------------------------------------------


def test_jsonl_source_accepts_prompt_or_messages(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"id": 1, "prompt": "def f():\\n"}\n{"id": "b", "messages": [{"role": "user", "content": "hi"}], "tag": 3}\n'
    )
    rows, counts = load_source(PromptsConfig(path=str(path)))
    assert [r["id"] for r in rows] == ["1", "b"] and rows[1]["tag"] == 3 and counts["prompts"] == 2


def test_jsonl_bad_messages_is_named(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "messages": [{"role": "user"}]}\n')
    with pytest.raises(PromptError, match=rf"{path}:1: field 'messages'"):
        load_source(PromptsConfig(path=str(path)))


def test_rstar_coder_adapter_templates_and_dedupes():
    rows, counts = load_source(PromptsConfig(source="rstar-coder", path=str(DATA / "rstar_seed_sft_sample.jsonl")))
    # rs-2 is rs-1 with other whitespace: dropped as the paper does
    assert [r["id"] for r in rows] == ["rstar-coder/rs-1", "rstar-coder/rs-3", "rstar-coder/rs-4"]
    assert counts["duplicates_dropped"] == 1
    stdin, function = rows[0], rows[1]
    assert stdin["kind"] == "stdin" and "Read the inputs from stdin" in stdin["prompt"]
    assert function["kind"] == "function" and "class Solution:\n    def maxOf" in function["prompt"]
    assert "Question: Return the maximum of a list of integers nums." in function["prompt"]
    assert rows[2]["difficulty"] == "hard"


def test_livecodebench_source_on_lite_format_records():
    rows, _ = load_source(PromptsConfig(source="livecodebench", path=str(DATA / "lcb_fixture.jsonl")))
    kinds = {r["id"]: r["kind"] for r in rows}
    assert kinds["livecodebench/abc900_a"] == "stdin" and kinds["livecodebench/3800"] == "function"
    stdin = next(r for r in rows if r["id"] == "livecodebench/abc900_a")
    assert (
        "You are given integers A and B. Print A+B." in stdin["prompt"]
        and "Read the inputs from stdin" in stdin["prompt"]
    )
    function = next(r for r in rows if r["id"] == "livecodebench/3800")
    assert "class Solution" in function["prompt"] and {r["difficulty"] for r in rows} == {"easy", "medium", "hard"}


def test_hf_source_reads_a_local_dataset_directory(tmp_path):
    import datasets

    datasets.Dataset.from_list(
        [{"task": "t1", "text": "def a():\n"}, {"task": "t2", "text": "def b():\n"}]
    ).save_to_disk(str(tmp_path / "ds"))
    cfg = PromptsConfig(source="hf", path=str(tmp_path / "ds"), id_field="task", prompt_field="text")
    rows, _ = load_source(cfg)
    assert [(r["id"], r["prompt"]) for r in rows] == [("t1", "def a():\n"), ("t2", "def b():\n")]
    with pytest.raises(PromptError, match="missing field 'prompt'"):
        load_source(PromptsConfig(source="hf", path=str(tmp_path / "ds"), id_field="task"))


@pytest.mark.skipif(not MBPP.exists(), reason="../shared/data/mbpp.jsonl is not beside this checkout")
def test_mbpp_adapter_on_the_real_file():
    rows, counts = load_source(PromptsConfig(source="mbpp", path=str(MBPP)))
    ids = [int(r["id"].split("/")[1]) for r in rows]
    assert len(rows) == 471 and not set(ids) & set(range(11, 511)) and counts["test_statements_dropped"] == 3


def test_humaneval_adapter():
    rows, _ = load_source(PromptsConfig(source="humaneval", path=None, limit=5))
    assert [r["id"] for r in rows] == [f"HumanEval/{i}" for i in range(5)]
    assert rows[0]["prompt"].startswith("from typing import List")


def test_unknown_source_lists_the_known_ones(recipe_file):
    path = recipe_file("prompts:\n  source: apps\n")
    with pytest.raises(RecipeError, match="prompts.source.*'jsonl', 'hf', 'rstar-coder', 'livecodebench', 'mbpp'"):
        load_recipe(path)


# --- rendering ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(models.resolve(models.RANDOM_TINY))


def test_raw_prompt_gets_exactly_one_bos(gemma_tokenizer):
    text, ids = generation.render(
        gemma_tokenizer, {"id": "x", "prompt": "def f():\n"}, chat=False, system_prompt=None, enable_thinking=False
    )
    assert text == "def f():\n" and ids[0] == 2 and ids.count(2) == 1


def test_gemma4_generation_prompt_has_the_empty_thought_channel(gemma_tokenizer):
    tok = gemma_tokenizer
    tok.chat_template = (DATA / "gemma4_chat_template.jinja").read_text()
    row = {"id": "x", "prompt": "Write add(a, b)."}
    text, ids = generation.render(tok, row, chat=True, system_prompt=None, enable_thinking=False)
    assert text == "<bos><|turn>user\nWrite add(a, b).<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    assert ids == tok(text, add_special_tokens=False).input_ids and ids.count(2) == 1  # no second <bos>
    # The history rendering of the same turn has no thought channel: training on it would teach
    # the model to continue a prefix the server never sends. The stage stores the generation prompt.
    history = tok.apply_chat_template(
        [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": "def add(a, b): ..."}],
        tokenize=False,
    )
    assert not history.startswith(text)
    thinking, _ = generation.render(tok, row, chat=True, system_prompt="Be brief.", enable_thinking=True)
    assert (
        thinking
        == "<bos><|turn>system\n<|think|>Be brief.<turn|>\n<|turn>user\nWrite add(a, b).<turn|>\n<|turn>model\n"
    )


def test_chat_without_a_template_is_an_error(gemma_tokenizer):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(models.resolve(models.RANDOM_TINY))
    tok.chat_template = None
    with pytest.raises(ValueError, match="needs a chat template"):
        generation.render(tok, {"id": "x", "prompt": "hi"}, chat=True, system_prompt=None, enable_thinking=False)


# --- filters and the append-only file ---------------------------------------------------------


def test_drop_reasons_never_judge_correctness():
    assert drop_reason("", True) == "empty" and drop_reason("  \n ", False) == "empty"
    assert drop_reason("    return 1\n", True) == "single_line"
    assert drop_reason("    return 1\n", False) is None
    assert (
        drop_reason("    return 1\ndef ", True, stop_reason="\ndef ") == "single_line"
    )  # stop string is not the answer
    assert drop_reason("    x = 1/0\n    return x\n", True) is None  # wrong code is kept


def test_shards_take_whole_chunks_in_turn():
    prompts = [{"id": str(i)} for i in range(10)]
    assert [p["id"] for p in shard_prompts(prompts, 3, 0, 2)] == ["0", "1", "2", "6", "7", "8"]
    assert [p["id"] for p in shard_prompts(prompts, 3, 1, 2)] == ["3", "4", "5", "9"]


# --- real vLLM: determinism, kill -9 resume, shards -----------------------------------------

# float32: the random tiny model has near-flat next-token distributions, where bf16 rounding noise
# from a busy machine can flip a sampled token; float32 keeps the comparison about the pipeline.
# Two samples per prompt: every test below also checks that all n arrive.
TINY = [
    "prompts.limit=40",
    "sampling.n=2",
    "sampling.max_tokens=48",
    "sampling.chunk_size=8",
    "engine.max_num_seqs=4",
    "engine.dtype=float32",
]


def _sample(base: Path, *extra: str) -> subprocess.CompletedProcess:
    proc = ssd("sample", "recipes/tiny.yaml", f"runs_dir={base}", *TINY, *extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _run_dir(base: Path) -> Path:
    (run,) = list(base.iterdir())
    return run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    _sample(base)
    return _run_dir(base)


@pytest.mark.slow
def test_samples_record_what_the_model_saw_and_did(reference):
    rows = [json.loads(line) for line in open(reference / "samples.jsonl")]
    manifest = json.loads((reference / "manifests" / "sample.json").read_text())
    assert manifest["counts"]["prompts"] == 40 and len(rows) == manifest["counts"]["kept"]
    assert all(r["prompt_token_ids"][0] == 2 and r["finish_reason"] in ("stop", "length") for r in rows)
    assert sum(manifest["counts"]["finish_reasons"].values()) == manifest["counts"]["generated"]


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_uninterrupted_file(reference, tmp_path):
    cmd = [sys.executable, "-m", "pipeline.cli", "sample", "recipes/tiny.yaml", f"runs_dir={tmp_path}", *TINY]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    raw = None
    deadline = time.time() + 600
    while time.time() < deadline:
        runs = list(tmp_path.glob("*/samples.raw.jsonl"))
        if runs and runs[0].read_text().count("\n") >= 8:
            raw = runs[0]
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and vLLM's engine processes, mid-run
    proc.wait()
    assert raw is not None, "sampling never started writing"
    complete = Counter(json.loads(line)["id"] for line in raw.read_text().splitlines() if line.endswith("}"))
    done_at_kill = sum(count == 2 for count in complete.values())  # prompts with both samples written
    assert 0 < done_at_kill < 40, done_at_kill
    assert not (raw.parent / "samples.jsonl").exists()  # the training set is only written when complete
    proc = _sample(tmp_path)
    assert "of 40 prompts to go" in proc.stderr and f"{done_at_kill} prompts already in" in proc.stderr
    assert (raw.parent / "samples.jsonl").read_bytes() == (reference / "samples.jsonl").read_bytes()
    ids = [(row["id"], row["sample_index"]) for row in map(json.loads, raw.read_text().splitlines())]
    assert len(ids) == len(set(ids)) == 80  # nothing lost, nothing twice


@pytest.mark.slow
def test_shards_merge_into_the_unsharded_file(reference, tmp_path):
    for index in range(2):
        _sample(tmp_path, "--shard", f"{index}/2")
    run = _run_dir(tmp_path)
    assert not (run / "samples.jsonl").exists()
    proc = ssd("sample", "recipes/tiny.yaml", f"runs_dir={tmp_path}", *TINY, "--merge", "3")
    assert proc.returncode == 1 and "shard 0/3 is missing" in proc.stderr
    _sample(tmp_path, "--merge", "2")
    assert (run / "samples.jsonl").read_bytes() == (reference / "samples.jsonl").read_bytes()


@pytest.mark.slow
def test_n_samples_per_prompt_all_arrive(reference):
    """With n > 1 every sample of a prompt is kept. (vLLM's default output kind streams the n
    child sequences one by one, and the output marked finished holds only the last child's: the
    stage once kept one sample of four without noticing.)"""
    rows = [json.loads(line) for line in open(reference / "samples.raw.jsonl")]
    by_prompt: dict[str, list[int]] = {}
    for row in rows:
        by_prompt.setdefault(row["id"], []).append(row["sample_index"])
    assert len(by_prompt) == 40 and all(sorted(v) == [0, 1] for v in by_prompt.values()), by_prompt
    texts = {}
    for row in rows:
        texts.setdefault(row["id"], set()).add(tuple(row["completion_token_ids"]))
    assert sum(len(t) > 1 for t in texts.values()) >= 20  # two draws, not one repeated
