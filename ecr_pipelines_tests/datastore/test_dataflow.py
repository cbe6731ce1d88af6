"""The data-flow DAG trigger (``datastore.dataflow``) against the stand-in data-flow over loopback:
the stand-in checks every HAWK signature with mohawk's ``Receiver`` and signs its answers, so both
directions of the protocol are exercised for real."""

import dataclasses
import json
import logging
import socket
from collections.abc import Callable, Iterator

import mohawk
import pytest
import requests

from ecr_pipelines.datastore import dataflow
from ecr_pipelines.datastore.dataflow import (
    DataflowError,
    DataflowErrorKind,
    DataflowSettings,
    dag_state,
    parse_run_id,
    trigger_dag,
    wait_for_dag,
)
from ecr_pipelines.dev.standins import Fault, StandInServer
from ecr_pipelines.dev.standins.dataflow import DataflowStandIn
from ecr_pipelines.lib.http import make_session

KEY = "k3y-that-must-never-show-7f1c"
TRIGGER_PATH = "/api/experimental/dags/DSSGenericPipeline/dag_runs"


@pytest.fixture
def stand_in(standin: StandInServer) -> DataflowStandIn:
    return DataflowStandIn(standin, hawk_id="dss", hawk_key=KEY)


@pytest.fixture
def settings(stand_in: DataflowStandIn, monkeypatch: pytest.MonkeyPatch) -> DataflowSettings:
    for name, value in stand_in.env().items():
        monkeypatch.setenv(name, value)
    found = DataflowSettings.from_env()
    assert found is not None
    return found


@pytest.fixture
def session() -> Iterator[requests.Session]:
    # No retries: a refused or failing call should fail at once (a 500 is not retried anyway).
    with make_session(retries=0, connect_timeout=2, read_timeout=10) as s:
        yield s


class FakeTime:
    """``sleep`` and ``clock`` for ``wait_for_dag`` that only pretend to pass time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


# -- settings ---------------------------------------------------------------------------------------


def test_no_base_url_means_no_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATAFLOW_BASE_URL", raising=False)
    monkeypatch.setenv("DATAFLOW_HAWK_ID", "dss")
    assert DataflowSettings.from_env() is None


@pytest.mark.parametrize("missing", ["DATAFLOW_HAWK_ID", "DATAFLOW_HAWK_KEY"])
def test_a_base_url_without_credentials_names_the_missing_variable(
    missing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAFLOW_BASE_URL", "https://dataflow.example")
    monkeypatch.setenv("DATAFLOW_HAWK_ID", "dss")
    monkeypatch.setenv("DATAFLOW_HAWK_KEY", KEY)
    monkeypatch.setenv(missing, "")  # empty counts as unset
    with pytest.raises(ValueError, match=missing):
        DataflowSettings.from_env()


def test_settings_defaults_and_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAFLOW_BASE_URL", "https://dataflow.example/")
    monkeypatch.setenv("DATAFLOW_HAWK_ID", "dss")
    monkeypatch.setenv("DATAFLOW_HAWK_KEY", KEY)
    monkeypatch.delenv("DATAFLOW_UPLOADER_DAG_ID", raising=False)
    monkeypatch.delenv("DATAFLOW_TIMEOUT_SECONDS", raising=False)
    found = DataflowSettings.from_env()
    assert found is not None
    assert (found.dag_id, found.timeout_seconds) == ("DSSGenericPipeline", 1800.0)
    assert (
        found.dag_runs_url() == "https://dataflow.example/api/experimental/dags/DSSGenericPipeline/dag_runs"
    )
    assert KEY not in repr(found) and KEY not in str(found)

    monkeypatch.setenv("DATAFLOW_TIMEOUT_SECONDS", "half an hour")
    with pytest.raises(ValueError, match="DATAFLOW_TIMEOUT_SECONDS"):
        DataflowSettings.from_env()
    monkeypatch.setenv("DATAFLOW_TIMEOUT_SECONDS", "60")
    monkeypatch.setenv("DATAFLOW_BASE_URL", "ftp://dataflow.example")
    with pytest.raises(ValueError, match="DATAFLOW_BASE_URL"):
        DataflowSettings.from_env()
    monkeypatch.setenv("DATAFLOW_BASE_URL", "https://dataflow.example")
    monkeypatch.setenv("DATAFLOW_HAWK_ID", 'd"ss')
    with pytest.raises(ValueError, match="DATAFLOW_HAWK_ID"):
        DataflowSettings.from_env()
    monkeypatch.setenv("DATAFLOW_HAWK_ID", "dss")
    monkeypatch.setenv("DATAFLOW_HAWK_KEY", "clé")
    with pytest.raises(ValueError, match="DATAFLOW_HAWK_KEY") as refused:
        DataflowSettings.from_env()
    assert "clé" not in str(refused.value)


# -- run ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "run_id"),
    [
        ("manual__2019-08-29T14:35:19.512837+00:00", "2019-08-29T14:35:19.512837"),
        ("manual__2019-08-29T14:35:19", "2019-08-29T14:35:19"),
        ("scheduled__2020-01-01T00:00:00+00:00", "2020-01-01T00:00:00"),
    ],
)
def test_run_id_is_cut_as_the_legacy_did(answer: str, run_id: str) -> None:
    assert parse_run_id(answer) == run_id


@pytest.mark.parametrize("answer", ["2019-08-29T14:35:19+00:00", "manual__", "manual__+00:00"])
def test_a_run_id_without_an_execution_date_is_refused(answer: str) -> None:
    with pytest.raises(ValueError, match="run_id"):
        parse_run_id(answer)


# -- trigger and poll -------------------------------------------------------------------------------


def test_trigger_sends_the_legacy_body_hawk_signed(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    run_id = trigger_dag(session, settings, "dit.baci", "L1")

    [run] = stand_in.triggers
    assert run.conf == {"data_uploader_schema_name": "dit.baci", "data_uploader_table_name": "L1"}
    assert run.run_id == f"manual__{run_id}+00:00"
    assert not stand_in.refused
    [sent] = stand_in.server.requests_to(TRIGGER_PATH, "POST")
    assert sent.json() == {
        "conf": {"data_uploader_schema_name": "dit.baci", "data_uploader_table_name": "L1"}
    }
    assert sent.headers["Content-Type"] == "application/json"
    authorization = sent.headers["Authorization"]
    assert authorization.startswith("Hawk ")
    assert 'id="dss"' in authorization and 'hash="' in authorization
    assert KEY not in json.dumps(sent.headers)


def test_polls_until_success(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    run_id = trigger_dag(session, settings, "dit.baci", "L0")
    fake = FakeTime()

    assert wait_for_dag(session, settings, run_id, sleep=fake.sleep, clock=fake.clock) == "success"

    assert fake.sleeps == [5, 5]
    assert stand_in.triggers[0].polls == 3
    polls = stand_in.server.requests_to(f"{TRIGGER_PATH}/{run_id}", "GET")
    assert len(polls) == 3 and all(p.headers["Authorization"].startswith("Hawk ") for p in polls)
    assert not stand_in.refused


def test_a_failed_run_ends_the_wait(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    stand_in.states = ("running", "failed", "success")
    run_id = trigger_dag(session, settings, "dit.baci", "L0")
    fake = FakeTime()

    assert wait_for_dag(session, settings, run_id, sleep=fake.sleep, clock=fake.clock) == "failed"
    assert fake.sleeps == [5]


def test_a_run_that_never_ends_times_out(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    stand_in.states = ("queued", "running")
    run_id = trigger_dag(session, settings, "dit.baci", "L0")
    fake = FakeTime()

    state = wait_for_dag(session, settings, run_id, timeout_seconds=12, sleep=fake.sleep, clock=fake.clock)

    assert state == "timeout"
    # The last poll falls on the deadline: 0, 5, 10, 12 s.
    assert fake.sleeps == [5, 5, 2]
    assert stand_in.triggers[0].polls == 4


def test_the_timeout_comes_from_the_settings(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    stand_in.states = ("running",)
    run_id = trigger_dag(session, settings, "dit.baci", "L0")
    fake = FakeTime()
    short = dataclasses.replace(settings, timeout_seconds=20)

    assert (
        wait_for_dag(session, short, run_id, poll_seconds=10, sleep=fake.sleep, clock=fake.clock) == "timeout"
    )
    assert fake.sleeps == [10, 10]
    # The legacy's budget: 360 polls of 5 s.
    assert settings.timeout_seconds == 1800


def test_slow_answers_count_against_the_timeout(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    stand_in.states = ("running",)
    run_id = trigger_dag(session, settings, "dit.baci", "L0")
    fake = FakeTime()

    def slow_clock() -> float:
        fake.now += 7  # every look at the clock: another slow answer
        return fake.now

    assert (
        wait_for_dag(session, settings, run_id, timeout_seconds=20, sleep=fake.sleep, clock=slow_clock)
        == "timeout"
    )
    assert len(fake.sleeps) < 4


# -- failures ---------------------------------------------------------------------------------------


def test_a_wrong_key_is_unauthorized(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    wrong = dataclasses.replace(settings, hawk_key="not-" + KEY)
    with pytest.raises(DataflowError) as refused:
        trigger_dag(session, wrong, "dit.baci", "L1")
    assert refused.value.kind is DataflowErrorKind.UNAUTHORIZED
    assert refused.value.status == 401
    assert "dss" in refused.value.message
    assert not stand_in.triggers and len(stand_in.refused) == 1


def test_an_unknown_id_is_unauthorized(settings: DataflowSettings, session: requests.Session) -> None:
    with pytest.raises(DataflowError) as refused:
        dag_state(session, dataclasses.replace(settings, hawk_id="somebody"), "2020-01-01T00:00:00")
    assert refused.value.kind == "unauthorized"


def test_the_stand_in_refuses_a_body_other_than_the_signed_one(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    url = settings.dag_runs_url()
    signed = b'{"conf": {"data_uploader_schema_name": "a", "data_uploader_table_name": "L0"}}'
    sender = mohawk.Sender(
        settings.credentials(), url, "POST", content=signed, content_type="application/json"
    )
    sent = signed.replace(b'"a"', b'"b"')
    headers = {"Authorization": sender.request_header, "Content-Type": "application/json"}
    answer = session.post(url, data=sent, headers=headers)
    assert answer.status_code == 401 and answer.text == "Unauthorized"
    assert session.post(url, data=b"{}", headers={"Content-Type": "application/json"}).status_code == 401
    assert not stand_in.triggers


def test_a_server_error_is_classified(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    stand_in.server.inject(TRIGGER_PATH, Fault(status=500, times=1), method="POST")
    with pytest.raises(DataflowError) as failed:
        trigger_dag(session, settings, "dit.baci", "L1")
    assert (failed.value.kind, failed.value.status) == (DataflowErrorKind.HTTP_STATUS, 500)
    assert failed.value.url == settings.dag_runs_url()
    # The fault was for one call only.
    assert trigger_dag(session, settings, "dit.baci", "L1")


def test_an_unknown_dag_or_run_is_not_found(settings: DataflowSettings, session: requests.Session) -> None:
    with pytest.raises(DataflowError) as missing:
        trigger_dag(session, dataclasses.replace(settings, dag_id="NoSuchDag"), "dit.baci", "L1")
    assert missing.value.kind is DataflowErrorKind.NOT_FOUND and "NoSuchDag" in missing.value.message
    with pytest.raises(DataflowError) as missing:
        dag_state(session, settings, "1999-01-01T00:00:00")
    assert missing.value.kind is DataflowErrorKind.NOT_FOUND


def test_a_server_signature_that_does_not_match_is_refused(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    run_id = trigger_dag(session, settings, "dit.baci", "L1")
    stand_in.response_signing = "wrong_key"
    with pytest.raises(DataflowError) as refused:
        dag_state(session, settings, run_id)
    assert refused.value.kind is DataflowErrorKind.BAD_SIGNATURE
    assert "MacMismatch" in refused.value.message
    with pytest.raises(DataflowError) as refused:
        trigger_dag(session, settings, "dit.baci", "L1")
    assert refused.value.kind is DataflowErrorKind.BAD_SIGNATURE


def test_an_answer_changed_after_signing_is_refused(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    run_id = trigger_dag(session, settings, "dit.baci", "L1")
    signed = stand_in.server.match("GET", f"{TRIGGER_PATH}/{run_id}", {})
    assert signed is not None and signed.handler is not None
    original = signed.handler

    def tampered(request: object) -> object:
        reply = original(request)  # type: ignore[arg-type]
        reply.body = reply.body.replace(b"running", b"success")
        return reply

    signed.handler = tampered  # type: ignore[assignment]
    with pytest.raises(DataflowError) as refused:
        dag_state(session, settings, run_id)
    assert refused.value.kind is DataflowErrorKind.BAD_SIGNATURE


def test_an_unsigned_answer_is_refused_unless_allowed(
    stand_in: DataflowStandIn, settings: DataflowSettings, session: requests.Session
) -> None:
    run_id = trigger_dag(session, settings, "dit.baci", "L1")
    stand_in.response_signing = "none"
    with pytest.raises(DataflowError) as refused:
        dag_state(session, settings, run_id)
    assert refused.value.kind is DataflowErrorKind.UNSIGNED_RESPONSE
    lenient = dataclasses.replace(settings, require_response_signature=False)
    assert dag_state(session, lenient, run_id) == "running"


def test_answers_that_are_not_the_apis_are_bad_responses(
    standin: StandInServer, session: requests.Session
) -> None:
    settings = DataflowSettings(
        base_url=standin.url(), hawk_id="dss", hawk_key=KEY, require_response_signature=False
    )
    standin.route(TRIGGER_PATH, method="POST", json={"message": "Created", "run_id": "not-a-run-id"})
    standin.route(f"{TRIGGER_PATH}/2020-01-01T00:00:00", body=b"<html>gateway</html>")
    standin.route(f"{TRIGGER_PATH}/2020-01-02T00:00:00", json={"status": "ok"})
    with pytest.raises(DataflowError) as bad:
        trigger_dag(session, settings, "dit.baci", "L1")
    assert bad.value.kind is DataflowErrorKind.BAD_RESPONSE and "not-a-run-id" in bad.value.message
    for run_id in ("2020-01-01T00:00:00", "2020-01-02T00:00:00"):
        with pytest.raises(DataflowError) as bad:
            dag_state(session, settings, run_id)
        assert bad.value.kind is DataflowErrorKind.BAD_RESPONSE


def test_an_unreachable_data_flow_is_a_connection_error(session: requests.Session) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = DataflowSettings(base_url=f"http://127.0.0.1:{port}", hawk_id="dss", hawk_key=KEY)
    with pytest.raises(DataflowError) as failed:
        trigger_dag(session, settings, "dit.baci", "L1")
    assert failed.value.kind is DataflowErrorKind.CONNECTION


def test_the_key_never_shows_in_errors_or_logs(
    stand_in: DataflowStandIn,
    settings: DataflowSettings,
    session: requests.Session,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    errors: list[DataflowError] = []
    run_id = trigger_dag(session, settings, "dit.baci", "L1")
    wait_for_dag(session, settings, run_id, poll_seconds=0.01)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("valid", lambda: trigger_dag(session, dataclasses.replace(settings, hawk_key=KEY + "x"), "s", "L0")),
        ("valid", lambda: dag_state(session, settings, "1999-01-01T00:00:00")),
        ("wrong_key", lambda: dag_state(session, settings, run_id)),
        ("none", lambda: dag_state(session, settings, run_id)),
    ]
    for signing, call in cases:
        stand_in.response_signing = signing  # type: ignore[assignment]
        with pytest.raises(DataflowError) as failed:
            call()
        errors.append(failed.value)
    texts = [caplog.text, repr(settings)]
    texts += [f"{e} {e!r} {e.message} {json.dumps(e.as_dict())} {e.args}" for e in errors]
    assert all(KEY not in text for text in texts)
    assert "seen_nonce was None" not in caplog.text  # mohawk's warning is not for answers


def test_a_key_echoed_by_the_server_is_scrubbed(standin: StandInServer, session: requests.Session) -> None:
    settings = DataflowSettings(
        base_url=standin.url(), hawk_id="dss", hawk_key=KEY, require_response_signature=False
    )
    standin.route(TRIGGER_PATH, method="POST", body=f"bad key {KEY}".encode())
    with pytest.raises(DataflowError) as bad:
        trigger_dag(session, settings, "dit.baci", "L1")
    assert bad.value.kind is DataflowErrorKind.BAD_RESPONSE
    assert KEY not in str(bad.value) and "***" in str(bad.value)


def test_the_module_exports_the_final_states() -> None:
    assert (dataflow.SUCCESS, dataflow.FAILED, dataflow.TIMEOUT) == ("success", "failed", "timeout")
