"""``iati_publisher_flags``: the safety check, and the job that clears a flag
(``ecr_pipelines.iati.stages.safety``)."""

import dagster as dg
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.iati.defs.resources import IatiValidatorResource
from ecr_pipelines.iati.defs.sync import GROUP
from ecr_pipelines.iati.defs.validate import iati_validation_reports
from ecr_pipelines.iati.stages.safety import (
    UNFLAG_JOB,
    UNFLAG_OP,
    flagged_publishers,
    queue_flag_mails,
    run_safety_check,
    unflag_publisher,
    unnotified_flags,
)
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import DatabaseResource, MailResource
from ecr_pipelines.stages import send_queued_mail

SERVICE_TAG = {"ecr/service": "iati"}


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
    recipients = iati_validator.mail_recipients()
    with db.begin() as conn:  # the flags and their mails commit together, or not at all
        flagged = run_safety_check(Sql(conn), threshold, period)
        queued = queue_flag_mails(conn, recipients, threshold, period)
    context.log.info(
        f"safety check: {len(flagged)} publishers with more than {threshold} schema-invalid documents downloaded "
        f"in the last {period:g} hours, {sum(1 for f in flagged if f.new)} newly flagged, {len(queued)} mails queued"
    )
    for publisher in flagged:
        if publisher.new:
            context.log.warning(
                f"publisher {publisher.name} ({publisher.org_id}) black-flagged: {publisher.recent_invalid} "
                f"schema-invalid documents downloaded in the last {period:g} hours (threshold {threshold})"
            )
    with db.connect() as conn:
        unnotified = len(unnotified_flags(Sql(conn), period))
    if unnotified and not recipients:
        context.log.warning(
            f"{unnotified} black flags not mailed: IATI_BLACK_FLAG_MAIL_TO is empty (they are mailed once it is set)"
        )
    sent = send_queued_mail(context.log, db, mail)
    with db.connect() as conn:
        current = flagged_publishers(Sql(conn))
    return dg.MaterializeResult(
        metadata={
            "threshold": threshold,
            "period_hours": period,
            "over_threshold": len(flagged),
            "new_flags": sum(1 for f in flagged if f.new),
            "mails_queued": len(queued),
            "mails_sent": sent.sent,
            "unnotified": unnotified,
            "held_documents": sum(row[4] for row in current),
            "errors": len(sent.failed),
            "dagster/row_count": len(current),
            "flagged_publishers": md_table(
                ["org_id", "name", "black_flag", "notified", "held documents"],
                [(o, n, f"{b:%Y-%m-%d %H:%M}", notified, held) for o, n, b, notified, held in current],
            ),
            "new_flag_preview": md_table(
                ["org_id", "name", "schema-invalid recently"],
                [(f.org_id, f.name, f.recent_invalid) for f in flagged if f.new],
            ),
            "error_preview": md_table(["mail", "error"], sent.failed),
        }
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


safety_checks = [iati_black_flags_notified]
