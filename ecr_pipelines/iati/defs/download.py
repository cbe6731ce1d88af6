"""``iati_source_files``: the downloads (``ecr_pipelines.iati.stages.download``)."""

import dagster as dg
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check, stored_blobs_check
from ecr_pipelines.iati.blobkeys import source_key
from ecr_pipelines.iati.defs.resources import IatiResource
from ecr_pipelines.iati.defs.sync import DOCUMENTS, GROUP
from ecr_pipelines.iati.stages.download import BATCH_SIZE, NO_SOURCE_MESSAGE, download_due
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource
from ecr_pipelines.stages import RetryBatchConfig, log_stage, stage_metadata

# Above this share of failed downloads (among documents that have a source) something is wrong
# beyond individual publishers: the cache, our network, or the TLS set-up.
MAX_ERROR_SHARE = 0.5
BLOB_SAMPLE = 25


class IatiDownloadConfig(RetryBatchConfig):
    """Run config of the downloads (ops.iati_source_files.config)."""

    retry_errors: bool = Field(
        default=False, description="Download again the documents that failed (every error code but 4)."
    )
    batch_size: int = Field(default=BATCH_SIZE, description="Documents per batch (one claim, one commit).")
    workers: int | None = Field(
        default=None, description="Concurrent downloads (default IATI_DOWNLOAD_WORKERS)."
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
        "5 too large). Run config retry_errors: true retries every error but 4 (the retry schedule does, "
        "every 30 minutes)."
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
        batch_size=config.batch_size,
        max_bytes=http.max_download_bytes,
        run_id=context.run.run_id,
        progress=context.log.info,
    )
    log_stage(context.log, report)
    left_due = report.kinds.get("left_due", 0)
    if left_due and not report.kinds.get("downloaded") and not report.kinds.get("error"):
        raise dg.Failure(
            description=(
                f"all {left_due} downloads failed for a reason that is not the documents' "
                f"(first: {report.error_rows[0][2] if report.error_rows else '?'}); the documents stay due"
            ),
            metadata={"blob_store": blobs.store.uri()},
        )
    with db.connect() as conn:
        stored, with_error, still_due = conn.exec_driver_sql(
            "SELECT count(*) FILTER (WHERE downloaded IS NOT NULL), count(*) FILTER (WHERE download_error IS NOT NULL), "
            "count(*) FILTER (WHERE downloaded IS NULL AND download_error IS NULL) FROM iati.document"
        ).one()
    return dg.MaterializeResult(
        metadata=stage_metadata(
            report,
            stored,
            stored_total=stored,
            error_total=with_error,
            due_total=still_due,
            no_source_preview=md_table(
                ["id", "name", "problem"], [(i, n, NO_SOURCE_MESSAGE) for i, n in without_source]
            ),
        )
    )


@dg.asset_check(
    asset=iati_source_files,
    description=(
        "Every document is downloaded or has a download_error code (warns: a run with a limit, or "
        "downloads interrupted by a store failure, leave documents due for the next run)."
    ),
)
def iati_every_document_downloaded_or_errored(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT id, name, cached_dataset_url FROM iati.document WHERE downloaded IS NULL AND download_error IS NULL "
        "ORDER BY id",
        severity=dg.AssetCheckSeverity.WARN,
    )


@dg.asset_check(
    asset=iati_source_files,
    description=(
        f"At most {MAX_ERROR_SHARE:.0%} of the documents that have a cached URL failed to download (warns: "
        "beyond that the cause is probably ours or the cache's, not the publishers')."
    ),
)
def iati_download_error_share(db: DatabaseResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        failed, attempted = conn.exec_driver_sql(
            "SELECT count(*) FILTER (WHERE download_error IS NOT NULL), count(*) FROM iati.document "
            "WHERE coalesce(download_error, -1) <> 4 AND (downloaded IS NOT NULL OR download_error IS NOT NULL)"
        ).one()
        by_code = conn.exec_driver_sql(
            "SELECT download_error, count(*) FROM iati.document WHERE download_error IS NOT NULL "
            "GROUP BY download_error ORDER BY count(*) DESC"
        ).all()
    share = failed / attempted if attempted else 0.0
    return dg.AssetCheckResult(
        passed=share <= MAX_ERROR_SHARE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "failed": failed,
            "attempted": attempted,
            "error_share": round(share, 4),
            "by_code": md_table(["download_error", "documents"], by_code),
        },
    )


@dg.asset_check(
    asset=iati_source_files,
    description=f"The {BLOB_SAMPLE} most recently downloaded documents have their source file in the blob store.",
)
def iati_source_files_stored(db: DatabaseResource, blobs: BlobStoreResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, hash FROM iati.document WHERE downloaded IS NOT NULL ORDER BY downloaded DESC, id "
            f"LIMIT {BLOB_SAMPLE}"
        ).all()
    return stored_blobs_check(blobs.store, ((doc_id, source_key(doc_hash)) for doc_id, doc_hash in rows))


download_checks = [
    iati_every_document_downloaded_or_errored,
    iati_download_error_share,
    iati_source_files_stored,
]
