"""The CKAN packager's statistics: the legacy's ``requests``, ``errors`` and ``totals`` (no Dagster).

Every finished request is logged with ``log_request`` and every failed one with ``log_error``,
inside the caller's transaction, so a statistic exists exactly when the change it reports was
committed. ``totals`` keeps one row per resource plus the grand total ``'*'``: requests, errors
and the number of distinct e-mail addresses that asked (for that resource / at all).

With anonymisation on, addresses are stored as the legacy's bcrypt hash salted by the address's
domain (``anonymize_email``): equal addresses give equal hashes, so distinct requesters can
still be counted and filtered on, while the stored value no longer reveals the address. The
domain itself is kept in clear in ``requests.domain``, as the legacy did. ``anonymize_existing``
is the legacy's one-off rewrite of rows logged before anonymisation was switched on.
"""

import base64
import functools
import logging
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bcrypt
import sqlalchemy as sa
from sqlalchemy.engine import Connection

log = logging.getLogger(__name__)

GRAND_TOTAL = "*"
HASH_PREFIX = "$2b$"
BCRYPT_COST = 12
# Any constant shared by every process of this project ("ckanstat"); see ``_serialise``.
_LOCK_KEY = 0x636B616E73746174
# bcrypt's own base64 alphabet (not the standard one: no '+', and a different order).
_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# bcrypt reads at most 72 bytes of a password.
_BCRYPT_MAX_BYTES = 72

REQUEST_COLUMNS = ("count", "domain", "email", "resource_id", "timestamp")
ERROR_COLUMNS = ("timestamp", "resource_id", "email", "message")


def extract_domain(email: str) -> str:
    """The lower-cased part after the first '@', or the whole lower-cased string without one."""
    email = email.lower()
    _, at, domain = email.partition("@")
    return domain if at else email


def _domain_salt(domain: str) -> bytes:
    """The legacy's salt: standard base64 of the zero-filled domain, cut to bcrypt's 22 characters.

    The legacy ran pyca/bcrypt 3.1.4 (OpenBSD's C code), checked against it here:

    - it decoded the 22 characters with bcrypt's own alphabet, whatever alphabet produced them;
    - a '+' (standard base64 only, e.g. from a '~' or '>' at some positions of the domain) made
      it raise "Invalid salt", so the legacy failed for such addresses and never stored a hash
      for them. We map '+' to '.', a character standard base64 never produces, so such a domain
      still gets a deterministic salt of its own and every other domain keeps the legacy's salt;
    - the 22nd character carries only 2 of its 6 bits (16 salt bytes = 128 bits); 3.1.4 ignored
      the other 4 bits, bcrypt >= 4 refuses them as an invalid salt. Clearing them gives the
      salt 3.1.4 actually used (its output hashes show that canonical character), so hashes
      stored by the legacy and ours are equal;
    - the legacy (Python 2) encoded a non-ASCII domain implicitly as ASCII and failed, so there
      too no legacy hash exists; we take UTF-8, as later Python 3 ports of the recipe do.
    """
    encoded = base64.b64encode(domain.zfill(18).encode("utf-8"))[:22].decode("ascii")
    encoded = encoded.replace("+", ".")
    last = _BCRYPT_ALPHABET[_BCRYPT_ALPHABET.index(encoded[-1]) & 0b110000]
    return f"{HASH_PREFIX}{BCRYPT_COST:02d}${encoded[:-1]}{last}".encode("ascii")


def anonymize_email(email: str) -> str:
    """The legacy's deterministic per-domain bcrypt hash of the lower-cased address."""
    return _hash_address(email.lower())


@functools.lru_cache(maxsize=4096)
def _hash_address(email: str) -> str:
    # Cost 12 takes about a quarter of a second, hence the per-process cache (keyed by the
    # lower-cased address): a run logging many requests of one address, or the migration
    # meeting it in both tables and in several spellings, pays it once.
    # pyca/bcrypt before 5.0 (the legacy's 3.1.4 included) silently used only the first 72 bytes;
    # 5.0 raises instead. Cutting them ourselves keeps the legacy's hash for long addresses.
    password = email.encode("utf-8")[:_BCRYPT_MAX_BYTES]
    return bcrypt.hashpw(password, _domain_salt(extract_domain(email))).decode("ascii")


def is_hashed(value: str | None) -> bool:
    return value is not None and value.startswith(HASH_PREFIX)


def _now(timestamp: int | None) -> int:
    return int(time.time()) if timestamp is None else int(timestamp)


def _serialise(conn: Connection) -> None:
    # The "first request of this e-mail?" test reads ``requests`` and then counts: two runs
    # (the fast and the slow queue) logging the same new address at once would both find no
    # earlier row and both count it. A transaction lock makes the second wait until the first
    # commits; under READ COMMITTED (the default) its test then sees the committed row.
    # One key for every log call rather than one per e-mail: every call updates the '*' totals
    # row, which serialises them until commit anyway, so per-address keys would gain no
    # concurrency, and a transaction logging several addresses could take them in an order
    # that deadlocks against another one waiting on the '*' row.
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def _add_to_totals(
    conn: Connection, resource_id: str, *, emails: int = 0, errors: int = 0, requests: int = 0
) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO ckan.totals AS t (resource_id, emails, errors, requests) "
            "VALUES (:resource_id, :emails, :errors, :requests) "
            "ON CONFLICT (resource_id) DO UPDATE SET emails = t.emails + excluded.emails, "
            "errors = t.errors + excluded.errors, requests = t.requests + excluded.requests"
        ),
        {"resource_id": resource_id, "emails": emails, "errors": errors, "requests": requests},
    )


def log_request(
    conn: Connection,
    *,
    resource_id: str,
    email: str,
    count: int | None,
    timestamp: int | None = None,
    anonymize: bool = False,
) -> None:
    """Count one finished request and store its row (``count``: the request's limit, or None)."""
    domain = extract_domain(email)
    stored = anonymize_email(email) if anonymize else email
    _serialise(conn)
    seen = conn.execute(
        sa.text(
            "SELECT EXISTS (SELECT 1 FROM ckan.requests WHERE email = :email) AS anywhere, "
            "EXISTS (SELECT 1 FROM ckan.requests WHERE email = :email AND resource_id = :resource_id) "
            "AS here"
        ),
        {"email": stored, "resource_id": resource_id},
    ).one()
    # '*' before the resource, always: concurrent transactions lock the rows in one order.
    _add_to_totals(conn, GRAND_TOTAL, requests=1, emails=0 if seen.anywhere else 1)
    _add_to_totals(conn, resource_id, requests=1, emails=0 if seen.here else 1)
    conn.execute(
        sa.text(
            "INSERT INTO ckan.requests (count, domain, email, resource_id, timestamp) "
            "VALUES (:count, :domain, :email, :resource_id, :timestamp)"
        ),
        {
            "count": count,
            "domain": domain,
            "email": stored,
            "resource_id": resource_id,
            "timestamp": _now(timestamp),
        },
    )


def log_error(
    conn: Connection,
    *,
    resource_id: str,
    email: str,
    message: str,
    timestamp: int | None = None,
    anonymize: bool = False,
) -> None:
    """Count one failed request and store its row."""
    stored = anonymize_email(email) if anonymize else email
    # Same lock as log_request, taken before the '*' row, so mixing both in one transaction
    # cannot deadlock against another run.
    _serialise(conn)
    _add_to_totals(conn, GRAND_TOTAL, errors=1)
    _add_to_totals(conn, resource_id, errors=1)
    conn.execute(
        sa.text(
            "INSERT INTO ckan.errors (timestamp, resource_id, email, message) "
            "VALUES (:timestamp, :resource_id, :email, :message)"
        ),
        {"timestamp": _now(timestamp), "resource_id": resource_id, "email": stored, "message": message},
    )


def get_totals(conn: Connection, resource_id: str | None = None) -> dict[str, dict[str, int]]:
    """``{resource_id: {"emails", "errors", "requests"}}``, '*' being the grand total."""
    where = "" if resource_id is None else "WHERE resource_id = :resource_id"
    rows = conn.execute(
        sa.text(
            f"SELECT resource_id, emails, errors, requests FROM ckan.totals {where} ORDER BY resource_id"
        ),
        {"resource_id": resource_id},
    )
    return {
        row.resource_id: {"emails": int(row.emails), "errors": int(row.errors), "requests": int(row.requests)}
        for row in rows
    }


def _page(
    conn: Connection,
    table: str,
    columns: tuple[str, ...],
    *,
    offset: int,
    limit: int,
    resource_id: str | None,
    email: str | None,
    anonymize: bool,
) -> list[dict[str, Any]]:
    if offset < 0 or limit < 0:
        raise ValueError(f"offset and limit must not be negative (got offset={offset}, limit={limit})")
    conditions = []
    params: dict[str, Any] = {"offset": offset, "limit": limit}
    if resource_id is not None:
        conditions.append("resource_id = :resource_id")
        params["resource_id"] = resource_id
    if email is not None:
        # Stored values are hashes when anonymising, so the filter must be one too.
        conditions.append("email = :email")
        params["email"] = anonymize_email(email) if anonymize else email
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    # ``id`` breaks ties within one second so pages neither repeat nor skip rows; it is not output.
    rows = conn.execute(
        sa.text(
            f"SELECT {', '.join(columns)} FROM ckan.{table} {where} "
            "ORDER BY timestamp DESC NULLS LAST, id DESC OFFSET :offset LIMIT :limit"
        ),
        params,
    )
    return [dict(row._mapping) for row in rows]


def get_requests(
    conn: Connection,
    *,
    offset: int = 0,
    limit: int = 100,
    resource_id: str | None = None,
    email: str | None = None,
    anonymize: bool = False,
) -> list[dict[str, Any]]:
    """Request rows, newest first: ``count``, ``domain``, ``email``, ``resource_id``, ``timestamp``."""
    return _page(
        conn,
        "requests",
        REQUEST_COLUMNS,
        offset=offset,
        limit=limit,
        resource_id=resource_id,
        email=email,
        anonymize=anonymize,
    )


def get_errors(
    conn: Connection,
    *,
    offset: int = 0,
    limit: int = 100,
    resource_id: str | None = None,
    email: str | None = None,
    anonymize: bool = False,
) -> list[dict[str, Any]]:
    """Error rows, newest first: ``timestamp``, ``resource_id``, ``email``, ``message``."""
    return _page(
        conn,
        "errors",
        ERROR_COLUMNS,
        offset=offset,
        limit=limit,
        resource_id=resource_id,
        email=email,
        anonymize=anonymize,
    )


def _hash_all(addresses: Iterable[str]) -> dict[str, str]:
    # bcrypt releases the GIL, so threads use every core: a cost-12 hash per distinct address
    # is the whole price of the migration.
    unique = sorted(set(addresses))
    workers = max(1, min(len(unique), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(unique, pool.map(anonymize_email, unique), strict=True))


def anonymize_existing(conn: Connection, dry_run: bool = False) -> dict[str, int]:
    """Rewrite the plain addresses of ``requests`` and ``errors`` to their hashes, once.

    For switching anonymisation on after plain rows were logged. Values that already are
    hashes are left alone, so running it again (or after a partial run) does no harm, unlike
    the legacy's script. ``requests.domain`` is (re)set from the address. ``totals`` is not
    recounted (neither did the legacy): addresses differing only in case stay counted apart.
    Switch anonymisation on first and then run this: a row logged in clear meanwhile is left
    for the next run, and a requester's first hashed request is counted as a new address
    (as in the legacy).
    Returns row counts: ``requests``/``errors`` rewritten (or that would be, on a dry run),
    ``addresses`` distinct plain values met, ``already_hashed`` rows skipped.
    """
    plain: dict[str, list[str]] = {}
    skipped = 0
    for table in ("requests", "errors"):
        values = conn.execute(
            sa.text(f"SELECT DISTINCT email FROM ckan.{table} WHERE email IS NOT NULL")
        ).scalars()
        plain[table] = [v for v in values if not is_hashed(v)]
        skipped += conn.execute(
            sa.text(f"SELECT count(*) FROM ckan.{table} WHERE left(email, :n) = :prefix"),
            {"n": len(HASH_PREFIX), "prefix": HASH_PREFIX},
        ).scalar_one()
    counts = {
        table: int(
            conn.execute(
                sa.text(f"SELECT count(*) FROM ckan.{table} WHERE email = ANY(:values)"),
                {"values": values},
            ).scalar_one()
        )
        for table, values in plain.items()
    }
    addresses = {v for values in plain.values() for v in values}
    report = {**counts, "addresses": len(addresses), "already_hashed": int(skipped)}
    if dry_run:
        log.info("anonymize_existing (dry run) would rewrite %s", report)
        return report
    hashes = _hash_all(addresses)
    _update(
        conn,
        "UPDATE ckan.requests SET email = :hashed, domain = :domain WHERE email = :plain",
        ({"plain": v, "hashed": hashes[v], "domain": extract_domain(v)} for v in plain["requests"]),
    )
    _update(
        conn,
        "UPDATE ckan.errors SET email = :hashed WHERE email = :plain",
        ({"plain": v, "hashed": hashes[v]} for v in plain["errors"]),
    )
    log.info("anonymize_existing rewrote %s", report)
    return report


def _update(conn: Connection, statement: str, params: Iterable[Mapping[str, Any]]) -> None:
    batch = list(params)
    if batch:
        conn.execute(sa.text(statement), batch)
