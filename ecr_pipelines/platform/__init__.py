"""Platform group: health of the shared layer, failure notifications and instance set-up."""

import dagster as dg

from ecr_pipelines.platform.assets import migrations_unmodified, platform_status, service_schemas_exist
from ecr_pipelines.platform.sensors import build_run_failure_mail_sensor

platform_check_job = dg.define_asset_job(
    "platform_check_job",
    selection=dg.AssetSelection.groups("platform"),
    description="Checks that the database, blob store and mail settings are usable.",
)


def build_defs() -> dg.Definitions:
    # Built per call: the failure sensor's default status follows ALERT_MAIL_TO at load time.
    return dg.Definitions(
        assets=[platform_status],
        asset_checks=[service_schemas_exist, migrations_unmodified],
        jobs=[platform_check_job],
        sensors=[build_run_failure_mail_sensor()],
    )


__all__ = [
    "build_defs",
    "migrations_unmodified",
    "platform_check_job",
    "platform_status",
    "service_schemas_exist",
]
