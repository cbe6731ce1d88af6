"""Data-quality checks of the registry cache tables."""

import dagster as dg

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.registry.assets import bdr_collections, fgas_undertakings, ods_licences, ods_undertakings
from ecr_pipelines.resources import DatabaseResource


def _undertaking_country_check(asset: dg.AssetsDefinition, domain: str) -> dg.AssetChecksDefinition:
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


@dg.asset_check(
    asset=bdr_collections,
    description="No company that passed the checks is left with a BDR error (warns; retried next run).",
)
def bdr_collections_without_errors(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT domain, external_id, bdr_error FROM registry.undertaking WHERE bdr_error IS NOT NULL ORDER BY id",
        severity=dg.AssetCheckSeverity.WARN,
    )


@dg.asset_check(
    asset=ods_licences,
    description="Every aggregated substance sums exactly the licences pointing at it (ceil / 7 decimals).",
)
def licence_quantities_add_up(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        """
        SELECT s.id, s.substance, s.quantity, sum(l.net_mass) AS net_mass FROM registry.substance s
        JOIN registry.licence l ON l.substance_id = s.id
        WHERE NOT s.patched GROUP BY s.id
        HAVING s.quantity <> CASE WHEN s.lic_use_desc = 'laboratory uses'
                                  THEN round(sum(l.net_mass)::numeric, 7) ELSE ceil(sum(l.net_mass)) END
        """,
    )


registry_checks = [
    _undertaking_country_check(fgas_undertakings, "FGAS"),
    _undertaking_country_check(ods_undertakings, "ODS"),
    bdr_collections_without_errors,
    licence_quantities_add_up,
]
