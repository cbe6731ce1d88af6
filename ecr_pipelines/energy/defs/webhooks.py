"""Webhooks: ``energy_webhook_job`` subscribes and unsubscribes, ``send_webhooks`` delivers what a
committed transaction queued, and ``energy_webhook_sensor`` delivers (and retries) the rest
(``ecr_pipelines.energy.webhooks``)."""

import time
from typing import Any, Literal

import dagster as dg
import requests
from pydantic import Field

from ecr_pipelines.automation import service_tags
from ecr_pipelines.energy import ledger, webhooks
from ecr_pipelines.energy.defs.resources import POLL_SECONDS
from ecr_pipelines.lib.settings import env_str
from ecr_pipelines.resources import DatabaseResource, HttpResource

SERVICE_TAG = service_tags("energy")
# A sensor tick must end well inside Dagster's 60 s evaluation timeout.
SENSOR_BUDGET_SECONDS = 30.0
EVENTS = ("ON_MEASUREMENT_PUBLISHED", "ON_GGOS_ISSUED", "ON_METERINGPOINT_AVAILABLE")


def send_webhooks(
    log: Any, db: DatabaseResource, session: requests.Session, *, budget: float | None = None
) -> webhooks.DeliveryReport | None:
    """Deliver the due webhooks, a batch at a time, until none is due (or ``budget`` seconds)."""
    started = time.monotonic()
    total: webhooks.DeliveryReport | None = None
    while True:
        report = webhooks.send_due(db.engine, session, address_of=ledger.address_of)
        if total is None:
            total = report
        else:
            total.sent += report.sent
            total.failed += report.failed
            total.dead += report.dead
            total.remaining_due = report.remaining_due
            total.errors.extend(report.errors)
        attempted = report.sent + report.failed + report.dead
        if not attempted or not report.remaining_due:
            break
        if budget is not None and time.monotonic() - started > budget:
            break
    if total and (total.sent or total.failed or total.dead):
        log.info(f"webhooks: {total.sent} sent, {total.failed} failed (retried in 60 s), {total.dead} dead")
        for delivery_id, kind, message in total.errors[:10]:
            log.warning(f"webhook delivery {delivery_id}: {kind}: {message}")
    return total


class WebhookConfig(dg.Config):
    """A webhook subscription (ops.energy_webhook.config), as the legacy's subscribe/unsubscribe calls."""

    action: Literal["subscribe", "unsubscribe"] = Field(
        default="subscribe", description="subscribe or unsubscribe."
    )
    event: Literal["ON_MEASUREMENT_PUBLISHED", "ON_GGOS_ISSUED", "ON_METERINGPOINT_AVAILABLE"] = Field(
        description="The event."
    )
    subject: str = Field(description="The customer (sub) whose events are sent.")
    url: str = Field(description="Where they are POSTed.")
    secret_env_var: str | None = Field(
        default=None,
        description=(
            "Name of the environment variable that holds the HMAC secret (run config is stored and shown, so "
            "the secret itself never goes in it). None: unsigned with an empty secret."
        ),
    )


@dg.op(
    description=(
        "Subscribe or unsubscribe a webhook (energy.webhook_subscription). Unsubscribe removes the "
        "subscriptions matching event, subject, url and secret, as the legacy. Subscriptions may also be "
        "inserted into the table directly."
    ),
    tags={"kind": "postgres"},
)
def energy_webhook(context: dg.OpExecutionContext, config: WebhookConfig, db: DatabaseResource) -> bool:
    secret = ""
    if config.secret_env_var:
        value = env_str(config.secret_env_var)
        if value is None:
            raise dg.Failure(
                description=f"environment variable {config.secret_env_var} is not set", allow_retries=False
            )
        secret = value
    if not config.url.startswith(("http://", "https://")):
        raise dg.Failure(description="url must be an http:// or https:// URL", allow_retries=False)
    with db.engine.begin() as conn:
        if config.action == "subscribe":
            changed = webhooks.subscribe(conn, config.event, config.subject, config.url, secret)
        else:
            changed = webhooks.unsubscribe(conn, config.event, config.subject, config.url, secret)
    context.log.info(
        f"{config.action} {config.event} for {config.subject} → {config.url}: "
        + ("done" if changed else "nothing to change")
    )
    return changed


@dg.job(
    tags=SERVICE_TAG,
    description="Subscribe or unsubscribe one webhook (ops.energy_webhook.config: action, event, subject, url, secret_env_var).",
)
def energy_webhook_job() -> None:
    energy_webhook()


@dg.sensor(
    name="energy_webhook_sensor",
    minimum_interval_seconds=POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every ENERGY_POLL_SECONDS (60): delivers the webhooks that are due (queued by an import whose run "
        "could not send them, or failed before: retried every 60 s for 24 h, then dead). It sends itself, "
        "without a run: a delivery is one small signed POST."
    ),
)
def energy_webhook_sensor(
    context: dg.SensorEvaluationContext, db: DatabaseResource, http: HttpResource
) -> dg.SkipReason:
    report = send_webhooks(context.log, db, http.session(retries=0), budget=SENSOR_BUDGET_SECONDS)
    if report is None or not (report.sent or report.failed or report.dead):
        return dg.SkipReason("no webhook is due")
    return dg.SkipReason(
        f"webhooks: {report.sent} sent, {report.failed} failed, {report.dead} dead, {report.remaining_due} still due"
    )
