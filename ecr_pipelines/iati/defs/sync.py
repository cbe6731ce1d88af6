"""``iati_sync``: publishers and documents from the index (``ecr_pipelines.iati.stages.sync``)."""

from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.iati.defs.resources import IatiResource, SolrResource
from ecr_pipelines.iati.index import IndexProblem, Rejected
from ecr_pipelines.iati.solr import remove_stale_solr_documents
from ecr_pipelines.iati.stages.sync import SyncReport, log_refresh, remove_blobs, sync_index
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.metadata import PREVIEW_ROWS, md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource

GROUP = "iati"
PUBLISHERS = dg.AssetKey("iati_publishers")
DOCUMENTS = dg.AssetKey("iati_documents")


class IatiSyncConfig(dg.Config):
    """Run config of the sync (ops.iati_sync.config)."""

    ignore_safety_valve: bool = Field(
        default=False,
        description="Accept an index much smaller than what is stored (the safety valve refuses it otherwise).",
    )


def _rejected_table(rejected: Sequence[Rejected], kind: str) -> dg.MetadataValue:
    return md_table(["id", "reason"], [(r.key, r.reason) for r in rejected if r.kind == kind])


def _publisher_metadata(report: SyncReport, db_total: int) -> dict[str, Any]:
    rejected = [r for r in report.rejected if r.kind == "publisher"]
    return {
        "source": report.source,
        "index_created": report.index_created.isoformat() if report.index_created else "n/a",
        "in_index": report.publishers,
        "new": report.new_publishers,
        "updated": report.publishers - report.new_publishers,
        "renamed": len(report.renamed_publishers),
        "stale": len(report.removed_publishers),
        "rejected": len(rejected),
        "errors": len(rejected),
        "statements": report.statements,
        "seconds": round(report.seconds, 2),
        "dagster/row_count": db_total,
        "removed_publishers": md_table(["org_id", "name"], report.removed_publishers),
        "renamed_publishers": md_table(["org_id", "old name", "new name"], report.renamed_publishers),
        "rejected_records": _rejected_table(report.rejected, "publisher"),
    }


def _document_metadata(
    report: SyncReport, blobs_removed: int, blob_failures: Sequence[tuple[str, str]], db_total: int
) -> dict[str, Any]:
    rejected = [r for r in report.rejected if r.kind == "document"]
    return {
        "source": report.source,
        "in_index": report.documents,
        "new": report.new_documents,
        "changed": len(report.changed_documents),
        "unchanged": report.unchanged_documents,
        "stale": len(report.stale_documents),
        "revived_no_source": report.revived_documents,
        "rejected": len(rejected),
        "errors": len(rejected),
        "blobs_removed": blobs_removed,
        "blob_delete_failures": len(blob_failures),
        "dagster/row_count": db_total,
        "changed_documents": md_table(["id", "old hash", "new hash"], report.changed_documents),
        "stale_documents": md_table(["id", "hash", "name", "publisher"], report.stale_documents),
        "rejected_records": _rejected_table(report.rejected, "document"),
        "blob_delete_failure_list": md_table(["key", "error"], blob_failures),
    }


@dg.multi_asset(
    name="iati_sync",
    specs=[
        dg.AssetSpec(
            PUBLISHERS,
            group_name=GROUP,
            kinds={"postgres", "api"},
            description=(
                "IATI publishers (iati.publisher) from the configured index: the Bulk Data Service "
                "reporting-org index (IATI_SOURCE=bds) or the legacy CKAN registry's organizations "
                "(IATI_SOURCE=registry). Upserted by org_id with their dataset count; publishers no longer "
                "listed are removed with their documents and blobs. Refused, changing nothing, when the "
                "index is missing, malformed, truncated, from another BDS run than the dataset index, or "
                "below the safety valve."
            ),
        ),
        dg.AssetSpec(
            DOCUMENTS,
            group_name=GROUP,
            kinds={"postgres", "api"},
            deps=[PUBLISHERS],
            description=(
                "IATI documents (iati.document), one per BDS dataset or registry resource, upserted by id. A "
                "changed hash resets every stage column so the document is downloaded and processed again; "
                "documents no longer listed are removed with their source/clean/lake blobs (and, once the "
                "Solr stage exists, their Solr documents)."
            ),
        ),
    ],
    pool="iati_sync",
)
def iati_sync(
    context: dg.AssetExecutionContext,
    config: IatiSyncConfig,
    db: DatabaseResource,
    blobs: BlobStoreResource,
    http: HttpResource,
    iati: IatiResource,
    solr: SolrResource,
) -> Iterator[dg.MaterializeResult]:
    context.log.info(f"reading the {iati.describe()}")
    try:
        snapshot = iati.load_index(http.session(), context.log.info)
        context.log.info(snapshot.summary())
        with db.begin() as conn:
            report = sync_index(
                Sql(conn),
                snapshot,
                publisher_safety_percentage=iati.publisher_safety_percentage,
                document_safety_percentage=iati.document_safety_percentage,
                ignore_safety_valve=config.ignore_safety_valve,
                run_id=context.run.run_id,
            )
    except IndexProblem as exc:
        with db.begin() as conn:
            log_refresh(Sql(conn), SyncReport(iati.source, None), context.run.run_id, refused=str(exc))
        raise dg.Failure(
            description=f"IATI refresh refused, nothing was changed or deleted: {exc}",
            metadata={"reason": type(exc).__name__, "source": iati.describe()},
            allow_retries=False,
        ) from exc
    context.log.info(report.summary())
    cleanup = remove_blobs(blobs.store, report.unreferenced_hashes, report.stale_document_ids)
    for key, error in cleanup.failures:
        context.log.warning(f"could not delete blob {key}: {error}")
    # After the database commit: a Solr failure here must not bring removed rows back.
    removal = remove_stale_solr_documents(
        solr.client() if solr.configured else None, report.stale_document_ids
    )
    if removal.skipped_reason:
        context.log.warning(f"stale Solr documents not removed: {removal.skipped_reason}")
    for document_id, error in removal.failures[:PREVIEW_ROWS]:
        context.log.warning(f"Solr entries of stale document {document_id} not removed: {error}")
    if report.stale_documents:
        context.log.info(
            f"removed {len(report.stale_documents)} stale documents: {cleanup.deleted} blobs deleted, "
            f"Solr entries of {len(removal.deleted)} removed"
        )
    for rejected in report.rejected[:PREVIEW_ROWS]:
        context.log.warning(f"{rejected.kind} {rejected.key} rejected: {rejected.reason}")
    with db.connect() as conn:
        publishers, documents = conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM iati.publisher), (SELECT count(*) FROM iati.document)"
        ).one()
    yield dg.MaterializeResult(asset_key=PUBLISHERS, metadata=_publisher_metadata(report, publishers))
    yield dg.MaterializeResult(
        asset_key=DOCUMENTS, metadata=_document_metadata(report, cleanup.deleted, cleanup.failures, documents)
    )


@dg.asset_check(
    asset=DOCUMENTS,
    description="Every document row has its publisher (no orphans: the sync never writes one).",
)
def iati_documents_have_publishers(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT d.id, d.publisher FROM iati.document d LEFT JOIN iati.publisher p ON p.org_id = d.publisher "
        "WHERE p.org_id IS NULL ORDER BY d.id",
    )


@dg.asset_check(
    asset=PUBLISHERS,
    description="No two publishers share a short name (warns: the index repeats a name under two ids).",
)
def iati_publisher_names_unique(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT name, string_agg(org_id, ', ' ORDER BY org_id) AS org_ids FROM iati.publisher GROUP BY name "
        "HAVING count(*) > 1 ORDER BY name",
        severity=dg.AssetCheckSeverity.WARN,
    )


sync_checks = [iati_documents_have_publishers, iati_publisher_names_unique]
