"""Energy data hub (group ``energy``): ElOverblik metering points and hourly measurements, GGOs,
signed webhooks, disclosures and technology labels.

energy_onboard_job (or a row in energy.customer) → energy/meteringpoints, again by
energy_work_sensor after 10 min … 6 h; energy_import_schedule (08, 12, 18, 23 UTC) →
energy_import_job → energy/measurements + energy/ggos → webhooks; energy_disclosure_job →
energy_work_sensor → energy/disclosures (and nightly at 03:00 UTC); energy_webhook_sensor retries
webhooks.
"""

import dagster as dg

from ecr_pipelines.energy.defs import disclosures, measurements, meteringpoints, technology
from ecr_pipelines.energy.defs.jobs import (
    energy_disclosures_job,
    energy_import_job,
    energy_import_schedule,
    energy_meteringpoints_job,
    energy_nightly_disclosures_schedule,
    energy_onboard_job,
)
from ecr_pipelines.energy.defs.resources import build_energy_resources
from ecr_pipelines.energy.defs.sensors import energy_work_sensor
from ecr_pipelines.energy.defs.webhooks import energy_webhook_job, energy_webhook_sensor

# Everything but the resources (tests bind their own).
core_defs = dg.Definitions(
    assets=[
        technology.energy_technology,
        meteringpoints.energy_meteringpoints,
        measurements.energy_measurements,
        disclosures.energy_disclosures,
    ],
    asset_checks=[
        *technology.technology_checks,
        *meteringpoints.meteringpoints_checks,
        *measurements.measurements_checks,
        *disclosures.disclosures_checks,
    ],
    jobs=[
        energy_onboard_job,
        energy_meteringpoints_job,
        energy_import_job,
        energy_disclosures_job,
        disclosures.energy_disclosure_job,
        energy_webhook_job,
    ],
    schedules=[energy_import_schedule, energy_nightly_disclosures_schedule],
    sensors=[energy_work_sensor, energy_webhook_sensor],
)


def build_defs() -> dg.Definitions:
    """The service's definitions, with its resources configured from the current environment."""
    return dg.Definitions.merge(core_defs, dg.Definitions(resources=build_energy_resources()))
