"""Disclosures: creating one, and compiling it (the ledger's retired GGOs plus the public JSON
document in the blob store), on the batch-stage runner (no Dagster).

``create_disclosure`` is the legacy's ``POST /disclosure/create`` as a function the Dagster job
calls: every GSRN must be one of the caller's active consumption points; the disclosure starts
``PENDING``.

Compile, one item per disclosure. Due: ``PENDING``, or ``PROCESSING`` left by a run that died;
with ``all`` (the nightly run, as the legacy's 03:00 task) every disclosure. A disclosure whose
last compile failed waits ``retry_after`` seconds before it is due again (the legacy retried
every 15 s for 12 h; a failing ledger here would otherwise be asked again on every sensor tick).

* claim: the state becomes ``PROCESSING``;
* process, outside any transaction: the disclosure's measurements (published, of active points,
  ``begin`` within [first day 00:00 UTC, the day after the last 00:00 UTC], both ends included as
  in the legacy); for each, the settlement at its ``SETTLEMENT`` address (nothing there: nothing
  was retired to that hour); for each settlement part whose GGO is not yet recorded for that
  settlement, the GGO. A few reads run at once (``workers``). Every compile reads every
  settlement again, as the legacy did: more may have been retired to an hour since;
* record, in one transaction per batch: the settlements and GGOs (``ON CONFLICT DO NOTHING``, so a
  recompile adds nothing twice), then the state ``AVAILABLE``, ``compiled``, no error, and the
  public view (``disclosure.disclosure_view`` with the default request, computed in that
  transaction) written to ``energy/disclosures/<public_id>.json`` as the last thing before the
  commit. A store that refuses leaves the disclosure ``PENDING`` with the error.

A failed ledger read (a refused call, an error code other than 75, a malformed document) fails
that disclosure alone: what was read before is recorded, the state goes back to ``PENDING`` with
the error (kind from ``lib/http``, or ``ledger_error`` / ``ledger_invalid``), and the others go on.
When the ledger cannot be reached at all the run stops after the batch.

Without ``LEDGER_URL`` nothing is read from the ledger: nothing retired, and the document is
still compiled (outcome ``compiled_without_ledger`` says so). A point without a ledger key has
no addresses (nothing retired to it); a point whose key is not a BIP32 extended private key is
not read either, and the outcome ``compiled_with_invalid_keys`` names it.
"""

import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.energy.disclosure import (
    CreateRequest,
    disclosure_key,
    disclosure_view,
    refusal_for,
    validate_create,
    view_json,
)
from ecr_pipelines.energy.ledger import (
    SETTLEMENT,
    LedgerClient,
    LedgerError,
    LedgerGgo,
    address_of,
    error_kind,
)
from ecr_pipelines.lib.batch import Outcome, Progress, Stage, StageReport, clip, run_stage
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.http import ErrorKind, FetchError
from ecr_pipelines.lib.sql import Sql

log = logging.getLogger(__name__)

BATCH_SIZE = 1  # one disclosure may have 10^5 hours: each is recorded as soon as it is read
WORKERS = 8
RETRY_AFTER = 300
LEDGER_DOWN = {ErrorKind.CONNECTION, ErrorKind.TIMEOUT, ErrorKind.SSL}
NO_LEDGER = "LEDGER_URL is not set: nothing was read from the ledger, so nothing retired is shown"

STAGE = Stage(
    name="energy_disclosures",
    table="energy.disclosure",
    alias="d",
    due=(
        "(:all OR (d.state IN ('PENDING', 'PROCESSING') AND (d.error IS NULL OR d.compiled IS NULL "
        "OR d.compiled < now() - make_interval(secs => :retry_after))))"
    ),
    columns='d.id, d.public_id, d.begin, d."end"',
    order="d.created, d.id",
    on_claim="state = 'PROCESSING'",
    params={"all": False, "retry_after": RETRY_AFTER},
)


# -- create and delete --------------------------------------------------------------------------


def create_disclosure(conn: Connection, sub: str, request: dict[str, Any]) -> str:
    """Validate ``request`` (the legacy's camelCase fields) for the customer ``sub`` and insert
    the disclosure (``PENDING``) with its metering points, in the caller's transaction; returns
    its public id. ``DisclosureRefused`` (nothing written) names what is wrong."""
    checked: CreateRequest = validate_create(request)
    eligible = set(
        conn.execute(
            sa.text(
                "SELECT gsrn FROM energy.meteringpoint WHERE sub = :sub AND gsrn = ANY(:gsrn) "
                "AND type = 'CONSUMPTION' AND NOT disabled"
            ),
            {"sub": sub, "gsrn": list(checked.gsrn)},
        ).scalars()
    )
    for gsrn in checked.gsrn:
        if gsrn not in eligible:
            raise refusal_for(gsrn)
    public_id = str(uuid.uuid4())
    disclosure_id = conn.execute(
        sa.text(
            'INSERT INTO energy.disclosure (public_id, state, sub, begin, "end", name, description, '
            "max_resolution, publicize_meteringpoints, publicize_gsrn, publicize_physical_address) "
            "VALUES (:public_id, 'PENDING', :sub, :begin, :end, :name, :description, "
            "CAST(:max_resolution AS energy.summaryresolution), :meteringpoints, :gsrn, :address) RETURNING id"
        ),
        {
            "public_id": public_id,
            "sub": sub,
            "begin": checked.begin,
            "end": checked.end,
            "name": checked.name,
            "description": checked.description,
            "max_resolution": checked.max_resolution,
            "meteringpoints": checked.publicize_meteringpoints,
            "gsrn": checked.publicize_gsrn,
            "address": checked.publicize_physical_address,
        },
    ).scalar_one()
    conn.execute(
        sa.text(
            "INSERT INTO energy.disclosure_meteringpoint (disclosure_id, gsrn) "
            "SELECT :id, gsrn FROM unnest(CAST(:gsrn AS varchar[])) AS g (gsrn)"
        ),
        {"id": disclosure_id, "gsrn": list(checked.gsrn)},
    )
    return public_id


def delete_disclosure(
    conn: Connection, public_id: str, *, sub: str | None = None, store: BlobStore | None = None
) -> bool:
    """Delete a disclosure (its points, settlements and GGOs go with it); False when there is
    none (of ``sub``, when given). With ``store`` its public document is deleted too, as the last
    thing before the caller's commit: a store that refuses rolls the deletion back."""
    row = conn.execute(
        sa.text(
            "DELETE FROM energy.disclosure WHERE public_id = :public_id AND (CAST(:sub AS varchar) IS NULL "
            "OR sub = :sub) RETURNING blob_key"
        ),
        {"public_id": public_id, "sub": sub},
    ).first()
    if row is None:
        return False
    if store is not None:
        store.delete(row.blob_key or disclosure_key(public_id))
    return True


# -- compile ------------------------------------------------------------------------------------


@dataclass
class Compiled:
    """What one disclosure's ledger reads gave (``Outcome.data``)."""

    disclosure_id: int
    public_id: str
    settlements: list[tuple[int, str]] = field(default_factory=list)  # measurement id, address
    ggos: list[tuple[str, LedgerGgo]] = field(default_factory=list)  # settlement address, GGO
    error: tuple[str, str] | None = None  # kind, message


@dataclass(frozen=True)
class _Hour:
    measurement_id: int
    settlement: str


def _window(row: Any) -> tuple[datetime, datetime]:
    return (
        datetime.combine(row.begin, time(), UTC),
        datetime.combine(row.end + timedelta(days=1), time(), UTC),
    )


def _hours(engine: Engine, row: Any) -> tuple[list[_Hour], dict[str, set[str]], int, list[str]]:
    """The disclosure's measurements with their settlement addresses, the GGO addresses already
    recorded per settlement, the count of measurements of points without a key, and the GSRNs of
    points whose key is not a valid one."""
    begin, end = _window(row)
    with engine.connect() as conn:
        measurements = conn.execute(
            sa.text(
                "SELECT m.id, m.gsrn, m.begin, mp.ledger_extended_key AS key "
                "FROM energy.disclosure_meteringpoint dm "
                "JOIN energy.meteringpoint mp ON mp.gsrn = dm.gsrn AND NOT mp.disabled "
                "JOIN energy.measurement m ON m.gsrn = dm.gsrn "
                "WHERE dm.disclosure_id = :id AND m.published AND m.begin >= :begin AND m.begin <= :end "
                "ORDER BY m.gsrn, m.begin"
            ),
            {"id": row.id, "begin": begin, "end": end},
        ).all()
        known: dict[str, set[str]] = {}
        for settlement, ggo in conn.execute(
            sa.text(
                "SELECT s.address, g.address FROM energy.disclosure_settlement s "
                "JOIN energy.disclosure_ggo g ON g.settlement_id = s.id WHERE s.disclosure_id = :id"
            ),
            {"id": row.id},
        ):
            known.setdefault(settlement, set()).add(ggo)
    hours: list[_Hour] = []
    without_key = 0
    bad_keys: dict[str, None] = {}
    for m in measurements:
        if m.gsrn in bad_keys:
            continue
        try:
            where = address_of(m.key, SETTLEMENT, m.begin)
        except ValueError:
            bad_keys[m.gsrn] = None
            continue
        if where is None:
            without_key += 1
        else:
            hours.append(_Hour(m.id, where))
    return hours, known, without_key, list(bad_keys)


class _Reader:
    """One disclosure's ledger reads, a few at a time; the first failure stops the rest."""

    def __init__(self, client: LedgerClient, known: dict[str, set[str]]) -> None:
        self.client = client
        self.known = known
        self.failed = threading.Event()
        self.reads = 0
        self.missing_ggos = 0
        self._lock = threading.Lock()

    def _count(self, missing: int = 0) -> None:
        with self._lock:
            self.reads += 1
            self.missing_ggos += missing

    def read(self, hour: _Hour) -> tuple[_Hour, list[LedgerGgo]] | None:
        if self.failed.is_set():
            return None
        settlement = self.client.get_settlement(hour.settlement)
        self._count()
        if settlement is None:
            return None
        recorded = self.known.get(hour.settlement, set())
        ggos: list[LedgerGgo] = []
        for ggo_address in dict.fromkeys(part.ggo for part in settlement.parts):
            if ggo_address in recorded or self.failed.is_set():
                continue
            ggo = self.client.get_ggo(ggo_address)
            # A part whose GGO is not there: left out now, asked for again at the next compile.
            self._count(missing=ggo is None)
            if ggo is not None:
                ggos.append(ggo)
        return hour, ggos


def compile_one(engine: Engine, client: LedgerClient | None, row: Any, workers: int = WORKERS) -> Outcome:
    """Read what the ledger holds for one disclosure; never raises for the disclosure's own
    trouble (the outcome carries it)."""
    data = Compiled(row.id, row.public_id)
    key = row.public_id
    hours, known, without_key, bad_keys = _hours(engine, row)
    counts = {"measurements": len(hours) + without_key, "measurements_without_key": without_key}
    if client is None:
        return Outcome(key, "compiled_without_ledger", message=NO_LEDGER, data=data, counts=counts)
    reader = _Reader(client, known)
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="energy-ledger") as pool:
        futures = [pool.submit(reader.read, hour) for hour in hours]
        wait(futures, return_when=FIRST_EXCEPTION)
        reader.failed.set()  # after a failure the queued reads return at once
        for future in futures:
            # Every future is done here (the pool's exit waits for the rest); what was read
            # before a failure is kept.
            try:
                result = future.result()
            except Exception as exc:
                failure = failure or exc
                continue
            if result is not None:
                hour, ggos = result
                data.settlements.append((hour.measurement_id, hour.settlement))
                data.ggos.extend((hour.settlement, ggo) for ggo in ggos)
    counts.update(
        ledger_reads=reader.reads,
        settlements=len(data.settlements),
        ggos_read=len(data.ggos),
        ggos_missing=reader.missing_ggos,
    )
    if failure is not None:
        kind = error_kind(failure)
        message = clip(str(failure) if isinstance(failure, FetchError | LedgerError) else repr(failure))
        data.error = (kind, message)
        down = isinstance(failure, FetchError) and failure.kind in LEDGER_DOWN
        stop = f"the ledger cannot be reached: {failure}" if down else None
        return Outcome(key, "failed", error=kind, message=message, data=data, counts=counts, stop=stop)
    if bad_keys:
        message = f"points whose ledger key is not a BIP32 extended private key (nothing read): {', '.join(bad_keys)}"
        return Outcome(key, "compiled_with_invalid_keys", message=message, data=data, counts=counts)
    return Outcome(key, "compiled", data=data, counts=counts)


def _record_reads(sql: Sql, data: Compiled) -> None:
    sql.values(
        "INSERT INTO energy.disclosure_settlement (disclosure_id, measurement_id, address) VALUES %s "
        "ON CONFLICT DO NOTHING",
        [(data.disclosure_id, measurement_id, where) for measurement_id, where in data.settlements],
    )
    sql.values(
        """
        INSERT INTO energy.disclosure_ggo
            (settlement_id, address, amount, begin, "end", sector, technology_code, fuel_code)
        SELECT s.id, v.address, v.amount, v.begin, v."end", v.sector, v.technology_code, v.fuel_code
        FROM (VALUES %s) AS v
            (disclosure_id, settlement, address, amount, begin, "end", sector, technology_code, fuel_code)
        JOIN energy.disclosure_settlement s ON s.disclosure_id = v.disclosure_id AND s.address = v.settlement
        ON CONFLICT (settlement_id, address) DO NOTHING
        """,
        [
            (
                data.disclosure_id,
                settlement,
                ggo.address,
                ggo.amount,
                ggo.begin,
                ggo.end,
                ggo.sector,
                ggo.tech_type,
                ggo.fuel_type,
            )
            for settlement, ggo in data.ggos
        ],
        template="(%s::integer, %s, %s, %s::integer, %s::timestamptz, %s::timestamptz, %s, %s, %s)",
    )


_FAILED = (
    "UPDATE energy.disclosure SET state = 'PENDING', compiled = now(), error = :error, "
    "error_kind = :kind WHERE id = :id"
)


def _publish(conn: Connection, store: BlobStore, data: Compiled) -> None:
    """State AVAILABLE and the document written, or (the store refused) rolled back to before
    and the disclosure PENDING with the error."""
    key = disclosure_key(data.public_id)
    savepoint = conn.begin_nested()
    try:
        conn.execute(
            sa.text(
                "UPDATE energy.disclosure SET state = 'AVAILABLE', compiled = now(), error = NULL, "
                "error_kind = NULL, blob_key = :key WHERE id = :id"
            ),
            {"id": data.disclosure_id, "key": key},
        )
        document = view_json(disclosure_view(conn, data.public_id))
        store.put_bytes(key, document, "application/json")
    except Exception:
        savepoint.rollback()
        raise
    savepoint.commit()


def record(conn: Connection, outcomes: Sequence[Outcome], store: BlobStore) -> None:
    sql = Sql(conn)
    for outcome in outcomes:
        data: Compiled = outcome.data
        exists = conn.execute(
            sa.text("SELECT 1 FROM energy.disclosure WHERE id = :id FOR UPDATE"), {"id": data.disclosure_id}
        ).first()
        if exists is None:  # deleted while its ledger reads ran
            outcome.kind, outcome.error, outcome.message = "deleted", None, "deleted while it compiled"
            continue
        _record_reads(sql, data)
        if data.error is not None:
            kind, message = data.error
            conn.execute(sa.text(_FAILED), {"id": data.disclosure_id, "kind": kind, "error": message})
            continue
        try:
            _publish(conn, store, data)
        except Exception as exc:  # the blob store (or the view's query) refused
            message = clip(f"the public document could not be written: {type(exc).__name__}: {exc}")
            conn.execute(sa.text(_FAILED), {"id": data.disclosure_id, "kind": "blob_store", "error": message})
            # The outcome is the report's: it says what happened to the item in the end.
            outcome.kind, outcome.error, outcome.message = "failed", "blob_store", message
            log.warning("disclosure %s: %s", data.public_id, message)


def refused(outcome: Outcome, exc: BaseException) -> Outcome:
    """A disclosure whose ledger data the database would not take: failed with the reason (its
    settlements and GGOs are dropped), so that it is not due again at once."""
    message = clip(f"the database refused this disclosure's ledger data: {type(exc).__name__}: {exc}")
    data = Compiled(outcome.data.disclosure_id, outcome.data.public_id, error=("refused", message))
    return Outcome(outcome.key, "failed", error="refused", message=message, data=data)


def compile_due(
    engine: Engine,
    session: requests.Session,
    store: BlobStore,
    *,
    ledger_url: str | None,
    all: bool = False,
    run_id: str = "",
    progress: Progress | None = None,
    limit: int | None = None,
    workers: int = WORKERS,
    retry_after: int = RETRY_AFTER,
    committed: Callable[[list[Outcome]], None] | None = None,
) -> StageReport:
    """Compile every due disclosure (with ``all``: every disclosure); see the module docstring."""
    client = LedgerClient(session, ledger_url) if ledger_url else None
    if client is None:
        (progress or log.info)(f"{STAGE.name}: {NO_LEDGER}")

    def process(rows: Sequence[Any]) -> list[Outcome]:
        return [compile_one(engine, client, row, workers) for row in rows]

    return run_stage(
        engine,
        STAGE,
        process,
        lambda conn, outcomes: record(conn, outcomes, store),
        params={"all": all, "retry_after": retry_after},
        batch_size=BATCH_SIZE,
        limit=limit,
        run_id=run_id,
        progress=progress or log.info,
        refused=refused,
        committed=committed,
    )
