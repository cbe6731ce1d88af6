"""``python -m ecr_pipelines datastore infer FILE.csv``: the upload check of one CSV file.

Prints, as JSON on stdout, each column's name, inferred type and values in the first rows
(``[{"name": ..., "type": ..., "sample": [...]}]``), or ``{"error": ..., "problems": [...]}``
with exit code 2 when the data store would refuse the file. Notes (a column without a name left
out, repeated names renamed) go to stderr, so that stdout stays one JSON document.
"""

import argparse
import json
import sys
from typing import Any

DESCRIPTION = "Data store: the checks and type inference of a CSV upload, without Dagster"
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
    return datastore


def _print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2), flush=True)


def _refuse(message: str, problems: list[dict[str, str]] | None = None) -> int:
    _print_json({"error": message, "problems": problems or [{"kind": "usage", "message": message}]})
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


def run(args: argparse.Namespace) -> int:
    """The ``datastore`` command; 0 on success, 2 on a refused file."""
    if args.datastore_command == "infer":
        return _infer(args)
    raise AssertionError(f"unknown datastore command {args.datastore_command!r}")
