"""Matching run and operator actions on the registry tables (no Dagster import).

The matching keeps the legacy outcome (research notes §3) and drops its cost: candidates come
from ``matching.find_candidates`` (vectorised, blocked by country) and links are written in one
statement. Operator actions (verify, verify-none, manual, unverify, flush) write a
``matching_log`` row with the operator's name; verify / verify-none / manual call BDR for
companies that did not pass the checks, and everything is rolled back when BDR fails.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ecr_pipelines.registry.clients import BdrEndpointClient
from ecr_pipelines.registry.matching import (
    auto_verify_all_ids,
    candidate_pool,
    companies_to_match,
    find_candidates,
    new_company_ids,
    noneu_auto_verify_ids,
)
from ecr_pipelines.resources.sql import Sql

SYSTEM_USER = "SYSTEM"

# (subject, text) of a notification; the caller sends it to the mail_address list.
Notify = Callable[[str, str], None]


class OperatorError(ValueError):
    """An operator action that cannot be done as asked (unknown id, no link, BDR said no)."""


@dataclass
class MatchReport:
    noneu_verified: list[int] = field(default_factory=list)
    auto_verified: list[int] = field(default_factory=list)
    matched_companies: int = 0
    pool_size: int = 0
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame)
    links_created: int = 0
    new_verified: list[int] = field(default_factory=list)
    bdr_failures: list[tuple[int, str]] = field(default_factory=list)


def _unverified(sql: Sql) -> pd.DataFrame:
    rows = sql.all(
        """
        SELECT u.id, u.external_id, u.domain, u.name, u.country_code, u.vat, u.check_passed,
               u.represent_id IS NOT NULL AS has_representative, c.type AS country_type
        FROM registry.undertaking u
        LEFT JOIN registry.address a ON a.id = u.address_id
        LEFT JOIN registry.country c ON c.id = a.country_id
        WHERE NOT u.oldcompany_verified
        ORDER BY u.id
        """
    )
    columns = [
        "id",
        "external_id",
        "domain",
        "name",
        "country_code",
        "vat",
        "check_passed",
        "has_representative",
        "country_type",
    ]
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


def _old_companies(sql: Sql) -> pd.DataFrame:
    rows = sql.all(
        """
        SELECT o.id, o.external_id, o.name, o.country_code, o.eori, o.valid, o.obligation,
               EXISTS (SELECT 1 FROM registry.undertaking u WHERE u.oldcompany_id = o.id) AS taken
        FROM registry.old_company o ORDER BY o.id
        """
    )
    columns = ["id", "external_id", "name", "country_code", "eori", "valid", "obligation", "taken"]
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


def _details_link(bdr: BdrEndpointClient, external_id: int, domain: str) -> str:
    return f"{bdr.url}/european_registry/organisation_details?id={external_id}&domain={domain}"


def _mark_verified(
    sql: Sql,
    bdr: BdrEndpointClient,
    undertaking: Any,
    user: str,
    account: str | None,
    old_company: Any | None,
) -> None:
    """The shared tail of verify / verify-none / manual: BDR first for companies that did not
    pass the checks (a BDR failure raises before anything is committed), then the row and log."""
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
    sql.exec(
        'INSERT INTO registry.matching_log ("user", domain, company_id, oldcompany_id, oldcompany_account, verified) '
        "VALUES (:user, :domain, :company, :old, :acct, true)",
        {
            "user": user,
            "domain": undertaking.domain,
            "company": undertaking.external_id,
            "old": old_company.external_id if old_company is not None else None,
            "acct": account,
        },
    )


def find_undertaking(sql: Sql, external_id: int, domain: str | None) -> Any:
    rows = sql.all(
        "SELECT id, external_id, domain, name, country_code, check_passed, oldcompany_verified "
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
    notify: Notify | None = None,
) -> None:
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
    sql.exec(
        "UPDATE registry.old_company_link SET verified = true, date_verified = now() "
        "WHERE undertaking_id = :u AND oldcompany_id = :o",
        {"u": undertaking.id, "o": old.id},
    )
    _mark_verified(sql, bdr, undertaking, user, old.account, old)
    if notify:
        notify(
            "BDR - New Company matched",
            f"{undertaking.domain} company {undertaking.name} ({external_id}) was matched by {user} with old "
            f"company {old.external_id} (collection {old.account}).\n{_details_link(bdr, external_id, undertaking.domain)}",
        )


def manual(
    sql: Sql,
    bdr: BdrEndpointClient,
    external_id: int,
    domain: str,
    account: str | None,
    user: str,
    notify: Notify | None = None,
) -> None:
    """Verify an undertaking with an operator-given collection (``account``), or as new (None)."""
    undertaking = find_undertaking(sql, external_id, domain)
    _mark_verified(sql, bdr, undertaking, user, account or None, None)
    if notify:
        notify(
            "BDR - New Company added",
            f"{undertaking.domain} company {undertaking.name} ({external_id}) was verified by {user} "
            f"{'with collection ' + account if account else 'as a new company'}.\n"
            f"{_details_link(bdr, external_id, undertaking.domain)}",
        )


def verify_none(
    sql: Sql, bdr: BdrEndpointClient, external_id: int, domain: str, user: str, notify: Notify | None = None
) -> None:
    """Verify an undertaking as a new company (no old company)."""
    manual(sql, bdr, external_id, domain, None, user, notify)


def unverify(sql: Sql, external_id: int, domain: str, user: str) -> None:
    """Undo a verification: the undertaking and its verified link are both reset (the legacy code
    looked the link up by the wrong id and left it verified)."""
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
    sql.exec(
        'INSERT INTO registry.matching_log ("user", domain, company_id, oldcompany_id, oldcompany_account, verified) '
        "VALUES (:user, :domain, :company, NULL, NULL, false)",
        {"user": user, "domain": undertaking.domain, "company": external_id},
    )


def flush(sql: Sql, user: str) -> int:
    """Delete every proposed link (verified or not); undertakings keep their fields."""
    deleted = sql.exec("DELETE FROM registry.old_company_link")
    sql.exec('INSERT INTO registry.matching_log ("user", verified) VALUES (:user, NULL)', {"user": user})
    return deleted


def run_matching(
    sql: Sql,
    bdr: BdrEndpointClient,
    *,
    manual_domains: list[str],
    auto_all_domains: list[str],
    auto_new_domains: list[str],
    fuzz_limit: int,
    notify: Notify | None = None,
) -> MatchReport:
    """The legacy run order: (1) non-EU F-gas companies without representative verified as new;
    (2) AUTO_VERIFY_ALL domains verified as new; (3) MANUAL_VERIFY domains matched against valid,
    untaken old companies of those obligations, links created unverified; (4) AUTO_VERIFY_NEW
    domains' companies with no candidate verified as new. Auto-verifications whose BDR call fails
    are skipped and reported (the run goes on)."""
    report = MatchReport()
    unverified = _unverified(sql)
    verified_ids: set[int] = set()

    def auto_verify(ids: list[int], into: list[int]) -> None:
        for row in unverified[unverified["id"].isin(ids) & ~unverified["id"].isin(verified_ids)].itertuples():
            nested = sql.conn.begin_nested()  # a BDR refusal undoes this company only
            try:
                manual(sql, bdr, int(row.external_id), row.domain, None, SYSTEM_USER, notify)
                nested.commit()
                verified_ids.add(int(row.id))
                into.append(int(row.external_id))
            except OperatorError as exc:
                nested.rollback()
                report.bdr_failures.append((int(row.external_id), str(exc)))

    auto_verify(noneu_auto_verify_ids(unverified), report.noneu_verified)
    auto_verify(auto_verify_all_ids(unverified, auto_all_domains), report.auto_verified)

    companies = companies_to_match(unverified, manual_domains, verified_ids)
    pool = candidate_pool(_old_companies(sql), manual_domains)
    report.matched_companies, report.pool_size = len(companies), len(pool)
    candidates = find_candidates(companies, pool, fuzz_limit)
    report.candidates = candidates
    if len(candidates):
        before = sql.scalar("SELECT count(*) FROM registry.old_company_link")
        sql.values(
            "INSERT INTO registry.old_company_link (oldcompany_id, undertaking_id, score, rule) VALUES %s "
            "ON CONFLICT (oldcompany_id, undertaking_id) DO NOTHING",
            [
                (int(r.oldcompany_id), int(r.undertaking_id), float(r.score), r.rule)
                for r in candidates.itertuples()
            ],
        )
        report.links_created = sql.scalar("SELECT count(*) FROM registry.old_company_link") - before
    auto_verify(new_company_ids(companies, candidates, auto_new_domains), report.new_verified)
    return report


def review_queue(sql: Sql, limit: int = 50) -> pd.DataFrame:
    """Unverified undertakings with their proposed old companies, best score first."""
    rows = sql.all(
        """
        SELECT u.domain, u.external_id, u.name, u.country_code, o.external_id AS old_id, o.name AS old_name,
               o.account, l.rule, round(l.score::numeric, 1) AS score
        FROM registry.old_company_link l
        JOIN registry.undertaking u ON u.id = l.undertaking_id
        JOIN registry.old_company o ON o.id = l.oldcompany_id
        WHERE NOT u.oldcompany_verified AND NOT l.verified
        ORDER BY l.score DESC NULLS LAST, u.external_id
        LIMIT :limit
        """,
        {"limit": limit},
    )
    columns = [
        "domain",
        "undertaking",
        "name",
        "country",
        "old_company",
        "old_name",
        "account",
        "rule",
        "score",
    ]
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)
