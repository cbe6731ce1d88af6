"""Stage claims as other runs leave them (``pipeline.stage_claim``, ``ecr_pipelines.lib.batch``).

A claim belongs to the Postgres backend (pid and start time) of a connection its run keeps open:
``claim_for_dead_run`` writes one whose backend is gone (a run killed mid-batch), and
``claim_for_live_run`` one held by a connection that stays open while the block runs (another run
working on the item right now); when the block ends that connection is closed for good, so its
claim is then a dead run's.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from ecr_pipelines.resources import DatabaseResource

# No backend ever has pid 0: a claim naming it belongs to a run that is gone.
DEAD_PID = 0
GONE_WAIT_SECONDS = 10.0


def _insert(db: DatabaseResource, stage: str, item: str, pid: int, started: object, run_id: str) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO pipeline.stage_claim (stage, item, owner_pid, owner_started, run_id) "
                "VALUES (:stage, :item, :pid, :started, :run)"
            ),
            {"stage": stage, "item": item, "pid": pid, "started": started, "run": run_id},
        )


def claim_for_dead_run(db: DatabaseResource, stage: str, item: str) -> None:
    """A claim whose owner's backend is not connected (its process died)."""
    with db.connect() as conn:
        started = conn.execute(sa.text("SELECT now() - interval '1 hour'")).scalar_one()
    _insert(db, stage, item, DEAD_PID, started, "dead-run")


@contextmanager
def claim_for_live_run(db: DatabaseResource, stage: str, item: str) -> Iterator[None]:
    """A claim owned by a connection that stays open for the block (a run that is alive)."""
    engine = sa.create_engine(db.engine.url, poolclass=NullPool)
    try:
        with engine.connect() as holder:
            pid, started = holder.execute(
                sa.text("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
            ).one()
            holder.commit()
            _insert(db, stage, item, pid, started, "live-run")
            yield
        # The connection is closed (no pool keeps it): wait until Postgres has let its backend go,
        # as it does for a run whose process died.
        deadline = time.monotonic() + GONE_WAIT_SECONDS
        while _connected(db, pid, started):
            assert time.monotonic() < deadline, f"backend {pid} is still connected"
            time.sleep(0.02)
    finally:
        engine.dispose()


def _connected(db: DatabaseResource, pid: int, started: object) -> bool:
    with db.connect() as conn:
        return bool(
            conn.execute(
                sa.text(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = :pid AND backend_start = :s)"
                ),
                {"pid": pid, "s": started},
            ).scalar_one()
        )


def claims(db: DatabaseResource) -> list[tuple[str, str, str]]:
    """Every claim left: (stage, item, run id)."""
    with db.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT stage, item, run_id FROM pipeline.stage_claim ORDER BY stage, item")
        )
        return [(r[0], r[1], r[2]) for r in rows]
