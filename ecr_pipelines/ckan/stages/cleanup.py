"""The daily clean-up: packages older than ``CKAN_PACKAGE_TTL_DAYS`` leave the blob store (no
Dagster).

As the legacy's caretaker, except that what it kept by symlink (the GBIF export) is a ``pinned``
package here. A package row is marked ``deleted`` in a transaction that commits only once its
blob is gone: a store that refuses keeps the package for the next day, and the cache never hands
out a link to a file that is gone (a moment's link to a file being deleted is the worst case).
"""

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ecr_pipelines.lib.blobstore import BlobStore


@dataclass
class CleanupReport:
    deleted: int = 0
    freed_bytes: int = 0
    kept_pinned: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # blob key, error


def delete_expired(engine: Engine, store: BlobStore, ttl_days: int) -> CleanupReport:
    report = CleanupReport()
    with engine.connect() as conn:
        expired = conn.execute(
            sa.text(
                "SELECT id, blob_key, bytes FROM ckan.package WHERE deleted IS NULL AND NOT pinned "
                "AND created < now() - make_interval(days => :days) ORDER BY created"
            ),
            {"days": ttl_days},
        ).all()
        report.kept_pinned = conn.execute(
            sa.text(
                "SELECT count(*) FROM ckan.package WHERE deleted IS NULL AND pinned "
                "AND created < now() - make_interval(days => :days)"
            ),
            {"days": ttl_days},
        ).scalar_one()
    for package_id, key, size in expired:
        try:
            # The row is marked in the transaction that the blob's deletion ends: a store that
            # refuses rolls the mark back, and the package is tried again the next day.
            with engine.begin() as conn:
                conn.execute(
                    sa.text("UPDATE ckan.package SET deleted = now() WHERE id = :id"), {"id": package_id}
                )
                store.delete(key)
        except Exception as exc:
            report.failed.append((key, f"{type(exc).__name__}: {exc}"))
            continue
        report.deleted += 1
        report.freed_bytes += int(size or 0)
    return report
