"""Outgoing mail: SMTP in production, an outbox folder of ``.eml`` files by default.

``SMTP_URL`` forms: ``smtp://host:25`` (plain), ``smtp://user:pass@host:587?starttls=true``,
``smtps://user:pass@host:465`` (implicit TLS). Dagster's own e-mail failure sensor always logs
in and cannot talk to a plain relay or a folder, hence this small resource.
"""

import smtplib
import ssl
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int
    username: str | None
    password: str | None
    starttls: bool
    implicit_tls: bool
    timeout: float


def parse_smtp_url(url: str, timeout: float = 30.0) -> SmtpSettings:
    parsed = urlparse(url)
    if parsed.scheme not in ("smtp", "smtps"):
        raise ValueError("SMTP_URL must start with smtp:// or smtps://")
    if not parsed.hostname:
        raise ValueError("SMTP_URL needs a host")
    query = {k: v[-1].lower() for k, v in parse_qs(parsed.query).items()}
    implicit = parsed.scheme == "smtps"
    return SmtpSettings(
        host=parsed.hostname,
        port=parsed.port or (465 if implicit else 25),
        username=unquote(parsed.username) if parsed.username else None,
        password=unquote(parsed.password) if parsed.password else None,
        starttls=query.get("starttls") in ("1", "true", "yes"),
        implicit_tls=implicit,
        timeout=float(query.get("timeout", timeout)),
    )


def build_message(
    sender: str, to: list[str], subject: str, text: str, html: str | None = None, reply_to: str | None = None
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1] or "localhost")
    if reply_to:
        msg["Reply-To"] = reply_to
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


@dataclass(frozen=True)
class Mailer:
    """Sends one message over SMTP (``smtp_url``), or writes it to the outbox folder."""

    smtp_url: str | None
    sender: str
    outbox_dir: Path

    def send(self, to: list[str] | str, subject: str, text: str, html: str | None = None) -> str:
        """Send one message to every address in ``to``; return where it went (for metadata)."""
        recipients = [to] if isinstance(to, str) else list(to)
        if not recipients:
            raise ValueError("a mail needs at least one recipient")
        msg = build_message(self.sender, recipients, subject, text, html)
        if not self.smtp_url:
            self.outbox_dir.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
            path = self.outbox_dir / f"{stamp}-{uuid.uuid4().hex[:8]}.eml"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(msg.as_bytes())
            tmp.replace(path)  # readers of the outbox never see half a message
            return str(path)
        settings = parse_smtp_url(self.smtp_url)
        context = ssl.create_default_context()
        client: smtplib.SMTP
        if settings.implicit_tls:
            client = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout, context=context)
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        with client:
            if settings.starttls:
                client.starttls(context=context)
            if settings.username:
                client.login(settings.username, settings.password or "")
            client.send_message(msg)
        return f"smtp://{settings.host}:{settings.port}"
