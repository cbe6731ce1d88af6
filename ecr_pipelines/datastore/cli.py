"""``python -m ecr_pipelines datastore ...``: the data store's commands that need no Dagster.

``infer FILE.csv`` is the upload check of one CSV file. It prints, as JSON on stdout, each
column's name, inferred type and values in the first rows (``[{"name": ..., "type": ...,
"sample": [...]}]``). Notes (a column without a name left out, repeated names renamed) go to
stderr, so that stdout stays one JSON document.

``put SOURCE FILE [--name NAME] [--replace]`` stores a local file where the source's files are
looked for (``<blob prefix>/<name>``, e.g. ``datastore/datasets/dit/baci/baci.csv``), streamed:
the legacy's ``flask dev s3`` upload, for the sources nobody downloads (BACI, SPIRE, ...).
It prints ``{"key": ..., "bytes": ...}``. An existing object is kept unless ``--replace``: the
file registry remembers loaded names, so a file replaced under a loaded name is not loaded again.

``dump SCHEMA DIR`` writes one CSV per table of the schema, as the legacy's ``dump_schema``
did (header row, NULL written as an unquoted ``NULL``, a text ``NULL`` quoted), from one
read-only snapshot, and prints ``{"schema": ..., "tables": {table: rows}}``. A table's file is
``<table>.csv``, with ``/``, ``\\``, ``%`` and control characters of the name percent-encoded.

Every refusal (a file or source that does not exist, an unknown schema) prints
``{"error": ..., "problems": [...]}`` with exit code 2.
"""

import argparse
import json
import mimetypes
import os
import sys
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Data store, without Dagster: check a CSV upload, store a source file, dump a schema to CSV files"
)
# Shells make a tab awkward to type; these spellings name the common delimiters.
_NAMED_CHARACTERS = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def _character(value: str) -> str:
    return _NAMED_CHARACTERS.get(value.lower() if len(value) > 1 else value, value)


def add_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``datastore infer`` to the ``python -m ecr_pipelines`` parser; returns the ``datastore``
    parser."""
    datastore = subparsers.add_parser(
        "datastore", help="data store (without Dagster)", description=DESCRIPTION
    )
    commands = datastore.add_subparsers(dest="datastore_command", required=True)
    infer = commands.add_parser(
        "infer", help="check a CSV upload and print its columns' types and sample values as JSON"
    )
    infer.add_argument("file", metavar="FILE.csv", help="the CSV file (UTF-8, a BOM allowed)")
    infer.add_argument(
        "--delimiter",
        type=_character,
        default=",",
        help="one character, or tab, \\t, semicolon, pipe (default ,)",
    )
    infer.add_argument("--quote", type=_character, default='"', help='one character (default ")')
    infer.add_argument(
        "--infer-lines",
        type=int,
        default=None,
        metavar="N",
        help="rows the types are inferred from (default: CSV_SAMPLE_INFER_LINES, else 100000)",
    )
    put = commands.add_parser(
        "put", help="store a local file under a source's blob prefix (streamed); print its key as JSON"
    )
    put.add_argument("source", metavar="SOURCE", help="a source id, e.g. dit.baci or dit.spire.<table>")
    put.add_argument("file", metavar="FILE", help="the local file")
    put.add_argument("--name", default=None, help="store it under this file name (default: FILE's name)")
    put.add_argument("--replace", action="store_true", help="overwrite an object already stored there")
    dump = commands.add_parser(
        "dump", help="write one CSV per table of a database schema into DIR; print row counts as JSON"
    )
    dump.add_argument("schema", metavar="SCHEMA", help='the schema\'s exact name, e.g. "dit.baci" or spire')
    dump.add_argument("dir", metavar="DIR", type=Path, help="the folder (created when missing)")
    return datastore


def _print_json(value: object, *, one_line: bool = False) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=None if one_line else 2), flush=True)


def _refuse(message: str, problems: list[dict[str, str]] | None = None, *, one_line: bool = False) -> int:
    problems = problems or [{"kind": "usage", "message": message}]
    _print_json({"error": message, "problems": problems}, one_line=one_line)
    return 2


def _infer(args: argparse.Namespace) -> int:
    from ecr_pipelines.datastore.uploads import check_csv, infer_lines_setting

    try:
        infer_lines = infer_lines_setting() if args.infer_lines is None else args.infer_lines
        with open(args.file, "rb") as stream:
            check = check_csv(stream, delimiter=args.delimiter, quote=args.quote, infer_lines=infer_lines)
    except OSError as exc:
        return _refuse(f"cannot read {args.file}: {exc.strerror or exc}")
    except ValueError as exc:  # a bad delimiter, quote or number of lines
        return _refuse(str(exc))
    for note in check.notes:
        print(f"note: {note.message}", file=sys.stderr, flush=True)
    if not check.ok:
        problems = [{"kind": p.kind, "message": p.message} for p in check.errors]
        return _refuse(f"{args.file}: " + "; ".join(p.message for p in check.errors), problems)
    _print_json(check.describe())
    return 0


def _refuse_line(kind: str, message: str) -> int:
    return _refuse(message, [{"kind": kind, "message": message}], one_line=True)


def _put(args: argparse.Namespace) -> int:
    from ecr_pipelines.datastore.sources import SOURCES
    from ecr_pipelines.lib.blobstore import BlobKeyError, open_blob_store
    from ecr_pipelines.lib.settings import env_str

    spec = SOURCES.get(args.source)
    if spec is None or spec.blob_prefix is None:
        with_files = sorted(s.id for s in SOURCES.values() if s.blob_prefix and s.group != "dit.spire")
        why = "has no input file" if spec is not None else "is not a data store source"
        return _refuse_line(
            "unknown_source",
            f"{args.source!r} {why}; sources with files: {', '.join(with_files)}, dit.spire.<table>",
        )
    path = Path(args.file)
    if not path.is_file():
        return _refuse_line("missing_file", f"{args.file}: no such file")
    name = path.name if args.name is None else args.name
    # One file name, not a path: the source's readers only look directly under its prefix.
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return _refuse_line("bad_name", f"{name!r} is not a plain file name")
    key = spec.blob_prefix + name
    try:
        store = open_blob_store(env_str("BLOB_STORE_URL"), env_str("S3_ENDPOINT_URL"), env_str("AWS_REGION"))
        if store.exists(key) and not args.replace:
            return _refuse_line(
                "exists",
                f"{store.uri(key)} exists; pass --replace to overwrite it (a loaded name is not reloaded)",
            )
        size = store.put_file(key, path, mimetypes.guess_type(name)[0])
    except BlobKeyError as exc:
        return _refuse_line("bad_name", str(exc))
    except OSError as exc:
        return _refuse_line("unreadable", f"cannot read {args.file}: {exc.strerror or exc}")
    _print_json({"key": key, "bytes": size}, one_line=True)
    return 0


def _table_file(table: str) -> str:
    """A file name for the table's CSV that stays inside the folder whatever the table is called
    (a Postgres name may hold ``/``); percent-encoding keeps two names from meeting."""
    encoded = "".join(f"%{ord(c):02X}" if c in "/\\%" or ord(c) < 32 or ord(c) == 127 else c for c in table)
    return encoded + ".csv"


def _dump(args: argparse.Namespace) -> int:
    import sqlalchemy as sa
    from psycopg2 import sql

    from ecr_pipelines.lib.database import engine_for
    from ecr_pipelines.lib.settings import env_str

    engine = engine_for(env_str("DATABASE_URL"))
    tables: dict[str, int] = {}
    # One read-only REPEATABLE READ transaction: every file shows the schema at the same moment,
    # even while loads write to it.
    with engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn, conn.begin():
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        # The names are looked up, never pasted: the schema is a bind parameter here, and what
        # goes into COPY below are the catalogue's own names, quoted as identifiers.
        found = conn.execute(
            sa.text("SELECT nspname FROM pg_namespace WHERE nspname = :schema"), {"schema": args.schema}
        ).scalar()
        if found is None:
            return _refuse_line("unknown_schema", f"no schema {args.schema!r} in the database")
        names = conn.execute(
            sa.text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = :schema AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
                " ORDER BY c.relname"
            ),
            {"schema": found},
        ).scalars()
        try:
            args.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return _refuse_line("bad_dir", f"cannot make the folder {args.dir}: {exc.strerror or exc}")
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            for table in names.all():
                statement = sql.SQL(
                    "COPY {}.{} TO STDOUT WITH (FORMAT csv, HEADER, NULL 'NULL', ENCODING 'UTF8')"
                ).format(sql.Identifier(found), sql.Identifier(table))
                target = args.dir / _table_file(table)
                partial = target.with_name(target.name + ".part")
                # Written beside and renamed: a dump that breaks off leaves no half file under
                # the table's name.
                try:
                    with open(partial, "wb") as out:
                        cursor.copy_expert(statement.as_string(cursor), out)
                    os.replace(partial, target)
                except BaseException:
                    partial.unlink(missing_ok=True)
                    raise
                tables[table] = cursor.rowcount
        finally:
            cursor.close()
    _print_json({"schema": found, "tables": tables}, one_line=True)
    return 0


def run(args: argparse.Namespace) -> int:
    """The ``datastore`` command; 0 on success, 2 on a refused file, source or schema."""
    if args.datastore_command == "infer":
        return _infer(args)
    if args.datastore_command == "put":
        return _put(args)
    if args.datastore_command == "dump":
        return _dump(args)
    raise AssertionError(f"unknown datastore command {args.datastore_command!r}")
