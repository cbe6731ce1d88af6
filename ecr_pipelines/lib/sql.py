"""Set-based SQL helpers on a SQLAlchemy connection, with a statement counter.

Stages write thousands of rows per batch; one round trip per row is what made the legacy
services slow. ``Sql.values`` sends many rows in one ``INSERT ... VALUES`` (psycopg2's
``execute_values``), ``Sql.batch`` groups UPDATE/DELETE statements into few round trips, and
``statements`` counts what reached the server, for benchmarks and run metadata.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from psycopg2.extras import execute_batch, execute_values
from sqlalchemy.engine import Connection


class Sql:
    """A connection plus counters; all statements run in the caller's transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.statements = 0

    def _cursor(self) -> Any:
        return self.conn.connection.cursor()

    def all(self, sql: str, params: Mapping[str, Any] | None = None) -> list[sa.Row]:
        self.statements += 1
        return list(self.conn.execute(sa.text(sql), dict(params or {})).all())

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        self.statements += 1
        return self.conn.execute(sa.text(sql), dict(params or {})).scalar()

    def grouped(self, sql: str, params: Mapping[str, Any] | None = None) -> dict[Any, list[Any]]:
        """Two-column rows ``(key, value)`` as ``{key: [values...]}``, in row order."""
        groups: dict[Any, list[Any]] = {}
        for key, value in self.all(sql, params):
            groups.setdefault(key, []).append(value)
        return groups

    def exec(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        self.statements += 1
        return self.conn.execute(sa.text(sql), dict(params or {})).rowcount

    def values(
        self,
        sql: str,
        rows: Sequence[Sequence[Any]],
        *,
        fetch: bool = False,
        page_size: int = 1000,
        template: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """``sql`` has one ``VALUES %s``; every row goes in pages of ``page_size`` rows.

        With ``fetch`` the RETURNING rows come back in input order (one page per statement).
        """
        if not rows:
            return []
        cursor = self._cursor()
        try:
            self.statements += (len(rows) + page_size - 1) // page_size
            result = execute_values(cursor, sql, rows, template=template, page_size=page_size, fetch=fetch)
            return [tuple(r) for r in result] if fetch else []
        finally:
            cursor.close()

    def batch(self, sql: str, rows: Iterable[Sequence[Any] | Mapping[str, Any]], page_size: int = 500) -> int:
        """Run ``sql`` (``%s`` or ``%(name)s`` placeholders) once per row, ``page_size`` rows per round trip."""
        rows = list(rows)
        if not rows:
            return 0
        cursor = self._cursor()
        try:
            self.statements += (len(rows) + page_size - 1) // page_size
            execute_batch(cursor, sql, rows, page_size=page_size)
            return len(rows)
        finally:
            cursor.close()
