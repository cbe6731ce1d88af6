"""The ``mail`` resource (Dagster side of ``ecr_pipelines.lib.mail``)."""

from pathlib import Path

import dagster as dg

from ecr_pipelines.lib.mail import Mailer
from ecr_pipelines.lib.settings import ecr_home


class MailResource(dg.ConfigurableResource):
    """Sends notification mails (links to packages, matching notices, black flags, failures).

    ``smtp_url`` comes from ``SMTP_URL``; when it is empty mails are written to
    ``outbox_dir`` (default ``ECR_HOME/outbox``) as ``.eml`` files, one per message.
    """

    smtp_url: str | None = None
    sender: str = "ecr-pipelines@localhost"
    outbox_dir: str | None = None

    def mailer(self) -> Mailer:
        folder = Path(self.outbox_dir) if self.outbox_dir else ecr_home() / "outbox"
        return Mailer(self.smtp_url, self.sender, folder)

    def outbox(self) -> Path:
        folder = self.mailer().outbox_dir
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def send(self, to: list[str] | str, subject: str, text: str, html: str | None = None) -> str:
        """Send one message to every address in ``to``; return where it went (for metadata)."""
        return self.mailer().send(to, subject, text, html)
