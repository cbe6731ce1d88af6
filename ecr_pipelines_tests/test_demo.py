"""`make demo`'s engine: every asset against the stand-ins, twice in a row, leaving the `.env` that
the bare Dagster CLI reads and the pool limits set up."""

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from ecr_pipelines.lib.database import ensure_database
from ecr_pipelines.lib.environment import LOCAL_KEYS, read_dotenv


@pytest.fixture
def restored_environ() -> Iterator[None]:
    # The demo points the clients at its stand-ins through os.environ (BASE_URL_FGAS, SOLR_URL, ...);
    # none of that may reach the next test.
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.slow
def test_demo_runs_every_asset_and_is_idempotent(
    pg_server_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restored_environ: None,
) -> None:
    from ecr_pipelines.dev.demo import run_demo

    monkeypatch.setenv("ECR_HOME", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", ensure_database(pg_server_url, "demo_test"))
    monkeypatch.setenv("DAGSTER_PG_URL", ensure_database(pg_server_url, "demo_dagster"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    dotenv = tmp_path / "checkout" / ".env"
    for attempt, pools in enumerate(["set now", "kept"]):
        assert run_demo(dotenv=dotenv) == 0, f"demo run {attempt + 1} failed"
        out = capsys.readouterr().out
        assert "platform_status" in out and "success" in out
        assert f"pool solr: limit 1 ({pools})" in out
    expected = {key: os.environ[key] for key in LOCAL_KEYS}
    for key in LOCAL_KEYS:
        monkeypatch.delenv(key)
    assert read_dotenv(dotenv) == expected
    app = sa.create_engine(expected["DATABASE_URL"])
    with app.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM registry.undertaking")) > 0
        assert conn.scalar(sa.text("SELECT count(*) FROM registry.old_company_link")) > 0
        assert conn.scalar(sa.text("SELECT count(*) FROM registry.substance")) > 0
        # Data store: a placed file, a downloaded one, SPIRE and the upload (loaded once, not twice).
        assert conn.scalar(sa.text('SELECT count(*) FROM "dit.baci"."L0"')) == 2
        assert conn.scalar(sa.text('SELECT count(*) FROM "hmrc.exporters"."L1"')) > 0
        assert conn.scalar(sa.text("SELECT count(*) FROM spire.applications")) > 0
        assert (
            conn.scalar(
                sa.text("SELECT count(*) FROM datastore.pipeline_data_file WHERE state = 'completed'")
            )
            == 1
        )
        assert (
            conn.scalar(
                sa.text("SELECT count(*) FROM operations.datafile_registry WHERE state::text <> 'processed'")
            )
            == 0
        )
        # Energy: the customer's two points, their hours once (the second run adds none), the
        # turbine's GGOs, every webhook sent, and one compiled disclosure per run with the two
        # GGOs the ledger stand-in retired to the household.
        assert conn.scalar(sa.text("SELECT count(*) FROM energy.meteringpoint")) == 2
        hours = conn.scalar(sa.text("SELECT count(*) FROM energy.measurement"))
        assert hours > 0 and hours == conn.scalar(
            sa.text("SELECT count(DISTINCT (gsrn, begin)) FROM energy.measurement")
        )
        assert 0 < conn.scalar(sa.text("SELECT count(*) FROM energy.ggo")) < hours / 2
        assert (
            conn.scalar(sa.text("SELECT count(*) FROM energy.webhook_delivery WHERE status <> 'sent'")) == 0
        )
        assert conn.scalar(sa.text("SELECT count(*) FROM energy.disclosure WHERE state = 'AVAILABLE'")) == 2
        assert conn.scalar(sa.text("SELECT count(*) FROM energy.disclosure_ggo")) == 4
    app.dispose()
    engine = sa.create_engine(expected["DAGSTER_PG_URL"])
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM runs WHERE status = 'SUCCESS'")) == 2
    engine.dispose()
    with dg.instance_for_test(
        overrides={"storage": {"postgres": {"postgres_url": expected["DAGSTER_PG_URL"]}}}
    ) as i:
        assert {limit.name for limit in i.event_log_storage.get_pool_limits()} >= {"solr", "bdr"}
