"""``python -m ecr_pipelines datastore put`` (a local file into a source's blob prefix) and
``datastore dump`` (one CSV per table of a schema), run in-process through the real entry point,
against a blob store folder, the moto S3 server and a database of this module's own."""

import csv
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ecr_pipelines.__main__ import main
from ecr_pipelines_tests.conftest import own_database

BACI_PREFIX = "datastore/datasets/dit/baci/"


def _result(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out  # one line of JSON
    return json.loads(out)


# -- put --------------------------------------------------------------------------------------------


@pytest.fixture
def blobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "blobs"
    monkeypatch.setenv("BLOB_STORE_URL", str(root))
    return root


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    # Larger than the blob store's 1 MiB copy chunk, with every byte value.
    path = tmp_path / "baci_hs17_2019.csv"
    path.write_bytes(os.urandom(2_500_000) + bytes(range(256)))
    return path


def test_put_stores_the_file_under_the_source_prefix(
    blobs: Path, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datastore", "put", "dit.baci", str(payload)]) == 0

    key = BACI_PREFIX + payload.name
    assert _result(capsys) == {"key": key, "bytes": payload.stat().st_size}
    assert (blobs / key).read_bytes() == payload.read_bytes()
    assert not any((blobs / ".incoming").iterdir())


def test_put_under_another_name_and_spire_tables(
    blobs: Path, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datastore", "put", "dit.baci", str(payload), "--name", "BACI_HS17_Y2020.csv"]) == 0
    assert _result(capsys)["key"] == BACI_PREFIX + "BACI_HS17_Y2020.csv"
    assert (blobs / BACI_PREFIX / "BACI_HS17_Y2020.csv").read_bytes() == payload.read_bytes()

    assert main(["datastore", "put", "dit.spire.footnotes", str(payload), "--name", "footnotes.csv"]) == 0
    key = "datastore/datasets/dit/spire/footnotes/footnotes.csv"
    assert _result(capsys) == {"key": key, "bytes": payload.stat().st_size}
    assert (blobs / key).read_bytes() == payload.read_bytes()


def test_put_keeps_an_existing_object_unless_told(
    blobs: Path, payload: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datastore", "put", "dit.baci", str(payload)]) == 0
    capsys.readouterr()
    newer = tmp_path / "newer" / payload.name
    newer.parent.mkdir()
    newer.write_bytes(b"t,hs6,i,j,v,q\n")

    assert main(["datastore", "put", "dit.baci", str(newer)]) == 2
    refusal = _result(capsys)
    assert "--replace" in refusal["error"] and refusal["problems"][0]["kind"] == "exists"
    assert (blobs / BACI_PREFIX / payload.name).read_bytes() == payload.read_bytes()

    assert main(["datastore", "put", "dit.baci", str(newer), "--replace"]) == 0
    assert _result(capsys)["bytes"] == len(b"t,hs6,i,j,v,q\n")
    assert (blobs / BACI_PREFIX / payload.name).read_bytes() == b"t,hs6,i,j,v,q\n"


@pytest.mark.parametrize(
    ("args", "kind", "says"),
    [
        (["no.such.source"], "unknown_source", "is not a data store source"),
        (["dit.spire"], "unknown_source", "dit.spire.<table>"),
        (["dit.spire.no_such_table"], "unknown_source", "dit.baci"),
        (["world_bank.tariff.transformed"], "unknown_source", "has no input file"),
        (["dit.baci", "--name", "../escape.csv"], "bad_name", "not a plain file name"),
        (["dit.baci", "--name", ".."], "bad_name", "not a plain file name"),
    ],
)
def test_put_refuses_what_it_cannot_place(
    args: list[str], kind: str, says: str, blobs: Path, payload: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datastore", "put", args[0], str(payload), *args[1:]]) == 2
    refusal = _result(capsys)
    assert refusal["problems"][0]["kind"] == kind and says in refusal["error"]
    assert not blobs.exists() or not list(blobs.rglob("*.csv"))


def test_put_refuses_a_missing_file(blobs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datastore", "put", "dit.baci", str(tmp_path / "nowhere.csv")]) == 2
    assert "no such file" in _result(capsys)["error"]
    assert main(["datastore", "put", "dit.baci", str(tmp_path)]) == 2  # a folder is not a file
    assert _result(capsys)["problems"][0]["kind"] == "missing_file"


def test_put_into_s3(
    s3_endpoint: str, payload: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3

    bucket = f"b-{uuid.uuid4().hex[:10]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    monkeypatch.setenv("BLOB_STORE_URL", f"s3://{bucket}/ecr")
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_endpoint)

    assert main(["datastore", "put", "hmrc.exporters", str(payload), "--name", "exporters1703.zip"]) == 0

    key = "datastore/datasets/hmrc/exporters/exporters1703.zip"
    assert _result(capsys) == {"key": key, "bytes": payload.stat().st_size}
    stored = client.get_object(Bucket=bucket, Key=f"ecr/{key}")
    assert stored["Body"].read() == payload.read_bytes()
    assert stored["ContentType"] == "application/zip"


# -- dump -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def database(pg_server_url: str) -> Iterator[str]:
    """A database for this module only (the tests create and drop schemas)."""
    with own_database(pg_server_url, "t_dump") as url:
        yield url


@pytest.fixture
def engine(database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv("DATABASE_URL", database)
    engine = sa.create_engine(database)
    yield engine
    with engine.begin() as conn:
        schemas = conn.exec_driver_sql(
            "SELECT nspname FROM pg_namespace WHERE nspname !~ '^pg_'"
            " AND nspname NOT IN ('public', 'information_schema')"
        ).scalars()
        q = engine.dialect.identifier_preparer.quote
        for schema in schemas.all():
            conn.exec_driver_sql(f"DROP SCHEMA {q(schema)} CASCADE")
        conn.exec_driver_sql("DROP TABLE IF EXISTS public.sentinel")
    engine.dispose()


ROWS = [
    (1, "plain", "1.50", None, "2020-01-02"),
    (2, "comma, inside", "2", 'say "hi"', None),
    (3, "two\nlines", None, "NULL", "2021-12-31"),
    (4, "", "-0.001", "semi;colon", None),
    (5, None, None, "", "1999-01-01"),
]


def _sample_schema(conn: sa.Connection, schema: str, l0: str = "L0", l1: str = "L1") -> None:
    # SQLAlchemy's quote() doubles a '%' of a name for psycopg2's parameter style, and
    # exec_driver_sql always hands psycopg2 parameters (empty ones too), which undoubles it.
    q = conn.dialect.identifier_preparer.quote
    t0, t1 = f"{q(schema)}.{q(l0)}", f"{q(schema)}.{q(l1)}"
    conn.exec_driver_sql(f"CREATE SCHEMA {q(schema)}")
    conn.exec_driver_sql(
        f"CREATE TABLE {t0} (id int PRIMARY KEY, name text, amount numeric, note text, day date)"
    )
    insert = f"INSERT INTO {t0} VALUES (%s, %s, %s::numeric, %s, %s::date)"
    for row in ROWS:
        conn.exec_driver_sql(insert, row)
    conn.exec_driver_sql(f"CREATE TABLE {t1} (id int PRIMARY KEY, codes text[], flag boolean)")
    conn.exec_driver_sql(f"""INSERT INTO {t1} VALUES (1, ARRAY['a,b', NULL, 'c"d'], true), (2, NULL, NULL)""")
    conn.exec_driver_sql(f"CREATE VIEW {q(schema)}.everything AS SELECT * FROM {t0}")


def _rows(conn: sa.Connection, schema: str, table: str) -> list[tuple[Any, ...]]:
    q = conn.dialect.identifier_preparer.quote
    return [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {q(schema)}.{q(table)} ORDER BY id")]


def _load_back(engine: Engine, schema: str, table: str, path: Path) -> list[tuple[Any, ...]]:
    """The file COPYed into an empty copy of the table, read back (the legacy's NULL 'NULL')."""
    q = engine.dialect.identifier_preparer.quote
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS reload")
        conn.exec_driver_sql(f"CREATE TABLE reload.copy (LIKE {q(schema)}.{q(table)})")
        with path.open("rb") as fh, conn.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.copy_expert("COPY reload.copy FROM STDIN WITH (FORMAT csv, HEADER, NULL 'NULL')", fh)
        rows = _rows(conn, "reload", "copy")
        conn.exec_driver_sql("DROP TABLE reload.copy")
    return rows


def test_dump_writes_one_csv_per_table_that_loads_back_the_same(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with engine.begin() as conn:
        _sample_schema(conn, "dit.sample")
    out = tmp_path / "dump" / "here"

    assert main(["datastore", "dump", "dit.sample", str(out)]) == 0

    assert _result(capsys) == {"schema": "dit.sample", "tables": {"L0": 5, "L1": 2}}
    assert sorted(p.name for p in out.iterdir()) == ["L0.csv", "L1.csv"]  # no view, no leftovers
    with engine.connect() as conn:
        for table in ("L0", "L1"):
            assert _load_back(engine, "dit.sample", table, out / f"{table}.csv") == _rows(
                conn, "dit.sample", table
            )


def test_dump_writes_null_as_the_legacy_did(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with engine.begin() as conn:
        _sample_schema(conn, "dit.sample")

    assert main(["datastore", "dump", "dit.sample", str(tmp_path)]) == 0
    capsys.readouterr()

    text = (tmp_path / "L0.csv").read_text(encoding="utf-8")
    lines = text.split("\n")
    assert lines[0] == "id,name,amount,note,day"
    assert lines[1] == "1,plain,1.50,NULL,2020-01-02"  # a NULL: unquoted NULL
    assert '"NULL"' in text  # the text NULL: quoted, so that it stays text
    assert lines[-2] == "5,NULL,NULL,,1999-01-01"  # an empty string stays empty, unlike a NULL
    records = list(csv.reader(io.StringIO(text)))
    assert records[1:] == [
        ["1", "plain", "1.50", "NULL", "2020-01-02"],
        ["2", "comma, inside", "2", 'say "hi"', "NULL"],
        ["3", "two\nlines", "NULL", "NULL", "2021-12-31"],
        ["4", "", "-0.001", "semi;colon", "NULL"],
        ["5", "NULL", "NULL", "", "1999-01-01"],
    ]


def test_dump_of_an_unknown_schema_is_refused(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE public.sentinel (id int)"))
        _sample_schema(conn, "dit.sample")
    out = tmp_path / "out"

    for schema in ("dit.nothing", "DIT.SAMPLE", 'dit.sample"; DROP TABLE public.sentinel; --'):
        assert main(["datastore", "dump", schema, str(out)]) == 2
        refusal = _result(capsys)
        assert refusal["problems"][0]["kind"] == "unknown_schema" and schema in refusal["error"]

    assert not out.exists()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM public.sentinel")).scalar() == 0


def test_dump_handles_names_with_quotes_semicolons_and_slashes(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = 'we"ird; DROP TABLE public.sentinel; --'
    l0, l1 = 'L0"; DROP TABLE public.sentinel; --', "../../up/and%away"
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE public.sentinel (id int)"))
        _sample_schema(conn, schema, l0, l1)
    out = tmp_path / "out"

    assert main(["datastore", "dump", schema, str(out)]) == 0

    assert _result(capsys) == {"schema": schema, "tables": {l1: 2, l0: 5}}
    files = {p.name for p in out.iterdir()}
    assert files == {'L0"; DROP TABLE public.sentinel; --.csv', "..%2F..%2Fup%2Fand%25away.csv"}
    assert {p.name for p in tmp_path.iterdir()} == {"out"}  # nothing written outside the folder
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM public.sentinel")).scalar() == 0
        assert _load_back(engine, schema, l0, out / f"{l0}.csv") == _rows(conn, schema, l0)


def test_dump_of_an_empty_schema(engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text('CREATE SCHEMA "empty"'))

    assert main(["datastore", "dump", "empty", str(tmp_path / "e")]) == 0
    assert _result(capsys) == {"schema": "empty", "tables": {}}
    assert list((tmp_path / "e").iterdir()) == []


def test_dump_into_a_file_is_refused(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with engine.begin() as conn:
        _sample_schema(conn, "dit.sample")
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")

    assert main(["datastore", "dump", "dit.sample", str(blocker)]) == 2
    assert _result(capsys)["problems"][0]["kind"] == "bad_dir"
    assert blocker.read_text() == "not a folder"
