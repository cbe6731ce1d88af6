"""Shared test infrastructure: real parts on loopback, no patched clients.

- one embedded Postgres (pgserver) for the session, in a temporary folder, deleted at the end;
  the application database on it is migrated once, and ``fresh_database`` makes throwaway ones;
- an S3 server (moto's server mode) and an SMTP server (aiosmtpd), both on 127.0.0.1;
- ``standin``: an empty stand-in HTTP server per test, for the test to fill with routes.

``ECR_HOME`` points at a temporary folder so nothing is written into the checkout.

Under pytest-xdist (``make test`` runs two workers) every session fixture exists once per worker:
each worker has its own Postgres, S3 and ``ECR_HOME``, so the fixed database names below never
meet another worker's.
"""

import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.lib.database import ensure_database, normalise_url, with_database
from ecr_pipelines.lib.migrations import upgrade
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource

# Variables from a developer's shell must not leak into the suite (it would touch their data).
for _name in (
    "DATABASE_URL",
    "DAGSTER_PG_URL",
    "BLOB_STORE_URL",
    "SMTP_URL",
    "S3_ENDPOINT_URL",
    "DAGSTER_HOME",
):
    os.environ.pop(_name, None)
# Credentials for the moto S3 server (any will do). Set here, not by the `s3_endpoint` fixture: a
# test may set that fixture up in its body (request.getfixturevalue), and what a test's body sets
# in the environment is undone after it (`_same_environment_for_every_test`).
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules with tests marked ``slow`` run first: those whose tests all are, then the others
    by their share of slow tests; each module stays whole and in its own order.

    The slow tests (a daemon, CLI runs) take a minute or two where most take a second: started
    last, one of them would keep one xdist worker busy long after the other ran out of work.
    ``make test`` hands out whole modules (``--dist loadfile``) in this order.
    """
    total: dict[Path, int] = {}
    slow: dict[Path, int] = {}
    for item in items:
        total[item.path] = total.get(item.path, 0) + 1
        if item.get_closest_marker("slow"):
            slow[item.path] = slow.get(item.path, 0) + 1
    items.sort(key=lambda item: -slow.get(item.path, 0) / total[item.path])  # a stable sort


@pytest.fixture(scope="session", autouse=True)
def ecr_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("ecr_home")
    os.environ["ECR_HOME"] = str(home)
    return home


@pytest.fixture(autouse=True)
def _same_environment_for_every_test() -> Iterator[None]:
    """Whatever a test (or the code it runs, such as the demo pointing clients at its stand-ins)
    leaves in ``os.environ`` is undone after it.

    The order of the tests differs between ``make test`` (slow modules first, two workers) and a
    run of a few files; a variable left behind would make a later test pass or fail by that order.
    Session and module fixtures are set up before this one, so what they set stays.
    """
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)


def outside_pytest_tmp(prefix: str) -> Path:
    """A temporary folder outside pytest's tree.

    As root, pgserver runs Postgres as the user ``pgserver`` and opens the folder's ancestors to
    it; pytest resets its own ``/tmp/pytest-of-root`` to mode 0700 whenever another pytest starts,
    which would lock a running server out of its data directory.
    """
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """URL of a real Postgres started for this session (database ``postgres``)."""
    import shutil
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    folder = outside_pytest_tmp("ecr-test-pg-")
    server = pgserver.get_server(folder / "data", cleanup_mode="delete")
    url = normalise_url(server.get_uri())
    # A server thrown away after the session need not survive a power cut: without the waits for
    # the disk, a TRUNCATE (every service fixture), a CREATE DATABASE or a migration is ~5-8 times
    # faster, and so is each commit of the Dagster runs. Nothing in the suite crashes Postgres
    # itself, so what a test can observe is the same.
    admin = sa.create_engine(with_database(url, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            conn.exec_driver_sql(f"ALTER SYSTEM SET {setting} = off")
        conn.exec_driver_sql("SELECT pg_reload_conf()")
    admin.dispose()
    yield url
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def database_url(pg_server_url: str) -> str:
    """The migrated application database shared by the suite."""
    from ecr_pipelines.lib.database import engine_for

    url = ensure_database(pg_server_url, "ecr_test")
    upgrade(engine_for(url))
    return url


@contextmanager
def own_database(pg_server_url: str, prefix: str = "t") -> Iterator[str]:
    """An empty database of its own (for tests that create and drop schemas), dropped after."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    url = ensure_database(pg_server_url, name)
    try:
        yield url
    finally:
        from ecr_pipelines.lib.database import _engine_for

        _engine_for.cache_clear()  # pooled connections would block DROP DATABASE
        admin = sa.create_engine(with_database(pg_server_url, "postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def own_migrated_engine(pg_server_url: str, prefix: str) -> Iterator[sa.Engine]:
    """``own_database``, migrated, as an engine of its own."""
    with own_database(pg_server_url, prefix) as url:
        engine = sa.create_engine(url)
        upgrade(engine)
        try:
            yield engine
        finally:
            engine.dispose()


@pytest.fixture
def fresh_database(pg_server_url: str) -> Iterator[str]:
    """An empty database of its own, dropped after the test."""
    with own_database(pg_server_url) as url:
        yield url


@pytest.fixture
def db(database_url: str) -> DatabaseResource:
    return DatabaseResource(url=database_url)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_blobs(s3_endpoint: str) -> BlobStoreResource:
    """A blob store on a new bucket of the moto S3 server."""
    import boto3

    bucket = f"b-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return BlobStoreResource(url=f"s3://{bucket}/ecr", s3_endpoint_url=s3_endpoint)


@pytest.fixture
def local_blobs(tmp_path: Path) -> BlobStoreResource:
    return BlobStoreResource(url=str(tmp_path / "blobs"))


@pytest.fixture(scope="session")
def _stop_in_background() -> Iterator[Callable[[StandInServer], None]]:
    """Stops stand-in servers beside the tests that follow; every stop is done (and any error
    raised) before the session ends."""
    stops: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="stand-in-stop") as pool:
        yield lambda server: stops.append(pool.submit(server.stop))
    for stop in stops:
        stop.result()


@pytest.fixture
def standin(_stop_in_background: Callable[[StandInServer], None]) -> Iterator[StandInServer]:
    server = StandInServer().start()
    yield server
    # stop() waits out serve_forever's half-second poll. Once the test is over nobody needs the port
    # closed (it stays bound until then, so no later server is given it meanwhile), so that wait
    # runs beside the next test instead of before it.
    _stop_in_background(server)


class SmtpSink:
    """Collects what an aiosmtpd server on loopback receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[str, SmtpSink]]:
    """``(smtp_url, sink)`` of a real SMTP server on 127.0.0.1."""
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = SmtpSink()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield f"smtp://127.0.0.1:{port}", sink
    controller.stop()


@pytest.fixture(scope="session")
def dagster_cli_env(
    pg_server_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for `dagster` CLI subprocesses: a Postgres-backed instance (the repository's
    dagster.yaml in a temporary DAGSTER_HOME) and the suite's application database."""
    import shutil

    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copyfile(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        DAGSTER_PG_URL=ensure_database(pg_server_url, "dagster_test"),
        DATABASE_URL=database_url,
        PYTHONWARNINGS="ignore",
    )
    return env


def run_sql(url: str, text: str) -> None:
    """Run a script of SQL statements in one transaction on its own connection."""
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(text)
    finally:
        engine.dispose()


@pytest.fixture
def legacy_database(pg_server_url: str) -> Iterator[Any]:
    """A factory: ``legacy_database(prefix, *sql_files)`` makes a database of its own filled by the
    SQL files (a legacy service's schema and rows, written from the research notes) and returns its
    URL; every database it made is dropped after the test."""
    names: list[str] = []

    def make(prefix: str, *files: Path) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        url = ensure_database(pg_server_url, name)
        names.append(name)
        for file in files:
            run_sql(url, file.read_text())
        return url

    yield make
    admin = sa.create_engine(with_database(pg_server_url, "postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
