"""Publisher and document indices of IATI data, parsed into the rows the sync writes (pure).

Two upstreams describe the same thing (who publishes, and which files they publish):

* the Bulk Data Service (BDS): two JSON documents, the dataset index (``{"datasets": [...]}``)
  and the reporting-org index (``{"reporting_orgs": [...]}``), each stamped with the BDS run that
  wrote it (``index_created_unix_timestamp``). Both must come from the same run.
* the legacy CKAN IATI Registry: ``organization_show`` results (publishers) and
  ``package_search`` results (one document per resource).

The rules, shared by both:

* A record without an id (or with an id that cannot name a blob folder) is rejected alone; the
  rest of the index is used. Duplicated ids keep the first occurrence.
* A document whose publisher is not in the publisher index is rejected: the database requires
  the publisher, and the refresher's row-by-row insert failed on it the same way.
* ``hash`` is the BDS ``hash_excluding_generated_timestamp`` (so a file regenerated with a new
  timestamp only is not "changed"), or the registry resource hash; ``''`` when there is none.
  Hashes name blobs (``source/<hash>.xml``), so a value that is not hexadecimal is replaced by
  the SHA-1 of its text: change detection still works and no key can escape its folder.
* The safety valve refuses an index that has fewer than ``percentage`` % of the rows already
  stored: a truncated or half-built upstream must not wipe the database.
"""

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

_HEX = re.compile(r"[0-9a-f]{8,128}")
MAX_ID_LENGTH = 255


class IndexProblem(RuntimeError):
    """An index that cannot be used: the sync must stop and change nothing."""


class IndexFormatError(IndexProblem):
    """Malformed or truncated JSON, or JSON of the wrong shape."""


class IndexMismatchError(IndexProblem):
    """The dataset index and the reporting-org index come from different BDS runs."""


class SafetyValveError(IndexProblem):
    """The index is suspiciously small compared with what is stored."""


@dataclass(frozen=True)
class Publisher:
    org_id: str
    name: str
    title: str
    iati_id: str | None = None
    package_count: int | None = None
    description: str | None = None
    state: str | None = None
    image_url: str | None = None
    country_code: str | None = None


@dataclass(frozen=True)
class Document:
    id: str
    name: str | None
    hash: str
    url: str
    cached_dataset_url: str | None
    publisher: str


@dataclass(frozen=True)
class Rejected:
    kind: str  # "publisher" or "document"
    key: str
    reason: str


@dataclass
class IndexSnapshot:
    """One consistent view of the upstream: what the sync makes the database look like."""

    source: str
    publishers: list[Publisher]
    documents: list[Document]
    rejected: list[Rejected] = field(default_factory=list)
    created: datetime | None = None

    def summary(self) -> str:
        when = f", created {self.created.isoformat()}" if self.created else ""
        return (
            f"{self.source} index: {len(self.publishers)} publishers, {len(self.documents)} documents, "
            f"{len(self.rejected)} rejected{when}"
        )


# -- JSON ------------------------------------------------------------------------------------------
def load_json(raw: bytes | str, what: str) -> Any:
    """Parse ``raw``; a failure names the index and tells a truncated body from bad JSON."""
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    if not text.strip():
        raise IndexFormatError(f"{what} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        # An error in the last few bytes of the body means the body stopped early.
        near_end = exc.pos >= len(text.rstrip()) - 1
        kind = "truncated (the JSON stops early)" if near_end else "malformed JSON"
        raise IndexFormatError(
            f"{what} is {kind}: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos} of {len(text)})"
        ) from None


def _object(data: Any, what: str, key: str) -> list[Any]:
    if not isinstance(data, dict):
        raise IndexFormatError(f"{what} is not a JSON object (got {type(data).__name__})")
    items = data.get(key)
    if not isinstance(items, list):
        raise IndexFormatError(f"{what} has no {key!r} list (keys: {', '.join(sorted(data)[:10]) or 'none'})")
    return items


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _bad_id(value: str | None) -> str | None:
    if not value:
        return "no id"
    if len(value) > MAX_ID_LENGTH:
        return f"id longer than {MAX_ID_LENGTH} characters"
    if "/" in value or value in (".", "..") or any(c.isspace() or ord(c) < 32 for c in value):
        return "id contains '/', whitespace or control characters"
    return None


def normalise_hash(value: Any) -> str:
    text = (_text(value) or "").lower()
    if not text or _HEX.fullmatch(text):
        return text
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _created(data: Mapping[str, Any], what: str) -> tuple[int, datetime]:
    stamp = data.get("index_created_unix_timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float):
        raise IndexFormatError(f"{what} has no numeric index_created_unix_timestamp")
    return int(stamp), datetime.fromtimestamp(stamp, UTC)


# -- Bulk Data Service -----------------------------------------------------------------------------
def parse_reporting_orgs(
    data: Any, what: str = "reporting-org index"
) -> tuple[list[Publisher], list[Rejected]]:
    publishers: list[Publisher] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    for position, item in enumerate(_object(data, what, "reporting_orgs")):
        if not isinstance(item, dict):
            rejected.append(Rejected("publisher", f"#{position}", "not a JSON object"))
            continue
        org_id = _text(item.get("id"))
        problem = _bad_id(org_id)
        name = _text(item.get("short_name"))
        if problem is None and not name:
            problem = "no short_name"
        if problem is None and org_id in seen:
            problem = "duplicate id"
        if problem:
            rejected.append(Rejected("publisher", org_id or f"#{position}", problem))
            continue
        assert org_id is not None and name is not None
        seen.add(org_id)
        publishers.append(
            Publisher(
                org_id=org_id,
                name=name,
                title=_text(item.get("human_readable_name")) or name,
                iati_id=_text(item.get("iati_identifier")),
            )
        )
    return publishers, rejected


def parse_datasets(data: Any, what: str = "dataset index") -> tuple[list[Document], list[Rejected]]:
    documents: list[Document] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    for position, item in enumerate(_object(data, what, "datasets")):
        if not isinstance(item, dict):
            rejected.append(Rejected("document", f"#{position}", "not a JSON object"))
            continue
        doc_id = _text(item.get("id"))
        problem = _bad_id(doc_id)
        publisher = _text(item.get("reporting_org_id"))
        if problem is None and not publisher:
            problem = "no reporting_org_id"
        if problem is None and doc_id in seen:
            problem = "duplicate id"
        if problem:
            rejected.append(Rejected("document", doc_id or f"#{position}", problem))
            continue
        assert doc_id is not None and publisher is not None
        seen.add(doc_id)
        good = item.get("last_known_good_dataset")
        good = good if isinstance(good, dict) else {}
        documents.append(
            Document(
                id=doc_id,
                name=_text(item.get("short_name")),
                hash=normalise_hash(good.get("hash_excluding_generated_timestamp")),
                url=_text(item.get("source_url")) or "",
                cached_dataset_url=_text(good.get("cached_dataset_url_xml")),
                publisher=publisher,
            )
        )
    return documents, rejected


def check_same_run(datasets: Any, reporting_orgs: Any) -> datetime:
    """The shared creation time of both BDS indices; refuses indices of different runs."""
    ds_stamp, ds_created = _created(datasets, "dataset index")
    org_stamp, org_created = _created(reporting_orgs, "reporting-org index")
    if ds_stamp != org_stamp:
        raise IndexMismatchError(
            "the dataset index and the reporting-org index come from different Bulk Data Service runs "
            f"(created {ds_created.isoformat()} and {org_created.isoformat()}); the refresh is skipped "
            "until both are from the same run"
        )
    return ds_created


def bds_snapshot(datasets: Any, reporting_orgs: Any) -> IndexSnapshot:
    """Both parsed BDS indices, checked to be of one run, as one snapshot."""
    documents, rejected_documents = parse_datasets(datasets)
    publishers, rejected_publishers = parse_reporting_orgs(reporting_orgs)
    created = check_same_run(datasets, reporting_orgs)
    return finish_snapshot("bds", publishers, documents, rejected_publishers + rejected_documents, created)


# -- CKAN registry ---------------------------------------------------------------------------------
def registry_publisher(org: Mapping[str, Any]) -> Publisher | Rejected:
    """A publisher from an ``organization_show`` result."""
    org_id = _text(org.get("id"))
    problem = _bad_id(org_id)
    name = _text(org.get("name"))
    if problem is None and not name:
        problem = "no name"
    if problem:
        return Rejected("publisher", org_id or name or "?", problem)
    assert org_id is not None and name is not None
    count = org.get("package_count")
    return Publisher(
        org_id=org_id,
        name=name,
        title=_text(org.get("title")) or name,
        iati_id=_text(org.get("publisher_iati_id")),
        package_count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        description=_text(org.get("publisher_description")),
        state=_text(org.get("state")),
        image_url=_text(org.get("image_url")),
        country_code=_text(org.get("publisher_country")),
    )


def registry_documents(package: Mapping[str, Any]) -> list[Document | Rejected]:
    """Documents of a ``package_search`` result, one per resource.

    The document id is the package id, as in the refresher (and as the BDS, whose dataset ids are
    the registry package ids). A package with several resources, which the IATI registry never
    had, gets ``<package id>:<resource id>`` for every resource after the first, so no resource
    silently replaces another.
    """
    package_id = _text(package.get("id"))
    name = _text(package.get("name"))
    publisher = _text(package.get("owner_org"))
    resources = package.get("resources")
    problem = _bad_id(package_id)
    if problem is None and not publisher:
        problem = "no owner_org"
    if problem is None and not isinstance(resources, list):
        problem = "no resources list"
    if problem:
        return [Rejected("document", package_id or name or "?", problem)]
    assert package_id is not None and publisher is not None and isinstance(resources, list)
    out: list[Document | Rejected] = []
    for position, resource in enumerate(resources):
        if not isinstance(resource, dict):
            out.append(Rejected("document", f"{package_id}#{position}", "resource is not a JSON object"))
            continue
        doc_id = package_id if position == 0 else f"{package_id}:{_text(resource.get('id')) or position}"
        problem = _bad_id(doc_id)
        if problem:
            out.append(Rejected("document", doc_id, problem))
            continue
        url = _text(resource.get("url"))
        out.append(
            Document(
                id=doc_id,
                name=name,
                hash=normalise_hash(resource.get("hash")),
                url=url or "",
                # The registry has no cache: the publisher's own URL is what gets downloaded.
                cached_dataset_url=url,
                publisher=publisher,
            )
        )
    return out


def registry_snapshot(
    organizations: Iterable[Mapping[str, Any]], packages: Iterable[Mapping[str, Any]]
) -> IndexSnapshot:
    publishers: list[Publisher] = []
    documents: list[Document] = []
    rejected: list[Rejected] = []
    seen_publishers: set[str] = set()
    seen_documents: set[str] = set()
    for org in organizations:
        item = registry_publisher(org)
        if isinstance(item, Rejected):
            rejected.append(item)
        elif item.org_id in seen_publishers:
            rejected.append(Rejected("publisher", item.org_id, "duplicate id"))
        else:
            seen_publishers.add(item.org_id)
            publishers.append(item)
    for package in packages:
        for doc in registry_documents(package):
            if isinstance(doc, Rejected):
                rejected.append(doc)
            elif doc.id in seen_documents:
                # Paging over a registry that changes can return a package twice.
                continue
            else:
                seen_documents.add(doc.id)
                documents.append(doc)
    return finish_snapshot("registry", publishers, documents, rejected, None, keep_counts=True)


# -- shared ----------------------------------------------------------------------------------------
def finish_snapshot(
    source: str,
    publishers: list[Publisher],
    documents: list[Document],
    rejected: list[Rejected],
    created: datetime | None,
    *,
    keep_counts: bool = False,
) -> IndexSnapshot:
    """Drop documents of unknown publishers and set each publisher's ``package_count``.

    BDS publishers get the number of their documents in the index; registry publishers keep the
    count the registry reported (``keep_counts``) when it gave one.
    """
    known = {p.org_id for p in publishers}
    kept: list[Document] = []
    for doc in documents:
        if doc.publisher in known:
            kept.append(doc)
        else:
            rejected.append(
                Rejected("document", doc.id, f"publisher {doc.publisher} is not in the publisher index")
            )
    counts = Counter(doc.publisher for doc in kept)
    publishers = [
        p
        if keep_counts and p.package_count is not None
        else replace(p, package_count=counts.get(p.org_id, 0))
        for p in publishers
    ]
    return IndexSnapshot(source, publishers, kept, rejected, created)


def parse_name_list(value: str | None) -> frozenset[str]:
    return frozenset(part.strip() for part in (value or "").split(",") if part.strip())


def apply_limits(
    snapshot: IndexSnapshot, reporting_orgs: frozenset[str], datasets: frozenset[str]
) -> IndexSnapshot:
    """Keep only the named publishers (short names) and/or datasets (names); empty means all.

    For development and partial deployments, as the refresher's LIMIT_TO_* settings.
    """
    if not reporting_orgs and not datasets:
        return snapshot
    publishers = [p for p in snapshot.publishers if not reporting_orgs or p.name in reporting_orgs]
    kept = {p.org_id for p in publishers}
    documents = [
        d for d in snapshot.documents if d.publisher in kept and (not datasets or (d.name or "") in datasets)
    ]
    if datasets:
        with_documents = {d.publisher for d in documents}
        publishers = [p for p in publishers if p.org_id in with_documents]
    return replace(snapshot, publishers=publishers, documents=documents)


@dataclass(frozen=True)
class SafetyDecision:
    what: str
    incoming: int
    stored: int
    percentage: float

    @property
    def tripped(self) -> bool:
        return self.percentage > 0 and self.stored > 0 and self.incoming < self.stored * self.percentage / 100

    @property
    def message(self) -> str:
        return (
            f"the index lists {self.incoming} {self.what} but {self.stored} are stored: fewer than "
            f"{self.percentage:g} % (the safety valve), so nothing was changed or deleted. If the upstream "
            "really shrank, run once with config ignore_safety_valve: true"
        )


def safety_valve(what: str, incoming: int, stored: int, percentage: float) -> SafetyDecision:
    """Whether an index of ``incoming`` rows may replace ``stored`` rows (0 % disables the valve)."""
    return SafetyDecision(what, incoming, stored, percentage)
