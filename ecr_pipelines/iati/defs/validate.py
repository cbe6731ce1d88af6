"""``iati_validation_reports``: the validate stage (``ecr_pipelines.iati.stages.validate``).

Order: ``iati_source_files`` → ``iati_validation_reports`` → ``iati_publisher_flags`` →
``iati_clean_files``.

Why the safety check comes after validation, when the refresher ran it before: the refresher
looped (safety check, then validate, every minute) and held back the full validation of a
schema-invalid document for two hours after its download, so that later loops' safety checks
could count it before anything of it was validated, cleaned or indexed. Here one run does the
schema checks of everything new, holds the schema-invalid documents (``IATI_SAFETY_CHECK_HOLD_HOURS``,
default the safety period), and then counts them at once: a publisher that publishes a flood of
broken files is flagged in the same run that discovered them, and the next validation run already
skips its held documents. Run after run this is the refresher's "check before validate", without
waiting for the next run to notice. ``iati_clean_files`` comes last so that it sees both the new
reports and the flags. A hold of 0 (the demo) validates everything at once and leaves the flag to
protect only later files.
"""

import dagster as dg
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.iati.defs.download import iati_source_files
from ecr_pipelines.iati.defs.resources import IatiValidatorResource, ValidatorConfigError
from ecr_pipelines.iati.defs.sync import GROUP
from ecr_pipelines.iati.stages.validate import (
    unaccounted_documents_query,
    validate_due,
    validation_state,
)
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource
from ecr_pipelines.stages import ProcessesConfig, RetryBatchConfig, log_stage, stage_metadata


class IatiValidationConfig(RetryBatchConfig, ProcessesConfig):
    """Run config of the validation (ops.iati_validation_reports.config)."""

    retry_errors: bool = Field(
        default=False, description="Also re-send documents the validator refused as too large (413)."
    )


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "xml"},
    deps=[iati_source_files],
    pool="iati_validation",
    description=(
        "Validation reports of the downloaded IATI documents (iati.validation, linked from "
        "iati.document.validation), by the local schema validator (IATI_VALIDATOR=local, bundled 2.01-2.03 "
        "XSDs) or the IATI Validator API (api). Due: downloaded, hash-bearing documents without a report, "
        "or flagged regenerate_validation_report. Schema check first (file_schema_valid); schema-invalid "
        "documents are held while their publisher is black-flagged or for IATI_SAFETY_CHECK_HOLD_HOURS "
        "after download; then the full report (per-activity meta for invalid files). Validator statuses "
        "go to validation_api_error (400 not well-formed, 413 too large, 422 invalid, others failures); a "
        "missing source blob sends the document back to download."
    ),
)
def iati_validation_reports(
    context: dg.AssetExecutionContext,
    config: IatiValidationConfig,
    db: DatabaseResource,
    blobs: BlobStoreResource,
    http: HttpResource,
    iati_validator: IatiValidatorResource,
) -> dg.MaterializeResult:
    try:
        validator = iati_validator.validator(http.session)
    except ValidatorConfigError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    hold = iati_validator.hold_hours
    context.log.info(
        f"validating with the {iati_validator.describe()}; schema-invalid documents held {hold:g} h"
    )
    report = validate_due(
        db.engine,
        blobs.store,
        validator,
        hold_hours=hold,
        batch_size=config.batch_size,
        limit=config.limit,
        retry_errors=config.retry_errors,
        processes=config.processes,
        run_id=context.run.run_id,
        progress=context.log.info,
    )
    log_stage(context.log, report)
    with db.connect() as conn:
        state = validation_state(Sql(conn), hold)
    metadata = stage_metadata(
        report,
        state.with_report,
        backend=report_backend(iati_validator),
        with_report_total=state.with_report,
        api_error_total=state.api_error,
        held_black_flag_total=state.held_by_flag,
        held_for_safety_check_total=state.held_recent,
        unaccounted_total=state.unaccounted,
    )
    if report.stopped:
        raise dg.Failure(
            description=f"validation stopped, the rest stays due: {report.stopped}", metadata=metadata
        )
    return dg.MaterializeResult(metadata=metadata)


def report_backend(resource: IatiValidatorResource) -> str:
    return resource.backend_name()


@dg.asset_check(
    asset=iati_validation_reports,
    description=(
        "Every downloaded, hash-bearing document has a stored report or a validation_api_error, or is held "
        "(black flag, or schema-invalid within the safety hold). Warns: a run with a limit, or one stopped "
        "by an unreachable validator, leaves documents due."
    ),
)
def iati_downloaded_documents_validated(
    db: DatabaseResource, iati_validator: IatiValidatorResource
) -> dg.AssetCheckResult:
    hold = iati_validator.hold_hours
    result = offending_rows_check(
        db,
        unaccounted_documents_query(),
        {"hold": hold * 3600.0},
        severity=dg.AssetCheckSeverity.WARN,
    )
    with db.connect() as conn:
        state = validation_state(Sql(conn), hold)
    return dg.AssetCheckResult(
        passed=result.passed,
        severity=result.severity,
        metadata={
            **result.metadata,
            "documents": state.candidates,
            "with_report": state.with_report,
            "api_error": state.api_error,
            "held_black_flag": state.held_by_flag,
            "held_for_safety_check": state.held_recent,
        },
    )


@dg.asset_check(
    asset=iati_validation_reports,
    description="Every document's report belongs to it: same document id and same hash (no stale links).",
)
def iati_validation_reports_match_documents(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        """
        SELECT d.id, d.hash, v.id AS validation, v.document_id, v.document_hash
        FROM iati.document d JOIN iati.validation v ON v.id = d.validation
        WHERE v.document_id <> d.id OR v.document_hash IS DISTINCT FROM d.hash ORDER BY d.id
        """,
    )


validate_checks = [iati_downloaded_documents_validated, iati_validation_reports_match_documents]
