"""Plain-text tables for terminals and markdown code blocks."""
from __future__ import annotations

from collections.abc import Sequence


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """First column left-aligned, the others right-aligned, each as wide as its widest cell.

    Cells are printed with ``str``; format numbers before passing them in.
    """
    cells = [[str(value) for value in row] for row in rows]
    widths = [max(len(str(title)), *(len(row[i]) for row in cells))
              for i, title in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        first, *rest = values
        return "  ".join([f"{first:<{widths[0]}}",
                          *(f"{v:>{w}}" for v, w in zip(rest, widths[1:]))])

    ruler = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([line([str(h) for h in header]), ruler, *(line(row) for row in cells)])


def optional_cell(row: dict, key: str, spec: str) -> str:
    """``row[key]`` formatted with ``spec``, or "-" where the row has no such entry."""
    return format(row[key], spec) if key in row else "-"
