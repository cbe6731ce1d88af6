"""``python -m ecr_pipelines ckan package ...``: one package built on the command line.

The same code as the pipeline (request validation, paging, formats, streaming), without
Dagster, mail, cache or statistics; the package goes to ``--out``. The API key of a private
resource is read from the environment variable named by ``--api-key-env`` (never from the
command line, where other users of the machine could see it in the process list).

The ``dwc`` kind (a Darwin Core Archive) reads its configuration from ``--dwc-config`` (else the
file named by ``CKAN_DWC_CONFIG``, else the bundled one); ``--eml`` names a file whose text is
the request's ``eml`` template, ``--for-gbif`` sets ``for_gbif``.

``python -m ecr_pipelines ckan anonymize-emails [--dry-run]`` is the legacy's one-off
``anonymize.py``: it rewrites the plain e-mail addresses already in the statistics tables
(``DATABASE_URL``) as the per-domain bcrypt hashes that ``CKAN_ANONYMIZE_EMAILS=true`` stores.

Also runnable on its own as ``python -m ecr_pipelines.ckan package ...``.
"""

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

DESCRIPTION = "CKAN packager: build one package (ZIP) from a datastore resource or a resource file"


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def add_package_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=("datastore", "url", "dwc"), default="datastore")
    parser.add_argument("--api-url", help="the full datastore_search action URL (datastore kind)")
    parser.add_argument("--resource-id", required=True, help="the CKAN resource id")
    parser.add_argument("--resource-url", help="the file to package (url kind)")
    parser.add_argument("--format", choices=("csv", "tsv", "xlsx"), default=None, help="default csv")
    parser.add_argument("--limit", type=int, default=None, help="at most this many rows")
    parser.add_argument("--offset", type=int, default=None, help="skip this many rows first")
    parser.add_argument("--q", default=None, help="full-text query, forwarded to CKAN")
    parser.add_argument("--filters", default=None, help='JSON object, e.g. \'{"country": "Denmark"}\'')
    parser.add_argument("--fields", default=None, help="comma-separated field ids (and their order)")
    parser.add_argument("--sort", default=None, help='e.g. "name asc, _id desc"')
    parser.add_argument("--plain", default=None, help="forwarded to CKAN (true/false)")
    parser.add_argument("--language", default=None, help="forwarded to CKAN (full-text language)")
    parser.add_argument(
        "--api-key-env", metavar="VAR", default=None, help="environment variable holding a CKAN API key"
    )
    parser.add_argument(
        "--page-size", type=int, default=None, help="rows per request (default: CKAN_PAGE_SIZE, else 5000)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that fetch and encode a large CSV/TSV download (default 2; 0: none)",
    )
    parser.add_argument(
        "--dwc-config",
        metavar="FILE",
        default=None,
        help="dwc kind: the YAML or JSON configuration (default: CKAN_DWC_CONFIG, else the bundled one)",
    )
    parser.add_argument(
        "--eml", metavar="FILE", default=None, help="dwc kind: an EML template file, filled in as eml.xml"
    )
    parser.add_argument(
        "--for-gbif", action="store_true", help="dwc kind: add gbif.json (an export for GBIF)"
    )
    parser.add_argument("--out", required=True, help="the ZIP file to write (replaced when complete)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def add_subcommands(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``ckan package`` to the ``python -m ecr_pipelines`` parser; returns the ``ckan`` parser."""
    ckan = subparsers.add_parser("ckan", help="CKAN packager (without Dagster)", description=DESCRIPTION)
    commands = ckan.add_subparsers(dest="ckan_command", required=True)
    add_package_arguments(commands.add_parser("package", help="build one package into a ZIP file"))
    _add_anonymize(commands)
    return ckan


def _add_anonymize(commands: Any) -> None:
    anonymize = commands.add_parser(
        "anonymize-emails",
        help="hash the plain e-mails already in the statistics (the legacy's anonymize.py)",
    )
    anonymize.add_argument("--dry-run", action="store_true", help="count what would change; write nothing")


def _anonymize(args: argparse.Namespace) -> int:
    from ecr_pipelines.ckan.statistics import anonymize_existing
    from ecr_pipelines.lib.database import engine_for
    from ecr_pipelines.lib.settings import env_str

    with engine_for(env_str("DATABASE_URL")).begin() as conn:
        counts = anonymize_existing(conn, dry_run=args.dry_run)
    done = "would be rewritten (dry run)" if args.dry_run else "rewritten"
    print(
        f"{counts.get('addresses', 0)} addresses: {counts.get('requests', 0)} request rows and "
        f"{counts.get('errors', 0)} error rows {done}; {counts.get('already_hashed', 0)} already hashed"
    )
    return 0


def _session() -> Any:
    from ecr_pipelines.lib.http import make_session
    from ecr_pipelines.lib.settings import env_bool, env_str

    return make_session(
        connect_timeout=float(env_str("HTTP_CONNECT_TIMEOUT", "10") or 10),
        read_timeout=float(env_str("HTTP_READ_TIMEOUT", "60") or 60),
        retries=int(env_str("HTTP_RETRIES", "3") or 3),
        verify=env_bool("HTTPS_VERIFY", True),
    )


def run(args: argparse.Namespace) -> int:
    """The ``ckan`` command; 0 on success, 2 on a refused request, 1 on a failed build."""
    if args.ckan_command == "anonymize-emails":
        return _anonymize(args)
    from ecr_pipelines.ckan.datastore import DEFAULT_PAGE_SIZE, DEFAULT_WORKERS, DatastoreError
    from ecr_pipelines.ckan.dwc import DwcConfig, DwcConfigError, load_dwc_config
    from ecr_pipelines.ckan.formats import FormatError
    from ecr_pipelines.ckan.package import BadRequest, PackageReport, validate_request, write_package
    from ecr_pipelines.lib.http import FetchError
    from ecr_pipelines.lib.settings import env_str

    raw: dict[str, Any] = {
        "api_url": args.api_url,
        "resource_id": args.resource_id,
        "resource_url": args.resource_url,
        "format": args.format,
        "limit": args.limit,
        "offset": args.offset,
        "q": args.q,
        "filters": args.filters,
        "fields": args.fields,
        "sort": args.sort,
        "plain": args.plain,
        "language": args.language,
    }
    if args.eml:
        try:
            raw["eml"] = Path(args.eml).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _err(f"error: cannot read the EML template {args.eml}: {exc}")
            return 2
    if args.for_gbif:
        raw["for_gbif"] = True
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            _err(f"error: the environment variable {args.api_key_env} is not set")
            return 2
        raw["key"] = key
    try:
        pkg = validate_request(args.kind, raw, require_email=False)
    except BadRequest as exc:
        _err(f"error: {exc}")
        return 2

    dwc_config: DwcConfig | None = None
    if pkg.kind == "dwc":
        try:
            dwc_config = load_dwc_config(args.dwc_config or env_str("CKAN_DWC_CONFIG"))
        except DwcConfigError as exc:
            _err(f"error: {exc}")
            return 2

    last = [time.monotonic()]

    def progress(report: PackageReport) -> None:
        now = time.monotonic()
        if not args.quiet and now - last[0] >= 5:
            last[0] = now
            done = f"{report.rows:,} rows" if report.kind != "url" else f"{report.source_bytes:,} bytes"
            _err(f"  {done} so far")

    try:
        report = write_package(
            pkg,
            _session(),
            args.out,
            page_size=args.page_size or int(env_str("CKAN_PAGE_SIZE") or DEFAULT_PAGE_SIZE),
            workers=DEFAULT_WORKERS if args.workers is None else args.workers,
            progress=progress,
            dwc_config=dwc_config,
        )
    except BadRequest as exc:
        _err(f"error: {exc}")
        return 2
    except (DatastoreError, FetchError, FormatError) as exc:
        _err(f"error: nothing written to {args.out}: {exc}")
        return 1
    if report.kind == "url":
        print(
            f"{args.out}: {report.entry} ({report.source_bytes:,} bytes), {report.zip_bytes:,} bytes zipped"
        )
    else:
        print(
            f"{args.out}: {report.entry}, {report.rows:,} rows x {len(report.fields)} fields, "
            f"{report.calls} calls ({report.paging} paging"
            f"{f', {report.workers} worker processes' if report.workers else ''}), {report.zip_bytes:,} bytes, "
            f"{report.seconds:.1f} s ({report.rows_per_second:,.0f} rows/s)"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ecr_pipelines.ckan", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="ckan_command", required=True)
    add_package_arguments(commands.add_parser("package", help="build one package into a ZIP file"))
    _add_anonymize(commands)
    return run(parser.parse_args(argv))
