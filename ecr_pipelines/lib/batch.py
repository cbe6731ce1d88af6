"""The batch-stage runner: the one loop every per-item stage runs on (no Dagster).

A stage is a SQL predicate that says which rows of a table are *due* plus a function that
processes a batch of them. The runner does the rest, the same way for every stage:

1. **recover**: claims whose owner is dead are dropped, so their items are due again;
2. **select** the due items (the stage's predicate, its order, an optional limit);
3. **chunk** them into batches;
4. **claim** each batch in one statement (``FOR UPDATE SKIP LOCKED`` on the item rows, an
   ``INSERT .. ON CONFLICT`` into ``pipeline.stage_claim``): an item that another live run holds,
   or that stopped being due, is skipped;
5. **process** the claimed items (the stage's function; it never raises for one bad item);
6. **record** the outcomes and release the claims in one transaction;
7. **report** progress ("batch N of M, rows/s") and return one ``StageReport``.

Ownership: a claim names the Postgres backend (pid and start time) of a connection the runner
holds open for the whole stage. When the process dies (SIGKILL, OOM, a lost machine) Postgres
closes that backend, and every claim it held is dead at once: the next run takes the items back
without waiting for a lease to expire, and never takes the claims of a run that is still alive.
Two runs of one stage at the same time therefore never process one item twice.

Worker processes (``ecr_pipelines.lib.workers``): a stage whose per-item work is CPU-bound passes
``workers``; the runner starts them once it knows what is due and stops them before this run's
claims are released, so an item is only ever worked on while this run holds its claim. Claims,
records and progress stay in this process.
"""

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
DEADLOCK = "40P01"
MESSAGE_LIMIT = 2000
PREVIEW_LIMIT = 200  # error rows kept for the metadata preview; the count is always complete

# A claim is live while the backend that took it is still connected.
LIVE_OWNER = (
    "EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = {c}.owner_pid "
    "AND a.backend_start = {c}.owner_started)"
)


@dataclass(frozen=True)
class Stage:
    """Which rows are due and how they are claimed.

    ``due`` and ``order`` are SQL on ``alias`` for ``table`` (joins go in ``joins``);
    ``columns`` are what each claimed item carries into ``process`` (the key first); ``on_claim``
    is an optional ``SET`` clause written when an item is claimed (the legacy ``*_start`` columns).
    """

    name: str
    table: str
    due: str
    columns: str
    order: str
    key: str = "id"
    alias: str = "t"
    joins: str = ""
    on_claim: str | None = None
    # The predicate's parameters as a default run binds them (a run may override any of them).
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return f"{self.table} {self.alias} {self.joins}"

    @property
    def item(self) -> str:
        return f"{self.alias}.{self.key}"


@dataclass
class Outcome:
    """What processing one item gave. ``kind`` is a short label ("done", "error", "held", ...);
    ``error`` is the error class an operator filters on (None: no error). ``data`` is whatever the
    stage's ``record`` needs; ``counts`` adds figures to the report (activities, bytes, ...)."""

    key: str
    kind: str = "done"
    error: str | None = None
    message: str = ""
    data: Any = None
    counts: Mapping[str, int] = field(default_factory=dict)
    stop: str | None = None  # set: the stage stops after recording this batch (upstream down)
    worker: int | None = None  # pid of the worker process that produced it (None: the run's own)


@dataclass
class StageReport:
    """What one run of a stage did: the same shape for every stage, turned into asset metadata."""

    stage: str
    recovered: int = 0
    due: int = 0
    batches: int = 0
    total_batches: int = 0
    claimed: int = 0
    skipped: int = 0  # taken by another run, or no longer due, when its batch came
    kinds: Counter[str] = field(default_factory=Counter)
    errors_by_class: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    error_rows: list[tuple[str, str, str]] = field(default_factory=list)  # key, class, message
    other_rows: list[tuple[str, str, str]] = field(
        default_factory=list
    )  # key, kind, message: not done, no error
    stopped: str | None = None
    seconds: float = 0.0
    processes: int | None = None  # processes that did the per-item work (None: a stage without workers)

    @property
    def processed(self) -> int:
        return sum(self.kinds.values())

    @property
    def errors(self) -> int:
        return sum(self.errors_by_class.values())

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    def add(self, outcome: Outcome) -> None:
        self.kinds[outcome.kind] += 1
        self.counts.update(outcome.counts)
        if outcome.error is not None:
            self.errors_by_class[outcome.error] += 1
            if len(self.error_rows) < PREVIEW_LIMIT:
                self.error_rows.append((outcome.key, outcome.error, clip(outcome.message)))
        elif outcome.kind != "done" and outcome.message and len(self.other_rows) < PREVIEW_LIMIT:
            self.other_rows.append((outcome.key, outcome.kind, clip(outcome.message)))

    def summary(self) -> str:
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(self.kinds.items())) or "nothing"
        text = (
            f"{self.stage}: {self.processed} of {self.due} due items processed in {self.batches} batches "
            f"({kinds}); {self.errors} errors, {self.skipped} skipped, {self.recovered} recovered from "
            f"dead runs; {self.seconds:.1f} s, {self.rate:.1f} rows/s"
        )
        if self.stopped:
            text += f"; stopped: {self.stopped}"
        return text

    def metadata(self) -> dict[str, int | float | str]:
        """Plain values for the asset metadata (the Dagster side adds the previews)."""
        values: dict[str, int | float | str] = {
            "due": self.due,
            "processed": self.processed,
            "errors": self.errors,
            "skipped": self.skipped,
            "recovered": self.recovered,
            "batches": self.batches,
            "seconds": round(self.seconds, 2),
            "rows_per_second": round(self.rate, 1),
        }
        if self.processes is not None:
            values["processes"] = self.processes
        values.update({f"outcome_{kind}": count for kind, count in sorted(self.kinds.items())})
        values.update({f"error_{cls}": count for cls, count in sorted(self.errors_by_class.items())})
        values.update(dict(sorted(self.counts.items())))
        if self.stopped:
            values["stopped"] = self.stopped
        return values


def clip(message: str, limit: int = MESSAGE_LIMIT) -> str:
    return message if len(message) <= limit else message[:limit] + "…"


def with_retry(engine: Engine, work: Callable[[Connection], Any], attempts: int = 3) -> Any:
    """Run ``work`` in a transaction, again on a deadlock (a sync may lock rows in another order)."""
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                return work(conn)
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "pgcode", None) != DEADLOCK or attempt == attempts:
                raise
            log.warning("deadlock, retrying (%d of %d)", attempt, attempts)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    size = max(1, size)
    for start in range(0, len(items), size):
        yield items[start : start + size]


class _Owner:
    """The connection whose backend owns this run's claims; closing it frees them all.

    With a run id, the run is also listed in ``pipeline.run_owner`` while the stage works, so the
    Dagster side can tell a run whose process died (its backend is gone) from a live one.
    """

    def __init__(self, engine: Engine, run_id: str = "", stage: str = "") -> None:
        self.conn = engine.connect()
        self.run_id = run_id
        self.pid, self.started = self.conn.execute(
            sa.text("SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        ).one()
        if run_id:
            self.conn.execute(
                sa.text(
                    "INSERT INTO pipeline.run_owner (run_id, owner_pid, owner_started, stage) "
                    "VALUES (:run, :pid, :started, :stage) ON CONFLICT (run_id) DO UPDATE SET "
                    "owner_pid = EXCLUDED.owner_pid, owner_started = EXCLUDED.owner_started, "
                    "stage = EXCLUDED.stage, updated = now()"
                ),
                {"run": run_id, "pid": self.pid, "started": self.started, "stage": stage},
            )
        self.conn.commit()

    def close(self) -> None:
        try:
            # Claims still held here (the stage ended by an exception mid-batch) are freed now:
            # the connection goes back to the engine's pool, and its backend would keep them live.
            self.conn.execute(
                sa.text(
                    "DELETE FROM pipeline.stage_claim WHERE owner_pid = :pid AND owner_started = :started"
                ),
                {"pid": self.pid, "started": self.started},
            )
            if self.run_id:
                self.conn.execute(
                    sa.text("DELETE FROM pipeline.run_owner WHERE run_id = :run AND owner_pid = :pid"),
                    {"run": self.run_id, "pid": self.pid},
                )
            self.conn.commit()
        except Exception as exc:  # the database went away: closing the backend frees the claims
            log.warning("could not release this run's claims: %s", exc)
            self.conn.invalidate()
        finally:
            self.conn.close()


def dead_runs(conn: Connection) -> list[str]:
    """Run ids listed as working on a stage whose backend is gone: their process died."""
    rows = conn.execute(
        sa.text(f"SELECT r.run_id FROM pipeline.run_owner r WHERE NOT {LIVE_OWNER.format(c='r')}")
    ).all()
    return [row[0] for row in rows]


def forget_runs(conn: Connection, run_ids: Sequence[str]) -> None:
    conn.execute(sa.text("DELETE FROM pipeline.run_owner WHERE run_id = ANY(:ids)"), {"ids": list(run_ids)})


def recover_dead_claims(conn: Connection, stage: str) -> int:
    """Drop the claims of owners that are gone; returns how many items that frees."""
    return conn.execute(
        sa.text(
            f"DELETE FROM pipeline.stage_claim c WHERE c.stage = :stage AND NOT {LIVE_OWNER.format(c='c')}"
        ),
        {"stage": stage},
    ).rowcount


def _not_claimed(stage: Stage) -> str:
    return (
        "NOT EXISTS (SELECT 1 FROM pipeline.stage_claim c WHERE c.stage = :_stage "
        f"AND c.item = {stage.item}::text AND {LIVE_OWNER.format(c='c')})"
    )


def select_due(
    conn: Connection, stage: Stage, params: Mapping[str, Any], limit: int | None = None
) -> list[str]:
    """Keys of the due items that no live run holds, in the stage's order."""
    sql = (
        f"SELECT {stage.item} FROM {stage.source} WHERE ({stage.due}) "
        f"AND {_not_claimed(stage)} ORDER BY {stage.order}" + (" LIMIT :_limit" if limit else "")
    )
    rows = conn.execute(sa.text(sql), {**stage.params, **params, "_stage": stage.name, "_limit": limit}).all()
    return [row[0] for row in rows]


def claim(
    conn: Connection, stage: Stage, keys: Sequence[str], owner: _Owner, run_id: str, params: Mapping[str, Any]
) -> list[sa.Row]:
    """Claim those of ``keys`` that are still due and free; returns their ``columns`` rows."""
    on_claim = (
        f"UPDATE {stage.table} u SET {stage.on_claim} FROM claimed WHERE u.{stage.key}::text = claimed.item "
        "RETURNING u.{key}"
        if stage.on_claim
        else "SELECT item FROM claimed"
    ).format(key=stage.key)
    sql = f"""
        WITH candidates AS (
            SELECT {stage.item} AS item FROM {stage.source}
            WHERE {stage.item} = ANY(:_keys) AND ({stage.due})
            ORDER BY {stage.item}
            FOR UPDATE OF {stage.alias} SKIP LOCKED
        ), claimed AS (
            INSERT INTO pipeline.stage_claim AS c (stage, item, owner_pid, owner_started, run_id)
            SELECT :_stage, item::text, :_pid, :_started, :_run FROM candidates
            ON CONFLICT (stage, item) DO UPDATE SET owner_pid = EXCLUDED.owner_pid,
                owner_started = EXCLUDED.owner_started, run_id = EXCLUDED.run_id, claimed_at = now()
            WHERE NOT {LIVE_OWNER.format(c="c")}
            RETURNING c.item
        ), marked AS ({on_claim})
        SELECT {stage.columns} FROM {stage.source}
        WHERE {stage.item}::text IN (SELECT item FROM claimed)
    """
    bound = {
        **params,
        "_keys": list(keys),
        "_stage": stage.name,
        "_pid": owner.pid,
        "_started": owner.started,
        "_run": run_id,
    }
    rows = conn.execute(sa.text(sql), bound).all()
    order = {key: index for index, key in enumerate(keys)}
    return sorted(rows, key=lambda row: order.get(row[0], len(order)))


def release(conn: Connection, stage: Stage, keys: Iterable[str], owner: _Owner) -> None:
    conn.execute(
        sa.text(
            "DELETE FROM pipeline.stage_claim WHERE stage = :stage AND item = ANY(:keys) "
            "AND owner_pid = :pid AND owner_started = :started"
        ),
        {"stage": stage.name, "keys": [str(k) for k in keys], "pid": owner.pid, "started": owner.started},
    )


ProcessBatch = Callable[[Sequence[sa.Row]], list[Outcome]]
Record = Callable[[Connection, Sequence[Outcome]], None]
# What the database (or the driver) says about a value it cannot take; a lost connection is
# something else and must stop the run.
REFUSED_VALUE: tuple[type[BaseException], ...] = (sa.exc.DataError, psycopg2.DataError, UnicodeError)


class Workers(Protocol):
    """Processes a stage's ``process`` hands its items to (``ecr_pipelines.lib.workers``)."""

    def start(self, due: Sequence[Any]) -> int:
        """Start the processes if they pay for ``due``; returns how many do the work (1: this one)."""
        ...

    def stop(self) -> None:
        """Stop them; when this returns, no item is being worked on anywhere."""
        ...


def per_item(process: Callable[[sa.Row], Outcome]) -> ProcessBatch:
    """A batch function from a per-item one."""

    def run(rows: Sequence[sa.Row]) -> list[Outcome]:
        return [process(row) for row in rows]

    return run


def run_stage(
    engine: Engine,
    stage: Stage,
    process: ProcessBatch,
    record: Record,
    *,
    params: Mapping[str, Any] | None = None,
    batch_size: int = 50,
    limit: int | None = None,
    run_id: str = "",
    progress: Progress = log.info,
    report: StageReport | None = None,
    refused: Callable[[Outcome, BaseException], Outcome] | None = None,
    committed: Callable[[list[Outcome]], None] | None = None,
    prefetch: bool = False,
    workers: Workers | None = None,
) -> StageReport:
    """Run ``stage`` over every due item: recover, select, chunk, claim, process, record, report.

    ``record`` writes a batch's outcomes in one transaction, with the release of its claims. When
    the database refuses a value of one outcome, the batch is recorded item by item and the
    refused one is replaced by ``refused(outcome, error)`` (default: a ``refused`` error that
    leaves the row as it was), so one item never sinks its batch. ``committed`` is called with a
    batch's outcomes once they are committed: the place for side effects (mails queued by
    ``record`` are sent there, so a requester hears about the package before the next one is built).

    ``prefetch``: the next batch is claimed and processed in a second thread while this one is
    recorded, so a stage whose ``process`` waits on an upstream and whose ``record`` waits on the
    database keeps both busy (on two cores, the sum of the two becomes nearly the larger). When a
    batch stops the stage, the batch worked on ahead is dropped unrecorded: ``process`` has no side
    effects, and its claims die with this run's owner, so its items are due again next run.

    ``workers``: started after the due items are selected (with their keys, so they can decide
    whether processes pay) and stopped before the claims are released; ``process`` uses them.
    """
    params = {**stage.params, **(params or {})}
    report = report or StageReport(stage.name)
    started = time.perf_counter()
    owner = _Owner(engine, run_id, stage.name)
    try:
        with engine.begin() as conn:
            report.recovered = recover_dead_claims(conn, stage.name)
            due = select_due(conn, stage, params, limit)
        report.due = len(due)
        batches = list(chunks(due, batch_size))
        report.total_batches = len(batches)
        progress(
            f"{stage.name}: {len(due)} items due in {len(batches)} batches"
            + (f" ({report.recovered} taken back from dead runs)" if report.recovered else "")
        )
        if workers is not None:
            report.processes = workers.start(due)
            if report.processes > 1:
                progress(f"{stage.name}: {report.processes} worker processes")

        def claim_and_process(keys: Sequence[Any]) -> tuple[list[sa.Row], list[Outcome]]:
            rows = with_retry(engine, lambda conn: claim(conn, stage, keys, owner, run_id, params))
            return rows, (process(rows) if rows else [])

        for number, (keys, rows, outcomes) in enumerate(
            _processed(batches, claim_and_process, prefetch), start=1
        ):
            report.claimed += len(rows)
            report.skipped += len(keys) - len(rows)
            outcomes = _record(engine, stage, record, outcomes, rows, owner, refused)
            for outcome in outcomes:
                report.add(outcome)
            if committed is not None and outcomes:
                committed(outcomes)
            report.batches = number
            elapsed = time.perf_counter() - started
            progress(
                f"{stage.name}: batch {number} of {len(batches)}: {report.processed} of {len(due)} "
                f"processed, {report.errors} errors, {report.skipped} skipped, "
                f"{report.processed / elapsed if elapsed else 0:.1f} rows/s"
            )
            stop = next((o.stop for o in outcomes if o.stop), None)
            if stop:
                report.stopped = stop
                progress(f"{stage.name}: stopped after batch {number}: {stop}")
                break
    finally:
        try:
            if workers is not None:
                # First: a worker still busy (the run is ending by an exception) must be gone
                # before the claims are released, or another run could take its item meanwhile.
                workers.stop()
        finally:
            owner.close()
            report.seconds = time.perf_counter() - started
    return report


def _processed(
    batches: Sequence[Sequence[Any]],
    claim_and_process: Callable[[Sequence[Any]], tuple[list[sa.Row], list[Outcome]]],
    prefetch: bool,
) -> Iterator[tuple[Sequence[Any], list[sa.Row], list[Outcome]]]:
    """Each batch claimed and processed, in order; with ``prefetch`` the next one is worked on in a
    second thread while the caller records the one it was given (closing the generator waits for
    that one and drops it)."""
    if not prefetch:
        for keys in batches:
            yield (keys, *claim_and_process(keys))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stage-ahead") as ahead:
        future: Future[tuple[list[sa.Row], list[Outcome]]] | None = None
        for index, keys in enumerate(batches):
            current = future.result() if future is not None else claim_and_process(keys)
            future = ahead.submit(claim_and_process, batches[index + 1]) if index + 1 < len(batches) else None
            yield (keys, *current)


def _record(
    engine: Engine,
    stage: Stage,
    record: Record,
    outcomes: list[Outcome],
    rows: Sequence[Any],
    owner: _Owner,
    refused: Callable[[Outcome, BaseException], Outcome] | None,
) -> list[Outcome]:
    keys = [row[0] for row in rows]

    def write(conn: Connection, batch: Sequence[Outcome] = outcomes) -> None:
        if batch:
            record(conn, batch)
        release(conn, stage, keys, owner)

    try:
        with_retry(engine, write)
        return outcomes
    except REFUSED_VALUE as exc:
        log.warning(
            "%s: the database refused a value of this batch (%s); recording item by item", stage.name, exc
        )
    recorded: list[Outcome] = []
    for outcome in outcomes:
        try:
            with_retry(engine, lambda conn, o=outcome: record(conn, [o]))
            recorded.append(outcome)
        except REFUSED_VALUE as exc:
            message = f"the database refused this item's result: {type(exc).__name__}: {exc}"
            replacement = (
                refused(outcome, exc)
                if refused
                else Outcome(outcome.key, "refused", error="refused", message=message)
            )
            if refused:
                with_retry(engine, lambda conn, o=replacement: record(conn, [o]))
            recorded.append(replacement)
    with_retry(engine, lambda conn: release(conn, stage, keys, owner))
    return recorded


def has_due(conn: Connection, stage: Stage, params: Mapping[str, Any] | None = None) -> bool:
    """Whether any item of ``stage`` is due and free (cheap: stops at the first one)."""
    sql = f"SELECT EXISTS (SELECT 1 FROM {stage.source} WHERE ({stage.due}) AND {_not_claimed(stage)})"
    bound = {**stage.params, **(params or {}), "_stage": stage.name}
    return bool(conn.execute(sa.text(sql), bound).scalar())
