"""Rewrite README.md's recipe reference from the schema in pipeline/recipe.py.

    .venv/bin/python tools/recipe_reference.py

The table between ``<!-- recipe-reference:start -->`` and ``<!-- recipe-reference:end -->`` is
``pipeline.recipe.reference_markdown()``; edit a field's ``Field(description=...)``, not the
README. ``tests/test_readme.py`` fails while the two differ.
"""

from pathlib import Path

from pipeline.recipe import reference_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- recipe-reference:start -->\n", "<!-- recipe-reference:end -->"


def main() -> None:
    text = README.read_text()
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    if not rest or not tail:
        raise SystemExit(f"{README}: the markers {START.strip()} and {END} are missing")
    new = head + START + reference_markdown() + END + tail
    if new == text:
        print(f"{README}: recipe reference already up to date")
        return
    README.write_text(new)
    print(f"{README}: recipe reference rewritten")


if __name__ == "__main__":
    main()
