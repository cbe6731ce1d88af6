"""Shared helpers for the IATI validate/clean tests: sample paths and a mixed-validity document."""

from pathlib import Path

from lxml import etree

SAMPLES = Path(__file__).resolve().parent / "fixtures" / "samples"

ROOT_ATTRIBUTES = (
    b'version="2.03" generated-datetime="2024-06-20T07:10:17+00:00" '
    b'linked-data-default="http://data.example.org/"'
)


def activity_xml(sample: str) -> bytes:
    """The first ``iati-activity`` of a sample file, serialised on its own."""
    root = etree.parse(str(SAMPLES / sample)).getroot()
    return etree.tostring(root.find("iati-activity"), encoding="utf-8", with_tail=False)


def broken_activity_xml() -> bytes:
    """A copy of the 3F activity with a new identifier and an element the schema forbids."""
    activity = etree.fromstring(activity_xml("real-world/3fi-activity.xml"))
    activity.find("iati-identifier").text = "XM-BROKEN-1"
    activity.find("title").addprevious(etree.Element("not-an-iati-element"))
    return etree.tostring(activity, encoding="utf-8")


def mixed_document() -> bytes:
    """Root with extra attributes and a namespace; activities valid, invalid, valid (in order)."""
    return b"".join(
        [
            b'<?xml version="1.0" encoding="UTF-8"?>\n',
            b"<iati-activities " + ROOT_ATTRIBUTES + b' xmlns:usg="http://foreignassistance.gov/iati#">\n',
            activity_xml("real-world/3fi-activity.xml"),
            b"\n<!-- a comment between activities -->\n",
            broken_activity_xml(),
            b"\n",
            activity_xml("real-world/fcdo-activity.xml"),
            b"\n</iati-activities>\n",
        ]
    )
