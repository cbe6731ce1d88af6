"""Database resource, embedded Postgres and migrations, against real Postgres servers."""

import json
import os
import shutil
import subprocess
import sys
import threading

import dagster as dg
import pytest
import sqlalchemy as sa

from ecr_pipelines.lib.database import DatabaseConfigError, engine_for, normalise_url
from ecr_pipelines.lib.migrations import (
    SchemaVersionError,
    assert_schema_current,
    current_version,
    downgrade,
    head_version,
    status,
    upgrade,
)
from ecr_pipelines.lib.settings import SERVICE_SCHEMAS
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.conftest import outside_pytest_tmp


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+psycopg2://u:p@h:5432/d"),
        ("postgresql://u:p@h/d", "postgresql+psycopg2://u:p@h/d"),
        ("postgresql+psycopg2://u@h/d", "postgresql+psycopg2://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg2://u@h/d"),
        (
            "postgresql://postgres:@/postgres?host=/tmp/sock",
            "postgresql+psycopg2://postgres:@/postgres?host=%2Ftmp%2Fsock",
        ),
        ("  postgresql://u:p%40ss@h/d  ", "postgresql+psycopg2://u:p%40ss@h/d"),
    ],
)
def test_urls_users_paste_are_normalised_to_one_driver(given: str, expected: str) -> None:
    assert normalise_url(given) == expected


@pytest.mark.parametrize("bad", ["mysql://u@h/d", "not a url", "sqlite:///x.db"])
def test_non_postgres_urls_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(DatabaseConfigError) as err:
        normalise_url(bad)
    assert "u@h" not in str(err.value)


def _schema_names(url: str) -> set[str]:
    with engine_for(url).connect() as conn:
        return set(conn.scalars(sa.text("SELECT nspname FROM pg_namespace")))


def test_migrations_go_up_down_and_up_again(fresh_database: str) -> None:
    engine = engine_for(fresh_database)
    assert status(engine).current == 0
    applied = upgrade(engine)
    assert [m.version for m in applied] == list(range(1, head_version() + 1))
    assert set(SERVICE_SCHEMAS) <= _schema_names(fresh_database)
    assert upgrade(engine) == []  # idempotent

    reverted = downgrade(engine, 0)
    assert [m.version for m in reverted] == list(range(head_version(), 0, -1))
    assert not set(SERVICE_SCHEMAS) & _schema_names(fresh_database)
    assert status(engine).current == 0

    upgrade(engine)
    st = status(engine)
    assert st.up_to_date and not st.pending and not st.modified
    assert [v for v, _, _ in st.applied] == list(range(1, head_version() + 1))


def test_concurrent_upgrades_apply_each_file_once(fresh_database: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            upgrade(sa.create_engine(fresh_database))
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    with engine_for(fresh_database).connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM public.ecr_schema_migrations")) == head_version()


def test_assets_refuse_a_database_at_another_version(fresh_database: str) -> None:
    engine = engine_for(fresh_database)
    with pytest.raises(SchemaVersionError, match="python -m ecr_pipelines db upgrade"):
        assert_schema_current(engine)

    @dg.asset
    def needs_db(db: DatabaseResource) -> None:
        db.engine  # noqa: B018 - first use runs the version check

    result = dg.materialize(
        [needs_db], resources={"db": DatabaseResource(url=fresh_database)}, raise_on_error=False
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert "Run `python -m ecr_pipelines db upgrade`" in failure.to_string()

    upgrade(engine)
    assert dg.materialize([needs_db], resources={"db": DatabaseResource(url=fresh_database)}).success


def test_database_newer_than_code_names_the_downgrade(fresh_database: str) -> None:
    engine = engine_for(fresh_database)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO public.ecr_schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')"
            )
        )
        assert current_version(conn) == 999
    with pytest.raises(SchemaVersionError, match=f"db downgrade {head_version()}"):
        assert_schema_current(engine)


def test_db_status_command_prints_the_applied_version(database_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ecr_pipelines", "db", "status"],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"applied version: {head_version()} (code: {head_version()})" in out
    assert "0001_service_schemas" in out


_ATTACH = """
import json, sys
from ecr_pipelines.lib.database import embedded_server_url
import sqlalchemy as sa
url = embedded_server_url()
with sa.create_engine(url).connect() as conn:
    pid = conn.scalar(sa.text("SELECT pg_postmaster_start_time()::text"))
print(json.dumps({"url": url, "started": pid}))
"""


def test_embedded_postgres_starts_once_and_is_reused_by_a_second_process() -> None:
    tmp_path = outside_pytest_tmp("ecr-test-home-")
    env = {**os.environ, "ECR_HOME": str(tmp_path)}
    env.pop("DATABASE_URL", None)
    try:
        runs = [
            json.loads(
                subprocess.run(
                    [sys.executable, "-c", _ATTACH], env=env, capture_output=True, text=True, check=True
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            for _ in range(2)
        ]
        assert runs[0] == runs[1]  # same server, same postmaster start time: reused, not restarted
        assert str(tmp_path / "pgdata") in runs[0]["url"].replace("%2F", "/")
    finally:
        subprocess.run(
            [sys.executable, "-m", "ecr_pipelines", "db", "stop"], env=env, capture_output=True, check=False
        )
        shutil.rmtree(tmp_path, ignore_errors=True)
