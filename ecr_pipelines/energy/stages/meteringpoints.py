"""The metering-point import: each due customer's points fetched from ElOverblik and stored
(no Dagster).

One item is one ``energy.customer`` row whose ``next_import`` has come. Onboarding (a new row,
or ``onboard``) makes it due at once; after each import the next one is due 10 min, 30 min, 1 h,
2 h and 6 h after onboarding (the legacy's fallback imports, for points that reach ElOverblik
late), then never again until the customer is onboarded anew. A failed import is such a step
too: the next fallback is its retry, and the error stays on the customer's row.

For each customer: points already known (under any customer) are skipped, child points are not
imported, other types are refused with their reason (``map_point``); a new production point gets
its technology and fuel codes from the EnergyTypeService, and a production point of the customer
still without codes is asked again. In one transaction the new points are inserted, codes
stored, and ``ON_METERINGPOINT_AVAILABLE`` queued for every point that became available
(consumption at once; production only with its codes, as the legacy); the webhooks are sent
after the commit.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.energy import webhooks
from ecr_pipelines.energy.eloverblik import EloverblikClient, EloverblikError
from ecr_pipelines.energy.energytypes import EnergyTypeClient, EnergyTypeError
from ecr_pipelines.energy.meteringpoints import MappedPoint, Refused, map_point
from ecr_pipelines.lib.batch import Outcome, Stage, StageReport, clip, run_stage
from ecr_pipelines.lib.http import ErrorKind, FetchError

# When the imports after onboarding are due (the first at once).
IMPORT_AFTER: tuple[timedelta, ...] = (
    timedelta(0),
    timedelta(minutes=10),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=6),
)
NO_ENERGY_TYPE_SERVICE = "ENERGY_TYPE_SERVICE_URL is not set"
UPSTREAM_DOWN = {ErrorKind.CONNECTION, ErrorKind.TIMEOUT, ErrorKind.SSL}

STAGE = Stage(
    name="energy_meteringpoints",
    table="energy.customer",
    key="sub",
    due="t.next_import IS NOT NULL AND t.next_import <= now()",
    columns="t.sub, t.onboarded, t.imports_done",
    order="t.next_import, t.sub",
)


def onboard(conn: Connection, sub: str) -> None:
    """Start (or start again) a customer's imports: one now, then the fallbacks."""
    if not sub.strip():
        raise ValueError("sub must not be empty")
    conn.execute(
        sa.text(
            "INSERT INTO energy.customer (sub) VALUES (:sub) ON CONFLICT (sub) DO UPDATE SET "
            "onboarded = now(), imports_done = 0, next_import = now(), error = NULL, error_kind = NULL"
        ),
        {"sub": sub.strip()},
    )


def next_import(onboarded: datetime, done: int, now: datetime) -> datetime | None:
    """The next fallback after ``done`` imports; steps already past are skipped, so a daemon that
    was down does not fire them all at once."""
    for step in IMPORT_AFTER[done:]:
        if onboarded + step > now:
            return onboarded + step
    return None


@dataclass
class Found:
    """What one customer's import found (``Outcome.data``)."""

    sub: str
    onboarded: datetime
    imports_done: int
    listed: int = 0
    new: list[MappedPoint] = field(default_factory=list)
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # gsrn -> (technology, fuel)
    code_errors: dict[str, str] = field(default_factory=dict)  # gsrn -> why there are none
    refused: list[Refused] = field(default_factory=list)
    error: tuple[str, str] | None = None  # kind, message: the import itself failed


def _energy_types(
    gsrns: Sequence[str], energy_types: EnergyTypeClient | None, found: Found
) -> FetchError | None:
    for gsrn in gsrns:
        if energy_types is None:
            found.code_errors[gsrn] = NO_ENERGY_TYPE_SERVICE
            continue
        try:
            found.codes[gsrn] = energy_types.energy_type(gsrn)
        except EnergyTypeError as exc:
            found.code_errors[gsrn] = f"{exc.kind}: {exc}"
        except FetchError as exc:
            found.code_errors[gsrn] = str(exc)
            if exc.kind in UPSTREAM_DOWN:
                return exc
    return None


def import_customer(
    row: Any, engine: Engine, client: EloverblikClient, energy_types: EnergyTypeClient | None
) -> Outcome:
    found = Found(row.sub, row.onboarded, row.imports_done)
    try:
        raw = client.meteringpoints(row.sub)
    except (FetchError, EloverblikError) as exc:
        kind = exc.kind.value if isinstance(exc, FetchError) else exc.kind
        found.error = (kind, clip(str(exc)))
        return Outcome(row.sub, "failed", error=kind, message=clip(str(exc)), data=found)
    found.listed = len(raw)
    mapped: list[MappedPoint] = []
    for item in raw:
        point = map_point(item)
        if isinstance(point, Refused):
            found.refused.append(point)
        else:
            mapped.append(point)
    with engine.connect() as conn:
        known = set(
            conn.execute(
                sa.text("SELECT gsrn FROM energy.meteringpoint WHERE gsrn = ANY(:g)"),
                {"g": [p.gsrn for p in mapped]},
            ).scalars()
        )
        uncoded = list(
            conn.execute(
                sa.text(
                    "SELECT gsrn FROM energy.meteringpoint WHERE sub = :sub AND type = 'PRODUCTION' "
                    "AND NOT disabled AND (technology_code IS NULL OR fuel_code IS NULL) ORDER BY gsrn"
                ),
                {"sub": row.sub},
            ).scalars()
        )
    found.new = [p for p in mapped if p.gsrn not in known]
    down = _energy_types([p.gsrn for p in found.new if p.is_production] + uncoded, energy_types, found)
    counts = {"meteringpoints_new": len(found.new), "meteringpoints_refused": len(found.refused)}
    if found.refused:
        message = "; ".join(f"{r.gsrn}: {r.reason}" for r in found.refused)
        return Outcome(
            row.sub, "partial", error="refused_type", message=clip(message), data=found, counts=counts
        )
    if down is not None:
        # The codes are asked for again at the customer's next import; the points are stored now.
        return Outcome(row.sub, "done", message=f"energy types: {down}", data=found, counts=counts)
    return Outcome(row.sub, "done", data=found, counts=counts)


def record(conn: Connection, outcomes: Sequence[Outcome], *, now: datetime | None = None) -> None:
    available: list[int] = []
    for outcome in outcomes:
        found: Found = outcome.data
        for point in found.new:
            codes = found.codes.get(point.gsrn)
            inserted = conn.execute(
                sa.text(
                    "INSERT INTO energy.meteringpoint (sub, gsrn, type, sector, technology_code, fuel_code, "
                    "street_code, street_name, building_number, city_name, postcode, municipality_code, "
                    "energy_type_checked, energy_type_error) VALUES (:sub, :gsrn, :type, :sector, :tech, :fuel, "
                    ":street_code, :street_name, :building_number, :city_name, :postcode, :municipality_code, "
                    "CASE WHEN :production THEN now() END, :code_error) "
                    "ON CONFLICT (gsrn) DO NOTHING RETURNING id"
                ),
                {
                    "sub": found.sub,
                    "gsrn": point.gsrn,
                    "type": point.type,
                    "sector": point.sector,
                    "tech": codes[0] if codes else None,
                    "fuel": codes[1] if codes else None,
                    "production": point.is_production,
                    "code_error": found.code_errors.get(point.gsrn),
                    **point.address,
                },
            ).scalar()
            if inserted is not None and (not point.is_production or codes):
                available.append(inserted)
        new = {p.gsrn for p in found.new}
        for gsrn, (technology, fuel) in found.codes.items():
            if gsrn in new:
                continue
            coded = conn.execute(
                sa.text(
                    "UPDATE energy.meteringpoint SET technology_code = :tech, fuel_code = :fuel, "
                    "energy_type_checked = now(), energy_type_error = NULL "
                    "WHERE gsrn = :gsrn AND (technology_code IS NULL OR fuel_code IS NULL) RETURNING id"
                ),
                {"gsrn": gsrn, "tech": technology, "fuel": fuel},
            ).scalar()
            if coded is not None:
                available.append(coded)
        for gsrn, error in found.code_errors.items():
            if gsrn not in new:
                conn.execute(
                    sa.text(
                        "UPDATE energy.meteringpoint SET energy_type_checked = now(), energy_type_error = :e "
                        "WHERE gsrn = :gsrn AND technology_code IS NULL"
                    ),
                    {"gsrn": gsrn, "e": clip(error)},
                )
        when = now or datetime.now(UTC)
        error_kind, error = found.error or (
            ("refused_type", outcome.message) if found.refused else (None, None)
        )
        conn.execute(
            sa.text(
                "UPDATE energy.customer SET imports_done = imports_done + 1, last_import = now(), "
                "next_import = :next, meteringpoints_found = coalesce(:listed, meteringpoints_found), "
                "error = :error, error_kind = :kind WHERE sub = :sub"
            ),
            {
                "sub": found.sub,
                "next": next_import(found.onboarded, found.imports_done + 1, when),
                "listed": None if found.error else found.listed,
                "error": error,
                "kind": error_kind,
            },
        )
    if available:
        webhooks.queue_meteringpoints_available(conn, available)


def import_due(
    engine: Engine,
    client: EloverblikClient,
    energy_types: EnergyTypeClient | None,
    *,
    run_id: str = "",
    limit: int | None = None,
    batch_size: int = 10,
    progress: Callable[[str], None] | None = None,
    committed: Callable[[list[Outcome]], None] | None = None,
) -> StageReport:
    """Import every due customer's metering points."""

    def process(rows: Sequence[Any]) -> list[Outcome]:
        return [import_customer(row, engine, client, energy_types) for row in rows]

    return run_stage(
        engine,
        STAGE,
        process,
        record,
        run_id=run_id,
        limit=limit,
        batch_size=batch_size,
        committed=committed,
        **({"progress": progress} if progress else {}),
    )
