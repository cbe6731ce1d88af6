"""``ckan_statistics``: the legacy's request and error statistics, refreshed after every
packaging run (``ecr_pipelines.ckan.statistics``)."""

import dagster as dg

from ecr_pipelines.ckan import statistics
from ecr_pipelines.ckan.defs.packages import GROUP, ckan_packages
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import DatabaseResource

NEWEST = 20


def _last_line(message: str | None) -> str:
    """A traceback's last line names the error; the whole text is in ckan.errors."""
    lines = [line for line in (message or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dg.asset(
    group_name=GROUP,
    kinds={"postgres"},
    deps=[ckan_packages],
    description=(
        "The packager's statistics as the legacy counted them: one ckan.requests row per request served "
        "(cached ones too), one ckan.errors row per failure, and ckan.totals per resource plus the '*' "
        "grand total (requests, errors, unique e-mails). Metadata: the grand total, the busiest resources "
        "and the newest requests and errors. Refreshed after every packaging run."
    ),
)
def ckan_statistics(context: dg.AssetExecutionContext, db: DatabaseResource) -> dg.MaterializeResult:
    with db.connect() as conn:
        totals = statistics.get_totals(conn)
        requests = statistics.get_requests(conn, limit=NEWEST)
        errors = statistics.get_errors(conn, limit=NEWEST)
    grand = totals.get("*", {"requests": 0, "errors": 0, "emails": 0})
    busiest = sorted(
        ((rid, t["requests"], t["errors"], t["emails"]) for rid, t in totals.items() if rid != "*"),
        key=lambda row: (-row[1], row[0]),
    )[:NEWEST]
    context.log.info(
        f"{grand['requests']} requests, {grand['errors']} errors, {grand['emails']} unique e-mails"
    )
    return dg.MaterializeResult(
        metadata={
            "requests": grand["requests"],
            "errors": grand["errors"],
            "unique_emails": grand["emails"],
            "resources": len(totals) - (1 if "*" in totals else 0),
            "dagster/row_count": grand["requests"] + grand["errors"],
            "busiest_resources": md_table(["resource", "requests", "errors", "e-mails"], busiest),
            "newest_requests": md_table(
                ["timestamp", "resource", "count", "domain"],
                [(r["timestamp"], r["resource_id"], r["count"], r["domain"]) for r in requests],
            ),
            "newest_errors": md_table(
                ["timestamp", "resource", "message"],
                [(e["timestamp"], e["resource_id"], _last_line(e["message"])) for e in errors],
            ),
        }
    )


@dg.asset_check(
    asset=ckan_statistics,
    description=(
        "The totals agree with the rows: the '*' total equals the number of request and error rows, and "
        "equals the sum over the resources."
    ),
)
def ckan_statistics_consistent(db: DatabaseResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        row = conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM ckan.requests), (SELECT count(*) FROM ckan.errors), "
            "coalesce((SELECT requests FROM ckan.totals WHERE resource_id = '*'), 0), "
            "coalesce((SELECT errors FROM ckan.totals WHERE resource_id = '*'), 0), "
            "coalesce((SELECT sum(requests) FROM ckan.totals WHERE resource_id <> '*'), 0), "
            "coalesce((SELECT sum(errors) FROM ckan.totals WHERE resource_id <> '*'), 0)"
        ).one()
    request_rows, error_rows, total_requests, total_errors, sum_requests, sum_errors = (int(v) for v in row)
    return dg.AssetCheckResult(
        passed=request_rows == total_requests == sum_requests and error_rows == total_errors == sum_errors,
        # Warns only: statistics imported from a legacy database may have had rows purged by hand.
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "request_rows": request_rows,
            "error_rows": error_rows,
            "total_requests": total_requests,
            "total_errors": total_errors,
            "sum_of_resource_requests": sum_requests,
            "sum_of_resource_errors": sum_errors,
        },
    )


statistics_checks = [ckan_statistics_consistent]
