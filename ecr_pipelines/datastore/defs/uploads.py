"""The CSV upload assets (``ecr_pipelines.datastore.stages.uploads``): ``datastore/upload_files``
registers and checks what was put under ``datastore/uploads/``, ``datastore/upload_tables``
verifies a file when the run config names one and loads every verified file."""

from typing import Any

import dagster as dg
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.datastore.dataflow import FAILED, SUCCESS, TIMEOUT, trigger_dag, wait_for_dag
from ecr_pipelines.datastore.defs.resources import DatastoreResource
from ecr_pipelines.datastore.defs.sources import GROUP, KEY_PREFIX
from ecr_pipelines.datastore.stages.uploads import (
    LOAD_STAGE,
    UnknownUpload,
    UploadRefused,
    check_uploads,
    fail_stuck_uploads,
    file_details,
    load_verified,
    register_uploads,
    upload_summary,
    verify_upload,
)
from ecr_pipelines.datastore.uploads import COLUMN_TYPES, infer_lines_setting
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource
from ecr_pipelines.stages import log_stage, stage_metadata

UPLOAD_FILES = dg.AssetKey([KEY_PREFIX, "upload_files"])
UPLOAD_TABLES = dg.AssetKey([KEY_PREFIX, "upload_tables"])
SHOWN_FILES = 5  # new files whose header, types and sample the metadata shows


def _newest_table(summary: dict[str, Any]) -> dg.MetadataValue:
    return md_table(
        ["organisation", "dataset", "file", "state", "rows", "error"],
        [
            (f["organisation"], f["dataset"], f["file"], f["state"], f["rows"] or "", f["error"] or "")
            for f in summary["newest"]
        ],
    )


def _file_metadata(details: dict[str, Any]) -> dg.MetadataValue:
    """A new file as its verifier needs it: each column's inferred type and first values (the
    check stores ``UploadCheck.describe()``: one entry per column)."""
    return md_table(
        ["column", "inferred type", "first values"],
        [
            (column["name"], column["type"], " | ".join(str(value) for value in column["sample"]))
            for column in details.get("sample") or []
        ],
    )


@dg.asset(
    key=UPLOAD_FILES,
    group_name=GROUP,
    kinds={"postgres", "s3"},
    description=(
        "CSV uploads registered and checked: every file under datastore/uploads/<org>/<dataset>/ gets its "
        "datastore.pipeline and datastore.pipeline_data_file rows (the legacy's upload tables), then is "
        "checked as the legacy's upload wizard did (header rules, reserved names, duplicate headers renamed "
        "h_1, h_2, row lengths, null tokens) and its column types inferred from the first "
        "CSV_SAMPLE_INFER_LINES rows. A file that fails is 'failed' with the reasons; one that passes waits "
        "for datastore_upload_job (or is verified at once with DATASTORE_UPLOAD_AUTO_VERIFY=true)."
    ),
)
def datastore_uploads(
    context: dg.AssetExecutionContext,
    db: DatabaseResource,
    blobs: BlobStoreResource,
    datastore: DatastoreResource,
) -> dg.MaterializeResult:
    registered = register_uploads(db.engine, blobs.store, progress=context.log.info)
    for key, reason in registered.refused:
        context.log.warning(f"upload {key} refused: {reason}")
    report = check_uploads(
        db.engine,
        blobs.store,
        infer_lines=infer_lines_setting(),
        auto_verify=datastore.upload_auto_verify,
        run_id=context.run.run_id,
        progress=context.log.info,
    )
    log_stage(context.log, report)
    shown: dict[str, Any] = {}
    with db.connect() as conn:
        summary = upload_summary(conn)
        for file_id in registered.new_ids[:SHOWN_FILES]:
            details = file_details(conn, file_id)
            if details is not None and details["inferred_types"]:
                shown[f"file {details['organisation']}/{details['dataset']}/{details['file']}"] = (
                    _file_metadata(details)
                )
    return dg.MaterializeResult(
        metadata=stage_metadata(
            report,
            summary["files"],
            registered=registered.registered,
            already_registered=registered.known,
            refused_keys=md_table(["key", "reason"], registered.refused),
            auto_verify=datastore.upload_auto_verify,
            files_by_state=md_table(["state", "files"], sorted(summary["by_state"].items())),
            newest_files=_newest_table(summary),
            **shown,
        )
    )


class UploadLoadConfig(dg.Config):
    """Run config of the upload load (``ops.datastore__upload_tables.config``)."""

    file: str | None = Field(
        default=None,
        description=(
            "Verify this upload first (its blob key or id): the person confirming its column types. An "
            "older completed file restores that version; a failed one is tried again."
        ),
    )
    column_types: dict[str, str] = Field(
        default_factory=dict,
        description=f"Column name -> type ({', '.join(COLUMN_TYPES)}), overriding the inferred type.",
    )


@dg.asset(
    key=UPLOAD_TABLES,
    group_name=GROUP,
    deps=[UPLOAD_FILES],
    kinds={"postgres"},
    description=(
        'Verified uploads loaded: each replaces its dataset\'s "<org>.<dataset>"."L0" in one transaction '
        "(COPY; id, datafile_created, then the file's columns with the verified types), 'completed'; a value "
        "its type refuses fails the file with the line and column and leaves the previous table. With "
        "DATAFLOW_BASE_URL the file waits for its data-flow DAG run (processing_dataflow). Run config file "
        "and column_types verify one file first (datastore_upload_job)."
    ),
)
def datastore_upload_tables(
    context: dg.AssetExecutionContext,
    config: UploadLoadConfig,
    db: DatabaseResource,
    blobs: BlobStoreResource,
    http: HttpResource,
    datastore: DatastoreResource,
) -> dg.MaterializeResult:
    verified: dict[str, Any] = {}
    if config.file:
        try:
            result = verify_upload(db.engine, config.file, config.column_types or None)
        except (UploadRefused, UnknownUpload) as refusal:
            raise dg.Failure(f"{config.file}: {refusal}", allow_retries=False) from refusal
        for warning in result.warnings:
            context.log.warning(f"{result.key}: {warning}")
        context.log.info(f"{result.key} verified for {result.schema}: {result.column_types}")
        verified = {
            "verified_file": result.key,
            "verified_types": md_table(["column", "type"], result.column_types),
            "verify_warnings": "; ".join(result.warnings) or "none",
        }
    elif config.column_types:
        raise dg.Failure("column_types needs the file it is for (config.file)", allow_retries=False)
    settings = datastore.dataflow_settings()
    announce = None
    if settings is not None:
        session = http.session()

        def announce(schema: str, table: str) -> None:
            run_id = trigger_dag(session, settings, schema, table)
            context.log.info(f"data-flow DAG run {run_id} for {schema}.{table}; waiting for it")
            state = wait_for_dag(session, settings, run_id, timeout_seconds=settings.timeout_seconds)
            if state != SUCCESS:
                reason = "did not finish in time" if state == TIMEOUT else f"ended {state or FAILED}"
                raise RuntimeError(f"data-flow DAG run {run_id} for {schema}.{table} {reason}")

    report = load_verified(
        db.engine,
        blobs.store,
        dataflow=announce,
        run_id=context.run.run_id,
        progress=context.log.info,
    )
    log_stage(context.log, report)
    with db.connect() as conn:
        summary = upload_summary(conn)
    return dg.MaterializeResult(
        metadata=stage_metadata(
            report,
            summary["by_state"].get("completed", 0),
            **verified,
            files_by_state=md_table(["state", "files"], sorted(summary["by_state"].items())),
            newest_files=_newest_table(summary),
        )
    )


@dg.asset_check(
    asset=datastore_upload_tables,
    description=(
        "No upload is left in processing without a live run holding it (warns: it is failed after 24 hours "
        "and can be verified again)."
    ),
)
def datastore_no_orphaned_uploads(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT f.id, f.data_file_url, f.state, f.started_processing_at FROM datastore.pipeline_data_file f "
        "WHERE f.state LIKE 'processing%' AND NOT EXISTS (SELECT 1 FROM pipeline.stage_claim c "
        "JOIN pg_stat_activity a ON a.pid = c.owner_pid AND a.backend_start = c.owner_started "
        f"WHERE c.stage = '{LOAD_STAGE.name}' AND c.item = f.id::text) ORDER BY f.started_processing_at",
        severity=dg.AssetCheckSeverity.WARN,
    )


@dg.asset_check(
    asset=datastore_uploads,
    description="No upload failed its check (warns: the person who uploaded it must fix and upload it again).",
)
def datastore_uploads_pass_check(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT id, data_file_url, error_kind, error_message FROM datastore.pipeline_data_file "
        "WHERE state = 'failed' AND check_passed IS FALSE ORDER BY uploaded_at DESC",
        severity=dg.AssetCheckSeverity.WARN,
    )


@dg.op(description="Mark uploads stuck in verified or processing for more than 24 hours as failed.")
def datastore_fail_stuck_uploads(context: dg.OpExecutionContext, db: DatabaseResource) -> list[str]:
    failed = fail_stuck_uploads(db.engine)
    for file_id in failed:
        context.log.warning(f"upload {file_id} was stuck for more than 24 hours: failed")
    context.log.info(f"{len(failed)} stuck uploads failed")
    return failed


uploads_checks = [datastore_no_orphaned_uploads, datastore_uploads_pass_check]
