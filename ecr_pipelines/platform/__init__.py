"""Platform group: health of the shared layer, and failure notifications."""

import dagster as dg

from ecr_pipelines.platform.assets import migrations_unmodified, platform_status, service_schemas_exist
from ecr_pipelines.platform.sensors import run_failure_mail_sensor

platform_check_job = dg.define_asset_job(
    "platform_check_job",
    selection=dg.AssetSelection.groups("platform"),
    description="Checks that the database, blob store and mail settings are usable.",
)

_defs = dg.Definitions(
    assets=[platform_status],
    asset_checks=[service_schemas_exist, migrations_unmodified],
    jobs=[platform_check_job],
    sensors=[run_failure_mail_sensor],
)


def build_defs() -> dg.Definitions:
    return _defs
