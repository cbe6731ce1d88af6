"""A stand-in webhook subscriber: receives the energy hub's POSTs and checks their signatures.

Each receiver is a ``name`` under ``mount`` on a ``StandInServer`` (``url(name)``). A POST is
recorded with its headers, raw bytes, parsed JSON and whether its ``x-hub-signature`` is right for
the secret given with ``set_secret`` (none given: the empty secret, as the sender signs a null
one). The check is written here from the legacy's rule (``sha256=`` + base64 of HMAC-SHA256 over
the raw body), independently of the sender's code, so a test of the two checks one against the
other. Receivers answer 200, or what ``fail`` asks of the next requests. No pytest here.
"""

import base64
import hashlib
import hmac
import json
import threading
from dataclasses import dataclass
from typing import Any

from ecr_pipelines.dev.standins.server import RecordedRequest, Reply, Route, StandInServer

SIGNATURE_HEADER = "x-hub-signature"


@dataclass(frozen=True)
class Received:
    name: str
    headers: dict[str, str]
    body: bytes
    json: Any  # None when the body is not JSON
    signature_ok: bool
    status: int  # what the receiver answered


def expected_signature(secret: str | None, body: bytes) -> str:
    digest = hmac.new((secret or "").encode(), body, hashlib.sha256).digest()
    return "sha256=" + base64.b64encode(digest).decode()


class WebhookReceiver:
    """Receivers at ``{mount}/{name}`` (POST) on ``server``."""

    def __init__(self, server: StandInServer, mount: str = "/hooks") -> None:
        self.server = server
        self.mount = "/" + mount.strip("/")
        self._lock = threading.Lock()
        self._secrets: dict[str, str | None] = {}
        self._failures: dict[str, tuple[int, int | None]] = {}  # name -> (status, times left or None)
        self._received: list[Received] = []
        server.add(Route(self.mount + "/*", method="POST", handler=self._receive))

    def url(self, name: str) -> str:
        return self.server.url(f"{self.mount}/{name}")

    def set_secret(self, name: str, secret: str | None) -> None:
        with self._lock:
            self._secrets[name] = secret

    def fail(self, name: str, status: int = 500, times: int | None = 1) -> None:
        """Answer ``status`` to the next ``times`` POSTs to ``name`` (every one when None)."""
        with self._lock:
            self._failures[name] = (status, times)

    def received(self, name: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if name is None or r.name == name]

    def all_signed(self) -> bool:
        """Every POST so far carried the right signature (True when none came)."""
        return all(r.signature_ok for r in self.received())

    def clear(self) -> None:
        with self._lock:
            self._received.clear()

    def _status(self, name: str) -> int:
        status, times = self._failures.get(name, (200, None))
        if status == 200:
            return 200
        if times is None:
            return status
        if times <= 0:
            del self._failures[name]
            return 200
        self._failures[name] = (status, times - 1)
        return status

    def _receive(self, request: RecordedRequest) -> Reply:
        name = request.path[len(self.mount) + 1 :]
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            parsed = json.loads(request.body)
        except ValueError:
            parsed = None
        with self._lock:
            expected = expected_signature(self._secrets.get(name), request.body)
            given = headers.get(SIGNATURE_HEADER, "")
            ok = hmac.compare_digest(given.encode(), expected.encode())
            status = self._status(name)
            self._received.append(Received(name, headers, request.body, parsed, ok, status))
        return Reply.json({"success": status == 200}, status=status)
