"""Local IATI schema validator, replacing the calls to the IATI Validator API.

It checks a document against the bundled IATI XSDs (2.01, 2.02, 2.03; activity or organisation
schema chosen by the root tag and its ``version`` attribute) and returns a report in the Validator
API's JSON shape, so stored reports and downstream decisions (clean, safety check) keep working:

* ``valid`` = no critical error; ``summary`` counts errors per severity;
* critical file-level errors: ``0.1.1`` not well-formed (or unsafe XML), ``0.2.1`` not an IATI
  file, ``0.6.1`` unsupported version (every 1.x file, a missing or unknown ``version``);
* ``0.3.1`` schema errors, one entry per distinct message per activity with every "At line: N";
* the per-activity meta list under the key named after the file type (``"iati-activities"`` /
  ``"iati-organisations"``): ``{identifier, valid, index}``, where each activity is validated alone,
  wrapped in a copy of its root element, as the API does;
* duplicate identifiers are renamed ``ID(2)``, ``ID(3)``… and give one file-level ``1.1.2`` error.

Only the XSD part of the API is reproduced: no codelist, ruleset or advisory checks (those only
ever produced non-critical errors, so ``valid`` and the meta index match the API). The report says
so where the API's own report says which checks ran, so a consumer of API reports does not take
"no errors" for "no ruleset errors":

* ``rulesetCommitSha``, ``codelistCommitSha`` and ``orgIdPrefixFileName`` are ``""``: what the API
  writes when it ran no ruleset, codelist or organisation-identifier check (for a file that is not
  IATI or has an unsupported version), rather than the commit and file it checked against;
* ``apiVersion`` names this validator and the checks it ran (:data:`API_VERSION`);
* ``summary`` has the API's four counts; only ``critical`` can be non-zero, apart from the
  ``1.1.2`` duplicate-identifier error.

The file is streamed: only the root element and the activity being checked are in memory.

Run ``python -m ecr_pipelines.iati.validate FILE`` to print a report.
"""

import argparse
import functools
import json
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from lxml import etree

from ecr_pipelines.lib import xmlsafe

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SUPPORTED_VERSIONS: tuple[str, ...] = ("2.01", "2.02", "2.03")
ACTIVITIES = "iati-activities"
ORGANISATIONS = "iati-organisations"
# Marks reports produced here (the API puts its release number in the same key) and says which
# checks ran, in words a person reading the stored report understands.
API_VERSION = "ecr_pipelines.iati.validate/2: schema only (rulesets, codelists and advisories not run)"
# What the API writes in rulesetCommitSha / codelistCommitSha / orgIdPrefixFileName when those
# checks did not run.
NOT_RUN = ""
FILE_LEVEL_ID = "file"
FILE_LEVEL_TITLE = "File level errors"
NO_IDENTIFIER = "noIdentifier"
SEVERITIES: tuple[str, ...] = ("critical", "error", "warning", "advisory")


@dataclass(frozen=True)
class _FileSpec:
    schema_file: str
    child: str
    identifier: etree.XPath
    title: etree.XPath


_SPECS: dict[str, _FileSpec] = {
    ACTIVITIES: _FileSpec(
        "iati-activities-schema.xsd",
        "iati-activity",
        etree.XPath("string(iati-identifier)"),
        etree.XPath("string(title/narrative)"),
    ),
    ORGANISATIONS: _FileSpec(
        "iati-organisations-schema.xsd",
        "iati-organisation",
        etree.XPath("string(organisation-identifier)"),
        etree.XPath("string(name/narrative)"),
    ),
}


class SchemaError(NamedTuple):
    """One XSD violation: libxml2's message and the source line it points at."""

    message: str
    line: int | None


@functools.cache
def get_schema(file_type: str, version: str) -> etree.XMLSchema:
    """Return the compiled XSD for ``file_type`` (root tag) and ``version`` (compiled once).

    Raises ``ValueError`` for an unknown file type or unsupported version.
    """
    if file_type not in _SPECS:
        raise ValueError(f"unknown IATI file type {file_type!r}")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"unsupported IATI version {version!r}")
    path = SCHEMA_DIR / version / _SPECS[file_type].schema_file
    # The XSDs are our own bundled files, but keep the network off all the same; their
    # include/import of iati-common.xsd and xml.xsd are relative paths next to them.
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    return etree.XMLSchema(etree.parse(str(path), parser))


def schema_errors(
    tree: etree._ElementTree | etree._Element, file_type: str, version: str
) -> list[SchemaError]:
    """Validate an already parsed tree (or root element) against one bundled XSD.

    Pure XSD check: the document's own ``version`` attribute is ignored, which is what the IATI
    schema test files (``version="xx"``) need. Returns an empty list when valid.
    """
    schema = get_schema(file_type, version)
    if schema.validate(tree):
        return []
    return [SchemaError(entry.message, entry.line or None) for entry in schema.error_log]


def _line_context(line: int | None) -> dict[str, str]:
    return {"text": f"At line: {line}" if line else ""}


def _schema_entries(issues: Iterable[SchemaError], identifier: str, title: str) -> list[dict[str, Any]]:
    # The API reports one 0.3.1 error per distinct message, listing every line it occurs on.
    grouped: dict[str, dict[str, Any]] = {}
    for issue in issues:
        entry = grouped.get(issue.message)
        if entry is None:
            grouped[issue.message] = {
                "id": "0.3.1",
                "category": "schema",
                "severity": "critical",
                "message": issue.message,
                "context": [_line_context(issue.line)],
                "identifier": identifier,
                "title": title,
            }
        else:
            entry["context"].append(_line_context(issue.line))
    return list(grouped.values())


def _file_error(error_id: str, category: str, message: str, context: str = "") -> dict[str, Any]:
    return {
        "id": error_id,
        "category": category,
        "severity": "critical",
        "message": message,
        "context": [{"text": context}],
        "identifier": FILE_LEVEL_ID,
        "title": FILE_LEVEL_TITLE,
    }


def _group_errors(flat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Same nesting as the API with group=true: identifier -> category -> errors,
    # each level in order of first appearance.
    by_identifier: dict[str, dict[str, Any]] = {}
    for error in flat:
        group = by_identifier.setdefault(
            error["identifier"],
            {"identifier": error["identifier"], "title": error["title"], "categories": {}},
        )
        inner = {key: value for key, value in error.items() if key not in ("identifier", "title", "category")}
        group["categories"].setdefault(error["category"], []).append(inner)
    return [
        {
            "identifier": group["identifier"],
            "title": group["title"],
            "errors": [
                {"category": category, "errors": errors} for category, errors in group["categories"].items()
            ],
        }
        for group in by_identifier.values()
    ]


def _report(
    file_type: str,
    version: str,
    flat_errors: list[dict[str, Any]],
    meta: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    summary = dict.fromkeys(SEVERITIES, 0)
    for error in flat_errors:
        summary[error["severity"]] = summary.get(error["severity"], 0) + 1
    # Same keys, in the same order, as the API's report.
    report: dict[str, Any] = {
        "valid": summary["critical"] == 0,
        "fileType": file_type,
        "iatiVersion": version,
        "rulesetCommitSha": NOT_RUN,
        "codelistCommitSha": NOT_RUN,
        "orgIdPrefixFileName": NOT_RUN,
        "apiVersion": API_VERSION,
        "summary": summary,
    }
    if meta is not None:
        report[file_type] = meta
    report["errors"] = _group_errors(flat_errors)
    return report


def rulesets_ran(report: Mapping[str, Any]) -> bool:
    """Whether a stored report (the API's or ours) includes the ruleset and codelist checks.

    The API names the ruleset and codelist commits it checked against and leaves them empty when
    it ran neither; reports made here always leave them empty.
    """
    return bool(report.get("rulesetCommitSha")) and bool(report.get("codelistCommitSha"))


def _not_well_formed(error: etree.XMLSyntaxError | xmlsafe.UnsafeXMLError) -> dict[str, Any]:
    if isinstance(error, xmlsafe.UnsafeXMLError):
        return _report("", "", [_file_error("0.1.1", "iati", f"Unsafe XML rejected: {error}")])
    line = error.lineno or None
    message = xmlsafe.syntax_error_message(error)
    return _report("", "", [_file_error("0.1.1", "iati", message, _line_context(line)["text"])])


def _validate_elements(source: xmlsafe.XMLSource, file_type: str, version: str) -> dict[str, Any]:
    spec = _SPECS[file_type]
    schema_flat: list[dict[str, Any]] = []
    meta: list[dict[str, Any]] = []
    seen: Counter[str] = Counter()
    duplicates: list[str] = []
    with xmlsafe.iterparse(source, events=("end",), tag=spec.child) as events:
        for _event, element in events:
            parent = element.getparent()
            if parent is None or parent.getparent() is not None:
                # Not a direct child of the root: it is checked as part of its ancestor.
                continue
            raw_identifier = spec.identifier(element) or NO_IDENTIFIER
            title = spec.title(element)
            seen[raw_identifier] += 1
            identifier = raw_identifier
            if seen[raw_identifier] > 1:
                duplicates.append(raw_identifier)
                identifier = f"{raw_identifier}({seen[raw_identifier]})"

            # Moving (not copying) the element into a wrapper detaches it from the streamed
            # tree, so memory stays at one element; libxml2 keeps the original line numbers.
            wrapper = etree.Element(parent.tag, attrib=dict(parent.attrib), nsmap=parent.nsmap)
            wrapper.append(element)
            entries = _schema_entries(schema_errors(wrapper, file_type, version), identifier, title)
            schema_flat.extend(entries)
            meta.append({"identifier": identifier, "valid": not entries, "index": len(meta)})
        root = events.root

    if not meta and root is not None:
        # No activity at all: like the API, validate the whole (small, activity-less) document.
        schema_flat.extend(
            _schema_entries(schema_errors(root, file_type, version), FILE_LEVEL_ID, FILE_LEVEL_TITLE)
        )

    flat = schema_flat
    if duplicates:
        kind = "activity" if file_type == ACTIVITIES else "organisation"
        identifier_tag = "iati-identifier" if file_type == ACTIVITIES else "organisation-identifier"
        flat.append(
            {
                "id": "1.1.2",
                "category": "identifiers",
                "severity": "error",
                "message": f"The {kind} identifier must be unique for each {kind}.",
                "context": [
                    {"text": f"Duplicate found for {identifier_tag} = '{value}'"} for value in duplicates
                ],
                "identifier": FILE_LEVEL_ID,
                "title": FILE_LEVEL_TITLE,
            }
        )
    return _report(file_type, version, flat, meta)


def validate_file(source: xmlsafe.XMLSource) -> dict[str, Any]:
    """Validate an IATI file (path or bytes) and return a Validator-API-shaped report dict.

    Precedence follows the API: not well-formed (0.1.1) before not IATI (0.2.1) before
    unsupported version (0.6.1) before schema errors (0.3.1). Never raises for bad input.
    """
    try:
        root = xmlsafe.read_root(source)
    except (etree.XMLSyntaxError, xmlsafe.UnsafeXMLError) as error:
        return _not_well_formed(error)

    file_type = root.tag if root.tag in _SPECS else ""
    version = (root.version or "") if file_type else ""
    if not file_type or version not in SUPPORTED_VERSIONS:
        # Nothing to validate further, but a broken file must still say "not well-formed".
        try:
            xmlsafe.check_well_formed(source)
        except (etree.XMLSyntaxError, xmlsafe.UnsafeXMLError) as error:
            return _not_well_formed(error)
        if not file_type:
            return _report("", "", [_file_error("0.2.1", "iati", "The file is not an IATI file.")])
        message = (
            f"Version {version} of the IATI Standard is no longer supported. "
            f"Supported versions: {', '.join(SUPPORTED_VERSIONS)}"
        )
        return _report(file_type, version, [_file_error("0.6.1", "documents", message)])

    try:
        return _validate_elements(source, file_type, version)
    except (etree.XMLSyntaxError, xmlsafe.UnsafeXMLError) as error:
        return _not_well_formed(error)


def main(argv: list[str] | None = None) -> int:
    """CLI: print the report of one file as JSON; exit 0 if valid, 1 if not."""
    parser = argparse.ArgumentParser(description="Validate an IATI XML file against the bundled XSDs.")
    parser.add_argument("file", type=Path, help="IATI activity or organisation XML file")
    parser.add_argument("--compact", action="store_true", help="print JSON on one line")
    args = parser.parse_args(argv)
    report = validate_file(args.file)
    json.dump(report, sys.stdout, indent=None if args.compact else 2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0 if report["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
