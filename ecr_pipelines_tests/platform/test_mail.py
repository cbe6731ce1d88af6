"""Mail through a real SMTP server on loopback, and the outbox default."""

import email
from email import policy
from pathlib import Path

import pytest

from ecr_pipelines.lib.mail import parse_smtp_url
from ecr_pipelines.resources import MailResource
from ecr_pipelines_tests.conftest import SmtpSink


def test_mail_is_delivered_over_smtp_with_text_and_html(smtp_server: tuple[str, SmtpSink]) -> None:
    url, sink = smtp_server
    MailResource(smtp_url=url, sender="noreply@ecr.test").send(
        ["a@example.test", "b@example.test"], "Package ready", "Download: http://x/y.zip", "<p>Download</p>"
    )
    assert len(sink.messages) == 1
    mail_from, rcpt, content = sink.messages[0]
    assert mail_from == "noreply@ecr.test" and rcpt == ["a@example.test", "b@example.test"]
    message = email.message_from_bytes(content, policy=policy.default)
    assert message["Subject"] == "Package ready"
    assert message.get_body(("plain",)).get_content().strip() == "Download: http://x/y.zip"
    assert "<p>Download</p>" in message.get_body(("html",)).get_content()


def test_without_smtp_mails_land_in_the_outbox_as_eml(tmp_path: Path) -> None:
    mail = MailResource(outbox_dir=str(tmp_path / "outbox"))
    path = mail.send("ops@example.test", "Black flag", "Publisher X was flagged")
    files = list((tmp_path / "outbox").glob("*.eml"))
    assert [str(f) for f in files] == [path]
    message = email.message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert message["To"] == "ops@example.test"
    assert message.get_content().strip() == "Publisher X was flagged"


def test_smtp_urls() -> None:
    s = parse_smtp_url("smtp://user%40x:p%3Ass@mail.example:587?starttls=true")
    assert (s.host, s.port, s.username, s.password, s.starttls, s.implicit_tls) == (
        "mail.example",
        587,
        "user@x",
        "p:ss",
        True,
        False,
    )
    assert parse_smtp_url("smtps://mail.example").port == 465
    assert parse_smtp_url("smtp://relay").port == 25
    with pytest.raises(ValueError):
        parse_smtp_url("http://mail.example")
