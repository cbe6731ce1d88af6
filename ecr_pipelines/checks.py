"""The shapes the data-quality checks here share: a query for offending rows (none means pass),
and a sample of items whose files must be in the blob store."""

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg
import sqlalchemy as sa

from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.metadata import PREVIEW_ROWS, md_table
from ecr_pipelines.resources import DatabaseResource

# A bind name no check query uses (the preview's LIMIT is a parameter, not formatted in).
_LIMIT_PARAM = "offending_rows_preview_limit"


def offending_rows_check(
    db: DatabaseResource,
    query: str,
    params: Mapping[str, Any] | None = None,
    *,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
    preview_rows: int = PREVIEW_ROWS,
) -> dg.AssetCheckResult:
    """Pass when ``query`` returns no rows; otherwise show how many and the first ones.

    The count and the preview are computed by the server (``count(*)`` over the query, then the
    query with a ``LIMIT``): a check over a table with millions of offending rows costs two
    statements and ``preview_rows`` rows in memory, not the whole result. The signature is the
    one IATI's checks call too. ``query`` may end with
    ``ORDER BY`` (kept for the preview) but not with ``LIMIT`` or a semicolon.
    """
    # The newline before ")" keeps a trailing "-- comment" in the query from eating the paren.
    inner = query.strip().rstrip(";")
    values = dict(params or {})
    with db.connect() as conn:
        count = int(
            conn.execute(sa.text(f"SELECT count(*) FROM ({inner}\n) AS offending"), values).scalar_one()
        )
        headers: list[str] = []
        rows: list[Any] = []
        if count:
            result = conn.execute(
                # LIMIT on the query itself rather than on a sub-select: its ORDER BY then surely
                # holds for the preview.
                sa.text(f"{inner}\nLIMIT :{_LIMIT_PARAM}"),
                {**values, _LIMIT_PARAM: preview_rows},
            )
            headers, rows = list(result.keys()), result.fetchall()
    preview = md_table(headers, rows, preview_rows)
    if count > len(rows):
        preview = dg.MetadataValue.md(f"{preview.value}\n\n_{count - len(rows)} more not shown_")
    return dg.AssetCheckResult(
        passed=count == 0,
        severity=severity,
        metadata={"offending_rows": count, "preview": preview},
    )


def stored_blobs_check(
    store: BlobStore, sample: Iterable[tuple[Any, str]], item: str = "id"
) -> dg.AssetCheckResult:
    """Pass when every ``(item, blob key)`` of ``sample`` is in ``store``; the missing ones are shown."""
    rows = list(sample)
    missing = [(key_of, key) for key_of, key in rows if not store.exists(key)]
    return dg.AssetCheckResult(
        passed=not missing,
        metadata={"sampled": len(rows), "missing": len(missing), "preview": md_table([item, "key"], missing)},
    )
