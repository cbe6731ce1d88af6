"""The CKAN packager's statistics on the suite's migrated Postgres, plain and anonymised.

Few distinct addresses are used on purpose: a cost-12 bcrypt hash takes about a quarter of a
second and ``anonymize_email`` caches each one per process.
"""

import threading
import time
from collections.abc import Iterator

import bcrypt
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.ckan import statistics
from ecr_pipelines.ckan.statistics import (
    anonymize_email,
    anonymize_existing,
    extract_domain,
    get_errors,
    get_requests,
    get_totals,
    log_error,
    log_request,
)
from ecr_pipelines.lib.database import engine_for

# Computed with pyca/bcrypt 3.1.4, the version the legacy pinned, by the legacy's recipe.
LEGACY_HASHES = {
    "Someone@Example.com": "$2b$12$MDAwMDAwMGV4YW1wbGUuYuw1lwx67Zsjz.1gVNSqFn2UUb06lQGU.",
    "noat": "$2b$12$MDAwMDAwMDAwMDAwMDBubuiorYZBOEqURwq/iAWjaVury4QVuFmga",
    "x" * 80 + "@long.org": "$2b$12$MDAwMDAwMDAwMGxvbmcubuZmK8QYBkr9V6Zk1L59SsCA5wlcHoWPu",
}
ONE = "one@e.com"
TWO = "two@e.com"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = engine_for(database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE ckan.requests, ckan.errors, ckan.totals RESTART IDENTITY"))
    yield engine


def stored(email: str, anonymize: bool) -> str:
    return anonymize_email(email) if anonymize else email


def all_emails(conn: Connection, table: str) -> list[str]:
    return list(conn.execute(sa.text(f"SELECT email FROM ckan.{table} ORDER BY id")).scalars())


# --- the hash -------------------------------------------------------------------------------


@pytest.mark.parametrize("email", sorted(LEGACY_HASHES))
def test_the_hash_is_the_legacys(email: str) -> None:
    assert anonymize_email(email) == LEGACY_HASHES[email]


def test_the_hash_is_per_domain_and_case_insensitive() -> None:
    assert anonymize_email("ONE@E.COM") == anonymize_email(ONE)
    assert anonymize_email(ONE) != anonymize_email(TWO)
    # The salt is the domain's: equal for one domain, so the stored hash says nothing else.
    assert anonymize_email(ONE)[:29] == anonymize_email(TWO)[:29]
    assert bcrypt.checkpw(ONE.encode(), anonymize_email(ONE).encode())
    assert extract_domain("A@B@C.org") == "b@c.org"
    assert extract_domain("NoAt") == "noat"


def test_domains_the_legacy_could_not_salt_get_a_valid_deterministic_salt() -> None:
    # Standard base64 puts a '+' into this domain's first 22 characters; the legacy's bcrypt
    # raised "Invalid salt" for it. Non-ASCII domains failed in the legacy (Python 2) too.
    for domain in ("abcdefghijklmn~pqr", "bücher.de"):
        salt = statistics._domain_salt(domain)
        assert salt == statistics._domain_salt(domain)
        assert b"+" not in salt
        assert bcrypt.hashpw(b"", salt.replace(b"$12$", b"$04$")).startswith(salt.replace(b"$12$", b"$04$"))
    assert statistics._domain_salt("abcdefghijklmn~pqr") != statistics._domain_salt("abcdefghijklmn>pqr")
    hashed = anonymize_email("u@abcdefghijklmn~pqr")
    assert bcrypt.checkpw(b"u@abcdefghijklmn~pqr", hashed.encode())


# --- logging --------------------------------------------------------------------------------


@pytest.mark.parametrize("anonymize", [False, True])
def test_a_request_is_stored_with_its_fields(engine: Engine, anonymize: bool) -> None:
    with engine.begin() as conn:
        log_request(conn, resource_id="r1", email="One@E.com", count=10, timestamp=100, anonymize=anonymize)
        log_request(conn, resource_id="r2", email=TWO, count=None, timestamp=200, anonymize=anonymize)
    with engine.connect() as conn:
        assert get_requests(conn, anonymize=anonymize) == [
            {
                "count": None,
                "domain": "e.com",
                "email": stored(TWO, anonymize),
                "resource_id": "r2",
                "timestamp": 200,
            },
            {
                "count": 10,
                "domain": "e.com",
                "email": stored("One@E.com", anonymize),
                "resource_id": "r1",
                "timestamp": 100,
            },
        ]
        if anonymize:
            assert all(value.startswith("$2b$12$") for value in all_emails(conn, "requests"))


@pytest.mark.parametrize("anonymize", [False, True])
def test_an_error_is_stored_with_its_fields(engine: Engine, anonymize: bool) -> None:
    with engine.begin() as conn:
        log_error(
            conn, resource_id="r1", email=ONE, message="Traceback ... boom", timestamp=7, anonymize=anonymize
        )
    with engine.connect() as conn:
        assert get_errors(conn) == [
            {
                "timestamp": 7,
                "resource_id": "r1",
                "email": stored(ONE, anonymize),
                "message": "Traceback ... boom",
            }
        ]
        assert get_requests(conn) == []


def test_the_timestamp_defaults_to_now(engine: Engine) -> None:
    before = int(time.time())
    with engine.begin() as conn:
        log_request(conn, resource_id="r1", email=ONE, count=1)
        log_error(conn, resource_id="r1", email=ONE, message="m")
    after = int(time.time())
    with engine.connect() as conn:
        assert before <= get_requests(conn)[0]["timestamp"] <= after
        assert before <= get_errors(conn)[0]["timestamp"] <= after


def test_the_caller_owns_the_transaction(engine: Engine) -> None:
    with engine.connect() as conn:
        log_request(conn, resource_id="r1", email=ONE, count=1)
        log_error(conn, resource_id="r1", email=ONE, message="m")
        conn.rollback()
    with engine.connect() as conn:
        assert get_totals(conn) == {}
        assert get_requests(conn) == [] and get_errors(conn) == []


# --- totals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("anonymize", [False, True])
def test_totals_count_requests_errors_and_unique_emails(engine: Engine, anonymize: bool) -> None:
    with engine.begin() as conn:
        for resource_id, email in [("r1", ONE), ("r1", ONE), ("r2", ONE), ("r1", TWO)]:
            log_request(conn, resource_id=resource_id, email=email, count=5, anonymize=anonymize)
        log_error(conn, resource_id="r1", email=TWO, message="m", anonymize=anonymize)
        log_error(conn, resource_id="r3", email=ONE, message="m", anonymize=anonymize)
    with engine.connect() as conn:
        assert get_totals(conn) == {
            "*": {"emails": 2, "errors": 2, "requests": 4},
            "r1": {"emails": 2, "errors": 1, "requests": 3},
            "r2": {"emails": 1, "errors": 0, "requests": 1},
            "r3": {"emails": 0, "errors": 1, "requests": 0},
        }
        assert get_totals(conn, "r1") == {"r1": {"emails": 2, "errors": 1, "requests": 3}}
        assert get_totals(conn, resource_id="*") == {"*": {"emails": 2, "errors": 2, "requests": 4}}
        assert get_totals(conn, "unknown") == {}


def test_anonymised_addresses_are_counted_regardless_of_case(engine: Engine) -> None:
    with engine.begin() as conn:
        log_request(conn, resource_id="r1", email=TWO, count=None, anonymize=True)
        log_request(conn, resource_id="r2", email="TWO@E.com", count=None, anonymize=True)
        # In clear the legacy compared addresses as given; so do we.
        log_request(conn, resource_id="r2", email="Two@e.com", count=None, anonymize=False)
    with engine.connect() as conn:
        totals = get_totals(conn)
    assert totals["*"] == {"emails": 2, "errors": 0, "requests": 3}
    assert totals["r2"] == {"emails": 2, "errors": 0, "requests": 2}


def test_two_runs_logging_one_new_address_count_it_once(engine: Engine) -> None:
    first = engine.connect()
    try:
        first.begin()
        log_request(first, resource_id="r1", email=ONE, count=1)
        errors: list[BaseException] = []

        def second_run() -> None:
            try:
                with engine.begin() as conn:
                    log_request(conn, resource_id="r1", email=ONE, count=2)
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=second_run)
        thread.start()
        # Wait until the second run is blocked on the statistics lock, then let the first commit.
        with engine.connect() as probe:
            deadline = time.monotonic() + 10
            while not probe.execute(
                sa.text("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted)")
            ).scalar_one():
                assert time.monotonic() < deadline, "the second run never waited for the first"
                time.sleep(0.02)
                probe.rollback()
        first.commit()
        thread.join(10)
        assert not thread.is_alive() and not errors
    finally:
        first.close()
    with engine.connect() as conn:
        assert get_totals(conn) == {
            "*": {"emails": 1, "errors": 0, "requests": 2},
            "r1": {"emails": 1, "errors": 0, "requests": 2},
        }


# --- reading --------------------------------------------------------------------------------


@pytest.mark.parametrize("anonymize", [False, True])
def test_filters_order_and_pages(engine: Engine, anonymize: bool) -> None:
    rows = [("r1", ONE, 30), ("r2", ONE, 10), ("r1", TWO, 20), ("r2", TWO, 30), ("r1", ONE, 40)]
    with engine.begin() as conn:
        for resource_id, email, ts in rows:
            log_request(
                conn, resource_id=resource_id, email=email, count=ts, timestamp=ts, anonymize=anonymize
            )
            log_error(
                conn,
                resource_id=resource_id,
                email=email,
                message=f"m{ts}",
                timestamp=ts,
                anonymize=anonymize,
            )

    def keys(found: list[dict[str, object]]) -> list[tuple[object, object]]:
        return [(row["resource_id"], row["timestamp"]) for row in found]

    with engine.connect() as conn:
        for read in (get_requests, get_errors):
            found = read(conn, anonymize=anonymize)
            assert all("id" not in row for row in found)
            # Newest first; within one second, the later row first.
            assert keys(found) == [("r1", 40), ("r2", 30), ("r1", 30), ("r1", 20), ("r2", 10)]
            assert keys(read(conn, resource_id="r2", anonymize=anonymize)) == [("r2", 30), ("r2", 10)]
            assert keys(read(conn, email=ONE, anonymize=anonymize)) == [("r1", 40), ("r1", 30), ("r2", 10)]
            assert keys(read(conn, email=TWO, resource_id="r1", anonymize=anonymize)) == [("r1", 20)]
            assert keys(read(conn, offset=1, limit=2, anonymize=anonymize)) == [("r2", 30), ("r1", 30)]
            assert keys(read(conn, offset=4, limit=100, anonymize=anonymize)) == [("r2", 10)]
            assert read(conn, offset=5, anonymize=anonymize) == []
            assert read(conn, limit=0, anonymize=anonymize) == []
            assert read(conn, email="nobody@e.com", anonymize=False) == []
            with pytest.raises(ValueError, match="must not be negative"):
                read(conn, offset=-1)
        if anonymize:
            # The filter is hashed like the stored value, so any case of the address finds it.
            assert len(get_requests(conn, email="ONE@e.com", anonymize=True)) == 3
            # A plain filter finds nothing among hashes.
            assert get_requests(conn, email=ONE, anonymize=False) == []
        assert set(get_requests(conn, limit=1)[0]) == {"count", "domain", "email", "resource_id", "timestamp"}
        assert set(get_errors(conn, limit=1)[0]) == {"timestamp", "resource_id", "email", "message"}


# --- the one-off migration ------------------------------------------------------------------


def test_anonymize_existing_rewrites_plain_addresses(engine: Engine) -> None:
    with engine.begin() as conn:
        log_request(conn, resource_id="r1", email=ONE, count=432, timestamp=12)
        log_request(conn, resource_id="r1", email="TWO@E.com", count=None, timestamp=13)
        log_request(conn, resource_id="r2", email=TWO, count=None, timestamp=14)
        log_request(conn, resource_id="r2", email=TWO, count=None, timestamp=15, anonymize=True)
        log_error(conn, resource_id="r1", email=ONE, message="something went wrong", timestamp=12)
        # A row from before the legacy stored domains.
        conn.execute(sa.text("UPDATE ckan.requests SET domain = NULL WHERE timestamp = 12"))

    with engine.begin() as conn:
        report = anonymize_existing(conn, dry_run=True)
    assert report == {"requests": 3, "errors": 1, "addresses": 3, "already_hashed": 1}
    with engine.connect() as conn:
        assert all_emails(conn, "requests")[:3] == [ONE, "TWO@E.com", TWO]
        assert all_emails(conn, "errors") == [ONE]

    with engine.begin() as conn:
        assert anonymize_existing(conn) == report
    with engine.connect() as conn:
        assert get_requests(conn) == [
            {
                "count": None,
                "domain": "e.com",
                "email": anonymize_email(TWO),
                "resource_id": "r2",
                "timestamp": t,
            }
            for t in (15, 14)
        ] + [
            {
                "count": None,
                "domain": "e.com",
                "email": anonymize_email(TWO),
                "resource_id": "r1",
                "timestamp": 13,
            },
            {
                "count": 432,
                "domain": "e.com",
                "email": anonymize_email(ONE),
                "resource_id": "r1",
                "timestamp": 12,
            },
        ]
        assert get_errors(conn) == [
            {
                "timestamp": 12,
                "resource_id": "r1",
                "email": anonymize_email(ONE),
                "message": "something went wrong",
            }
        ]
        # The email filter now finds the rewritten rows.
        assert len(get_requests(conn, email="two@E.COM", anonymize=True)) == 3

    with engine.begin() as conn:
        assert anonymize_existing(conn) == {"requests": 0, "errors": 0, "addresses": 0, "already_hashed": 5}


def test_anonymize_existing_on_empty_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        assert anonymize_existing(conn) == {"requests": 0, "errors": 0, "addresses": 0, "already_hashed": 0}
