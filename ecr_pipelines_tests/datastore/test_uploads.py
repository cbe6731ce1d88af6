"""The CSV upload check (the legacy's verify step), its normalised copy and ``datastore infer``."""

import csv
import io
import json
import random
import shutil
from datetime import date, datetime
from pathlib import Path

import pytest

from ecr_pipelines.__main__ import main
from ecr_pipelines.datastore import uploads
from ecr_pipelines.datastore.uploads import (
    COLUMN_TYPES,
    RESERVED_NAMES,
    UploadCheck,
    UploadError,
    check_csv,
    infer_lines_setting,
    normalised_csv,
    unique_names,
)

DATA = Path(__file__).resolve().parent / "data"


class Trickle:
    """A stream giving at most ``step`` bytes per read, as a network body may: every line end,
    BOM and multi-byte character then falls across reads somewhere."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._step, self._at = data, step, 0

    def read(self, size: int = -1) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        chunk = self._data[self._at : self._at + n]
        self._at += len(chunk)
        return chunk


def check(text: str | bytes, **options: object) -> UploadCheck:
    data = text.encode("utf-8") if isinstance(text, str) else text
    return check_csv(io.BytesIO(data), **options)  # type: ignore[arg-type]


def normalised(text: str | bytes, **options: object) -> str:
    data = text.encode("utf-8") if isinstance(text, str) else text
    result = check(data, **options)
    assert result.ok, result.errors
    return b"".join(normalised_csv(io.BytesIO(data), result)).decode("utf-8")


def kinds(result: UploadCheck) -> list[str]:
    return [p.kind for p in result.errors]


# ---------------------------------------------------------------------------------------------
# Header rules


def test_a_good_file() -> None:
    result = check("name,count\nalpha,1\nbeta,2\n")
    assert result.ok and result.errors == [] and result.notes == []
    assert result.columns == ["name", "count"]
    assert result.types == ["text", "integer"]
    assert result.sample == [["alpha", "1"], ["beta", "2"]]
    assert result.rows == 2 and result.inferred_rows == 2


def test_every_invalid_name_is_reported() -> None:
    result = check("Name,ok,2nd,with space,_x,with-dash,été\n1,2,3,4,5,6,7\n")
    assert kinds(result) == ["invalid_name"]
    message = result.errors[0].message
    for name in ("Name", "2nd", "with space", "_x", "with-dash", "été"):
        assert f'"{name}"' in message
    assert '"ok"' not in message


def test_a_fixture_with_human_readable_headers() -> None:
    with (DATA / "country_list.csv").open("rb") as stream:
        result = check_csv(stream)
    assert kinds(result) == ["invalid_name"]
    # The BOM is not part of the first name.
    assert '"ctyCode"' in result.errors[0].message and "\ufeff" not in result.errors[0].message
    assert '"ISO2-digit Alpha"' in result.errors[0].message and result.rows == 4


@pytest.mark.parametrize("name", RESERVED_NAMES)
def test_reserved_names(name: str) -> None:
    result = check(f"a,{name}\n1,2\n")
    assert kinds(result) == ["reserved_name"]
    assert f'"{name}"' in result.errors[0].message


def test_all_reserved_names_in_one_problem() -> None:
    result = check("id,datafile_created,data_source_row_id,ok\n1,2,3,4\n")
    assert kinds(result) == ["reserved_name"]
    assert all(f'"{n}"' in result.errors[0].message for n in RESERVED_NAMES)


def test_duplicates_are_all_renamed_in_order() -> None:
    result = check("h,x,h,y,h\n1,2,3,4,5\n")
    assert result.ok
    assert result.columns == ["h_1", "x", "h_2", "y", "h_3"]
    assert [n.kind for n in result.notes] == ["renamed_column"]
    assert result.sample == [["1", "2", "3", "4", "5"]]


def test_renaming_repeats_until_the_names_differ() -> None:
    assert unique_names(["a", "a", "a_1"]) == ["a_1_1", "a_2", "a_1_2"]
    assert unique_names(["a", "b"]) == ["a", "b"]
    assert check("a,a,a_1\n1,2,3\n").columns == ["a_1_1", "a_2", "a_1_2"]


def test_an_empty_header_cell_drops_its_column() -> None:
    text = "a,,b,\n1,x,2,y\n3,,4,\n"
    result = check(text)
    assert result.ok
    assert result.columns == ["a", "b"] and result.kept == [0, 2]
    assert result.sample == [["1", "2"], ["3", "4"]]
    assert result.types == ["integer", "integer"]
    assert [n.kind for n in result.notes] == ["dropped_column"]
    assert "columns 2, 4" in result.notes[0].message
    assert normalised(text) == "a,b\n1,2\n3,4\n"


def test_a_header_of_empty_cells_or_no_header() -> None:
    assert kinds(check(",,\n1,2,3\n")) == ["no_header"]
    assert kinds(check("")) == ["no_header"]
    assert kinds(check("\n\n")) == ["no_header"]


def test_a_name_longer_than_postgres_keeps() -> None:
    result = check(f"{'a' * 64},{'b' * 63}\n1,2\n")
    assert kinds(result) == ["long_name"]
    assert "a" * 64 in result.errors[0].message and "b" * 63 not in result.errors[0].message


def test_no_data() -> None:
    assert kinds(check("a,b\n")) == ["no_data"]


def test_several_problems_are_all_reported() -> None:
    result = check("Bad,id\n1,2,3\n")
    assert kinds(result) == ["invalid_name", "reserved_name", "row_length"]


# ---------------------------------------------------------------------------------------------
# Rows


def test_rows_of_another_length_are_reported_by_line() -> None:
    lines = ["a,b,c"] + ["1,2,3"] * 3 + ["1,2"] + ['"multi\nline",2,3'] + ["1,2,3,4"] + ["1,2,3"]
    result = check("\n".join(lines) + "\n")
    # Lines as a person counts them: the header is line 1, the quoted value spans lines 6-7.
    assert kinds(result) == ["row_length"]
    assert result.errors[0].message == "2 rows do not have the header's 3 values: line 5 has 2, line 8 has 4"
    assert result.rows == 7
    assert result.sample == [["1", "2", "3"]] * 3 + [["multi\nline", "2", "3"]]


def test_only_the_first_bad_lines_are_listed() -> None:
    result = check("a,b\n" + "1\n" * 25)
    assert result.errors[0].message.startswith(
        "25 rows do not have the header's 2 values (the first 10 listed)"
    )
    assert "line 11 has 1" in result.errors[0].message and "line 12 " not in result.errors[0].message


def test_blank_lines_are_skipped() -> None:
    result = check("a,b\n\n1,2\n\n\n3,4\n")
    assert result.ok and result.rows == 2 and result.sample == [["1", "2"], ["3", "4"]]


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_line_ends(end: str) -> None:
    text = f'a,b{end}1,"x{end}y"{end}2,z{end}'
    result = check(text)
    assert result.ok and result.sample == [["1", f"x{end}y"], ["2", "z"]]
    # A row error names the same line whatever the line ends.
    assert check(f"a,b{end}1,2{end}3{end}").errors[0].message.endswith("line 3 has 1")


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 7, 1 << 16])
def test_line_numbers_whatever_the_pieces_read(step: int) -> None:
    # A \r\n cut between two reads is still one line end.
    text = "a,b\r\n1,2\r\n\r\n3\r\n4,5\r6\n7,8\r\n9"
    result = check_csv(Trickle(text.encode(), step))
    assert result.errors[0].message == (
        "3 rows do not have the header's 2 values: line 4 has 1, line 6 has 1, line 8 has 1"
    )


def test_reads_in_small_pieces() -> None:
    text = '\ufeffa,b\r\n1,"é\r\nü"\r\n2,x\r3,y\n'.encode()
    for step in (1, 2, 3, 5):
        result = check_csv(Trickle(text, step))
        assert result.ok and result.columns == ["a", "b"]
        assert result.sample == [["1", "é\r\nü"], ["2", "x"], ["3", "y"]]


# ---------------------------------------------------------------------------------------------
# Values: null tokens and quotes


def test_null_tokens_only_as_whole_values() -> None:
    text = "a,b,c,d,e\nNULL,None,N/A,,NULLABLE\nxNULLx,Nonesuch,N/A/B,null,NONE\n"
    result = check(text)
    assert result.sample == [
        ["", "", "", "", "NULLABLE"],
        ["xNULLx", "Nonesuch", "N/A/B", "null", "NONE"],
    ]
    # Null tokens are empty values: they do not decide a type.
    assert check("n\nNULL\n1\nN/A\n").types == ["integer"]


def test_quoted_content_is_kept() -> None:
    text = 'a,b,c\n"say ""hi""","x, y","two\nlines"\n"""",""""""," ""q"" "\n'
    result = check(text)
    assert result.ok and result.rows == 2
    assert result.sample == [['say "hi"', "x, y", "two\nlines"], ['"', '""', ' "q" ']]


def test_an_unclosed_quote_is_an_error() -> None:
    result = check('a,b\n1,2\n3,"open\n4,5\n')
    assert kinds(result) == ["syntax"]
    assert result.errors[0].message == "line 3: a quoted value starting on this line is never closed"


def test_text_after_a_closing_quote_is_an_error() -> None:
    result = check('a,b\n1,2\n3,"ab"c\n')
    assert kinds(result) == ["syntax"] and result.errors[0].message.startswith("line 3: ")


def test_other_delimiter_and_quote() -> None:
    text = "a;b\n'x;y';'it''s'\n1;2\n"
    result = check(text, delimiter=";", quote="'")
    assert result.ok and result.sample == [["x;y", "it's"], ["1", "2"]]
    # The copy for COPY is always comma-separated and double-quoted.
    assert normalised(text, delimiter=";", quote="'") == "a,b\nx;y,it's\n1,2\n"
    tsv = "a\tb\n1\tx,y\n"
    assert normalised(tsv, delimiter="\t") == 'a,b\n1,"x,y"\n'


@pytest.mark.parametrize(("delimiter", "quote"), [(",,", '"'), (",", ","), ("\n", '"'), (",", "")])
def test_a_bad_dialect(delimiter: str, quote: str) -> None:
    with pytest.raises(ValueError):
        check("a\n1\n", delimiter=delimiter, quote=quote)


# ---------------------------------------------------------------------------------------------
# Encoding


def test_a_utf8_bom_is_dropped() -> None:
    result = check("\ufeffname,n\nx,1\n")
    assert result.ok and result.columns == ["name", "n"] and result.source_columns == ["name", "n"]


def test_a_file_that_is_not_utf8() -> None:
    data = "a,b\n1,ok\n2,caf\u00e9\n".encode("cp1252")
    result = check(data)
    assert kinds(result) == ["encoding"]
    assert result.errors[0].message == (
        "line 3 is not UTF-8 (byte 0xe9 at byte 6 of the line): save the file as UTF-8"
    )


def test_a_utf16_file() -> None:
    result = check("a,b\n1,2\n".encode("utf-16"))
    assert kinds(result) == ["encoding"] and "UTF-16" in result.errors[0].message


def test_a_nul_character() -> None:
    result = check(b"a,b\n1,2\n3,x\x00y\n")
    assert kinds(result) == ["encoding"] and result.errors[0].message.startswith("line 3 holds a NUL")


# ---------------------------------------------------------------------------------------------
# Type inference


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1", "-2", "+3", "007", "9223372036854775807"], "integer"),
        (["9223372036854775808"], "numeric"),  # beyond bigint
        (["1", "2.5"], "numeric"),  # an integer column with a decimal
        (["1.5", ".5", "1.", "-1e5", "2E-3"], "numeric"),
        (["NaN"], "text"),
        (["1 000"], "text"),
        (["1_000"], "text"),
        (["true", "False", "TRUE", "0"], "boolean"),
        (["0", "1"], "integer"),  # integer comes first
        (["yes", "no"], "text"),
        (["2020-01-31", "1999-12-01"], "date"),
        (["2020-02-30"], "text"),
        (["2020-1-5"], "text"),
        (["20200101"], "integer"),
        (
            [
                "2020-01-31T10:00:00Z",
                "2020-01-31 10:00:00",
                "2020-01-31T10:00:00.123456",
                "2020-01-31T23:59:59",
            ],
            "timestamp",
        ),
        (["2020-01-31T10:00:00+02:00"], "text"),
        (["2020-01-31T24:00:00"], "text"),
        (["2020-01-31", "2020-01-31T10:00:00"], "text"),  # date and timestamp do not mix
        (["10:00:00"], "text"),
        ([" 1"], "text"),
        (["abc", "1"], "text"),
        (["", "N/A"], "text"),  # nothing decides
    ],
)
def test_inferred_types(values: list[str], expected: str) -> None:
    text = "v\n" + "".join(f"{v}\n" if v else '""\n' for v in values)
    assert check(text).types == [expected]


def test_inference_stops_after_the_sample() -> None:
    text = "n,m\n" + "1,1\n" * 5 + "x,2.5\n"
    assert check(text, infer_lines=5).types == ["integer", "integer"]
    assert check(text, infer_lines=6).types == ["text", "numeric"]
    limited = check(text, infer_lines=5)
    assert limited.rows == 6 and limited.inferred_rows == 5
    assert check(text, infer_lines=0).types == ["text", "text"]


def test_the_sample_is_the_first_four_rows() -> None:
    result = check("n\n" + "".join(f"{i}\n" for i in range(10)))
    assert result.sample == [["0"], ["1"], ["2"], ["3"]] and result.rows == 10


def test_column_types_map_to_postgres() -> None:
    assert COLUMN_TYPES == {
        "integer": "bigint",
        "numeric": "numeric",
        "boolean": "boolean",
        "date": "date",
        "timestamp": "timestamp",
        "text": "text",
    }


def test_a_fixture_of_postcodes() -> None:
    with (DATA / "ons_postcodes.csv").open("rb") as stream:
        result = check_csv(stream)
    assert result.ok and len(result.columns) == 50 and result.rows == 2
    types = dict(zip(result.columns, result.types, strict=True))
    assert types["pcd"] == "text" and types["lat"] == "numeric" and types["imd"] == "integer"
    assert types["dointr"] == "integer" and types["oseast1m"] == "integer"


def test_the_infer_lines_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CSV_SAMPLE_INFER_LINES", raising=False)
    assert infer_lines_setting() == 100_000
    monkeypatch.setenv("CSV_SAMPLE_INFER_LINES", "50")
    assert infer_lines_setting() == 50
    monkeypatch.setenv("CSV_SAMPLE_INFER_LINES", "many")
    with pytest.raises(ValueError, match="CSV_SAMPLE_INFER_LINES"):
        infer_lines_setting()


# ---------------------------------------------------------------------------------------------
# The normalised copy


def test_the_normalised_copy() -> None:
    text = '\ufeffk,k,,note\r\n1,NULL,drop,"a ""quoted"" word"\r\n2,NULLABLE,,"x,y\r\nz"\r\n3,,,\\.\r\n'
    out = normalised(text)
    assert out == ('k_1,k_2,note\n1,,"a ""quoted"" word"\n2,NULLABLE,"x,y\r\nz"\n3,,"\\."\n')
    # Read back as COPY ... CSV would: the same values; an unquoted empty one is NULL there.
    assert list(csv.reader(io.StringIO(out, newline=""))) == [
        ["k_1", "k_2", "note"],
        ["1", "", 'a "quoted" word'],
        ["2", "NULLABLE", "x,y\r\nz"],
        ["3", "", "\\."],
    ]


def test_the_normalised_copy_without_header_and_in_chunks() -> None:
    rows = "".join(f'{i},"{"v" * 100}"\n' for i in range(2000))
    data = ("a,b\n" + rows).encode()
    result = check_csv(io.BytesIO(data))
    chunks = list(normalised_csv(io.BytesIO(data), result, header=False))
    assert len(chunks) > 1
    assert b"".join(chunks).decode() == "".join(f"{i},{'v' * 100}\n" for i in range(2000))


def test_the_normalised_copy_refuses_a_failed_check_or_another_file() -> None:
    bad = check("Bad\n1\n")
    with pytest.raises(UploadError) as refused:
        list(normalised_csv(io.BytesIO(b"Bad\n1\n"), bad))
    assert [p.kind for p in refused.value.problems] == ["invalid_name"]
    good = check("a,b\n1,2\n")
    with pytest.raises(UploadError, match="header"):
        list(normalised_csv(io.BytesIO(b"a,c\n1,2\n"), good))
    with pytest.raises(UploadError, match="line 3 has 1 values"):
        list(normalised_csv(io.BytesIO(b"a,b\n1,2\n3\n"), good))
    with pytest.raises(UploadError, match="not UTF-8"):
        list(normalised_csv(io.BytesIO(b"a,b\n1,\xff\n"), good))


# ---------------------------------------------------------------------------------------------
# The command


def test_the_command_on_a_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dups.csv"
    path.write_text(
        "a,b,,a\n1,x,drop,2020-01-01\n2,NULL,,\n3,z,,2021-06-30\n4,w,,\n5,v,,\n", encoding="utf-8"
    )
    assert main(["datastore", "infer", str(path)]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [
        {"name": "a_1", "type": "integer", "sample": ["1", "2", "3", "4"]},
        {"name": "b", "type": "text", "sample": ["x", "", "z", "w"]},
        {"name": "a_2", "type": "date", "sample": ["2020-01-01", "", "2021-06-30", ""]},
    ]
    assert "note: column 3 without a name" in captured.err and "renamed" in captured.err


def test_the_command_with_a_delimiter_and_a_fixture(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "semi.csv"
    path.write_text("a\tb\n1\tx;y\n", encoding="utf-8")
    assert main(["datastore", "infer", str(path), "--delimiter", "tab"]) == 0
    assert json.loads(capsys.readouterr().out)[1] == {"name": "b", "type": "text", "sample": ["x;y"]}
    copied = tmp_path / "ons.csv"
    shutil.copy(DATA / "ons_postcodes.csv", copied)
    assert main(["datastore", "infer", str(copied), "--infer-lines", "1"]) == 0
    columns = json.loads(capsys.readouterr().out)
    assert len(columns) == 50 and columns[0]["sample"][0] == "AB1 0AA"


def test_the_command_on_a_bad_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datastore", "infer", str(DATA / "country_list_dups.csv")]) == 2
    out = json.loads(capsys.readouterr().out)
    assert [p["kind"] for p in out["problems"]] == ["invalid_name"]
    assert '"cty Name English"' in out["error"] and "country_list_dups.csv" in out["error"]


def test_the_command_reports_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(b"id,Name\n1,2,3\n")
    assert main(["datastore", "infer", str(path)]) == 2
    out = json.loads(capsys.readouterr().out)
    assert [p["kind"] for p in out["problems"]] == ["invalid_name", "reserved_name", "row_length"]
    assert all(p["message"] in out["error"] for p in out["problems"])


def test_the_command_on_a_missing_file_or_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["datastore", "infer", str(tmp_path / "none.csv")]) == 2
    assert "cannot read" in json.loads(capsys.readouterr().out)["error"]
    path = tmp_path / "a.csv"
    path.write_text("a\n1\n", encoding="utf-8")
    assert main(["datastore", "infer", str(path), "--quote", ","]) == 2
    assert "must differ" in json.loads(capsys.readouterr().out)["error"]


# ---------------------------------------------------------------------------------------------
# Large files: read in blocks, the plainly regular ones without splitting each row in Python


def _generated(seed: int, rows: int, *, delimiter: str = ",", quote: str = '"', oddities: bool = True) -> str:
    """A CSV of ``rows`` rows of 4 typed columns, with (if ``oddities``) some quoted values,
    values spanning lines, blank lines, rows of another length and every kind of line end."""
    rng = random.Random(seed)
    d, q = delimiter, quote
    lines = [d.join(["n", "x", "day", "note"])]
    for index in range(rows):
        note = rng.choice(["plain", "", "NULL", f"{q}a{d} b{q}", f"{q}say {q}{q}hi{q}{q}{q}", "é€"])
        values = [str(index), rng.choice(["1.5", "-2", "N/A", ""]), "2020-02-29", note]
        if oddities:
            pick = rng.random()
            if pick < 0.01:
                values[3] = q + "two" + rng.choice(["\n", "\r\n", "\r"]) + "lines" + q
            elif pick < 0.015:
                values = values[:2]
            elif pick < 0.02:
                lines.append("")
        lines.append(d.join(values))
    ends = ["\n", "\r\n"] + (["\r"] if oddities else [])
    return "".join(line + rng.choice(ends) for line in lines)


def _both_ways(
    monkeypatch: pytest.MonkeyPatch, data: bytes, chunk: int, **options: object
) -> tuple[UploadCheck, UploadCheck]:
    """check_csv as it is, and with the csv module reading every row."""
    monkeypatch.setattr(uploads, "_CHUNK", chunk)
    fast = check_csv(Trickle(data, 1000), **options)  # type: ignore[arg-type]
    with monkeypatch.context() as patch:
        patch.setattr(uploads._FastRead, "create", classmethod(lambda cls, *args: None))
        slow = check_csv(Trickle(data, 1000), **options)  # type: ignore[arg-type]
    return fast, slow


CASES: dict[str, tuple[bytes, dict[str, object]]] = {
    "regular": (_generated(1, 3000, oddities=False).encode(), {}),
    "oddities": (_generated(2, 3000).encode(), {}),
    "semicolons and apostrophes": (
        _generated(3, 3000, delimiter=";", quote="'").encode(),
        {"delimiter": ";", "quote": "'"},
    ),
    "a delimiter of two bytes": (_generated(4, 500, delimiter="§").encode(), {"delimiter": "§"}),
    "a bad quote deep down": ((_generated(5, 3000, oddities=False) + '1,2,"a"b,c\n').encode(), {}),
    "a quote never closed": ((_generated(6, 3000, oddities=False) + '1,2,"a\n3,4\n').encode(), {}),
    "not UTF-8 deep down": (_generated(7, 3000).encode() + b"1,2,caf\xe9,x\n3,4,5,6\n", {}),
    "a NUL deep down": (_generated(8, 3000).encode() + b"1,2,x\x00,y\n", {}),
    "one column": ("v\n" + "".join(f"{i}\n" if i % 97 else "\n" for i in range(3000)), {}),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("chunk", [97, 1 << 16])
@pytest.mark.parametrize("infer_lines", [0, 7, 1000, 100_000])
def test_the_regular_blocks_read_fast_give_the_same_result(
    monkeypatch: pytest.MonkeyPatch, case: str, chunk: int, infer_lines: int
) -> None:
    data, options = CASES[case]
    data = data if isinstance(data, bytes) else data.encode()
    fast, slow = _both_ways(monkeypatch, data, chunk, infer_lines=infer_lines, **options)
    assert fast == slow


def test_values_longer_than_the_csv_module_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "a,b\n" + "1,x\n" * 500 + f"2,{'y' * 60}\n" + "3,z\n" * 500
    limit = csv.field_size_limit(50)
    try:
        fast, slow = _both_ways(monkeypatch, text.encode(), 20, infer_lines=0)  # blocks under 50 bytes
    finally:
        csv.field_size_limit(limit)
    assert fast == slow and [p.kind for p in fast.errors] == ["syntax"]
    assert fast.errors[0].message.startswith(
        "line 502: the CSV cannot be read (field larger than field limit"
    )


def test_problems_deep_in_a_large_file_name_their_lines() -> None:
    rows = [f"{i},{i * 2}" for i in range(20_000)]  # row i is on line i + 2
    rows[9_998] = '9998,"two\nlines"'  # lines 10000-10001: the rows after it are one line further
    rows[14_000] = "14000"  # line 14003
    data = ("a,b\n" + "\n".join(rows) + "\n").encode()
    result = check_csv(io.BytesIO(data))
    assert result.errors[0].message == "1 row does not have the header's 2 values: line 14003 has 1"
    assert result.rows == 20_000 and result.types == ["integer", "text"]
    cut = data.index(b"\n18000,") + 1
    result = check_csv(io.BytesIO(data[:cut] + b"18000,caf\xe9\n" + data[cut:]))
    assert [p.kind for p in result.errors] == ["encoding", "row_length"]
    assert result.errors[0].message == (
        "line 18003 is not UTF-8 (byte 0xe9 at byte 10 of the line): save the file as UTF-8"
    )
    assert result.rows == 18_000  # the rows before it
    result = check_csv(io.BytesIO(data[:cut] + b'18000,"open\n' + data[cut:].replace(b'"', b"")))
    assert result.errors[0].message == "line 18003: a quoted value starting on this line is never closed"
    result = check_csv(io.BytesIO(data[:cut] + b"18000,\x00\n" + data[cut:]))
    assert result.errors[0].message.startswith("line 18003 holds a NUL")


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_types_from_rows_read_in_blocks(end: str) -> None:
    rows = [f"{i},{i},{i % 2},9223372036854775807" for i in range(10_000)]
    rows[6_000] = "6000,x,true,9223372036854775808"
    text = "a,b,c,d" + end + end.join(rows) + end
    assert check(text, infer_lines=6_000).types == ["integer", "integer", "integer", "integer"]
    result = check(text, infer_lines=6_001)
    assert result.types == ["integer", "text", "boolean", "numeric"] and result.inferred_rows == 6_001
    assert check(text).types == ["integer", "text", "boolean", "numeric"]
    # Only a value of the type's own spelling decides; a null token or a line break does not pass.
    text = "a,b\n" + "NULL,1\n" * 5_000 + '"1\n2",3\n'
    assert check(text).types == ["text", "integer"]


def test_dates_and_timestamps_are_real_ones() -> None:
    """Every spelling against Python's own calendar, one column per value in a single row."""
    values = [f"{year:04}-02-29" for year in range(10_000)]
    years = [*range(0, 9), *range(1896, 1905), *range(1996, 2005), *range(2096, 2105), *range(9995, 10_000)]
    values += [f"{y:04}-{m:02}-{d:02}" for y in years for m in range(14) for d in range(33)]
    times = ["00:00:00", "23:59:59", "24:00:00", "23:60:00", "23:59:60", "12:00:00.5Z", "12:00:00.1234567"]
    values += [
        f"{day}{sep}{time}"
        for day in ("2000-02-29", "1900-02-29", "2021-04-31")
        for sep in "T "
        for time in times
    ]

    def expected(value: str) -> str:
        try:
            if len(value) == 10:
                date.fromisoformat(value)
                return "date"
            day, time = value[:10], value[11:].removesuffix("Z")
            date.fromisoformat(day)
            hms, _, fraction = time.partition(".")
            if len(fraction) > 6:
                return "text"
            datetime.strptime(f"{day} {hms}", "%Y-%m-%d %H:%M:%S")
            return "timestamp"
        except ValueError:
            return "text"

    header = ",".join(f"c{i}" for i in range(len(values)))
    result = check(f"{header}\n{','.join(values)}\n")
    assert result.types == [expected(value) for value in values]
