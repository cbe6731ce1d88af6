"""The operator's actions on the matching (no Dagster import): verify, verify-none, manual,
unverify, flush.

Each action runs in the caller's transaction and writes a ``matching_log`` row with the
operator's name. verify / verify-none / manual call BDR for companies that did not pass the
checks *inside* that transaction, so a BDR refusal raises ``OperatorError`` and rolls everything
back. Their notification mails are only *queued* there (``pipeline.mail_outbox``, one mail per
``registry.mail_address`` row, as the legacy service sent them); the caller sends them after the
commit, so an SMTP failure can never undo a verification BDR has already seen, and the dedupe key
(the log row) keeps a re-run from mailing anyone twice.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ecr_pipelines.lib.outbox import queue_mail
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.clients import BdrEndpointClient

SYSTEM_USER = "SYSTEM"
# Every registry mail's dedupe key starts so (checks and tests tell them from other services').
MAIL_KEY_PREFIX = "registry.matching_log:"


class OperatorError(ValueError):
    """An operator action that cannot be done as asked (unknown id, no link, BDR said no)."""


@dataclass(frozen=True)
class Outcome:
    """What an action did: ``changed`` False when it was already so (a re-run: nothing written,
    nothing called, nothing mailed)."""

    changed: bool
    log_id: int | None = None
    mails_queued: int = 0


def notification_addresses(sql: Sql) -> list[str]:
    """Who is told about verifications: every ``registry.mail_address`` row."""
    return [r.mail for r in sql.all("SELECT mail FROM registry.mail_address ORDER BY id")]


def mail_key(log_id: int, logged_at: datetime, address: str) -> str:
    """Dedupe key of one notice: the log row (id *and* time, so ids reused after a restore or a
    sequence reset never collide with an old mail) and the address."""
    return f"{MAIL_KEY_PREFIX}{log_id}:{logged_at.isoformat()}:{address}"


def _queue_notice(sql: Sql, log: Any, mail_to: Sequence[str], subject: str, text: str) -> int:
    # One mail per address, as the legacy service sent them: recipients never see each other.
    return sum(
        queue_mail(sql.conn, mail_key(log.id, log.timestamp, address), [address], subject, text)
        for address in dict.fromkeys(mail_to)
    )


def _details_link(bdr: BdrEndpointClient, external_id: int, domain: str) -> str:
    return f"{bdr.url}/european_registry/organisation_details?id={external_id}&domain={domain}"


def _mark_verified(
    sql: Sql,
    bdr: BdrEndpointClient,
    undertaking: Any,
    user: str,
    account: str | None,
    old_company: Any | None,
) -> Any:
    """The shared tail of verify / verify-none / manual: BDR first for companies that did not
    pass the checks (a BDR failure raises before anything is committed), then the row and log.
    Returns the log row (id, timestamp)."""
    if not undertaking.check_passed:
        result = bdr.update_company_collection(
            undertaking.external_id,
            undertaking.domain,
            undertaking.country_code or "NON_EU",
            undertaking.name,
            account,
        )
        if not result.ok:
            raise OperatorError(
                f"BDR refused the collection of {undertaking.domain} {undertaking.external_id}: {result.message}"
            )
    sql.exec(
        "UPDATE registry.undertaking SET oldcompany_verified = true, oldcompany_account = :acct, "
        "oldcompany_extid = :ext, oldcompany_id = :oid WHERE id = :id",
        {
            "acct": account,
            "ext": old_company.external_id if old_company is not None else None,
            "oid": old_company.id if old_company is not None else None,
            "id": undertaking.id,
        },
    )
    return sql.all(
        'INSERT INTO registry.matching_log ("user", domain, company_id, oldcompany_id, oldcompany_account, verified) '
        "VALUES (:user, :domain, :company, :old, :acct, true) RETURNING id, timestamp",
        {
            "user": user,
            "domain": undertaking.domain,
            "company": undertaking.external_id,
            "old": old_company.external_id if old_company is not None else None,
            "acct": account,
        },
    )[0]


def find_undertaking(sql: Sql, external_id: int, domain: str | None) -> Any:
    rows = sql.all(
        "SELECT id, external_id, domain, name, country_code, check_passed, oldcompany_verified, "
        "oldcompany_id, oldcompany_account "
        "FROM registry.undertaking WHERE external_id = :e AND (:d IS NULL OR domain = :d)",
        {"e": external_id, "d": domain.upper() if domain else None},
    )
    if not rows:
        where = f" in {domain.upper()}" if domain else ""
        raise OperatorError(f"no undertaking with external id {external_id}{where}")
    if len(rows) > 1:
        raise OperatorError(f"external id {external_id} exists in FGAS and ODS: give the domain")
    return rows[0]


def verify(
    sql: Sql,
    bdr: BdrEndpointClient,
    external_id: int,
    oldcompany_external_id: int,
    user: str,
    domain: str | None = None,
    mail_to: Sequence[str] = (),
) -> Outcome:
    """Confirm the proposed link between an undertaking and an old company."""
    undertaking = find_undertaking(sql, external_id, domain)
    rows = sql.all(
        "SELECT o.id, o.external_id, o.account FROM registry.old_company_link l "
        "JOIN registry.old_company o ON o.id = l.oldcompany_id WHERE l.undertaking_id = :u AND o.external_id = :o",
        {"u": undertaking.id, "o": oldcompany_external_id},
    )
    if not rows:
        raise OperatorError(
            f"{undertaking.domain} {external_id} has no proposed link to old company {oldcompany_external_id}"
        )
    old = rows[0]
    if undertaking.oldcompany_verified and undertaking.oldcompany_id == old.id:
        return Outcome(changed=False)  # a re-run after the commit: BDR and the mail list were told
    sql.exec(
        "UPDATE registry.old_company_link SET verified = true, date_verified = now() "
        "WHERE undertaking_id = :u AND oldcompany_id = :o",
        {"u": undertaking.id, "o": old.id},
    )
    log = _mark_verified(sql, bdr, undertaking, user, old.account, old)
    queued = _queue_notice(
        sql,
        log,
        mail_to,
        "BDR - New Company matched",
        f"{undertaking.domain} company {undertaking.name} ({external_id}) was matched by {user} with old "
        f"company {old.external_id} (collection {old.account}).\n{_details_link(bdr, external_id, undertaking.domain)}",
    )
    return Outcome(True, log.id, queued)


def manual(
    sql: Sql,
    bdr: BdrEndpointClient,
    external_id: int,
    domain: str,
    account: str | None,
    user: str,
    mail_to: Sequence[str] = (),
) -> Outcome:
    """Verify an undertaking with an operator-given collection (``account``), or as new (None)."""
    undertaking = find_undertaking(sql, external_id, domain)
    account = account or None
    if (
        undertaking.oldcompany_verified
        and undertaking.oldcompany_id is None
        and (undertaking.oldcompany_account or None) == account
    ):
        return Outcome(changed=False)  # a re-run after the commit: BDR and the mail list were told
    log = _mark_verified(sql, bdr, undertaking, user, account, None)
    queued = _queue_notice(
        sql,
        log,
        mail_to,
        "BDR - New Company added",
        f"{undertaking.domain} company {undertaking.name} ({external_id}) was verified by {user} "
        f"{'with collection ' + account if account else 'as a new company'}.\n"
        f"{_details_link(bdr, external_id, undertaking.domain)}",
    )
    return Outcome(True, log.id, queued)


def verify_none(
    sql: Sql, bdr: BdrEndpointClient, external_id: int, domain: str, user: str, mail_to: Sequence[str] = ()
) -> Outcome:
    """Verify an undertaking as a new company (no old company)."""
    return manual(sql, bdr, external_id, domain, None, user, mail_to)


def unverify(sql: Sql, external_id: int, domain: str, user: str) -> Outcome:
    """Undo a verification: the undertaking and its verified link are both reset (the legacy code
    looked the link up by the wrong id and left it verified). No BDR call, no mail (legacy)."""
    undertaking = find_undertaking(sql, external_id, domain)
    if not undertaking.oldcompany_verified:
        raise OperatorError(f"{undertaking.domain} {external_id} is not verified")
    sql.exec(
        "UPDATE registry.old_company_link SET verified = false, date_verified = NULL WHERE undertaking_id = :u",
        {"u": undertaking.id},
    )
    sql.exec(
        "UPDATE registry.undertaking SET oldcompany_verified = false, oldcompany_account = NULL, "
        "oldcompany_extid = NULL, oldcompany_id = NULL WHERE id = :id",
        {"id": undertaking.id},
    )
    log_id = sql.scalar(
        'INSERT INTO registry.matching_log ("user", domain, company_id, oldcompany_id, oldcompany_account, verified) '
        "VALUES (:user, :domain, :company, NULL, NULL, false) RETURNING id",
        {"user": user, "domain": undertaking.domain, "company": external_id},
    )
    return Outcome(True, log_id)


def flush(sql: Sql, user: str) -> int:
    """Delete every proposed link (verified or not); undertakings keep their fields."""
    deleted = sql.exec("DELETE FROM registry.old_company_link")
    sql.exec('INSERT INTO registry.matching_log ("user", verified) VALUES (:user, NULL)', {"user": user})
    return deleted
