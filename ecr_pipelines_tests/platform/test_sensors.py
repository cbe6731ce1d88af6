"""The failure-mail sensor: on by default exactly when ALERT_MAIL_TO is set, and what it mails."""

import email
from email import policy
from pathlib import Path

import dagster as dg
import pytest

from ecr_pipelines.platform.sensors import SENSOR_NAME, build_run_failure_mail_sensor
from ecr_pipelines.resources import MailResource


@dg.op
def refuse() -> None:
    raise dg.Failure("upstream index shrank by 80 %")


@dg.job
def refusing_job() -> None:
    refuse()


def _evaluate_on_a_failed_run(sensor: dg.SensorDefinition, outbox: Path) -> dg.DagsterRun:
    with dg.instance_for_test() as instance:
        result = refusing_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        context = dg.build_run_status_sensor_context(
            sensor_name=SENSOR_NAME,
            dagster_event=failure,
            dagster_instance=instance,
            dagster_run=run,
            resources={"mail": MailResource(outbox_dir=str(outbox))},
        ).for_run_failure()
        sensor(context)  # type: ignore[operator]
        return run


def test_sensor_is_running_by_default_when_alert_mail_to_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERT_MAIL_TO", "ops@example.test")
    sensor = build_run_failure_mail_sensor()
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert "ALERT_MAIL_TO is set" in (sensor.description or "")
    monkeypatch.setenv("ALERT_MAIL_TO", " , ")
    assert build_run_failure_mail_sensor().default_status == dg.DefaultSensorStatus.STOPPED
    monkeypatch.delenv("ALERT_MAIL_TO")
    assert build_run_failure_mail_sensor().default_status == dg.DefaultSensorStatus.STOPPED


def test_the_code_location_carries_the_sensor() -> None:
    from ecr_pipelines.definitions import defs

    assert defs.resolve_sensor_def(SENSOR_NAME) is not None


def test_a_failed_run_is_mailed_to_every_recipient(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALERT_MAIL_TO", "ops@example.test, oncall@example.test")
    run = _evaluate_on_a_failed_run(build_run_failure_mail_sensor(), tmp_path)
    [eml] = tmp_path.glob("*.eml")
    message = email.message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert message["To"] == "ops@example.test, oncall@example.test"
    assert message["Subject"] == "[ecr_pipelines] run of refusing_job failed"
    assert run.run_id in message.get_content()


def test_without_recipients_nothing_is_mailed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ALERT_MAIL_TO", "ops@example.test")
    sensor = build_run_failure_mail_sensor()  # started while the variable was set ...
    monkeypatch.delenv("ALERT_MAIL_TO")  # ... and the variable is gone by the tick
    _evaluate_on_a_failed_run(sensor, tmp_path)
    assert list(tmp_path.glob("*.eml")) == []
