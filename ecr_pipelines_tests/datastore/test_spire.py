"""The SPIRE schema rebuild on a real Postgres: the legacy's sample export (``data/sources/
dit_spire``) loads whole, a bad file fails the rebuild and leaves the previous tables, and a new
export replaces the old one."""

import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.datastore import spire
from ecr_pipelines.datastore.sources import sources_of_group
from ecr_pipelines.datastore.spire import LOAD_ORDER, TABLES_BY_NAME, SpireRebuildError, rebuild_spire
from ecr_pipelines.lib.database import engine_for
from ecr_pipelines.lib.migrations import upgrade

EXPORT = Path(__file__).parent / "data" / "sources" / "dit_spire"
# Data rows of the sample export, per table (counted from the files).
SAMPLE_ROWS = {
    "application_amendments": 5,
    "application_countries": 5,
    "applications": 44,
    "ars": 5,
    "batches": 50,
    "control_entries": 5,
    "country_group_entries": 5,
    "country_groups": 13,
    "end_users": 5,
    "footnote_entries": 5,
    "footnotes": 7,
    "goods_incidents": 12,
    "incidents": 5,
    "media_footnote_countries": 5,
    "media_footnote_details": 5,
    "media_footnotes": 7,
    "ogl_types": 5,
    "reasons_for_refusal": 5,
    "ref_ars_subjects": 5,
    "ref_country_mappings": 5,
    "ref_do_not_report_values": 5,
    "ref_report_ratings": 5,
    "returns": 5,
    "third_parties": 5,
    "ultimate_end_users": 5,
}


@pytest.fixture
def engine(fresh_database: str) -> Engine:
    engine = engine_for(fresh_database)
    upgrade(engine)
    return engine


def sample_export(**replaced: bytes) -> dict[str, BinaryIO]:
    """The sample export, one stream per table, with some tables' files replaced."""
    files: dict[str, BinaryIO] = {}
    for table in LOAD_ORDER:
        data = replaced.get(table)
        files[table] = (
            io.BytesIO(data) if data is not None else io.BytesIO((EXPORT / f"{table}.csv").read_bytes())
        )
    return files


def counts(conn: Connection) -> dict[str, int]:
    return {
        table: conn.execute(sa.text(f'SELECT count(*) FROM "spire"."{table}"')).scalar_one()
        for table in LOAD_ORDER
    }


@pytest.fixture
def loaded(engine: Engine) -> Iterator[Engine]:
    """A database holding the sample export."""
    with engine.begin() as conn:
        rebuild_spire(conn, sample_export())
    yield engine


def test_tables_match_the_readers_and_load_in_foreign_key_order() -> None:
    assert len(spire.TABLES) == 25
    readers = {spec.table: spec for spec in sources_of_group("dit.spire")}
    assert set(readers) == set(TABLES_BY_NAME)
    for name, table in TABLES_BY_NAME.items():
        assert table.column_names == readers[name].column_names, name
    for position, name in enumerate(LOAD_ORDER):
        assert TABLES_BY_NAME[name].referenced <= set(LOAD_ORDER[:position]), name
    # The notes' list has these two the other way round, which the foreign key forbids.
    assert LOAD_ORDER.index("media_footnotes") < LOAD_ORDER.index("media_footnote_details")
    assert LOAD_ORDER.index("media_footnote_details") < LOAD_ORDER.index("footnote_entries")


def test_sample_export_loads_every_table(engine: Engine) -> None:
    with engine.begin() as conn:
        report = rebuild_spire(
            conn, {f"dit.spire.{name}": stream for name, stream in sample_export().items()}
        )
    assert report.rows == SAMPLE_ROWS and report.without_file == []
    assert list(report.rows) == list(LOAD_ORDER)
    with engine.connect() as conn:
        assert counts(conn) == SAMPLE_ROWS
        # Empty CSV fields are NULL, and the values took the columns' types.
        text = conn.execute(sa.text('SELECT "text" FROM spire.footnotes WHERE id = 1')).scalar_one()
        assert text is None
        batch = conn.execute(
            sa.text("SELECT batch_ref, start_date, approve_date FROM spire.batches WHERE id = 2")
        ).one()
        assert batch.batch_ref == "C41" and batch.start_date is None
        assert batch.approve_date.isoformat() == "2020-04-27T11:03:38"
        value = conn.execute(
            sa.text("SELECT value FROM spire.control_entries ORDER BY gi_id, rating LIMIT 1")
        ).scalar_one()
        assert str(value) == "717489.82"
        constraints = conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE contype = 'c'), count(*) FILTER (WHERE contype = 'f')"
                " FROM pg_constraint WHERE connamespace = 'spire'::regnamespace"
            )
        ).one()
        # The legacy's 37 CHECK constraints and 24 foreign keys.
        assert tuple(constraints) == (37, 24)


def test_null_tokens_become_null(engine: Engine) -> None:
    footnotes = (
        b'"id","text","status"\n"1","NULL","CURRENT"\n"2","null","DELETED"\n"3","null value","ARCHIVED"\n'
    )
    with engine.begin() as conn:
        report = rebuild_spire(conn, {"footnotes": ("footnotes-2024.csv", io.BytesIO(footnotes))})
        assert report.rows["footnotes"] == 3
        assert "batches" in report.without_file and len(report.without_file) == 24
        rows = conn.execute(sa.text('SELECT id, "text" FROM spire.footnotes ORDER BY id')).all()
    assert [tuple(row) for row in rows] == [(1, None), (2, None), (3, "null value")]


def test_foreign_key_violation_keeps_the_previous_schema(loaded: Engine) -> None:
    applications = (EXPORT / "applications.csv").read_bytes()
    header, first, *rest = applications.splitlines(keepends=True)
    # Batch 999 is not in the export.
    broken = header + first.replace(b',"3","44"', b',"999","44"') + b"".join(rest)
    assert broken != applications
    with loaded.begin() as conn:
        with pytest.raises(SpireRebuildError) as caught:
            rebuild_spire(conn, sample_export(applications=broken))
        # The savepoint is gone, the caller's transaction goes on.
        assert conn.execute(sa.text("SELECT count(*) FROM spire.applications")).scalar_one() == 44
    error = caught.value
    assert (error.table, error.kind) == ("applications", "constraint")
    assert "applications_batch_id_fkey" in str(error) and "999" in str(error)
    with loaded.connect() as conn:
        assert counts(conn) == SAMPLE_ROWS


def test_check_violation_names_table_and_row(loaded: Engine) -> None:
    batches = (EXPORT / "batches.csv").read_bytes().replace(b'"2","C41","RELEASED"', b'"2","C41","HELLO"')
    with loaded.begin() as conn, pytest.raises(SpireRebuildError) as caught:
        files: dict[str, spire.SpireFile] = {
            **sample_export(),
            "batches": ("batches-new.csv", io.BytesIO(batches)),
        }
        rebuild_spire(conn, files)
    error = caught.value
    assert (error.table, error.row, error.kind, error.file_name) == (
        "batches",
        2,
        "constraint",
        "batches-new.csv",
    )
    assert "batches_check_1" in str(error) and "data row 2" in str(error)
    with loaded.connect() as conn:
        assert counts(conn) == SAMPLE_ROWS


def test_bad_value_and_bad_file_fail_the_rebuild(loaded: Engine) -> None:
    ogl = (EXPORT / "ogl_types.csv").read_bytes().replace(b'"594"', b'"five"')
    with loaded.begin() as conn, pytest.raises(SpireRebuildError) as caught:
        rebuild_spire(conn, sample_export(ogl_types=ogl))
    assert (caught.value.table, caught.value.row, caught.value.kind) == ("ogl_types", 1, "bad_value")
    assert "five" in str(caught.value)

    with loaded.begin() as conn, pytest.raises(SpireRebuildError) as caught:
        rebuild_spire(conn, sample_export(footnotes=b"id,texte\n1,x\n"))
    assert (caught.value.table, caught.value.kind) == ("footnotes", "bad_header")

    with loaded.begin() as conn, pytest.raises(SpireRebuildError) as caught:
        rebuild_spire(conn, {"footnote": io.BytesIO(b"id\n")})
    assert caught.value.kind == "unknown_table"
    with loaded.connect() as conn:
        assert counts(conn) == SAMPLE_ROWS


def test_second_export_replaces_the_first(loaded: Engine) -> None:
    batches = (
        b'"id","batch_ref","status","start_date","end_date","approve_date","release_date","staging_date"\n'
    )
    batches += b'"7","C1","STAGING",,,"2021-1-2 03:04:05",,\n'
    footnotes = b'"id","text","status"\n"9","new","CURRENT"\n'
    with loaded.begin() as conn:
        report = rebuild_spire(
            conn, {"batches": io.BytesIO(batches), "footnotes": io.BytesIO(footnotes), "applications": None}
        )
    assert report.total_rows == 2 and "applications" in report.without_file
    with loaded.connect() as conn:
        assert counts(conn) == {name: 1 if name in ("batches", "footnotes") else 0 for name in LOAD_ORDER}
        assert conn.execute(sa.text("SELECT id FROM spire.batches")).scalar_one() == 7
