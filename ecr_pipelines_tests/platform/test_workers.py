"""Worker processes for a stage's per-item work (``ecr_pipelines.lib.workers``): results in order
from other processes, a raising task and a killed worker as outcomes of their item only, no
processes where they do not pay, and the state (engine, blob stores) rebuilt across a pickle.

Two tests here start processes (about a second each)."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from ecr_pipelines.lib.batch import Outcome
from ecr_pipelines.lib.blobstore import LocalBlobStore, S3BlobStore, open_blob_store
from ecr_pipelines.lib.workers import (
    MAX_DEFAULT_PROCESSES,
    WORKER_DIED,
    WORKER_ERROR,
    ItemWorkers,
    StageResources,
    cpu_count,
    processes_setting,
)

if TYPE_CHECKING:  # not at run time: a worker imports this module, and Dagster takes seconds to load
    from ecr_pipelines.resources import DatabaseResource


def work(state: dict[str, int], item: tuple[str, str]) -> Outcome:
    """What the test's workers do with an item ``(key, action)``; importable, so spawnable."""
    key, action = item
    if action == "raise":
        raise ValueError(f"cannot take {key}")
    if action == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "hang":
        time.sleep(600)
    return Outcome(key, "done", counts={"offset": state["offset"]}, message=str(os.getpid()))


def test_items_run_in_other_processes_and_failures_stay_with_their_item() -> None:
    items = [("a", "ok"), ("b", "ok"), ("c", "raise"), ("d", "ok"), ("e", "die"), ("f", "ok"), ("g", "ok")]
    workers = ItemWorkers(work, {"offset": 7}, processes=2, name="test")
    with workers:
        assert workers.start([key for key, _ in items]) == 2
        processes = [worker.process for worker in workers._workers]
        outcomes = workers.map(items)
        # The pool outlives a batch: a second one goes to the same processes.
        again = workers.map([("h", "ok")])
        later = [worker.process for worker in workers._workers]
    assert not any(process.is_alive() for process in processes + later)  # stopped with the run
    # The killed worker, and only it, was replaced.
    assert len({p.pid for p in later} - {p.pid for p in processes}) == 1

    assert [o.key for o in outcomes] == ["a", "b", "c", "d", "e", "f", "g"]
    assert [o.kind for o in outcomes] == ["done", "done", "left_due", "done", "left_due", "done", "done"]
    done = [o for o in outcomes if o.kind == "done"] + again
    assert all(o.worker is not None and o.worker != os.getpid() for o in done)
    assert all(o.message == str(o.worker) and o.counts == {"offset": 7} for o in done)
    # The first two items went to one worker each.
    assert outcomes[0].worker != outcomes[1].worker

    raised, died = outcomes[2], outcomes[4]
    assert (raised.error, raised.message) == (WORKER_ERROR, "ValueError: cannot take c")
    assert died.error == WORKER_DIED and "ended (signal SIGKILL)" in died.message


def test_no_processes_where_they_do_not_pay() -> None:
    items = [("a", "ok"), ("b", "raise")]
    for processes, due, pays in [(1, ["a", "b"], None), (4, ["a"], None), (4, ["a", "b"], lambda due: False)]:
        workers = ItemWorkers(work, {"offset": 0}, processes=processes, pays=pays)
        with workers:
            assert workers.start(due) == 1
            outcomes = workers.map(items)
        assert [(o.kind, o.worker) for o in outcomes] == [("done", None), ("left_due", None)]
        assert outcomes[0].message == str(os.getpid())
        assert (outcomes[1].error, outcomes[1].message) == (WORKER_ERROR, "ValueError: cannot take b")


def test_processes_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_PROCESSES", raising=False)
    assert processes_setting("TEST_PROCESSES") == min(cpu_count(), MAX_DEFAULT_PROCESSES)
    monkeypatch.setenv("TEST_PROCESSES", "3")
    assert processes_setting("TEST_PROCESSES") == 3
    assert processes_setting("TEST_PROCESSES", 5) == 5  # the run config wins
    monkeypatch.setenv("TEST_PROCESSES", "0")
    assert processes_setting("TEST_PROCESSES") == 1
    monkeypatch.setenv("TEST_PROCESSES", "two")
    with pytest.raises(ValueError, match="TEST_PROCESSES='two' is not a whole number"):
        processes_setting("TEST_PROCESSES")


def test_stage_resources_rebuild_engine_and_stores_across_a_pickle(
    db: "DatabaseResource", tmp_path: Path, s3_endpoint: str
) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint, region_name="eu-west-1").create_bucket(
        Bucket="workers", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    s3 = open_blob_store("s3://workers/ecr", s3_endpoint, "eu-west-1")
    s3.put_bytes("a.txt", b"on s3")
    local = LocalBlobStore(tmp_path / "blobs")
    local.put_bytes("a.txt", b"on disk")

    resources = StageResources(db.engine, local, limit=3, s3=s3)
    copy = pickle.loads(pickle.dumps(resources))

    assert copy.engine is not db.engine and copy.engine.url == db.engine.url
    with copy.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    copy.close()
    assert isinstance(copy.store, LocalBlobStore) and copy.store.get_bytes("a.txt") == b"on disk"
    s3_copy = copy.options["s3"]
    assert isinstance(s3_copy, S3BlobStore) and s3_copy.client is not s3.client  # type: ignore[attr-defined]
    assert (s3_copy.bucket, s3_copy.prefix, s3_copy.endpoint_url, s3_copy.region) == (
        "workers",
        "ecr",
        s3_endpoint,
        "eu-west-1",
    )
    assert s3_copy.get_bytes("a.txt") == b"on s3"
    assert copy.options["limit"] == 3


# A run that hands two workers an item each and is then killed.
RUN = """
from ecr_pipelines.lib.workers import ItemWorkers
from ecr_pipelines_tests.platform.test_workers import work

workers = ItemWorkers(work, {"offset": 0}, processes=2)
workers.start(["a", "b"])
print(" ".join(str(worker.pid) for worker in workers._workers), flush=True)
workers.map([("a", "hang"), ("b", "hang")])
"""
GONE_WAIT_SECONDS = 30.0


def _running(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie works on nothing


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_with_the_run_that_started_them() -> None:
    # A worker must not go on with an item whose claim died with its run: another run may take it.
    run = subprocess.Popen([sys.executable, "-c", RUN], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in run.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(pids) == 2 and all(_running(pid) for pid in pids)
    finally:
        run.kill()
        run.wait()
    deadline = time.monotonic() + GONE_WAIT_SECONDS
    while any(_running(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived their run"
        time.sleep(0.05)
