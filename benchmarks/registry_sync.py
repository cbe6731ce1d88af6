"""Registry sync at scale: 50,000 generated F-gas undertakings into an empty database, then the
same set with 10 % changed. Prints seconds per run and the SQL statements issued.

Runs against DATABASE_URL when set, else a throwaway embedded Postgres.
"""

import random
import time
from typing import Any

import sqlalchemy as sa
from _database import benchmark_database

from ecr_pipelines.lib.migrations import upgrade
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.store import UndertakingSync, seed_reference_tables

COUNT = 50_000
CHANGED = 0.10
COUNTRIES = [
    ("DE", "EU_TYPE"),
    ("FR", "EU_TYPE"),
    ("IT", "EU_TYPE"),
    ("CN", "NONEU_TYPE"),
    ("US", "NONEU_TYPE"),
]
WORDS = [
    "Polar",
    "Frost",
    "Cool",
    "Thermo",
    "Arctic",
    "Clima",
    "Nord",
    "Kalt",
    "Gelo",
    "Ice",
    "Breeze",
    "Vent",
]
FORMS = ["GmbH", "Ltd", "SA", "SpA", "BV", "Co.", "AG", "SRL"]


def undertaking(i: int, rng: random.Random, generation: int = 0) -> dict[str, Any]:
    code, kind = COUNTRIES[i % len(COUNTRIES)]
    rep = None
    if kind == "NONEU_TYPE":
        rep = {
            "name": f"EU Rep {i % 97}",
            "address": {
                "street": "Kade",
                "number": "1",
                "zipCode": "1011",
                "city": "Amsterdam",
                "country": {"code": "NL", "name": "Netherlands", "type": "EU_TYPE"},
            },
            "vatNumber": f"NL{i % 97:09d}B01",
            "contactPersonFirstName": "Anna",
            "contactPersonLastName": "Jansen",
            "contactPersonEmailAddress": "anna@example.test",
        }
    name = f"{rng.choice(WORDS)} {rng.choice(WORDS)} {FORMS[i % len(FORMS)]} {i}"
    return {
        "@type": "FGASUndertaking",
        "id": 100_000 + i,
        "registrationNumId": f"FG-{i}",
        "name": name + (f" v{generation}" if generation else ""),
        "address": {
            "street": f"Street {i % 500}",
            "number": str(i % 90),
            "zipCode": f"{10000 + i % 80000}",
            "city": f"City {i % 300}",
            "country": {"code": code, "name": f"Country {code}", "type": kind},
        },
        "website": None,
        "phone": f"+49{i:08d}",
        "domain": "FGAS",
        "status": "VALID",
        "dateCreated": "20/10/2014",
        "dateUpdated": "06/11/2025",
        "contactPersons": [
            {
                "userName": f"user{i}-{k}",
                "firstName": "First",
                "lastName": f"Last{k}",
                "emailAddress": f"user{i}-{k}@example.test",
                "type": "ORGANISATION_USER",
            }
            for k in range(1 + i % 3)
        ],
        "euLegalRepresentativeCompany": rep,
        "vat": f"VAT{i}",
        "eori": "",
        "businessProfile": {"highLevelUses": ["fgas.importer.of.other.products.and.equipment"]},
        "types": ["FGAS_PRODUCER_IMPORTER_HFCS"],
    }


def run(url: str) -> None:
    engine = sa.create_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            'TRUNCATE registry.undertaking, registry."user", registry.address, registry.represent, registry.country CASCADE'
        )
        seed_reference_tables(Sql(conn))
    rng = random.Random(7)
    first = [undertaking(i, rng) for i in range(COUNT)]
    changed_ids = set(random.Random(11).sample(range(COUNT), int(COUNT * CHANGED)))
    rng = random.Random(7)
    second = [undertaking(i, rng, generation=1 if i in changed_ids else 0) for i in range(COUNT)]
    for label, records in (
        ("empty database", first),
        (f"{CHANGED:.0%} changed", second),
        ("unchanged", second),
    ):
        started = time.perf_counter()
        with engine.begin() as conn:
            report = UndertakingSync(Sql(conn), "FGAS").run(records)
        seconds = time.perf_counter() - started
        print(
            f"{label:>16}: {seconds:6.2f} s  {report.statements:6d} statements  "
            f"inserted {report.inserted}, updated {report.updated}, unchanged {report.unchanged}  "
            f"({len(records) / seconds:,.0f} records/s)"
        )
    engine.dispose()


def main() -> None:
    print(f"registry sync benchmark: {COUNT:,} F-gas undertakings")
    with benchmark_database() as url:
        run(url)


if __name__ == "__main__":
    main()
