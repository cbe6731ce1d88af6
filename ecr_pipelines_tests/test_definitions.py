"""The code location loads, every asset is documented, and the CLI forms the users rely on work
against a Postgres-backed Dagster instance."""

import subprocess
import sys
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))


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


def test_dagster_definitions_validate_with_the_workspace(dagster_cli_env: dict[str, str]) -> None:
    done = subprocess.run(
        [DAGSTER, "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=dagster_cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "All code locations passed validation" in done.stderr + done.stdout


def test_dagster_job_execute_stores_the_run_in_postgres(dagster_cli_env: dict[str, str]) -> None:
    done = subprocess.run(
        [DAGSTER, "job", "execute", "-m", "ecr_pipelines.definitions", "-j", "platform_check_job"],
        cwd=REPO,
        env=dagster_cli_env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    engine = sa.create_engine(dagster_cli_env["DAGSTER_PG_URL"])
    with engine.connect() as conn:
        statuses = (
            conn.execute(sa.text("SELECT status FROM runs WHERE pipeline_name = 'platform_check_job'"))
            .scalars()
            .all()
        )
    engine.dispose()
    assert "SUCCESS" in statuses


def test_readme_documents_every_environment_variable() -> None:
    from ecr_pipelines.settings import ENV_VARS

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert [v.name for v in ENV_VARS if f"`{v.name}`" not in readme] == []
