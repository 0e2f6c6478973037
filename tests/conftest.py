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
