"""Old companies of the legacy BDR registry (table ``registry.old_company``): the matching's pool."""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.clients import BdrRegistryClient
from ecr_pipelines.registry.parse import OldCompany, RecordRejected, parse_old_company


@dataclass
class OldCompanyReport:
    obligation: str
    fetched: int = 0
    upserted: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    unknown_fields: dict[str, list[str]] = field(default_factory=dict)  # field → BDR pks


def sync_old_companies(sql: Sql, obligation: str, raws: Sequence[Any]) -> OldCompanyReport:
    """Upsert BDR old companies by (BDR pk, obligation); the operator's ``valid`` flag is kept."""
    report = OldCompanyReport(obligation, fetched=len(raws))
    parsed: dict[int, OldCompany] = {}
    for raw in raws:
        try:
            company = parse_old_company(raw, obligation)
        except RecordRejected as exc:
            report.rejected.append((str(raw.get("pk") if isinstance(raw, Mapping) else "?"), exc.reason))
            continue
        parsed[company.external_id] = company
        for path in company.unknown_fields:
            report.unknown_fields.setdefault(path, []).append(str(company.external_id))
    sql.values(
        """
        INSERT INTO registry.old_company (external_id, name, country_code, account, vat_number, eori, active,
            website, date_registered, obligation)
        VALUES %s
        ON CONFLICT (external_id, obligation) DO UPDATE SET name = EXCLUDED.name,
            country_code = EXCLUDED.country_code, account = EXCLUDED.account, vat_number = EXCLUDED.vat_number,
            eori = EXCLUDED.eori, active = EXCLUDED.active, website = EXCLUDED.website,
            date_registered = EXCLUDED.date_registered
        """,
        [
            (
                c.external_id,
                c.name,
                c.country_code,
                c.account,
                c.vat_number,
                c.eori,
                c.active,
                c.website,
                c.date_registered,
                c.obligation,
            )
            for c in parsed.values()
        ],
    )
    report.upserted = len(parsed)
    return report


def sync_all_old_companies(
    sql: Sql, client: BdrRegistryClient, obligations: Iterable[str]
) -> list[OldCompanyReport]:
    """Fetch and upsert every obligation's list, in the caller's transaction: a failing list
    (``RegistryApiError``) leaves the table as it was rather than half refreshed."""
    return [
        sync_old_companies(sql, obligation, client.old_companies(obligation)) for obligation in obligations
    ]
