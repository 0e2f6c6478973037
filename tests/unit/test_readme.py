"""The README is the user's reference: it must name every recipe key and the two commands, and
its recipe reference must be the one the schema renders."""

import re

from conftest import ROOT
from pydantic import BaseModel

from pipeline.recipe import Recipe, reference_markdown

README = (ROOT / "README.md").read_text()
START, END = "<!-- recipe-reference:start -->\n", "<!-- recipe-reference:end -->"


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _fields(ann, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_every_recipe_key_is_documented():
    missing = [key for key in _fields(Recipe) if f"| `{key}` |" not in README]
    assert missing == []


def test_recipe_reference_is_generated_from_the_schema():
    assert README.count(START) == 1 and README.count(END) == 1, "README.md lost its recipe-reference markers"
    section = README.split(START)[1].split(END)[0]
    assert section == reference_markdown(), (
        "README.md's recipe reference is stale: run `.venv/bin/python tools/recipe_reference.py`"
    )


def test_the_two_commands_are_documented():
    assert "./run.sh test" in README and "\n./run.sh " in README


def test_facts_point_at_code_that_exists():
    """docs/facts.md says which module guards against each fact: a moved module must move the pointer."""
    root = ROOT
    named = set(re.findall(r"`(pipeline/[\w/.]+)`", (root / "docs" / "facts.md").read_text()))
    assert named and sorted(p for p in named if not (root / p).exists()) == []
