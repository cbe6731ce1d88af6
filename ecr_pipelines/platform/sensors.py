"""Failure mails: the operators' replacement for the legacy services' Sentry/mail alerts."""

import os

import dagster as dg

from ecr_pipelines.resources import MailResource


@dg.run_failure_sensor(
    name="run_failure_mail_sensor",
    description="Mails ALERT_MAIL_TO (comma-separated) when any run of this code location fails.",
    default_status=dg.DefaultSensorStatus.STOPPED,
    monitor_all_code_locations=False,
)
def run_failure_mail_sensor(context: dg.RunFailureSensorContext, mail: MailResource) -> None:
    recipients = [a.strip() for a in os.environ.get("ALERT_MAIL_TO", "").split(",") if a.strip()]
    if not recipients:
        context.log.info("ALERT_MAIL_TO is empty: no failure mail sent")
        return
    run = context.dagster_run
    message = context.failure_event.message or "(no message)"
    mail.send(
        recipients,
        subject=f"[ecr_pipelines] run of {run.job_name} failed",
        text=f"Run {run.run_id} of job {run.job_name} failed.\n\n{message}\n",
    )
