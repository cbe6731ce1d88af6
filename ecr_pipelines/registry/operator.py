"""The operator's actions on the matching (no Dagster import): verify, verify-none, manual,
unverify, flush.

Each action runs in the caller's transaction. verify / verify-none / manual / unverify write a
``matching_log`` row with the operator's name (flush writes none, as the legacy's did not).
verify / verify-none / manual call BDR for companies that did not pass the checks *inside* that
transaction, so a BDR refusal raises ``OperatorError`` and rolls everything back. Their
notification mails are only *queued* there (``pipeline.mail_outbox``, one mail per
``registry.mail_address`` row, addressed "Dear <first> <last>" as the legacy's were); the caller
sends them after the commit, so an SMTP failure can never undo a verification BDR has already
seen, and the dedupe key (the log row) keeps a re-run from mailing anyone twice. As in the legacy,
no mail is queued without a BDR endpoint URL: the mail's link points into BDR.
"""

import html
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
SUBJECT_MATCHED = "BDR - New Company matched"
SUBJECT_ADDED = "BDR - New Company added"


def send_matching_mails(value: str | None) -> bool:
    """The legacy's reading of SEND_MATCHING_MAILS: true only for "True" or "true"; unset,
    empty or anything else ("1", "yes", "TRUE") is false, so a deployment's existing environment
    mails exactly whom it mailed before."""
    return value in ("True", "true")


def matching_mails_blocked(send_mails: bool, bdr_endpoint_url: str | None) -> str | None:
    """Why verification mails are not sent (None: they are). A mail needs both the setting and
    BDR_ENDPOINT_URL, since its link points into BDR (legacy rule)."""
    if not send_mails:
        return "SEND_MATCHING_MAILS is not true"
    if not bdr_endpoint_url:
        return (
            "No BDR_ENDPOINT_URL was set in order to send notification emails. "
            "Please set this value or disable mails sending."
        )
    return None


class OperatorError(ValueError):
    """An operator action that cannot be done as asked (unknown id, no link, BDR said no)."""


@dataclass(frozen=True)
class Outcome:
    """What an action did: ``changed`` False when it was already so (a re-run: nothing written,
    nothing called, nothing mailed)."""

    changed: bool
    log_id: int | None = None
    mails_queued: int = 0


@dataclass(frozen=True)
class Recipient:
    """One ``registry.mail_address`` row: the address and the names the greeting uses."""

    mail: str
    first_name: str | None = None
    last_name: str | None = None


def notification_addresses(sql: Sql) -> list[Recipient]:
    """Who is told about verifications: every ``registry.mail_address`` row."""
    return [
        Recipient(r.mail, r.first_name, r.last_name)
        for r in sql.all("SELECT mail, first_name, last_name FROM registry.mail_address ORDER BY id")
    ]


def mail_key(log_id: int, logged_at: datetime, address: str) -> str:
    """Dedupe key of one notice: the log row (id *and* time, so ids reused after a restore or a
    sequence reset never collide with an old mail) and the address."""
    return f"{MAIL_KEY_PREFIX}{log_id}:{logged_at.isoformat()}:{address}"


def _recipients(mail_to: Sequence[Recipient | str]) -> list[Recipient]:
    unique: dict[str, Recipient] = {}
    for item in mail_to:
        recipient = item if isinstance(item, Recipient) else Recipient(item)
        unique.setdefault(recipient.mail, recipient)
    return list(unique.values())


@dataclass(frozen=True)
class Notice:
    """What a verification mail says; rendered once per recipient (the greeting differs)."""

    subject: str
    user: str
    company_name: str | None
    domain: str
    link: str
    oldcompany_name: str | None = None  # set: "matched" mail; None: "added" mail

    def _sentence(self, mark: Any) -> str:
        company = f"{mark(self.company_name or '')} company (registered in the {self.domain} portal)"
        if self.oldcompany_name is None:
            return f"User {mark(self.user)} has added {company}. It did not match any of the old records."
        return (
            f"User {mark(self.user)} has matched {company} with the old record "
            f"{mark(self.oldcompany_name)} (taken from BDR-Registry), based on suggestions made by the "
            "system."
        )

    def render(self, recipient: Recipient) -> tuple[str, str]:
        """(text, html) for one recipient."""
        names = " ".join(n for n in (recipient.first_name, recipient.last_name) if n)
        greeting = f"Dear {names}," if names else "Dear,"
        text = (
            f"{greeting}\n\n{self._sentence(lambda v: v)}\n\n"
            f"You can see the company details here:\n{self.link}\n\nBest regards,\nBDR Help Desk\n"
        )
        link = html.escape(self.link)
        body = (
            f"<html><body>{html.escape(greeting)}<p>{self._sentence(lambda v: f'<b>{html.escape(v)}</b>')}"
            f'<br>You can see the company details here: <a href="{link}">{link}</a></p>'
            "<br>Best regards,<br>BDR Help Desk</body></html>"
        )
        return text, body


def _queue_notice(
    sql: Sql, bdr: BdrEndpointClient, log: Any, mail_to: Sequence[Recipient | str], notice: Notice
) -> int:
    if not bdr.enabled:
        return 0  # legacy: no BDR_ENDPOINT_URL, no mail (its link would lead nowhere)
    queued = 0
    # One mail per address, as the legacy service sent them: recipients never see each other.
    for recipient in _recipients(mail_to):
        text, body = notice.render(recipient)
        key = mail_key(log.id, log.timestamp, recipient.mail)
        queued += queue_mail(sql.conn, key, [recipient.mail], notice.subject, text, body)
    return queued


def _details_link(bdr: BdrEndpointClient, external_id: int, domain: str) -> str:
    return f"{bdr.url}/european_registry/organisation_details?id={external_id}&domain={domain}"


def _mark_verified(
    sql: Sql,
    bdr: BdrEndpointClient,
    undertaking: Any,
    user: str,
    account: str | None,
    old_company: Any | None,
    old_collection_id: str | None,
) -> Any:
    """The shared tail of verify / verify-none / manual: BDR first for companies that did not
    pass the checks (a BDR failure raises before anything is committed), then the row and log.
    ``old_collection_id`` is sent to BDR when not None. Returns the log row (id, timestamp)."""
    if not undertaking.check_passed:
        result = bdr.update_company_collection(
            undertaking.external_id,
            undertaking.domain,
            # Legacy: NON_EU only for a non-EU company without representative; otherwise the
            # derived country, and none at all (the parameter left out) when there is none.
            "NON_EU" if undertaking.non_eu else undertaking.country_code,
            undertaking.name,
            old_collection_id,
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
        "SELECT u.id, u.external_id, u.domain, u.name, u.country_code, u.check_passed, u.oldcompany_verified, "
        "u.oldcompany_id, u.oldcompany_account, "
        "(u.represent_id IS NULL AND c.type IS NOT DISTINCT FROM 'NONEU_TYPE') AS non_eu "
        "FROM registry.undertaking u LEFT JOIN registry.address a ON a.id = u.address_id "
        "LEFT JOIN registry.country c ON c.id = a.country_id "
        "WHERE u.external_id = :e AND (:d IS NULL OR u.domain = :d)",
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
    mail_to: Sequence[Recipient | str] = (),
    obligation: str | None = None,
) -> Outcome:
    """Confirm the proposed link between an undertaking and an old company (BDR pk).

    One BDR company listed under both obligations is two ``old_company`` rows; ``obligation``
    names the one meant. Without it the row of the undertaking's own domain is taken, else the
    oldest: the same answer every time.
    """
    undertaking = find_undertaking(sql, external_id, domain)
    rows = sql.all(
        "SELECT o.id, o.external_id, o.account, o.name, o.obligation FROM registry.old_company_link l "
        "JOIN registry.old_company o ON o.id = l.oldcompany_id "
        "WHERE l.undertaking_id = :u AND o.external_id = :o "
        "AND (CAST(:obl AS text) IS NULL OR upper(trim(o.obligation)) = :obl) "
        "ORDER BY upper(trim(o.obligation)) = :domain DESC, o.id",
        {
            "u": undertaking.id,
            "o": oldcompany_external_id,
            "obl": obligation.strip().upper() if obligation else None,
            "domain": undertaking.domain,
        },
    )
    if not rows:
        under = f" under {obligation.strip().upper()}" if obligation else ""
        raise OperatorError(
            f"{undertaking.domain} {external_id} has no proposed link to old company {oldcompany_external_id}{under}"
        )
    old = rows[0]
    if undertaking.oldcompany_verified and undertaking.oldcompany_id == old.id:
        return Outcome(changed=False)  # a re-run after the commit: BDR and the mail list were told
    sql.exec(
        "UPDATE registry.old_company_link SET verified = true, date_verified = now() "
        "WHERE undertaking_id = :u AND oldcompany_id = :o",
        {"u": undertaking.id, "o": old.id},
    )
    # Legacy: the old collection is always named to BDR here (a NULL account leaves it out).
    log = _mark_verified(sql, bdr, undertaking, user, old.account, old, old.account)
    notice = Notice(
        SUBJECT_MATCHED,
        user,
        undertaking.name,
        undertaking.domain,
        _details_link(bdr, external_id, undertaking.domain),
        oldcompany_name=old.name or "",
    )
    return Outcome(True, log.id, _queue_notice(sql, bdr, log, mail_to, notice))


def manual(
    sql: Sql,
    bdr: BdrEndpointClient,
    external_id: int,
    domain: str,
    account: str | None,
    user: str,
    mail_to: Sequence[Recipient | str] = (),
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
    log = _mark_verified(sql, bdr, undertaking, user, account, None, account)
    notice = Notice(
        SUBJECT_ADDED,
        user,
        undertaking.name,
        undertaking.domain,
        _details_link(bdr, external_id, undertaking.domain),
    )
    return Outcome(True, log.id, _queue_notice(sql, bdr, log, mail_to, notice))


def verify_none(
    sql: Sql,
    bdr: BdrEndpointClient,
    external_id: int,
    domain: str,
    user: str,
    mail_to: Sequence[Recipient | str] = (),
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
    """Delete every proposed link (verified or not); undertakings keep their fields.

    No ``matching_log`` row, as the legacy wrote none: that log lists verifications, and a row
    without company would show up in its sync and matching logs. ``user`` is for the caller's
    run log.
    """
    del user  # see the docstring
    return sql.exec("DELETE FROM registry.old_company_link")
