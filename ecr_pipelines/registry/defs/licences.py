"""Asset of the ODS single-year licences, and its check (logic:
``ecr_pipelines.registry.store.licences`` and ``ecr_pipelines.registry.licences``)."""

from datetime import date

import dagster as dg
import pandas as pd
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.metadata import md_frame
from ecr_pipelines.registry.clients import RegistryApiError
from ecr_pipelines.registry.defs.reference import registry_reference_tables
from ecr_pipelines.registry.defs.resources import GROUP, UPSTREAM_RETRY, RegistryResource
from ecr_pipelines.registry.defs.undertakings import ods_undertakings
from ecr_pipelines.registry.reference import ODS
from ecr_pipelines.registry.store.licences import fetch_licences, sync_licences
from ecr_pipelines.resources import DatabaseResource, HttpResource


class LicenceConfig(dg.Config):
    """Run config of the licence sync (legacy ``flask sync licences -y YEAR -p 200``)."""

    year: int | None = Field(default=None, description="Licence year to sync (default: the current year).")
    page_size: int = Field(default=200, description="Licence rows per registry page.")


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "api"},
    deps=[ods_undertakings, registry_reference_tables],
    description=(
        "ODS single-year licences of one year (default: the current one): raw rows into "
        "registry.licence and their aggregation into registry.substance per company delivery, with "
        "the conversion tables (quantity: the legacy's plain sum at real precision, ceil, or 7 "
        "decimals for laboratory uses). Every run also rewrites the PATCH_LICENCES rows (all years). "
        "Rows that cannot be translated are reported in registry.licence_rejection and in the metadata."
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
    try:
        rows = fetch_licences(registry.registry(http.session(), ODS), year, config.page_size)
    except RegistryApiError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    context.log.info(f"{year}: {len(rows)} licence rows fetched")
    with db.begin() as conn:
        result = sync_licences(Sql(conn), rows, year, registry.patches().licences, context.run.run_id)
    report = result.report
    if report.unknown_organizations:
        context.log.warning(
            f"licences of unknown ODS companies skipped: {sorted(set(report.unknown_organizations))}"
        )
    for company, year_, why in report.unusable_patches:
        context.log.warning(f"PATCH_LICENCES entry for company {company}, year {year_} not stored: {why}")
    untranslated = pd.DataFrame(report.untranslated, columns=["organization_id", "licence_id", "reason"])
    return dg.MaterializeResult(
        metadata={
            "year": year,
            "fetched": result.fetched,
            "companies": report.companies,
            "deliveries_rebuilt": report.rebuilt,
            "substances": report.substances,
            "licences": report.licences,
            "patched_entries": report.patched,
            "unusable_patch_entries": len(report.unusable_patches),
            "untranslatable": len(report.untranslated),
            "errors": len(report.untranslated) + result.rejected_rows,
            "unknown_companies": len(set(report.unknown_organizations)),
            "dagster/row_count": result.stored,
            "untranslatable_rows": md_frame(untranslated),
        }
    )


# The columns are `real` (the legacy's) and the stage sums in row order like the legacy, so an
# exact SQL re-sum could differ in the last bit (3.0000000000000004 ceils to 4, 3.0 to 3): the
# check allows that much and still catches a wrong or stale aggregate. `real::text` is the value
# the stage summed (the shortest decimal of the single, as the driver reads it).
QUANTITY_MISMATCHES = """
SELECT id, substance, quantity, net_mass FROM (
    SELECT s.id, s.substance, s.lic_use_desc, s.quantity::text::float8 AS quantity,
           sum(l.net_mass::text::float8) AS net_mass
    FROM registry.substance s JOIN registry.licence l ON l.substance_id = s.id
    WHERE NOT s.patched GROUP BY s.id) t
WHERE CASE WHEN lic_use_desc = 'laboratory uses'
           THEN abs(quantity - net_mass) > 1e-6 * greatest(1, abs(net_mass))
           ELSE quantity <> trunc(quantity) OR quantity < net_mass - 1e-6 OR quantity >= net_mass + 1 + 1e-6 END
ORDER BY id
"""


@dg.asset_check(
    asset=ods_licences,
    description=(
        "Every aggregated substance is the sum of the licences pointing at it (ceil, or 7 decimals "
        "for laboratory uses), within real precision."
    ),
)
def licence_quantities_add_up(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(db, QUANTITY_MISMATCHES)
