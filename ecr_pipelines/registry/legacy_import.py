"""Import the database of a running legacy European cache registry into our ``registry`` schema
(no Dagster): ``python -m ecr_pipelines registry import-legacy LEGACY_URL``.

Our tables keep the legacy names and columns, so the import is a copy, table by table in foreign-key
order, keeping the legacy ids (links, histories and logs then need no id translation, and operators
find the same ids on both sides). What makes it safe to run against a legacy deployment that is
still running, and to run again:

* the legacy side is read in one ``REPEATABLE READ READ ONLY`` transaction (one consistent
  snapshot), through server-side cursors, a page at a time;
* our side is written in one transaction with ``execute_values`` upserts keyed by the legacy ids
  (or the primary key of link tables) whose ``DO UPDATE`` only fires when a value differs: a second
  run over the same legacy data writes no row at all, and the summary says so;
* before anything is written, the source must look like the legacy (every table and column we copy,
  no NULL where we need a value, no natural key twice) and the target must not hold other rows
  under the legacy's ids or natural keys; otherwise ``LegacyImportRefused`` names what is wrong and
  the transaction is rolled back (the command exits with 2);
* sequences are moved past the imported ids last, so our own inserts never collide with them.

The generic copy machinery (``LegacyDatabase``, ``TableCopy``, ``Copier``) is in
``ecr_pipelines.lib.legacy_copy``, shared with the IATI refresher's importer.
"""

from sqlalchemy.engine import Engine

from ecr_pipelines.lib.legacy_copy import (
    EPOCH_DATE,
    EPOCH_TZ,
    ImportReport,
    LegacyDatabase,
    Progress,
    TableCopy,
    not_imported,
    refuse,
    run_import,
)
from ecr_pipelines.lib.migrations import assert_schema_current
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.store.reference import seed_reference_tables

# ------------------------------------------------------------------------------------------------
# The registry's tables (research notes, ecr.md section 2), in foreign-key order.

_UNDERTAKING_COLUMNS = (
    "id", "external_id", "registration_id", "name", "address_id", "website", "phone", "domain",
    "date_created", "date_updated", "date_created_in_ecr", "date_updated_in_ecr", "status",
    "country_code", "country_code_orig", "undertaking_type", "vat", "eori_number", "represent_id",
    "oldcompany_verified", "oldcompany_account", "oldcompany_extid", "oldcompany_id", "check_passed",
)  # fmt: skip

# Owned rows have no natural key: a row id stands for its owner (an address for the undertaking or
# representative using it, a representative for its undertaking, a substance for its delivery).
_ADDRESS_IDENTITY = """
    SELECT a.id, CASE WHEN u.owner IS NOT NULL THEN jsonb_build_array('undertaking', u.owner)
                      WHEN r.owner IS NOT NULL THEN jsonb_build_array('represent', r.owner) END AS identity
    FROM {schema}.address a
    LEFT JOIN (SELECT address_id, min(id) AS owner FROM {schema}.undertaking GROUP BY address_id) u
        ON u.address_id = a.id
    LEFT JOIN (SELECT address_id, min(id) AS owner FROM {schema}.represent GROUP BY address_id) r
        ON r.address_id = a.id
"""
_REPRESENT_IDENTITY = """
    SELECT r.id, to_jsonb(coalesce(u.owner, h.owner)) AS identity
    FROM {schema}.represent r
    LEFT JOIN (SELECT represent_id, min(id) AS owner FROM {schema}.undertaking GROUP BY represent_id) u
        ON u.represent_id = r.id
    LEFT JOIN (SELECT represent_id, min(undertaking_id) AS owner
               FROM {schema}.undertaking_represent_history GROUP BY represent_id) h
        ON h.represent_id = r.id
"""
_SUBSTANCE_IDENTITY = "SELECT t.id, to_jsonb(t.delivery_id) AS identity FROM {schema}.substance t"
# Log rows are append-only: the moment they were written says which one a row is.
_MATCHING_LOG_IDENTITY = (
    'SELECT t.id, to_jsonb(extract(epoch FROM t."timestamp")) AS identity FROM {schema}.matching_log t'
)
_ORGANIZATION_LOG_IDENTITY = (
    "SELECT t.id, to_jsonb(extract(epoch FROM t.execution_time)) AS identity FROM {schema}.organization_log t"
)
# Reference rows: the bundled fixtures and the legacy's must mean the same under one id, since link
# rows refer to them by id (and the reference asset rewrites them by id from the fixtures).
_TYPE_IDENTITY = "SELECT t.id, jsonb_build_array(t.type, t.domain) AS identity FROM {schema}.type t"
_PROFILE_IDENTITY = (
    "SELECT t.id, jsonb_build_array(t.highleveluses, t.domain) AS identity FROM {schema}.businessprofile t"
)

REGISTRY_TABLES: tuple[TableCopy, ...] = (
    TableCopy("country", ("id", "code", "name", "type"), natural_key=("code",)),
    TableCopy(
        "address", ("id", "street", "number", "zipcode", "city", "country_id"), identity=_ADDRESS_IDENTITY
    ),
    TableCopy(
        "represent",
        ("id", "name", "address_id", "vatnumber", "contact_first_name", "contact_last_name", "contact_email"),
        identity=_REPRESENT_IDENTITY,
    ),
    # Ours are the bundled fixtures: only rows the legacy has in addition are inserted.
    TableCopy("type", ("id", "type", "domain"), update=False, identity=_TYPE_IDENTITY),
    TableCopy(
        "businessprofile",
        ("id", "highleveluses", "code", "short_code", "domain"),
        update=False,
        identity=_PROFILE_IDENTITY,
    ),
    TableCopy(
        "old_company",
        (
            "id",
            "external_id",
            "name",
            "country_code",
            "account",
            "vat_number",
            "eori",
            "active",
            "website",
            "date_registered",
            "valid",
            "obligation",
        ),
        fallbacks={"valid": "true"},
        natural_key=("external_id", "obligation"),
    ),  # fmt: skip
    TableCopy(
        "undertaking",
        _UNDERTAKING_COLUMNS,
        fallbacks={
            "registration_id": "''",
            "date_created_in_ecr": EPOCH_DATE,
            "country_code": "''",
            "eori_number": "''",
            "oldcompany_verified": "false",  # the legacy's "unverified" was NULL or false
        },
        natural_key=("external_id", "domain"),
    ),
    # The legacy renames a user it finds by e-mail: the same id may carry a new username.
    TableCopy(
        "user",
        ("id", "ecas_id", "username", "first_name", "last_name", "email", "type"),
        natural_key=("username",),
        check_identity=False,
    ),
    TableCopy("undertaking_types", ("undertaking_id", "type_id"), conflict=("undertaking_id", "type_id")),
    TableCopy(
        "undertaking_businessprofile",
        ("undertaking_id", "businessprofile_id"),
        conflict=("undertaking_id", "businessprofile_id"),
    ),
    TableCopy("undertaking_users", ("undertaking_id", "user_id"), conflict=("undertaking_id", "user_id")),
    TableCopy(
        "undertaking_represent_history",
        ("undertaking_id", "represent_id"),
        conflict=("undertaking_id", "represent_id"),
    ),
    TableCopy(
        "undertaking_country_history",
        ("undertaking_id", "country_id"),
        conflict=("undertaking_id", "country_id"),
    ),
    TableCopy(
        "old_company_link",
        ("oldcompany_id", "undertaking_id", "verified", "date_added", "date_verified"),
        conflict=("oldcompany_id", "undertaking_id"),
        fallbacks={"verified": "false", "date_added": EPOCH_TZ},
    ),
    TableCopy(
        "matching_log",
        (
            "id",
            "timestamp",
            "user",
            "domain",
            "company_id",
            "oldcompany_id",
            "oldcompany_account",
            "verified",
        ),
        fallbacks={"timestamp": EPOCH_TZ},
        identity=_MATCHING_LOG_IDENTITY,
    ),
    TableCopy(
        "organization_log",
        ("id", "domain", "execution_time", "using_last_update", "organizations"),
        fallbacks={"execution_time": EPOCH_TZ},
        identity=_ORGANIZATION_LOG_IDENTITY,
    ),
    TableCopy(
        "mail_address",
        ("id", "mail", "timestamp", "first_name", "last_name"),
        fallbacks={"timestamp": EPOCH_TZ},
        natural_key=("mail",),
    ),
    TableCopy(
        "delivery_licence",
        ("id", "year", "undertaking_id", "updated_since", "date_created", "date_updated"),
        fallbacks={"date_created": EPOCH_DATE},
        natural_key=("undertaking_id", "year"),
    ),
    TableCopy(
        "substance",
        (
            "id",
            "year",
            "substance",
            "lic_use_kind",
            "lic_use_desc",
            "lic_type",
            "s_orig_country_name",
            "organization_country_name",
            "quantity",
            "delivery_id",
            "date_created",
            "date_updated",
        ),
        fallbacks={"quantity": "0", "date_created": EPOCH_DATE},
        identity=_SUBSTANCE_IDENTITY,
    ),  # fmt: skip
    TableCopy(
        "licence",
        (
            "id",
            "year",
            "licence_id",
            "chemical_name",
            "organization_country_name",
            "organization_country_name_orig",
            "custom_procedure_name",
            "international_party_country_name",
            "international_party_country_name_orig",
            "total_odp_mass",
            "net_mass",
            "licence_state",
            "long_licence_number",
            "template_detailed_use_code",
            "licence_type",
            "mixture_nature_type",
            "updated_since",
            "substance_id",
            "date_created",
            "date_updated",
        ),
        fallbacks={"date_created": EPOCH_DATE},
        natural_key=("licence_id", "year", "chemical_name"),
    ),  # fmt: skip
    # Conversion tables: ours come from the bundled fixtures, which the reference asset rewrites by
    # id; rows the legacy added under other ids are kept.
    TableCopy("substance_name_conversion", ("id", "ec_substance_name", "corrected_name"), update=False),
    TableCopy(
        "country_codes_conversion", ("id", "country_name_short_en", "country_code_alpha2"), update=False
    ),
    TableCopy(
        "licence_details_conversion",
        ("id", "template_detailed_use_code", "lic_use_kind", "lic_use_desc", "lic_type"),
        update=False,
    ),
)

# Legacy tables we have no counterpart for (features not carried over), and the legacy's bookkeeping.
REGISTRY_NOT_IMPORTED = {
    "alembic_version": "the legacy's migration bookkeeping; ours is public.ecr_schema_migrations",
    "process_agent_use": "process agent uses (CSV imports) are not built here",
    "stock": "stocks are not built here",
    "auditor": "F-gas auditors are not built here",
    "auditor_users": "F-gas auditors are not built here",
    "auditor_undertaking": "F-gas auditors are not built here",
    "auditor_ms_accreditation_issuing_countries": "F-gas auditors are not built here",
    "multi_year_licence": "multi-year licences are not built here",
    "multi_year_licence_aggregated": "multi-year licences are not built here",
    "detailed_use": "multi-year licences are not built here",
    "substance_nomenclature": "multi-year licences are not built here",
    "combined_nomenclature": "multi-year licences and Certex are not built here",
    "cn_quantity": "multi-year licences and Certex are not built here",
}

REFUSAL_ADVICE = (
    "Import into a freshly migrated database (`python -m ecr_pipelines db upgrade`), or one that only "
    "this command has written, before the registry assets run against it."
)


def _stale_verified_links(sql: Sql, report: ImportReport) -> None:
    count = sql.scalar(
        """
        SELECT count(*) FROM registry.old_company_link l
        JOIN registry.undertaking u ON u.id = l.undertaking_id
        WHERE l.verified AND (NOT u.oldcompany_verified OR u.oldcompany_id IS DISTINCT FROM l.oldcompany_id)
        """
    )
    if count:
        report.notes.append(
            f"{count} link(s) are verified although their undertaking is not verified with that old company "
            "(the legacy `unverify` did not reset links); kept as the legacy had them"
        )


def _seed_reference(sql: Sql) -> None:
    # A fresh database has no reference rows yet; seeding them first lets the identity check compare
    # the legacy's types and business profiles with the bundled ones. Seeded once only, so that a
    # re-run rewrites nothing.
    if not sql.scalar("SELECT EXISTS (SELECT 1 FROM registry.type)"):
        seed_reference_tables(sql)


def import_legacy_registry(
    legacy_url: str,
    engine: Engine,
    *,
    schema: str = "public",
    check_only: bool = False,
    progress: Progress = lambda line: None,
) -> ImportReport:
    """Copy the legacy registry at ``legacy_url`` into the ``registry`` schema of ``engine``'s
    database. Raises ``LegacyImportRefused`` (nothing changed) or ``SchemaVersionError``."""
    assert_schema_current(engine)
    with LegacyDatabase(legacy_url, schema) as legacy:
        gaps = legacy.missing({spec.table: spec.columns for spec in REGISTRY_TABLES})
        if gaps:
            raise refuse(
                legacy.label,
                [f"it does not look like the legacy registry database: missing {', '.join(gaps)}"],
                "Point the command at the legacy registry's database (and --schema at its schema).",
            )
        report = run_import(
            legacy,
            engine,
            "registry",
            REGISTRY_TABLES,
            check_only=check_only,
            progress=progress,
            before_checks=_seed_reference,
            after_copy=_stale_verified_links,
            advice=REFUSAL_ADVICE,
        )
        report.not_imported = not_imported(legacy, [s.table for s in REGISTRY_TABLES], REGISTRY_NOT_IMPORTED)
    return report
