"""The operator's ops on the matching (logic: ``ecr_pipelines.registry.operator``); their jobs are
in ``jobs``. They take run config (Launchpad or ``dagster job execute -c``) and, flush aside, write
a ``matching_log`` row with the operator's name.

Order inside an op: one transaction holds the change, the BDR call and the queued notification
mails, so a BDR refusal or an unknown id changes nothing; the mails are sent after the commit,
so a mail server failure leaves the verification standing and the mail queued for a retry.
"""

from collections.abc import Callable
from typing import Any

import dagster as dg
from pydantic import Field

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry import operator
from ecr_pipelines.registry.clients import BdrEndpointClient
from ecr_pipelines.registry.defs.resources import RegistryResource
from ecr_pipelines.registry.operator import OperatorError, Outcome, Recipient
from ecr_pipelines.resources import DatabaseResource, HttpResource, MailResource
from ecr_pipelines.stages import send_queued_mail

_USER = "Who does this (written to registry.matching_log)."
_UNDERTAKING = "External id of the undertaking (company_id in the F-gas / ODS registry)."
_DOMAIN = "FGAS or ODS."


class VerifyConfig(dg.Config):
    undertaking: int = Field(description=_UNDERTAKING)
    old_company: int = Field(description="External id (BDR pk) of the proposed old company.")
    user: str = Field(description=_USER)
    domain: str | None = Field(
        default=None, description="FGAS or ODS; needed only when the id exists in both registries."
    )
    obligation: str | None = Field(
        default=None,
        description=(
            "FGAS or ODS: which obligation's old company is meant when BDR lists this company under both "
            "(default: the undertaking's own domain, else the oldest row)."
        ),
    )


class UndertakingConfig(dg.Config):
    undertaking: int = Field(description=_UNDERTAKING)
    domain: str = Field(description=_DOMAIN)
    user: str = Field(description=_USER)


class ManualConfig(dg.Config):
    undertaking: int = Field(description=_UNDERTAKING)
    domain: str = Field(description=_DOMAIN)
    collection_account: str = Field(description="The BDR collection (old company account) to bind to.")
    user: str = Field(description=_USER)


class FlushConfig(dg.Config):
    user: str = Field(description=_USER)


def _refused(exc: OperatorError) -> dg.Failure:
    # Deliberate: retrying cannot change an unknown id or a BDR refusal.
    return dg.Failure(description=str(exc), allow_retries=False)


def _mail_to(context: dg.OpExecutionContext, sql: Sql, registry: RegistryResource) -> list[Recipient]:
    """Nobody is told unless SEND_MATCHING_MAILS is true and BDR_ENDPOINT_URL set (legacy)."""
    blocked = registry.matching_mails_blocked()
    if blocked is None:
        return operator.notification_addresses(sql)
    if registry.send_matching_mails:
        context.log.warning(blocked)  # asked for mails that cannot be sent, as the legacy warned
    return []


# (sql, bdr, config, mail_to) -> Outcome
Action = Callable[[Sql, BdrEndpointClient, Any, list[Recipient]], Outcome]


def _verifying_op(
    name: str, description: str, config_type: type[dg.Config], action: Action
) -> dg.OpDefinition:
    """An op that verifies something: BDR client and notification mails come with it."""

    @dg.op(name=name, description=description)
    def _op(
        context: dg.OpExecutionContext,
        config: config_type,  # type: ignore[valid-type]
        db: DatabaseResource,
        http: HttpResource,
        mail: MailResource,
        registry: RegistryResource,
    ) -> None:
        bdr = registry.bdr_endpoint(http.session())
        try:
            with db.begin() as conn:  # one transaction: a BDR refusal or unknown id changes nothing
                sql = Sql(conn)
                mail_to = _mail_to(context, sql, registry)
                outcome = action(sql, bdr, config, mail_to)
        except OperatorError as exc:
            raise _refused(exc) from exc
        if outcome.changed:
            context.log.info(f"done (matching_log {outcome.log_id}, {outcome.mails_queued} mails queued)")
        else:
            context.log.info("already so: nothing changed, nothing called, nothing mailed again")
        send_queued_mail(context.log, db, mail)

    return _op


verify_link = _verifying_op(
    "verify_link",
    "Verify the proposed link between an undertaking and an old company.",
    VerifyConfig,
    lambda sql, bdr, c, mail_to: operator.verify(
        sql, bdr, c.undertaking, c.old_company, c.user, c.domain, mail_to, c.obligation
    ),
)
verify_none = _verifying_op(
    "verify_none",
    "Verify an undertaking as a new company (no old company).",
    UndertakingConfig,
    lambda sql, bdr, c, mail_to: operator.verify_none(sql, bdr, c.undertaking, c.domain, c.user, mail_to),
)
manual_link = _verifying_op(
    "manual_link",
    "Verify an undertaking with a BDR collection chosen by the operator.",
    ManualConfig,
    lambda sql, bdr, c, mail_to: operator.manual(
        sql, bdr, c.undertaking, c.domain, c.collection_account, c.user, mail_to
    ),
)


@dg.op(description="Undo the verification of an undertaking (its link is reset too).")
def unverify(context: dg.OpExecutionContext, config: UndertakingConfig, db: DatabaseResource) -> None:
    try:
        with db.begin() as conn:
            operator.unverify(Sql(conn), config.undertaking, config.domain, config.user)
    except OperatorError as exc:
        raise _refused(exc) from exc
    context.log.info("done")


@dg.op(
    description=(
        "Delete every proposed link (verified or not); undertakings keep their fields. Like the legacy "
        "flush it writes no matching_log row; who flushed is in this run's log."
    )
)
def flush_links(context: dg.OpExecutionContext, config: FlushConfig, db: DatabaseResource) -> None:
    with db.begin() as conn:
        deleted = operator.flush(Sql(conn), config.user)
    context.log.info(f"{config.user} flushed {deleted} links")
