"""Command line: ``python -m ecr_pipelines <command>``.

db upgrade [--to N]     apply pending migrations (all, or up to version N)
db downgrade N          revert migrations above version N
db status               applied and pending migrations
db url [--database D]   the (normalised) URL of the application database, password hidden
db stop                 stop the embedded Postgres
env                     shell exports for a local set-up: eval "$(python -m ecr_pipelines env)"
demo                    run every asset against the stand-ins and the bundled sample data
dev                     the Dagster UI on the demo instance, with the stand-ins serving
"""

import argparse
import shlex
import sys

from ecr_pipelines.resources.database import engine_for, redact, stop_embedded_server, with_database
from ecr_pipelines.resources.migrations import MigrationError, downgrade, status, upgrade
from ecr_pipelines.settings import env_str


def _db(args: argparse.Namespace) -> int:
    if args.db_command == "stop":
        print("embedded Postgres stopped" if stop_embedded_server() else "embedded Postgres was not running")
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


def _env(_: argparse.Namespace) -> int:
    from ecr_pipelines.environment import resolve_environment

    for key, value in resolve_environment().exports().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ecr_pipelines.demo import run_demo

    return run_demo()


def _dev(args: argparse.Namespace) -> int:
    from ecr_pipelines.demo import run_dev

    return run_dev(port=args.port, standin_port=args.standin_port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecr_pipelines", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    db = sub.add_parser("db", help="database migrations").add_subparsers(dest="db_command", required=True)
    up = db.add_parser("upgrade", help="apply pending migrations")
    up.add_argument("--to", type=int, default=None, help="stop at this version")
    down = db.add_parser("downgrade", help="revert migrations above VERSION")
    down.add_argument("version", type=int)
    db.add_parser("status", help="applied and pending migrations")
    url = db.add_parser("url", help="the application database URL (password hidden)")
    url.add_argument("--database", default=None)
    db.add_parser("stop", help="stop the embedded Postgres")
    sub.add_parser("env", help="shell exports for a local set-up")
    sub.add_parser("demo", help="materialize every asset against the stand-ins")
    dev = sub.add_parser("dev", help="Dagster UI on the demo instance, stand-ins serving")
    dev.add_argument("--port", type=int, default=3000)
    dev.add_argument("--standin-port", type=int, default=8765)
    args = parser.parse_args(argv)
    handlers = {"db": _db, "env": _env, "demo": _demo, "dev": _dev}
    try:
        return handlers[args.command](args)
    except MigrationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
