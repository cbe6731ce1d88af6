"""`make demo`'s engine: every asset against the stand-ins, twice in a row."""

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from ecr_pipelines.resources.database import ensure_database


def test_demo_runs_every_asset_and_is_idempotent(
    pg_server_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ecr_pipelines.demo import run_demo

    monkeypatch.setenv("ECR_HOME", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", ensure_database(pg_server_url, "demo_test"))
    monkeypatch.setenv("DAGSTER_PG_URL", ensure_database(pg_server_url, "demo_dagster"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    for attempt in range(2):
        assert run_demo() == 0, f"demo run {attempt + 1} failed"
        out = capsys.readouterr().out
        assert "platform_status" in out and "success" in out
    app = sa.create_engine(os.environ["DATABASE_URL"])
    with app.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM registry.undertaking")) > 0
        assert conn.scalar(sa.text("SELECT count(*) FROM registry.old_company_link")) > 0
        assert conn.scalar(sa.text("SELECT count(*) FROM registry.substance")) > 0
    app.dispose()
    engine = sa.create_engine(os.environ["DAGSTER_PG_URL"])
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")) == 2
    engine.dispose()
