"""Data-quality checks of the registry cache tables."""

import dagster as dg

from ecr_pipelines.registry.assets import bdr_collections, fgas_undertakings, ods_licences, ods_undertakings
from ecr_pipelines.resources import DatabaseResource


def _undertaking_country_check(domain: str) -> dg.AssetChecksDefinition:
    asset = fgas_undertakings if domain == "FGAS" else ods_undertakings

    @dg.asset_check(
        asset=asset,
        name=f"{domain.lower()}_passed_companies_have_a_country",
        description=(
            f"Every {domain} undertaking that passed the checks has a derived country code (BDR folders "
            "are filed by it)."
        ),
    )
    def check(db: DatabaseResource) -> dg.AssetCheckResult:
        with db.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT external_id FROM registry.undertaking WHERE domain = %(d)s AND check_passed "
                "AND coalesce(country_code, '') = '' ORDER BY external_id LIMIT 50",
                {"d": domain},
            ).all()
        return dg.AssetCheckResult(
            passed=not rows, metadata={"without_country": ", ".join(str(r[0]) for r in rows) or "none"}
        )

    return check


@dg.asset_check(
    asset=bdr_collections,
    description="No company that passed the checks is left with a BDR error (warns; retried next run).",
)
def bdr_collections_without_errors(db: DatabaseResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT domain, external_id, bdr_error FROM registry.undertaking WHERE bdr_error IS NOT NULL "
            "ORDER BY id LIMIT 20"
        ).all()
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"errors": "\n".join(f"{d} {e}: {m}" for d, e, m in rows) or "none"},
    )


@dg.asset_check(
    asset=ods_licences,
    description="Every aggregated substance sums exactly the licences pointing at it (ceil / 7 decimals).",
)
def licence_quantities_add_up(db: DatabaseResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        rows = conn.exec_driver_sql(
            """
            SELECT s.id, s.quantity, sum(l.net_mass) AS total, s.lic_use_desc FROM registry.substance s
            JOIN registry.licence l ON l.substance_id = s.id
            WHERE NOT s.patched GROUP BY s.id
            HAVING s.quantity <> CASE WHEN s.lic_use_desc = 'laboratory uses'
                                      THEN round(sum(l.net_mass)::numeric, 7) ELSE ceil(sum(l.net_mass)) END
            LIMIT 20
            """
        ).all()
    return dg.AssetCheckResult(passed=not rows, metadata={"mismatches": len(rows)})


registry_checks = [
    _undertaking_country_check("FGAS"),
    _undertaking_country_check("ODS"),
    bdr_collections_without_errors,
    licence_quantities_add_up,
]
