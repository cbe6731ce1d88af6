"""The request queue, ``ckan.package_request``: submitting and admitting requests (no Dagster).

A request arrives validated (``submit``: the Dagster job, later the HTTP intake) or as a bare row
that another system inserted with only ``kind``, ``resource_id``, ``email``, ``params`` and maybe
``api_key``. Such a row has no cache key and no speed yet, so no queue would take it: ``admit``
validates it as ``submit`` would, fills both in or fails it with the reason, and the fast queue's
run does that first. The API key never enters ``params`` (which the UI and logs may show): it waits
in ``api_key`` and is cleared when the request ends.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ecr_pipelines.ckan.package import DEFAULT_SLOW_REQUEST, BadRequest, PackageRequest, validate_request
from ecr_pipelines.lib.batch import clip

DEFAULT_CACHE_TIME = 86_400  # the legacy CACHE_TIME, seconds
SECRET_PARAMS = ("key",)


def stored_params(pkg: PackageRequest) -> dict[str, Any]:
    """What goes into ``params``: the validated request without its API key."""
    return {k: v for k, v in pkg.params.items() if k not in SECRET_PARAMS}


def live_package(conn: Connection, cache_key: str, cache_time: int) -> sa.Row | None:
    """The newest stored package of ``cache_key`` younger than ``cache_time`` seconds."""
    return conn.execute(
        sa.text(
            "SELECT id, blob_key, zip_file_name, rows, pinned, extract(epoch FROM now() - created) AS age "
            "FROM ckan.package "
            "WHERE cache_key = :key AND deleted IS NULL "
            "AND created > now() - make_interval(secs => :seconds) ORDER BY created DESC LIMIT 1"
        ),
        {"key": cache_key, "seconds": cache_time},
    ).first()


def with_cache(
    conn: Connection, kind: str, raw: Mapping[str, Any], slow_request: int, cache_time: int
) -> PackageRequest:
    """``raw`` validated, its speed decided as the legacy did: fast when its package is cached."""
    pkg = validate_request(kind, raw, slow_request=slow_request)
    if pkg.speed == "slow" and live_package(conn, pkg.cache_key, cache_time) is not None:
        pkg = validate_request(kind, raw, cached=True, slow_request=slow_request)
    return pkg


def submit(
    engine: Engine,
    kind: str,
    raw: Mapping[str, Any],
    *,
    source: str,
    slow_request: int = DEFAULT_SLOW_REQUEST,
    cache_time: int = DEFAULT_CACHE_TIME,
) -> tuple[int, PackageRequest]:
    """Validate ``raw`` and queue it; ``BadRequest`` (nothing queued) when the legacy refused it."""
    with engine.begin() as conn:
        pkg = with_cache(conn, kind, raw, slow_request, cache_time)
        request_id = conn.execute(
            sa.text(
                "INSERT INTO ckan.package_request "
                "(kind, resource_id, email, params, api_key, cache_key, speed, source) "
                "VALUES (:kind, :resource_id, :email, CAST(:params AS jsonb), :api_key, :cache_key, :speed, :source) "
                "RETURNING id"
            ),
            {
                "kind": pkg.kind,
                "resource_id": str(pkg.params["resource_id"]),
                "email": str(pkg.params["email"]),
                "params": json.dumps(stored_params(pkg)),
                "api_key": pkg.params.get("key"),
                "cache_key": pkg.cache_key,
                "speed": pkg.speed,
                "source": source,
            },
        ).scalar_one()
    return int(request_id), pkg


def raw_request(row: Any) -> dict[str, Any]:
    """The parameters a queue row holds (its columns win over ``params``), API key included."""
    raw = {**dict(row.params or {}), "resource_id": row.resource_id, "email": row.email}
    if row.api_key:
        raw["key"] = row.api_key
    return raw


def request_of(row: Any) -> PackageRequest:
    """The request a queue row holds, validated again (a row may come from another system)."""
    return validate_request(row.kind, raw_request(row))


@dataclass
class Admission:
    admitted: int = 0
    refused: list[tuple[int, str]] = field(default_factory=list)


def pending_admission(conn: Connection) -> bool:
    return bool(
        conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM ckan.package_request WHERE status = 'queued' AND speed IS NULL)"
            )
        ).scalar()
    )


def admit(engine: Engine, *, slow_request: int, cache_time: int, limit: int = 1000) -> Admission:
    """Give rows that other systems inserted their cache key and speed, or fail them with the
    reason (``error_kind`` ``bad_request``). Rows are locked ``SKIP LOCKED``: two runs never
    admit one row twice."""
    report = Admission()
    with engine.begin() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, kind, resource_id, email, params, api_key FROM ckan.package_request "
                "WHERE status = 'queued' AND speed IS NULL ORDER BY id LIMIT :limit FOR UPDATE SKIP LOCKED"
            ),
            {"limit": limit},
        ).all()
        for row in rows:
            try:
                pkg = with_cache(conn, row.kind, raw_request(row), slow_request, cache_time)
            except BadRequest as exc:
                conn.execute(
                    sa.text(
                        "UPDATE ckan.package_request SET status = 'failed', error = :error, "
                        "error_kind = 'bad_request', api_key = NULL, finished = now() WHERE id = :id"
                    ),
                    {"id": row.id, "error": clip(str(exc))},
                )
                report.refused.append((row.id, str(exc)))
                continue
            conn.execute(
                sa.text(
                    "UPDATE ckan.package_request SET params = CAST(:params AS jsonb), cache_key = :cache_key, "
                    "speed = :speed WHERE id = :id"
                ),
                {
                    "id": row.id,
                    "params": json.dumps(stored_params(pkg)),
                    "cache_key": pkg.cache_key,
                    "speed": pkg.speed,
                },
            )
            report.admitted += 1
    return report
