"""The safety check ("black flag") of the IATI pipeline, and clearing a flag by hand (no Dagster).

A publisher with more than ``threshold`` schema-invalid documents downloaded within
``period_hours`` gets ``black_flag = now()`` (re-stamped while the condition holds, as the
refresher did); a flag is cleared only by hand (``unflag_publisher``). While a publisher is
flagged its schema-invalid documents are held back from full validation, so they are never
cleaned or indexed; its valid documents proceed normally.

A new flag's mail is queued in the same transaction that sets the flag (``pipeline.mail_outbox``)
and ``black_flag_notified`` records that it was queued; it is sent after the commit, once.
"""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from ecr_pipelines.lib.outbox import queue_mail
from ecr_pipelines.lib.sql import Sql

SAFETY_CHECK_THRESHOLD = 100
SAFETY_CHECK_PERIOD_HOURS = 2
UNFLAG_JOB = "iati_unflag_publisher_job"
UNFLAG_OP = "iati_unflag_publisher"


def flag_reason(
    threshold: int = SAFETY_CHECK_THRESHOLD, period_hours: float = SAFETY_CHECK_PERIOD_HOURS
) -> str:
    """Human-readable reason sent with a new black-flag notification."""
    return f"Over {threshold} critical documents in the last {period_hours:g} hours."


@dataclass(frozen=True)
class FlaggedPublisher:
    org_id: str
    name: str
    recent_invalid: int
    new: bool


def run_safety_check(sql: Sql, threshold: int, period_hours: float) -> list[FlaggedPublisher]:
    """Flag (or re-stamp) every publisher over the threshold; return them, new flags marked."""
    rows = sql.all(
        """
        WITH counts AS (
            SELECT publisher, count(*) AS invalid FROM iati.document
            WHERE file_schema_valid IS FALSE AND publisher IS NOT NULL
              AND downloaded > now() - make_interval(secs => :period)
            GROUP BY publisher HAVING count(*) > :threshold
        ), before AS (
            SELECT p.org_id, p.black_flag IS NULL AS new FROM iati.publisher p
            JOIN counts c ON c.publisher = p.org_id ORDER BY p.org_id FOR UPDATE OF p
        )
        UPDATE iati.publisher p SET black_flag = now(),
            black_flag_notified = CASE WHEN b.new THEN NULL ELSE p.black_flag_notified END
        FROM before b, counts c
        WHERE p.org_id = b.org_id AND c.publisher = p.org_id
        RETURNING p.org_id, p.name, c.invalid, b.new
        """,
        {"threshold": threshold, "period": max(0.0, period_hours) * 3600.0},
    )
    return sorted((FlaggedPublisher(r[0], r[1], int(r[2]), bool(r[3])) for r in rows), key=lambda f: f.org_id)


@dataclass(frozen=True)
class FlagNotice:
    org_id: str
    name: str
    title: str
    iati_id: str | None
    black_flag: datetime
    recent_invalid: int
    held_documents: int


def unnotified_flags(sql: Sql, period_hours: float) -> list[FlagNotice]:
    rows = sql.all(
        """
        SELECT p.org_id, p.name, p.title, p.iati_id, p.black_flag,
               count(d.id) FILTER (WHERE d.file_schema_valid IS FALSE
                                     AND d.downloaded > now() - make_interval(secs => :period)),
               count(d.id) FILTER (WHERE d.file_schema_valid IS FALSE AND d.validation IS NULL)
        FROM iati.publisher p LEFT JOIN iati.document d ON d.publisher = p.org_id
        WHERE p.black_flag IS NOT NULL AND p.black_flag_notified IS NULL
        GROUP BY p.org_id ORDER BY p.org_id
        """,
        {"period": max(0.0, period_hours) * 3600.0},
    )
    return [FlagNotice(r[0], r[1], r[2], r[3], r[4], int(r[5]), int(r[6])) for r in rows]


def mark_notified(sql: Sql, org_id: str) -> None:
    sql.exec("UPDATE iati.publisher SET black_flag_notified = true WHERE org_id = :o", {"o": org_id})


def flagged_publishers(sql: Sql) -> list[tuple[str, str, datetime, bool | None, int]]:
    """(org_id, name, black_flag, notified, held documents) of every flagged publisher."""
    rows = sql.all(
        """
        SELECT p.org_id, p.name, p.black_flag, p.black_flag_notified,
               count(d.id) FILTER (WHERE d.file_schema_valid IS FALSE AND d.validation IS NULL)
        FROM iati.publisher p LEFT JOIN iati.document d ON d.publisher = p.org_id
        WHERE p.black_flag IS NOT NULL GROUP BY p.org_id ORDER BY p.org_id
        """
    )
    return [(r[0], r[1], r[2], r[3], int(r[4])) for r in rows]


def unflag_publisher(sql: Sql, publisher: str) -> tuple[str, str, datetime | None] | None:
    """Clear the flag of a publisher given by org_id or short name.

    Returns ``(org_id, name, previous black_flag)``, or None when no such publisher exists.
    """
    rows = sql.all(
        """
        WITH target AS (
            SELECT org_id, name, black_flag FROM iati.publisher
            WHERE org_id = :p OR (name = :p AND NOT EXISTS (SELECT 1 FROM iati.publisher WHERE org_id = :p))
            ORDER BY org_id FOR UPDATE
        )
        UPDATE iati.publisher p SET black_flag = NULL, black_flag_notified = NULL
        FROM target t WHERE p.org_id = t.org_id
        RETURNING t.org_id, t.name, t.black_flag
        """,
        {"p": publisher.strip()},
    )
    if len(rows) > 1:
        raise ValueError(f"{publisher!r} names {len(rows)} publishers; give the org_id")
    return (rows[0][0], rows[0][1], rows[0][2]) if rows else None


def flag_mail(notice: FlagNotice, threshold: int, period_hours: float) -> tuple[str, str]:
    """Subject and text of a new flag's mail (it names the command that clears the flag)."""
    subject = f"IATI: publisher {notice.name} black-flagged"
    config = f'{{"ops": {{"{UNFLAG_OP}": {{"config": {{"publisher": "{notice.org_id}"}}}}}}}}'
    text = "\n".join(
        [
            f"The IATI safety check black-flagged the publisher {notice.title} ({notice.name}).",
            "",
            f"Reason: {flag_reason(threshold, period_hours)}",
            f"Publisher id: {notice.org_id}",
            f"IATI organisation identifier: {notice.iati_id or '-'}",
            f"Flagged at: {notice.black_flag:%Y-%m-%d %H:%M %Z}",
            f"Schema-invalid documents downloaded in the last {period_hours:g} hours: {notice.recent_invalid}",
            f"Schema-invalid documents held back (not validated, cleaned or indexed): {notice.held_documents}",
            "",
            "Its schema-valid documents are processed as usual. The flag stays until cleared by hand:",
            f"  dagster job execute -m ecr_pipelines.definitions -j {UNFLAG_JOB} --config-json '{config}'",
        ]
    )
    return subject, text


def queue_flag_mails(
    conn: Connection, recipients: list[str], threshold: int, period_hours: float
) -> list[FlagNotice]:
    """Queue one mail per flag not yet notified and mark it notified, in the caller's transaction.

    Without recipients nothing is queued: the flags are mailed once IATI_BLACK_FLAG_MAIL_TO is set.
    """
    sql = Sql(conn)
    notices = unnotified_flags(sql, period_hours)
    if not recipients:
        return []
    for notice in notices:
        subject, text = flag_mail(notice, threshold, period_hours)
        queue_mail(
            conn,
            f"iati-black-flag:{notice.org_id}:{notice.black_flag.isoformat()}",
            recipients,
            subject,
            text,
        )
        mark_notified(sql, notice.org_id)
    return notices
