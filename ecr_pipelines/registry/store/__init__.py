"""Writing registry records into Postgres (schema ``registry``), one module per table family.

* ``reference``: types, business profiles, conversion tables (bundled fixtures);
* ``undertakings``: F-gas / ODS undertakings and everything hanging off them;
* ``old_companies``: the legacy BDR registry's companies (the matching's pool);
* ``collections``: the undertakings' BDR collections (create / bind / rename);
* ``licences``: ODS single-year licences, deliveries and aggregated substances.

The names below stay importable from ``ecr_pipelines.registry.store`` (benchmarks and older
callers use them).
"""

from ecr_pipelines.registry.patches import Patches
from ecr_pipelines.registry.store.collections import CollectionsReport, sync_collections
from ecr_pipelines.registry.store.licences import (
    LicenceReport,
    LicenceYear,
    fetch_licences,
    store_licences,
    sync_licences,
)
from ecr_pipelines.registry.store.old_companies import (
    OldCompanyReport,
    sync_all_old_companies,
    sync_old_companies,
)
from ecr_pipelines.registry.store.reference import seed_reference_tables
from ecr_pipelines.registry.store.undertakings import (
    BATCH_SIZE,
    DomainSync,
    SyncReport,
    SyncRequest,
    UndertakingSync,
    content_hash,
    last_date_updated,
    parse_window_date,
    sync_domain,
)

__all__ = [
    "BATCH_SIZE",
    "CollectionsReport",
    "DomainSync",
    "LicenceReport",
    "LicenceYear",
    "OldCompanyReport",
    "Patches",
    "SyncReport",
    "SyncRequest",
    "UndertakingSync",
    "content_hash",
    "fetch_licences",
    "last_date_updated",
    "parse_window_date",
    "seed_reference_tables",
    "store_licences",
    "sync_all_old_companies",
    "sync_collections",
    "sync_domain",
    "sync_licences",
    "sync_old_companies",
]
