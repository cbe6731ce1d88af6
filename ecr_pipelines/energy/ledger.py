"""The ledger: addresses of a metering point's measurements, and a read-only client for the
settlements and GGOs stored there (no Dagster).

The ledger is a Hyperledger Sawtooth network; its REST API answers ``GET /state/<address>`` with
``{"data": "<base64 of a JSON document>", "head": ..., "link": ...}``, or with an error document
``{"error": {"code": ..., "title": ..., "message": ...}}``. Code 75 means "nothing at that address",
which for a settlement is the normal answer for an hour to which nothing was retired: the client
turns it into ``None``. Any other error code is a ``LedgerError`` (kind ``ledger_error``); a
document that is not what the ledger promises is a ``LedgerError`` of kind ``ledger_invalid``;
transport failures and bare HTTP statuses are the shared ``FetchError`` kinds.

Addresses (as the legacy SDK derives them): a metering point holds a BIP32 extended private key;
the measurement that begins at ``begin`` belongs to its child number ``int(begin.timestamp())``
(seconds since the epoch; the legacy's comment says minutes, its code uses seconds), and the
address of each kind of ledger object is built from that child's compressed public key. A point
without a key has no addresses: nothing can have been retired to its measurements.
"""

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
import requests
from bip32 import BIP32

from ecr_pipelines.lib.http import ErrorKind, FetchError, check_scheme, classify

MEASUREMENT = "MEASUREMENT"
GGO = "GGO"
SETTLEMENT = "SETTLEMENT"
PREFIXES = (MEASUREMENT, GGO, SETTLEMENT)
NOT_FOUND = 75  # Sawtooth REST: "State Not Found"
LEDGER_ERROR = "ledger_error"
LEDGER_INVALID = "ledger_invalid"


# -- addresses ----------------------------------------------------------------------------------


def address(prefix: str, public_key: bytes) -> str:
    """The 35-byte ledger address (70 hex characters) of ``public_key`` in the namespace ``prefix``:
    3 bytes of namespace, 28 bytes of key hash, 4 bytes of check sum."""
    namespace = hashlib.sha512(prefix.encode()).digest()[:3]
    key_hash = hashlib.sha224(hashlib.sha512(public_key).digest()).digest()
    check = hashlib.sha512(hashlib.sha512(namespace + key_hash).digest()).digest()[:4]
    return (namespace + key_hash + check).hex()


@lru_cache(maxsize=1024)
def _parsed_key(extended_key: str) -> BIP32:
    # Parsing checks the key and computes the master public key: a disclosure may ask for the
    # addresses of 10^5 hours of one point, and this is done once per point.
    return BIP32.from_xpriv(extended_key)


def child_index(begin: datetime) -> int:
    """The child number of the measurement beginning at ``begin`` (seconds since the epoch)."""
    if begin.tzinfo is None:
        raise ValueError(f"a measurement's begin must carry its time zone, not {begin.isoformat()}")
    return int(begin.replace(second=0, microsecond=0).timestamp())


def child_public_key(extended_key: str, begin: datetime) -> bytes:
    """The compressed (33-byte) public key of the measurement beginning at ``begin``.

    Raises ``ValueError`` for a key that is not a BIP32 extended private key.
    """
    try:
        parsed = _parsed_key(extended_key)
    except Exception as exc:  # bip32 raises several types for a malformed key
        raise ValueError(f"not a BIP32 extended private key ({type(exc).__name__})") from None
    return parsed.get_pubkey_from_path([child_index(begin)])


def address_of(extended_key: str | None, prefix: str, begin: datetime) -> str | None:
    """The ``prefix`` address of the measurement beginning at ``begin`` of a point holding
    ``extended_key``; None when the point has no key."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown address prefix {prefix!r} (one of {', '.join(PREFIXES)})")
    if not extended_key:
        return None
    return address(prefix, child_public_key(extended_key, begin))


# -- documents ----------------------------------------------------------------------------------


class LedgerError(Exception):
    """The ledger answered with an error code other than "nothing there" (``code`` set, kind
    ``ledger_error``), or with a document that is not what it promises (kind ``ledger_invalid``)."""

    def __init__(self, message: str, *, code: int | None = None, address: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.address = address

    @property
    def kind(self) -> str:
        return LEDGER_ERROR if self.code is not None else LEDGER_INVALID

    def __str__(self) -> str:
        code = f" {self.code}" if self.code is not None else ""
        where = f" ({self.address})" if self.address else ""
        return f"{self.kind}{code}: {self.message}{where}"


@dataclass(frozen=True)
class SettlementPart:
    ggo: str  # the retired GGO's address
    amount: int


@dataclass(frozen=True)
class Settlement:
    address: str
    measurement: str  # the measurement's address
    parts: tuple[SettlementPart, ...]


@dataclass(frozen=True)
class LedgerGgo:
    address: str
    amount: int
    begin: datetime
    end: datetime
    sector: str
    tech_type: str
    fuel_type: str


def _integer(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerError(f"{what} is not an integer: {value!r}", address=where)
    return value


def _text(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise LedgerError(f"{what} is missing or not a string", address=where)
    return value


def _time(value: Any, what: str, where: str) -> datetime:
    text = _text(value, what, where)
    try:
        parsed = datetime.fromisoformat(text)  # 3.11+: "Z" and any ISO 8601 offset
    except ValueError:
        raise LedgerError(f"{what} is not an ISO 8601 time: {text!r}", address=where) from None
    if parsed.tzinfo is None:
        raise LedgerError(f"{what} has no time zone: {text!r}", address=where)
    return parsed


def parse_settlement(where: str, document: dict[str, Any]) -> Settlement:
    parts = document.get("parts")
    if not isinstance(parts, list):
        raise LedgerError("a settlement without a list of parts", address=where)
    parsed = []
    for part in parts:
        if not isinstance(part, dict):
            raise LedgerError("a settlement part that is not an object", address=where)
        parsed.append(
            SettlementPart(
                _text(part.get("ggo"), "a part's ggo", where),
                _integer(part.get("amount"), "a part's amount", where),
            )
        )
    measurement = document.get("measurement")
    return Settlement(where, measurement if isinstance(measurement, str) else "", tuple(parsed))


def parse_ggo(where: str, document: dict[str, Any]) -> LedgerGgo:
    return LedgerGgo(
        address=where,
        amount=_integer(document.get("amount"), "amount", where),
        begin=_time(document.get("begin"), "begin", where),
        end=_time(document.get("end"), "end", where),
        sector=_text(document.get("sector"), "sector", where),
        tech_type=_text(document.get("tech_type"), "tech_type", where),
        fuel_type=_text(document.get("fuel_type"), "fuel_type", where),
    )


# -- client ------------------------------------------------------------------------------------


class LedgerClient:
    """Reads state from the ledger's REST API; thread-safe as its ``requests`` session is (one
    session shared by the threads of a compile, as the other stages do)."""

    def __init__(self, session: requests.Session, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    def get_state(self, where: str) -> dict[str, Any] | None:
        """The JSON document at ``where``; None when nothing is there (code 75)."""
        url = f"{self.base_url}/state/{where}"
        check_scheme(url)
        try:
            response = self.session.get(url, headers={"Accept": "application/json"})
        except requests.exceptions.RequestException as exc:
            raise classify(exc, url) from exc
        try:
            body = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        # Sawtooth sends its error documents with a 4xx/5xx status; the code says what happened.
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            if error["code"] == NOT_FOUND:
                return None
            message = str(error.get("message") or error.get("title") or "no message")
            raise LedgerError(f"{message} (HTTP {response.status_code})", code=error["code"], address=where)
        if not response.ok:
            raise FetchError(ErrorKind.HTTP_STATUS, f"HTTP {response.status_code}", url, response.status_code)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, str):
            raise LedgerError("the answer has no base64 `data`", address=where)
        try:
            document = orjson.loads(base64.b64decode(data, validate=True))
        except (binascii.Error, orjson.JSONDecodeError) as exc:
            raise LedgerError(f"`data` is not base64 of a JSON document ({exc})", address=where) from None
        if not isinstance(document, dict):
            raise LedgerError("`data` is not a JSON object", address=where)
        return document

    def get_settlement(self, where: str) -> Settlement | None:
        document = self.get_state(where)
        return None if document is None else parse_settlement(where, document)

    def get_ggo(self, where: str) -> LedgerGgo | None:
        document = self.get_state(where)
        return None if document is None else parse_ggo(where, document)


def error_kind(exc: BaseException) -> str:
    """The class a stage stores for a failed ledger read."""
    if isinstance(exc, FetchError):
        return exc.kind.value
    if isinstance(exc, LedgerError):
        return exc.kind
    return "unexpected"
