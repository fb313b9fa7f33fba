"""In-app notifications and the e-mails that go with them.

In-app notifications are always created; e-mail follows each user's preference for the kind.
Fan-out is one INSERT ... SELECT over the recipients, whatever their number; the e-mails are
queued and sent after the commit (services/email_service.py).
"""
from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit

from flask import current_app, render_template_string
from jinja2 import Template
from sqlalchemy import Select, bindparam, func, insert, literal, select, update

from models import NOTIFICATION_KINDS, Notification, NotificationPreference, User, db
from services import jobs
from services.email_service import (
    Attachment,
    Outgoing,
    decode_attachments,
    encode_attachments,
    send_after_commit,
    send_email,
)
from utils.errors import NotFound, ValidationError
from utils.helpers import Columns, utcnow
from utils.pagination import PageStatement
from utils.validators import cut, one_line

# Titles are built from user text ("New live session: <title>"): cut to fit their column.
TITLE_LENGTH = Notification.__table__.c.title.type.length

# notification kind -> the preference column that switches its e-mail on or off
EMAIL_PREFERENCE = {
    "course_update": NotificationPreference.email_course_updates,
    "live_session": NotificationPreference.email_live_sessions,
    "payment": NotificationPreference.email_payments,
    "announcement": NotificationPreference.email_announcements,
    "system": NotificationPreference.email_announcements,
}

EMAIL_TEXT = """{{ greeting }}

{{ message }}
{% if link %}
{{ link }}
{% endif %}
--
{{ app_name }}
You receive this e-mail because of your notification settings.
"""

EMAIL_HTML = """<!doctype html>
<html><body style="font-family:system-ui,sans-serif;color:#1b2a4a;max-width:36rem">
<h2 style="font-size:1.2rem">{{ title }}</h2>
<p>{{ greeting }}</p>
<p style="white-space:pre-line">{{ message }}</p>
{% if link %}<p><a href="{{ link }}">{{ link }}</a></p>{% endif %}
<hr><p style="font-size:.8rem;color:#666">{{ app_name }} · you receive this e-mail because of
your notification settings.</p>
</body></html>
"""


_TEXT_TEMPLATE = Template(EMAIL_TEXT)  # jinja2.Template: no autoescaping


def recipients_query(*, user_ids: list[int] | None = None, role: str | None = None,
                     active_only: bool = True) -> Select:
    query = select(User.id)
    if user_ids is not None:
        query = query.where(User.id.in_(user_ids))
    if role is not None:
        query = query.where(User.role == role)
    if active_only:
        query = query.where(User.is_active.is_(True))
    return query


def link_problem(link: str) -> str | None:
    """Why `link` cannot be a notification's link, or None. A link is opened by the SPAs and
    put in e-mails: only an absolute http(s) URL or a path of this site (`/courses/7`); never
    `javascript:`, `data:` or another scheme, nor `//host` or `/\\host`, which browsers open
    as another site."""
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in link):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(link)
    except ValueError:
        return "is not a URL"
    if parts.scheme:
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return "must be an http(s) URL or a path starting with /"
        return None
    if not link.startswith("/") or link.startswith("//") or "\\" in link:
        return "must be an http(s) URL or a path starting with /"
    return None


def check_link(link: str | None) -> str | None:
    """`link`, or 422 naming the field when it is not one `link_problem` accepts."""
    problem = link_problem(link) if link is not None else None
    if problem:
        raise ValidationError("Invalid notification link", details={"link": f"Link {problem}"})
    return link


def notify(recipients: Select, *, kind: str, title: str, message: str, link: str | None = None,
           data: dict | None = None, email: bool = False,
           attachments: tuple[Attachment, ...] = ()) -> int:
    """Create the notification for every user id `recipients` selects (one statement), and
    queue e-mails to those whose preferences allow this kind. Returns how many were notified."""
    assert kind in NOTIFICATION_KINDS
    check_link(link)
    title = cut(one_line(title), TITLE_LENGTH)
    ids = recipients.subquery()
    source = select(ids.c.id, literal(kind), literal(title), literal(message), literal(link),
                    literal(False),
                    literal(utcnow(), type_=Notification.__table__.c.created_at.type))
    if data is not None:
        source = source.add_columns(literal(data, type_=Notification.__table__.c.data.type))
        columns = ["user_id", "kind", "title", "message", "link", "is_read", "created_at", "data"]
    else:
        columns = ["user_id", "kind", "title", "message", "link", "is_read", "created_at"]
    result = db.session.execute(insert(Notification).from_select(columns, source))
    count = result.rowcount if result.rowcount is not None and result.rowcount >= 0 else None
    if email:
        queue_emails(recipients, kind=kind, title=title, message=message, link=link,
                     attachments=attachments)
    if count is None:
        count = db.session.scalar(select(func.count()).select_from(ids))
    return count


def email_recipients(recipients: Select, kind: str) -> list[tuple[str, str]]:
    """(email, first name) of recipients whose preference allows e-mail of this kind (no
    preference row means the default: on)."""
    ids = recipients.subquery()
    wanted = EMAIL_PREFERENCE[kind]
    rows = db.session.execute(
        select(User.email, User.first_name)
        .join(ids, ids.c.id == User.id)
        .outerjoin(NotificationPreference, NotificationPreference.user_id == User.id)
        .where(func.coalesce(wanted, True).is_(True))
        .order_by(User.id))
    return [(email, first) for email, first in rows]


def _render(title: str, message: str, link: str | None, first_name: str | None,
            app_name: str) -> tuple[str, str, str]:
    context = {"greeting": f"Hello {first_name}," if first_name else "Hello,",
               "title": title, "message": message, "link": link, "app_name": app_name}
    # The subject is a mail header: one line, whatever a stored title holds.
    return (one_line(f"{title} – {app_name}"),
            _TEXT_TEMPLATE.render(**context),  # plain text: nothing to escape
            render_template_string(EMAIL_HTML, **context))


def queue_emails(recipients: Select, *, kind: str, title: str, message: str,
                 link: str | None = None, attachments: tuple[Attachment, ...] = (),
                 started_by: int | None = None, as_job: bool | None = None):
    """E-mail the recipients whose preferences allow this kind.

    As a job (always when RQ runs the jobs, or when `as_job`): one "notifications.email" row
    naming the recipients, returned so the caller can launch it; the worker sends in batches
    and a retry resumes where the last attempt stopped. Otherwise each message goes to the
    after-commit outbox and None is returned."""
    if as_job is None:
        as_job = jobs.queued_mode()
    if as_job:
        audience = recipients.subquery()
        user_ids = list(db.session.scalars(select(audience.c.id).order_by(audience.c.id)))
        return jobs.start("notifications.email", {
            "kind": kind, "title": title, "message": message, "link": link,
            "user_ids": user_ids, "attachments": encode_attachments(attachments)},
            user_id=started_by)
    app_name = current_app.config["APP_NAME"]
    for address, first_name in email_recipients(recipients, kind):
        subject, text, html = _render(title, message, link, first_name, app_name)
        send_after_commit(Outgoing(to=address, subject=subject, text=text, html=html,
                                   attachments=attachments))
    return None


def email_fanout(args: dict) -> dict:
    """The "notifications.email" job: send to `user_ids` in batches of JOB_EMAIL_BATCH,
    recording after each batch the last id done, so that a retry after a failure (the mail
    server down) sends only to those not reached yet."""
    job_id = args["_job"]
    progress = jobs.progress(job_id) or {}
    done_until = progress.get("last_user_id", 0)
    sent = progress.get("sent", 0)
    app_name = current_app.config["APP_NAME"]
    attachments = decode_attachments(args.get("attachments", []))
    wanted = EMAIL_PREFERENCE[args["kind"]]
    pending = [uid for uid in args["user_ids"] if uid > done_until]
    size = current_app.config["JOB_EMAIL_BATCH"]
    for start in range(0, len(pending), size):
        chunk = pending[start:start + size]
        rows = db.session.execute(
            select(User.id, User.email, User.first_name)
            .outerjoin(NotificationPreference, NotificationPreference.user_id == User.id)
            .where(User.id.in_(chunk), User.is_active.is_(True),
                   func.coalesce(wanted, True).is_(True))
            .order_by(User.id)).all()
        db.session.rollback()  # no transaction held open while the mail server works
        try:
            for user_id, address, first_name in rows:
                subject, text, html = _render(args["title"], args["message"], args.get("link"),
                                              first_name, app_name)
                send_email(address, subject, text, html, attachments)
                sent += 1
                done_until = user_id
            done_until = chunk[-1]  # those whose preference says no are done as well
        finally:
            jobs.save_progress(job_id, {"sent": sent, "last_user_id": done_until})
    return {"sent": sent, "recipients": len(args["user_ids"])}


# --- the user's own notifications -------------------------------------------------------------

def own(notification_id: int, user: User) -> Notification:
    notification = db.session.get(Notification, notification_id)
    if notification is None or notification.user_id != user.id:
        raise NotFound("Notification not found")
    return notification


# The list's columns, read as rows: an ORM entity per notification cost the page more than its
# statement did (issue 21). The page's select is of ids (what its count needs); the columns
# ride as its extra, and `Notification.to_dict` writes each row.
_N = Notification.__table__.c
_SHOWN = (_N.id, _N.kind, _N.title, _N.message, _N.link, _N.data, _N.is_read, _N.read_at,
          _N.created_at)
_SHOWN_NAMES = tuple(column.key for column in _SHOWN)


class _Row(Columns):
    to_dict = Notification.to_dict


# The badge's count, built once: a select made per request cost more Python than its round trip.
_UNREAD = select(func.count(_N.id)).where(_N.user_id == bindparam("user_id"),
                                          _N.is_read.is_(False))


def _page_statement(unread_only: bool) -> PageStatement:
    """The user's notifications newest first (unread ones only, or all), each row with the
    user's unread count after its columns."""
    query = (select(_N.id).where(_N.user_id == bindparam("user_id"))
             .order_by(_N.created_at.desc(), _N.id.desc()))
    if unread_only:
        query = query.where(_N.is_read.is_(False))
    return PageStatement(query, extra=(*_SHOWN[1:], _UNREAD.scalar_subquery()))


_PAGES = {unread_only: _page_statement(unread_only) for unread_only in (False, True)}


def unread_count(user_id: int) -> int:
    return db.session.connection().scalar(_UNREAD, {"user_id": user_id}) or 0


def page(user: User, unread_only: bool, page_number: int, per_page: int) -> dict:
    """A page of the user's notifications with their unread count, in one statement (the
    count rides in the page's select; a page without rows counts on its own)."""
    rows, meta = _PAGES[bool(unread_only)].page({"user_id": user.id}, page_number, per_page)
    count = rows[0][len(_SHOWN)] if rows else unread_count(user.id)
    return {"notifications": [_Row(_SHOWN_NAMES, row).to_dict() for row in rows],
            "pagination": meta, "unread_count": count or 0}


def mark_read(notification: Notification) -> Notification:
    if not notification.is_read:
        notification.is_read, notification.read_at = True, utcnow()
    return notification


def mark_all_read(user: User) -> int:
    return db.session.execute(
        update(Notification).where(Notification.user_id == user.id,
                                   Notification.is_read.is_(False))
        .values(is_read=True, read_at=utcnow())).rowcount


def preferences(user: User) -> NotificationPreference:
    row = db.session.get(NotificationPreference, user.id)
    if row is None:
        row = NotificationPreference(user_id=user.id, email_course_updates=True,
                                     email_live_sessions=True, email_payments=True,
                                     email_announcements=True)
    return row


def update_preferences(user: User, changes: dict) -> NotificationPreference:
    row = db.session.get(NotificationPreference, user.id)
    if row is None:
        row = preferences(user)
        db.session.add(row)
    for name, value in changes.items():
        setattr(row, name, value)
    return row
