"""A small threaded HTTP server that stands in for unreachable upstream APIs.

It serves recorded JSON and files through a route table, on 127.0.0.1 and an ephemeral port,
so that tests and the demo run the project's real clients (requests, retries, paging, streaming)
over a real socket. Faults can be injected per route: another status, a delay, a connection
reset, a truncated body, a missing header.

Route tables are Python objects or a ``routes.json`` in a folder of recordings::

    [{"path": "/rest/api/latest/fgasundertakings/", "query": {"pageNumber": "2"},
      "file": "fgas_page2.json", "headers": {"numberOfPages": "2"}},
     {"path": "/files/*", "dir": "files"},
     {"path": "/index.json", "file": "index.json", "template": true}]

``template`` bodies have ``{{base_url}}`` replaced by the server's own URL, so recorded
indices can point at files served by the same server.
"""

import argparse
import hashlib
import json
import mimetypes
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

BASE_URL_TOKEN = b"{{base_url}}"


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> "Reply":
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})


@dataclass
class Fault:
    """What goes wrong with the next ``times`` matching requests (every one when ``times`` is None)."""

    status: int | None = None
    delay: float = 0.0
    reset: bool = False
    truncate: int | None = None
    drop_headers: tuple[str, ...] = ()
    times: int | None = None


Handler = Callable[[RecordedRequest], Reply]


@dataclass
class Route:
    """One entry of the route table.

    ``path`` is exact, or a prefix when it ends in ``*``. ``query`` must be a subset of the
    request's query string; among matching routes the one with most query keys wins, then the
    one added last. The answer comes from ``handler``, ``json``, ``body``, ``file`` or, for a
    prefix route, ``dir`` (the rest of the path is the file name).
    """

    path: str
    method: str = "GET"
    query: dict[str, str] = field(default_factory=dict)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    body: bytes | None = None
    file: Path | None = None
    dir: Path | None = None
    template: bool = False
    handler: Handler | None = None
    faults: list[Fault] = field(default_factory=list)

    def matches(self, method: str, path: str, query: dict[str, str]) -> bool:
        if method != self.method and not (method == "HEAD" and self.method == "GET"):
            return False
        if self.path.endswith("*"):
            if not path.startswith(self.path[:-1]):
                return False
        elif path != self.path:
            return False
        return all(query.get(k) == v for k, v in self.query.items())

    def reply(self, request: RecordedRequest, base_url: str) -> Reply:
        if self.handler is not None:
            reply = self.handler(request)
        else:
            headers = dict(self.headers)
            if self.json is not None:
                body = json.dumps(self.json).encode()
                headers.setdefault("Content-Type", "application/json")
            elif self.body is not None:
                body = self.body
            elif self.file is not None or self.dir is not None:
                target = self.file if self.file is not None else self._dir_file(request.path)
                if target is None or not target.is_file():
                    return Reply(404, b'{"error": "not found"}', {"Content-Type": "application/json"})
                body = target.read_bytes()
                guessed = mimetypes.guess_type(target.name)[0]
                headers.setdefault("Content-Type", guessed or "application/octet-stream")
            else:
                body = b""
            reply = Reply(self.status, body, headers)
        if self.template:
            reply.body = reply.body.replace(BASE_URL_TOKEN, base_url.encode())
        return reply

    def _dir_file(self, path: str) -> Path | None:
        assert self.dir is not None
        rest = path[len(self.path) - 1 :]
        candidate = (self.dir / rest).resolve()
        return candidate if candidate.is_relative_to(self.dir.resolve()) else None

    def next_fault(self) -> Fault | None:
        for fault in self.faults:
            if fault.times is None:
                return fault
            if fault.times > 0:
                fault.times -= 1
                return fault
        return None


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: object) -> None:
        return  # tests read server.requests instead of stderr noise

    def _handle(self) -> None:
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = RecordedRequest(
            self.command, split.path, query, {k: v for k, v in self.headers.items()}, body, time.time()
        )
        stand_in = self.server.stand_in
        stand_in._record(request)
        route = stand_in.match(self.command, split.path, query)
        if route is None:
            reply = Reply(404, b'{"error": "no route"}', {"Content-Type": "application/json"})
            fault = None
        else:
            fault = route.next_fault()
            reply = route.reply(request, stand_in.url())
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.reset:
                self._reset()
                return
            if fault.status is not None:
                reply = Reply(fault.status, reply.body, reply.headers)
        self._send(reply, fault)

    def _send(self, reply: Reply, fault: Fault | None) -> None:
        headers = dict(reply.headers)
        if reply.status == 200 and "ETag" not in headers and reply.body:
            headers["ETag"] = '"' + hashlib.sha1(reply.body).hexdigest() + '"'
        headers["Content-Length"] = str(len(reply.body))
        for name in fault.drop_headers if fault else ():
            for key in [k for k in headers if k.lower() == name.lower()]:
                del headers[key]
        self.send_response(reply.status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if fault is not None and fault.truncate is not None:
            # Content-Length promises the whole body; closing early is what a dropped
            # upstream connection looks like to the client.
            self.wfile.write(reply.body[: fault.truncate])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(reply.body)

    def _reset(self) -> None:
        # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, OSError):
            self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    stand_in: "StandInServer"


class StandInServer:
    """Serve a route table on 127.0.0.1; use as a context manager or ``start()`` / ``stop()``."""

    def __init__(self, routes: Iterable[Route] = (), host: str = "127.0.0.1", port: int = 0) -> None:
        self.routes: list[Route] = list(routes)
        self.requests: list[RecordedRequest] = []
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_folder(cls, folder: str | Path, **kwargs: Any) -> "StandInServer":
        """Routes from ``folder/routes.json``; ``file`` and ``dir`` entries are relative to the folder."""
        folder = Path(folder)
        server = cls(**kwargs)
        server.load_routes(folder)
        return server

    def load_routes(self, folder: Path, mount: str = "") -> None:
        """Add the routes of a recordings folder, optionally under a path prefix ``mount``."""
        for entry in json.loads((folder / "routes.json").read_text(encoding="utf-8")):
            entry = dict(entry)
            for key in ("file", "dir"):
                if entry.get(key):
                    entry[key] = folder / entry[key]
            if "body" in entry:
                entry["body"] = entry["body"].encode()
            entry["path"] = mount + entry["path"]
            entry["faults"] = [Fault(**f) for f in entry.get("faults", [])]
            self.add(Route(**entry))

    # -- route table ---------------------------------------------------------------------------
    def add(self, route: Route) -> Route:
        with self._lock:
            self.routes.append(route)
        return route

    def route(self, path: str, **kwargs: Any) -> Route:
        return self.add(Route(path=path, **kwargs))

    def match(self, method: str, path: str, query: dict[str, str]) -> Route | None:
        with self._lock:
            candidates = [
                (len(r.query), i, r) for i, r in enumerate(self.routes) if r.matches(method, path, query)
            ]
        return max(candidates, key=lambda c: (c[0], c[1]))[2] if candidates else None

    def inject(
        self, path: str, fault: Fault, method: str = "GET", query: dict[str, str] | None = None
    ) -> None:
        """Attach ``fault`` to the route that a request for ``path`` would reach."""
        route = self.match(method, path, query or {})
        if route is None:
            raise KeyError(f"no route for {method} {path}")
        with self._lock:
            route.faults.insert(0, fault)

    def clear_faults(self) -> None:
        with self._lock:
            for route in self.routes:
                route.faults.clear()

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def requests_to(self, path: str, method: str | None = None) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path and (method is None or r.method == method)]

    # -- life cycle ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the stand-in server is not started")
        return self._httpd.server_address[1]

    def url(self, path: str = "") -> str:
        return f"http://{self._host}:{self.port}{path}"

    def start(self) -> "StandInServer":
        self._httpd = _Server((self._host, self._port), _RequestHandler)
        self._httpd.stand_in = self
        # A short poll: stop() waits for it, and tests stop a stand-in after every test.
        httpd = self._httpd
        self._thread = threading.Thread(
            target=lambda: httpd.serve_forever(poll_interval=0.05), name="stand-in", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "StandInServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a folder of recorded upstream answers.")
    parser.add_argument("folder", type=Path, help="folder with routes.json")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    with StandInServer.from_folder(args.folder, port=args.port) as server:
        print(f"serving {args.folder} on {server.url()} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
