"""Webhooks of the energy data hub: subscriptions, the outbox, the signed bodies, delivery (no Dagster).

The legacy datahub-service (research notes C3, C6, C9) posted a JSON body to each subscriber of an
event, signed with ``x-hub-signature: sha256=<base64 HMAC-SHA256(secret, body)>``, and retried a
non-200 answer every 60 s for 24 h. Subscribers verify the signature over the bytes they receive,
so the bytes sent here are exactly what the legacy signed: ``json.dumps(body)`` with Python's
default separators, the legacy's field order and ``ensure_ascii``.

How it runs here:

* **Queueing** happens in the transaction that causes the event (``queue_meteringpoints_available``
  in the metering-point import, ``queue_measurement_events`` in the measurement import), as rows of
  the outbox ``energy.webhook_delivery``, one per (subscription, object). A rollback takes them with
  it; nothing is posted from inside a transaction. Measurement imports insert millions of rows, so
  their events are queued by two ``INSERT ... SELECT`` statements, after a look at whether anybody
  subscribed at all.
* **Bodies** are built when a delivery is sent, from the rows it references (a measurement with its
  metering point, a GGO with its measurement and point, a metering point), so the outbox stays small.
* **Sending** (``send_due``) claims due rows with ``FOR UPDATE SKIP LOCKED`` in a short transaction
  that also moves their ``next_attempt`` 60 s ahead: a second sender skips them, and if this one dies
  mid-send they come due again after 60 s (delivery is at least once, as the legacy's). The POSTs
  run after that commit, outside any transaction, and the outcomes are recorded in one more.

Ledger addresses: the legacy derived the ``address`` of a measurement or GGO from its metering
point's BIP32 key; that submission is switched off in the legacy and our points usually have no
key, so the derivation is injected (``address_of``) and defaults to none (``"address": null``).
"""

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.lib.batch import clip
from ecr_pipelines.lib.http import ErrorKind, FetchError, check_scheme, classify, make_session

log = logging.getLogger(__name__)

RETRY_SECONDS = 60
GIVE_UP_AFTER = timedelta(hours=24)
SIGNATURE_HEADER = "x-hub-signature"
ERROR_LIMIT = 1000
RESPONSE_PREVIEW = 300
ERRORS_PREVIEW = 20
# A delivery whose object is gone or whose event nothing sends (the old plural event): it can
# never be sent, so it is dead at once.
NO_BODY = "no_body"


class WebhookEvent(StrEnum):
    """``energy.webhookevent``; ``ON_METERINGPOINTS_AVAILABLE`` exists for old rows only."""

    ON_MEASUREMENT_PUBLISHED = "ON_MEASUREMENT_PUBLISHED"
    ON_GGOS_ISSUED = "ON_GGOS_ISSUED"
    ON_METERINGPOINTS_AVAILABLE = "ON_METERINGPOINTS_AVAILABLE"
    ON_METERINGPOINT_AVAILABLE = "ON_METERINGPOINT_AVAILABLE"


# (metering point's ledger_extended_key, "MEASUREMENT" | "GGO", the object's begin) -> address.
AddressOf = Callable[[str | None, str, datetime], str | None]


def no_address(key: str | None, prefix: str, begin: datetime) -> str | None:
    """The default ``address_of``: the ledger is switched off, so no object has an address."""
    return None


# -- subscriptions ------------------------------------------------------------------------------------
def subscribe(
    conn: Connection, event: WebhookEvent | str, subject: str, url: str, secret: str | None
) -> bool:
    """Subscribe ``url`` to ``event`` for the customer ``subject``; True when a row was added.

    Unlike the legacy, which added a row on every call (and then sent each event once per copy),
    an identical subscription (same event, subject, url and secret, a null secret matching a null
    one) is not added twice. A transaction-scoped advisory lock on the four values makes two
    concurrent identical calls add one row.
    """
    event = WebhookEvent(event)
    key = json.dumps([event.value, subject, url, secret])
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key})
    added = conn.execute(
        sa.text(
            "INSERT INTO energy.webhook_subscription (event, subject, url, secret) "
            "SELECT :event, :subject, :url, :secret WHERE NOT EXISTS ("
            " SELECT 1 FROM energy.webhook_subscription WHERE event = :event AND subject = :subject"
            " AND url = :url AND secret IS NOT DISTINCT FROM :secret)"
        ),
        {"event": event.value, "subject": subject, "url": url, "secret": secret},
    )
    return added.rowcount > 0


def unsubscribe(
    conn: Connection, event: WebhookEvent | str, subject: str, url: str, secret: str | None
) -> bool:
    """Delete the subscriptions matching all four values (a null secret matches a null one), as the
    legacy; True when any was deleted. Their queued deliveries go with them (ON DELETE CASCADE)."""
    deleted = conn.execute(
        sa.text(
            "DELETE FROM energy.webhook_subscription WHERE event = :event AND subject = :subject "
            "AND url = :url AND secret IS NOT DISTINCT FROM :secret"
        ),
        {"event": WebhookEvent(event).value, "subject": subject, "url": url, "secret": secret},
    )
    return deleted.rowcount > 0


# -- queueing -----------------------------------------------------------------------------------------
def queue_meteringpoints_available(conn: Connection, meteringpoint_ids: Sequence[int]) -> int:
    """Queue ``ON_METERINGPOINT_AVAILABLE`` for the given points, one delivery per subscription of the
    point's customer, and stamp ``available_queued`` on every point (subscribed or not); returns
    the number queued. Runs in the caller's transaction."""
    ids = sorted(set(meteringpoint_ids))
    if not ids:
        return 0
    queued = conn.execute(
        sa.text(
            "WITH point AS ("
            " UPDATE energy.meteringpoint SET available_queued = now() WHERE id = ANY(:ids) RETURNING id, sub)"
            " INSERT INTO energy.webhook_delivery (subscription_id, event, meteringpoint_id)"
            " SELECT s.id, s.event, point.id FROM point"
            " JOIN energy.webhook_subscription s ON s.event = 'ON_METERINGPOINT_AVAILABLE'"
            " AND s.subject = point.sub"
            " ORDER BY point.id, s.id"
        ),
        {"ids": ids},
    )
    return queued.rowcount


_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")


def _quoted_table(name: str) -> str:
    if not _TABLE_NAME.match(name):
        raise ValueError(f"not a table name: {name!r}")
    return ".".join(f'"{part}"' for part in name.split("."))


def queue_measurement_events(conn: Connection, new_ids_table: str = "new_measurement") -> tuple[int, int]:
    """Queue the events of the measurements whose ids are in the table ``new_ids_table`` (column
    ``id bigint``; the measurement import's temporary table of what it inserted and publishes in
    this transaction): one ``ON_MEASUREMENT_PUBLISHED`` per (measurement, subscription of its
    point's customer) and one ``ON_GGOS_ISSUED`` per (GGO of those measurements, subscription).

    Returns (published queued, GGOs queued). Set-based: two ``INSERT ... SELECT`` statements,
    whatever the number of measurements, each run only when that event has any subscription at all
    (a cheap look at the subscription index), so an import nobody listens to pays nothing. Call it
    once per set of ids: a second call queues the events again.
    """
    table = _quoted_table(new_ids_table)
    has_published, has_ggos = conn.execute(
        sa.text(
            "SELECT EXISTS (SELECT 1 FROM energy.webhook_subscription WHERE event = 'ON_MEASUREMENT_PUBLISHED'),"
            " EXISTS (SELECT 1 FROM energy.webhook_subscription WHERE event = 'ON_GGOS_ISSUED')"
        )
    ).one()
    published = ggos = 0
    if has_published:
        published = conn.execute(
            sa.text(
                "INSERT INTO energy.webhook_delivery (subscription_id, event, measurement_id)"
                f" SELECT s.id, s.event, m.id FROM {table} n"
                " JOIN energy.measurement m ON m.id = n.id"
                " JOIN energy.meteringpoint p ON p.gsrn = m.gsrn"
                " JOIN energy.webhook_subscription s ON s.event = 'ON_MEASUREMENT_PUBLISHED'"
                " AND s.subject = p.sub"
            )
        ).rowcount
    if has_ggos:
        ggos = conn.execute(
            sa.text(
                "INSERT INTO energy.webhook_delivery (subscription_id, event, ggo_id)"
                f" SELECT s.id, s.event, g.id FROM {table} n"
                " JOIN energy.ggo g ON g.measurement_id = n.id"
                " JOIN energy.measurement m ON m.id = n.id"
                " JOIN energy.meteringpoint p ON p.gsrn = m.gsrn"
                " JOIN energy.webhook_subscription s ON s.event = 'ON_GGOS_ISSUED' AND s.subject = p.sub"
            )
        ).rowcount
    return published, ggos


# -- bodies -------------------------------------------------------------------------------------------
def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _iso(value: datetime) -> str:
    # marshmallow's DateTime field: isoformat() of the aware value, here in UTC.
    return _utc(value).isoformat()


def _kind(value: str) -> str:
    # The legacy's MeasurementType serialised by value: "production" / "consumption".
    return value.lower()


def measurement_body(row: Mapping[str, Any], address_of: AddressOf = no_address) -> dict[str, Any]:
    """``ON_MEASUREMENT_PUBLISHED``: the legacy's field order."""
    return {
        "sub": row["subject"],
        "measurement": {
            "address": address_of(row["ledger_extended_key"], "MEASUREMENT", _utc(row["begin"])),
            "begin": _iso(row["begin"]),
            "end": _iso(row["end"]),
            "amount": row["amount"],
            "gsrn": row["gsrn"],
            "sector": row["sector"],
            "type": _kind(row["type"]),
        },
    }


def ggo_body(row: Mapping[str, Any], address_of: AddressOf = no_address) -> dict[str, Any]:
    """``ON_GGOS_ISSUED``: the legacy's field order. Its issueTime and expireTime were declared as
    strings, so they come out as ``str(datetime)`` (a space, not ``T``), in UTC."""
    return {
        "sub": row["subject"],
        "ggo": {
            "address": address_of(row["ledger_extended_key"], "GGO", _utc(row["begin"])),
            "begin": _iso(row["begin"]),
            "end": _iso(row["end"]),
            "amount": row["amount"],
            "gsrn": row["gsrn"],
            "sector": row["sector"],
            "issueTime": str(_utc(row["issue_time"])),
            "expireTime": str(_utc(row["expire_time"])),
            "technologyCode": row["technology_code"],
            "fuelCode": row["fuel_code"],
            # As read from JSONB, so in JSONB's key order (shorter keys first), as the legacy's.
            "emissions": row["emissions"],
        },
    }


def meteringpoint_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """``ON_METERINGPOINT_AVAILABLE``: the legacy's field order and its ``postCode`` spelling."""
    return {
        "sub": row["subject"],
        "meteringpoint": {
            "gsrn": row["gsrn"],
            "type": _kind(row["type"]),
            "sector": row["sector"],
            "technologyCode": row["technology_code"],
            "fuelCode": row["fuel_code"],
            "streetCode": row["street_code"],
            "streetName": row["street_name"],
            "buildingNumber": row["building_number"],
            "cityName": row["city_name"],
            "postCode": row["postcode"],
            "municipalityCode": row["municipality_code"],
        },
    }


def encode(body: Mapping[str, Any]) -> bytes:
    """The bytes sent and signed: ``json.dumps`` with every default (separators ``", "`` and
    ``": "``, keys in insertion order, non-ASCII escaped), as the legacy signed them."""
    return json.dumps(body).encode()


def body_of(row: Mapping[str, Any], address_of: AddressOf = no_address) -> bytes | None:
    """The bytes of one delivery row (as ``_OUTGOING`` selects it); None when it has nothing to
    send (its object is missing, or its event is the old plural one)."""
    event = row["event"]
    if row["gsrn"] is None:
        return None
    if event == WebhookEvent.ON_MEASUREMENT_PUBLISHED and row["begin"] is not None:
        return encode(measurement_body(row, address_of))
    if event == WebhookEvent.ON_GGOS_ISSUED and row["issue_time"] is not None:
        return encode(ggo_body(row, address_of))
    if event == WebhookEvent.ON_METERINGPOINT_AVAILABLE:
        return encode(meteringpoint_body(row))
    return None


# A delivery with its subscription and the rows its body is made of. A measurement's point is found
# by GSRN, a metering-point event's by id (the one is NULL when the other is set).
_OUTGOING = """
SELECT d.id, d.event::text AS event, d.created, s.subject, s.url, s.secret,
       m.begin, m."end", m.amount, g.issue_time, g.expire_time, g.emissions,
       p.gsrn, p.type::text AS type, p.sector, p.technology_code, p.fuel_code, p.street_code,
       p.street_name, p.building_number, p.city_name, p.postcode, p.municipality_code,
       p.ledger_extended_key
FROM energy.webhook_delivery d
JOIN energy.webhook_subscription s ON s.id = d.subscription_id
LEFT JOIN energy.ggo g ON g.id = d.ggo_id
LEFT JOIN energy.measurement m ON m.id = coalesce(d.measurement_id, g.measurement_id)
LEFT JOIN energy.meteringpoint p ON p.id = d.meteringpoint_id OR p.gsrn = m.gsrn
WHERE d.id = ANY(:ids)
ORDER BY d.id
"""


@dataclass(frozen=True)
class Outgoing:
    id: int
    url: str
    secret: str | None
    created: datetime
    body: bytes | None


def _outgoing(conn: Connection, ids: Sequence[int], address_of: AddressOf) -> list[Outgoing]:
    if not ids:
        return []
    rows = conn.execute(sa.text(_OUTGOING), {"ids": list(ids)}).mappings().all()
    return [Outgoing(r["id"], r["url"], r["secret"], r["created"], body_of(r, address_of)) for r in rows]


def build_bodies(
    conn: Connection, delivery_ids: Sequence[int], address_of: AddressOf = no_address
) -> dict[int, bytes]:
    """The exact bytes each delivery sends; deliveries with nothing to send are left out."""
    return {o.id: o.body for o in _outgoing(conn, delivery_ids, address_of) if o.body is not None}


def sign(secret: str | None, body: bytes) -> str:
    """The ``x-hub-signature`` value for ``body``. A null secret signs with the empty string (the
    legacy would have failed on it; subscribers without a secret can still check the header)."""
    digest = hmac.new((secret or "").encode(), body, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode()


# -- delivery -----------------------------------------------------------------------------------------
@dataclass
class DeliveryReport:
    sent: int = 0
    failed: int = 0  # failed attempts that stay queued for another try
    dead: int = 0  # failed attempts after which there is no further try (and bodiless deliveries)
    deferred: int = 0  # claimed but not posted: the claim would have lapsed first (see send_due)
    remaining_due: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)  # (id, error_kind, message)


@dataclass(frozen=True)
class _Attempt:
    id: int
    ok: bool
    kind: str | None = None
    message: str | None = None
    posted: bool = True


def make_webhook_session(*, connect_timeout: float = 10.0, read_timeout: float = 10.0) -> requests.Session:
    """A ``lib/http`` session without urllib3 retries: one attempt is one POST, and the outbox's
    60-second schedule does the retrying (and counts it)."""
    return make_session(connect_timeout=connect_timeout, read_timeout=read_timeout, retries=0)


def _urllib3_retries(session: requests.Session, url: str) -> int:
    try:
        retry = getattr(session.get_adapter(url), "max_retries", None)
    except requests.exceptions.InvalidSchema:
        return 0
    total = getattr(retry, "total", 0)
    return total if isinstance(total, int) and not isinstance(total, bool) else 0


def _post(session: requests.Session, out: Outgoing, timeout: float) -> _Attempt:
    # Messages never name the URL: a subscriber's URL may carry a token, and the errors preview
    # ends up in run metadata (the delivery id leads to it).
    assert out.body is not None
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(out.secret, out.body)}
    try:
        check_scheme(out.url)
        response = session.post(out.url, data=out.body, headers=headers, timeout=timeout, stream=True)
    except FetchError as exc:
        return _Attempt(out.id, False, exc.kind.value, clip(exc.message, ERROR_LIMIT))
    except requests.exceptions.RequestException as exc:
        try:
            failure = classify(exc, out.url)
            kind, message = failure.kind.value, failure.message
        except requests.exceptions.RequestException:
            # What classify has no class for (an invalid URL, too many redirects) never reached
            # the receiver: a connection-level failure as far as the subscriber is concerned.
            kind, message = ErrorKind.CONNECTION.value, f"{type(exc).__name__}: {exc}"
        return _Attempt(out.id, False, kind, clip(message, ERROR_LIMIT))
    with response:
        if response.status_code == 200:
            return _Attempt(out.id, True)
        # Only the start of what a failing receiver says, never more of its body than that.
        try:
            head = next(response.iter_content(RESPONSE_PREVIEW), b"")
        except requests.exceptions.RequestException:
            head = b""
    said = head.decode("utf-8", "replace").strip()
    message = f"HTTP {response.status_code}" + (f": {said}" if said else "")
    return _Attempt(out.id, False, ErrorKind.HTTP_STATUS.value, clip(message, ERROR_LIMIT))


_CLAIM = """
WITH due AS (
    SELECT id FROM energy.webhook_delivery
    WHERE status = 'queued' AND next_attempt <= :now
    ORDER BY next_attempt, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE energy.webhook_delivery d SET next_attempt = :lease
FROM due WHERE d.id = due.id
RETURNING d.id
"""

_RECORD_FAILED = """
UPDATE energy.webhook_delivery d
SET attempts = d.attempts + CASE WHEN f.kind = :no_body THEN 0 ELSE 1 END,
    error = f.error, error_kind = f.kind, next_attempt = :next,
    status = CASE WHEN f.kind = :no_body OR CAST(:next AS timestamptz) > d.created + CAST(:give_up AS interval)
                  THEN 'dead' ELSE 'queued' END
FROM unnest(CAST(:ids AS bigint[]), CAST(:errors AS text[]), CAST(:kinds AS text[])) AS f(id, error, kind)
WHERE d.id = f.id AND d.status = 'queued'
RETURNING d.id, d.status
"""


def send_due(
    engine: Engine,
    session: requests.Session,
    *,
    now: datetime | None = None,
    limit: int = 500,
    address_of: AddressOf = no_address,
    timeout: float = 10,
    workers: int = 4,
) -> DeliveryReport:
    """Send one batch of due deliveries (at most ``limit``); ``remaining_due`` says whether more wait.

    1. Claim: in a short transaction, due rows (``status = 'queued' AND next_attempt <= now``) are
       locked with ``SKIP LOCKED``, their ``next_attempt`` moved ``RETRY_SECONDS`` ahead, and their
       bodies built; then it commits. Another sender neither waits for nor sees them.
    2. Post, outside any transaction, ``workers`` at a time: 200 is success, anything else or no
       answer is a failed attempt. A row is only posted while its claim certainly holds (up to
       ``RETRY_SECONDS`` minus twice ``timeout`` after the claim, by the real clock); the rest is
       left for the next run, without counting an attempt (``deferred``).
    3. Record, in one transaction: sent; or attempts + 1 with the error and its kind
       (``http_status``, ``connection``, ``timeout``, ...) and the next attempt ``RETRY_SECONDS``
       after ``now``, or ``dead`` when that would be more than ``GIVE_UP_AFTER`` after ``created``.

    ``now`` defaults to the database's clock. The session should come from
    ``make_webhook_session`` (no urllib3 retries): a session from ``lib/http.make_session`` with
    retries repeats a refused connection or a 502/503/504 inside one attempt, which the attempt
    count then does not show; this logs a warning when it sees one.
    """
    if timeout * 2 >= RETRY_SECONDS:
        raise ValueError(f"timeout must be under {RETRY_SECONDS / 2} s, or a claim lapses mid-post")
    if now is not None and now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    report = DeliveryReport()
    claimed_at = time.monotonic()
    with engine.begin() as conn:
        when: datetime = now if now is not None else conn.execute(sa.text("SELECT now()")).scalar_one()
        lease = when + timedelta(seconds=RETRY_SECONDS)
        ids = list(conn.execute(sa.text(_CLAIM), {"now": when, "lease": lease, "limit": limit}).scalars())
        outgoing = _outgoing(conn, ids, address_of)
    attempts: list[_Attempt] = [
        _Attempt(o.id, False, NO_BODY, "nothing to send: its object is gone or its event is not sent")
        for o in outgoing
        if o.body is None
    ]
    to_post = [o for o in outgoing if o.body is not None]
    if to_post and _urllib3_retries(session, to_post[0].url):
        log.warning("the webhook session retries inside an attempt; use make_webhook_session()")
    post_until = claimed_at + RETRY_SECONDS - 2 * timeout

    def attempt(out: Outgoing) -> _Attempt:
        if time.monotonic() >= post_until:
            return _Attempt(out.id, False, posted=False)
        return _post(session, out, timeout)

    if to_post:
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(to_post)))) as pool:
            attempts += list(pool.map(attempt, to_post))

    sent = [a.id for a in attempts if a.posted and a.ok]
    failed = [a for a in attempts if a.posted and not a.ok]
    report.deferred = sum(1 for a in attempts if not a.posted)
    with engine.begin() as conn:
        if sent:
            report.sent = conn.execute(
                sa.text(
                    "UPDATE energy.webhook_delivery SET status = 'sent', sent = :now, attempts = attempts + 1,"
                    " error = NULL, error_kind = NULL WHERE id = ANY(:ids) AND status = 'queued'"
                ),
                {"now": when, "ids": sent},
            ).rowcount
        if failed:
            params = {
                "ids": [a.id for a in failed],
                "errors": [a.message for a in failed],
                "kinds": [a.kind for a in failed],
                "next": lease,
                "give_up": GIVE_UP_AFTER,
                "no_body": NO_BODY,
            }
            for _, status in conn.execute(sa.text(_RECORD_FAILED), params):
                if status == "dead":
                    report.dead += 1
                else:
                    report.failed += 1
        report.remaining_due = conn.execute(
            sa.text(
                "SELECT count(*) FROM energy.webhook_delivery WHERE status = 'queued' AND next_attempt <= :now"
            ),
            {"now": when},
        ).scalar_one()
    report.errors = [(a.id, a.kind or "", a.message or "") for a in failed[:ERRORS_PREVIEW]]
    if sent or failed:
        log.info(
            "webhooks: %d sent, %d failed, %d dead, %d deferred, %d still due",
            report.sent,
            report.failed,
            report.dead,
            report.deferred,
            report.remaining_due,
        )
    return report


def delivery_counts(conn: Connection) -> dict[str, int]:
    """Deliveries per status (queued, sent, dead), for run metadata."""
    counts = {"queued": 0, "sent": 0, "dead": 0}
    for status, count in conn.execute(
        sa.text("SELECT status, count(*) FROM energy.webhook_delivery GROUP BY status")
    ):
        counts[status] = int(count)
    return counts
