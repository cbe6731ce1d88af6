"""``energy/measurements`` and ``energy/ggos``: every active metering point's new hours from
ElOverblik and the GGOs issued for them, in one step (``ecr_pipelines.energy.stages.measurements``):
a GGO is issued in the transaction that stores its hour, so the two assets always move together."""

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from ecr_pipelines.checks import offending_rows_check
from ecr_pipelines.energy.defs.resources import NOT_CONFIGURED, EnergyResource
from ecr_pipelines.energy.defs.technology import GROUP
from ecr_pipelines.energy.defs.webhooks import send_webhooks
from ecr_pipelines.energy.stages.measurements import BATCH_SIZE, WORKERS, import_due
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import DatabaseResource, HttpResource
from ecr_pipelines.stages import BatchConfig, log_stage, stage_metadata

MEASUREMENTS = dg.AssetKey(["energy", "measurements"])
GGOS = dg.AssetKey(["energy", "ggos"])


class MeasurementsConfig(BatchConfig):
    """Run config of the measurement import (ops.energy__measurements.config)."""

    batch_size: int = Field(
        default=BATCH_SIZE, description="Metering points per batch: one claim, one commit."
    )
    workers: int = Field(default=WORKERS, description="Metering points fetched from ElOverblik at once.")


@dg.multi_asset(
    name="energy__measurements",
    group_name=GROUP,
    specs=[
        dg.AssetSpec(
            MEASUREMENTS,
            deps=[dg.AssetKey(["energy", "meteringpoints"])],
            kinds={"postgres"},
            description=(
                "Hourly measurements (Wh) of every active metering point from ElOverblik: from the point's last "
                "stored hour + 1 h (else FIRST_MEASUREMENT_TIME, else the first of the previous month) up to "
                "today 00:00 UTC, capped by LAST_MEASUREMENT_TIME; never an hour twice. Stored published, and "
                "ON_MEASUREMENT_PUBLISHED sent after the commit (the legacy's ledger submission is off). MWh "
                "series count as 10^6 Wh (the legacy stored them as kWh). One point's failure never stops the others."
            ),
        ),
        dg.AssetSpec(
            GGOS,
            deps=[dg.AssetKey(["energy", "technology"])],
            kinds={"postgres"},
            description=(
                "Guarantees of origin: one per new hour > 0 Wh of a production point with technology and fuel "
                "codes, issued with the hour in one transaction; expire_time = issue_time + GGO_EXPIRE_TIME days, "
                "emissions from the EnergyTypeService (fetched once per point per run). ON_GGOS_ISSUED is sent "
                "after the commit."
            ),
        ),
    ],
    can_subset=False,
)
def energy_measurements(
    context: dg.AssetExecutionContext,
    config: MeasurementsConfig,
    db: DatabaseResource,
    http: HttpResource,
    energy: EnergyResource,
):  # type: ignore[no-untyped-def]
    session = http.session()
    hooks = http.session(retries=0)  # a webhook POST is never repeated behind our back
    client = energy.eloverblik(session)
    report = None
    if client is None:
        context.log.warning(f"{NOT_CONFIGURED}: no import")
    else:
        report = import_due(
            db.engine,
            client,
            energy.energy_types(session),
            energy.import_settings(workers=config.workers),
            run_id=context.run.run_id,
            limit=config.limit,
            batch_size=config.batch_size,
            progress=context.log.info,
            committed=lambda _outcomes: send_webhooks(context.log, db, hooks),
        )
        log_stage(context.log, report)
        new = report.counts.get("measurements", 0)
        rate = new / report.seconds if report.seconds else 0.0
        context.log.info(
            f"{new:,} new measurements and {report.counts.get('ggos', 0):,} GGOs in {report.seconds:.1f} s "
            f"({rate:,.0f} measurements/s)"
        )
    # Anything queued earlier and still due (queued outside a run, or left by a run that died).
    send_webhooks(context.log, db, hooks)
    with db.connect() as conn:
        measurements, first, last = conn.execute(
            sa.text("SELECT count(*), min(begin), max(begin) FROM energy.measurement")
        ).one()
        ggos = conn.execute(sa.text("SELECT count(*) FROM energy.ggo")).scalar_one()
        per_point = conn.exec_driver_sql(
            "SELECT p.gsrn, p.type::text, coalesce(p.measure_error_kind, ''), p.measured, "
            "(SELECT max(m.begin) FROM energy.measurement m WHERE m.gsrn = p.gsrn) "
            "FROM energy.meteringpoint p WHERE NOT p.disabled ORDER BY p.measured DESC NULLS LAST, p.id LIMIT 10"
        ).all()
    common = {"skipped": NOT_CONFIGURED} if report is None else {}
    new_measurements = report.counts.get("measurements", 0) if report else 0
    new_ggos = report.counts.get("ggos", 0) if report else 0
    measurement_metadata = {
        "new_measurements": new_measurements,
        "measurements_per_second": round(new_measurements / report.seconds, 1)
        if report and report.seconds
        else 0.0,
        "measurements": measurements,
        "first_hour": str(first) if first else "",
        "last_hour": str(last) if last else "",
        "points": md_table(["gsrn", "type", "error", "imported", "last hour"], per_point),
        **common,
    }
    if report is not None:
        yield dg.MaterializeResult(
            asset_key=MEASUREMENTS, metadata=stage_metadata(report, measurements, **measurement_metadata)
        )
    else:
        yield dg.MaterializeResult(
            asset_key=MEASUREMENTS, metadata={"dagster/row_count": measurements, **measurement_metadata}
        )
    yield dg.MaterializeResult(
        asset_key=GGOS, metadata={"dagster/row_count": ggos, "new_ggos": new_ggos, "ggos": ggos, **common}
    )


@dg.asset_check(
    asset=MEASUREMENTS,
    description="No active metering point's last import failed (warns; measure_error says why, the next run retries).",
)
def energy_measurements_imported(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT gsrn, sub, measure_error_kind, measure_error, measured FROM energy.meteringpoint "
        "WHERE NOT disabled AND measure_error IS NOT NULL ORDER BY measured DESC",
        severity=dg.AssetCheckSeverity.WARN,
    )


@dg.asset_check(
    asset=MEASUREMENTS,
    description=(
        "Every metering point with measurements is in energy.meteringpoint (the table has no foreign key, "
        "for the import's speed; a loose index scan visits each point once)."
    ),
)
def energy_measurements_have_points(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "WITH RECURSIVE points AS ("
        "(SELECT gsrn FROM energy.measurement ORDER BY gsrn LIMIT 1) UNION ALL "
        "SELECT (SELECT m.gsrn FROM energy.measurement m WHERE m.gsrn > p.gsrn ORDER BY m.gsrn LIMIT 1) "
        "FROM points p WHERE p.gsrn IS NOT NULL) "
        "SELECT p.gsrn FROM points p WHERE p.gsrn IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM energy.meteringpoint mp WHERE mp.gsrn = p.gsrn) ORDER BY p.gsrn",
    )


@dg.asset_check(
    asset=GGOS,
    description=(
        "Every GGO has its measurement (the table has no foreign key, for the import's speed) and is for an "
        "hour > 0 Wh of a production point with both codes, and expires after it is issued."
    ),
)
def energy_ggos_valid(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT g.id, g.measurement_id, m.gsrn, m.begin, m.amount, p.type::text AS type, p.technology_code, "
        "p.fuel_code FROM energy.ggo g LEFT JOIN energy.measurement m ON m.id = g.measurement_id "
        "LEFT JOIN energy.meteringpoint p ON p.gsrn = m.gsrn "
        "WHERE m.id IS NULL OR m.amount <= 0 OR p.type IS DISTINCT FROM 'PRODUCTION' OR p.technology_code IS NULL "
        "OR p.fuel_code IS NULL OR g.expire_time <= g.issue_time ORDER BY g.id",
    )


@dg.asset_check(
    asset=MEASUREMENTS,
    description="No webhook delivery of the last day is dead (warns: its subscriber refused it for 24 h).",
)
def energy_webhooks_delivered(db: DatabaseResource) -> dg.AssetCheckResult:
    return offending_rows_check(
        db,
        "SELECT d.id, d.event::text AS event, s.url, d.attempts, d.error_kind, d.error, d.created "
        "FROM energy.webhook_delivery d JOIN energy.webhook_subscription s ON s.id = d.subscription_id "
        "WHERE d.status = 'dead' AND d.created > now() - interval '1 day' ORDER BY d.id DESC",
        severity=dg.AssetCheckSeverity.WARN,
    )


measurements_checks = [
    energy_measurements_imported,
    energy_measurements_have_points,
    energy_ggos_valid,
    energy_webhooks_delivered,
]
