"""The energy hub's measurement import at scale: metering points × one year of hours from the
stand-in ElOverblik (served by a child process), half of the points producing (a GGO for every
hour), through ``energy.stages.measurements.import_due`` into a throwaway database.

Prints, per size: measurements and GGOs stored, seconds, measurements/s (GGOs included in the
time), and the importing process's peak RSS (``VmHWM``), each size in a child process of its own
so the peaks are comparable (flat memory: the peak does not grow with the number of points).
The baseline, in the same run, is the legacy's way on a small sample: per hour an existence
query, then the measurement and its GGO inserted one by one (ORM-style), in one transaction per
point. No asserts; the figures are for reading. Target: at least 50,000 measurements/s.

    .venv/bin/python benchmarks/energy_import.py                  # 100 and 1,000 points × 365 days
    .venv/bin/python benchmarks/energy_import.py --points 200 --days 30   # a quick run
"""

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from _database import benchmark_database

from ecr_pipelines.lib.database import ensure_database
from ecr_pipelines.lib.migrations import upgrade

FIRST = datetime(2019, 1, 1, tzinfo=UTC)
BASELINE_POINTS = 4


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def gsrn(number: int) -> str:
    return f"5713131800{number:08d}"


def serve(points: int) -> None:
    """Child: the stand-ins with every point's series; prints the environment, serves until killed."""
    from ecr_pipelines.dev.standins import StandInServer
    from ecr_pipelines.dev.standins.eloverblik import EloverblikStandIn, EnergyTypeStandIn

    server = StandInServer().start()
    eloverblik, types = EloverblikStandIn(server), EnergyTypeStandIn(server)
    for number in range(points):
        producing = number % 2 == 0
        eloverblik.serve_synthetic(gsrn(number), quantity="1.25" if producing else "0.5")
        if producing:
            types.set_type(gsrn(number), "T020000", "F01050100")
            types.set_emissions(gsrn(number))
    print(json.dumps({**eloverblik.env(), **types.env()}), flush=True)
    while True:
        time.sleep(3600)


def seed(url: str, points: int) -> None:
    engine = sa.create_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE energy.ggo, energy.measurement, energy.meteringpoint RESTART IDENTITY CASCADE"
        )
        conn.execute(
            sa.text(
                "INSERT INTO energy.meteringpoint (sub, gsrn, type, sector, technology_code, fuel_code) "
                "SELECT 'bench', g, CASE WHEN n % 2 = 0 THEN 'PRODUCTION' ELSE 'CONSUMPTION' END::energy.measurementtype, "
                "'DK1', CASE WHEN n % 2 = 0 THEN 'T020000' END, CASE WHEN n % 2 = 0 THEN 'F01050100' END "
                "FROM unnest(CAST(:g AS text[])) WITH ORDINALITY AS u(g, n1), LATERAL (SELECT n1 - 1 AS n) x"
            ),
            {"g": [gsrn(n) for n in range(points)]},
        )
    engine.dispose()


def import_child(url: str, env: dict[str, str], days: int) -> None:
    """Child: the import of every point; prints its figures as JSON."""
    from ecr_pipelines.energy.eloverblik import EloverblikClient
    from ecr_pipelines.energy.energytypes import EnergyTypeClient
    from ecr_pipelines.energy.stages.measurements import ImportSettings, import_due
    from ecr_pipelines.lib.http import make_session

    engine = sa.create_engine(url)
    session = make_session()
    settings = ImportSettings(first=FIRST, last=FIRST + timedelta(days=days))
    started = time.perf_counter()
    report = import_due(
        engine,
        EloverblikClient(session, env["ELOVERBLIK_SERVICE_URL"], env["ELOVERBLIK_TOKEN"]),
        EnergyTypeClient(session, env["ENERGY_TYPE_SERVICE_URL"]),
        settings,
        progress=lambda line: None,
    )
    seconds = time.perf_counter() - started
    with engine.connect() as conn:
        measurements = conn.exec_driver_sql("SELECT count(*) FROM energy.measurement").scalar()
        ggos = conn.exec_driver_sql("SELECT count(*) FROM energy.ggo").scalar()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "measurements": measurements,
                "ggos": ggos,
                "errors": report.errors,
                "peak_mb": _peak_mb(),
            }
        ),
        flush=True,
    )


def baseline(url: str, env: dict[str, str], days: int) -> dict[str, float]:
    """The legacy's way: per hour an existence query, then one INSERT for the measurement and
    one for its GGO, a transaction per point (the parsing is ours, so only the storing differs)."""
    from ecr_pipelines.energy.eloverblik import EloverblikClient
    from ecr_pipelines.energy.measurements import Flattener, Window
    from ecr_pipelines.lib.http import make_session

    engine = sa.create_engine(url)
    session = make_session()
    client = EloverblikClient(session, env["ELOVERBLIK_SERVICE_URL"], env["ELOVERBLIK_TOKEN"])
    window = Window(FIRST, FIRST + timedelta(days=days))
    flattener = Flattener()
    stored = 0
    started = time.perf_counter()
    for number in range(BASELINE_POINTS):
        point = gsrn(number)
        rows, _ = flattener.rows(client.timeseries([point], window.date_from, window.date_to), point, window)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            for _gsrn, begin, end, amount in rows:
                exists = conn.execute(
                    sa.text("SELECT count(*) FROM energy.measurement WHERE gsrn = :g AND begin = :b"),
                    {"g": point, "b": begin},
                ).scalar()
                if exists:
                    continue
                measurement_id = conn.execute(
                    sa.text(
                        'INSERT INTO energy.measurement (gsrn, begin, "end", amount, published) '
                        "VALUES (:g, :b, :e, :a, false) RETURNING id"
                    ),
                    {"g": point, "b": begin, "e": end, "a": int(amount)},
                ).scalar()
                if number % 2 == 0 and int(amount) > 0:
                    conn.execute(
                        sa.text(
                            "INSERT INTO energy.ggo (issue_time, expire_time, measurement_id, emissions) "
                            "VALUES (:t, :x, :m, '{}')"
                        ),
                        {"t": now, "x": now + timedelta(days=90), "m": measurement_id},
                    )
                stored += 1
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "measurements": stored, "rate": stored / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    if args.child:
        import_child(args.child, json.loads(os.environ["ENERGY_BENCH_ENV"]), args.days)
        return

    sizes = sorted({max(2, args.points // 10), args.points})
    here = Path(__file__).resolve()
    server = subprocess.Popen(
        [sys.executable, str(here), "--serve", str(args.points)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        env = json.loads(server.stdout.readline())
        with benchmark_database() as base_url:
            print(f"energy import: {args.days} days of hours per point, half of the points producing\n")
            print(
                f"{'points':>7} {'measurements':>13} {'GGOs':>10} {'seconds':>8} {'meas./s':>9} {'peak RSS':>9}"
            )
            for points in sizes:
                url = ensure_database(base_url, f"ecr_bench_energy_{points}")
                seed(url, points)
                child = subprocess.run(
                    [sys.executable, str(here), "--child", url, "--days", str(args.days)],
                    env={**os.environ, "ENERGY_BENCH_ENV": json.dumps(env)},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                figures = json.loads(child.stdout.strip().splitlines()[-1])
                rate = figures["measurements"] / figures["seconds"]
                print(
                    f"{points:>7} {figures['measurements']:>13,} {figures['ggos']:>10,} {figures['seconds']:>8.1f} "
                    f"{rate:>9,.0f} {figures['peak_mb']:>7.0f} MB"
                    + (f"  ({figures['errors']} errors)" if figures["errors"] else "")
                )
            url = ensure_database(base_url, "ecr_bench_energy_baseline")
            seed(url, BASELINE_POINTS)
            legacy = baseline(url, env, args.days)
            print(
                f"\nlegacy-style baseline ({BASELINE_POINTS} points, an existence query and single INSERTs per hour): "
                f"{legacy['measurements']:,} measurements in {legacy['seconds']:.1f} s, {legacy['rate']:,.0f} measurements/s"
            )
            print(f"speed-up at {sizes[-1]} points: {rate / legacy['rate']:.1f}×")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
