"""Mails after commit, once: the ``pipeline.mail_outbox`` table (no Dagster).

A stage or an operator job *queues* a mail in the same transaction as the change the mail reports
(``queue_mail``); if that transaction rolls back, the mail is gone with it. After the commit the
caller (or the outbox sensor, for anything left behind by a crash) *sends* what is pending
(``send_pending``). The dedupe key makes a re-run that queues the same mail again a no-op, and a
row is marked sent in its own transaction, so an SMTP failure never undoes the change and a mail
that went out is never sent twice by the next attempt.
"""

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

# Sends one mail: (recipients, subject, text body, html body or None).
Send = Callable[[Sequence[str], str, str, str | None], None]
RETRY_SECONDS = 300
MAX_ATTEMPTS = 12


def queue_mail(
    conn: Connection,
    dedupe_key: str,
    recipients: Sequence[str],
    subject: str,
    body: str,
    html: str | None = None,
) -> bool:
    """Queue one mail in the caller's transaction; False when that key was queued before."""
    recipients = [r for r in recipients if r]
    if not recipients:
        return False
    row = conn.execute(
        sa.text(
            "INSERT INTO pipeline.mail_outbox (dedupe_key, recipients, subject, body, html) "
            "VALUES (:key, :to, :subject, :body, :html) ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"
        ),
        {"key": dedupe_key, "to": list(recipients), "subject": subject, "body": body, "html": html},
    ).first()
    return row is not None


@dataclass
class OutboxReport:
    sent: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)


def send_pending(engine: Engine, send: Send, limit: int = 500) -> OutboxReport:
    """Send every due mail, each claimed with ``SKIP LOCKED`` so two senders never send one twice."""
    report = OutboxReport()
    for _ in range(limit):
        with engine.begin() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT id, recipients, subject, body, html FROM pipeline.mail_outbox "
                    "WHERE sent_at IS NULL AND next_attempt <= now() AND attempts < :max "
                    "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
                ),
                {"max": MAX_ATTEMPTS},
            ).first()
            if row is None:
                break
            try:
                send(row.recipients, row.subject, row.body, row.html)
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"[:2000]
                log.warning("mail %s not sent: %s", row.id, message)
                conn.execute(
                    sa.text(
                        "UPDATE pipeline.mail_outbox SET attempts = attempts + 1, error = :error, "
                        "next_attempt = now() + make_interval(secs => :delay * (attempts + 1)) WHERE id = :id"
                    ),
                    {"id": row.id, "error": message, "delay": RETRY_SECONDS},
                )
                report.failed.append((row.id, message))
                continue
            conn.execute(
                sa.text(
                    "UPDATE pipeline.mail_outbox SET sent_at = now(), attempts = attempts + 1, error = NULL "
                    "WHERE id = :id"
                ),
                {"id": row.id},
            )
            report.sent += 1
    return report


def pending_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pipeline.mail_outbox WHERE sent_at IS NULL AND attempts < :max "
                    "AND next_attempt <= now()"
                ),
                {"max": MAX_ATTEMPTS},
            ).scalar_one()
        )
