"""IATI flatten, activity lake and Solr index assets (group ``iati``), with their checks.

Thin wrappers around ``index_stage`` (selection, crash recovery, per-document work) and ``solr``
(the client and its commit policy). They depend on the clean stage's asset by key only.
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg
import sqlalchemy as sa

from ecr_pipelines.iati.index_stage import StageReport, run_flatten, run_lake, run_solr
from ecr_pipelines.iati.lake import identifier_stem
from ecr_pipelines.iati.solr import SolrError, SolrResource, build_solr_resource
from ecr_pipelines.iati.solr_docs import COLLECTIONS
from ecr_pipelines.iati.sync import lake_prefix
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource

GROUP = "iati"
CLEAN_FILES = dg.AssetKey("iati_clean_files")
CHECK_SAMPLE = 25


class IndexBatchConfig(dg.Config):
    """Run config of the flatten stage (ops.iati_flattened_activities.config)."""

    batch_size: int = 50
    limit: int | None = None


class LakeConfig(IndexBatchConfig):
    """Run config of the lake stage (ops.iati_activity_lake.config)."""

    workers: int = 8


class SolrIndexConfig(IndexBatchConfig):
    """Run config of the Solr stage (ops.iati_solr_index.config).

    ``batch_size`` documents are committed together; ``reindex_all`` flags every indexed document
    for re-indexing first (as setting ``solrize_reindex`` by hand does, for all of them).
    """

    reindex_all: bool = False
    workers: int = 8


def _errors_table(rows: Sequence[tuple[str, str, str]]) -> dg.MetadataValue:
    return md_table(["id", "hash", "error"], rows)


def _common_metadata(report: StageReport, row_count: int) -> dict[str, Any]:
    return {
        "due": report.due,
        "processed": report.processed,
        "done": report.done,
        "errors": len(report.errors),
        "sent_back": len(report.sent_back),
        "superseded": report.superseded,
        "recovered": report.recovered,
        "batches": report.batches,
        "seconds": round(report.seconds, 2),
        "rows_per_second": round(report.rate, 2),
        "dagster/row_count": row_count,
        "error_preview": _errors_table(report.errors),
        "sent_back_preview": _errors_table(report.sent_back),
    }


def _scalar(db: DatabaseResource, sql: str) -> int:
    with db.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


@dg.asset(
    group_name=GROUP,
    kinds={"postgres", "xml"},
    deps=[CLEAN_FILES],
    pool="iati_flatten",
    description=(
        "Flattened activities of every cleaned IATI document (iati.document.flattened_activities, jsonb): one "
        "flat dict per activity, exactly as the refresher's Flattener wrote them (ecr_pipelines.iati.flatten), "
        "streamed from iati/clean/<hash>.xml. Legacy columns flatten_start / flatten_end / flatten_api_error "
        "(1 = the file could not be flattened); a run first makes interrupted and failed documents due again, "
        "as the refresher did. A document whose clean file is missing goes back to download and clean."
    ),
)
def iati_flattened_activities(
    context: dg.AssetExecutionContext,
    config: IndexBatchConfig,
    db: DatabaseResource,
    blobs: BlobStoreResource,
) -> dg.MaterializeResult:
    report = run_flatten(
        db.engine, blobs.store, batch_size=config.batch_size, limit=config.limit, progress=context.log.info
    )
    context.log.info(report.summary())
    for doc_id, _hash, error in report.errors[:20]:
        context.log.warning(f"flatten failed for {doc_id}: {error}")
    total = _scalar(db, "SELECT count(*) FROM iati.document WHERE flatten_end IS NOT NULL")
    return dg.MaterializeResult(
        metadata={
            **_common_metadata(report, total),
            "retried_errors": report.retried_errors,
            "activities": report.activities,
        }
    )


@dg.asset(
    group_name=GROUP,
    kinds={"xml", "json"},
    deps=[CLEAN_FILES],
    pool="iati_lake",
    description=(
        "Activity lake: one XML and one JSON blob per activity of every cleaned IATI document, at "
        "iati/lake/<document_id>/<sha1 of the iati-identifier>.xml|.json (the JSON in the refresher's "
        "nested @attr / text() form). A document's old lake is deleted before it is rebuilt; activities without "
        "an identifier are skipped and counted. Legacy columns lakify_start / lakify_end / lakify_error "
        "(non-IATI root); an unreadable or missing clean file sends the document back to clean / download."
    ),
)
def iati_activity_lake(
    context: dg.AssetExecutionContext, config: LakeConfig, db: DatabaseResource, blobs: BlobStoreResource
) -> dg.MaterializeResult:
    report = run_lake(
        db.engine,
        blobs.store,
        batch_size=config.batch_size,
        limit=config.limit,
        workers=config.workers,
        progress=context.log.info,
    )
    context.log.info(report.summary())
    for doc_id, _hash, error in report.errors[:20]:
        context.log.warning(f"lake failed for {doc_id}: {error}")
    total = _scalar(db, "SELECT count(*) FROM iati.document WHERE lakify_end IS NOT NULL")
    return dg.MaterializeResult(
        metadata={
            **_common_metadata(report, total),
            "activities": report.activities,
            "skipped_no_identifier": report.skipped_no_identifier,
            "blobs_written": report.blobs_written,
            "blobs_deleted": report.blobs_deleted,
        }
    )


def _solr_metadata(report: StageReport, total: int, solr: SolrResource) -> dict[str, Any]:
    return {
        **_common_metadata(report, total),
        "activities": report.activities,
        "skipped_no_identifier": report.skipped_no_identifier,
        **{f"solr_docs_{collection}": report.solr_docs[collection] for collection in COLLECTIONS},
        "reindexed": report.reindexed,
        "commits": report.commits,
        "solr": solr.describe(),
    }


@dg.asset(
    group_name=GROUP,
    kinds={"solr", "postgres"},
    deps=[iati_flattened_activities, iati_activity_lake],
    pool="solr",
    description=(
        "IATI documents in Solr (SOLR_URL): the activity collection (flattened activity + its lake XML/JSON) "
        "and the transaction and budget collections (one Solr document per element), built by "
        "ecr_pipelines.iati.solr_docs. Each due document's old entries are deleted and the new ones added in "
        "bounded batches; one hard commit per batch of documents, after which the rows get solrize_end / "
        "last_solrize_end (solrize_reindex cleared). A document Solr refuses gets solr_api_error and the batch "
        "goes on; Solr unreachable stops the run with the documents still due."
    ),
)
def iati_solr_index(
    context: dg.AssetExecutionContext,
    config: SolrIndexConfig,
    db: DatabaseResource,
    blobs: BlobStoreResource,
    solr: SolrResource,
) -> dg.MaterializeResult:
    if not solr.configured:
        raise dg.Failure(description="SOLR_URL is not set: no Solr server to index into", allow_retries=False)
    try:
        solr.ping()
    except SolrError as exc:
        raise dg.Failure(
            description=f"Solr does not answer, nothing was indexed: {exc}",
            metadata={"solr": solr.describe()},
        ) from exc
    report = run_solr(
        db.engine,
        blobs.store,
        solr,
        batch_size=config.batch_size,
        limit=config.limit,
        reindex_all=config.reindex_all,
        workers=config.workers,
        progress=context.log.info,
    )
    context.log.info(report.summary())
    for doc_id, _hash, error in report.errors[:20]:
        context.log.warning(f"Solr refused {doc_id}: {error}")
    total = _scalar(db, "SELECT count(*) FROM iati.document WHERE solrize_end IS NOT NULL")
    metadata = _solr_metadata(report, total, solr)
    if report.aborted:
        raise dg.Failure(
            description=(
                f"Solr became unavailable after {report.done} documents; the rest stay due: {report.aborted}"
            ),
            metadata=metadata,
        )
    return dg.MaterializeResult(metadata=metadata)


# -- checks ------------------------------------------------------------------------------------


@dg.asset_check(
    asset=iati_flattened_activities,
    description="No document is both flattened (flatten_end) and failed (flatten_api_error).",
)
def iati_flatten_outcome_exclusive(db: DatabaseResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, hash FROM iati.document WHERE flatten_end IS NOT NULL AND flatten_api_error IS NOT NULL "
                "ORDER BY id LIMIT 20"
            )
        ).all()
    return dg.AssetCheckResult(
        passed=not rows, metadata={"both": len(rows), "preview": md_table(["id", "hash"], rows)}
    )


@dg.asset_check(
    asset=iati_activity_lake,
    description=(
        f"The {CHECK_SAMPLE} most recently lakified (and flattened) documents have an XML and a JSON lake blob for "
        "every activity identifier, and nothing else."
    ),
)
def iati_lake_blobs_exist(db: DatabaseResource, blobs: BlobStoreResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, ARRAY(SELECT DISTINCT a ->> 'iati_identifier' FROM jsonb_array_elements(flattened_activities) a "
                "WHERE jsonb_typeof(a -> 'iati_identifier') = 'string' AND a ->> 'iati_identifier' <> '') "
                "FROM iati.document WHERE lakify_end IS NOT NULL AND flatten_end IS NOT NULL "
                f"ORDER BY lakify_end DESC, id LIMIT {CHECK_SAMPLE}"
            )
        ).all()
    store = blobs.store
    problems: list[tuple[str, str]] = []
    for doc_id, identifiers in rows:
        prefix = lake_prefix(doc_id)
        keys = {key[len(prefix) :] for key in store.list(prefix)}
        expected = {f"{identifier_stem(i)}.{ext}" for i in identifiers for ext in ("xml", "json")}
        missing, extra = expected - keys, keys - expected
        if missing or extra:
            problems.append(
                (doc_id, f"{len(missing)} missing, {len(extra)} unexpected of {len(expected)} blobs")
            )
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "sampled": len(rows),
            "failing": len(problems),
            "preview": md_table(["id", "problem"], problems),
        },
    )


_EXPECTED_COUNTS = """
    SELECT d.id,
           count(a.value) FILTER (WHERE identified),
           coalesce(sum(jsonb_array_length(a.value -> '@transaction')) FILTER (WHERE identified), 0),
           coalesce(sum(jsonb_array_length(a.value -> '@budget')) FILTER (WHERE identified), 0)
    FROM iati.document d
    LEFT JOIN LATERAL (
        SELECT value, jsonb_typeof(value -> 'iati_identifier') = 'string' AND value ->> 'iati_identifier' <> ''
               AS identified
        FROM jsonb_array_elements(d.flattened_activities)
    ) a ON true
    WHERE d.id IN (SELECT id FROM iati.document
                   WHERE solrize_end IS NOT NULL AND NOT solrize_reindex AND solr_api_error IS NULL
                   ORDER BY solrize_end DESC, id LIMIT :sample)
    GROUP BY d.id ORDER BY d.id
"""


@dg.asset_check(
    asset=iati_solr_index,
    description=(
        f"For the {CHECK_SAMPLE} most recently indexed documents, Solr holds (committed) as many activity, "
        "transaction and budget documents as their flattened activities give: nothing missing, nothing duplicated."
    ),
)
def iati_solr_counts_match(db: DatabaseResource, solr: SolrResource) -> dg.AssetCheckResult:
    with db.connect() as conn:
        rows = conn.execute(sa.text(_EXPECTED_COUNTS), {"sample": CHECK_SAMPLE}).all()
    mismatches: list[tuple[str, str, int, int]] = []
    for doc_id, *expected in rows:
        for collection, want in zip(COLLECTIONS, expected, strict=True):
            got = solr.count_document(collection, doc_id)
            if got != int(want):
                mismatches.append((doc_id, collection, int(want), got))
    return dg.AssetCheckResult(
        passed=not mismatches,
        metadata={
            "sampled": len(rows),
            "mismatches": len(mismatches),
            "preview": md_table(["id", "collection", "expected", "in Solr"], mismatches),
        },
    )


index_checks = [iati_flatten_outcome_exclusive, iati_lake_blobs_exist, iati_solr_counts_match]

# Everything but the resources (tests and the package's build_defs bind their own).
index_defs = dg.Definitions(
    assets=[iati_flattened_activities, iati_activity_lake, iati_solr_index], asset_checks=index_checks
)


def build_index_resources() -> dict[str, Any]:
    """The resources these assets add to the shared ones (db, blobs), from the environment."""
    return {"solr": build_solr_resource()}
