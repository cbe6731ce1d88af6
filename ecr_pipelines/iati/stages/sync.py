"""Make ``iati.publisher`` and ``iati.document`` match one index snapshot, set-based.

The snapshot goes into two temporary tables (a few multi-row INSERTs); everything else is a
handful of statements joining them with the stored rows, so a sync costs about twenty round trips
whatever the index size. All of it runs in the caller's transaction: either the database matches
the index afterwards, or (safety valve, error) nothing changed.

Rules (the refresher's, with the differences noted):

* Publishers are upserted by ``org_id``. A new short name is written (the refresher skipped the
  update when the short name changed, which made the publisher look stale and deleted it with all
  its documents until the next sync re-added them).
* Documents are upserted by ``id``. When the hash changed, every stage column is reset
  (``STAGE_RESET_COLUMNS``) so the document goes through download, validation, clean, flatten,
  lake and Solr again, and ``modified`` is set. The refresher kept ``flattened_activities`` and the
  manual re-validate / re-index flags; we clear them too (the new content is processed anyway).
  ``last_solrize_end`` is kept: it records that older Solr documents may exist.
* A document that failed with code 4 (no cached URL or hash) is due again when the index now
  gives it both.
* Documents and publishers missing from the index are deleted. The caller removes their blobs
  after the commit (``remove_blobs``): a crash in between leaves orphan blobs, never rows pointing
  at deleted blobs. Blobs are content-addressed, so a hash still used by another document keeps
  its blob.
* The safety valves run first, on row counts: an index with fewer than the configured share of
  the stored rows raises ``SafetyValveError`` before anything is written.
"""

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ecr_pipelines.iati.blobkeys import clean_key, lake_prefix, source_key
from ecr_pipelines.iati.index import IndexSnapshot, Rejected, SafetyValveError, safety_valve
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.sql import Sql

log = logging.getLogger(__name__)

FILL_PAGE = 5000

# Set to NULL when a document's hash changes: the state of every stage after the sync.
STAGE_RESET_COLUMNS: tuple[str, ...] = (
    "downloaded",
    "download_error",
    "download_error_message",
    "download_size",
    "download_encoding",
    "validation_request",
    "validation_api_error",
    "file_schema_valid",
    "validation",
    "clean_start",
    "clean_end",
    "clean_error",
    "flatten_start",
    "flatten_end",
    "flatten_api_error",
    "flattened_activities",
    "lakify_start",
    "lakify_end",
    "lakify_error",
    "solrize_start",
    "solrize_end",
    "solr_api_error",
)
# Reset to a value instead of NULL.
STAGE_RESET_VALUES: dict[str, str] = {
    "download_attempts": "0",
    "regenerate_validation_report": "false",
    "solrize_reindex": "false",
}


@dataclass
class SyncReport:
    source: str
    index_created: datetime | None
    publishers: int = 0
    new_publishers: int = 0
    renamed_publishers: list[tuple[str, str, str]] = field(default_factory=list)  # org_id, old, new
    removed_publishers: list[tuple[str, str]] = field(default_factory=list)  # org_id, name
    documents: int = 0
    new_documents: int = 0
    changed_documents: list[tuple[str, str, str]] = field(default_factory=list)  # id, old hash, new hash
    revived_documents: int = 0
    stale_documents: list[tuple[str, str, str | None, str | None]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    unreferenced_hashes: list[str] = field(default_factory=list)
    statements: int = 0
    seconds: float = 0.0

    @property
    def unchanged_documents(self) -> int:
        return self.documents - self.new_documents - len(self.changed_documents)

    @property
    def stale_document_ids(self) -> list[str]:
        return [row[0] for row in self.stale_documents]

    def summary(self) -> str:
        return (
            f"publishers: {self.publishers} in index, {self.new_publishers} new, "
            f"{len(self.renamed_publishers)} renamed, {len(self.removed_publishers)} removed; documents: "
            f"{self.documents} in index, {self.new_documents} new, {len(self.changed_documents)} changed, "
            f"{self.unchanged_documents} unchanged, {len(self.stale_documents)} stale; "
            f"{len(self.rejected)} rejected; {self.statements} statements in {self.seconds:.2f} s"
        )


def stored_counts(sql: Sql) -> tuple[int, int]:
    row = sql.all("SELECT (SELECT count(*) FROM iati.publisher), (SELECT count(*) FROM iati.document)")[0]
    return int(row[0]), int(row[1])


def check_safety_valves(
    sql: Sql, snapshot: IndexSnapshot, publisher_percentage: float, document_percentage: float
) -> None:
    stored_publishers, stored_documents = stored_counts(sql)
    for decision in (
        safety_valve("publishers", len(snapshot.publishers), stored_publishers, publisher_percentage),
        safety_valve("documents", len(snapshot.documents), stored_documents, document_percentage),
    ):
        if decision.tripped:
            raise SafetyValveError(decision.message)


def _fill(sql: Sql, snapshot: IndexSnapshot) -> None:
    sql.exec(
        """
        CREATE TEMP TABLE _iati_pub (
            org_id varchar PRIMARY KEY, name varchar NOT NULL, title varchar NOT NULL, iati_id varchar,
            package_count integer, description varchar, state varchar, image_url varchar,
            country_code varchar
        ) ON COMMIT DROP;
        CREATE TEMP TABLE _iati_doc (
            id varchar PRIMARY KEY, name varchar, hash varchar NOT NULL, url varchar NOT NULL,
            cached_dataset_url varchar, publisher varchar NOT NULL
        ) ON COMMIT DROP
        """
    )
    sql.values(
        "INSERT INTO _iati_pub VALUES %s",
        [
            (
                p.org_id,
                p.name,
                p.title,
                p.iati_id,
                p.package_count,
                p.description,
                p.state,
                p.image_url,
                p.country_code,
            )
            for p in snapshot.publishers
        ],
        page_size=FILL_PAGE,
    )
    sql.values(
        "INSERT INTO _iati_doc VALUES %s",
        [(d.id, d.name, d.hash, d.url, d.cached_dataset_url, d.publisher) for d in snapshot.documents],
        page_size=FILL_PAGE,
    )
    # Fresh temporary tables have no statistics; without them the planner guesses the joins.
    sql.exec("ANALYZE _iati_pub; ANALYZE _iati_doc")


def _sync_publishers(sql: Sql, report: SyncReport) -> None:
    report.renamed_publishers = [
        (r[0], r[1], r[2])
        for r in sql.all(
            "SELECT p.org_id, p.name, t.name FROM iati.publisher p JOIN _iati_pub t USING (org_id) "
            "WHERE p.name <> t.name ORDER BY p.org_id"
        )
    ]
    row = sql.all(
        """
        WITH up AS (
            INSERT INTO iati.publisher AS p (org_id, name, title, iati_id, package_count, description, state,
                                             image_url, country_code, created, last_seen)
            SELECT org_id, name, title, iati_id, package_count, description, state, image_url, country_code,
                   now(), now()
            FROM _iati_pub
            ON CONFLICT (org_id) DO UPDATE SET
                name = EXCLUDED.name, title = EXCLUDED.title, iati_id = EXCLUDED.iati_id,
                package_count = EXCLUDED.package_count, last_seen = EXCLUDED.last_seen,
                description = coalesce(EXCLUDED.description, p.description),
                state = coalesce(EXCLUDED.state, p.state),
                image_url = coalesce(EXCLUDED.image_url, p.image_url),
                country_code = coalesce(EXCLUDED.country_code, p.country_code)
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FROM up
        """
    )[0]
    report.new_publishers, report.publishers = int(row[0]), int(row[1])


def _reset_assignments() -> str:
    nulls = [f"{column} = NULL" for column in STAGE_RESET_COLUMNS]
    values = [f"{column} = {value}" for column, value in STAGE_RESET_VALUES.items()]
    return ", ".join(nulls + values)


def _sync_documents(sql: Sql, report: SyncReport) -> None:
    report.changed_documents = [
        (r[0], r[1], r[2])
        for r in sql.all(
            "SELECT d.id, d.hash, t.hash FROM iati.document d JOIN _iati_doc t USING (id) "
            "WHERE d.hash <> t.hash ORDER BY d.id"
        )
    ]
    touched = sql.exec(
        f"""
        UPDATE iati.document d SET
            modified = CASE WHEN d.hash <> t.hash THEN now() ELSE d.modified END,
            hash = t.hash, {_reset_assignments()}
        FROM _iati_doc t
        WHERE d.id = t.id AND (
            d.hash <> t.hash
            OR (d.download_error = 4 AND d.downloaded IS NULL AND t.hash <> ''
                AND coalesce(t.cached_dataset_url, '') <> '')
        )
        """
    )
    report.revived_documents = touched - len(report.changed_documents)
    row = sql.all(
        """
        WITH up AS (
            INSERT INTO iati.document AS d (id, hash, url, cached_dataset_url, name, publisher, first_seen, last_seen)
            SELECT id, hash, url, cached_dataset_url, name, publisher, now(), now() FROM _iati_doc
            ON CONFLICT (id) DO UPDATE SET
                url = EXCLUDED.url, cached_dataset_url = EXCLUDED.cached_dataset_url, name = EXCLUDED.name,
                publisher = EXCLUDED.publisher, last_seen = EXCLUDED.last_seen
            RETURNING (xmax = 0) AS inserted
        )
        SELECT count(*) FILTER (WHERE inserted), count(*) FROM up
        """
    )[0]
    report.new_documents, report.documents = int(row[0]), int(row[1])


def _remove_stale(sql: Sql, report: SyncReport) -> None:
    # Documents first: those of a removed publisher are not in the index either, so they are
    # listed here (with their blobs) rather than vanishing through ON DELETE CASCADE.
    report.stale_documents = [
        (r[0], r[1], r[2], r[3])
        for r in sql.all(
            "DELETE FROM iati.document d WHERE NOT EXISTS (SELECT 1 FROM _iati_doc t WHERE t.id = d.id) "
            "RETURNING d.id, d.hash, d.name, d.publisher"
        )
    ]
    report.removed_publishers = [
        (r[0], r[1])
        for r in sql.all(
            "DELETE FROM iati.publisher p WHERE NOT EXISTS (SELECT 1 FROM _iati_pub t WHERE t.org_id = p.org_id) "
            "RETURNING p.org_id, p.name"
        )
    ]
    candidates = sorted(
        {old for _, old, _ in report.changed_documents if old}
        | {h for _, h, _, _ in report.stale_documents if h}
    )
    if candidates:
        report.unreferenced_hashes = [
            r[0]
            for r in sql.all(
                "SELECT h FROM unnest(CAST(:hashes AS varchar[])) AS h "
                "WHERE NOT EXISTS (SELECT 1 FROM iati.document d WHERE d.hash = h) ORDER BY h",
                {"hashes": candidates},
            )
        ]


def sync_index(
    sql: Sql,
    snapshot: IndexSnapshot,
    *,
    publisher_safety_percentage: float = 50.0,
    document_safety_percentage: float = 50.0,
    ignore_safety_valve: bool = False,
    run_id: str | None = None,
) -> SyncReport:
    """Apply ``snapshot`` in the caller's transaction; raises ``SafetyValveError`` before any write."""
    started = time.perf_counter()
    before = sql.statements
    if not ignore_safety_valve:
        check_safety_valves(sql, snapshot, publisher_safety_percentage, document_safety_percentage)
    report = SyncReport(snapshot.source, snapshot.created, rejected=list(snapshot.rejected))
    _fill(sql, snapshot)
    _sync_publishers(sql, report)
    _sync_documents(sql, report)
    _remove_stale(sql, report)
    log_refresh(sql, report, run_id)
    report.statements = sql.statements - before
    report.seconds = time.perf_counter() - started
    return report


def log_refresh(sql: Sql, report: SyncReport, run_id: str | None, refused: str | None = None) -> None:
    sql.exec(
        """
        INSERT INTO iati.refresh_log (source, index_created, publishers, documents, new_publishers,
            removed_publishers, new_documents, changed_documents, stale_documents, rejected, refused, run_id)
        VALUES (:source, :created, :publishers, :documents, :new_publishers, :removed_publishers,
            :new_documents, :changed, :stale, :rejected, :refused, :run_id)
        """,
        {
            "source": report.source,
            "created": report.index_created,
            "publishers": report.publishers if refused is None else None,
            "documents": report.documents if refused is None else None,
            "new_publishers": report.new_publishers,
            "removed_publishers": len(report.removed_publishers),
            "new_documents": report.new_documents,
            "changed": len(report.changed_documents),
            "stale": len(report.stale_documents),
            "rejected": len(report.rejected),
            "refused": refused,
            "run_id": run_id,
        },
    )


@dataclass
class BlobCleanup:
    deleted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # key, error


def remove_blobs(store: BlobStore, hashes: Sequence[str], stale_document_ids: Sequence[str]) -> BlobCleanup:
    """Delete the source and clean files of ``hashes`` and the lake folders of stale documents.

    A failing delete is reported, not raised: the rows are already gone, and an orphan blob
    costs only space.
    """
    cleanup = BlobCleanup()
    for doc_hash in hashes:
        for key in (source_key(doc_hash), clean_key(doc_hash)):
            try:
                if store.exists(key):
                    store.delete(key)
                    cleanup.deleted += 1
            except Exception as exc:  # any back end's error: keep going with the others
                cleanup.failures.append((key, f"{type(exc).__name__}: {exc}"))
    for document_id in stale_document_ids:
        prefix = lake_prefix(document_id)
        try:
            cleanup.deleted += store.delete_prefix(prefix)
        except Exception as exc:
            cleanup.failures.append((prefix, f"{type(exc).__name__}: {exc}"))
    return cleanup
