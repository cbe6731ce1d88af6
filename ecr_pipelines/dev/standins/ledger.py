"""A stand-in for the ledger's Sawtooth REST API (read side), on a ``StandInServer``.

``GET {mount}/state/{address}`` answers ``{"data": "<base64 of a JSON document>", "head": ...,
"link": ...}`` for an address that holds something (``put_settlement``, ``put_ggo``), and the
Sawtooth error document with code 75 ("State Not Found", HTTP 404) for any other. ``fail``
makes one address answer with another status (a plain body, or a Sawtooth error document when a
code is given) until ``recover``. Reads are counted per address. ``env()`` gives the
``LEDGER_URL`` that points the energy hub at the stand-in. Used by the tests and the demo: no
pytest here.
"""

import base64
import hashlib
import json
import threading
from collections import Counter
from datetime import datetime
from typing import Any

from ecr_pipelines.dev.standins.server import RecordedRequest, Reply, Route, StandInServer

NOT_FOUND = 75


def _iso(value: datetime | str) -> str:
    return value.isoformat() if isinstance(value, datetime) else value


class LedgerStandIn:
    """Ledger state on ``server`` under ``mount``."""

    def __init__(self, server: StandInServer, mount: str = "/ledger") -> None:
        self.server = server
        self.mount = mount.rstrip("/")
        self.state: dict[str, dict[str, Any]] = {}
        self.reads: Counter[str] = Counter()
        self._failures: dict[str, tuple[int, int | None]] = {}
        self._lock = threading.Lock()
        self.server.add(Route(self.mount + "/state/*", handler=self._get_state))

    def url(self) -> str:
        return self.server.url(self.mount)

    def env(self) -> dict[str, str]:
        return {"LEDGER_URL": self.url()}

    # -- state ------------------------------------------------------------------------------------
    def put(self, address: str, document: dict[str, Any]) -> None:
        with self._lock:
            self.state[address] = document

    def put_settlement(self, address: str, measurement_address: str, parts: list[tuple[str, int]]) -> None:
        self.put(
            address,
            {
                "measurement": measurement_address,
                "parts": [{"ggo": ggo, "amount": amount} for ggo, amount in parts],
            },
        )

    def put_ggo(
        self,
        address: str,
        amount: int,
        begin: datetime | str,
        end: datetime | str,
        sector: str,
        tech_type: str,
        fuel_type: str,
    ) -> None:
        self.put(
            address,
            {
                "amount": amount,
                "begin": _iso(begin),
                "end": _iso(end),
                "sector": sector,
                "tech_type": tech_type,
                "fuel_type": fuel_type,
                # The real documents carry more (the owner's key, ...); readers ignore it.
                "next": None,
            },
        )

    def fail(self, address: str, status: int = 500, code: int | None = None) -> None:
        """Reads of ``address`` answer ``status`` (with a Sawtooth error document when ``code``
        is given) until ``recover``."""
        with self._lock:
            self._failures[address] = (status, code)

    def recover(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)

    @property
    def total_reads(self) -> int:
        with self._lock:
            return sum(self.reads.values())

    # -- HTTP ---------------------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, code: int, title: str, message: str) -> Reply:
        return Reply.json({"error": {"code": code, "title": title, "message": message}}, status)

    def _get_state(self, request: RecordedRequest) -> Reply:
        address = request.path[len(self.mount + "/state/") :]
        with self._lock:
            self.reads[address] += 1
            failure = self._failures.get(address)
            document = self.state.get(address)
        if failure is not None:
            status, code = failure
            if code is None:
                return Reply(status, b"Internal Server Error", {"Content-Type": "text/plain"})
            return self._error(status, code, "Ledger Error", f"the stand-in fails {address}")
        if document is None:
            return self._error(
                404, NOT_FOUND, "State Not Found", "There is no state data at the address specified."
            )
        data = json.dumps(document).encode()
        return Reply.json(
            {
                "data": base64.b64encode(data).decode("ascii"),
                "head": hashlib.sha256(data).hexdigest(),
                "link": self.server.url(request.path),
            }
        )
