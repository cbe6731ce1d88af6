"""Copying a running legacy service's database into ours, table by table (no Dagster).

The machinery both legacy importers share (``ecr_pipelines.registry.legacy_import`` and
``ecr_pipelines.iati.refresher_import``): the legacy side is read in one ``REPEATABLE READ READ
ONLY`` transaction through server-side cursors; our side is written in one transaction with
``execute_values`` upserts keyed by the legacy ids whose ``DO UPDATE`` fires only when a value
differs, so a second run writes nothing; the source is checked first (tables, columns, NULLs,
duplicate natural keys) and ``LegacyImportRefused`` names what is wrong before anything is
written; sequences are moved past the imported ids last.
"""

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from ecr_pipelines.lib.database import DatabaseConfigError, normalise_url, redact
from ecr_pipelines.lib.sql import Sql

Progress = Callable[[str], None]

# Deterministic stand-ins for NULLs in columns we declare NOT NULL with a default of "now": the
# default would differ between runs, and a re-run must find the row unchanged.
EPOCH_DATE = "DATE '1970-01-01'"
EPOCH_TZ = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
EXAMPLES = 5


class LegacyImportRefused(Exception):
    """The source is not a legacy database we can copy, or copying it would overwrite rows that are
    not the legacy's. Nothing was changed."""


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class ColumnInfo:
    type: str  # format_type(), e.g. "timestamp without time zone", "character varying(255)"
    not_null: bool
    enum: bool


_COLUMNS_SQL = """
    SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, t.typtype = 'e'
    FROM pg_catalog.pg_attribute a
    JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
    WHERE n.nspname = {param} AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
"""


def _column_map(rows: Sequence[Sequence[Any]]) -> dict[str, dict[str, ColumnInfo]]:
    tables: dict[str, dict[str, ColumnInfo]] = {}
    for table, column, type_, not_null, enum in rows:
        tables.setdefault(table, {})[column] = ColumnInfo(type_, bool(not_null), bool(enum))
    return tables


class LegacyDatabase:
    """A read-only snapshot of the legacy database: one REPEATABLE READ READ ONLY transaction, so
    every table is read as of the same moment while the legacy service keeps writing."""

    def __init__(self, url: str, schema: str = "public") -> None:
        try:
            url = normalise_url(url)
        except DatabaseConfigError:
            # The message must not echo the URL: it may carry a password.
            raise LegacyImportRefused(
                "LEGACY_URL must be a Postgres URL (postgresql://user:password@host:port/database)"
            ) from None
        self.label = f"{redact(url)} (schema {schema})"
        self.schema = schema
        self._engine = sa.create_engine(url, poolclass=NullPool)
        self._raw: Any = None
        self._cursors = itertools.count(1)
        self.columns: dict[str, dict[str, ColumnInfo]] = {}

    def __enter__(self) -> "LegacyDatabase":
        try:
            self._raw = self._engine.raw_connection()
        except (sa.exc.OperationalError, psycopg2.OperationalError) as exc:
            self._engine.dispose()
            reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
            raise LegacyImportRefused(f"cannot connect to {self.label}: {reason}") from None
        pg = self._raw.driver_connection
        pg.rollback()  # set_session needs a connection outside a transaction
        pg.set_session(isolation_level="REPEATABLE READ", readonly=True)
        # Naive legacy timestamps are UTC (the refresher wrote UTC; the registry ran in UTC
        # containers); the session zone makes every naive/aware conversion on this side UTC too.
        self.all("SET TIME ZONE 'UTC'")
        self.columns = _column_map(self.all(_COLUMNS_SQL.format(param="%s"), (self.schema,)))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._raw is not None:
                self._raw.driver_connection.rollback()
                self._raw.close()
        finally:
            self._engine.dispose()

    def table(self, name: str) -> str:
        return f"{quote(self.schema)}.{quote(name)}"

    def all(self, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        with self._raw.driver_connection.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def one(self, query: str, params: Sequence[Any] | None = None) -> tuple[Any, ...]:
        return self.all(query, params)[0]

    def pages(self, query: str, size: int) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of ``query`` in pages, from a server-side cursor (memory stays one page)."""
        with self._raw.driver_connection.cursor(name=f"ecr_import_{next(self._cursors)}") as cur:
            cur.itersize = size
            cur.execute(query)
            while rows := cur.fetchmany(size):
                yield rows

    def missing(self, required: Mapping[str, Sequence[str]]) -> list[str]:
        """What the legacy schema lacks: ``table`` or ``table.column`` entries."""
        gaps = []
        for table, columns in required.items():
            present = self.columns.get(table)
            if present is None:
                gaps.append(f"table {table}")
            else:
                gaps.extend(f"column {table}.{c}" for c in columns if c not in present)
        return gaps


@dataclass(frozen=True)
class TableCopy:
    """One legacy table copied into ours of the same name and columns.

    ``conflict``: our unique key the upsert lands on (the legacy id, or the primary key of a link
    table). ``update=False`` inserts what is missing and leaves existing rows alone.
    ``fallbacks``: SQL used where the legacy has NULL and we require a value. ``natural_key``: our
    unique key besides the id (checked against the target: the same key under another id refuses
    the import). ``identity``: a query over ``{schema}`` giving ``(id, identity jsonb)``, what
    entity a row id stands for (default: the natural key; ``check_identity=False`` for none); a
    target row whose identity differs from the legacy row of the same id is not the legacy's, and
    refuses the import. ``extras`` are legacy expressions read for
    ``prepare`` (which may change a page of rows, as dicts, before it is written) and ``fill``
    columns it adds: written when known, kept when not (unless ``fill_reset_on`` changed), and not
    part of the "did anything change" test.
    """

    table: str
    columns: tuple[str, ...]
    conflict: tuple[str, ...] = ("id",)
    update: bool = True
    fallbacks: Mapping[str, str] = field(default_factory=dict)
    natural_key: tuple[str, ...] = ()
    identity: str | None = None
    check_identity: bool = True
    page_size: int = 2000
    extras: Mapping[str, str] = field(default_factory=dict)
    prepare: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None
    fill: tuple[str, ...] = ()
    fill_reset_on: str | None = None

    def identity_sql(self, schema: str) -> str | None:
        if not self.check_identity:
            return None
        if self.identity:
            return self.identity.format(schema=schema)
        if self.natural_key:
            keys = ", ".join(f"t.{quote(c)}" for c in self.natural_key)
            return f"SELECT t.id, jsonb_build_array({keys}) AS identity FROM {schema}.{quote(self.table)} t"
        return None


@dataclass
class TableCount:
    table: str
    legacy: int = 0
    inserted: int = 0
    updated: int = 0

    @property
    def unchanged(self) -> int:
        return self.legacy - self.inserted - self.updated


def upsert_sql(target: str, spec: TableCopy) -> str:
    """``INSERT ... VALUES %s ON CONFLICT`` returning ``true`` per inserted and ``false`` per
    updated row; rows whose values are all equal are not touched (and not returned)."""
    columns = spec.columns + spec.fill
    head = (
        f"INSERT INTO {target} AS t ({', '.join(quote(c) for c in columns)}) VALUES %s "
        f"ON CONFLICT ({', '.join(quote(c) for c in spec.conflict)}) "
    )
    plain = [c for c in spec.columns if c not in spec.conflict]
    if not spec.update or not plain:
        return head + "DO NOTHING RETURNING true"
    sets = [f"{quote(c)} = EXCLUDED.{quote(c)}" for c in plain]
    changed = [
        f"({', '.join(f't.{quote(c)}' for c in plain)}) IS DISTINCT FROM "
        f"({', '.join(f'EXCLUDED.{quote(c)}' for c in plain)})"
    ]
    for c in spec.fill:
        kept = f"t.{quote(c)}"
        if spec.fill_reset_on:
            reset = quote(spec.fill_reset_on)
            kept = f"CASE WHEN t.{reset} IS DISTINCT FROM EXCLUDED.{reset} THEN NULL ELSE t.{quote(c)} END"
        sets.append(f"{quote(c)} = coalesce(EXCLUDED.{quote(c)}, {kept})")
        changed.append(
            f"(EXCLUDED.{quote(c)} IS NOT NULL AND t.{quote(c)} IS DISTINCT FROM EXCLUDED.{quote(c)})"
        )
    return head + f"DO UPDATE SET {', '.join(sets)} WHERE {' OR '.join(changed)} RETURNING (t.xmax = 0)"


def _key(values: Sequence[Any]) -> str:
    text = ", ".join(repr(v) for v in values)
    return f"({text})" if len(values) > 1 else text


class Copier:
    """Checks and copies ``TableCopy`` specs from a ``LegacyDatabase`` into one schema of ours, in
    the caller's transaction (``sql``)."""

    def __init__(self, legacy: LegacyDatabase, sql: Sql, schema: str, progress: Progress) -> None:
        self.legacy = legacy
        self.sql = sql
        self.schema = schema
        self.progress = progress
        self.ours = _column_map(sql.all(_COLUMNS_SQL.format(param=":schema"), {"schema": schema}))

    def target(self, table: str) -> str:
        return f"{self.schema}.{quote(table)}"

    def name(self, table: str) -> str:
        """The table as messages and the summary show it."""
        return f"{self.schema}.{table}"

    def _expression(self, spec: TableCopy, column: str) -> str:
        """How to read a legacy column so that it lands as our column expects."""
        legacy, ours = self.legacy.columns[spec.table][column], self.ours[spec.table][column]
        expression = quote(column)
        if legacy.enum or legacy.type in ("json", "jsonb"):
            expression += "::text"  # enums into varchar; JSON as text, so psycopg2 passes it through
        elif (
            legacy.type.startswith("timestamp")
            and ours.type.startswith("timestamp")
            and legacy.type.endswith("with time zone") != ours.type.endswith("with time zone")
        ):
            expression = f"({expression} AT TIME ZONE 'UTC')"  # naive = UTC, either way round
        if column in spec.fallbacks:
            expression = f"coalesce({expression}, {spec.fallbacks[column]})"
        return expression

    def select_sql(self, spec: TableCopy) -> str:
        expressions = [self._expression(spec, c) for c in spec.columns] + list(spec.extras.values())
        distinct = "" if "id" in spec.columns else "DISTINCT "  # link tables without a key may repeat pairs
        order = ", ".join(str(spec.columns.index(c) + 1) for c in spec.conflict)
        return (
            f"SELECT {distinct}{', '.join(expressions)} FROM {self.legacy.table(spec.table)} ORDER BY {order}"
        )

    def legacy_count(self, spec: TableCopy) -> int:
        return int(self.legacy.one(f"SELECT count(*) FROM {self.legacy.table(spec.table)}")[0])

    # -- checks: nothing is written before every table passed -------------------------------------

    def check(self, spec: TableCopy) -> list[str]:
        problems = self._check_nulls(spec) + self._check_duplicates(spec)
        if self.sql.scalar(f"SELECT EXISTS (SELECT 1 FROM {self.target(spec.table)})"):
            problems += self._check_natural_keys(spec) + self._check_identities(spec)
        return problems

    def _check_nulls(self, spec: TableCopy) -> list[str]:
        required = [c for c in spec.columns if self.ours[spec.table][c].not_null and c not in spec.fallbacks]
        if not required:
            return []
        counts = self.legacy.one(
            "SELECT "
            + ", ".join(f"count(*) FILTER (WHERE {quote(c)} IS NULL)" for c in required)
            + f" FROM {self.legacy.table(spec.table)}"
        )
        return [
            f"legacy {spec.table}: {n} row(s) without {c}, which {self.name(spec.table)} requires"
            for c, n in zip(required, counts, strict=True)
            if n
        ]

    def _check_duplicates(self, spec: TableCopy) -> list[str]:
        if not spec.natural_key:
            return []
        keys = ", ".join(quote(c) for c in spec.natural_key)
        rows = self.legacy.all(
            f"SELECT {keys}, array_agg(id ORDER BY id), count(*) OVER () FROM {self.legacy.table(spec.table)} "
            f"GROUP BY {keys} HAVING count(*) > 1 ORDER BY 1 LIMIT {EXAMPLES}"
        )
        if not rows:
            return []
        examples = "; ".join(
            f"{_key(r[: len(spec.natural_key)])} as ids {', '.join(map(str, r[-2]))}" for r in rows
        )
        return [
            f"legacy {spec.table} holds {rows[0][-1]} {'/'.join(spec.natural_key)} value(s) more than once, "
            f"which {self.name(spec.table)} keeps unique: {examples}"
        ]

    def _check_natural_keys(self, spec: TableCopy) -> list[str]:
        """Target rows holding a legacy row's natural key under another id."""
        if not spec.natural_key:
            return []
        keys = spec.natural_key
        casts = ", ".join(f"%s::{self.ours[spec.table][c].type}" for c in ("id", *keys))
        query = (
            f"SELECT v.id, t.id, {', '.join(f'v.{quote(c)}' for c in keys)} "
            f"FROM (VALUES %s) AS v (id, {', '.join(quote(c) for c in keys)}) "
            f"JOIN {self.target(spec.table)} t ON ({', '.join(f't.{quote(c)}' for c in keys)}) "
            f"= ({', '.join(f'v.{quote(c)}' for c in keys)}) WHERE t.id <> v.id"
        )
        clashes: list[tuple[Any, ...]] = []
        select = (
            f"SELECT id, {', '.join(quote(c) for c in keys)} FROM {self.legacy.table(spec.table)} ORDER BY id"
        )
        for page in self.legacy.pages(select, 5000):
            clashes += self.sql.values(query, page, fetch=True, template=f"({casts})")
        if not clashes:
            return []
        examples = "; ".join(f"{_key(c[2:])} is id {c[1]} here, id {c[0]} in the legacy" for c in clashes)
        return [
            f"{self.name(spec.table)} holds {len(clashes)} legacy {'/'.join(keys)} under other ids: {examples}"
        ]

    def _check_identities(self, spec: TableCopy) -> list[str]:
        """Target rows under a legacy id that stand for something else than the legacy row."""
        ours_sql, legacy_sql = spec.identity_sql(self.schema), spec.identity_sql(quote(self.legacy.schema))
        if ours_sql is None or legacy_sql is None:
            return []
        query = (
            f"SELECT v.id, o.identity::text, v.identity::text FROM (VALUES %s) AS v (id, identity) "
            f"JOIN ({ours_sql}) o ON o.id = v.id "
            "WHERE v.identity IS NOT NULL AND o.identity IS NOT NULL AND o.identity <> v.identity"
        )
        template = f"(%s::{self.ours[spec.table]['id'].type}, %s::jsonb)"
        clashes: list[tuple[Any, ...]] = []
        for page in self.legacy.pages(
            f"SELECT i.id, i.identity::text FROM ({legacy_sql}) i ORDER BY 1", 5000
        ):
            clashes += self.sql.values(query, page, fetch=True, template=template)
        if not clashes:
            return []
        examples = "; ".join(f"id {c[0]} is {c[1]} here but {c[2]} in the legacy" for c in clashes[:EXAMPLES])
        return [
            f"{self.name(spec.table)} holds {len(clashes)} row(s) under legacy ids that are not the legacy's: {examples}"
        ]

    # -- the copy ----------------------------------------------------------------------------------

    def copy(self, spec: TableCopy) -> TableCount:
        count = TableCount(self.name(spec.table))
        upsert = upsert_sql(self.target(spec.table), spec)
        names = list(spec.columns) + list(spec.extras)
        written = spec.columns + spec.fill
        for page in self.legacy.pages(self.select_sql(spec), spec.page_size):
            rows: Sequence[Sequence[Any]] = page
            if spec.prepare is not None:
                prepared = spec.prepare([dict(zip(names, row, strict=True)) for row in page])
                rows = [tuple(r.get(c) for c in written) for r in prepared]
            returned = self.sql.values(upsert, rows, fetch=True, page_size=len(rows))
            count.legacy += len(rows)
            count.inserted += sum(1 for (inserted,) in returned if inserted)
            count.updated += sum(1 for (inserted,) in returned if not inserted)
        self.progress(
            f"{count.table}: {count.legacy} legacy rows, {count.inserted} inserted, {count.updated} updated"
        )
        return count

    def bump_sequence(self, table: str) -> tuple[str, int] | None:
        """Move the id sequence of ``table`` past its largest id (never backwards); returns
        ``(sequence, new value)`` when it moved. Run last: ``setval`` ignores rollbacks."""
        sequence = self.sql.scalar("SELECT pg_get_serial_sequence(:t, 'id')", {"t": self.target(table)})
        if sequence is None:
            return None
        highest = self.sql.scalar(f"SELECT max(id) FROM {self.target(table)}")
        last, called = self.sql.all(f"SELECT last_value, is_called FROM {sequence}")[0]
        next_value = last + 1 if called else last
        if highest is None or highest < next_value:
            return None
        self.sql.scalar("SELECT setval(:s, :v)", {"s": sequence, "v": highest})
        return sequence, int(highest)


@dataclass
class ImportReport:
    """What an import did, for the command's summary."""

    source: str
    target: str
    tables: list[TableCount] = field(default_factory=list)
    sequences: list[tuple[str, int]] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    other_changes: int = 0  # writes outside the tables (files copied)
    notes: list[str] = field(default_factory=list)
    not_imported: list[str] = field(default_factory=list)
    checked_only: bool = False

    @property
    def changed(self) -> bool:
        return any(t.inserted or t.updated for t in self.tables) or bool(self.sequences or self.other_changes)

    def lines(self) -> list[str]:
        verb = "checked (nothing written)" if self.checked_only else "imported"
        out = [f"{verb}: {self.source}", f"into: {self.target}"]
        width = max([len(t.table) for t in self.tables] + [5])
        if self.checked_only:
            out.append(f"{'table':<{width}}  {'legacy':>8}")
            out += [f"{t.table:<{width}}  {t.legacy:>8}" for t in self.tables]
        else:
            out.append(
                f"{'table':<{width}}  {'legacy':>8}  {'inserted':>8}  {'updated':>8}  {'unchanged':>9}"
            )
            out += [
                f"{t.table:<{width}}  {t.legacy:>8}  {t.inserted:>8}  {t.updated:>8}  {t.unchanged:>9}"
                for t in self.tables
            ]
            if self.sequences:
                moved = ", ".join(f"{name} -> {value}" for name, value in self.sequences)
                out.append(f"sequences moved past the imported ids: {moved}")
            if not self.changed:
                out.append("nothing changed: the target already held this legacy data")
        out += self.details
        out += [f"note: {n}" for n in self.notes]
        out += [f"not imported: {n}" for n in self.not_imported]
        return out


def not_imported(legacy: LegacyDatabase, copied: Sequence[str], reasons: Mapping[str, str]) -> list[str]:
    """Legacy tables left out, with the reason where we know it."""
    left = sorted(set(legacy.columns) - set(copied))
    return [f"{t} ({reasons.get(t, 'not a table of the legacy service we know')})" for t in left]


def refuse(source: str, problems: Sequence[str], advice: str) -> LegacyImportRefused:
    return LegacyImportRefused(
        "\n".join(
            [f"refusing to import {source}; nothing was changed:", *(f"  - {p}" for p in problems), advice]
        )
    )


def run_import(
    legacy: LegacyDatabase,
    engine: Engine,
    schema: str,
    specs: Sequence[TableCopy],
    *,
    check_only: bool,
    progress: Progress,
    before_checks: Callable[[Sql], None] | None = None,
    after_copy: Callable[[Sql, ImportReport], None] | None = None,
    advice: str,
) -> ImportReport:
    """Check every spec, then (unless ``check_only``) copy them in order and move the sequences,
    all in one transaction of ours."""
    report = ImportReport(
        source=legacy.label,
        target=redact(engine.url.render_as_string(hide_password=False)),
        checked_only=check_only,
    )
    with engine.connect() as conn, conn.begin() as transaction:
        sql = Sql(conn)
        if before_checks is not None:
            before_checks(sql)
        copier = Copier(legacy, sql, schema, progress)
        problems = [p for spec in specs for p in copier.check(spec)]
        if problems:
            raise refuse(legacy.label, problems, advice)
        if check_only:
            report.tables = [TableCount(copier.name(s.table), legacy=copier.legacy_count(s)) for s in specs]
            transaction.rollback()
            return report
        report.tables = [copier.copy(spec) for spec in specs]
        if after_copy is not None:
            after_copy(sql, report)
        for spec in specs:
            if "id" in spec.columns and (moved := copier.bump_sequence(spec.table)):
                report.sequences.append(moved)
    return report
