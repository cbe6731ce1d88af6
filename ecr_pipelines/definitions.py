"""The code location: every service's definitions merged, with the shared resources.

Each service package exports ``build_defs()``; this module only assembles them. Runs use the
in-process executor by default: on these small machines a subprocess per step costs more than
it parallelises (override per run with ``execution: {config: {multiprocess: {}}}``).
"""

import dagster as dg

from ecr_pipelines import iati, platform, registry
from ecr_pipelines.resources import build_resources

# One entry per service package; each builds its definitions (and its own resources) from the
# environment when called, so the demo can build them after pointing the clients at stand-ins.
SERVICES = [platform, registry, iati]

all_assets_job = dg.define_asset_job(
    "all_assets_job",
    selection=dg.AssetSelection.all(),
    description="Every asset of every service, in dependency order (what `make demo` runs).",
)


def build_definitions() -> dg.Definitions:
    """The merged definitions, with resources configured from the current environment."""
    return dg.Definitions.merge(
        *(service.build_defs() for service in SERVICES),
        dg.Definitions(jobs=[all_assets_job], resources=build_resources(), executor=dg.in_process_executor),
    )


defs = build_definitions()
