"""ssd sweep: grid parsing and expansion, stage sharing, the report from constructed results,
and (slow) a real tiny sweep that shares the base evaluation and resumes after kill -9."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from pipeline import artifacts, runs, sweep
from pipeline.recipe import Recipe, RecipeError, load_recipe
from pipeline.report.sweep import heat_color


def test_grid_values_are_yaml_and_brackets_do_not_split():
    grid = sweep.parse_grid(
        ["sampling.temperature=0.6,1.0,1.6", 'sampling.stop=["\\ndef ","x"],[]', "training.lora.r=8,16"]
    )
    assert grid == {
        "sampling.temperature": [0.6, 1.0, 1.6],
        "sampling.stop": [["\ndef ", "x"], []],
        "training.lora.r": [8, 16],
    }


@pytest.mark.parametrize(
    "item, message",
    [
        ("sampling.temperature", "expected KEY.SUB=V1,V2"),
        ("=1,2", "expected KEY.SUB=V1,V2"),
        ("sampling..temperature=1", "expected KEY.SUB=V1,V2"),
        ("evaluation.temperatures=0.6,1.0", "T_eval axis"),
        ("sampling.top_p=[1,", "not valid YAML"),
    ],
)
def test_bad_grid_items_are_refused(item, message):
    with pytest.raises(RecipeError, match=message):
        sweep.parse_grid([item])


def test_expansion_is_the_cartesian_product_plus_the_control():
    points = sweep.expand({"sampling.temperature": [0.6, 1.6], "sampling.top_k": [20, 0]}, control=True)
    assert [name for name, _ in points] == [
        "temperature-0.6_top_k-20",
        "temperature-0.6_top_k-0",
        "temperature-1.6_top_k-20",
        "temperature-1.6_top_k-0",
        "control",
    ]
    assert points[-1][1] == {
        "sampling.temperature": 1.0,
        "sampling.top_k": 0,
        "sampling.top_p": 1.0,
        "sampling.min_p": 0.0,
    }
    assert sweep.expand({}, control=False) == [("recipe", {})]


def test_point_recipes_carry_the_override_and_the_sweep_directories(tmp_path):
    base = Recipe(model={"id": "random:gemma4-tiny"}, evaluation={"temperatures": [0.2, 0.8]})
    point = sweep.point_recipe(base, "control", sweep.CONTROL_OVERRIDES, tmp_path)
    assert (point.sampling.temperature, point.sampling.top_k, point.sampling.top_p) == (1.0, 0, 1.0)
    assert point.resolved_run_id() == "control" and Path(point.runs_dir) == tmp_path / "points"
    assert (
        Path(point.evaluation.base_dir) == tmp_path / "base-eval" and Path(point.registry_dir) == tmp_path / "registry"
    )
    assert point.evaluation.temperatures == [0.2, 0.8]
    with pytest.raises(RecipeError, match="sampling.top_p"):
        sweep.point_recipe(base, "bad", {"sampling.top_p": 2.0}, tmp_path)


def test_a_recipe_sweep_section_is_validated(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("sweep:\n  grid:\n    evaluation.temperatures: [[0.5]]\n")
    with pytest.raises(RecipeError, match="T_eval axis"):
        load_recipe(path)
    path.write_text("sweep:\n  grid:\n    sampling.temperature: [0.6, 1.6]\n  control: true\n")
    assert load_recipe(path).sweep.grid == {"sampling.temperature": [0.6, 1.6]}


def _finished(run_dir: Path, stage: str, key: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = run_dir / name
        if name == "adapter":
            path.mkdir(parents=True)
            (path / "adapter_model.safetensors").write_text(text)
        else:
            runs.atomic_write_text(path, text)
    artifacts.write_manifest(run_dir, stage, key=key, params={}, inputs={}, outputs={}, counts={}, started=0.0)


def test_points_share_samples_when_only_training_differs_and_adapters_when_only_eval_differs(tmp_path):
    from pipeline.stages import sample, train

    def keys(point):
        sample_key = runs.stage_key(sample._params(point), sample._inputs(point))[0]
        return sample_key, runs.hash_obj(train.stage_params(point))  # the samples are equal where shared

    base = Recipe(model={"id": "random:gemma4-tiny"})
    points = {
        "a": {"training.learning_rate": 1e-4},
        "b": {"training.learning_rate": 2e-4},
        "c": {"training.learning_rate": 1e-4, "evaluation.n": 2},
        "d": {"sampling.temperature": 0.5},
    }
    recipes = {name: sweep.point_recipe(base, name, overrides, tmp_path) for name, overrides in points.items()}
    run_a = tmp_path / "points" / "a"
    sample_a, train_a = keys(recipes["a"])
    _finished(run_a, "sample", sample_a, {"samples.raw.jsonl": "raw\n", "samples.jsonl": "s\n"})
    _finished(run_a, "train", train_a, {"adapter": "weights"})
    b, c, d = (tmp_path / "points" / name for name in "bcd")
    assert artifacts.reusable(b, "sample", keys(recipes["b"])[0]).shared_from == "a"
    assert (b / "samples.jsonl").read_text() == "s\n"
    assert artifacts.reusable(b, "train", keys(recipes["b"])[1]) is None  # its own learning rate
    assert artifacts.load_manifest(run_a, "sample").shared_from is None  # the donor's own manifest is untouched
    assert artifacts.reusable(c, "sample", keys(recipes["c"])[0]).shared_from == "a"
    assert artifacts.reusable(c, "train", keys(recipes["c"])[1]).shared_from == "a"
    assert (c / "adapter" / "adapter_model.safetensors").read_text() == "weights"
    assert artifacts.reusable(d, "sample", keys(recipes["d"])[0]) is None  # another T_train: its own samples


def _grid_entry(t, base, adapter, finish=(0.9, 0.8)):
    return {
        "temperature": t,
        "base": {"pass@1": base, "finish_rate": finish[0], "mean_completion_tokens": 50.0},
        "adapter": {"pass@1": adapter, "finish_rate": finish[1], "mean_completion_tokens": 60.0},
        "delta": {"value": adapter - base, "ci_low": adapter - base - 0.05, "ci_high": adapter - base + 0.05},
    }


def _constructed_manifest():
    def point(name, t_train, top_k, top_p, deltas, promoted):
        grid = [
            _grid_entry(t, 0.10 + 0.01 * i, 0.10 + 0.01 * i + d)
            for i, (t, d) in enumerate(zip([0.2, 0.6, 1.0], deltas, strict=True))
        ]
        best_i = max(range(3), key=lambda i: grid[i]["adapter"]["pass@1"])
        bench = {
            "grid": [
                {
                    "T_eval": g["temperature"],
                    "base_pass@1": g["base"]["pass@1"],
                    "adapter_pass@1": g["adapter"]["pass@1"],
                    "delta": g["delta"]["value"],
                    "ci_low": g["delta"]["ci_low"],
                    "ci_high": g["delta"]["ci_high"],
                    "base_finish_rate": 0.9,
                    "adapter_finish_rate": 0.8,
                    "base_mean_tokens": 50.0,
                    "adapter_mean_tokens": 60.0,
                }
                for g in grid
            ],
            "base_best": {"temperature": 1.0, "pass@1": 0.12},
            "adapter_best": {"temperature": grid[best_i]["temperature"], "pass@1": grid[best_i]["adapter"]["pass@1"]},
            "delta": {"value": grid[best_i]["adapter"]["pass@1"] - 0.12, "ci_low": 0.01, "ci_high": 0.09},
        }
        return {
            "name": name,
            "status": "complete",
            "T_train": t_train,
            "top_k": top_k,
            "top_p": top_p,
            "results": {
                "benchmarks": {"humaneval": bench},
                "decision": {"promoted": promoted, "reasons": [f"reason-{name}"]},
                "wall_s": {"sample": 10, "train": 20, "eval": 30},
                "shared": {},
            },
        }

    return {
        "name": "demo",
        "model": "embedded:gemma3-270m",
        "grid": {"sampling.temperature": [0.6, 1.6]},
        "control": True,
        "benchmarks": ["humaneval"],
        "t_eval": [0.2, 0.6, 1.0],
        "n": 4,
        "status": "complete",
        "points": [
            point("temperature-0.6", 0.6, 20, 0.8, [0.01, 0.02, -0.01], False),
            point("temperature-1.6", 1.6, 20, 0.8, [0.03, 0.07, 0.02], True),
            point("control", 1.0, 0, 1.0, [0.0, -0.02, 0.0], False),
            {"name": "temperature-2.0", "status": "failed", "T_train": 2.0, "top_k": 20, "top_p": 0.8, "results": None},
        ],
    }


def test_report_table_heatmap_and_best_point_from_constructed_results(tmp_path):
    manifest = _constructed_manifest()
    md_path, html_path = sweep.write_reports(tmp_path, manifest)
    md, page = md_path.read_text(), html_path.read_text()
    # the best point is the one whose adapter pass@1 at its best T_eval is highest, with its CI
    assert "Best point: **temperature-1.6**" in md and "95% CI [+0.0100, +0.0900]" in md
    assert "Base model at its best T_eval: pass@1 0.1200 at T_eval 1" in md
    table = md.split("### Every point")[1].split("###")[0]
    assert table.count("| temperature-1.6 |") == 3 and table.count("| control |") == 3  # one row per T_eval
    assert (
        "| control | 1 | off | 1 | 0.6 | 0.1100 | 0.0900 | -0.0200 | [-0.0700, +0.0300] | 0.900 | 0.800 | 50.0 | 60.0 |"
        in table
    )
    heat = md.split("### Delta heatmap")[1].split("## Gate")[0]
    assert "| temperature-1.6 | 1.6 | +0.0300 | +0.0700 | +0.0200 |" in heat
    assert "| temperature-2.0 | 2 | - | - | - |" in heat  # a failed point is shown, empty
    assert "| base pass@1 | | 0.1000 | 0.1100 | 0.1200 |" in heat
    assert "| temperature-1.6 | yes | - | - | - | reason-temperature-1.6 |" in md  # no p-values recorded then
    assert "no selection part recorded): exploratory" in md
    # the HTML heatmap colours the cells: the biggest gain is the greenest, losses are red
    assert page.count('class="heat"') == 4 * 3
    assert 'style="background:#4baf4b">+0.0700' in page
    assert f'style="background:{heat_color(-0.02, 0.07)}">-0.0200' in page and heat_color(-0.02, 0.07).startswith("#ff")
    assert json.loads((tmp_path / "sweep.json").read_text())["points"][1]["name"] == "temperature-1.6"
    # the HTML is built from the same tables, not from the Markdown: the gate decisions are a table too
    assert "<pre>" not in page and '<td class="text">reason-temperature-1.6</td>' in page
    assert "<strong>temperature-1.6</strong>" in page and "**" not in page


def test_the_committed_sweep_rerenders_byte_for_byte(tmp_path):
    reference = ROOT / "docs" / "experiments" / "gemma3-270m-ssd"
    shutil.copy(reference / "sweep.json", tmp_path / "sweep.json")
    md, _ = sweep.rerender(tmp_path)
    assert md.read_text() == (reference / "sweep.md").read_text()
    assert (tmp_path / "sweep.json").read_text() == (reference / "sweep.json").read_text()


def _summary(pass1: float) -> dict:
    return {
        "pass@1": pass1,
        "problems": 10,
        "samples": 10,
        "passed_samples": round(10 * pass1),
        "finish_rate": 0.9,
        "mean_completion_tokens": 50.0,
    }


def _manifest(stage: str, **extra) -> artifacts.Manifest:
    return artifacts.Manifest(
        stage=stage,
        key="k",
        params={},
        inputs={},
        outputs={},
        counts=extra.pop("counts", {}),
        started_at="",
        wall_s=extra.pop("wall_s", 1.0),
        versions={},
        **extra,
    )


def test_point_results_come_from_the_typed_manifests(tmp_path):
    metrics = artifacts.EvalMetrics.model_validate(
        {
            "target": "humaneval",
            "adapter_serving": "lora",
            "benchmarks": {
                "humaneval": {
                    "grid": [
                        {
                            "temperature": t,
                            "base": _summary(b),
                            "adapter": _summary(a),
                            "delta": {"value": a - b, "ci_low": a - b - 0.1, "ci_high": a - b + 0.1},
                        }
                        for t, b, a in ((0.2, 0.3, 0.4), (0.6, 0.2, 0.5))
                    ],
                    "base_best": {"temperature": 0.2, "pass@1": 0.3},
                    "adapter_best": {"temperature": 0.6, "pass@1": 0.5},
                    "delta": {"value": 0.2, "ci_low": 0.05, "ci_high": 0.35, "resamples": 100, "seed": 0},
                    "identical_completions": 0,
                }
            },
        }
    )
    run_dir = tmp_path / "points" / "p"
    recipe = Recipe(model={"id": "random:gemma4-tiny"}, evaluation={"temperatures": [0.2, 0.6]})
    assert sweep.point_results(run_dir, recipe) is None  # not evaluated yet
    _manifest("sample", shared_from="other", wall_s=3.0).save(runs.manifest_path(run_dir, "sample"))
    _manifest("eval", metrics=metrics, counts={"base_problems_generated": 0, "adapter_problems_generated": 20}).save(
        runs.manifest_path(run_dir, "eval")
    )
    decision = artifacts.Decision(promoted=True, reasons=["pass: it is better"], name="ssd", version="v0001")
    _manifest("promote", decision=decision).save(runs.manifest_path(run_dir, "promote"))
    results = sweep.point_results(run_dir, recipe)
    bench = results["benchmarks"]["humaneval"]
    assert bench["grid"][1] == {
        "T_eval": 0.6,
        "base_pass@1": 0.2,
        "adapter_pass@1": 0.5,
        "delta": 0.5 - 0.2,
        "ci_low": 0.5 - 0.2 - 0.1,
        "ci_high": 0.5 - 0.2 + 0.1,
        "base_finish_rate": 0.9,
        "adapter_finish_rate": 0.9,
        "base_mean_tokens": 50.0,
        "adapter_mean_tokens": 50.0,
    }
    assert bench["adapter_best"] == {"temperature": 0.6, "pass@1": 0.5} and bench["delta"]["resamples"] == 100
    assert results["decision"] == {
        "promoted": True,
        "reasons": ["pass: it is better"],
        "name": "ssd",
        "version": "v0001",
    }
    assert results["shared"] == {"sample": "other"} and results["wall_s"] == {"sample": 3.0, "train": None, "eval": 1.0}
    assert results["eval_generated"] == {"base": 0, "adapter": 20}
    manifest = {
        "name": "s",
        "model": "m",
        "grid": {},
        "control": False,
        "benchmarks": ["humaneval"],
        "t_eval": [0.2, 0.6],
        "n": 1,
        "status": "complete",
        "points": [{"name": "p", "status": "complete", "T_train": 1.0, "top_k": 20, "top_p": 0.8, "results": results}],
    }
    md = sweep.write_reports(tmp_path, manifest)[0].read_text()
    assert "Base model at its best T_eval: pass@1 0.3000 at T_eval 0.2." in md
    assert "delta +0.2000, 95% CI [+0.0500, +0.3500] (lower bound above 0" in md
    assert "| p | yes | - | - | - | pass: it is better |" in md and "| p | 3 | - | 1 | sample: other |" in md


# --- a real sweep on the tiny model ---------------------------------------------------------

TINY_SWEEP = [
    "prompts.limit=4",
    "sampling.max_tokens=16",
    "training.epochs=1",
    "training.save_steps=0",
    "evaluation.limit=3",
    "evaluation.max_tokens=16",
    "evaluation.temperatures=[0.0,0.7]",
    "engine.dtype=float32",
    "engine.gpu_memory_utilization=0.1",
]


def _ssd_sweep(tmp_path, *extra):
    return [
        sys.executable,
        "-m",
        "pipeline.cli",
        "sweep",
        str(ROOT / "recipes" / "tiny.yaml"),
        f"runs_dir={tmp_path}",
        "--grid",
        "training.learning_rate=1.0e-3,5.0e-4",
        *TINY_SWEEP,
        *extra,
    ]


@pytest.mark.slow
def test_tiny_sweep_shares_base_eval_and_samples_and_resumes_after_kill(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sweep_dir = tmp_path / "sweeps" / "tiny"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            _ssd_sweep(tmp_path), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    second = sweep_dir / "points" / "learning_rate-0.0005"
    deadline = time.time() + 900
    while not artifacts.load_manifest(second, "train") and proc.poll() is None and time.time() < deadline:
        time.sleep(1)
    assert proc.poll() is None, log_path.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)  # mid-sweep: the second point is evaluating
    proc.wait()
    first = sweep_dir / "points" / "learning_rate-0.001"
    first_eval = artifacts.load_manifest(first, "eval")
    assert first_eval.counts["base_problems_generated"] == 3 * 2  # 3 problems x 2 T_eval, once
    assert json.loads((sweep_dir / "sweep.json").read_text())["points"][0]["status"] == "complete"

    done = subprocess.run(_ssd_sweep(tmp_path), cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # the first point was not redone; the second shared its samples and the base evaluation
    assert artifacts.load_manifest(first, "eval").started_at == first_eval.started_at
    assert artifacts.load_manifest(second, "sample").shared_from == "learning_rate-0.001"
    assert artifacts.load_manifest(second, "eval").counts["base_problems_generated"] == 0
    assert artifacts.load_manifest(second, "train").shared_from is None  # its own learning rate: its own adapter
    base_rows = runs.read_jsonl(sweep_dir / "base-eval" / "humaneval" / "base-T0.jsonl")
    assert len(base_rows) == 3
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    assert manifest["status"] == "complete" and [p["status"] for p in manifest["points"]] == ["complete", "complete"]
    md = (sweep_dir / "sweep.md").read_text()
    assert "Best point: **" in md and md.count("| learning_rate-0.0005 |") >= 3
    assert all(Path(p["run_dir"]).parent == sweep_dir / "points" for p in manifest["points"])
    for p in manifest["points"]:
        recipe = (Path(p["run_dir"]) / "recipe.yaml").read_text()
        assert f"registry_dir: {sweep_dir / 'registry'}" in recipe
