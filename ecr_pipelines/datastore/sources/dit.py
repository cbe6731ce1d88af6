"""The Department for International Trade's sources, all placed in the blob store by hand:
reference postcodes, BACI trade flows, EU membership by year, and the SPIRE export-licence
tables (one CSV per table, loaded into the fixed ``spire`` schema).
"""

from collections.abc import Iterator
from functools import partial
from typing import BinaryIO

from ecr_pipelines.datastore.sources._files import (
    Where,
    csv_records,
    csv_source_rows,
    source_text,
)
from ecr_pipelines.datastore.sources.spec import (
    Column,
    FileRows,
    L1Column,
    L1Transform,
    Row,
    SourceSpec,
    blob_prefix,
    text_columns,
)

# --- reference postcodes ---------------------------------------------------------------------
# The file's header is human-readable ("Local Enterprise Partnership (LEP1) code"); compared
# without case and punctuation it is exactly these names.
REFERENCE_POSTCODE_COLUMNS = text_columns(
    "postcode",
    "local_authority_district_code",
    "local_authority_district_name",
    "local_enterprise_partnership_lep1_code",
    "local_enterprise_partnership_lep1_name",
    "local_enterprise_partnership_lep2_code",
    "local_enterprise_partnership_lep2_name",
    "region_code",
    "region_name",
    "national_grid_ref_easting",
    "national_grid_ref_northing",
) + (Column("date_of_introduction", "date"), Column("date_of_termination", "date"))


def read_reference_postcodes(stream: BinaryIO, file_name: str) -> FileRows:
    header = [column.name for column in REFERENCE_POSTCODE_COLUMNS]
    return FileRows(rows=csv_source_rows(stream, file_name, header=header))


# --- BACI ---------------------------------------------------------------------------------------
# The notes name no types; these are the legacy's (integer codes lose their leading zeros in L0,
# as they did there).
BACI_COLUMNS = (
    Column("t", "integer"),
    Column("hs6", "integer"),
    Column("i", "integer"),
    Column("j", "integer"),
    Column("v", "decimal"),
    Column("q", "decimal"),
)
BACI_L1 = L1Transform(
    columns=(
        L1Column("year", "integer", "l0.t"),
        L1Column("product_category", "integer", "l0.hs6"),
        L1Column("exporter", "integer", "l0.i"),
        L1Column("importer", "integer", "l0.j"),
        L1Column("trade_flow_value", "decimal", "l0.v"),
        L1Column("quantity", "decimal", "l0.q"),
    )
)


def read_baci(stream: BinaryIO, file_name: str) -> FileRows:
    return FileRows(rows=csv_source_rows(stream, file_name, header=[c.name for c in BACI_COLUMNS]))


# --- EU membership ----------------------------------------------------------------------------
EU_YEARS = range(1958, 2019)
EU_MEMBERSHIP_COLUMNS = text_columns("country", "iso3", *(str(year) for year in EU_YEARS))
# The unpivot of the legacy: one L1 row per country and year column (member or not), the cell
# (``EUN`` for a member) as tariff_code. Only the year columns have names of four digits.
EU_MEMBERSHIP_L1 = L1Transform(
    columns=(
        L1Column("country"),
        L1Column("iso3"),
        L1Column("year", "int", "cell.key::int"),
        L1Column("tariff_code", "text", "cell.value"),
    ),
    lateral="CROSS JOIN LATERAL json_each_text(row_to_json(l0)) AS cell(key, value)",
    where="cell.key ~ '^[0-9]{4}$'",
)


def read_eu_membership(stream: BinaryIO, file_name: str) -> FileRows:
    header = ["Country", "ISO3", *(str(year) for year in EU_YEARS)]
    return FileRows(rows=csv_source_rows(stream, file_name, header=header))


# --- SPIRE --------------------------------------------------------------------------------------
# Tables in the order the legacy loaded them (referenced tables first), with the columns of
# their exports. The notes give no types and the tables, with their constraints, exist before
# loading: the columns here are text, the database casts.
SPIRE_TABLES: dict[str, tuple[str, ...]] = {
    "batches": (
        "id",
        "batch_ref",
        "status",
        "start_date",
        "end_date",
        "approve_date",
        "release_date",
        "staging_date",
    ),
    "country_groups": ("id",),
    "end_users": (
        "eu_id",
        "version_number",
        "ela_grp_id",
        "end_user_type",
        "country_id",
        "end_user_count",
        "start_date",
        "status_control",
        "batch_id",
    ),
    "footnotes": ("id", "text", "status"),
    "media_footnotes": ("id",),
    "media_footnote_countries": (
        "id",
        "ela_grp_id",
        "mf_grp_id",
        "country_id",
        "country_name",
        "status_control",
        "start_datetime",
        "end_datetime",
    ),
    "ogl_types": ("id", "title", "start_datetime", "end_datetime", "display_order", "f680_flag"),
    "ref_ars_subjects": ("ars_value", "ars_subject"),
    "ref_country_mappings": ("country_id", "country_name"),
    "ref_do_not_report_values": ("dnr_type", "dnr_value"),
    "ref_report_ratings": ("rating", "report_rating"),
    "applications": (
        "ela_grp_id",
        "case_type",
        "case_sub_type",
        "initial_processing_time",
        "case_closed_date",
        "withheld_status",
        "batch_id",
        "ela_id",
    ),
    "country_group_entries": ("cg_id", "country_id"),
    "media_footnote_details": (
        "id",
        "mf_id",
        "status_control",
        "start_datetime",
        "end_datetime",
        "footnote_type",
        "display_text",
        "single_footnote_text",
        "joint_footnote_text",
    ),
    "returns": (
        "elr_id",
        "elr_version",
        "status",
        "created_datetime",
        "status_control",
        "batch_id",
        "licence_type",
        "el_id",
        "ogl_id",
        "return_period_date",
        "end_country_id",
        "usage_count",
        "end_user_type",
        "eco_comment",
    ),
    "application_amendments": (
        "ela_grp_id",
        "ela_id",
        "case_type",
        "case_sub_type",
        "case_processing_time",
        "amendment_closed_date",
        "withheld_status",
        "batch_id",
    ),
    "application_countries": ("ela_grp_id", "country_id", "report_date", "start_date", "batch_id"),
    "footnote_entries": (
        "fne_id",
        "fn_id",
        "ela_grp_id",
        "goods_item_id",
        "country_id",
        "fnr_id",
        "start_date",
        "version_no",
        "batch_id",
        "status_control",
        "mfd_id",
        "mf_grp_id",
        "mf_free_text",
    ),
    "goods_incidents": (
        "id",
        "inc_id",
        "type",
        "goods_item_id",
        "dest_country_id",
        "source_country_grp_id",
        "report_date",
        "ela_grp_id",
        "start_date",
        "version_no",
        "batch_id",
        "status_control",
    ),
    "incidents": (
        "inc_id",
        "batch_id",
        "status",
        "type",
        "case_type",
        "case_sub_type",
        "ela_grp_id",
        "ela_id",
        "licence_id",
        "report_date",
        "temporary_licence_flag",
        "licence_conversion_flag",
        "incorporation_flag",
        "mil_flag",
        "other_flag",
        "torture_flag",
        "start_date",
        "version_no",
        "ogl_id",
        "status_control",
        "else_id",
        "stakeholders_confirmed",
    ),
    "third_parties": (
        "tp_id",
        "ela_grp_id",
        "sh_id",
        "country_id",
        "ultimate_end_user_flag",
        "start_date",
        "version_no",
        "batch_id",
        "status_control",
    ),
    "ultimate_end_users": (
        "ueu_id",
        "ela_grp_id",
        "country_id",
        "status_control",
        "start_date",
        "version_no",
        "batch_id",
        "sh_id",
        "ultimate_end_user_flag",
    ),
    "ars": ("gi_id", "ars_value", "ars_quantity"),
    "control_entries": ("gi_id", "rating", "value"),
    "reasons_for_refusal": ("gi_id", "reason_for_refusal"),
}


# The legacy's null tokens for SPIRE exports.
NULL_TOKENS = frozenset({"null", "NULL", ""})


def read_spire_table(columns: tuple[str, ...], stream: BinaryIO, file_name: str) -> FileRows:
    """A SPIRE export: the header names the columns (any order, any subset of the table's), each
    row comes back in the table's column order, ``null``/``NULL``/empty as None."""
    return FileRows(rows=_spire_rows(columns, stream, file_name))


def _spire_rows(columns: tuple[str, ...], stream: BinaryIO, file_name: str) -> Iterator[Row]:
    with source_text(stream, file_name) as (where, lines):
        yield from _spire_records(columns, csv_records(lines, where), where)


def _spire_records(
    columns: tuple[str, ...], records: Iterator[tuple[int, list[str]]], where: Where
) -> Iterator[Row]:
    first = next(records, None)
    if first is None:
        raise where.error("bad_header", "the file is empty, a header row was expected")
    header_line, header = first
    unknown = [name for name in header if name not in columns]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if unknown or repeated:
        detail = f"unknown columns {unknown}" if unknown else f"repeated columns {repeated}"
        raise where.error("bad_header", f"{detail}; the table has {list(columns)}", header_line)
    positions = [header.index(name) if name in header else None for name in columns]
    for line, record in records:
        if len(record) != len(header):
            raise where.error("bad_row", f"{len(record)} fields, expected {len(header)}", line)
        yield tuple(
            None if index is None or record[index] in NULL_TOKENS else record[index] for index in positions
        )


def _spire_spec(table: str, columns: tuple[str, ...]) -> SourceSpec:
    return SourceSpec(
        id=f"dit.spire.{table}",
        group="dit.spire",
        loading="rebuild",
        schema="spire",
        table=table,
        columns=text_columns(*columns),
        reader=partial(read_spire_table, columns),
        blob_prefix=blob_prefix("dit", "spire", table),
        description=f"SPIRE export-licence table {table}",
    )


REFERENCE_POSTCODES = SourceSpec(
    id="dit.reference_postcodes",
    group="dit.reference_postcodes",
    loading="snapshot",
    schema="dit.reference_postcodes",
    columns=REFERENCE_POSTCODE_COLUMNS,
    reader=read_reference_postcodes,
    blob_prefix=blob_prefix("dit", "reference_postcodes"),
    l1=L1Transform(columns=tuple(L1Column(c.name, c.type) for c in REFERENCE_POSTCODE_COLUMNS)),
    description="DIT reference postcodes (ONS postcodes enriched with LEP and region)",
)
BACI = SourceSpec(
    id="dit.baci",
    group="dit.baci",
    loading="incremental",
    schema="dit.baci",
    columns=BACI_COLUMNS,
    reader=read_baci,
    blob_prefix=blob_prefix("dit", "baci"),
    l1=BACI_L1,
    description="CEPII BACI bilateral trade flows by HS6 product",
)
EU_MEMBERSHIP = SourceSpec(
    id="dit.eu_country_membership",
    group="world_bank.tariff",
    loading="snapshot",
    schema="dit.eu_country_membership",
    columns=EU_MEMBERSHIP_COLUMNS,
    reader=read_eu_membership,
    blob_prefix=blob_prefix("dit", "eu_country_membership"),
    l1=EU_MEMBERSHIP_L1,
    description="EU membership per country and year (EUN when a member)",
)
SPIRE = tuple(_spire_spec(table, columns) for table, columns in SPIRE_TABLES.items())
