"""The code location: every service's definitions merged, with the shared resources.

Each service package exports ``build_defs()``; this module only assembles them. Runs use the
in-process executor by default: on these small machines a subprocess per step costs more than
it parallelises (override per run with ``execution: {config: {multiprocess: {}}}``).
"""

import dagster as dg

from ecr_pipelines import platform
from ecr_pipelines.automation import bootstrap_sensor, housekeeping_sensor, in_process_executor
from ecr_pipelines.ckan import defs as ckan
from ecr_pipelines.datastore import defs as datastore
from ecr_pipelines.energy import defs as energy
from ecr_pipelines.iati import defs as iati
from ecr_pipelines.registry import defs as registry
from ecr_pipelines.resources import build_resources

# One entry per service package; each builds its definitions (and its own resources) from the
# environment when called, so the demo can build them after pointing the clients at stand-ins.
SERVICES = [platform, registry, iati, ckan, datastore, energy]

all_assets_job = dg.define_asset_job(
    "all_assets_job",
    selection=dg.AssetSelection.all(),
    description="Every asset of every service, in dependency order (what `make demo` runs).",
)


def _service_assets(services: dg.Definitions) -> dict[str, list[dg.AssetKey]]:
    """Asset keys per service group (the groups are the services' names)."""
    groups: dict[str, list[dg.AssetKey]] = {}
    for assets_def in services.assets or []:
        if isinstance(assets_def, dg.AssetsDefinition):
            for key in assets_def.keys:
                group = assets_def.group_names_by_key.get(key, "default")
                if group != "platform":
                    groups.setdefault(group, []).append(key)
    return groups


def build_definitions() -> dg.Definitions:
    """The merged definitions, with resources configured from the current environment."""
    services = dg.Definitions.merge(*(service.build_defs() for service in SERVICES))
    return dg.Definitions.merge(
        services,
        dg.Definitions(
            jobs=[all_assets_job],
            sensors=[bootstrap_sensor(_service_assets(services)), housekeeping_sensor],
            resources=build_resources(),
            executor=in_process_executor,
        ),
    )


defs = build_definitions()
