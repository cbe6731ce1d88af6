"""``iati_solr_index``: the Solr stage (``ecr_pipelines.iati.stages.solr``)."""

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from ecr_pipelines.iati.defs.flatten import iati_flattened_activities
from ecr_pipelines.iati.defs.lake import CHECK_SAMPLE, iati_activity_lake
from ecr_pipelines.iati.defs.resources import SolrResource
from ecr_pipelines.iati.defs.sync import GROUP
from ecr_pipelines.iati.solr import SolrError
from ecr_pipelines.iati.solr_docs import COLLECTIONS
from ecr_pipelines.iati.stages.solr import CHUNK_SIZE, run_solr
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource
from ecr_pipelines.stages import RetryBatchConfig, log_stage, row_count, stage_metadata


class SolrIndexConfig(RetryBatchConfig):
    """Run config of the Solr stage (ops.iati_solr_index.config)."""

    reindex_all: bool = Field(
        default=False, description="Flag every indexed document for re-indexing first (solrize_reindex)."
    )
    retry_errors: bool = Field(
        default=False, description="Index again the documents Solr refused (solr_api_error)."
    )
    workers: int = Field(default=8, description="Threads reading lake blobs.")
    chunk_activities: int = Field(
        default=CHUNK_SIZE,
        description=(
            "Flattened activities of a document read, built and sent at a time: memory follows this, "
            "not the document's size. Output and commit points do not depend on it."
        ),
    )


@dg.asset(
    group_name=GROUP,
    kinds={"solr", "postgres"},
    deps=[iati_flattened_activities, iati_activity_lake],
    pool="solr",
    description=(
        "IATI documents in Solr (SOLR_URL): the activity collection (flattened activity + its lake XML/JSON) "
        "and the transaction and budget collections (one Solr document per element), built by "
        "ecr_pipelines.iati.solr_docs. Each due document is streamed in chunks of activities: its old entries "
        "deleted and the new ones added in bounded requests, uncommitted; one hard commit per batch of complete "
        "documents, after which the rows get solrize_end / last_solrize_end (solrize_reindex cleared). A document "
        "Solr refuses is removed entirely and gets solr_api_error, and the batch goes on; Solr unreachable stops "
        "the run with nothing of the batch committed and its documents still due. Documents a run left "
        "half-sent are redone first, before any other commit."
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
        retry_errors=config.retry_errors,
        workers=config.workers,
        chunk_size=config.chunk_activities,
        run_id=context.run.run_id,
        progress=context.log.info,
    )
    log_stage(context.log, report)
    total = row_count(db, "SELECT count(*) FROM iati.document WHERE solrize_end IS NOT NULL")
    metadata = stage_metadata(report, total, solr=solr.describe())
    if report.stopped:
        raise dg.Failure(
            description=(
                f"Solr became unavailable after {report.kinds.get('done', 0)} documents; the rest stay due: "
                f"{report.stopped}"
            ),
            metadata=metadata,
        )
    return dg.MaterializeResult(metadata=metadata)


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


solr_checks = [iati_solr_counts_match]
