"""Markdown previews for asset and check metadata, the same rendering for every service."""

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:  # pandas costs every Dagster process ~0.7 s to import; only annotations need it
    import pandas as pd

PREVIEW_ROWS = 20


def md_table(
    headers: Sequence[str], rows: Iterable[Sequence[Any]], limit: int = PREVIEW_ROWS
) -> dg.MetadataValue:
    """A markdown table of the first ``limit`` rows (``_none_`` when empty)."""
    rows = list(rows)
    if not rows:
        return dg.MetadataValue.md("_none_")

    def cell(value: Any) -> str:
        # Upstream text may hold pipes and newlines, which would break the table's layout.
        text = "" if value is None else str(value)
        return text.replace("|", "\\|").replace("\n", " ")[:200]

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows[:limit]]
    if len(rows) > limit:
        lines.append(f"\n_{len(rows) - limit} more not shown_")
    return dg.MetadataValue.md("\n".join(lines))


def md_frame(frame: "pd.DataFrame", limit: int = PREVIEW_ROWS) -> dg.MetadataValue:
    """``md_table`` of a DataFrame's columns and rows."""
    return md_table([str(c) for c in frame.columns], frame.itertuples(index=False), limit)
