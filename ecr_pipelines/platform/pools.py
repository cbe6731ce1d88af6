"""Pool limits, created when the instance is set up rather than by the first runs.

Left to Dagster, the first step that claims a pool inserts the pool's row in
``concurrency_limits``. Two runs starting together on a fresh instance both insert it; on Postgres
the loser's unique violation aborts its transaction and the step fails. Creating every pool of
the code location up front (``python -m ecr_pipelines instance setup``, ``db upgrade``, ``env``,
``demo``, ``dev``) means a run only ever reads the row.
"""

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg
from sqlalchemy.exc import IntegrityError


@dataclass(frozen=True)
class PoolSetup:
    pool: str
    limit: int
    action: str  # "set" (created now), "kept" (had a limit), "raced" (another process set it)


def pools_of(defs: dg.Definitions) -> set[str]:
    """Every pool named by an op of the definitions (asset, check and op steps alike)."""
    pools: set[str] = set()
    for job in defs.resolve_all_job_defs():
        # The implicit asset job holds every asset and check; explicit jobs add plain ops.
        pools.update(job.graph.pools)
    return pools


def ensure_pools(
    instance: dg.DagsterInstance, pools: Iterable[str], default_limit: int | None
) -> list[PoolSetup]:
    """Give each pool without a limit ``default_limit`` slots; leave every existing limit alone.

    An existing limit may have been raised with ``dagster instance concurrency set``, so it is
    never overwritten. The limit is set as an explicit one, which Dagster never re-initialises
    from the default at run time (that re-initialisation is the racy insert this avoids).
    """
    storage = instance.event_log_storage
    wanted = sorted(set(pools))
    if default_limit is None or not wanted or not storage.supports_global_concurrency_limits:
        return []
    existing = {limit.name: limit.limit for limit in storage.get_pool_limits()}
    done: list[PoolSetup] = []
    for pool in wanted:
        if pool in existing:
            done.append(PoolSetup(pool, existing[pool], "kept"))
            continue
        try:
            storage.set_concurrency_slots(pool, default_limit)
            done.append(PoolSetup(pool, default_limit, "set"))
        except IntegrityError:
            # Another set-up (two `db upgrade`s at once) inserted the row between our read and
            # our insert; its limit is as good as ours.
            now = {limit.name: limit.limit for limit in storage.get_pool_limits()}
            if pool not in now:
                raise
            done.append(PoolSetup(pool, now[pool], "raced"))
    return done


def default_pool_limit(instance: dg.DagsterInstance) -> int | None:
    """dagster.yaml's ``concurrency.pools.default_limit`` (None when unset: pools unlimited)."""
    return instance.get_concurrency_config().pool_config.default_pool_limit
