"""The ledger client against the stand-in, and the address derivation of measurements."""

import hashlib
import socket
from datetime import UTC, datetime, timedelta, timezone

import pytest
from bip32 import BIP32

from ecr_pipelines.dev.standins import StandInServer
from ecr_pipelines.dev.standins.ledger import LedgerStandIn
from ecr_pipelines.energy.ledger import (
    GGO,
    MEASUREMENT,
    SETTLEMENT,
    LedgerClient,
    LedgerError,
    LedgerGgo,
    Settlement,
    SettlementPart,
    address,
    address_of,
    child_index,
    error_kind,
)
from ecr_pipelines.lib.http import ErrorKind, FetchError, make_session

XPRV = BIP32.from_seed(bytes(32)).get_xpriv()
HOUR = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture
def ledger(standin: StandInServer) -> LedgerStandIn:
    return LedgerStandIn(standin)


@pytest.fixture
def client(ledger: LedgerStandIn) -> LedgerClient:
    return LedgerClient(
        make_session(retries=0, connect_timeout=2, read_timeout=5), ledger.env()["LEDGER_URL"]
    )


# -- addresses ------------------------------------------------------------------------------------


def test_addresses_are_deterministic_and_differ_by_prefix_and_hour() -> None:
    first = {prefix: address_of(XPRV, prefix, HOUR) for prefix in (MEASUREMENT, GGO, SETTLEMENT)}
    assert first == {prefix: address_of(XPRV, prefix, HOUR) for prefix in first}
    assert len(set(first.values())) == 3
    for prefix, value in first.items():
        assert value is not None and len(value) == 70
        int(value, 16)
        # 3 bytes of namespace first, then key hash and check sum
        assert value[:6] == hashlib.sha512(prefix.encode()).digest()[:3].hex()
    assert address_of(XPRV, SETTLEMENT, HOUR + timedelta(hours=1)) != first[SETTLEMENT]
    # The same instant in another zone is the same child.
    assert address_of(XPRV, SETTLEMENT, HOUR.astimezone(timezone(timedelta(hours=2)))) == first[SETTLEMENT]
    # A fixed value: a change of the derivation would move every address on the ledger.
    assert first[SETTLEMENT] == "ba4817e95b3a9e6720dbb3f8cd8c109ea310841fd20c7a22494783647f9d057d0b5cb0"


def test_address_structure() -> None:
    key = bytes(range(33))
    value = address("GGO", key)
    namespace = hashlib.sha512(b"GGO").digest()[:3]
    key_hash = hashlib.sha224(hashlib.sha512(key).digest()).digest()
    check = hashlib.sha512(hashlib.sha512(namespace + key_hash).digest()).digest()[:4]
    assert value == (namespace + key_hash + check).hex()


def test_child_index_is_seconds_since_the_epoch() -> None:
    assert child_index(HOUR) == 1_704_067_200
    assert child_index(HOUR.replace(second=30, microsecond=5)) == 1_704_067_200
    with pytest.raises(ValueError):
        child_index(datetime(2024, 1, 1))


def test_a_point_without_a_key_has_no_address() -> None:
    assert address_of(None, SETTLEMENT, HOUR) is None
    assert address_of("", SETTLEMENT, HOUR) is None
    with pytest.raises(ValueError):
        address_of(XPRV, "OTHER", HOUR)
    with pytest.raises(ValueError):
        address_of("xprv-not-a-key", SETTLEMENT, HOUR)


# -- client ---------------------------------------------------------------------------------------


def test_found_settlement_and_ggo(ledger: LedgerStandIn, client: LedgerClient) -> None:
    ledger.put_settlement("s1", "m1", [("g1", 100), ("g2", 50)])
    ledger.put_ggo("g1", 100, HOUR, HOUR + timedelta(hours=1), "DK1", "T020000", "F01050100")
    assert client.get_settlement("s1") == Settlement(
        "s1", "m1", (SettlementPart("g1", 100), SettlementPart("g2", 50))
    )
    assert client.get_ggo("g1") == LedgerGgo(
        "g1", 100, HOUR, HOUR + timedelta(hours=1), "DK1", "T020000", "F01050100"
    )
    assert ledger.reads == {"s1": 1, "g1": 1}


def test_nothing_at_the_address_is_none(ledger: LedgerStandIn, client: LedgerClient) -> None:
    assert client.get_settlement("nothing") is None
    assert client.get_ggo("nothing") is None
    assert ledger.reads["nothing"] == 2


def test_a_500_is_a_classified_error(ledger: LedgerStandIn, client: LedgerClient) -> None:
    ledger.put_settlement("s1", "m1", [])
    ledger.fail("s1", 500)
    with pytest.raises(FetchError) as caught:
        client.get_settlement("s1")
    assert caught.value.kind is ErrorKind.HTTP_STATUS and caught.value.status == 500
    assert error_kind(caught.value) == "http_status"
    ledger.recover("s1")
    assert client.get_settlement("s1") == Settlement("s1", "m1", ())


def test_another_ledger_code_is_a_ledger_error(ledger: LedgerStandIn, client: LedgerClient) -> None:
    ledger.fail("s1", 503, code=31)
    with pytest.raises(LedgerError) as caught:
        client.get_settlement("s1")
    assert caught.value.code == 31 and error_kind(caught.value) == "ledger_error"


def test_a_malformed_document_is_invalid(ledger: LedgerStandIn, client: LedgerClient) -> None:
    ledger.put("g1", {"amount": "many", "begin": HOUR.isoformat()})
    with pytest.raises(LedgerError) as caught:
        client.get_ggo("g1")
    assert caught.value.code is None and error_kind(caught.value) == "ledger_invalid"
    ledger.put("s1", {"measurement": "m1"})
    with pytest.raises(LedgerError):
        client.get_settlement("s1")


def test_unreachable_ledger_is_a_connection_error() -> None:
    # A bound port that does not listen refuses connections, and no other test can take it.
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{bound.getsockname()[1]}/ledger"
        client = LedgerClient(make_session(retries=0, connect_timeout=2, read_timeout=5), url)
        with pytest.raises(FetchError) as caught:
            client.get_settlement("s1")
    assert error_kind(caught.value) == "connection"
