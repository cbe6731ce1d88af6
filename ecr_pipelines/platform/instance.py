"""Setting up the Dagster instance of DAGSTER_HOME for this code location (its pool limits).

``python -m ecr_pipelines instance setup`` runs it; ``db upgrade`` (when DAGSTER_HOME is set),
``env``, ``demo`` and ``dev`` run it too, so a fresh instance never has to create a pool while
runs are starting.
"""

import dagster as dg

from ecr_pipelines.lib.environment import instance_problem
from ecr_pipelines.platform.pools import PoolSetup, default_pool_limit, ensure_pools, pools_of


class InstanceNotConfigured(RuntimeError):
    """The environment does not describe a loadable Dagster instance; the message names the fix."""


def setup_instance(
    defs: dg.Definitions | None = None, instance: dg.DagsterInstance | None = None
) -> list[PoolSetup]:
    """Create the limits of every pool of ``defs`` (default: the code location) that has none yet,
    with dagster.yaml's ``concurrency.pools.default_limit``."""
    if defs is None:
        from ecr_pipelines.definitions import defs as location_defs

        defs = location_defs
    pools = pools_of(defs)
    if instance is not None:
        return ensure_pools(instance, pools, default_pool_limit(instance))
    problem = instance_problem()
    if problem is not None:
        raise InstanceNotConfigured(problem)
    with dg.DagsterInstance.get() as current:
        return ensure_pools(current, pools, default_pool_limit(current))


def describe(setups: list[PoolSetup]) -> list[str]:
    """One line per pool for the command line."""
    if not setups:
        return ["no pools to set up (none in the definitions, or no default_limit in dagster.yaml)"]
    labels = {"set": "set now", "kept": "kept", "raced": "set by another process"}
    return [f"pool {s.pool}: limit {s.limit} ({labels[s.action]})" for s in setups]
