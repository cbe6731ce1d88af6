"""The ``api`` validator back end against a stand-in IATI Validator API on loopback: statuses 200,
400, 413, 422 and 500, the key header, meta only for schema-invalid files, streamed bodies that
survive a retry, and the validate stage's decisions on those answers."""

import socket
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ecr_pipelines.dev.standins import Fault, RecordedRequest, Reply, StandInServer
from ecr_pipelines.iati.defs.resources import (
    IatiValidatorResource,
    ValidatorConfigError,
    build_validator_resource,
)
from ecr_pipelines.iati.stages.validate import UNUSABLE_ANSWER, DueForValidation, validate_document
from ecr_pipelines.iati.validate import validate_file
from ecr_pipelines.iati.validator_api import (
    LOCAL_TOO_LARGE_API_VERSION,
    TOO_LARGE_FALLBACK,
    LocalValidator,
    ValidatorApiClient,
    local_status,
)
from ecr_pipelines.lib.http import FetchError
from ecr_pipelines.resources import HttpResource
from ecr_pipelines.resources.env import SettingError
from ecr_pipelines_tests.iati.iati_samples import SAMPLES, mixed_document

SCHEMA_PATH = "/api/pvt/schema-validate-file"
FULL_PATH = "/api/pub/validate"
KEY = "s3cret-key"

VALID_REPORT = validate_file(SAMPLES / "real-world/3fi-activity.xml")
MIXED_REPORT = validate_file(mixed_document())
NOT_WELL_FORMED_REPORT = validate_file(b"<iati-activities version='2.03'><iati-activity>")
TOO_LARGE_BODY = {"error": "Max Filesize of 60 MiB exceeded. File size: 61 MiB"}


def client(server: StandInServer, **kwargs: Any) -> ValidatorApiClient:
    session = HttpResource(retries=kwargs.pop("retries", 0), backoff=0.01).session()
    return ValidatorApiClient(
        session,
        server.url(SCHEMA_PATH),
        server.url(FULL_PATH),
        key_value=kwargs.pop("key_value", KEY),
        **kwargs,
    )


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "doc.xml"
    path.write_bytes(mixed_document())
    return path


def doc(schema_valid: bool | None = None, *, recent: bool = False, flagged: bool = False) -> DueForValidation:
    return DueForValidation("doc-1", "abc", "org-1", schema_valid, False, "utf-8", recent, flagged)


def test_schema_check_then_full_check_with_the_key_header(standin: StandInServer, source: Path) -> None:
    standin.route(SCHEMA_PATH, method="POST", json={"valid": True})
    standin.route(FULL_PATH, method="POST", json=VALID_REPORT)
    api = client(standin)

    schema = api.schema_check(source)
    full = api.full_check(source, meta=False)

    assert (schema.status, schema.report) == (200, {"valid": True})
    assert (full.status, full.report) == (200, VALID_REPORT)
    for request in standin.requests:
        assert request.headers["x-functions-key"] == KEY
        assert request.headers["Content-Type"].startswith("application/xml")
        assert request.body == source.read_bytes()  # the file, byte for byte
    assert standin.requests_to(FULL_PATH)[0].query == {}


def test_meta_is_asked_for_schema_invalid_files_only(standin: StandInServer, source: Path) -> None:
    standin.route(SCHEMA_PATH, method="POST", json={"valid": False})
    standin.route(FULL_PATH, method="POST", json=MIXED_REPORT, status=422)

    outcome = validate_document(doc(), source, client(standin))

    assert outcome.kind == "report"
    assert (outcome.schema_valid, outcome.status) == (False, 422)
    assert outcome.report == MIXED_REPORT
    assert [r.query for r in standin.requests_to(FULL_PATH)] == [{"meta": "true"}]


def test_custom_key_header_name_and_no_key(standin: StandInServer, source: Path) -> None:
    standin.route(SCHEMA_PATH, method="POST", json={"valid": True})
    client(standin, key_name="Ocp-Apim-Subscription-Key").schema_check(source)
    client(standin, key_value=None).schema_check(source)
    first, second = standin.requests_to(SCHEMA_PATH)
    assert first.headers["Ocp-Apim-Subscription-Key"] == KEY
    assert "x-functions-key" not in first.headers
    assert not any(
        name.lower() in ("x-functions-key", "ocp-apim-subscription-key") for name in second.headers
    )


@pytest.mark.parametrize(
    ("status", "body", "kind", "stored_status", "has_report"),
    [
        (200, VALID_REPORT, "report", None, True),
        (400, NOT_WELL_FORMED_REPORT, "report", 400, True),  # not well-formed: report kept
        (422, MIXED_REPORT, "report", 422, True),  # schema errors: report kept
        (
            413,
            TOO_LARGE_BODY,
            "api_error",
            413,
            False,
        ),  # no report: the refresher's outcome, without fallback
        (500, {"error": "boom"}, "api_error", 500, False),
    ],
)
def test_full_check_statuses(
    standin: StandInServer,
    source: Path,
    status: int,
    body: dict[str, Any],
    kind: str,
    stored_status: int | None,
    has_report: bool,
) -> None:
    standin.route(FULL_PATH, method="POST", json=body, status=status)
    answer = client(standin).full_check(source, meta=True)
    assert answer.status == status
    assert (answer.report is not None) == has_report
    if not has_report:
        assert str(status) in answer.message

    outcome = validate_document(doc(schema_valid=True), source, client(standin))
    assert (outcome.kind, outcome.status) == (kind, stored_status)
    assert (outcome.report is not None) == has_report
    assert len(standin.requests_to(FULL_PATH)) == 2  # a 500 is not retried by the session


@pytest.mark.parametrize(
    ("source_bytes", "schema_status", "stored_status", "schema_valid"),
    [
        (mixed_document(), 413, 422, False),  # both endpoints refuse it; one activity is invalid
        ((SAMPLES / "real-world/3fi-activity.xml").read_bytes(), 200, None, True),  # only the full one
    ],
)
def test_files_too_large_for_the_api_are_validated_locally(
    standin: StandInServer,
    tmp_path: Path,
    source_bytes: bytes,
    schema_status: int,
    stored_status: int | None,
    schema_valid: bool,
) -> None:
    """Issue 11 item 13: the refresher stored a 413 without a report and re-sent the file every
    minute, so a file over the API's 60 MiB was never cleaned nor indexed. With the fallback the
    local schema check gives the report the API would have given for validity and the per-activity
    meta, marked as schema only and why."""
    source = tmp_path / "big.xml"
    source.write_bytes(source_bytes)
    if schema_status == 413:
        standin.route(SCHEMA_PATH, method="POST", json=TOO_LARGE_BODY, status=413)
    else:
        standin.route(SCHEMA_PATH, method="POST", json={"valid": True})
    standin.route(FULL_PATH, method="POST", json=TOO_LARGE_BODY, status=413)
    api = client(standin, too_large_fallback=LocalValidator())

    outcome = validate_document(doc(), source, api)

    local = validate_file(source)
    assert (outcome.kind, outcome.status, outcome.schema_valid) == ("report", stored_status, schema_valid)
    assert outcome.report == {**local, "apiVersion": LOCAL_TOO_LARGE_API_VERSION}
    assert outcome.report["iati-activities"] == local["iati-activities"]  # what the clean stage needs
    assert (outcome.report["rulesetCommitSha"], outcome.report["codelistCommitSha"]) == ("", "")
    assert (
        "schema only" in outcome.report["apiVersion"]
        and "too large (HTTP 413)" in outcome.report["apiVersion"]
    )
    assert outcome.fallback == TOO_LARGE_FALLBACK and "Max Filesize" in outcome.message
    assert len(standin.requests_to(SCHEMA_PATH)) == len(standin.requests_to(FULL_PATH)) == 1
    # Other failures are not the file's size: no fallback, the status is stored as before.
    standin.route(FULL_PATH, method="POST", json={"error": "boom"}, status=500)
    failed = validate_document(doc(schema_valid=True), source, api)
    assert (failed.kind, failed.status, failed.fallback) == ("api_error", 500, "")


@pytest.mark.parametrize(("status", "body"), [(400, {"error": "No body"}), (500, {"error": "boom"})])
def test_failed_schema_check_stops_before_the_full_check(
    standin: StandInServer, source: Path, status: int, body: dict[str, Any]
) -> None:
    standin.route(SCHEMA_PATH, method="POST", json=body, status=status)
    standin.route(FULL_PATH, method="POST", json=VALID_REPORT)
    outcome = validate_document(doc(), source, client(standin))
    assert (outcome.kind, outcome.status, outcome.schema_valid, outcome.requested) == (
        "api_error",
        status,
        None,
        True,
    )
    assert "schema check" in outcome.message
    assert standin.requests_to(FULL_PATH) == []


def test_a_200_without_a_report_is_stored_as_unusable(standin: StandInServer, source: Path) -> None:
    standin.route(SCHEMA_PATH, method="POST", body=b"<html>maintenance</html>")
    outcome = validate_document(doc(), source, client(standin))
    assert (outcome.kind, outcome.status) == ("api_error", UNUSABLE_ANSWER)
    assert "maintenance" in outcome.message


def test_schema_invalid_documents_are_held(standin: StandInServer, source: Path) -> None:
    standin.route(SCHEMA_PATH, method="POST", json={"valid": False})
    standin.route(FULL_PATH, method="POST", json=MIXED_REPORT, status=422)
    flagged = validate_document(doc(flagged=True), source, client(standin))
    recent = validate_document(doc(recent=True), source, client(standin))
    valid_of_flagged = validate_document(
        doc(schema_valid=True, flagged=True, recent=True), source, client(standin)
    )
    assert (flagged.kind, flagged.schema_valid, flagged.status) == ("held_black_flag", False, None)
    assert (recent.kind, recent.schema_valid) == ("held_recent", False)
    assert valid_of_flagged.kind == "report"  # a flag only holds schema-invalid documents
    assert len(standin.requests_to(FULL_PATH)) == 1


def test_streamed_body_is_sent_whole_again_on_a_retried_503(standin: StandInServer, source: Path) -> None:
    route = standin.route(FULL_PATH, method="POST", json=VALID_REPORT)
    route.faults.append(Fault(status=503, times=1))
    answer = client(standin, retries=2).full_check(source, meta=False)
    assert answer.status == 200
    bodies = [r.body for r in standin.requests_to(FULL_PATH)]
    assert bodies == [source.read_bytes(), source.read_bytes()]


def test_unreachable_validator_raises_a_classified_error(source: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = HttpResource(retries=0).session()
    api = ValidatorApiClient(session, f"http://127.0.0.1:{port}/s", f"http://127.0.0.1:{port}/f")
    with pytest.raises(FetchError) as caught:
        api.schema_check(source)
    assert caught.value.kind.value == "connection"


def test_key_value_never_appears_in_a_recorded_answer(standin: StandInServer, source: Path) -> None:
    def echo(request: RecordedRequest) -> Reply:
        return Reply.json({"error": "unauthorised"}, status=401)

    standin.route(SCHEMA_PATH, method="POST", handler=echo)
    outcome = validate_document(doc(), source, client(standin))
    assert (outcome.kind, outcome.status) == ("api_error", 401)
    assert KEY not in outcome.message


def test_local_statuses_match_the_api() -> None:
    assert local_status(VALID_REPORT) == 200
    assert local_status(NOT_WELL_FORMED_REPORT) == 400
    assert local_status(MIXED_REPORT) == 422
    assert local_status(validate_file(b"<not-iati/>")) == 422
    assert local_status(validate_file(SAMPLES / "schema-tests/should-pass_02-minimal-doc.xml")) == 422


def test_resource_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(
        ValidatorConfigError, match="IATI_VALIDATOR_API_URL and IATI_SCHEMA_VALIDATION_API_URL"
    ):
        IatiValidatorResource(backend="api").validator(HttpResource().session)
    with pytest.raises(ValidatorConfigError, match="URL refused"):
        IatiValidatorResource(backend="api", api_url="ftp://v/f", schema_api_url="ftp://v/s").validator(
            HttpResource().session
        )
    with pytest.raises(ValidatorConfigError, match="local, api"):
        IatiValidatorResource(backend="remote").validator(HttpResource().session)
    assert IatiValidatorResource().validator(HttpResource().session).name == "local"
    assert IatiValidatorResource(safety_check_period_hours=3).hold_hours == 3
    assert IatiValidatorResource(safety_check_hold_hours=0).hold_hours == 0
    assert IatiValidatorResource(black_flag_mail_to="a@x.org; b@x.org,").mail_recipients() == [
        "a@x.org",
        "b@x.org",
    ]

    for name in ("IATI_VALIDATOR", "IATI_VALIDATOR_API_KEY_VALUE", "IATI_SAFETY_CHECK_HOLD_HOURS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IATI_VALIDATOR_API_KEY_VALUE", KEY)
    monkeypatch.setenv("IATI_SAFETY_CHECK_THRESHOLD", "7")
    built = build_validator_resource()
    assert built.safety_check_threshold == 7
    assert built.safety_check_period_hours == 2 and built.hold_hours == 2
    # The key travels as an EnvVar: the UI and run config show its name only.
    assert (
        isinstance(built.api_key_value, dg.EnvVar) and built.api_key_value == "IATI_VALIDATOR_API_KEY_VALUE"
    )

    monkeypatch.setenv("IATI_SAFETY_CHECK_PERIOD_HOURS", "two")
    with pytest.raises(SettingError, match="IATI_SAFETY_CHECK_PERIOD_HOURS"):
        build_validator_resource()
    monkeypatch.setenv("IATI_SAFETY_CHECK_PERIOD_HOURS", "2")
    monkeypatch.setenv("IATI_VALIDATOR", "remote")  # a typo fails loading, naming the variable
    with pytest.raises(SettingError, match="IATI_VALIDATOR='remote'.*local, api"):
        build_validator_resource()
    monkeypatch.setenv("IATI_VALIDATOR", " API ")
    assert build_validator_resource().backend == "api"


def test_too_large_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    urls = {"api_url": "http://v/api/pub/validate", "schema_api_url": "http://v/api/pvt/schema-validate-file"}
    default = IatiValidatorResource(backend="api", **urls).validator(HttpResource().session)
    assert isinstance(default, ValidatorApiClient) and isinstance(default.too_large_fallback, LocalValidator)
    skip = IatiValidatorResource(backend="api", too_large="skip", **urls).validator(HttpResource().session)
    assert isinstance(skip, ValidatorApiClient) and skip.too_large_fallback is None
    assert "validated locally" in IatiValidatorResource(backend="api", **urls).describe()
    with pytest.raises(ValidatorConfigError, match="IATI_VALIDATOR_TOO_LARGE must be one of local, skip"):
        IatiValidatorResource(backend="api", too_large="retry", **urls).validator(HttpResource().session)

    monkeypatch.delenv("IATI_VALIDATOR_TOO_LARGE", raising=False)
    assert build_validator_resource().too_large == "local"
    monkeypatch.setenv("IATI_VALIDATOR_TOO_LARGE", " Skip ")
    assert build_validator_resource().too_large == "skip"
    monkeypatch.setenv("IATI_VALIDATOR_TOO_LARGE", "retry")
    with pytest.raises(SettingError, match="IATI_VALIDATOR_TOO_LARGE='retry'"):
        build_validator_resource()


def test_api_backend_session_uses_the_validator_timeout(standin: StandInServer, source: Path) -> None:
    standin.route(SCHEMA_PATH, method="POST", json={"valid": True})
    seen: dict[str, Any] = {}
    http = HttpResource(retries=0)

    def session_factory(**overrides: Any) -> Any:
        seen.update(overrides)
        return http.session(**overrides)

    resource = IatiValidatorResource(
        backend="api",
        api_url=standin.url(FULL_PATH),
        schema_api_url=standin.url(SCHEMA_PATH),
        api_key_value=KEY,
        api_timeout=1234,
    )
    api = resource.validator(session_factory)
    assert api.schema_check(source).report == {"valid": True}
    assert seen == {"read_timeout": 1234}
