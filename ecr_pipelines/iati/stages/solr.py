"""The Solr stage: each flattened and lakified document into the activity, budget and transaction
collections (no Dagster).

Due (the refresher's selection): flattened and in the lake, a 2.x report, not indexed or flagged
for re-indexing, and something to index, or a document indexed before that now flattens to
nothing (its old entries must go). Documents with a previous Solr error come after the others,
so one poison document cannot hold up the queue; interrupted documents (below) come before
everything.

Streaming. A document is read from Postgres in chunks of ``chunk_size`` flattened activities: one
server-side cursor over ``jsonb_array_elements(flattened_activities) WITH ORDINALITY``, in the same
REPEATABLE READ snapshot as the hash check (a document whose hash changed is "superseded"). The
repeat number ``n`` of the activity ids (earlier activities with the same identifier: the one
thing that needs the whole document) comes from Postgres too, a window over the identifiers that
returns only the repeated ones, streamed alongside. For each chunk only its lake records are read
(``workers`` threads), its activity, transaction and budget documents are built
(``solr_docs.SolrDocStream``, the same documents as the whole-document functions) and handed to
the client as generators, which sends them in requests of at most ``SOLR_BATCH_SIZE``
documents and about ``SOLR_MAX_BATCH_BYTES``; then the chunk is dropped. Memory depends on the
chunk size and the largest activity, not on the document. ``documents_at_once`` documents of a
batch (default two, threads) are sent at the same time, so one is built while another waits for
Solr; the batch's commit waits for all of them.

Index guarantee. Solr has no transactions (and SolrCloud no rollback), so the guarantee is
stated in commit points:

1. A document's old entries are deleted (by ``iati_activities_document_id``) and its new ones
   added, chunk by chunk, without a commit. The stage commits (one hard commit per collection)
   only between documents, after a batch of complete documents, and only then marks them
   ``solrize_end``. Searchers therefore see a document's old entries until the commit that shows
   its complete new set; never a part of it, as far as this stage's commits go.
2. A document Solr refuses part-way (HTTP 400: a value the schema cannot take) is removed
   entirely, as the refresher did: its entries are deleted again, it gets ``solr_api_error``
   and the batch goes on; the commit shows it absent. The same for a document found invalid, or
   missing a lake record (sent back to the lake), after some of its chunks were sent; if that is
   found in its first chunk, nothing of it was sent and its old entries stay.
3. Solr unavailable part-way (no answer, a 5xx, a timeout, also at the commit) stops the stage
   and nothing of the batch is committed by us: every document of the batch stays due. The
   document being sent gets ``solr_api_error`` "Solr unavailable part-way: …" and stays due
   without ``retry_errors``; if nothing of it had changed in Solr (the failure came before any
   add, and it was never indexed) it gets "Solr unavailable: …" and waits for the retry run, as
   before.
4. An interrupted document (the process killed or crashed mid-document, Solr unavailable
   part-way, a failed commit) leaves uncommitted deletes and adds pending in Solr. Postgres knows
   it: ``solrize_start`` set and not followed by ``solrize_end``, and no error or the part-way
   one (claiming a document clears ``solr_api_error`` for this). Every run first redoes all
   interrupted documents, in one batch, before any other commit: the first commit of the run
   holds their complete new sets, replacing whatever was pending.

The limit: commits are collection-wide, and this stage is not the only thing that can commit.
Anything that commits the collections between an interruption and its redo (the sync's removal of
stale documents, which commits, another client or an operator, Solr's own commit when a core
is closed cleanly or reloaded, or an ``openSearcher`` auto-commit or auto soft commit configured on
the server) makes the pending state visible: the interrupted document shows the part of its new
entries sent so far, and its old entries are gone from the collections whose delete was sent.
The redo repairs it at the next run's first commit. A document whose hash the sync changes before
the redo loses the mark (the sync resets the stage columns), so its pending state stays until its
new version is indexed. The three collections are committed one after the other, so for the
moment between two of those commits (or for good, if Solr fails between them, until the redo) a
collection can be one batch ahead of another. Two Solr runs at once would commit each other's
documents half-way: the ``solr`` pool lets one run at a time.
"""

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.iati.blobkeys import lake_prefix
from ecr_pipelines.iati.lake import LakeRecord
from ecr_pipelines.iati.solr import SolrRejected, SolrUnavailable
from ecr_pipelines.iati.solr_docs import (
    COLLECTIONS,
    LakeRecordMissing,
    Numbered,
    SolrDocError,
    SolrDocStream,
    identifier_stems,
)
from ecr_pipelines.iati.stages.documents import RESET_LAKE
from ecr_pipelines.lib.batch import (
    PREVIEW_LIMIT,
    Outcome,
    Progress,
    Stage,
    StageReport,
    clip,
    has_due,
    run_stage,
)
from ecr_pipelines.lib.blobstore import BlobNotFound, BlobStore

log = logging.getLogger(__name__)

CHUNK_SIZE = 500  # flattened activities read, built and sent at a time
# Documents of a batch in flight at once: one is built while another waits for Solr.
DOCUMENTS_AT_ONCE = 2
PART_WAY = "Solr unavailable part-way"
# All interrupted documents go into the redo pass's one batch: their redo must precede any commit.
REDO_BATCH = 1_000_000

_DUE = """
    d.downloaded IS NOT NULL AND d.flatten_end IS NOT NULL AND d.lakify_end IS NOT NULL AND d.hash <> ''
    AND coalesce(v.report ->> 'iatiVersion', '') <> '' AND left(v.report ->> 'iatiVersion', 1) <> '1'
    AND (d.solrize_end IS NULL OR d.solrize_reindex)
    AND (d.flattened_activities <> CAST('[]' AS jsonb) OR d.last_solrize_end IS NOT NULL)
"""
# Started and not finished: Solr may hold uncommitted changes of it (guarantee, point 4).
INTERRUPTED = f"""(
    d.solrize_start IS NOT NULL AND (d.solrize_end IS NULL OR d.solrize_end < d.solrize_start)
    AND (d.solr_api_error IS NULL OR d.solr_api_error LIKE '{PART_WAY}%')
)"""

STAGE = Stage(
    name="iati.solr",
    table="iati.document",
    alias="d",
    joins="JOIN iati.validation v ON v.id = d.validation",
    due=f"""{_DUE}
        AND (d.solr_api_error IS NULL OR :retry OR d.solrize_reindex OR d.solr_api_error LIKE '{PART_WAY}%')
    """,
    columns="d.id, d.hash",
    order=f"{INTERRUPTED} DESC, d.solr_api_error IS NOT NULL, d.downloaded, d.id",
    # A run that dies mid-document then leaves it marked as interrupted, whatever error it had.
    on_claim="solrize_start = now(), solr_api_error = NULL",
    params={"retry": False},
)
# The pass every run starts with (same claims: the same stage name).
REDO_STAGE = replace(STAGE, due=f"({STAGE.due}) AND {INTERRUPTED}")

# Written when a document's outcome is recorded (guarded by its hash).
RECORD = {
    "done": "solrize_end = now(), last_solrize_end = now(), solrize_reindex = false, solr_api_error = NULL",
    "rejected": "solrize_end = NULL, solr_api_error = :error",
    "failed": "solrize_end = NULL, solr_api_error = :error",
    "interrupted": "solrize_end = NULL, solr_api_error = :error",
    "invalid": "solr_api_error = :error",
    "lake_missing": f"{RESET_LAKE}, solr_api_error = :error",
}
# Added when the document's entries were removed (it had been sent in part).
REMOVED = ", solrize_end = NULL"

_HEAD = """
    SELECT hash, solrize_reindex, last_solrize_end IS NOT NULL AS indexed
    FROM iati.document WHERE id = :id
"""
_ELEMENTS = """
    FROM iati.document d
    CROSS JOIN LATERAL jsonb_array_elements(d.flattened_activities) WITH ORDINALITY AS e(value, ordinality)
    WHERE d.id = :id
"""
# No ORDER BY: Postgres would sort the whole document; the function's order is checked instead.
_ACTIVITIES = f"SELECT e.ordinality, e.value {_ELEMENTS}"
# Only activities whose identifier occurred before: usually none. jsonb equality is exact, and
# non-string identifiers never reach an id (the document fails).
_REPEATS = f"""
    SELECT ordinality, n FROM (
        SELECT e.ordinality,
               row_number() OVER (PARTITION BY e.value -> 'iati_identifier' ORDER BY e.ordinality) - 1 AS n
        {_ELEMENTS}
    ) numbered
    WHERE n > 0 ORDER BY ordinality
"""


class SolrTarget(Protocol):
    """What the Solr stage needs from Solr (``SolrResource`` and ``SolrClient`` both fit)."""

    def delete_document(self, document_id: str) -> None: ...

    def add(self, collection: str, docs: Iterable[dict[str, Any]]) -> int: ...

    def commit(self) -> None: ...


@dataclass
class Sent:
    """What of one document was sent to Solr in this run (the ``data`` of its outcome)."""

    hash: str
    entries_before: bool = False  # it may have entries in Solr: indexed before, or being redone
    deleted: bool = False  # its delete was sent (or tried)
    added: bool = False  # an add of it was sent (or tried)
    removed: bool = False  # sent in part, then deleted again

    @property
    def anything(self) -> bool:
        """Its fate depends on the batch's commit."""
        return self.deleted or self.added

    @property
    def changed(self) -> bool:
        """Solr may hold uncommitted changes to what searchers see of it."""
        return self.added or (self.deleted and self.entries_before)


def iter_activity_chunks(conn: Connection, doc_id: str, chunk_size: int) -> Iterator[list[Numbered]]:
    """A document's flattened activities in order, ``chunk_size`` at a time, each with its repeat number.

    ``conn`` must be in a transaction (REPEATABLE READ: the two cursors read one snapshot).
    """
    size = max(1, chunk_size)
    params = {"id": doc_id}
    repeats = iter(conn.execute(sa.text(_REPEATS).execution_options(yield_per=size), params))
    activities = conn.execute(sa.text(_ACTIVITIES).execution_options(yield_per=size), params)
    repeat = next(repeats, None)
    expected = 1
    for partition in activities.partitions(size):
        chunk: list[Numbered] = []
        for ordinality, value in partition:
            if ordinality != expected:
                raise RuntimeError(f"{doc_id}: activity {ordinality} came where {expected} was expected")
            expected += 1
            n = 0
            if repeat is not None and repeat[0] == ordinality:
                n = repeat[1]
                repeat = next(repeats, None)
            chunk.append((value, n))
        yield chunk
    if repeat is not None:
        raise RuntimeError(f"{doc_id}: repeat number for activity {repeat[0]}, which was not read")


def _at_least_one(chunks: Iterator[list[Numbered]]) -> Iterator[list[Numbered]]:
    # A document that flattens to nothing still has its old entries deleted.
    empty = True
    for chunk in chunks:
        empty = False
        yield chunk
    if empty:
        yield []


def _read_lake(
    pool: ThreadPoolExecutor, store: BlobStore, doc_id: str, identifiers: dict[str, str]
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
    found = pool.map(read, stems)
    return {stem: record for stem, record in zip(stems, found, strict=True) if record is not None}


def _replace(
    conn: Connection,
    pool: ThreadPoolExecutor,
    store: BlobStore,
    solr: SolrTarget,
    doc_id: str,
    sent: Sent,
    chunk_size: int,
) -> Outcome:
    builder = SolrDocStream(doc_id, sent.hash)
    counts: Counter[str] = Counter({f"solr_docs_{collection}": 0 for collection in COLLECTIONS})
    chunks = 0
    for chunk in _at_least_one(iter_activity_chunks(conn, doc_id, chunk_size)):
        try:
            lake = _read_lake(pool, store, doc_id, identifier_stems(flat for flat, _ in chunk))
            docs = builder.chunk(chunk, lake.get)
        except SolrDocError as exc:
            return _bad_document(solr, doc_id, sent, exc)
        del chunk, lake
        if not sent.deleted:
            sent.deleted = True
            solr.delete_document(doc_id)
        sent.added = True
        try:
            for collection in COLLECTIONS:
                counts[f"solr_docs_{collection}"] += solr.add(collection, docs.docs(collection))
        except SolrRejected as exc:
            # What was added before the refused request would be a partial document: remove it
            # all, as the refresher did. Searchers keep seeing the old entries until the commit.
            solr.delete_document(doc_id)
            sent.removed = True
            return Outcome(
                doc_id, "rejected", error="solr_rejected", message=f"{exc.collection}: {exc}", data=sent
            )
        del docs
        chunks += 1
    counts.update(activities=builder.activities, skipped_no_identifier=builder.skipped, solr_chunks=chunks)
    return Outcome(doc_id, "done", counts=counts, data=sent)


def _bad_document(solr: SolrTarget, doc_id: str, sent: Sent, exc: SolrDocError) -> Outcome:
    if sent.deleted:
        # Found after some chunks were sent: those would be a partial document.
        solr.delete_document(doc_id)
        sent.removed = True
    if isinstance(exc, LakeRecordMissing):
        return Outcome(doc_id, "lake_missing", message=f"lake rebuilt: {exc}", data=sent)
    return Outcome(doc_id, "invalid", error="invalid_document", message=str(exc), data=sent)


def solr_document(
    engine: Engine,
    store: BlobStore,
    solr: SolrTarget,
    doc_id: str,
    doc_hash: str,
    *,
    workers: int = 8,
    chunk_size: int = CHUNK_SIZE,
    redo: bool = False,
) -> Outcome:
    """Replace one document's entries in the three collections, chunk by chunk (not committed).

    Solr unavailable is an outcome with ``stop`` set: "interrupted" when Solr may hold uncommitted
    changes to the document (``redo``: it is being redone, so it may), else "failed".
    """
    with engine.connect() as conn:
        conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            head = conn.execute(sa.text(_HEAD), {"id": doc_id}).one_or_none()
            if head is None or head.hash != doc_hash:
                return Outcome(doc_id, "superseded", data=Sent(doc_hash))
            sent = Sent(doc_hash, entries_before=bool(head.indexed) or redo)
            try:
                with ThreadPoolExecutor(
                    max_workers=max(1, workers), thread_name_prefix="iati-lake-read"
                ) as pool:
                    outcome = _replace(conn, pool, store, solr, doc_id, sent, chunk_size)
            except SolrUnavailable as exc:
                stop = f"{doc_id}: {exc}"
                if sent.changed:
                    return Outcome(
                        doc_id, "interrupted", "solr_unavailable", f"{PART_WAY}: {exc}", data=sent, stop=stop
                    )
                return Outcome(
                    doc_id, "failed", "solr_unavailable", f"Solr unavailable: {exc}", data=sent, stop=stop
                )
    if outcome.kind == "done":
        outcome.counts = {**outcome.counts, "reindexed": int(bool(head.solrize_reindex))}
    return outcome


def _sent_anything(outcome: Outcome) -> bool:
    return isinstance(outcome.data, Sent) and outcome.data.anything


def _process(
    engine: Engine,
    store: BlobStore,
    solr: SolrTarget,
    *,
    workers: int,
    chunk_size: int,
    redo: bool,
    documents: ThreadPoolExecutor | None = None,
) -> Callable[[Sequence[sa.Row]], list[Outcome]]:
    def one(row: sa.Row) -> Outcome:
        return solr_document(
            engine, store, solr, row.id, row.hash, workers=workers, chunk_size=chunk_size, redo=redo
        )

    def process(rows: Sequence[sa.Row]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        if documents is not None and len(rows) > 1:
            # Several documents in flight: while one waits for Solr (or the lake, or Postgres)
            # another is built, so this process and Solr both keep working. Every one is back
            # before anything is committed or recorded; those after a stop are left as if they
            # had been interrupted (not recorded, so redone first next run).
            for outcome in list(documents.map(one, rows)):
                outcomes.append(outcome)
                if outcome.stop:
                    break
        else:
            for row in rows:
                outcome = one(row)
                outcomes.append(outcome)
                if outcome.stop:
                    break
        if not outcomes or not outcomes[-1].stop:
            try:
                solr.commit()
                return outcomes
            except SolrUnavailable as exc:
                failure = f"commit failed: {exc}"
                outcomes.append(
                    Outcome("(commit)", "left_due", error="solr_unavailable", message=failure, stop=failure)
                )
        # Not committed: nothing that relied on this commit is recorded. Those documents keep
        # solrize_start without solrize_end, so the next run redoes them before it commits.
        return [outcome for outcome in outcomes if outcome.stop or not _sent_anything(outcome)]

    return process


def record_outcomes(conn: Connection, outcomes: Sequence[Outcome]) -> None:
    for outcome in outcomes:
        statement = RECORD.get(outcome.kind)
        if statement is None or not isinstance(outcome.data, Sent):
            continue
        if outcome.data.removed and "solrize_end" not in statement:
            statement += REMOVED
        count = conn.execute(
            sa.text(f"UPDATE iati.document SET {statement} WHERE id = :id AND hash = :hash"),
            {"id": outcome.key, "hash": outcome.data.hash, "error": clip(outcome.message)},
        ).rowcount
        if not count:
            outcome.kind, outcome.error, outcome.counts = "superseded", None, {}


def _merge(first: StageReport, second: StageReport) -> StageReport:
    """One report for the redo pass and the main pass: counts added, previews joined, the first
    of the texts (``stopped``)."""
    merged = StageReport(STAGE.name)
    for item in fields(StageReport):
        if item.name == "stage":
            continue
        a, b = getattr(first, item.name), getattr(second, item.name)
        if isinstance(a, Counter):
            value: Any = Counter(a)
            value.update(b)
        elif isinstance(a, list):
            value = (a + b)[:PREVIEW_LIMIT]
        elif isinstance(a, int | float) and isinstance(b, int | float):
            value = a + b
        else:
            value = a if a is not None else b
        setattr(merged, item.name, value)
    if first.processed:
        merged.counts["interrupted_redone"] = first.processed
    return merged


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
    chunk_size: int = CHUNK_SIZE,
    documents_at_once: int | None = None,
    run_id: str = "",
    progress: Progress = log.info,
) -> StageReport:
    """The Solr stage: interrupted documents first, then one commit per batch, after which the
    batch's rows are marked (see the module docs). ``limit`` does not apply to the redo pass.
    ``documents_at_once``: documents of a batch sent at the same time (threads; default
    ``DOCUMENTS_AT_ONCE``)."""
    at_once = DOCUMENTS_AT_ONCE if documents_at_once is None else max(1, documents_at_once)
    if reindex_all:
        with engine.begin() as conn:
            count = conn.execute(
                sa.text("UPDATE iati.document SET solrize_reindex = true WHERE solrize_end IS NOT NULL")
            ).rowcount
        progress(f"solr: re-index requested, {count} indexed documents flagged")
    params = {"retry": retry_errors}

    def run(stage: Stage, redo: bool, size: int, most: int | None, say: Progress) -> StageReport:
        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="iati-solr-document") as documents:
            process = _process(
                engine,
                store,
                solr,
                workers=workers,
                chunk_size=chunk_size,
                redo=redo,
                documents=documents if at_once > 1 else None,
            )
            return run_stage(
                engine,
                stage,
                process,
                record_outcomes,
                params=params,
                batch_size=size,
                limit=most,
                run_id=run_id,
                progress=say,
            )

    first = StageReport(STAGE.name)
    with engine.connect() as conn:
        interrupted = has_due(conn, REDO_STAGE, params)
    if interrupted:
        first = run(
            REDO_STAGE, True, REDO_BATCH, None, lambda message: progress(f"{message} [interrupted documents]")
        )
        if first.stopped:
            return _merge(first, StageReport(STAGE.name))
    remaining = None if limit is None else limit - first.processed
    if remaining is not None and remaining <= 0:
        return _merge(first, StageReport(STAGE.name))
    return _merge(first, run(STAGE, False, batch_size, remaining, progress))
