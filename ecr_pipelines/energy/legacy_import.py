"""Import the database of a running legacy datahub-service into our ``energy`` schema (no Dagster):
``python -m ecr_pipelines energy import-legacy LEGACY_URL``.

Our tables start with the legacy's columns under the legacy's names (``sql/0009_energy.up.sql``),
so the import is a copy, table by table in foreign-key order, keeping the legacy ids: GGOs,
disclosure settlements and webhook deliveries then point at the same rows as in the legacy. The
machinery is the registry importer's (``ecr_pipelines.lib.legacy_copy``): one read-only snapshot
of the legacy read through server-side cursors, one transaction of ours written with upserts
that only fire when a value differs (a second run writes nothing), every check before anything
is written (``LegacyImportRefused``, exit code 2), sequences moved past the imported ids last.

What is particular to the energy hub:

* ``meteringpoint.disabled`` was ``active`` until late in the legacy's life: a legacy that still
  has ``active`` is read as ``disabled = NOT active`` (a legacy NULL counts as active);
* hours of a GSRN that is a metering point neither in the legacy nor here are refused: our
  measurement table has no foreign key (it is the import's speed), and the asset check
  ``energy_measurements_have_points`` would flag every such hour for good;
* an enum value of the legacy that our enum type lacks is refused (it would fail mid-copy);
* ``technology`` is not copied (ours is the migration's seed, which the labels are read from):
  legacy rows it lacks, or labels differently, are listed in the summary;
* no ``energy.customer`` row is made: the legacy's onboarding imports are over, and the
  measurement import measures every active point as it is.

Measurements are the bulk (millions of rows). The machinery moves them a page at a time (2,000
rows read from a server-side cursor, written by one multi-row ``INSERT .. ON CONFLICT``), not row
by row, but every value passes through Python on the way: about 16,000 hours a second on a
developer machine, so some ten minutes per ten million hours.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Engine

from ecr_pipelines.lib.legacy_copy import (
    EXAMPLES,
    ImportReport,
    LegacyDatabase,
    Progress,
    TableCopy,
    not_imported,
    quote,
    refuse,
    run_import,
)
from ecr_pipelines.lib.migrations import assert_schema_current
from ecr_pipelines.lib.sql import Sql

SCHEMA = "energy"

_METERINGPOINT_COLUMNS = (
    "id", "created", "disabled", "sub", "gsrn", "type", "sector", "technology_code", "fuel_code",
    "street_code", "street_name", "building_number", "city_name", "postcode", "municipality_code",
    "ledger_extended_key",
)  # fmt: skip

_DISCLOSURE_COLUMNS = (
    "id", "public_id", "created", "state", "sub", "begin", "end", "name", "description", "max_resolution",
    "publicize_meteringpoints", "publicize_gsrn", "publicize_physical_address",
)  # fmt: skip
_DISCLOSURE_GGO_COLUMNS = (
    "id", "settlement_id", "address", "amount", "begin", "end", "sector", "technology_code", "fuel_code",
)  # fmt: skip

# A measurement is an hour of a point: the same id must stand for the same (gsrn, begin) here and
# in the legacy. The hour as epoch seconds, not as a timestamp in JSON, whose text would follow
# each side's session time zone.
_MEASUREMENT_IDENTITY = (
    "SELECT t.id, jsonb_build_array(t.gsrn, extract(epoch FROM t.begin)) AS identity "
    "FROM {schema}.measurement t"
)
# Subscriptions have no unique key; what a row subscribes is what it is.
_SUBSCRIPTION_IDENTITY = (
    "SELECT t.id, jsonb_build_array(t.event::text, t.subject, t.url) AS identity "
    "FROM {schema}.webhook_subscription t"
)

ENERGY_TABLES: tuple[TableCopy, ...] = (
    TableCopy("meteringpoint", _METERINGPOINT_COLUMNS, natural_key=("gsrn",)),
    TableCopy(
        "measurement",
        ("id", "created", "submitted", "gsrn", "begin", "end", "amount", "published"),
        natural_key=("gsrn", "begin"),
        identity=_MEASUREMENT_IDENTITY,
    ),
    TableCopy(
        "ggo",
        ("id", "created", "issue_time", "expire_time", "measurement_id", "emissions"),
        natural_key=("measurement_id",),
    ),
    TableCopy(
        "disclosure",
        _DISCLOSURE_COLUMNS,
        # Ours defaults to PENDING too: the nightly compile then makes it available again.
        fallbacks={"state": "'PENDING'"},
        natural_key=("public_id",),
    ),
    TableCopy(
        "disclosure_meteringpoint", ("id", "disclosure_id", "gsrn"), natural_key=("disclosure_id", "gsrn")
    ),
    TableCopy(
        "disclosure_settlement",
        ("id", "disclosure_id", "measurement_id", "address"),
        natural_key=("disclosure_id", "measurement_id"),
    ),
    TableCopy(
        "disclosure_ggo",
        _DISCLOSURE_GGO_COLUMNS,
        natural_key=("settlement_id", "address"),
    ),
    TableCopy(
        "webhook_subscription",
        ("id", "event", "subject", "url", "secret"),
        identity=_SUBSCRIPTION_IDENTITY,
    ),
)

# Legacy enum columns and our enum type of the same values.
_ENUM_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("meteringpoint", "type", "measurementtype"),
    ("disclosure", "state", "disclosurestate"),
    ("disclosure", "max_resolution", "summaryresolution"),
    ("webhook_subscription", "event", "webhookevent"),
)

ENERGY_NOT_IMPORTED = {
    "alembic_version": "the legacy's migration bookkeeping; ours is public.ecr_schema_migrations",
    "technology": "ours is the migration's seed; compared above",
}

REFUSAL_ADVICE = (
    "Import into a freshly migrated database (`python -m ecr_pipelines db upgrade`), or one that only "
    "this command has written, before the energy jobs run against it."
)


def _as_read(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The extra ``disabled`` is already what we store; ``prepare`` only puts it in its column.
    return rows


def _meteringpoint_from_active() -> TableCopy:
    """The metering points of a legacy from before ``active`` became ``disabled``."""
    return TableCopy(
        "meteringpoint",
        tuple(c for c in _METERINGPOINT_COLUMNS if c != "disabled"),
        natural_key=("gsrn",),
        extras={"disabled": "coalesce(NOT active, false)"},
        prepare=_as_read,
        fill=("disabled",),
    )


def energy_tables(legacy_columns: Mapping[str, Mapping[str, Any]]) -> tuple[TableCopy, ...]:
    """The specs for this legacy: ``ENERGY_TABLES``, with metering points read from ``active``
    when the legacy predates the rename."""
    points = legacy_columns.get("meteringpoint", {})
    if "disabled" in points or "active" not in points:
        return ENERGY_TABLES
    return tuple(_meteringpoint_from_active() if s.table == "meteringpoint" else s for s in ENERGY_TABLES)


def _required(specs: Sequence[TableCopy]) -> dict[str, Sequence[str]]:
    required: dict[str, Sequence[str]] = {s.table: s.columns for s in specs}
    for spec in specs:
        if spec.table == "meteringpoint" and "disabled" not in spec.columns:
            required["meteringpoint"] = (*spec.columns, "active")
    return required


def _stray_measurements(legacy: LegacyDatabase, sql: Sql) -> list[str]:
    """Legacy hours of GSRNs that would be no metering point here after the copy."""
    strays = legacy.all(
        f"SELECT m.gsrn, count(*) FROM {legacy.table('measurement')} m "
        f"WHERE NOT EXISTS (SELECT 1 FROM {legacy.table('meteringpoint')} p WHERE p.gsrn = m.gsrn) "
        "GROUP BY m.gsrn ORDER BY m.gsrn"
    )
    if not strays:
        return []
    ours = {
        row[0]
        for row in sql.all(
            f"SELECT gsrn FROM {SCHEMA}.meteringpoint WHERE gsrn = ANY(:gsrns)",
            {"gsrns": [gsrn for gsrn, _ in strays]},
        )
    }
    strays = [(gsrn, n) for gsrn, n in strays if gsrn not in ours]
    if not strays:
        return []
    examples = "; ".join(f"{gsrn!r} ({n} hours)" for gsrn, n in strays[:EXAMPLES])
    return [
        f"legacy measurement holds {sum(n for _, n in strays)} hour(s) of {len(strays)} GSRN(s) that are "
        f"no metering point, which {SCHEMA}.measurement does not take: {examples}"
    ]


def _unknown_enum_values(legacy: LegacyDatabase, sql: Sql) -> list[str]:
    problems = []
    for table, column, type_ in _ENUM_COLUMNS:
        used = [
            row[0]
            for row in legacy.all(
                f"SELECT DISTINCT {quote(column)}::text FROM {legacy.table(table)} "
                f"WHERE {quote(column)} IS NOT NULL ORDER BY 1"
            )
        ]
        known = set(sql.scalar(f"SELECT enum_range(NULL::{SCHEMA}.{type_})::text[]"))
        unknown = [value for value in used if value not in known]
        if unknown:
            problems.append(
                f"legacy {table}.{column} holds {', '.join(map(repr, unknown))}, "
                f"which {SCHEMA}.{type_} does not have"
            )
    return problems


def _technology_differences(legacy: LegacyDatabase, sql: Sql) -> str | None:
    """Legacy technology rows that ours lacks or labels otherwise (a note, never a refusal)."""
    if legacy.missing({"technology": ("technology", "technology_code", "fuel_code")}):
        return None
    theirs = legacy.all(
        f"SELECT technology, technology_code, fuel_code FROM {legacy.table('technology')} ORDER BY 2, 3, 1"
    )
    ours = {
        (row.technology_code, row.fuel_code): row.technology
        for row in sql.all(f"SELECT technology, technology_code, fuel_code FROM {SCHEMA}.technology")
    }
    differing = [row for row in theirs if ours.get((row[1], row[2])) != row[0]]
    if not differing:
        return None
    shown = 50
    listed = "; ".join(
        f"{label} {tech}/{fuel}" + (f" (ours: {ours[(tech, fuel)]})" if (tech, fuel) in ours else "")
        for label, tech, fuel in differing[:shown]
    )
    more = f"; and {len(differing) - shown} more" if len(differing) > shown else ""
    return (
        f"legacy technology: {len(differing)} of {len(theirs)} row(s) are not in {SCHEMA}.technology "
        f"as they are (not copied: labels come from ours; add what is missing with a migration): {listed}{more}"
    )


def import_legacy_energy(
    legacy_url: str,
    engine: Engine,
    *,
    schema: str = "public",
    check_only: bool = False,
    progress: Progress = lambda line: None,
) -> ImportReport:
    """Copy the legacy datahub-service at ``legacy_url`` into the ``energy`` schema of ``engine``'s
    database. Raises ``LegacyImportRefused`` (nothing changed) or ``SchemaVersionError``."""
    assert_schema_current(engine)
    with LegacyDatabase(legacy_url, schema) as legacy:
        specs = energy_tables(legacy.columns)
        gaps = legacy.missing(_required(specs))
        if gaps:
            raise refuse(
                legacy.label,
                [f"it does not look like the legacy datahub-service database: missing {', '.join(gaps)}"],
                "Point the command at the legacy datahub-service's database (and --schema at its schema).",
            )
        notes: list[str] = []

        def before_checks(sql: Sql) -> None:
            problems = _stray_measurements(legacy, sql) + _unknown_enum_values(legacy, sql)
            if problems:
                raise refuse(legacy.label, problems, REFUSAL_ADVICE)
            if note := _technology_differences(legacy, sql):
                notes.append(note)

        report = run_import(
            legacy,
            engine,
            SCHEMA,
            specs,
            check_only=check_only,
            progress=progress,
            before_checks=before_checks,
            advice=REFUSAL_ADVICE,
        )
        if specs is not ENERGY_TABLES:
            notes.append(
                "legacy meteringpoint has `active` (before its rename): read as disabled = NOT active"
            )
        report.notes += notes
        report.not_imported = not_imported(legacy, [s.table for s in specs], ENERGY_NOT_IMPORTED)
    return report
