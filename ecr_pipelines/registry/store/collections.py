"""BDR collections of the undertakings (columns ``bdr_due`` / ``bdr_error`` / ``bdr_synced_at`` of
``registry.undertaking``).

Two passes, as the legacy sync: (1) every company that passed the checks and is due (new, or its
representative changed) gets its BDR folder checked and, when missing, created or bound to its
old collection; (2) collections whose title differs from the company name are renamed.

No BDR call happens inside an open database transaction: the due list is read first, then each
company's call is made and its outcome committed on its own. A crash or a database error half
way therefore never forgets what BDR already did, and the next run's folder check (HEAD) makes a
repeated company a no-op.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ecr_pipelines.registry.clients import BdrEndpointClient, bdr_country

DUE = """
SELECT u.id, u.external_id, u.domain, u.name, u.country_code, u.oldcompany_account,
       u.represent_id IS NULL AND c.type IS NOT DISTINCT FROM 'NONEU_TYPE' AS non_eu
FROM registry.undertaking u
LEFT JOIN registry.address a ON a.id = u.address_id
LEFT JOIN registry.country c ON c.id = a.country_id
WHERE u.bdr_due AND u.check_passed ORDER BY u.id
"""

RECORD = """
UPDATE registry.undertaking SET bdr_due = NOT :ok, bdr_error = :err,
    bdr_synced_at = CASE WHEN :ok THEN now() ELSE bdr_synced_at END
WHERE id = :id
"""


@dataclass
class CollectionsReport:
    due: int = 0
    created: list[tuple[int, str, str]] = field(default_factory=list)  # external id, domain, name
    existing: int = 0
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # external id, domain, reason
    renamed: list[tuple[int, str, str, str, bool]] = field(default_factory=list)  # id, country, old, new, ok
    not_renamed: list[tuple[int, str]] = field(default_factory=list)  # external id, domain (no country)


def _create_or_bind(bdr: BdrEndpointClient, row: sa.Row, report: CollectionsReport) -> tuple[bool, str]:
    folder = row.oldcompany_account or str(row.external_id)
    exists = bdr.folder_exists(row.domain, row.country_code, folder, bool(row.non_eu))
    if exists:
        report.existing += 1
        return True, "folder exists"
    if exists is None:
        return False, "BDR could not tell whether the folder exists"
    country = "NON_EU" if row.non_eu else row.country_code
    # Legacy: the old collection is named only when the company has a (non-empty) account.
    result = bdr.update_company_collection(
        row.external_id, row.domain, country, row.name, row.oldcompany_account or None
    )
    if result.ok:
        report.created.append((row.external_id, row.domain, row.name))
    return result.ok, result.message


def sync_collections(
    engine: Engine, bdr: BdrEndpointClient, progress: Callable[[str], None] | None = None
) -> CollectionsReport:
    """Both passes. A failure to list the collections (``RegistryApiError``) is raised after the
    first pass's outcomes are committed."""
    report = CollectionsReport()
    with engine.connect() as conn:
        due = conn.execute(sa.text(DUE)).all()
    report.due = len(due)
    if progress:
        progress(f"{len(due)} undertakings due for a BDR collection check")
    for row in due:
        ok, message = _create_or_bind(bdr, row, report)
        if not ok:
            report.failed.append((row.external_id, row.domain, message))
        with engine.begin() as conn:
            conn.execute(sa.text(RECORD), {"ok": ok, "err": None if ok else message, "id": row.id})

    if not bdr.enabled:
        return report
    # Legacy rule: titles keyed by company id alone (first one wins), whatever the domain.
    titles: dict[str, str] = {}
    for item in bdr.collections():
        titles.setdefault(str(item.get("company_id")), str(item.get("title") or ""))
    with engine.connect() as conn:
        companies = conn.execute(
            sa.text(
                "SELECT u.external_id, u.domain, u.name, u.country_code, u.oldcompany_account, "
                "u.represent_id IS NULL AND c.type IS NOT DISTINCT FROM 'NONEU_TYPE' AS non_eu "
                "FROM registry.undertaking u LEFT JOIN registry.address a ON a.id = u.address_id "
                "LEFT JOIN registry.country c ON c.id = a.country_id ORDER BY u.id"
            )
        ).all()
    for u in companies:
        title = titles.get(str(u.external_id))
        if title is None or title == u.name:
            continue
        if not u.country_code:
            report.not_renamed.append((u.external_id, u.domain))
            continue
        result = bdr.rename_collection(
            u.country_code, u.domain, u.external_id, u.name, u.oldcompany_account, bool(u.non_eu)
        )
        country = "non_eu" if u.non_eu else bdr_country(u.country_code)
        report.renamed.append((u.external_id, country, title, u.name or "", result.ok))
    return report
