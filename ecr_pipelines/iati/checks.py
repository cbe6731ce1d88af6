"""Data-quality checks of the IATI publisher, document and source-file state."""

import dagster as dg

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.iati.assets import DOCUMENTS, PUBLISHERS, iati_source_files
from ecr_pipelines.iati.sync import source_key
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource

# Above this share of failed downloads (among documents that have a source) something is wrong
# beyond individual publishers: the cache, our network, or the TLS set-up.
MAX_ERROR_SHARE = 0.5
BLOB_SAMPLE = 25


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
    store = blobs.store
    missing = [
        (doc_id, source_key(doc_hash)) for doc_id, doc_hash in rows if not store.exists(source_key(doc_hash))
    ]
    return dg.AssetCheckResult(
        passed=not missing,
        metadata={"sampled": len(rows), "missing": len(missing), "preview": md_table(["id", "key"], missing)},
    )


iati_checks = [
    iati_documents_have_publishers,
    iati_publisher_names_unique,
    iati_every_document_downloaded_or_errored,
    iati_download_error_share,
    iati_source_files_stored,
]
