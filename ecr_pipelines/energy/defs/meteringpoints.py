"""``energy/meteringpoints``: the due customers' metering points imported from ElOverblik
(``ecr_pipelines.energy.stages.meteringpoints``); with run config ``sub``, that customer is
onboarded first (``energy_onboard_job``)."""

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.energy.defs.resources import NOT_CONFIGURED, EnergyResource
from ecr_pipelines.energy.defs.technology import GROUP
from ecr_pipelines.energy.defs.webhooks import send_webhooks
from ecr_pipelines.energy.stages.meteringpoints import import_due, onboard
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import DatabaseResource, HttpResource
from ecr_pipelines.stages import BatchConfig, log_stage, stage_metadata


class MeteringpointsConfig(BatchConfig):
    """Run config of the metering-point import (ops.energy__meteringpoints.config)."""

    sub: str | None = Field(
        default=None,
        description=(
            "Onboard this customer first (its ElOverblik customerKey): its points are imported now and "
            "again 10 min, 30 min, 1 h, 2 h and 6 h later."
        ),
    )
    batch_size: int = Field(default=10, description="Customers per batch: one claim, one commit.")


@dg.asset(
    key=["energy", "meteringpoints"],
    group_name=GROUP,
    kinds={"postgres"},
    description=(
        "Metering points of the customers in energy.customer, imported from ElOverblik (customerKey = sub) "
        "when onboarded and again 10 min, 30 min, 1 h, 2 h and 6 h later (the legacy's fallback imports). "
        "E18 → PRODUCTION, E17 → CONSUMPTION, other types refused with their reason; DK2 below postcode "
        "5000, else DK1; child points and GSRNs already known skipped. Production points get technology and "
        "fuel codes from the EnergyTypeService. ON_METERINGPOINT_AVAILABLE is sent after the commit for "
        "every point that became available (a production point only with its codes)."
    ),
)
def energy_meteringpoints(
    context: dg.AssetExecutionContext,
    config: MeteringpointsConfig,
    db: DatabaseResource,
    http: HttpResource,
    energy: EnergyResource,
) -> dg.MaterializeResult:
    if config.sub:
        with db.engine.begin() as conn:
            onboard(conn, config.sub)
        context.log.info(f"customer {config.sub} onboarded: its points are imported now and by the fallbacks")
    session = http.session()
    hooks = http.session(retries=0)  # a webhook POST is never repeated behind our back
    client = energy.eloverblik(session)
    extra: dict[str, object] = {}
    if client is None:
        context.log.warning(f"{NOT_CONFIGURED}: no import")
        extra["skipped"] = NOT_CONFIGURED
    else:
        report = import_due(
            db.engine,
            client,
            energy.energy_types(session),
            run_id=context.run.run_id,
            limit=config.limit,
            batch_size=config.batch_size,
            progress=context.log.info,
            committed=lambda _outcomes: send_webhooks(context.log, db, hooks),
        )
        log_stage(context.log, report)
    # Anything queued earlier and still due (queued outside a run, or left by a run that died).
    send_webhooks(context.log, db, hooks)
    with db.connect() as conn:
        total, production, uncoded, customers = conn.execute(
            sa.text(
                "SELECT count(*), count(*) FILTER (WHERE type = 'PRODUCTION'), "
                "count(*) FILTER (WHERE type = 'PRODUCTION' AND technology_code IS NULL), "
                "(SELECT count(*) FROM energy.customer) FROM energy.meteringpoint WHERE NOT disabled"
            )
        ).one()
        newest = conn.exec_driver_sql(
            "SELECT gsrn, sub, type::text, sector, coalesce(technology_code, ''), coalesce(fuel_code, ''), "
            "coalesce(city_name, '') FROM energy.meteringpoint ORDER BY id DESC LIMIT 10"
        ).all()
    metadata = {
        "meteringpoints_active": total,
        "production": production,
        "production_without_codes": uncoded,
        "customers": customers,
        "newest_meteringpoints": md_table(
            ["gsrn", "sub", "type", "sector", "technology", "fuel", "city"], newest
        ),
        **extra,
    }
    if client is None:
        metadata["dagster/row_count"] = total
        return dg.MaterializeResult(metadata=metadata)
    return dg.MaterializeResult(metadata=stage_metadata(report, total, **metadata))


@dg.asset_check(
    asset=energy_meteringpoints,
    description="No customer's last metering-point import failed or refused a point (warns; the row says why).",
)
def energy_customers_imported(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT sub, error_kind, error, last_import, next_import FROM energy.customer "
        "WHERE error IS NOT NULL ORDER BY last_import DESC",
        severity=dg.AssetCheckSeverity.WARN,
    )


@dg.asset_check(
    asset=energy_meteringpoints,
    description=(
        "Every active production point has its technology and fuel codes (warns: without them it gets no "
        "GGOs and no ON_METERINGPOINT_AVAILABLE; the codes are asked for again at its customer's next import)."
    ),
)
def energy_production_codes_known(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT gsrn, sub, energy_type_error, energy_type_checked FROM energy.meteringpoint "
        "WHERE type = 'PRODUCTION' AND NOT disabled AND (technology_code IS NULL OR fuel_code IS NULL) "
        "ORDER BY gsrn",
        severity=dg.AssetCheckSeverity.WARN,
    )


meteringpoints_checks = [energy_customers_imported, energy_production_codes_known]
