"""World Bank (WITS) tariffs, placed by hand: bound rates and tariffs per reporter, product and
year, then the legacy's tariff transform, which has no file of its own and computes L1 of
``world_bank.tariff`` from every source of its group (hence registered after them).

The CSV headers are WITS's (``NomenCode,Reporter_ISO_N,..``); the L0 columns are named by the
notes, mapped by position as the legacy's ``COPY`` did. Tariff files have a space after some
commas (``"048", 1999, "0201"``): it is skipped, so quoted values lose their quotes as in
Postgres. Types the notes do not give (tariff) are the legacy's.
"""

from typing import BinaryIO

from ecr_pipelines.datastore.sources._files import csv_source_rows
from ecr_pipelines.datastore.sources.spec import (
    Column,
    FileRows,
    L1Column,
    L1Transform,
    SourceSpec,
    blob_prefix,
)

BOUND_RATES_HEADER = ("NomenCode", "Reporter_ISO_N", "ProductCode", "BoundRate", "Nbr_Total_Lines")
BOUND_RATES_COLUMNS = (
    Column("nomen_code", "text"),
    Column("reporter", "int"),
    Column("product", "int"),
    Column("bound_rate", "decimal"),
    Column("total_number_of_lines", "int"),
)
# Several nomenclatures (H0, H1, ..) may give a rate for the same reporter and product: the
# latest revision, the highest last digit of nomen_code, wins.
BOUND_RATES_L1 = L1Transform(
    columns=(L1Column("reporter", "int"), L1Column("product", "int"), L1Column("bound_rate", "decimal")),
    distinct_on=("l0.reporter", "l0.product"),
    order_by=("l0.reporter", "l0.product", "right(l0.nomen_code, 1)::int DESC"),
)

TARIFF_HEADER = (
    "Reporter_ISO_N",
    "Year",
    "ProductCode",
    "Partner_ISO_N",
    "DutyType",
    "SimpleAverage",
    "Nbr_Total_Lines",
)
TARIFF_COLUMNS = (
    Column("reporter", "integer"),
    Column("year", "integer"),
    Column("product", "integer"),
    Column("partner", "integer"),
    Column("duty_type", "text"),
    Column("simple_average", "decimal"),
    Column("number_of_total_lines", "integer"),
)

TRANSFORMED_L1 = L1Transform(
    columns=(
        L1Column("product", "integer"),
        L1Column("reporter", "integer"),
        L1Column("partner", "integer"),
        L1Column("year", "integer"),
        L1Column("assumed_tariff", "decimal"),
        L1Column("app_rate", "decimal"),
        L1Column("mfn_rate", "decimal"),
        L1Column("bnd_rate", "decimal"),
        L1Column("eu_rep_rate", "decimal"),
        L1Column("eu_part_rate", "decimal"),
        L1Column("eu_eu_rate", "decimal"),
        L1Column("world_average", "decimal"),
    ),
    computed=True,
)


def read_bound_rates(stream: BinaryIO, file_name: str) -> FileRows:
    return FileRows(rows=csv_source_rows(stream, file_name, header=BOUND_RATES_HEADER, skipinitialspace=True))


def read_tariff(stream: BinaryIO, file_name: str) -> FileRows:
    return FileRows(rows=csv_source_rows(stream, file_name, header=TARIFF_HEADER, skipinitialspace=True))


BOUND_RATES = SourceSpec(
    id="world_bank.bound_rates",
    group="world_bank.tariff",
    loading="snapshot",
    schema="world_bank.bound_rates",
    columns=BOUND_RATES_COLUMNS,
    reader=read_bound_rates,
    blob_prefix=blob_prefix("world_bank", "bound_rates"),
    l1=BOUND_RATES_L1,
    description="WTO bound tariff rates per reporter and product (WITS)",
)
TARIFF = SourceSpec(
    id="world_bank.tariff",
    group="world_bank.tariff",
    loading="incremental",
    schema="world_bank.tariff",
    columns=TARIFF_COLUMNS,
    reader=read_tariff,
    blob_prefix=blob_prefix("world_bank", "tariff"),
    description="Tariffs per reporter, partner, product and year (WITS); L1 is the transform's",
)
# No file: the loader's transform (B5 §8) rebuilds L1 of world_bank.tariff from the L0/L1 of the
# group's other sources, then swaps it in; the columns here are that table's layout.
TARIFF_TRANSFORMED = SourceSpec(
    id="world_bank.tariff.transformed",
    group="world_bank.tariff",
    loading="rebuild",
    schema="world_bank.tariff",
    columns=(),
    reader=None,
    blob_prefix=None,
    table=None,
    l1=TRANSFORMED_L1,
    description="Assumed tariff per product, reporter, partner and year (2000-2018), computed",
)
