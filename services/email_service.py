"""Outgoing e-mail behind one interface (EmailProvider) and a registry (PROVIDERS), chosen by
MAIL_BACKEND:

- "smtp": SmtpEmail, Flask-Mail over SMTP (MAIL_SERVER, MAIL_PORT, ...);
- "sendgrid": SendGridEmail, SendGrid's SDK (SENDGRID_API_KEY; SENDGRID_API_HOST points it
  elsewhere);
- "console": ConsoleEmail, the message is written to the log (development and tests).

`send_email` raises EmailNotConfigured (503) when no backend is configured and
EmailDeliveryFailed (503) when the backend refuses; callers that must not reveal whether an
account exists (password reset) catch these and log instead.
"""
from __future__ import annotations

import base64
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass

from flask import current_app
from flask_mail import Message
from sqlalchemy import event
from sqlalchemy.orm import Session

from models import db
from services import jobs
from utils.errors import ServiceUnavailable
from utils.extensions import mail
from utils.providers import configured
from utils.validators import one_line

log = logging.getLogger("lms.email")


class EmailNotConfigured(ServiceUnavailable):
    code = "email_not_configured"
    message = "E-mail is not configured on this server"


class EmailDeliveryFailed(ServiceUnavailable):
    code = "email_delivery_failed"
    message = "The e-mail could not be sent; try again shortly"


@dataclass
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Outgoing:
    to: str
    subject: str
    text: str
    html: str | None = None
    attachments: tuple = ()

    def __post_init__(self) -> None:
        # Header values are one line: a CR or LF in a subject would end the header (and
        # makes the mail libraries refuse the whole message).
        self.subject = one_line(self.subject)
        self.to = one_line(self.to).strip()


class EmailProvider(ABC):
    """One way of sending e-mail: `send` delivers one message or raises EmailDeliveryFailed."""

    name: str

    @abstractmethod
    def send(self, message: Outgoing, sender: str) -> None: ...


class ConsoleEmail(EmailProvider):
    """Writes the message to the log (development and tests); never chosen in production."""

    name = "console"

    def send(self, message: Outgoing, sender: str) -> None:
        log.warning("e-mail (console backend, not sent) to=%s subject=%r\n%s%s", message.to,
                    message.subject, message.text,
                    "".join(f"\n[attachment {a.filename} {a.content_type} {len(a.data)} bytes]"
                            for a in message.attachments))


class SmtpEmail(EmailProvider):
    """Flask-Mail over SMTP (MAIL_SERVER, MAIL_PORT, ...)."""

    name = "smtp"

    def send(self, message: Outgoing, sender: str) -> None:
        mail_message = Message(subject=message.subject, recipients=[message.to],
                               body=message.text, html=message.html, sender=sender)
        for item in message.attachments:
            mail_message.attach(item.filename, item.content_type, item.data)
        try:
            mail.send(mail_message)
        except Exception as exc:  # smtplib and socket errors alike
            log.error("SMTP delivery to %s failed: %s", message.to, exc)
            raise EmailDeliveryFailed() from exc


class SendGridEmail(EmailProvider):
    """SendGrid's SDK (SENDGRID_API_KEY; SENDGRID_API_HOST points it elsewhere)."""

    name = "sendgrid"

    def send(self, message: Outgoing, sender: str) -> None:
        # The SendGrid SDK (~35 ms to import) loads only where MAIL_BACKEND is "sendgrid".
        from sendgrid import SendGridAPIClient
        from sendgrid.helpers.mail import (
            Attachment as SGAttachment,
            Disposition,
            FileContent,
            FileName,
            FileType,
            Mail,
        )

        cfg = current_app.config
        mail_message = Mail(from_email=sender, to_emails=message.to, subject=message.subject,
                            plain_text_content=message.text, html_content=message.html)
        for item in message.attachments:
            mail_message.add_attachment(SGAttachment(
                FileContent(base64.b64encode(item.data).decode()), FileName(item.filename),
                FileType(item.content_type), Disposition("attachment")))
        kwargs = {"host": cfg["SENDGRID_API_HOST"]} if cfg.get("SENDGRID_API_HOST") else {}
        try:
            response = SendGridAPIClient(cfg["SENDGRID_API_KEY"], **kwargs).send(mail_message)
        except Exception as exc:  # python_http_client raises HTTPError subclasses and URLError
            log.error("SendGrid delivery to %s failed: %s", message.to, exc)
            raise EmailDeliveryFailed() from exc
        if response.status_code >= 300:
            log.error("SendGrid answered %s for %s", response.status_code, message.to)
            raise EmailDeliveryFailed()


PROVIDERS: dict[str, type[EmailProvider]] = {
    provider.name: provider for provider in (ConsoleEmail, SmtpEmail, SendGridEmail)}


def provider() -> EmailProvider:
    """The provider MAIL_BACKEND names; EmailNotConfigured (503) when there is none."""
    chosen = configured(PROVIDERS, "MAIL_BACKEND")
    if chosen is None:
        raise EmailNotConfigured()
    return chosen()


def send_email(to: str, subject: str, text: str, html: str | None = None,
               attachments: list[Attachment] | tuple = ()) -> None:
    provider().send(Outgoing(to, subject, text, html, tuple(attachments)),
                    current_app.config["MAIL_DEFAULT_SENDER"])


def encode_attachments(attachments) -> list[dict]:
    """Attachments as a job's JSON arguments (`decode_attachments` reverses it)."""
    return [{"filename": a.filename, "content_type": a.content_type,
             "data": base64.b64encode(a.data).decode()} for a in attachments]


def decode_attachments(encoded: list[dict]) -> list[Attachment]:
    return [Attachment(a["filename"], a["content_type"], base64.b64decode(a["data"]))
            for a in encoded]


# --- after-commit delivery --------------------------------------------------------------------
# Mail caused by a database change is queued on the session and sent only once that change is
# committed: a rollback sends nothing, and a failed send is logged without undoing the change
# or failing the request.

def send_after_commit(message: Outgoing) -> None:
    """Send once the current transaction commits. When RQ runs the jobs, the message becomes an
    "email.send" job row in this same transaction instead, retried by the worker on failure."""
    if jobs.queued_mode():
        jobs.start("email.send", {
            "to": message.to, "subject": message.subject, "text": message.text,
            "html": message.html, "attachments": encode_attachments(message.attachments)})
        return
    db.session.info.setdefault("outbox", []).append(message)


def _deliver_outbox(session) -> None:
    if session.in_nested_transaction():  # a savepoint released: the real commit is to come
        return
    outbox = session.info.pop("outbox", [])
    for message in outbox:
        try:
            send_email(message.to, message.subject, message.text, message.html,
                       list(message.attachments))
        except Exception as exc:  # the change stands; the failure is for the operators
            log.error("e-mail to %s (%s) not sent: %s", message.to, message.subject, exc)


def _drop_outbox(session, previous_transaction) -> None:
    # A savepoint rolling back leaves the outer transaction (and its mail) alive.
    if not session.in_transaction():
        session.info.pop("outbox", None)


def register_outbox() -> None:
    if not event.contains(Session, "after_commit", _deliver_outbox):
        event.listen(Session, "after_commit", _deliver_outbox)
        event.listen(Session, "after_soft_rollback", _drop_outbox)
