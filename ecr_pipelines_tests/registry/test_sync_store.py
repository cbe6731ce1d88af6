"""The undertaking sync against real Postgres: legacy semantics, fixed defects, idempotence."""

from typing import Any

import pytest
import sqlalchemy as sa

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.patches import Patches
from ecr_pipelines.registry.store.undertakings import UndertakingSync
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.registry import payloads as p


def sync(db: DatabaseResource, domain: str, records: list[Any], **kwargs: Any):
    with db.begin() as conn:
        return UndertakingSync(Sql(conn), domain, **kwargs).run(records)


def rows(db: DatabaseResource, query: str, **params: Any) -> list[sa.Row]:
    with db.connect() as conn:
        return list(conn.execute(sa.text(query), params).all())


def contacts(db: DatabaseResource, external_id: int) -> list[str]:
    return [
        r.username
        for r in rows(
            db,
            "SELECT us.username FROM registry.undertaking u JOIN registry.undertaking_users uu ON uu.undertaking_id = u.id "
            'JOIN registry."user" us ON us.id = uu.user_id WHERE u.external_id = :e ORDER BY 1',
            e=external_id,
        )
    ]


def test_new_companies_are_stored_with_their_relations(registry_db: DatabaseResource) -> None:
    report = sync(registry_db, "FGAS", [p.fgas(1), p.fgas(2, "Frost AG")])
    assert (report.fetched, report.inserted, report.updated, report.rejected) == (2, 2, 0, [])
    (u,) = rows(registry_db, "SELECT * FROM registry.undertaking WHERE external_id = 1")
    assert (u.domain, u.country_code, u.country_code_orig, u.check_passed, u.undertaking_type) == (
        "FGAS",
        "DE",
        "DE",
        True,
        "FGASUndertaking",
    )
    assert u.bdr_due and u.vat == "DE1"
    assert contacts(registry_db, 1) == ["user1"]
    assert rows(registry_db, "SELECT count(*) AS n FROM registry.undertaking_types")[0].n == 2
    assert rows(registry_db, "SELECT count(*) AS n FROM registry.undertaking_businessprofile")[0].n == 2


def test_rerunning_a_sync_changes_nothing(registry_db: DatabaseResource) -> None:
    batch = [p.fgas(i, f"Company {i}") for i in range(1, 6)]
    sync(registry_db, "FGAS", batch)
    before = rows(registry_db, "SELECT * FROM registry.undertaking ORDER BY id")
    report = sync(registry_db, "FGAS", batch)
    assert (report.inserted, report.updated, report.unchanged) == (0, 0, 5)
    assert rows(registry_db, "SELECT * FROM registry.undertaking ORDER BY id") == before
    assert rows(registry_db, "SELECT count(*) AS n FROM registry.address")[0].n == 5


def test_a_malformed_record_is_rejected_alone_with_its_reason(registry_db: DatabaseResource) -> None:
    bad_shape = p.fgas(2, contactPersons="nobody")
    bad_date = p.fgas(3, dateUpdated="31/02/2024")
    report = sync(registry_db, "FGAS", [p.fgas(1), bad_shape, bad_date, p.fgas(4)], run_id="r1")
    assert report.inserted == 2
    reasons = dict(report.rejected)
    assert "contactPersons" in reasons["2"] and "dateUpdated" in reasons["3"]
    stored = rows(
        registry_db, "SELECT external_id, reason FROM registry.sync_rejection WHERE run_id = 'r1' ORDER BY 1"
    )
    assert [r.external_id for r in stored] == ["2", "3"]


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (["a"], ["a", "b"]),  # add
        (["a", "b"], ["a"]),  # remove one
        (["a", "b", "c", "d"], ["a"]),  # remove several (the legacy loop skipped some)
        (["a", "b"], []),  # remove all (the legacy loop removed nobody)
    ],
)
def test_contact_persons_follow_the_payload(
    registry_db: DatabaseResource, before: list[str], after: list[str]
) -> None:
    sync(registry_db, "FGAS", [p.fgas(1, contactPersons=[p.person(u) for u in before])])
    assert contacts(registry_db, 1) == before
    sync(registry_db, "FGAS", [p.fgas(1, contactPersons=[p.person(u) for u in after])])
    assert contacts(registry_db, 1) == after
    # Users no undertaking refers to any more are deleted.
    remaining = {r.username for r in rows(registry_db, 'SELECT username FROM registry."user"')}
    assert remaining == set(after)


def test_contact_update_changes_the_user_row(registry_db: DatabaseResource) -> None:
    sync(registry_db, "FGAS", [p.fgas(1, contactPersons=[p.person("a", "old@example.test")])])
    sync(registry_db, "FGAS", [p.fgas(1, contactPersons=[p.person("a", "new@example.test")])])
    assert [r.email for r in rows(registry_db, 'SELECT email FROM registry."user"')] == ["new@example.test"]


def test_representative_changes_go_into_history(registry_db: DatabaseResource) -> None:
    cn = p.address("CN", "NONEU_TYPE", "Shanghai")
    sync(
        registry_db,
        "FGAS",
        [p.fgas(1, address=cn, euLegalRepresentativeCompany=p.representative("TESTVAT123"))],
    )
    (u,) = rows(registry_db, "SELECT country_code, country_code_orig FROM registry.undertaking")
    assert (u.country_code, u.country_code_orig) == ("NL", "CN")

    sync(
        registry_db,
        "FGAS",
        [p.fgas(1, address=cn, euLegalRepresentativeCompany=p.representative("NEWVAT", country="DE"))],
    )
    history = "SELECT r.vatnumber FROM registry.undertaking_represent_history h JOIN registry.represent r ON r.id = h.represent_id ORDER BY r.id"
    assert [r.vatnumber for r in rows(registry_db, history)] == ["TESTVAT123"]
    assert rows(registry_db, "SELECT country_code FROM registry.undertaking")[0].country_code == "DE"

    # Same VAT: updated in place, no history.
    sync(
        registry_db,
        "FGAS",
        [p.fgas(1, address=cn, euLegalRepresentativeCompany=p.representative("NEWVAT", "DE", "Renamed Rep"))],
    )
    assert [r.vatnumber for r in rows(registry_db, history)] == ["TESTVAT123"]
    assert (
        rows(
            registry_db,
            "SELECT r.name FROM registry.undertaking u JOIN registry.represent r ON r.id = u.represent_id",
        )[0].name
        == "Renamed Rep"
    )

    # Removed: into history, country code gone, checks fail (non-EU without representative).
    sync(registry_db, "FGAS", [p.fgas(1, address=cn, euLegalRepresentativeCompany=None)])
    assert [r.vatnumber for r in rows(registry_db, history)] == ["TESTVAT123", "NEWVAT"]
    (u,) = rows(registry_db, "SELECT country_code, represent_id, check_passed FROM registry.undertaking")
    assert (u.country_code, u.represent_id, u.check_passed) == (None, None, False)


def test_address_country_change_is_kept_in_history_and_country_rows_refresh(
    registry_db: DatabaseResource,
) -> None:
    sync(registry_db, "FGAS", [p.fgas(1)])
    moved = p.address("AT", "EU_TYPE", "Wien")
    sync(registry_db, "FGAS", [p.fgas(1, address=moved)])
    history = rows(
        registry_db,
        "SELECT c.code FROM registry.undertaking_country_history h JOIN registry.country c ON c.id = h.country_id",
    )
    assert [r.code for r in history] == ["DE"]
    renamed = p.address("AT", "EU_TYPE", "Wien")
    renamed["country"]["name"] = "Austria"
    sync(registry_db, "FGAS", [p.fgas(2, address=renamed)])
    assert rows(registry_db, "SELECT name FROM registry.country WHERE code = 'AT'")[0].name == "Austria"


def test_new_ods_companies_failing_the_checks_are_not_stored(registry_db: DatabaseResource) -> None:
    report = sync(registry_db, "ODS", [p.ods(10), p.ods(11, types=["IMPORTER"])])
    assert report.inserted == 1
    assert [(e, stored) for e, _, _, stored in report.failed_checks] == [(11, False)]
    # An FGAS company failing the checks is stored, with check_passed false and the reasons.
    sync(registry_db, "FGAS", [p.fgas(1, status="DISABLED")])
    (u,) = rows(
        registry_db, "SELECT check_passed, check_messages FROM registry.undertaking WHERE domain = 'FGAS'"
    )
    assert u.check_passed is False and any("status" in m.lower() for m in u.check_messages)


def test_ods_eori_is_stored_as_vat(registry_db: DatabaseResource) -> None:
    sync(registry_db, "ODS", [p.ods(10)])
    (u,) = rows(registry_db, "SELECT vat, eori_number, undertaking_type FROM registry.undertaking")
    assert (u.vat, u.eori_number, u.undertaking_type) == ("RO10", "", "ODSUndertaking")


def test_patches_are_applied_after_the_checks(registry_db: DatabaseResource) -> None:
    patches = Patches(
        companies={"1": {"name": "Patched Name"}},
        users={
            "1": [{"username": "extra", "first_name": "Ex", "last_name": "Tra", "email": "x@example.test"}]
        },
    )
    sync(registry_db, "FGAS", [p.fgas(1)], patches=patches)
    assert rows(registry_db, "SELECT name FROM registry.undertaking")[0].name == "Patched Name"
    assert contacts(registry_db, 1) == ["extra", "user1"]


def test_excepted_companies_pass_the_checks(registry_db: DatabaseResource) -> None:
    sync(registry_db, "FGAS", [p.fgas(1, status="DISABLED")], excepted=["1"])
    assert rows(registry_db, "SELECT check_passed FROM registry.undertaking")[0].check_passed is True
