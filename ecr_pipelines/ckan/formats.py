"""Writers that turn datastore pages into CSV, TSV or XLSX bytes as the pages arrive.

The legacy rules (ckanpackager's resource file): the header is the CKAN field ids in CKAN's
order (``_id`` included); each row holds ``record[id]`` per field, empty where the record has
no such key or a null; UTF-8, ``"`` as the quote character (only where needed), lines ending
in ``\\n``. Where the legacy printed Python's repr of a nested value (a dict or list), it is
written as JSON here, so a reader can parse it back.

CSV and TSV come out as one encoded piece per page. XLSX is written with XlsxWriter in
``constant_memory`` mode: each row is flushed to a temporary sheet file (under the caller's
scratch folder) as it is written and strings are inline (no shared-string table growing with the
data), so memory stays flat; the finished workbook (itself a ZIP, assembled by XlsxWriter in
the scratch folder) is then read out in pieces. Every XLSX cell is a string, as the legacy's
CSV-to-XLSX conversion made them, in a sheet named ``Data``. A sheet holds at most 1,048,576
rows; a larger download fails with ``FormatError`` instead of silently losing rows (XlsxWriter
would drop them), and a cell holds at most 32,767 characters (XlsxWriter cuts longer text).
"""

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import Any

FORMATS = ("csv", "tsv", "xlsx")
DEFAULT_FORMAT = "csv"
XLSX_SHEET = "Data"
XLSX_MAX_ROWS = 1_048_576  # Excel's limit, header included
CHUNK = 1024 * 1024
_NESTED = frozenset({dict, list})
# CKAN field types (PostgreSQL types as the datastore names them) whose values are never a dict
# or list; a column of any other type (json, arrays such as _text, a backend's own names) is
# checked value by value.
SCALAR_TYPES = frozenset(
    {
        "text", "varchar", "char", "bpchar", "name", "citext", "uuid", "tsvector",
        "int", "int2", "int4", "int8", "integer", "smallint", "bigint", "serial", "bigserial",
        "float", "float4", "float8", "real", "double precision", "numeric", "decimal", "money",
        "bool", "boolean",
        "timestamp", "timestamptz", "date", "time", "timetz", "interval",
    }
)  # fmt: skip

Record = dict[str, Any]


class FormatError(ValueError):
    """The rows cannot be written in the requested format."""

    kind = "format_limit"


def nested_to_json(value: Any) -> Any:
    """A dict or list as JSON text; anything else unchanged."""
    if type(value) in _NESTED:
        return json.dumps(value, ensure_ascii=False)
    return value


def _row_getter(fields: Sequence[str]) -> Callable[[Record], tuple[Any, ...]]:
    if not fields:
        return lambda record: ()
    if len(fields) == 1:
        name = fields[0]
        return lambda record: (record[name],)
    return itemgetter(*fields)  # type: ignore[return-value]


class RowMaker:
    """Records of one page → value tuples in header order.

    The common page (every key present, no nested value) goes through C-level code only:
    ``itemgetter`` over the records, lazily. Nested values are looked for only in columns whose
    type does not rule them out, with one scan that stops at the first dict or list; a page with
    one, or with a missing key (``complete``), takes the slower path of ``record.get`` per field.
    """

    def __init__(self, fields: Sequence[str], types: Sequence[str] | None = None) -> None:
        self.fields = tuple(fields)
        self._get = _row_getter(self.fields)
        if types is None or len(types) != len(self.fields):
            types = [""] * len(self.fields)
        self._unsure = [
            methodcaller("get", f) for f, t in zip(self.fields, types, strict=True) if t not in SCALAR_TYPES
        ]

    def _has_nested(self, records: Sequence[Record]) -> bool:
        if len(self._unsure) == len(self.fields):  # nothing known: one pass over every value
            return not _NESTED.isdisjoint(map(type, chain.from_iterable(map(dict.values, records))))
        return any(not _NESTED.isdisjoint(map(type, map(get, records))) for get in self._unsure)

    def rows(self, records: Sequence[Record]) -> Iterable[tuple[Any, ...]]:
        """Fast rows; iterating them raises ``KeyError`` when a record lacks a field."""
        if self._unsure and self._has_nested(records):
            return self.complete(records)
        return map(self._get, records)

    def complete(self, records: Sequence[Record]) -> list[tuple[Any, ...]]:
        """Rows with missing keys as None and nested values as JSON."""
        fields = self.fields
        return [tuple(map(nested_to_json, map(record.get, fields))) for record in records]


class DelimitedEncoder:
    """CSV (``,``) or TSV (tab): the header and then each page as UTF-8 bytes."""

    def __init__(
        self, fields: Sequence[str], types: Sequence[str] | None = None, delimiter: str = ","
    ) -> None:
        self._text = io.StringIO()
        self._writer = csv.writer(self._text, delimiter=delimiter, quotechar='"', lineterminator="\n")
        self._maker = RowMaker(fields, types)
        self._fields = list(fields)

    def _take(self) -> bytes:
        data = self._text.getvalue().encode("utf-8")
        self._text.seek(0)
        self._text.truncate()
        return data

    def header(self) -> bytes:
        self._writer.writerow(self._fields)
        return self._take()

    def page(self, records: Sequence[Record]) -> bytes:
        try:
            self._writer.writerows(self._maker.rows(records))
        except KeyError:
            # A record without one of the fields: start the page again on the careful path.
            self._text.seek(0)
            self._text.truncate()
            self._writer.writerows(self._maker.complete(records))
        return self._take()


def cell_text(value: Any) -> str | None:
    """What an XLSX cell holds: text for every value, JSON for nested ones, None for a null."""
    if value is None:
        return None
    if type(value) is str:
        return value
    if type(value) in _NESTED:
        return json.dumps(value, ensure_ascii=False)
    return str(value)


class XlsxSheet:
    """Sheet ``Data`` of a workbook at ``path``, written row by row (XlsxWriter, constant memory)."""

    def __init__(self, path: str | Path, fields: Sequence[str], tmpdir: str | Path) -> None:
        import xlsxwriter  # only XLSX requests pay for the import

        self._book = xlsxwriter.Workbook(
            str(path),
            {
                "constant_memory": True,
                "tmpdir": str(tmpdir),
                # Text stays text: no guessing of numbers, formulas or links in the data.
                "strings_to_numbers": False,
                "strings_to_formulas": False,
                "strings_to_urls": False,
            },
        )
        self._sheet = self._book.add_worksheet(XLSX_SHEET)
        self._fields = tuple(fields)
        self._get = _row_getter(self._fields)
        self._write_row(0, self._fields)
        self._next = 1

    def _write_row(self, index: int, values: Sequence[Any]) -> None:
        write = self._sheet.write_string
        for column, value in enumerate(values):
            text = cell_text(value)
            if text:  # a null or an empty string is a blank cell
                write(index, column, text)

    def write_page(self, records: Sequence[Record]) -> None:
        if self._next + len(records) > XLSX_MAX_ROWS:
            raise FormatError(
                f"an XLSX sheet holds at most {XLSX_MAX_ROWS:,} rows (header included); "
                "this download has more: ask for CSV or TSV, or set a limit"
            )
        get, fields = self._get, self._fields
        for record in records:
            try:
                values: Sequence[Any] = get(record)
            except KeyError:
                values = tuple(map(record.get, fields))
            self._write_row(self._next, values)
            self._next += 1

    def close(self) -> None:
        self._book.close()


def encode(
    fmt: str,
    fields: Sequence[str],
    pages: Iterable[Sequence[Record]],
    *,
    types: Sequence[str] | None = None,
    tmpdir: str | Path | None = None,
) -> Iterator[bytes]:
    """The file of ``fmt`` (``csv``, ``tsv``, ``xlsx``) in pieces, as ``pages`` come.

    CSV and TSV yield the header and then one piece per page. XLSX needs ``tmpdir`` for the
    sheet being written and the finished workbook, which it yields in 1 MiB pieces at the end.
    """
    if fmt in ("csv", "tsv"):
        encoder = DelimitedEncoder(fields, types, "," if fmt == "csv" else "\t")
        yield encoder.header()
        for records in pages:
            yield encoder.page(records)
        return
    if fmt != "xlsx":
        raise FormatError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    if tmpdir is None:
        raise ValueError("the XLSX writer needs a temporary folder")
    path = Path(tmpdir) / "resource.xlsx"
    sheet = XlsxSheet(path, fields, tmpdir)
    for records in pages:
        sheet.write_page(records)
    sheet.close()
    with open(path, "rb") as workbook:
        while piece := workbook.read(CHUNK):
            yield piece
