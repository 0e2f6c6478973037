"""Training prompts never overlap evaluation problems: checked on every run, refused by name."""

import json

import pytest
from conftest import ROOT, ssd

from pipeline import leakage
from pipeline.evaluation import benchmarks
from pipeline.recipe import load_recipe


def test_the_default_recipe_has_no_leakage():
    counts = leakage.check_recipe(load_recipe(ROOT / "recipes" / "default.yaml"))
    assert counts["training_prompts"] == 64 and counts["humaneval_problems"] == 164


def test_the_experiment_recipe_has_no_leakage_over_all_training_tasks():
    recipe = load_recipe(
        ROOT / "recipes" / "experiments" / "gemma3-270m-ssd.yaml", ["prompts.limit=null", "evaluation.guard_limit=null"]
    )
    counts = leakage.check_recipe(recipe)
    assert counts["training_prompts"] == 471 and counts["mbpp_problems"] == 500


def test_each_kind_of_overlap_is_found_and_named():
    mbpp = benchmarks.load("mbpp", path=ROOT / "data" / "mbpp_test.jsonl", limit=3)
    humaneval = benchmarks.load("humaneval", limit=2)
    same_id = {"id": "MBPP/11", "prompt": "anything"}
    same_text = {"id": "mine-1", "prompt": "  " + humaneval[1]["prompt"].replace("\n", "\n\n") + " "}
    statement = {"id": "mine-2", "prompt": f"'''{mbpp[2]['record']['text'].upper()}'''\ndef solve(x):\n"}
    clean = {"id": "mine-3", "prompt": 'def add(a, b):\n    """Add two numbers."""\n'}
    found = leakage.overlaps([same_id, same_text, statement, clean], mbpp + humaneval)
    assert found == [
        "MBPP/11 ~ mbpp mbpp/11 (same id)",
        f"mine-2 ~ mbpp {mbpp[2]['task_id']} (its statement is in the training prompt)",
        f"mine-1 ~ humaneval {humaneval[1]['task_id']} (same prompt text)",
    ]
    with pytest.raises(leakage.LeakageError, match="3 training prompt"):
        leakage.check([same_id, same_text, statement, clean], {"mbpp": mbpp, "humaneval": humaneval})


def test_ssd_run_refuses_an_overlapping_recipe_before_any_work(tmp_path):
    tasks = [json.loads(line) for line in open(ROOT / "data" / "mbpp_test.jsonl")][:2]
    prompts = tmp_path / "prompts.jsonl"
    with open(prompts, "w") as fh:
        fh.write(json.dumps({"id": "ok-1", "prompt": "def add(a, b):\n"}) + "\n")
        for task in tasks:  # MBPP test tasks under other ids, in another template
            fh.write(json.dumps({"id": f"copy-{task['task_id']}", "prompt": f"# {task['text']}\n"}) + "\n")
    proc = ssd(
        "run",
        str(ROOT / "recipes" / "tiny.yaml"),
        f"prompts.path={prompts}",
        "evaluation.benchmarks=[humaneval,mbpp]",
        f"runs_dir={tmp_path / 'runs'}",
    )
    assert proc.returncode == 2, proc.stderr
    assert "2 training prompt(s) overlap the evaluation problems" in proc.stderr
    assert f"copy-{tasks[0]['task_id']} ~ mbpp mbpp/{tasks[0]['task_id']}" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing started, nothing written
