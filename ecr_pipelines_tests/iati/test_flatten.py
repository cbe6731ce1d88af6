"""Flatten must reproduce the legacy refresher's Flattener output exactly, quirks included."""

import io
import json
from datetime import date
from pathlib import Path

import pytest

from ecr_pipelines.iati.flatten import FlattenError, flatten_file, iter_flattened_activities, main
from ecr_pipelines_tests.iati.iati_samples import SAMPLES

# The verified worked example of the research notes (IATI refresher Flattener, run locally).
WORKED_EXAMPLE = b"""<iati-activities version="2.03" generated-datetime="2024-06-20T07:10:17+00:00"
                 xmlns:usg="http://foreignassistance.gov/iati#">
 <iati-activity last-updated-datetime="2024-06-20T07:10:15+01:00" xml:lang="en" default-currency="GBP"
                hierarchy="1">
  <iati-identifier> XM-EX-1 </iati-identifier>
  <reporting-org ref="XM-EX" type="22"><narrative>Example Org</narrative></reporting-org>
  <title><narrative>Water project</narrative><narrative xml:lang="fr">Projet d'eau</narrative></title>
  <sector code="14030" percentage="60"/><sector code="12220" percentage="40"/>
  <location><point srsName="http://www.opengis.net/def/crs/EPSG/0/4326"><pos>-1.29 36.82</pos></point>
  </location>
  <budget type="1" status="2"><period-start iso-date="2022-01-01"/><period-end iso-date="2022-12-31"/>
          <value currency="GBP" value-date="2022-01-01">1000</value></budget>
  <transaction><transaction-type code="3"/><transaction-date iso-date="2022-03-01"/>
               <value value-date="2022-03-01">250.50</value></transaction>
  <transaction ref="T2"><transaction-type code="4"/><transaction-date iso-date="2022-06-01"/>
               <value value-date="2022-06-01">100</value></transaction>
  <usg:treasury-main-account code="95"/>
 </iati-activity>
</iati-activities>
"""

WORKED_EXAMPLE_FLAT = [
    {
        "dataset_version": "2.03",
        "dataset_generated_datetime": "2024-06-20T07:10:17.000Z",
        "last_updated_datetime": "2024-06-20T07:10:15.000Z",
        "xml_lang": "en",
        "default_currency": "GBP",
        "hierarchy": "1",
        "iati_identifier": "XM-EX-1",
        "reporting_org_ref": "XM-EX",
        "reporting_org_type": "22",
        "reporting_org_narrative": "Example Org",
        "title_narrative": ["Water project", "Projet d'eau"],
        "title_narrative_xml_lang": "fr",
        "sector_code": ["14030", "12220"],
        "sector_percentage": ["60", "40"],
        "location_point_srsName": "http://www.opengis.net/def/crs/EPSG/0/4326",
        "location_point_pos": "-1.29 36.82",
        "budget_type": "1",
        "budget_status": "2",
        "budget_period_start_iso_date": "2022-01-01T00:00:00.000Z",
        "budget_period_end_iso_date": "2022-12-31T00:00:00.000Z",
        "budget_value_currency": "GBP",
        "budget_value_value_date": "2022-01-01T00:00:00.000Z",
        "budget_value": "1000",
        "transaction_transaction_type_code": ["3", "4"],
        "transaction_transaction_date_iso_date": ["2022-03-01T00:00:00.000Z", "2022-06-01T00:00:00.000Z"],
        "transaction_value_value_date": ["2022-03-01T00:00:00.000Z", "2022-06-01T00:00:00.000Z"],
        "transaction_value": ["250.50", "100"],
        "transaction_ref": "T2",
        "usg_treasury_main_account_code": "95",
        "@transaction": [
            {
                "transaction_transaction_type_code": "3",
                "transaction_transaction_date_iso_date": "2022-03-01T00:00:00.000Z",
                "transaction_value_value_date": "2022-03-01T00:00:00.000Z",
                "transaction_value": "250.50",
            },
            {
                "transaction_ref": "T2",
                "transaction_transaction_type_code": "4",
                "transaction_transaction_date_iso_date": "2022-06-01T00:00:00.000Z",
                "transaction_value_value_date": "2022-06-01T00:00:00.000Z",
                "transaction_value": "100",
            },
        ],
        "@budget": [
            {
                "budget_type": "1",
                "budget_status": "2",
                "budget_period_start_iso_date": "2022-01-01T00:00:00.000Z",
                "budget_period_end_iso_date": "2022-12-31T00:00:00.000Z",
                "budget_value_currency": "GBP",
                "budget_value_value_date": "2022-01-01T00:00:00.000Z",
                "budget_value": "1000",
            }
        ],
    }
]


def flat(xml: bytes) -> list[dict]:
    return flatten_file(io.BytesIO(xml))


def one_activity(body: str, root_attrs: str = 'version="2.03"') -> dict:
    activities = flat(
        f"<iati-activities {root_attrs}><iati-activity>{body}</iati-activity></iati-activities>".encode()
    )
    assert len(activities) == 1
    return activities[0]


def without_root_keys(activity: dict) -> dict:
    return {key: value for key, value in activity.items() if not key.startswith("dataset_")}


def test_worked_example_matches_the_refresher_byte_for_byte() -> None:
    got = flat(WORKED_EXAMPLE)
    # json.dumps compares key order too, which the exploded Solr ids depend on.
    assert json.dumps(got) == json.dumps(WORKED_EXAMPLE_FLAT)


def test_path_str_and_file_object_give_the_same_result(tmp_path: Path) -> None:
    path = tmp_path / "worked.xml"
    path.write_bytes(WORKED_EXAMPLE)
    assert flatten_file(path) == flatten_file(str(path)) == WORKED_EXAMPLE_FLAT
    with path.open("rb") as handle:
        assert list(iter_flattened_activities(handle)) == WORKED_EXAMPLE_FLAT


SAMPLE_COUNTS = {
    "official/activity-standard-example-annotated.xml": 1,
    "real-world/3fi-activity.xml": 1,
    "real-world/fcdo-activity.xml": 1,
    "real-world/beis-activity.xml": 9,
    "real-world/gdihub-activity.xml": 4,
    "schema-tests/should-pass_02-minimal-doc.xml": 1,
    "schema-tests/should-pass_21-transaction.xml": 1,
    "schema-tests/should-fail_01-empty-activity.xml": 1,
    "schema-tests/should-fail_16-last-updated-datetime.xml": 1,
    "schema-tests/should-fail_20-two-reporting-orgs.xml": 1,
    "schema-tests/should-fail_budget_12-non-decimal-value.xml": 1,
}


@pytest.mark.parametrize("name", sorted(SAMPLE_COUNTS))
def test_every_sample_flattens(name: str) -> None:
    activities = flatten_file(SAMPLES / name)
    assert len(activities) == SAMPLE_COUNTS[name]
    for activity in activities:
        assert list(activity)[0] == "dataset_version"
        for key, value in activity.items():
            if key in ("@transaction", "@budget"):
                assert value and all(isinstance(sub, dict) for sub in value)
                continue
            # Every value is a string or a list of at least two strings, never a number.
            assert isinstance(value, str) or (
                isinstance(value, list) and len(value) >= 2 and all(isinstance(v, str) for v in value)
            ), key
            assert not key.startswith("_") and "-" not in key


def test_official_example_spot_values() -> None:
    [activity] = flatten_file(SAMPLES / "official/activity-standard-example-annotated.xml")
    assert activity["iati_identifier"] == "AA-AAA-123456789-ABC123"
    assert activity["dataset_version"] == "2.03"
    assert activity["dataset_generated_datetime"] == "2014-09-10T07:15:37.000Z"
    assert activity["dataset_linked_data_default"] == "http://data.example.org/"
    assert len(activity["@transaction"]) == 1
    assert len(activity["@budget"]) == 1
    assert list(activity)[-2:] == ["@transaction", "@budget"]
    assert activity["@transaction"][0]["transaction_value"] == "1000"


def test_beis_identifiers_in_document_order() -> None:
    activities = flatten_file(SAMPLES / "real-world/beis-activity.xml")
    assert [a["iati_identifier"] for a in activities][:2] == [
        "GB-GOV-13-GCRF-BF-7TNK9LD-GBYPTX3",
        "GB-GOV-13-GCRF-BF-7TNK9LD-NLFLATK",
    ]
    # No generated-datetime offset and no version quirks here: the root keys are copied to every activity.
    assert {a["dataset_generated_datetime"] for a in activities} == {"2022-03-07T10:57:48.000Z"}


def test_repeated_and_blank_narratives() -> None:
    activity = one_activity(
        """<iati-identifier>A</iati-identifier>
        <title>
          <narrative>First</narrative>
          <narrative xml:lang="fr">  Deuxième  </narrative>
          <narrative xml:lang="es"/>
          <narrative xml:lang="de">   </narrative>
          <narrative>Third</narrative>
        </title>
        <description type="1">
          <narrative xml:lang="en"/><narrative xml:lang="fr">some french stuff</narrative>
        </description>
        <participating-org ref="X" role="1"/><participating-org ref="X" role="2"/>
        <participating-org ref="" role="3"/><participating-org role="4"/>"""
    )
    assert without_root_keys(activity) == {
        "iati_identifier": "A",
        "title_narrative": ["First", "Deuxième", "Third"],
        # Blank narratives add no text but keep their language: the lists are not index-aligned.
        "title_narrative_xml_lang": ["fr", "es", "de"],
        "description_type": "1",
        # The blank narrative's language comes first, so it is inserted before the text key.
        "description_narrative_xml_lang": ["en", "fr"],
        "description_narrative": "some french stuff",
        # An empty attribute is kept as "", a missing one is simply absent.
        "participating_org_ref": ["X", "X", ""],
        "participating_org_role": ["1", "2", "3", "4"],
    }
    assert list(activity)[-4:-2] == ["description_narrative_xml_lang", "description_narrative"]


def test_scalar_in_one_activity_list_in_another() -> None:
    activities = flat(
        b"""<iati-activities version="2.03">
        <iati-activity><iati-identifier>A</iati-identifier><sector code="1"/></iati-activity>
        <iati-activity><iati-identifier>B</iati-identifier><sector code="1"/><sector code="2"/>
        </iati-activity>
        </iati-activities>"""
    )
    assert [a["sector_code"] for a in activities] == ["1", ["1", "2"]]


def date_activity(value: str) -> dict:
    return one_activity(f'<iati-identifier>D</iati-identifier><activity-date type="1" iso-date="{value}"/>')


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2022-01-01", "2022-01-01T00:00:00.000Z"),
        ("  2022-01-01  ", "2022-01-01T00:00:00.000Z"),
        ("2022-1-5", "2022-01-05T00:00:00.000Z"),
        ("2010-01-01Z", "2010-01-01T00:00:00.000Z"),
        # Date with offset: the offset is ignored.
        ("2006-04-23+09:00", "2006-04-23T00:00:00.000Z"),
        ("2006-04-23-00:00", "2006-04-23T00:00:00.000Z"),
        ("2024-06-20T07:10:17Z", "2024-06-20T07:10:17.000Z"),
        ("2024-06-20T07:10:17", "2024-06-20T07:10:17.000Z"),
        # The offset is dropped, not converted: wall-clock time is kept.
        ("2024-06-20T07:10:15+01:00", "2024-06-20T07:10:15.000Z"),
        ("2024-06-20T23:30:00-05:00", "2024-06-20T23:30:00.000Z"),
        ("2023-07-17T08:05:08.160000+00:00", "2023-07-17T08:05:08.160Z"),
        ("2022-01-01T00:00:00.999999", "2022-01-01T00:00:00.999Z"),
        # dateutil's lenient parse: day-first when unambiguous, month-first otherwise.
        ("17/07/2023", "2023-07-17T00:00:00.000Z"),
        ("07/08/2023", "2023-07-08T00:00:00.000Z"),
        ("2024-02-29", "2024-02-29T00:00:00.000Z"),
        ("5 March 2021", "2021-03-05T00:00:00.000Z"),
    ],
)
def test_accepted_dates(value: str, expected: str) -> None:
    assert date_activity(value)["activity_date_iso_date"] == expected


def test_partial_date_takes_missing_parts_from_today() -> None:
    before = date.today()
    got = date_activity("2023-05")["activity_date_iso_date"]
    after = date.today()
    assert got in {f"2023-05-{day.day:02d}T00:00:00.000Z" for day in (before, after)}


def _dateutil_form(value: str) -> str | None:
    """What the refresher's general path (dateutil) gives for ``value``."""
    from dateutil import parser

    try:
        return parser.parse(value).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    except (ValueError, OverflowError):
        return None


@pytest.mark.parametrize(
    "value",
    [
        "2024-06-20T07:10:17",
        "2024-06-20T07:10:17Z",
        "2024-06-20T23:59:59+23:59",
        "2024-06-20T07:10:17-00:00",
        "2024-06-20T07:10:17.1",
        "2024-06-20T07:10:17.12",
        "2024-06-20T07:10:17.123456Z",
        "2024-06-20T07:10:17.999999+05:30",
        "2024-02-29T00:00:00",
        "1000-01-01T00:00:00",
        "9999-12-31T23:59:59.5Z",
        # Not the fast path's form: the general path decides (and must agree with dateutil).
        "2023-02-29T00:00:00",
        "2024-06-20T24:00:00",
        "2024-06-20T07:60:00",
        "2024-06-20T07:10:17.1234567",
        "2024-06-20T07:10:17+24:00",
        "0999-06-20T07:10:17",
        "2024-06-20T07:10",
        "２０２４-06-20T07:10:17",
    ],
)
def test_fast_date_time_path_agrees_with_dateutil(value: str) -> None:
    from ecr_pipelines.iati.flatten import _iso_datetime, normalise_date

    fast = _iso_datetime(value)
    assert fast is None or fast == _dateutil_form(value)
    assert normalise_date(value) == _dateutil_form(value)


@pytest.mark.parametrize(
    "value",
    ["", "   ", "cat", "2023-15-40", "2023-02-29", "12021-11-05", "2023-02-30+01:00", "2022-13-01Z", "1e400"],
)
def test_rejected_dates_omit_the_key(value: str) -> None:
    activity = date_activity(value)
    assert "activity_date_iso_date" not in activity
    assert activity["activity_date_type"] == "1"


def test_date_rule_applies_by_key_name_everywhere() -> None:
    activity = one_activity(
        """<iati-identifier>D</iati-identifier>
        <planned-disbursement><value value-date="2020-02-01+01:00">5</value></planned-disbursement>
        <document-link><document-date iso-date="bad"/></document-link>
        <result><indicator><baseline year="2020" iso-date="2020-01-01"/></indicator></result>
        <crs-add><loan-terms><commitment-date iso-date="2019-01-01Z"/></loan-terms></crs-add>
        <fss extraction-date="2014-05-06"><forecast year="2014">1</forecast></fss>""",
        root_attrs='version="2.03" generated-datetime="nonsense" linked-data-default=""',
    )
    assert activity == {
        # version present, generated-datetime unparseable → omitted, linked-data-default empty → omitted.
        "dataset_version": "2.03",
        "iati_identifier": "D",
        "planned_disbursement_value_value_date": "2020-02-01T00:00:00.000Z",
        "planned_disbursement_value": "5",
        "result_indicator_baseline_year": "2020",
        "result_indicator_baseline_iso_date": "2020-01-01T00:00:00.000Z",
        "crs_add_loan_terms_commitment_date_iso_date": "2019-01-01T00:00:00.000Z",
        "fss_extraction_date": "2014-05-06T00:00:00.000Z",
        "fss_forecast_year": "2014",
        "fss_forecast": "1",
    }


def test_missing_version_gives_empty_dataset_version() -> None:
    activity = one_activity(
        "<iati-identifier>A</iati-identifier>", root_attrs='generated-datetime="2020-01-01"'
    )
    assert activity == {
        "dataset_version": "",
        "dataset_generated_datetime": "2020-01-01T00:00:00.000Z",
        "iati_identifier": "A",
    }


def test_namespaced_extension_elements() -> None:
    activities = flat(
        b"""<iati-activities version="2.03" xmlns:usg="http://foreignassistance.gov/iati#">
        <iati-activity xmlns:bigorg="http://bigorg.org/" xmlns:my-org="http://my.org/ns">
          <iati-identifier>EXT-1</iati-identifier>
          <usg:treasury-main-account code="95" usg:flag="y"/>
          <budget status="2">
            <bigorg:bigorg-finance><bigorg:applicant>TEST1</bigorg:applicant></bigorg:bigorg-finance>
          </budget>
          <my-org:thing>t</my-org:thing>
          <undeclared:x a="1">u</undeclared:x>
          <ext xmlns="http://e/ns"><sub-el>d</sub-el></ext>
          <late:y xmlns:late="http://late.org/">l</late:y>
          <title><narrative xml:lang="en">T</narrative></title>
        </iati-activity>
        <iati-activity><iati-identifier>EXT-2</iati-identifier><usg:treasury-main-account code="96"/>
        </iati-activity>
        </iati-activities>"""
    )
    assert without_root_keys(activities[0]) == {
        "iati_identifier": "EXT-1",
        # Declared on the root or on the activity: <prefix>_<local>.
        "usg_treasury_main_account_code": "95",
        "usg_treasury_main_account_usg_flag": "y",
        "budget_status": "2",
        "budget_bigorg_bigorg_finance_bigorg_applicant": "TEST1",
        "my_org_thing": "t",
        # Undeclared prefix, recovered as the literal name "undeclared:x".
        "undeclared_x_a": "1",
        "undeclared_x": "u",
        # Declared below the activity: the raw {uri}local form, with - and : replaced.
        "{http_//e/ns}ext_{http_//e/ns}sub_el": "d",
        "{http_//late.org/}y": "l",
        "title_narrative_xml_lang": "en",
        "title_narrative": "T",
        "@budget": [{"budget_status": "2", "budget_bigorg_bigorg_finance_bigorg_applicant": "TEST1"}],
    }
    # The root's declarations stay in scope after earlier activities were freed.
    assert activities[1]["usg_treasury_main_account_code"] == "96"


def test_empty_identifiers() -> None:
    activities = flat(
        b"""<iati-activities version="2.03">
        <iati-activity><iati-identifier></iati-identifier><title><narrative>no id</narrative></title>
        </iati-activity>
        <iati-activity><iati-identifier>   </iati-identifier></iati-activity>
        <iati-activity><title><narrative>missing</narrative></title></iati-activity>
        <iati-activity><iati-identifier>
            XI-IATI-01
PROVISION_359&#13;
        </iati-identifier></iati-activity>
        <iati-activity><iati-identifier>ACT-1 </iati-identifier></iati-activity>
        </iati-activities>"""
    )
    assert [a.get("iati_identifier") for a in activities] == [
        None,
        None,
        None,
        "XI-IATI-01PROVISION_359",
        "ACT-1",
    ]
    assert activities[0]["title_narrative"] == "no id"
    for path in SAMPLES.glob("schema-tests/*.xml"):
        assert all("iati_identifier" not in a for a in flatten_file(path))


def test_sub_lists_only_for_direct_children_and_only_when_present() -> None:
    activity = one_activity(
        """<iati-identifier>S</iati-identifier>
        <budget type="1"><value>1</value></budget>
        <other><transaction><value>9</value></transaction></other>
        <budget type="2"><value>2</value><value>3</value></budget>"""
    )
    assert "@transaction" not in activity
    assert activity["other_transaction_value"] == "9"
    assert activity["@budget"] == [
        {"budget_type": "1", "budget_value": "1"},
        {"budget_type": "2", "budget_value": ["2", "3"]},
    ]
    assert activity["budget_value"] == ["1", "2", "3"]
    assert "@budget" not in one_activity("<iati-identifier>T</iati-identifier>")


def test_comments_dropped_pis_skipped_tail_text_ignored() -> None:
    activity = one_activity(
        """<!-- a comment --><iati-identifier>C<!-- inside -->D</iati-identifier>
        activity text is ignored
        <title><narrative>N</narrative> tail is ignored <?some-pi data?></title>"""
    )
    assert without_root_keys(activity) == {"iati_identifier": "CD", "title_narrative": "N"}


def test_malformed_xml_is_recovered() -> None:
    activities = flat(
        b"""<iati-activities version="2.03"><iati-activity><iati-identifier>R</iati-identifier>
        <result type="1"><title><narrative>unclosed result</narrative></title>
        </iati-activity></iati-activities>"""
    )
    assert activities[0]["iati_identifier"] == "R"
    assert activities[0]["result_type"] == "1"


def test_namespaced_activities_are_not_activities() -> None:
    activities = flat(
        b"""<iati-activities version="2.03" xmlns:n="http://n"><n:iati-activity/>
        <iati-activity><iati-identifier>X</iati-identifier></iati-activity></iati-activities>"""
    )
    assert [a.get("iati_identifier") for a in activities] == ["X"]


@pytest.mark.parametrize(
    "xml",
    [
        b"<iati-organisations version='2.03'><iati-organisation/></iati-organisations>",
        b"<iati-activities xmlns='http://example.org'><iati-activity/></iati-activities>",
        b"<foo><iati-activities><iati-activity/></iati-activities></foo>",
        b"",
        b"not xml at all",
    ],
)
def test_non_iati_xml_raises(xml: bytes) -> None:
    with pytest.raises(FlattenError):
        flat(xml)


def test_organisation_sample_raises_before_any_activity() -> None:
    iterator = iter_flattened_activities(SAMPLES / "official/organisation-standard-example-annotated.xml")
    with pytest.raises(FlattenError, match="Non-IATI XML"):
        next(iterator)


def test_main_prints_the_refresher_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.xml"
    path.write_bytes(
        b'<iati-activities version="2.03"><iati-activity><iati-identifier>\xc3\xa9</iati-identifier>'
        b"</iati-activity></iati-activities>"
    )
    assert main([str(path)]) == 0
    assert capsys.readouterr().out == '[{"dataset_version": "2.03", "iati_identifier": "\\u00e9"}]\n'
    assert main([str(SAMPLES / "official/organisation-standard-example-annotated.xml")]) == 1
    assert capsys.readouterr().out == ""  # refused before any output


@pytest.mark.parametrize(
    "sample", sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*activit*.xml"))
)
def test_main_streams_exactly_the_bytes_of_the_whole_list(
    sample: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        expected = json.dumps(flatten_file(SAMPLES / sample)) + "\n"
    except FlattenError:
        pytest.skip("not an activity file")
    assert main([str(SAMPLES / sample)]) == 0
    assert capsys.readouterr().out == expected


def test_main_of_a_file_without_activities_prints_an_empty_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.xml"
    path.write_bytes(b'<iati-activities version="2.03"></iati-activities>')
    assert main([str(path)]) == 0
    assert capsys.readouterr().out == "[]\n"
