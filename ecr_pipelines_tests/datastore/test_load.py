"""Loading the data store's source files (``datastore.load``) and its file registry
(``datastore.registry``), on the legacy's sample files, in a database of this module's own.

Expected rows are the legacy's tests' (its ``rows_equal_table``: helper columns left out, order
ignored, dates as text, decimals as floats) where it had them; the rest follow from the files."""

import csv
import io
import zipfile
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ecr_pipelines.datastore import load, registry
from ecr_pipelines.datastore.registry import State
from ecr_pipelines.datastore.sources import SOURCES, SourceSpec
from ecr_pipelines.lib.blobstore import LocalBlobStore
from ecr_pipelines_tests.conftest import own_migrated_engine
from ecr_pipelines_tests.datastore.expected import REFERENCE_ROWS

DATA = Path(__file__).parent / "data" / "sources"
HELPERS = {"id", "datafile_created", "datafile_updated", "data_hash", "data_source_row_id"}
SCHEMAS = sorted({spec.schema for spec in SOURCES.values() if spec.loading != "rebuild"})
BACI = SOURCES["dit.baci"]
BACI_CSV = (DATA / "dit_baci.csv").read_bytes()
BACI_ROWS = [(1995, 10519, 4, 251, 1.548, 0.051), (1995, 30110, 4, 381, 1.249, 0.01)]


@pytest.fixture(scope="module")
def engine(pg_server_url: str) -> Iterator[Engine]:
    """A migrated database for this module only (the tests create and drop schemas)."""
    with own_migrated_engine(pg_server_url, "t_load") as engine:
        yield engine


@pytest.fixture(autouse=True)
def clean(engine: Engine) -> Iterator[None]:
    yield
    with engine.begin() as conn:
        for schema in SCHEMAS:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text("DELETE FROM operations.datafile_registry"))
        conn.execute(sa.text("DROP TABLE IF EXISTS public.sentinel"))


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def put(store: LocalBlobStore, spec: SourceSpec, name: str, data: bytes | str) -> None:
    assert spec.blob_prefix is not None
    store.put_bytes(spec.blob_prefix + name, data if isinstance(data, bytes) else (DATA / data).read_bytes())


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    return value


def _sort_key(row: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(repr(value) for value in row)


def table(engine: Engine, schema: str, name: str) -> list[dict[str, Any]]:
    """Every row of the table, helper columns included, in id order."""
    with engine.connect() as conn:
        result = conn.execute(sa.text(f'SELECT * FROM "{schema}"."{name}" ORDER BY id'))
        return [dict(row._mapping) for row in result]


def data_rows(engine: Engine, schema: str, name: str) -> list[tuple[Any, ...]]:
    """The legacy's view of a table: data columns only, plain values, sorted."""
    rows = [
        tuple(_plain(value) for key, value in row.items() if key not in HELPERS)
        for row in table(engine, schema, name)
    ]
    return sorted(rows, key=_sort_key)


def expect(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted((tuple(_plain(value) for value in row) for row in rows), key=_sort_key)


def states(engine: Engine, source: str) -> dict[str | None, tuple[str, str | None]]:
    with engine.connect() as conn:
        return {
            entry.file_name: (entry.state.value, entry.error_message)
            for entry in registry.entries(conn, source)
        }


def exists(engine: Engine, schema: str, name: str) -> bool:
    with engine.connect() as conn:
        return conn.scalar(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f'"{schema}"."{name}"'})


# --- each source from its sample file ---------------------------------------------------------------


def test_baci_incremental_layout_and_rows(engine: Engine, store: LocalBlobStore) -> None:
    put(store, BACI, "baci.csv", BACI_CSV)
    report = load.load_source(engine, store, BACI)

    assert (report.loaded, report.failed, report.skipped) == (["baci.csv"], [], [])
    (file,) = report.files
    assert (file.rows_read, file.l0_inserted, file.l1_inserted, file.error) == (2, 2, 2, None)
    assert data_rows(engine, "dit.baci", "L0") == expect(BACI_ROWS)
    assert data_rows(engine, "dit.baci", "L1") == expect(BACI_ROWS)

    l0 = table(engine, "dit.baci", "L0")
    assert list(l0[0]) == ["id", "datafile_created", "t", "hs6", "i", "j", "v", "q"]
    assert [(row["id"], row["datafile_created"]) for row in l0] == [(1, "baci.csv"), (2, "baci.csv")]
    l1 = table(engine, "dit.baci", "L1")
    assert list(l1[0]) == [
        "id",
        "data_source_row_id",
        "year",
        "product_category",
        "exporter",
        "importer",
        "trade_flow_value",
        "quantity",
    ]
    assert [(row["id"], row["data_source_row_id"]) for row in l1] == [(1, 1), (2, 2)]
    assert states(engine, "dit.baci") == {"baci.csv": ("processed", None)}

    # Nothing is due on the next run.
    again = load.load_source(engine, store, BACI)
    assert (again.files, again.not_due, again.skipped) == ([], ["baci.csv"], ["baci.csv"])
    assert len(table(engine, "dit.baci", "L0")) == 2


HMRC_L1 = [
    ("2016-01-01 00:00:00", "aaa limited", "01 street name street line london", "BB11BB", ["12345670"]),
    (
        "2016-01-01 00:00:00",
        "abc company ltd",
        "1 - 3  street avenue house name city name",
        "AA11AA",
        ["12345678", "23456789"],
    ),
    (
        "2016-02-01 00:00:00",
        "bbb limited",
        "aaa house 2 street name city county",
        "AA111AA",
        ["98765432", "12345678"],
    ),
]


def test_hmrc_exporters_events_and_a_new_file_appends(engine: Engine, store: LocalBlobStore) -> None:
    spec = SOURCES["hmrc.exporters"]
    put(store, spec, "exporters1601.zip", "hmrc_exporters_2016_mock.zip")
    report = load.load_source(engine, store, spec)
    (file,) = report.files
    assert file.status == "loaded" and file.counts == {"short_line": 1}
    assert [problem.kind for problem in file.problems] == ["short_line"]
    assert data_rows(engine, "hmrc.exporters", "L1") == expect(HMRC_L1)
    assert len(table(engine, "hmrc.exporters", "L0")) == 3

    # The legacy's "loading new data into an existing schema": appended, the tables kept.
    put(store, spec, "exporters1602.zip", "hmrc_exporters_2016_mock.zip")
    report = load.load_source(engine, store, spec)
    assert (report.loaded, report.not_due) == (["exporters1602.zip"], ["exporters1601.zip"])
    assert data_rows(engine, "hmrc.exporters", "L1") == expect(HMRC_L1 + HMRC_L1)
    l0 = table(engine, "hmrc.exporters", "L0")
    assert [row["datafile_created"] for row in l0] == ["exporters1601.zip"] * 3 + ["exporters1602.zip"] * 3
    assert [row["id"] for row in l0] == [1, 2, 3, 4, 5, 6]
    # Each L1 row points at its own file's L0 row.
    l1 = table(engine, "hmrc.exporters", "L1")
    assert sorted(row["data_source_row_id"] for row in l1) == [1, 2, 3, 4, 5, 6]


def _ons_rows(name: str) -> list[tuple[str | None, ...]]:
    with zipfile.ZipFile(DATA / name) as archive:
        member = next(n for n in archive.namelist() if n.endswith("_UK.csv"))
        text = archive.read(member).decode()
    return [tuple(value or None for value in row) for row in list(csv.reader(io.StringIO(text)))[1:]]


def _ons_l1(row: tuple[str | None, ...], published: str) -> tuple[Any, ...]:
    def month(value: str | None) -> str | None:
        return None if value is None else f"{value[:4]}-{value[4:]}-01"

    return (*row[:3], month(row[3]), month(row[4]), *row[5:], published)


def test_ons_postcode_directory_files_load_in_date_order(engine: Engine, store: LocalBlobStore) -> None:
    spec = SOURCES["ons.postcode_directory"]
    # By name JUL would come before MAY.
    put(store, spec, "ONSPD_JUL_2019_UK.zip", "ons_postcode_directory_ONSPD_JUL_2019_UK.zip")
    put(store, spec, "ONSPD_MAY_2019_UK.zip", "ons_postcode_directory_ONSPD_MAY_2019_UK.zip")
    report = load.load_source(engine, store, spec)
    assert report.loaded == ["ONSPD_MAY_2019_UK.zip", "ONSPD_JUL_2019_UK.zip"]

    may, jul = (
        _ons_rows("ons_postcode_directory_ONSPD_MAY_2019_UK.zip"),
        _ons_rows("ons_postcode_directory_ONSPD_JUL_2019_UK.zip"),
    )
    assert (len(may), len(jul)) == (2, 3)
    assert data_rows(engine, "ons.postcode_directory", "L0") == expect(may + jul)
    l0 = table(engine, "ons.postcode_directory", "L0")
    assert [(row["id"], row["datafile_created"], row["pcd"]) for row in l0] == [
        (1, "ONSPD_MAY_2019_UK.zip", "AB1 0AA"),
        (2, "ONSPD_MAY_2019_UK.zip", "AB1 0AB"),
        (3, "ONSPD_JUL_2019_UK.zip", "AB1 0AA"),
        (4, "ONSPD_JUL_2019_UK.zip", "AB1 0AB"),
        (5, "ONSPD_JUL_2019_UK.zip", "AB1 0AD"),
    ]
    expected_l1 = [_ons_l1(row, "2019-05-01") for row in may] + [_ons_l1(row, "2019-07-01") for row in jul]
    assert data_rows(engine, "ons.postcode_directory", "L1") == expect(expected_l1)
    first = table(engine, "ons.postcode_directory", "L1")[0]
    assert (first["dointr"], first["doterm"], first["publication_date"]) == (
        date(1980, 1, 1),
        None,
        date(2019, 5, 1),
    )
    assert (first["lat"], first["long"]) == ("57.101474", "-2.242851")


def _accounts_row(number: int, *values: Any) -> tuple[Any, ...]:
    return (number, "test_datafile_1.zip", *values)


def _figures(*leading: int | None) -> list[Decimal | None]:
    return [None if value is None else Decimal(value) for value in leading] + [None] * (25 - len(leading))


def test_companies_house_accounts_l0_as_the_legacy(engine: Engine, store: LocalBlobStore) -> None:
    spec = SOURCES["companies_house.accounts_legacy"]
    put(store, spec, "test_datafile_1.zip", "companies_house_accounts_test_datafile_1.zip")
    (file,) = load.load_source(engine, store, spec).files
    assert (file.status, file.rows_read, file.l0_inserted, file.l1_inserted) == ("loaded", 4, 4, 0)

    html = ("Prod223_2798", "12345", date(2020, 3, 31), "html", "")
    html_general = (date(2020, 3, 31), "12345", "BadCorp2 Limited", False, Decimal("1.0"))
    html_figures = _figures(None, None, None, 96264, None, None, 96264, 96264, None, None, None, 96264)
    xml = ("Prod223_1859", "1234", date(2017, 2, 27), "xml", "http://www.xbrl.org/uk/fr/gaap/pt/2004-12-01")
    xml_general = (date(2016, 7, 31), "1234", "BadCorp Limited", False, None)
    expected = [
        _accounts_row(1, *html, date(2020, 3, 31), date(2020, 3, 31), *html_general, *html_figures),
        _accounts_row(2, *html, date(2019, 3, 31), date(2019, 3, 31), *html_general, *html_figures),
        _accounts_row(
            3,
            *xml,
            date(2016, 7, 31),
            date(2016, 7, 31),
            *xml_general,
            *_figures(251044, 1840, 29277, 31117, None, None, 16747, 267791, 267734, 5700, 18511, 267734),
        ),
        _accounts_row(
            4,
            *xml,
            date(2015, 7, 31),
            date(2015, 7, 31),
            *xml_general,
            *_figures(251160, 2162, 32909, 35071, None, None, 18604, 269764, 269707, 5700, 20484, 269707),
        ),
    ]
    assert [tuple(row.values()) for row in table(engine, "companies_house.accounts_legacy", "L0")] == expected
    # L0 only, as the legacy.
    assert not exists(engine, "companies_house.accounts_legacy", "L1")


def test_world_bank_tariff_l0_only(engine: Engine, store: LocalBlobStore) -> None:
    spec = SOURCES["world_bank.tariff"]
    put(store, spec, "tariff.csv", "world_bank_tariff.csv")
    assert load.load_source(engine, store, spec).loaded == ["tariff.csv"]
    assert data_rows(engine, "world_bank.tariff", "L0") == expect(
        [
            (48, 1999, 201, 0, "AHS", 5, 20),
            (262, 2005, 201, 380, "BND", 40, 40),
            (266, 1998, 201, 0, "AHS", 20, 20),
        ]
    )
    assert not exists(engine, "world_bank.tariff", "L1")


COMTRADE_ROWS = [
    (0, "World", "World", "World", "World", "WL", "WLD", "1962", "2061"),
    (4, "Afghanistan", "Afghanistan", "Afghanistan", None, "AF", "AFG", "1962", "2061"),
    (899, "Areas, nes", "Areas, not elsewhere specified", "Areas, nes", None, None, None, "1962", "2061"),
    (918, "European Union", "European Union", "European Union", None, "EU", "EUR", None, None),
]


@pytest.mark.parametrize(
    ("source", "fixture", "l0", "l1"),
    [
        (
            "comtrade.country_code_and_iso",
            "comtrade_country_code_and_iso_country_list.csv",
            COMTRADE_ROWS,
            COMTRADE_ROWS,
        ),
        ("dit.reference_postcodes", "dit_reference_postcodes_snapshot1.csv", REFERENCE_ROWS, REFERENCE_ROWS),
        ("world_bank.bound_rates", "world_bank_bound_rates.csv", [("H0", 4, 10111, 10, 2)], [(4, 10111, 10)]),
        (
            "world_bank.bound_rates",
            "world_bank_bound_rates_multiple_nomen_codes.csv",
            [("H0", 4, 10111, 10, 2), ("H1", 4, 10111, 5, 2), ("H2", 4, 10111, 7, 2)],
            # The highest nomenclature's rate.
            [(4, 10111, 7)],
        ),
    ],
    ids=["comtrade", "reference_postcodes", "bound_rates", "bound_rates_nomen_codes"],
)
def test_snapshot_sources_as_the_legacy(
    engine: Engine,
    store: LocalBlobStore,
    source: str,
    fixture: str,
    l0: list[tuple[Any, ...]],
    l1: list[tuple[Any, ...]],
) -> None:
    spec = SOURCES[source]
    put(store, spec, "snapshot.csv", fixture)
    (file,) = load.load_source(engine, store, spec).files
    assert (file.status, file.rows_read, file.l0_inserted, file.l1_inserted) == (
        "loaded",
        len(l0),
        len(l0),
        len(l1),
    )
    assert data_rows(engine, spec.schema, "L0") == expect(l0)
    assert data_rows(engine, spec.schema, "L1") == expect(l1)
    rows = table(engine, spec.schema, "L0")
    assert list(rows[0])[:4] == ["id", "datafile_created", "datafile_updated", "data_hash"]
    assert {(row["datafile_created"], row["datafile_updated"]) for row in rows} == {
        ("snapshot.csv", "snapshot.csv")
    }
    assert [row["id"] for row in rows] == list(range(1, len(l0) + 1))  # in the file's order
    assert all(len(row["data_hash"]) == 32 for row in rows)


def _eu_expected() -> list[tuple[Any, ...]]:
    with (DATA / "dit_eu_country_membership_eu_spine.csv").open() as handle:
        records = list(csv.reader(handle))
    return [tuple(value or None for value in record) for record in records[1:]]


def test_eu_country_membership_unpivot(engine: Engine, store: LocalBlobStore) -> None:
    spec = SOURCES["dit.eu_country_membership"]
    put(store, spec, "eu_spine.csv", "dit_eu_country_membership_eu_spine.csv")
    (file,) = load.load_source(engine, store, spec).files
    assert (file.l0_inserted, file.l1_inserted) == (3, 3 * 61)
    assert data_rows(engine, spec.schema, "L0") == expect(_eu_expected())
    l1 = data_rows(engine, spec.schema, "L1")
    # The legacy's check: the first five rows.
    assert l1[:5] == [("Austria", "AUT", year, None) for year in range(1958, 1963)]
    assert ("Austria", "AUT", 1995, "EUN") in l1 and ("Bulgaria", "BGR", 2006, None) in l1
    assert sum(1 for row in l1 if row[0] == "Bulgaria" and row[3] == "EUN") == 12

    # The same snapshot under another name: the rows are seen again, L1 gains nothing.
    put(store, spec, "eu_spine_again.csv", "dit_eu_country_membership_eu_spine.csv")
    (file,) = load.load_source(engine, store, spec).files
    assert (file.l0_inserted, file.l0_updated, file.l1_inserted) == (0, 3, 0)
    assert len(data_rows(engine, spec.schema, "L1")) == 183


# --- snapshots over time -----------------------------------------------------------------------------


def test_snapshot_versions_rows_first_and_last_seen(engine: Engine, store: LocalBlobStore) -> None:
    spec = SOURCES["dit.reference_postcodes"]
    first = (DATA / "dit_reference_postcodes_snapshot1.csv").read_text()
    header, _aberdeen, hull = first.splitlines()
    new = '"ZE1 0AA","S12000027","Shetland Islands","S99999999","","S99999999","","S99999999","Scotland","446473","1140922","1980-01-01",""'
    # The second snapshot: Aberdeen gone, Hull kept (twice, as exports repeat rows), Shetland new.
    second = "\n".join([header, hull, new, hull]) + "\n"
    put(store, spec, "snapshot1.csv", first.encode())
    put(store, spec, "snapshot2.csv", second.encode())

    report = load.load_source(engine, store, spec)
    assert report.loaded == ["snapshot1.csv", "snapshot2.csv"]
    assert [(f.rows_read, f.l0_inserted, f.l0_updated, f.l1_inserted) for f in report.files] == [
        (2, 2, 0, 2),
        (3, 1, 1, 1),
    ]
    versions = {
        row["postcode"]: (row["id"], row["datafile_created"], row["datafile_updated"])
        for row in table(engine, spec.schema, "L0")
    }
    assert versions == {
        "AB10 1AA": (1, "snapshot1.csv", "snapshot1.csv"),  # vanished: its last snapshot stays
        "HU4 7SW": (2, "snapshot1.csv", "snapshot2.csv"),  # in both
        "ZE1 0AA": (3, "snapshot2.csv", "snapshot2.csv"),  # new
    }
    l1 = table(engine, spec.schema, "L1")
    assert [(row["data_source_row_id"], row["postcode"]) for row in l1] == [
        (1, "AB10 1AA"),
        (2, "HU4 7SW"),
        (3, "ZE1 0AA"),
    ]


# --- snapshots in bulk: a new L0 gets its keys after its rows, a file goes in by batches -------------------

SYNTHETIC_SCHEMA = "t.load_snapshot"
SYNTHETIC_HEADER = ["label", "amount", "day", "count"]


def _synthetic_reader(stream: Any, file_name: str) -> Any:
    from ecr_pipelines.datastore.sources._files import csv_source_rows
    from ecr_pipelines.datastore.sources.spec import FileRows

    return FileRows(rows=csv_source_rows(stream, file_name, header=SYNTHETIC_HEADER))


@pytest.fixture
def synthetic(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[SourceSpec]:
    """A snapshot source of text, numeric, date and bigint columns, loaded in batches of 4 rows
    (two 2-row chunks)."""
    from ecr_pipelines.datastore.sources.spec import Column, blob_prefix
    from ecr_pipelines.lib import copy

    monkeypatch.setattr(copy, "CHUNK_ROWS", 2)
    monkeypatch.setattr(load, "SNAPSHOT_BATCH_ROWS", 4)
    yield SourceSpec(
        id="t.load_snapshot",
        group="t.load_snapshot",
        loading="snapshot",
        schema=SYNTHETIC_SCHEMA,
        columns=(
            Column("label", "text"),
            Column("amount", "numeric"),
            Column("day", "date"),
            Column("count", "bigint"),
        ),
        reader=_synthetic_reader,
        blob_prefix=blob_prefix("t", "load_snapshot"),
    )
    with engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{SYNTHETIC_SCHEMA}" CASCADE'))


def _csv(rows: list[tuple[str, ...]]) -> bytes:
    lines = [",".join(SYNTHETIC_HEADER)] + [",".join(f'"{value}"' for value in row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _layout(engine: Engine, schema: str) -> dict[str, Any]:
    """L0's definition as the catalog has it, its schema's name left out."""
    table = f'"{schema}"."L0"'
    with engine.connect() as conn:
        columns = conn.execute(
            sa.text(
                "SELECT attname, format_type(atttypid, atttypmod), attnotnull, "
                "pg_get_expr(adbin, adrelid) FROM pg_attribute LEFT JOIN pg_attrdef "
                "ON adrelid = attrelid AND adnum = attnum WHERE attrelid = to_regclass(:t) "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            ),
            {"t": table},
        ).all()
        constraints = conn.execute(
            sa.text(
                "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = to_regclass(:t) ORDER BY conname"
            ),
            {"t": table},
        ).all()
        indexes = conn.execute(
            sa.text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :s AND tablename = 'L0' "
                "ORDER BY indexname"
            ),
            {"s": schema},
        ).all()
        owned = conn.execute(
            sa.text(
                "SELECT pg_get_serial_sequence(:t, 'id') IS NOT NULL, relpersistence FROM pg_class WHERE oid = to_regclass(:t)"
            ),
            {"t": table},
        ).one()
    return {
        "columns": [tuple(str(value).replace(schema, "S") for value in row) for row in columns],
        "constraints": [tuple(row) for row in constraints],
        "indexes": [(name, definition.replace(f'"{schema}"', "S")) for name, definition in indexes],
        "owned": tuple(owned),
    }


def test_a_new_snapshot_l0_ends_with_the_layout_it_always_had(engine: Engine, store: LocalBlobStore) -> None:
    spec = SOURCES["dit.reference_postcodes"]
    put(store, spec, "snapshot.csv", "dit_reference_postcodes_snapshot1.csv")
    assert load.load_source(engine, store, spec).loaded == ["snapshot.csv"]
    # The table as the loader created it before the keys were added after the rows.
    columns = ", ".join(f'"{column.name}" {column.type}' for column in spec.columns)
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA "t.layout"'))
        conn.execute(
            sa.text(
                'CREATE TABLE "t.layout"."L0" ("id" serial PRIMARY KEY, "datafile_created" text, '
                f'"datafile_updated" text, "data_hash" text, {columns}, UNIQUE ("data_hash"))'
            )
        )
    try:
        assert _layout(engine, spec.schema) == _layout(engine, "t.layout")
        assert [name for name, _ in _layout(engine, spec.schema)["indexes"]] == [
            "L0_data_hash_key",
            "L0_pkey",
        ]
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text('DROP SCHEMA "t.layout" CASCADE'))


def test_repeats_within_a_file_keep_their_first_row_and_its_id(engine: Engine, synthetic: SourceSpec) -> None:
    a, b, c, d = (
        ("A", "1.50", "2020-01-02", "7"),
        ("B", "", "", ""),
        ("C", "2", "2021-1-1", "3000000000"),
        ("D", "", "", "1"),
    )
    # A new L0, three batches: the repeats of A and B are in other batches than their first rows.
    first = load.load_file(engine, synthetic, "one.csv", io.BytesIO(_csv([a, b, c, a, d, b, b, a, c, d])))
    assert (first.status, first.rows_read, first.l0_inserted, first.l0_updated) == ("loaded", 10, 4, 0)
    l0 = table(engine, SYNTHETIC_SCHEMA, "L0")
    # A repeat draws an id it leaves unused, as the statement that meets it in the unique index.
    assert [(row["id"], row["label"]) for row in l0] == [(1, "A"), (2, "B"), (3, "C"), (5, "D")]
    with engine.connect() as conn:
        hashes = conn.execute(
            sa.text(
                f'SELECT count(*) FROM "{SYNTHETIC_SCHEMA}"."L0" AS t '
                "WHERE data_hash = md5(ROW(t.label, t.amount, t.day, t.count)::text)"
            )
        ).scalar()
    assert hashes == 4

    # An L0 with rows: A and C seen again (A twice), E new twice, F new; ids in the file's order.
    e, f = ("E", "5", "", ""), ("F", "", "1999-12-31", "")
    second = load.load_file(
        engine, synthetic, "two.csv", io.BytesIO(_csv([e, a, f, a, c, e, ("A", "1.5", "2020-01-02", "7")]))
    )
    assert (second.status, second.rows_read, second.l0_inserted, second.l0_updated) == ("loaded", 7, 3, 2)
    l0 = table(engine, SYNTHETIC_SCHEMA, "L0")
    assert [(row["id"], row["label"], row["datafile_created"], row["datafile_updated"]) for row in l0] == [
        (1, "A", "one.csv", "two.csv"),
        (2, "B", "one.csv", "one.csv"),
        (3, "C", "one.csv", "two.csv"),
        (5, "D", "one.csv", "one.csv"),
        (11, "E", "two.csv", "two.csv"),
        (12, "F", "two.csv", "two.csv"),
        # 1.5 is not 1.50: another row. E's repeat drew 13.
        (14, "A", "two.csv", "two.csv"),
    ]


def test_new_rows_of_a_later_file_take_ids_in_its_order(engine: Engine, synthetic: SourceSpec) -> None:
    old = [(f"old {n}", str(n), "", "") for n in range(300)]
    assert load.load_file(engine, synthetic, "one.csv", io.BytesIO(_csv(old))).l0_inserted == 300
    # A few rows against a big L0: the planner may hash the file's rows and probe them with L0's,
    # which gives the new ones in the hash's order.
    new = [
        ("zeta", "", "", ""),
        old[5],
        ("alpha", "", "", ""),
        ("mu", "", "", ""),
        old[7],
        ("beta", "", "", ""),
    ]
    report = load.load_file(engine, synthetic, "two.csv", io.BytesIO(_csv(new)))
    assert (report.l0_inserted, report.l0_updated) == (4, 2)
    added = [(row["id"], row["label"]) for row in table(engine, SYNTHETIC_SCHEMA, "L0") if row["id"] > 300]
    assert added == [(301, "zeta"), (302, "alpha"), (303, "mu"), (304, "beta")]


def test_a_bad_value_in_a_later_batch_of_a_new_l0(
    engine: Engine, synthetic: SourceSpec, store: LocalBlobStore
) -> None:
    rows = [(f"row {n}", str(n), "", "") for n in range(20)]
    rows[13] = ("row 13", "thirteen", "", "")
    put(store, synthetic, "a_bad.csv", _csv(rows))
    put(store, synthetic, "b_good.csv", _csv(rows[:13]))
    report = load.load_source(engine, store, synthetic)
    assert (report.failed, report.loaded) == (["a_bad.csv"], ["b_good.csv"])
    # Its place in the file, not in its batch's COPY.
    assert states(engine, synthetic.id)["a_bad.csv"] == (
        "failed",
        'database error 22P02: invalid input syntax for type numeric: "thirteen"; '
        'data row 14, column amount: "thirteen"',
    )
    # The failed file's table went with its transaction; the next file made its own.
    assert [row["id"] for row in table(engine, SYNTHETIC_SCHEMA, "L0")] == list(range(1, 14))
    assert _layout(engine, SYNTHETIC_SCHEMA)["constraints"][0][0] == "L0_data_hash_key"

    # A reader's error in a later batch fails the file the same way, with the reader's kind and line.
    file = load.load_file(engine, synthetic, "c_short.csv", io.BytesIO(_csv(rows[:6]) + b"x,1\n"))
    assert (file.status, file.error_kind) == ("failed", "bad_row") and "line 8" in (file.error or "")
    assert len(table(engine, SYNTHETIC_SCHEMA, "L0")) == 13


# --- force ---------------------------------------------------------------------------------------------


def test_force_reloads_every_file_and_keeps_them_all(engine: Engine, store: LocalBlobStore) -> None:
    put(store, BACI, "baci_1995.csv", BACI_CSV)
    put(store, BACI, "baci_1996.csv", BACI_CSV.replace(b"1995,", b"1996,"))
    assert load.load_source(engine, store, BACI).loaded == ["baci_1995.csv", "baci_1996.csv"]
    with engine.begin() as conn:
        registry.mark(conn, "dit.baci", "gone.csv", State.PROCESSED)  # its file was deleted since

    report = load.load_source(engine, store, BACI, force=True)
    assert report.tables_dropped and report.loaded == ["baci_1995.csv", "baci_1996.csv"]
    l0 = table(engine, "dit.baci", "L0")
    # Both files, once each, numbered afresh: not the legacy's last file only, nor doubled.
    assert [(row["id"], row["datafile_created"], row["t"]) for row in l0] == [
        (1, "baci_1995.csv", 1995),
        (2, "baci_1995.csv", 1995),
        (3, "baci_1996.csv", 1996),
        (4, "baci_1996.csv", 1996),
    ]
    assert len(table(engine, "dit.baci", "L1")) == 4
    assert states(engine, "dit.baci") == {
        "baci_1995.csv": ("processed", None),
        "baci_1996.csv": ("processed", None),
        "gone.csv": ("failed", "its rows were dropped by a forced reload and the file is no longer stored"),
    }


def test_force_on_one_file_replaces_its_rows(engine: Engine) -> None:
    first = load.load_file(engine, BACI, "baci.csv", io.BytesIO(BACI_CSV))
    assert first.status == "loaded"
    assert load.load_file(engine, BACI, "baci.csv", io.BytesIO(BACI_CSV)).status == "skipped"
    again = load.load_file(engine, BACI, "baci.csv", io.BytesIO(BACI_CSV), force=True)
    assert (again.status, again.l0_inserted) == ("loaded", 2)
    assert data_rows(engine, "dit.baci", "L0") == expect(BACI_ROWS)
    assert data_rows(engine, "dit.baci", "L1") == expect(BACI_ROWS)
    assert [row["id"] for row in table(engine, "dit.baci", "L0")] == [3, 4]


# --- failures ------------------------------------------------------------------------------------------


def test_a_bad_file_fails_with_its_reason_and_the_next_loads(engine: Engine, store: LocalBlobStore) -> None:
    put(store, BACI, "a_bad.csv", b"year,hs6\n1995,10519\n")
    put(store, BACI, "b_good.csv", BACI_CSV)
    report = load.load_source(engine, store, BACI)
    assert (report.failed, report.loaded) == (["a_bad.csv"], ["b_good.csv"])
    bad = report.files[0]
    assert bad.error_kind == "bad_header" and "a_bad.csv" in (bad.error or "")
    state, message = states(engine, "dit.baci")["a_bad.csv"]
    assert state == "failed" and message == bad.error and "unexpected header" in message
    assert data_rows(engine, "dit.baci", "L0") == expect(BACI_ROWS)

    # A failed file is retried; a processed one is not.
    again = load.load_source(engine, store, BACI)
    assert (again.failed, again.not_due) == (["a_bad.csv"], ["b_good.csv"])


def test_a_bad_row_mid_file_leaves_the_tables_as_they_were(engine: Engine, store: LocalBlobStore) -> None:
    put(store, BACI, "a.csv", BACI_CSV)
    put(store, BACI, "b.csv", b"t,hs6,i,j,v,q\n1996,1,2,3,4,5\n1996,1,2,3\n")
    report = load.load_source(engine, store, BACI)
    assert report.failed == ["b.csv"]
    # The reader's own error, through COPY: its kind and line are kept.
    assert report.files[1].error_kind == "bad_row" and "line 3" in (report.files[1].error or "")
    assert data_rows(engine, "dit.baci", "L0") == expect(BACI_ROWS)
    assert data_rows(engine, "dit.baci", "L1") == expect(BACI_ROWS)


def test_a_database_error_fails_the_file_and_changes_nothing(engine: Engine, store: LocalBlobStore) -> None:
    put(store, BACI, "a.csv", BACI_CSV)
    assert load.load_source(engine, store, BACI).loaded == ["a.csv"]
    before = table(engine, "dit.baci", "L0"), table(engine, "dit.baci", "L1")

    # Fine CSV, but "abc" is no integer: Postgres refuses it in the COPY, after a good row.
    put(store, BACI, "b.csv", b"t,hs6,i,j,v,q\n1996,1,2,3,4,5\n1996,abc,2,3,4,5\n")
    # And one that overflows the integer column.
    put(store, BACI, "c.csv", b"t,hs6,i,j,v,q\n99999999999,1,2,3,4,5\n")
    report = load.load_source(engine, store, BACI)
    assert report.failed == ["b.csv", "c.csv"] and report.loaded == []
    assert {f.error_kind for f in report.files} == {"database"}
    registered = states(engine, "dit.baci")
    assert registered["b.csv"][0] == "failed"  # not processed, as the legacy's COPY helper left it
    assert 'invalid input syntax for type integer: "abc"' in (registered["b.csv"][1] or "")
    assert registered["b.csv"][1] == (
        'database error 22P02: invalid input syntax for type integer: "abc"; data row 2, column hs6: "abc"'
    )
    assert "out of range for type integer" in (registered["c.csv"][1] or "")
    assert (table(engine, "dit.baci", "L0"), table(engine, "dit.baci", "L1")) == before

    # The sequence moved on, the ids of the next good file still follow the last ones.
    put(store, BACI, "d.csv", BACI_CSV)
    assert load.load_source(engine, store, BACI).loaded == ["d.csv"]
    ids = [row["id"] for row in table(engine, "dit.baci", "L0")]
    assert ids[:2] == [1, 2] and ids[2] < ids[3] and len(ids) == 4


def test_a_table_of_another_layout_is_refused(engine: Engine, store: LocalBlobStore) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA "dit.baci"'))
        conn.execute(sa.text('CREATE TABLE "dit.baci"."L0" (id int, datafile_created text, t int)'))
    put(store, BACI, "baci.csv", BACI_CSV)
    (file,) = load.load_source(engine, store, BACI).files
    assert file.status == "failed" and file.error_kind == "table_layout"
    assert "load with force" in (file.error or "")
    # A forced run recreates the tables.
    assert load.load_source(engine, store, BACI, force=True).loaded == ["baci.csv"]
    assert data_rows(engine, "dit.baci", "L0") == expect(BACI_ROWS)


def test_file_names_are_data_not_sql(engine: Engine, store: LocalBlobStore) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE public.sentinel (x int)"))
    names = [
        "it's.csv",
        'x"; DROP TABLE public.sentinel; --.csv',
        "100%s %(x)s'); DROP TABLE public.sentinel;.csv",
    ]
    for name in names:
        put(store, BACI, name, BACI_CSV)
    report = load.load_source(engine, store, BACI)
    assert sorted(report.loaded) == sorted(names) and report.failed == []
    assert exists(engine, "public", "sentinel")
    created = [row["datafile_created"] for row in table(engine, "dit.baci", "L0")]
    assert sorted(set(created)) == sorted(names) and len(created) == 6
    assert set(states(engine, "dit.baci")) == set(names)

    spec = SOURCES["dit.reference_postcodes"]
    put(store, spec, names[1], "dit_reference_postcodes_snapshot1.csv")
    (file,) = load.load_source(engine, store, spec).files
    assert (file.status, file.l1_inserted) == ("loaded", 2)
    assert {row["datafile_updated"] for row in table(engine, spec.schema, "L0")} == {names[1]}
    assert exists(engine, "public", "sentinel")


# --- streams, order, what is not written yet ----------------------------------------------------------


class Unseekable(io.RawIOBase):
    """A body that can only be read forward, as an object store's."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        chunk = self._data.read(len(target))
        target[: len(chunk)] = chunk
        return len(chunk)


def test_a_zip_from_a_forward_only_stream(engine: Engine) -> None:
    spec = SOURCES["ons.postcode_directory"]
    data = (DATA / "ons_postcode_directory_ONSPD_MAY_2019_UK.zip").read_bytes()
    report = load.load_file(engine, spec, "ONSPD_MAY_2019_UK.zip", Unseekable(data))  # type: ignore[arg-type]
    assert (report.status, report.l0_inserted, report.l1_inserted) == ("loaded", 2, 2)


def test_file_order() -> None:
    names = ["ONSPD_JUL_2019_UK.zip", "ONSPD_MAY_2019_UK.zip", "ONSPD_FEB_2020_UK.zip", "readme.zip"]
    ordered = sorted(names, key=lambda name: load.file_order_key("ons.postcode_directory", name))
    assert ordered == [
        "readme.zip",
        "ONSPD_MAY_2019_UK.zip",
        "ONSPD_JUL_2019_UK.zip",
        "ONSPD_FEB_2020_UK.zip",
    ]
    hmrc = sorted(
        ["exporters1701.zip", "exporters1612.zip"], key=lambda n: load.file_order_key("hmrc.exporters", n)
    )
    assert hmrc == ["exporters1612.zip", "exporters1701.zip"]
    assert sorted(["b.csv", "a.csv"], key=lambda n: load.file_order_key("dit.baci", n)) == ["a.csv", "b.csv"]


def test_listing_skips_dot_files_and_other_sources(store: LocalBlobStore) -> None:
    put(store, BACI, "a.csv", BACI_CSV)
    put(store, BACI, ".DS_Store", b"junk")
    store.put_bytes("datastore/datasets/dit/baci_other/x.csv", BACI_CSV)
    assert load.stored_files(store, BACI) == ["a.csv"]


def test_spire_waits_for_its_group_step_and_the_transform_needs_its_inputs(
    engine: Engine, store: LocalBlobStore
) -> None:
    spire = SOURCES["dit.spire.footnotes"]
    put(store, spire, "footnotes.csv", "dit_spire/footnotes.csv")
    # SPIRE's tables are rebuilt together (datastore.spire), never one file at a time.
    with pytest.raises(NotImplementedError, match="rebuild"):
        load.load_source(engine, store, spire)
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM operations.datafile_registry")) == 0
    load.load_source(engine, store, SOURCES["world_bank.tariff.transformed"])
    with engine.connect() as conn:
        state, message = conn.execute(
            sa.text("SELECT state, error_message FROM operations.datafile_registry WHERE file_name IS NULL")
        ).one()
    assert state == "failed" and "world_bank" in message


def test_a_source_without_files_gets_a_registry_row_per_run(engine: Engine, store: LocalBlobStore) -> None:
    spec = SOURCES["world_bank.tariff.transformed"]
    outcomes = iter([{"rows": 7}, RuntimeError("no tariffs to transform")])

    def runner(_engine: Engine, _spec: SourceSpec) -> dict[str, int]:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    load.SOURCE_RUNNERS[spec.id] = runner
    try:
        first = load.load_source(engine, store, spec)
        second = load.load_source(engine, store, spec)
    finally:
        del load.SOURCE_RUNNERS[spec.id]
    assert (first.files[0].status, first.files[0].counts) == ("loaded", {"rows": 7})
    assert (second.files[0].status, second.files[0].error) == ("failed", "no tariffs to transform")
    with engine.connect() as conn:
        rows = registry.entries(conn, spec.id)
    assert [(row.file_name, row.state, row.error_message) for row in rows] == [
        (None, State.PROCESSED, None),
        (None, State.FAILED, "no tariffs to transform"),
    ]


def test_one_run_per_source(engine: Engine, store: LocalBlobStore) -> None:
    put(store, BACI, "baci.csv", BACI_CSV)
    with load.source_lock(engine, "dit.baci"), pytest.raises(load.SourceBusy):
        load.load_source(engine, store, BACI)
    assert load.load_source(engine, store, BACI).loaded == ["baci.csv"]


# --- registry ------------------------------------------------------------------------------------------


def test_registry_states_and_due_files(engine: Engine) -> None:
    source = "dit.baci"
    with engine.begin() as conn:
        registry.mark(conn, source, "processed.csv", State.PROCESSED)
        registry.mark(conn, source, "ignored.csv", State.IGNORED)
        registry.mark(conn, source, "failed.csv", State.FAILED, "boom")
        registry.mark(conn, source, "stuck.csv", State.PROCESSING)  # its run died
        registry.mark(conn, "other.source", "new.csv", State.PROCESSED)
    names = ["new.csv", "processed.csv", "ignored.csv", "failed.csv", "stuck.csv"]
    with engine.connect() as conn:
        assert registry.done_files(conn, source) == {"processed.csv", "ignored.csv"}
        assert registry.due_files(conn, source, names) == ["new.csv", "failed.csv", "stuck.csv"]
        assert registry.due_files(conn, source, names, force=True) == names

    with engine.begin() as conn:
        # get-or-create: the same row, its state and reason replaced.
        failed = registry.get(conn, source, "failed.csv")
        assert failed is not None and failed.updated_timestamp is None
        again = registry.mark(conn, source, "failed.csv", State.FAILED, "boom again")
        assert (again.id, again.error_message) == (failed.id, "boom again")
        assert again.updated_timestamp is not None and again.updated_timestamp >= again.created_timestamp
        # A claim takes a due file, not a done one (unless forced), and clears the old reason.
        claimed = registry.claim(conn, source, "failed.csv")
        assert claimed is not None and (claimed.state, claimed.error_message) == (State.PROCESSING, None)
        assert registry.claim(conn, source, "processed.csv") is None
        assert registry.claim(conn, source, "ignored.csv") is None
        assert registry.claim(conn, source, "ignored.csv", force=True) is not None
        assert registry.claim(conn, source, "brand_new.csv") is not None
        long = registry.mark_failed(conn, source, "long.csv", "x" * 10_000)
        assert long.error_message is not None and len(long.error_message) == registry.MESSAGE_LIMIT


def test_a_file_left_processing_by_a_dead_run_is_retried(engine: Engine, store: LocalBlobStore) -> None:
    put(store, BACI, "baci.csv", BACI_CSV)
    with engine.begin() as conn:
        registry.mark(conn, "dit.baci", "baci.csv", State.PROCESSING)
    assert load.load_source(engine, store, BACI).loaded == ["baci.csv"]
    assert states(engine, "dit.baci") == {"baci.csv": ("processed", None)}


def test_an_ignored_file_is_not_loaded(engine: Engine, store: LocalBlobStore) -> None:
    put(store, BACI, "baci.csv", BACI_CSV)
    with engine.begin() as conn:
        registry.mark(conn, "dit.baci", "baci.csv", State.IGNORED)
    report = load.load_source(engine, store, BACI)
    assert (report.files, report.skipped) == ([], ["baci.csv"])
    assert not exists(engine, "dit.baci", "L0")


def test_spire_is_rebuilt_whole_from_the_newest_file_of_every_table(
    engine: Engine, store: LocalBlobStore
) -> None:
    spire = [spec for spec in SOURCES.values() if spec.id.startswith("dit.spire.")]
    for spec in spire:
        table = spec.id.rsplit(".", 1)[-1]
        put(store, spec, "2024-01.csv", f"dit_spire/{table}.csv")
    try:
        first = load.load_spire(engine, store)
        assert {f.status for f in first.files} == {"loaded"} and len(first.files) == len(spire)
        with engine.connect() as conn:
            footnotes = conn.scalar(sa.text("SELECT count(*) FROM spire.footnotes"))
            assert footnotes and footnotes == next(
                f.rows_read for f in first.files if f.source.endswith(".footnotes")
            )
        assert load.load_spire(engine, store).files == []  # nothing new: nothing rebuilt
        # A newer export of one table that breaks a constraint fails every file, and the tables stay.
        footnotes_spec = SOURCES["dit.spire.footnotes"]
        put(store, footnotes_spec, "2024-02.csv", b"id,text,status\nnot-a-number,x,CURRENT\n")
        failed = load.load_spire(engine, store)
        assert {f.status for f in failed.files} == {"failed"}
        with engine.connect() as conn:
            assert conn.scalar(sa.text("SELECT count(*) FROM spire.footnotes")) == footnotes
            states = conn.execute(
                sa.text(
                    "SELECT DISTINCT state::text FROM operations.datafile_registry WHERE source LIKE 'dit.spire.%'"
                )
            ).scalars()
            assert set(states) == {"processed", "failed"}  # the older exports stay processed
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("DROP SCHEMA IF EXISTS spire CASCADE"))
