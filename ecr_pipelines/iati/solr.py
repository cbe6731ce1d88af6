"""Solr for the IATI index: the activity, transaction and budget collections behind one client.

``SolrClient`` wraps one ``pysolr.Solr`` per collection, all sharing one ``requests`` session built
by the project's HTTP layer (timeouts, retries with backoff on 429/502/503/504 and connection
errors: every call here is idempotent, so retrying a POST is safe). ``SolrResource`` is its Dagster
resource, configured from ``SOLR_URL`` and friends, or from the refresher's ``SOLR_API_URL``
(``build_solr_resource``).

Errors are split in two, because the Solr stage treats them differently:

* ``SolrRejected``: Solr refused what we sent (HTTP 400 and other client errors except 401, 403,
  404, 408, 429): a value the schema cannot take. It is the document's fault; that document gets
  ``solr_api_error`` and the batch goes on.
* ``SolrUnavailable``: no answer, a timeout, a server error, or a configuration problem (wrong
  URL or collection, credentials). Not the document's fault: the stage stops and the documents
  stay due.

Commit policy (explicit, and the only way documents become visible: the shipped configsets'
``autoCommit`` does not open a searcher and ``autoSoftCommit`` is off): nothing here commits on its
own. ``add`` and ``delete_document`` never pass ``commit`` / ``commitWithin``; the caller calls
``commit()`` (one hard commit per collection) when a unit of work is complete. The Solr stage commits
once per batch of complete documents, before it records them as indexed in Postgres (its index
guarantee is in ``ecr_pipelines.iati.stages.solr``); the stale-document clean-up commits once at
the end.
"""

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pysolr
import requests

from ecr_pipelines.iati.solr_docs import COLLECTIONS, DOCUMENT_ID_FIELD
from ecr_pipelines.lib.http import make_session

__all__ = [
    "COLLECTIONS",
    "DEFAULT_COLLECTION_NAMES",
    "LEGACY_COLLECTION_NAMES",
    "LEGACY_SOLR_URL_VARIABLE",
    "SolrClient",
    "SolrError",
    "SolrRejected",
    "SolrUnavailable",
    "StaleRemoval",
    "document_query",
    "remove_stale_solr_documents",
]

_COLLECTIONS_FILE = Path(__file__).resolve().parent / "solr_fields" / "collections.json"
_HTTP_STATUS = re.compile(r"\(HTTP (\d{3})\)")
# Client errors that say nothing about the document: credentials, a wrong URL or collection,
# a slow or busy server.
_NOT_THE_DOCUMENTS_FAULT = {401, 403, 404, 405, 408, 429}


def _production_names() -> dict[str, str]:
    """Logical collection → production collection name, from the bundled ``collections.json``."""
    names = {entry["collectionName"] for entry in json.loads(_COLLECTIONS_FILE.read_text(encoding="utf-8"))}
    missing = set(COLLECTIONS) - names
    if missing:
        raise RuntimeError(f"{_COLLECTIONS_FILE} lacks the collections {sorted(missing)}")
    # The production collections carry the logical names; only deployments rename them.
    return {logical: logical for logical in COLLECTIONS}


DEFAULT_COLLECTION_NAMES: dict[str, str] = _production_names()
# The refresher's settings: pysolr URL = SOLR_API_URL + "<name>_solrize/", i.e. the base URL up
# to /solr/ and the aliases the Datastore's collections are reached by.
LEGACY_SOLR_URL_VARIABLE = "SOLR_API_URL"
LEGACY_COLLECTION_NAMES: dict[str, str] = {logical: f"{logical}_solrize" for logical in COLLECTIONS}


class SolrError(Exception):
    """A Solr call failed; ``status`` is the HTTP status when Solr answered."""

    def __init__(self, message: str, status: int | None = None, collection: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.collection = collection


class SolrRejected(SolrError):
    """Solr refused the request's content (a document's value or field): the document's fault."""


class SolrUnavailable(SolrError):
    """Solr did not answer, failed, or is misconfigured: not the document's fault."""


def _classify(exc: pysolr.SolrError, collection: str) -> SolrError:
    message = str(exc)
    match = _HTTP_STATUS.search(message)
    status = int(match.group(1)) if match else None
    short = message if len(message) <= 2000 else message[:2000] + "…"
    if status is not None and 400 <= status < 500 and status not in _NOT_THE_DOCUMENTS_FAULT:
        return SolrRejected(short, status, collection)
    return SolrUnavailable(short, status, collection)


def document_query(document_id: str) -> str:
    """The query matching every Solr document of one IATI document (a quoted, escaped phrase)."""
    escaped = document_id.replace("\\", "\\\\").replace('"', '\\"')
    return f'{DOCUMENT_ID_FIELD}:"{escaped}"'


def _size(doc: Mapping[str, Any]) -> int:
    """A cheap estimate of a document's JSON size, to keep update requests bounded in bytes."""
    total = 2
    for key, value in doc.items():
        total += len(key) + 6
        if type(value) is str:
            total += len(value) + 2
        elif isinstance(value, list):
            # C-level loops: this runs for every field of every document sent.
            total += sum(map(len, map(str, value))) + 4 * len(value)
        else:
            total += len(str(value)) + 2
    return total


def _batches(docs: Iterable[Mapping[str, Any]], max_docs: int, max_bytes: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    size = 0
    for doc in docs:
        doc_size = _size(doc)
        if batch and (len(batch) >= max_docs or size + doc_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(doc)
        size += doc_size
    if batch:
        yield batch


class SolrClient:
    """The three IATI collections of one Solr server.

    ``collections`` maps the logical names (``activity``, ``transaction``, ``budget``) to the
    server's collection (or alias) names. Updates are never committed implicitly (see the module
    docstring).
    """

    def __init__(
        self,
        url: str,
        collections: Mapping[str, str] | None = None,
        *,
        session: requests.Session | None = None,
        auth: tuple[str, str] | None = None,
        connect_timeout: float = 10.0,
        timeout: float = 600.0,
        batch_size: int = 500,
        max_batch_bytes: int = 20 * 1024 * 1024,
    ) -> None:
        if not url:
            raise SolrUnavailable("SOLR_URL is not set: no Solr server to index into")
        self.url = url.rstrip("/")
        self.collections = dict(DEFAULT_COLLECTION_NAMES if collections is None else collections)
        missing = set(COLLECTIONS) - set(self.collections)
        if missing:
            raise ValueError(f"no collection name for {', '.join(sorted(missing))}")
        self.batch_size = max(1, batch_size)
        self.max_batch_bytes = max(1, max_batch_bytes)
        self.session = session or make_session(connect_timeout=connect_timeout, read_timeout=timeout)
        self._cores = {
            logical: pysolr.Solr(
                f"{self.url}/{name}",
                # (connect, read): requests takes the pair; pysolr passes it through unchanged.
                timeout=(connect_timeout, timeout),  # type: ignore[arg-type]
                session=self.session,
                auth=auth,
                always_commit=False,
            )
            for logical, name in self.collections.items()
        }

    def describe(self) -> str:
        names = ", ".join(f"{logical}={name}" for logical, name in self.collections.items())
        return f"{self.url} ({names})"

    def _call(self, logical: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self._cores[logical], method)(*args, **kwargs)
        except pysolr.SolrError as exc:
            raise _classify(exc, self.collections[logical]) from exc
        except requests.exceptions.RequestException as exc:
            # pysolr converts timeouts and refused connections, not every transport error.
            raise SolrUnavailable(f"{type(exc).__name__}: {exc}", None, self.collections[logical]) from exc

    def ping(self) -> None:
        """Raise ``SolrUnavailable`` unless every collection answers."""
        for logical in COLLECTIONS:
            try:
                self._call(logical, "ping")
            except SolrRejected as exc:
                raise SolrUnavailable(str(exc), exc.status, exc.collection) from exc

    def delete_document(self, document_id: str) -> None:
        """Delete every entry of one IATI document from the three collections (not committed)."""
        query = document_query(document_id)
        for logical in COLLECTIONS:
            self._call(logical, "delete", q=query, commit=False)

    def add(self, collection: str, docs: Iterable[Mapping[str, Any]]) -> int:
        """Add ``docs`` to a collection (logical name) in bounded requests; returns how many were sent.

        Requests hold at most ``batch_size`` documents and about ``max_batch_bytes``. ``docs`` may
        be a generator: it is consumed one request at a time, so only one request's documents are
        held. Not committed.
        """
        sent = 0
        for batch in _batches(docs, self.batch_size, self.max_batch_bytes):
            self._call(collection, "add", batch, commit=False)
            sent += len(batch)
        return sent

    def commit(self) -> None:
        """One hard commit per collection: what was added and deleted becomes visible and durable."""
        for logical in COLLECTIONS:
            self._call(logical, "commit")

    def count(self, collection: str, query: str = "*:*") -> int:
        """How many committed documents of a collection (logical name) match ``query``."""
        return int(self._call(collection, "search", query, rows=0).hits)

    def count_document(self, collection: str, document_id: str) -> int:
        return self.count(collection, document_query(document_id))

    def search(self, collection: str, query: str, **params: Any) -> list[dict[str, Any]]:
        return list(self._call(collection, "search", query, **params).docs)


@dataclass
class StaleRemoval:
    """Outcome of ``remove_stale_solr_documents``."""

    deleted: list[str] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # document id, error
    skipped_reason: str | None = None


def remove_stale_solr_documents(client: SolrClient | None, document_ids: Sequence[str]) -> StaleRemoval:
    """Delete the Solr entries of IATI documents that no longer exist, then commit once.

    For the sync stage, after it has deleted the rows. Never raises: the rows are already gone,
    so a failure is reported (``failures``, or ``skipped_reason`` when Solr is not configured or
    does not answer) for the caller to log. Documents whose delete was sent before a failure are
    committed all the same.
    """
    removal = StaleRemoval()
    if not document_ids:
        return removal
    if client is None:
        removal.skipped_reason = "SOLR_URL is not set"
        return removal
    for position, document_id in enumerate(document_ids):
        try:
            client.delete_document(document_id)
        except SolrUnavailable as exc:
            removal.skipped_reason = f"Solr unavailable: {exc}"
            removal.failures += [(doc, str(exc)) for doc in document_ids[position:]]
            break
        except SolrError as exc:
            removal.failures.append((document_id, str(exc)))
            continue
        removal.deleted.append(document_id)
    if removal.deleted:
        try:
            client.commit()
        except SolrError as exc:
            removal.failures += [(doc, f"commit failed: {exc}") for doc in removal.deleted]
            removal.deleted = []
    return removal
