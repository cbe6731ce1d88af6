"""UN Comtrade country codes and ISO codes (``comtrade.country_code_and_iso``), placed by hand.

The legacy loaded the file with ``COPY .. ENCODING 'WIN1252'``, so it is decoded as Windows-1252
here; the one exception is a file that starts with a UTF-8 byte order mark (as the legacy's own
sample does): it was written as UTF-8, and decoding it as Windows-1252 would garble every accent.
A byte Windows-1252 lacks (0x81, 0x8d, 0x8f, 0x90, 0x9d) fails the file with ``bad_encoding``.
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
    text_columns,
)

ENCODING = "cp1252"
COLUMNS = (Column("cty_code", "int"),) + text_columns(
    "cty_name_english",
    "cty_fullname_english",
    "cty_abbreviation",
    "cty_comments",
    "iso2_digit_alpha",
    "iso3_digit_alpha",
    "start_valid_year",
    "end_valid_year",
)


def read_country_codes(stream: BinaryIO, file_name: str) -> FileRows:
    # The header ("ctyCode", "cty Name English", "ISO2-digit Alpha", ...) is the column names
    # once case and punctuation are ignored.
    rows = csv_source_rows(
        stream, file_name, header=[c.name for c in COLUMNS], encoding=ENCODING, utf8_if_bom=True
    )
    return FileRows(rows=rows)


SPECS = (
    SourceSpec(
        id="comtrade.country_code_and_iso",
        group="world_bank.tariff",
        loading="snapshot",
        schema="comtrade.country_code_and_iso",
        columns=COLUMNS,
        reader=read_country_codes,
        blob_prefix=blob_prefix("comtrade", "country_code_and_iso"),
        l1=L1Transform(columns=tuple(L1Column(c.name, c.type) for c in COLUMNS)),
        description="UN Comtrade country codes with their ISO 2 and 3 letter codes",
    ),
)
