"""Plain-text tables for the command line, the plan summary and the scripts."""

from __future__ import annotations

from typing import Sequence


def format_table(rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """``rows[0]`` is the header; the first ``left`` columns are left-aligned, the rest
    right-aligned, each as wide as its widest cell; a rule of dashes under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for k, row in enumerate(rows):
        cells = (c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
