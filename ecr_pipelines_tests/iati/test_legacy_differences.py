"""Issue 11 item 14: where the IATI pipeline deliberately differs from the legacy refresher
(README, "Differences from the legacy service"), each pinned on a small input: what the refresher
produced, computed the way it computed it, next to what we produce.

* character encodings: the refresher decoded a file (UTF-8, else chardet) and re-encoded it to
  UTF-8 for validation and flattening but kept its ``<?xml ... encoding="..."?>`` declaration, so a
  file declaring a non-UTF-8 encoding was flattened as mojibake (the Solr fields), while the lake
  (``iati_xml`` / ``iati_json``) parsed the raw bytes and was right. A non-Unicode file without a
  declaration failed the lake every minute, forever, and was never indexed;
* clean files: the refresher's rebuild of a partly invalid file moved the valid activities under a
  new root, so the root lost its namespace declarations, each activity declared only the
  namespaces it uses, and the original whitespace after each activity was kept. Ours keeps the
  root's declarations, so rebuilt files look like copied (valid) ones, and separates activities by
  one newline. Flattened activities are the same either way;
* download code 5: the refresher had no size cap (a huge file was read into memory whole).
"""

import io
from pathlib import Path

import pytest
from lxml import etree

from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.iati.blobkeys import source_key
from ecr_pipelines.iati.clean import clean_document
from ecr_pipelines.iati.flatten import flatten_file
from ecr_pipelines.iati.lake import LakeParseError, iter_lake_records
from ecr_pipelines.iati.stages.documents import fetch_source, needs_transcoding
from ecr_pipelines.iati.stages.download import TOO_LARGE, DueDocument, detect_encoding, fetch_document
from ecr_pipelines.iati.validate import validate_file
from ecr_pipelines.lib.blobstore import LocalBlobStore
from ecr_pipelines.lib.http import make_session

TITLE = "Éducation à Dakar"


def activities(declaration: str, encoding: str) -> bytes:
    return (
        f'{declaration}<iati-activities version="2.03">\n'
        f" <iati-activity><iati-identifier>XM-1</iati-identifier>"
        f"<title><narrative>{TITLE}</narrative></title></iati-activity>\n"
        f"</iati-activities>\n"
    ).encode(encoding)


def refresher_reencoded(data: bytes, detected: str) -> bytes:
    """What the refresher's validate and flatten stages parsed: the text decoded (UTF-8, else the
    chardet guess) and encoded as UTF-8 again, declaration unchanged."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode(detected)
    return text.encode("utf-8")


def error_ids(report: dict) -> list[str]:
    return [error["id"] for group in report["errors"] for c in group["errors"] for error in c["errors"]]


def test_a_declared_non_utf8_encoding_is_read_as_declared() -> None:
    latin1 = activities('<?xml version="1.0" encoding="ISO-8859-1"?>\n', "latin-1")

    # Legacy: the Solr fields of such a file were mojibake; its lake XML was right.
    legacy_flat = flatten_file(io.BytesIO(refresher_reencoded(latin1, "latin-1")))
    assert legacy_flat[0]["title_narrative"] == TITLE.encode("utf-8").decode("latin-1") != TITLE

    # Ours: the download records the declared encoding, nothing is transcoded, and every stage
    # parses the file as declared: the Solr fields and the lake agree.
    assert detect_encoding(latin1, complete=True) == "iso-8859-1"
    assert not needs_transcoding(latin1, "iso-8859-1")
    assert "0.1.1" not in error_ids(validate_file(latin1))  # well-formed as declared
    assert flatten_file(io.BytesIO(latin1))[0]["title_narrative"] == TITLE
    assert TITLE.encode("utf-8") in next(iter(iter_lake_records(latin1))).xml


def test_an_undeclared_non_unicode_file_is_transcoded_and_indexable(tmp_path: Path) -> None:
    cp1252 = activities("", "cp1252")

    # Legacy: the lake parsed the raw bytes as UTF-8 and failed, every minute, forever.
    with pytest.raises(LakeParseError):
        list(iter_lake_records(cp1252))

    # Ours: the download's detected encoding makes every stage read a UTF-8 copy.
    store = LocalBlobStore(tmp_path / "blobs")
    store.put_bytes(source_key("h1"), cp1252)
    assert needs_transcoding(cp1252, "cp1252")
    path = fetch_source(store, "h1", "cp1252", tmp_path)
    assert flatten_file(path)[0]["title_narrative"] == TITLE
    assert TITLE.encode("utf-8") in next(iter(iter_lake_records(path))).xml


def test_a_mislabelled_file_gets_a_report_saying_why_it_stops() -> None:
    """Declares UTF-8, is Latin-1. Legacy: well-formed once re-encoded, so validated (and, when
    valid, cleaned and flattened), then the lake failed on the raw bytes forever: never indexed,
    no reason given. Ours: not indexed either, and the report says the file is not well-formed
    (0.1.1), once."""
    mislabelled = activities('<?xml version="1.0" encoding="UTF-8"?>\n', "latin-1")
    assert "0.1.1" not in error_ids(validate_file(refresher_reencoded(mislabelled, "latin-1")))
    with pytest.raises(LakeParseError):
        list(iter_lake_records(mislabelled))

    report = validate_file(mislabelled)
    assert report["valid"] is False and error_ids(report) == ["0.1.1"]


SOURCE = (
    b'<iati-activities version="2.03" xmlns:usg="http://foreignassistance.gov/iati#"'
    b' xmlns:unused="http://unused.example/">\n'
    b'  <iati-activity><iati-identifier>A</iati-identifier><usg:x code="1"/></iati-activity>\n'
    b"  <iati-activity><iati-identifier>B</iati-identifier><bad/></iati-activity>\n"
    b"  <iati-activity><iati-identifier>C</iati-identifier></iati-activity>\n"
    b"</iati-activities>\n"
)
REPORT = {
    "valid": False,
    "fileType": "iati-activities",
    "iatiVersion": "2.03",
    "iati-activities": [
        {"identifier": "A", "valid": True, "index": 0},
        {"identifier": "B", "valid": False, "index": 1},
        {"identifier": "C", "valid": True, "index": 2},
    ],
}


def refresher_rebuild(source: bytes, keep: set[int]) -> bytes:
    """The refresher's clean_invalid: a new root with the old root's attributes, the kept
    activities appended (moved, tails and all), serialised without a declaration."""
    root = etree.fromstring(source, etree.XMLParser(huge_tree=True))
    rebuilt = etree.Element("iati-activities")
    for name, value in root.attrib.items():
        rebuilt.set(name, value)
    for index, activity in enumerate(root.xpath("iati-activity")):
        if index in keep:
            rebuilt.append(activity)
    return etree.tostring(rebuilt, encoding="utf-8")


def test_rebuilt_clean_files_keep_the_roots_namespaces_and_normalise_whitespace() -> None:
    legacy = refresher_rebuild(SOURCE, {0, 2})
    result = clean_document(SOURCE, REPORT)
    assert (result.action, result.kept, result.dropped) == ("rebuilt", 2, 1)
    ours = result.data
    assert ours is not None

    # The root: the refresher dropped its namespace declarations; we keep them.
    assert etree.fromstring(legacy).nsmap == {}
    assert etree.fromstring(ours).nsmap == {
        "usg": "http://foreignassistance.gov/iati#",
        "unused": "http://unused.example/",
    }
    # Whitespace between activities: the refresher kept each one's original tail; ours is one newline.
    assert b"</iati-activity>\n  <iati-activity>" in legacy
    assert ours.count(b"</iati-activity>\n<iati-activity") == 1 and ours.endswith(b"\n</iati-activities>")

    # What users see: the same flattened activities (Solr fields) ...
    assert flatten_file(io.BytesIO(ours)) == flatten_file(io.BytesIO(legacy))
    # ... and lake XML (iati_xml) that now declares the root's namespaces and ends in one newline,
    # as the lake XML of a valid (copied) file always did.
    legacy_xml = [record.xml for record in iter_lake_records(legacy)]
    ours_xml = [record.xml for record in iter_lake_records(ours)]
    copied_xml = [record.xml for record in iter_lake_records(SOURCE)]
    assert legacy_xml[0].endswith(b"</iati-activity>\n  ") and b"xmlns:unused" not in legacy_xml[0]
    assert all(xml.endswith(b"</iati-activity>\n") and b'xmlns:unused="http' in xml for xml in ours_xml)
    assert [etree.fromstring(x).nsmap for x in ours_xml] == [
        etree.fromstring(copied_xml[0]).nsmap,
        etree.fromstring(copied_xml[2]).nsmap,
    ]


def test_files_over_the_download_cap_get_code_five(standin: StandInServer, tmp_path: Path) -> None:
    """The refresher read any file whole into memory; a file over HTTP_MAX_DOWNLOAD_BYTES is now
    refused with download_error 5 and nothing is stored (retried by retry_errors)."""
    standin.route("/cache/big.xml", body=SOURCE)
    store = LocalBlobStore(tmp_path / "blobs")
    doc = DueDocument("big", "h1", standin.url("/cache/big.xml"))
    refused = fetch_document(make_session(retries=0), store, doc, max_bytes=len(SOURCE) - 1)
    assert (refused.code, refused.code == TOO_LARGE) == (5, True)
    assert not store.exists(source_key("h1"))
    taken = fetch_document(make_session(retries=0), store, doc, max_bytes=len(SOURCE))
    assert taken.ok and store.get_bytes(source_key("h1")) == SOURCE
