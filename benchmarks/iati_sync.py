"""IATI index sync at scale: a generated Bulk Data Service index of 20,000 datasets from 1,000
publishers, served over loopback by the stand-in server, synced into an empty database, then
into the populated one (unchanged), then with 10 % of the hashes changed and 2 % of the datasets
replaced by new ones. Prints seconds (fetch + parse, and sync) and the SQL statements issued.

Runs against DATABASE_URL when set (database ``ecr_bench`` on that server), else a throwaway
embedded Postgres.
"""

import json
import time
from typing import Any

import sqlalchemy as sa
from _database import benchmark_database

from ecr_pipelines.dev.standins import Reply, StandInServer
from ecr_pipelines.iati.clients import BdsIndexClient
from ecr_pipelines.iati.stages.sync import sync_index
from ecr_pipelines.lib.http import make_session
from ecr_pipelines.lib.migrations import upgrade
from ecr_pipelines.lib.sql import Sql

DATASETS = 20_000
PUBLISHERS = 1_000
STAMP = 1_795_154_400


def org_id(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-{n:012x}"


def dataset(n: int, generation: int = 0) -> dict[str, Any]:
    org = n % PUBLISHERS
    content = f"{n:024x}{generation:016x}"
    return {
        "id": f"d{n:07x}-5b1e-4c39-8d1e-{n:012x}",
        "short_name": f"pub-{org}-activities-{n}",
        "reporting_org_id": org_id(org),
        "reporting_org_short_name": f"pub-{org}",
        "source_url": f"https://publisher-{org}.example/iati/activities-{n}.xml",
        "license_id": "cc-by",
        "last_update_check": "2026-11-20 05:41:12.000000+00:00",
        "last_known_good_dataset": None
        if n % 97 == 0
        else {
            "cached_dataset_url_xml": f"https://cache.example/{n}.xml",
            "cached_dataset_url_zip": f"https://cache.example/{n}.zip",
            "hash": content,
            "hash_excluding_generated_timestamp": content,
            "downloaded": "2026-11-20 05:41:12.000000+00:00",
        },
    }


def indices(changed: float = 0.0, replaced: float = 0.0) -> tuple[bytes, bytes]:
    rows = []
    change_every = int(1 / changed) if changed else 0
    replace_every = int(1 / replaced) if replaced else 0
    for n in range(DATASETS):
        if replace_every and n % replace_every == 1:
            rows.append(dataset(DATASETS + n))  # a new dataset where an old one disappeared
        else:
            rows.append(dataset(n, 1 if change_every and n % change_every == 0 else 0))
    orgs = [
        {
            "id": org_id(n),
            "short_name": f"pub-{n}",
            "human_readable_name": f"Publisher {n}",
            "iati_identifier": f"XM-{n}",
        }
        for n in range(PUBLISHERS)
    ]
    stamp = {"index_created": "2026-11-20 06:00:00+00:00", "index_created_unix_timestamp": STAMP}
    return (
        json.dumps({"datasets": rows, **stamp}).encode(),
        json.dumps({"reporting_orgs": orgs, **stamp}).encode(),
    )


def run(url: str) -> None:
    engine = sa.create_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE iati.document, iati.publisher, iati.refresh_log CASCADE")
    scenarios = [
        ("empty database", indices()),
        ("populated, unchanged", indices()),
        ("10% changed, 2% replaced", indices(changed=0.10, replaced=0.02)),
    ]
    with StandInServer() as server:
        client = BdsIndexClient(make_session(), server.url("/datasets"), server.url("/orgs"))
        for label, (datasets, orgs) in scenarios:
            server.route(
                "/datasets",
                handler=lambda _r, body=datasets: Reply(200, body, {"Content-Type": "application/json"}),
            )
            server.route(
                "/orgs", handler=lambda _r, body=orgs: Reply(200, body, {"Content-Type": "application/json"})
            )
            started = time.perf_counter()
            snapshot = client.snapshot()
            fetched = time.perf_counter() - started
            with engine.begin() as conn:
                report = sync_index(Sql(conn), snapshot, run_id="benchmark")
            total = time.perf_counter() - started
            print(
                f"{label:>26}: {total:5.2f} s total ({fetched:4.2f} s fetch + parse of {len(datasets) / 1e6:.1f} MB, "
                f"{report.seconds:4.2f} s sync)  {report.statements:3d} statements  "
                f"new {report.new_documents}, changed {len(report.changed_documents)}, "
                f"unchanged {report.unchanged_documents}, stale {len(report.stale_documents)}"
            )
    engine.dispose()


def main() -> None:
    print(f"IATI sync benchmark: {DATASETS:,} datasets from {PUBLISHERS:,} publishers")
    with benchmark_database() as url:
        run(url)


if __name__ == "__main__":
    main()
