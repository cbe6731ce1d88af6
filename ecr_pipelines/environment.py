"""Resolving the local environment: database URLs, the Dagster home, and the shell exports.

Used by ``python -m ecr_pipelines env`` (the Makefile evaluates its output), by the demo and by
the ``db`` commands, so every process of a local set-up talks to the same Postgres.
"""

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ecr_pipelines.resources.database import ensure_database, resolve_database_url
from ecr_pipelines.settings import ecr_home, env_str

REPO_ROOT = Path(__file__).resolve().parents[1]
DAGSTER_DATABASE = "dagster"


@dataclass(frozen=True)
class LocalEnvironment:
    database_url: str
    dagster_pg_url: str
    dagster_home: Path
    ecr_home: Path

    def exports(self) -> dict[str, str]:
        return {
            "ECR_HOME": str(self.ecr_home),
            "DATABASE_URL": self.database_url,
            "DAGSTER_PG_URL": self.dagster_pg_url,
            "DAGSTER_HOME": str(self.dagster_home),
        }

    def apply(self) -> None:
        os.environ.update(self.exports())


def prepare_dagster_home(home: Path | None = None) -> Path:
    """A DAGSTER_HOME holding the repository's dagster.yaml (Postgres storage, telemetry off)."""
    home = home or Path(env_str("DAGSTER_HOME") or ecr_home() / "dagster_home")
    home.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    target = home / "dagster.yaml"
    if source.is_file() and source.resolve() != target.resolve():
        shutil.copyfile(source, target)
    if not target.is_file():
        raise FileNotFoundError(f"{target} is missing: copy the repository's dagster.yaml there")
    return home


def resolve_environment() -> LocalEnvironment:
    """Start the embedded Postgres if needed, make sure Dagster's database exists, and return
    the values every local process must share."""
    database_url = resolve_database_url(env_str("DATABASE_URL"))
    dagster_url = env_str("DAGSTER_PG_URL") or ensure_database(database_url, DAGSTER_DATABASE)
    return LocalEnvironment(
        database_url=database_url,
        dagster_pg_url=dagster_url,
        dagster_home=prepare_dagster_home(),
        ecr_home=ecr_home(),
    )
