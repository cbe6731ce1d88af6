"""Companies House accounts (``companies_house.accounts_legacy``): the daily
``Accounts_Bulk_Data-YYYY-MM-DD.zip`` as downloaded, one XBRL (``.xml``) or inline XBRL
(``.html``, XHTML) document per filing, named ``Prod<n>_<n>_<company id>_<YYYYMMDD>.<ext>``.

Rows: one per distinct reporting period (a context's instant, or its start and end dates) that
carries at least one of the period figures below; a document without any gets one row with
empty periods. The filing's general facts (balance sheet date, number, name, dormancy,
employees) repeat on each of its rows. Documents are parsed one at a time, so memory follows
the largest document, not the archive.

Which facts fill which column: the notes only name the 37 columns; the concepts are those the
legacy looked for, kept as they were so that its test data gives the same rows (including its
quirks: ``tangible_fixed_assets`` tries ``FixedAssets`` first, and the UK GAAP names
``CreditorsDueWithinOneYearTotalCurrentLiabilities``/``..AfterOneYearTotalNoncurrentLiabilities``
are not among the creditors' concepts). A concept matches an XBRL element of that local name
(UK GAAP ``pt:``/``ae:``/``gc:`` instance documents) or an inline fact whose ``name`` has that
local part (FRS 102/105 ``core:``/``bus:`` iXBRL), whatever the prefix. Per column the concepts
are tried in order; within one, the first fact in document order with a value wins. Where the
legacy recognised a figure from the context id (``Creditors`` of a context id containing
``WithinOneYear``, ``Equity`` of ``ShareCapital``/``RetainedEarningsAccumulatedLosses``), the
context's dimension members are accepted too, as taxonomies define them.

Values, decided here where the legacy was loose: numbers honour iXBRL's ``scale`` and ``sign``
and its number formats (``numcommadecimal`` = European decimals, ``zerodash``/``fixed-zero`` = 0,
thousands separators dropped, a leading label such as ``2019: 1`` ignored), computed exactly
(Decimal) and written plainly; text is the element's text without ``ix:exclude`` parts, spaces
collapsed; booleans are ``true``/``false`` (iXBRL ``booleantrue``/``booleanfalse`` formats
included); dates are ISO, day first unless the format says month first (``..us``,
``..monthday..``). A value that does not parse is left empty. ``taxonomy`` lists, ``;``-joined
and sorted, the three taxonomy namespaces the legacy recognised that the root declares.

Safety: every document goes through the project's hardened parser (``lib.xmlsafe``: no DTD, no
entities, no network, libxml2's size limits kept), so an entity-expansion or XXE document is
refused before its body is read. A document that is not well-formed, refused, too large, or
misnamed is skipped and counted (``bad_xml``, ``unsafe_xml``, ``too_large``,
``bad_member_name``, ``bad_archive``); the rest of the archive loads.
"""

import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, BinaryIO

from dateutil import parser as dateparser
from lxml import etree

from ecr_pipelines.datastore.sources._files import ARCHIVE_ERRORS, Where, data_members, open_zip
from ecr_pipelines.datastore.sources.spec import Column, FileRows, Row, SourceSpec, blob_prefix
from ecr_pipelines.lib import xmlsafe

MEMBER_NAME = re.compile(
    r"(?P<run_code>Prod\d+_\d+)_(?P<company_id>[^_]+)_(?P<date>\d{8})\.(?P<file_type>html|xml)"
)
# Filings are tens of kB; libxml2's own limits stop hostile ones, this stops huge members early.
MAX_DOCUMENT_BYTES = 64 << 20
KNOWN_TAXONOMIES = (
    "http://www.xbrl.org/uk/fr/gaap/pt/2004-12-01",
    "http://www.xbrl.org/uk/gaap/core/2009-09-01",
    "http://xbrl.frc.org.uk/fr/2014-09-01/core",
)
IX_NAMESPACES = frozenset({"http://www.xbrl.org/2008/inlineXBRL", "http://www.xbrl.org/2013/inlineXBRL"})
XSI_NIL = "{http://www.w3.org/2001/XMLSchema-instance}nil"
ZERO_FORMATS = frozenset({"zerodash", "fixedzero", "fixed-zero", "numdash"})
COMMA_DECIMAL_FORMATS = frozenset({"numcommadecimal", "numspacecomma", "numdotcomma", "numcomma"})
_LABEL = re.compile(r"^.*:\s*")
MAX_SCALE = 30
MAX_DIGITS = 40


@dataclass(frozen=True)
class Concept:
    """A fact to look for: ``context_has`` needs that token in the context id or among its
    dimension members; ``dimensionless`` a context without dimensions; ``negated`` flips a
    boolean (``CompanyNotDormant``)."""

    name: str
    context_has: str | None = None
    dimensionless: bool = False
    negated: bool = False


GENERAL: tuple[tuple[str, str, tuple[Concept, ...]], ...] = (
    ("balance_sheet_date", "date", (Concept("BalanceSheetDate"),)),
    (
        "companies_house_registered_number",
        "text",
        (Concept("UKCompaniesHouseRegisteredNumber"), Concept("CompaniesHouseRegisteredNumber")),
    ),
    (
        "entity_current_legal_name",
        "text",
        (Concept("EntityCurrentLegalOrRegisteredName"), Concept("EntityCurrentLegalName")),
    ),
    (
        "company_dormant",
        "bool",
        (
            Concept("EntityDormantTruefalse"),
            Concept("EntityDormant"),
            Concept("CompanyDormant"),
            Concept("CompanyNotDormant", negated=True),
        ),
    ),
    (
        "average_number_employees_during_period",
        "number",
        (Concept("AverageNumberEmployeesDuringPeriod"), Concept("EmployeesTotal")),
    ),
)


def _concepts(*names: str) -> tuple[Concept, ...]:
    return tuple(Concept(name) for name in names)


PERIODICAL: tuple[tuple[str, tuple[Concept, ...]], ...] = (
    # balance sheet
    ("tangible_fixed_assets", _concepts("FixedAssets", "TangibleFixedAssets", "PropertyPlantEquipment")),
    ("debtors", _concepts("Debtors")),
    ("cash_bank_in_hand", _concepts("CashBankInHand", "CashBankOnHand")),
    ("current_assets", _concepts("CurrentAssets")),
    (
        "creditors_due_within_one_year",
        (Concept("CreditorsDueWithinOneYear"), Concept("Creditors", context_has="WithinOneYear")),
    ),
    (
        "creditors_due_after_one_year",
        (Concept("CreditorsDueAfterOneYear"), Concept("Creditors", context_has="AfterOneYear")),
    ),
    ("net_current_assets_liabilities", _concepts("NetCurrentAssetsLiabilities")),
    ("total_assets_less_current_liabilities", _concepts("TotalAssetsLessCurrentLiabilities")),
    (
        "net_assets_liabilities_including_pension_asset_liability",
        _concepts("NetAssetsLiabilitiesIncludingPensionAssetLiability", "NetAssetsLiabilities"),
    ),
    (
        "called_up_share_capital",
        (Concept("CalledUpShareCapital"), Concept("Equity", context_has="ShareCapital")),
    ),
    (
        "profit_loss_account_reserve",
        (
            Concept("ProfitLossAccountReserve"),
            Concept("Equity", context_has="RetainedEarningsAccumulatedLosses"),
        ),
    ),
    ("shareholder_funds", (Concept("ShareholderFunds"), Concept("Equity", dimensionless=True))),
    # income statement
    ("turnover_gross_operating_revenue", _concepts("TurnoverGrossOperatingRevenue", "TurnoverRevenue")),
    ("other_operating_income", _concepts("OtherOperatingIncome", "OtherOperatingIncomeFormat2")),
    ("cost_sales", _concepts("CostSales")),
    ("gross_profit_loss", _concepts("GrossProfitLoss")),
    ("administrative_expenses", _concepts("AdministrativeExpenses")),
    ("raw_materials_consumables", _concepts("RawMaterialsConsumables", "RawMaterialsConsumablesUsed")),
    ("staff_costs", _concepts("StaffCosts", "StaffCostsEmployeeBenefitsExpense")),
    (
        "depreciation_other_amounts_written_off_tangible_intangible_fixed_assets",
        _concepts(
            "DepreciationOtherAmountsWrittenOffTangibleIntangibleFixedAssets",
            "DepreciationAmortisationImpairmentExpense",
        ),
    ),
    (
        "other_operating_charges_format2",
        _concepts("OtherOperatingChargesFormat2", "OtherOperatingExpensesFormat2"),
    ),
    ("operating_profit_loss", _concepts("OperatingProfitLoss")),
    ("profit_loss_on_ordinary_activities_before_tax", _concepts("ProfitLossOnOrdinaryActivitiesBeforeTax")),
    (
        "tax_on_profit_or_loss_on_ordinary_activities",
        _concepts("TaxOnProfitOrLossOnOrdinaryActivities", "TaxTaxCreditOnProfitOrLossOnOrdinaryActivities"),
    ),
    ("profit_loss_for_period", _concepts("ProfitLoss", "ProfitLossForPeriod")),
)

_GENERAL_TYPES = {"date": "date", "text": "text", "bool": "boolean", "number": "numeric"}
COLUMNS = (
    (
        Column("run_code"),
        Column("company_id"),
        Column("date", "date"),
        Column("file_type"),
        Column("taxonomy"),
        Column("period_start", "date"),
        Column("period_end", "date"),
    )
    + tuple(Column(name, _GENERAL_TYPES[kind]) for name, kind, _ in GENERAL)
    + tuple(Column(name, "numeric") for name, _ in PERIODICAL)
)


@dataclass(frozen=True)
class Context:
    period: tuple[str, str] | None
    members: frozenset[str]
    dimensional: bool


class Document:
    """One parsed filing: its facts by concept name (document order) and its contexts."""

    def __init__(self, tree: Any) -> None:
        self.root = tree.getroot()
        self.facts: dict[str, list[Any]] = {}
        self.contexts: dict[str, Context] = {}
        for element in self.root.iter():
            if not isinstance(element.tag, str):
                continue
            local = _local(element.tag)
            names = {local}
            attribute = element.get("name")
            if attribute and ":" in attribute:
                names.add(attribute.rsplit(":", 1)[1])
            for name in names:
                self.facts.setdefault(name, []).append(element)
            if local == "context" and element.get("id"):
                self.contexts[element.get("id")] = _context(element)

    def taxonomy(self) -> str:
        declared = set(self.root.nsmap.values())
        return ";".join(sorted(uri for uri in KNOWN_TAXONOMIES if uri in declared))

    def matching(self, concept: Concept) -> Iterator[tuple[Any, Context | None]]:
        for fact in self.facts.get(concept.name, ()):
            context_id = fact.get("contextRef") or ""
            context = self.contexts.get(context_id)
            if concept.context_has is not None and not (
                concept.context_has in context_id
                or (context is not None and concept.context_has in context.members)
            ):
                continue
            if concept.dimensionless and (
                "segment" in context_id or (context is not None and context.dimensional)
            ):
                continue
            yield fact, context


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _context(element: Any) -> Context:
    members: set[str] = set()
    dimensional = False
    period: tuple[str, str] | None = None
    for child in element.iter():
        if not isinstance(child.tag, str):
            continue
        local = _local(child.tag)
        if local in {"segment", "scenario"}:
            dimensional = True
        elif local == "explicitMember" and child.text:
            members.add(child.text.strip().rsplit(":", 1)[-1])
        elif local == "period":
            period = _period(child)
    return Context(period=period, members=frozenset(members), dimensional=dimensional)


def _period(element: Any) -> tuple[str, str] | None:
    values = {_local(child.tag): _xbrl_date(child.text) for child in element if isinstance(child.tag, str)}
    if values.get("instant"):
        return values["instant"], values["instant"]  # type: ignore[return-value]
    if values.get("startDate") and values.get("endDate"):
        return values["startDate"], values["endDate"]  # type: ignore[return-value]
    return None  # "forever", or incomplete


def _xbrl_date(text: str | None) -> str | None:
    # xs:date or xs:dateTime, maybe with a zone: only the day goes to the date column, and a
    # value that is no date leaves the context without period (COPY would fail the whole file).
    value = (text or "").strip()[:10]
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        return None


def _format(fact: Any) -> str:
    return (fact.get("format") or "").rpartition(":")[2].lower()


def fact_text(element: Any) -> str:
    """The text of a fact, without its ``ix:exclude`` parts, comments or processing instructions."""
    parts = [element.text or ""]
    for child in element:
        if isinstance(child.tag, str) and not (
            _local(child.tag) == "exclude" and etree.QName(child).namespace in IX_NAMESPACES
        ):
            parts.append(fact_text(child))
        parts.append(child.tail or "")
    return " ".join("".join(parts).split())


def number_value(fact: Any) -> str | None:
    if fact.get(XSI_NIL) == "true":
        return None
    text = fact_text(fact)
    fmt = _format(fact)
    if fmt in ZERO_FORMATS:
        value = Decimal(0)
    else:
        text = _LABEL.sub("", text)
        if fmt in COMMA_DECIMAL_FORMATS:
            text = text.replace(".", "").replace(" ", "").replace(",", ".")
        else:
            text = text.replace(",", "").replace(" ", "")
        try:
            value = Decimal(text)
        except InvalidOperation:
            return None
        if not value.is_finite():
            return None
    try:
        scale = int(fact.get("scale") or 0)
    except ValueError:
        return None
    # Real scales are -6..9; a hostile one would make a number of a million digits.
    if abs(scale) > MAX_SCALE or abs(value.adjusted()) > MAX_DIGITS:
        return None
    value = value.scaleb(scale)
    if fact.get("sign") == "-":
        value = -value
    return format(value, "f")


def text_value(fact: Any) -> str | None:
    return fact_text(fact) or None


def bool_value(fact: Any, negated: bool = False) -> str | None:
    fmt = _format(fact)
    if fmt == "booleantrue":
        value: bool | None = True
    elif fmt == "booleanfalse":
        value = False
    else:
        value = {"true": True, "false": False}.get(fact_text(fact).lower())
    if value is None:
        return None
    return "true" if value != negated else "false"


def date_value(fact: Any) -> str | None:
    text = fact_text(fact)
    if not text:
        return None
    fmt = _format(fact)
    month_first = "monthday" in fmt or fmt.endswith("us")
    try:
        return dateparser.parse(text, dayfirst=not month_first).date().isoformat()
    except (ValueError, OverflowError):
        return None


def _value(kind: str, fact: Any, concept: Concept) -> str | None:
    if kind == "bool":
        return bool_value(fact, concept.negated)
    return {"date": date_value, "text": text_value, "number": number_value}[kind](fact)


def _first_value(document: Document, kind: str, concepts: tuple[Concept, ...]) -> str | None:
    for concept in concepts:
        for fact, _context in document.matching(concept):
            value = _value(kind, fact, concept)
            if value is not None:
                return value
    return None


def document_rows(
    document: Document, run_code: str, company_id: str, filing_date: str, file_type: str
) -> list[Row]:
    general = [_first_value(document, kind, concepts) for _column, kind, concepts in GENERAL]

    # A period gets its row from the first fact met for it, even one without a value (as the
    # legacy); a later fact of the same column fills only what is still empty.
    by_period: dict[tuple[str | None, str | None], dict[str, str | None]] = {}
    for column, concepts in PERIODICAL:
        for concept in concepts:
            for fact, context in document.matching(concept):
                if context is None or context.period is None:
                    continue
                values = by_period.setdefault(context.period, {})
                if values.get(column) is None:
                    values[column] = number_value(fact)
    if not by_period:
        by_period[(None, None)] = {}

    base = (run_code, company_id, filing_date, file_type, document.taxonomy())
    return [
        (*base, start, end, *general, *(values.get(column) for column, _ in PERIODICAL))
        for (start, end), values in by_period.items()
    ]


def parse_member_name(name: str) -> tuple[str, str, str, str] | None:
    """``Prod223_2798_12345_20200331.html`` → run code, company id, ISO date, file type."""
    match = MEMBER_NAME.fullmatch(name.rsplit("/", 1)[-1])
    if match is None:
        return None
    try:
        day = datetime.strptime(match["date"], "%Y%m%d").date().isoformat()
    except ValueError:
        return None
    return match["run_code"], match["company_id"], day, match["file_type"]


def read_accounts(stream: BinaryIO, file_name: str) -> FileRows:
    archive = open_zip(stream, Where(file_name))
    result = FileRows(rows=iter(()))
    result.rows = _rows(archive, file_name, result)
    return result


def _rows(archive: zipfile.ZipFile, file_name: str, result: FileRows) -> Iterator[Row]:
    with archive:
        for info in data_members(archive):
            where = Where(file_name, info.filename)
            names = parse_member_name(info.filename)
            if names is None:
                result.skip(
                    where.problem("bad_member_name", "not Prod<n>_<n>_<company>_<YYYYMMDD>.(html|xml)")
                )
                continue
            if info.file_size > MAX_DOCUMENT_BYTES:
                result.skip(
                    where.problem("too_large", f"{info.file_size} bytes, at most {MAX_DOCUMENT_BYTES}")
                )
                continue
            try:
                data = archive.read(info)
            except (*ARCHIVE_ERRORS, OSError) as error:
                result.skip(where.problem("bad_archive", f"cannot be extracted ({error})"))
                continue
            try:
                document = Document(xmlsafe.parse(data))
            except xmlsafe.UnsafeXMLError as error:
                result.skip(where.problem("unsafe_xml", f"refused: {error}"))
                continue
            except etree.XMLSyntaxError as error:
                result.skip(where.problem("bad_xml", xmlsafe.syntax_error_message(error), error.lineno))
                continue
            yield from document_rows(document, *names)


SPECS = (
    SourceSpec(
        id="companies_house.accounts_legacy",
        group="companies_house.accounts_legacy",
        loading="incremental",
        schema="companies_house.accounts_legacy",
        columns=COLUMNS,
        reader=read_accounts,
        blob_prefix=blob_prefix("companies_house", "accounts_legacy"),
        dataflow_table="L0",
        description="Companies House bulk accounts (XBRL and inline XBRL filings)",
    ),
)
