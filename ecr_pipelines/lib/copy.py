"""Rows into Postgres with ``COPY .. FROM STDIN``, streamed (no Dagster).

``copy_rows`` turns an iterator of text-or-None tuples into CSV on the fly and hands it to
psycopg2's ``copy_expert`` as a file-like object, so a file of any size goes into a table with
one statement and a few pages of memory: no row-by-row ``INSERT``, no ``pandas.to_sql``, no
temporary CSV on disk. ``None`` is written as an unquoted empty field (``NULL`` for ``COPY
.. CSV``) and every other value quoted, so an empty string stays an empty string.
"""

import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy.engine import Connection

CHUNK_ROWS = 2000


class _RowsAsCsv(io.RawIOBase):
    """A readable stream of ``rows`` as CSV text, encoded while it is read."""

    def __init__(self, rows: Iterable[Sequence[Any]]) -> None:
        self._rows: Iterator[Sequence[Any]] = iter(rows)
        self._buffer = bytearray()
        self._text = io.StringIO()
        self.count = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        text = self._text
        for _ in range(CHUNK_ROWS):
            row = next(self._rows, None)
            if row is None:
                self._done = True
                break
            text.write(",".join(_field(value) for value in row))
            text.write("\n")
            self.count += 1
        self._buffer += text.getvalue().encode("utf-8")
        text.seek(0)
        text.truncate()

    def readinto(self, target: Any) -> int:
        while not self._buffer and not self._done:
            self._fill()
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        del self._buffer[:size]
        return size


def _field(value: Any) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    return '"' + text.replace('"', '""') + '"'


def copy_rows(conn: Connection, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """COPY ``rows`` into ``table`` (an already quoted SQL name) in the caller's transaction;
    returns how many rows went in. ``columns`` are quoted here."""
    names = ", ".join('"' + name.replace('"', '""') + '"' for name in columns)
    stream = _RowsAsCsv(rows)
    raw = conn.connection.dbapi_connection
    with raw.cursor() as cursor:  # type: ignore[union-attr]
        cursor.copy_expert(f"COPY {table} ({names}) FROM STDIN WITH (FORMAT csv)", io.BufferedReader(stream))
    return stream.count
