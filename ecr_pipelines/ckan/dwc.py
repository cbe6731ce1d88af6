"""The Darwin Core Archive (``dwc``) kind of the CKAN packager, built to the legacy ckanpackager's
rules (``DwcArchivePackageTask``), as a stream.

Where each CKAN field goes (``ArchivePlan``), field by field in CKAN's order, the id field aside:

1. a configured extension field (``associatedMedia``): one term per configured sub-field, in
   the extension the configuration names; each object of the field's value is one row there;
2. else a term of the core or an additional extension named exactly as the field;
3. else one named as its camel case (``Event date`` → ``eventDate``);
4. else the dynamic term (``dynamicProperties``), which collects such leftovers of a record as
   one JSON object.

Each extension with rows is one CSV (``occurrence.csv``, ``measurement_or_fact.csv``,
``multimedia.csv``): the id field, then the terms in the order they were first met; the core has
one row per record, an extension one row per object (or per record, for plain fields).
``meta.xml`` describes the CSVs; ``eml.xml`` is the request's ``eml`` template filled in;
``gbif.json`` marks an archive made for GBIF.

Streaming: the core CSV goes into the ZIP while the pages arrive (one page in memory at a time);
the extension CSVs, which the ZIP can only take after the core, are written meanwhile into files
of a scratch folder and added after it, then the small files. An extension without rows (no
record had media, say) is left out of the ZIP and of ``meta.xml``, which is why the entries are
produced one after the other (``DwcArchive.entries``) rather than listed up front.

Where this differs from the legacy, on purpose: the core always comes first in ``meta.xml`` and
always exists (it holds at least the id), so the archive is valid even when every field went
elsewhere; a record's leftovers are always a JSON object (the legacy wrote a single leftover's
bare value), left empty rather than ``{}`` when all of them are null; nested values (objects,
lists) in a column are JSON, as in the datastore kind, not Python reprs; an ``associatedMedia``
that is null, text, or JSON of anything but objects gives no rows instead of failing the job.
"""

import csv
import io
import json
import string
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache, partial
from importlib import resources
from itertools import chain
from pathlib import Path
from typing import IO, Any

import yaml
from lxml import etree

from ecr_pipelines.ckan.datastore import DatastoreSearch, Page
from ecr_pipelines.ckan.gbif_extensions import (
    BUNDLED_FOLDER,
    BUNDLED_PACKAGE,
    CORE_OCCURRENCE,
    Extension,
    ExtensionError,
    ExtensionSet,
    load_extension,
)
from ecr_pipelines.lib.scratch import scratch_dir

DWC_TEXT_NAMESPACE = "http://rs.tdwg.org/dwc/text/"
META_NAME = "meta.xml"
EML_NAME = "eml.xml"
GBIF_MARKER_NAME = "gbif.json"
DEFAULT_CONFIG_NAME = "dwc_default.yaml"
DEFAULT_ID_FIELD = "_id"
DEFAULT_DYNAMIC_TERM = "dynamicProperties"
EML_PLACEHOLDERS = ("package_id", "pub_date", "date_stamp")
CHUNK = 1024 * 1024
# The meta.xml attributes of every CSV section, in the legacy's order. linesTerminatedBy is the
# two characters backslash and n, as the DwC text guide writes it.
SECTION_FORMAT = (
    ("encoding", "UTF-8"),
    ("linesTerminatedBy", "\\n"),
    ("fieldsTerminatedBy", ","),
    ("fieldsEnclosedBy", '"'),
    ("ignoreHeaderLines", "1"),
)

Scalar = str | int | float | bool | None
Entry = tuple[str, Callable[[], Iterator[bytes]]]


# -- configuration ----------------------------------------------------------------------------------
class DwcConfigError(ValueError):
    """A dwc configuration that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class ExtensionField:
    """A CKAN field holding one object or a list of objects, each a row of ``extension``.

    ``defaults``: term → value written when the object lacks it (also the terms and their column
    order); ``mappings``: term → key of its value inside each object; ``prefixes``: term → text
    put before a non-empty value taken from an object (the legacy's ``image/`` formatter)."""

    field: str
    extension: Extension
    defaults: Mapping[str, Scalar]
    mappings: Mapping[str, str] = field(default_factory=dict)
    prefixes: Mapping[str, str] = field(default_factory=dict)

    def key(self, term: str) -> str:
        return self.mappings.get(term, term)


@dataclass(frozen=True)
class DwcConfig:
    """What the dwc kind is driven by: the core and additional extensions (``extensions``, the
    core first), the id field, the dynamic term and the extension fields."""

    extensions: ExtensionSet
    id_field: str = DEFAULT_ID_FIELD
    dynamic_term: str = DEFAULT_DYNAMIC_TERM
    extension_fields: Mapping[str, ExtensionField] = field(default_factory=dict)
    source: str = "(bundled default)"

    @property
    def core(self) -> Extension:
        return self.extensions.core


_CONFIG_KEYS = ("id_field", "dynamic_term", "core_extension", "additional_extensions", "extension_fields")
_EXTENSION_FIELD_KEYS = ("extension", "fields", "mappings", "prefixes")


class _Checker:
    """Reads one configuration mapping, each problem raised naming the file and the key."""

    def __init__(self, source: str, base: Path | None) -> None:
        self.source = source
        self.base = base

    def fail(self, where: str, problem: str) -> DwcConfigError:
        return DwcConfigError(f"dwc configuration {self.source}: {where}: {problem}")

    def mapping(self, value: Any, where: str, *, allowed: Sequence[str] | None = None) -> Mapping[Any, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, f"must be a mapping (key: value), not {type(value).__name__}")
        if allowed is not None:
            unknown = [str(k) for k in value if k not in allowed]
            if unknown:
                raise self.fail(where, f"unknown key {unknown[0]!r} (known: {', '.join(allowed)})")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"must be a non-empty text, not {value!r}")
        return value

    def extension(self, ref: Any, where: str) -> Extension:
        try:
            return load_extension(self.text(ref, where), self.base)
        except ExtensionError as exc:
            raise self.fail(where, str(exc)) from None

    def extension_field(
        self, name: Any, spec: Any, config_extensions: ExtensionSet, id_field: str
    ) -> ExtensionField:
        where = f"extension_fields.{name}"
        self.text(name, "extension_fields (a CKAN field name)")
        if name == id_field:
            raise self.fail(where, "the id field cannot be an extension field")
        spec = self.mapping(spec, where, allowed=_EXTENSION_FIELD_KEYS)
        if "extension" not in spec or "fields" not in spec:
            raise self.fail(where, "needs 'extension' (a definition) and 'fields' (term: default value)")
        extension = self.extension(spec["extension"], f"{where}.extension")
        if extension.name == config_extensions.core.name:
            # Rows of the core must be one per record; objects of a list cannot be that.
            raise self.fail(f"{where}.extension", f"{extension.name} is the core extension")
        same_name = next((e for e in config_extensions.extensions if e.name == extension.name), None)
        if same_name is not None and same_name != extension:
            raise self.fail(f"{where}.extension", f"a different definition named {extension.name} is loaded")
        defaults = self.mapping(spec["fields"], f"{where}.fields")
        if not defaults:
            raise self.fail(f"{where}.fields", "names no term")
        for term, default in defaults.items():
            if not isinstance(term, str) or extension.term(term) is None:
                raise self.fail(
                    f"{where}.fields", f"{term!r} is not a term of {extension.name} ({extension.source})"
                )
            if default is not None and not isinstance(default, str | int | float | bool):
                raise self.fail(
                    f"{where}.fields.{term}", f"a default must be a plain value (quote it): {default!r}"
                )
        extras: dict[str, dict[str, str]] = {}
        for key in ("mappings", "prefixes"):
            given = self.mapping(spec.get(key) or {}, f"{where}.{key}")
            for term, value in given.items():
                if term not in defaults:
                    raise self.fail(f"{where}.{key}", f"{term!r} is not one of the terms under fields")
                if not isinstance(value, str) or (key == "mappings" and not value):
                    raise self.fail(f"{where}.{key}.{term}", f"must be a text, not {value!r}")
            extras[key] = dict(given)
        return ExtensionField(
            field=name,
            extension=extension,
            defaults=dict(defaults),
            mappings=extras["mappings"],
            prefixes=extras["prefixes"],
        )


def dwc_config_from_mapping(data: Any, *, source: str = "(mapping)", base: Path | None = None) -> DwcConfig:
    """A configuration from its parsed form (the YAML or JSON object); relative extension paths are
    taken from ``base``. Keys left out take the defaults (``_id``, ``dynamicProperties``, the
    bundled Occurrence core, no additional extension, no extension field)."""
    check = _Checker(source, base)
    data = check.mapping(data, "the whole file", allowed=_CONFIG_KEYS)
    id_field = check.text(data.get("id_field", DEFAULT_ID_FIELD), "id_field")
    dynamic_term = check.text(data.get("dynamic_term", DEFAULT_DYNAMIC_TERM), "dynamic_term")
    core = check.extension(data.get("core_extension", CORE_OCCURRENCE), "core_extension")
    additional_refs = data.get("additional_extensions") or []
    if not isinstance(additional_refs, list):
        raise check.fail("additional_extensions", "must be a list of definitions")
    extensions = [core]
    for index, ref in enumerate(additional_refs):
        extension = check.extension(ref, f"additional_extensions[{index}]")
        if any(e.name == extension.name for e in extensions):
            raise check.fail(f"additional_extensions[{index}]", f"{extension.name} is already loaded")
        extensions.append(extension)
    extension_set = ExtensionSet(extensions)
    if dynamic_term not in extension_set:
        raise check.fail(
            "dynamic_term", f"{dynamic_term!r} is not a term of {', '.join(extension_set.names)}"
        )
    fields_spec = check.mapping(data.get("extension_fields") or {}, "extension_fields")
    extension_fields = {
        name: check.extension_field(name, spec, extension_set, id_field) for name, spec in fields_spec.items()
    }
    return DwcConfig(
        extensions=extension_set,
        id_field=id_field,
        dynamic_term=dynamic_term,
        extension_fields=extension_fields,
        source=source,
    )


@lru_cache(maxsize=1)
def default_dwc_config() -> DwcConfig:
    """The bundled configuration (``gbif/dwc_default.yaml``): the NHM deployment's."""
    text = resources.files(BUNDLED_PACKAGE).joinpath(BUNDLED_FOLDER, DEFAULT_CONFIG_NAME).read_text("utf-8")
    return dwc_config_from_mapping(yaml.safe_load(text), source=f"(bundled {DEFAULT_CONFIG_NAME})")


def load_dwc_config(path: str | Path | None) -> DwcConfig:
    """The configuration in the YAML or JSON file ``path`` (``.json``: JSON, anything else: YAML);
    ``None`` or an empty path gives the bundled default. Every problem (a missing file, bad
    syntax, an unknown key, a term the extension does not define) is a ``DwcConfigError``."""
    if path is None or not str(path).strip():
        return default_dwc_config()
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DwcConfigError(f"dwc configuration {file}: cannot be read: {reason}") from None
    try:
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if file.suffix.lower() == ".json" else "YAML"
        raise DwcConfigError(f"dwc configuration {file}: not valid {kind}: {exc}") from None
    if data is None:
        raise DwcConfigError(f"dwc configuration {file}: the file is empty")
    return dwc_config_from_mapping(data, source=str(file), base=file.parent)


# -- values -----------------------------------------------------------------------------------------
def camel_case(text: str) -> str:
    """The legacy's lower camel case of a field name: words split on spaces, each word
    lower-cased (the first) or capitalised (the others) unless it is all capitals, so
    ``Taxon resource ID`` → ``taxonResourceID`` and a single ``unknownField`` → ``unknownfield``."""
    words = [w.strip() for w in text.split(" ") if w.strip()]
    return "".join(
        w if w.upper() == w else (w.lower() if i == 0 else w.capitalize()) for i, w in enumerate(words)
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)


# Made once: json.dumps and json.loads with options build a new encoder or decoder on every
# call, which is most of their cost on the short values of a record.
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=_json_default)
_SORTED_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, default=_json_default)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
# What JSON text can start with (after white space); other text is not tried, sparing an
# exception per plain value.
_JSON_STARTS = frozenset('{["-0123456789tfn')


def _to_json(value: Any) -> str:
    return _ENCODER.encode(value)


_PLAIN = frozenset({str, int, float, bool})


def cell(value: Any) -> Any:
    """A value as the csv module should write it: null → empty, Decimal → float (as the legacy),
    an object or list → JSON."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict | list):
        return _to_json(value)
    return value


def _embedded(value: Any) -> Any:
    """A leftover's value inside the dynamic JSON object: text that is JSON goes in decoded (a
    field holding ``{"a": 1}`` becomes an object, not a string of it), as the legacy did; NaN and
    Infinity stay text, since they are not JSON."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, str):
        start = value.lstrip()[:1]
        if start not in _JSON_STARTS:
            return value
        try:
            return _DECODER.decode(value)
        except ValueError:
            return value
    return value


def extension_objects(value: Any) -> list[Mapping[str, Any]]:
    """The objects of an extension field's value: a list of objects, one object (a list of one),
    or either as JSON text. Anything else (null, plain text, numbers, items that are not objects)
    gives no rows: a malformed value of one record must not fail the whole archive."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return []
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, Mapping)]
    return []


def _present(value: Any) -> bool:
    return value is not None and value != ""


def flag(value: Any) -> bool:
    """A request flag (``for_gbif``): text such as ``false``, ``0`` or ``no`` is false."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off", "none", "null")
    return bool(value)


# -- the plan: fields → terms → CSV columns ----------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """One input of a term: a plain field, a leftover (``dynamic``), or the key ``key`` inside
    the objects of an extension field."""

    field: str
    key: str | None = None
    term: str = ""
    prefix: str = ""
    default: Scalar = None
    dynamic: bool = False
    json_key: str = field(init=False, repr=False)  # its key in the JSON object of a term

    def __post_init__(self) -> None:
        name = self.field if self.key is None else f"{self.field}_{self.key}"
        object.__setattr__(self, "json_key", camel_case(name))

    def from_object(self, obj: Mapping[str, Any]) -> Any:
        """The mapped key's value (with the prefix), else the object's own value of the term (an
        object that already says ``format``), else the default, as the legacy's merge did."""
        value = obj.get(self.key) if self.key is not None else None
        if _present(value):
            return f"{self.prefix}{value}" if self.prefix else value
        if self.key != self.term:
            own = obj.get(self.term)
            if _present(own):
                return own
        return self.default


class ExtensionPlan:
    """The CSV of one extension: its terms in first-seen order, each with its inputs."""

    def __init__(self, extension: Extension, is_core: bool) -> None:
        self.extension = extension
        self.is_core = is_core
        self.terms: dict[str, list[_Source]] = {}
        self.object_fields: list[str] = []
        self.has_plain = False
        self.written_rows = 0  # rows of this CSV so far

    def add(self, term: str, source: _Source) -> None:
        self.terms.setdefault(term, []).append(source)
        if source.key is None:
            self.has_plain = True
        elif source.field not in self.object_fields:
            self.object_fields.append(source.field)

    def header(self, id_field: str) -> list[str]:
        return [id_field, *self.terms]

    def row_count(self, objects: Mapping[str, list[Mapping[str, Any]]]) -> int:
        """One core row per record; elsewhere one per object (the longest list when several
        fields feed the extension) and at least one when a plain field feeds it."""
        if self.is_core:
            return 1
        counts = [len(objects[f]) for f in self.object_fields]
        if self.has_plain:
            counts.append(1)
        return max(counts, default=0)

    def row(
        self,
        ident: Any,
        record: Mapping[str, Any],
        objects: Mapping[str, list[Mapping[str, Any]]],
        index: int,
    ) -> list[Any]:
        row = [ident]
        for sources in self.terms.values():
            if len(sources) == 1 and sources[0].key is None and not sources[0].dynamic:
                # The common column: one field, one term.
                value = record.get(sources[0].field)
                row.append(value if type(value) in _PLAIN else cell(value))
                continue
            values = []
            for source in sources:
                if source.key is None:
                    values.append(record.get(source.field))
                    continue
                items = objects[source.field]
                # A shorter list than the row count (several fields feeding one extension)
                # repeats its last object, as the legacy padded its columns.
                values.append(source.from_object(items[min(index, len(items) - 1)]) if items else None)
            if len(sources) == 1 and not sources[0].dynamic:
                row.append(cell(values[0]))
                continue
            combined = {
                s.json_key: _embedded(v) for s, v in zip(sources, values, strict=True) if v is not None
            }
            # Sorted keys: the legacy's test expects them so, and the text no longer depends on
            # the order of the CKAN fields.
            row.append(_SORTED_ENCODER.encode(combined) if combined else "")
        return row


class ArchivePlan:
    """Where each of a resource's ``fields`` goes under ``config``; ``rows(record)`` gives a
    record's rows, extension by extension (index 0 is the core)."""

    def __init__(self, config: DwcConfig, fields: Sequence[str]) -> None:
        self.config = config
        self.fields = tuple(fields)
        plans: dict[str, ExtensionPlan] = {config.core.name: ExtensionPlan(config.core, True)}
        for name in self.fields:
            if name == config.id_field:
                continue
            for extension, term, source in self._targets(name):
                plan = plans.get(extension.name)
                if plan is None:
                    plan = plans[extension.name] = ExtensionPlan(extension, False)
                plan.add(term, source)
        self.extensions = list(plans.values())
        self._object_fields = [f for f in config.extension_fields if f in self.fields]

    @property
    def core(self) -> ExtensionPlan:
        return self.extensions[0]

    def _targets(self, name: str) -> list[tuple[Extension, str, _Source]]:
        config = self.config
        configured = config.extension_fields.get(name)
        if configured is not None:
            return [
                (
                    configured.extension,
                    term,
                    _Source(
                        name,
                        key=configured.key(term),
                        term=term,
                        prefix=configured.prefixes.get(term, ""),
                        default=default,
                    ),
                )
                for term, default in configured.defaults.items()
            ]
        for candidate in (name, camel_case(name)):
            found = config.extensions.lookup(candidate)
            if found is not None:
                return [(found[0], candidate, _Source(name, term=candidate))]
        found = config.extensions.lookup(config.dynamic_term)
        assert found is not None  # checked when the configuration was read
        return [(found[0], config.dynamic_term, _Source(name, term=config.dynamic_term, dynamic=True))]

    def term_map(self) -> dict[str, list[str]]:
        """Extension name → its CSV header (for reports and tests)."""
        return {p.extension.name: p.header(self.config.id_field) for p in self.extensions}

    def rows(self, record: Mapping[str, Any]) -> Iterator[tuple[int, list[Any]]]:
        objects = {f: extension_objects(record.get(f)) for f in self._object_fields}
        ident = cell(record.get(self.config.id_field))
        for index, plan in enumerate(self.extensions):
            for n in range(plan.row_count(objects)):
                yield index, plan.row(ident, record, objects, n)

    def sections(self) -> list[ExtensionPlan]:
        """The extensions whose CSV has rows: those that go into the archive."""
        return [p for p in self.extensions if p.written_rows]


# -- the small files ----------------------------------------------------------------------------------
def meta_xml(sections: Iterable[ExtensionPlan], *, with_eml: bool) -> bytes:
    """``meta.xml`` as the legacy wrote it (lxml, pretty-printed, no XML declaration): one ``core``
    or ``extension`` element per CSV, its columns as ``field`` elements after the id column."""

    def element(parent: Any, tag: str, attributes: Iterable[tuple[str, str]] = ()) -> Any:
        node = etree.SubElement(parent, f"{{{DWC_TEXT_NAMESPACE}}}{tag}")
        for name, value in attributes:  # set one by one: the attribute order is the legacy's
            node.set(name, value)
        return node

    root = etree.Element(f"{{{DWC_TEXT_NAMESPACE}}}archive", nsmap={None: DWC_TEXT_NAMESPACE})
    if with_eml:
        root.set("metadata", EML_NAME)
    for plan in sections:
        extension = plan.extension
        section = element(
            root, "core" if plan.is_core else "extension", (*SECTION_FORMAT, ("rowType", extension.row_type))
        )
        element(element(section, "files"), "location").text = extension.file_name
        element(section, "id" if plan.is_core else "coreid", [("index", "0")])
        for index, term in enumerate(plan.terms, start=1):
            definition = extension.term(term)
            assert definition is not None  # the plan only holds terms of its extension
            element(section, "field", [("index", str(index)), ("term", definition.qual_name)])
    return etree.tostring(root, pretty_print=True, encoding="UTF-8", xml_declaration=False)


def check_eml_template(template: str) -> str:
    """``template`` if it can be filled in: a ``str.format`` template whose only placeholders are
    ``{package_id}``, ``{pub_date}`` and ``{date_stamp}`` (literal braces doubled). Anything else
    (attribute or index lookups included, which would reach into Python objects) is refused with
    a ``ValueError`` saying why."""
    allowed = ", ".join(f"{{{name}}}" for name in EML_PLACEHOLDERS)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"the eml template is not a valid template ({exc}); write literal braces twice"
        ) from None
    for _, name, spec, _ in parts:
        if name is None:
            continue
        if name not in EML_PLACEHOLDERS:
            raise ValueError(f"the eml template has the placeholder {{{name}}}: only {allowed} are filled in")
        if spec and ("{" in spec or "}" in spec):
            raise ValueError(f"the eml template nests a placeholder in {{{name}:{spec}}}")
    try:
        template.format(**dict.fromkeys(EML_PLACEHOLDERS, "x"))
    except ValueError as exc:
        raise ValueError(f"the eml template cannot be filled in: {exc}") from None
    return template


def render_eml(template: str, moment: datetime) -> bytes:
    """``eml.xml``: the template with a new package id (a UUID) and ``moment`` (UTC) as the
    publication date and date stamp."""
    moment = moment.astimezone(UTC)
    return (
        check_eml_template(template)
        .format(
            package_id=str(uuid.uuid4()),
            pub_date=moment.strftime("%Y-%m-%d"),
            date_stamp=moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        .encode("utf-8")
    )


def gbif_marker(moment: float) -> bytes:
    """``gbif.json``: when the archive for GBIF was made (Unix time)."""
    return json.dumps({"time": moment}).encode("utf-8")


# -- the archive ------------------------------------------------------------------------------------
def _csv_writer(out: IO[str]) -> Any:
    return csv.writer(out, quotechar='"', lineterminator="\n")


class _ExtensionFiles:
    """The CSVs of the extensions other than the core, written in a scratch folder while the
    core streams, for the ZIP to take after it."""

    def __init__(self, folder: Path, plan: ArchivePlan) -> None:
        self._plan = plan
        self._paths: dict[int, Path] = {}
        self._files: dict[int, IO[str]] = {}
        self._writers: dict[int, Any] = {}
        for index, extension_plan in enumerate(plan.extensions):
            if index == 0:
                continue
            path = folder / extension_plan.extension.file_name
            handle = open(path, "w", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
            self._paths[index] = path
            self._files[index] = handle
            self._writers[index] = _csv_writer(handle)
            self._writers[index].writerow(extension_plan.header(plan.config.id_field))

    def write(self, index: int, row: list[Any]) -> None:
        self._writers[index].writerow(row)

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()

    def written(self) -> list[tuple[ExtensionPlan, Path]]:
        return [
            (self._plan.extensions[i], path)
            for i, path in self._paths.items()
            if self._plan.extensions[i].written_rows
        ]


def _file_pieces(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while piece := handle.read(CHUNK):
            yield piece


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


class DwcArchive:
    """The archive of one request, as named entries (``entries()``), each with a function that
    produces its content in pieces. Nothing is fetched until the first entry is asked for.

    ``on_page`` is called with the number of records of each page once its rows are written.
    ``clock`` gives the Unix time written into ``eml.xml`` and ``gbif.json``."""

    def __init__(
        self,
        search: DatastoreSearch,
        config: DwcConfig,
        *,
        eml: str | None = None,
        for_gbif: bool = False,
        on_page: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.search = search
        self.config = config
        self.eml = check_eml_template(eml) if eml is not None else None
        self.for_gbif = for_gbif
        self.on_page = on_page
        self.clock = clock
        self.plan: ArchivePlan | None = None
        self.names: list[str] = []  # the entries produced so far

    def _entry(self, name: str, content: Callable[[], Iterator[bytes]]) -> Entry:
        self.names.append(name)
        return name, content

    def entries(self) -> Iterator[Entry]:
        """The entries in ZIP order: the core CSV, the other CSVs with rows, ``meta.xml``, then
        ``eml.xml`` and ``gbif.json`` when asked for. Each entry must be read to its end before
        the next one is asked for (the ZIP stream does so): the core's content is what pages
        through CKAN and writes the other CSVs."""
        description = self.search.describe()
        plan = self.plan = ArchivePlan(self.config, description.fields)
        with ExitStack() as stack:
            pages = self.search.pages()
            stack.callback(_close, pages)
            # The first page tells whether there are rows at all: without any, every CSV would
            # be empty and none goes into the archive.
            first = next(pages, None)
            if first is not None:
                folder = stack.enter_context(scratch_dir("ckan-dwc-"))
                files = _ExtensionFiles(folder, plan)
                stack.callback(files.close)
                yield self._entry(
                    plan.core.extension.file_name, partial(self._core, plan, first, pages, files)
                )
                files.close()
                for extension_plan, path in files.written():
                    yield self._entry(extension_plan.extension.file_name, partial(_file_pieces, path))
            moment = self.clock()
            meta = meta_xml(plan.sections(), with_eml=self.eml is not None)
            yield self._entry(META_NAME, lambda: iter([meta]))
            if self.eml is not None:
                eml = render_eml(self.eml, datetime.fromtimestamp(moment, UTC))
                yield self._entry(EML_NAME, lambda: iter([eml]))
            if self.for_gbif:
                marker = gbif_marker(moment)
                yield self._entry(GBIF_MARKER_NAME, lambda: iter([marker]))

    def _core(
        self, plan: ArchivePlan, first: Page, pages: Iterator[Page], files: _ExtensionFiles
    ) -> Iterator[bytes]:
        """The core CSV, a piece per page; the other extensions' rows go to their files."""
        text = io.StringIO()
        writer = _csv_writer(text)
        writer.writerow(plan.core.header(self.config.id_field))
        counts = [0] * len(plan.extensions)
        try:
            for page in chain([first], pages):
                for index, row in chain.from_iterable(map(plan.rows, page)):
                    counts[index] += 1
                    if index == 0:
                        writer.writerow(row)
                    else:
                        files.write(index, row)
                for extension_plan, count in zip(plan.extensions, counts, strict=True):
                    extension_plan.written_rows = count
                if self.on_page is not None:
                    self.on_page(len(page))
                data = text.getvalue().encode("utf-8")
                text.seek(0)
                text.truncate()
                yield data
        finally:
            _close(pages)
