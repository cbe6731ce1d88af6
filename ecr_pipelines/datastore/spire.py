"""The SPIRE export-licence schema (``dit.spire``): its 25 tables and the rebuild that replaces
them all with a new export, Dagster-free.

A SPIRE export is a full copy of the source system, one CSV per table, so a new export replaces
the whole schema: ``rebuild_spire`` drops the 25 tables, creates them again and loads every
table's file with ``COPY`` in foreign-key order, inside a savepoint of the caller's transaction.
A file that breaks a constraint (a CHECK, a NOT NULL, a foreign key, a value of the wrong type)
fails the rebuild with ``SpireRebuildError`` naming the table and, when Postgres gives it, the
data row; the savepoint is rolled back, so the previous tables stay as they were and the caller's
transaction is still usable (to record the failure, say).

The layout is the legacy's final one (its SQLAlchemy models after the April 2020 migrations:
plural table names, timestamps for dates, ``control_entries.value`` numeric, the CHECK
constraints of migration 8574fd28d877, named ``<table>_check[_<n>]`` as there, so a violation
names the constraint an operator of the legacy knows). One choice of ours: primary keys are plain
integers, not ``serial``, as every id comes from the export and a sequence left behind the loaded
ids would only hand out colliding values.

Where the legacy's CHECK constraints and its model tests disagree (which incident types need a
licence id, whether a goods incident may be ``WITHHELD``, whether a non-``C`` batch needs dates),
the migration wins: the legacy's own sample exports load under it and break the other reading.
"""

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO

import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ecr_pipelines.datastore.sources import SourceFileError, sources_of_group
from ecr_pipelines.datastore.sources.spec import Row, SourceSpec
from ecr_pipelines.lib.copy import copy_rows

SCHEMA = "spire"
SOURCE_GROUP = "dit.spire"

# The value of one table in ``rebuild_spire(files=...)``: a binary stream, a (file name, stream)
# pair when the name should appear in messages, or None for a table the export has no file for.
SpireFile = BinaryIO | tuple[str, BinaryIO] | None


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    table: str
    references: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """One SPIRE table: ``columns`` are (name, SQL type, NOT NULL) in the export's order."""

    name: str
    columns: tuple[tuple[str, str, bool], ...]
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...] = ()
    checks: tuple[str, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.columns)

    @property
    def qualified(self) -> str:
        return f'"{SCHEMA}"."{self.name}"'

    @property
    def referenced(self) -> set[str]:
        return {fk.table for fk in self.foreign_keys if fk.table != self.name}

    def ddl(self) -> str:
        parts = [
            f'"{name}" {sql_type}' + (" NOT NULL" if not_null else "")
            for name, sql_type, not_null in self.columns
        ]
        parts.append(f'CONSTRAINT "{self.name}_pkey" PRIMARY KEY ({_names(self.primary_key)})')
        for fk in self.foreign_keys:
            target = f'"{SCHEMA}"."{fk.table}"'
            name = f"{self.name}_{'_'.join(fk.columns)}_fkey"
            parts.append(
                f'CONSTRAINT "{name}" FOREIGN KEY ({_names(fk.columns)}) '
                f"REFERENCES {target} ({_names(fk.references)})"
            )
        for number, condition in enumerate(self.checks, 1):
            suffix = "_check" if len(self.checks) == 1 else f"_check_{number}"
            parts.append(f'CONSTRAINT "{self.name}{suffix}" CHECK ({condition})')
        body = ",\n    ".join(parts)
        return f"CREATE TABLE {self.qualified} (\n    {body}\n)"


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(f'"{name}"' for name in names)


# Shorthands for the column lists: (name, type, NOT NULL).
def _int(name: str, not_null: bool = False) -> tuple[str, str, bool]:
    return (name, "integer", not_null)


def _text(name: str, not_null: bool = False) -> tuple[str, str, bool]:
    return (name, "text", not_null)


def _ts(name: str, not_null: bool = False) -> tuple[str, str, bool]:
    return (name, "timestamp", not_null)


def _fk(column: str, table: str, reference: str = "id") -> ForeignKey:
    return ForeignKey((column,), table, (reference,))


_BATCH = _fk("batch_id", "batches")
_APPLICATION = _fk("ela_grp_id", "applications", "ela_grp_id")
_GOODS_INCIDENT = _fk("gi_id", "goods_incidents")

CASE_TYPES = "'SIEL', 'OIEL', 'SITCL', 'OITCL', 'OGEL', 'GPL', 'TA_SIEL', 'TA_OIEL'"
# Which sub-types each case type allows (none for the others).
CASE_SUB_TYPES = (
    "(case_type = 'SIEL' AND case_sub_type IN ('PERMANENT', 'TEMPORARY', 'TRANSHIPMENT'))"
    " OR (case_type = 'OIEL' AND case_sub_type IN ('DEALER', 'MEDIA', 'MIL_DUAL', 'UKCONTSHELF', 'CRYPTO'))"
    " OR (case_type IN ('SITCL', 'OITCL', 'OGEL', 'GPL', 'TA_SIEL', 'TA_OIEL') AND case_sub_type IS NULL)"
)
# A media footnote row is either current (C, open ended) or closed (no status, an end).
CURRENT_OR_ENDED = (
    "(status_control = 'C' AND end_datetime IS NULL) OR (status_control IS NULL AND end_datetime IS NOT NULL)"
)

TABLES: tuple[Table, ...] = (
    Table(
        "batches",
        (
            _int("id", True),
            _text("batch_ref", True),
            _text("status", True),
            _ts("start_date"),
            _ts("end_date"),
            _ts("approve_date", True),
            _ts("release_date"),
            _ts("staging_date"),
        ),
        ("id",),
        checks=(
            "status IN ('RELEASED', 'STAGING')",
            # Correction batches (C...) have no period; the others a whole-day period.
            "(batch_ref LIKE 'C%' AND start_date IS NULL AND end_date IS NULL)"
            " OR (batch_ref NOT LIKE 'C%' AND start_date IS NOT NULL"
            " AND date_trunc('day', start_date) = start_date AND end_date IS NOT NULL"
            " AND date_trunc('day', end_date) = end_date AND start_date <= end_date)",
        ),
    ),
    Table("country_groups", (_int("id", True),), ("id",)),
    Table(
        "end_users",
        (
            _int("eu_id", True),
            _int("version_number", True),
            _int("ela_grp_id"),
            _text("end_user_type"),
            _int("country_id"),
            _int("end_user_count"),
            _ts("start_date"),
            _text("status_control"),
            _int("batch_id"),
        ),
        ("eu_id", "version_number"),
    ),
    Table(
        "footnotes",
        (_int("id", True), _text("text"), _text("status", True)),
        ("id",),
        checks=("status IN ('CURRENT', 'DELETED', 'ARCHIVED')",),
    ),
    Table("media_footnotes", (_int("id", True),), ("id",)),
    Table(
        "media_footnote_countries",
        (
            _int("id", True),
            _int("ela_grp_id", True),
            _int("mf_grp_id", True),
            _int("country_id", True),
            _text("country_name", True),
            _text("status_control"),
            _ts("start_datetime", True),
            _ts("end_datetime"),
        ),
        ("id",),
        checks=(CURRENT_OR_ENDED,),
    ),
    Table(
        "ogl_types",
        (
            _int("id", True),
            _text("title", True),
            _ts("start_datetime", True),
            _ts("end_datetime"),
            _int("display_order"),
            _text("f680_flag"),
        ),
        ("id",),
    ),
    Table("ref_ars_subjects", (_text("ars_value", True), _text("ars_subject", True)), ("ars_value",)),
    Table("ref_country_mappings", (_int("country_id", True), _text("country_name", True)), ("country_id",)),
    Table(
        "ref_do_not_report_values",
        (_text("dnr_type", True), _text("dnr_value", True)),
        ("dnr_type", "dnr_value"),
    ),
    Table("ref_report_ratings", (_text("rating", True), _text("report_rating", True)), ("rating",)),
    Table(
        "applications",
        (
            _int("ela_grp_id", True),
            _text("case_type", True),
            _text("case_sub_type"),
            _int("initial_processing_time", True),
            _ts("case_closed_date", True),
            _text("withheld_status"),
            _int("batch_id", True),
            _int("ela_id"),
        ),
        ("ela_grp_id",),
        (_BATCH,),
        (
            f"case_type IN ({CASE_TYPES})",
            CASE_SUB_TYPES,
            "withheld_status IS NULL OR withheld_status IN ('PENDING', 'WITHHELD')",
        ),
    ),
    Table(
        "country_group_entries",
        (_int("cg_id", True), _int("country_id", True)),
        ("cg_id", "country_id"),
        (_fk("cg_id", "country_groups"),),
    ),
    Table(
        "media_footnote_details",
        (
            _int("id", True),
            _int("mf_id", True),
            _text("status_control"),
            _ts("start_datetime", True),
            _ts("end_datetime"),
            _text("footnote_type", True),
            _text("display_text", True),
            _text("single_footnote_text", True),
            _text("joint_footnote_text"),
        ),
        ("id",),
        (_fk("mf_id", "media_footnotes"),),
        (CURRENT_OR_ENDED, "footnote_type IN ('STANDARD', 'END_USER')"),
    ),
    Table(
        "returns",
        (
            _int("elr_id", True),
            _int("elr_version", True),
            _text("status", True),
            _ts("created_datetime", True),
            _text("status_control", True),
            _int("batch_id", True),
            _text("licence_type", True),
            _int("el_id", True),
            _int("ogl_id"),
            _ts("return_period_date"),
            _int("end_country_id"),
            _int("usage_count"),
            _text("end_user_type"),
            _text("eco_comment"),
        ),
        ("elr_id", "elr_version"),
        (_BATCH,),
        (
            "elr_version > 0",
            "status IN ('WITHDRAWN', 'ACTIVE')",
            "status_control IN ('A', 'P', 'C')",
            "licence_type IN ('OGEL', 'OIEL', 'OITCL')",
            "(licence_type = 'OGEL' AND ogl_id IS NOT NULL) OR (licence_type != 'OGEL' AND ogl_id IS NULL)",
        ),
    ),
    Table(
        "application_amendments",
        (
            _int("ela_grp_id", True),
            _int("ela_id", True),
            _text("case_type", True),
            _text("case_sub_type"),
            _int("case_processing_time", True),
            _ts("amendment_closed_date", True),
            _text("withheld_status"),
            _int("batch_id", True),
        ),
        ("ela_grp_id", "ela_id"),
        (_APPLICATION,),
    ),
    Table(
        "application_countries",
        (
            _int("ela_grp_id", True),
            _int("country_id", True),
            _ts("report_date", True),
            _ts("start_date", True),
            _int("batch_id", True),
        ),
        ("ela_grp_id", "country_id"),
        (_BATCH, _APPLICATION),
    ),
    Table(
        "footnote_entries",
        (
            _int("fne_id", True),
            _int("fn_id"),
            _int("ela_grp_id", True),
            _int("goods_item_id"),
            _int("country_id"),
            _int("fnr_id"),
            _ts("start_date", True),
            _int("version_no", True),
            _int("batch_id", True),
            _text("status_control", True),
            _int("mfd_id"),
            _int("mf_grp_id"),
            _text("mf_free_text"),
        ),
        ("fne_id", "version_no"),
        (_BATCH, _APPLICATION, _fk("fn_id", "footnotes"), _fk("mfd_id", "media_footnote_details")),
        (
            # An entry is about the application, one goods item, one country, or one country's
            # refusal reason.
            "(goods_item_id IS NULL AND country_id IS NULL AND fnr_id IS NULL)"
            " OR (goods_item_id IS NOT NULL AND country_id IS NULL AND fnr_id IS NULL)"
            " OR (goods_item_id IS NULL AND country_id IS NOT NULL AND fnr_id IS NULL)"
            " OR (goods_item_id IS NULL AND country_id IS NOT NULL AND fnr_id IS NOT NULL)",
            "version_no >= 0",
            # The text is a standard footnote, a media footnote, or free media text.
            "(fn_id IS NOT NULL AND mfd_id IS NULL AND mf_free_text IS NULL AND mf_grp_id IS NULL)"
            " OR (fn_id IS NULL AND mfd_id IS NOT NULL AND mf_free_text IS NULL AND mf_grp_id IS NOT NULL)"
            " OR (fn_id IS NULL AND mfd_id IS NULL AND mf_free_text IS NOT NULL AND mf_grp_id IS NOT NULL)",
        ),
    ),
    Table(
        "goods_incidents",
        (
            _int("id", True),
            _int("inc_id", True),
            _text("type", True),
            _int("goods_item_id", True),
            _int("dest_country_id", True),
            _int("source_country_grp_id"),
            _ts("report_date", True),
            _int("ela_grp_id", True),
            _ts("start_date", True),
            _int("version_no", True),
            _int("batch_id", True),
            _text("status_control", True),
        ),
        ("id",),
        (_BATCH, _APPLICATION, _fk("source_country_grp_id", "country_groups")),
        ("type IN ('REFUSAL', 'ISSUE', 'REVOKE', 'SURRENDER')", "version_no >= 0"),
    ),
    Table(
        "incidents",
        (
            _int("inc_id", True),
            _int("batch_id", True),
            _text("status", True),
            _text("type", True),
            _text("case_type", True),
            _text("case_sub_type"),
            _int("ela_grp_id", True),
            _int("ela_id"),
            _int("licence_id"),
            _ts("report_date", True),
            _int("temporary_licence_flag", True),
            _int("licence_conversion_flag", True),
            _int("incorporation_flag", True),
            _int("mil_flag", True),
            _int("other_flag", True),
            _int("torture_flag", True),
            _ts("start_date", True),
            _int("version_no", True),
            _int("ogl_id"),
            _text("status_control", True),
            _int("else_id"),
            _text("stakeholders_confirmed"),
        ),
        ("inc_id", "version_no"),
        (_BATCH, _APPLICATION),
        (
            "status IN ('READY', 'FOR_ATTENTION')",
            "version_no >= 0",
            "(case_type != 'OGEL' AND ogl_id IS NULL) OR (case_type = 'OGEL' AND ogl_id IS NOT NULL)",
            "temporary_licence_flag IN (0, 1)",
            # A refusal has no licence; every other incident is about one.
            "(type != 'REFUSAL' AND licence_id IS NOT NULL) OR (type = 'REFUSAL' AND licence_id IS NULL)",
            "(type = 'SUSPENSION' AND else_id IS NOT NULL) OR (type != 'SUSPENSION' AND else_id IS NULL)",
            "type IN ('REFUSAL', 'ISSUE', 'REDUCTION', 'REVOKE', 'DEREGISTRATION', 'SUSPENSION', 'SURRENDER')",
            f"case_type IN ({CASE_TYPES})",
            CASE_SUB_TYPES,
            "licence_conversion_flag IN (0, 1)",
            "incorporation_flag IN (0, 1)",
            "mil_flag IN (0, 1)",
            "other_flag IN (0, 1)",
            "torture_flag IN (0, 1)",
        ),
    ),
    Table(
        "third_parties",
        (
            _int("tp_id", True),
            _int("ela_grp_id", True),
            _int("sh_id"),
            _int("country_id", True),
            _int("ultimate_end_user_flag"),
            _ts("start_date", True),
            _int("version_no", True),
            _int("batch_id", True),
            _text("status_control", True),
        ),
        ("tp_id", "version_no"),
        (_BATCH, _APPLICATION),
        ("ultimate_end_user_flag IS NULL OR ultimate_end_user_flag IN (0, 1)", "version_no >= 0"),
    ),
    Table(
        "ultimate_end_users",
        (
            _int("ueu_id", True),
            _int("ela_grp_id", True),
            _int("country_id", True),
            _text("status_control", True),
            _ts("start_date", True),
            _int("version_no", True),
            _int("batch_id", True),
            _int("sh_id"),
            _int("ultimate_end_user_flag"),
        ),
        ("ueu_id", "version_no"),
        (_BATCH, _APPLICATION),
        ("version_no >= 0", "status_control IN ('A', 'P', 'C', 'D')"),
    ),
    Table(
        "ars",
        (_int("gi_id", True), _text("ars_value", True), _int("ars_quantity")),
        ("gi_id", "ars_value"),
        (_GOODS_INCIDENT,),
    ),
    Table(
        "control_entries",
        (_int("gi_id", True), _text("rating", True), ("value", "numeric", False)),
        ("gi_id", "rating"),
        (_GOODS_INCIDENT, _fk("rating", "ref_report_ratings", "rating")),
    ),
    Table(
        "reasons_for_refusal",
        (_int("gi_id", True), _text("reason_for_refusal", True)),
        ("gi_id", "reason_for_refusal"),
        (_GOODS_INCIDENT,),
    ),
)
TABLES_BY_NAME: dict[str, Table] = {table.name: table for table in TABLES}


def load_order(tables: tuple[Table, ...] = TABLES) -> list[Table]:
    """The tables with every referenced table before the tables referring to it (the sources'
    order where it already allows that), so rows can be loaded with the constraints in force."""
    preferred = [spec.table for spec in sources_of_group(SOURCE_GROUP)]
    rank = {name: preferred.index(name) if name in preferred else len(preferred) for name in TABLES_BY_NAME}
    by_name = {table.name: table for table in tables}
    done: list[Table] = []
    placed: set[str] = set()
    pending = sorted(tables, key=lambda table: rank[table.name])
    while pending:
        ready = next((t for t in pending if t.referenced <= placed), None)
        if ready is None:
            raise ValueError(f"the SPIRE foreign keys form a cycle among {[t.name for t in pending]}")
        done.append(ready)
        placed.add(ready.name)
        pending.remove(ready)
    missing = {fk.table for t in tables for fk in t.foreign_keys} - set(by_name)
    if missing:
        raise ValueError(f"SPIRE foreign keys refer to unknown tables {sorted(missing)}")
    return done


LOAD_ORDER: tuple[str, ...] = tuple(table.name for table in load_order())


def spire_ddl() -> list[str]:
    """The statements that create the schema's tables, in load order."""
    return [TABLES_BY_NAME[name].ddl() for name in LOAD_ORDER]


class SpireRebuildError(Exception):
    """The export cannot replace the schema; nothing was changed.

    ``table`` is the SPIRE table whose file failed, ``row`` the 1-based data row (the header not
    counted) when Postgres or the reader names one, ``kind`` what went wrong (``constraint``,
    ``bad_value``, a reader's kind such as ``bad_header``, ``unknown_table`` or ``database``)."""

    def __init__(
        self,
        message: str,
        *,
        table: str | None = None,
        file_name: str | None = None,
        row: int | None = None,
        kind: str = "constraint",
    ) -> None:
        self.table = table
        self.file_name = file_name
        self.row = row
        self.kind = kind
        where = []
        if table:
            where.append(f"table spire.{table}")
        if file_name:
            where.append(f"file {file_name}")
        if row is not None:
            where.append(f"data row {row}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


@dataclass
class SpireRebuildReport:
    """What the rebuild loaded: rows per table (every table, in load order) and the tables the
    export had no file for (created empty)."""

    rows: dict[str, int] = field(default_factory=dict)
    without_file: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _table_name(key: str) -> str:
    # The loader may key the files by source id (dit.spire.<table>) or by table.
    prefix = SOURCE_GROUP + "."
    return key[len(prefix) :] if key.startswith(prefix) else key


def _specs() -> dict[str, SourceSpec]:
    return {spec.table: spec for spec in sources_of_group(SOURCE_GROUP) if spec.table}


def _unpack(table: str, value: SpireFile) -> tuple[str, BinaryIO] | None:
    if value is None:
        return None
    if isinstance(value, tuple):
        name, stream = value
        return name, stream
    return getattr(value, "name", None) or f"{table}.csv", value


_COPY_LINE = re.compile(r"\bline (\d+)\b")


def _postgres_error(error: BaseException) -> psycopg2.Error | None:
    if isinstance(error, psycopg2.Error):
        return error
    original = getattr(error, "orig", None)
    return original if isinstance(original, psycopg2.Error) else None


def _describe(error: psycopg2.Error) -> tuple[str, int | None, str]:
    """The message, the COPY data row and the kind of a Postgres error raised by a table's load."""
    diag = error.diag
    message = diag.message_primary or str(error).strip().splitlines()[0]
    if diag.message_detail:
        message += f" ({diag.message_detail})"
    match = _COPY_LINE.search(diag.context or "")
    # COPY counts the lines of its own input, which has no header: line N is data row N.
    row = int(match.group(1)) if match else None
    # Class 23 is integrity (NOT NULL, FK, unique, check); 22 is data (a value of the wrong type).
    code = error.pgcode or ""
    kind = "constraint" if code.startswith("23") else "bad_value" if code.startswith("22") else "database"
    return message, row, kind


class _ReaderWatch:
    """The reader's rows, keeping the reader's own error: psycopg2 turns an exception raised
    while COPY pulls its input into a generic "COPY from stdin failed" and drops the original."""

    def __init__(self, rows: Iterable[Row]) -> None:
        self._rows = rows
        self.error: SourceFileError | None = None

    def __iter__(self) -> Iterator[Row]:
        try:
            yield from self._rows
        except SourceFileError as error:
            self.error = error
            raise


def _load_table(conn: Connection, table: Table, spec: SourceSpec, file_name: str, stream: BinaryIO) -> int:
    if spec.column_names != table.column_names:
        raise AssertionError(f"spire.{table.name}: the reader's columns differ from the table's")
    try:
        rows = _ReaderWatch(spec.read(stream, file_name))
        try:
            return copy_rows(conn, table.qualified, table.column_names, rows)
        except Exception:
            if rows.error is not None:
                raise rows.error from None
            raise
    except SourceFileError as error:
        problem = error.problem
        # The reader counts file lines, header included; rows are counted without it.
        row = problem.line - 1 if problem.line is not None and problem.line > 1 else None
        raise SpireRebuildError(
            problem.message, table=table.name, file_name=file_name, row=row, kind=problem.kind
        ) from error
    except Exception as error:
        pg_error = _postgres_error(error)
        if pg_error is None:
            raise
        message, row, kind = _describe(pg_error)
        raise SpireRebuildError(message, table=table.name, file_name=file_name, row=row, kind=kind) from error


def _recreate_tables(conn: Connection) -> None:
    try:
        conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"'))
        # One statement for all 25, so their foreign keys between each other need no CASCADE; a
        # view someone built on them makes the drop fail loudly instead of vanishing with CASCADE.
        names = ", ".join(TABLES_BY_NAME[name].qualified for name in reversed(LOAD_ORDER))
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {names}"))
        for statement in spire_ddl():
            conn.execute(sa.text(statement))
    except sa.exc.DBAPIError as error:
        pg_error = _postgres_error(error)
        message = _describe(pg_error)[0] if pg_error is not None else str(error)
        raise SpireRebuildError(f"cannot recreate the tables: {message}", kind="database") from error


def rebuild_spire(conn: Connection, files: Mapping[str, SpireFile]) -> SpireRebuildReport:
    """Replace the ``spire`` schema's tables with the export in ``files``, in the caller's
    transaction (inside a savepoint, rolled back on failure).

    ``files`` maps a table (``batches`` or ``dit.spire.batches``) to its CSV: a binary stream, a
    ``(file name, stream)`` pair, or None; a table without a file is created empty. Raises
    ``SpireRebuildError`` if a key is not a SPIRE table or a file cannot be loaded.
    """
    wanted: dict[str, tuple[str, BinaryIO] | None] = {}
    for key, value in files.items():
        table = _table_name(key)
        if table not in TABLES_BY_NAME:
            raise SpireRebuildError(f"{key!r} is not a SPIRE table", kind="unknown_table")
        wanted[table] = _unpack(table, value)
    specs = _specs()
    report = SpireRebuildReport()
    with conn.begin_nested():
        _recreate_tables(conn)
        for name in LOAD_ORDER:
            source = wanted.get(name)
            if source is None:
                report.rows[name] = 0
                report.without_file.append(name)
                continue
            file_name, stream = source
            report.rows[name] = _load_table(conn, TABLES_BY_NAME[name], specs[name], file_name, stream)
    return report
