"""The data store's sensors: files put under a source's prefix, and CSV uploads.

The legacy loaded manually placed files only on its next nightly run, and an upload when a person
clicked through its web pages. Here, every ``DATASTORE_POLL_SECONDS``:

* ``datastore_files_sensor`` lists ``datastore/datasets/``; when the listing changed since its
  last look (its cursor is a digest of the keys) and a source has a stored file the registry does
  not have as processed or ignored, it asks for one ``datastore_sources_job`` run of exactly those
  sources (and of the World Bank transform when one of its inputs is among them). A file that
  failed is not retried on every tick: the nightly run, or a new file, tries it again.
* ``datastore_uploads_sensor`` asks for one ``datastore_uploads_job`` run when a file under
  ``datastore/uploads/`` is not registered yet or a verified file waits for its load.

Neither asks while a run of its part of the service is queued or running: that run, or the next
one, takes whatever is due then.
"""

import hashlib

import dagster as dg

from ecr_pipelines.automation import BOOTSTRAP_TAG, run_in_flight
from ecr_pipelines.datastore.defs.jobs import (
    PART_TAG,
    SERVICE,
    SOURCES_TAGS,
    UPLOADS_TAGS,
    datastore_sources_job,
    datastore_uploads_job,
)
from ecr_pipelines.datastore.defs.resources import POLL_SECONDS
from ecr_pipelines.datastore.defs.sources import SOURCE_KEYS
from ecr_pipelines.datastore.sources import BLOB_ROOT, SOURCES
from ecr_pipelines.datastore.stages.sources import TRANSFORM, TRANSFORM_INPUTS, due_sources
from ecr_pipelines.datastore.stages.uploads import UPLOAD_ROOT, uploads_waiting
from ecr_pipelines.resources import BlobStoreResource, DatabaseResource


def _busy(instance: dg.DagsterInstance, part: str) -> bool:
    """A run of this part of the service, or the bootstrap run of the whole service, is on its way."""
    return run_in_flight(instance, SERVICE, tags={PART_TAG: part}) or run_in_flight(
        instance, SERVICE, tags=BOOTSTRAP_TAG
    )


def listed_by_source(keys: list[str]) -> dict[str, list[str]]:
    """Stored keys grouped by the source whose prefix holds them (names relative to it)."""
    prefixes = sorted(
        ((spec.blob_prefix, spec.id) for spec in SOURCES.values() if spec.blob_prefix),
        key=lambda item: -len(item[0]),
    )
    listed: dict[str, list[str]] = {}
    for key in keys:
        for prefix, source_id in prefixes:
            if key.startswith(prefix):
                name = key[len(prefix) :]
                if not name.rsplit("/", 1)[-1].startswith("."):
                    listed.setdefault(source_id, []).append(name)
                break
    return listed


@dg.sensor(
    name="datastore_files_sensor",
    job=datastore_sources_job,
    minimum_interval_seconds=POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every DATASTORE_POLL_SECONDS (60): when the files under datastore/datasets/ changed and a source has "
        "a file not yet processed, one datastore_sources_job run of those sources (aws s3 cp or "
        "`python -m ecr_pipelines datastore put SOURCE FILE` is all an operator does)."
    ),
)
def datastore_files_sensor(
    context: dg.SensorEvaluationContext, db: DatabaseResource, blobs: BlobStoreResource
) -> dg.SensorResult | dg.SkipReason:
    keys = sorted(blobs.store.list(BLOB_ROOT))
    digest = hashlib.sha1("\n".join(keys).encode()).hexdigest()
    if digest == context.cursor:
        return dg.SkipReason("no file came or went under datastore/datasets/")
    if _busy(context.instance, "sources"):
        # The cursor stays: the next tick after that run looks again.
        return dg.SkipReason("a source run is on its way; the files wait for the next look")
    with db.connect() as conn:
        due = due_sources(conn, listed_by_source(keys))
    if not due:
        return dg.SensorResult(skip_reason="every stored file is processed or ignored", cursor=digest)
    if TRANSFORM not in due and any(source in TRANSFORM_INPUTS for source in due):
        due.append(TRANSFORM)
    context.log.info(f"new files for {', '.join(due)}")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(asset_selection=[SOURCE_KEYS[source] for source in due], tags=SOURCES_TAGS)
        ],
        cursor=digest,
    )


@dg.sensor(
    name="datastore_uploads_sensor",
    job=datastore_uploads_job,
    minimum_interval_seconds=POLL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every DATASTORE_POLL_SECONDS (60): one datastore_uploads_job run when a CSV under "
        "datastore/uploads/<org>/<dataset>/ is not registered yet, or a verified upload waits for its load."
    ),
)
def datastore_uploads_sensor(
    context: dg.SensorEvaluationContext, db: DatabaseResource, blobs: BlobStoreResource
) -> dg.SensorResult | dg.SkipReason:
    keys = [key for key in blobs.store.list(UPLOAD_ROOT) if not key.rsplit("/", 1)[-1].startswith(".")]
    with db.connect() as conn:
        waiting = uploads_waiting(conn, keys)
    if not waiting:
        return dg.SkipReason("no new upload and no verified upload waiting")
    if _busy(context.instance, "uploads"):
        return dg.SkipReason(f"{waiting}; the upload run on its way takes it")
    context.log.info(waiting)
    return dg.SensorResult(run_requests=[dg.RunRequest(tags=UPLOADS_TAGS)])
