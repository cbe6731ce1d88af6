"""Registry fixtures: the registry schema and the mail outbox emptied, the reference tables loaded."""

from collections.abc import Iterator

import pytest

from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.registry.store.reference import seed_reference_tables
from ecr_pipelines.resources import DatabaseResource

REGISTRY_TABLES = (
    "undertaking_types, undertaking_businessprofile, undertaking_users, undertaking_represent_history, "
    "undertaking_country_history, old_company_link, licence, substance, delivery_licence, undertaking, "
    '"user", represent, address, country, old_company, organization_log, sync_rejection, matching_log, '
    "licence_rejection, mail_address"
)


@pytest.fixture
def registry_db(db: DatabaseResource) -> Iterator[DatabaseResource]:
    with db.begin() as conn:
        tables = ", ".join(f"registry.{t.strip()}" for t in REGISTRY_TABLES.split(","))
        # The outbox too: the registry tests count the mails they queue and send, and the
        # matching_log ids that key those mails restart at 1 with the registry tables.
        conn.exec_driver_sql(f"TRUNCATE {tables}, pipeline.mail_outbox RESTART IDENTITY CASCADE")
        seed_reference_tables(Sql(conn))
    yield db
