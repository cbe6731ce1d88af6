"""Tests for the hardened XML helpers: XXE and entity-expansion attacks are refused before any
expansion happens."""

import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from ecr_pipelines.lib import xmlsafe
from ecr_pipelines.lib.xmlsafe import UnsafeXMLError
from ecr_pipelines_tests.iati.iati_samples import SAMPLES

_LAUGHS = "".join(
    f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">' for level in range(1, 10)
)  # lol9 expands to 10^9 "lol"s (~3 GB)
BILLION_LAUGHS_CONTENT = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol0 "lol">' + _LAUGHS + "]>\n"
    '<iati-activities version="2.03"><iati-activity>&lol9;</iati-activity></iati-activities>'
).encode()
BILLION_LAUGHS_ATTRIBUTE = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol0 "lol">' + _LAUGHS + "]>\n"
    '<iati-activities version="2.03" generated-datetime="&lol9;"/>'
).encode()


def _xxe(target: Path) -> bytes:
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE r [<!ENTITY xxe SYSTEM "{target.as_uri()}">]>\n'
        f'<iati-activities version="2.03"><iati-activity>&xxe;</iati-activity></iati-activities>'
    ).encode()


def _consume_iterparse(source: bytes) -> None:
    with xmlsafe.iterparse(source) as events:
        for _event, _element in events:
            pass


ENTRY_POINTS: list[Callable[[bytes], Any]] = [
    xmlsafe.read_root,
    xmlsafe.parse,
    lambda source: xmlsafe.parse(source, huge_tree=True),
    xmlsafe.check_well_formed,
    _consume_iterparse,
]


def _peak_python_allocation(call: Callable[[], Any]) -> int:
    """Peak bytes Python allocated while ``call`` ran (libxml2's own buffers are not counted, so
    this catches an expansion that reaches Python objects; the refusal message catches the rest)."""
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_xxe_is_rejected(entry_point: Callable[[bytes], Any], tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    with pytest.raises(UnsafeXMLError, match="external entity"):
        entry_point(_xxe(secret))


def test_xxe_never_read_even_by_the_bare_parser(tmp_path: Path) -> None:
    # Defence in depth: the parser itself does not resolve external entities either.
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    root = etree.fromstring(_xxe(secret), xmlsafe.make_parser())
    assert b"TOP-SECRET" not in etree.tostring(root)


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
@pytest.mark.parametrize(
    ("source", "refusal"),
    [
        # In the body: refused for declaring entities at all, before any reference is read.
        (BILLION_LAUGHS_CONTENT, "internal entity declarations are not allowed: lol0"),
        # In the root's attributes, which libxml2 parses before the prolog can be vetted: its
        # amplification guard (kept on, see xmlsafe) stops the expansion.
        (BILLION_LAUGHS_ATTRIBUTE, "entity amplification factor exceeded"),
    ],
    ids=["content", "attr"],
)
def test_billion_laughs_is_rejected_before_expansion(
    entry_point: Callable[[bytes], Any], source: bytes, refusal: str
) -> None:
    def attempt() -> None:
        with pytest.raises(UnsafeXMLError, match=refusal):
            entry_point(source)

    # lol9 would be ~3 GB; a refusal that expanded nothing stays far below this generous bound.
    assert _peak_python_allocation(attempt) < 20 * 1024 * 1024


def test_entity_loop_is_rejected() -> None:
    source = b'<!DOCTYPE r [<!ENTITY a "&b;"><!ENTITY b "&a;">]><iati-activities>&a;</iati-activities>'
    with pytest.raises(UnsafeXMLError):
        xmlsafe.parse(source)


@pytest.mark.parametrize(
    "source",
    [
        b'<!DOCTYPE r [<!ENTITY % pe SYSTEM "http://example.invalid/x.dtd"> %pe;]><iati-activities/>',
        b'<!DOCTYPE r SYSTEM "http://example.invalid/x.dtd"><iati-activities/>',
        b'<!DOCTYPE r PUBLIC "-//X//Y" "http://example.invalid/x.dtd"><iati-activities/>',
    ],
    ids=["parameter-entity", "external-dtd", "public-dtd"],
)
def test_external_dtds_and_parameter_entities_are_rejected(source: bytes) -> None:
    with pytest.raises(UnsafeXMLError):
        xmlsafe.read_root(source)


def test_plain_doctype_without_entities_is_accepted() -> None:
    tree = xmlsafe.parse(b"<!DOCTYPE iati-activities><iati-activities version='2.03'/>")
    assert tree.getroot().get("version") == "2.03"


def test_read_root_stops_at_the_root() -> None:
    # The body is broken, but read_root never gets there.
    info = xmlsafe.read_root(b'<iati-activities version="2.03" xmlns:usg="urn:x"><a></b>')
    assert info.tag == "iati-activities"
    assert info.version == "2.03"
    assert info.attrib == {"version": "2.03"}
    assert info.nsmap == {"usg": "urn:x"}
    assert info.sourceline == 1
    with pytest.raises(etree.XMLSyntaxError):
        xmlsafe.check_well_formed(b'<iati-activities version="2.03"><a></b>')


def test_read_root_on_a_sample_file() -> None:
    info = xmlsafe.read_root(SAMPLES / "official/organisation-standard-example-annotated.xml")
    assert (info.tag, info.version) == ("iati-organisations", "2.03")
    assert info.attrib["generated-datetime"] == "2014-09-10T07:15:37Z"


def test_read_root_without_version() -> None:
    assert xmlsafe.read_root(b"<iati-activities/>").version is None


@pytest.mark.parametrize("source", [b"", b"   ", b"<!-- only a comment -->"])
def test_empty_documents_raise_syntax_errors(source: bytes) -> None:
    with pytest.raises(etree.XMLSyntaxError):
        xmlsafe.read_root(source)


def test_syntax_error_message_drops_position() -> None:
    with pytest.raises(etree.XMLSyntaxError) as caught:
        xmlsafe.parse(b"<a>\n</b>")
    assert xmlsafe.syntax_error_message(caught.value) == "Opening and ending tag mismatch: a line 1 and b"


def test_check_well_formed_accepts_samples() -> None:
    for path in sorted(SAMPLES.glob("*/*.xml")):
        xmlsafe.check_well_formed(path)
