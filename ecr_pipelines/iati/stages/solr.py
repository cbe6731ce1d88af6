"""The Solr stage: each flattened and lakified document into the activity, budget and transaction
collections (no Dagster).

Due (the refresher's selection): flattened and in the lake, a 2.x report, not indexed or flagged
for re-indexing, and something to index, or a document indexed before that now flattens to
nothing (its old entries must go). Documents with a previous Solr error come after the others,
so one poison document cannot hold up the queue.

A batch's documents are each replaced (old entries deleted, new ones added, not committed), then
the batch is committed once, and only then are its rows marked ``solrize_end``: a crash before
that leaves them due, and the redo is idempotent (deterministic ids, old entries deleted first).
Delete and add land in the same commit, so searchers never see a document missing. A document
Solr refuses gets ``solr_api_error`` (its partial entries deleted) and the batch goes on; Solr
unreachable stops the stage with the rest still due.
"""

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.iati.blobkeys import lake_prefix
from ecr_pipelines.iati.lake import LakeRecord, identifier_stem
from ecr_pipelines.iati.solr import SolrRejected, SolrUnavailable
from ecr_pipelines.iati.solr_docs import (
    COLLECTIONS,
    LakeRecordMissing,
    SolrDocError,
    activity_docs,
    exploded_docs,
)
from ecr_pipelines.iati.stages.documents import RESET_LAKE
from ecr_pipelines.lib.batch import Outcome, Progress, Stage, StageReport, clip, run_stage
from ecr_pipelines.lib.blobstore import BlobNotFound, BlobStore

log = logging.getLogger(__name__)

STAGE = Stage(
    name="iati.solr",
    table="iati.document",
    alias="d",
    joins="JOIN iati.validation v ON v.id = d.validation",
    due="""
        d.downloaded IS NOT NULL AND d.flatten_end IS NOT NULL AND d.lakify_end IS NOT NULL AND d.hash <> ''
        AND coalesce(v.report ->> 'iatiVersion', '') <> '' AND left(v.report ->> 'iatiVersion', 1) <> '1'
        AND (d.solrize_end IS NULL OR d.solrize_reindex)
        AND (d.flattened_activities <> CAST('[]' AS jsonb) OR d.last_solrize_end IS NOT NULL)
        AND (d.solr_api_error IS NULL OR :retry OR d.solrize_reindex)
    """,
    columns="d.id, d.hash",
    order="d.solr_api_error IS NOT NULL, d.downloaded, d.id",
    on_claim="solrize_start = now()",
    params={"retry": False},
)

# Written when a document's outcome is recorded (guarded by its hash).
RECORD = {
    "done": "solrize_end = now(), last_solrize_end = now(), solrize_reindex = false, solr_api_error = NULL",
    "rejected": "solrize_end = NULL, solr_api_error = :error",
    "failed": "solrize_end = NULL, solr_api_error = :error",
    "invalid": "solr_api_error = :error",
    "lake_missing": f"{RESET_LAKE}, solr_api_error = :error",
}


class SolrTarget(Protocol):
    """What the Solr stage needs from Solr (``SolrResource`` and ``SolrClient`` both fit)."""

    def delete_document(self, document_id: str) -> None: ...

    def add(self, collection: str, docs: Sequence[dict[str, Any]]) -> int: ...

    def commit(self) -> None: ...


def _read_lake(
    store: BlobStore, doc_id: str, identifiers: dict[str, str], workers: int
) -> dict[str, LakeRecord]:
    """The lake records of the given stems (stem → identifier); missing ones are left out."""
    prefix = lake_prefix(doc_id)

    def read(stem: str) -> LakeRecord | None:
        try:
            xml = store.get_bytes(f"{prefix}{stem}.xml")
            json_text = store.get_bytes(f"{prefix}{stem}.json").decode("utf-8")
        except BlobNotFound:
            return None
        return LakeRecord(identifier=identifiers[stem], stem=stem, xml=xml, json_text=json_text)

    stems = list(identifiers)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="iati-lake-read") as pool:
        found = pool.map(read, stems)
        return {stem: record for stem, record in zip(stems, found, strict=True) if record is not None}


def _build_docs(
    store: BlobStore, doc_id: str, doc_hash: str, flattened: list[dict[str, Any]], workers: int
) -> dict[str, list[dict[str, Any]]]:
    identifiers: dict[str, str] = {}
    for activity in flattened:
        identifier = activity.get("iati_identifier")
        if identifier and isinstance(identifier, str):
            identifiers[identifier_stem(identifier)] = identifier
    lake = _read_lake(store, doc_id, identifiers, workers)
    docs = {"activity": activity_docs(doc_id, flattened, document_hash=doc_hash, lake=lake.get)}
    for element in COLLECTIONS[1:]:
        docs[element] = exploded_docs(element, doc_id, flattened, document_hash=doc_hash)
    return docs


def solr_document(
    engine: Engine, store: BlobStore, solr: SolrTarget, doc_id: str, doc_hash: str, *, workers: int = 8
) -> Outcome:
    """Replace one document's entries in the three collections (not committed).

    Raises ``SolrUnavailable`` when Solr itself fails.
    """
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT hash, flattened_activities, solrize_reindex FROM iati.document WHERE id = :id"),
            {"id": doc_id},
        ).one_or_none()
    if row is None or row[0] != doc_hash:
        return Outcome(doc_id, "superseded", data=doc_hash)
    flattened: list[dict[str, Any]] = row[1] or []
    reindex = int(bool(row[2]))
    try:
        docs = _build_docs(store, doc_id, doc_hash, flattened, workers)
    except LakeRecordMissing as exc:
        return Outcome(doc_id, "lake_missing", message=f"lake rebuilt: {exc}", data=doc_hash)
    except SolrDocError as exc:
        return Outcome(doc_id, "invalid", error="invalid_document", message=str(exc), data=doc_hash)
    counts = {
        "activities": len(docs["activity"]),
        "skipped_no_identifier": len(flattened) - len(docs["activity"]),
    }
    del flattened
    solr.delete_document(doc_id)
    try:
        for collection in COLLECTIONS:
            counts[f"solr_docs_{collection}"] = solr.add(collection, docs.pop(collection))
    except SolrRejected as exc:
        # What was added before the refused request would be a partial document: remove it all,
        # as the refresher did. Searchers keep seeing the old entries until the commit.
        solr.delete_document(doc_id)
        return Outcome(
            doc_id, "rejected", error="solr_rejected", message=f"{exc.collection}: {exc}", data=doc_hash
        )
    counts["reindexed"] = reindex
    return Outcome(doc_id, "done", counts=counts, data=doc_hash)


def _process(engine: Engine, store: BlobStore, solr: SolrTarget, workers: int):
    def process(rows: Sequence[sa.Row]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for row in rows:
            try:
                outcomes.append(solr_document(engine, store, solr, row.id, row.hash, workers=workers))
            except SolrUnavailable as exc:
                # Its old entries may be deleted already: it is not indexed until it is redone.
                outcomes.append(
                    Outcome(
                        row.id,
                        "failed",
                        error="solr_unavailable",
                        message=f"Solr unavailable: {exc}",
                        data=row.hash,
                        stop=f"{row.id}: {exc}",
                    )
                )
                break
        try:
            solr.commit()
        except SolrUnavailable as exc:
            # Nothing of this batch is known to be visible: no document may be marked indexed.
            outcomes = [o for o in outcomes if o.kind != "done"]
            if outcomes:
                outcomes[-1].stop = outcomes[-1].stop or f"commit failed: {exc}"
            else:
                outcomes.append(
                    Outcome("(commit)", "left_due", error="solr_unavailable", stop=f"commit failed: {exc}")
                )
        return outcomes

    return process


def record_outcomes(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    for outcome in outcomes:
        statement = RECORD.get(outcome.kind)
        if statement is None:
            continue
        count = conn.execute(
            sa.text(f"UPDATE iati.document SET {statement} WHERE id = :id AND hash = :hash"),
            {"id": outcome.key, "hash": outcome.data, "error": clip(outcome.message)},
        ).rowcount
        if not count:
            outcome.kind, outcome.error, outcome.counts = "superseded", None, {}


def run_solr(
    engine: Engine,
    store: BlobStore,
    solr: SolrTarget,
    *,
    batch_size: int = 50,
    limit: int | None = None,
    reindex_all: bool = False,
    retry_errors: bool = False,
    workers: int = 8,
    run_id: str = "",
    progress: Progress = log.info,
) -> StageReport:
    """The Solr stage: one commit per batch, then the batch's rows are marked (see module docs)."""
    if reindex_all:
        with engine.begin() as conn:
            count = conn.execute(
                sa.text("UPDATE iati.document SET solrize_reindex = true WHERE solrize_end IS NOT NULL")
            ).rowcount
        progress(f"solr: re-index requested, {count} indexed documents flagged")
    return run_stage(
        engine,
        STAGE,
        _process(engine, store, solr, workers),
        record_outcomes,
        params={"retry": retry_errors},
        batch_size=batch_size,
        limit=limit,
        run_id=run_id,
        progress=progress,
    )
