"""The activity lake: one XML + nested-JSON record per activity, named by the identifier's SHA-1."""

import hashlib
import json
from pathlib import Path

import pytest
from lxml import etree

from ecr_pipelines.iati.flatten import flatten_file
from ecr_pipelines.iati.lake import (
    LakeError,
    LakeParseError,
    LakeRecord,
    activity_json,
    identifier_stem,
    iter_lake_records,
    main,
)
from ecr_pipelines_tests.iati.iati_samples import SAMPLES

EDGE_CASES = """<?xml version="1.0" encoding="UTF-8"?>
<iati-activities version="2.03" xmlns:usg="http://foreignassistance.gov/iati#">
  <!-- root comment -->
  <iati-activity last-updated-datetime="2014-09-10T07:15:37Z" xml:lang="en">
    <!--Test floating text-->
    Floating text
    <iati-identifier attribute=''> ACT-1
</iati-identifier>
    <?xml-processing-instruction version="1.0"?>
    <!-- -->
    <title>
      <narrative>Activity title</narrative>
      <narrative xml:lang="fr">Titre de l'activité</narrative>
      <narrative xml:lang="es"/>
    </title>
    <transaction/>
    <usg:treasury-main-account code="95"/>
  </iati-activity>
</iati-activities>
""".encode()


def records(xml: bytes) -> list[LakeRecord]:
    return list(iter_lake_records(xml))


def test_identifier_stem_is_sha1_of_the_identifier() -> None:
    assert identifier_stem("cat") == "9d989e8d27dc9e0ec3389fc855f142c3d40f0c50"


def test_edge_cases_record() -> None:
    [record] = records(EDGE_CASES)
    assert record.identifier == "ACT-1"
    assert record.stem == hashlib.sha1(b"ACT-1").hexdigest()
    # No XML declaration, the root's namespace declaration copied on, comments/PIs and tail kept.
    assert (
        record.xml
        == (
            '<iati-activity xmlns:usg="http://foreignassistance.gov/iati#" '
            'last-updated-datetime="2014-09-10T07:15:37Z" xml:lang="en">\n'
            "    <!--Test floating text-->\n"
            "    Floating text\n"
            '    <iati-identifier attribute=""> ACT-1\n</iati-identifier>\n'
            '    <?xml-processing-instruction version="1.0"?>\n'
            "    <!-- -->\n"
            "    <title>\n"
            "      <narrative>Activity title</narrative>\n"
            '      <narrative xml:lang="fr">Titre de l\'activité</narrative>\n'
            '      <narrative xml:lang="es"/>\n'
            "    </title>\n"
            "    <transaction/>\n"
            '    <usg:treasury-main-account code="95"/>\n'
            "  </iati-activity>\n"
        ).encode()
    )
    assert record.json_text == (
        '{"iati-activity": [{"@last-updated-datetime": "2014-09-10T07:15:37Z", "@xml:lang": "en", '
        '"text()": "Floating text", '
        '"comment()": [{"text()": "Test floating text"}, {}], '
        '"iati-identifier": [{"@attribute": "", "text()": " ACT-1\\n"}], '
        '"PI()": [{"text()": "version=\\"1.0\\""}], '
        '"title": [{"narrative": [{"text()": "Activity title"}, '
        '{"@xml:lang": "fr", "text()": "Titre de l\'activité"}, {"@xml:lang": "es", "text()": ""}]}], '
        '"transaction": [{}], '
        '"{http://foreignassistance.gov/iati#}treasury-main-account": [{"@code": "95"}]}]}'
    )


def test_json_of_recovered_undeclared_prefix_keeps_the_literal_name() -> None:
    # Only reachable through a recovering parser (the lake itself parses strictly).
    root = etree.fromstring(
        b"<iati-activities><iati-activity><sida:title>Tanzania</sida:title></iati-activity></iati-activities>",
        etree.XMLParser(recover=True),
    )
    assert json.loads(activity_json(root[0])) == {"iati-activity": [{"sida:title": [{"text()": "Tanzania"}]}]}


def test_activities_without_identifier_are_skipped_and_counted() -> None:
    lake = iter_lake_records(
        b"""<iati-activities>
        <iati-activity><iati-identifier/></iati-activity>
        <iati-activity><iati-identifier>  \n </iati-identifier></iati-activity>
        <iati-activity><title/></iati-activity>
        <iati-activity><iati-identifier>\n  GB-1-2\n</iati-identifier></iati-activity>
        </iati-activities>"""
    )
    assert [record.identifier for record in lake] == ["GB-1-2"]
    assert lake.skipped == 3
    for path in SAMPLES.glob("schema-tests/*.xml"):
        lake = iter_lake_records(path)
        assert list(lake) == []
        assert lake.skipped == 1


def test_identifier_is_the_first_text_node_without_newlines() -> None:
    [first, second] = records(
        b"""<iati-activities>
        <iati-activity><iati-identifier>XI-IATI-01
PROVISION_359&#13;</iati-identifier></iati-activity>
        <iati-activity><iati-identifier/><iati-identifier>SECOND</iati-identifier>
          <iati-identifier>THIRD</iati-identifier></iati-activity>
        </iati-activities>"""
    )
    # \r removed as well, so the stem matches the flattened identifier the Solr stage hashes.
    assert first.identifier == "XI-IATI-01PROVISION_359"
    assert second.identifier == "SECOND"


def test_duplicate_identifiers_give_one_record_each() -> None:
    got = records(
        b"""<iati-activities><iati-activity><iati-identifier>D</iati-identifier><title/></iati-activity>
        <iati-activity><iati-identifier>D</iati-identifier></iati-activity></iati-activities>"""
    )
    assert [r.stem for r in got] == [identifier_stem("D")] * 2
    assert got[0].xml != got[1].xml


def test_tail_is_complete_even_across_read_buffers() -> None:
    tail = "\n" + " " * 200_000
    activity = "<iati-activity><iati-identifier>T</iati-identifier></iati-activity>"
    [record] = records(f"<iati-activities>{activity}{tail}</iati-activities>".encode())
    assert record.xml == f"{activity}{tail}".encode()


def test_nested_activity_stays_inside_its_parent() -> None:
    got = records(
        b"<iati-activities><iati-activity><iati-identifier>OUT</iati-identifier>"
        b"<iati-activity><iati-identifier>IN</iati-identifier></iati-activity></iati-activity></iati-activities>"
    )
    assert [r.identifier for r in got] == ["IN", "OUT"]
    assert b"<iati-identifier>IN</iati-identifier>" in got[1].xml


@pytest.mark.parametrize(
    "name",
    [
        "official/activity-standard-example-annotated.xml",
        "real-world/3fi-activity.xml",
        "real-world/fcdo-activity.xml",
        "real-world/beis-activity.xml",
        "real-world/gdihub-activity.xml",
    ],
)
def test_samples_agree_with_flatten(name: str) -> None:
    path = SAMPLES / name
    lake = iter_lake_records(path)
    got = list(lake)
    assert lake.skipped == 0
    assert [r.identifier for r in got] == [a["iati_identifier"] for a in flatten_file(path)]
    for record in got:
        element = etree.fromstring(record.xml)
        assert element.tag == "iati-activity"
        assert element.findtext("iati-identifier").strip() == record.identifier
        assert list(json.loads(record.json_text)) == ["iati-activity"]
        assert "{http://www.w3.org/XML/1998/namespace}" not in record.json_text


def test_non_iati_root_raises() -> None:
    with pytest.raises(LakeError, match="Non-IATI XML"):
        list(iter_lake_records(SAMPLES / "official/organisation-standard-example-annotated.xml"))
    with pytest.raises(LakeError, match="Non-IATI XML"):
        records(b"<foo><iati-activity><iati-identifier>A</iati-identifier></iati-activity></foo>")


@pytest.mark.parametrize(
    "xml",
    [
        b"<iati-activities><iati-activity><iati-identifier>A</iati-identifier></iati-activities>",
        b"<iati-activities><iati-activity><sida:title/></iati-activity></iati-activities>",
        b"",
        # Entity declarations are refused outright (xmlsafe), even harmless-looking ones.
        b'<!DOCTYPE x [<!ENTITY e "boom">]><iati-activities><iati-activity>'
        b"<iati-identifier>&e;</iati-identifier></iati-activity></iati-activities>",
    ],
)
def test_malformed_xml_raises_parse_error(xml: bytes) -> None:
    with pytest.raises(LakeParseError):
        records(xml)


def test_main_prints_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "edge.xml"
    path.write_bytes(EDGE_CASES)
    assert main([str(path)]) == 0
    [printed] = json.loads(capsys.readouterr().out)
    assert printed["identifier"] == "ACT-1"
    assert printed["stem"] == identifier_stem("ACT-1")
    assert printed["json"]["iati-activity"][0]["@xml:lang"] == "en"
