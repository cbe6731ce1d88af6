"""IATI refresh assets: publisher and document sync from the index, then the source downloads.

Thin wrappers: parsing lives in ``index``, upstream calls in ``clients`` / ``ckan``, the set-based
sync in ``sync`` and the downloads in ``download``.
"""

from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg

from ecr_pipelines.iati.download import download_due, error_label
from ecr_pipelines.iati.index import IndexProblem, Rejected
from ecr_pipelines.iati.resources import IatiResource
from ecr_pipelines.iati.solr import SolrResource, remove_stale_solr_documents
from ecr_pipelines.iati.sync import (
    SyncReport,
    log_refresh,
    remove_blobs,
    sync_index,
)
from ecr_pipelines.metadata import PREVIEW_ROWS, md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource
from ecr_pipelines.resources.sql import Sql

GROUP = "iati"
PUBLISHERS = dg.AssetKey("iati_publishers")
DOCUMENTS = dg.AssetKey("iati_documents")


class IatiSyncConfig(dg.Config):
    """Run config of the sync (ops.iati_sync.config)."""

    ignore_safety_valve: bool = False


class IatiDownloadConfig(dg.Config):
    """Run config of the downloads (ops.iati_source_files.config)."""

    retry_errors: bool = False
    limit: int | None = None
    workers: int | None = None


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
    removal = remove_stale_solr_documents(solr, report.stale_document_ids)
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


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "xml"},
    deps=[DOCUMENTS],
    pool="iati_downloads",
    description=(
        "Source files of the IATI documents in the blob store (iati/source/<hash>.xml): every due document "
        "(not downloaded, no error) is streamed from its cached URL by IATI_DOWNLOAD_WORKERS threads, its "
        "character encoding checked, and the outcome stored in iati.document (downloaded, or the legacy "
        "download_error code: HTTP status, 0 connection, 1 TLS, 2 charset, 3 scheme, 4 no cached URL, "
        "5 too large). Run config retry_errors: true retries every error but 4."
    ),
)
def iati_source_files(
    context: dg.AssetExecutionContext,
    config: IatiDownloadConfig,
    db: DatabaseResource,
    blobs: BlobStoreResource,
    http: HttpResource,
    iati: IatiResource,
) -> dg.MaterializeResult:
    report, without_source = download_due(
        db.engine,
        http.session(),
        blobs.store,
        workers=config.workers or iati.download_workers,
        retry_errors=config.retry_errors,
        limit=config.limit,
        max_bytes=http.max_download_bytes,
        progress=context.log.info,
    )
    if report.unexpected and not report.downloaded and not report.errors:
        first = report.unexpected[0]
        raise dg.Failure(
            description=(
                f"all {len(report.unexpected)} downloads failed for a reason that is not the documents' "
                f"(first: {first.message}); the documents stay due"
            ),
            metadata={"blob_store": blobs.store.uri()},
        )
    with db.connect() as conn:
        stored, with_error, still_due = conn.exec_driver_sql(
            "SELECT count(*) FILTER (WHERE downloaded IS NOT NULL), count(*) FILTER (WHERE download_error IS NOT NULL), "
            "count(*) FILTER (WHERE downloaded IS NULL AND download_error IS NULL) FROM iati.document"
        ).one()
    by_code = report.errors_by_code()
    errors = [
        (o.id, o.code, error_label(o.code if o.code is not None else 0), o.message, o.url)
        for o in report.errors
    ]
    errors += [
        (doc_id, 4, "no_source", f"{name or ''}: no cached URL or hash", None)
        for doc_id, name in without_source
    ]
    context.log.info(
        f"{report.downloaded} downloaded ({report.bytes:,} bytes), {len(report.errors)} errors, "
        f"{report.no_source} without source, {len(report.unexpected)} left due, in {report.seconds:.1f} s"
    )
    return dg.MaterializeResult(
        metadata={
            "due": report.due,
            "downloaded": report.downloaded,
            "bytes": report.bytes,
            "errors": sum(by_code.values()),
            **{f"error_{error_label(code)}": count for code, count in by_code.items()},
            "left_due": len(report.unexpected),
            "seconds": round(report.seconds, 2),
            "stored_total": stored,
            "error_total": with_error,
            "due_total": still_due,
            "dagster/row_count": stored,
            "error_preview": md_table(["id", "code", "kind", "message", "url"], errors),
            "left_due_preview": md_table(["id", "message"], [(o.id, o.message) for o in report.unexpected]),
        }
    )
