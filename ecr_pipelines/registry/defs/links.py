"""Asset of the proposed links between undertakings and old companies (the matching), and its
checks (logic: ``ecr_pipelines.registry.links`` and ``ecr_pipelines.registry.matching``).

``undertaking_company_links`` runs by itself after every sync (declarative automation, eager on
its upstreams; the sensor is in ``jobs``) and on demand through ``registry_match_job``.
"""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.metadata import md_frame
from ecr_pipelines.registry.defs.old_companies import bdr_old_companies
from ecr_pipelines.registry.defs.resources import GROUP, RegistryResource
from ecr_pipelines.registry.defs.undertakings import fgas_undertakings, ods_undertakings
from ecr_pipelines.registry.links import review_queue, run_matching
from ecr_pipelines.registry.operator import MAIL_KEY_PREFIX, notification_addresses
from ecr_pipelines.resources import DatabaseResource, HttpResource, MailResource
from ecr_pipelines.stages import send_queued_mail

# Eager, except that a dependency never materialized does not hold the matching back: a
# deployment that syncs one registry only (or has no BDR registry) never materializes the others,
# and plain eager() would then never run the matching at all.
AFTER_ANY_SYNC = (
    dg.AutomationCondition.eager()
    .without(~dg.AutomationCondition.any_deps_missing())
    .with_label("eager, also when a domain is never synced")
)


class MatchConfig(dg.Config):
    review_rows: int = Field(
        default=50, description="How many proposed links the review queue in the metadata shows."
    )


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "python"},
    deps=[fgas_undertakings, ods_undertakings, bdr_old_companies],
    automation_condition=AFTER_ANY_SYNC,
    description=(
        "Proposed links between unverified undertakings and BDR old companies (registry.old_company_link), "
        "by the legacy rules: same normalised country and VAT = EORI or a fuzzy name ratio that rounds to "
        "FUZZ_LIMIT or more; plus the legacy auto-verifications (non-EU F-gas without representative, "
        "AUTO_VERIFY_ALL_COMPANIES, AUTO_VERIFY_NEW_COMPANIES without candidates), mailed to "
        "registry.mail_address after the commit. Links are created unverified, never duplicated, with "
        "their score and rule. The metadata is the review queue."
    ),
)
def undertaking_company_links(
    context: dg.AssetExecutionContext,
    config: MatchConfig,
    db: DatabaseResource,
    http: HttpResource,
    mail: MailResource,
    registry: RegistryResource,
) -> dg.MaterializeResult:
    started = time.perf_counter()
    bdr = registry.bdr_endpoint(http.session())
    mails_blocked = registry.matching_mails_blocked()
    if mails_blocked is not None and registry.send_matching_mails:
        context.log.warning(mails_blocked)
    with db.begin() as conn:
        sql = Sql(conn)
        report = run_matching(
            sql,
            bdr,
            manual_domains=registry.manual_verify_domains(),
            auto_all_domains=registry.auto_verify_all_domains(),
            auto_new_domains=registry.auto_verify_new_domains(),
            fuzz_limit=registry.fuzz_limit,
            mail_to=notification_addresses(sql) if mails_blocked is None else (),
        )
        queue = review_queue(sql, config.review_rows)
        pending = sql.scalar("SELECT count(*) FROM registry.undertaking WHERE NOT oldcompany_verified")
        total_links = sql.scalar("SELECT count(*) FROM registry.old_company_link")
    seconds = time.perf_counter() - started
    outbox = send_queued_mail(context.log, db, mail)  # after the commit: a mail failure undoes nothing
    context.log.info(
        f"{report.matched_companies} companies against {report.pool_size} old companies: "
        f"{len(report.candidates)} candidates, {report.links_created} new links in {seconds:.2f} s"
    )
    for external_id, reason in report.bdr_failures:
        context.log.warning(f"auto-verification of {external_id} skipped: {reason}")
    rules = report.candidates["rule"].value_counts().to_dict() if len(report.candidates) else {}
    return dg.MaterializeResult(
        metadata={
            "companies_matched": report.matched_companies,
            "candidate_pool": report.pool_size,
            "candidates": len(report.candidates),
            "links_created": report.links_created,
            "links_total": total_links,
            "by_vat_eori": int(rules.get("vat_eori", 0)),
            "by_name": int(rules.get("name", 0)),
            "verified_noneu_without_representative": len(report.noneu_verified),
            "verified_auto_all": len(report.auto_verified),
            "verified_new_without_candidates": len(report.new_verified),
            "unverified_remaining": pending,
            "mails_queued": report.mails_queued,
            "mails_sent": outbox.sent,
            "mails_failed": len(outbox.failed),
            "errors": len(report.bdr_failures),
            "seconds": round(seconds, 3),
            "dagster/row_count": total_links,
            "review_queue": md_frame(queue, config.review_rows),
            "bdr_failures": md_frame(pd.DataFrame(report.bdr_failures, columns=["external_id", "reason"])),
        }
    )


@dg.asset_check(
    asset=undertaking_company_links,
    description="No old company (BDR pk, under either obligation) is taken by two undertakings.",
)
def old_company_taken_once(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT o.external_id AS bdr_pk, count(*) AS undertakings FROM registry.undertaking u "
        "JOIN registry.old_company o ON o.id = u.oldcompany_id GROUP BY o.external_id HAVING count(*) > 1 "
        "ORDER BY 1",
    )


@dg.asset_check(
    asset=undertaking_company_links,
    description="No undertaking has two links to one old company (a BDR pk listed under both obligations).",
)
def one_link_per_old_company(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT l.undertaking_id, o.external_id AS bdr_pk, count(*) AS links FROM registry.old_company_link l "
        "JOIN registry.old_company o ON o.id = l.oldcompany_id GROUP BY l.undertaking_id, o.external_id "
        "HAVING count(*) > 1 ORDER BY 1, 2",
    )


@dg.asset_check(
    asset=undertaking_company_links,
    description="Every verified undertaking has a matching_log row recording who verified it.",
)
def verified_undertakings_are_logged(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        """
        SELECT u.domain, u.external_id FROM registry.undertaking u
        WHERE u.oldcompany_verified AND NOT EXISTS (
            SELECT 1 FROM registry.matching_log m
            WHERE m.company_id = u.external_id AND m.domain = u.domain AND m.verified)
        ORDER BY u.id
        """,
    )


@dg.asset_check(
    asset=undertaking_company_links,
    description=(
        "Every verification mail went out (warns: the mail server refused it; it stays queued in "
        "pipeline.mail_outbox and is sent again after a back-off by the next outbox sender)."
    ),
)
def verification_mails_sent(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT id, recipients, subject, attempts, error FROM pipeline.mail_outbox "
        "WHERE sent_at IS NULL AND error IS NOT NULL AND dedupe_key LIKE :prefix ORDER BY id",
        {"prefix": MAIL_KEY_PREFIX + "%"},
        severity=dg.AssetCheckSeverity.WARN,
    )


link_checks = [
    old_company_taken_once,
    one_link_per_old_company,
    verified_undertakings_are_logged,
    verification_mails_sent,
]
