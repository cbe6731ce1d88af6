"""GBIF Darwin Core Archive extension definitions: the terms a DwC-A file may hold.

An extension definition (the schema at rs.gbif.org/schema/extension.xsd) is an ``<extension>``
root with a ``name`` (``Occurrence``, ``MeasurementOrFact``, ``Multimedia``) and a ``rowType``,
holding one ``<property>`` per term: its ``name``, ``qualName`` and ``required``. The legacy
ckanpackager read these files to map CKAN fields onto terms; so does this module.

The definitions the packager ships with live in ``gbif/`` beside this module (see its
``SOURCES.md``) and are read with importlib.resources, so an installed package needs nothing
outside itself. A deployment may name other definition files by path.

Parsing is done with lxml without resolving entities, loading DTDs or touching the network:
a definition file is configuration, but nothing read at run time should be able to make the
packager fetch URLs or expand entity bombs.
"""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from lxml import etree

BUNDLED_PACKAGE = "ecr_pipelines.ckan"
BUNDLED_FOLDER = "gbif"
CORE_OCCURRENCE = "dwc_occurrence.xml"
MEASUREMENTS_OR_FACTS = "measurements_or_facts.xml"
MULTIMEDIA = "multimedia.xml"
MAX_DEFINITION_BYTES = 8 * 1024 * 1024  # the largest GBIF definition is well under 1 MiB


class ExtensionError(ValueError):
    """An extension definition that cannot be found or read."""


@dataclass(frozen=True)
class Term:
    name: str
    qual_name: str
    required: bool = False


@dataclass(frozen=True)
class Extension:
    """One extension definition; ``source`` says where it came from (for messages only)."""

    name: str
    row_type: str
    terms: tuple[Term, ...]
    source: str = field(default="", compare=False)
    _by_name: dict[str, Term] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Term] = {}
        for term in self.terms:
            by_name.setdefault(term.name, term)  # a repeated term: the first one counts
        object.__setattr__(self, "_by_name", by_name)

    def term(self, name: str) -> Term | None:
        return self._by_name.get(name)

    @property
    def term_names(self) -> list[str]:
        return [t.name for t in self.terms]

    @property
    def file_name(self) -> str:
        """The CSV of this extension in an archive: ``MeasurementOrFact`` → ``measurement_or_fact.csv``."""
        return f"{uncamel(self.name)}.csv"


def uncamel(name: str) -> str:
    """``MeasurementOrFact`` → ``measurement_or_fact``, as the legacy named its files: a word is a
    run of capitals and the lower-case run after it (``DNADerived`` stays one word). Anything
    that could make a path inside the ZIP (a definition names itself ``../x``) becomes ``_``."""
    words = re.findall(r"[A-Z]*[^A-Z]+|[A-Z]+$", name)
    text = "_".join(w.lower() for w in words) or "extension"
    return re.sub(r"[^a-z0-9_-]", "_", text)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_extension(data: bytes, source: str = "<bytes>") -> Extension:
    """The extension defined by the XML ``data``; ``source`` names it in errors."""
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise ExtensionError(f"{source}: not a well-formed extension definition: {exc}") from None
    name = root.get("name")
    row_type = root.get("rowType")
    if not name or not row_type:
        raise ExtensionError(f"{source}: the root element has no name or no rowType attribute")
    # Properties are in the document's default namespace (rs.gbif.org/extension/), if it has one.
    namespace = root.nsmap.get(None)
    tag = f"{{{namespace}}}property" if namespace else "property"
    terms = []
    for prop in root.findall(tag):
        term_name = prop.get("name")
        qual_name = prop.get("qualName")
        if not term_name or not qual_name:
            raise ExtensionError(f"{source}: a property of {name} has no name or no qualName")
        terms.append(Term(term_name, qual_name, prop.get("required") == "true"))
    if not terms:
        raise ExtensionError(f"{source}: extension {name} defines no terms")
    return Extension(name=name, row_type=row_type, terms=tuple(terms), source=source)


def bundled_names() -> list[str]:
    """The definition files shipped with the package."""
    folder = resources.files(BUNDLED_PACKAGE).joinpath(BUNDLED_FOLDER)
    return sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".xml"))


@lru_cache(maxsize=32)
def bundled_extension(name: str) -> Extension:
    """A definition shipped with the package, by file name (``dwc_occurrence.xml``)."""
    if name not in bundled_names():
        raise ExtensionError(
            f"no bundled extension definition {name!r} (bundled: {', '.join(bundled_names())})"
        )
    data = resources.files(BUNDLED_PACKAGE).joinpath(BUNDLED_FOLDER, name).read_bytes()
    return parse_extension(data, name)


def load_extension(ref: str, base: Path | None = None) -> Extension:
    """A bundled definition by its bare file name, else the definition file at the path ``ref``
    (relative to ``base``, the folder of the configuration that names it)."""
    if "/" not in ref and "\\" not in ref and ref in bundled_names():
        return bundled_extension(ref)
    path = Path(ref).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_DEFINITION_BYTES + 1)
    except OSError as exc:
        raise ExtensionError(
            f"extension definition {ref!r}: cannot read {path} ({exc.strerror or exc}); "
            f"bundled definitions: {', '.join(bundled_names())}"
        ) from None
    if len(data) > MAX_DEFINITION_BYTES:
        raise ExtensionError(f"{path}: larger than {MAX_DEFINITION_BYTES} bytes, not an extension definition")
    return parse_extension(data, str(path))


class ExtensionSet:
    """The core extension and the additional ones, in order (the first is the core), with the
    term → extension lookup the legacy used: the first extension defining a term wins, so a term
    that an additional extension repeats stays in the core."""

    def __init__(self, extensions: Iterable[Extension]) -> None:
        self.extensions = tuple(extensions)
        if not self.extensions:
            raise ExtensionError("at least the core extension is needed")
        self._terms: dict[str, tuple[Extension, Term]] = {}
        for extension in self.extensions:
            for term in extension.terms:
                self._terms.setdefault(term.name, (extension, term))

    @property
    def core(self) -> Extension:
        return self.extensions[0]

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.extensions]

    def is_core(self, extension: Extension) -> bool:
        return extension.name == self.core.name

    def lookup(self, term: str) -> tuple[Extension, Term] | None:
        return self._terms.get(term)

    def __contains__(self, term: object) -> bool:
        return term in self._terms

    def __repr__(self) -> str:
        return f"ExtensionSet({self.names!r})"
