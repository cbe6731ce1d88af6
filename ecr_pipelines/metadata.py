"""Markdown previews for asset and check metadata, the same rendering for every service."""

from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg
import pandas as pd

from ecr_pipelines.lib.batch import StageReport

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


def md_frame(frame: pd.DataFrame, limit: int = PREVIEW_ROWS) -> dg.MetadataValue:
    """``md_table`` of a DataFrame's columns and rows."""
    return md_table([str(c) for c in frame.columns], frame.itertuples(index=False), limit)


def stage_metadata(report: StageReport, row_count: int, **extra: Any) -> dict[str, Any]:
    """The metadata of one run of a batch stage: its counts, then previews of the items that
    failed (with their error class) and of those that went elsewhere (held, sent back, ...)."""
    return {
        **report.metadata(),
        **extra,
        "dagster/row_count": row_count,
        "error_preview": md_table(["item", "error class", "message"], report.error_rows),
        "other_outcomes": md_table(["item", "outcome", "message"], report.other_rows),
    }


def log_stage(log: Any, report: StageReport, warnings: int = PREVIEW_ROWS) -> None:
    """The stage's summary and its first errors in the run log."""
    log.info(report.summary())
    for key, cls, message in report.error_rows[:warnings]:
        log.warning(f"{report.stage}: {key}: {cls}: {message}")
    if report.errors > warnings:
        log.warning(f"{report.stage}: {report.errors - warnings} more errors (see the metadata preview)")
