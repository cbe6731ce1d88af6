"""The data store's file registry, ``operations.datafile_registry`` (B3), without Dagster.

One row per (source, file name): ``processing`` while a load runs, then ``processed`` or
``failed`` with the reason; ``ignored`` is set by hand for a file that must never load. A file
is *due* unless it is ``processed`` or ``ignored`` (or always, with ``force``): a ``failed`` file
and one left ``processing`` by a run that died are retried. A source without files (the World
Bank transform) gets a new row, with no file name, on every run.

Every function runs in the caller's transaction, so a load can commit its rows and its
``processed`` mark together: a run that dies between the two cannot leave a file loaded but
due (which would load an incremental file twice) nor marked loaded without its rows.

Where this departs from the legacy's ``get_update_or_create``: the legacy only ever overwrote
``error_message`` with another message, so a file that failed once kept that message after a
later successful load; here a new attempt and a success clear it, and a failure always writes
its own. The legacy's COPY helper swallowed ``ProgrammingError`` and the file was then marked
processed; the loader marks such a file ``failed`` (see ``load``).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Connection

TABLE = "operations.datafile_registry"
# A reason is for people: the first few kB say what went wrong; a megabyte of CONTEXT lines
# (a COPY error quotes the bad row) would only bloat the table.
MESSAGE_LIMIT = 4000
# The column is a timestamp without time zone holding UTC (its default is ``now() AT TIME ZONE
# 'utc'``); the clock, not the transaction's start, dates a mark made at the end of a long load.
_NOW = "(clock_timestamp() AT TIME ZONE 'utc')"


class State(StrEnum):
    PROCESSING = "processing"
    FAILED = "failed"
    PROCESSED = "processed"
    IGNORED = "ignored"


DONE = (State.PROCESSED, State.IGNORED)


@dataclass(frozen=True)
class Entry:
    id: int
    source: str
    file_name: str | None
    state: State
    error_message: str | None
    created_timestamp: datetime
    updated_timestamp: datetime | None


_COLUMNS = "id, source, file_name, state::text AS state, error_message, created_timestamp, updated_timestamp"


def _entry(row: sa.Row) -> Entry:
    values = row._mapping
    return Entry(
        id=values["id"],
        source=values["source"],
        file_name=values["file_name"],
        state=State(values["state"]),
        error_message=values["error_message"],
        created_timestamp=values["created_timestamp"],
        updated_timestamp=values["updated_timestamp"],
    )


def _message(text: str | None) -> str | None:
    if text is None or len(text) <= MESSAGE_LIMIT:
        return text
    return text[: MESSAGE_LIMIT - 1] + "…"


def done_files(conn: Connection, source: str) -> set[str]:
    """The file names of ``source`` that are ``processed`` or ``ignored`` (the legacy's
    ``get_processed_or_ignored_datafiles``)."""
    rows = conn.execute(
        sa.text(
            f"SELECT file_name FROM {TABLE} WHERE source = :source AND file_name IS NOT NULL "
            "AND state::text IN ('processed', 'ignored')"
        ),
        {"source": source},
    )
    return {row.file_name for row in rows}


def due_files(conn: Connection, source: str, file_names: Iterable[str], *, force: bool = False) -> list[str]:
    """``file_names`` (in their order) that a load of ``source`` should take: those not
    ``processed``/``ignored``, or all of them with ``force``."""
    names = list(file_names)
    if force:
        return names
    done = done_files(conn, source)
    return [name for name in names if name not in done]


def get(conn: Connection, source: str, file_name: str, *, lock: bool = False) -> Entry | None:
    """The row of a file; with ``lock`` it is held (``FOR UPDATE``) until the transaction ends,
    which makes a second loader of the same file wait and then see the first one's outcome."""
    row = conn.execute(
        sa.text(
            f"SELECT {_COLUMNS} FROM {TABLE} WHERE source = :source AND file_name = :file_name"
            + (" FOR UPDATE" if lock else "")
        ),
        {"source": source, "file_name": file_name},
    ).first()
    return None if row is None else _entry(row)


def entries(conn: Connection, source: str) -> list[Entry]:
    """Every row of ``source``, oldest first."""
    rows = conn.execute(
        sa.text(f"SELECT {_COLUMNS} FROM {TABLE} WHERE source = :source ORDER BY id"), {"source": source}
    )
    return [_entry(row) for row in rows]


def mark(
    conn: Connection, source: str, file_name: str, state: State, error_message: str | None = None
) -> Entry:
    """Get or create the row of (``source``, ``file_name``) and set its state and reason (None
    clears it); ``updated_timestamp`` is the time of the mark."""
    row = conn.execute(
        sa.text(
            f"INSERT INTO {TABLE} AS r (source, file_name, state, error_message) "
            "VALUES (:source, :file_name, CAST(:state AS operations.processing_state), :message) "
            "ON CONFLICT (source, file_name) WHERE file_name IS NOT NULL DO UPDATE "
            f"SET state = EXCLUDED.state, error_message = EXCLUDED.error_message, updated_timestamp = {_NOW} "
            f"RETURNING {_COLUMNS}"
        ),
        {"source": source, "file_name": file_name, "state": state.value, "message": _message(error_message)},
    ).one()
    return _entry(row)


def claim(conn: Connection, source: str, file_name: str, *, force: bool = False) -> Entry | None:
    """Mark a due file ``processing`` (creating its row); None when it is not due, i.e. it is
    ``processed`` or ``ignored`` and ``force`` is off. One statement, so a file that another run
    finished meanwhile is not taken again."""
    row = conn.execute(
        sa.text(
            f"INSERT INTO {TABLE} AS r (source, file_name, state) VALUES (:source, :file_name, 'processing') "
            "ON CONFLICT (source, file_name) WHERE file_name IS NOT NULL DO UPDATE "
            f"SET state = 'processing', error_message = NULL, updated_timestamp = {_NOW} "
            "WHERE :force OR r.state::text NOT IN ('processed', 'ignored') "
            f"RETURNING {_COLUMNS}"
        ),
        {"source": source, "file_name": file_name, "force": force},
    ).first()
    return None if row is None else _entry(row)


def mark_processed(conn: Connection, source: str, file_name: str) -> Entry:
    return mark(conn, source, file_name, State.PROCESSED)


def mark_failed(conn: Connection, source: str, file_name: str, error_message: str) -> Entry:
    return mark(conn, source, file_name, State.FAILED, error_message)


def requeue_dropped(conn: Connection, source: str, reloading: Iterable[str]) -> tuple[int, int]:
    """After a forced reload dropped the tables of ``source``: its ``processed`` files whose rows
    went with them are due again. Those this run reloads (``reloading``) become ``processing``;
    the others (no longer in the blob store) ``failed``, saying why. Returns both counts."""
    names = list(reloading)
    requeued = conn.execute(
        sa.text(
            f"UPDATE {TABLE} SET state = 'processing', error_message = NULL, updated_timestamp = {_NOW} "
            "WHERE source = :source AND state::text = 'processed' AND file_name = ANY(CAST(:names AS text[]))"
        ),
        {"source": source, "names": names},
    ).rowcount
    orphaned = conn.execute(
        sa.text(
            f"UPDATE {TABLE} SET state = 'failed', updated_timestamp = {_NOW}, "
            "error_message = 'its rows were dropped by a forced reload and the file is no longer stored' "
            "WHERE source = :source AND state::text = 'processed' AND file_name IS NOT NULL "
            "AND NOT (file_name = ANY(CAST(:names AS text[])))"
        ),
        {"source": source, "names": names},
    ).rowcount
    return requeued, orphaned


def start_run(conn: Connection, source: str) -> Entry:
    """A new ``processing`` row without a file name, for a source that has no files (the World
    Bank transform): one per run, as in the legacy."""
    row = conn.execute(
        sa.text(
            f"INSERT INTO {TABLE} (source, file_name, state) VALUES (:source, NULL, 'processing') "
            f"RETURNING {_COLUMNS}"
        ),
        {"source": source},
    ).one()
    return _entry(row)


def finish_run(conn: Connection, entry_id: int, state: State, error_message: str | None = None) -> Entry:
    """Set the outcome of a run row made by ``start_run``."""
    row = conn.execute(
        sa.text(
            f"UPDATE {TABLE} SET state = CAST(:state AS operations.processing_state), "
            f"error_message = :message, updated_timestamp = {_NOW} WHERE id = :id RETURNING {_COLUMNS}"
        ),
        {"id": entry_id, "state": state.value, "message": _message(error_message)},
    ).one()
    return _entry(row)
