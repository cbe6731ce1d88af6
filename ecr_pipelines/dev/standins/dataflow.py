"""A stand-in data-flow (Airflow experimental API behind HAWK), for the data store's DAG trigger.

It answers the two calls the data store makes, as data-flow does:

* ``POST /api/experimental/dags/<dag_id>/dag_runs`` (JSON ``{"conf": {...}}``) -> a new run,
  ``{"execution_date": ..., "message": "Created <DagRun ...>", "run_id": "manual__<ts>+00:00"}``;
* ``GET /api/experimental/dags/<dag_id>/dag_runs/<execution date>`` -> ``{"state": ...}``, the
  next of ``states`` for that run (the last one repeats): ``running, running, success`` by default.

Every request must carry a HAWK ``Authorization`` that ``mohawk.Receiver`` accepts for the
configured id and key (sha256, body and content type hashed), else 401 ``Unauthorized`` as
data-flow's API auth backend answers; like it, nonces are not recorded. Answers are signed
(``Server-Authorization``); ``response_signing`` can leave the header out (``"none"``) or sign
with another key (``"wrong_key"``) to test the client's check. An unknown DAG or run is a 404
with Airflow's ``{"error": ...}``. Faults (a 500, a delay) are injected on the server as for any
stand-in (``server.inject``). Nothing here depends on pytest: the demo may serve it.
"""

import json
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

import mohawk
import mohawk.exc

from ecr_pipelines.dev.standins.server import RecordedRequest, Reply, Route, StandInServer

DAGS_PREFIX = "/api/experimental/dags/"
DEFAULT_ID = "data-store"
DEFAULT_KEY = "stand-in-dataflow-key"
DEFAULT_DAG_ID = "DSSGenericPipeline"
DEFAULT_STATES = ("running", "running", "success")
JSON = "application/json"
Signing = Literal["valid", "none", "wrong_key"]


@dataclass
class DagRun:
    """One triggered run: what it was triggered with and the states still to report."""

    dag_id: str
    run_id: str
    execution_date: str
    conf: dict[str, Any]
    states: Iterator[str]
    last_state: str = ""
    polls: int = 0

    def next_state(self) -> str:
        self.last_state = next(self.states, self.last_state)
        self.polls += 1
        return self.last_state


@dataclass
class _Refusal(Exception):
    status: int
    body: bytes
    content_type: str = JSON


class DataflowStandIn:
    """data-flow's trigger and run-state endpoints on a ``StandInServer``.

    Pass the server of a test (the ``standin`` fixture) or let the stand-in start its own (use it
    as a context manager then). ``states`` is the sequence every new run reports; change it (or a
    run's own, ``runs[execution_date].states``) between triggers as a test needs.
    """

    def __init__(
        self,
        server: StandInServer | None = None,
        *,
        hawk_id: str = DEFAULT_ID,
        hawk_key: str = DEFAULT_KEY,
        dag_ids: Iterable[str] = (DEFAULT_DAG_ID,),
        states: Iterable[str] = DEFAULT_STATES,
        response_signing: Signing = "valid",
    ) -> None:
        self._own = server is None
        self.server = server if server is not None else StandInServer()
        self.hawk_id = hawk_id
        self.hawk_key = hawk_key
        self.dag_ids = set(dag_ids)
        self.states = tuple(states)
        self.response_signing: Signing = response_signing
        self.runs: dict[str, DagRun] = {}
        self.refused: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._last_trigger = datetime.min.replace(tzinfo=UTC)
        self.server.add(Route(DAGS_PREFIX + "*", method="POST", handler=self._handle))
        self.server.add(Route(DAGS_PREFIX + "*", method="GET", handler=self._handle))

    # -- life cycle (only for a server of its own) ---------------------------------------------------
    def __enter__(self) -> "DataflowStandIn":
        if self._own:
            self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._own:
            self.server.stop()

    # -- for clients ---------------------------------------------------------------------------------
    def env(self, dag_id: str | None = None) -> dict[str, str]:
        """The ``DATAFLOW_*`` variables that point the data store at this stand-in."""
        return {
            "DATAFLOW_BASE_URL": self.server.url(),
            "DATAFLOW_HAWK_ID": self.hawk_id,
            "DATAFLOW_HAWK_KEY": self.hawk_key,
            "DATAFLOW_UPLOADER_DAG_ID": dag_id or min(self.dag_ids, default=DEFAULT_DAG_ID),
        }

    @property
    def triggers(self) -> list[DagRun]:
        """The runs started so far, oldest first."""
        with self._lock:
            return list(self.runs.values())

    # -- the API -------------------------------------------------------------------------------------
    def _handle(self, request: RecordedRequest) -> Reply:
        try:
            receiver = self._authenticate(request)
        except _Refusal as refusal:
            with self._lock:
                self.refused.append(request)
            return Reply(refusal.status, refusal.body, {"Content-Type": refusal.content_type})
        try:
            status, answer = self._answer(request)
        except _Refusal as refusal:
            status, answer = refusal.status, json.loads(refusal.body)
        body = json.dumps(answer).encode()
        return Reply(status, body, {"Content-Type": JSON, **self._signature(receiver, body)})

    def _authenticate(self, request: RecordedRequest) -> mohawk.Receiver:
        headers = {k.lower(): v for k, v in request.headers.items()}

        def lookup(sender_id: str) -> dict[str, str]:
            if sender_id != self.hawk_id:
                raise LookupError("unknown sender")
            return {"id": self.hawk_id, "key": self.hawk_key, "algorithm": "sha256"}

        try:
            return mohawk.Receiver(
                lookup,
                headers.get("authorization"),
                self._request_url(request, headers),
                request.method,
                content=request.body,
                content_type=headers.get("content-type"),
                # data-flow keeps no nonces; a callable (never "seen") stops mohawk warning so.
                seen_nonce=lambda *_: False,
            )
        except mohawk.exc.HawkFail:
            raise _Refusal(401, b"Unauthorized", "text/html; charset=utf-8") from None

    @staticmethod
    def _request_url(request: RecordedRequest, headers: dict[str, str]) -> str:
        # What Flask's request.url gives data-flow: the Host the client addressed, path and query.
        # The query comes back re-encoded from the parsed form; the API's paths carry none.
        query = f"?{urlencode(request.query)}" if request.query else ""
        return f"http://{headers.get('host', '')}{request.path}{query}"

    def _answer(self, request: RecordedRequest) -> tuple[int, dict[str, Any]]:
        parts = request.path[len(DAGS_PREFIX) :].split("/")
        if len(parts) < 2 or parts[1] != "dag_runs" or len(parts) > 3:
            raise _Refusal(404, b'{"error": "not found"}')
        dag_id = parts[0]
        if dag_id not in self.dag_ids:
            raise _Refusal(404, json.dumps({"error": f"Dag id {dag_id} not found"}).encode())
        if request.method == "POST" and len(parts) == 2:
            return 200, self._trigger(dag_id, request)
        if request.method == "GET" and len(parts) == 3:
            return 200, self._state(dag_id, parts[2])
        raise _Refusal(405, b'{"error": "method not allowed"}')

    def _trigger(self, dag_id: str, request: RecordedRequest) -> dict[str, Any]:
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            raise _Refusal(400, b'{"error": "the body is not JSON"}') from None
        conf = data.get("conf") if isinstance(data, dict) else None
        if conf is not None and not isinstance(conf, dict):
            raise _Refusal(400, b'{"error": "conf must be an object"}')
        with self._lock:
            # Two triggers within a microsecond would share an execution date (Airflow refuses
            # that); the stand-in moves the second one on instead.
            when = max(datetime.now(UTC), self._last_trigger + timedelta(microseconds=1))
            self._last_trigger = when
            execution_date = when.isoformat(timespec="microseconds")
            run_id = f"manual__{execution_date}"
            run = DagRun(dag_id, run_id, execution_date, conf or {}, iter(self.states))
            self.runs[execution_date.split("+")[0]] = run
        readable = when.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
        return {
            "execution_date": execution_date,
            "message": f"Created <DagRun {dag_id} @ {readable}: {run_id}, externally triggered: True>",
            "run_id": run_id,
        }

    def _state(self, dag_id: str, execution_date: str) -> dict[str, Any]:
        with self._lock:
            run = self.runs.get(execution_date)
            if run is None or run.dag_id != dag_id:
                message = f"Dag Run for date {execution_date} not found in dag {dag_id}"
                raise _Refusal(404, json.dumps({"error": message}).encode())
            return {"state": run.next_state()}

    def _signature(self, receiver: mohawk.Receiver, body: bytes) -> dict[str, str]:
        if self.response_signing == "none":
            return {}
        if self.response_signing == "wrong_key":
            # respond() signs with the credentials the request was checked with; another key
            # there gives a well-formed header the client must not accept.
            receiver.resource.credentials = {**receiver.resource.credentials, "key": self.hawk_key + "-not"}
        return {"Server-Authorization": receiver.respond(content=body, content_type=JSON)}
