"""Import the IATI refresher's database and blob containers (no Dagster), so that nothing it already
downloaded, validated, cleaned, flattened or indexed is done again:
``python -m ecr_pipelines iati import-refresher LEGACY_URL [--blobs URL]``.

Our ``iati.publisher``, ``iati.document`` and ``iati.validation`` keep the refresher's names and
columns, so the rows are copied as they are, stage columns included (validation ids kept, so
``document.validation`` needs no translation); the copy machinery, its checks and its "a re-run
writes nothing" guarantee are those of ``ecr_pipelines.lib.legacy_copy``.

Files: the refresher kept ``source/<hash>.xml`` and ``clean/<hash>.xml`` in two blob containers
and ``<document id>/<sha1>.xml|.json`` in the activity-lake container; our keys are the same names
under ``iati/source``, ``iati/clean`` and ``iati/lake/<document id>`` (``iati.blobkeys``). With
``--blobs`` (those containers copied to a folder or a bucket), every file a document's state says
exists is copied unless our store has it already. A document whose file is found nowhere is made
due again for the stage that produces it, and nothing more: no source file means ``downloaded =
NULL`` (the download stage fetches it; its report and later stages stay), no clean file resets the
clean columns (the clean stage rebuilds it from the source; flattened activities and Solr stay),
no lake files reset the lake columns (rebuilt from the clean file; Solr stays). These decisions
are made on the rows before they are written, so a second run with the same files finds every row
unchanged. Files are copied while our transaction is open: if it then fails, the files stay, which
is harmless (keys are content- or identity-addressed) and saves the next run copying them again.
"""

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from sqlalchemy.engine import Engine

from ecr_pipelines.iati.blobkeys import clean_key, lake_prefix, source_key
from ecr_pipelines.iati.stages.download import detect_encoding
from ecr_pipelines.lib.blobstore import BlobKeyError, BlobNotFound, BlobStore, open_blob_store
from ecr_pipelines.lib.http import HEAD_BYTES
from ecr_pipelines.lib.legacy_copy import (
    ImportReport,
    LegacyDatabase,
    LegacyImportRefused,
    TableCopy,
    not_imported,
    refuse,
    run_import,
)
from ecr_pipelines.lib.migrations import assert_schema_current
from ecr_pipelines.lib.sql import Sql

Progress = Callable[[str], None]

PUBLISHER_COLUMNS = (
    "org_id", "name", "title", "description", "state", "image_url", "country_code", "created", "last_seen",
    "package_count", "iati_id", "black_flag", "black_flag_notified",
)  # fmt: skip
VALIDATION_COLUMNS = (
    "id", "document_id", "document_hash", "document_url", "created", "valid", "report", "publisher",
    "publisher_name",
)  # fmt: skip
DOCUMENT_COLUMNS = (
    "id", "hash", "url", "cached_dataset_url", "name", "publisher", "first_seen", "last_seen", "modified",
    "downloaded", "download_error", "validation_request", "validation_api_error", "file_schema_valid",
    "validation", "regenerate_validation_report", "clean_start", "clean_end", "clean_error", "flatten_start",
    "flatten_end", "flatten_api_error", "flattened_activities", "lakify_start", "lakify_end", "lakify_error",
    "solrize_start", "solrize_end", "solr_api_error", "solrize_reindex", "last_solrize_end",
)  # fmt: skip

# A validation row is append-only history: the document and the moment say which report it is.
_VALIDATION_IDENTITY = (
    "SELECT t.id, jsonb_build_array(t.document_id, extract(epoch FROM t.created)) AS identity "
    "FROM {schema}.validation t"
)

PUBLISHERS = TableCopy("publisher", PUBLISHER_COLUMNS, conflict=("org_id",))
# Reports and flattened activities can be megabytes each: small pages keep memory flat.
VALIDATIONS = TableCopy("validation", VALIDATION_COLUMNS, identity=_VALIDATION_IDENTITY, page_size=200)
DOCUMENT_PAGE = 100

REFRESHER_NOT_IMPORTED = {
    "version": "the refresher's migration bookkeeping; ours is public.ecr_schema_migrations",
    "adhoc_validation": "the Validator web app's ad-hoc checks, not the refresher's work",
}

REFUSAL_ADVICE = (
    "Import into a freshly migrated database (`python -m ecr_pipelines db upgrade`), or one that only "
    "this command has written, before the IATI assets run against it."
)

_CONTENT_TYPES = {".xml": "application/xml", ".json": "application/json"}


@dataclass(frozen=True)
class Containers:
    """Folder names of the refresher's containers under ``--blobs`` (its production names)."""

    source: str = "source"
    clean: str = "clean"
    lake: str = "activity-lake"


def open_refresher_blobs(
    url: str, s3_endpoint_url: str | None = None, region: str | None = None
) -> BlobStore:
    """The store holding the refresher's containers; a local folder must exist (opening a missing
    one would create it empty, and every file would then look missing)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else url).expanduser()
        if not folder.is_dir():
            raise LegacyImportRefused(f"--blobs {url}: no such folder; nothing was changed")
    try:
        return open_blob_store(url, s3_endpoint_url, region)
    except ValueError as exc:
        raise LegacyImportRefused(f"--blobs {url}: {exc}; nothing was changed") from None


class _HeadReader:
    """Passes a stream through and keeps its first bytes (for the encoding of a copied source)."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.head = b""

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        return data


@dataclass(frozen=True)
class _File:
    present: bool
    head: bytes | None = None  # read only when the row needs its encoding
    size: int | None = None


class BlobMigrator:
    """Finds (or copies) the files each document's state says exist; rewrites the state of a
    document whose file is nowhere, so the stage that produces it runs again."""

    def __init__(
        self, sql: Sql, ours: BlobStore, theirs: BlobStore | None, containers: Containers, workers: int
    ):
        self.sql = sql
        self.ours = ours
        self.theirs = theirs
        self.containers = containers
        self.workers = max(1, workers)
        self.lock = threading.Lock()
        self.files: Counter[tuple[str, str]] = Counter()  # (kind, present | copied | missing)
        self.copied_bytes = 0
        self.due_again: dict[str, list[str]] = {"download": [], "clean": [], "lake": []}

    def _count(self, kind: str, state: str, size: int = 0, files: int = 1) -> None:
        with self.lock:
            self.files[kind, state] += files
            self.copied_bytes += size

    def _due(self, stage: str, doc_id: str) -> None:
        with self.lock:
            self.due_again[stage].append(doc_id)

    def prepare(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One page of legacy document rows, ready to be written (run by ``Copier.copy``)."""
        known = {
            doc_id: (doc_hash, encoding)
            for doc_id, doc_hash, encoding in self.sql.all(
                "SELECT id, hash, download_encoding FROM iati.document WHERE id = ANY(:ids)",
                {"ids": [r["id"] for r in rows]},
            )
        }
        with ThreadPoolExecutor(self.workers, thread_name_prefix="iati-import") as pool:
            return list(pool.map(lambda row: self._document(row, known.get(row["id"])), rows))

    def _document(self, row: dict[str, Any], known: tuple[str, str | None] | None) -> dict[str, Any]:
        row = {**row, "download_encoding": None, "download_size": None}
        if row["downloaded"] is None or row["download_error"] is not None or not row["hash"]:
            return row  # nothing was stored for it
        doc_id, doc_hash = row["id"], row["hash"]
        # The encoding our download stage records is worked out again only when the row lacks it.
        want_head = known is None or known[0] != doc_hash or known[1] is None
        source = self._file(
            "source", source_key(doc_hash), f"{self.containers.source}/{doc_hash}.xml", want_head
        )
        if row["clean_end"] is not None:
            clean = self._file("clean", clean_key(doc_hash), f"{self.containers.clean}/{doc_hash}.xml", False)
            if not clean.present:
                row.update(clean_start=None, clean_end=None, clean_error=None)
                self._due("clean", doc_id)
        if not source.present:
            row["downloaded"] = None
            self._due("download", doc_id)
        elif source.head is not None:
            complete = source.size is not None and source.size <= len(source.head)
            row["download_encoding"] = detect_encoding(source.head, complete=complete)
            row["download_size"] = source.size
        # A document without activities has no lake files to find.
        if row["lakify_end"] is not None and row["has_activities"] and not self._lake(doc_id):
            row.update(lakify_start=None, lakify_end=None, lakify_error=None)
            self._due("lake", doc_id)
        return row

    def _file(self, kind: str, ours_key: str, theirs_key: str, want_head: bool) -> _File:
        try:
            if self.ours.exists(ours_key):
                self._count(kind, "present")
                if not want_head:
                    return _File(True)
                with self.ours.open(ours_key) as fh:
                    head = fh.read(HEAD_BYTES)
                return _File(True, head, self.ours.size(ours_key))
            if self.theirs is not None and self.theirs.exists(theirs_key):
                with self.theirs.open(theirs_key) as fh:
                    reader = _HeadReader(fh)
                    size = self.ours.put_stream(ours_key, reader, "application/xml")
                self._count(kind, "copied", size)
                return _File(True, reader.head, size)
        except (BlobKeyError, BlobNotFound):
            pass  # a key no store can hold, or a file gone between the check and the copy
        self._count(kind, "missing")
        return _File(False)

    def _lake(self, doc_id: str) -> bool:
        """Whether the document's lake files are here (after copying those we lack)."""
        prefix = lake_prefix(doc_id)
        try:
            ours = {key[len(prefix) :] for key in self.ours.list(prefix)}
            if ours:
                self._count("lake", "present", files=len(ours))
            theirs_prefix = f"{self.containers.lake}/{doc_id}/"
            theirs = (
                [key[len(theirs_prefix) :] for key in self.theirs.list(theirs_prefix)] if self.theirs else []
            )
            # Compared name by name: a copy cut short by a crash is completed by the next run.
            for name in theirs:
                if name in ours:
                    continue
                with self.theirs.open(theirs_prefix + name) as fh:  # type: ignore[union-attr]
                    size = self.ours.put_stream(prefix + name, fh, _CONTENT_TYPES.get(Path(name).suffix))
                self._count("lake", "copied", size)
                ours.add(name)
        except (BlobKeyError, BlobNotFound):
            return False
        return bool(ours)

    def lines(self, theirs_label: str) -> list[str]:
        out = [f"files from {theirs_label} into {self.ours.uri()}"]
        for kind in ("source", "clean", "lake"):
            unit = "lake files" if kind == "lake" else f"{kind} files"
            copied, here = self.files[kind, "copied"], self.files[kind, "present"]
            missing = (
                f", {len(self.due_again['lake'])} document(s) without any"
                if kind == "lake"
                else f", {self.files[kind, 'missing']} missing"
            )
            out.append(f"  {unit}: {copied} copied, {here} already here{missing}")
        out.append(f"  bytes copied: {self.copied_bytes}")
        reasons = {
            "download": "download again (source file missing)",
            "clean": "clean again (clean file missing; flattened activities and Solr kept)",
            "lake": "rebuild the lake (no lake files; Solr kept)",
        }
        due = {stage: ids for stage, ids in self.due_again.items() if ids}
        if due:
            out.append("documents made due again, for the stage that produces the missing file:")
            for stage, ids in due.items():
                shown = ", ".join(sorted(ids)[:10]) + (", ..." if len(ids) > 10 else "")
                out.append(f"  {reasons[stage]}: {len(ids)}: {shown}")
        return out


def _check_containers(theirs: BlobStore, containers: Containers) -> None:
    for folder in (containers.source, containers.clean):
        if next(iter(theirs.list(f"{folder}/")), None) is not None:
            return
    raise LegacyImportRefused(
        f"--blobs {theirs.uri()} holds no {containers.source}/ or {containers.clean}/ files: is it the folder "
        "or bucket the refresher's containers were copied to (see --source-container, --clean-container)? "
        "Nothing was changed."
    )


def import_refresher(
    legacy_url: str,
    engine: Engine,
    ours: BlobStore,
    theirs: BlobStore | None = None,
    *,
    schema: str = "public",
    containers: Containers = Containers(),
    workers: int = 8,
    check_only: bool = False,
    progress: Progress = lambda line: None,
) -> ImportReport:
    """Copy the refresher's database at ``legacy_url`` into the ``iati`` schema of ``engine``'s
    database, and its files from ``theirs`` (the copied containers) into ``ours``. Raises
    ``LegacyImportRefused`` (nothing changed) or ``SchemaVersionError``."""
    assert_schema_current(engine)
    if theirs is not None:
        _check_containers(theirs, containers)
    migrators: list[BlobMigrator] = []

    def with_blobs(sql: Sql) -> None:
        migrators.append(BlobMigrator(sql, ours, theirs, containers, workers))

    with LegacyDatabase(legacy_url, schema) as legacy:
        specs = [PUBLISHERS, VALIDATIONS, TableCopy("document", DOCUMENT_COLUMNS)]
        gaps = legacy.missing({spec.table: spec.columns for spec in specs})
        if gaps:
            raise refuse(
                legacy.label,
                [f"it does not look like the IATI refresher's database: missing {', '.join(gaps)}"],
                "Point the command at the refresher's database (and --schema at its schema).",
            )

        def documents(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return migrators[0].prepare(rows)

        specs[2] = TableCopy(
            "document",
            DOCUMENT_COLUMNS,
            page_size=DOCUMENT_PAGE,
            extras={"has_activities": "coalesce(flattened_activities <> '[]'::jsonb, false)"},
            prepare=documents,
            fill=("download_encoding", "download_size"),
            fill_reset_on="hash",
        )
        report = run_import(
            legacy,
            engine,
            "iati",
            specs,
            check_only=check_only,
            progress=progress,
            before_checks=with_blobs,
            advice=REFUSAL_ADVICE,
        )
        report.not_imported = not_imported(legacy, [s.table for s in specs], REFRESHER_NOT_IMPORTED)
    if not check_only:
        label = theirs.uri() if theirs is not None else "(no --blobs: only our store was looked at)"
        report.details = migrators[0].lines(label)
        report.other_changes = sum(n for (_, state), n in migrators[0].files.items() if state == "copied")
        report.notes.append(
            "Solr: documents keep the refresher's solrize_end; if SOLR_URL is not the refresher's Solr, run "
            "iati_stages_job with ops.iati_solr_index.config.reindex_all: true"
        )
    return report
