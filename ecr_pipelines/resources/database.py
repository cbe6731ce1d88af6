"""The ``database`` resource (Dagster side of ``ecr_pipelines.lib.database``)."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from pydantic import PrivateAttr
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.lib.database import engine_for


class DatabaseResource(dg.ConfigurableResource):
    """Postgres for the application tables (schemas ``registry``, ``iati``, ``ckan``, ``datastore``,
    ``energy``).

    ``url`` comes from ``DATABASE_URL``; empty means the embedded server. On first use in a run
    the schema version is compared with the migrations shipped with the code, and the run is
    refused with the command to fix it when they differ.
    """

    url: str | None = None
    check_schema_version: bool = True

    _verified: bool = PrivateAttr(default=False)

    @property
    def engine(self) -> Engine:
        engine = engine_for(self.url)
        if self.check_schema_version and not self._verified:
            from ecr_pipelines.lib.migrations import assert_schema_current

            assert_schema_current(engine)
            self._verified = True
        return engine

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection inside one transaction, committed on success, rolled back on error."""
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn
