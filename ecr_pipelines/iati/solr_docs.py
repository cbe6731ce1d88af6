"""Build the Solr documents of the ``activity``, ``transaction`` and ``budget`` collections.

Pure transformation of one document's flattened activities (see :mod:`ecr_pipelines.iati.flatten`)
into the documents the legacy refresher's solrize stage sent, so existing Solr schemas, queries and
document ids keep working:

* Activities without ``iati_identifier`` are skipped. The activity ``id`` is
  ``<document_id>--<sha1(iati_identifier)>--<n>``, ``n`` counting earlier activities of the same
  document with the same identifier (0 for the first): the one thing that depends on the whole
  document.
* An activity document is the flattened activity without ``@transaction`` / ``@budget``, plus,
  in this order, ``iati_xml`` and ``iati_json`` (the lake record's XML and JSON text),
  ``iati_activities_document_id``, ``iati_activities_document_hash``, ``location_point_latlon``
  and ``id``.
* ``location_point_latlon``: for each ``location_point_pos`` ``"lat lon"`` with both parts floats,
  ``|lat| <= 90`` and ``|lon| <= 180``, the string ``f"{lat},{lon}"`` of the floats (``"1 1"`` →
  ``"1.0,1.0"``); written as a list, and only when at least one position is valid.
* Explode: for element ``E`` (``transaction``, ``budget``) the base is the activity document
  without ``iati_xml`` / ``iati_json`` and without every key starting with ``E + "_"`` (the
  aggregated values). Each dict ``i`` of ``@E`` gives ``doc = base | sub`` whose ``id`` is
  ``sha1_hex(json.dumps(doc) + str(i))``, computed while ``doc`` still holds the activity ``id``
  at its position. So transaction documents carry the activity's ``budget_*`` lists and vice versa.
* Finally, top-level keys whose value is exactly ``""`` are dropped (lists containing ``""`` are
  kept). Ids are computed before that, on the full dicts.

Streaming: :class:`SolrDocStream` builds a document's Solr documents chunk by chunk from its
activities in order, each given with its ``n`` (:func:`repeat_numbers` counts in memory; the Solr
stage has Postgres count, so it holds no per-document state). Everything else is per activity, so
the chunks' documents are exactly the whole document's. :func:`activity_docs` and
:func:`exploded_docs` are the one-chunk case.

Exploded ids depend on key order. The refresher read the flattened activities back from a
Postgres ``jsonb`` column, which returns object keys shortest first, then by byte order; the keys
added afterwards follow in insertion order. We reorder every flattened dict the same way
(:func:`jsonb_key_order`), so ids match the refresher whichever way our flattened output was stored.
"""

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ecr_pipelines.iati.flatten import EXPLODE_ELEMENTS
from ecr_pipelines.iati.lake import LakeRecord, identifier_stem

__all__ = [
    "COLLECTIONS",
    "DOCUMENT_HASH_FIELD",
    "DOCUMENT_ID_FIELD",
    "EXPLODE_ELEMENTS",
    "ChunkDocs",
    "LakeLookup",
    "LakeRecordMissing",
    "Numbered",
    "SolrDocError",
    "SolrDocStream",
    "activity_docs",
    "budget_docs",
    "explode",
    "exploded_docs",
    "identifier_stems",
    "iter_explode",
    "jsonb_key_order",
    "lake_index",
    "lat_lon",
    "repeat_numbers",
    "transaction_docs",
]

COLLECTIONS: tuple[str, ...] = ("activity", *EXPLODE_ELEMENTS)
DOCUMENT_ID_FIELD = "iati_activities_document_id"
DOCUMENT_HASH_FIELD = "iati_activities_document_hash"
_LAKE_FIELDS = ("iati_xml", "iati_json")

LakeLookup = Callable[[str], LakeRecord | None]
"""Find the lake record of an activity by its file stem; None when there is none."""


class SolrDocError(Exception):
    """A flattened activity cannot become a Solr document (the whole source document fails)."""


class LakeRecordMissing(SolrDocError):
    """The lake has no record for an activity (the refresher re-ran the lake stage and retried)."""

    def __init__(self, identifier: str, stem: str) -> None:
        super().__init__(f"no lake record for activity {identifier!r} (stem {stem})")
        self.identifier = identifier
        self.stem = stem


def _jsonb_key(key: str) -> tuple[int, bytes]:
    encoded = key.encode("utf-8")
    return len(encoded), encoded


# Key order as given -> jsonb order. The activities of a corpus share a few thousand key sets,
# so each is sorted once (bounded; cleared when full).
_jsonb_orders: dict[tuple[str, ...], tuple[str, ...]] = {}


def jsonb_key_order(value: Any) -> Any:
    """Return ``value`` with every dict's keys in Postgres ``jsonb`` order (length, then bytes)."""
    if type(value) is str:
        return value
    if isinstance(value, Mapping):
        given = tuple(value)
        order = _jsonb_orders.get(given)
        if order is None:
            if len(_jsonb_orders) >= 50_000:
                _jsonb_orders.clear()
            order = _jsonb_orders[given] = tuple(sorted(given, key=_jsonb_key))
        return {key: jsonb_key_order(value[key]) for key in order}
    if isinstance(value, list):
        return [item if type(item) is str else jsonb_key_order(item) for item in value]
    return value


def lat_lon(pos: str) -> str | None:
    """Return ``"lat,lon"`` for a valid ``"lat lon"`` point position, else None."""
    parts = pos.split()
    if len(parts) != 2:
        return None
    try:
        lat, lon = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    # NaN fails both comparisons, infinities the bounds.
    if -90 <= lat <= 90 and -180 <= lon <= 180:
        return f"{lat},{lon}"
    return None


def lake_index(records: Iterable[LakeRecord]) -> dict[str, LakeRecord]:
    """Index lake records by stem; a later duplicate replaces an earlier one, like a blob overwrite.

    Pass ``lake_index(records).get`` as the ``lake`` argument of :func:`activity_docs`.
    """
    return {record.stem: record for record in records}


def _without_empty(doc: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in doc.items() if value != ""}


Numbered = tuple[Mapping[str, Any], int]
"""A flattened activity and its repeat number ``n``: how many earlier activities of the same
source document have the same ``iati_identifier`` (0 for the first)."""


def repeat_numbers(flattened: Iterable[Mapping[str, Any]]) -> Iterator[Numbered]:
    """Number the activities as the refresher's ids count them, in memory.

    The counter lives in this generator, so chunks cut from one call share it. It holds every
    distinct identifier of the document; the Solr stage gets the same numbers from Postgres instead
    (``ecr_pipelines.iati.stages.solr``) and keeps none of them.
    """
    seen: Counter[str] = Counter()
    for flat in flattened:
        identifier = flat.get("iati_identifier")
        if identifier and isinstance(identifier, str):
            yield flat, seen[identifier]
            seen[identifier] += 1
        else:
            yield flat, 0


def identifier_stems(flattened: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Lake file stem → identifier for the activities that have a (single) identifier."""
    stems: dict[str, str] = {}
    for flat in flattened:
        identifier = flat.get("iati_identifier")
        if identifier and isinstance(identifier, str):
            stems[identifier_stem(identifier)] = identifier
    return stems


def _prepare(
    document_id: str, document_hash: str, flat: Mapping[str, Any], n: int, lake: LakeLookup | None
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]] | None:
    """(activity document before dropping ``""``, sub-dicts per explode element); None: no identifier."""
    identifier = flat.get("iati_identifier")
    if not identifier:
        return None
    if not isinstance(identifier, str):
        # Solr's iati_identifier is single-valued: it would reject this activity and with it the
        # whole document, so fail here with a clearer message.
        raise SolrDocError(f"activity has several iati-identifier values: {identifier!r}")
    stem = identifier_stem(identifier)
    doc: dict[str, Any] = jsonb_key_order(flat)
    subs = {name: doc.pop("@" + name, []) for name in EXPLODE_ELEMENTS}
    if lake is not None:
        record = lake(stem)
        if record is None:
            raise LakeRecordMissing(identifier, stem)
        doc["iati_xml"] = record.xml.decode("utf-8")
        doc["iati_json"] = record.json_text
    doc[DOCUMENT_ID_FIELD] = document_id
    doc[DOCUMENT_HASH_FIELD] = document_hash
    positions = doc.get("location_point_pos")
    if positions is not None:
        points = positions if isinstance(positions, list) else [positions]
        latlons = [point for point in map(lat_lon, points) if point is not None]
        if latlons:
            doc["location_point_latlon"] = latlons
    doc["id"] = f"{document_id}--{stem}--{n}"
    return doc, subs


class ChunkDocs:
    """The Solr documents of one chunk of activities, made one at a time per collection.

    Every activity of the chunk is checked and prepared when the chunk is built (so a bad one is
    found before anything of the chunk is sent); the collections' documents are then generated on
    demand: an activity with thousands of transactions never has them all in memory at once.
    """

    def __init__(self, prepared: list[tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]]) -> None:
        self._prepared = prepared

    def __len__(self) -> int:
        return len(self._prepared)

    def docs(self, collection: str) -> Iterator[dict[str, Any]]:
        """The documents of ``collection`` (``activity``, ``transaction`` or ``budget``), in order."""
        if collection == "activity":
            for doc, _ in self._prepared:
                yield _without_empty(doc)
            return
        if collection not in EXPLODE_ELEMENTS:
            raise ValueError(f"collection must be one of {COLLECTIONS}, not {collection!r}")
        for doc, subs in self._prepared:
            for exploded in iter_explode(collection, doc, subs[collection]):
                yield _without_empty(exploded)


class SolrDocStream:
    """One source document's Solr documents, built chunk by chunk in document order.

    Feed it the document's activities in order, each with its repeat number (:data:`Numbered`,
    from :func:`repeat_numbers` or from Postgres), in chunks of any size; each :meth:`chunk` gives
    that chunk's documents, exactly the ones the whole-document functions
    (:func:`activity_docs`, :func:`exploded_docs`) give for those activities. It counts the
    activities indexed and the ones skipped for want of an identifier.
    """

    def __init__(self, document_id: str, document_hash: str) -> None:
        self.document_id = document_id
        self.document_hash = document_hash
        self.activities = 0
        self.skipped = 0

    def chunk(self, numbered: Iterable[Numbered], lake: LakeLookup | None) -> ChunkDocs:
        """Check and prepare one chunk. ``lake`` finds lake records by stem (None: no
        ``iati_xml`` / ``iati_json``, enough for the exploded collections).

        Raises :class:`LakeRecordMissing` or :class:`SolrDocError` for the first bad activity, in order.
        """
        prepared = []
        skipped = 0
        for flat, n in numbered:
            item = _prepare(self.document_id, self.document_hash, flat, n, lake)
            if item is None:
                skipped += 1
            else:
                prepared.append(item)
        self.activities += len(prepared)
        self.skipped += skipped
        return ChunkDocs(prepared)


def _whole(
    document_id: str, flattened: Iterable[Mapping[str, Any]], document_hash: str, lake: LakeLookup | None
) -> ChunkDocs:
    return SolrDocStream(document_id, document_hash).chunk(repeat_numbers(flattened), lake)


def activity_docs(
    document_id: str,
    flattened: Iterable[Mapping[str, Any]],
    *,
    document_hash: str,
    lake: LakeLookup,
) -> list[dict[str, Any]]:
    """Return the ``activity`` collection documents of one source document.

    ``flattened`` is the document's whole list of flattened activities; ``lake`` finds the lake
    record by stem (e.g. ``lake_index(records).get``). Raises :class:`LakeRecordMissing` when an
    activity has no lake record and :class:`SolrDocError` for a multi-valued identifier.
    """
    return list(_whole(document_id, flattened, document_hash, lake).docs("activity"))


def iter_explode(
    element: str, activity: Mapping[str, Any], subs: Iterable[Mapping[str, Any]]
) -> Iterator[dict[str, Any]]:
    """:func:`explode`, one document at a time."""
    own_prefix = element + "_"
    base = {
        key: value
        for key, value in activity.items()
        if not key.startswith(own_prefix) and key not in _LAKE_FIELDS
    }
    for index, sub in enumerate(subs):
        doc = {**base, **sub}
        # json.dumps defaults (ASCII, ", " / ": ") and the activity id still in place: the refresher's id.
        doc["id"] = hashlib.sha1((json.dumps(doc) + str(index)).encode("utf-8")).hexdigest()
        yield doc


def explode(
    element: str, activity: Mapping[str, Any], subs: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Return one document per sub-dict: the activity without its ``<element>_*`` keys, plus the sub-dict.

    ``activity`` is an activity document (with its ``id``); empty values are not dropped here.
    """
    return list(iter_explode(element, activity, subs))


def exploded_docs(
    element: str, document_id: str, flattened: Iterable[Mapping[str, Any]], *, document_hash: str
) -> list[dict[str, Any]]:
    """Return one document per ``@<element>`` sub-dict (``element`` is ``transaction`` or ``budget``)."""
    if element not in EXPLODE_ELEMENTS:
        raise ValueError(f"element must be one of {EXPLODE_ELEMENTS}, not {element!r}")
    return list(_whole(document_id, flattened, document_hash, None).docs(element))


def transaction_docs(
    document_id: str, flattened: Iterable[Mapping[str, Any]], *, document_hash: str
) -> list[dict[str, Any]]:
    """Return the ``transaction`` collection documents of one source document (one per transaction)."""
    return exploded_docs("transaction", document_id, flattened, document_hash=document_hash)


def budget_docs(
    document_id: str, flattened: Iterable[Mapping[str, Any]], *, document_hash: str
) -> list[dict[str, Any]]:
    """Return the ``budget`` collection documents of one source document (one per budget)."""
    return exploded_docs("budget", document_id, flattened, document_hash=document_hash)
