"""One place for parsing untrusted upstream XML (IATI files from publishers, Companies House
filings, ...).

Every stage that reads upstream XML goes through these helpers so that the hardening is decided
once:

* ``resolve_entities=False``, ``load_dtd=False``, ``no_network=True``: no external entity, DTD or
  network fetch is ever performed.
* Any entity declaration (internal, external or parameter) or external DTD reference in the
  document prolog is rejected with :class:`UnsafeXMLError` before the body is parsed. Upstream files
  never need them, and refusing them outright covers XXE and "billion laughs" (nested internal
  entity expansion) regardless of libxml2's own amplification guard, which we still keep on.
* ``huge_tree`` is off unless a caller asks for it, so libxml2's built-in limits stay active
  (single text node <= 10 MB, element nesting depth, name length, entity amplification factor).
  Large *files* are fine without it: the limits are per node, not per document.
* ``collect_ids=False``: no ID hash table that would grow with the document.
* Files are opened by Python and handed to libxml2 as streams, so libxml2 never opens paths
  itself (it would transparently gunzip, which would make a small file a large one).

Sources are a filesystem path or the document bytes; both can be read more than once, which the
vetting pass (:func:`read_root`) relies on.
"""

import contextlib
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from lxml import etree

XMLSource = str | os.PathLike[str] | bytes | bytearray | memoryview

# libxml2 codes for entity abuse it detected itself (loop, amplification / resource limits).
# ErrorTypes is generated from the libxml2 headers lxml was built with, so look names up lazily.
_ENTITY_ABUSE_CODES = frozenset(
    code
    for code in (
        getattr(etree.ErrorTypes, "ERR_ENTITY_LOOP", None),
        getattr(etree.ErrorTypes, "ERR_RESOURCE_LIMIT", None),
        getattr(etree.ErrorTypes, "ERR_ENTITY_AMPLIFICATION", None),
    )
    if code is not None
)
_ENTITY_ABUSE_TEXT = ("entity amplification", "entity reference loop")
_POSITION_SUFFIX = re.compile(r", line \d+, column \d+$")


class UnsafeXMLError(ValueError):
    """The document uses XML features we refuse on untrusted input (entities, external DTDs)."""


@dataclass(frozen=True)
class RootInfo:
    """What the root start tag tells us, read without parsing the document body."""

    tag: str
    attrib: dict[str, str]
    nsmap: dict[str | None, str]
    sourceline: int | None

    @property
    def version(self) -> str | None:
        """The root's ``version`` attribute (the IATI Standard version), or None if absent."""
        return self.attrib.get("version")


def _parser_options(huge_tree: bool) -> dict[str, Any]:
    return {
        "resolve_entities": False,
        "load_dtd": False,
        "no_network": True,
        "dtd_validation": False,
        "attribute_defaults": False,
        "huge_tree": huge_tree,
    }


def make_parser(
    *,
    huge_tree: bool = False,
    remove_comments: bool = False,
    remove_pis: bool = False,
    target: Any = None,
) -> etree.XMLParser:
    """Return a hardened ``lxml`` parser (never recover mode: broken XML must fail loudly).

    Use it only after :func:`read_root` vetted the source, or through :func:`parse` which does.
    """
    return etree.XMLParser(
        collect_ids=False,
        remove_comments=remove_comments,
        remove_pis=remove_pis,
        target=target,
        **_parser_options(huge_tree),
    )


def syntax_error_message(error: etree.XMLSyntaxError) -> str:
    """The libxml2 message of a syntax error without lxml's ", line N, column M" suffix."""
    return _POSITION_SUFFIX.sub("", str(error.msg or error))


def _is_entity_abuse(error: etree.XMLSyntaxError) -> bool:
    message = str(error.msg or "").lower()
    return error.code in _ENTITY_ABUSE_CODES or any(text in message for text in _ENTITY_ABUSE_TEXT)


@contextlib.contextmanager
def open_source(source: XMLSource) -> Iterator[BinaryIO]:
    """Yield a binary stream over a path or bytes source (closed on exit for paths)."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield io.BytesIO(source)
        return
    with open(source, "rb") as handle:
        yield handle


def _check_prolog(root: Any) -> None:
    docinfo = root.getroottree().docinfo
    if docinfo.system_url or docinfo.public_id:
        raise UnsafeXMLError(
            f"external DTD reference is not allowed (system id {docinfo.system_url!r}, "
            f"public id {docinfo.public_id!r})"
        )
    dtd = docinfo.internalDTD
    if dtd is None:
        return
    # iterentities() lists general and parameter entities alike; their mere declaration is
    # refused so that no reference can ever be expanded or fetched later in the body.
    names = [entity.name for entity in dtd.iterentities()]
    if names:
        external = [entity.name for entity in dtd.iterentities() if entity.system_url]
        kind = "external entity (XXE)" if external else "internal entity"
        raise UnsafeXMLError(f"{kind} declarations are not allowed: {', '.join(names[:5])}")


def read_root(source: XMLSource, *, huge_tree: bool = False) -> RootInfo:
    """Read the root element's tag and attributes, stopping at the root start tag.

    This also vets the prolog: raises :class:`UnsafeXMLError` for entity declarations, external
    DTDs or entity abuse caught by libxml2, and ``lxml.etree.XMLSyntaxError`` if the document is
    broken before the root start tag ends (for example empty).
    """
    with open_source(source) as stream:
        try:
            # Small chunks: only the prolog and root tag are wanted, and the vetting must
            # happen before any body content (which could reference entities) is parsed.
            events = etree.iterparse(
                stream, events=("start",), chunk_size=4096, collect_ids=False, **_parser_options(huge_tree)
            )
            for _event, element in events:
                _check_prolog(element)
                return RootInfo(
                    tag=element.tag,
                    attrib=dict(element.attrib),
                    nsmap=dict(element.nsmap),
                    sourceline=element.sourceline,
                )
        except etree.XMLSyntaxError as error:
            if _is_entity_abuse(error):
                raise UnsafeXMLError(syntax_error_message(error)) from error
            raise
    # libxml2 raises for empty input itself; this guards odd inputs that yield no element.
    raise etree.XMLSyntaxError("Document is empty", etree.ErrorTypes.ERR_DOCUMENT_EMPTY, 1, 0)


@contextlib.contextmanager
def iterparse(
    source: XMLSource,
    *,
    events: Sequence[str] = ("end",),
    tag: str | Sequence[str] | None = None,
    huge_tree: bool = False,
    remove_comments: bool = False,
) -> Iterator[Any]:
    """Vet ``source`` then yield a hardened ``lxml.etree.iterparse`` over it.

    Use as ``with iterparse(src, tag="iati-activity") as events: for event, el in events: ...``.
    The yielded object is lxml's iterparse, so ``events.root`` is available after iteration.
    Syntax errors surface while iterating, as ``lxml.etree.XMLSyntaxError``.
    """
    read_root(source, huge_tree=huge_tree)
    with open_source(source) as stream:
        try:
            yield etree.iterparse(
                stream,
                events=tuple(events),
                tag=tag,
                remove_comments=remove_comments,
                collect_ids=False,
                **_parser_options(huge_tree),
            )
        except etree.XMLSyntaxError as error:
            if _is_entity_abuse(error):
                raise UnsafeXMLError(syntax_error_message(error)) from error
            raise


class _DiscardTarget:
    """Parser target that builds nothing: a well-formedness check in constant memory."""

    def close(self) -> None:
        return None


def check_well_formed(source: XMLSource, *, huge_tree: bool = False) -> None:
    """Raise ``XMLSyntaxError`` (or :class:`UnsafeXMLError`) unless ``source`` is well-formed.

    Streams the document through a tree-less parser, so memory does not grow with file size.
    """
    read_root(source, huge_tree=huge_tree)
    parser = make_parser(huge_tree=huge_tree, target=_DiscardTarget())
    with open_source(source) as stream:
        try:
            while chunk := stream.read(1 << 16):
                parser.feed(chunk)
            parser.close()
        except etree.XMLSyntaxError as error:
            if _is_entity_abuse(error):
                raise UnsafeXMLError(syntax_error_message(error)) from error
            raise


def parse(source: XMLSource, *, huge_tree: bool = False, remove_comments: bool = False) -> etree._ElementTree:
    """Vet ``source`` and parse it into a full tree (use :func:`iterparse` for big files)."""
    read_root(source, huge_tree=huge_tree)
    parser = make_parser(huge_tree=huge_tree, remove_comments=remove_comments)
    with open_source(source) as stream:
        try:
            return etree.parse(stream, parser)
        except etree.XMLSyntaxError as error:
            if _is_entity_abuse(error):
                raise UnsafeXMLError(syntax_error_message(error)) from error
            raise
