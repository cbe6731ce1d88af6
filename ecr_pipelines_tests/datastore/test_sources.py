"""The data store's source readers (files → L0 rows) and the downloaders' listing logic, on the
legacy's sample files (``data/sources``) and on broken or hostile variants built in memory."""

import io
import json
import zipfile
from collections.abc import Iterable
from datetime import date
from pathlib import Path

import pytest

from ecr_pipelines.datastore.sources import (
    SOURCES,
    SourceFileError,
    companies_house,
    listing,
    read_file,
    sources_of_group,
)
from ecr_pipelines.datastore.sources.spec import FileRows, Row
from ecr_pipelines_tests.datastore.expected import REFERENCE_ROWS

DATA = Path(__file__).parent / "data" / "sources"


def read(source_id: str, name: str) -> tuple[list[Row], FileRows]:
    with (DATA / name).open("rb") as stream:
        result = read_file(source_id, stream, name)
        return list(result), result


def read_bytes(source_id: str, data: bytes, name: str = "file") -> tuple[list[Row], FileRows]:
    result = read_file(source_id, io.BytesIO(data), name)
    return list(result), result


def zipped(members: Iterable[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def row_dict(source_id: str, row: Row) -> dict[str, str | None]:
    return dict(zip(SOURCES[source_id].column_names, row, strict=True))


class Unseekable(io.RawIOBase):
    """A stream that can only be read forward (an HTTP body, say)."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(size)


# --- registry -------------------------------------------------------------------------------------


def test_registry_order_ids_and_layout() -> None:
    ids = list(SOURCES)
    assert ids[:11] == [
        "ons.postcode_directory",
        "dit.reference_postcodes",
        "dit.baci",
        "dit.eu_country_membership",
        "comtrade.country_code_and_iso",
        "world_bank.bound_rates",
        "world_bank.tariff",
        "world_bank.tariff.transformed",
        "companies_house.accounts_legacy",
        "hmrc.exporters",
        "dit.spire.batches",
    ]
    assert len(sources_of_group("dit.spire")) == 25
    # The transform reads the other sources of its group: it comes after them.
    group = [spec.id for spec in sources_of_group("world_bank.tariff")]
    assert group == [
        "dit.eu_country_membership",
        "comtrade.country_code_and_iso",
        "world_bank.bound_rates",
        "world_bank.tariff",
        "world_bank.tariff.transformed",
    ]
    # SPIRE: referenced tables before the tables referring to them.
    spire = [spec.table for spec in sources_of_group("dit.spire")]
    assert spire.index("batches") < spire.index("applications") < spire.index("application_amendments")
    assert spire.index("ref_report_ratings") < spire.index("control_entries")


def test_specs_blob_prefixes_loading_and_columns() -> None:
    ons = SOURCES["ons.postcode_directory"]
    assert ons.blob_prefix == "datastore/datasets/ons/postcode_directory/"
    assert (ons.loading, ons.schema, ons.table) == ("incremental", "ons.postcode_directory", "L0")
    assert len(ons.columns) == 50 and {c.type for c in ons.columns} == {"text"}
    assert ons.l1 is not None and ons.l1.params == ("publication_date",)
    l1 = {c.name: (c.type, c.select_sql) for c in ons.l1.columns}
    assert l1["dointr"] == ("date", "to_date(l0.dointr, 'YYYYMM')")
    assert l1["pcd"] == ("text", 'l0."pcd"')
    assert l1["publication_date"] == ("date", "%(publication_date)s::date")

    spire = SOURCES["dit.spire.footnotes"]
    assert spire.blob_prefix == "datastore/datasets/dit/spire/footnotes/"
    assert (spire.loading, spire.schema, spire.table) == ("rebuild", "spire", "footnotes")

    transform = SOURCES["world_bank.tariff.transformed"]
    assert transform.reader is None and transform.blob_prefix is None and transform.l1 is not None
    assert transform.l1.computed and transform.schema == "world_bank.tariff"

    accounts = SOURCES["companies_house.accounts_legacy"]
    assert len(accounts.columns) == 37 and accounts.dataflow_table == "L0"
    assert accounts.blob_prefix == "datastore/datasets/companies_house/accounts_legacy/"
    assert {c.name: c.type for c in SOURCES["comtrade.country_code_and_iso"].columns}["cty_code"] == "int"
    bound = {c.name: c.type for c in SOURCES["world_bank.bound_rates"].columns}
    assert bound == {
        "nomen_code": "text",
        "reporter": "int",
        "product": "int",
        "bound_rate": "decimal",
        "total_number_of_lines": "int",
    }
    reference = {c.name: c.type for c in SOURCES["dit.reference_postcodes"].columns}
    assert reference["date_of_termination"] == "date" and reference["postcode"] == "text"
    assert SOURCES["hmrc.exporters"].l1.column_names == (  # type: ignore[union-attr]
        "datetime",
        "company_name",
        "address",
        "postcode",
        "export_item_codes",
    )


# --- ONS -----------------------------------------------------------------------------------------


def test_ons_postcode_directory_rows_and_publication_date() -> None:
    rows, result = read("ons.postcode_directory", "ons_postcode_directory_ONSPD_JUL_2019_UK.zip")
    assert result.params == {"publication_date": "2019-07-01"}
    assert len(rows) == 3 and all(len(row) == 50 for row in rows)
    first = row_dict("ons.postcode_directory", rows[0])
    assert (first["pcd"], first["pcd2"], first["dointr"], first["doterm"]) == (
        "AB1 0AA",
        "AB1  0AA",
        "200001",
        "199606",
    )
    assert (first["lat"], first["long"], first["imd"], first["stp"]) == (
        "57.101474",
        "-2.242851",
        "6808",
        "S99999999",
    )

    rows, result = read("ons.postcode_directory", "ons_postcode_directory_ONSPD_MAY_2019_UK.zip")
    assert result.params == {"publication_date": "2019-05-01"}
    assert [row[0] for row in rows] == ["AB1 0AA", "AB1 0AB"]
    # A quoted empty termination date is no date: NULL, not '' (to_date would make year 1).
    assert row_dict("ons.postcode_directory", rows[0])["doterm"] is None


def test_ons_member_must_be_named_like_the_release() -> None:
    data = zipped([("Data/ONSPD_2019_MAY.csv", b"pcd\n"), ("Data/ONSPD_MAY_2019_UK.txt", b"pcd\n")])
    with pytest.raises(SourceFileError) as caught:
        read_file("ons.postcode_directory", io.BytesIO(data), "ONSPD_MAY_2019_UK.zip")
    assert caught.value.kind == "bad_member_name"
    assert "ONSPD_MAY_2019_UK.zip" in str(caught.value) and "Data/ONSPD_2019_MAY.csv" in str(caught.value)

    bad_month = zipped([("Data/ONSPD_XYZ_2019_UK.csv", b"pcd\n")])
    with pytest.raises(SourceFileError) as caught:
        read_file("ons.postcode_directory", io.BytesIO(bad_month), "x.zip")
    assert caught.value.kind == "bad_member_name"

    with pytest.raises(SourceFileError) as caught:
        read_file("ons.postcode_directory", io.BytesIO(b"pcd,pcd2\n"), "ONSPD.csv")
    assert caught.value.kind == "bad_archive"


def test_ons_header_must_be_the_fifty_columns() -> None:
    data = zipped(
        [("Data/ONSPD_MAY_2024_UK.csv", b"pcd,pcd2,pcds,dointr\nAB1 0AA,AB1  0AA,AB1 0AA,198001\n")]
    )
    with pytest.raises(SourceFileError) as caught:
        read_bytes("ons.postcode_directory", data, "ONSPD_MAY_2024_UK.zip")
    assert caught.value.kind == "bad_header" and caught.value.line == 1
    assert caught.value.problem.member == "Data/ONSPD_MAY_2024_UK.csv"


# --- DIT -----------------------------------------------------------------------------------------


def test_dit_reference_postcodes_human_header_mapped() -> None:
    rows, _ = read("dit.reference_postcodes", "dit_reference_postcodes_snapshot1.csv")
    assert rows == REFERENCE_ROWS


def test_dit_baci_rows() -> None:
    rows, _ = read("dit.baci", "dit_baci.csv")
    assert rows == [
        ("1995", "010519", "004", "251", "1.548", "0.051"),
        ("1995", "030110", "004", "381", "1.249", "0.01"),
    ]


def test_dit_eu_membership_rows_and_unpivot() -> None:
    rows, _ = read("dit.eu_country_membership", "dit_eu_country_membership_eu_spine.csv")
    assert [row[:2] for row in rows] == [("Austria", "AUT"), ("Belgium", "BEL"), ("Bulgaria", "BGR")]
    austria = row_dict("dit.eu_country_membership", rows[0])
    assert len(austria) == 63
    assert (austria["1994"], austria["1995"], austria["2018"]) == (None, "EUN", "EUN")
    assert set(rows[1][2:]) == {"EUN"}
    assert row_dict("dit.eu_country_membership", rows[2])["2007"] == "EUN"

    l1 = SOURCES["dit.eu_country_membership"].l1
    assert l1 is not None and l1.column_names == ("country", "iso3", "year", "tariff_code")
    assert "json_each_text(row_to_json(l0))" in (l1.lateral or "")
    assert [c.select_sql for c in l1.columns][2:] == ["cell.key::int", "cell.value"]


def test_dit_eu_membership_header_with_another_year_range_refused() -> None:
    header = "Country,ISO3," + ",".join(str(year) for year in range(1958, 2020))
    with pytest.raises(SourceFileError) as caught:
        read_bytes("dit.eu_country_membership", (header + "\nAustria,AUT\n").encode(), "eu.csv")
    assert caught.value.kind == "bad_header"
    assert "expected 63 columns, found 64" in str(caught.value)


def test_spire_tables_read_with_null_tokens() -> None:
    counts = {}
    for spec in sources_of_group("dit.spire"):
        rows, _ = read(spec.id, f"dit_spire/{spec.table}.csv")
        assert all(len(row) == len(spec.columns) for row in rows)
        counts[spec.table] = len(rows)
    assert counts["batches"] == 50 and counts["applications"] == 44 and counts["goods_incidents"] == 12
    assert min(counts.values()) >= 5

    rows, _ = read("dit.spire.footnotes", "dit_spire/footnotes.csv")
    assert rows[:2] == [
        ("1", None, "CURRENT"),
        ("2", "Traditional do change table. Performance leader ability six.", "CURRENT"),
    ]
    rows, _ = read("dit.spire.batches", "dit_spire/batches.csv")
    assert rows[1] == ("2", "C41", "RELEASED", None, None, "2020-4-27 11:03:38", None, None)


def test_spire_header_order_subset_and_tokens() -> None:
    data = b'"status","id","text"\n"null","1","NULL"\n"CURRENT","2",""\n"CURRENT","3","null value"\n'
    rows, _ = read_bytes("dit.spire.footnotes", data, "footnotes.csv")
    assert rows == [("1", None, None), ("2", None, "CURRENT"), ("3", "null value", "CURRENT")]
    # A column the export lacks is NULL.
    rows, _ = read_bytes("dit.spire.footnotes", b"id,status\n7,CURRENT\n", "footnotes.csv")
    assert rows == [("7", None, "CURRENT")]

    with pytest.raises(SourceFileError) as caught:
        read_bytes("dit.spire.footnotes", b"id,texte\n1,x\n", "footnotes.csv")
    assert caught.value.kind == "bad_header" and "texte" in str(caught.value)
    with pytest.raises(SourceFileError) as caught:
        read_bytes("dit.spire.footnotes", b"id,text\n1,x\n2\n", "footnotes.csv")
    assert (caught.value.kind, caught.value.line) == ("bad_row", 3)


# --- Comtrade --------------------------------------------------------------------------------------


def test_comtrade_rows_of_the_legacy_sample() -> None:
    # Its lines end with a lone CR, and it starts with a UTF-8 byte order mark.
    rows, _ = read("comtrade.country_code_and_iso", "comtrade_country_code_and_iso_country_list.csv")
    assert rows == [
        ("0", "World", "World", "World", "World", "WL", "WLD", "1962", "2061"),
        ("4", "Afghanistan", "Afghanistan", "Afghanistan", None, "AF", "AFG", "1962", "2061"),
        (
            "899",
            "Areas, nes",
            "Areas, not elsewhere specified",
            "Areas, nes",
            None,
            None,
            None,
            "1962",
            "2061",
        ),
        ("918", "European Union", "European Union", "European Union", None, "EU", "EUR", None, None),
    ]


def test_comtrade_decodes_windows_1252() -> None:
    rows, _ = read("comtrade.country_code_and_iso", "comtrade_country_list_win1252.csv")
    assert [row[1] for row in rows] == ["Côte d'Ivoire", "Curaçao", "Türkiye"]
    assert rows[1][4] == "“new” since 2010 – see 532"
    assert rows[2][2] == "Republic of Türkiye"


def test_comtrade_utf8_with_bom_and_undefined_bytes() -> None:
    header = (DATA / "comtrade_country_list_win1252.csv").read_bytes().split(b"\r\n")[0]
    utf8 = b"\xef\xbb\xbf" + header + "\r\n384,Côte d'Ivoire,x,x,,CI,CIV,1962,2061\r\n".encode()
    rows, _ = read_bytes("comtrade.country_code_and_iso", utf8)
    assert rows[0][1] == "Côte d'Ivoire"

    # 0x81 has no character in Windows-1252.
    broken = header + b"\r\n4,Afghanistan,,,,AF,AFG,1962,2061\r\n5,Bad\x81name,,,,,,,\r\n"
    with pytest.raises(SourceFileError) as caught:
        read_bytes("comtrade.country_code_and_iso", broken, "country_list.csv")
    assert (caught.value.kind, caught.value.line) == ("bad_encoding", 3)
    assert "0x81" in str(caught.value) and "country_list.csv" in str(caught.value)


# --- World Bank --------------------------------------------------------------------------------------


def test_world_bank_bound_rates_and_tariffs() -> None:
    rows, _ = read("world_bank.bound_rates", "world_bank_bound_rates.csv")
    assert rows == [("H0", "004", "010111", "10", "2")]
    rows, _ = read("world_bank.bound_rates", "world_bank_bound_rates_multiple_nomen_codes.csv")
    assert [row[0] for row in rows] == ["H0", "H1", "H2"]
    l1 = SOURCES["world_bank.bound_rates"].l1
    assert l1 is not None and l1.distinct_on == ("l0.reporter", "l0.product")
    assert l1.order_by[-1] == "right(l0.nomen_code, 1)::int DESC"

    # CRLF lines with a space after some commas.
    rows, _ = read("world_bank.tariff", "world_bank_tariff.csv")
    assert len(rows) == 3
    assert rows[0] == ("048", "1999", "0201", "000", "AHS", "5", "20")
    assert rows[1] == ("262", "2005", "0201", "380", "BND", "40", "40")


def test_csv_source_row_width_and_zipped_file() -> None:
    data = b"NomenCode,Reporter_ISO_N,ProductCode,BoundRate,Nbr_Total_Lines\nH0,4,10111,10,2\nH1,4,10111,5\n"
    with pytest.raises(SourceFileError) as caught:
        read_bytes("world_bank.bound_rates", data, "bound_rates.csv")
    assert (caught.value.kind, caught.value.line) == ("bad_row", 3)
    assert "4 fields, expected 5" in str(caught.value)

    # The legacy's manager unpacked a ZIP and read its first file.
    csv_data = (DATA / "dit_baci.csv").read_bytes()
    rows, _ = read_bytes(
        "dit.baci", zipped([("__MACOSX/._baci.csv", b"junk"), ("baci.csv", csv_data)]), "baci.zip"
    )
    assert len(rows) == 2
    # A plain file needs no seeking.
    result = read_file("dit.baci", Unseekable(csv_data), "baci.csv")  # type: ignore[arg-type]
    assert len(list(result)) == 2

    with pytest.raises(SourceFileError) as caught:
        read_bytes("dit.baci", b"", "baci.csv")
    assert caught.value.kind == "bad_header"

    # A member whose bytes were damaged in transit (stored, so the CRC check catches it).
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("baci.csv", csv_data)
    damaged = buffer.getvalue().replace(b"1995,030110", b"1995,930110")
    with pytest.raises(SourceFileError) as caught:
        read_bytes("dit.baci", damaged, "baci.zip")
    assert caught.value.kind == "bad_archive" and caught.value.problem.member == "baci.csv"


# --- Companies House ---------------------------------------------------------------------------------

ACCOUNTS_ZIP = "companies_house_accounts_test_datafile_1.zip"


def test_companies_house_rows_one_per_period() -> None:
    rows, result = read("companies_house.accounts_legacy", ACCOUNTS_ZIP)
    assert len(rows) == 4 and all(len(row) == 37 for row in rows)
    assert result.counts == {}  # the macOS resource forks are not documents

    html = [row_dict("companies_house.accounts_legacy", row) for row in rows[:2]]
    assert html[0] == {
        **dict.fromkeys(SOURCES["companies_house.accounts_legacy"].column_names),
        "run_code": "Prod223_2798",
        "company_id": "12345",
        "date": "2020-03-31",
        "file_type": "html",
        "taxonomy": "",
        "period_start": "2020-03-31",
        "period_end": "2020-03-31",
        "balance_sheet_date": "2020-03-31",  # "31.3.20", day first
        "companies_house_registered_number": "12345",
        "entity_current_legal_name": "BadCorp2 Limited",  # nested in a table of the fact
        "company_dormant": "false",
        "average_number_employees_during_period": "1",
        "current_assets": "96264",  # "96,264"
        "net_current_assets_liabilities": "96264",
        "total_assets_less_current_liabilities": "96264",
        "shareholder_funds": "96264",  # core:Equity without dimension
    }
    assert (html[1]["period_start"], html[1]["period_end"]) == ("2019-03-31", "2019-03-31")

    xml = [row_dict("companies_house.accounts_legacy", row) for row in rows[2:]]
    assert [
        (r["period_end"], r["tangible_fixed_assets"], r["debtors"], r["cash_bank_in_hand"]) for r in xml
    ] == [
        ("2016-07-31", "251044", "1840", "29277"),
        ("2015-07-31", "251160", "2162", "32909"),
    ]
    first = xml[0]
    assert first["taxonomy"] == "http://www.xbrl.org/uk/fr/gaap/pt/2004-12-01"
    assert (first["run_code"], first["company_id"], first["date"], first["file_type"]) == (
        "Prod223_1859",
        "1234",
        "2017-02-27",
        "xml",
    )
    assert first["company_dormant"] == "false"  # ae:CompanyNotDormant true
    assert first["entity_current_legal_name"] == "BadCorp Limited"
    assert first["average_number_employees_during_period"] is None
    assert (first["called_up_share_capital"], first["profit_loss_account_reserve"]) == ("5700", "18511")
    assert (
        first["net_assets_liabilities_including_pension_asset_liability"],
        first["shareholder_funds"],
    ) == (
        "267734",
        "267734",
    )
    assert first["creditors_due_within_one_year"] is None  # as the legacy: not its concept


def _accounts_with(*extra: tuple[str, bytes]) -> bytes:
    with zipfile.ZipFile(DATA / ACCOUNTS_ZIP) as source:
        members = [(info.filename, source.read(info)) for info in source.infolist() if not info.is_dir()]
    return zipped([*members, *extra])


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE xbrl [
  <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
  <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
  <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
  <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
  <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
]>
<xbrl xmlns="http://www.xbrl.org/2003/instance"><EntityCurrentLegalName>&e;</EntityCurrentLegalName></xbrl>
"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE xbrl [<!ENTITY secret SYSTEM "file:///etc/passwd">]>
<xbrl><EntityCurrentLegalName>&secret;</EntityCurrentLegalName></xbrl>
"""


def test_companies_house_broken_document_skipped_and_counted() -> None:
    data = _accounts_with(
        ("test_datafile_1/Prod223_1_999_20200101.xml", b"<xbrl><context id='c'></xbrl>"),
        ("test_datafile_1/notes.txt", b"not a filing"),
    )
    rows, result = read_bytes("companies_house.accounts_legacy", data, "Accounts_Bulk_Data-2020-01-02.zip")
    assert len(rows) == 4  # the good documents still load
    assert result.counts == {"bad_xml": 1, "bad_member_name": 1}
    broken = next(p for p in result.problems if p.kind == "bad_xml")
    assert broken.member == "test_datafile_1/Prod223_1_999_20200101.xml" and broken.line == 1
    assert "Accounts_Bulk_Data-2020-01-02.zip!test_datafile_1/Prod223_1_999_20200101.xml" in str(broken)


def test_companies_house_entity_attacks_refused_without_expanding() -> None:
    data = zipped(
        [
            ("Prod1_1_666_20200101.xml", BILLION_LAUGHS),
            ("Prod1_1_667_20200101.xml", XXE),
        ]
    )
    rows, result = read_bytes("companies_house.accounts_legacy", data, "hostile.zip")
    assert rows == []
    assert result.counts == {"unsafe_xml": 2}
    assert all("entity" in problem.message for problem in result.problems)


def test_companies_house_values() -> None:
    from lxml import etree

    def fact(xml: str) -> object:
        return etree.fromstring(
            '<x xmlns:ix="http://www.xbrl.org/2013/inlineXBRL" xmlns:ixt="t" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">' + xml + "</x>"
        )[0]

    number = companies_house.number_value
    assert number(fact('<ix:nonFraction scale="3" sign="-">1,234.5</ix:nonFraction>')) == "-1234500"
    assert number(fact('<ix:nonFraction format="ixt:numcommadecimal">1.234,50</ix:nonFraction>')) == "1234.50"
    assert number(fact('<ix:nonFraction format="ixt:zerodash">-</ix:nonFraction>')) == "0"
    assert number(fact("<ix:nonFraction>-</ix:nonFraction>")) is None
    assert number(fact("<ix:nonFraction>2019: 12</ix:nonFraction>")) == "12"
    assert number(fact('<ix:nonFraction xsi:nil="true"/>')) is None
    assert number(fact("<ix:nonFraction>n/a</ix:nonFraction>")) is None
    # A hostile scale would otherwise write a number of a billion digits.
    assert number(fact('<ix:nonFraction scale="999999999">1</ix:nonFraction>')) is None
    assert number(fact("<ix:nonFraction>1e999999</ix:nonFraction>")) is None
    assert companies_house.date_value(fact('<d format="ixt2:datedaymonthyear">1.4.19</d>')) == "2019-04-01"
    assert companies_house.date_value(fact('<d format="ixt:dateslashus">4/1/2019</d>')) == "2019-04-01"
    assert companies_house.date_value(fact("<d>2016-07-31</d>")) == "2016-07-31"
    assert companies_house.bool_value(fact('<b format="ixt:booleanfalse">No</b>')) == "false"
    assert companies_house.bool_value(fact("<b>true</b>"), negated=True) == "false"
    text = fact("<t>Bad <ix:exclude>(ignored)</ix:exclude>Corp<!-- c -->\n  Ltd</t>")
    assert companies_house.fact_text(text) == "Bad Corp Ltd"
    assert companies_house.parse_member_name("a/Prod223_2798_12345_20200331.html") == (
        "Prod223_2798",
        "12345",
        "2020-03-31",
        "html",
    )
    assert companies_house.parse_member_name("Prod223_2798_12345_20201331.html") is None


# --- HMRC ------------------------------------------------------------------------------------------------


def test_hmrc_short_lines_dropped_and_codes_joined() -> None:
    rows, result = read("hmrc.exporters", "hmrc_exporters_2016_mock.zip")
    assert rows == [
        (
            "201601",
            "1",
            "ABC COMPANY LTD",
            "1 - 3  STREET AVENUE",
            "HOUSE NAME",
            "CITY NAME",
            "",
            "",
            "AA1 1AA",
            "12345678,23456789",
        ),
        (
            "201601",
            "1",
            "AAA LIMITED",
            "01 STREET NAME STREET",
            "LINE",
            "LONDON",
            "",
            "",
            "BB1 1BB",
            "12345670",
        ),
        # The quotes around "AAA HOUSE" are dropped.
        (
            "201602",
            "1",
            "BBB LIMITED",
            "AAA HOUSE",
            "2 STREET NAME",
            "CITY",
            "COUNTY",
            "",
            "AA11 1AA",
            "98765432,12345678",
        ),
    ]
    assert result.counts == {"short_line": 1}
    (short,) = result.problems
    assert (short.member, short.line) == ("exporters1601.zip/exporters1601", 3)


def test_hmrc_mac_roman_and_plain_members() -> None:
    line = "\t".join(
        ["201701", "1", "CAF\u00c9 \u201cLTD\u201d", "", "", "", "", "", "X1 1XX", "1", "", "2\r\n"]
    )
    text = line.encode("mac_roman") + b"too\tshort\n\n"
    data = zipped([("exporters1701.txt", text)])
    rows, result = read_bytes("hmrc.exporters", data, "exporters1701.zip")
    assert rows == [("201701", "1", "CAF\u00c9 \u201cLTD\u201d", "", "", "", "", "", "X1 1XX", "1,2")]
    assert result.counts == {"short_line": 1}


# --- listing (B2) ------------------------------------------------------------------------------------------

HMRC_PAGE = b"""
    <html/>
        <a href="/Statistics/Documents/Data%20Downloads/exporters1703.zip">Exporters</a>
    </html>
"""
CH_PAGE = b"""
    <html/>
        <a href="Accounts_Bulk_Data-2017-06-20.zip">Accounts_Bulk_Data-2017-06-20.zip  (52Mb)</a>
        <a href="Accounts_Bulk_Data-2017-06-17.zip">Accounts_Bulk_Data-2017-06-17.zip  (37Mb)</a>
    </html>
"""
AUGUST_ITEM = "a644dd04d18f4592b7d36705f93270d8"
MAY_ITEM = "b644dd04d18f4592b7d36705f93270d9"
# The shape of the Hub Search API's answer (OGC API - Records items, GeoJSON), trimmed.
ONS_SEARCH = json.dumps(
    {
        "type": "FeatureCollection",
        "features": [
            {
                "id": "c0ffee04d18f4592b7d36705f93270d8",
                "type": "Feature",
                "properties": {"title": "ONS Postcode Directory (August 2020) User Guide", "type": "PDF"},
            },
            {
                "id": AUGUST_ITEM,
                "type": "Feature",
                "geometry": None,
                "properties": {"title": "ONS Postcode Directory (August 2020)", "type": "CSV Collection"},
            },
            {"id": MAY_ITEM, "type": "Feature", "properties": {"title": "ONS Postcode Directory (May 2020)"}},
        ],
        "numberMatched": 3,
        "numberReturned": 3,
    }
).encode()


def test_listing_hmrc() -> None:
    settings = listing.LISTINGS["hmrc.exporters"]
    new = listing.new_file(
        HMRC_PAGE, settings.listing_url, ["source/hmrc/exporters/exporters1702.zip"], settings
    )
    assert new == listing.NewFile(
        url="https://www.uktradeinfo.com/Statistics/Documents/Data%20Downloads/exporters1703.zip",
        date=date(2017, 3, 1),
        stored_name="exporters1703.zip",
    )
    assert (
        listing.new_file(
            HMRC_PAGE, settings.listing_url, ["source/hmrc/exporters/exporters1703.zip"], settings
        )
        is None
    )


def test_listing_companies_house() -> None:
    settings = listing.LISTINGS["companies_house.accounts_legacy"]
    assert settings.listing_url == "http://download.companieshouse.gov.uk/en_accountsdata.html"
    files = listing.online_files(CH_PAGE, settings.listing_url, settings)
    assert [file.date for file in files] == [date(2017, 6, 20), date(2017, 6, 17)]
    new = listing.new_file(CH_PAGE, settings.listing_url, ["Accounts_Bulk_Data-2017-06-17.zip"], settings)
    assert new is not None
    assert new.url == "http://download.companieshouse.gov.uk/Accounts_Bulk_Data-2017-06-20.zip"
    assert new.stored_name == "Accounts_Bulk_Data-2017-06-20.zip"
    assert (
        listing.new_file(CH_PAGE, settings.listing_url, ["Accounts_Bulk_Data-2017-06-20.zip"], settings)
        is None
    )
    # Nothing stored yet: the newest is new.
    first = listing.new_file(CH_PAGE, settings.listing_url, [], settings)
    assert first is not None and first.stored_name == "Accounts_Bulk_Data-2017-06-20.zip"


def test_listing_ons_from_the_hub_search_api() -> None:
    settings = listing.LISTINGS["ons.postcode_directory"]
    assert settings.listing_url.startswith("https://geoportal.statistics.gov.uk/api/search/v1/collections/")
    new = listing.new_file(
        ONS_SEARCH,
        settings.listing_url,
        ["datastore/datasets/ons/postcode_directory/ONSPD_MAY_2020_UK.zip"],
        settings,
    )
    assert new == listing.NewFile(
        url=f"https://www.arcgis.com/sharing/rest/content/items/{AUGUST_ITEM}/data",
        date=date(2020, 8, 1),
        stored_name="ONSPD_AUG_2020_UK.zip",
    )
    assert listing.new_file(ONS_SEARCH, settings.listing_url, ["ONSPD_AUG_2020_UK.zip"], settings) is None


def test_listing_ons_other_arcgis_answer_shapes() -> None:
    settings = listing.ONS_POSTCODE_DIRECTORY
    portal = json.dumps(
        {"total": 1, "results": [{"id": MAY_ITEM, "title": "ONS Postcode Directory (May 2020)"}]}
    )
    hub_v3 = json.dumps(
        {"data": [{"id": f"{MAY_ITEM}_0", "attributes": {"name": "ONS Postcode Directory (May 2020)"}}]}
    )
    for body in (portal, hub_v3):
        (file,) = listing.online_files(body.encode(), settings.listing_url, settings)
        assert file == listing.OnlineFile(
            f"https://www.arcgis.com/sharing/rest/content/items/{MAY_ITEM}/data", date(2020, 5, 1)
        )
    with pytest.raises(listing.ListingError) as caught:
        listing.online_files(b"<html>maintenance</html>", settings.listing_url, settings)
    assert caught.value.kind == "bad_listing"


def test_listing_rules() -> None:
    settings = listing.HMRC_EXPORTERS
    with pytest.raises(listing.ListingError) as caught:
        listing.online_files(b"<html><a href='/other.zip'>x</a></html>", settings.listing_url, settings)
    assert caught.value.kind == "no_links"
    with pytest.raises(listing.ListingError) as caught:
        listing.online_files(b"", settings.listing_url, settings)
    assert caught.value.kind == "no_links"
    with pytest.raises(listing.ListingError) as caught:
        listing.online_files(b"<a href='/d/exporters1713.zip'>13th month</a>", settings.listing_url, settings)
    assert caught.value.kind == "bad_date"

    assert listing.latest_stored(
        ["exporters1611.zip", "x/exporters1702.zip", "readme.txt"], settings
    ) == date(2017, 2, 1)
    assert listing.latest_stored([], settings) is None
    assert listing.is_new(date(2017, 6, 20), None)
    assert listing.is_new(date(2017, 6, 20), date(2017, 6, 19))
    assert not listing.is_new(date(2017, 6, 20), date(2017, 6, 20))
    assert not listing.is_new(date(2017, 6, 20), date(2017, 6, 21))
    assert listing.stored_name(listing.ONS_POSTCODE_DIRECTORY, date(2024, 5, 1)) == "ONSPD_MAY_2024_UK.zip"
    assert listing.stored_name(settings, date(2017, 3, 1)) == "exporters1703.zip"
