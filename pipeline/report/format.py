"""How every number and table the pipeline shows is written: run and sweep reports, model cards, the CLI.

One helper, so a pass@1 reads ``0.0300``, a delta ``+0.0200`` and an interval ``[+0.0050, +0.0400]``
wherever it appears, and a value a run did not record reads ``-`` instead of failing the page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MISSING = "-"


def num(value: Any, spec: str = ".4f") -> str:
    """``value`` formatted with ``spec``; ``-`` for None or anything that is not a number (bools included)."""
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else MISSING


def delta(value: Any) -> str:
    """A signed difference: ``+0.0200``."""
    return num(value, "+.4f")


def interval(low: Any, high: Any) -> str:
    """A confidence interval of a difference: ``[-0.0050, +0.0400]``; ``-`` when it was not recorded."""
    if low is None or high is None:
        return MISSING
    return f"[{delta(low)}, {delta(high)}]"


@dataclass
class Table:
    """Rows of cells as text, rendered the same way to Markdown (``markdown``) and HTML (the templates).

    HTML only: ``colors`` has one background colour (or None) per body cell and ``legend`` says what
    they mean; the first ``text_columns`` columns hold words, not numbers, and are aligned left.
    """

    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    colors: list[list[str | None]] | None = None
    legend: str = ""
    text_columns: int = 1

    def markdown(self) -> list[str]:
        """The table's Markdown lines; an empty cell is written ``| |``."""
        return [_markdown_row(self.header), "|" + "---|" * len(self.header), *(_markdown_row(row) for row in self.rows)]


def _markdown_row(cells: Sequence[str]) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"
