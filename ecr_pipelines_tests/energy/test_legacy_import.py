"""``python -m ecr_pipelines energy import-legacy``: a legacy datahub-service database (its tables
written here from the research notes' data model, in ``public`` with the legacy's enum types, a
few rows in each) copied into our ``energy`` schema; a second run that changes nothing, a later run
that brings the legacy's changes, ``--check``, and the refusals."""

import datetime as dt
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ecr_pipelines.__main__ import main
from ecr_pipelines_tests.conftest import own_database, own_migrated_engine, run_sql

REPO = Path(__file__).resolve().parents[2]
UTC = dt.UTC

LEGACY_SCHEMA = """
CREATE TYPE measurementtype AS ENUM ('PRODUCTION', 'CONSUMPTION');
CREATE TYPE disclosurestate AS ENUM ('PENDING', 'PROCESSING', 'AVAILABLE');
CREATE TYPE summaryresolution AS ENUM ('all', 'year', 'month', 'day', 'hour');
CREATE TYPE webhookevent AS ENUM (
    'ON_MEASUREMENT_PUBLISHED', 'ON_GGOS_ISSUED', 'ON_METERINGPOINTS_AVAILABLE', 'ON_METERINGPOINT_AVAILABLE'
);
CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
CREATE TABLE meteringpoint (
    id serial PRIMARY KEY,
    created timestamptz DEFAULT now(),
    disabled boolean NOT NULL DEFAULT false,
    sub varchar NOT NULL,
    gsrn varchar NOT NULL UNIQUE,
    type measurementtype NOT NULL,
    sector varchar NOT NULL,
    technology_code varchar,
    fuel_code varchar,
    street_code varchar,
    street_name varchar,
    building_number varchar,
    city_name varchar,
    postcode varchar,
    municipality_code varchar,
    ledger_extended_key varchar
);
CREATE INDEX ix_meteringpoint_sub ON meteringpoint (sub);
CREATE TABLE measurement (
    id serial PRIMARY KEY,
    created timestamptz DEFAULT now(),
    submitted timestamptz,
    gsrn varchar REFERENCES meteringpoint (gsrn),
    begin timestamptz,
    "end" timestamptz,
    amount integer,
    published boolean NOT NULL,
    UNIQUE (gsrn, begin)
);
CREATE TABLE ggo (
    id serial PRIMARY KEY,
    created timestamptz DEFAULT now(),
    issue_time timestamptz,
    expire_time timestamptz,
    measurement_id integer UNIQUE REFERENCES measurement (id),
    emissions jsonb
);
CREATE TABLE technology (
    id serial PRIMARY KEY,
    technology varchar NOT NULL,
    technology_code varchar NOT NULL,
    fuel_code varchar NOT NULL,
    UNIQUE (technology_code, fuel_code)
);
CREATE TABLE disclosure (
    id serial PRIMARY KEY,
    public_id varchar UNIQUE,
    created timestamptz DEFAULT now(),
    state disclosurestate,
    sub varchar,
    begin date,
    "end" date,
    name varchar,
    description varchar,
    max_resolution summaryresolution,
    publicize_meteringpoints boolean,
    publicize_gsrn boolean,
    publicize_physical_address boolean
);
CREATE TABLE disclosure_meteringpoint (
    id serial PRIMARY KEY,
    disclosure_id integer REFERENCES disclosure (id) ON DELETE CASCADE,
    gsrn varchar REFERENCES meteringpoint (gsrn),
    UNIQUE (disclosure_id, gsrn)
);
CREATE TABLE disclosure_settlement (
    id serial PRIMARY KEY,
    disclosure_id integer REFERENCES disclosure (id) ON DELETE CASCADE,
    measurement_id integer REFERENCES measurement (id),
    address varchar,
    UNIQUE (disclosure_id, measurement_id),
    UNIQUE (disclosure_id, address)
);
CREATE TABLE disclosure_ggo (
    id serial PRIMARY KEY,
    settlement_id integer REFERENCES disclosure_settlement (id) ON DELETE CASCADE,
    address varchar,
    amount integer,
    begin timestamptz,
    "end" timestamptz,
    sector varchar,
    technology_code varchar,
    fuel_code varchar,
    UNIQUE (settlement_id, address)
);
CREATE TABLE webhook_subscription (
    id serial PRIMARY KEY,
    event webhookevent,
    subject varchar,
    url varchar,
    secret varchar
);
"""

LEGACY_ROWS = """
INSERT INTO alembic_version VALUES ('ddb5d8d5ab6c');
INSERT INTO meteringpoint VALUES
    (11, '2020-06-01 10:00+00', false, 'sub-a', '571313000000000011', 'PRODUCTION', 'DK1', 'T020000',
     'F01050100', '0101', 'Vindvej', '1', 'Aarhus', '8000', '751', 'xprv-a'),
    (12, '2020-06-01 10:00+00', false, 'sub-a', '571313000000000012', 'CONSUMPTION', 'DK1', NULL, NULL,
     '0101', 'Vindvej', '1', 'Aarhus', '8000', '751', NULL),
    (14, NULL, true, 'sub-b', '571313000000000014', 'CONSUMPTION', 'DK2', NULL, NULL,
     NULL, 'Gade', '7', 'Kobenhavn', '1000', '101', NULL);
INSERT INTO measurement VALUES
    (101, '2020-06-02 08:00+00', NULL, '571313000000000011', '2019-01-05 23:00+00', '2019-01-06 00:00+00', 1500, true),
    (102, '2020-06-02 08:00+00', NULL, '571313000000000011', '2019-01-06 00:00+00', '2019-01-06 01:00+00', 0, true),
    (103, '2020-06-02 08:00+00', '2020-06-02 08:05+00', '571313000000000012', '2019-01-06 00:00+00',
     '2019-01-06 01:00+00', 700, false),
    (105, NULL, NULL, '571313000000000012', '2019-01-06 01:00+00', '2019-01-06 02:00+00', 650, true);
INSERT INTO ggo VALUES
    (201, '2020-06-02 08:00+00', '2020-06-02 08:00+00', '2020-08-31 08:00+00', 101, '{"co2": {"g": 12.5}}');
INSERT INTO technology (technology, technology_code, fuel_code) VALUES
    ('Wind', 'T020000', 'F01050100'), ('Tidal', 'T999999', 'F09999999'), ('Windy', 'T020001', 'F01050100');
INSERT INTO disclosure VALUES
    (31, '7f1c2a86-8a0e-4a57-9d8e-2a1c6c1e0b11', '2020-07-01 12:00+00', 'AVAILABLE', 'sub-a', '2019-01-01',
     '2019-01-31', 'My consumption', NULL, 'day', true, true, false),
    (32, '0b9d3a1e-5c55-4f4e-8e6f-52b0a8b1a222', '2020-07-02 12:00+00', NULL, 'sub-a', '2019-02-01',
     '2019-02-28', 'Pending one', 'desc', 'all', false, false, false);
INSERT INTO disclosure_meteringpoint VALUES (41, 31, '571313000000000012'), (42, 32, '571313000000000012');
INSERT INTO disclosure_settlement VALUES (51, 31, 103, 'settlement-address-103');
INSERT INTO disclosure_ggo VALUES
    (61, 51, 'ggo-address-1', 700, '2019-01-06 00:00+00', '2019-01-06 01:00+00', 'DK1', 'T020000', 'F01050100');
INSERT INTO webhook_subscription VALUES
    (71, 'ON_METERINGPOINTS_AVAILABLE', 'sub-a', 'https://hook.test/a', 'secret-a'),
    (73, 'ON_GGOS_ISSUED', 'sub-b', 'https://hook.test/b', NULL);
"""

# Every table the import writes, in its order.
TABLES = (
    "meteringpoint",
    "measurement",
    "ggo",
    "disclosure",
    "disclosure_meteringpoint",
    "disclosure_settlement",
    "disclosure_ggo",
    "webhook_subscription",
)


@pytest.fixture(scope="module")
def target_engine(pg_server_url: str) -> Iterator[sa.Engine]:
    with own_migrated_engine(pg_server_url, "energy_legacy") as engine:
        yield engine


@pytest.fixture
def target(target_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[sa.Engine]:
    """Our migrated database, emptied (but for the technology seed), as the command's DATABASE_URL."""

    def empty() -> None:
        with target_engine.begin() as conn:
            conn.exec_driver_sql(
                f"TRUNCATE {', '.join(f'energy.{t}' for t in TABLES)}, energy.customer, energy.webhook_delivery "
                "RESTART IDENTITY CASCADE"
            )

    empty()
    monkeypatch.setenv("DATABASE_URL", target_engine.url.render_as_string(hide_password=False))
    yield target_engine
    empty()


@pytest.fixture
def legacy_url(pg_server_url: str) -> Iterator[str]:
    with own_database(pg_server_url, "datahub") as url:
        run_sql(url, LEGACY_SCHEMA + LEGACY_ROWS)
        yield url


def _rows(engine: sa.Engine, query: str) -> list[tuple[Any, ...]]:
    with engine.begin() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(query).all()]


def _snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the import writes, with its xmin: equal snapshots mean not even an identical
    rewrite happened."""
    return {
        table: _rows(engine, f"SELECT xmin::text, to_jsonb(t)::text FROM energy.{table} t ORDER BY id")
        for table in TABLES
    }


def _import(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["energy", "import-legacy", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _line(out: str, table: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(f"{table} "))


def test_import_copies_the_legacy_hub_and_a_second_run_changes_nothing(
    legacy_url: str, target: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _import(capsys, legacy_url)
    assert code == 0, err

    assert _line(out, "energy.meteringpoint") == ["energy.meteringpoint", "3", "3", "0", "0"]
    assert _line(out, "energy.measurement") == ["energy.measurement", "4", "4", "0", "0"]
    assert _line(out, "energy.webhook_subscription") == ["energy.webhook_subscription", "2", "2", "0", "0"]
    assert "energy.measurement: 4 legacy rows, 4 inserted, 0 updated" in err  # progress
    assert "not imported: alembic_version (the legacy's migration bookkeeping" in out
    assert "not imported: technology (ours is the migration's seed; compared above)" in out
    # Technology: compared, never copied; what ours lacks or labels otherwise is listed.
    assert (
        "note: legacy technology: 2 of 3 row(s) are not in energy.technology as they are "
        "(not copied: labels come from ours; add what is missing with a migration): "
        "Windy T020001/F01050100 (ours: Wind); Tidal T999999/F09999999"
    ) in out
    assert _rows(target, "SELECT count(*) FROM energy.technology WHERE technology_code = 'T999999'") == [(0,)]

    # Metering points keep their ids and legacy values; our columns get their defaults (due to
    # be measured, no customer made).
    assert _rows(
        target,
        "SELECT id, created, disabled, sub, gsrn, type::text, sector, technology_code, fuel_code, street_code, "
        "street_name, building_number, city_name, postcode, municipality_code, ledger_extended_key, "
        "energy_type_checked, available_queued, measured, measure_error FROM energy.meteringpoint ORDER BY id",
    ) == [
        (11, dt.datetime(2020, 6, 1, 10, tzinfo=UTC), False, "sub-a", "571313000000000011", "PRODUCTION", "DK1",
         "T020000", "F01050100", "0101", "Vindvej", "1", "Aarhus", "8000", "751", "xprv-a", None, None, None, None),
        (12, dt.datetime(2020, 6, 1, 10, tzinfo=UTC), False, "sub-a", "571313000000000012", "CONSUMPTION", "DK1",
         None, None, "0101", "Vindvej", "1", "Aarhus", "8000", "751", None, None, None, None, None),
        (14, None, True, "sub-b", "571313000000000014", "CONSUMPTION", "DK2", None, None, None, "Gade", "7",
         "Kobenhavn", "1000", "101", None, None, None, None, None),
    ]  # fmt: skip
    assert _rows(target, "SELECT count(*) FROM energy.customer") == [(0,)]
    hour = dt.timedelta(hours=1)
    jan6 = dt.datetime(2019, 1, 6, tzinfo=UTC)
    assert _rows(target, "SELECT * FROM energy.measurement ORDER BY id") == [
        (101, dt.datetime(2020, 6, 2, 8, tzinfo=UTC), None, "571313000000000011", jan6 - hour, jan6, 1500, True),
        (102, dt.datetime(2020, 6, 2, 8, tzinfo=UTC), None, "571313000000000011", jan6, jan6 + hour, 0, True),
        (103, dt.datetime(2020, 6, 2, 8, tzinfo=UTC), dt.datetime(2020, 6, 2, 8, 5, tzinfo=UTC),
         "571313000000000012", jan6, jan6 + hour, 700, False),
        (105, None, None, "571313000000000012", jan6 + hour, jan6 + 2 * hour, 650, True),
    ]  # fmt: skip
    assert _rows(target, "SELECT * FROM energy.ggo") == [
        (
            201,
            dt.datetime(2020, 6, 2, 8, tzinfo=UTC),
            dt.datetime(2020, 6, 2, 8, tzinfo=UTC),
            dt.datetime(2020, 8, 31, 8, tzinfo=UTC),
            101,
            {"co2": {"g": 12.5}},
        )
    ]
    assert _rows(
        target,
        "SELECT id, public_id, state::text, sub, begin, \"end\", name, description, max_resolution::text, "
        "publicize_meteringpoints, publicize_gsrn, publicize_physical_address, compiled, blob_key "
        "FROM energy.disclosure ORDER BY id",
    ) == [
        (31, "7f1c2a86-8a0e-4a57-9d8e-2a1c6c1e0b11", "AVAILABLE", "sub-a", dt.date(2019, 1, 1),
         dt.date(2019, 1, 31), "My consumption", None, "day", True, True, False, None, None),
        # A legacy NULL state is PENDING here (our default): the next compile makes it.
        (32, "0b9d3a1e-5c55-4f4e-8e6f-52b0a8b1a222", "PENDING", "sub-a", dt.date(2019, 2, 1),
         dt.date(2019, 2, 28), "Pending one", "desc", "all", False, False, False, None, None),
    ]  # fmt: skip
    assert _rows(target, "SELECT * FROM energy.disclosure_meteringpoint ORDER BY id") == [
        (41, 31, "571313000000000012"),
        (42, 32, "571313000000000012"),
    ]
    assert _rows(target, "SELECT * FROM energy.disclosure_settlement") == [
        (51, 31, 103, "settlement-address-103")
    ]
    assert _rows(target, "SELECT * FROM energy.disclosure_ggo") == [
        (61, 51, "ggo-address-1", 700, jan6, jan6 + hour, "DK1", "T020000", "F01050100")
    ]
    assert _rows(target, "SELECT id, event::text, subject, url, secret FROM energy.webhook_subscription") == [
        (71, "ON_METERINGPOINTS_AVAILABLE", "sub-a", "https://hook.test/a", "secret-a"),
        (73, "ON_GGOS_ISSUED", "sub-b", "https://hook.test/b", None),
    ]
    assert "energy.measurement_id_seq -> 105" in out

    # A second run writes nothing at all (not even identical rows) and says so.
    before = _snapshot(target)
    code, out, err = _import(capsys, legacy_url)
    assert code == 0, err
    assert "nothing changed: the target already held this legacy data" in out
    assert _line(out, "energy.measurement") == ["energy.measurement", "4", "0", "0", "4"]
    assert "sequences moved" not in out
    assert _snapshot(target) == before


def test_our_sequences_continue_after_the_imported_ids(
    legacy_url: str, target: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _import(capsys, legacy_url)[0] == 0
    with target.begin() as conn:
        new = conn.exec_driver_sql(
            """
            WITH p AS (INSERT INTO energy.meteringpoint (sub, gsrn, type, sector)
                       VALUES ('sub-c', '571313000000000099', 'CONSUMPTION', 'DK2') RETURNING id),
                 m AS (INSERT INTO energy.measurement (gsrn, begin, "end", amount, published)
                       VALUES ('571313000000000099', '2019-01-01 00:00+00', '2019-01-01 01:00+00', 5, true)
                       RETURNING id),
                 g AS (INSERT INTO energy.ggo (issue_time, expire_time, measurement_id)
                       SELECT now(), now(), id FROM m RETURNING id),
                 d AS (INSERT INTO energy.disclosure (public_id, sub, begin, "end", name, max_resolution,
                           publicize_meteringpoints, publicize_gsrn, publicize_physical_address)
                       VALUES ('new', 'sub-c', '2019-01-01', '2019-01-02', 'n', 'hour', false, false, false)
                       RETURNING id),
                 s AS (INSERT INTO energy.disclosure_settlement (disclosure_id, measurement_id, address)
                       SELECT d.id, m.id, 'a' FROM d, m RETURNING id),
                 dg AS (INSERT INTO energy.disclosure_ggo (settlement_id, address, amount, begin, "end", sector,
                            technology_code, fuel_code)
                        SELECT id, 'g', 1, now(), now(), 'DK2', 't', 'f' FROM s RETURNING id),
                 dm AS (INSERT INTO energy.disclosure_meteringpoint (disclosure_id, gsrn)
                        SELECT id, '571313000000000099' FROM d RETURNING id),
                 w AS (INSERT INTO energy.webhook_subscription (event, subject, url)
                       VALUES ('ON_GGOS_ISSUED', 'sub-c', 'https://hook.test/c') RETURNING id)
            SELECT (SELECT id FROM p), (SELECT id FROM m), (SELECT id FROM g), (SELECT id FROM d),
                   (SELECT id FROM s), (SELECT id FROM dg), (SELECT id FROM dm), (SELECT id FROM w)
            """
        ).one()
    assert tuple(new) == (15, 106, 202, 33, 52, 62, 43, 74)


def test_a_later_run_brings_the_legacy_changes_made_meanwhile(
    legacy_url: str, target: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _import(capsys, legacy_url)[0] == 0
    # The legacy keeps running: a customer disables their points, an hour is corrected, a new one
    # arrives with its GGO, a compile finishes.
    run_sql(
        legacy_url,
        """
        UPDATE meteringpoint SET disabled = true WHERE sub = 'sub-a';
        UPDATE measurement SET amount = 710, published = true WHERE id = 103;
        INSERT INTO measurement VALUES (106, NULL, NULL, '571313000000000011', '2019-01-06 01:00+00',
            '2019-01-06 02:00+00', 900, true);
        INSERT INTO ggo VALUES (202, NULL, '2020-06-03 08:00+00', '2020-09-01 08:00+00', 106, NULL);
        UPDATE disclosure SET state = 'AVAILABLE' WHERE id = 32;
        """,
    )
    code, out, err = _import(capsys, legacy_url)
    assert code == 0, err
    assert _line(out, "energy.meteringpoint") == ["energy.meteringpoint", "3", "0", "2", "1"]
    assert _line(out, "energy.measurement") == ["energy.measurement", "5", "1", "1", "3"]
    assert _line(out, "energy.ggo") == ["energy.ggo", "2", "1", "0", "1"]
    assert _line(out, "energy.disclosure") == ["energy.disclosure", "2", "0", "1", "1"]
    assert _rows(target, "SELECT id, disabled FROM energy.meteringpoint ORDER BY id") == [
        (11, True),
        (12, True),
        (14, True),
    ]
    assert _rows(target, "SELECT amount, published FROM energy.measurement WHERE id = 103") == [(710, True)]
    assert _rows(target, "SELECT last_value FROM energy.ggo_id_seq") == [(202,)]


def test_check_only_writes_nothing(
    legacy_url: str, target: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _import(capsys, legacy_url, "--check")
    assert code == 0, err
    assert out.startswith("checked (nothing written):")
    assert _line(out, "energy.measurement") == ["energy.measurement", "4"]
    assert "note: legacy technology: 2 of 3 row(s)" in out
    assert all(rows == [] for rows in _snapshot(target).values())
    assert _rows(target, "SELECT last_value, is_called FROM energy.measurement_id_seq") == [(1, False)]


def test_a_database_that_is_not_the_legacy_hub_is_refused(
    legacy_url: str, target: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _import(capsys, "postgresql://someone:secret@127.0.0.1:1/datahub")
    assert (code, "secret" in err) == (2, False)
    assert "cannot connect to postgresql+psycopg2://someone:***@127.0.0.1:1/datahub" in err

    run_sql(legacy_url, "DROP TABLE webhook_subscription; ALTER TABLE measurement DROP COLUMN published")
    code, out, err = _import(capsys, legacy_url)
    assert (code, out) == (2, "")
    assert "it does not look like the legacy datahub-service database" in err
    assert "table webhook_subscription" in err
    assert "column measurement.published" in err
    assert "nothing was changed" in err
    assert all(rows == [] for rows in _snapshot(target).values())


def test_a_legacy_from_before_the_rename_of_active_is_read_as_disabled(
    legacy_url: str, target: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    run_sql(
        legacy_url,
        """
        ALTER TABLE meteringpoint RENAME COLUMN disabled TO active;
        ALTER TABLE meteringpoint ALTER active DROP NOT NULL;
        UPDATE meteringpoint SET active = NOT active;
        UPDATE meteringpoint SET active = NULL WHERE id = 12;
        """,
    )
    code, out, err = _import(capsys, legacy_url)
    assert code == 0, err
    assert "note: legacy meteringpoint has `active` (before its rename): read as disabled = NOT active" in out
    assert _rows(target, "SELECT id, disabled FROM energy.meteringpoint ORDER BY id") == [
        (11, False),
        (12, False),  # NULL: active, as the legacy's readers took it
        (14, True),
    ]
    code, out, err = _import(capsys, legacy_url)
    assert code == 0, err
    assert "nothing changed" in out
    run_sql(legacy_url, "UPDATE meteringpoint SET active = false WHERE id = 11")
    code, out, err = _import(capsys, legacy_url)
    assert _line(out, "energy.meteringpoint") == ["energy.meteringpoint", "3", "0", "1", "2"]
    assert _rows(target, "SELECT disabled FROM energy.meteringpoint WHERE id = 11") == [(True,)]


def test_rows_our_tables_cannot_take_are_refused_before_anything_is_written(
    legacy_url: str, target: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hours of a GSRN that is no metering point (the legacy's foreign key gone), an event ours lacks.
    run_sql(
        legacy_url,
        """
        ALTER TABLE measurement DROP CONSTRAINT measurement_gsrn_fkey;
        INSERT INTO measurement (id, gsrn, begin, "end", amount, published) VALUES
            (110, '571313000000000077', '2019-01-01 00:00+00', '2019-01-01 01:00+00', 1, true),
            (111, '571313000000000077', '2019-01-01 01:00+00', '2019-01-01 02:00+00', 1, true),
            (112, '571313000000000088', '2019-01-01 00:00+00', '2019-01-01 01:00+00', 1, true);
        ALTER TYPE webhookevent ADD VALUE 'ON_SOMETHING_ELSE';
        """,
    )
    run_sql(
        legacy_url,
        "INSERT INTO webhook_subscription VALUES (75, 'ON_SOMETHING_ELSE', 'sub-a', 'https://hook.test/x', NULL)",
    )
    # A point of ours makes one GSRN known: its hours are no strays.
    with target.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO energy.meteringpoint (id, sub, gsrn, type, sector) "
            "VALUES (90, 'sub-z', '571313000000000088', 'CONSUMPTION', 'DK1')"
        )
    before = _snapshot(target)
    code, out, err = _import(capsys, legacy_url)
    assert (code, out) == (2, "")
    assert (
        "legacy measurement holds 2 hour(s) of 1 GSRN(s) that are no metering point, which "
        "energy.measurement does not take: '571313000000000077' (2 hours)"
    ) in err
    assert (
        "legacy webhook_subscription.event holds 'ON_SOMETHING_ELSE', which energy.webhookevent does not have"
        in err
    )
    assert "Import into a freshly migrated database" in err
    assert _snapshot(target) == before


def test_our_rows_under_the_legacy_ids_or_keys_are_refused(
    legacy_url: str, target: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    with target.begin() as conn:
        conn.exec_driver_sql(
            """
            INSERT INTO energy.meteringpoint (id, sub, gsrn, type, sector) VALUES
                (11, 'sub-z', '571313000000000999', 'CONSUMPTION', 'DK1'),
                (3, 'sub-a', '571313000000000012', 'CONSUMPTION', 'DK1');
            INSERT INTO energy.webhook_subscription (id, event, subject, url)
                VALUES (71, 'ON_GGOS_ISSUED', 'sub-z', 'https://ours.test');
            """
        )
    before = _snapshot(target)
    code, _, err = _import(capsys, legacy_url)
    assert code == 2
    assert "'571313000000000012' is id 3 here, id 12 in the legacy" in err
    assert 'id 11 is ["571313000000000999"] here but ["571313000000000011"] in the legacy' in err
    assert "energy.webhook_subscription holds 1 row(s) under legacy ids that are not the legacy's" in err
    assert _snapshot(target) == before


@pytest.mark.slow
def test_python_dash_m(legacy_url: str, target: sa.Engine) -> None:
    env = {**os.environ, "DATABASE_URL": target.url.render_as_string(hide_password=False)}
    command = [sys.executable, "-m", "ecr_pipelines", "energy", "import-legacy", legacy_url]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("imported: ")
    assert "energy.disclosure_ggo" in done.stdout
    assert _rows(target, "SELECT count(*) FROM energy.measurement") == [(4,)]

    done = subprocess.run(
        [*command, "--schema", "nowhere"], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert "missing table meteringpoint" in done.stderr
