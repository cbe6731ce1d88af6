"""Assets of the F-gas and ODS undertakings, and their checks (logic:
``ecr_pipelines.registry.store.undertakings``)."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.metadata import md_frame
from ecr_pipelines.registry.clients import RegistryApiError
from ecr_pipelines.registry.defs.reference import registry_reference_tables
from ecr_pipelines.registry.defs.resources import GROUP, UPSTREAM_RETRY, RegistryResource
from ecr_pipelines.registry.reference import FGAS, ODS
from ecr_pipelines.registry.store.undertakings import DomainSync, SyncRequest, parse_window_date, sync_domain
from ecr_pipelines.resources import DatabaseResource, HttpResource


class UndertakingSyncConfig(dg.Config):
    """Run config of one domain's sync, as the legacy ``flask sync fgases|ods`` options. The
    defaults are the incremental sync the schedule and the poll sensor run."""

    sync: bool = Field(
        default=True,
        description="false leaves this domain out of the run (the BDR collections step still runs).",
    )
    days: int | None = Field(
        default=None,
        description="Fetch what changed in the last N days (N > 0). Default: since the newest date_updated "
        "stored for the domain minus one day (everything when the table is empty).",
    )
    updated_since: str | None = Field(
        default=None,
        description="Fetch what changed since this date (DD/MM/YYYY or YYYY-MM-DD); wins over days.",
    )
    page_size: int | None = Field(
        default=100, description="Records per registry page (null: one unpaged request for F-gas)."
    )
    external_id: int | None = Field(
        default=None, description="Fetch this one company by its registry id (no window, no sync log row)."
    )
    registration_id: str | None = Field(
        default=None, description="Fetch this one company by its registration number (registrationNumId)."
    )
    force: bool = Field(
        default=False, description="Rewrite records even when their content is unchanged since the last sync."
    )

    def request(self) -> SyncRequest:
        try:
            since = parse_window_date(self.updated_since) if self.updated_since else None
        except ValueError as exc:
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        return SyncRequest(
            days=self.days,
            updated_since=since,
            page_size=self.page_size,
            external_id=self.external_id,
            registration_id=self.registration_id,
            force=self.force,
        )


def _sync_metadata(result: DomainSync) -> dict[str, object]:
    report = result.report
    rejected = pd.DataFrame(report.rejected, columns=["external_id", "reason"])
    failed = pd.DataFrame(
        [(ext, name, "; ".join(why), stored) for ext, name, why, stored in report.failed_checks],
        columns=["external_id", "name", "failed checks", "stored"],
    )
    # A field the registry added is ignored (as the legacy's store ignored it) but shown here, so
    # that someone decides whether the cache should keep it.
    unknown = pd.DataFrame(
        [
            (path, len(ids), ", ".join(dict.fromkeys(ids[:5])))
            for path, ids in sorted(report.unknown_fields.items())
        ],
        columns=["field", "records", "e.g. external ids"],
    )
    return {
        "updated_since": str(result.window) if result.window else "everything",
        "fetched": report.fetched,
        "inserted": report.inserted,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "organizations": report.counted,
        "failed_checks": len(report.failed_checks),
        "rejected": len(report.rejected),
        "errors": len(report.rejected),
        "contacts_added": report.contacts_added,
        "contacts_removed": report.contacts_removed,
        "users_renamed": report.users_renamed,
        "unknown_fields": len(report.unknown_fields),
        "unused_users_deleted": report.users_deleted,
        "statements": report.statements,
        "seconds": round(result.seconds, 2),
        "dagster/row_count": result.stored,
        "rejected_records": md_frame(rejected),
        "failed_check_records": md_frame(failed),
        "unknown_field_records": md_frame(unknown),
    }


_DESCRIPTION = (
    "{name} undertakings from the EU {name} registry into registry.undertaking and its related tables "
    "(address, country, represent and its history, contact users, types, business profiles), with "
    "the EEA double checks into check_passed. Incremental: since the newest date_updated stored minus "
    "one day, unless run config gives days or updated_since. A malformed record is rejected alone "
    "(registry.sync_rejection); fields nobody reads are ignored and listed in the metadata; unchanged "
    "records skip the writes but have their checks re-run and, passing, their BDR folder checked."
)


def _undertakings_asset(domain: str, label: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"{domain.lower()}_undertakings",
        group_name=GROUP,
        kinds={"postgres", "api"},
        deps=[registry_reference_tables],
        # One sync at a time, whichever run asks (poll, schedule, bootstrap): two set-based
        # upserts of the same undertakings would only wait on each other's row locks.
        pool="registry_sync",
        # `sync: false` yields nothing: the asset is not materialized by such a run (the BDR
        # collections step fans in from both domains, so it still runs; see defs/collections.py).
        output_required=False,
        description=_DESCRIPTION.format(name=label),
        retry_policy=UPSTREAM_RETRY,
    )
    def _asset(
        context: dg.AssetExecutionContext,
        config: UndertakingSyncConfig,
        db: DatabaseResource,
        http: HttpResource,
        registry: RegistryResource,
    ) -> Iterator[dg.MaterializeResult]:
        if not config.sync:
            context.log.info(f"{domain} left out of this run (config sync: false)")
            return
        request = config.request()
        try:
            client = registry.registry(http.session(), domain)
            with db.begin() as conn:
                result = sync_domain(
                    Sql(conn),
                    client,
                    request,
                    patches=registry.patches(),
                    excepted=registry.excepted_ids(),
                    run_id=context.run.run_id,
                    progress=context.log.info,
                )
        except RegistryApiError as exc:
            # The HTTP client already retried transient failures; what is left needs a person.
            raise dg.Failure(description=str(exc), allow_retries=False) from exc
        report = result.report
        context.log.info(
            f"{domain}: {report.fetched} fetched, {report.inserted} new, {report.updated} updated, "
            f"{report.unchanged} unchanged, {len(report.rejected)} rejected in {result.seconds:.1f} s"
        )
        for external_id, reason in report.rejected:
            context.log.warning(f"{domain} record {external_id} rejected: {reason}")
        for path, ids in sorted(report.unknown_fields.items()):
            context.log.warning(f"{domain}: field {path!r} is not read (ignored) in {len(ids)} records")
        yield dg.MaterializeResult(metadata=_sync_metadata(result))

    return _asset


fgas_undertakings = _undertakings_asset(FGAS, "F-gas")
ods_undertakings = _undertakings_asset(ODS, "ODS")


def _country_check(asset: dg.AssetsDefinition, domain: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name=f"{domain.lower()}_passed_companies_have_a_country",
        description=(
            f"Every {domain} undertaking that passed the checks has a derived country code (BDR folders "
            "are filed by it)."
        ),
    )
    def check(db: DatabaseResource) -> dg.AssetCheckResult:
        return offending_rows_check(
            db,
            "SELECT external_id, name FROM registry.undertaking WHERE domain = :d AND check_passed "
            "AND coalesce(country_code, '') = '' ORDER BY external_id",
            {"d": domain},
        )

    return check


undertaking_checks = [_country_check(fgas_undertakings, FGAS), _country_check(ods_undertakings, ODS)]
