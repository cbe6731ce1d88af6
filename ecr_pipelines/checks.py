"""The shape every data-quality check here shares: a query for offending rows; none means pass."""

from collections.abc import Mapping
from typing import Any

import dagster as dg
import pandas as pd
import sqlalchemy as sa

from ecr_pipelines.resources import DatabaseResource

PREVIEW_ROWS = 20


def offending_rows_check(
    db: DatabaseResource,
    query: str,
    params: Mapping[str, Any] | None = None,
    *,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    """Pass when ``query`` returns no rows; otherwise show how many and the first ones."""
    with db.connect() as conn:
        result = conn.execute(sa.text(query), dict(params or {}))
        frame = pd.DataFrame(result.fetchmany(PREVIEW_ROWS + 1), columns=list(result.keys()))
        total = len(frame) if len(frame) <= PREVIEW_ROWS else len(frame) + len(result.fetchall())
    preview = frame.head(PREVIEW_ROWS).to_markdown(index=False) if total else "_none_"
    return dg.AssetCheckResult(
        passed=total == 0,
        severity=severity,
        metadata={"offending_rows": total, "preview": dg.MetadataValue.md(preview)},
    )
