"""The application database: URL normalisation, the embedded Postgres, and the Dagster resource.

Production points ``DATABASE_URL`` at a real server. Without it, a real PostgreSQL (the
``pgserver`` package) is started under ``ECR_HOME/pgdata`` and left running, so that the
webserver, the daemon and every run worker share one server; ``python -m ecr_pipelines db stop``
stops it.
"""

import logging
import threading
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from ecr_pipelines.lib.settings import ecr_home

log = logging.getLogger(__name__)

DRIVER = "postgresql+psycopg2"
_PG_SCHEMES = {"postgres", "postgresql"}


class DatabaseConfigError(ValueError):
    """The configured database URL cannot be used."""


def normalise_url(url: str) -> str:
    """Return ``url`` with the one driver this project installs (psycopg2).

    Accepts what users paste: Heroku-style ``postgres://``, bare ``postgresql://`` (which
    SQLAlchemy 2.1 would map to psycopg 3, not installed here), any explicit driver, and
    Unix-socket hosts given as ``?host=/path``.
    """
    try:
        parsed = make_url(url.strip())
    except Exception as exc:  # sqlalchemy raises ArgumentError with the raw URL in it
        raise DatabaseConfigError("DATABASE_URL is not a valid database URL") from exc
    backend = parsed.drivername.split("+", 1)[0]
    if backend not in _PG_SCHEMES:
        raise DatabaseConfigError(f"DATABASE_URL must be a Postgres URL, not {backend}://")
    return parsed.set(drivername=DRIVER).render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    """The same server as ``url``, another database on it."""
    return make_url(normalise_url(url)).set(database=database).render_as_string(hide_password=False)


def redact(url: str) -> str:
    """A URL fit for logs: password hidden."""
    return make_url(url).render_as_string(hide_password=True)


_embedded_lock = threading.Lock()


def embedded_pgdata() -> Path:
    return ecr_home() / "pgdata"


def embedded_server_url(pgdata: Path | None = None) -> str:
    """Start (or attach to) the embedded Postgres and return its normalised URL.

    pgserver serialises start-up across processes with a file lock, and a second caller
    attaches to the running postmaster; ``cleanup_mode=None`` keeps the server up after this
    process exits.
    """
    import warnings

    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes.
        warnings.simplefilter("ignore")
        import pgserver  # imported lazily: it is only needed without DATABASE_URL

    path = (pgdata or embedded_pgdata()).resolve()
    with _embedded_lock:
        server = pgserver.get_server(path, cleanup_mode=None)
        return normalise_url(server.get_uri())


def stop_embedded_server(pgdata: Path | None = None) -> bool:
    """Stop the embedded Postgres if it runs; return whether it was running."""
    import subprocess
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # see embedded_server_url
        from pgserver._commands import pg_ctl
        from pgserver.utils import PostmasterInfo

    path = (pgdata or embedded_pgdata()).resolve()
    if not (path / "PG_VERSION").exists():
        return False
    info = PostmasterInfo.read_from_pgdata(path)
    if info is None or not info.is_running():
        return False
    import os

    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=path, user=user)
    except subprocess.CalledProcessError:
        info.process.terminate()
    return True


def resolve_database_url(url: str | None) -> str:
    """The configured URL, normalised, or the embedded server's URL when none is set."""
    return normalise_url(url) if url else embedded_server_url()


def ensure_database(server_url: str, database: str) -> str:
    """Create ``database`` on the server of ``server_url`` if it is missing; return its URL."""
    admin = sa.create_engine(with_database(server_url, "postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database})
            if not exists:
                # CREATE DATABASE takes no bind parameters; the name is quoted by the dialect.
                conn.execute(sa.text(f"CREATE DATABASE {admin.dialect.identifier_preparer.quote(database)}"))
    finally:
        admin.dispose()
    return with_database(server_url, database)


@cache
def _engine_for(url: str) -> Engine:
    # One engine (and pool) per URL per process: run workers, sensors and the CLI all reuse it.
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, future=True)


def engine_for(url: str | None) -> Engine:
    return _engine_for(resolve_database_url(url))
