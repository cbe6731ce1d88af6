"""IATI validate, safety check and clean as assets, with their checks and the unflag job.

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
from ecr_pipelines.iati.assets import iati_source_files
from ecr_pipelines.iati.safety import flag_reason
from ecr_pipelines.iati.sync import clean_key
from ecr_pipelines.iati.validate import SUPPORTED_VERSIONS
from ecr_pipelines.iati.validation_stage import (
    BATCH_SIZE,
    CLEANABLE,
    CleanRunReport,
    FlagNotice,
    ValidationRunReport,
    ValidationState,
    ValidatorUnavailable,
    clean_due,
    clean_state,
    flagged_publishers,
    mark_notified,
    not_cleanable_count,
    recent_clean_documents,
    run_safety_check,
    unaccounted_documents_query,
    unflag_publisher,
    unnotified_flags,
    validate_due,
    validation_state,
)
from ecr_pipelines.iati.validator import IatiValidatorResource, ValidatorConfigError, build_validator_resource
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource, HttpResource, MailResource
from ecr_pipelines.resources.sql import Sql

GROUP = "iati"
SERVICE_TAG = {"ecr/service": "iati"}
CLEAN_BLOB_SAMPLE = 50
UNFLAG_JOB = "iati_unflag_publisher_job"
UNFLAG_OP = "iati_unflag_publisher"


class IatiValidationConfig(dg.Config):
    """Run config of the validation (ops.iati_validation_reports.config)."""

    batch_size: int = Field(default=BATCH_SIZE, description="Documents per transaction.")
    limit: int | None = Field(default=None, description="Validate at most this many documents.")
    retry_errors: bool = Field(
        default=False, description="Also re-send documents the validator refused as too large (413)."
    )


class IatiCleanConfig(dg.Config):
    """Run config of the clean stage (ops.iati_clean_files.config)."""

    batch_size: int = Field(default=BATCH_SIZE, description="Documents per transaction.")
    limit: int | None = Field(default=None, description="Clean at most this many documents.")
    retry_errors: bool = Field(
        default=False,
        description='Retry documents with a clean_error ("Could not parse", "No valid activities").',
    )


def _validation_metadata(report: ValidationRunReport, state: ValidationState) -> dict[str, object]:
    handled = report.reports + report.held_black_flag + report.held_recent + report.errors
    rate = handled / report.seconds if report.seconds else 0.0
    return {
        "backend": report.backend,
        "due": report.due,
        "reports_stored": report.reports,
        "valid": report.valid,
        "invalid": report.invalid,
        "held_black_flag": report.held_black_flag,
        "held_for_safety_check": report.held_recent,
        "missing_source": report.missing_source,
        "errors": report.errors,
        **{f"validation_api_error_{status}": count for status, count in sorted(report.statuses.items())},
        "batches": report.batches,
        "seconds": round(report.seconds, 2),
        "documents_per_second": round(rate, 2),
        "with_report_total": state.with_report,
        "api_error_total": state.api_error,
        "held_black_flag_total": state.held_by_flag,
        "held_for_safety_check_total": state.held_recent,
        "unaccounted_total": state.unaccounted,
        "dagster/row_count": state.with_report,
        "error_preview": md_table(["id", "hash", "kind", "status", "message"], report.problems),
    }


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
    try:
        report = validate_due(
            db.engine,
            blobs.store,
            validator,
            hold_hours=hold,
            batch_size=config.batch_size,
            limit=config.limit,
            retry_errors=config.retry_errors,
            progress=context.log.info,
            warn=context.log.warning,
        )
    except ValidatorUnavailable as exc:
        with db.connect() as conn:
            state = validation_state(Sql(conn), hold)
        raise dg.Failure(
            description=f"validation stopped, the rest stays due: {exc}",
            metadata=_validation_metadata(exc.report, state),
        ) from exc
    with db.connect() as conn:
        state = validation_state(Sql(conn), hold)
    context.log.info(report.summary())
    return dg.MaterializeResult(metadata=_validation_metadata(report, state))


def _flag_mail(notice: FlagNotice, threshold: int, period_hours: float) -> tuple[str, str]:
    subject = f"IATI: publisher {notice.name} black-flagged"
    config = f'{{"ops": {{"{UNFLAG_OP}": {{"config": {{"publisher": "{notice.org_id}"}}}}}}}}'
    text = "\n".join(
        [
            f"The IATI safety check black-flagged the publisher {notice.title} ({notice.name}).",
            "",
            f"Reason: {flag_reason(threshold, period_hours)}",
            f"Publisher id: {notice.org_id}",
            f"IATI organisation identifier: {notice.iati_id or '-'}",
            f"Flagged at: {notice.black_flag:%Y-%m-%d %H:%M %Z}",
            f"Schema-invalid documents downloaded in the last {period_hours:g} hours: {notice.recent_invalid}",
            f"Schema-invalid documents held back (not validated, cleaned or indexed): {notice.held_documents}",
            "",
            "Its schema-valid documents are processed as usual. The flag stays until cleared by hand:",
            f"  dagster job execute -m ecr_pipelines.definitions -j {UNFLAG_JOB} --config-json '{config}'",
        ]
    )
    return subject, text


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "email"},
    deps=[iati_validation_reports],
    description=(
        "Black-flagged IATI publishers (iati.publisher.black_flag): the safety check flags a publisher with "
        "more than IATI_SAFETY_CHECK_THRESHOLD schema-invalid documents downloaded within "
        "IATI_SAFETY_CHECK_PERIOD_HOURS (re-stamped while true). Its schema-invalid documents are then not "
        "fully validated, so never cleaned or indexed. A new flag mails IATI_BLACK_FLAG_MAIL_TO once "
        "(black_flag_notified); iati_unflag_publisher_job clears a flag."
    ),
)
def iati_publisher_flags(
    context: dg.AssetExecutionContext,
    db: DatabaseResource,
    mail: MailResource,
    iati_validator: IatiValidatorResource,
) -> dg.MaterializeResult:
    threshold = iati_validator.safety_check_threshold
    period = iati_validator.safety_check_period_hours
    with db.begin() as conn:
        flagged = run_safety_check(Sql(conn), threshold, period)
    context.log.info(
        f"safety check: {len(flagged)} publishers with more than {threshold} schema-invalid documents downloaded "
        f"in the last {period:g} hours, {sum(1 for f in flagged if f.new)} newly flagged"
    )
    for publisher in flagged:
        if publisher.new:
            context.log.warning(
                f"publisher {publisher.name} ({publisher.org_id}) black-flagged: {publisher.recent_invalid} "
                f"schema-invalid documents downloaded in the last {period:g} hours (threshold {threshold})"
            )
    with db.connect() as conn:
        notices = unnotified_flags(Sql(conn), period)
    recipients = iati_validator.mail_recipients()
    sent: list[tuple[str, str]] = []
    failures: list[tuple[str, str]] = []
    if notices and not recipients:
        context.log.warning(
            f"{len(notices)} black flags not mailed: IATI_BLACK_FLAG_MAIL_TO is empty (they are mailed once it is set)"
        )
    for notice in notices if recipients else []:
        subject, text = _flag_mail(notice, threshold, period)
        try:
            where = mail.send(recipients, subject, text)
        except Exception as exc:  # the flag itself is stored; the mail is retried next run
            failures.append((notice.org_id, f"{type(exc).__name__}: {exc}"))
            context.log.error(f"black-flag mail for {notice.name} ({notice.org_id}) failed: {exc}")
            continue
        with db.begin() as conn:  # one commit per mail: a later failure never re-sends this one
            mark_notified(Sql(conn), notice.org_id)
        sent.append((notice.org_id, where))
        context.log.info(f"black-flag mail for {notice.name} sent to {', '.join(recipients)} ({where})")
    with db.connect() as conn:
        current = flagged_publishers(Sql(conn))
    return dg.MaterializeResult(
        metadata={
            "threshold": threshold,
            "period_hours": period,
            "over_threshold": len(flagged),
            "new_flags": sum(1 for f in flagged if f.new),
            "mails_sent": len(sent),
            "unnotified": sum(1 for row in current if not row[3]),
            "held_documents": sum(row[4] for row in current),
            "errors": len(failures),
            "dagster/row_count": len(current),
            "flagged_publishers": md_table(
                ["org_id", "name", "black_flag", "notified", "held documents"],
                [(o, n, f"{b:%Y-%m-%d %H:%M}", notified, held) for o, n, b, notified, held in current],
            ),
            "new_flag_preview": md_table(
                ["org_id", "name", "schema-invalid recently"],
                [(f.org_id, f.name, f.recent_invalid) for f in flagged if f.new],
            ),
            "error_preview": md_table(["org_id", "error"], failures),
        }
    )


def _clean_metadata(report: CleanRunReport, totals: dict[str, int], not_cleanable: int) -> dict[str, object]:
    return {
        "reset_in_flight": report.reset_in_flight,
        "reset_errors": report.reset_errors,
        "due": report.due,
        "copied": report.copied,
        "rebuilt": report.rebuilt,
        "activities_kept": report.kept,
        "activities_dropped": report.dropped,
        "could_not_parse": report.clean_errors.get("Could not parse", 0),
        "no_valid_activities": report.clean_errors.get("No valid activities", 0),
        "missing_source": report.missing_source,
        "left_due": report.unexpected,
        "errors": report.errors,
        "batches": report.batches,
        "seconds": round(report.seconds, 2),
        **totals,
        "not_cleanable_total": not_cleanable,
        "dagster/row_count": totals["clean_total"],
        "error_preview": md_table(["id", "hash", "kind", "message"], report.problems),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "xml"},
    deps=[iati_validation_reports, iati_publisher_flags],
    pool="iati_clean",
    description=(
        "Clean IATI activity files in the blob store (iati/clean/<hash>.xml): a valid 2.x activities file is "
        "copied as is; an invalid one is rebuilt with only the activities its report marks valid (root "
        'attributes kept), or gets clean_error "Could not parse" / "No valid activities". Organisation '
        "files and 1.x files go no further. Crash recovery first: clean_start without clean_end or error is "
        "reset. Run config retry_errors: true retries the clean errors too."
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
        progress=context.log.info,
        warn=context.log.warning,
    )
    context.log.info(report.summary())
    with db.connect() as conn:
        sql = Sql(conn)
        totals = clean_state(sql)
        not_cleanable = not_cleanable_count(sql)
    return dg.MaterializeResult(metadata=_clean_metadata(report, totals, not_cleanable))


# -- checks ---------------------------------------------------------------------------------------
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


@dg.asset_check(
    asset=iati_publisher_flags,
    description="Every black flag was mailed (warns: IATI_BLACK_FLAG_MAIL_TO empty or the mail server failed).",
)
def iati_black_flags_notified(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT org_id, name, black_flag FROM iati.publisher WHERE black_flag IS NOT NULL "
        "AND black_flag_notified IS NOT TRUE ORDER BY org_id",
        severity=dg.AssetCheckSeverity.WARN,
    )


@dg.asset_check(
    asset=iati_clean_files,
    description=f"The {CLEAN_BLOB_SAMPLE} most recently cleaned documents have their clean file in the blob store.",
)
def iati_clean_files_stored(db: DatabaseResource, blobs: BlobStoreResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        sample = list(recent_clean_documents(Sql(conn), CLEAN_BLOB_SAMPLE))
    store = blobs.store
    missing = [
        (doc_id, clean_key(doc_hash)) for doc_id, doc_hash in sample if not store.exists(clean_key(doc_hash))
    ]
    return dg.AssetCheckResult(
        passed=not missing,
        metadata={
            "sampled": len(sample),
            "missing": len(missing),
            "preview": md_table(["id", "key"], missing),
        },
    )


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


validation_checks = [
    iati_downloaded_documents_validated,
    iati_validation_reports_match_documents,
    iati_black_flags_notified,
    iati_clean_files_stored,
    iati_cleanable_documents_cleaned,
]


# -- unflag job -----------------------------------------------------------------------------------
class UnflagPublisherConfig(dg.Config):
    """Run config of the unflag job (ops.iati_unflag_publisher.config)."""

    publisher: str = Field(description="The publisher's org_id (or its short name, when unique).")


@dg.op(name=UNFLAG_OP, description="Clear a publisher's black flag (and its notified mark).")
def iati_unflag_publisher(
    context: dg.OpExecutionContext, config: UnflagPublisherConfig, db: DatabaseResource
) -> None:
    try:
        with db.begin() as conn:  # an ambiguous name rolls back: nothing is cleared
            result = unflag_publisher(Sql(conn), config.publisher)
    except ValueError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    if result is None:
        raise dg.Failure(description=f"no IATI publisher {config.publisher!r}", allow_retries=False)
    org_id, name, previous = result
    if previous is None:
        context.log.info(f"publisher {name} ({org_id}) was not black-flagged; nothing to clear")
        return
    context.log.info(
        f"black flag of {name} ({org_id}) from {previous:%Y-%m-%d %H:%M %Z} cleared; its held documents "
        "are validated by the next validation run"
    )


@dg.job(
    name=UNFLAG_JOB,
    tags=SERVICE_TAG,
    description=f"Clear an IATI publisher's black flag. Config: ops.{UNFLAG_OP}.config.publisher (org_id).",
)
def iati_unflag_publisher_job() -> None:
    iati_unflag_publisher()


# Everything but the resources (tests bind their own; see build_validation_resources).
validation_defs = dg.Definitions(
    assets=[iati_validation_reports, iati_publisher_flags, iati_clean_files],
    asset_checks=validation_checks,
    jobs=[iati_unflag_publisher_job],
)


def build_validation_resources() -> dict[str, object]:
    """The validator resource configured from the environment (the shared db, blobs, http and mail
    resources come from ``ecr_pipelines.resources.build_resources``)."""
    return {"iati_validator": build_validator_resource()}
