"""Outgoing e-mail behind one interface, chosen by MAIL_BACKEND:

- "smtp": Flask-Mail over SMTP (MAIL_SERVER, MAIL_PORT, ...);
- "sendgrid": SendGrid's SDK (SENDGRID_API_KEY; SENDGRID_API_HOST points it elsewhere);
- "console": the message is written to the log (development and tests).

`send_email` raises EmailNotConfigured (503) when no backend is configured and
EmailDeliveryFailed (503) when the backend refuses; callers that must not reveal whether an
account exists (password reset) catch these and log instead.
"""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

from flask import current_app
from sqlalchemy import event
from sqlalchemy.orm import Session

from models import db
from services import jobs
from utils.errors import ServiceUnavailable
from utils.extensions import mail

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


def _send_console(to, subject, text, html, attachments, sender):
    log.warning("e-mail (console backend, not sent) to=%s subject=%r\n%s%s", to, subject, text,
                "".join(f"\n[attachment {a.filename} {a.content_type} {len(a.data)} bytes]"
                        for a in attachments))


def _send_smtp(to, subject, text, html, attachments, sender):
    from flask_mail import Message  # loaded only where MAIL_BACKEND is "smtp"

    message = Message(subject=subject, recipients=[to], body=text, html=html, sender=sender)
    for item in attachments:
        message.attach(item.filename, item.content_type, item.data)
    try:
        mail.send(message)
    except Exception as exc:  # smtplib and socket errors alike
        log.error("SMTP delivery to %s failed: %s", to, exc)
        raise EmailDeliveryFailed() from exc


def _send_sendgrid(to, subject, text, html, attachments, sender):
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
    message = Mail(from_email=sender, to_emails=to, subject=subject, plain_text_content=text,
                   html_content=html)
    for item in attachments:
        message.add_attachment(SGAttachment(
            FileContent(base64.b64encode(item.data).decode()), FileName(item.filename),
            FileType(item.content_type), Disposition("attachment")))
    kwargs = {"host": cfg["SENDGRID_API_HOST"]} if cfg.get("SENDGRID_API_HOST") else {}
    try:
        response = SendGridAPIClient(cfg["SENDGRID_API_KEY"], **kwargs).send(message)
    except Exception as exc:  # python_http_client raises HTTPError subclasses and URLError
        log.error("SendGrid delivery to %s failed: %s", to, exc)
        raise EmailDeliveryFailed() from exc
    if response.status_code >= 300:
        log.error("SendGrid answered %s for %s", response.status_code, to)
        raise EmailDeliveryFailed()


BACKENDS = {"console": _send_console, "smtp": _send_smtp, "sendgrid": _send_sendgrid}


def send_email(to: str, subject: str, text: str, html: str | None = None,
               attachments: list[Attachment] | tuple = ()) -> None:
    backend = current_app.config.get("MAIL_BACKEND")
    if backend == "console" and current_app.config.get("CONFIG_NAME") == "production":
        backend = None  # the console backend writes reset links to the log: never in production
    send = BACKENDS.get(backend or "")
    if send is None:
        raise EmailNotConfigured()
    send(to, subject, text, html, list(attachments), current_app.config["MAIL_DEFAULT_SENDER"])


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

@dataclass
class Outgoing:
    to: str
    subject: str
    text: str
    html: str | None = None
    attachments: tuple = ()


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
