"""The code location loads, every asset is documented, and the bare Dagster CLI forms the users rely
on work from the checkout with nothing but the ``.env`` that ``python -m ecr_pipelines env`` writes,
against a Postgres-backed Dagster instance."""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import requests
import sqlalchemy as sa

from ecr_pipelines.lib.database import ensure_database
from ecr_pipelines.lib.environment import LOCAL_KEYS, read_dotenv

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
# Local state that must not be carried into the view of the checkout below.
_NOT_SHARED = {".env", ".git", ".venv", ".ecr", ".pytest_cache", ".ruff_cache"}


def _defs() -> dg.Definitions:
    from ecr_pipelines.definitions import defs

    return defs


def test_definitions_load_and_every_job_resolves() -> None:
    defs = _defs()
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    for job in repo.get_all_jobs():
        assert defs.resolve_job_def(job.name) is not None


def test_every_asset_has_a_description_and_a_service_group() -> None:
    groups = {"platform", "registry", "iati", "ckan", "datastore", "energy"}
    for spec in _defs().resolve_all_asset_specs():
        assert spec.description and len(spec.description) > 30, spec.key
        assert spec.group_name in groups, spec.key


def test_no_asset_module_uses_future_annotations() -> None:
    # Dagster compares the raw annotation of `context`; the future import turns it into a string.
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "ecr_pipelines").rglob("*.py")
        if "from __future__ import annotations" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory, pg_server_url: str, database_url: str) -> Path:
    """The checkout as the Dagster CLI sees it, with a ``.env`` written by ``python -m
    ecr_pipelines env``.

    A folder of links to the checkout's files (the same workspace.yaml, pyproject.toml and
    package) stands in for the checkout itself, whose own ``.env`` belongs to the developer's
    ``make demo`` and must be neither read nor overwritten by the suite.
    """
    view = tmp_path_factory.mktemp("checkout")
    for entry in REPO.iterdir():
        if entry.name not in _NOT_SHARED and not entry.name.startswith(".tmp_dagster_home_"):
            (view / entry.name).symlink_to(entry)
    home = tmp_path_factory.mktemp("ecr_home_cli")
    env = _bare_env()
    env.update(
        ECR_HOME=str(home),
        DATABASE_URL=database_url,
        DAGSTER_PG_URL=ensure_database(pg_server_url, "dagster_dotenv"),
        DAGSTER_HOME=str(home / "dagster_home"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "ecr_pipelines", "env", "--dotenv", str(view / ".env")],
        cwd=view,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pool solr: limit 1" in done.stderr  # the instance was set up on the way
    return view


def _bare_env() -> dict[str, str]:
    """The environment of a shell that never evaluated `python -m ecr_pipelines env`."""
    env = {k: v for k, v in os.environ.items() if k not in LOCAL_KEYS}
    env["PYTHONWARNINGS"] = "ignore"
    return env


def _dagster(checkout: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DAGSTER, *args], cwd=checkout, env=_bare_env(), capture_output=True, text=True, timeout=timeout
    )


def test_the_dotenv_holds_the_local_set_up_and_the_shell_wins(
    checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in LOCAL_KEYS:
        monkeypatch.delenv(key, raising=False)
    values = read_dotenv(checkout / ".env")
    assert sorted(values) == sorted(LOCAL_KEYS)
    assert (Path(values["DAGSTER_HOME"]) / "dagster.yaml").is_file()
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg2://elsewhere/db")
    assert read_dotenv(checkout / ".env")["DATABASE_URL"] == "postgresql+psycopg2://elsewhere/db"
    assert (checkout / ".env").stat().st_mode & 0o077 == 0


@pytest.mark.slow
def test_dagster_definitions_validate_from_the_checkout(checkout: Path) -> None:
    done = _dagster(checkout, "definitions", "validate", "-w", "workspace.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "All code locations passed validation" in done.stderr + done.stdout
    # The instance of the .env, not a temporary one.
    assert "Using temporary directory" not in done.stderr


@pytest.mark.slow
def test_dagster_job_execute_from_the_checkout_stores_the_run_in_postgres(
    checkout: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = _dagster(checkout, "job", "execute", "-m", "ecr_pipelines.definitions", "-j", "platform_check_job")
    assert done.returncode == 0, done.stderr[-3000:]
    for key in LOCAL_KEYS:  # the .env as the bare shell of the command resolved it
        monkeypatch.delenv(key, raising=False)
    engine = sa.create_engine(read_dotenv(checkout / ".env")["DAGSTER_PG_URL"])
    with engine.connect() as conn:
        statuses = (
            conn.execute(sa.text("SELECT status FROM runs WHERE pipeline_name = 'platform_check_job'"))
            .scalars()
            .all()
        )
    engine.dispose()
    assert "SUCCESS" in statuses


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dagster_dev(checkout: Path) -> Iterator[str]:
    port = _free_port()
    # A session of its own: dagster dev ends its webserver and daemon on SIGTERM then.
    child = subprocess.Popen(
        [DAGSTER, "dev", "-h", "127.0.0.1", "-p", str(port)],
        cwd=checkout,
        env=_bare_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


@pytest.mark.slow
def test_dagster_dev_from_the_checkout_serves_the_location_on_the_dotenv_instance(dagster_dev: str) -> None:
    query = {"query": "{ instance { info } workspaceOrError { ... on Workspace { locationEntries { name "
             "loadStatus locationOrLoadError { __typename } } } } }"}  # fmt: skip
    deadline = time.monotonic() + 240  # start-up on a busy 2-core machine; not an assertion
    answer: dict | None = None
    while time.monotonic() < deadline:
        try:
            answer = requests.post(f"{dagster_dev}/graphql", json=query, timeout=10).json()
            entries = answer["data"]["workspaceOrError"]["locationEntries"]
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                break
        except (requests.RequestException, ValueError, KeyError, TypeError):
            pass
        time.sleep(1)
    assert answer is not None, "dagster dev never answered"
    [entry] = answer["data"]["workspaceOrError"]["locationEntries"]
    assert entry["locationOrLoadError"]["__typename"] == "RepositoryLocation", entry
    assert "PostgresRunStorage" in answer["data"]["instance"]["info"]


def test_readme_documents_every_environment_variable() -> None:
    from ecr_pipelines.lib.settings import ENV_VARS

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert [v.name for v in ENV_VARS if f"`{v.name}`" not in readme] == []
