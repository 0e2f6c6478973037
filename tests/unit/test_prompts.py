import json

import pytest
from conftest import ROOT

from pipeline.prompts import MBPP_TRAIN_IDS, PromptError, load_prompts, mbpp_prompt, mbpp_train_prompts

MBPP = ROOT.parent / "shared" / "data" / "mbpp.jsonl"


def test_shipped_prompts_are_mbpp_train_split_only():
    rows = load_prompts(ROOT / "data" / "mbpp_train.jsonl")
    ids = {int(r["id"].split("/")[1]) for r in rows}
    assert len(rows) == 471
    assert ids == set(MBPP_TRAIN_IDS) - {602, 704, 872}  # their statements repeat test tasks 217, 248, 216
    assert not ids & set(range(11, 511))  # MBPP's test tasks are never training prompts


@pytest.mark.skipif(not MBPP.exists(), reason="../shared/data/mbpp.jsonl is not beside this checkout")
def test_shipped_prompts_rebuild_from_the_real_file():
    rebuilt, dropped = mbpp_train_prompts(MBPP)
    assert dropped == ["mbpp/602", "mbpp/704", "mbpp/872"]
    shipped = [json.loads(line) for line in open(ROOT / "data" / "mbpp_train.jsonl")]
    assert rebuilt == shipped


def test_mbpp_prompt_has_signature_not_body():
    task = {
        "task_id": 2,
        "text": "Write a function to find the similar elements from the given two tuple lists.",
        "code": (
            "def similar_elements(test_tup1, test_tup2):\r\n"
            "  res = tuple(set(test_tup1) & set(test_tup2))\r\n"
            "  return (res) "
        ),
        "test_list": ["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)"],
    }
    prompt = mbpp_prompt(task)
    assert prompt.startswith("def similar_elements(test_tup1, test_tup2):\n")
    assert "return" not in prompt and "set(test_tup1)" not in prompt
    assert ">>> similar_elements((3, 4, 5, 6),(5, 7, 4, 10))\n    (4, 5)" in prompt


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "prompt": "a"}\n{"id": 2, "prompt": \n')
    with pytest.raises(PromptError, match=rf"{path}:2: not valid JSON"):
        load_prompts(path)


def test_missing_field_and_duplicate_id(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "prompt": "a"}\n{"id": 2}\n')
    with pytest.raises(PromptError, match=rf"{path}:2: missing field 'prompt'"):
        load_prompts(path)
    path.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(PromptError, match=rf"{path}:2: duplicate id '1' \(first at {path}:1\)"):
        load_prompts(path)
