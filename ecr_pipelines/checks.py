"""The shape every data-quality check here shares: a query for offending rows; none means pass."""

from collections.abc import Mapping
from typing import Any

import dagster as dg
import sqlalchemy as sa

from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import DatabaseResource


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
        headers = list(result.keys())
        rows = result.fetchall()
    return dg.AssetCheckResult(
        passed=not rows,
        severity=severity,
        metadata={"offending_rows": len(rows), "preview": md_table(headers, rows)},
    )
