"""Registry cache (group ``registry``): F-gas / ODS undertakings, BDR old companies and
collections, the matching and its operator jobs, ODS licences.

One module per stage, named as its logic module: ``reference``, ``undertakings``,
``old_companies``, ``collections``, ``licences`` (logic in ``ecr_pipelines.registry.store``),
``links`` and ``operator`` (logic in ``ecr_pipelines.registry.links`` / ``.operator``); each holds
its assets and their checks. ``jobs`` holds the jobs, schedules and sensors, ``resources`` the
registry resource and what the stage modules share.
"""

import dagster as dg

from ecr_pipelines.registry.defs.collections import bdr_collections, bdr_collections_without_errors
from ecr_pipelines.registry.defs.jobs import registry_jobs, registry_schedules, registry_sensors
from ecr_pipelines.registry.defs.licences import licence_quantities_add_up, ods_licences
from ecr_pipelines.registry.defs.links import link_checks, undertaking_company_links
from ecr_pipelines.registry.defs.old_companies import bdr_old_companies
from ecr_pipelines.registry.defs.reference import registry_reference_tables
from ecr_pipelines.registry.defs.resources import build_registry_resource
from ecr_pipelines.registry.defs.undertakings import fgas_undertakings, ods_undertakings, undertaking_checks

# Everything but the resources (tests bind their own).
core_defs = dg.Definitions(
    assets=[
        registry_reference_tables,
        fgas_undertakings,
        ods_undertakings,
        bdr_old_companies,
        bdr_collections,
        ods_licences,
        undertaking_company_links,
    ],
    asset_checks=[
        *undertaking_checks,
        bdr_collections_without_errors,
        licence_quantities_add_up,
        *link_checks,
    ],
    jobs=registry_jobs,
    schedules=registry_schedules,
    sensors=registry_sensors,
)


def build_defs() -> dg.Definitions:
    """The service's definitions, with its resource configured from the current environment."""
    return dg.Definitions.merge(core_defs, dg.Definitions(resources={"registry": build_registry_resource()}))
