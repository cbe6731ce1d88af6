"""Command line: ``python -m ecr_pipelines <command>``.

db upgrade [--to N]      apply pending migrations (all, or up to version N); then, when
                         DAGSTER_HOME is set, create the Dagster pool limits (instance setup)
db downgrade N           revert migrations above version N
db status                applied and pending migrations
db url [--database D]    the (normalised) URL of the application database, password hidden
db stop                  stop the embedded Postgres
instance setup           create the limit of every pool that has none (dagster.yaml's default)
env                      the local set-up: writes <checkout>/.env (read by the Dagster CLI) and
                         prints shell exports: eval "$(python -m ecr_pipelines env)"
demo                     run every asset against the stand-ins and the bundled sample data
dev                      the Dagster UI on the demo instance, with the stand-ins serving
standin NAME [--port N]  serve one stand-in: solr (empty, the shipped schemas), registry or
                         iati (the recordings), or a folder holding routes.json
registry import-legacy LEGACY_URL [--schema S] [--check]
                         copy a legacy registry database into the registry schema (re-runnable)
iati import-refresher LEGACY_URL [--blobs URL] [--schema S] [--check]
                         copy the IATI refresher's rows (and, with --blobs, its source, clean and
                         lake files) so that nothing already done is done again (re-runnable)
energy import-legacy LEGACY_URL [--schema S] [--check]
                         copy a legacy datahub-service database into the energy schema (re-runnable)
api                      serve the HTTP contracts other systems call (uvicorn; API_HOST, API_PORT,
                         API_WORKERS): registry API for BDR, data-store HAWK API, CKAN intake
api add-hawk-user --client-id ID --client-key KEY [--scope a,b|*] [--description D]
                         store (or replace) a data-store API client

ckan package --api-url URL --resource-id ID [--format csv|tsv|xlsx] [--limit N] [--offset N]
             [--q Q] [--filters JSON] [--fields F] [--sort S] --out FILE.zip
ckan package --kind url --resource-url URL --resource-id ID --out FILE.zip
                        build one CKAN package (ZIP) without Dagster, mail or statistics
datastore infer FILE.csv [--delimiter C] [--quote C]
                        check a CSV upload; print its columns' types and samples as JSON
datastore put SOURCE FILE [--name NAME] [--replace]
                        store a local file under a source's blob prefix (e.g. dit.baci,
                        dit.spire.<table>); print {"key": ..., "bytes": ...}
datastore dump SCHEMA DIR
                        one CSV per table of SCHEMA (header, NULL as NULL) into DIR; print
                        {"schema": ..., "tables": {table: rows}}

demo, dev and standin need the development code (ecr_pipelines.dev), which a source checkout
has and the Docker image leaves out.
"""

import argparse
import importlib
import shlex
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ecr_pipelines.lib.database import engine_for, redact, stop_embedded_server, with_database
from ecr_pipelines.lib.migrations import MigrationError, downgrade, status, upgrade
from ecr_pipelines.lib.settings import env_str

DEV_MISSING = (
    "the development code (ecr_pipelines.dev: stand-ins, recordings, the demo) is not installed here; "
    "it comes with a source checkout (`make demo`, or `pip install -e '.[dev]'`), not with the Docker image"
)


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _import_dev(module: str) -> ModuleType | None:
    """``ecr_pipelines.dev.<...>``, or None (with a message) when the dev code is absent."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == "ecr_pipelines.dev" or (exc.name or "").startswith("ecr_pipelines.dev."):
            _err(f"error: {DEV_MISSING}")
            return None
        raise


def _setup_instance_or_warn(after: str) -> None:
    """Pool limits as a follow-up of another command: a failure is a warning naming the fix, since
    the main work (migrations, the environment) is done."""
    from ecr_pipelines.platform.instance import InstanceNotConfigured, describe, setup_instance

    try:
        lines = describe(setup_instance())
    except InstanceNotConfigured as exc:
        _err(f"warning: Dagster pool limits not set up after {after}: {exc}")
        return
    except Exception as exc:  # the Dagster database may be unreachable; the hint says what to re-run
        _err(f"warning: Dagster pool limits not set up after {after}: {type(exc).__name__}: {exc}")
        _err("  fix the instance settings, then run `python -m ecr_pipelines instance setup`")
        return
    for line in lines:
        _err(line)


def _db(args: argparse.Namespace) -> int:
    if args.db_command == "stop":
        if stop_embedded_server():
            # The .env of the checkout still points the Dagster CLI at it, which now fails to connect.
            print("embedded Postgres stopped; `python -m ecr_pipelines env` (or `make demo`) starts it again")
        else:
            print("embedded Postgres was not running")
        return 0
    engine = engine_for(env_str("DATABASE_URL"))
    if args.db_command == "url":
        url = engine.url.render_as_string(hide_password=False)
        print(redact(with_database(url, args.database) if args.database else url))
        return 0
    if args.db_command == "upgrade":
        applied = upgrade(engine, args.to)
        for migration in applied:
            print(f"applied {migration.label}")
        print(f"database at version {status(engine).current}" + ("" if applied else " (nothing to do)"))
        if env_str("DAGSTER_HOME") is not None:
            _setup_instance_or_warn("the migrations")
        return 0
    if args.db_command == "downgrade":
        for migration in downgrade(engine, args.version):
            print(f"reverted {migration.label}")
        print(f"database at version {status(engine).current}")
        return 0
    st = status(engine)
    print(f"database: {redact(engine.url.render_as_string(hide_password=False))}")
    print(f"applied version: {st.current} (code: {st.head})")
    for version, name, applied_at in st.applied:
        print(f"  {version:04d}_{name}  applied {applied_at}")
    for migration in st.pending:
        print(f"  {migration.label}  pending")
    for label in st.modified:
        print(f"  warning: {label} was edited after it was applied")
    if not st.up_to_date:
        print("run `python -m ecr_pipelines db upgrade` to bring it up to date")
    return 0


def _instance(args: argparse.Namespace) -> int:
    from ecr_pipelines.lib.environment import load_dotenv_defaults
    from ecr_pipelines.platform.instance import InstanceNotConfigured, describe, setup_instance

    # Like the Dagster CLI, see the instance that ./.env describes; unlike it, the shell wins.
    added = load_dotenv_defaults(Path.cwd() / ".env")
    if added:
        print(f"from ./.env: {', '.join(added)}")
    try:
        setups = setup_instance()
    except InstanceNotConfigured as exc:
        _err(f"error: {exc}")
        return 2
    print(f"instance: {env_str('DAGSTER_HOME')}")
    for line in describe(setups):
        print(line)
    return 0


def _dotenv_target(args: argparse.Namespace) -> Path | None:
    from ecr_pipelines.lib.environment import default_dotenv_path

    if args.no_dotenv:
        return None
    return args.dotenv or default_dotenv_path()


def _env(args: argparse.Namespace) -> int:
    from ecr_pipelines.lib.environment import resolve_environment, write_dotenv

    environment = resolve_environment()
    exports = environment.exports()
    for key, value in exports.items():
        print(f"export {key}={shlex.quote(value)}", flush=True)
    target = _dotenv_target(args)
    if target is not None:
        _err(f"wrote {write_dotenv(exports, target)} (the Dagster CLI reads it from that folder)")
    elif not args.no_dotenv:
        _err("not in a source checkout: no .env written (pass --dotenv PATH to write one)")
    environment.apply()
    _setup_instance_or_warn("`env`")
    return 0


def _demo(args: argparse.Namespace) -> int:
    demo = _import_dev("ecr_pipelines.dev.demo")
    if demo is None:
        return 2
    return demo.run_demo(dotenv=_dotenv_target(args))


def _dev(args: argparse.Namespace) -> int:
    demo = _import_dev("ecr_pipelines.dev.demo")
    if demo is None:
        return 2
    return demo.run_dev(port=args.port, standin_port=args.standin_port, dotenv=_dotenv_target(args))


def _standin(args: argparse.Namespace) -> int:
    serve = _import_dev("ecr_pipelines.dev.serve")
    if serve is None:
        return 2
    return serve.serve(args.name, port=args.port, data_dir=args.data_dir)


def _print_import(lines: list[str]) -> None:
    for line in lines:
        print(line, flush=True)


def _legacy_import(run: Any, args: argparse.Namespace) -> int:
    """A service's legacy-database import: its report printed, or the refusal and exit code 2."""
    from ecr_pipelines.lib.legacy_copy import LegacyImportRefused
    from ecr_pipelines.lib.migrations import SchemaVersionError

    try:
        report = run(
            args.legacy_url,
            engine_for(env_str("DATABASE_URL")),
            schema=args.schema,
            check_only=args.check,
            progress=_err,
        )
    except (LegacyImportRefused, SchemaVersionError) as exc:
        _err(f"error: {exc}")
        return 2
    _print_import(report.lines())
    return 0


def _registry(args: argparse.Namespace) -> int:
    from ecr_pipelines.registry.legacy_import import import_legacy_registry

    return _legacy_import(import_legacy_registry, args)


def _energy(args: argparse.Namespace) -> int:
    from ecr_pipelines.energy.legacy_import import import_legacy_energy

    return _legacy_import(import_legacy_energy, args)


def _iati(args: argparse.Namespace) -> int:
    from ecr_pipelines.iati.refresher_import import Containers, import_refresher, open_refresher_blobs
    from ecr_pipelines.lib.blobstore import open_blob_store
    from ecr_pipelines.lib.legacy_copy import LegacyImportRefused
    from ecr_pipelines.lib.migrations import SchemaVersionError

    endpoint, region = env_str("S3_ENDPOINT_URL"), env_str("AWS_REGION")
    try:
        theirs = open_refresher_blobs(args.blobs, endpoint, region) if args.blobs else None
        report = import_refresher(
            args.legacy_url,
            engine_for(env_str("DATABASE_URL")),
            open_blob_store(env_str("BLOB_STORE_URL"), endpoint, region),
            theirs,
            schema=args.schema,
            containers=Containers(args.source_container, args.clean_container, args.lake_container),
            workers=args.workers,
            check_only=args.check,
            progress=_err,
        )
    except (LegacyImportRefused, SchemaVersionError) as exc:
        _err(f"error: {exc}")
        return 2
    _print_import(report.lines())
    return 0


def _add_dotenv_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--dotenv", type=Path, default=None, help="write the local set-up here (default: <checkout>/.env)"
    )
    group.add_argument("--no-dotenv", action="store_true", help="do not write a .env file")


def _api(args: argparse.Namespace) -> int:
    if args.api_command == "add-hawk-user":
        from ecr_pipelines.api.datastore import add_hawk_user
        from ecr_pipelines.lib.database import engine_for
        from ecr_pipelines.lib.settings import env_str

        scopes = [scope.strip() for scope in args.scope.split(",") if scope.strip()]
        add_hawk_user(
            engine_for(env_str("DATABASE_URL")), args.client_id, args.client_key, scopes, args.description
        )
        print(f"HAWK client {args.client_id} stored with scopes {', '.join(scopes) or '(none)'}")
        return 0
    from ecr_pipelines.api.server import serve

    return serve()


def _ckan(args: argparse.Namespace) -> int:
    from ecr_pipelines.ckan.cli import run

    return run(args)


def _datastore(args: argparse.Namespace) -> int:
    from ecr_pipelines.datastore.cli import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ecr_pipelines",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="apply pending migrations (and set up pools when DAGSTER_HOME is set)")
    up.add_argument("--to", type=int, default=None, help="stop at this version")
    down = db.add_parser("downgrade", help="revert migrations above VERSION")
    down.add_argument("version", type=int)
    db.add_parser("status", help="applied and pending migrations")
    url = db.add_parser("url", help="the application database URL (password hidden)")
    url.add_argument("--database", default=None)
    db.add_parser("stop", help="stop the embedded Postgres")
    instance = sub.add_parser("instance", help="the Dagster instance of DAGSTER_HOME")
    instance.add_subparsers(dest="instance_command", required=True).add_parser(
        "setup", help="create the limit of every pool that has none yet"
    )
    _add_dotenv_options(sub.add_parser("env", help="local set-up: .env and shell exports"))
    _add_dotenv_options(sub.add_parser("demo", help="materialize every asset against the stand-ins"))
    dev = sub.add_parser("dev", help="Dagster UI on the demo instance, stand-ins serving")
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument("--standin-port", type=int, default=8765)
    _add_dotenv_options(dev)
    standin = sub.add_parser("standin", help="serve one stand-in until Ctrl-C")
    standin.add_argument("name", help="solr, registry, iati, or a folder holding routes.json")
    standin.add_argument(
        "--port", type=int, default=None, help="default: solr 8983, registry 8765, iati 8766"
    )
    standin.add_argument("--data-dir", type=Path, default=None, help="solr: keep committed documents here")
    registry = sub.add_parser("registry", help="registry cache: migration from the legacy service")
    legacy = registry.add_subparsers(dest="registry_command", required=True).add_parser(
        "import-legacy",
        help="copy a legacy registry database into ours (DATABASE_URL); re-running changes nothing",
    )
    legacy.add_argument("legacy_url", metavar="LEGACY_URL", help="the legacy registry's database (only read)")
    _add_import_options(legacy)
    iati = sub.add_parser("iati", help="IATI: migration from the refresher")
    refresher = iati.add_subparsers(dest="iati_command", required=True).add_parser(
        "import-refresher",
        help="copy the refresher's publishers, documents and validations (and files) into ours",
    )
    refresher.add_argument("legacy_url", metavar="LEGACY_URL", help="the refresher's database (only read)")
    refresher.add_argument(
        "--blobs",
        metavar="URL",
        default=None,
        help="the refresher's blob containers copied to a folder (path or file:// URL) or s3://bucket/prefix",
    )
    refresher.add_argument("--source-container", default="source", help="folder of the source files")
    refresher.add_argument("--clean-container", default="clean", help="folder of the clean files")
    refresher.add_argument("--lake-container", default="activity-lake", help="folder of the activity lake")
    refresher.add_argument("--workers", type=int, default=8, help="concurrent blob copies (default 8)")
    _add_import_options(refresher)
    energy = sub.add_parser("energy", help="energy data hub: migration from the legacy service")
    energy_legacy = energy.add_subparsers(dest="energy_command", required=True).add_parser(
        "import-legacy",
        help="copy a legacy datahub-service database into ours (DATABASE_URL); re-running changes nothing",
    )
    energy_legacy.add_argument(
        "legacy_url", metavar="LEGACY_URL", help="the legacy datahub-service's database (only read)"
    )
    _add_import_options(energy_legacy)
    from ecr_pipelines.ckan.cli import add_subcommands

    add_subcommands(sub)
    from ecr_pipelines.datastore.cli import add_subcommands as add_datastore_subcommands

    add_datastore_subcommands(sub)
    api = sub.add_parser("api", help="serve the HTTP contracts (API_HOST, API_PORT, API_WORKERS)")
    api_commands = api.add_subparsers(dest="api_command")
    hawk = api_commands.add_parser("add-hawk-user", help="store (or replace) a data-store API client")
    hawk.add_argument("--client-id", required=True)
    hawk.add_argument("--client-key", required=True, help="the client's HAWK key (shared secret)")
    hawk.add_argument("--scope", default="", help="comma-separated route names, or * for every route")
    hawk.add_argument("--description", default="")
    return parser


def _add_import_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--schema", default="public", help="the legacy tables' schema (default public)")
    parser.add_argument(
        "--check", action="store_true", help="only check the source and the target; write nothing"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {
        "db": _db,
        "instance": _instance,
        "env": _env,
        "demo": _demo,
        "dev": _dev,
        "standin": _standin,
        "registry": _registry,
        "iati": _iati,
        "energy": _energy,
        "ckan": _ckan,
        "datastore": _datastore,
        "api": _api,
    }
    try:
        return handlers[args.command](args)
    except MigrationError as exc:
        _err(f"error: {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
