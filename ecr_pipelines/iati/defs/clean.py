"""``iati_clean_files``: the clean stage (``ecr_pipelines.iati.stages.clean``)."""

import dagster as dg
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check, stored_blobs_check
from ecr_pipelines.iati.blobkeys import clean_key
from ecr_pipelines.iati.defs.safety import iati_publisher_flags
from ecr_pipelines.iati.defs.sync import GROUP
from ecr_pipelines.iati.defs.validate import iati_validation_reports
from ecr_pipelines.iati.stages.clean import (
    CLEANABLE,
    clean_due,
    clean_state,
    not_cleanable_count,
    recent_clean_documents,
)
from ecr_pipelines.iati.validate import SUPPORTED_VERSIONS
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource
from ecr_pipelines.stages import ProcessesConfig, RetryBatchConfig, log_stage, stage_metadata

CLEAN_BLOB_SAMPLE = 50


class IatiCleanConfig(RetryBatchConfig, ProcessesConfig):
    """Run config of the clean stage (ops.iati_clean_files.config)."""

    retry_errors: bool = Field(
        default=False,
        description='Retry documents with a clean_error ("Could not parse", "No valid activities").',
    )


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "xml"},
    deps=[iati_validation_reports, iati_publisher_flags],
    pool="iati_clean",
    description=(
        "Clean IATI activity files in the blob store (iati/clean/<hash>.xml): a valid 2.x activities file is "
        "copied as is; an invalid one is rebuilt with only the activities its report marks valid (root "
        'attributes kept), or gets clean_error "Could not parse" / "No valid activities". Organisation '
        "files and 1.x files go no further. Run config retry_errors: true retries the clean errors too."
    ),
)
def iati_clean_files(
    context: dg.AssetExecutionContext,
    config: IatiCleanConfig,
    db: DatabaseResource,
    blobs: BlobStoreResource,
) -> dg.MaterializeResult:
    report = clean_due(
        db.engine,
        blobs.store,
        batch_size=config.batch_size,
        limit=config.limit,
        retry_errors=config.retry_errors,
        processes=config.processes,
        run_id=context.run.run_id,
        progress=context.log.info,
    )
    log_stage(context.log, report)
    with db.connect() as conn:
        sql = Sql(conn)
        totals = clean_state(sql)
        not_cleanable = not_cleanable_count(sql)
    return dg.MaterializeResult(
        metadata=stage_metadata(report, totals["clean_total"], **totals, not_cleanable_total=not_cleanable)
    )


@dg.asset_check(
    asset=iati_clean_files,
    description=f"The {CLEAN_BLOB_SAMPLE} most recently cleaned documents have their clean file in the blob store.",
)
def iati_clean_files_stored(db: DatabaseResource, blobs: BlobStoreResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        sample = list(recent_clean_documents(Sql(conn), CLEAN_BLOB_SAMPLE))
    return stored_blobs_check(blobs.store, ((doc_id, clean_key(doc_hash)) for doc_id, doc_hash in sample))


@dg.asset_check(
    asset=iati_clean_files,
    description=(
        "Every cleanable document (valid, or invalid with per-activity meta, 2.x activities file) is cleaned "
        "or has a clean_error (warns: a run with a limit leaves documents due)."
    ),
)
def iati_cleanable_documents_cleaned(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        f"""
        SELECT d.id, d.hash, d.clean_start FROM iati.document d JOIN iati.validation v ON v.id = d.validation
        WHERE d.downloaded IS NOT NULL AND d.hash <> '' AND d.clean_end IS NULL AND d.clean_error IS NULL
          AND {CLEANABLE}
        ORDER BY d.id
        """,
        {"versions": list(SUPPORTED_VERSIONS)},
        severity=dg.AssetCheckSeverity.WARN,
    )


clean_checks = [iati_clean_files_stored, iati_cleanable_documents_cleaned]
