"""The application itself: the health check, the JSON access log without secrets, and the
command that serves it."""

import json
import logging

import pytest
import requests

from ecr_pipelines.api.context import ApiSettings
from ecr_pipelines_tests.api.conftest import ServeApi


def test_healthcheck_and_an_access_log_line_without_query_or_headers(
    serve_api: ServeApi, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    base = serve_api(ApiSettings(database_url=database_url, api_token="t0ken"))
    with caplog.at_level(logging.INFO, logger="ecr_pipelines.api.access"):
        assert requests.get(f"{base}/healthcheck", timeout=5).json() == {"status": "OK"}
        assert requests.get(f"{base}/healthcheck/", timeout=5).json() == {"status": "OK"}
        missing = requests.get(f"{base}/nowhere?secret=hush", headers={"Authorization": "t0ken"}, timeout=5)
    assert missing.status_code == 404
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ecr_pipelines.api.access"]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("GET", "/healthcheck", 200),
        ("GET", "/healthcheck/", 200),
        ("GET", "/nowhere", 404),
    ]
    assert all(set(line) == {"method", "path", "status", "ms", "client"} for line in lines)
    assert "hush" not in caplog.text and "t0ken" not in caplog.text


def test_settings_keep_secrets_out_of_their_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "registry-secret")
    monkeypatch.setenv("CKAN_SECRET", "ckan-secret")
    monkeypatch.setenv("DSS_PAGINATION_SIZE", "25")
    settings = ApiSettings.from_env()
    assert settings.api_token == "registry-secret" and settings.pagination_size == 25
    assert "secret" not in repr(settings)


@pytest.mark.slow
def test_the_command_serves_the_application_with_json_access_lines(database_url: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from ecr_pipelines_tests.api.conftest import _free_port

    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "API_PORT": str(port),
        "API_WORKERS": "2",
        "API_TOKEN": "x",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "ecr_pipelines", "api"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/healthcheck", timeout=2)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, "the API did not start"
                time.sleep(0.2)
        assert answer.json() == {"status": "OK"}
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
    access = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert {"method": "GET", "path": "/healthcheck", "status": 200} in [
        {key: line[key] for key in ("method", "path", "status")} for line in access
    ]
