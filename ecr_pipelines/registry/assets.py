"""Registry cache assets: reference tables, F-gas / ODS undertakings, BDR old companies,
BDR collections and ODS licences. Thin wrappers: the rules live in ``parse``, ``rules``,
``licences`` and ``store``; the upstream calls in ``clients``."""

import time
from collections.abc import Iterator
from datetime import date, datetime

import dagster as dg
import pandas as pd

from ecr_pipelines.metadata import md_frame
from ecr_pipelines.registry.clients import RegistryApiError, bdr_country
from ecr_pipelines.registry.licences import aggregate_licences
from ecr_pipelines.registry.reference import FGAS, ODS
from ecr_pipelines.registry.resources import RegistryResource
from ecr_pipelines.registry.rules import updated_since
from ecr_pipelines.registry.store import (
    SyncReport,
    UndertakingSync,
    last_date_updated,
    seed_reference_tables,
    store_licences,
    sync_old_companies,
)
from ecr_pipelines.resources import DatabaseResource, HttpResource
from ecr_pipelines.resources.sql import Sql

GROUP = "registry"


class UndertakingSyncConfig(dg.Config):
    """Run config of one domain's sync, as the legacy ``flask sync fgases|ods`` options."""

    sync: bool = True
    days: int | None = None
    updated_since: str | None = None
    page_size: int | None = 100
    external_id: int | None = None
    registration_id: str | None = None
    force: bool = False

    def window(self, last: date | None, today: date) -> date | None:
        explicit = None
        if self.updated_since:
            for fmt in ("%d/%m/%Y", "%Y-%m-%d"):
                try:
                    explicit = datetime.strptime(self.updated_since, fmt).date()
                    break
                except ValueError:
                    continue
            else:
                raise dg.Failure(f"updated_since {self.updated_since!r} is neither DD/MM/YYYY nor YYYY-MM-DD")
        return updated_since(self.days, explicit, last, today)


@dg.asset(
    group_name=GROUP,
    kinds={"postgres"},
    description=(
        "Reference tables of the registry cache, loaded from the bundled legacy fixtures: accepted "
        "undertaking types and business profiles, and the country / substance / detailed-use "
        "conversion tables the licence aggregation translates with."
    ),
)
def registry_reference_tables(db: DatabaseResource) -> dg.MaterializeResult:
    with db.begin() as conn:
        counts = seed_reference_tables(Sql(conn))
    return dg.MaterializeResult(metadata={"dagster/row_count": sum(counts.values()), **counts})


def _sync_metadata(report: SyncReport, window: date | None, seconds: float, stored: int) -> dict[str, object]:
    rejected = pd.DataFrame(report.rejected, columns=["external_id", "reason"])
    failed = pd.DataFrame(
        [(ext, name, "; ".join(why), stored) for ext, name, why, stored in report.failed_checks],
        columns=["external_id", "name", "failed checks", "stored"],
    )
    return {
        "updated_since": str(window) if window else "everything",
        "fetched": report.fetched,
        "inserted": report.inserted,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "failed_checks": len(report.failed_checks),
        "rejected": len(report.rejected),
        "errors": len(report.rejected),
        "contacts_added": report.contacts_added,
        "contacts_removed": report.contacts_removed,
        "unused_users_deleted": report.users_deleted,
        "statements": report.statements,
        "seconds": round(seconds, 2),
        "dagster/row_count": stored,
        "rejected_records": md_frame(rejected),
        "failed_check_records": md_frame(failed),
    }


def _sync_domain(
    context: dg.AssetExecutionContext,
    domain: str,
    config: UndertakingSyncConfig,
    db: DatabaseResource,
    http: HttpResource,
    registry: RegistryResource,
) -> Iterator[dg.MaterializeResult]:
    if not config.sync:
        context.log.info(f"{domain} left out of this run (config sync: false)")
        return
    started = time.perf_counter()
    client = registry.registry(http.session(), domain)
    single = config.external_id is not None or bool(config.registration_id)
    with db.begin() as conn:
        sql = Sql(conn)
        window = None if single else config.window(last_date_updated(sql, domain), date.today())
        context.log.info(f"{domain}: fetching undertakings updated since {window or 'the beginning'}")

        def records() -> Iterator[dict]:
            for number, page in enumerate(
                client.undertakings(window, config.page_size, config.external_id, config.registration_id),
                start=1,
            ):
                context.log.info(f"{domain}: page {number}, {len(page)} records")
                yield from page

        try:
            sync = UndertakingSync(
                sql,
                domain,
                patches=registry.patches(),
                excepted=registry.excepted_ids(),
                run_id=context.run.run_id,
                force=config.force,
            )
            report = sync.run(records())
        except RegistryApiError as exc:
            # The HTTP client already retried transient failures; what is left needs a person.
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        if not single:
            sql.exec(
                "INSERT INTO registry.organization_log (domain, using_last_update, organizations, fetched, inserted, "
                "updated, rejected, failed_checks, run_id) VALUES (:d, :w, :n, :f, :i, :u, :r, :c, :run)",
                {
                    "d": domain,
                    "w": window,
                    "n": report.stored,
                    "f": report.fetched,
                    "i": report.inserted,
                    "u": report.updated,
                    "r": len(report.rejected),
                    "c": len(report.failed_checks),
                    "run": context.run.run_id,
                },
            )
        stored = sql.scalar("SELECT count(*) FROM registry.undertaking WHERE domain = :d", {"d": domain})
    seconds = time.perf_counter() - started
    context.log.info(
        f"{domain}: {report.fetched} fetched, {report.inserted} new, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.rejected)} rejected in {seconds:.1f} s"
    )
    for external_id, reason in report.rejected:
        context.log.warning(f"{domain} record {external_id} rejected: {reason}")
    yield dg.MaterializeResult(metadata=_sync_metadata(report, window, seconds, stored))


_SYNC_DESCRIPTION = (
    "{name} undertakings from the EU {name} registry into registry.undertaking and its related tables "
    "(address, country, represent and its history, contact users, types, business profiles), with "
    "the EEA double checks into check_passed. Incremental: since the newest date_updated stored minus "
    "one day, unless run config gives days or updated_since. A malformed record is rejected alone "
    "(registry.sync_rejection); unchanged records are skipped."
)


# Upstream calls already retry at the HTTP level; this covers what breaks around them (a dropped
# database connection, a worker restart) and leaves a clear failure after the third try.
UPSTREAM_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL)


def _undertakings_asset(domain: str, label: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{domain.lower()}_undertakings",
        group_name=GROUP,
        kinds={"postgres", "api"},
        deps=[registry_reference_tables],
        output_required=False,  # `sync: false` leaves the domain out of a run
        description=_SYNC_DESCRIPTION.format(name=label),
        retry_policy=UPSTREAM_RETRY,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: UndertakingSyncConfig,
        db: DatabaseResource,
        http: HttpResource,
        registry: RegistryResource,
    ) -> Iterator[dg.MaterializeResult]:
        yield from _sync_domain(context, domain, config, db, http, registry)

    return _asset


fgas_undertakings = _undertakings_asset(FGAS, "F-gas")
ods_undertakings = _undertakings_asset(ODS, "ODS")


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "api"},
    description=(
        "Old companies from the legacy BDR registry, one list per obligation in "
        "MANUAL_VERIFY_ALL_COMPANIES, upserted into registry.old_company by (BDR id, obligation). The "
        "operator's valid flag is kept. These are the candidates the matching proposes."
    ),
    retry_policy=UPSTREAM_RETRY,
)
def bdr_old_companies(
    context: dg.AssetExecutionContext, db: DatabaseResource, http: HttpResource, registry: RegistryResource
) -> dg.MaterializeResult:
    client = registry.bdr_registry(http.session())
    rows = []
    with db.begin() as conn:
        sql = Sql(conn)
        for domain in registry.manual_verify_domains():
            try:
                raws = client.old_companies(domain)
            except RegistryApiError as exc:
                raise dg.Failure(description=str(exc), allow_retries=False) from exc
            report = sync_old_companies(sql, domain, raws)
            context.log.info(f"{domain}: {report.fetched} old companies, {report.upserted} upserted")
            rows.append((domain, report.fetched, report.upserted, len(report.rejected)))
            for pk, reason in report.rejected:
                context.log.warning(f"old company {pk} ({domain}) rejected: {reason}")
    frame = pd.DataFrame(rows, columns=["obligation", "fetched", "upserted", "rejected"])
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": int(frame["upserted"].sum()) if not frame.empty else 0,
            "rejected": int(frame["rejected"].sum()) if not frame.empty else 0,
            "errors": int(frame["rejected"].sum()) if not frame.empty else 0,
            "per_obligation": md_frame(frame),
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "api"},
    deps=[fgas_undertakings, ods_undertakings],
    pool="bdr",
    description=(
        "BDR collections of the undertakings: for every company that passed the checks and is due "
        "(new, or its representative changed) and whose BDR folder is missing, create the collection "
        "or bind the old one; then rename collections whose title differs from the company name. "
        "Failures are kept per company in registry.undertaking.bdr_error and retried next run."
    ),
)
def bdr_collections(
    context: dg.AssetExecutionContext, db: DatabaseResource, http: HttpResource, registry: RegistryResource
) -> dg.MaterializeResult:
    bdr = registry.bdr_endpoint(http.session())
    created, existing, failed, renamed = [], 0, [], []
    with db.begin() as conn:
        sql = Sql(conn)
        due = sql.all(
            """
            SELECT u.id, u.external_id, u.domain, u.name, u.country_code, u.oldcompany_account,
                   u.represent_id IS NULL AND c.type = 'NONEU_TYPE' AS non_eu
            FROM registry.undertaking u
            LEFT JOIN registry.address a ON a.id = u.address_id
            LEFT JOIN registry.country c ON c.id = a.country_id
            WHERE u.bdr_due AND u.check_passed ORDER BY u.id
            """
        )
        context.log.info(f"{len(due)} undertakings due for a BDR collection check")
        for row in due:
            folder = row.oldcompany_account or str(row.external_id)
            exists = bdr.folder_exists(row.domain, row.country_code, folder)
            if exists:
                existing += 1
                outcome_ok, message = True, "folder exists"
            elif exists is None:
                outcome_ok, message = False, "BDR could not tell whether the folder exists"
            else:
                country = "NON_EU" if row.non_eu else row.country_code
                result = bdr.update_company_collection(
                    row.external_id, row.domain, country, row.name, row.oldcompany_account
                )
                outcome_ok, message = result.ok, result.message
                if result.ok:
                    created.append((row.external_id, row.domain, row.name))
            if not outcome_ok:
                failed.append((row.external_id, row.domain, message))
            sql.exec(
                "UPDATE registry.undertaking SET bdr_due = NOT :ok, bdr_error = :err, "
                "bdr_synced_at = CASE WHEN :ok THEN now() ELSE bdr_synced_at END WHERE id = :id",
                {"ok": outcome_ok, "err": None if outcome_ok else message, "id": row.id},
            )
        if bdr.enabled:
            titles: dict[str, str] = {}
            for item in bdr.collections():
                titles.setdefault(str(item.get("company_id")), str(item.get("title") or ""))
            companies = sql.all(
                "SELECT external_id, domain, name, country_code, oldcompany_account FROM registry.undertaking"
            )
            for u in companies:
                title = titles.get(str(u.external_id))
                if title is None or title == u.name:
                    continue
                if not u.country_code:
                    context.log.warning(
                        f"{u.domain} {u.external_id}: no country code, collection not renamed"
                    )
                    continue
                result = bdr.rename_collection(
                    u.country_code, u.domain, u.external_id, u.name, u.oldcompany_account
                )
                renamed.append((u.external_id, bdr_country(u.country_code), title, u.name, result.ok))
    for ext, domain, message in failed:
        context.log.warning(f"BDR collection of {domain} {ext} failed: {message}")
    return dg.MaterializeResult(
        metadata={
            "due": len(due),
            "created_or_bound": len(created),
            "folder_existed": existing,
            "failed": len(failed),
            "errors": len(failed),
            "renamed": sum(1 for r in renamed if r[-1]),
            "dagster/row_count": len(created),
            "failures": md_frame(pd.DataFrame(failed, columns=["external_id", "domain", "reason"])),
            "renames": md_frame(
                pd.DataFrame(renamed, columns=["external_id", "country", "old", "new", "ok"])
            ),
        }
    )


class LicenceConfig(dg.Config):
    """Run config of the licence sync (legacy ``flask sync licences -y YEAR -p 200``)."""

    year: int | None = None
    page_size: int = 200


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "api"},
    deps=[ods_undertakings, registry_reference_tables],
    description=(
        "ODS single-year licences of one year (default: the current one): raw rows into "
        "registry.licence and their aggregation into registry.substance per company delivery, with "
        "the conversion tables (quantity: ceil, or 7 decimals for laboratory uses). Rows that cannot "
        "be translated are reported in registry.licence_rejection and in the metadata."
    ),
    retry_policy=UPSTREAM_RETRY,
)
def ods_licences(
    context: dg.AssetExecutionContext,
    config: LicenceConfig,
    db: DatabaseResource,
    http: HttpResource,
    registry: RegistryResource,
) -> dg.MaterializeResult:
    year = config.year or date.today().year
    client = registry.registry(http.session(), ODS)
    try:
        rows = [row for page in client.licences(year, config.page_size) for row in page]
    except RegistryApiError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    context.log.info(f"{year}: {len(rows)} licence rows fetched")
    with db.begin() as conn:
        sql = Sql(conn)
        known = [r[0] for r in sql.all("SELECT external_id FROM registry.undertaking WHERE domain = 'ODS'")]
        aggregation = aggregate_licences(rows, year, known_organization_ids=known)
        report = store_licences(sql, aggregation, registry.patches().licences, context.run.run_id)
        stored = sql.scalar("SELECT count(*) FROM registry.licence WHERE year = :y", {"y": year})
    if report.unknown_organizations:
        context.log.warning(
            f"licences of unknown ODS companies skipped: {sorted(set(report.unknown_organizations))}"
        )
    untranslated = pd.DataFrame(report.untranslated, columns=["organization_id", "licence_id", "reason"])
    return dg.MaterializeResult(
        metadata={
            "year": year,
            "fetched": len(rows),
            "companies": report.companies,
            "deliveries_rebuilt": report.rebuilt,
            "substances": report.substances,
            "licences": report.licences,
            "patched_entries": report.patched,
            "untranslatable": len(report.untranslated),
            "errors": len(report.untranslated) + len(aggregation.rejected),
            "unknown_companies": len(set(report.unknown_organizations)),
            "dagster/row_count": stored,
            "untranslatable_rows": md_frame(untranslated),
        }
    )
