"""Failure mails: the operators' replacement for the legacy services' Sentry/mail alerts."""

import dagster as dg

from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.resources import MailResource

SENSOR_NAME = "run_failure_mail_sensor"


def alert_recipients() -> list[str]:
    """``ALERT_MAIL_TO`` as a list of addresses (empty when unset)."""
    return [address.strip() for address in (env_str("ALERT_MAIL_TO") or "").split(",") if address.strip()]


def build_run_failure_mail_sensor() -> dg.SensorDefinition:
    """The failure-mail sensor, running by default when ``ALERT_MAIL_TO`` is set.

    Built when the definitions load, so the default follows the code location's environment;
    a start or stop in the UI is stored in the instance and overrides the default.
    """

    @dg.run_failure_sensor(
        name=SENSOR_NAME,
        description=(
            "Mails ALERT_MAIL_TO (comma-separated addresses) when a run of this code location fails, "
            "through SMTP_URL (or the outbox folder). Running by default when ALERT_MAIL_TO is set "
            "where the code location loads, stopped otherwise; starting or stopping it in the UI "
            "overrides that default."
        ),
        default_status=dg.DefaultSensorStatus.RUNNING
        if alert_recipients()
        else dg.DefaultSensorStatus.STOPPED,
        monitor_all_code_locations=False,
    )
    def run_failure_mail_sensor(context: dg.RunFailureSensorContext, mail: MailResource) -> None:
        # Read again at each tick: the sensor may have been started by hand without the variable.
        recipients = alert_recipients()
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

    return run_failure_mail_sensor
