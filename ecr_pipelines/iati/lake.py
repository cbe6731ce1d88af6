"""Split a clean IATI activity file into one record per activity: the "activity lake".

Each record holds what the legacy refresher's lakify stage wrote as two blobs,
``<document_id>/<stem>.xml`` and ``<document_id>/<stem>.json``:

* ``stem``: SHA-1 hex digest of the UTF-8 identifier. The identifier is the first text node of
  the activity's ``iati-identifier`` children (XPath ``iati-identifier/text()``), stripped, with
  ``\\n`` removed. We also remove ``\\r`` (only possible through ``&#13;``), as flatten does, so
  the Solr stage always finds the record; the refresher did not, and such an activity could never
  be indexed there. Activities without an identifier (or with a blank one) are skipped and
  counted. Duplicate identifiers yield one record each; writing them by stem keeps the last one,
  as the refresher's blob overwrite did.
* ``xml``: ``etree.tostring(activity, encoding="utf-8")``: no XML declaration, namespace
  declarations in scope copied onto ``<iati-activity>``, and the element's tail (the whitespace
  after ``</iati-activity>``) included. We only serialise once the parser has moved past that
  tail, so it is always complete (the refresher's copy could be cut at a read-buffer boundary).
* ``json_text``: the nested JSON form. Each element is a dict: ``"@<attribute>": value`` for each
  attribute (lxml ``{uri}local`` names), then ``"text()"``, then one list per child tag in order of
  first appearance (``"narrative": [{...}, {...}]``). ``"text()"`` is the element's own text,
  unstripped, when it is not blank; otherwise the stripped fragments of
  ``itertext(tag=<own tag>)`` joined together (this picks up text after a comment), written only
  when non-empty, except that a ``narrative`` always gets one (``""``). Comments appear as
  ``"comment()"`` and processing instructions as ``"PI()"``, each a dict with their text under
  ``"text()"`` when it is not blank. The whole is ``{"iati-activity": [{...}]}``, dumped with
  ``ensure_ascii=False`` and default separators, after which every
  ``{http://www.w3.org/XML/1998/namespace}`` in the text is replaced with ``xml:``
  (so ``"@xml:lang"``).

Parsing is strict, as in the refresher, and goes through :mod:`ecr_pipelines.lib.xmlsafe`
(``huge_tree`` on, like the refresher): a malformed file, or one declaring entities or an external
DTD, raises :class:`LakeParseError` (the refresher sent a malformed document back to the clean
stage); a root other than ``iati-activities`` raises :class:`LakeError` before any record.
Activities are freed once written so memory does not grow with the file.
"""

import hashlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from lxml import etree

from ecr_pipelines.iati.flatten import ACTIVITY_TAG, ROOT_TAG, free_element
from ecr_pipelines.lib import xmlsafe

__all__ = [
    "LakeError",
    "LakeParseError",
    "LakeRecord",
    "LakeRecords",
    "activity_json",
    "identifier_stem",
    "iter_lake_records",
    "main",
]

_XML_NS_CLARK = "{http://www.w3.org/XML/1998/namespace}"


class LakeError(Exception):
    """The file cannot be split; raised as such when its root element is not ``iati-activities``."""


class LakeParseError(LakeError):
    """The file is not well-formed XML."""


@dataclass(frozen=True)
class LakeRecord:
    """One activity of the lake: its identifier, file stem, XML bytes and nested-JSON text."""

    identifier: str
    stem: str
    xml: bytes
    json_text: str


def identifier_stem(identifier: str) -> str:
    """Return the lake file stem for an identifier: SHA-1 hex digest of its UTF-8 bytes."""
    return hashlib.sha1(identifier.encode("utf-8")).hexdigest()


def _element_dict(node: etree._Element) -> dict[str, Any]:
    """Attributes and ``text()`` of one node; children are added by the caller."""
    out: dict[str, Any] = {}
    is_element = isinstance(node.tag, str)
    if is_element:
        for name, value in node.attrib.items():
            out["@" + name] = value
    text = node.text
    if text is not None and text.strip():
        out["text()"] = text
    elif is_element:
        joined = "".join(fragment.strip() for fragment in node.itertext(tag=node.tag))
        if joined or node.tag == "narrative":
            out["text()"] = joined
    return out


def _child_key(node: etree._Element) -> str | None:
    if isinstance(node, etree._Comment):
        return "comment()"
    if isinstance(node, etree._ProcessingInstruction):
        return "PI()"
    if isinstance(node.tag, str):
        return node.tag
    return None  # an unresolved entity reference


def activity_json(activity: etree._Element) -> str:
    """Return the refresher's nested JSON text for one activity element."""
    top: dict[str, Any] = {activity.tag: [_element_dict(activity)]}
    # Explicit stack rather than recursion: huge_tree allows nesting deeper than Python's limit.
    # Keys are created in the same order as a recursive walk would: siblings in document order.
    stack: list[tuple[etree._Element, dict[str, Any]]] = [(activity, top[activity.tag][0])]
    while stack:
        node, out = stack.pop()
        pending: list[tuple[etree._Element, dict[str, Any]]] = []
        for child in node:
            key = _child_key(child)
            if key is None:
                continue
            child_out = _element_dict(child)
            out.setdefault(key, []).append(child_out)
            if isinstance(child.tag, str):
                pending.append((child, child_out))
        stack.extend(reversed(pending))
    return json.dumps(top, ensure_ascii=False).replace(_XML_NS_CLARK, "xml:")


_IDENTIFIER_TEXTS = etree.XPath(
    "iati-identifier/text()"
)  # compiled once: per call it cost more than the record


def _identifier(activity: etree._Element) -> str:
    texts = _IDENTIFIER_TEXTS(activity)
    if not texts:
        return ""
    return str(texts[0]).strip().replace("\n", "").replace("\r", "")


class LakeRecords:
    """Iterator over the lake records of one file; ``skipped`` counts activities without identifier.

    ``skipped`` is final once the iterator is exhausted.
    """

    def __init__(self, source: xmlsafe.XMLSource) -> None:
        self.skipped = 0
        self._records = self._generate(source)

    def __iter__(self) -> "LakeRecords":
        return self

    def __next__(self) -> LakeRecord:
        return next(self._records)

    def _record(self, activity: etree._Element) -> LakeRecord | None:
        identifier = _identifier(activity)
        if not identifier:
            self.skipped += 1
            return None
        return LakeRecord(
            identifier=identifier,
            stem=identifier_stem(identifier),
            xml=etree.tostring(activity, encoding="utf-8"),
            json_text=activity_json(activity),
        )

    def _generate(self, source: xmlsafe.XMLSource) -> Iterator[LakeRecord]:
        try:
            # Reads only up to the root start tag, so a non-IATI file fails before any parsing work.
            root = xmlsafe.read_root(source, huge_tree=True)
        except (etree.XMLSyntaxError, xmlsafe.UnsafeXMLError) as exc:
            raise LakeParseError(f"Could not parse XML: {exc}") from exc
        if root.tag != ROOT_TAG:
            raise LakeError(f"Non-IATI XML: root element is {root.tag!r}, not {ROOT_TAG!r}")
        # A finished activity is written at the *next* event (or at the end), once the parser has
        # read past its tail text, so the tail is always complete.
        finished: etree._Element | None = None
        try:
            with xmlsafe.iterparse(
                source, events=("start", "end"), tag=ACTIVITY_TAG, huge_tree=True
            ) as events:
                for event, element in events:
                    if finished is not None:
                        yield from self._write(finished)
                        finished = None
                    if event == "end":
                        finished = element
            if finished is not None:
                yield from self._write(finished)
        except (etree.XMLSyntaxError, xmlsafe.UnsafeXMLError) as exc:
            raise LakeParseError(f"Could not parse XML: {exc}") from exc

    def _write(self, activity: etree._Element) -> Iterator[LakeRecord]:
        record = self._record(activity)
        if record is not None:
            yield record
        # A nested activity is part of its parent's record; free outermost ones only.
        if not any(ancestor.tag == ACTIVITY_TAG for ancestor in activity.iterancestors()):
            free_element(activity)


def iter_lake_records(source: xmlsafe.XMLSource) -> LakeRecords:
    """Stream the lake records of a clean activity file (path or the document bytes).

    The returned iterator's ``skipped`` attribute counts activities skipped for lack of an
    identifier. While iterating, raises :class:`LakeError` for a non-IATI root (before any record)
    and :class:`LakeParseError` for malformed or unsafe XML (possibly after some records: treat
    the document as failed as a whole).
    """
    return LakeRecords(source)


def main(argv: list[str] | None = None) -> int:
    """``python -m ecr_pipelines.iati.lake FILE``: print the file's lake records as JSON."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m ecr_pipelines.iati.lake FILE", file=sys.stderr)
        return 2
    records = iter_lake_records(args[0])
    try:
        listed = [
            {
                "identifier": record.identifier,
                "stem": record.stem,
                "xml": record.xml.decode("utf-8"),
                "json": json.loads(record.json_text),
            }
            for record in records
        ]
    except LakeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(listed, ensure_ascii=False, indent=2))
    print(f"{len(listed)} records, {records.skipped} activities skipped (no identifier)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
