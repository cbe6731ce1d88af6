"""A stand-in for Apache Solr: a small in-memory server speaking the part of Solr's HTTP protocol
this project uses. It is NOT Solr and indexes nothing; it exists because no Solr server can be
installed here, so tests and ``make demo`` point the real client (pysolr) at it.

What it does, like Solr 9:

* one core per collection at ``/solr/<collection>/``, each with the schema of a configset from the
  repository's ``solr/<configset>/conf/managed-schema.xml`` (fields, field types, dynamic fields
  with Solr's matching: longest pattern first, then the schema's order, so the catch-all ``*``
  comes last; copy fields, defaults, uniqueKey) and the search handlers of its ``solrconfig.xml``
  (their ``defaults`` and ``invariants``: ``/select``'s default ``fl`` is honoured);
* ``/update`` (and ``/update/json``) take JSON (a list of documents, or commands ``add``,
  ``delete`` by ``id`` / list of ids / ``query``, ``commit``, ``optimize``) and XML messages
  (``<add><doc>``, ``<delete><id>|<query>``, ``<commit/>``: what pysolr sends for deletes and
  commits), plus the ``commit=true``, ``softCommit=true`` and ``commitWithin=<ms>`` parameters;
* documents are checked as Solr checks them and a bad one is refused with HTTP 400 and Solr's
  message: unknown field, several values in a single-valued field, a value the field type cannot
  parse (numbers, dates, booleans, ``lat,lon`` points, integers; also in the typed dynamic fields
  such as ``*_i`` or ``*_dt``), a missing required field or uniqueKey, an indexed string over 32766
  bytes. As in Solr, the documents of a batch before the bad one stay added and the ones after it
  are not. Values of fields that are neither stored nor indexed (``ignored_*``) are dropped;
* added and deleted documents become visible to searches only after a commit;
* the search handlers (``/select``, ``/query``, ...) understand ``q`` and ``fq`` of the forms
  ``*:*``, ``field:value``, ``field:"phrase"`` and ``field:*``, plus ``rows``, ``start``, ``fl``
  (names, globs, ``*``, and the ``[json]`` transformer), ``sort`` (one field) and ``wt=json``;
  ``/admin/ping`` answers OK. Anything else (another query parser such as ``/search``'s edismax,
  another response writer such as ``/iati``'s XSLT, other transformers) gets a 400 saying the
  stand-in does not support it, rather than a made-up answer. Text is matched on lower-cased
  words: the configsets' stop words (none) and query-time synonyms are not applied.

Python API for tests: ``SolrStandIn().start()`` (or use it as a context manager), ``.url``
(the ``.../solr`` base URL, what ``SOLR_URL`` holds), ``.documents(collection)`` (committed
documents), ``.pending(collection)``, ``.commits(collection)``, ``.fail_next(...)`` (also the Nth
request: ``after=N-1``), ``.stop()``. Optionally (``data_dir``) the committed documents survive a
restart, like a real index. For benchmarks, ``lean=True`` (``--lean``) checks every document as
usual but stores only the fields that identify it (see ``SolrStandIn``).
"""

import fnmatch
import functools
import json
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from lxml import etree

_UNSEEN: Any = object()  # not looked up yet (None is a result: no such field)
CONFIGSETS = Path(__file__).resolve().parents[3] / "solr"
MAX_TERM_BYTES = 32766  # Lucene's limit on one indexed term
# What a lean stand-in stores of each document: enough to count and delete an IATI document's entries.
LEAN_FIELDS = ("id", "iati_activities_document_id", "iati_activities_document_hash")

_DOUBLE = re.compile(r"^[+-]?(NaN|Infinity|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[fFdD]?)$")
_INT = re.compile(r"^[+-]?\d+$")
_DATE = re.compile(r"^([+-]?\d{4,})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?Z$")
_TOKEN = re.compile(r"\w+", re.UNICODE)
_CLAUSE = re.compile(r'^(?P<field>[^\s:"]+|\*):(?P<value>"(?:[^"\\]|\\.)*"|\S+)$', re.DOTALL)


class SolrBadRequest(Exception):
    """What Solr answers with HTTP 400 (or another status), with Solr's message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- schema ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldType:
    name: str
    cls: str  # the Solr class without the "solr." prefix, e.g. "DoublePointField"
    multi_valued: bool = False
    indexed: bool = True
    stored: bool = True
    doc_values: bool = False


@dataclass(frozen=True)
class SchemaField:
    name: str
    type: FieldType
    multi_valued: bool
    indexed: bool
    stored: bool
    doc_values: bool
    required: bool = False
    default: str | None = None


def _flag(element: etree._Element, name: str, fallback: bool) -> bool:
    value = element.get(name)
    return fallback if value is None else value.strip().lower() == "true"


@dataclass
class Schema:
    """The parts of a Solr schema that decide whether a document is accepted and what is stored."""

    name: str
    unique_key: str
    fields: dict[str, SchemaField]
    dynamic_fields: list[tuple[str, SchemaField]]  # (pattern, field), longest pattern first
    copy_fields: list[tuple[str, str]]  # (source pattern, destination)
    # Matches already made, per field name: a corpus sends the same few hundred names again and
    # again (a benchmark sends millions of documents through here).
    _dynamic_cache: dict[str, "SchemaField | None"] = field(default_factory=dict, repr=False)
    _copy_cache: dict[str, list[tuple[int, str]]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path) -> "Schema":
        root = etree.parse(str(path)).getroot()
        types: dict[str, FieldType] = {}
        for element in root.iter("fieldType"):
            types[element.get("name")] = FieldType(
                name=element.get("name"),
                cls=element.get("class", "").removeprefix("solr."),
                multi_valued=_flag(element, "multiValued", False),
                indexed=_flag(element, "indexed", True),
                stored=_flag(element, "stored", True),
                doc_values=_flag(element, "docValues", False),
            )

        def make(element: etree._Element) -> SchemaField:
            type_name = element.get("type")
            if type_name not in types:
                raise ValueError(f"{path}: field {element.get('name')!r} has undefined type {type_name!r}")
            ftype = types[type_name]
            return SchemaField(
                name=element.get("name"),
                type=ftype,
                multi_valued=_flag(element, "multiValued", ftype.multi_valued),
                indexed=_flag(element, "indexed", ftype.indexed),
                stored=_flag(element, "stored", ftype.stored),
                doc_values=_flag(element, "docValues", ftype.doc_values),
                required=_flag(element, "required", False),
                default=element.get("default"),
            )

        fields = {element.get("name"): make(element) for element in root.iter("field")}
        dynamic = [(element.get("name"), make(element)) for element in root.iter("dynamicField")]
        # Solr tries longer patterns first; among equal lengths, the order of the schema.
        dynamic.sort(key=lambda item: -len(item[0]))
        copies = [(element.get("source"), element.get("dest")) for element in root.iter("copyField")]
        key = root.findtext("uniqueKey")
        if not key:
            raise ValueError(f"{path}: no uniqueKey")
        return cls(root.get("name", path.parent.parent.name), key.strip(), fields, dynamic, copies)

    def field(self, name: str) -> SchemaField | None:
        found = self.fields.get(name)
        if found is not None:
            return found
        known = self._dynamic_cache.get(name, _UNSEEN)
        if known is not _UNSEEN:
            return known
        for pattern, dynamic in self.dynamic_fields:
            if _glob(pattern, name):
                found = replace(dynamic, name=name)
                break
        self._dynamic_cache[name] = found
        return found

    def copy_rules(self, name: str) -> list[tuple[int, str]]:
        """(rule number, destination) of the copy fields a source field matches (globs matched
        once per name)."""
        found = self._copy_cache.get(name)
        if found is None:
            found = self._copy_cache[name] = [
                (number, dest)
                for number, (source, dest) in enumerate(self.copy_fields)
                if name != dest and fnmatch.fnmatchcase(name, source)
            ]
        return found


def _glob(pattern: str, name: str) -> bool:
    # Solr patterns have one "*" at the start or the end (or are just "*").
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return name.endswith(pattern[1:])
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return pattern == name


# -- values ------------------------------------------------------------------------------------


def _format_instant(moment: datetime) -> str:
    # java.time.Instant.toString(): seconds always, milliseconds only when not zero.
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    millis = moment.microsecond // 1000
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def _parse_date(value: str) -> str:
    if value.startswith("NOW"):
        if value != "NOW":
            raise ValueError("the stand-in supports NOW but no date math")
        return _format_instant(datetime.now(UTC))
    return _parse_fixed_date(value)


@functools.lru_cache(maxsize=65_536)
def _parse_fixed_date(value: str) -> str:
    # Cached: a corpus repeats its dates (every transaction and budget carries a few).
    match = _DATE.match(value)
    if not match:
        raise ValueError(f"Invalid Date String:'{value}'")
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC)
    except ValueError as exc:
        raise ValueError(f"Invalid Date String:'{value}'") from exc
    if fraction:
        # DatePointField keeps milliseconds; the rest of the fraction is dropped.
        moment = moment.replace(microsecond=int(fraction[1:4].ljust(3, "0")) * 1000)
    return _format_instant(moment)


def _convert(schema_field: SchemaField, raw: Any) -> Any:
    """The stored form of one value, or ValueError with the message Solr would give."""
    cls = schema_field.type.cls
    if isinstance(raw, dict | list):
        raise ValueError(f"the stand-in does not support nested values ({type(raw).__name__})")
    if cls == "BoolField":
        if isinstance(raw, bool):
            return raw
        # BoolField reads anything starting with t, T or 1 as true and everything else as false.
        return str(raw)[:1] in ("t", "T", "1")
    text = raw if isinstance(raw, str) else json.dumps(raw)
    if cls in ("DoublePointField", "FloatPointField"):
        if isinstance(raw, bool):
            raise ValueError(f'For input string: "{text}"')
        if isinstance(raw, int | float):
            return float(raw)
        stripped = text.strip()
        if not _DOUBLE.match(stripped):
            raise ValueError("empty String" if not stripped else f'For input string: "{text}"')
        return float(stripped.rstrip("fFdD").replace("Infinity", "inf"))
    if cls in ("IntPointField", "LongPointField"):
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        if not _INT.match(text):
            raise ValueError(f'For input string: "{text}"')
        number = int(text)
        limit = 2**31 if cls == "IntPointField" else 2**63
        if not -limit <= number < limit:
            raise ValueError(f'For input string: "{text}"')
        return number
    if cls == "DatePointField":
        return _parse_date(text.strip())
    if cls == "LatLonPointSpatialField":
        parts = text.split(",")
        try:
            lat, lon = (float(part) for part in parts)
        except ValueError as exc:
            raise ValueError(f"Point must be in 'lat, lon' or 'x y' format: {text}") from exc
        _check_lat_lon(text, lat, lon)
        return text
    if cls == "SpatialRecursivePrefixTreeFieldType":
        # geo="true" RPT fields take "lat,lon" or "x y" (longitude first) points, and shapes
        # (WKT, ...), which the stand-in does not parse: it refuses them rather than guess.
        try:
            if "," in text:
                lat, lon = (float(part) for part in text.split(","))
            else:
                lon, lat = (float(part) for part in text.split())
        except ValueError as exc:
            raise ValueError(f"the stand-in only takes 'lat,lon' or 'x y' points here, not {text!r}") from exc
        _check_lat_lon(text, lat, lon)
        return text
    indexed_term = cls == "StrField" and (schema_field.indexed or schema_field.doc_values)
    if indexed_term and len(text.encode("utf-8")) > MAX_TERM_BYTES:
        raise ValueError(
            f'Document contains at least one immense term in field="{schema_field.name}" (whose UTF8 '
            f"encoding is longer than the max length {MAX_TERM_BYTES})"
        )
    return text


def _check_lat_lon(text: str, lat: float, lon: float) -> None:
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or math.isnan(lat) or math.isnan(lon):
        raise ValueError(f"Point {text!r} is out of range: latitude within ±90, longitude within ±180")


def _tokens(text: str) -> list[str]:
    return [token.lower() for token in _TOKEN.findall(text)]


# -- one core ----------------------------------------------------------------------------------


@dataclass
class _Core:
    name: str
    schema: Schema
    handlers: dict[str, "SearchHandler"] = field(default_factory=dict)
    # What the searcher sees, and the uncommitted changes on top of it in the order they were made
    # (None: deleted): the index writer's view is the two together, and a commit costs what changed.
    visible: dict[str, Any] = field(default_factory=dict)
    changes: dict[str, Any] = field(default_factory=dict)
    commits: int = 0
    lock: threading.RLock = field(default_factory=threading.RLock)
    timer: threading.Timer | None = None
    timer_due: float = 0.0
    version: int = 0
    snapshot: Path | None = None  # where committed documents are kept between runs, if anywhere
    # Lean: only these fields are stored (with the uniqueKey and _version_), as a tuple, and exact
    # field:value deletes and queries on them use an index (value → keys of the writer's view).
    keep: tuple[str, ...] | None = None
    index: dict[str, dict[Any, dict[str, None]]] = field(default_factory=dict)
    shared: dict[str, str] = field(default_factory=dict)  # one copy of each repeated kept value

    def __post_init__(self) -> None:
        if self.keep is not None:
            key = self.schema.unique_key
            self.keep = (key, *(name for name in dict.fromkeys(self.keep) if name not in (key, "_version_")))
            self.keep += ("_version_",)
            self.index = {name: {} for name in self.keep[1:-1]}

    # -- stored form ---------------------------------------------------------------------------
    def _pack(self, doc: dict[str, Any]) -> Any:
        if self.keep is None:
            return doc
        values = []
        for name in self.keep:
            value = doc.get(name)
            if isinstance(value, str) and name in self.index:
                value = self.shared.setdefault(value, value)
            elif isinstance(value, list):
                value = [self.shared.setdefault(v, v) if isinstance(v, str) else v for v in value]
            values.append(value)
        return tuple(values)

    def _unpack(self, stored: Any) -> dict[str, Any]:
        """The stored document as a dict (not a copy, unless lean: callers must not change it)."""
        if self.keep is None:
            return stored
        return {name: value for name, value in zip(self.keep, stored, strict=True) if value is not None}

    def _indexed(self, key: str, stored: Any, add: bool) -> None:
        if not self.index:
            return
        for name, value in zip(self.keep or (), stored, strict=True):
            keys_by_value = self.index.get(name)
            if keys_by_value is None or value is None:
                continue
            for item in value if isinstance(value, list) else [value]:
                if add:
                    keys_by_value.setdefault(item, {})[key] = None
                else:
                    keys = keys_by_value.get(item)
                    if keys is not None:
                        keys.pop(key, None)
                        if not keys:
                            del keys_by_value[item]

    def _live(self, key: str) -> Any:
        return self.changes[key] if key in self.changes else self.visible.get(key)

    def live_items(self) -> Iterator[tuple[str, Any]]:
        """The index writer's documents (committed or not), in index order."""
        for key, stored in self.visible.items():
            if key not in self.changes:
                yield key, stored
        for key, stored in self.changes.items():
            if stored is not None:
                yield key, stored

    def _change(self, key: str, stored: Any) -> None:
        old = self._live(key)
        if old is not None:
            self._indexed(key, old, add=False)
        # An overwrite is a delete plus an add: it moves to the end.
        self.changes.pop(key, None)
        self.changes[key] = stored
        if stored is not None:
            self._indexed(key, stored, add=True)

    def load(self) -> None:
        if self.snapshot is None or not self.snapshot.is_file():
            return
        docs = json.loads(self.snapshot.read_text(encoding="utf-8"))
        self.visible = {doc[self.schema.unique_key]: self._pack(doc) for doc in docs}
        self.changes = {}
        for key, stored in self.visible.items():
            self._indexed(key, stored, add=True)
        self.version = max((int(doc.get("_version_", 0)) for doc in docs), default=0)

    def clear(self) -> None:
        with self.lock:
            self.visible, self.changes, self.shared = {}, {}, {}
            self.index = {name: {} for name in self.index}
            self._save()

    def _save(self) -> None:
        if self.snapshot is None:
            return
        self.snapshot.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.snapshot.with_suffix(".tmp")
        docs = [self._unpack(stored) for stored in self.visible.values()]
        temporary.write_text(json.dumps(docs), encoding="utf-8")
        temporary.replace(self.snapshot)

    # -- updates -------------------------------------------------------------------------------
    def add(self, doc: Mapping[str, Any]) -> None:
        stored = self._document(doc)
        with self.lock:
            self.version += 1
            stored["_version_"] = self.version
            self._change(stored[self.schema.unique_key], self._pack(stored))

    def delete_id(self, key: str) -> None:
        with self.lock:
            if self._live(key) is not None:
                self._change(key, None)

    def delete_query(self, query: str) -> None:
        predicate = self._predicate(query)
        exact = getattr(predicate, "exact", None)
        with self.lock:
            if exact is not None and exact[0] in self.index:
                keys = list(self.index[exact[0]].get(exact[1], ()))
            else:
                keys = [key for key, stored in self.live_items() if predicate(self._unpack(stored))]
            for key in keys:
                self._change(key, None)

    def commit(self) -> None:
        with self.lock:
            for key, stored in self.changes.items():
                self.visible.pop(key, None)
                if stored is not None:
                    self.visible[key] = stored
            self.changes = {}
            self.commits += 1
            self._save()
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None

    def commit_within(self, millis: int) -> None:
        due = time.monotonic() + millis / 1000
        with self.lock:
            if self.timer is not None and self.timer_due <= due:
                return
            if self.timer is not None:
                self.timer.cancel()
            self.timer = threading.Timer(max(millis, 0) / 1000, self.commit)
            self.timer.daemon = True
            self.timer_due = due
            self.timer.start()

    def _document(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        schema = self.schema
        key = doc.get(schema.unique_key)
        if isinstance(key, list) and len(key) == 1:
            key = key[0]
        if key is None or key == "" or key == []:
            raise SolrBadRequest(f"Document is missing mandatory uniqueKey field: {schema.unique_key}")
        label = f"[doc={key}]"
        values: dict[str, list[Any]] = {}
        fields: dict[str, SchemaField] = {}

        def put(schema_field: SchemaField, raw_values: list[Any], copy_from: str | None = None) -> None:
            for raw in raw_values:
                try:
                    converted = _convert(schema_field, raw)
                except ValueError as exc:
                    shown = raw if isinstance(raw, str) else json.dumps(raw)
                    raise SolrBadRequest(
                        f"ERROR: {label} Error adding field '{copy_from or schema_field.name}'='{shown}' "
                        f"msg={exc}"
                    ) from exc
                values.setdefault(schema_field.name, []).append(converted)
            fields[schema_field.name] = schema_field

        raw_by_name: dict[str, list[Any]] = {}
        for name, value in doc.items():
            if name == "_version_":
                continue  # optimistic concurrency is not supported; Solr's own value is set on add
            raw = [v for v in (value if isinstance(value, list) else [value]) if v is not None]
            if not raw:
                continue
            schema_field = schema.field(name)
            if schema_field is None:
                raise SolrBadRequest(f"ERROR: {label} unknown field '{name}'")
            if isinstance(value, dict):
                raise SolrBadRequest(
                    f"ERROR: {label} the stand-in does not support atomic updates ('{name}')"
                )
            put(schema_field, raw)
            raw_by_name[name] = raw
        # In the schema's rule order, and per rule in the document's field order, as before.
        copies = [
            (number, position, dest, name)
            for position, name in enumerate(raw_by_name)
            for number, dest in schema.copy_rules(name)
        ]
        for _number, _position, dest, name in sorted(copies):
            dest_field = schema.field(dest)
            if dest_field is not None:
                put(dest_field, raw_by_name[name], copy_from=name)
        for name, converted in values.items():
            schema_field = fields[name]
            if len(converted) > 1 and not schema_field.multi_valued:
                shown = ", ".join(str(v) for v in converted)
                raise SolrBadRequest(
                    f"ERROR: {label} multiple values encountered for non multiValued field {name}: [{shown}]"
                )
        for schema_field in schema.fields.values():
            if schema_field.name in values:
                continue
            if schema_field.default is not None:
                values[schema_field.name] = [_convert(schema_field, schema_field.default)]
                fields[schema_field.name] = schema_field
            elif schema_field.required:
                raise SolrBadRequest(f"{label} missing required field: {schema_field.name}")
        return {
            name: converted if fields[name].multi_valued else converted[0]
            for name, converted in values.items()
            # A RandomSortField takes a value but never writes it back (it exists to sort on).
            if fields[name].stored and fields[name].type.cls != "RandomSortField"
        }

    # -- queries -------------------------------------------------------------------------------
    def _predicate(self, query: str) -> Any:
        query = query.strip()
        if query in ("*:*", "*"):
            return lambda doc: True
        match = _CLAUSE.match(query)
        if not match:
            raise SolrBadRequest(
                f'the stand-in only understands *:*, field:value and field:"phrase", not {query!r}'
            )
        name, value = match.group("field"), match.group("value")
        schema_field = self.schema.field(name)
        if schema_field is None:
            raise SolrBadRequest(f"undefined field {name}")
        if not schema_field.indexed and not schema_field.doc_values:
            return lambda doc: False  # a field that is not indexed matches nothing
        phrase = value.startswith('"')
        text = re.sub(r"\\(.)", r"\1", value[1:-1] if phrase else value)
        if not phrase and text == "*":
            return lambda doc: doc.get(name) not in (None, [])
        cls = schema_field.type.cls
        if cls in ("TextField", "SortableTextField"):
            wanted = _tokens(text)

            def matches_text(doc: dict[str, Any]) -> bool:
                stored = doc.get(name)
                for item in stored if isinstance(stored, list) else [stored]:
                    if item is None:
                        continue
                    tokens = _tokens(str(item))
                    n = len(wanted)
                    if n and any(tokens[i : i + n] == wanted for i in range(len(tokens) - n + 1)):
                        return True
                return False

            return matches_text
        try:
            target = _convert(schema_field, text)
        except ValueError as exc:
            raise SolrBadRequest(f"Invalid value {text!r} for field {name}: {exc}") from exc

        def matches_value(doc: dict[str, Any]) -> bool:
            stored = doc.get(name)
            return target in stored if isinstance(stored, list) else stored == target

        matches_value.exact = (name, target)  # type: ignore[attr-defined]
        return matches_value

    def search(self, handler: "SearchHandler", request: Mapping[str, list[str]]) -> dict[str, Any]:
        """A request to one of the configset's search handlers: its defaults and invariants apply."""
        return self.select(handler.params(request), echo=request)

    def select(
        self, params: Mapping[str, list[str]], echo: Mapping[str, list[str]] | None = None
    ) -> dict[str, Any]:
        def param(name: str) -> str:
            return params.get(name, [""])[-1].strip()

        # What the stand-in cannot do is refused, not approximated.
        if param("wt") not in ("", "json"):
            raise SolrBadRequest(f"the stand-in only writes JSON (wt=json), not wt={param('wt')}")
        if param("defType") not in ("", "lucene", "standard"):
            raise SolrBadRequest(
                f"the stand-in only parses Solr's standard query syntax, not {param('defType')}"
            )
        returned = _ReturnFields.parse(params.get("fl", []))
        query = params.get("q", [None])[-1]
        with self.lock:
            docs = [self._unpack(stored) for stored in self.visible.values()]
        if query is None or not query.strip():
            docs = []  # Solr turns a missing query into one that matches nothing
        else:
            predicate = self._predicate(query)
            docs = [doc for doc in docs if predicate(doc)]
        for fq in params.get("fq", []):
            predicate = self._predicate(fq)
            docs = [doc for doc in docs if predicate(doc)]
        sort = param("sort")
        if sort:
            parts = sort.split()
            if len(parts) != 2 or parts[1] not in ("asc", "desc") or "," in sort:
                raise SolrBadRequest(f"the stand-in sorts on one field only, not {sort!r}")
            name = parts[0]
            present = [doc for doc in docs if doc.get(name) is not None]
            missing = [doc for doc in docs if doc.get(name) is None]
            present.sort(key=lambda doc: doc[name], reverse=parts[1] == "desc")
            docs = present + missing
        try:
            start = int(param("start") or "0")
            rows = int(param("rows") or "10")
        except ValueError as exc:
            raise SolrBadRequest(f"start and rows must be integers: {exc}") from exc
        page = [returned.project(doc) for doc in docs[start : start + rows]]
        shown = params if echo is None else echo
        return {
            "responseHeader": {"status": 0, "QTime": 0, "params": {k: v[-1] for k, v in shown.items()}},
            "response": {"numFound": len(docs), "start": start, "numFoundExact": True, "docs": page},
        }


# -- search handlers and returned fields -------------------------------------------------------


@dataclass(frozen=True)
class SearchHandler:
    """One ``solr.SearchHandler`` of a configset's ``solrconfig.xml``: its name without the leading
    slash and the parameters it adds to a request (``defaults`` unless the request sets them,
    ``invariants`` whatever the request says), as Solr merges them."""

    name: str
    defaults: dict[str, list[str]] = field(default_factory=dict)
    invariants: dict[str, list[str]] = field(default_factory=dict)

    def params(self, request: Mapping[str, list[str]]) -> dict[str, list[str]]:
        merged = {key: list(values) for key, values in self.defaults.items()}
        merged.update({key: list(values) for key, values in request.items()})
        merged.update({key: list(values) for key, values in self.invariants.items()})
        return merged


def load_search_handlers(path: Path) -> dict[str, SearchHandler]:
    """The search handlers of a ``solrconfig.xml`` by name; a bare ``select`` without one (the
    small schemas tests write have no solrconfig.xml)."""
    if not path.is_file():
        return {"select": SearchHandler("select")}
    handlers: dict[str, SearchHandler] = {}
    for element in etree.parse(str(path)).getroot().iter("requestHandler"):
        if element.get("class", "").removeprefix("solr.") != "SearchHandler":
            continue
        lists: dict[str, dict[str, list[str]]] = {"defaults": {}, "invariants": {}}
        for section in element.findall("lst"):
            target = lists.get(section.get("name", ""))
            if target is None:
                continue  # "appends" and the like: not used by the shipped configsets
            for item in section:
                if isinstance(item.tag, str) and item.get("name"):
                    target.setdefault(item.get("name"), []).append((item.text or "").strip())
        name = element.get("name", "").lstrip("/")
        handlers[name] = SearchHandler(name, lists["defaults"], lists["invariants"])
    return handlers


_PLAIN_FIELD = re.compile(r"^(?:(?P<alias>[A-Za-z_][\w.-]*):)?(?P<field>[\w.*?-]+)$")
_JSON_FIELD = re.compile(r"^(?P<field>[A-Za-z_][\w.-]*):\[json\]$")


def _split_fl(values: list[str]) -> list[str]:
    # Items are separated by commas or spaces, except inside a transformer's [...].
    items: list[str] = []
    for text in values:
        current, depth = "", 0
        for char in text:
            if char == "[":
                depth += 1
            elif char == "]":
                depth = max(0, depth - 1)
            if depth == 0 and (char == "," or char.isspace()):
                if current:
                    items.append(current)
                current = ""
            else:
                current += char
        if current:
            items.append(current)
    return items


@dataclass(frozen=True)
class _ReturnFields:
    """What ``fl`` asks for: every stored field (``*`` or no ``fl``), names and globs (``a_*``),
    ``alias:name`` renames, and ``name:[json]`` (a stored JSON string written as JSON)."""

    everything: bool
    patterns: tuple[str, ...] = ()
    renames: tuple[tuple[str, str], ...] = ()
    as_json: tuple[str, ...] = ()

    @classmethod
    def parse(cls, values: list[str]) -> "_ReturnFields":
        items = _split_fl(values)
        patterns: list[str] = []
        renames: list[tuple[str, str]] = []
        as_json: list[str] = []
        everything = not items
        for item in items:
            if item == "*":
                everything = True
            elif item == "score":
                continue  # the stand-in does not score; Solr would add the score
            elif match := _JSON_FIELD.match(item):
                as_json.append(match.group("field"))
            elif match := _PLAIN_FIELD.match(item):
                if match.group("alias"):
                    renames.append((match.group("alias"), match.group("field")))
                else:
                    patterns.append(match.group("field"))
            else:
                raise SolrBadRequest(f"the stand-in does not support the field list item {item!r}")
        return cls(everything, tuple(patterns), tuple(renames), tuple(as_json))

    def project(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        out = {
            name: value
            for name, value in doc.items()
            if self.everything or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)
        }
        for alias, name in self.renames:
            if name in doc:
                out[alias] = doc[name]
        for name in self.as_json:
            if name in doc:
                out[name] = _as_json(doc[name])
        return out


def _as_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_as_json(item) for item in value]
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value  # Solr writes the text as it is, whatever it holds


# -- update messages ---------------------------------------------------------------------------


def _pairs_hook(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]] | dict[str, Any]:
    # Solr's JSON update syntax repeats keys ("add" twice); keep every pair, in order.
    return _Pairs(pairs)


class _Pairs(list):
    """A JSON object as its (key, value) pairs (duplicate keys kept)."""

    def as_dict(self) -> dict[str, Any]:
        return {key: _plain(value) for key, value in self}


def _plain(value: Any) -> Any:
    if isinstance(value, _Pairs):
        return value.as_dict()
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _json_commands(body: bytes) -> Iterator[tuple[str, Any]]:
    try:
        message = json.loads(body or b"null", object_pairs_hook=_pairs_hook)
    except ValueError as exc:
        raise SolrBadRequest(f"Cannot parse provided JSON: {exc}") from exc
    if isinstance(message, list) and not isinstance(message, _Pairs):
        for doc in message:
            if not isinstance(doc, _Pairs):
                raise SolrBadRequest("Expected a JSON object for each document of the list")
            yield "add", doc.as_dict()
        return
    if not isinstance(message, _Pairs):
        raise SolrBadRequest("Expected a JSON list of documents or an object of update commands")
    for command, value in message:
        plain = _plain(value)
        if command == "add":
            if isinstance(plain, dict) and "doc" in plain:
                yield "add", plain["doc"]
                if "commitWithin" in plain:
                    yield "commitWithin", int(plain["commitWithin"])
            elif isinstance(plain, list):
                for doc in plain:
                    yield "add", doc
            else:
                raise SolrBadRequest("Expected 'add' to hold {\"doc\": {...}}")
        elif command == "delete":
            items = plain if isinstance(plain, list) else [plain]
            for item in items:
                if isinstance(item, str | int):
                    yield "delete_id", str(item)
                elif isinstance(item, dict) and "id" in item:
                    yield "delete_id", str(item["id"])
                elif isinstance(item, dict) and "query" in item:
                    yield "delete_query", str(item["query"])
                else:
                    raise SolrBadRequest(f"Unexpected delete: {item!r}")
        elif command in ("commit", "optimize"):
            yield "commit", None
        else:
            raise SolrBadRequest(f"Unknown command '{command}'")


def _xml_commands(body: bytes) -> Iterator[tuple[str, Any]]:
    try:
        root = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as exc:
        raise SolrBadRequest(f"Cannot parse provided XML: {exc}") from exc
    elements = list(root) if root.tag == "update" else [root]
    for element in elements:
        if element.tag == "add":
            for doc in element.iter("doc"):
                out: dict[str, Any] = {}
                for field_element in doc.iter("field"):
                    name, value = field_element.get("name"), field_element.text or ""
                    if name in out:
                        out[name] = (out[name] if isinstance(out[name], list) else [out[name]]) + [value]
                    else:
                        out[name] = value
                yield "add", out
            if element.get("commitWithin"):
                yield "commitWithin", int(element.get("commitWithin"))
        elif element.tag == "delete":
            for child in element:
                if child.tag == "id":
                    yield "delete_id", child.text or ""
                elif child.tag == "query":
                    yield "delete_query", child.text or ""
        elif element.tag in ("commit", "optimize"):
            yield "commit", None
        else:
            raise SolrBadRequest(f"Unexpected tag <{element.tag}>")


# -- HTTP --------------------------------------------------------------------------------------


def _error_body(status: int, message: str) -> bytes:
    return json.dumps(
        {
            "responseHeader": {"status": status, "QTime": 0},
            "error": {
                "metadata": ["error-class", "org.apache.solr.common.SolrException"],
                "msg": message,
                "code": status,
            },
        }
    ).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, each answer waits for a delayed ACK.
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:
        return

    def _reply(self, status: int, payload: dict[str, Any] | bytes) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        split = urlsplit(self.path)
        params = parse_qs(split.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded" and body:
            # Long queries arrive as a form post (pysolr does so past 1024 characters).
            for key, values in parse_qs(body.decode("utf-8"), keep_blank_values=True).items():
                params.setdefault(key, []).extend(values)
            body = b""
        stand_in = self.server.stand_in
        if not stand_in._authorised(self.headers.get("Authorization")):
            self._reply(401, _error_body(401, "require authentication"))
            return
        parts = [unquote(part) for part in split.path.strip("/").split("/")]
        if len(parts) < 3 or parts[0] != "solr":
            self._reply(404, _error_body(404, f"Not Found: {split.path}"))
            return
        core = stand_in._cores.get(parts[1])
        if core is None:
            self._reply(404, _error_body(404, f"Not Found: no collection {parts[1]!r}"))
            return
        handler = "/".join(parts[2:])
        stand_in._log(parts[1], handler, params)
        injected = stand_in._injected(parts[1], handler)
        if injected is not None:
            self._reply(injected, _error_body(injected, f"injected failure (HTTP {injected})"))
            return
        try:
            if handler in ("update", "update/json"):
                self._reply(200, self._update(core, params, body, content_type))
            elif handler in core.handlers:
                self._reply(200, core.search(core.handlers[handler], params))
            elif handler == "admin/ping":
                self._reply(200, {"responseHeader": {"status": 0, "QTime": 0}, "status": "OK"})
            else:
                self._reply(404, _error_body(404, f"the stand-in has no handler /{handler}"))
        except SolrBadRequest as exc:
            self._reply(exc.status, _error_body(exc.status, str(exc)))

    def _update(
        self, core: _Core, params: Mapping[str, list[str]], body: bytes, content_type: str
    ) -> dict[str, Any]:
        started = time.perf_counter()
        stripped = body.lstrip()
        is_xml = "xml" in content_type or stripped.startswith(b"<")
        commands = _xml_commands(body) if is_xml else _json_commands(body) if stripped else iter(())
        committed = False
        for command, argument in commands:
            # Applied one by one, as Solr does: a refused document leaves the earlier ones added.
            if command == "add":
                core.add(argument)
            elif command == "delete_id":
                core.delete_id(argument)
            elif command == "delete_query":
                core.delete_query(argument)
            elif command == "commit":
                core.commit()
                committed = True
            elif command == "commitWithin":
                core.commit_within(argument)

        def param(name: str) -> str:
            return params.get(name, [""])[-1].strip()

        if committed:
            pass  # pysolr sends <commit/> with commit=true: one commit, as Solr counts it
        elif param("commit").lower() == "true" or param("softCommit").lower() == "true":
            # A soft commit only differs from a hard one in durability, which the stand-in lacks.
            core.commit()
        elif param("commitWithin"):
            try:
                core.commit_within(int(param("commitWithin")))
            except ValueError as exc:
                raise SolrBadRequest(f"commitWithin must be an integer: {exc}") from exc
        qtime = int((time.perf_counter() - started) * 1000)
        return {"responseHeader": {"status": 0, "QTime": qtime}}

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, OSError):
            self.close_connection = True

    do_GET = do_POST = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stand_in: "SolrStandIn"


@dataclass(frozen=True)
class SolrRequest:
    collection: str
    handler: str
    params: dict[str, list[str]]


class SolrStandIn:
    """The Solr stand-in on 127.0.0.1 and an ephemeral port (see the module docstring).

    ``collections`` maps each collection name to the configset folder it uses (under
    ``configsets``); by default every configset of the repository's ``solr/`` folder is a
    collection of the same name (``activity``, ``budget``, ``transaction``). With ``data_dir``,
    each commit writes the committed documents to ``<data_dir>/<collection>.json`` and a new
    stand-in starts from them, as a restarted Solr keeps its index (the demo runs twice on one
    database); without it, everything is in memory only.

    ``keep_fields`` (or ``lean=True``, which keeps :data:`LEAN_FIELDS`: ``id``,
    ``iati_activities_document_id``, ``iati_activities_document_hash``) is for a benchmark holding a
    million documents: every document is still parsed and checked against the schema exactly as
    without it (and refused the same way), but only those fields are stored, with the uniqueKey and
    ``_version_``, as a tuple, and their repeated string values once. ``documents()``, ``pending()``
    and searches see only those fields, so queries and deletes by query can only use them; an exact
    ``field:value`` or ``field:"value"`` on one of them is answered from an index instead of a scan
    (the Solr stage deletes by document id once per document). A commit costs what changed since the
    last one, with or without this option.
    """

    def __init__(
        self,
        collections: Mapping[str, str] | None = None,
        *,
        configsets: Path = CONFIGSETS,
        host: str = "127.0.0.1",
        port: int = 0,
        auth: tuple[str, str] | None = None,
        data_dir: Path | None = None,
        keep_fields: Sequence[str] | None = None,
        lean: bool = False,
    ) -> None:
        if lean and keep_fields is None:
            keep_fields = LEAN_FIELDS
        if collections is None:
            found = sorted(p.parent.parent.name for p in configsets.glob("*/conf/managed-schema.xml"))
            if not found:
                raise FileNotFoundError(f"no Solr configsets (*/conf/managed-schema.xml) under {configsets}")
            collections = {name: name for name in found}
        schemas: dict[str, Schema] = {}
        handlers: dict[str, dict[str, SearchHandler]] = {}
        self._cores: dict[str, _Core] = {}
        for name, configset in collections.items():
            conf = configsets / configset / "conf"
            if configset not in schemas:
                schemas[configset] = Schema.load(conf / "managed-schema.xml")
                handlers[configset] = load_search_handlers(conf / "solrconfig.xml")
            self._cores[name] = _Core(
                name,
                schemas[configset],
                handlers[configset],
                snapshot=data_dir / f"{name}.json" if data_dir else None,
                keep=tuple(keep_fields) if keep_fields is not None else None,
            )
            self._cores[name].load()
        self._host = host
        self._port = port
        self._auth = auth
        self._lock = threading.Lock()
        self._failures: dict[tuple[str, str], list[int]] = {}
        self.requests: list[SolrRequest] = []
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------
    def start(self) -> "SolrStandIn":
        self._httpd = _Server((self._host, self._port), _Handler)
        self._httpd.stand_in = self
        httpd = self._httpd
        # A short poll interval makes stop() quick; the default (0.5 s) adds up over a test suite.
        self._thread = threading.Thread(
            target=lambda: httpd.serve_forever(poll_interval=0.05), name="solr-stand-in", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        for core in self._cores.values():
            with core.lock:
                if core.timer is not None:
                    core.timer.cancel()
                    core.timer = None
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "SolrStandIn":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:<port>/solr`` (a collection is ``<url>/<name>``)."""
        if self._httpd is None:
            raise RuntimeError("the Solr stand-in is not started")
        return f"http://{self._host}:{self._httpd.server_address[1]}/solr"

    # -- inspection ----------------------------------------------------------------------------
    @property
    def collections(self) -> list[str]:
        return list(self._cores)

    def schema(self, collection: str) -> Schema:
        return self._cores[collection].schema

    def documents(self, collection: str) -> list[dict[str, Any]]:
        """The committed documents of a collection (what a search can see), in index order."""
        core = self._cores[collection]
        with core.lock:
            return [dict(core._unpack(stored)) for stored in core.visible.values()]

    def pending(self, collection: str) -> list[dict[str, Any]]:
        """Every document the index holds, committed or not (what the next commit will show)."""
        core = self._cores[collection]
        with core.lock:
            return [dict(core._unpack(stored)) for _, stored in core.live_items()]

    def commits(self, collection: str) -> int:
        return self._cores[collection].commits

    def fail_next(
        self, collection: str, status: int = 503, *, handler: str = "update", times: int = 1, after: int = 0
    ) -> None:
        """Answer the next ``times`` requests to ``/solr/<collection>/<handler>`` with ``status``,
        after letting ``after`` of them through (queued behind failures asked for earlier)."""
        with self._lock:
            self._failures.setdefault((collection, handler), []).extend([0] * after + [status] * times)

    def clear(self) -> None:
        """Empty every collection (committed and pending)."""
        for core in self._cores.values():
            core.clear()

    # -- used by the handler -------------------------------------------------------------------
    def _authorised(self, header: str | None) -> bool:
        if self._auth is None:
            return True
        import base64

        expected = "Basic " + base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
        return header == expected

    def _log(self, collection: str, handler: str, params: Mapping[str, list[str]]) -> None:
        with self._lock:
            self.requests.append(SolrRequest(collection, handler, {k: list(v) for k, v in params.items()}))

    def _injected(self, collection: str, handler: str) -> int | None:
        with self._lock:
            queue = self._failures.get((collection, handler))
            return (queue.pop(0) or None) if queue else None


def main(argv: list[str] | None = None) -> None:
    """``python -m ecr_pipelines.dev.standins.solr [--port N] [--data-dir DIR] [--lean]``: serve the
    three collections until Ctrl-C (``--lean``: store only ``LEAN_FIELDS``, see ``SolrStandIn``)."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve the IATI Solr collections from memory (a stand-in).")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, help="keep committed documents here between runs")
    parser.add_argument(
        "--lean",
        action="store_true",
        help=f"check every document as usual but store only {', '.join(LEAN_FIELDS)} (for a million documents)",
    )
    args = parser.parse_args(argv)
    with SolrStandIn(port=args.port, data_dir=args.data_dir, lean=args.lean) as solr:
        print(f"Solr stand-in on {solr.url} with {', '.join(solr.collections)} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
