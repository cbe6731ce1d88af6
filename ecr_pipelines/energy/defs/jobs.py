"""The energy hub's jobs and schedules (UTC, as the legacy's Celery beat)."""

import dagster as dg

from ecr_pipelines.automation import service_tags
from ecr_pipelines.energy.defs.measurements import GGOS, MEASUREMENTS
from ecr_pipelines.energy.defs.resources import NOT_CONFIGURED, EnergyResource

SERVICE = "energy"
SERVICE_TAG = service_tags(SERVICE)
METERINGPOINTS = dg.AssetKey(["energy", "meteringpoints"])
DISCLOSURES = dg.AssetKey(["energy", "disclosures"])

energy_onboard_job = dg.define_asset_job(
    "energy_onboard_job",
    selection=dg.AssetSelection.assets(METERINGPOINTS),
    description=(
        "Onboard a customer (ops.energy__meteringpoints.config.sub: its ElOverblik customerKey) and import its "
        "metering points now; energy_work_sensor imports them again 10 min, 30 min, 1 h, 2 h and 6 h later."
    ),
    tags=SERVICE_TAG,
)

energy_meteringpoints_job = dg.define_asset_job(
    "energy_meteringpoints_job",
    selection=dg.AssetSelection.assets(METERINGPOINTS),
    description="Import the metering points of every customer whose (fallback) import is due.",
    tags=SERVICE_TAG,
)

energy_import_job = dg.define_asset_job(
    "energy_import_job",
    selection=dg.AssetSelection.assets(MEASUREMENTS, GGOS),
    description=(
        "Import every active metering point's new hours from ElOverblik and issue their GGOs, then send the "
        "webhooks (the legacy's import at 08:00, 12:00, 18:00 and 23:00 UTC)."
    ),
    tags=SERVICE_TAG,
)

energy_disclosures_job = dg.define_asset_job(
    "energy_disclosures_job",
    selection=dg.AssetSelection.assets(DISCLOSURES),
    description="Compile the pending disclosures (ops.energy__disclosures.config.all: every disclosure).",
    tags=SERVICE_TAG,
)


@dg.schedule(
    name="energy_import_schedule",
    job=energy_import_job,
    cron_schedule="0 8,12,18,23 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="08:00, 12:00, 18:00 and 23:00 UTC: energy_import_job (the legacy's beat); skips without ElOverblik.",
)
def energy_import_schedule(
    context: dg.ScheduleEvaluationContext, energy: EnergyResource
) -> dg.RunRequest | dg.SkipReason:
    if not energy.configured:
        return dg.SkipReason(NOT_CONFIGURED)
    return dg.RunRequest(tags=SERVICE_TAG)


@dg.schedule(
    name="energy_nightly_disclosures_schedule",
    job=energy_disclosures_job,
    cron_schedule="0 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="03:00 UTC: every disclosure compiled again (the legacy's nightly compile).",
)
def energy_nightly_disclosures_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    return dg.RunRequest(
        run_config={"ops": {"energy__disclosures": {"config": {"all": True}}}},
        tags=SERVICE_TAG,
    )
