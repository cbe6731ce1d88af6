"""The Darwin Core Archive (dwc) kind: GBIF extension definitions, the legacy's field → term
mapping and row rules, meta.xml, eml.xml and gbif.json, streamed against the stand-in CKAN."""

import csv
import io
import json
import os
import re
import time
import uuid
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from ecr_pipelines.ckan import dwc
from ecr_pipelines.ckan.cli import main
from ecr_pipelines.ckan.datastore import DatastoreError
from ecr_pipelines.ckan.dwc import (
    ArchivePlan,
    DwcConfig,
    DwcConfigError,
    camel_case,
    cell,
    check_eml_template,
    default_dwc_config,
    dwc_config_from_mapping,
    extension_objects,
    load_dwc_config,
)
from ecr_pipelines.ckan.gbif_extensions import (
    ExtensionError,
    ExtensionSet,
    _parser,
    bundled_extension,
    bundled_names,
    load_extension,
    parse_extension,
    uncamel,
)
from ecr_pipelines.ckan.package import (
    BadRequest,
    PackageReport,
    open_package,
    store_package,
    validate_request,
    write_package,
)
from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.ckan import CkanStandIn, Table, rows_table
from ecr_pipelines.lib.blobstore import LocalBlobStore
from ecr_pipelines.lib.http import make_session
from ecr_pipelines.lib.scratch import scratch_root

DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"

# The legacy's test resource (test_dwc_archive_package_task.py), media as JSON text.
LEGACY_FIELDS = [
    "_id",
    "type",
    "basisOfRecord",
    "Event date",
    "measurementRemarks",
    "unknownField",
    "lesserKnownField",
    "associatedMedia",
]
LEGACY_RECORDS = [
    {
        "_id": 1,
        "type": "row 1 type",
        "basisOfRecord": "row 1 basis of record",
        "Event date": "row 1 event date",
        "measurementRemarks": "row 1 measurement remarks",
        "unknownField": "row 1 unknown field",
        "lesserKnownField": "row 1 lesser known field",
        "associatedMedia": json.dumps(
            [
                {"type": "row 1 assocmed type 1", "mime": "row 1 assocmed format 1"},
                {"mime": "row 1 assocmed format 2", "type": "row 1 assocmed type 2"},
                {},
            ]
        ),
    },
    {
        "_id": 2,
        "type": "row 2 type",
        "basisOfRecord": "row 2 basis of record",
        "Event date": "row 2 event date",
        "measurementRemarks": "row 2 measurement remarks",
        "unknownField": "row 2 unknown field",
        "lesserKnownField": "row 2 lesser known field",
        "associatedMedia": json.dumps({"type": "row 2 assocmed type 1", "mime": "row 2 assocmed format 1"}),
    },
]
LEGACY_CONFIG_YAML = """\
id_field: _id
dynamic_term: dynamicProperties
core_extension: dwc_occurrence.xml
additional_extensions: [measurements_or_facts.xml]
extension_fields:
  associatedMedia:
    extension: multimedia.xml
    fields:
      type: assocmed default type
      format: assocmed default format
    mappings: {format: mime}
    prefixes: {format: "image/"}
"""
SECTION = (
    'encoding="UTF-8" linesTerminatedBy="\\n" fieldsTerminatedBy="," fieldsEnclosedBy="&quot;" '
    'ignoreHeaderLines="1"'
)
LEGACY_META_XML = f"""\
<archive xmlns="http://rs.tdwg.org/dwc/text/">
  <core {SECTION} rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files>
      <location>occurrence.csv</location>
    </files>
    <id index="0"/>
    <field index="1" term="http://purl.org/dc/terms/type"/>
    <field index="2" term="http://rs.tdwg.org/dwc/terms/basisOfRecord"/>
    <field index="3" term="http://rs.tdwg.org/dwc/terms/eventDate"/>
    <field index="4" term="http://rs.tdwg.org/dwc/terms/dynamicProperties"/>
  </core>
  <extension {SECTION} rowType="http://rs.tdwg.org/dwc/terms/MeasurementOrFact">
    <files>
      <location>measurement_or_fact.csv</location>
    </files>
    <coreid index="0"/>
    <field index="1" term="http://rs.tdwg.org/dwc/terms/measurementRemarks"/>
  </extension>
  <extension {SECTION} rowType="http://rs.gbif.org/terms/1.0/Multimedia">
    <files>
      <location>multimedia.csv</location>
    </files>
    <coreid index="0"/>
    <field index="1" term="http://purl.org/dc/terms/type"/>
    <field index="2" term="http://purl.org/dc/terms/format"/>
  </extension>
</archive>
"""


@pytest.fixture
def ckan(standin: StandInServer) -> CkanStandIn:
    return CkanStandIn(standin)


@pytest.fixture
def legacy_config(tmp_path: Path) -> DwcConfig:
    path = tmp_path / "config" / "dwc.yaml"
    path.parent.mkdir()
    path.write_text(LEGACY_CONFIG_YAML)
    return load_dwc_config(path)


def session() -> Any:
    return make_session(retries=0, backoff=0)


def fields_of(names: list[str]) -> list[dict[str, str]]:
    return [{"id": name, "type": "int" if name == "_id" else "text"} for name in names]


def dwc_request(ckan: CkanStandIn, **params: Any) -> Any:
    return validate_request("dwc", {"api_url": ckan.api_url, "email": "someone@example.org", **params})


def build(
    ckan: CkanStandIn,
    tmp_path: Path,
    records: list[dict[str, Any]],
    config: DwcConfig | None = None,
    fields: list[str] | None = None,
    **params: Any,
) -> tuple[list[str], dict[str, bytes], PackageReport]:
    """The archive of ``records`` (served as resource ``r``): entry names in ZIP order, contents."""
    ckan.add_table("r", rows_table(records, fields_of(fields or list(records[0]))))
    target = tmp_path / f"dwc-{uuid.uuid4().hex}.zip"
    page_size = params.pop("page_size", 1000)
    report = write_package(
        dwc_request(ckan, resource_id="r", **params),
        session(),
        target,
        page_size=page_size,
        dwc_config=config,
    )
    with zipfile.ZipFile(target) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        return names, {name: archive.read(name) for name in names}, report


def rows(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode("utf-8"), newline="")))


# -- extension definitions -------------------------------------------------------------------------
def test_the_bundled_extension_definitions() -> None:
    assert bundled_names() == ["dwc_occurrence.xml", "measurements_or_facts.xml", "multimedia.xml"]
    occurrence = bundled_extension("dwc_occurrence.xml")
    facts = bundled_extension("measurements_or_facts.xml")
    media = bundled_extension("multimedia.xml")
    assert (occurrence.name, occurrence.row_type) == ("Occurrence", f"{DWC}Occurrence")
    assert (facts.name, facts.row_type) == ("MeasurementOrFact", f"{DWC}MeasurementOrFact")
    assert (media.name, media.row_type) == ("Multimedia", "http://rs.gbif.org/terms/1.0/Multimedia")
    assert facts.term_names == [
        "measurementID",
        "measurementType",
        "measurementValue",
        "measurementAccuracy",
        "measurementUnit",
        "measurementDeterminedDate",
        "measurementDeterminedBy",
        "measurementMethod",
        "measurementRemarks",
    ]
    assert all(t.qual_name == f"{DWC}{t.name}" for t in facts.terms)
    assert len(occurrence.terms) == 162
    assert occurrence.term_names[:5] == ["type", "modified", "language", "rights", "rightsHolder"]
    assert occurrence.term_names[-1] == "taxonRemarks"
    assert occurrence.term("type").qual_name == f"{DC}type"  # type: ignore[union-attr]
    assert occurrence.term("eventDate").qual_name == f"{DWC}eventDate"  # type: ignore[union-attr]
    assert occurrence.term("dynamicProperties").qual_name == f"{DWC}dynamicProperties"  # type: ignore[union-attr]
    assert [t.name for t in occurrence.terms if t.required] == ["basisOfRecord"]
    assert media.term_names[:3] == ["type", "format", "identifier"] and media.term("license") is not None
    assert [e.file_name for e in (occurrence, facts, media)] == [
        "occurrence.csv",
        "measurement_or_fact.csv",
        "multimedia.csv",
    ]


def test_the_core_is_the_first_extension_and_the_first_definition_of_a_term_wins() -> None:
    media = bundled_extension("multimedia.xml")
    occurrence = bundled_extension("dwc_occurrence.xml")
    both = ExtensionSet([occurrence, media])
    assert both.core is occurrence and both.is_core(occurrence) and not both.is_core(media)
    assert both.lookup("type")[0] is occurrence  # type: ignore[index]  # in both: the core's
    assert both.lookup("format")[0] is media  # type: ignore[index]
    assert both.lookup("nope") is None and "eventDate" in both
    assert ExtensionSet([media, occurrence]).lookup("type")[0] is media  # type: ignore[index]
    with pytest.raises(ExtensionError):
        ExtensionSet([])


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("Occurrence", "occurrence"),
        ("MeasurementOrFact", "measurement_or_fact"),
        ("Multimedia", "multimedia"),
        ("ChronometricAge", "chronometric_age"),
        ("DNADerivedData", "dnaderived_data"),
        ("../Evil Name", "____evil__name"),
    ],
)
def test_extension_file_names(name: str, file: str) -> None:
    assert uncamel(name) == file


def test_extension_parsing_resolves_no_entity_and_fetches_nothing(
    standin: StandInServer, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    external = f"""<?xml version="1.0"?>
<!DOCTYPE extension SYSTEM "{standin.url("/extension.dtd")}" [
  <!ENTITY file SYSTEM "file://{secret}">
  <!ENTITY remote SYSTEM "{standin.url("/entity.txt")}">
]>
<extension xmlns="http://rs.gbif.org/extension/" name="Thing" rowType="urn:thing">
  <property name="a" qualName="urn:a" required="true">&file;&remote;</property>
</extension>""".encode()
    extension = parse_extension(external, "external.xml")
    assert extension.name == "Thing" and extension.terms[0].required
    root = etree.fromstring(external, _parser())
    assert b"TOP SECRET" not in etree.tostring(root)
    assert standin.requests == []  # neither the DTD nor the entity was asked for
    entities = "".join(f'<!ENTITY e{n + 1} "{f"&e{n};" * 10}">' for n in range(8))
    bomb = f"""<?xml version="1.0"?>
<!DOCTYPE extension [<!ENTITY e0 "ha">{entities}]>
<extension name="Bomb" rowType="urn:b"><property name="&e8;" qualName="urn:q"/></extension>""".encode()
    with pytest.raises(ExtensionError, match="bomb.xml"):
        parse_extension(bomb, "bomb.xml")
    with pytest.raises(ExtensionError, match="no name or no rowType"):
        parse_extension(b"<extension><property name='a' qualName='b'/></extension>", "x")
    with pytest.raises(ExtensionError, match="not a well-formed"):
        parse_extension(b"<extension", "x")
    with pytest.raises(ExtensionError, match="cannot read"):
        load_extension("no_such_extension.xml")


def test_an_extension_by_path_without_a_namespace(tmp_path: Path) -> None:
    (tmp_path / "plain.xml").write_text(
        '<extension name="Plain" rowType="urn:plain"><property name="a" qualName="urn:a"/></extension>'
    )
    extension = load_extension("plain.xml", tmp_path)
    assert (extension.name, extension.term_names, extension.source) == (
        "Plain",
        ["a"],
        str(tmp_path / "plain.xml"),
    )
    assert load_extension(str(tmp_path / "plain.xml")) == extension


# -- mapping and values ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "camel"),
    [
        ("Event date", "eventDate"),
        ("Taxon resource ID", "taxonResourceID"),
        ("unknownField", "unknownfield"),
        ("lesserKnownField", "lesserknownfield"),
        ("  country   code ", "countryCode"),
        ("GUID", "GUID"),
        ("DNA sequence", "DNASequence"),
        ("", ""),
    ],
)
def test_camel_case(field: str, camel: str) -> None:
    assert camel_case(field) == camel


def test_where_fields_go(legacy_config: DwcConfig) -> None:
    plan = ArchivePlan(legacy_config, [*LEGACY_FIELDS, "Scientific name", "country Code", "catalogNumber"])
    assert plan.term_map() == {
        "Occurrence": [
            "_id",
            "type",
            "basisOfRecord",
            "eventDate",
            "dynamicProperties",
            "scientificName",
            "countryCode",
            "catalogNumber",
        ],
        "MeasurementOrFact": ["_id", "measurementRemarks"],
        "Multimedia": ["_id", "type", "format"],
    }
    # Only the core when nothing else matches; the id field is never mapped.
    assert ArchivePlan(legacy_config, ["_id", "catalogNumber"]).term_map() == {
        "Occurrence": ["_id", "catalogNumber"]
    }
    assert ArchivePlan(legacy_config, ["_id"]).term_map() == {"Occurrence": ["_id"]}


def test_values() -> None:
    assert cell(None) == "" and cell(Decimal("1.25")) == 1.25 and cell(3) == 3
    assert cell({"é": [1, None]}) == '{"é": [1, null]}'
    assert extension_objects(None) == [] and extension_objects("plain text") == []
    assert extension_objects('"json text"') == [] and extension_objects("42") == []
    assert extension_objects("[1, {}, null]") == [{}] and extension_objects('{"a": 1}') == [{"a": 1}]
    assert extension_objects([{"a": 1}, "x"]) == [{"a": 1}] and extension_objects({"b": 2}) == [{"b": 2}]


def test_dynamic_properties(ckan: CkanStandIn, tmp_path: Path, legacy_config: DwcConfig) -> None:
    records = [
        {
            "_id": 1,
            "catalogNumber": "C1",
            "unknownField": "plain",
            "Taxon resource ID": None,
            "As json": '{"b": [1, 2], "a": "x"}',
            "number text": "12",
            "not a number": "NaN",
            "Ünïcode": "café",
        },
        {
            "_id": 2,
            "catalogNumber": "C2",
            "unknownField": None,
            "Taxon resource ID": "T-9",
            "As json": None,
            "number text": None,
            "not a number": None,
            "Ünïcode": None,
        },
        {"_id": 3, "catalogNumber": "C3"},  # every leftover missing
    ]
    names, files, _ = build(ckan, tmp_path, records, legacy_config)
    assert names == ["occurrence.csv", "meta.xml"]
    text = files["occurrence.csv"].decode()
    table = rows(files["occurrence.csv"])
    assert table[0] == ["_id", "catalogNumber", "dynamicProperties"]
    assert json.loads(table[1][2]) == {
        "unknownfield": "plain",
        "asJson": {"a": "x", "b": [1, 2]},
        "numberText": 12,
        "notANumber": "NaN",
        "ünïcode": "café",
    }
    assert '"ünïcode": "café"' in table[1][2] and "\\u" not in text  # not escaped
    assert table[1][2].startswith('{"asJson": {"a": "x", "b": [1, 2]}, "notANumber"')  # sorted keys
    assert table[2] == ["2", "C2", '{"taxonResourceID": "T-9"}']
    assert table[3] == ["3", "C3", ""]


def test_the_legacy_archive(ckan: CkanStandIn, tmp_path: Path, legacy_config: DwcConfig) -> None:
    names, files, report = build(ckan, tmp_path, LEGACY_RECORDS, legacy_config, page_size=1)
    assert names == ["occurrence.csv", "measurement_or_fact.csv", "multimedia.csv", "meta.xml"]
    core = rows(files["occurrence.csv"])
    assert core[0] == ["_id", "type", "basisOfRecord", "eventDate", "dynamicProperties"]
    assert core[1] == [
        "1",
        "row 1 type",
        "row 1 basis of record",
        "row 1 event date",
        '{"lesserknownfield": "row 1 lesser known field", "unknownfield": "row 1 unknown field"}',
    ]
    assert core[2][:4] == ["2", "row 2 type", "row 2 basis of record", "row 2 event date"]
    assert json.loads(core[2][4]) == {
        "unknownfield": "row 2 unknown field",
        "lesserknownfield": "row 2 lesser known field",
    }
    assert len(core) == 3
    assert rows(files["measurement_or_fact.csv"]) == [
        ["_id", "measurementRemarks"],
        ["1", "row 1 measurement remarks"],
        ["2", "row 2 measurement remarks"],
    ]
    assert rows(files["multimedia.csv"]) == [
        ["_id", "type", "format"],
        ["1", "row 1 assocmed type 1", "image/row 1 assocmed format 1"],
        ["1", "row 1 assocmed type 2", "image/row 1 assocmed format 2"],
        ["1", "assocmed default type", "assocmed default format"],  # {}: the defaults
        ["2", "row 2 assocmed type 1", "image/row 2 assocmed format 1"],
    ]
    assert files["meta.xml"].decode() == LEGACY_META_XML
    assert all(content.endswith(b"\n") and b"\r" not in content for content in files.values())
    assert (report.kind, report.entry, report.rows, report.fields) == (
        "dwc",
        "occurrence.csv",
        2,
        LEGACY_FIELDS,
    )
    assert report.calls == 1 + 2 + 1 and report.paging == "offset"  # description, 2 pages, the empty one


def test_extension_rows_from_nested_objects(ckan: CkanStandIn, tmp_path: Path) -> None:
    # The bundled (NHM) configuration; media as a json column (lists and objects, not text).
    records = [
        {
            "_id": 10,
            "catalogNumber": "A, with comma",
            "associatedMedia": [
                {"identifier": "http://x/1.jpg", "mime": "png", "title": 'say "cheese"', "license": None},
                {"format": "image/tiff", "mime": "", "rightsHolder": "NHM"},
                {},
            ],
        },
        {
            "_id": 11,
            "catalogNumber": "B",
            "associatedMedia": {"identifier": "http://x/2.jpg", "type": "Sound"},
        },
        {"_id": 12, "catalogNumber": "C", "associatedMedia": None},
        {"_id": 13, "catalogNumber": "D", "associatedMedia": "not json"},
        {"_id": 14, "catalogNumber": "E", "associatedMedia": []},
    ]
    names, files, report = build(ckan, tmp_path, records)
    assert names == ["occurrence.csv", "multimedia.csv", "meta.xml"]
    licence = "http://creativecommons.org/licenses/by/4.0/"
    assert rows(files["multimedia.csv"]) == [
        ["_id", "type", "format", "identifier", "title", "license", "rightsHolder"],
        ["10", "StillImage", "image/png", "http://x/1.jpg", 'say "cheese"', licence, ""],
        ["10", "StillImage", "image/tiff", "", "", licence, "NHM"],  # its own format, unprefixed
        ["10", "StillImage", "image/jpeg", "", "", licence, ""],  # defaults, unprefixed
        ["11", "Sound", "image/jpeg", "http://x/2.jpg", "", licence, ""],
    ]
    assert b'"say ""cheese"""' in files["multimedia.csv"]
    assert rows(files["occurrence.csv"]) == [
        ["_id", "catalogNumber"],
        ["10", "A, with comma"],
        ["11", "B"],
        ["12", "C"],
        ["13", "D"],
        ["14", "E"],
    ]
    assert report.rows == 5


@pytest.mark.parametrize("media", [None, "", "plain text", "42", '"text"', "[1, 2]", "{not json"])
def test_media_that_are_not_objects_give_no_rows_and_no_file(
    ckan: CkanStandIn, tmp_path: Path, legacy_config: DwcConfig, media: Any
) -> None:
    records = [
        {**LEGACY_RECORDS[0], "associatedMedia": media},
        {**LEGACY_RECORDS[1], "associatedMedia": media},
    ]
    names, files, _ = build(ckan, tmp_path, records, legacy_config)
    assert names == ["occurrence.csv", "measurement_or_fact.csv", "meta.xml"]
    meta = files["meta.xml"].decode()
    assert "multimedia.csv" not in meta and "Multimedia" not in meta
    without_media = re.sub(
        r'  <extension [^\n]*Multimedia">\n.*?  </extension>\n', "", LEGACY_META_XML, flags=re.S
    )
    assert meta == without_media and "MeasurementOrFact" in without_media
    assert len(rows(files["occurrence.csv"])) == 3


def test_several_fields_into_one_extension_repeat_the_shorter_list(tmp_path: Path) -> None:
    config = dwc_config_from_mapping(
        {
            "additional_extensions": ["measurements_or_facts.xml"],
            "extension_fields": {
                "facts": {
                    "extension": "measurements_or_facts.xml",
                    "fields": {"measurementType": "", "measurementValue": None},
                    "mappings": {"measurementType": "kind", "measurementValue": "value"},
                }
            },
        }
    )
    plan = ArchivePlan(config, ["_id", "measurementRemarks", "facts"])
    assert plan.term_map()["MeasurementOrFact"] == [
        "_id",
        "measurementRemarks",
        "measurementType",
        "measurementValue",
    ]
    record = {
        "_id": 5,
        "measurementRemarks": "r",
        "facts": [{"kind": "length", "value": 3}, {"kind": "mass"}],
    }
    assert list(plan.rows(record)) == [(0, [5]), (1, [5, "r", "length", 3]), (1, [5, "r", "mass", ""])]
    # A plain field alone still gives a row; no objects and no plain field: no row.
    assert list(plan.rows({"_id": 6, "facts": None})) == [(0, [6]), (1, [6, "", "", ""])]
    only_objects = ArchivePlan(config, ["_id", "facts"])
    assert list(only_objects.rows({"_id": 7, "facts": []})) == [(0, [7])]


def test_eml_and_gbif_json(ckan: CkanStandIn, tmp_path: Path, legacy_config: DwcConfig) -> None:
    template = (
        '<eml:eml packageId="{package_id}" xmlns:eml="eml://ecoinformatics.org/eml-2.1.1">'
        "<dataset><pubDate>{pub_date}</pubDate><stamp>{date_stamp}</stamp>"
        "<literal>{{braces}}</literal></dataset></eml:eml>"
    )
    before = time.time()
    names, files, _ = build(ckan, tmp_path, LEGACY_RECORDS, legacy_config, eml=template, for_gbif="true")
    assert names[-3:] == ["meta.xml", "eml.xml", "gbif.json"]
    assert files["meta.xml"].startswith(
        b'<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">\n'
    )
    eml = files["eml.xml"].decode()
    match = re.fullmatch(
        r'<eml:eml packageId="([0-9a-f-]{36})" xmlns:eml="eml://ecoinformatics.org/eml-2.1.1">'
        r"<dataset><pubDate>(\d{4}-\d\d-\d\d)</pubDate><stamp>(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)</stamp>"
        r"<literal>\{braces\}</literal></dataset></eml:eml>",
        eml,
    )
    assert match is not None, eml
    assert uuid.UUID(match.group(1)).version == 4 and match.group(3).startswith(match.group(2))
    stamp = json.loads(files["gbif.json"])
    assert list(stamp) == ["time"] and isinstance(stamp["time"], float)
    assert before - 1 <= stamp["time"] <= time.time() + 1
    names, files, _ = build(ckan, tmp_path, LEGACY_RECORDS, legacy_config, for_gbif="false")
    assert "gbif.json" not in names and "eml.xml" not in names
    assert files["meta.xml"].startswith(b'<archive xmlns="http://rs.tdwg.org/dwc/text/">\n')


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("<eml>{oops}</eml>", "placeholder {oops}"),
        ("<eml>{package_id.__class__}</eml>", "placeholder {package_id.__class__}"),
        ("<eml>{pub_date[0]}</eml>", "placeholder"),
        ("<eml>{}</eml>", "placeholder"),
        ("<eml>{</eml>", "literal braces twice"),
        ("<eml>}</eml>", "literal braces twice"),
        ("<eml>{pub_date:{date_stamp}}</eml>", "nests"),
        ("<eml>{pub_date:%%%}</eml>", "cannot be filled in"),
    ],
)
def test_a_bad_eml_template_is_refused_up_front(ckan: CkanStandIn, template: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        check_eml_template(template)
    with pytest.raises(BadRequest, match=re.escape(reason)):
        dwc_request(ckan, resource_id="r", eml=template)
    assert ckan.searches == []


def test_no_records_no_csv(ckan: CkanStandIn, tmp_path: Path, legacy_config: DwcConfig) -> None:
    ckan.add_table("r", rows_table([], fields_of(LEGACY_FIELDS)))
    report = write_package(
        dwc_request(ckan, resource_id="r"), session(), tmp_path / "e.zip", dwc_config=legacy_config
    )
    with zipfile.ZipFile(tmp_path / "e.zip") as archive:
        assert archive.namelist() == ["meta.xml"]
        assert archive.read("meta.xml") == b'<archive xmlns="http://rs.tdwg.org/dwc/text/"/>\n'
    assert report.rows == 0 and report.fields == LEGACY_FIELDS


def _dwc_scratch() -> list[Path]:
    return [p for p in scratch_root().iterdir() if p.name.startswith(f"{os.getpid()}-ckan-dwc-")]


def media_table(total: int, **kwargs: Any) -> Table:
    """``total`` records, each with two media objects and a leftover field."""
    names = ["_id", "catalogNumber", "Event date", "associatedMedia", "remarks"]

    def row(n: int) -> dict[str, Any]:
        media = [
            {"identifier": f"http://x/{n}/{k}.jpg", "mime": "jpeg", "title": f"Image {k} of {n}"}
            for k in (1, 2)
        ]
        return {
            "_id": n + 1,
            "catalogNumber": f"C-{n:07d}",
            "Event date": f"2020-01-{n % 28 + 1:02d}",
            "associatedMedia": media,
            "remarks": f"remark {n}",
        }

    return Table(fields=fields_of(names), total=total, row=row, **kwargs)


@pytest.mark.parametrize("background", [True, False])
def test_a_ckan_error_mid_stream_stores_nothing(ckan: CkanStandIn, tmp_path: Path, background: bool) -> None:
    ckan.add_table("r", media_table(5000, fail_at_row=3500))
    store = LocalBlobStore(tmp_path / "blobs")
    store.put_bytes("ckan/old.zip", b"the previous package")
    pkg = dwc_request(ckan, resource_id="r")
    with pytest.raises(DatastoreError) as failed:
        store_package(pkg, session(), store, "ckan/new.zip", page_size=1000, background=background)
    assert failed.value.kind == "http_status" and failed.value.status == 500
    with pytest.raises(DatastoreError):
        store_package(pkg, session(), store, "ckan/old.zip", page_size=1000, background=background)
    assert (
        list(store.list()) == ["ckan/old.zip"] and store.get_bytes("ckan/old.zip") == b"the previous package"
    )
    target = tmp_path / "out" / "p.zip"
    target.parent.mkdir()
    with pytest.raises(DatastoreError):
        write_package(pkg, session(), target, page_size=1000, background=background)
    assert list(target.parent.iterdir()) == []
    assert _dwc_scratch() == []  # the extension CSVs went with the failure


def test_a_stream_closed_early_stops_and_cleans_up(ckan: CkanStandIn) -> None:
    ckan.add_table("r", media_table(50_000))
    stream, _ = open_package(dwc_request(ckan, resource_id="r"), session(), page_size=1000)
    assert ckan.searches == []  # nothing is fetched before the first read
    first = stream.read(1000)
    assert first[:4] == b"PK\x03\x04"
    assert len(_dwc_scratch()) == 1
    stream.close()
    asked = len(ckan.data_searches)
    assert asked < 10 and _dwc_scratch() == []
    assert len(ckan.data_searches) == asked


def test_the_archive_streams_while_the_pages_arrive(ckan: CkanStandIn, tmp_path: Path) -> None:
    ckan.add_table("r", media_table(20_000))
    seen: list[int] = []
    stream, report = open_package(
        dwc_request(ckan, resource_id="r"), session(), page_size=1000, progress=lambda r: seen.append(r.rows)
    )
    with stream:
        data = bytearray(stream.read(64 * 1024))
        pages_when_bytes_came = len(ckan.data_searches)
        while piece := stream.read(256 * 1024):
            data += piece
    assert pages_when_bytes_came < 20  # the ZIP began before the last page was asked for
    assert seen == list(range(1000, 20_001, 1000)) and report.rows == 20_000
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as archive:
        assert archive.namelist() == ["occurrence.csv", "multimedia.csv", "meta.xml"]
        assert archive.read("occurrence.csv").count(b"\n") == 20_001
        media = rows(archive.read("multimedia.csv"))
    assert len(media) == 40_001
    assert media[-1] == ["20000", "StillImage", "image/jpeg", "http://x/19999/2.jpg", "Image 2 of 19999"] + [
        "http://creativecommons.org/licenses/by/4.0/",
        "",
    ]


# -- configuration -----------------------------------------------------------------------------------
def test_the_default_configuration_is_the_nhm_deployment() -> None:
    config = load_dwc_config(None)
    assert config is default_dwc_config() and load_dwc_config("") is config
    assert (config.id_field, config.dynamic_term, config.extensions.names) == (
        "_id",
        "dynamicProperties",
        ["Occurrence"],
    )
    media = config.extension_fields["associatedMedia"]
    assert media.extension.name == "Multimedia"
    assert media.defaults == {
        "type": "StillImage",
        "format": "image/jpeg",
        "identifier": "",
        "title": "",
        "license": "http://creativecommons.org/licenses/by/4.0/",
        "rightsHolder": "",
    }
    assert media.mappings == {"format": "mime"} and media.prefixes == {"format": "image/"}


def test_yaml_and_json_configurations(tmp_path: Path, legacy_config: DwcConfig) -> None:
    as_json = tmp_path / "dwc.json"
    import yaml

    as_json.write_text(json.dumps(yaml.safe_load(LEGACY_CONFIG_YAML)))
    config = load_dwc_config(str(as_json))
    assert config.extensions.names == legacy_config.extensions.names == ["Occurrence", "MeasurementOrFact"]
    assert config.extension_fields == legacy_config.extension_fields
    assert config.source == str(as_json)
    # An extension by path, relative to the configuration file.
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs" / "mine.xml").write_bytes(
        b'<extension name="Mine" rowType="urn:mine"><property name="mineTerm" qualName="urn:mine:t"/></extension>'
    )
    (tmp_path / "paths.yaml").write_text("additional_extensions: [defs/mine.xml]\n")
    config = load_dwc_config(tmp_path / "paths.yaml")
    assert config.extensions.names == ["Occurrence", "Mine"] and config.extension_fields == {}
    assert ArchivePlan(config, ["_id", "Mine term"]).term_map()["Mine"] == ["_id", "mineTerm"]


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("missing.yaml", None, "cannot be read"),
        ("bad.yaml", "extension_fields: [unclosed", "not valid YAML"),
        ("bad.json", "{'single': 'quotes'}", "not valid JSON"),
        ("empty.yaml", "", "the file is empty"),
        ("list.yaml", "- a\n- b\n", "the whole file: must be a mapping"),
        ("typo.yaml", "id_feild: _id\n", "unknown key 'id_feild'"),
        ("core.yaml", "core_extension: nope.xml\n", "core_extension: extension definition 'nope.xml'"),
        ("more.yaml", "additional_extensions: measurements_or_facts.xml\n", "must be a list"),
        ("twice.yaml", "additional_extensions: [dwc_occurrence.xml]\n", "Occurrence is already loaded"),
        ("dynamic.yaml", "dynamic_term: dynamicProps\n", "'dynamicProps' is not a term of Occurrence"),
        ("empty_id.yaml", "id_field: ''\n", "id_field: must be a non-empty text"),
        (
            "term.yaml",
            "extension_fields:\n  associatedMedia:\n    extension: multimedia.xml\n    fields: {titel: x}\n",
            "extension_fields.associatedMedia.fields: 'titel' is not a term of Multimedia",
        ),
        (
            "mapping.yaml",
            "extension_fields:\n  m:\n    extension: multimedia.xml\n    fields: {type: x}\n    mappings: {format: mime}\n",
            "extension_fields.m.mappings: 'format' is not one of the terms under fields",
        ),
        (
            "formatters.yaml",
            "extension_fields:\n  m:\n    extension: multimedia.xml\n    fields: {type: x}\n    formatters: {}\n",
            "unknown key 'formatters'",
        ),
        (
            "no_fields.yaml",
            "extension_fields:\n  m:\n    extension: multimedia.xml\n",
            "needs 'extension' (a definition) and 'fields'",
        ),
        (
            "core_ext.yaml",
            "extension_fields:\n  m:\n    extension: dwc_occurrence.xml\n    fields: {type: x}\n",
            "Occurrence is the core extension",
        ),
        (
            "id_ext.yaml",
            "extension_fields:\n  _id:\n    extension: multimedia.xml\n    fields: {type: x}\n",
            "the id field cannot be an extension field",
        ),
        (
            "default.yaml",
            "extension_fields:\n  m:\n    extension: multimedia.xml\n    fields: {created: 2020-01-01}\n",
            "a default must be a plain value",
        ),
    ],
)
def test_a_bad_configuration_says_what_is_wrong(
    tmp_path: Path, name: str, text: str | None, problem: str
) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(DwcConfigError) as failed:
        load_dwc_config(path)
    assert isinstance(failed.value, ValueError)
    assert str(path) in str(failed.value) and problem in str(failed.value), str(failed.value)


# -- the command line --------------------------------------------------------------------------------
def test_the_command_line_builds_a_dwc_archive(
    ckan: CkanStandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CKAN_DWC_CONFIG", raising=False)
    ckan.add_table("res", rows_table(LEGACY_RECORDS, fields_of(LEGACY_FIELDS)))
    config = tmp_path / "dwc.yaml"
    config.write_text(LEGACY_CONFIG_YAML)
    eml = tmp_path / "eml.xml"
    eml.write_text("<eml><pubDate>{pub_date}</pubDate></eml>")
    out = tmp_path / "d.zip"
    argv = ["package", "--kind", "dwc", "--api-url", ckan.api_url, "--resource-id", "res"]
    assert main([*argv, "--dwc-config", str(config), "--eml", str(eml), "--for-gbif", "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == [
            "occurrence.csv",
            "measurement_or_fact.csv",
            "multimedia.csv",
            "meta.xml",
            "eml.xml",
            "gbif.json",
        ]
        assert re.fullmatch(rb"<eml><pubDate>\d{4}-\d\d-\d\d</pubDate></eml>", archive.read("eml.xml"))
        assert len(rows(archive.read("multimedia.csv"))) == 5
    assert "occurrence.csv, 2 rows x 8 fields" in capsys.readouterr().out
    # The configuration from CKAN_DWC_CONFIG; without one, the bundled default (no MoF).
    monkeypatch.setenv("CKAN_DWC_CONFIG", str(config))
    assert main([*argv, "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as archive:
        assert "measurement_or_fact.csv" in archive.namelist()
    monkeypatch.delenv("CKAN_DWC_CONFIG")
    assert main([*argv, "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as archive:
        assert archive.namelist() == ["occurrence.csv", "multimedia.csv", "meta.xml"]
    # Refusals: a bad configuration, a missing EML file, a bad EML template.
    capsys.readouterr()
    bad = tmp_path / "bad.yaml"
    bad.write_text("nope: 1\n")
    assert main([*argv, "--dwc-config", str(bad), "--out", str(tmp_path / "x.zip")]) == 2
    assert "unknown key 'nope'" in capsys.readouterr().err
    assert main([*argv, "--eml", str(tmp_path / "none.xml"), "--out", str(tmp_path / "x.zip")]) == 2
    assert "cannot read the EML template" in capsys.readouterr().err
    eml.write_text("<eml>{title}</eml>")
    assert main([*argv, "--eml", str(eml), "--out", str(tmp_path / "x.zip")]) == 2
    assert "placeholder {title}" in capsys.readouterr().err
    assert not (tmp_path / "x.zip").exists()


def test_the_module_reads_nothing_outside_the_package() -> None:
    package = Path(dwc.__file__).resolve().parent
    sources = [package / "dwc.py", package / "gbif_extensions.py", package / "gbif" / "dwc_default.yaml"]
    assert all("/shared" not in path.read_text() for path in sources)
    assert (package / "gbif" / "SOURCES.md").is_file()
