"""Worker processes for the CPU-bound per-item work of a batch stage (no Dagster).

The batch runner (``ecr_pipelines.lib.batch``) keeps claiming, recording and reporting in the
run's own process; a stage whose items cost CPU (parsing, validating, serialising XML) hands each
claimed batch's items to :class:`ItemWorkers`, which runs ``task(state, item)`` in up to
``processes`` worker processes and gives back one ``Outcome`` per item, in order.

* **Processes, not threads**: the work holds the GIL. They are started with ``spawn`` (no
  ``fork`` of a process that runs threads: Dagster's, the HTTP pools', a sibling stage's), once
  per stage run, and only when they pay: more than one item due, more than one process asked for,
  and the stage's ``pays(due)`` (the IATI stages, :func:`weighs_enough`: the due documents
  weigh at least ``MIN_PARALLEL_BYTES``). Otherwise the tasks run here, one after the other,
  exactly as before.
* **State**: ``state`` is pickled into each worker once. :class:`StageResources` carries the
  run's database URL and blob store, and gives a worker its own engine, built on first use.
* **One item per worker at a time**, so a worker's death names exactly one item.
* **Failures are outcomes**: a task that raises gives its item ``failed(item, WorkerFailure)``
  (default: ``left_due`` with error class ``worker_error``); a worker that dies (killed, out of
  memory) gives its item ``worker_died`` and is replaced. The item's claim never left the run,
  so nobody else worked on it, and it is due again for the next run.
* **Workers never outlive the run's claims**: :meth:`ItemWorkers.stop` ends busy workers before it
  returns (the runner then releases the claims), and a worker whose parent dies ends itself (the
  kernel's parent-death signal on Linux, a watch on the parent pid elsewhere), so an orphan never
  goes on with an item another run may have claimed since.
"""

import contextlib
import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, Generic, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ecr_pipelines.lib.batch import Outcome, Stage
from ecr_pipelines.lib.blobstore import BlobStore
from ecr_pipelines.lib.settings import env_number

log = logging.getLogger(__name__)

S = TypeVar("S")
I = TypeVar("I")  # noqa: E741 - the item type

START_METHOD = "spawn"
# The default number of processes: the CPUs this process may use, at most this many (each worker
# holds one document's parse and a database connection; more rarely pays on one machine).
MAX_DEFAULT_PROCESSES = 8
# Starting a worker costs about a second of CPU (interpreter, lxml, SQLAlchemy); two workers win
# that back after a few seconds of work, a few tens of MB of XML.
MIN_PARALLEL_BYTES = 32 * 1024 * 1024
STOP_SECONDS = 10.0
PARENT_POLL_SECONDS = 1.0
PR_SET_PDEATHSIG = 1

WORKER_ERROR = "worker_error"
WORKER_DIED = "worker_died"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def processes_setting(variable: str, requested: int | None = None) -> int:
    """How many processes a run uses: ``requested`` (the run config) when given, else the
    environment ``variable``, else the CPUs (at most ``MAX_DEFAULT_PROCESSES``); at least 1."""
    if requested is None:
        requested = env_number(variable, min(cpu_count(), MAX_DEFAULT_PROCESSES))
    return max(1, requested)


@dataclass(frozen=True)
class WorkerFailure:
    """Why an item has no outcome of its task: ``error`` is ``worker_error`` (the task raised) or
    ``worker_died`` (its process ended while working on it)."""

    error: str
    message: str
    pid: int | None = None


class StageResources:
    """The database and blob store of a stage's per-item work, and its options.

    In the run's own process it hands out the run's engine. Pickled into a worker it carries the
    URL instead (an engine and its pooled connections cannot cross a process boundary), and the
    worker builds its own engine on first use; the blob store rebuilds itself
    (``LocalBlobStore`` from its folder, ``S3BlobStore`` from bucket, prefix, endpoint and region).
    """

    def __init__(self, engine: Engine, store: BlobStore, **options: Any) -> None:
        self._engine: Engine | None = engine
        self.url = engine.url.render_as_string(hide_password=False)
        self.store = store
        self.options = options
        self._built = False

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            # One item at a time per worker: a small pool is plenty.
            self._engine = sa.create_engine(self.url, pool_pre_ping=True, pool_size=2, max_overflow=2)
            self._built = True
        return self._engine

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "store": self.store, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _engine=None, _built=False)

    def close(self) -> None:
        if self._built and self._engine is not None:
            self._engine.dispose()


def weighs_enough(
    engine: Engine, stage: Stage, size: str, min_bytes: int = MIN_PARALLEL_BYTES
) -> Callable[[Sequence[Any]], bool]:
    """A ``pays`` rule: processes pay when the due items' ``size`` (a column of the stage's table,
    in bytes; unknown sizes count 0) adds up to ``min_bytes`` or more."""
    sql = sa.text(f"SELECT coalesce(sum({size}), 0) FROM {stage.table} WHERE {stage.key}::text = ANY(:keys)")

    def pays(due: Sequence[Any]) -> bool:
        with engine.connect() as conn:
            total = conn.execute(sql, {"keys": [str(key) for key in due]}).scalar()
        return int(total or 0) >= min_bytes

    return pays


def left_due(item: Any, failure: WorkerFailure) -> Outcome:
    """The default outcome of an item without a result: left as it is, due again next run."""
    key = item[0] if isinstance(item, tuple | list) else item
    return Outcome(str(key), "left_due", error=failure.error, message=failure.message)


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    busy: int | None = None  # index of the item it works on

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class ItemWorkers(Generic[S, I]):
    """``task(state, item) -> Outcome`` for a stage's items, in worker processes once started.

    ``task`` and ``failed`` must be importable functions (or ``functools.partial`` of them) and
    ``state`` picklable: they travel to each worker. Usable as the runner's ``workers`` (it calls
    :meth:`start` and :meth:`stop`) and in ``process`` (:meth:`map`, :meth:`rows`).
    """

    def __init__(
        self,
        task: Callable[[S, I], Outcome],
        state: S,
        processes: int,
        *,
        failed: Callable[[I, WorkerFailure], Outcome] = left_due,
        pays: Callable[[Sequence[Any]], bool] | None = None,
        name: str = "stage",
    ) -> None:
        self.task = task
        self.state = state
        self.processes = max(1, processes)
        self.failed = failed
        self.pays = pays
        self.name = name
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    @property
    def started(self) -> int:
        return len(self._workers)

    def start(self, due: Sequence[Any]) -> int:
        """Start ``min(processes, len(due))`` workers if that is more than one and they pay;
        returns the number of processes doing the work (1: this one)."""
        count = min(self.processes, len(due))
        if self._workers or count <= 1 or (self.pays is not None and not self.pays(due)):
            return self.started or 1
        self._workers = [self._spawn() for _ in range(count)]
        log.info("%s: started %d worker processes (%s)", self.name, count, START_METHOD)
        return count

    def __enter__(self) -> "ItemWorkers[S, I]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def rows(self, rows: Sequence[sa.Row]) -> list[Outcome]:
        """A ``ProcessBatch``: each claimed row, as a plain tuple, is one item."""
        return self.map([tuple(row) for row in rows])  # type: ignore[misc]

    def map(self, items: Sequence[I]) -> list[Outcome]:
        """One outcome per item, in the items' order; never raises for an item."""
        with self._lock:
            if not self._workers:
                return [self._here(item) for item in items]
            return self._dispatch(items)

    def stop(self) -> None:
        """Stop every worker: idle ones finish, busy ones (the run is ending without their
        results) are terminated; when this returns, none is left."""
        workers, self._workers = self._workers, []
        for worker in workers:
            if worker.busy is None and worker.process.is_alive():
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
            else:
                worker.process.terminate()
        for worker in workers:
            worker.process.join(STOP_SECONDS)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()

    def _here(self, item: I) -> Outcome:
        try:
            return self.task(self.state, item)
        except Exception as exc:
            log.exception("%s: task failed", self.name)
            return self.failed(item, WorkerFailure(WORKER_ERROR, f"{type(exc).__name__}: {exc}"))

    def _spawn(self) -> _Worker:
        context = multiprocessing.get_context(START_METHOD)
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=_serve,
            args=(theirs, self.task, self.state, os.getpid()),
            name=f"{self.name}-worker",
            daemon=True,
        )
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def _replace(self, slot: int) -> None:
        old = self._workers[slot]
        old.process.join(STOP_SECONDS)
        old.conn.close()
        self._workers[slot] = self._spawn()

    def _dispatch(self, items: Sequence[I]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(items)
        waiting = deque(range(len(items)))
        while True:
            for slot in range(len(self._workers)):
                if self._workers[slot].busy is None and waiting:
                    index = waiting.popleft()
                    refused = self._send(slot, index, items[index])
                    if refused is not None:
                        results[index] = self.failed(items[index], refused)
            busy = [worker for worker in self._workers if worker.busy is not None]
            if not busy:
                break
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            for slot, worker in enumerate(self._workers):
                if worker.busy is None or (worker.conn not in ready and worker.process.sentinel not in ready):
                    continue
                index, worker.busy = worker.busy, None
                results[index] = self._answer(slot, items[index])
        return cast(list[Outcome], results)  # every index was answered

    def _send(self, slot: int, index: int, item: I) -> WorkerFailure | None:
        try:
            payload = pickle.dumps((index, item), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            return WorkerFailure(
                WORKER_ERROR, f"could not be handed to a worker: {type(exc).__name__}: {exc}"
            )
        for attempt in (1, 2):
            worker = self._workers[slot]
            if worker.process.is_alive():
                try:
                    worker.conn.send_bytes(payload)
                    worker.busy = index
                    return None
                except OSError:
                    pass
            # It died while idle (nothing of this item ran there): a new one takes the item.
            if attempt == 1:
                log.warning("%s: worker %d ended while idle; starting another", self.name, worker.pid)
                self._replace(slot)
        return WorkerFailure(WORKER_DIED, "no worker process could be started for this item")

    def _answer(self, slot: int, item: I) -> Outcome:
        worker = self._workers[slot]
        try:
            reply = worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError, pickle.UnpicklingError):
            reply = None
        if reply is None:
            pid = worker.pid
            if worker.process.is_alive():  # it sent something unreadable: it is not to be trusted
                worker.process.kill()
            worker.process.join(STOP_SECONDS)
            message = (
                f"worker process {pid} ended ({_exit_text(worker.process.exitcode)}) while working on this "
                "item; nothing of it was recorded and it stays due"
            )
            log.warning("%s: %s", self.name, message)
            self._replace(slot)
            return self.failed(item, WorkerFailure(WORKER_DIED, message, pid))
        _index, status, *rest = reply
        if status == "ok":
            outcome: Outcome = rest[0]
            outcome.worker = worker.pid
            return outcome
        message, trace = rest
        log.warning("%s: worker %d: %s\n%s", self.name, worker.pid, message, trace)
        return self.failed(item, WorkerFailure(WORKER_ERROR, message, worker.pid))


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def _serve(conn: Connection, task: Callable[[Any, Any], Outcome], state: Any, parent: int) -> None:
    """A worker's loop: one item in, one reply out, until ``None`` or the parent goes."""
    _follow_parent(parent)
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                return
            if message is None:
                return
            index, item = message
            try:
                reply: tuple[Any, ...] = (index, "ok", task(state, item))
            except BaseException as exc:
                reply = (index, "raised", f"{type(exc).__name__}: {exc}", traceback.format_exc())
            try:
                conn.send(reply)
            except (EOFError, OSError):
                return
            except Exception as exc:  # the outcome does not pickle
                conn.send(
                    (index, "raised", f"outcome could not be sent back: {type(exc).__name__}: {exc}", "")
                )
    finally:
        close = getattr(state, "close", None)
        if callable(close):
            close()


def _follow_parent(parent: int) -> None:
    """End this worker when the process that started it ends, whatever killed it.

    Linux sends the parent-death signal when the *thread* that started the worker ends; workers
    are started (and replaced) by the thread running the stage, which outlives them."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent:
            os._exit(1)
