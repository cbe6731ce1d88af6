"""The matching run (no Dagster import): links between unverified undertakings and BDR old
companies, and the legacy auto-verifications around it.

The matching keeps the legacy outcome (research notes §3) and drops its cost: candidates come
from ``matching.find_candidates`` (vectorised, blocked by country) and links are written in one
statement. A BDR company is one company whatever the obligation lists it under: once taken by an
undertaking it leaves the pool under both, and an undertaking gets at most one link to it
(``matching.one_link_per_company``), as with the legacy's one row per BDR pk.
Auto-verifications call BDR inside the caller's transaction, each in a savepoint so a refusal
undoes that company only; their notification mails are queued in the outbox in the same savepoint
and sent by the caller after the commit (see ``operator``).
"""

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.clients import BdrEndpointClient
from ecr_pipelines.registry.matching import (
    auto_verify_all_ids,
    candidate_pool,
    companies_to_match,
    find_candidates,
    new_company_ids,
    noneu_auto_verify_ids,
    one_link_per_company,
)
from ecr_pipelines.registry.operator import SYSTEM_USER, OperatorError, Recipient, manual


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
    mails_queued: int = 0


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
               EXISTS (SELECT 1 FROM registry.undertaking u JOIN registry.old_company t ON t.id = u.oldcompany_id
                       WHERE t.external_id = o.external_id) AS taken
        FROM registry.old_company o ORDER BY o.id
        """
    )
    columns = ["id", "external_id", "name", "country_code", "eori", "valid", "obligation", "taken"]
    return pd.DataFrame([tuple(r) for r in rows], columns=columns)


def run_matching(
    sql: Sql,
    bdr: BdrEndpointClient,
    *,
    manual_domains: list[str],
    auto_all_domains: list[str],
    auto_new_domains: list[str],
    fuzz_limit: int,
    mail_to: Sequence[Recipient | str] = (),
) -> MatchReport:
    """The legacy run order: (1) non-EU F-gas companies without representative verified as new;
    (2) AUTO_VERIFY_ALL domains verified as new; (3) MANUAL_VERIFY domains matched against valid,
    untaken old companies of those obligations, links created unverified; (4) AUTO_VERIFY_NEW
    domains' companies with no candidate verified as new. Auto-verifications whose BDR call fails
    are skipped and reported (the run goes on); ``mail_to`` get one queued mail each per
    auto-verification."""
    report = MatchReport()
    unverified = _unverified(sql)
    verified_ids: set[int] = set()

    def auto_verify(ids: list[int], into: list[int]) -> None:
        for row in unverified[unverified["id"].isin(ids) & ~unverified["id"].isin(verified_ids)].itertuples():
            nested = sql.conn.begin_nested()  # a BDR refusal undoes this company only
            try:
                outcome = manual(sql, bdr, int(row.external_id), row.domain, None, SYSTEM_USER, mail_to)
                nested.commit()
                report.mails_queued += outcome.mails_queued
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
    found = find_candidates(companies, pool, fuzz_limit)
    existing = pd.DataFrame(
        [
            tuple(r)
            for r in sql.all(
                "SELECT l.undertaking_id, l.oldcompany_id, o.external_id FROM registry.old_company_link l "
                "JOIN registry.old_company o ON o.id = l.oldcompany_id"
            )
        ],
        columns=["undertaking_id", "oldcompany_id", "external_id"],
    )
    candidates = one_link_per_company(found, pool, companies, existing)
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
    # "Without candidates" is decided on what matched, before the one-link-per-company pruning.
    auto_verify(new_company_ids(companies, found, auto_new_domains), report.new_verified)
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
