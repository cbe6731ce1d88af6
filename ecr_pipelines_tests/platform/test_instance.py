"""The Dagster instance the repository's dagster.yaml describes, and its set-up (pool limits), on
Postgres-backed instances."""

import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from ecr_pipelines.__main__ import main
from ecr_pipelines.lib.database import ensure_database, with_database
from ecr_pipelines.platform.pools import default_pool_limit, ensure_pools, pools_of

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def dagster_db(pg_server_url: str) -> Iterator[str]:
    """A fresh Dagster database: an instance on it starts with no pool rows."""
    name = f"dg_{uuid.uuid4().hex[:10]}"
    url = ensure_database(pg_server_url, name)
    yield url
    admin = sa.create_engine(with_database(pg_server_url, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_instance(dagster_db: str) -> Iterator[dg.DagsterInstance]:
    overrides = {
        "storage": {"postgres": {"postgres_url": dagster_db}},
        "concurrency": {"pools": {"default_limit": 1}},
    }
    with dg.instance_for_test(overrides=overrides) as instance:
        yield instance


@pytest.fixture
def repo_instance_home(dagster_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DAGSTER_HOME holding the repository's dagster.yaml, on a fresh database."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", dagster_db)
    monkeypatch.chdir(tmp_path)  # no stray ./.env
    return home


def _limits(instance: dg.DagsterInstance) -> dict[str, int]:
    return {limit.name: limit.limit for limit in instance.event_log_storage.get_pool_limits()}


def test_dagster_yaml_retries_crashed_runs_but_never_failed_steps(repo_instance_home: Path) -> None:
    with dg.DagsterInstance.get() as instance:
        assert instance.run_retries_enabled is True
        assert instance.run_retries_max_retries == 1
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert default_pool_limit(instance) == 1
        assert instance.run_monitoring_enabled is True


def test_pools_of_finds_asset_op_and_check_pools() -> None:
    @dg.asset(pool="downloads")
    def downloaded() -> None: ...

    @dg.asset_check(asset=downloaded, pool="checks")
    def looks_right() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    @dg.op(pool="mail")
    def send() -> None: ...

    @dg.job
    def mail_job() -> None:
        send()

    defs = dg.Definitions(assets=[downloaded], asset_checks=[looks_right], jobs=[mail_job])
    assert pools_of(defs) == {"downloads", "checks", "mail"}


def test_the_code_location_pools_include_the_legacy_queues() -> None:
    from ecr_pipelines.definitions import defs

    assert {"solr", "bdr"} <= pools_of(defs)


def test_ensure_pools_sets_missing_limits_and_keeps_existing_ones(pg_instance: dg.DagsterInstance) -> None:
    assert _limits(pg_instance) == {}
    pg_instance.event_log_storage.set_concurrency_slots("solr", 3)  # raised by an operator
    done = ensure_pools(pg_instance, {"solr", "downloads", "bdr"}, default_limit=1)
    assert [(s.pool, s.limit, s.action) for s in done] == [
        ("bdr", 1, "set"),
        ("downloads", 1, "set"),
        ("solr", 3, "kept"),
    ]
    assert _limits(pg_instance) == {"solr": 3, "downloads": 1, "bdr": 1}
    again = ensure_pools(pg_instance, {"solr", "downloads", "bdr"}, default_limit=1)
    assert {s.action for s in again} == {"kept"}
    # The slots exist too, so a step can claim one straight away.
    assert pg_instance.event_log_storage.get_concurrency_info("downloads").slot_count == 1


def test_ensure_pools_without_a_default_limit_does_nothing(pg_instance: dg.DagsterInstance) -> None:
    assert ensure_pools(pg_instance, {"solr"}, default_limit=None) == []
    assert _limits(pg_instance) == {}


def test_two_set_ups_at_once_on_a_fresh_instance_both_succeed(dagster_db: str) -> None:
    # The failure this replaces: two runs starting together both inserting a pool's row.
    pools = {f"pool_{i}" for i in range(20)}
    overrides = {
        "storage": {"postgres": {"postgres_url": dagster_db}},
        "concurrency": {"pools": {"default_limit": 2}},
    }
    with (
        dg.instance_for_test(overrides=overrides) as first,
        dg.instance_for_test(overrides=overrides) as second,
    ):
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def set_up(instance: dg.DagsterInstance) -> None:
            try:
                start.wait()
                ensure_pools(instance, pools, default_pool_limit(instance))
            except BaseException as exc:  # reported below, with the thread's failure
                errors.append(exc)

        threads = [threading.Thread(target=set_up, args=(i,)) for i in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        assert _limits(first) == dict.fromkeys(pools, 2)


def test_instance_setup_command_creates_the_code_location_pools(
    repo_instance_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["instance", "setup"]) == 0
    out = capsys.readouterr().out
    assert "pool solr: limit 1 (set now)" in out
    with dg.DagsterInstance.get() as instance:
        assert _limits(instance)["solr"] == 1
    assert main(["instance", "setup"]) == 0
    assert "pool solr: limit 1 (kept)" in capsys.readouterr().out


def test_instance_setup_reads_a_dotenv_in_the_working_directory(
    repo_instance_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ecr_pipelines.lib.environment import write_dotenv

    write_dotenv({"DAGSTER_HOME": str(repo_instance_home)}, tmp_path / ".env")
    monkeypatch.delenv("DAGSTER_HOME")
    assert main(["instance", "setup"]) == 0
    assert "from ./.env: DAGSTER_HOME" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("unset", "hint"),
    [("DAGSTER_HOME", "DAGSTER_HOME is not set"), ("DAGSTER_PG_URL", "DAGSTER_PG_URL is not set")],
)
def test_instance_setup_names_the_command_when_the_instance_is_not_configured(
    repo_instance_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    unset: str,
    hint: str,
) -> None:
    monkeypatch.delenv(unset)
    assert main(["instance", "setup"]) == 2
    err = capsys.readouterr().err
    assert hint in err and "python -m ecr_pipelines env" in err


def test_db_upgrade_sets_up_the_pools_when_an_instance_is_configured(
    repo_instance_home: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["db", "upgrade"]) == 0
    assert "pool solr: limit 1 (set now)" in capsys.readouterr().err
    # Migrations alone (DAGSTER_PG_URL missing, as in a migrations-only container) still succeed.
    monkeypatch.delenv("DAGSTER_PG_URL")
    assert main(["db", "upgrade"]) == 0
    err = capsys.readouterr().err
    assert "pool limits not set up" in err and "DAGSTER_PG_URL is not set" in err
