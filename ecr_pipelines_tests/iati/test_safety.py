"""The black flag's mail: queued in ``pipeline.mail_outbox`` in the transaction that sets the flag,
sent after the commit, once (``ecr_pipelines.iati.stages.safety``, ``ecr_pipelines.lib.outbox``)."""

from collections.abc import Sequence

import pytest

from ecr_pipelines.iati.stages.safety import flag_reason, queue_flag_mails, run_safety_check
from ecr_pipelines.lib.outbox import send_pending
from ecr_pipelines.lib.sql import Sql
from ecr_pipelines.resources import DatabaseResource
from ecr_pipelines_tests.iati.test_validation_stage import add_document, add_publisher, execute, query

MAIL_TO = ["iati-ops@example.org"]


def test_flag_reason() -> None:
    assert flag_reason() == "Over 100 critical documents in the last 2 hours."
    assert flag_reason(3, 1.5) == "Over 3 critical documents in the last 1.5 hours."


class Sent(list[tuple[list[str], str, str]]):
    """Collects what ``send_pending`` sends."""

    def __call__(self, to: Sequence[str], subject: str, text: str, html: str | None) -> None:
        self.append((list(to), subject, text))


def flooding_publisher(db: DatabaseResource) -> None:
    add_publisher(db, "org-bad", name="floody")
    for n in range(3):
        add_document(db, f"doc-{n}", "org-bad", hours_ago=0.5, file_schema_valid=False)


def flag_and_queue(db: DatabaseResource, recipients: list[str]) -> int:
    with db.begin() as conn:
        run_safety_check(Sql(conn), threshold=2, period_hours=2)
        return len(queue_flag_mails(conn, recipients, threshold=2, period_hours=2))


def outbox(db: DatabaseResource) -> list[tuple[object, ...]]:
    return query(
        db,
        "SELECT dedupe_key, recipients, subject, sent_at IS NOT NULL FROM pipeline.mail_outbox ORDER BY id",
    )


def test_a_flag_and_its_mail_commit_together_or_not_at_all(iati_db: DatabaseResource) -> None:
    flooding_publisher(iati_db)

    with pytest.raises(RuntimeError, match="crash"), iati_db.begin() as conn:
        run_safety_check(Sql(conn), threshold=2, period_hours=2)
        assert len(queue_flag_mails(conn, MAIL_TO, threshold=2, period_hours=2)) == 1
        raise RuntimeError("crash before the commit")
    # Rolled back: no flag, and no mail left behind to announce it.
    assert query(iati_db, "SELECT black_flag, black_flag_notified FROM iati.publisher") == [(None, None)]
    assert outbox(iati_db) == []

    assert flag_and_queue(iati_db, MAIL_TO) == 1
    assert query(iati_db, "SELECT black_flag IS NOT NULL, black_flag_notified FROM iati.publisher") == [
        (True, True)
    ]
    [(key, recipients, subject, sent)] = outbox(iati_db)
    assert key.startswith("iati-black-flag:org-bad:") and recipients == MAIL_TO and not sent
    assert subject == "IATI: publisher floody black-flagged"

    sent_mails = Sent()
    assert send_pending(iati_db.engine, sent_mails).sent == 1
    [(to, subject, text)] = sent_mails
    assert to == MAIL_TO and "Over 2 critical documents in the last 2 hours." in text
    assert "Schema-invalid documents held back (not validated, cleaned or indexed): 3" in text
    assert '"publisher": "org-bad"' in text  # the command that clears the flag

    # The flag is re-stamped while the flood lasts, but mailed only once; nothing is sent twice.
    assert flag_and_queue(iati_db, MAIL_TO) == 0
    assert send_pending(iati_db.engine, sent_mails).sent == 0
    assert len(sent_mails) == 1 and [row[3] for row in outbox(iati_db)] == [True]


def test_a_new_flag_after_clearing_is_mailed_again(iati_db: DatabaseResource) -> None:
    flooding_publisher(iati_db)
    assert flag_and_queue(iati_db, MAIL_TO) == 1
    execute(iati_db, "UPDATE iati.publisher SET black_flag = NULL, black_flag_notified = NULL")
    assert flag_and_queue(iati_db, MAIL_TO) == 1
    sent_mails = Sent()
    assert send_pending(iati_db.engine, sent_mails).sent == 2
    assert len({row[0] for row in outbox(iati_db)}) == 2


def test_without_recipients_nothing_is_queued_until_there_are(iati_db: DatabaseResource) -> None:
    flooding_publisher(iati_db)
    assert flag_and_queue(iati_db, []) == 0
    assert query(iati_db, "SELECT black_flag IS NOT NULL, black_flag_notified FROM iati.publisher") == [
        (True, None)
    ]
    assert outbox(iati_db) == []
    # Once IATI_BLACK_FLAG_MAIL_TO is set, the flag is mailed.
    assert flag_and_queue(iati_db, MAIL_TO) == 1
    assert len(outbox(iati_db)) == 1
