"""Clean stage logic: turn a source IATI document plus its validation report into clean bytes.

Decision (the refresher's ``copy_valid`` / ``clean_invalid``):

* organisation files, non-IATI / unparseable reports and unsupported versions (every 1.x file)
  → ``skip``: the document goes no further down the pipeline;
* a valid activities file → ``copy``: the source bytes unchanged (encoding and declaration kept);
* an invalid 2.x activities file → ``rebuilt``: a new ``<iati-activities>`` root carrying all the
  original root attributes, holding only the activities the report's meta index marks valid
  (index = position among the root's direct ``iati-activity`` children), serialised as UTF-8
  without an XML declaration;
* ``error`` with the refresher's messages: ``"No valid activities"`` (none to keep) or
  ``"Could not parse"`` (the source is not well-formed or is unsafe XML).

Both ``copy`` and ``rebuilt`` write to a binary stream ``out`` (the stage: a scratch file it then
uploads), and the rebuild streams the source, so only one activity is held in memory at a time,
whatever the size of the document. Without ``out`` the clean document comes back as bytes
(``CleanResult.data``), for callers that want it in memory.
"""

import io
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Literal

from lxml import etree

from ecr_pipelines.iati.validate import ACTIVITIES, SUPPORTED_VERSIONS
from ecr_pipelines.lib import xmlsafe

COPY_CHUNK = 1024 * 1024
COULD_NOT_PARSE = "Could not parse"
NO_VALID_ACTIVITIES = "No valid activities"
CleanAction = Literal["copy", "rebuilt", "skip", "error"]


@dataclass(frozen=True)
class CleanResult:
    """Outcome of :func:`clean_document`.

    ``data`` holds the clean document for ``copy``/``rebuilt`` when no ``out`` stream was given
    (with one, the document went there); ``error`` the message to store
    (``clean_error``) for ``error``; ``reason`` a human explanation for ``skip``/``error``.
    ``kept``/``dropped`` count activities written / left out.
    """

    action: CleanAction
    data: bytes | None = None
    error: str | None = None
    kept: int = 0
    dropped: int = 0
    reason: str = ""


def _copy(source: xmlsafe.XMLSource, out: BinaryIO) -> None:
    if isinstance(source, bytes | bytearray | memoryview):
        out.write(source)
        return
    with open(source, "rb") as handle:
        shutil.copyfileobj(handle, out, COPY_CHUNK)


def _root_start_tag(root: xmlsafe.RootInfo) -> bytes:
    # Serialise an empty copy of the root (lxml escapes attributes and emits the namespace
    # declarations) and turn its self-closing form into an opening tag.
    shell = etree.Element(root.tag, attrib=root.attrib, nsmap=root.nsmap)
    empty = etree.tostring(shell, encoding="utf-8")
    if not empty.endswith(b"/>"):
        raise ValueError("unexpected serialisation of an empty root element")
    return empty[:-2] + b">"


def _rebuild(source: xmlsafe.XMLSource, keep: frozenset[int], out: BinaryIO) -> CleanResult:
    try:
        root = xmlsafe.read_root(source)
    except (etree.XMLSyntaxError, xmlsafe.UnsafeXMLError) as error:
        return CleanResult("error", error=COULD_NOT_PARSE, reason=str(error))
    if root.tag != ACTIVITIES:
        return CleanResult("error", error=COULD_NOT_PARSE, reason=f"root element is {root.tag!r}")

    out.write(_root_start_tag(root))
    index = 0
    kept = 0
    try:
        with xmlsafe.iterparse(source, events=("end",), tag="iati-activity") as events:
            for _event, element in events:
                parent = element.getparent()
                if parent is None or parent.getparent() is not None:
                    continue  # nested deeper: travels with its enclosing activity
                if index in keep:
                    # Tails are left out: at an "end" event lxml may or may not have parsed the
                    # whitespace after the element yet, and the output must be deterministic.
                    out.write(b"\n")
                    out.write(etree.tostring(element, encoding="utf-8", with_tail=False))
                    kept += 1
                index += 1
                # Drop the finished activity so memory stays at one activity.
                parent.remove(element)
    except (etree.XMLSyntaxError, xmlsafe.UnsafeXMLError) as error:
        return CleanResult("error", error=COULD_NOT_PARSE, reason=str(error))

    if kept == 0:
        return CleanResult(
            "error",
            error=NO_VALID_ACTIVITIES,
            dropped=index,
            reason="no activity at the indices the report marks valid",
        )
    out.write(f"\n</{root.tag}>".encode())
    return CleanResult("rebuilt", kept=kept, dropped=index - kept)


def clean_document(
    source: xmlsafe.XMLSource, report: Mapping[str, Any], out: BinaryIO | None = None
) -> CleanResult:
    """Decide and perform the clean step for one document (path or bytes) given its report.

    ``report`` is a Validator-API-shaped report (see :mod:`ecr_pipelines.iati.validate`); for an
    invalid activities file it must contain the per-activity meta under ``"iati-activities"``,
    otherwise ``ValueError`` is raised (the caller validated without meta).

    With ``out``, a ``copy`` or ``rebuilt`` document is written there and ``data`` stays None;
    after any other action ``out`` may hold a partial document, which the caller drops.
    """
    if out is None:
        buffer = io.BytesIO()
        result = clean_document(source, report, buffer)
        if result.action in ("copy", "rebuilt"):
            return replace(result, data=buffer.getvalue())
        return result

    file_type = report.get("fileType") or ""
    version = report.get("iatiVersion") or ""
    if file_type != ACTIVITIES:
        what = "organisation file" if file_type else "not an IATI activities file (or not parseable)"
        return CleanResult("skip", reason=what)
    if version not in SUPPORTED_VERSIONS:
        return CleanResult("skip", reason=f"unsupported IATI version {version!r}")

    meta = report.get(ACTIVITIES)
    if report.get("valid") is True:
        _copy(source, out)
        return CleanResult("copy", kept=len(meta or []))

    if meta is None:
        raise ValueError("report of an invalid activities file has no per-activity meta")
    keep = frozenset(int(item["index"]) for item in meta if item.get("valid") is True)
    if not keep:
        return CleanResult(
            "error", error=NO_VALID_ACTIVITIES, dropped=len(meta), reason="report marks no activity valid"
        )
    return _rebuild(source, keep, out)
