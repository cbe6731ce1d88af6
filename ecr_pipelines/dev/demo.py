"""``make demo`` and ``make dev``: the whole pipeline against local stand-ins and sample data.

Each service registers a ``DemoService``: the recordings folder its stand-in upstreams serve
(mounted under a path prefix of one shared stand-in server) and the environment variables that
point the service's real clients at it. The demo runs ``all_assets_job`` in process on the
Postgres-backed Dagster instance, so ``make dev`` afterwards shows every materialization. Both
write the local set-up to ``<checkout>/.env`` (from the command line), so the bare Dagster CLI run
in the checkout finds the same instance, and create the instance's pool limits before any run.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecr_pipelines.dev.service import DemoService
from ecr_pipelines.dev.standins import StandInServer

if TYPE_CHECKING:  # the platform package imports Dagster, which `standin` does not need
    from ecr_pipelines.platform.pools import PoolSetup

RECORDINGS = Path(__file__).resolve().parent / "standins" / "recordings"


def demo_services() -> list[DemoService]:
    """The services that take part in the demo, in pipeline order."""
    from ecr_pipelines.dev.ckan_demo import DEMO_SERVICE as ckan
    from ecr_pipelines.dev.datastore_demo import DEMO_SERVICE as datastore
    from ecr_pipelines.dev.energy_demo import DEMO_SERVICE as energy
    from ecr_pipelines.dev.iati_demo import DEMO_SERVICE as iati
    from ecr_pipelines.dev.registry_demo import DEMO_SERVICE as registry

    return [registry, iati, ckan, datastore, energy]


@contextmanager
def standins(port: int = 0) -> Iterator[tuple[StandInServer, dict[str, str]]]:
    """One stand-in HTTP server with every service mounted at ``/<name>``, plus each service's
    extra stand-ins; yields the server and the environment that points the clients at them."""
    with ExitStack() as stack:
        server = stack.enter_context(StandInServer(port=port))
        env: dict[str, str] = {}
        for service in demo_services():
            mount = f"/{service.name}"
            if service.recordings is not None:
                server.load_routes(service.recordings, mount=mount)
            if service.setup is not None:
                service.setup(server, mount)
            env.update(service.env(server.url(mount)))
            if service.extra is not None:
                env.update(stack.enter_context(service.extra()))
        yield server, env


def _prepare(dotenv: Path | None) -> None:
    """The local environment in this process (and in ``dotenv`` for the Dagster CLI), migrated."""
    from ecr_pipelines.lib.database import engine_for
    from ecr_pipelines.lib.environment import resolve_environment, write_dotenv
    from ecr_pipelines.lib.migrations import upgrade

    environment = resolve_environment()
    environment.apply()
    if dotenv is not None:
        print(f"wrote {write_dotenv(environment.exports(), dotenv)} (the Dagster CLI reads it from there)")
    for migration in upgrade(engine_for(environment.database_url)):
        print(f"applied migration {migration.label}")


def _print_pools(setups: "list[PoolSetup]") -> None:
    from ecr_pipelines.platform.instance import describe

    for line in describe(setups):
        print(line)


def _summary_rows(result: Any) -> list[tuple[str, str, str, str]]:
    import dagster as dg

    checks: dict[str, list[bool]] = {}
    for evaluation in result.get_asset_check_evaluations():
        checks.setdefault(evaluation.asset_key.to_user_string(), []).append(evaluation.passed)
    rows = []
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        key = materialization.asset_key.to_user_string()
        meta = {
            k: v.value if isinstance(v, dg.MetadataValue) else v for k, v in materialization.metadata.items()
        }
        count = meta.get("dagster/row_count", meta.get("rows", "-"))
        errors = meta.get("errors", meta.get("failed", 0))
        passed = checks.get(key, [])
        rows.append((key, str(count), str(errors), f"{sum(passed)}/{len(passed)} passed" if passed else "-"))
    return rows


def run_demo(dotenv: Path | None = None) -> int:
    """Materialize every asset against the stand-ins; ``dotenv``: where to write the local
    set-up for the Dagster CLI (the command line passes ``<checkout>/.env``)."""
    _prepare(dotenv)
    with standins() as (_server, env):
        os.environ.update(env)
        import dagster as dg

        from ecr_pipelines.definitions import build_definitions

        defs = build_definitions()  # after the stand-in URLs are in the environment
        # Progress lines (INFO) only; Dagster's per-step DEBUG events stay in the UI.
        run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
        for service in demo_services():
            for section, values in service.run_config.items():
                run_config.setdefault(section, {}).update(values)
            if service.before_run is not None:
                service.before_run(env)
        job = defs.resolve_job_def("all_assets_job")
        from ecr_pipelines.platform.pools import default_pool_limit, ensure_pools, pools_of

        with dg.DagsterInstance.get() as instance:
            _print_pools(ensure_pools(instance, pools_of(defs), default_pool_limit(instance)))
            result = job.execute_in_process(
                instance=instance, run_config=run_config, raise_on_error=False, tags={"ecr/demo": "true"}
            )
    rows = _summary_rows(result)
    widths = [max(len(r[i]) for r in [("asset", "rows", "errors", "checks"), *rows]) for i in range(4)]
    print()
    for row in [("asset", "rows", "errors", "checks"), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    print(f"\nrun {result.run_id}: {'success' if result.success else 'FAILED'}")
    print("browse it: make dev, or `dagster dev` in the checkout (Dagster UI on http://127.0.0.1:3000)")
    return 0 if result.success else 1


def run_dev(port: int, standin_port: int, dotenv: Path | None = None) -> int:
    """The Dagster UI (webserver + daemon) on the demo instance, stand-ins serving meanwhile."""
    from ecr_pipelines.platform.instance import setup_instance

    _prepare(dotenv)
    _print_pools(setup_instance())
    with standins(standin_port) as (server, env):
        os.environ.update(env)
        print(f"stand-ins on {server.url()}; Dagster UI on http://127.0.0.1:{port}", flush=True)
        repo = Path(__file__).resolve().parents[2]
        dagster = Path(sys.executable).with_name("dagster")
        cmd = [str(dagster), "dev", "-w", str(repo / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
        child = subprocess.Popen(cmd, cwd=repo)
        try:
            return child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)
            return child.wait()
