"""Asset of the reference tables (logic: ``ecr_pipelines.registry.store.reference``)."""

import dagster as dg

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.defs.resources import GROUP
from ecr_pipelines.registry.store.reference import seed_reference_tables
from ecr_pipelines.resources import DatabaseResource


@dg.asset(
    group_name=GROUP,
    kinds={"postgres"},
    description=(
        "Reference tables of the registry cache, loaded from the bundled legacy fixtures: accepted "
        "undertaking types and business profiles, and the country / substance / detailed-use "
        "conversion tables the licence aggregation translates with."
    ),
)
def registry_reference_tables(db: DatabaseResource) -> dg.MaterializeResult:
    with db.begin() as conn:
        counts = seed_reference_tables(Sql(conn))
    return dg.MaterializeResult(metadata={"dagster/row_count": sum(counts.values()), **counts})
