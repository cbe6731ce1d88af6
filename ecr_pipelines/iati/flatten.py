"""Flatten an IATI activity file into one flat ``dict`` per activity, as the legacy refresher did.

The output must match the legacy IATI refresher's ``Flattener`` key for key and value for value,
because existing Solr schemas and saved queries depend on it. Every value is a ``str`` (or a list
of ``str``); nothing is converted to numbers or booleans. The rules, including the quirks we keep
on purpose:

Document level
  * The root element must be exactly ``iati-activities`` (no namespace), else ``FlattenError``.
  * Every activity starts with the root keys, in this order: ``dataset_version`` (always present,
    ``""`` when the root has no ``version``), ``dataset_generated_datetime`` and
    ``dataset_linked_data_default`` (each only when the attribute is present and non-empty; the
    generated datetime goes through the date rule below, so an unparseable one is omitted).
  * Every ``iati-activity`` element without a namespace is an activity, at any depth: one nested
    in another (only possible in broken, recovered files) is emitted first and also flattened again
    as part of its parent, under ``iati_activity_*`` keys.
  * Parsing is lenient (libxml2 recover mode): comments are dropped before flattening, so text on
    both sides of a comment joins up.

Keys
  * Walk each element depth first: its attributes first (document order), then its own text, then
    each child element. Keys join the ancestor path with ``_``; the activity itself adds no
    prefix, and its own text is ignored. Text after a child element (tail text) is ignored.
  * A name is made canonical by replacing ``-`` and ``:`` with ``_``: ``xml:lang`` becomes
    ``xml_lang``; a namespace declared in scope of the *activity* element becomes
    ``<prefix>_<local>`` (``usg:treasury-main-account`` → ``usg_treasury_main_account``); an
    undeclared prefix (recovered as a literal ``bigorg:x``) becomes ``bigorg_x``; a namespace
    declared only below the activity (e.g. ``<ext xmlns="http://e/ns">``) keeps lxml's raw
    ``{uri}local`` form with the same replacements: ``{http_//e/ns}ext``.
  * Processing instructions inside an activity are skipped (the refresher crashed on them, so no
    output of the refresher depends on them). Unresolved entity references are skipped too.

Values
  * Every value is ``strip()``-ed; ``iati_identifier`` also loses every ``\\n`` and ``\\r``.
  * Element text is only used when it is not blank; an attribute that is present but empty is kept
    as ``""``.
  * Date keys are those whose name contains ``iso_date``, ``value_date``, ``extraction_date`` or
    ``_datetime``. Their value is parsed as ``%Y-%m-%d``, then ``%Y-%m-%dZ``, then
    ``YYYY-MM-DD±HH:MM`` (offset ignored), then by ``dateutil.parser.parse`` (lenient:
    ``17/07/2023`` is accepted; missing parts such as the day of ``"2023-05"`` are taken from
    *today's* date, exactly as dateutil does). The result is written as
    ``YYYY-MM-DDTHH:MM:SS.mmmZ``. A timezone offset is **dropped, not converted**
    (``08:05:08+02:00`` → ``08:05:08.000Z``). A value that cannot be parsed (``""``, ``cat``,
    ``2023-15-40``, a year above 9999) is **omitted**: the key is not written at all.
  * The first value of a key is stored as a string; a second one turns it into a list and further
    ones are appended. So one key can be a string in one activity and a list in another, and
    parallel lists are not index-aligned (a blank narrative adds no text, yet its ``xml:lang`` is
    still added).

Sub-lists
  * For ``transaction`` then ``budget``: when the activity has such direct children, the key
    ``@transaction`` / ``@budget`` holds one dict per element, flattened the same way with the
    element name as prefix (``transaction_value`` ...). They come last, ``@transaction`` first.
    The activity-level keys still hold the aggregated ``transaction_*`` / ``budget_*`` values.

Key order is root keys, then insertion order of the walk, then the sub-lists. The refresher
stored ``json.dumps(list_of_activities)`` (ASCII-escaped, default separators); :func:`main`
prints the same form.

Deliberate differences, none of which changes the output for a file the refresher could
flatten: the refresher read the whole file into memory twice, we stream and free every activity
once it is flattened; the refresher resolved DTD entities, we leave them unresolved (no entity
expansion or network access from untrusted files); the refresher crashed on processing
instructions, we skip them. Bytes are parsed as given (encoding from the BOM / XML declaration),
so the caller decides how to normalise encodings.
"""

import functools
import itertools
import json
import re
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, TextIO

from dateutil import parser as dateutil_parser
from lxml import etree

__all__ = [
    "ACTIVITY_TAG",
    "EXPLODE_ELEMENTS",
    "ROOT_TAG",
    "FlattenError",
    "flatten_file",
    "free_element",
    "iter_flattened_activities",
    "main",
    "normalise_date",
    "write_json",
]

ROOT_TAG = "iati-activities"
ACTIVITY_TAG = "iati-activity"
# Order matters: it is the order of the "@..." keys at the end of each activity.
EXPLODE_ELEMENTS: tuple[str, ...] = ("transaction", "budget")

_XML_NS = "http://www.w3.org/XML/1998/namespace"
_DATE_MARKERS = ("iso_date", "value_date", "extraction_date", "_datetime")
# ASCII digits only: \d would also accept other scripts' digits, which strptime below rejects anyway.
_DATE_WITH_OFFSET = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[+-][0-9]{2}:[0-9]{2}$")

FlatValue = str | list[str]
FlatActivity = dict[str, FlatValue | list[dict[str, FlatValue]]]


class FlattenError(Exception):
    """The file is not an IATI activity file (wrong root element) or cannot be parsed at all."""


def normalise_date(value: str) -> str | None:
    """Return ``value`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` like the refresher, or None if unparseable.

    The timezone offset is dropped, not converted: only the wall-clock time is kept.
    """
    fast = _plain_date(value)
    if fast is not None:
        return fast
    fast = _iso_datetime(value)
    if fast is not None:
        return fast
    parsed: datetime | None = None
    for fmt in ("%Y-%m-%d", "%Y-%m-%dZ"):
        try:
            parsed = datetime.strptime(value, fmt)
            break
        except ValueError:
            continue
    if parsed is None and _DATE_WITH_OFFSET.match(value):
        try:
            parsed = datetime.strptime(value[:10], "%Y-%m-%d")
        except ValueError:
            parsed = None
    if parsed is None:
        try:
            parsed = dateutil_parser.parse(value)
        except (ValueError, OverflowError):
            return None
    # strftime keeps whatever year width the platform gives, exactly like the refresher did.
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


_PLAIN_DATE = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})Z?$")
_plain_dates: dict[str, str | None] = {}


def _plain_date(value: str) -> str | None:
    """``YYYY-MM-DD`` (or with ``Z``), years 1000-9999, as ``normalise_date`` formats it, without
    strptime: most dates of a file are of this form and recur (one per transaction and budget).
    None means "not this simple form": the general path decides, invalid days included."""
    known = _plain_dates.get(value)
    if known is not None:
        return known
    match = _PLAIN_DATE.match(value)
    if match is None or match.group(1) < "1000":
        return None  # strftime writes years below 1000 unpadded: the general path keeps that
    try:
        datetime(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None
    formatted = f"{value[:10]}T00:00:00.000Z"
    if len(_plain_dates) < 100_000:
        _plain_dates[value] = formatted
    return formatted


# ISO 8601 date-times as IATI writes them (``last-updated-datetime``, ``generated-datetime``):
# seconds, at most six fraction digits, ``Z`` or an offset. ASCII digits only.
_ISO_DATETIME = re.compile(
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?$"
)


def _iso_datetime(value: str) -> str | None:
    """An ISO date-time, years 1000-9999, as dateutil then ``normalise_date`` format it (offset
    dropped, fraction cut to milliseconds), without dateutil's general parser, which costs tens of
    microseconds a value. None: not this form, or not a valid time; the general path decides."""
    match = _ISO_DATETIME.match(value)
    if match is None or match.group(1) < "1000":
        return None
    year, month, day, hour, minute, second, fraction = match.groups()
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:
        return None
    # dateutil reads the fraction as microseconds (padded or cut to six digits); we print three.
    millis = (fraction or "").ljust(3, "0")[:3]
    return f"{value[:10]}T{hour}:{minute}:{second}.{millis}Z"


@functools.lru_cache(maxsize=4096)
def _is_date_key(key: str) -> bool:
    # Cached: the same few hundred keys recur in every activity of a file.
    return any(marker in key for marker in _DATE_MARKERS)


def _add_value(out: dict, key: str, raw: str) -> None:
    """Store one value under ``key`` with the refresher's normalisation and scalar→list promotion."""
    value = raw.strip()
    if key == "iati_identifier":
        value = value.replace("\n", "").replace("\r", "")
    if _is_date_key(key):
        normalised = normalise_date(value)
        if normalised is None:
            return
        value = normalised
    if key not in out:
        out[key] = value
    elif isinstance(out[key], list):
        out[key].append(value)
    else:
        out[key] = [out[key], value]


def _prefix_by_uri(activity: etree._Element) -> dict[str, str]:
    """Map each namespace URI in scope of the activity to its prefix (first declaration wins)."""
    prefixes: dict[str, str] = {}
    for prefix, uri in activity.nsmap.items():
        # A default namespace has no prefix to build a key from; such names keep the raw form.
        if prefix is not None and uri not in prefixes:
            prefixes[uri] = prefix
    return prefixes


def _canonical(name: str, prefixes: dict[str, str]) -> str:
    """Turn an lxml tag or attribute name into the refresher's key fragment."""
    if name.startswith("{"):
        uri, _, local = name[1:].partition("}")
        if uri == _XML_NS:
            name = "xml_" + local
        elif uri in prefixes:
            name = prefixes[uri] + "_" + local
        # Otherwise the raw "{uri}local" form stays: the refresher only knew the activity's nsmap.
    return name.replace("-", "_").replace(":", "_")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}_{name}" if prefix else name


class _Keys:
    """Keys of one namespace context, memoised: ``(path, lxml name) -> key``. Every activity of a
    file mostly has the same namespaces and the same few hundred paths, so building a key (the
    namespace prefix, the ``-``/``:`` replacements, the join) is done once per file, not once per
    element or attribute."""

    def __init__(self, prefixes: dict[str, str]) -> None:
        self.prefixes = prefixes
        self.cache: dict[tuple[str, str], str] = {}
        # key -> how its values are treated (``_special_kind``), for the keys not taken plainly;
        # filled as keys are built, so every key the walk meets has been through ``key`` once
        self.specials: dict[str, str] = {}

    def key(self, path: str, name: str) -> str:
        key = self.cache.get((path, name))
        if key is None:
            key = _join(path, _canonical(name, self.prefixes))
            kind = _special_kind(key)
            if kind:
                self.specials[key] = kind
            if len(self.cache) < 200_000:
                self.cache[(path, name)] = key
        return key


ELEMENTS_ONLY = etree.Element  # as a tag filter: elements, not comments, PIs or entities

_keys_by_namespaces: dict[tuple[tuple[str, str], ...], _Keys] = {}


def _keys_for(prefixes: dict[str, str]) -> _Keys:
    signature = tuple(sorted(prefixes.items()))
    keys = _keys_by_namespaces.get(signature)
    if keys is None:
        if len(_keys_by_namespaces) > 64:
            _keys_by_namespaces.clear()
        keys = _keys_by_namespaces[signature] = _Keys(prefixes)
    return keys


def _flatten_activity_tree(activity: etree._Element, keys: _Keys, out: dict) -> dict[str, list[dict]]:
    """Add the activity's attributes, text and descendants to ``out`` in the refresher's order, and
    return the ``@transaction`` / ``@budget`` sub-lists, filled in the same walk.

    The refresher flattened each direct ``transaction`` / ``budget`` child a second time with the
    element name as prefix; that gives exactly the keys and values the activity-level walk adds
    for that subtree, so each value is also put into the child's own dict as it passes (half the
    work for files that are mostly transactions). lxml walks the elements in document order, in C;
    an ancestor stack gives each its parent's path (no recursion: huge_tree allows nesting deeper
    than Python's recursion limit). The values go through ``_add_value``'s rules inline: this loop
    runs once per element and attribute of the corpus, and a call per value was a third of the time.
    """
    subs: dict[str, list[dict]] = {name: [] for name in EXPLODE_ELEMENTS}
    cache, key, specials = keys.cache, keys.key, keys.specials
    plain_dates = _plain_dates
    # The ancestors of the element at hand, each with its key path and its sub-list dict:
    # lxml walks the tree in C (document order, elements only) and the stack follows it.
    ancestors: list[tuple[etree._Element, str, dict | None]] = []
    pop, push = ancestors.pop, ancestors.append
    for node in activity.iter(ELEMENTS_ONLY):
        if node is activity:
            path, sub = "", None
        else:
            parent = node.getparent()
            while ancestors[-1][0] is not parent:
                pop()
            _, parent_path, sub = ancestors[-1]
            tag = node.tag
            path = cache.get((parent_path, tag)) or key(parent_path, tag)
            if parent is activity:
                sub = None
                if tag in subs:
                    sub = {}
                    subs[tag].append(sub)
        push((node, path, sub))
        values = node.items()
        if path:
            text = node.text
            if text is not None:
                text = text.strip()
                if text:
                    values.append((None, text))
        for name, raw in values:
            k = path if name is None else (cache.get((path, name)) or key(path, name))
            value = raw.strip()
            special = specials.get(k)
            if special is not None:
                if special is _DATE:
                    value = plain_dates.get(value) or normalise_date(value)
                    if value is None:
                        continue  # unparseable dates are left out
                else:
                    value = value.replace("\n", "").replace("\r", "")
            existing = out.get(k)
            if existing is None:
                out[k] = value
            elif type(existing) is list:
                existing.append(value)
            else:
                out[k] = [existing, value]
            if sub is not None:
                existing = sub.get(k)
                if existing is None:
                    sub[k] = value
                elif type(existing) is list:
                    existing.append(value)
                else:
                    sub[k] = [existing, value]
    return subs


_IDENTIFIER, _DATE = "identifier", "date"


def _special_kind(key: str) -> str:
    """How ``_add_value`` treats a key's values: the identifier, a date, or plainly ("")."""
    if key == "iati_identifier":
        return _IDENTIFIER
    return _DATE if _is_date_key(key) else ""


def _flatten_activity(activity: etree._Element, root_values: dict[str, str]) -> FlatActivity:
    keys = _keys_for(_prefix_by_uri(activity))
    out: FlatActivity = dict(root_values)
    subs = _flatten_activity_tree(activity, keys, out)
    for name in EXPLODE_ELEMENTS:  # their order is the order of the "@" keys
        if subs[name]:
            out["@" + name] = subs[name]
    return out


def _root_values(root: etree._Element) -> dict[str, str]:
    values: dict[str, str] = {}
    _add_value(values, "dataset_version", root.get("version", ""))
    generated = root.get("generated-datetime")
    if generated:
        _add_value(values, "dataset_generated_datetime", generated)
    linked_data = root.get("linked-data-default")
    if linked_data:
        _add_value(values, "dataset_linked_data_default", linked_data)
    return values


def free_element(element: etree._Element) -> None:
    """Drop a finished element and its earlier siblings so an iterparse tree stays one element big."""
    element.clear(keep_tail=False)
    parent = element.getparent()
    if parent is not None:
        while element.getprevious() is not None:
            del parent[0]


def _open_source(source: str | Path | BinaryIO) -> str | BinaryIO:
    return str(source) if isinstance(source, Path) else source


def iter_flattened_activities(source: str | Path | BinaryIO) -> Iterator[FlatActivity]:
    """Yield one flattened dict per ``iati-activity`` of an IATI activity file, streaming.

    ``source`` is a file path or a binary file object. Raises :class:`FlattenError` when the root
    element is not ``iati-activities`` or the file has no parseable root at all; the error is
    raised on the first ``next()``, before any activity is yielded.
    """
    # Only activity ends reach Python (lxml filters the rest in C): the parse loop costs one
    # iteration per activity, not two per element.
    events = etree.iterparse(
        _open_source(source),
        events=("end",),
        tag=ACTIVITY_TAG,
        recover=True,
        remove_comments=True,
        huge_tree=True,
        resolve_entities=False,
        no_network=True,
        # No xml:id table: it would grow with the document even though elements are freed.
        collect_ids=False,
    )
    root_values: dict[str, str] | None = None
    try:
        for _event, element in events:
            if root_values is None:
                # The root's attributes are complete by its first activity's end.
                root_values = _checked_root(element.getroottree().getroot())
            yield _flatten_activity(element, root_values)
            # A nested activity still belongs to its parent's output, so only free outermost ones.
            if not _inside_activity(element):
                free_element(element)
    except etree.XMLSyntaxError as exc:
        raise FlattenError(f"Could not parse XML: {exc}") from exc
    if root_values is None:
        _checked_root(events.root)  # set once the whole file is parsed


def _checked_root(root: etree._Element | None) -> dict[str, str]:
    if root is None:
        raise FlattenError("Could not parse XML: no root element")
    if root.tag != ROOT_TAG:
        raise FlattenError(f"Non-IATI XML: root element is {root.tag!r}, not {ROOT_TAG!r}")
    return _root_values(root)


def _inside_activity(element: etree._Element) -> bool:
    parent = element.getparent()
    while parent is not None:
        if parent.tag == ACTIVITY_TAG:
            return True
        parent = parent.getparent()
    return False


def flatten_file(source: str | Path | BinaryIO) -> list[FlatActivity]:
    """Return the flattened activities of a whole file as a list (see :func:`iter_flattened_activities`)."""
    return list(iter_flattened_activities(source))


def write_json(activities: Iterator[FlatActivity], out: TextIO) -> int:
    """Write ``activities`` to ``out`` as the bytes of ``json.dumps(list(activities))``, one
    activity at a time (memory stays that of one activity); returns how many were written."""
    count = 0
    out.write("[")
    for activity in activities:
        if count:
            out.write(", ")
        out.write(json.dumps(activity))
        count += 1
    out.write("]")
    return count


def main(argv: list[str] | None = None) -> int:
    """``python -m ecr_pipelines.iati.flatten FILE``: print the file's activities as the refresher's
    JSON, streamed: the output starts before the file is read to its end, and memory stays flat.
    A file that is not an IATI activity file prints nothing on stdout (the root is checked first);
    an error after the output began ends it unfinished, with the error on stderr and exit code 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ecr_pipelines.iati.flatten FILE", file=sys.stderr)
        return 2
    activities = iter_flattened_activities(args[0])
    try:
        first = next(activities, None)
        write_json(itertools.chain([first] if first is not None else [], activities), sys.stdout)
    except FlattenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
