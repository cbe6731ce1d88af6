"""Source files into the data store's tables (B3/B4), without Dagster.

``load_source(engine, store, spec, force=...)`` is the legacy's ``datafiles_to_db_by_source``
for one source: it lists the source's blob folder, takes the files that are due (``registry``)
oldest first, and loads each with ``load_file``. ``load_file`` loads one file in ONE transaction:
the schema ``"<org>.<dataset>"`` and its tables are created if missing, the reader's rows are
streamed with ``COPY`` into a temporary table (``lib.copy``: COPY's text format, sent from a
helper thread while the next rows are read), and moved into ``"L0"`` (and ``"L1"``) with
``INSERT .. SELECT`` statements built from the spec. The ``processed`` mark commits with the
rows, so a run that dies mid-file leaves the tables as they were before that file and the file
due; any error (a bad file, a value the column type refuses, a bug) marks the file ``failed``
with its reason, and the next file still loads.

Layouts, with the legacy's names (every identifier quoted, file names and per-file values bound
as parameters, never written into the SQL):

* incremental: ``L0(id integer DEFAULT nextval('"<schema>"."L0_SEQUENCE"'), datafile_created,
  <columns>)`` with the file's base name in ``datafile_created``; ``L1(id serial,
  data_source_row_id, <L1 columns>)`` gets the transform of this file's rows only.
* snapshot: ``L0(id serial, datafile_created, datafile_updated, data_hash, <columns>,
  UNIQUE(data_hash))``, ``data_hash = md5(ROW(<columns>)::text)``: a row already there keeps
  its ``datafile_created`` and gets this file as ``datafile_updated`` (its first and last
  snapshot); ``L1(id serial, data_source_row_id, <L1 columns>, UNIQUE(data_source_row_id))`` gets
  the transform of the L0 rows this file created (without the constraint when the transform
  makes several L1 rows of one L0 row: the EU membership unpivot, as in the legacy).

Snapshot speed: the file is COPYed in batches (``SNAPSHOT_BATCH_ROWS``), and after each one the
server hashes that batch's rows (once each) and moves them on while the next batch is read. The
first file of a new L0 (``_bulk_snapshot``) needs no comparison with earlier rows: its rows go
straight in and the keys are built after them, which is several times cheaper than keeping a
unique index up to date row by row. A file into an L0 that has rows (``_merge_snapshot``) is
hashed into a second temporary table, analysed, and merged by the one statement it always was.
``benchmarks/datastore_load.py`` (1,000,000 rows x 20 columns): 62 s before this, 35 s after on
a busy machine where COPY alone took 12 s instead of its quiet 7.5; the server's work is now
mostly the hashing and the inserting themselves, and the reading and encoding overlap it.

``force`` (``load_source``): the legacy dropped and recreated the tables before every forced
file, so with several files only the last one's rows survived. Here a forced run drops the
tables once, before its first file, and then loads every stored file in order, so all of them
end up loaded. ``load_file(force=True)`` reloads one file whatever the registry says; for an
incremental source it first deletes the rows that file loaded before, so nothing is doubled.

Extension points: ``FILE_LOADERS`` maps ``spec.loading`` to the function that loads one file's
rows (``rebuild``, SPIRE, is not written yet), ``SOURCE_RUNNERS`` maps the id of a source
without files to the routine that computes its tables (the World Bank transform, not written
yet); until they are, those sources raise ``NotImplementedError`` before anything is touched.
"""

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import date
from typing import Any, BinaryIO, Literal

import psycopg2
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.datastore import registry
from ecr_pipelines.datastore.sources import SOURCES, listing
from ecr_pipelines.datastore.sources.spec import FileRows, L1Transform, Problem, SourceFileError, SourceSpec
from ecr_pipelines.datastore.spire import rebuild_spire
from ecr_pipelines.datastore.transform import run_transform
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.copy import ROWS_BEFORE, copy_rows
from ecr_pipelines.lib.scratch import scratch_root

log = logging.getLogger(__name__)

L0 = "L0"
L1 = "L1"
L0_SEQUENCE = "L0_SEQUENCE"
# The per-file staging table: temporary, so it is private to the loading session and goes with
# the transaction whether it commits or not.
STAGING = "datastore_load"
# A snapshot's rows with their hash (``_merge_snapshot``), temporary as well.
HASHED = "datastore_load_hashed"
# Rows per COPY of a snapshot file: the server hashes and moves one batch on while the next is
# read and sent, and the staging table stays small.
SNAPSHOT_BATCH_ROWS = 20_000
# At least this much memory per sort or hash for a snapshot merge (``_merge_snapshot``).
SNAPSHOT_WORK_MEM = "64MB"
UNIQUE_VIOLATION = "23505"
HELPER_COLUMNS = frozenset({"id", "datafile_created", "datafile_updated", "data_hash", "data_source_row_id"})
# The parameter name of the file's base name in the statements; spec parameters are other names.
FILE_PARAM = "_datafile"
# pg_try_advisory_lock(key1, key2): key1 says "a data store source load", key2 is the source.
_LOCK_CLASS = 0x44534C44
_SPOOL_CHUNK = 1 << 20
MAX_NAME_BYTES = 63  # Postgres's NAMEDATALEN - 1
_COPY_LINE = re.compile(r"COPY \S+, line (\d+)")

Status = Literal["loaded", "failed", "skipped"]


class SourceBusy(RuntimeError):
    """Another run is loading this source right now."""


class TableLayoutError(RuntimeError):
    """An existing table's columns are not the spec's (the spec changed since it was made)."""


@dataclass
class FileReport:
    """One file of one load. ``l0_updated``: snapshot rows already in L0 that this file
    contained again (their ``datafile_updated`` moved to it)."""

    source: str
    file_name: str | None
    status: Status = "skipped"
    rows_read: int = 0
    l0_inserted: int = 0
    l0_updated: int = 0
    l1_inserted: int = 0
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    error_kind: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "file_name": self.file_name,
            "status": self.status,
            "rows_read": self.rows_read,
            "l0_inserted": self.l0_inserted,
            "l0_updated": self.l0_updated,
            "l1_inserted": self.l1_inserted,
            "problems": [str(problem) for problem in self.problems],
            "counts": dict(self.counts),
            "seconds": round(self.seconds, 3),
            "error": self.error,
            "error_kind": self.error_kind,
        }


@dataclass
class SourceReport:
    """One source's load: a report per file it tried, and the stored files that were not due."""

    source: str
    forced: bool = False
    files: list[FileReport] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)
    tables_dropped: bool = False

    def _names(self, status: Status) -> list[str]:
        return [report.file_name or "" for report in self.files if report.status == status]

    @property
    def loaded(self) -> list[str]:
        return self._names("loaded")

    @property
    def failed(self) -> list[str]:
        return self._names("failed")

    @property
    def skipped(self) -> list[str]:
        """Not due when listed, or finished by another run meanwhile."""
        return self.not_due + self._names("skipped")

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "forced": self.forced,
            "tables_dropped": self.tables_dropped,
            "loaded": len(self.loaded),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "rows_read": sum(report.rows_read for report in self.files),
            "files": [report.as_dict() for report in self.files],
        }


@dataclass
class FileLoad:
    """What a file loader gets: the open transaction, the spec, the file's base name (the
    ``datafile_created`` value), its rows, and whether rows it loaded before are to go first."""

    conn: Connection
    spec: SourceSpec
    datafile: str
    rows: FileRows
    replace: bool = False


@dataclass
class Loaded:
    rows_read: int = 0
    l0_inserted: int = 0
    l0_updated: int = 0
    l1_inserted: int = 0


FileLoader = Callable[[FileLoad], Loaded]
SourceRunner = Callable[[Engine, SourceSpec], dict[str, int]]


# --- SQL text --------------------------------------------------------------------------------------
# Every statement is sent with parameters, so psycopg2 reads ``%`` as a placeholder everywhere:
# spec expressions double a literal one (spec.py's convention), and names may not have one.


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def table_name(schema: str, table: str) -> str:
    return f"{ident(schema)}.{ident(table)}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _column_list(names: Iterable[str], prefix: str = "") -> str:
    return ", ".join(prefix + ident(name) for name in names)


def _execute(conn: Connection, sql: str, params: dict[str, Any]) -> tuple[int, list[tuple[Any, ...]]]:
    """Run one statement on the transaction's connection: row count and rows, if any."""
    raw = conn.connection.dbapi_connection
    with raw.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(sql, params)
        rows = cursor.fetchall() if cursor.description is not None else []
        return cursor.rowcount, rows


class _Statements:
    """The statements of one file of one source; ``run`` binds the file's base name and the
    reader's per-file values."""

    def __init__(self, job: FileLoad) -> None:
        self.job = job
        self.spec = job.spec
        self.schema = ident(job.spec.schema)
        self.l0 = table_name(job.spec.schema, L0)
        self.l1 = table_name(job.spec.schema, L1)
        self.sequence = table_name(job.spec.schema, L0_SEQUENCE)
        self.staging = f"pg_temp.{ident(STAGING)}"
        self.hashed = f"pg_temp.{ident(HASHED)}"
        self.params: dict[str, Any] = {**job.rows.params, FILE_PARAM: job.datafile}
        self.columns = _column_list(job.spec.column_names)

    def run(self, sql: str, extra: dict[str, Any] | None = None) -> tuple[int, list[tuple[Any, ...]]]:
        return _execute(self.job.conn, sql, {**self.params, **(extra or {})})

    def column_types(self) -> str:
        return ", ".join(f"{ident(column.name)} {column.type}" for column in self.spec.columns)

    def l1_types(self) -> str:
        assert self.spec.l1 is not None
        return ", ".join(f"{ident(column.name)} {column.type}" for column in self.spec.l1.columns)


def _check_spec(spec: SourceSpec) -> None:
    clash = HELPER_COLUMNS & set(spec.column_names)
    if spec.l1 is not None:
        clash |= HELPER_COLUMNS & set(spec.l1.column_names)
    if clash:
        raise ValueError(f"{spec.id}: columns {sorted(clash)} are the loader's helper columns")
    names = [spec.schema, *spec.column_names, *(spec.l1.column_names if spec.l1 else ())]
    if any("%" in name for name in names):
        raise ValueError(f"{spec.id}: a name with % would be read as a statement parameter")
    if spec.l1 is not None and FILE_PARAM in spec.l1.params:
        raise ValueError(f"{spec.id}: the L1 parameter name {FILE_PARAM} is the loader's")


def _existing_columns(s: _Statements, table: str) -> list[str]:
    _, rows = s.run(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%(_table)s) "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        {"_table": table},
    )
    return [row[0] for row in rows]


def stored_name(name: str) -> str:
    """The name as Postgres keeps it: cut to 63 bytes (one Companies House column is longer; the
    legacy's table has it cut too, and statements naming it in full are cut the same way)."""
    data = name.encode("utf-8")
    if len(data) <= MAX_NAME_BYTES:
        return name
    return data[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")


def _create_table(s: _Statements, table: str, definition: str, expected: Sequence[str]) -> None:
    """``CREATE TABLE IF NOT EXISTS``, then refuse a table whose columns are not the spec's:
    inserting into it would fail on a column name, or worse, fill the wrong columns."""
    s.run(f"CREATE TABLE IF NOT EXISTS {table} ({definition})")
    found = _existing_columns(s, table)
    if found != [stored_name(name) for name in expected]:
        raise TableLayoutError(
            f"{table} has the columns {found}, the spec of {s.spec.id} expects "
            f"{list(expected)}; load with force to recreate the tables"
        )


def _ensure_incremental_tables(s: _Statements) -> None:
    s.run(f"CREATE SCHEMA IF NOT EXISTS {s.schema}")
    s.run(f"CREATE SEQUENCE IF NOT EXISTS {s.sequence}")
    default = f"nextval({_literal(s.sequence)}::regclass)"
    _create_table(
        s,
        s.l0,
        f'"id" integer PRIMARY KEY DEFAULT {default}, "datafile_created" text, {s.column_types()}',
        ["id", "datafile_created", *s.spec.column_names],
    )
    if s.spec.l1 is not None:
        _create_table(
            s,
            s.l1,
            f'"id" serial PRIMARY KEY, "data_source_row_id" integer, {s.l1_types()}',
            ["id", "data_source_row_id", *s.spec.l1.column_names],
        )


def _fans_out(transform: L1Transform) -> bool:
    # A lateral FROM item (the EU membership unpivot) makes several L1 rows of one L0 row, which
    # UNIQUE(data_source_row_id) would forbid; the legacy dropped that constraint for it.
    return transform.lateral is not None


def _snapshot_l0_columns(s: _Statements) -> str:
    return (
        '"id" serial, "datafile_created" text, "datafile_updated" text, "data_hash" text, ' + s.column_types()
    )


def _ensure_snapshot_tables(s: _Statements) -> bool:
    """Create what is missing; True when L0 is new, made here without its keys (``_bulk_snapshot``
    adds them after its rows: an index built once is several times cheaper than one kept up to
    date row by row)."""
    s.run(f"CREATE SCHEMA IF NOT EXISTS {s.schema}")
    expected = ["id", "datafile_created", "datafile_updated", "data_hash", *s.spec.column_names]
    _, found = s.run("SELECT to_regclass(%(_table)s) IS NULL", {"_table": s.l0})
    new = bool(found[0][0])
    keys = "" if new else ', PRIMARY KEY ("id"), UNIQUE ("data_hash")'
    _create_table(s, s.l0, _snapshot_l0_columns(s) + keys, expected)
    if s.spec.l1 is not None:
        unique = "" if _fans_out(s.spec.l1) else ', UNIQUE ("data_source_row_id")'
        _create_table(
            s,
            s.l1,
            f'"id" serial PRIMARY KEY, "data_source_row_id" integer, {s.l1_types()}{unique}',
            ["id", "data_source_row_id", *s.spec.l1.column_names],
        )
    return new


def _copy_into_staging(
    s: _Statements,
    id_column: str | None = None,
    *,
    batch_rows: int | None = None,
    after_batch: Callable[[int], None] | None = None,
) -> int:
    """COPY the reader's rows into the staging table; with ``after_batch``, one COPY per
    ``batch_rows`` rows, each followed by ``after_batch`` (see ``lib.copy.copy_rows``)."""
    columns = f"{id_column}, {s.column_types()}" if id_column else s.column_types()
    s.run(f"CREATE TEMPORARY TABLE {ident(STAGING)} ({columns}) ON COMMIT DROP")
    # The reader's own error (its kind and line) comes out of copy_rows as it was raised.
    return copy_rows(
        s.job.conn,
        s.staging,
        s.spec.column_names,
        s.job.rows.rows,
        batch_rows=batch_rows,
        after_batch=after_batch,
    )


def _l1_select(transform: L1Transform, relation: str, condition: str | None) -> tuple[str, str]:
    """The column list and the ``SELECT`` of L1 rows from ``relation`` aliased ``l0``."""
    columns = '"data_source_row_id", ' + _column_list(transform.column_names)
    distinct = f"DISTINCT ON ({', '.join(transform.distinct_on)}) " if transform.distinct_on else ""
    values = ", ".join(column.select_sql for column in transform.columns)
    conditions = [c for c in (condition, transform.where) if c]
    where = " WHERE " + " AND ".join(f"({c})" for c in conditions) if conditions else ""
    # DISTINCT ON needs its expressions first in ORDER BY. Otherwise no sort: a scan gives the
    # rows in the order they were written, which is the L0 order, and sorting millions of wide
    # rows only to number L1 the same way cost more than the insert itself.
    order = transform.order_by or transform.distinct_on
    select = (
        f'SELECT {distinct}l0."id", {values} FROM {relation} AS l0'
        + (f" {transform.lateral}" if transform.lateral else "")
        + where
        + (f" ORDER BY {', '.join(order)}" if order else "")
    )
    return columns, select


def _check_params(s: _Statements) -> None:
    if s.spec.l1 is None:
        return
    missing = [name for name in s.spec.l1.params if name not in s.job.rows.params]
    if missing:
        raise ValueError(f"{s.spec.id}: the reader gave no {missing} for the L1 transform")


def _delete_file_rows(s: _Statements) -> None:
    if s.spec.l1 is not None:
        s.run(
            f'DELETE FROM {s.l1} WHERE "data_source_row_id" IN '
            f'(SELECT "id" FROM {s.l0} WHERE "datafile_created" = %({FILE_PARAM})s)'
        )
    s.run(f'DELETE FROM {s.l0} WHERE "datafile_created" = %({FILE_PARAM})s')


def load_incremental(job: FileLoad) -> Loaded:
    """Append the file's rows to L0 (ids from the L0 sequence, in file order) and their
    transform to L1."""
    s = _Statements(job)
    _check_params(s)
    _ensure_incremental_tables(s)
    if job.replace:
        _delete_file_rows(s)
    # The staging rows take their L0 ids as they arrive, so L1 can refer to them before L0 has them.
    default = f"nextval({_literal(s.sequence)}::regclass)"
    read = _copy_into_staging(s, f'"id" integer NOT NULL DEFAULT {default}')
    l0_inserted, _ = s.run(
        f'INSERT INTO {s.l0} ("id", "datafile_created", {s.columns}) '
        f'SELECT "id", %({FILE_PARAM})s, {s.columns} FROM {s.staging}'
    )
    l1_inserted = 0
    if job.spec.l1 is not None:
        columns, select = _l1_select(job.spec.l1, s.staging, None)
        l1_inserted, _ = s.run(f"INSERT INTO {s.l1} ({columns}) {select}")
    return Loaded(rows_read=read, l0_inserted=l0_inserted, l1_inserted=l1_inserted)


def _row_hash(s: _Statements) -> str:
    return "md5(ROW(" + _column_list(s.spec.column_names, "t.") + ")::text)"


def _bulk_snapshot(s: _Statements) -> tuple[int, int]:
    """The first file of a new L0 (made by this transaction, so nobody else sees it yet): (rows
    read, rows inserted). Every row goes in, hashed once, in batches while the next one is read;
    then the keys are built, and a repeat within the file (whose unique key fails) is removed
    after its first occurrence, which is what the general statement's ON CONFLICT does. The ids
    end the same too: there a repeat draws an id it leaves unused, here its row goes with it."""
    move = (
        f'INSERT INTO {s.l0} ("datafile_created", "datafile_updated", "data_hash", {s.columns}) '
        f"SELECT %({FILE_PARAM})s, %({FILE_PARAM})s, {_row_hash(s)}, {_column_list(s.spec.column_names, 't.')} "
        f"FROM {s.staging} AS t"
    )
    inserted = 0

    def after_batch(rows: int) -> None:
        nonlocal inserted
        inserted += s.run(move)[0]
        # Emptied in place (the table is this transaction's), so it stays a batch small.
        s.run(f"TRUNCATE {s.staging}")

    read = _copy_into_staging(s, batch_rows=SNAPSHOT_BATCH_ROWS, after_batch=after_batch)
    # As CREATE TABLE names them: "L0_pkey", "L0_data_hash_key".
    s.run(f'ALTER TABLE {s.l0} ADD PRIMARY KEY ("id")')
    add_key = f'ALTER TABLE {s.l0} ADD UNIQUE ("data_hash")'
    s.run("SAVEPOINT datastore_hash_key")
    try:
        s.run(add_key)
    except psycopg2.Error as error:
        if error.pgcode != UNIQUE_VIOLATION:
            raise
        s.run("ROLLBACK TO SAVEPOINT datastore_hash_key")
        repeats, _ = s.run(
            f"DELETE FROM {s.l0} AS later WHERE EXISTS (SELECT 1 FROM {s.l0} AS l0 "
            'WHERE l0."data_hash" = later."data_hash" AND l0."id" < later."id")'
        )
        inserted -= repeats
        s.run(add_key)
    s.run("RELEASE SAVEPOINT datastore_hash_key")
    return read, inserted


def _merge_snapshot(s: _Statements) -> tuple[int, int, int]:
    """A file into an L0 that has rows (or may have): (rows read, inserted, seen again)."""
    names = _column_list(s.spec.column_names, "t.")
    # The hash once per row, in batches while the next one is read: the statement below needs
    # it three times (the rows seen, the rows new, the repeats within the file). "ord" is the
    # row's place in the file, for the new rows' ids: the join that finds them may give them in
    # another order (a hash of the file's rows probed by L0's), and a table filled by INSERT may
    # put a short row in an earlier page's free space.
    s.run(
        f'CREATE TEMPORARY TABLE {ident(HASHED)} ("ord" bigint, "data_hash" text, {s.column_types()}) '
        "ON COMMIT DROP"
    )
    move = (
        f'INSERT INTO {s.hashed} ("ord", "data_hash", {s.columns}) '
        f"SELECT %(_before)s + row_number() OVER (), {_row_hash(s)}, {names} FROM {s.staging} AS t"
    )
    before = 0

    def after_batch(rows: int) -> None:
        nonlocal before
        # The staging table was made by this transaction, so COPY fills it page after page, and
        # its scan gives the rows in the file's order.
        s.run(move, {"_before": before})
        before += rows
        s.run(f"TRUNCATE {s.staging}")

    read = _copy_into_staging(s, batch_rows=SNAPSHOT_BATCH_ROWS, after_batch=after_batch)
    # Temporary tables get no statistics unless asked: without them the planner guessed 200
    # distinct hashes and probed L0's index once per row (1.6 times slower, 300,000 rows seen
    # again); with them it hashes. The one column is enough, and quick.
    s.run(f'ANALYZE {s.hashed} ("data_hash")')
    # Its hash joins over the file's hashes in memory rather than in batches through disk (for
    # this transaction only, and never lowered).
    s.run(
        "SELECT set_config('work_mem', %(_work_mem)s, true) "
        "WHERE pg_size_bytes(current_setting('work_mem')) < pg_size_bytes(%(_work_mem)s)",
        {"_work_mem": SNAPSHOT_WORK_MEM},
    )
    # The legacy's single INSERT .. SELECT DISTINCT ON (columns) .. ON CONFLICT DO UPDATE, in two
    # parts of one statement. Rows L0 has get this file as their last snapshot; the others are
    # inserted, each distinct row once: a repeat within the file meets the row the same
    # statement inserted (DO NOTHING), so the unique index does the DISTINCT's work without a
    # sort of the whole file. Rows L0 has are kept out of the INSERT rather than met by its ON
    # CONFLICT because an insert that ends in a conflict has drawn an id already: a monthly
    # snapshot of millions of rows seen again would soon use the integer ids up. Both parts see
    # L0 as it was before this file, so the rows one inserts are not counted as seen again.
    _, counts = s.run(
        f'WITH seen AS (UPDATE {s.l0} AS l0 SET "datafile_updated" = %({FILE_PARAM})s '
        f'WHERE l0."data_hash" IN (SELECT "data_hash" FROM {s.hashed}) RETURNING 1), '
        f"written AS (INSERT INTO {s.l0} "
        f'("datafile_created", "datafile_updated", "data_hash", {s.columns}) '
        f'SELECT %({FILE_PARAM})s, %({FILE_PARAM})s, t."data_hash", {names} '
        f"FROM {s.hashed} AS t "
        f'WHERE NOT EXISTS (SELECT 1 FROM {s.l0} AS l0 WHERE l0."data_hash" = t."data_hash") '
        f'ORDER BY t."ord" ON CONFLICT ("data_hash") DO NOTHING RETURNING 1) '
        f"SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM seen)"
    )
    return read, counts[0][0], counts[0][1]


def load_snapshot(job: FileLoad) -> Loaded:
    """Add the file's distinct rows that L0 lacks, move ``datafile_updated`` of those it has to
    this file, and add the transform of the new rows to L1."""
    s = _Statements(job)
    _check_params(s)
    if _ensure_snapshot_tables(s):
        read, l0_inserted = _bulk_snapshot(s)
        l0_updated = 0
    else:
        read, l0_inserted, l0_updated = _merge_snapshot(s)
    l1_inserted = 0
    transform = job.spec.l1
    if transform is not None:
        condition = f'l0."datafile_created" = %({FILE_PARAM})s'
        if _fans_out(transform):
            # Without the unique constraint, this keeps a second load of one file name from
            # adding the rows of L0 rows that already have theirs.
            condition += (
                f' AND NOT EXISTS (SELECT 1 FROM {s.l1} AS done WHERE done."data_source_row_id" = l0."id")'
            )
        columns, select = _l1_select(transform, s.l0, condition)
        conflict = "" if _fans_out(transform) else ' ON CONFLICT ("data_source_row_id") DO NOTHING'
        l1_inserted, _ = s.run(f"INSERT INTO {s.l1} ({columns}) {select}{conflict}")
    return Loaded(read, l0_inserted, l0_updated, l1_inserted)


# The loader of one file, by ``SourceSpec.loading``; SPIRE's ``rebuild`` is whole-export (load_spire).
FILE_LOADERS: dict[str, FileLoader] = {
    "incremental": load_incremental,
    "snapshot": load_snapshot,
}
# Sources without files (``spec.reader is None``), by id: the routine that computes their tables
# and returns counts for the report.
SOURCE_RUNNERS: dict[str, SourceRunner] = {"world_bank.tariff.transformed": run_transform}


def file_loader(spec: SourceSpec) -> FileLoader:
    """The loader of ``spec``'s files; ``NotImplementedError`` for those not written yet."""
    if spec.reader is None or spec.blob_prefix is None:
        raise NotImplementedError(f"{spec.id} has no files; its tables are computed (SOURCE_RUNNERS)")
    if spec.l1 is not None and spec.l1.computed:
        raise NotImplementedError(f"{spec.id}: a computed L1 is not loaded from files")
    loader = FILE_LOADERS.get(spec.loading)
    if loader is None:
        raise NotImplementedError(
            f"{spec.id}: {spec.loading!r} sources are not loaded file by file (SPIRE: load_spire)"
        )
    _check_spec(spec)
    return loader


# --- errors ----------------------------------------------------------------------------------------


def describe_error(error: BaseException) -> tuple[str, str]:
    """(kind, message) for the registry and the report."""
    if isinstance(error, sa_exc.DBAPIError) and error.orig is not None:
        error = error.orig
    if isinstance(error, SourceFileError):
        return error.kind, str(error)
    if isinstance(error, psycopg2.Error):
        diag = error.diag
        # COPY counts the rows it was sent, which is not the file's line (header, quoted line
        # breaks, skipped lines): say "data row" so that nobody looks at the wrong line.
        # A snapshot file goes in by batches, a COPY each, whose lines count from 1 again.
        before = getattr(error, ROWS_BEFORE, 0)
        context = (
            _COPY_LINE.sub(lambda line: f"data row {int(line.group(1)) + before}", diag.context)
            if diag.context
            else None
        )
        parts = [diag.message_primary or str(error).strip(), diag.message_detail, context]
        code = f" {error.pgcode}" if error.pgcode else ""
        return "database", f"database error{code}: " + "; ".join(part.strip() for part in parts if part)
    if isinstance(error, TableLayoutError):
        return "table_layout", str(error)
    return type(error).__name__, str(error) or repr(error)


# --- one file --------------------------------------------------------------------------------------


def base_name(file_name: str) -> str:
    """What ``datafile_created`` holds: the name without its folders, as the legacy wrote it."""
    return file_name.rsplit("/", 1)[-1]


@contextmanager
def _seekable(stream: BinaryIO) -> Iterator[BinaryIO]:
    """The ZIP readers seek; an object store's body cannot, so it is spooled to a scratch file
    first (unnamed, so nothing is left behind whatever happens)."""
    if getattr(stream, "seekable", lambda: False)():
        yield stream
        return
    with tempfile.TemporaryFile(dir=scratch_root()) as spool:
        shutil.copyfileobj(stream, spool, _SPOOL_CHUNK)
        spool.seek(0)
        yield spool  # type: ignore[misc]


def _load(
    engine: Engine,
    spec: SourceSpec,
    file_name: str,
    opener: Callable[[], AbstractContextManager[BinaryIO]],
    *,
    force: bool,
    replace: bool,
) -> FileReport:
    loader = file_loader(spec)
    report = FileReport(source=spec.id, file_name=file_name)
    started = time.monotonic()
    with engine.begin() as conn:
        # Committed on its own: while the file loads, the registry shows it being processed.
        if registry.claim(conn, spec.id, file_name, force=force) is None:
            return report
    rows: FileRows | None = None
    try:
        with engine.begin() as conn:
            # Held to the end: a second loader of this file waits here, then sees it processed.
            entry = registry.get(conn, spec.id, file_name, lock=True)
            if entry is None or (not force and entry.state in registry.DONE):
                return report
            # As the legacy: a big file may take hours, whatever the server's default limit.
            _execute(conn, "SET LOCAL statement_timeout = '20h'", {})
            with opener() as blob, _seekable(blob) as stream:
                rows = spec.read(stream, file_name)
                loaded = loader(FileLoad(conn, spec, base_name(file_name), rows, replace=replace))
            registry.mark_processed(conn, spec.id, file_name)
    except Exception as error:
        report.status = "failed"
        report.error_kind, report.error = describe_error(error)
        log.warning("%s: %s failed: %s", spec.id, file_name, report.error, exc_info=True)
        with engine.begin() as conn:
            registry.mark_failed(conn, spec.id, file_name, report.error)
    else:
        report.status = "loaded"
        report.rows_read = loaded.rows_read
        report.l0_inserted = loaded.l0_inserted
        report.l0_updated = loaded.l0_updated
        report.l1_inserted = loaded.l1_inserted
    finally:
        report.seconds = time.monotonic() - started
        if rows is not None:
            report.problems = list(rows.problems)
            report.counts = dict(rows.counts)
    if report.status == "loaded":
        log.info(
            "%s: %s loaded, %d rows read, L0 +%d (%d seen again), L1 +%d in %.1f s",
            spec.id,
            file_name,
            report.rows_read,
            report.l0_inserted,
            report.l0_updated,
            report.l1_inserted,
            report.seconds,
        )
    return report


def load_file(
    engine: Engine, spec: SourceSpec, file_name: str, stream: BinaryIO, *, force: bool = False
) -> FileReport:
    """Load one file of ``spec`` read from ``stream``, registered as ``file_name`` (its name
    under the source's blob folder). Skipped when the registry has it ``processed`` or
    ``ignored``, unless ``force``; with ``force`` an incremental source's earlier rows of this
    file are deleted first (in the same transaction), so reloading never doubles them.

    Never raises for a file that cannot be loaded: the report (and the registry) say ``failed``
    and why. ``NotImplementedError`` for a source whose loader is not written yet."""
    return _load(engine, spec, file_name, lambda: nullcontext(stream), force=force, replace=force)


# --- one source ------------------------------------------------------------------------------------


def stored_files(store: BlobStore, spec: SourceSpec) -> list[str]:
    """The names (relative to the source's blob folder) of its stored files, oldest first."""
    prefix = spec.blob_prefix or ""
    names = [
        key[len(prefix) :]
        for key in store.list(prefix)
        # Dot files (.DS_Store and the like, dropped in by hand) are not data.
        if key.startswith(prefix) and not base_name(key).startswith(".")
    ]
    return sorted(names, key=lambda name: file_order_key(spec.id, name))


def file_order_key(source_id: str, name: str) -> tuple[date, str]:
    """Files load oldest first: by the date in their name where the source's downloader names
    them with one (``ONSPD_MAY_2019_UK.zip`` before ``ONSPD_JUL_2019_UK.zip``, which the name
    order would reverse), otherwise by name; an undated name counts as the oldest."""
    settings = listing.LISTINGS.get(source_id)
    day = date.min
    if settings is not None:
        try:
            dates = listing.stored_dates([base_name(name)], settings)
        except listing.ListingError:
            dates = []
        if dates:
            day = dates[0]
    return day, name


@contextmanager
def source_lock(engine: Engine, source: str) -> Iterator[None]:
    """One run per source at a time; the lock is the session's, so a run that dies (and its
    connection with it) never leaves it held."""
    with engine.connect() as conn:
        held = conn.execute(
            sa.text("SELECT pg_try_advisory_lock(:kind, hashtext(:source))"),
            {"kind": _LOCK_CLASS, "source": source},
        ).scalar()
        conn.commit()
        if not held:
            raise SourceBusy(f"{source} is being loaded by another run")
        try:
            yield
        finally:
            conn.execute(
                sa.text("SELECT pg_advisory_unlock(:kind, hashtext(:source))"),
                {"kind": _LOCK_CLASS, "source": source},
            )
            conn.commit()


def drop_tables(engine: Engine, spec: SourceSpec, reloading: Sequence[str]) -> None:
    """Drop the source's L1, L0 and L0 sequence (a forced run's start), and in the same
    transaction make its ``processed`` files due again (``registry.requeue_dropped``). A table
    another object depends on (a view) stops it with Postgres's message: nothing is dropped."""
    with engine.begin() as conn:
        params: dict[str, Any] = {FILE_PARAM: None}
        _execute(conn, f"DROP TABLE IF EXISTS {table_name(spec.schema, L1)}", params)
        _execute(conn, f"DROP TABLE IF EXISTS {table_name(spec.schema, L0)}", params)
        _execute(conn, f"DROP SEQUENCE IF EXISTS {table_name(spec.schema, L0_SEQUENCE)}", params)
        registry.requeue_dropped(conn, spec.id, reloading)


def _run_without_file(engine: Engine, spec: SourceSpec) -> SourceReport:
    runner = SOURCE_RUNNERS.get(spec.id)
    if runner is None:
        raise NotImplementedError(f"{spec.id} has no files and no runner yet (SOURCE_RUNNERS)")
    report = FileReport(source=spec.id, file_name=None)
    started = time.monotonic()
    with engine.begin() as conn:
        entry = registry.start_run(conn, spec.id)
    try:
        counts = runner(engine, spec)
    except Exception as error:
        report.status = "failed"
        report.error_kind, report.error = describe_error(error)
        log.warning("%s failed: %s", spec.id, report.error, exc_info=True)
        with engine.begin() as conn:
            registry.finish_run(conn, entry.id, registry.State.FAILED, report.error)
    else:
        report.status = "loaded"
        report.counts = dict(counts)
        with engine.begin() as conn:
            registry.finish_run(conn, entry.id, registry.State.PROCESSED)
    report.seconds = time.monotonic() - started
    return SourceReport(source=spec.id, files=[report])


def load_source(
    engine: Engine,
    store: BlobStore,
    spec: SourceSpec,
    *,
    force: bool = False,
    progress: Callable[[FileReport], None] | None = None,
) -> SourceReport:
    """Load the due files of ``spec`` from ``store`` (under ``spec.blob_prefix``), oldest
    first, one transaction each; a failing file is marked failed and the next one loads.

    ``force``: every stored file is due; the tables are dropped once, before the first file,
    so the run ends with all of them loaded (not only the last, as the legacy's force left it).
    ``progress`` is called with each file's report. ``SourceBusy`` when another run holds the
    source; ``NotImplementedError`` for a source whose loader is not written yet."""
    if spec.reader is None:
        return _run_without_file(engine, spec)
    file_loader(spec)
    prefix = spec.blob_prefix or ""
    report = SourceReport(source=spec.id, forced=force)
    with source_lock(engine, spec.id):
        names = stored_files(store, spec)
        with engine.connect() as conn:
            due = registry.due_files(conn, spec.id, names, force=force)
        due_set = set(due)
        report.not_due = [name for name in names if name not in due_set]
        if force and due:
            drop_tables(engine, spec, due)
            report.tables_dropped = True
        for name in due:
            file_report = _load(
                engine,
                spec,
                name,
                lambda name=name: store.open(prefix + name),  # type: ignore[misc]
                force=force,
                replace=False,
            )
            report.files.append(file_report)
            if progress is not None:
                progress(file_report)
    return report


SPIRE = "dit.spire"


def load_spire(engine: Engine, store: BlobStore, *, force: bool = False) -> SourceReport:
    """SPIRE is one export of 25 tables tied by foreign keys, so it is rebuilt whole
    (``spire.rebuild_spire``), never table by table: when the newest file of any table folder is
    due (or with ``force``), the newest file of every folder is loaded in one transaction, and
    every one of them is marked processed, or failed with the same reason (the previous tables
    then stay). Taking each folder's newest file, due or not, keeps an export that brought only
    some new files from emptying the other tables."""
    specs = [spec for spec in SOURCES.values() if spec.id.startswith(SPIRE + ".")]
    report = SourceReport(source=SPIRE, forced=force)
    with source_lock(engine, SPIRE):
        newest = {spec.id: names[-1] for spec in specs if (names := stored_files(store, spec))}
        with engine.connect() as conn:
            due = [sid for sid, name in newest.items() if registry.due_files(conn, sid, [name], force=force)]
        if not due:
            report.not_due = [f"{sid}/{name}" for sid, name in newest.items()]
            return report
        prefixes = {spec.id: spec.blob_prefix or "" for spec in specs}
        started = time.monotonic()
        error: tuple[str, str] | None = None
        rows: dict[str, int] = {}
        try:
            with ExitStack() as stack:
                files = {
                    sid: (
                        base_name(name),
                        stack.enter_context(_seekable(stack.enter_context(store.open(prefixes[sid] + name)))),
                    )
                    for sid, name in newest.items()
                }
                with engine.begin() as conn:
                    rebuilt = rebuild_spire(conn, files)
                    rows = rebuilt.rows
                    for sid, name in newest.items():
                        registry.mark_processed(conn, sid, name)
        except Exception as failure:  # the export's own trouble: recorded on every file, nothing changed
            error = describe_error(failure)
            log.warning("SPIRE rebuild failed: %s", error[1], exc_info=True)
            with engine.begin() as conn:
                for sid, name in newest.items():
                    registry.mark_failed(conn, sid, name, error[1])
        seconds = time.monotonic() - started
        for sid, name in newest.items():
            table = sid.rsplit(".", 1)[-1]
            file_report = FileReport(source=sid, file_name=name, seconds=seconds)
            if error is None:
                file_report.status = "loaded"
                file_report.rows_read = file_report.l0_inserted = rows.get(table, 0)
            else:
                file_report.status = "failed"
                file_report.error_kind, file_report.error = error
            report.files.append(file_report)
    return report
