"""``iati_activity_lake``: the lake stage (``ecr_pipelines.iati.stages.lake``)."""

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from ecr_pipelines.iati.blobkeys import lake_prefix
from ecr_pipelines.iati.defs.flatten import CLEAN_FILES
from ecr_pipelines.iati.defs.sync import GROUP
from ecr_pipelines.iati.lake import identifier_stem
from ecr_pipelines.iati.stages.lake import run_lake
from ecr_pipelines.metadata import md_table
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource
from ecr_pipelines.stages import BatchConfig, ProcessesConfig, log_stage, row_count, stage_metadata

CHECK_SAMPLE = 25


class LakeConfig(BatchConfig, ProcessesConfig):
    """Run config of the lake stage (ops.iati_activity_lake.config)."""

    workers: int = Field(
        default=8,
        description="Threads writing lake blobs, per process (object stores answer one PUT at a time).",
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
        processes=config.processes,
        run_id=context.run.run_id,
        progress=context.log.info,
    )
    log_stage(context.log, report)
    total = row_count(db, "SELECT count(*) FROM iati.document WHERE lakify_end IS NOT NULL")
    return dg.MaterializeResult(metadata=stage_metadata(report, total))


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


lake_checks = [iati_lake_blobs_exist]
