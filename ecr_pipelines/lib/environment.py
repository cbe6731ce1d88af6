"""Resolving the local environment: database URLs, the Dagster home, the shell exports and ``.env``.

Used by ``python -m ecr_pipelines env``, ``demo`` and ``dev`` so that every process of a local
set-up talks to the same Postgres. Those commands also write ``<checkout>/.env``: Dagster's CLI
(``dagster dev``, ``dagster job execute``, ``dagster definitions validate``) loads ``.env`` from
its working directory, so the bare commands find the instance without ``eval``-ing anything.
"""

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ecr_pipelines.lib.database import ensure_database, resolve_database_url
from ecr_pipelines.lib.settings import ecr_home, env_str

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGSTER_DATABASE = "dagster"
# What the local set-up shares between processes, in the order ``env`` prints it.
LOCAL_KEYS: tuple[str, ...] = ("ECR_HOME", "DATABASE_URL", "DAGSTER_PG_URL", "DAGSTER_HOME")

_DOTENV_HEADER = (
    "# Local instance, written by `python -m ecr_pipelines env` (and `make demo` / `make dev`).\n"
    "# Dagster's CLI loads this file from the working directory. Each value is the shell's when\n"
    "# that variable is set there (`${NAME:-...}`), so an explicit export always wins.\n"
    "# After `make stop` or a reboot, `python -m ecr_pipelines env` starts the embedded Postgres again.\n"
)
_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


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


def checkout_root() -> Path | None:
    """The source checkout this package runs from, or None for an installed copy (Docker image)."""
    if (REPO_ROOT / "workspace.yaml").is_file() and (REPO_ROOT / "ecr_pipelines").is_dir():
        return REPO_ROOT
    return None


def default_dotenv_path() -> Path | None:
    """``<checkout>/.env``, where ``make`` and the Dagster CLI run; None outside a checkout."""
    root = checkout_root()
    return root / ".env" if root is not None else None


def _dotenv_value(name: str, value: str) -> str:
    # python-dotenv expands ${NAME:-default} against the process environment, which makes the
    # shell's value win over the file's. The default cannot hold "}" or "${", so such a value
    # (only a hand-set password could have one) is written as a plain value instead.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    if "}" in value or "${" in value:
        return f'"{escaped}"'
    return f'"${{{name}:-{escaped}}}"'


def write_dotenv(values: dict[str, str], path: Path) -> Path:
    """Set ``values`` in the ``.env`` at ``path``, keeping every other line of an existing file.

    The file may hold a local database password, hence mode 0600.
    """
    kept: list[str] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            match = _ASSIGNMENT.match(line)
            if (match and match.group(1) in values) or line in _DOTENV_HEADER.splitlines():
                continue
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    body = "\n".join(kept) + ("\n\n" if kept else "")
    body += _DOTENV_HEADER + "".join(f"{k}={_dotenv_value(k, v)}\n" for k, v in values.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(body)
    os.chmod(path, 0o600)  # an existing file keeps its mode through os.open
    return path


def read_dotenv(path: Path) -> dict[str, str]:
    """The values of a ``.env`` as Dagster's CLI sees them (``${NAME:-...}`` resolved against
    the current environment)."""
    from dotenv import dotenv_values  # a dependency of dagster; only needed here

    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_dotenv_defaults(path: Path) -> list[str]:
    """Set the variables of ``path`` that the environment lacks; return their names.

    The shell wins, unlike Dagster's own loading: a command run with an explicit
    ``DAGSTER_HOME`` must never be redirected to the local instance by a stray file.
    """
    missing = {name: value for name, value in read_dotenv(path).items() if env_str(name) is None and value}
    os.environ.update(missing)
    return list(missing)


def prepare_dagster_home(home: Path | None = None) -> Path:
    """A DAGSTER_HOME holding the repository's dagster.yaml (Postgres storage, telemetry off)."""
    home = (home or Path(env_str("DAGSTER_HOME") or ecr_home() / "dagster_home")).expanduser().resolve()
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


def instance_problem() -> str | None:
    """Why the Dagster instance cannot be loaded from this environment, naming the fix; None
    when it can. Checked before Dagster reads dagster.yaml, whose own error is a traceback."""
    local_fix = "run `python -m ecr_pipelines env` (or `make demo`) for the local instance"
    home = env_str("DAGSTER_HOME")
    if home is None:
        return f"DAGSTER_HOME is not set: {local_fix}, or set it to a folder holding dagster.yaml"
    config = Path(home).expanduser() / "dagster.yaml"
    if not config.is_file():
        return f"{config} is missing: {local_fix}, or copy the repository's dagster.yaml there"
    if "DAGSTER_PG_URL" in config.read_text(encoding="utf-8") and env_str("DAGSTER_PG_URL") is None:
        return (
            f"DAGSTER_PG_URL is not set (read by {config}): {local_fix}, or set it to the Dagster "
            "database's postgresql+psycopg2:// URL"
        )
    return None
