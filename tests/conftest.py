import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"  # small fixtures the tests ship
SSD = [sys.executable, "-m", "pipeline.cli"]


def ssd(*args: str, cwd: Path = ROOT, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run the real CLI in a child process, as a user would."""
    return subprocess.run(
        [*SSD, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


# The tiny recipe as the run-lifecycle tests need it: chunks of 2 problems x 128 tokens take
# seconds, so a kill lands between chunks; float32 keeps the random tiny model's greedy choices
# free of bf16 ties.
TINY_RUN_ID = "sched"
TINY_OVERRIDES = ["evaluation.chunk_size=2", "evaluation.max_tokens=128", "engine.dtype=float32"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished ``ssd run recipes/tiny.yaml`` through the real CLI (real vLLM, TRL, sandbox),
    shared by the end-to-end checks and the run-lifecycle tests: three engine starts, paid once.
    Tests that change a run work on a copy (``shutil.copytree(tiny_run["run"], ...)``)."""
    base = tmp_path_factory.mktemp("tiny")
    args = [
        "run",
        "recipes/tiny.yaml",
        f"runs_dir={base / 'runs'}",
        f"registry_dir={base / 'registry'}",
        *TINY_OVERRIDES,
        "--run-id",
        TINY_RUN_ID,
    ]
    proc = ssd(*args)
    assert proc.returncode in (0, 3), proc.stderr[-5000:]  # 0 promoted, 3 completed and not promoted
    return {
        "base": base,
        "run": base / "runs" / TINY_RUN_ID,
        "args": args,
        "overrides": args[2:-2],
        "stdout": proc.stdout,
        "code": proc.returncode,
    }


@pytest.fixture
def recipe_file(tmp_path):
    """Write a recipe YAML into tmp_path and return its path."""

    def write(text: str, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def lineage(model_id: str, name: str = "moe") -> dict:
    """The lineage record a promotion stores, for registry versions made by hand in tests."""
    return {
        "run_id": "run-test",
        "base_model": {"id": model_id, "revision": None},
        "recipe": {"name": name, "engine": {"max_model_len": 512}},
        "samples_sha256": "ab" * 32,
        "metrics": {},
        "decision": {"promoted": True, "reasons": ["pass: test"]},
    }


def moe_adapter(path, seed: int):
    """A PEFT adapter on the tiny MoE: attention q_proj plus both fused expert tensors, non-zero B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pipeline import models

    model = AutoModelForCausalLM.from_pretrained(models.resolve(models.RANDOM_TINY), dtype=torch.float32)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj"],
            target_parameters=["experts.gate_up_proj", "experts.down_proj"],
        ),
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    peft_model.save_pretrained(path)
    return path


def taught_adapter(path, prompts: list[str], completion: str, *, steps: int = 40) -> Path:
    """A real PEFT LoRA adapter on the embedded Gemma 3 270M, taught (AdamW, loss on the completion
    only, every prompt in one padded batch) to answer each of ``prompts`` with ``completion``: what
    the adapter says is then known, not left to the luck of random factors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline import models

    base = models.resolve(models.EMBEDDED)
    tokenizer = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]))
    answer = tokenizer(completion, add_special_tokens=False).input_ids
    rows = [tokenizer(prompt).input_ids for prompt in prompts]
    width = max(len(ids) for ids in rows) + len(answer)
    pad = [tokenizer.pad_token_id]
    ids = torch.tensor([r + answer + pad * (width - len(r) - len(answer)) for r in rows])
    mask = torch.tensor([[1] * (len(r) + len(answer)) + [0] * (width - len(r) - len(answer)) for r in rows])
    labels = torch.tensor([[-100] * len(r) + answer + [-100] * (width - len(r) - len(answer)) for r in rows])
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(steps):
        loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.01, f"the adapter for {completion!r} did not learn it (loss {loss.item():.3f})"
    peft_model.save_pretrained(path)
    return Path(path)


def verdict_rows(passed: dict[str, list[bool]], finished: dict[str, list[bool]] | None = None) -> list[dict]:
    """Verdict rows as the eval stage writes them, from {task_id: [passed per sample]}."""
    return [
        {
            "task_id": task,
            "passed": bool(ok),
            "finish_reason": "stop" if (finished is None or finished[task][i]) else "length",
            "completion_tokens": 10,
            "completion": f"{task}-{i}",
        }
        for task, samples in passed.items()
        for i, ok in enumerate(samples)
    ]
