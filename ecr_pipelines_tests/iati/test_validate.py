"""Tests for the local IATI validator (report shape, validity of every sample, error ids)."""

import json
from pathlib import Path

import pytest
from lxml import etree

from ecr_pipelines.iati import validate
from ecr_pipelines.iati.validate import get_schema, schema_errors, validate_file
from ecr_pipelines_tests.iati.iati_samples import SAMPLES, activity_xml, mixed_document

# (sample, file type, number of activities/organisations) — all schema-valid 2.03 (SOURCES.md).
VALID_SAMPLES = [
    ("official/activity-standard-example-annotated.xml", "iati-activities", 1),
    ("official/organisation-standard-example-annotated.xml", "iati-organisations", 1),
    ("real-world/3fi-activity.xml", "iati-activities", 1),
    ("real-world/fcdo-activity.xml", "iati-activities", 1),
    ("real-world/beis-activity.xml", "iati-activities", 9),
    ("real-world/gdihub-activity.xml", "iati-activities", 4),
]

# Schema tests use version="xx"; pure XSD validity against 2.03 (and the reason when invalid).
SCHEMA_TESTS = [
    ("should-pass_02-minimal-doc.xml", None),
    ("should-pass_21-transaction.xml", None),
    ("should-fail_01-empty-activity.xml", "Missing child element(s). Expected is ( iati-identifier )"),
    (
        "should-fail_16-last-updated-datetime.xml",
        "'2011-06-01' is not a valid value of the atomic type 'xs:dateTime'",
    ),
    ("should-fail_20-two-reporting-orgs.xml", "Element 'reporting-org': This element is not expected"),
    (
        "should-fail_budget_12-non-decimal-value.xml",
        "'eryr' is not a valid value of the atomic type 'xs:decimal'",
    ),
]


def _flat_errors(report: dict) -> list[dict]:
    return [
        {**error, "identifier": group["identifier"], "category": category["category"]}
        for group in report["errors"]
        for category in group["errors"]
        for error in category["errors"]
    ]


def _file_error_ids(report: dict) -> list[str]:
    return [error["id"] for error in _flat_errors(report) if error["identifier"] == "file"]


@pytest.mark.parametrize(("sample", "file_type", "count"), VALID_SAMPLES)
def test_valid_samples(sample: str, file_type: str, count: int) -> None:
    report = validate_file(SAMPLES / sample)
    assert report["valid"] is True
    assert report["fileType"] == file_type
    assert report["iatiVersion"] == "2.03"
    assert report["summary"] == {"critical": 0, "error": 0, "warning": 0, "advisory": 0}
    assert report["errors"] == []
    meta = report[file_type]
    assert [item["index"] for item in meta] == list(range(count))
    assert all(item["valid"] is True for item in meta)
    assert all(item["identifier"] and item["identifier"] != "noIdentifier" for item in meta)


# The keys of the Validator API's report (js-validator-api createValidationReport and its
# validationReport.schema.json), in its order; the meta list sits before "errors" when asked for.
API_REPORT_KEYS = [
    "valid",
    "fileType",
    "iatiVersion",
    "rulesetCommitSha",
    "codelistCommitSha",
    "orgIdPrefixFileName",
    "apiVersion",
    "summary",
]


@pytest.mark.parametrize(
    ("source", "meta"),
    [
        (SAMPLES / "real-world/3fi-activity.xml", "iati-activities"),
        (mixed_document(), "iati-activities"),
        (b"<not-iati/>", None),
        (b'<iati-activities version="1.05"/>', None),
        (b"<iati-activities version='2.03'><iati-activity>", None),
    ],
)
def test_report_says_which_checks_ran_where_the_api_does(source: Path | bytes, meta: str | None) -> None:
    """Issue 11 item 13: the API names the ruleset and codelist commits it checked against, and
    writes "" there when it ran neither (for a file that is not IATI or not a supported version).
    Ours never runs them, so those keys are always "", and apiVersion says "schema only": a
    consumer of the API's reports cannot take "no error" for "no ruleset error"."""
    report = validate_file(source)
    assert list(report) == API_REPORT_KEYS + ([meta] if meta else []) + ["errors"]
    assert (report["rulesetCommitSha"], report["codelistCommitSha"], report["orgIdPrefixFileName"]) == (
        "",
        "",
        "",
    )
    assert report["apiVersion"] == validate.API_VERSION
    assert "schema only" in report["apiVersion"]
    assert all(word in report["apiVersion"] for word in ("rulesets", "codelists", "not run"))
    assert set(report["summary"]) == {"critical", "error", "warning", "advisory"}
    assert validate.rulesets_ran(report) is False


def test_rulesets_ran_reads_the_apis_commit_keys() -> None:
    api_report = {"valid": True, "rulesetCommitSha": "a1b2c3", "codelistCommitSha": "d4e5f6"}
    assert validate.rulesets_ran(api_report) is True
    assert validate.rulesets_ran({**api_report, "codelistCommitSha": ""}) is False
    assert validate.rulesets_ran({"valid": True}) is False  # a report stored before these keys


def test_bytes_and_path_give_the_same_report() -> None:
    path = SAMPLES / "real-world/gdihub-activity.xml"
    assert validate_file(path) == validate_file(path.read_bytes()) == validate_file(str(path))


@pytest.mark.parametrize(("sample", "reason"), SCHEMA_TESTS)
def test_schema_tests_pure_xsd(sample: str, reason: str | None) -> None:
    tree = etree.parse(str(SAMPLES / "schema-tests" / sample))
    errors = schema_errors(tree, "iati-activities", "2.03")
    if reason is None:
        assert errors == []
    else:
        assert errors, "expected the 2.03 schema to reject this file"
        assert any(reason in error.message for error in errors)
        assert all(error.line for error in errors)


@pytest.mark.parametrize(("sample", "reason"), SCHEMA_TESTS)
def test_schema_tests_full_validator_reports_unsupported_version(sample: str, reason: str | None) -> None:
    report = validate_file(SAMPLES / "schema-tests" / sample)
    assert report["valid"] is False
    assert report["iatiVersion"] == "xx"
    assert _file_error_ids(report) == ["0.6.1"]


def test_organisation_file_uses_the_organisation_schema() -> None:
    tree = etree.parse(str(SAMPLES / "official/organisation-standard-example-annotated.xml"))
    assert schema_errors(tree, "iati-organisations", "2.03") == []
    # The activity schema would reject it, so a valid report proves the right schema was used.
    assert schema_errors(tree, "iati-activities", "2.03")
    report = validate_file(SAMPLES / "official/organisation-standard-example-annotated.xml")
    assert report["valid"] is True
    assert report["iati-organisations"] == [{"identifier": "AA-AAA-123456789", "valid": True, "index": 0}]
    assert "iati-activities" not in report


def test_version_attribute_selects_the_schema() -> None:
    source = (SAMPLES / "real-world/3fi-activity.xml").read_bytes()
    assert validate_file(source)["valid"] is True
    # 3F uses 2.03-only attributes (humanitarian), which the 2.01 schema does not allow.
    report_201 = validate_file(source.replace(b'version="2.03"', b'version="2.01"', 1))
    assert report_201["iatiVersion"] == "2.01"
    assert report_201["valid"] is False
    assert any("'humanitarian' is not allowed" in error["message"] for error in _flat_errors(report_201))


def test_schemas_are_compiled_once() -> None:
    assert get_schema("iati-activities", "2.03") is get_schema("iati-activities", "2.03")
    assert get_schema("iati-activities", "2.02") is not get_schema("iati-activities", "2.03")
    with pytest.raises(ValueError):
        get_schema("iati-activities", "1.05")


def test_per_activity_meta_with_one_invalid_activity() -> None:
    source = mixed_document()
    report = validate_file(source)
    assert report["valid"] is False
    assert report["summary"]["critical"] == 1
    assert report["iati-activities"] == [
        {"identifier": "DK-CVR-31378028-SPA-2020", "valid": True, "index": 0},
        {"identifier": "XM-BROKEN-1", "valid": False, "index": 1},
        {"identifier": "GB-1-103662-101", "valid": True, "index": 2},
    ]
    [group] = report["errors"]
    assert group["identifier"] == "XM-BROKEN-1"
    assert group["title"] == "SPA 2022-2025"
    [category] = group["errors"]
    assert category["category"] == "schema"
    [error] = category["errors"]
    assert error["id"] == "0.3.1"
    assert error["severity"] == "critical"
    assert "Element 'not-an-iati-element': This element is not expected." in error["message"]
    # Line numbers refer to the original file, not to the per-activity wrapper.
    expected_line = source[: source.index(b"<not-an-iati-element")].count(b"\n") + 1
    assert error["context"] == [{"text": f"At line: {expected_line}"}]


def test_schema_errors_grouped_per_distinct_message() -> None:
    activity = etree.fromstring(activity_xml("real-world/fcdo-activity.xml"))
    dates = activity.findall("activity-date")
    assert len(dates) > 1
    for date in dates:
        date.set("iso-date", "not-a-date")
    source = b'<iati-activities version="2.03">\n' + etree.tostring(activity) + b"\n</iati-activities>"
    report = validate_file(source)
    [error] = _flat_errors(report)
    assert "'not-a-date' is not a valid value" in error["message"]
    assert len(error["context"]) == len(dates)
    assert all(context["text"].startswith("At line: ") for context in error["context"])
    assert report["summary"]["critical"] == 1


def test_duplicate_and_missing_identifiers() -> None:
    activity = activity_xml("real-world/3fi-activity.xml")
    no_id = etree.fromstring(activity)
    no_id.find("iati-identifier").text = ""
    source = (
        b"".join([b'<iati-activities version="2.03">', activity, activity, activity, etree.tostring(no_id)])
        + b"</iati-activities>"
    )
    report = validate_file(source)
    assert [item["identifier"] for item in report["iati-activities"]] == [
        "DK-CVR-31378028-SPA-2020",
        "DK-CVR-31378028-SPA-2020(2)",
        "DK-CVR-31378028-SPA-2020(3)",
        "noIdentifier",
    ]
    # A duplicate identifier is a rule error, not a schema error: the file stays valid.
    assert report["valid"] is True
    assert report["summary"]["error"] == 1
    [duplicate] = _flat_errors(report)
    assert (duplicate["id"], duplicate["severity"], duplicate["identifier"]) == ("1.1.2", "error", "file")


@pytest.mark.parametrize(
    ("root", "version"),
    [
        (b'<iati-activities version="1.03">', "1.03"),
        (b'<iati-activities version="1.05" generated-datetime="2014-01-01T00:00:00">', "1.05"),
        (b"<iati-activities>", ""),
        (b'<iati-activities version="2.04">', "2.04"),
    ],
)
def test_unsupported_or_missing_version_is_critical(root: bytes, version: str) -> None:
    source = root + activity_xml("real-world/3fi-activity.xml") + b"</iati-activities>"
    report = validate_file(source)
    assert report["valid"] is False
    assert report["fileType"] == "iati-activities"
    assert report["iatiVersion"] == version
    assert report["summary"]["critical"] == 1
    [error] = _flat_errors(report)
    assert (error["id"], error["severity"], error["category"]) == ("0.6.1", "critical", "documents")
    assert error["message"] == (
        f"Version {version} of the IATI Standard is no longer supported. Supported versions: 2.01, 2.02, 2.03"
    )
    assert "iati-activities" not in report  # no meta: nothing was validated per activity


def test_not_well_formed() -> None:
    source = b'<iati-activities version="2.03">\n<iati-activity>\n</iati-activit>\n</iati-activities>\n'
    report = validate_file(source)
    assert report["valid"] is False
    assert report["fileType"] == ""
    [error] = _flat_errors(report)
    assert (error["id"], error["severity"], error["identifier"]) == ("0.1.1", "critical", "file")
    assert "Opening and ending tag mismatch" in error["message"]
    assert error["context"] == [{"text": "At line: 3"}]


def test_not_well_formed_after_valid_activities() -> None:
    activity = activity_xml("real-world/3fi-activity.xml")
    source = b'<iati-activities version="2.03">' + activity + activity[:-40]
    assert _file_error_ids(validate_file(source)) == ["0.1.1"]


@pytest.mark.parametrize("source", [b"", b'<?xml version="1.0"?>\n', b"   "])
def test_empty_document_is_not_well_formed(source: bytes) -> None:
    report = validate_file(source)
    assert report["valid"] is False
    assert _file_error_ids(report) == ["0.1.1"]


def test_well_formedness_takes_precedence_over_version_and_root() -> None:
    assert _file_error_ids(validate_file(b'<iati-activities version="1.03"><a></b></iati-activities>')) == [
        "0.1.1"
    ]
    assert _file_error_ids(validate_file(b"<html><body></html>")) == ["0.1.1"]


@pytest.mark.parametrize(
    "source",
    [
        b"<html><body>hello</body></html>",
        b'<activities version="2.03"><iati-activity/></activities>',
        b'<x:iati-activities xmlns:x="http://example.org/" version="2.03"/>',
    ],
)
def test_wrong_root_is_not_iati(source: bytes) -> None:
    report = validate_file(source)
    assert report["valid"] is False
    assert report["fileType"] == ""
    [error] = _flat_errors(report)
    assert (error["id"], error["message"]) == ("0.2.1", "The file is not an IATI file.")


def test_root_without_activities_is_validated_as_a_whole() -> None:
    report = validate_file(b'<iati-activities version="2.03"></iati-activities>')
    assert report["valid"] is False
    assert report["iati-activities"] == []
    [error] = _flat_errors(report)
    assert (error["id"], error["identifier"], error["category"]) == ("0.3.1", "file", "schema")


def test_unsafe_xml_is_reported_not_raised() -> None:
    source = (
        b'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
        b'<iati-activities version="2.03">&xxe;</iati-activities>'
    )
    report = validate_file(source)
    assert report["valid"] is False
    [error] = _flat_errors(report)
    assert error["id"] == "0.1.1"
    assert error["message"].startswith("Unsafe XML rejected")


def test_main_prints_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert validate.main([str(SAMPLES / "real-world/beis-activity.xml")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is True
    assert len(report["iati-activities"]) == 9

    broken = tmp_path / "broken.xml"
    broken.write_bytes(b"<iati-activities version='2.03'>")
    assert validate.main(["--compact", str(broken)]) == 1
    assert json.loads(capsys.readouterr().out)["summary"]["critical"] == 1


def test_nested_activity_is_not_a_separate_entry() -> None:
    activity = activity_xml("real-world/3fi-activity.xml")
    outer = activity.replace(b"</iati-activity>", activity + b"</iati-activity>", 1)
    report = validate_file(b'<iati-activities version="2.03">' + outer + b"</iati-activities>")
    assert [item["index"] for item in report["iati-activities"]] == [0]
    assert report["iati-activities"][0]["valid"] is False  # the schema forbids the nesting
