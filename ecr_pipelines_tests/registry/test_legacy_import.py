"""``python -m ecr_pipelines registry import-legacy``: a legacy registry database (built from the
research notes' column lists, ``legacy/schema.sql``, with the rows of ``legacy/data.sql``) copied
into our ``registry`` schema, a second run that changes nothing, and the refusals."""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ecr_pipelines.__main__ import main
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.store.reference import seed_reference_tables
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.conftest import run_sql

LEGACY = Path(__file__).parent / "legacy"
UTC = dt.UTC

# Every table the import writes, with an order that makes snapshots comparable.
TABLES = {
    "country": "id",
    "address": "id",
    "represent": "id",
    "type": "id",
    "businessprofile": "id",
    "old_company": "id",
    "undertaking": "id",
    '"user"': "id",
    "undertaking_types": "undertaking_id, type_id",
    "undertaking_businessprofile": "undertaking_id, businessprofile_id",
    "undertaking_users": "undertaking_id, user_id",
    "undertaking_represent_history": "undertaking_id, represent_id",
    "undertaking_country_history": "undertaking_id, country_id",
    "old_company_link": "oldcompany_id, undertaking_id",
    "matching_log": "id",
    "organization_log": "id",
    "mail_address": "id",
    "delivery_licence": "id",
    "substance": "id",
    "licence": "id",
    "substance_name_conversion": "id",
    "country_codes_conversion": "id",
    "licence_details_conversion": "id",
}


@pytest.fixture
def legacy_url(legacy_database: Any) -> str:
    """A legacy registry database of its own, filled with ``legacy/data.sql``."""
    return legacy_database("legacy", LEGACY / "schema.sql", LEGACY / "data.sql")


def _reset(db: DatabaseResource) -> None:
    # registry_db empties the data tables; the import also adds reference rows, which other tests
    # must not see.
    with db.begin() as conn:
        conn.exec_driver_sql(
            f"TRUNCATE {', '.join(f'registry.{t}' for t in TABLES)} RESTART IDENTITY CASCADE"
        )
        seed_reference_tables(Sql(conn))


@pytest.fixture
def target(
    registry_db: DatabaseResource, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DatabaseResource]:
    """Our (migrated, emptied) application database, as the command's DATABASE_URL."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    _reset(registry_db)
    yield registry_db
    _reset(registry_db)


def _rows(db: DatabaseResource, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with db.begin() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params).all()]


def _snapshot(db: DatabaseResource) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table the import writes, with its xmin: equal snapshots mean that not
    even an identical rewrite happened."""
    return {
        table: _rows(db, f"SELECT xmin::text, to_jsonb(t)::text FROM registry.{table} t ORDER BY {order}")
        for table, order in TABLES.items()
    }


def _import(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["registry", "import-legacy", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _line(out: str, table: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(f"{table} "))


def test_import_copies_the_legacy_registry_and_a_second_run_changes_nothing(
    legacy_url: str, target: DatabaseResource, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _import(capsys, legacy_url)
    assert code == 0, out

    # The summary: rows per table (legacy, inserted, updated, unchanged).
    assert _line(out, "registry.undertaking") == ["registry.undertaking", "3", "3", "0", "0"]
    assert _line(out, "registry.undertaking_users") == ["registry.undertaking_users", "3", "3", "0", "0"]
    assert _line(out, "registry.type") == ["registry.type", "2", "1", "0", "1"]  # 1 is the fixtures' own
    assert "1 link(s) are verified although their undertaking is not verified" in out
    assert "not imported: alembic_version (the legacy's migration bookkeeping" in out
    assert "not imported: stock (stocks are not built here)" in out

    # Undertakings keep their ids, matching state and legacy fields; NULLs we cannot store get the
    # deterministic defaults; our additions get theirs.
    undertakings = _rows(
        target,
        """SELECT id, external_id, domain, registration_id, country_code, oldcompany_verified, oldcompany_id,
                  oldcompany_account, oldcompany_extid, check_passed, represent_id, date_created_in_ecr,
                  check_messages, bdr_due, source_hash
           FROM registry.undertaking ORDER BY id""",
    )
    assert undertakings == [
        (51, 10085, "FGAS", "REG-10085", "DK", True, 41, "fgas4021", 4021, True, None, dt.date(2018, 1, 1), [], False, None),
        (52, 10086, "ODS", "", "", False, None, None, None, False, 31, dt.date(1970, 1, 1), [], False, None),
        (53, 10087, "FGAS", "REG-10087", "DK", True, None, None, None, True, None, dt.date(2020, 1, 3), [], False, None),
    ]  # fmt: skip
    assert _rows(target, "SELECT id, external_id, valid, obligation, date_registered FROM registry.old_company ORDER BY id") == [
        (41, 4021, True, "FGAS", dt.datetime(2015, 3, 1, 9, 30)),
        (42, 4022, True, "ODS", None),  # NULL valid: the legacy default (true)
    ]  # fmt: skip

    # Matching history: links with their verified flags and dates (naive legacy times are UTC).
    assert _rows(
        target,
        "SELECT oldcompany_id, undertaking_id, verified, date_added, date_verified, score, rule "
        "FROM registry.old_company_link ORDER BY 1, 2",
    ) == [
        (41, 51, True, dt.datetime(2018, 2, 1, 10, tzinfo=UTC), dt.datetime(2018, 2, 3, 11, 15, tzinfo=UTC), None, None),
        (41, 52, True, dt.datetime(1970, 1, 1, tzinfo=UTC), dt.datetime(2023, 6, 1, 12, tzinfo=UTC), None, None),
        (42, 52, False, dt.datetime(2024, 1, 2, 8, tzinfo=UTC), None, None, None),
    ]  # fmt: skip
    assert _rows(target, 'SELECT id, "timestamp", "user", domain, company_id, oldcompany_id, verified FROM registry.matching_log ORDER BY id') == [
        (71, dt.datetime(2018, 2, 3, 10, 15, tzinfo=UTC), "jane.doe", "FGAS", 10085, 4021, True),
        (72, dt.datetime(2020, 1, 4, 2, 0, tzinfo=UTC), "SYSTEM", "FGAS", 10087, None, True),
        (73, dt.datetime(2023, 6, 1, 10, 0, tzinfo=UTC), "jane.doe", "ODS", 10086, 4021, True),
        (74, dt.datetime(2023, 6, 2, 7, 0, tzinfo=UTC), "jane.doe", "ODS", 10086, None, False),
    ]  # fmt: skip
    assert _rows(
        target, "SELECT id, domain, organizations, run_id FROM registry.organization_log ORDER BY id"
    ) == [
        (81, "FGAS", 2, None),
        (82, "ODS", 1, None),
    ]
    assert _rows(target, "SELECT id, mail FROM registry.mail_address") == [(91, "ops@example.test")]

    # Contacts (the duplicated legacy pair once), representatives and their history, countries.
    assert _rows(target, "SELECT undertaking_id, user_id FROM registry.undertaking_users ORDER BY 1, 2") == [
        (51, 61),
        (52, 61),
        (52, 62),
    ]
    assert _rows(target, 'SELECT id, username, type FROM registry."user" ORDER BY id') == [
        (61, "jdoe", "ORGANISATION_USER"),
        (62, "ann@rep.test", "EUONLYREPRESENTATIVE_USER"),
    ]
    assert _rows(target, "SELECT * FROM registry.undertaking_represent_history") == [(52, 32)]
    assert _rows(target, "SELECT * FROM registry.undertaking_country_history") == [(52, 7)]
    assert _rows(target, "SELECT id, vatnumber, address_id FROM registry.represent ORDER BY id") == [
        (31, "BE0123", 23),
        (32, "BE0999", 24),
    ]
    assert _rows(target, "SELECT undertaking_id, type_id FROM registry.undertaking_types ORDER BY 1") == [
        (51, 1),
        (53, 900),
    ]

    # Licences: delivery, aggregate and raw row, linked as in the legacy.
    assert _rows(target, "SELECT id, year, undertaking_id, updated_since FROM registry.delivery_licence") == [
        (101, 2024, 52, dt.date(2024, 3, 30))
    ]
    assert _rows(target, "SELECT id, substance, quantity, delivery_id, patched FROM registry.substance") == [
        (111, "Halon 1211 (virgin)", 3.0, 101, False)
    ]
    assert _rows(
        target, "SELECT id, licence_id, chemical_name, net_mass, substance_id FROM registry.licence"
    ) == [(121, 777, "Halon 1211", 2.5, 111)]

    # Reference rows: ours (the bundled fixtures) stay, the legacy's additions come in.
    assert _rows(target, "SELECT corrected_name FROM registry.substance_name_conversion WHERE id = 1") == [
        ("CFC-11 (non-virgin)",)
    ]
    assert _rows(target, "SELECT id FROM registry.substance_name_conversion WHERE id = 5000") == [(5000,)]
    assert _rows(target, "SELECT type FROM registry.type WHERE id = 900") == [("FGAS_LEGACY_ONLY_TYPE",)]

    # Sequences are past the imported ids: our next rows cannot collide with them.
    assert _rows(target, "SELECT last_value FROM registry.undertaking_id_seq") == [(53,)]
    assert _rows(target, "SELECT last_value FROM registry.matching_log_id_seq") == [(74,)]
    assert "registry.undertaking_id_seq -> 53" in out

    # A second run writes nothing at all (not even identical rows) and says so.
    before = _snapshot(target)
    code, out, _ = _import(capsys, legacy_url)
    assert code == 0, out
    assert "nothing changed: the target already held this legacy data" in out
    assert _line(out, "registry.undertaking") == ["registry.undertaking", "3", "0", "0", "3"]
    assert "sequences moved" not in out
    assert _snapshot(target) == before


def test_a_later_run_brings_the_legacy_changes_made_meanwhile(
    legacy_url: str, target: DatabaseResource, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _import(capsys, legacy_url)[0] == 0
    # The legacy keeps running: an operator verifies 10086 with old company 4022, a sync adds 10088.
    run_sql(
        legacy_url,
        """
        UPDATE undertaking SET oldcompany_verified = true, oldcompany_id = 42, oldcompany_account = 'ods4022',
            oldcompany_extid = 4022 WHERE id = 52;
        UPDATE old_company_link SET verified = true, date_verified = '2024-06-01 09:00' WHERE oldcompany_id = 42;
        INSERT INTO matching_log VALUES (75, '2024-06-01 09:00+00', 'jane.doe', 'ODS', 10086, 4022, 'ods4022', true);
        INSERT INTO undertaking (id, external_id, name, domain, status) VALUES (54, 10088, 'New Co', 'FGAS', 'VALID');
        """,
    )
    code, out, _ = _import(capsys, legacy_url)
    assert code == 0, out
    assert _line(out, "registry.undertaking") == ["registry.undertaking", "4", "1", "1", "2"]
    assert _line(out, "registry.old_company_link") == ["registry.old_company_link", "3", "0", "1", "2"]
    assert _line(out, "registry.matching_log") == ["registry.matching_log", "5", "1", "0", "4"]
    assert _rows(
        target, "SELECT oldcompany_verified, oldcompany_id FROM registry.undertaking WHERE id = 52"
    ) == [(True, 42)]
    assert _rows(target, "SELECT last_value FROM registry.undertaking_id_seq") == [(54,)]


def test_check_only_writes_nothing(
    legacy_url: str, target: DatabaseResource, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _import(capsys, legacy_url, "--check")
    assert code == 0, out
    assert out.startswith("checked (nothing written):")
    assert _line(out, "registry.undertaking") == ["registry.undertaking", "3"]
    assert _rows(target, "SELECT count(*) FROM registry.undertaking") == [(0,)]
    assert _rows(target, "SELECT count(*) FROM registry.type WHERE id = 900") == [(0,)]


def test_a_database_that_is_not_the_legacy_registry_is_refused(
    legacy_url: str, target: DatabaseResource, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _import(capsys, "mysql://someone:secret@db.test/registry")
    assert (code, "secret" in err) == (2, False)
    assert "LEGACY_URL must be a Postgres URL" in err
    code, _, err = _import(capsys, "postgresql://someone:secret@127.0.0.1:1/registry")
    assert (code, "secret" in err) == (2, False)
    assert "cannot connect to postgresql+psycopg2://someone:***@127.0.0.1:1/registry" in err

    run_sql(legacy_url, "DROP TABLE mail_address; ALTER TABLE undertaking DROP COLUMN check_passed")
    before = _snapshot(target)
    code, out, err = _import(capsys, legacy_url)
    assert code == 2
    assert out == ""
    assert "it does not look like the legacy registry database" in err
    assert "table mail_address" in err
    assert "column undertaking.check_passed" in err
    assert "nothing was changed" in err
    assert _snapshot(target) == before


def test_rows_the_target_cannot_take_are_all_named_and_nothing_changes(
    legacy_url: str, target: DatabaseResource, capsys: pytest.CaptureFixture[str]
) -> None:
    # Legacy problems: an undertaking twice, an old company without obligation, a type id that
    # means something else than in our reference tables.
    run_sql(
        legacy_url,
        """
        INSERT INTO undertaking (id, external_id, name, domain) VALUES (55, 10085, 'Polar again', 'FGAS');
        INSERT INTO old_company (id, external_id, name, obligation) VALUES (43, 4023, 'No obligation', NULL);
        INSERT INTO type (id, type, domain) VALUES (2, 'SOMETHING_ELSE', 'FGAS');
        """,
    )
    # Target problems: our rows under the legacy's ids or natural keys (our own sync ran here).
    with target.begin() as conn:
        conn.exec_driver_sql(
            """
            INSERT INTO registry.undertaking (id, external_id, domain, name) VALUES
                (51, 99999, 'FGAS', 'Someone else'), (7, 10086, 'ODS', 'Dragon, synced by us');
            """
        )
    before = _snapshot(target)
    code, _, err = _import(capsys, legacy_url)
    assert code == 2
    assert "legacy undertaking holds 1 external_id/domain value(s) more than once" in err
    assert "(10085, 'FGAS') as ids 51, 55" in err
    assert "legacy old_company: 1 row(s) without obligation" in err
    assert "registry.type holds 1 row(s) under legacy ids that are not the legacy's" in err
    assert 'id 2 is ["FGAS_IMPORTER_OF_EQUIPMENT_HFCS", "FGAS"] here but ["SOMETHING_ELSE", "FGAS"]' in err
    assert "(10086, 'ODS') is id 7 here, id 52 in the legacy" in err
    assert 'id 51 is [99999, "FGAS"] here but [10085, "FGAS"] in the legacy' in err
    assert "Import into a freshly migrated database" in err
    assert _snapshot(target) == before
