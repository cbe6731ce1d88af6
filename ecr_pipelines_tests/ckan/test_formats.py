"""CSV, TSV and XLSX encoding of datastore pages (the legacy's rules, nested values as JSON)."""

import csv
import io
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from ecr_pipelines.ckan import formats
from ecr_pipelines.ckan.formats import FormatError, RowMaker, cell_text, encode

FIELDS = ["_id", "name", "tags", "extra", "score", "ok"]
TYPES = ["int", "text", "_text", "json", "numeric", "bool"]
PAGES: list[list[dict[str, Any]]] = [
    [
        {
            "_id": 1,
            "name": "plain",
            "tags": ["a", "b"],
            "extra": {"k": "ü", "n": [1, 2]},
            "score": 1.5,
            "ok": True,
        },
        {
            "_id": 2,
            "name": 'with, comma and "quotes"',
            "tags": None,
            "extra": None,
            "score": None,
            "ok": False,
        },
    ],
    [
        {"_id": 3, "name": "two\nlines", "tags": [], "extra": {}, "score": 0, "ok": None},
        {"_id": 4},  # a record without most keys: empty cells
        {
            "_id": 5,
            "name": "tab\there",
            "tags": ["x"],
            "extra": "text",
            "score": 10**20,
            "ok": True,
            "ignored": 1,
        },
    ],
]
EXPECTED = [
    ["1", "plain", '["a", "b"]', '{"k": "ü", "n": [1, 2]}', "1.5", "True"],
    ["2", 'with, comma and "quotes"', "", "", "", "False"],
    ["3", "two\nlines", "[]", "{}", "0", ""],
    ["4", "", "", "", "", ""],
    ["5", "tab\there", '["x"]', "text", str(10**20), "True"],
]


def joined(fmt: str, pages: list[list[dict[str, Any]]], tmp_path: Path, **kwargs: Any) -> bytes:
    return b"".join(encode(fmt, FIELDS, pages, tmpdir=tmp_path, **kwargs))


@pytest.mark.parametrize("types", [TYPES, None])
def test_csv_header_rows_missing_and_nested_values(tmp_path: Path, types: list[str] | None) -> None:
    data = joined("csv", PAGES, tmp_path, types=types)
    text = data.decode("utf-8")
    assert text.startswith("_id,name,tags,extra,score,ok\n1,plain,")
    assert "\r" not in text  # lines end in \n only
    assert text.endswith("\n")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == FIELDS
    assert rows[1:] == EXPECTED
    # Quoting only where needed, with doubled quotes, as the csv module does.
    assert '2,"with, comma and ""quotes""",,,,False\n' in text


def test_tsv_uses_tabs_and_quotes_only_what_needs_it(tmp_path: Path) -> None:
    text = joined("tsv", PAGES, tmp_path, types=TYPES).decode("utf-8")
    assert text.startswith("_id\tname\ttags\textra\tscore\tok\n1\tplain\t")
    assert '\t"tab\there"\t' in text
    comma_only = b"".join(encode("tsv", ["a"], [[{"a": "x, y"}]]))
    assert comma_only == b"a\nx, y\n"
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
    assert rows[0] == FIELDS and rows[1:] == EXPECTED


def test_csv_yields_the_header_then_one_piece_per_page(tmp_path: Path) -> None:
    pieces = list(encode("csv", FIELDS, PAGES, types=TYPES))
    assert len(pieces) == 3
    assert pieces[0] == b"_id,name,tags,extra,score,ok\n"


def test_xlsx_sheet_data_with_one_string_per_cell(tmp_path: Path) -> None:
    path = tmp_path / "out.xlsx"
    path.write_bytes(joined("xlsx", PAGES, tmp_path))
    book = openpyxl.load_workbook(path, read_only=True)
    assert book.sheetnames == ["Data"]
    rows = [list(row) for row in book["Data"].iter_rows(values_only=True)]
    assert rows[0] == FIELDS
    expected = [[value if value != "" else None for value in row] for row in EXPECTED]
    assert rows[1:] == expected
    assert all(isinstance(v, str) for row in rows for v in row if v is not None)


def test_xlsx_refuses_more_rows_than_a_sheet_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "XLSX_MAX_ROWS", 5)  # header + 4 rows; PAGES has 5
    with pytest.raises(FormatError, match="at most 5 rows"):
        joined("xlsx", PAGES, tmp_path)


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="csv, tsv, xlsx"):
        joined("json", PAGES, tmp_path)


def test_row_maker_checks_only_columns_that_may_nest() -> None:
    records = [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    # Scalar types: rows straight from itemgetter, lazily.
    assert list(RowMaker(["a", "b"], ["int", "text"]).rows(records)) == [(1, "x"), (2, "y")]
    nested = [{"a": 1, "b": {"z": 1}}]
    assert list(RowMaker(["a", "b"], ["int", "json"]).rows(nested)) == [(1, '{"z": 1}')]
    assert list(RowMaker(["a", "b"]).rows(nested)) == [(1, '{"z": 1}')]
    assert RowMaker(["a"]).complete([{}]) == [(None,)]


def test_cell_text() -> None:
    assert cell_text(None) is None
    assert cell_text("x") == "x"
    assert cell_text(3) == "3" and cell_text(2.5) == "2.5" and cell_text(False) == "False"
    assert cell_text({"a": [1, "é"]}) == '{"a": [1, "é"]}'
