"""The HTTP contracts under load: 20 concurrent clients for 30 s against the data store's
``table-data`` (HAWK-signed, 1,000-row pages) and then 30 s against the registry's
``GET /undertaking/FGAS/list`` (the BDR token). Prints requests/s, p50/p99 latency and errors
per endpoint; the target is 0 errors and a p99 under 200 ms for a 1,000-row page on 2 cores.

Loopback only and bounded: the application is started as it is deployed (``python -m
ecr_pipelines api``, ``API_WORKERS=2``) on a free port of 127.0.0.1, against DATABASE_URL when
set, else a throwaway embedded Postgres; it is stopped at the end whatever happens.

Data, loaded by the services' own code: a BACI file of ``ROWS`` generated trade flows through the
data store's loader (``load_file``: ``"dit.baci"."L1"``, an ``id`` primary key), walked page by
page along the ``next`` links and from the start again; ``UNDERTAKINGS`` generated F-gas
undertakings through the registry's sync (``UndertakingSync``), marked verified as an operator's
verify-none would (without its BDR call), so that the list has them all.

Each client is a thread with its own ``requests.Session``; a data store request gets a new
``mohawk.Sender`` (a new nonce) and its answer's ``Server-Authorization`` is checked; a request
counts as an error unless it answers 200 (and, for the data store, is signed correctly). The
latency is from sending to the last byte received, before the client parses the JSON.
"""

import io
import json
import logging
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mohawk
import mohawk.exc
import requests
import sqlalchemy as sa
from _database import benchmark_database
from registry_sync import undertaking

from ecr_pipelines.api.datastore import add_hawk_user
from ecr_pipelines.datastore.load import load_file
from ecr_pipelines.datastore.sources import SOURCES
from ecr_pipelines.lib.migrations import upgrade
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.store import UndertakingSync, seed_reference_tables

ROWS = 200_000
UNDERTAKINGS = 200
CLIENTS = 20
SECONDS = 30.0
PAGE_SIZE = 1000
WORKERS = 2
HAWK_ID = "load-test"
HAWK_KEY = "load-test-key-not-a-secret"
API_TOKEN = "load-test-token"
TABLE_DATA = "/api/v1/table-data/dit.baci/L1"
UNDERTAKING_LIST = "/undertaking/FGAS/list"
REQUEST_TIMEOUT = 30.0


def baci_csv(rows: int) -> bytes:
    """A BACI file (``t,hs6,i,j,v,q``) of ``rows`` generated trade flows."""
    rng = random.Random(3)
    lines = ["t,hs6,i,j,v,q"]
    for _ in range(rows):
        lines.append(
            f"{rng.randint(1995, 2018)},{rng.randint(10000, 999999):06d},{rng.randint(4, 894):03d},"
            f"{rng.randint(4, 894):03d},{rng.uniform(0, 5000):.3f},{rng.uniform(0, 900):.3f}"
        )
    return ("\n".join(lines) + "\n").encode()


def load_data(url: str) -> None:
    engine = sa.create_engine(url)
    upgrade(engine)
    started = time.perf_counter()
    spec = SOURCES["dit.baci"]
    # force: a second run against the same DATABASE_URL replaces this file's rows, never doubles them.
    report = load_file(engine, spec, "api_load_baci.csv", io.BytesIO(baci_csv(ROWS)), force=True)
    if report.status != "loaded":
        raise SystemExit(f"the BACI file did not load: {report.error}")
    print(f"loaded {report.l1_inserted:,} rows into dit.baci L1 in {time.perf_counter() - started:.1f} s")
    add_hawk_user(engine, HAWK_ID, HAWK_KEY, ["*"], "api_load.py")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            'TRUNCATE registry.undertaking, registry."user", registry.address, registry.represent, '
            "registry.country CASCADE"
        )
        seed_reference_tables(Sql(conn))
        rng = random.Random(7)
        UndertakingSync(Sql(conn), "FGAS").run([undertaking(i, rng) for i in range(UNDERTAKINGS)])
        conn.exec_driver_sql("UPDATE registry.undertaking SET oldcompany_verified = true")
    engine.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_api(url: str, port: int, log: Any) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_WORKERS": str(WORKERS),
        "API_TOKEN": API_TOKEN,
        "DSS_PAGINATION_SIZE": str(PAGE_SIZE),
    }
    server = subprocess.Popen([sys.executable, "-m", "ecr_pipelines", "api"], env=env, stderr=log, stdout=log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop_api(server)
            raise SystemExit("the API did not start")
        time.sleep(0.2)


def stop_api(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    rows: int = 0
    first_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, rows: int, error: str | None) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.rows += rows
            if error is not None:
                self.errors += 1
                self.first_error = self.first_error or error


# One request of a client: (its session, its state) -> (seconds, rows, error or None).
Step = Callable[[requests.Session, dict[str, Any]], tuple[float, int, str | None]]


def table_data_step(base: str) -> Step:
    credentials = {"id": HAWK_ID, "key": HAWK_KEY, "algorithm": "sha256"}
    first = f"{base}{TABLE_DATA}"

    def step(session: requests.Session, state: dict[str, Any]) -> tuple[float, int, str | None]:
        url = state.get("next") or first
        sender = mohawk.Sender(credentials, url, "GET", content="", content_type="")
        started = time.perf_counter()
        response = session.get(url, headers={"Authorization": sender.request_header}, timeout=REQUEST_TIMEOUT)
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            state["next"] = None
            return seconds, 0, f"HTTP {response.status_code}"
        try:
            # As a file object: given bytes, mohawk pprint-formats the whole body for a debug line
            # (see ecr_pipelines.api.datastore._hashable), which would make the clients the load.
            sender.accept_response(
                response.headers["Server-Authorization"],
                content=io.BytesIO(response.content),
                content_type=response.headers["Content-Type"],
            )
        except (KeyError, mohawk.exc.HawkFail) as error:
            return seconds, 0, f"signature: {type(error).__name__}"
        page = response.json()
        state["next"] = page["next"]  # the end of the table starts the walk again
        return seconds, len(page["values"]), None

    return step


def undertaking_list_step(base: str) -> Step:
    url = f"{base}{UNDERTAKING_LIST}"

    def step(session: requests.Session, state: dict[str, Any]) -> tuple[float, int, str | None]:
        started = time.perf_counter()
        response = session.get(url, headers={"Authorization": API_TOKEN}, timeout=REQUEST_TIMEOUT)
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            return seconds, 0, f"HTTP {response.status_code}"
        return seconds, len(response.json()), None

    return step


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def postmaster_pid(url: str) -> int | None:
    """The local Postgres server's main process, when it runs on this machine and its data
    folder is readable (the embedded one); else None."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            folder = conn.exec_driver_sql("SHOW data_directory").scalar_one()
        with open(os.path.join(folder, "postmaster.pid")) as pid_file:
            return int(pid_file.readline())
    except (OSError, ValueError, sa.exc.SQLAlchemyError):
        return None
    finally:
        engine.dispose()


def postgres_cpu(postmaster: int | None) -> float:
    """CPU seconds of the server: its own, its live backends', and those of the ones that
    ended (the kernel adds a reaped child's time to its parent's cutime/cstime)."""
    if postmaster is None:
        return 0.0
    try:
        with open(f"/proc/{postmaster}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{postmaster}/task/{postmaster}/children") as listing:
            children = [int(pid) for pid in listing.read().split()]
    except OSError:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime
    return cpu_seconds([postmaster, *children]) + reaped


def server_pids(server: subprocess.Popen[bytes]) -> list[int]:
    """The API's processes: the uvicorn supervisor and its workers."""
    with open(f"/proc/{server.pid}/task/{server.pid}/children") as listing:
        children = listing.read().split()
    return [server.pid, *map(int, children)]


def run_clients(step: Step) -> tuple[Tally, float]:
    tally = Tally()
    deadline = time.monotonic() + SECONDS
    start = threading.Barrier(CLIENTS + 1)

    def client() -> None:
        state: dict[str, Any] = {}
        with requests.Session() as session:
            start.wait()
            while time.monotonic() < deadline:
                try:
                    seconds, rows, error = step(session, state)
                except requests.RequestException as exc:
                    seconds, rows, error = REQUEST_TIMEOUT, 0, type(exc).__name__
                    state.clear()
                tally.add(seconds, rows, error)

    threads = [threading.Thread(target=client, name=f"client-{n}", daemon=True) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(timeout=SECONDS + REQUEST_TIMEOUT + 10)
    return tally, time.perf_counter() - began


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def report(name: str, tally: Tally, elapsed: float, rows_label: str) -> None:
    count = len(tally.latencies)
    if not count:
        print(f"{name}: no requests")
        return
    ms = [seconds * 1000 for seconds in tally.latencies]
    print(
        f"{name}: {count:,} requests in {elapsed:.1f} s = {count / elapsed:,.1f} req/s; "
        f"latency p50 {percentile(ms, 0.50):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
        f"mean {statistics.fmean(ms):.1f} ms, max {max(ms):.1f} ms; errors {tally.errors}"
        + (f" (first: {tally.first_error})" if tally.first_error else "")
        + f"; {tally.rows / elapsed:,.0f} {rows_label}/s"
    )


def server_times(log: Any, start: int, path: str) -> list[float]:
    """The API's own time (ms) of each request to ``path`` logged after byte ``start`` of its log:
    the access log's ``ms``, from the request's arrival to its answer, without the clients' time."""
    log.flush()
    log.seek(start)
    times = []
    for line in log.read().decode(errors="replace").splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("path") == path:
                times.append(float(entry["ms"]))
    log.seek(0, io.SEEK_END)
    return times


def phase(
    name: str, path: str, step: Step, rows_label: str, server: subprocess.Popen[bytes], log: Any, url: str
) -> None:
    pids = server_pids(server)
    log.seek(0, io.SEEK_END)
    start = log.tell()
    database = postmaster_pid(url)
    before = (os.times(), cpu_seconds(pids), postgres_cpu(database))
    tally, elapsed = run_clients(step)
    after = (os.times(), cpu_seconds(pids), postgres_cpu(database))
    report(name, tally, elapsed, rows_label)
    inside = server_times(log, start, path)
    if inside:
        print(
            f"  in the API (access log): p50 {percentile(inside, 0.50):.1f} ms, p99 {percentile(inside, 0.99):.1f} ms"
        )
    clients = after[0].user + after[0].system - before[0].user - before[0].system
    postgres = (
        f"Postgres {after[2] - before[2]:.1f} s"
        if database
        else "Postgres not measured (not on this machine)"
    )
    print(
        f"  CPU over the {elapsed:.0f} s ({os.cpu_count()} CPUs: {os.cpu_count() * elapsed:.0f} s): "
        f"API {after[1] - before[1]:.1f} s, clients {clients:.1f} s, {postgres}"
    )


def main() -> None:
    # mohawk warns on every answer it checks that it has no nonce store: a client needs none.
    logging.getLogger("mohawk.base").setLevel(logging.ERROR)
    print(
        f"API load: {CLIENTS} clients x {SECONDS:.0f} s per endpoint, {WORKERS} workers, "
        f"{os.cpu_count()} CPUs (clients, server and Postgres share them)"
    )
    with benchmark_database() as url, tempfile.TemporaryFile() as log:
        load_data(url)
        port = free_port()
        server = start_api(url, port, log)
        base = f"http://127.0.0.1:{port}"
        try:
            # Warm both workers' pools and imports before the clock runs.
            warm = table_data_step(base)
            with requests.Session() as session:
                for _ in range(10):
                    warm(session, {})
            name = f"GET {TABLE_DATA} ({PAGE_SIZE:,}-row pages of {ROWS:,})"
            phase(name, TABLE_DATA, table_data_step(base), "rows", server, log, url)

            probe = requests.get(
                f"{base}{UNDERTAKING_LIST}", headers={"Authorization": API_TOKEN}, timeout=30
            )
            if probe.status_code == 404:
                print(f"GET {UNDERTAKING_LIST}: pending (the route answers 404: not served yet)")
            else:
                name = f"GET {UNDERTAKING_LIST} ({UNDERTAKINGS} undertakings)"
                phase(name, UNDERTAKING_LIST, undertaking_list_step(base), "undertakings", server, log, url)
        finally:
            stop_api(server)
            if server.returncode not in (0, -signal.SIGINT):
                log.seek(0)
                print(log.read().decode(errors="replace")[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
