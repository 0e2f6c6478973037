"""The reproduction record: model file hashes in the sample manifest, and the registry card's record."""

from __future__ import annotations

import json

from conftest import lineage

from pipeline import models
from pipeline.deploy import registry


def _model_dir(path, template: str | None = "{{ messages }}"):
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"weights")
    (path / "tokenizer.json").write_text("{}")
    config = {"eos_token": "<eos>"} | ({"chat_template": template} if template else {})
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "config.json").write_text("{}")
    return path


def test_fingerprint_changes_with_weights_tokenizer_and_chat_template_only(tmp_path):
    model = _model_dir(tmp_path / "m")
    first = models.fingerprint(str(model))
    assert all(len(v) == 64 for v in first.values())
    (model / "config.json").write_text('{"x": 1}')
    assert models.fingerprint(str(model)) == first  # config is not one of the three
    (model / "model.safetensors").write_bytes(b"other weights")
    second = models.fingerprint(str(model))
    assert (
        second["weights_sha256"] != first["weights_sha256"] and second["tokenizer_sha256"] == first["tokenizer_sha256"]
    )
    (model / "chat_template.jinja").write_text("{{ other }}")  # a template file wins over tokenizer_config's
    assert models.fingerprint(str(model))["chat_template_sha256"] != first["chat_template_sha256"]
    plain = models.fingerprint(str(_model_dir(tmp_path / "plain", template=None)))
    assert plain["chat_template_sha256"] is None
    assert models.fingerprint("google/gemma-4-26b-a4b") == dict.fromkeys(first)  # a hub id: named by id and revision


def test_the_registry_card_carries_the_reproduction_record(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    record = {
        "versions": {"torch": "2.13.0", "vllm": "0.32.0"},
        "model": {"id": "embedded:gemma3-270m", "weights_sha256": "ab" * 32, "tokenizer_sha256": "cd" * 32},
        "prompts_sha256": "ef" * 32,
        "sample_counts": {"prompts": 64, "dropped_empty": 1},
        "seeds": {"sampling": 0, "training": 0},
    }
    version = registry.promote(
        tmp_path / "reg", "coder", adapter, {**lineage("embedded:gemma3-270m"), "reproduction": record}
    )
    card = (tmp_path / "reg" / "coder" / version / "README.md").read_text()
    assert "- versions: torch 2.13.0, vllm 0.32.0" in card
    assert f"weights `{'ab' * 32}`" in card and f"prompt file sha256: `{'ef' * 32}`" in card
    assert "sampling filters: prompts 64, dropped_empty 1" in card and "seeds: sampling 0, training 0" in card
    assert registry.show(tmp_path / "reg", "coder")["reproduction"] == record
