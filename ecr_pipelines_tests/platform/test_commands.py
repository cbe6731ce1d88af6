"""``python -m ecr_pipelines``: the stand-ins on their own, the local ``.env``, and the answers when
the development code is missing (as in the Docker image)."""

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ecr_pipelines.lib.environment import LOCAL_KEYS, read_dotenv, write_dotenv

# The command line with ecr_pipelines.dev made unimportable, as where it is not installed.
_WITHOUT_DEV = """
import sys
class Absent:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "ecr_pipelines.dev" or name.startswith("ecr_pipelines.dev."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Absent)
from ecr_pipelines.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start(name: str, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ecr_pipelines", "standin", name, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _wait_until_up(child: subprocess.Popen[str], url: str) -> requests.Response:
    deadline = time.monotonic() + 60  # start-up on a busy machine; not an assertion
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise AssertionError(f"the stand-in exited: {child.stderr.read() if child.stderr else ''}")
        try:
            return requests.get(url, timeout=5)
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError(f"nothing answered on {url}")


def _stop(child: subprocess.Popen[str]) -> tuple[int, str]:
    child.send_signal(signal.SIGTERM)
    out, _err = child.communicate(timeout=30)
    return child.returncode, out


def test_solr_standin_starts_empty_with_the_shipped_schemas() -> None:
    port = _free_port()
    child = _start("solr", port)
    try:
        base = f"http://127.0.0.1:{port}/solr"
        assert _wait_until_up(child, f"{base}/activity/admin/ping?wt=json").json()["status"] == "OK"
        for collection in ("activity", "transaction", "budget"):
            found = requests.get(f"{base}/{collection}/select", params={"q": "*:*", "wt": "json"}, timeout=5)
            assert found.status_code == 200 and found.json()["response"]["numFound"] == 0
        # The shipped activity schema is loaded: a document without its required fields is refused.
        refused = requests.post(f"{base}/activity/update?commit=true", json=[{"id": "x"}], timeout=5)
        assert refused.status_code == 400
        assert "missing required field: iati_activities_document_id" in refused.json()["error"]["msg"]
    finally:
        returncode, out = _stop(child)
    assert returncode == 0
    assert f"export SOLR_URL=http://127.0.0.1:{port}/solr" in out


def test_registry_standin_serves_the_recordings_and_prints_the_client_settings() -> None:
    port = _free_port()
    child = _start("registry", port)
    try:
        base = f"http://127.0.0.1:{port}"
        page = _wait_until_up(child, f"{base}/fgas/rest/api/latest/fgasundertakings/?pageNumber=1")
        assert page.status_code == 200 and page.headers["numberOfPages"] == "2"
        assert isinstance(page.json(), list) and page.json()
    finally:
        returncode, out = _stop(child)
    assert returncode == 0
    exports = dict(
        shlex.split(line)[1].split("=", 1) for line in out.splitlines() if line.startswith("export ")
    )
    assert exports["BASE_URL_FGAS"] == f"http://127.0.0.1:{port}/fgas"


def test_standin_refuses_unknown_names_and_busy_ports() -> None:
    from ecr_pipelines.__main__ import main

    assert main(["standin", "no-such-service"]) == 2
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["standin", "iati", "--port", str(busy.getsockname()[1])]) == 2


@pytest.mark.parametrize("command", [["standin", "solr"], ["demo"], ["dev"]])
def test_without_the_development_code_the_commands_say_what_is_missing(command: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_DEV, *command], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "ecr_pipelines.dev" in done.stderr and "not installed" in done.stderr
    assert "Traceback" not in done.stderr


def test_write_dotenv_keeps_other_lines_and_replaces_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [*LOCAL_KEYS, "SOLR_URL"]:
        monkeypatch.delenv(key, raising=False)
    target = tmp_path / ".env"
    target.write_text("SOLR_URL=http://127.0.0.1:8983/solr\nexport DATABASE_URL=postgresql://old/db\n")
    odd = 'postgresql+psycopg2://u:p"a\\ss@/db?host=/tmp/x y'
    write_dotenv({"DATABASE_URL": odd, "ECR_HOME": "/tmp/ecr"}, target)
    write_dotenv({"DATABASE_URL": odd, "ECR_HOME": "/tmp/ecr"}, target)  # idempotent
    assert read_dotenv(target) == {
        "SOLR_URL": "http://127.0.0.1:8983/solr",
        "DATABASE_URL": odd,
        "ECR_HOME": "/tmp/ecr",
    }
    assert target.read_text().count("DATABASE_URL=") == 1
    # A value that cannot be a ${...:-default} is still written, as a plain value.
    write_dotenv({"DATABASE_URL": "postgresql://u:p}w@h/db"}, target)
    assert read_dotenv(target)["DATABASE_URL"] == "postgresql://u:p}w@h/db"


def test_env_command_prints_exports_and_writes_the_dotenv(
    database_url: str, pg_server_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from ecr_pipelines.__main__ import main
    from ecr_pipelines.lib.database import ensure_database

    monkeypatch.setenv("ECR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DAGSTER_PG_URL", ensure_database(pg_server_url, "dagster_env_cmd"))
    # Every variable `env` applies is set through monkeypatch, so all of them are restored.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster_home"))
    assert main(["env", "--dotenv", str(tmp_path / ".env")]) == 0
    captured = capsys.readouterr()
    exported = dict(shlex.split(line)[1].split("=", 1) for line in captured.out.splitlines())
    assert sorted(exported) == sorted(LOCAL_KEYS)
    assert exported["DAGSTER_HOME"] == str(tmp_path / "home" / "dagster_home")
    assert "pool solr: limit 1" in captured.err
    for key in LOCAL_KEYS:
        monkeypatch.delenv(key, raising=False)
    assert read_dotenv(tmp_path / ".env") == exported
