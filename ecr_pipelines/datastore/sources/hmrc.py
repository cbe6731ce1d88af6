"""HMRC exporters (``hmrc.exporters``): the monthly ``exportersYYMM.zip`` as downloaded.

The archive holds one ZIP per month (or, in older files, the text itself), each holding a
tab-separated text file in Mac Roman. A line is ``month, row type, company name, five address
lines, postcode`` then one field per exported commodity code; a line of fewer than 10 fields is
not a record and is dropped (counted as ``short_line``). Double quotes are removed from the named
fields, and every value stays text, empty ones included: the legacy quoted each value, so its
``COPY`` made them empty strings, never NULL (which L1's ``concat_ws`` of the address relies on).
"""

import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from typing import BinaryIO

from ecr_pipelines.datastore.sources._files import Where, archive_errors, data_members, open_zip, raw_lines
from ecr_pipelines.datastore.sources.spec import (
    FileRows,
    L1Column,
    L1Transform,
    Row,
    SourceSpec,
    blob_prefix,
    text_columns,
)

ENCODING = "mac_roman"
MIN_FIELDS = 10
# Monthly inner archives are spooled to disk beyond this, not held in memory.
SPOOL_IN_MEMORY = 16 << 20

COLUMNS = text_columns(
    "month",
    "row_type",
    "company_name",
    "address1",
    "address2",
    "address3",
    "address4",
    "address5",
    "postcode",
    "export_item_codes",
)
L1 = L1Transform(
    columns=(
        L1Column("datetime", "timestamp", "to_timestamp(l0.month, 'YYYYMM')"),
        L1Column("company_name", "text", "lower(trim(l0.company_name))"),
        L1Column(
            "address",
            "text",
            "nullif(lower(trim(concat_ws(' ', l0.address1, l0.address2, l0.address3, l0.address4, "
            "l0.address5))), '')",
        ),
        L1Column("postcode", "text", "upper(replace(l0.postcode, ' ', ''))"),
        L1Column("export_item_codes", "text[]", "string_to_array(l0.export_item_codes, ',', '')"),
    )
)


def exporter_row(line: str) -> Row | None:
    """One line (without its ending) as a row, or None when it has too few fields."""
    fields = line.split("\t")
    if len(fields) < MIN_FIELDS:
        return None
    named = tuple(value.replace('"', "") for value in fields[: MIN_FIELDS - 1])
    codes = ",".join(value for value in fields[MIN_FIELDS - 1 :] if value)
    return (*named, codes)


def read_exporters(stream: BinaryIO, file_name: str) -> FileRows:
    archive = open_zip(stream, Where(file_name))
    result = FileRows(rows=iter(()))
    result.rows = _rows(archive, file_name, result)
    return result


def _rows(archive: zipfile.ZipFile, file_name: str, result: FileRows) -> Iterator[Row]:
    with archive, archive_errors(Where(file_name)):
        for info in data_members(archive):
            if not info.filename.lower().endswith(".zip"):
                with archive.open(info) as text:
                    yield from _text_rows(text, Where(file_name, info.filename), result)
                continue
            with archive.open(info) as packed, tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY) as spool:
                shutil.copyfileobj(packed, spool)
                spool.seek(0)
                inner = open_zip(spool, Where(file_name, info.filename))  # type: ignore[arg-type]
                with inner:
                    members = data_members(inner)
                    if not members:
                        result.skip(Where(file_name, info.filename).problem("bad_archive", "empty archive"))
                        continue
                    # As the legacy: the monthly archive's first file is the month's data.
                    where = Where(file_name, f"{info.filename}/{members[0].filename}")
                    with inner.open(members[0]) as text:
                        yield from _text_rows(text, where, result)


def _text_rows(text: BinaryIO, where: Where, result: FileRows) -> Iterator[Row]:
    for number, raw in enumerate(raw_lines(text, where), 1):
        # Mac Roman maps every byte, so decoding cannot fail.
        line = raw.decode(ENCODING).rstrip("\r\n")
        if not line.strip():
            continue
        row = exporter_row(line)
        if row is None:
            fields = line.count("\t") + 1
            result.skip(
                where.problem("short_line", f"{fields} fields, at least {MIN_FIELDS} expected", number)
            )
            continue
        yield row


SPECS = (
    SourceSpec(
        id="hmrc.exporters",
        group="hmrc.exporters",
        loading="incremental",
        schema="hmrc.exporters",
        columns=COLUMNS,
        reader=read_exporters,
        blob_prefix=blob_prefix("hmrc", "exporters"),
        l1=L1,
        dataflow_table="L1",
        description="HMRC monthly lists of exporting companies and their commodity codes",
    ),
)
