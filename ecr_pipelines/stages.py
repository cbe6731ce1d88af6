"""What every batch-stage asset shares on the Dagster side: its run config, its metadata, its
log lines (the stage itself runs on ``ecr_pipelines.lib.batch``) and the mails it queued."""

from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from ecr_pipelines.lib.batch import StageReport
from ecr_pipelines.lib.outbox import OutboxReport, send_pending
from ecr_pipelines.metadata import PREVIEW_ROWS, md_table
from ecr_pipelines.resources import DatabaseResource, MailResource


class BatchConfig(dg.Config):
    """Run config of a batch stage (``ops.<asset>.config``)."""

    batch_size: int = Field(default=50, description="Items per batch: one claim, one commit.")
    limit: int | None = Field(default=None, description="Process at most this many items.")


class RetryBatchConfig(BatchConfig):
    """Run config of a batch stage whose failed items wait for a retry run."""

    retry_errors: bool = Field(
        default=False, description="Also take the items that failed before (the retry schedule sets it)."
    )


class ProcessesConfig(dg.Config):
    """Run config of a batch stage whose per-item work runs in worker processes."""

    processes: int | None = Field(
        default=None,
        description=(
            "Worker processes for the per-item work (default: the service's setting, IATI_PROCESSES for "
            "IATI; 1: this run's process only). Started only when more than one item is due and the due "
            "work is large enough to pay for them."
        ),
    )


def stage_metadata(report: StageReport, row_count: int, **extra: Any) -> dict[str, Any]:
    """The metadata of one run of a batch stage: its counts, then previews of the items that
    failed (with their error class) and of those that went elsewhere (held, sent back, ...)."""
    return {
        **report.metadata(),
        **extra,
        "dagster/row_count": row_count,
        "error_preview": md_table(["item", "error class", "message"], report.error_rows),
        "other_outcomes": md_table(["item", "outcome", "message"], report.other_rows),
    }


def log_stage(log: Any, report: StageReport, warnings: int = PREVIEW_ROWS) -> None:
    """The stage's summary and its first errors in the run log."""
    log.info(report.summary())
    for key, cls, message in report.error_rows[:warnings]:
        log.warning(f"{report.stage}: {key}: {cls}: {message}")
    if report.errors > warnings:
        log.warning(f"{report.stage}: {report.errors - warnings} more errors (see the metadata preview)")


def row_count(db: DatabaseResource, sql: str) -> int:
    """One ``SELECT count(*)``: the asset's ``dagster/row_count`` after a stage run."""
    with db.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def send_queued_mail(log: Any, db: DatabaseResource, mail: MailResource) -> OutboxReport:
    """Send what a committed transaction queued (and anything still due from earlier runs).

    Called after the commit only: a mail that fails stays in ``pipeline.mail_outbox`` with its
    error and is retried by the next sender (``housekeeping_sensor`` at the latest); the change it
    reports stands.
    """
    report = send_pending(db.engine, mail.mailer().send)
    if report.sent:
        log.info(f"{report.sent} queued mails sent")
    for mail_id, error in report.failed:
        log.warning(f"mail {mail_id} not sent (kept in pipeline.mail_outbox for a retry): {error}")
    return report
