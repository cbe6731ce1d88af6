"""Matching of undertakings to BDR old companies, and the operator's jobs around it.

``undertaking_company_links`` runs after every sync (declarative automation: eager on its
upstreams) and on demand through ``registry_match_job``. The operator jobs take run config
(Launchpad or ``dagster job execute -c``) and write a ``matching_log`` row with the operator name.
"""

import time
from collections.abc import Callable

import dagster as dg
import pandas as pd

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.metadata import md_frame
from ecr_pipelines.registry import operations
from ecr_pipelines.registry.assets import (
    GROUP,
    bdr_old_companies,
    fgas_undertakings,
    ods_undertakings,
)
from ecr_pipelines.registry.operations import OperatorError
from ecr_pipelines.registry.resources import RegistryResource
from ecr_pipelines.resources import DatabaseResource, HttpResource, MailResource
from ecr_pipelines.resources.sql import Sql

SERVICE_TAG = {"ecr/service": "registry"}


def notifier(sql: Sql, mail: MailResource, registry: RegistryResource) -> operations.Notify | None:
    """One mail per address of ``registry.mail_address`` (as the legacy service sent them)."""
    if not registry.send_matching_mails:
        return None
    addresses = [r.mail for r in sql.all("SELECT mail FROM registry.mail_address ORDER BY id")]

    def notify(subject: str, text: str) -> None:
        for address in addresses:
            mail.send([address], subject, text)

    return notify if addresses else None


class MatchConfig(dg.Config):
    review_rows: int = 50


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "python"},
    deps=[fgas_undertakings, ods_undertakings, bdr_old_companies],
    automation_condition=dg.AutomationCondition.eager(),
    description=(
        "Proposed links between unverified undertakings and BDR old companies (registry.old_company_link), "
        "by the legacy rules: same normalised country and VAT = EORI or a fuzzy name ratio that rounds to "
        "FUZZ_LIMIT or more; plus the legacy auto-verifications (non-EU F-gas without representative, "
        "AUTO_VERIFY_ALL_COMPANIES, AUTO_VERIFY_NEW_COMPANIES without candidates). Links are created "
        "unverified, never duplicated, with their score and rule. The metadata is the review queue."
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
    with db.begin() as conn:
        sql = Sql(conn)
        report = operations.run_matching(
            sql,
            bdr,
            manual_domains=registry.manual_verify_domains(),
            auto_all_domains=registry.auto_verify_all_domains(),
            auto_new_domains=registry.auto_verify_new_domains(),
            fuzz_limit=registry.fuzz_limit,
            notify=notifier(sql, mail, registry),
        )
        queue = operations.review_queue(sql, config.review_rows)
        pending = sql.scalar("SELECT count(*) FROM registry.undertaking WHERE NOT oldcompany_verified")
        total_links = sql.scalar("SELECT count(*) FROM registry.old_company_link")
    seconds = time.perf_counter() - started
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
            "errors": len(report.bdr_failures),
            "seconds": round(seconds, 3),
            "dagster/row_count": total_links,
            "review_queue": md_frame(queue, config.review_rows),
            "bdr_failures": md_frame(pd.DataFrame(report.bdr_failures, columns=["external_id", "reason"])),
        }
    )


@dg.asset_check(asset=undertaking_company_links, description="No old company is taken by two undertakings.")
def old_company_taken_once(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT oldcompany_id, count(*) AS undertakings FROM registry.undertaking WHERE oldcompany_id IS NOT NULL "
        "GROUP BY oldcompany_id HAVING count(*) > 1",
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


registry_match_job = dg.define_asset_job(
    "registry_match_job",
    selection=dg.AssetSelection.assets(undertaking_company_links),
    description="Run the matching now (it also runs by itself after every sync).",
    tags=SERVICE_TAG,
)

registry_automation_sensor = dg.AutomationConditionSensorDefinition(
    "registry_automation_sensor",
    target=dg.AssetSelection.assets(undertaking_company_links),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs the matching after each undertaking or old-company sync.",
)


# -- operator jobs --------------------------------------------------------------------------------


class VerifyConfig(dg.Config):
    undertaking: int
    old_company: int
    user: str
    domain: str | None = None


class UndertakingConfig(dg.Config):
    undertaking: int
    domain: str
    user: str


class ManualConfig(dg.Config):
    undertaking: int
    domain: str
    collection_account: str
    user: str


class FlushConfig(dg.Config):
    user: str


def _operate(context: dg.OpExecutionContext, db: DatabaseResource, action: Callable[[Sql], None]) -> None:
    try:
        with db.begin() as conn:  # one transaction: a BDR refusal or unknown id changes nothing
            action(Sql(conn))
    except OperatorError as exc:
        raise dg.Failure(description=str(exc)) from exc
    context.log.info("done")


def _verifying_op(
    name: str, description: str, config_type: type[dg.Config], action: Callable[..., None]
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
        _operate(context, db, lambda sql: action(sql, bdr, config, notifier(sql, mail, registry)))

    return _op


verify_link = _verifying_op(
    "verify_link",
    "Verify the proposed link between an undertaking and an old company.",
    VerifyConfig,
    lambda sql, bdr, c, notify: operations.verify(
        sql, bdr, c.undertaking, c.old_company, c.user, c.domain, notify
    ),
)
verify_none = _verifying_op(
    "verify_none",
    "Verify an undertaking as a new company (no old company).",
    UndertakingConfig,
    lambda sql, bdr, c, notify: operations.verify_none(sql, bdr, c.undertaking, c.domain, c.user, notify),
)
manual_link = _verifying_op(
    "manual_link",
    "Verify an undertaking with a BDR collection chosen by the operator.",
    ManualConfig,
    lambda sql, bdr, c, notify: operations.manual(
        sql, bdr, c.undertaking, c.domain, c.collection_account, c.user, notify
    ),
)


@dg.op(description="Undo the verification of an undertaking (its link is reset too).")
def unverify(context: dg.OpExecutionContext, config: UndertakingConfig, db: DatabaseResource) -> None:
    _operate(
        context, db, lambda sql: operations.unverify(sql, config.undertaking, config.domain, config.user)
    )


@dg.op(description="Delete every proposed link (verified or not); undertakings keep their fields.")
def flush_links(context: dg.OpExecutionContext, config: FlushConfig, db: DatabaseResource) -> None:
    with db.begin() as conn:
        deleted = operations.flush(Sql(conn), config.user)
    context.log.info(f"{config.user} flushed {deleted} links")


def _operator_job(name: str, op: dg.OpDefinition, description: str) -> dg.JobDefinition:
    @dg.job(name=name, description=description, tags=SERVICE_TAG)
    def _job() -> None:
        op()

    return _job


registry_verify_job = _operator_job(
    "registry_verify_job",
    verify_link,
    "Verify a link. Config: undertaking, old_company, user (domain if ambiguous).",
)
registry_verify_none_job = _operator_job(
    "registry_verify_none_job",
    verify_none,
    "Verify an undertaking as new. Config: undertaking, domain, user.",
)
registry_manual_link_job = _operator_job(
    "registry_manual_link_job",
    manual_link,
    "Verify with a chosen collection. Config: undertaking, domain, collection_account, user.",
)
registry_unverify_job = _operator_job(
    "registry_unverify_job", unverify, "Undo a verification. Config: undertaking, domain, user."
)
registry_flush_job = _operator_job(
    "registry_flush_job", flush_links, "Delete every proposed link. Config: user."
)

linking_defs = dg.Definitions(
    assets=[undertaking_company_links],
    asset_checks=[old_company_taken_once, verified_undertakings_are_logged],
    jobs=[
        registry_match_job,
        registry_verify_job,
        registry_verify_none_job,
        registry_manual_link_job,
        registry_unverify_job,
        registry_flush_job,
    ],
    sensors=[registry_automation_sensor],
)
