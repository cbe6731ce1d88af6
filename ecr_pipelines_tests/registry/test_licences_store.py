"""Licence aggregation stored in Postgres: deliveries, substances, licences, untranslatable rows."""

from typing import Any

import sqlalchemy as sa

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.licences import aggregate_licences
from ecr_pipelines.registry.store.licences import store_licences
from ecr_pipelines.registry.store.undertakings import UndertakingSync
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.registry import payloads as p

FEEDSTOCK = "export.of.substance.for.feedstock.use"
LAB = "export.of.substance.for.laboratory.or.analytical.use.carrier.solvent.during.instrumental.analysis.e.g..spectroscopy.chromatography"


def licence(licence_id: int, net: float, use: str = FEEDSTOCK, **overrides: Any) -> dict[str, Any]:
    row = {
        "organizationId": 10,
        "licenceId": licence_id,
        "longLicenceNumber": f"ODS-EXP-2025-{licence_id}",
        "chemicalName": "CFC-11",
        "mixtureNatureType": "VIRGIN",
        "licenceState": "CLOSED",
        "customProcedureName": "Re-export",
        "organizationCountryName": "Romania",
        "internationalPartyCountryName": "United States of America",
        "totalOdpMass": 1.0,
        "netMass": net,
        "templateDetailedUseCode": use,
        "licenceType": "EXP",
        "licenceUpdateDate": "2025-11-03T10:15:00",
    }
    row.update(overrides)
    return row


def store(db: DatabaseResource, rows: list[dict[str, Any]]):
    with db.begin() as conn:
        return store_licences(Sql(conn), aggregate_licences(rows, 2025, known_organization_ids=[10]))


def substances(db: DatabaseResource) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT substance, lic_use_desc, lic_use_kind, s_orig_country_name, organization_country_name, "
                    "quantity FROM registry.substance ORDER BY lic_use_desc"
                )
            )
        ]


def test_licences_aggregate_per_delivery_with_ceil_and_lab_rounding(registry_db: DatabaseResource) -> None:
    with registry_db.begin() as conn:
        UndertakingSync(Sql(conn), "ODS").run([p.ods(10)])
    rows = [licence(1, 0.1), licence(2, 0.2), licence(3, 0.4), licence(4, 0.5)]
    rows += [licence(5, 0.123456789, LAB), licence(6, 9.0, licenceState="VALID")]
    rows += [licence(7, 1.0, internationalPartyCountryName="Atlantis")]
    report = store(registry_db, rows)
    assert (report.companies, report.rebuilt, report.substances) == (1, 1, 2)
    assert substances(registry_db) == [
        ("CFC-11 (virgin)", "feedstock", "re-export", "US", "RO", 2.0),
        ("CFC-11 (virgin)", "laboratory uses", "re-export", "US", "RO", 0.1234568),
    ]
    assert [(org, lic) for org, lic, _ in report.untranslated] == [(10, 7)]
    with registry_db.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM registry.licence_rejection")) == 1
        assert (
            conn.scalar(sa.text("SELECT count(*) FROM registry.licence WHERE substance_id IS NOT NULL")) == 5
        )

    # Same data again: nothing rebuilt; newer data: rebuilt, licence rows updated in place.
    assert store(registry_db, rows).rebuilt == 0
    newer = [dict(r, licenceUpdateDate="2025-12-01") for r in rows[:4]] + [
        licence(8, 1.0, licenceUpdateDate="2025-12-01")
    ]
    assert store(registry_db, newer).rebuilt == 1
    assert substances(registry_db) == [("CFC-11 (virgin)", "feedstock", "re-export", "US", "RO", 3.0)]
    with registry_db.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM registry.licence")) == 6  # 1-5 kept, 8 added
        assert conn.scalar(sa.text("SELECT count(*) FROM registry.delivery_licence")) == 1


def test_licences_of_unknown_companies_are_skipped_and_reported(registry_db: DatabaseResource) -> None:
    report = store(registry_db, [licence(1, 1.0, organizationId=999)])
    assert report.companies == 0 and report.unknown_organizations == [999]
