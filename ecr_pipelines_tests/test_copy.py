"""``lib.copy``: rows into Postgres with COPY's text format, sent from a helper thread, in one
COPY or in batches, on a real Postgres (a database of this module's own) and with stand-in
cursors for the thread's corner cases."""

import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ecr_pipelines.lib import copy
from ecr_pipelines.lib.database import ensure_database, with_database

TRICKY = [
    "plain",
    "",
    "tab\there",
    "line\nbreak",
    "carriage\rreturn",
    "crlf\r\n",
    "back\\slash",
    "\\N",
    "\\.",
    "ends with \\",
    '"quoted", comma',
    "NULL",
    "é ü ☃ 𝄞",
    " ",
]


@pytest.fixture(scope="module")
def engine(pg_server_url: str) -> Iterator[Engine]:
    name = f"t_copy_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(ensure_database(pg_server_url, name))
    yield engine
    engine.dispose()
    admin = sa.create_engine(with_database(pg_server_url, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def table(engine: Engine) -> Iterator[str]:
    """A committed table ``t(n integer, a text, b text)``, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE {name} (n integer, a text, b text)"))
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE {name}"))


def _rows(engine: Engine, table: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(f"SELECT n, a, b FROM {table} ORDER BY n"))]


def _senders() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "copy-sender"]


def _reference(rows: list[tuple[Any, ...]]) -> bytes:
    return "".join("\t".join(map(copy._escaped, row)) + "\n" for row in rows).encode()


# --- the encoding ------------------------------------------------------------------------------------


def test_text_chunk_is_the_value_by_value_escaping() -> None:
    rng = random.Random(3)
    pieces = [*TRICKY, None, None, "x", "\t", "\n", "\\", "\r"]
    for _ in range(3000):
        width = rng.randrange(1, 5)
        rows = [tuple(rng.choice(pieces) for _ in range(width)) for _ in range(rng.randrange(1, 6))]
        assert copy.text_chunk(rows) == _reference(rows), rows
    # Rows of other widths (COPY refuses them; they must not be joined into a row that fits).
    rows = [("a\tb", "c"), ("d", "e", "f")]
    assert copy.text_chunk(rows) == b"a\\tb\tc\nd\te\tf\n"
    # What is not text is written with str().
    assert copy.text_chunk([(1, Decimal("1.50"), date(2020, 1, 2), None)]) == b"1\t1.50\t2020-01-02\t\\N\n"


def test_text_chunks_pieces_and_batches() -> None:
    rows = [(str(n), "x" * 10) for n in range(1000)]
    chunks = list(copy.text_chunks(iter(rows), chunk_rows=7, batch_rows=100, send_bytes=300))
    batches: list[list[bytes]] = [[]]
    for chunk in chunks:
        if chunk is copy._BATCH:
            batches.append([])
        else:
            assert isinstance(chunk, bytes) and chunk.endswith(b"\n") and len(chunk) < 300 + 7 * 20
            batches[-1].append(chunk)
    lines = [b"".join(batch).splitlines() for batch in batches]
    # Whole chunks of 7 rows make a batch of at least 100 rows: 105; the last one has the rest.
    assert [len(batch) for batch in lines] == [105] * 9 + [55]
    assert [line for batch in lines for line in batch] == [f"{n}\t{'x' * 10}".encode() for n in range(1000)]
    assert list(copy.text_chunks(iter([]), batch_rows=10)) == []


# --- into Postgres -------------------------------------------------------------------------------------


def test_values_arrive_as_they_were(engine: Engine, table: str) -> None:
    rng = random.Random(5)
    rows = [(n, rng.choice([*TRICKY, None]), rng.choice([*TRICKY, None])) for n in range(5000)]
    rows.append((5000, None, ""))  # NULL and the empty string stay apart
    with engine.begin() as conn:
        assert copy.copy_rows(conn, table, ["n", "a", "b"], iter(rows)) == len(rows)
    assert _rows(engine, table) == rows
    assert _senders() == []


def test_batches_run_their_statement_after_each_copy(engine: Engine, table: str) -> None:
    rows = [(n, f"row {n}", None) for n in range(2500)]
    seen: list[int] = []
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TEMPORARY TABLE staging (n integer, a text, b text) ON COMMIT DROP"))
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]

        def after_batch(count: int) -> None:
            # On the same connection and transaction, while the next rows are read.
            cursor.execute("SELECT count(*) FROM staging")
            assert cursor.fetchone() == (count,)
            cursor.execute(f"INSERT INTO {table} SELECT * FROM staging; TRUNCATE staging")
            seen.append(count)

        copied = copy.copy_rows(
            conn, "staging", ["n", "a", "b"], iter(rows), batch_rows=1000, after_batch=after_batch
        )
    assert copied == 2500
    assert seen == [1024, 1024, 452]  # whole 256-row chunks; the last batch too
    assert _rows(engine, table) == rows

    seen.clear()
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TEMPORARY TABLE staging (n integer, a text, b text) ON COMMIT DROP"))
        assert (
            copy.copy_rows(conn, "staging", ["n", "a", "b"], iter([]), batch_rows=10, after_batch=seen.append)
            == 0
        )
    assert seen == [0]


class Broken(Exception):
    pass


def _failing(rows: int) -> Iterator[tuple[Any, ...]]:
    for n in range(rows):
        yield (n, "x" * 100, None)
    raise Broken("the reader gave up")


def test_an_error_of_the_rows_ends_the_copy_with_nothing_written(engine: Engine, table: str) -> None:
    # In autocommit the COPY is its own transaction: what it sent before the error must not stay.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        rows = _failing(20_000)  # some MB: many pieces were sent already
        with pytest.raises(Broken, match="gave up") as caught:
            copy.copy_rows(conn, table, ["n", "a", "b"], rows)
        assert caught.value.__cause__ is None  # raised as it is, not wrapped
        # The connection is usable again.
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    assert _rows(engine, table) == []
    assert _senders() == []


def test_a_value_the_database_refuses(engine: Engine, table: str) -> None:
    rows = [(str(n), "a", "b") for n in range(3000)]
    rows[2222] = ("abc", "a", "b")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        with pytest.raises(psycopg2.errors.InvalidTextRepresentation) as caught:
            copy.copy_rows(conn, table, ["n", "a", "b"], iter(rows))
        assert "line 2223, column n" in (caught.value.diag.context or "")
        assert getattr(caught.value, copy.ROWS_BEFORE) == 0
    assert _rows(engine, table) == []

    # In batches, lines count from 1 in each COPY: the rows before it say where the row is.
    moved: list[int] = []
    with engine.begin() as conn, pytest.raises(psycopg2.errors.InvalidTextRepresentation) as caught:
        copy.copy_rows(conn, table, ["n", "a", "b"], iter(rows), batch_rows=512, after_batch=moved.append)
    before = getattr(caught.value, copy.ROWS_BEFORE)
    assert (before, moved) == (2048, [512, 512, 512, 512])
    assert f"line {2223 - before}, column n" in (caught.value.diag.context or "")
    assert _rows(engine, table) == []
    assert _senders() == []


def test_an_error_after_a_batch_stops_the_reading(engine: Engine, table: str) -> None:
    read = 0

    def rows() -> Iterator[tuple[Any, ...]]:
        nonlocal read
        for n in range(100_000):
            read += 1
            yield (n, "x", "y")

    def after_batch(count: int) -> None:
        raise Broken("the batch's statement failed")

    with engine.begin() as conn, pytest.raises(Broken, match="statement failed"):
        copy.copy_rows(conn, table, ["n", "a", "b"], rows(), batch_rows=256, after_batch=after_batch)
    assert read < 100_000  # the queue holds a few MB, not the file
    assert _senders() == []


# --- the sending thread, with stand-in cursors --------------------------------------------------------


class SlowCursor:
    """Reads its input slowly, as a busy server would; remembers what it got."""

    def __init__(self, delay: float, fail_after: int | None = None) -> None:
        self.delay = delay
        self.fail_after = fail_after
        self.got: list[bytes] = []
        self.statements = 0
        self.rowcount = -1
        self.read_error: BaseException | None = None

    def copy_expert(self, sql: str, feed: Any) -> None:
        self.statements += 1
        lines = 0
        while True:
            time.sleep(self.delay)
            try:
                data = feed.read(8192)
            except BaseException as error:  # what psycopg2 does: the COPY fails
                self.read_error = error
                raise RuntimeError("COPY from stdin failed") from error
            if not data:
                break
            self.got.append(data)
            lines += data.count(b"\n")
            if self.fail_after is not None and len(self.got) >= self.fail_after:
                raise RuntimeError("the server went away")
        self.rowcount = lines


def _pieces(count: int, produced: list[int] | None = None) -> Iterator[bytes]:
    for n in range(count):
        if produced is not None:
            produced.append(n)
        yield f"{n}\n".encode()


def test_a_full_queue_waits_for_the_sender() -> None:
    cursor = SlowCursor(delay=0.002)
    assert copy.copy_chunks(cursor, "COPY", _pieces(200), queue_chunks=1) == 200
    assert cursor.got == [f"{n}\n".encode() for n in range(200)]
    # Empty pieces are not sent (one would end the COPY early).
    cursor = SlowCursor(delay=0)
    assert copy.copy_chunks(cursor, "COPY", iter([b"1\n", b"", b"2\n"])) == 2
    assert cursor.statements == 1


def test_a_sender_that_stops_stops_the_producer() -> None:
    cursor = SlowCursor(delay=0.001, fail_after=3)
    produced: list[int] = []
    with pytest.raises(RuntimeError, match="went away"):
        copy.copy_chunks(cursor, "COPY", _pieces(10_000, produced), queue_chunks=2)
    assert len(produced) < 20  # noticed within the put's wait, not at the end of the rows
    assert _senders() == []


def test_an_error_of_the_producer_with_a_full_queue() -> None:
    cursor = SlowCursor(delay=0.01)

    def pieces() -> Iterator[bytes]:
        yield from _pieces(50)
        raise Broken("bad row")

    started = time.monotonic()
    with pytest.raises(Broken, match="bad row"):
        copy.copy_chunks(cursor, "COPY", pieces(), queue_chunks=4)
    # The queued pieces are dropped: the sender meets the abort at its next read.
    assert time.monotonic() - started < 2
    assert isinstance(cursor.read_error, copy._Aborted) and "bad row" in str(cursor.read_error)
    assert _senders() == []


def test_batch_markers_start_a_new_copy() -> None:
    cursor = SlowCursor(delay=0)
    counts: list[int] = []
    chunks = [b"1\n2\n", copy._BATCH, b"3\n", b"4\n", copy._BATCH, b"5\n"]
    assert copy.copy_chunks(cursor, "COPY", iter(chunks), after_batch=counts.append) == 5
    assert (cursor.statements, counts) == (3, [2, 2, 1])
