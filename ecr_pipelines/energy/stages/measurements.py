"""The measurement import: every active metering point's new hours from ElOverblik, with their
GGOs, published and announced (no Dagster).

One item is one active ``energy.meteringpoint`` (``disabled = false``); every run looks at all
of them (the legacy's four daily imports), and a point whose window is empty costs no call. The
window, the flattening and the unit rules are in ``energy.measurements``.

Per batch of points: the time series are fetched a few points at a time (``workers``) outside
any transaction, then in one transaction the rows are copied into ``energy.measurement``
(published, as the legacy's chain left them once its ledger submission was switched off), the
GGOs of the batch's production points with codes are issued by one ``INSERT .. SELECT`` (amount
> 0, ``expire_time = issue_time + GGO_EXPIRE_TIME``, the point's emissions fetched once per run),
the webhooks are queued and the points' import state is written. A point that fails (a refused
call, an unreadable answer) keeps its error in ``measure_error`` and the others go on; when
ElOverblik itself is down the run stops after the batch instead of calling it for every point.

No hour is stored twice: the window starts after the last stored hour, an answer's repeated
hours are dropped, and ``UNIQUE (gsrn, begin)`` is the last word (a batch it refuses is recorded
point by point, the refused point failing alone).
"""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.energy import webhooks
from ecr_pipelines.energy.eloverblik import EloverblikClient, EloverblikError
from ecr_pipelines.energy.energytypes import EnergyTypeClient, EnergyTypeError
from ecr_pipelines.energy.measurements import Flattener, SeriesError, Window, import_window
from ecr_pipelines.lib.batch import Outcome, Stage, StageReport, clip, run_stage
from ecr_pipelines.lib.copy import copy_rows
from ecr_pipelines.lib.http import ErrorKind, FetchError

DEFAULT_EXPIRE = timedelta(days=90)
BATCH_SIZE = 20
WORKERS = 4
UPSTREAM_DOWN = {ErrorKind.CONNECTION, ErrorKind.TIMEOUT, ErrorKind.SSL}

STAGE = Stage(
    name="energy_measurements",
    table="energy.meteringpoint",
    due="NOT t.disabled",
    columns=(
        "t.id, t.gsrn, t.sub, t.type::text AS type, t.technology_code, t.fuel_code, "
        "(SELECT max(m.begin) FROM energy.measurement m WHERE m.gsrn = t.gsrn) AS last_begin"
    ),
    order="t.id",
)


@dataclass(frozen=True)
class ImportSettings:
    first: datetime | None = None  # FIRST_MEASUREMENT_TIME
    last: datetime | None = None  # LAST_MEASUREMENT_TIME
    expire: timedelta = DEFAULT_EXPIRE  # GGO_EXPIRE_TIME
    workers: int = WORKERS


@dataclass
class Imported:
    """One point's new hours (``Outcome.data``)."""

    meteringpoint_id: int
    gsrn: str
    window: Window | None
    rows: list[tuple[str, ...]] = field(default_factory=list)
    issue_ggos: bool = False
    emissions: dict[str, Any] | None = None
    error: tuple[str, str] | None = None


def _issues_ggos(row: Any) -> bool:
    # Since 2021-01 the legacy issues only for production points with both codes known.
    return row.type == "PRODUCTION" and bool(row.technology_code) and bool(row.fuel_code)


class _Importer:
    def __init__(
        self,
        client: EloverblikClient,
        energy_types: EnergyTypeClient | None,
        settings: ImportSettings,
        now: datetime,
    ) -> None:
        self.client = client
        self.energy_types = energy_types
        self.settings = settings
        self.now = now
        self.flattener = Flattener()
        self.emissions: dict[str, dict[str, Any]] = {}  # once per point per run

    def fetch(self, row: Any) -> Outcome:
        key = str(row.id)
        window = import_window(
            row.last_begin, now=self.now, first=self.settings.first, last=self.settings.last
        )
        data = Imported(row.id, row.gsrn, window)
        if window is None:
            return Outcome(key, "current", data=data)
        try:
            entries = self.client.timeseries([row.gsrn], window.date_from, window.date_to)
            data.rows, ignored = self.flattener.rows(entries, row.gsrn, window)
            data.issue_ggos = _issues_ggos(row)
            # Amounts are integer texts: "0" and negatives get no GGO.
            ggos = sum(1 for r in data.rows if r[3][0] not in "0-") if data.issue_ggos else 0
            if ggos:
                data.emissions = self._emissions(row.gsrn)
        except FetchError as exc:
            data.error, data.rows = (exc.kind.value, clip(str(exc))), []
            down = exc.kind in UPSTREAM_DOWN or exc.status == 401
            stop = (
                f"ElOverblik or the EnergyTypeService is unreachable or refuses us: {exc}" if down else None
            )
            return Outcome(key, "failed", error=exc.kind.value, message=clip(str(exc)), data=data, stop=stop)
        except (EloverblikError, SeriesError, EnergyTypeError) as exc:
            data.error, data.rows = (exc.kind, clip(str(exc))), []
            return Outcome(key, "failed", error=exc.kind, message=clip(str(exc)), data=data)
        counts = {"measurements": len(data.rows), "ggos": ggos, "hours_ignored": ignored}
        return Outcome(key, "imported" if data.rows else "nothing_new", data=data, counts=counts)

    def _emissions(self, gsrn: str) -> dict[str, Any]:
        if gsrn not in self.emissions:
            self.emissions[gsrn] = self.energy_types.emissions(gsrn) if self.energy_types else {}
        return self.emissions[gsrn]


def _has_subscribers(conn: Connection) -> bool:
    # Most runs have no subscriber for the batch's customers: then nothing is collected at all.
    return bool(
        conn.exec_driver_sql(
            "SELECT EXISTS (SELECT 1 FROM energy.webhook_subscription s JOIN import_window w ON s.subject = w.sub "
            "WHERE s.event IN ('ON_MEASUREMENT_PUBLISHED', 'ON_GGOS_ISSUED'))"
        ).scalar()
    )


def record(conn: Connection, outcomes: Sequence[Outcome], *, expire: timedelta, now: datetime) -> None:
    imported = [o.data for o in outcomes if o.data is not None and o.data.rows]
    if imported:
        copy_rows(
            conn,
            "energy.measurement",
            ["gsrn", "begin", "end", "amount", "published"],
            ((*row, "t") for data in imported for row in data.rows),
        )
        conn.exec_driver_sql(
            "CREATE TEMPORARY TABLE import_window (gsrn varchar, begin timestamptz, sub varchar, issue_ggos boolean, "
            "emissions jsonb) ON COMMIT DROP"
        )
        conn.execute(
            sa.text(
                "INSERT INTO import_window SELECT w.gsrn, w.begin, p.sub, w.issue_ggos, "
                "CAST(w.emissions AS jsonb) FROM unnest(CAST(:gsrns AS text[]), CAST(:begins AS timestamptz[]), "
                "CAST(:issue AS boolean[]), CAST(:emissions AS text[])) "
                "AS w(gsrn, begin, issue_ggos, emissions) JOIN energy.meteringpoint p ON p.gsrn = w.gsrn"
            ),
            {
                "gsrns": [d.gsrn for d in imported],
                "begins": [d.window.begin for d in imported],
                "issue": [d.issue_ggos for d in imported],
                "emissions": [
                    orjson.dumps(d.emissions).decode() if d.emissions is not None else None for d in imported
                ],
            },
        )
        conn.execute(
            sa.text(
                # LATERAL with OFFSET 0 (which keeps the planner from flattening it): one index range
                # scan per point. A plain join was planned as a scan of the whole table, every batch.
                "INSERT INTO energy.ggo (issue_time, expire_time, measurement_id, emissions) "
                "SELECT :now, :expire, m.id, w.emissions FROM import_window w CROSS JOIN LATERAL "
                "(SELECT m.id FROM energy.measurement m WHERE m.gsrn = w.gsrn AND m.begin >= w.begin "
                "AND m.amount > 0 OFFSET 0) m WHERE w.issue_ggos"
            ),
            {"now": now, "expire": now + expire},
        )
        if _has_subscribers(conn):
            conn.exec_driver_sql(
                "CREATE TEMPORARY TABLE new_measurement ON COMMIT DROP AS SELECT m.id FROM import_window w "
                "CROSS JOIN LATERAL (SELECT m.id FROM energy.measurement m WHERE m.gsrn = w.gsrn "
                "AND m.begin >= w.begin OFFSET 0) m"
            )
            webhooks.queue_measurement_events(conn, "new_measurement")
    conn.execute(
        sa.text(
            "UPDATE energy.meteringpoint p SET measured = now(), measure_error = u.error, "
            "measure_error_kind = u.kind FROM unnest(CAST(:ids AS integer[]), CAST(:errors AS text[]), CAST(:kinds AS text[])) AS u(id, error, kind) WHERE p.id = u.id"
        ),
        {
            "ids": [o.data.meteringpoint_id for o in outcomes if o.data is not None],
            "errors": [o.data.error[1] if o.data.error else None for o in outcomes if o.data is not None],
            "kinds": [o.data.error[0] if o.data.error else None for o in outcomes if o.data is not None],
        },
    )


def import_due(
    engine: Engine,
    client: EloverblikClient,
    energy_types: EnergyTypeClient | None,
    settings: ImportSettings = ImportSettings(),
    *,
    now: datetime | None = None,
    run_id: str = "",
    limit: int | None = None,
    batch_size: int = BATCH_SIZE,
    progress: Callable[[str], None] | None = None,
    committed: Callable[[list[Outcome]], None] | None = None,
) -> StageReport:
    """Import the new hours of every active metering point."""
    now = now or datetime.now(UTC)
    importer = _Importer(client, energy_types, settings, now)
    with ThreadPoolExecutor(max_workers=max(1, settings.workers), thread_name_prefix="eloverblik") as pool:

        def process(rows: Sequence[Any]) -> list[Outcome]:
            return list(pool.map(importer.fetch, rows))

        return run_stage(
            engine,
            STAGE,
            process,
            lambda conn, outcomes: record(conn, outcomes, expire=settings.expire, now=now),
            run_id=run_id,
            limit=limit,
            batch_size=batch_size,
            committed=committed,
            # ElOverblik is read for the next batch while this one is copied into Postgres.
            prefetch=True,
            **({"progress": progress} if progress else {}),
        )
