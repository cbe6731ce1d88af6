"""Rows into Postgres with ``COPY .. FROM STDIN``, streamed (no Dagster).

``copy_rows`` turns an iterator of text-or-None tuples into COPY's text format on the fly and
sends it with one statement (or one per batch, see below) and a few MB of memory: no row-by-row
``INSERT``, no ``pandas.to_sql``, no temporary file on disk. ``None`` is NULL (``\\N``), every
other value is text (``str()`` of what is not), so an empty string stays an empty string.

Speed: the text format needs no quoting, so a chunk of rows is built with C-level ``str.join``
and checked with a few counts over the chunk (a value holding a backslash, tab or line break is
what the format escapes, and the counts find it; only such a chunk is escaped value by value).
Quoting every value for CSV in Python, as this module did before, took over three times as long.
libpq sends synchronously, so ``copy_chunks`` sends from a helper thread through a bounded queue
while the calling thread reads and encodes the next rows (psycopg2 lets go of the GIL while it
sends): the reader, the encoder and the server work at the same time instead of in turn.

Batches (``batch_rows`` with ``after_batch``): every ``batch_rows`` rows the COPY is finished
and ``after_batch(rows)`` runs on the same connection (a statement that moves the staged rows
on, say) before the next COPY starts, while the calling thread goes on reading; so the server's
work on one batch overlaps the reading of the next.

Errors: an error of the rows (the reader's, raised while they are read) ends the COPY with
an error, so nothing of it is written, and is raised as it is, in the calling thread; the
database's (a value its type refuses) and ``after_batch``'s are raised as they are too, the
database's with the rows of the batches before it in ``ROWS_BEFORE``.
"""

import contextlib
import operator
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from sqlalchemy.engine import Connection

# Small chunks: the rows of one are alive together, and fewer than Python's first garbage
# collection threshold (700 new objects) never set it off; 2,000-row ones did every 700 rows, a
# tenth of the encoding's time, and their text passed the cache (a third slower again).
CHUNK_ROWS = 256
# What is queued for the sender at a time: the sending thread needs the GIL for each, which the
# encoding thread gives up only every few ms (sys.getswitchinterval()), so a piece must be big
# enough for that wait not to limit the sending.
SEND_BYTES = 1 << 19
# Pieces waiting for the sender (8 MB): enough for the encoder to go on while the server works
# on a batch (``after_batch``), little enough to keep memory flat.
QUEUE_CHUNKS = 16
NULL = "\\N"
# Set on an error of a COPY (the database's): the rows the earlier batches copied, to add to the
# line number of its context ("COPY t, line 5") for the row's place among all the rows.
ROWS_BEFORE = "copy_rows_before"
_count_none = operator.methodcaller("count", None)
# Stand-ins in the queue: the end of a batch, the end of the rows.
_BATCH = object()
_END = object()


class _Aborted(Exception):
    """The rows could not be made: the COPY is ended with this error, so it writes nothing."""


class _SenderGone(Exception):
    """The sending thread stopped (its error is raised in its place)."""


def _escaped(value: Any) -> str:
    if value is None:
        return NULL
    text = value if isinstance(value, str) else str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def text_chunk(rows: Sequence[Sequence[Any]]) -> bytes:
    """``rows`` as lines of COPY's text format (tab-separated, ``\\N`` for NULL), UTF-8."""
    join = "\t".join
    try:
        text = "\n".join(
            [join(row) if None not in row else join([NULL if v is None else v for v in row]) for row in rows]
        )
    except TypeError:  # a value that is not text: the slow way, with str()
        pass
    else:
        # A value holding a backslash, tab, newline or CR would need escaping. Without one, the
        # chunk has exactly one tab fewer than values per row, one newline fewer than rows, a
        # backslash per NULL and no CR; a value with one of them breaks a count.
        backslashes = text.count("\\")
        if (
            text.count("\t") == sum(map(len, rows)) - len(rows)
            and text.count("\n") == len(rows) - 1
            and (backslashes == 0 or backslashes == sum(map(_count_none, rows)))
            and "\r" not in text
        ):
            return (text + "\n").encode("utf-8")
    return "".join("\t".join(map(_escaped, row)) + "\n" for row in rows).encode("utf-8")


def text_chunks(
    rows: Iterable[Sequence[Any]],
    *,
    chunk_rows: int | None = None,
    batch_rows: int | None = None,
    send_bytes: int | None = None,
) -> Iterator[Any]:
    """``rows`` in COPY's text format (``text_chunk`` of ``chunk_rows`` at a time), in pieces of
    about ``send_bytes``; with ``batch_rows``, a marker for ``copy_chunks`` after each batch of
    at least that many rows (whole chunks) but the last."""
    # The module's values when called, not when defined: tests make them small.
    chunk_rows = chunk_rows or CHUNK_ROWS
    send_bytes = send_bytes or SEND_BYTES
    rows = iter(rows)
    pieces: list[bytes] = []
    size = 0
    in_batch = 0
    while True:
        chunk = list(islice(rows, chunk_rows))
        if not chunk:
            break
        data = text_chunk(chunk)
        count = len(chunk)
        # Let go of the rows before the next ones are read (see CHUNK_ROWS).
        del chunk
        if batch_rows and in_batch >= batch_rows:
            if pieces:
                yield b"".join(pieces)
                pieces, size = [], 0
            yield _BATCH
            in_batch = 0
        pieces.append(data)
        size += len(data)
        in_batch += count
        if size >= send_bytes:
            yield b"".join(pieces)
            pieces, size = [], 0
    if pieces:
        yield b"".join(pieces)


class _Feed:
    """What ``copy_expert`` reads, in the sending thread: one batch of queued chunks. A chunk is
    handed over whole (psycopg2 sends what ``read`` returns, whatever its size): no copying."""

    def __init__(self, pending: "queue.Queue[Any]") -> None:
        self._pending = pending
        self.last = False

    def read(self, size: int = -1) -> bytes:
        item = self._pending.get()
        if item is _BATCH:
            return b""
        if item is _END:
            self.last = True
            return b""
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[no-any-return]


def copy_chunks(
    cursor: Any,
    sql: str,
    chunks: Iterable[Any],
    *,
    after_batch: Callable[[int], None] | None = None,
    queue_chunks: int = QUEUE_CHUNKS,
) -> int:
    """``COPY .. FROM STDIN`` (``sql``) of ``chunks`` (bytes) on ``cursor`` (psycopg2); returns the
    rows copied. The chunks are made in the calling thread and sent by another one through a
    queue of ``queue_chunks``. A batch marker among them (``text_chunks``) ends one COPY and
    starts the next after ``after_batch(rows of the batch)``, which runs in the sending thread
    after every COPY, the last one too.

    An error while the chunks are made ends the COPY with an error (nothing of it is written)
    and is raised as it is; the database's and ``after_batch``'s are raised as they are. Either
    way the transaction is left failed, for the caller to roll back."""
    pending: queue.Queue[Any] = queue.Queue(maxsize=max(1, queue_chunks))
    failure: list[BaseException] = []
    copied = [0]

    def send() -> None:
        try:
            while True:
                feed = _Feed(pending)
                try:
                    cursor.copy_expert(sql, feed)
                except BaseException as error:
                    # The database numbers the lines of each COPY from 1.
                    with contextlib.suppress(AttributeError, TypeError):
                        setattr(error, ROWS_BEFORE, copied[0])
                    raise
                copied[0] += max(cursor.rowcount, 0)
                if after_batch is not None:
                    after_batch(cursor.rowcount)
                if feed.last:
                    return
        except BaseException as error:
            failure.append(error)

    sender = threading.Thread(target=send, name="copy-sender", daemon=True)

    def put(item: Any) -> None:
        # A timeout, so that a sender that stopped (the database refused a value) is noticed.
        while sender.is_alive():
            try:
                pending.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _SenderGone

    sender.start()
    try:
        for chunk in chunks:
            if chunk:  # an empty one would read as the end of the batch
                put(chunk)
        put(_END)
    except _SenderGone:
        pass  # its error is raised below
    except BaseException as error:
        # What is queued is of no use now: dropped, so that the sender meets the abort soon.
        while True:
            try:
                pending.get_nowait()
            except queue.Empty:
                break
        with contextlib.suppress(_SenderGone):
            put(_Aborted(f"the rows could not be made: {error!r}"))
        sender.join()
        raise
    sender.join()
    if failure:
        raise failure[0]
    return copied[0]


def quoted_columns(columns: Sequence[str]) -> str:
    return ", ".join('"' + name.replace('"', '""') + '"' for name in columns)


def copy_rows(
    conn: Connection,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    batch_rows: int | None = None,
    after_batch: Callable[[int], None] | None = None,
) -> int:
    """COPY ``rows`` into ``table`` (an already quoted SQL name) in the caller's transaction;
    returns how many rows went in. ``columns`` are quoted here. With ``batch_rows``, one COPY per
    batch, each followed by ``after_batch(rows)`` on the same connection (see ``copy_chunks``)."""
    sql = f"COPY {table} ({quoted_columns(columns)}) FROM STDIN WITH (FORMAT text, ENCODING 'UTF8')"
    raw = conn.connection.dbapi_connection
    with raw.cursor() as cursor:  # type: ignore[union-attr]
        return copy_chunks(cursor, sql, text_chunks(rows, batch_rows=batch_rows), after_batch=after_batch)
