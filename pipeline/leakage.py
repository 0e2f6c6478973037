"""Training prompts and evaluation problems must never overlap.

SSD trains on the model's own answers to the training prompts; if an evaluation problem is
among them, the adapter has practised the test and its pass@1 means nothing. Checked before
every run (``ssd run``, ``ssd sweep``) and refused with the overlapping items named:

- ids: the same id on both sides (``mbpp/11`` in the prompts and in MBPP's test split);
- prompts: the same text after whitespace and case normalisation;
- statements: a benchmark problem's natural-language statement (MBPP's ``text``, a
  LiveCodeBench question) found inside a training prompt, which catches a problem presented
  in another template.
"""

from __future__ import annotations

from pipeline.prompts import load_source, normalize

MIN_STATEMENT_CHARS = 40  # shorter statements ("Write a function to add two numbers.") match by chance


class LeakageError(ValueError):
    """Training prompts that are also evaluation problems."""


def overlaps(prompts: list[dict], problems: list[dict]) -> list[str]:
    """One line per overlapping pair: ``training id ~ benchmark task (reason)``."""
    found: list[str] = []
    by_id = {str(p["id"]).lower(): p["id"] for p in prompts}
    by_text = {normalize(p["prompt"]).lower(): p["id"] for p in prompts}
    normalised = [(p["id"], normalize(p["prompt"]).lower()) for p in prompts]
    for problem in problems:
        task = str(problem["task_id"])
        where = f"{problem.get('benchmark', '?')} {task}"
        if task.lower() in by_id:
            found.append(f"{by_id[task.lower()]} ~ {where} (same id)")
            continue
        if (text := normalize(problem.get("prompt", "")).lower()) and text in by_text:
            found.append(f"{by_text[text]} ~ {where} (same prompt text)")
            continue
        record = problem.get("record") or {}
        statement = normalize(
            problem.get("text") or record.get("text") or problem.get("question_content") or ""
        ).lower()
        if len(statement) >= MIN_STATEMENT_CHARS:
            for prompt_id, prompt_text in normalised:
                if statement in prompt_text:
                    found.append(f"{prompt_id} ~ {where} (its statement is in the training prompt)")
                    break
    return found


def check(prompts: list[dict], problems_by_benchmark: dict[str, list[dict]], show: int = 20) -> dict:
    """Raise LeakageError naming the overlaps; else counts of what was compared."""
    found = [line for problems in problems_by_benchmark.values() for line in overlaps(prompts, problems)]
    if found:
        more = f"\n  ... and {len(found) - show} more" if len(found) > show else ""
        raise LeakageError(
            f"{len(found)} training prompt(s) overlap the evaluation problems; remove them from the prompts:\n  "
            + "\n  ".join(found[:show])
            + more
        )
    return {
        "training_prompts": len(prompts),
        **{f"{name}_problems": len(p) for name, p in problems_by_benchmark.items()},
    }


def check_recipe(recipe) -> dict:
    """Load the recipe's training prompts and evaluation problems and check them."""
    from pipeline.evaluation.benchmarks import load_benchmark

    prompts, _ = load_source(recipe.prompts)
    problems = {name: load_benchmark(recipe, name).problems for name in recipe.evaluation.benchmarks}
    return check(prompts, problems)
