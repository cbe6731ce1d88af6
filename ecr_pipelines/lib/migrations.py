"""Versioned SQL migrations: ``sql/NNNN_name.up.sql`` with its ``sql/NNNN_name.down.sql``.

Applied versions are recorded in ``public.ecr_schema_migrations`` (one row per applied file,
with a checksum so that an edited, already-applied file shows up in ``db status``). Each file
runs in its own transaction (Postgres DDL is transactional), under a session advisory lock so
that two processes upgrading at once apply every file exactly once.
"""

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

VERSION_TABLE = "public.ecr_schema_migrations"
_LOCK_KEY = 0x6563725F6D6967  # "ecr_mig": any constant shared by every process of this project
_FILE_RE = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.(?P<direction>up|down)\.sql$")


class MigrationError(RuntimeError):
    """The migration files or the database's migration state are inconsistent."""


class SchemaVersionError(RuntimeError):
    """The database schema does not match the code; the message names the command to run."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    up_path: Path
    down_path: Path

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up_path.read_bytes()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


@dataclass(frozen=True)
class MigrationStatus:
    current: int
    head: int
    applied: list[tuple[int, str, str]]  # version, name, applied_at
    pending: list[Migration]
    modified: list[str]  # labels of applied files whose content changed since

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def sql_dir() -> Path:
    """Where the migration files are: ``ECR_SQL_DIR``, the source checkout, or the installed copy."""
    candidates = []
    if os.environ.get("ECR_SQL_DIR"):
        candidates.append(Path(os.environ["ECR_SQL_DIR"]))
    candidates.append(Path(__file__).resolve().parents[2] / "sql")
    candidates.append(Path(sys.prefix) / "share" / "ecr_pipelines" / "sql")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.up.sql")):
            return candidate
    raise MigrationError("no migration files found (looked in: " + ", ".join(map(str, candidates)) + ")")


@cache
def discover(directory: Path | None = None) -> tuple[Migration, ...]:
    """All migrations, in order; checks that versions are contiguous and each has both halves."""
    directory = directory or sql_dir()
    halves: dict[int, dict[str, Path]] = {}
    names: dict[int, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_RE.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_name.up.sql / .down.sql")
        version = int(match["version"])
        if names.setdefault(version, match["name"]) != match["name"]:
            raise MigrationError(f"two different migrations share version {version:04d}")
        halves.setdefault(version, {})[match["direction"]] = path
    migrations = []
    for expected, version in enumerate(sorted(halves), start=1):
        if version != expected:
            raise MigrationError(f"migration {expected:04d} is missing (found {version:04d})")
        if set(halves[version]) != {"up", "down"}:
            raise MigrationError(f"migration {version:04d} needs both an .up.sql and a .down.sql file")
        migrations.append(Migration(version, names[version], halves[version]["up"], halves[version]["down"]))
    return tuple(migrations)


def head_version() -> int:
    migrations = discover()
    return migrations[-1].version if migrations else 0


def _ensure_version_table(conn: Connection) -> None:
    conn.execute(
        sa.text(
            f"""CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (
                version integer PRIMARY KEY,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())"""
        )
    )


def current_version(conn: Connection) -> int:
    exists = conn.scalar(sa.text("SELECT to_regclass(:t)"), {"t": VERSION_TABLE})
    if not exists:
        return 0
    return conn.scalar(sa.text(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}")) or 0


def _run_script(conn: Connection, path: Path) -> None:
    # The raw DBAPI cursor: the file is a multi-statement script, and going through the driver
    # without parameters keeps '%' and ':' in SQL literals away from any parameter parsing.
    cursor = conn.connection.cursor()
    try:
        cursor.execute(path.read_text(encoding="utf-8"))
    finally:
        cursor.close()


class _Locked:
    """A connection holding the migration advisory lock for the duration of a ``with`` block."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> Connection:
        self.conn = self.engine.connect()
        self.conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
        self.conn.commit()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        try:
            self.conn.rollback()
            self.conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            self.conn.commit()
        finally:
            self.conn.close()


def upgrade(engine: Engine, target: int | None = None) -> list[Migration]:
    """Apply pending migrations up to ``target`` (default: all); return what was applied."""
    migrations = discover()
    target = head_version() if target is None else target
    applied: list[Migration] = []
    with _Locked(engine) as conn:
        with conn.begin():
            _ensure_version_table(conn)
        current = current_version(conn)
        conn.commit()
        for migration in migrations:
            if current < migration.version <= target:
                with conn.begin():
                    _run_script(conn, migration.up_path)
                    conn.execute(
                        sa.text(f"INSERT INTO {VERSION_TABLE} (version, name, checksum) VALUES (:v, :n, :c)"),
                        {"v": migration.version, "n": migration.name, "c": migration.checksum},
                    )
                applied.append(migration)
    return applied


def downgrade(engine: Engine, target: int) -> list[Migration]:
    """Revert applied migrations above ``target``, newest first; return what was reverted."""
    if target < 0:
        raise MigrationError("the downgrade target is a version number >= 0")
    by_version = {m.version: m for m in discover()}
    reverted: list[Migration] = []
    with _Locked(engine) as conn:
        current = current_version(conn)
        conn.commit()
        for version in range(current, target, -1):
            migration = by_version.get(version)
            if migration is None:
                raise MigrationError(f"the database is at {current:04d}, newer than this code knows")
            with conn.begin():
                _run_script(conn, migration.down_path)
                conn.execute(sa.text(f"DELETE FROM {VERSION_TABLE} WHERE version = :v"), {"v": version})
            reverted.append(migration)
    return reverted


def status(engine: Engine) -> MigrationStatus:
    migrations = discover()
    with engine.connect() as conn:
        current = current_version(conn)
        rows = (
            conn.execute(
                sa.text(f"SELECT version, name, checksum, applied_at FROM {VERSION_TABLE} ORDER BY version")
            ).all()
            if current
            else []
        )
    checksums = {m.version: m.checksum for m in migrations}
    modified = [f"{v:04d}_{n}" for v, n, c, _ in rows if checksums.get(v) not in (None, c)]
    return MigrationStatus(
        current=current,
        head=migrations[-1].version if migrations else 0,
        applied=[(v, n, str(at)) for v, n, _, at in rows],
        pending=[m for m in migrations if m.version > current],
        modified=modified,
    )


def assert_schema_current(engine: Engine) -> None:
    """Refuse to work against a database whose schema version differs from the code's."""
    with engine.connect() as conn:
        current = current_version(conn)
    head = head_version()
    if current < head:
        raise SchemaVersionError(
            f"The database schema is at version {current} but this code needs {head}. "
            "Run `python -m ecr_pipelines db upgrade` (or `make migrate`) and start the run again."
        )
    if current > head:
        raise SchemaVersionError(
            f"The database schema is at version {current}, newer than this code ({head}). Deploy the "
            f"matching code, or run `python -m ecr_pipelines db downgrade {head}` to go back."
        )
