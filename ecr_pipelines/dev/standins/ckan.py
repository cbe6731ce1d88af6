"""A stand-in CKAN for the packager: ``datastore_search`` over generated tables, and plain files.

Rows are never stored: a ``Table`` is a row count and a function of the row number, so a
resource of millions of rows costs nothing until a page of it is asked for, and each answer
holds only that page. Three paging modes, as real sites offer them:

* plain CKAN (``backend=None``): ``offset`` / ``limit``;
* a Solr-backed datastore (``backend="solr"``): ``cursor`` (``*`` first) and ``next_cursor``,
  which stays the same once the rows are exhausted, as Solr's ``cursorMark`` does;
* NHM's versioned datastore (``backend="versioned-datastore"``): ``after`` (search-after),
  ``null`` once a page came back empty.

Every backend also honours ``offset`` when no cursor or ``after`` is sent (what the packager
does when the caller gave an offset), and names itself in ``result._backend`` (plain CKAN does
not). ``fields`` selects and orders columns; ``q``, ``filters``, ``sort``, ``plain`` and
``language`` are accepted and recorded (``searches``) but not applied: tests check that the
client forwards them, and a generated table has nothing to search. ``limit`` defaults to 100
and is capped at ``rows_max`` (CKAN's ``ckan.datastore.search.rows_max``), and the answer's
``limit`` says what was used, as CKAN's does.

Errors have CKAN's shape (``success: false`` and an ``error`` object) and status: 404 for an
unknown resource, 409 for invalid parameters, 403 when a table wants an API key that did not
come. ``Table.fail_at_row`` makes every data request reaching that row fail, to test an
upstream that breaks in the middle of a download.
"""

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ecr_pipelines.dev.standins.server import RecordedRequest, Reply, Route, StandInServer

ACTION_PATH = "/api/3/action/datastore_search"
ROWS_MAX = 32000
DEFAULT_LIMIT = 100
SOLR = "solr"
VERSIONED = "versioned-datastore"
BACKENDS = (None, SOLR, VERSIONED)
_RECORDS_SLOT = "@@records@@"


@dataclass
class Table:
    """One datastore resource: ``total`` rows, row ``n`` (0-based) being ``row(n)``.

    ``row_json``, when given, must return ``json.dumps(row(n))`` (any spacing): it lets answers
    without a ``fields`` selection be written without building dictionaries, which is what makes
    the stand-in fast enough to serve millions of rows to a benchmark.
    """

    fields: list[dict[str, Any]]
    total: int
    row: Callable[[int], dict[str, Any]]
    row_json: Callable[[int], str] | None = None
    backend: str | None = None
    api_key: str | None = None
    fail_at_row: int | None = None
    fail_status: int = 500

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {self.backend!r}")

    @property
    def field_ids(self) -> list[str]:
        return [f["id"] for f in self.fields]


def rows_table(
    rows: Iterable[dict[str, Any]], fields: list[dict[str, Any]] | None = None, **kwargs: Any
) -> Table:
    """A small table from literal records (tests); fields default to the keys of the first row."""
    records = list(rows)
    if fields is None:
        keys = list(records[0]) if records else ["_id"]
        fields = [{"id": key, "type": "int" if key == "_id" else "text"} for key in keys]
    return Table(fields=fields, total=len(records), row=records.__getitem__, **kwargs)


# -- a synthetic table for volume tests and benchmarks ----------------------------------------------
_COUNTRIES = ["Denmark", "France", "España", "Italia", "Sverige", "Österreich", "Polska"]
_NOTES = ["plain", "with, a comma", 'with "quotes"', "two\nlines", "tab\there", "", "naïve café"]
_PERIOD = 1009  # rows repeat their cyclic columns every _PERIOD rows (a prime, > the deflate window)
_SYNTHETIC_FIELDS = [
    {"id": "_id", "type": "int"},
    {"id": "name", "type": "text"},
    {"id": "count", "type": "int"},
    {"id": "ratio", "type": "numeric"},
    {"id": "country", "type": "text"},
    {"id": "recorded", "type": "timestamp"},
    {"id": "note", "type": "text"},
    {"id": "code", "type": "text"},
    {"id": "valid", "type": "bool"},
    {"id": "remarks", "type": "text"},
]


def _synthetic_base(k: int) -> dict[str, Any]:
    """The columns of a row that depend only on ``row % _PERIOD``; the others are placeholders."""
    return {
        "_id": 0,
        "name": "",
        "count": 0,
        "ratio": (k % 8000) / 8,
        "country": _COUNTRIES[k % len(_COUNTRIES)],
        "recorded": f"2020-{k % 12 + 1:02d}-{k % 28 + 1:02d}T{k % 24:02d}:00:00",
        "note": _NOTES[k % len(_NOTES)],
        "code": "",
        "valid": k % 3 != 0,
        "remarks": None if k % 4 else f"remark {k}",
    }


def synthetic_table(total: int, *, backend: str | None = None, **kwargs: Any) -> Table:
    """``total`` rows of the 10 columns above (ints, floats, text with commas, quotes, newlines,
    tabs and non-ASCII, timestamps, booleans, nulls); row ``n`` is the same on every call."""
    bases = [_synthetic_base(k) for k in range(_PERIOD)]
    # The JSON text of each base with the row-dependent values as %-placeholders: a row is then
    # one %-format of four integers, not a dictionary plus json.dumps.
    templates = []
    for base in bases:
        marked = dict(base, _id=-101, name="Specimen -202", count=-303, code="C--404")
        text = json.dumps(marked, ensure_ascii=False).replace("%", "%%")
        for marker, spec in (("-101", "%d"), ("-202", "%d"), ("-303", "%d"), ("-404", "%07d")):
            text = text.replace(marker, spec, 1)
        templates.append(text)

    def row(n: int) -> dict[str, Any]:
        record = dict(bases[n % _PERIOD])
        record.update(_id=n + 1, name=f"Specimen {n + 1}", count=n * 7 % 1000, code=f"C-{n:07d}")
        return record

    def row_json(n: int) -> str:
        return templates[n % _PERIOD] % (n + 1, n + 1, n * 7 % 1000, n)

    return Table(
        fields=list(_SYNTHETIC_FIELDS), total=total, row=row, row_json=row_json, backend=backend, **kwargs
    )


# -- the server -------------------------------------------------------------------------------------
class _Refusal(Exception):
    def __init__(self, status: int, error: dict[str, Any]) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _validation(**problems: str) -> _Refusal:
    return _Refusal(409, {"__type": "Validation Error", **{k: [v] for k, v in problems.items()}})


def _natural(params: dict[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise _validation(**{name: "Invalid integer"}) from None
    if number < 0 or isinstance(value, bool):
        raise _validation(**{name: "Must be a natural number"})
    return number


class CkanStandIn:
    """``datastore_search`` (GET or POST) at ``api_url`` plus files, on a ``StandInServer``.

    Pass the server of a test (the ``standin`` fixture) or let the stand-in start its own (use it
    as a context manager then).
    """

    def __init__(self, server: StandInServer | None = None, *, rows_max: int = ROWS_MAX) -> None:
        self._own = server is None
        self.server = server if server is not None else StandInServer()
        self.rows_max = rows_max
        self.tables: dict[str, Table] = {}
        self.searches: list[dict[str, Any]] = []
        for method in ("GET", "POST"):
            self.server.add(Route(ACTION_PATH, method=method, handler=self._datastore_search))

    # -- life cycle (only for a server of its own) ---------------------------------------------------
    def __enter__(self) -> "CkanStandIn":
        if self._own:
            self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._own:
            self.server.stop()

    # -- content -------------------------------------------------------------------------------------
    def add_table(self, resource_id: str, table: Table) -> Table:
        self.tables[resource_id] = table
        return table

    def add_file(self, path: str, body: bytes, content_type: str = "application/octet-stream") -> str:
        """Serve ``body`` at ``path`` (GET); returns its URL."""
        self.server.add(Route(path, body=body, headers={"Content-Type": content_type}))
        return self.server.url(path)

    @property
    def api_url(self) -> str:
        """The full ``datastore_search`` action URL (what the packager's ``api_url`` holds)."""
        return self.server.url(ACTION_PATH)

    @property
    def data_searches(self) -> list[dict[str, Any]]:
        """The searches that asked for rows (not the ``limit=0`` description calls)."""
        return [s for s in self.searches if s.get("limit") not in (0, "0")]

    # -- the action ----------------------------------------------------------------------------------
    def _datastore_search(self, request: RecordedRequest) -> Reply:
        help_url = self.server.url("/api/3/action/help_show?name=datastore_search")
        try:
            params = self._params(request)
            self.searches.append(params)
            result, records = self._search(params, request.headers)
        except _Refusal as refusal:
            return Reply.json({"help": help_url, "success": False, "error": refusal.error}, refusal.status)
        text = json.dumps({"help": help_url, "success": True, "result": result}, ensure_ascii=False)
        # The records are spliced in as text, so generated JSON rows are never decoded.
        head, tail = text.split(json.dumps(_RECORDS_SLOT), 1)
        return Reply(
            200, (head + records + tail).encode(), {"Content-Type": "application/json;charset=utf-8"}
        )

    @staticmethod
    def _params(request: RecordedRequest) -> dict[str, Any]:
        if request.method == "POST" and request.body:
            try:
                params = json.loads(request.body)
            except ValueError:
                raise _Refusal(
                    400, {"__type": "Bad request", "message": "JSON Error: body is not JSON"}
                ) from None
            if not isinstance(params, dict):
                raise _Refusal(400, {"__type": "Bad request", "message": "JSON Error: not a JSON object"})
            return params
        return dict(request.query)

    def _search(self, params: dict[str, Any], headers: dict[str, str]) -> tuple[dict[str, Any], str]:
        """The result (records as a placeholder) and the records' JSON text."""
        resource_id = params.get("resource_id") or params.get("id")
        table = self.tables.get(str(resource_id))
        if table is None:
            raise _Refusal(
                404,
                {
                    "__type": "Not Found Error",
                    "message": f'Not found: Resource "{resource_id}" was not found.',
                },
            )
        if table.api_key is not None:
            given = next((v for k, v in headers.items() if k.lower() == "authorization"), None)
            if given != table.api_key:
                raise _Refusal(403, {"__type": "Authorization Error", "message": "Access denied"})
        columns = self._columns(table, params.get("fields"))
        limit = min(_natural(params, "limit", DEFAULT_LIMIT), self.rows_max)
        offset = _natural(params, "offset", 0)
        result: dict[str, Any] = {
            "resource_id": resource_id,
            "fields": [f for f in table.fields if f["id"] in columns],
        }
        # CKAN orders the fields as asked for.
        result["fields"].sort(key=lambda f: columns.index(f["id"]))
        for name in ("q", "filters", "sort"):
            if params.get(name) not in (None, ""):
                result[name] = params[name]
        if table.backend is not None:
            result["_backend"] = table.backend
        start = offset
        if table.backend == SOLR and params.get("cursor") not in (None, ""):
            start = self._cursor_position(params["cursor"])
        elif table.backend == VERSIONED and params.get("after") is not None:
            start = self._after_position(params["after"])
        stop = min(start + limit, table.total)
        start = min(start, stop)
        if limit and table.fail_at_row is not None and start <= table.fail_at_row < start + limit:
            raise _Refusal(
                table.fail_status, {"__type": "Internal Server Error", "message": "the datastore failed"}
            )
        result.update(limit=limit, total=table.total, records=_RECORDS_SLOT)
        if "cursor" in params or table.backend == SOLR:
            result["next_cursor"] = f"cursor-{stop}"
        if table.backend == VERSIONED:
            result["after"] = [stop - 1] if stop > start else None
        if params.get("cursor") in (None, "") and params.get("after") is None:
            result["offset"] = offset
        return result, self._records(table, columns, start, stop)

    @staticmethod
    def _columns(table: Table, fields: Any) -> list[str]:
        if fields in (None, "", []):
            return table.field_ids
        names = [f.strip() for f in fields.split(",")] if isinstance(fields, str) else list(fields)
        unknown = [n for n in names if n not in table.field_ids]
        if unknown:
            raise _validation(fields=f'field "{unknown[0]}" not in resource')
        return names

    @staticmethod
    def _cursor_position(cursor: Any) -> int:
        if cursor == "*":
            return 0
        if isinstance(cursor, str) and cursor.startswith("cursor-") and cursor[7:].isdigit():
            return int(cursor[7:])
        raise _validation(cursor="Unable to parse cursor")

    @staticmethod
    def _after_position(after: Any) -> int:
        if isinstance(after, list) and len(after) == 1 and isinstance(after[0], int) and after[0] >= 0:
            return after[0] + 1
        raise _validation(after="Invalid after value")

    @staticmethod
    def _records(table: Table, columns: list[str], start: int, stop: int) -> str:
        if start >= stop:
            return "[]"
        if columns == table.field_ids and table.row_json is not None:
            return "[" + ", ".join(map(table.row_json, range(start, stop))) + "]"
        records = [
            {name: record[name] for name in columns if name in record}
            for record in map(table.row, range(start, stop))
        ]
        return json.dumps(records, ensure_ascii=False)
