"""CSV uploads as batch stages (``datastore.stages.uploads``): registration, check, verification
and load into ``"<org>.<dataset>"."L0"``, on a real Postgres of this module's own."""

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ecr_pipelines.datastore.stages import uploads as stages
from ecr_pipelines.datastore.stages.uploads import (
    UPLOAD_ROOT,
    UnknownUpload,
    UploadRefused,
    check_uploads,
    fail_stuck_uploads,
    file_details,
    load_verified,
    recheck_upload,
    register_uploads,
    upload_summary,
    uploads_waiting,
    verify_upload,
)
from ecr_pipelines.lib.blobstore import BlobStore, LocalBlobStore
from ecr_pipelines_tests.conftest import own_migrated_engine

TYPED = (
    "name,amount,price,day,at,flag,note,other,\n"
    'alice,1,1.5,2020-01-02,2020-01-02T03:04:05,true,"say ""hi""",NULL,dropped\n'
    "bob,NULL,None,N/A,,false,NULLABLE,,dropped\n"
    '"multi\nline",-3,2.25,2021-12-31,2021-12-31 23:59:59,0,"tab\there, comma","back\\slash",dropped\n'
)
TYPED_ROWS = [
    ("alice", 1, Decimal("1.5"), date(2020, 1, 2), datetime(2020, 1, 2, 3, 4, 5), True, 'say "hi"', None),
    ("bob", None, None, None, None, False, "NULLABLE", None),
    (
        "multi\nline",
        -3,
        Decimal("2.25"),
        date(2021, 12, 31),
        datetime(2021, 12, 31, 23, 59, 59),
        False,
        "tab\there, comma",
        "back\\slash",
    ),
]
TYPED_COLUMNS = {
    "id": "integer",
    "datafile_created": "text",
    "name": "text",
    "amount": "bigint",
    "price": "numeric",
    "day": "date",
    "at": "timestamp without time zone",
    "flag": "boolean",
    "note": "text",
    "other": "text",
}


@pytest.fixture(scope="module")
def engine(pg_server_url: str) -> Iterator[Engine]:
    """A migrated database for this module only (the tests create and drop schemas)."""
    with own_migrated_engine(pg_server_url, "t_uploads") as engine:
        yield engine


@pytest.fixture(autouse=True)
def clean(engine: Engine) -> Iterator[None]:
    yield
    with engine.begin() as conn:
        schemas = conn.execute(sa.text("SELECT nspname FROM pg_namespace WHERE nspname LIKE '%.%'")).scalars()
        for schema in list(schemas):
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        conn.execute(sa.text("DELETE FROM datastore.pipeline_data_file"))
        conn.execute(sa.text("DELETE FROM datastore.pipeline"))
        conn.execute(sa.text("DELETE FROM pipeline.stage_claim"))


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def put(store: BlobStore, path: str, text: str | bytes) -> str:
    key = UPLOAD_ROOT + path
    store.put_bytes(key, text.encode("utf-8") if isinstance(text, str) else text)
    return key


def upload(engine: Engine, store: BlobStore, path: str, text: str | bytes, **check: Any) -> str:
    """Put, register and check one file; returns its key."""
    key = put(store, path, text)
    register_uploads(engine, store)
    check_uploads(engine, store, **check)
    return key


def row(engine: Engine, key: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT *, id::text AS file_id FROM datastore.pipeline_data_file WHERE data_file_url = :k"
            ),
            {"k": key},
        ).one()


def l0(engine: Engine, schema: str, columns: str = "*") -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(f'SELECT {columns} FROM "{schema}"."L0" ORDER BY id'))]


def data(engine: Engine, schema: str) -> list[tuple[Any, ...]]:
    """L0 without its helper columns."""
    return [r[2:] for r in l0(engine, schema)]


def column_types(engine: Engine, schema: str, table: str = "L0") -> dict[str, str]:
    with engine.connect() as conn:
        result = conn.execute(
            sa.text(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = :s AND table_name = :t ORDER BY ordinal_position"
            ),
            {"s": schema, "t": table},
        )
        return dict(result.all())


def exists(engine: Engine, schema: str, table: str) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.scalar(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f'"{schema}"."{table}"'})
        )


# --- registration ---------------------------------------------------------------------------------


def test_register_is_idempotent_refuses_bad_keys_and_ignores_dot_files(
    engine: Engine, store: BlobStore
) -> None:
    good = [put(store, "DIT.Trade/Exports_2020/a.csv", "x\n1\n"), put(store, "org/ds/b.CSV", "x\n1\n")]
    refused = {
        put(store, "org/a.csv", "x\n1\n"): "not datastore/uploads/<organisation>/<dataset>/<file name>",
        put(
            store, "org/ds/sub/a.csv", "x\n1\n"
        ): "not datastore/uploads/<organisation>/<dataset>/<file name>",
        put(store, "bad-name/ds/a.csv", "x\n1\n"): "'bad-name': organisation and dataset names hold only",
        put(store, "org/ds/a.xlsx", "x\n1\n"): "only .csv files are uploads",
        put(store, "dit/baci/a.csv", "x\n1\n"): "belongs to the data store source dit.baci",
        put(store, "PG_x/ds/a.csv", "x\n1\n"): "Postgres reserves names starting with pg_",
        put(store, f"{'o' * 40}/{'d' * 30}/a.csv", "x\n1\n"): "longer than Postgres keeps",
    }
    put(store, "org/ds/.DS_Store", "junk")
    put(store, ".hidden/ds/a.csv", "x\n1\n")

    first = register_uploads(engine, store)
    assert (first.registered, first.known, first.ignored, first.pipelines_created) == (2, 0, 2, 2)
    assert first.listed == len(good) + len(refused) + 2
    reasons = dict(first.refused)
    assert reasons.keys() == refused.keys()
    for key, reason in refused.items():
        assert reason in reasons[key], (key, reasons[key])
    with engine.connect() as conn:
        pipelines = conn.execute(
            sa.text("SELECT organisation, dataset, slug FROM datastore.pipeline ORDER BY id")
        ).all()
        files = conn.execute(
            sa.text(
                "SELECT id::text, data_file_url, state FROM datastore.pipeline_data_file ORDER BY data_file_url"
            )
        ).all()
    assert [tuple(p) for p in pipelines] == [
        ("dit_trade", "exports_2020", "dit-trade-exports-2020"),
        ("org", "ds", "org-ds"),
    ]
    assert [(f[1], f[2]) for f in files] == [(key, "uploaded") for key in sorted(good)]
    assert sorted(first.new_ids) == sorted(f[0] for f in files)

    second = register_uploads(engine, store)
    assert (second.registered, second.known, second.pipelines_created, second.new_ids) == (0, 2, 0, [])
    assert dict(second.refused).keys() == refused.keys()


def test_register_refuses_a_slug_taken_by_another_pipeline(engine: Engine, store: BlobStore) -> None:
    put(store, "a_b/c/one.csv", "x\n1\n")
    report = register_uploads(engine, store)
    assert report.registered == 1
    clash = put(store, "a/b_c/two.csv", "x\n1\n")  # slug a-b-c as well
    report = register_uploads(engine, store)
    assert report.registered == 0
    assert report.refused == [(clash, "the slug 'a-b-c' of 'a.b_c' is another pipeline's")]


def test_concurrent_registrations_create_each_pipeline_once(engine: Engine, store: BlobStore) -> None:
    for index in range(20):
        put(store, f"org/ds/{index:02}.csv", "x\n1\n")
    reports: list[Any] = []
    threads = [
        threading.Thread(target=lambda: reports.append(register_uploads(engine, store))) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.registered for r in reports) == 20
    assert sum(r.pipelines_created for r in reports) == 1
    assert not any(r.refused for r in reports)


# --- check ----------------------------------------------------------------------------------------


def test_check_infers_types_sample_and_rows(engine: Engine, store: BlobStore) -> None:
    key = upload(engine, store, "org/ds/typed.csv", TYPED)
    file = row(engine, key)
    assert file.state == "uploaded" and file.checked_at is not None and file.check_passed
    assert file.row_count == 3
    assert file.inferred_types == [
        ["name", "text"],
        ["amount", "integer"],
        ["price", "numeric"],
        ["day", "date"],
        ["at", "timestamp"],
        ["flag", "boolean"],
        ["note", "text"],
        ["other", "text"],
    ]
    assert file.sample[0] == {"name": "name", "type": "text", "sample": ["alice", "bob", "multi\nline"]}
    assert file.sample[6]["sample"] == ['say "hi"', "NULLABLE", "tab\there, comma"]
    assert file.column_types is None and file.error_message is None
    assert file.content_sha256 and file.content_bytes == len(TYPED.encode())
    with engine.connect() as conn:
        details = file_details(conn, key)
    assert details is not None
    assert details["header"] == ["name", "amount", "price", "day", "at", "flag", "note", "other"]
    assert details["schema"] == "org.ds" and details["file"] == "typed.csv"
    assert details["notes"] == [
        {"kind": "dropped_column", "message": "column 9 without a name left out (with their values)"}
    ]
    assert details["problems"] == []


def test_one_bad_file_never_fails_the_batch(engine: Engine, store: BlobStore) -> None:
    good = put(store, "org/ds/good.csv", "a,b\n1,2\n")
    short = put(store, "org/ds/short.csv", "a,b\n1,2\n3\n")
    reserved = put(store, "org/ds/reserved.csv", "id,b\n1,2\n")
    gone = put(store, "org/ds/gone.csv", "a,b\n1,2\n")
    register_uploads(engine, store)
    store.delete(gone)
    report = check_uploads(engine, store, batch_size=10)
    assert report.processed == 4 and report.batches == 1
    assert dict(report.errors_by_class) == {"row_length": 1, "reserved_name": 1, "missing": 1}
    assert row(engine, good).state == "uploaded" and row(engine, good).check_passed
    failed = row(engine, short)
    assert (failed.state, failed.error_kind, failed.check_passed) == ("failed", "row_length", False)
    assert failed.error_message == "1 row does not have the header's 2 values: line 3 has 1"
    assert row(engine, reserved).error_kind == "reserved_name"
    assert "reserved column name" in row(engine, reserved).error_message
    assert row(engine, gone).error_kind == "missing"
    # Checked once: a second run has nothing to do.
    assert check_uploads(engine, store).due == 0


def test_auto_verify_takes_the_inferred_types(engine: Engine, store: BlobStore) -> None:
    key = upload(engine, store, "org/ds/a.csv", "a,b\n1,x\n", auto_verify=True)
    file = row(engine, key)
    assert file.state == "verified" and file.verified_at is not None
    assert file.column_types == [["a", "integer"], ["b", "text"]]
    bad = upload(engine, store, "org/ds/b.csv", "a,b\n1\n", auto_verify=True)
    assert row(engine, bad).state == "failed"


def test_recheck_with_another_delimiter(engine: Engine, store: BlobStore) -> None:
    key = upload(engine, store, "org/ds/semi.csv", "a;b\n1;2\n")
    assert row(engine, key).state == "failed"  # one column named "a;b"
    recheck_upload(engine, key, delimiter=";")
    check_uploads(engine, store)
    file = row(engine, key)
    assert (file.state, file.delimiter, file.inferred_types) == (
        "uploaded",
        ";",
        [["a", "integer"], ["b", "integer"]],
    )
    with pytest.raises(UploadRefused, match="must differ"):
        recheck_upload(engine, key, quote=";")


# --- verification ---------------------------------------------------------------------------------


def test_verify_with_overrides_and_refusals(engine: Engine, store: BlobStore) -> None:
    key = upload(engine, store, "org/ds/a.csv", "a,b,c\n1,x,2020-01-01\n")
    file_id = row(engine, key).file_id
    with pytest.raises(UploadRefused) as refused:
        verify_upload(engine, key, {"a": "text", "nope": "integer", "zzz": "text", "c": "varchar"})
    message = str(refused.value)
    assert 'unknown columns: "nope", "zzz" (the file\'s are a, b, c)' in message
    assert 'unknown types: "varchar" (types are integer, numeric, boolean, date, timestamp, text)' in message
    assert row(engine, key).state == "uploaded"

    result = verify_upload(engine, uuid.UUID(file_id), {"a": "text", "c": "date"})
    assert result.column_types == [("a", "text"), ("b", "text"), ("c", "date")]
    assert result.overridden == {"a": "text"}
    assert (result.previous_state, result.schema, result.previous_file, result.warnings) == (
        "uploaded",
        "org.ds",
        None,
        [],
    )
    file = row(engine, key)
    assert file.state == "verified" and file.column_types == [["a", "text"], ["b", "text"], ["c", "date"]]
    # Again, before the load claims it.
    assert verify_upload(engine, file_id).column_types == [("a", "integer"), ("b", "text"), ("c", "date")]

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE datastore.pipeline_data_file SET state = 'processing_dss'"))
    with pytest.raises(UploadRefused, match="is processing_dss.*its load is running"):
        verify_upload(engine, key)
    with pytest.raises(UnknownUpload):
        verify_upload(engine, UPLOAD_ROOT + "org/ds/none.csv")

    bad = upload(engine, store, "org/ds/bad.csv", "a,b\n1\n")
    with pytest.raises(UploadRefused, match="did not pass its check: 1 row does not have"):
        verify_upload(engine, bad)
    unchecked = put(store, "org/ds/unchecked.csv", "a\n1\n")
    register_uploads(engine, store)
    with pytest.raises(UploadRefused, match="has not been checked yet"):
        verify_upload(engine, unchecked)


# --- load -----------------------------------------------------------------------------------------


def test_load_types_nulls_and_quoted_values(engine: Engine, store: BlobStore) -> None:
    key = upload(engine, store, "org/ds/typed.csv", TYPED)
    verify_upload(engine, key)
    report = load_verified(engine, store)
    assert (report.processed, report.errors, dict(report.kinds)) == (1, 0, {"done": 1})
    assert column_types(engine, "org.ds") == TYPED_COLUMNS
    rows = l0(engine, "org.ds")
    assert [r[0] for r in rows] == [1, 2, 3]
    assert {r[1] for r in rows} == {"typed.csv"}
    assert data(engine, "org.ds") == TYPED_ROWS
    file = row(engine, key)
    assert file.state == "completed" and file.row_count == 3
    assert (
        file.processed_at is not None
        and file.loaded_at is not None
        and file.started_processing_at is not None
    )
    with engine.connect() as conn:
        comment = conn.scalar(sa.text('SELECT obj_description(\'"org.ds"."L0"\'::regclass)'))
        primary = conn.scalar(
            sa.text(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                'AND a.attnum = ANY(i.indkey) WHERE i.indrelid = \'"org.ds"."L0"\'::regclass AND i.indisprimary'
            )
        )
    assert comment == f"upload typed.csv ({file.file_id})" and primary == "id"
    assert not exists(engine, "org.ds", "L0.new")


@pytest.mark.parametrize(
    "text",
    [
        TYPED,
        # A BOM, \r\n and lone \r line ends, blank lines, a tab and a backslash in a value,
        # a value "\." (COPY's end-of-data marker), null tokens inside longer values.
        '\ufeffa,b,c\r\n1,"x\ty",\\.\r\n\r\n2,NULL,N/A\r3,"\\\\N"," NULL"\n\n4,"N/A ",None',
        # One column: an empty line is a blank line, "" a null.
        'only\n1\n\n""\nNULL\n\\.\n',
        # Many rows, so that several chunks go by, some with a line break in a value.
        "n,t\n" + "".join(f'{i},"v{i}{chr(10) if i % 997 == 0 else ""}NULL"\n' for i in range(5000)),
    ],
    ids=["typed", "edges", "one_column", "chunks"],
)
def test_text_encoder_loads_what_normalised_csv_loads(engine: Engine, store: BlobStore, text: str) -> None:
    """The text-format encoder against the reference, uploads.normalised_csv."""
    fast = upload(engine, store, "org/fast/a.csv", text)
    reference = upload(engine, store, "org/reference/a.csv", text)
    for key in (fast, reference):
        assert row(engine, key).check_passed, row(engine, key).error_message
        verify_upload(engine, key)
        load_verified(engine, store, encoder="text" if key == fast else "csv")
        assert row(engine, key).state == "completed", row(engine, key).error_message
    assert data(engine, "org.fast") == data(engine, "org.reference")
    assert len(data(engine, "org.fast")) == row(engine, fast).row_count


def test_edge_values_are_loaded_as_written(engine: Engine, store: BlobStore) -> None:
    key = upload(
        engine, store, "org/ds/a.csv", '\ufeffa,b,c\r\n1,"x\ty",\\.\r\n\r\n2,NULL,N/A\r3,"\\\\N"," NULL"\n'
    )
    verify_upload(engine, key)
    load_verified(engine, store)
    assert data(engine, "org.ds") == [(1, "x\ty", "\\."), (2, None, None), (3, "\\\\N", " NULL")]


def test_a_new_version_replaces_l0_and_restoring_brings_the_old_one_back(
    engine: Engine, store: BlobStore
) -> None:
    first = upload(engine, store, "org/ds/v1.csv", "a,b\n1,one\n2,two\n")
    verify_upload(engine, first)
    load_verified(engine, store)
    assert data(engine, "org.ds") == [(1, "one"), (2, "two")]

    second = upload(engine, store, "org/ds/v2.csv", "a,c\n3,2020-01-01\n4,2020-01-02\n5,\n")
    result = verify_upload(engine, second)
    assert result.previous_file == row(engine, first).file_id
    assert result.missing_columns == ["b"]
    assert result.warnings == ['columns of the latest version missing from this file: "b"']
    load_verified(engine, store)
    assert column_types(engine, "org.ds") == {
        "id": "integer",
        "datafile_created": "text",
        "a": "bigint",
        "c": "date",
    }
    assert l0(engine, "org.ds") == [
        (1, "v2.csv", 3, date(2020, 1, 1)),
        (2, "v2.csv", 4, date(2020, 1, 2)),
        (3, "v2.csv", 5, None),
    ]
    assert row(engine, first).state == row(engine, second).state == "completed"
    assert store.exists(first) and store.exists(second)

    restored = verify_upload(engine, first)
    assert restored.previous_state == "completed"
    assert restored.previous_file == row(engine, second).file_id and restored.missing_columns == ["c"]
    load_verified(engine, store)
    assert l0(engine, "org.ds") == [(1, "v1.csv", 1, "one"), (2, "v1.csv", 2, "two")]
    with engine.connect() as conn:
        latest = stages.latest_version(conn, row(engine, first).pipeline_id)
    assert latest is not None and latest.data_file_url == first


@pytest.mark.parametrize("encoder", ["text", "csv"])
def test_a_refused_value_fails_the_file_and_keeps_the_previous_l0(
    engine: Engine, store: BlobStore, encoder: stages.Encoder
) -> None:
    first = upload(engine, store, "org/ds/v1.csv", "n,t\n1,a\n")
    verify_upload(engine, first)
    load_verified(engine, store, encoder=encoder)
    # The bad value is on line 6 of the file, data row 3: a quoted line break and a blank line
    # come before it.
    second = upload(engine, store, "org/ds/v2.csv", 'n,t\n1,"x\ny"\n\n2,b\nabc,c\n4,d\n')
    verify_upload(engine, second, {"n": "integer"})
    report = load_verified(engine, store, encoder=encoder)
    assert dict(report.errors_by_class) == {"value": 1}
    failed = row(engine, second)
    assert (failed.state, failed.error_kind) == ("failed", "value")
    assert failed.error_message == (
        'line 6, column "n" (integer): invalid input syntax for type bigint: "abc" (data row 3); '
        "fix the value or choose another type"
    )
    assert l0(engine, "org.ds") == [(1, "v1.csv", 1, "a")]
    assert row(engine, first).state == "completed"
    assert not exists(engine, "org.ds", "L0.new")
    # Retried as text: loads.
    verify_upload(engine, second, {"n": "text"})
    load_verified(engine, store, encoder=encoder)
    assert [r[2] for r in l0(engine, "org.ds")] == ["1", "2", "abc", "4"]


def test_a_file_replaced_after_its_check_is_refused(engine: Engine, store: BlobStore) -> None:
    key = upload(engine, store, "org/ds/a.csv", "a,b\n1,2\n")
    verify_upload(engine, key)
    store.put_bytes(key, b"a,b\n1,3\n")
    load_verified(engine, store)
    file = row(engine, key)
    assert (file.state, file.error_kind) == ("failed", "changed")
    assert file.error_message == "the file was replaced since its check: check it again"
    assert not exists(engine, "org.ds", "L0")
    store.put_bytes(key, b"a,b,c\n1,3,4\n")
    verify_upload(engine, key)
    load_verified(engine, store)
    assert row(engine, key).error_message == "the file's header is not the one checked: check it again"
    recheck_upload(engine, key)
    check_uploads(engine, store)
    verify_upload(engine, key)
    load_verified(engine, store)
    assert data(engine, "org.ds") == [(1, 3, 4)]


def test_a_file_changed_deep_down_stops_the_copy_it_fed(engine: Engine, store: BlobStore) -> None:
    """The rows are made in this thread and sent by another one: an error of the rows after many
    chunks (the queue full, the sender busy) still ends the COPY and names the line."""
    rows = "".join(f"{index},{'x' * 200}\n" for index in range(40_000))
    key = upload(engine, store, "org/ds/a.csv", "n,t\n" + rows)
    verify_upload(engine, key)
    store.put_bytes(key, ("n,t\n" + rows + "40000\n").encode())
    load_verified(engine, store)
    file = row(engine, key)
    assert (file.state, file.error_kind) == ("failed", "changed")
    assert file.error_message == (
        "the row ending on line 40002 has 1 values, not 2: the file is not the one checked"
    )
    assert not exists(engine, "org.ds", "L0")


@pytest.mark.parametrize("encoder", ["text", "csv"])
def test_a_file_made_unreadable_since_its_check_names_the_line(
    engine: Engine, store: BlobStore, encoder: str
) -> None:
    """The load reads the file with the check's own reader (uploads.csv_reader): a byte that is
    not UTF-8 deep in a file replaced since its check stops the load, naming its line."""
    rows = "".join(f"{index},x\n" for index in range(5_000))
    key = upload(engine, store, "org/ds/a.csv", "n,t\n" + rows)
    verify_upload(engine, key)
    store.put_bytes(key, ("n,t\n" + rows).encode() + b"5000,caf\xe9\n")
    load_verified(engine, store, encoder=encoder)  # type: ignore[arg-type]
    file = row(engine, key)
    assert (file.state, file.error_kind) == ("failed", "changed")
    assert file.error_message == (
        "the file cannot be read as it was checked (line 5002 is not UTF-8 (byte 0xe9 at byte 9 of "
        "the line): save the file as UTF-8): check it again"
    )
    assert not exists(engine, "org.ds", "L0")


def test_dataflow_callback_decides_completed_or_failed(engine: Engine, store: BlobStore) -> None:
    good = upload(engine, store, "org/good/a.csv", "a\n1\n")
    bad = upload(engine, store, "org/bad/a.csv", "a\n1\n")
    verify_upload(engine, good)
    verify_upload(engine, bad)
    calls: list[tuple[str, str, str]] = []

    def dataflow(schema: str, table: str) -> None:
        key = good if schema == "org.good" else bad
        calls.append((schema, table, row(engine, key).state))
        if schema == "org.bad":
            raise RuntimeError("Airflow dag failed")

    report = load_verified(engine, store, dataflow=dataflow)
    assert dict(report.kinds) == {"dataflow": 2}
    assert sorted(calls) == [
        ("org.bad", "L0", "processing_dataflow"),
        ("org.good", "L0", "processing_dataflow"),
    ]
    assert row(engine, good).state == "completed" and row(engine, good).processed_at is not None
    failed = row(engine, bad)
    assert (failed.state, failed.error_kind) == ("failed", "dataflow")
    assert failed.error_message == "data-flow: RuntimeError: Airflow dag failed"
    assert data(engine, "org.bad") == [(1,)]  # L0 was replaced; data-flow did not take it
    assert not stages.finish_dataflow(engine, good)


def test_on_s3(engine: Engine, s3_blobs: Any) -> None:
    store = s3_blobs.store
    key = upload(engine, store, "org/ds/typed.csv", TYPED)
    verify_upload(engine, key)
    load_verified(engine, store)
    assert data(engine, "org.ds") == TYPED_ROWS


# --- runs and the scheduler's rule ----------------------------------------------------------------


def _end(engine: Engine, conn: sa.Connection) -> None:
    """Close the other run's backend (not back to the pool: it would stay alive) and wait for it."""
    pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    conn.invalidate()
    conn.close()
    with engine.connect() as check:
        # Generous: on a busy machine a closed backend can take seconds to leave pg_stat_activity.
        for _ in range(1200):
            if not check.scalar(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}):
                return
            time.sleep(0.05)
    raise AssertionError(f"backend {pid} still alive")


def _hold_claim(engine: Engine, stage: str, file_id: str) -> sa.Connection:
    """A claim of another live run: its backend is the open connection returned."""
    conn = engine.connect()
    conn.execute(
        sa.text(
            "INSERT INTO pipeline.stage_claim (stage, item, owner_pid, owner_started) "
            "SELECT :stage, :item, pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
        ),
        {"stage": stage, "item": file_id},
    )
    conn.commit()
    return conn


def test_a_file_claimed_by_a_live_run_is_not_loaded_again(engine: Engine, store: BlobStore) -> None:
    key = upload(engine, store, "org/ds/a.csv", "a\n1\n")
    verify_upload(engine, key)
    other = _hold_claim(engine, stages.LOAD_STAGE.name, row(engine, key).file_id)
    try:
        report = load_verified(engine, store)
        assert (report.due, report.processed) == (0, 0)
        assert row(engine, key).state == "verified" and not exists(engine, "org.ds", "L0")
    finally:
        _end(engine, other)
    # The other run is gone (its backend closed): the file is taken back.
    report = load_verified(engine, store)
    assert (report.processed, report.recovered) == (1, 1)
    assert row(engine, key).state == "completed"


def test_concurrent_load_runs_load_each_file_once(engine: Engine, store: BlobStore) -> None:
    keys = [upload(engine, store, f"org/ds{index}/a.csv", f"a\n{index}\n") for index in range(6)]
    for key in keys:
        verify_upload(engine, key)
    reports: list[Any] = []
    threads = [
        threading.Thread(target=lambda: reports.append(load_verified(engine, store))) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.processed for r in reports) == 6 and sum(r.errors for r in reports) == 0
    for index, key in enumerate(keys):
        assert row(engine, key).state == "completed"
        assert data(engine, f"org.ds{index}") == [(index,)]


def test_a_load_left_by_a_dead_run_is_loaded_again(engine: Engine, store: BlobStore) -> None:
    key = upload(engine, store, "org/ds/a.csv", "a\n1\n")
    verify_upload(engine, key)
    with engine.begin() as conn:  # what a run killed mid-load leaves: its claim's backend is gone
        conn.execute(sa.text("UPDATE datastore.pipeline_data_file SET state = 'processing_dss'"))
    assert load_verified(engine, store).processed == 1
    assert row(engine, key).state == "completed" and data(engine, "org.ds") == [(1,)]


def test_fail_stuck_uploads(engine: Engine, store: BlobStore) -> None:
    cases = {
        "waiting": ("verified", "now()", "NULL"),
        "old_verified": ("verified", "now() - interval '25 hours'", "NULL"),
        "never_started": ("verified", "NULL", "NULL"),
        "old_load": ("processing_dss", "now() - interval '30 hours'", "now() - interval '25 hours'"),
        "running_load": ("processing_dss", "now() - interval '30 hours'", "now() - interval '25 hours'"),
        "recent_dataflow": (
            "processing_dataflow",
            "now() - interval '30 hours'",
            "now() - interval '1 hour'",
        ),
        "old_dataflow": ("processing_dataflow", "now() - interval '30 hours'", "now() - interval '25 hours'"),
        "old_completed": ("completed", "now() - interval '30 hours'", "now() - interval '25 hours'"),
    }
    keys = {name: put(store, f"org/ds/{name}.csv", "a\n1\n") for name in cases}
    register_uploads(engine, store)
    with engine.begin() as conn:
        for name, (state, verified, started) in cases.items():
            conn.execute(
                sa.text(
                    f"UPDATE datastore.pipeline_data_file SET state = :state, verified_at = {verified}, "
                    f"started_processing_at = {started} WHERE data_file_url = :key"
                ),
                {"state": state, "key": keys[name]},
            )
    other = _hold_claim(engine, stages.LOAD_STAGE.name, row(engine, keys["running_load"]).file_id)
    try:
        failed = fail_stuck_uploads(engine)
    finally:
        _end(engine, other)
    stuck = {"old_verified", "never_started", "old_load", "old_dataflow"}
    assert sorted(failed) == sorted(row(engine, keys[name]).file_id for name in stuck)
    for name, key in keys.items():
        file = row(engine, key)
        if name in stuck:
            assert (file.state, file.error_kind) == ("failed", "stuck")
            assert "did not complete within 24 hours" in file.error_message
        else:
            assert file.state == cases[name][0]


# --- metadata -------------------------------------------------------------------------------------


def test_summary_details_and_what_is_waiting(engine: Engine, store: BlobStore) -> None:
    with engine.connect() as conn:
        assert uploads_waiting(conn, []) is None
        assert upload_summary(conn)["files"] == 0
        assert file_details(conn, UPLOAD_ROOT + "org/ds/none.csv") is None
    keys = [put(store, "org/ds/a.csv", "a\n1\n"), put(store, "org/ds/b.csv", "a\n1\n\n2,3\n")]
    refused = put(store, "org/x.csv", "a\n")
    with engine.connect() as conn:
        assert uploads_waiting(conn, [*keys, refused]) == "2 new upload files"
    register_uploads(engine, store)
    with engine.connect() as conn:
        assert uploads_waiting(conn, [*keys, refused]) == "uploads to check"
    check_uploads(engine, store)
    verify_upload(engine, keys[0])
    with engine.connect() as conn:
        assert uploads_waiting(conn, keys) == "verified uploads to load"
    load_verified(engine, store)
    with engine.connect() as conn:
        assert uploads_waiting(conn, keys) is None
        summary = upload_summary(conn)
        details = file_details(conn, row(engine, keys[1]).file_id)
    assert summary["files"] == 2 and summary["pipelines"] == 1
    assert summary["by_state"] == {
        "uploading": 0,
        "uploaded": 0,
        "verified": 0,
        "processing_dss": 0,
        "processing_dataflow": 0,
        "completed": 1,
        "failed": 1,
    }
    newest = {item["file"]: item for item in summary["newest"]}
    assert newest["a.csv"]["state"] == "completed" and newest["a.csv"]["rows"] == 1
    assert newest["b.csv"]["error"] == "1 row does not have the header's 1 values: line 4 has 2"
    assert details is not None
    assert details["problems"] == [
        {"kind": "row_length", "message": "1 row does not have the header's 1 values: line 4 has 2"}
    ]
    assert details["state"] == "failed" and details["check_passed"] is False
