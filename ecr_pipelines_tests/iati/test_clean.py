"""Tests for the clean stage decision and the rebuild of partially invalid activity files (streamed\nto a file and uploaded from it)."""

import hashlib
from pathlib import Path

import pytest
from lxml import etree

from ecr_pipelines.iati.blobkeys import clean_key, source_key
from ecr_pipelines.iati.clean import COULD_NOT_PARSE, NO_VALID_ACTIVITIES, CleanResult, clean_document
from ecr_pipelines.iati.stages.clean import DueForClean, clean_one
from ecr_pipelines.iati.validate import validate_file
from ecr_pipelines.lib.blobstore import LocalBlobStore
from ecr_pipelines_tests.iati.iati_samples import SAMPLES, activity_xml, mixed_document


def _identifiers(data: bytes) -> list[str]:
    root = etree.fromstring(data)
    return [activity.findtext("iati-identifier") for activity in root.findall("iati-activity")]


def _invalid_report(meta: list[dict]) -> dict:
    return {"valid": False, "fileType": "iati-activities", "iatiVersion": "2.03", "iati-activities": meta}


def test_rebuild_keeps_exactly_the_valid_activities() -> None:
    source = mixed_document()
    result = clean_document(source, validate_file(source))
    assert result.action == "rebuilt"
    assert (result.kept, result.dropped, result.error) == (2, 1, None)
    assert result.data is not None
    assert result.data.startswith(b"<iati-activities ")  # no XML declaration
    assert _identifiers(result.data) == ["DK-CVR-31378028-SPA-2020", "GB-1-103662-101"]

    original = etree.fromstring(source)
    cleaned = etree.fromstring(result.data)
    assert dict(cleaned.attrib) == dict(original.attrib)
    assert cleaned.nsmap.get("usg") == "http://foreignassistance.gov/iati#"
    # Kept activities are unchanged, element for element.
    for kept in cleaned.findall("iati-activity"):
        identifier = kept.findtext("iati-identifier")
        [before] = [
            a for a in original.findall("iati-activity") if a.findtext("iati-identifier") == identifier
        ]
        assert etree.tostring(kept, method="c14n") == etree.tostring(before, method="c14n")
    # And the clean file is valid with the same activities.
    report = validate_file(result.data)
    assert report["valid"] is True
    assert len(report["iati-activities"]) == 2


def test_rebuild_from_path(tmp_path: Path) -> None:
    path = tmp_path / "mixed.xml"
    path.write_bytes(mixed_document())
    result = clean_document(path, validate_file(path))
    assert result.action == "rebuilt"
    assert _identifiers(result.data or b"") == ["DK-CVR-31378028-SPA-2020", "GB-1-103662-101"]


def test_rebuild_uses_the_meta_indices() -> None:
    meta = [
        {"identifier": "a", "valid": False, "index": 0},
        {"identifier": "b", "valid": False, "index": 1},
        {"identifier": "c", "valid": True, "index": 2},
    ]
    result = clean_document(mixed_document(), _invalid_report(meta))
    assert (result.action, result.kept, result.dropped) == ("rebuilt", 1, 2)
    assert _identifiers(result.data or b"") == ["GB-1-103662-101"]


def test_valid_file_is_copied_as_is() -> None:
    path = SAMPLES / "real-world/beis-activity.xml"
    result = clean_document(path, validate_file(path))
    assert result.action == "copy"
    assert result.data == path.read_bytes()
    assert (result.kept, result.dropped) == (9, 0)


def test_no_valid_activities_in_meta() -> None:
    meta = [{"identifier": "a", "valid": False, "index": 0}, {"identifier": "b", "valid": False, "index": 1}]
    result = clean_document(b"<never-parsed/>", _invalid_report(meta))
    assert result == CleanResult(
        "error", error=NO_VALID_ACTIVITIES, dropped=2, reason="report marks no activity valid"
    )


def test_no_valid_activities_when_indices_do_not_match_the_file() -> None:
    # E.g. a report whose indices shifted: nothing in the file at the kept index.
    result = clean_document(
        mixed_document(), _invalid_report([{"identifier": "x", "valid": True, "index": 7}])
    )
    assert (result.action, result.error, result.kept, result.dropped) == ("error", NO_VALID_ACTIVITIES, 0, 3)
    assert result.data is None


def test_could_not_parse() -> None:
    source = mixed_document()
    report = validate_file(source)
    broken = source.replace(b"</iati-activities>", b"</iati-activitie>")
    result = clean_document(broken, report)
    assert (result.action, result.error, result.data) == ("error", COULD_NOT_PARSE, None)


def test_unsafe_source_could_not_parse() -> None:
    source = (
        b'<!DOCTYPE r [<!ENTITY a "x">]><iati-activities version="2.03">'
        + activity_xml("real-world/3fi-activity.xml")
        + b"&a;</iati-activities>"
    )
    result = clean_document(source, _invalid_report([{"identifier": "a", "valid": True, "index": 0}]))
    assert (result.action, result.error) == ("error", COULD_NOT_PARSE)


def test_organisation_file_is_skipped() -> None:
    path = SAMPLES / "official/organisation-standard-example-annotated.xml"
    result = clean_document(path, validate_file(path))
    assert result.action == "skip"
    assert result.data is None and result.error is None


@pytest.mark.parametrize("version", ["1.03", "1.05", "", "xx"])
def test_unsupported_versions_are_skipped(version: str) -> None:
    source = (
        f'<iati-activities version="{version}">'.encode()
        + activity_xml("real-world/3fi-activity.xml")
        + b"</iati-activities>"
    )
    report = validate_file(source)
    assert report["valid"] is False
    result = clean_document(source, report)
    assert result.action == "skip"
    assert result.data is None


def test_unparseable_and_non_iati_reports_are_skipped() -> None:
    for source in (b"<iati-activities version='2.03'>", b"<html/>"):
        assert clean_document(source, validate_file(source)).action == "skip"


def test_invalid_report_without_meta_is_a_caller_error() -> None:
    report = {"valid": False, "fileType": "iati-activities", "iatiVersion": "2.03"}
    with pytest.raises(ValueError, match="meta"):
        clean_document(mixed_document(), report)


# The rebuilt mixed document as the clean step wrote it before it streamed to a file.
MIXED_REBUILT_SHA256 = "8222b1156824963ee4b4c06230d973e109923b89d3d3e0bbdde3911837d9bd44"


def test_rebuild_streams_into_out_with_the_same_bytes(tmp_path: Path) -> None:
    source = tmp_path / "mixed.xml"
    source.write_bytes(mixed_document())
    target = tmp_path / "clean.xml"
    with open(target, "wb") as out:
        result = clean_document(source, validate_file(source), out)
    assert (result.action, result.kept, result.dropped, result.data) == ("rebuilt", 2, 1, None)
    written = target.read_bytes()
    assert hashlib.sha256(written).hexdigest() == MIXED_REBUILT_SHA256
    # Without a stream the same bytes come back in memory.
    assert clean_document(mixed_document(), validate_file(source)).data == written


def test_valid_file_is_copied_into_out_unchanged(tmp_path: Path) -> None:
    path = SAMPLES / "real-world/beis-activity.xml"
    target = tmp_path / "clean.xml"
    with open(target, "wb") as out:
        result = clean_document(path, validate_file(path), out)
    assert (result.action, result.kept, result.data) == ("copy", 9, None)
    assert target.read_bytes() == path.read_bytes()


class UploadsFilesOnly(LocalBlobStore):
    """A local store that refuses whole objects in memory and remembers the files it was given."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.files: list[Path] = []

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> int:
        raise AssertionError(f"{key} was handed over in memory")

    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> int:
        self.files.append(Path(path))
        return super().put_file(key, path, content_type)


def test_the_stage_uploads_the_rebuilt_document_from_its_scratch_folder(tmp_path: Path) -> None:
    store = UploadsFilesOnly(tmp_path / "blobs")
    with open(tmp_path / "mixed.xml", "wb") as fh:
        fh.write(mixed_document())
    store.put_file(source_key("h-mixed"), tmp_path / "mixed.xml")
    store.files.clear()
    folder = tmp_path / "scratch"
    folder.mkdir()
    doc = DueForClean("doc-mixed", "h-mixed", None, False)

    result = clean_one(store, doc, validate_file(mixed_document()), folder)

    assert (result.kind, result.kept, result.dropped) == ("rebuilt", 2, 1)
    assert [path.parent for path in store.files] == [folder]
    assert hashlib.sha256(store.get_bytes(clean_key("h-mixed"))).hexdigest() == MIXED_REBUILT_SHA256
    assert list(folder.iterdir()) == []  # the scratch copy is gone once uploaded
