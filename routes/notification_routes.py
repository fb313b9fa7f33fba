"""Notifications: a user's own list, read state and preferences; admins send and broadcast."""
from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint
from pydantic import AfterValidator, Field, model_validator
from pydantic_core import PydanticCustomError
from spectree import Response
from typing_extensions import NotRequired, TypedDict

from auth import admin_required, audit, current_user, login_required
from models import NOTIFICATION_KINDS, ROLES, db
from services import jobs
from services import notification_service as notifications
from utils.read_only import read_only
from utils.pipeline.signed_in_fast_path import signed_in_read
from utils.responses import JobAcceptedResponse, MessageResponse, NotificationOut, PaginationOut
from utils.routing import accepted, sent_changes
from utils.validation import PageQuery, StrictModel, errors, json_body, query_args, validate
from utils.validators import SafeText

bp = Blueprint("notifications", __name__)
AUTH = {"tags": ["notifications"], "security": {"bearer": []}}
Kind = Literal[NOTIFICATION_KINDS]


def _check_link(value: str) -> str:
    problem = notifications.link_problem(value)
    if problem:
        raise PydanticCustomError("invalid_link", f"Link {problem}")
    return value


# An absolute http(s) URL or a path of this site (notification_service.link_problem).
Link = Annotated[str, Field(max_length=500, description="An http(s) URL or a path starting "
                            "with / (no other scheme)"), AfterValidator(_check_link)]


class NotificationQuery(PageQuery):
    unread: bool = False


class SendIn(StrictModel):
    user_ids: list[int] | None = Field(None, min_length=1, max_length=10_000)
    role: Literal[ROLES] | None = None
    title: SafeText = Field(min_length=1, max_length=200)
    message: SafeText = Field(min_length=1, max_length=5000)
    link: Link | None = None
    kind: Kind = "announcement"
    send_email: bool = False

    @model_validator(mode="after")
    def one_audience(self):
        if (self.user_ids is None) == (self.role is None):
            raise ValueError("give either user_ids or role")
        return self


class BroadcastIn(StrictModel):
    title: SafeText = Field(min_length=1, max_length=200)
    message: SafeText = Field(min_length=1, max_length=5000)
    link: Link | None = None
    send_email: bool = False


class PreferencesIn(StrictModel):
    email_course_updates: bool | None = None
    email_live_sessions: bool | None = None
    email_payments: bool | None = None
    email_announcements: bool | None = None


class NotificationListResponse(TypedDict):
    """A page of the user's notifications, newest first, and how many are unread."""

    notifications: list[NotificationOut]
    pagination: PaginationOut
    unread_count: int


class UnreadCountResponse(TypedDict):
    """How many of the user's notifications are unread."""

    unread_count: int


class NotificationSavedResponse(TypedDict):
    """A notification after a change."""

    message: str
    notification: NotificationOut


class MarkedReadResponse(TypedDict):
    """How many notifications were marked read."""

    message: str
    updated: int


class PreferencesOut(TypedDict):
    """E-mail on or off per kind of notification; in-app ones are always on."""

    email_course_updates: bool
    email_live_sessions: bool
    email_payments: bool
    email_announcements: bool
    in_app: Literal[True]


class PreferencesResponse(TypedDict):
    """The user's notification preferences (and what was done, after a change)."""

    preferences: PreferencesOut
    message: NotRequired[str]


class NotifiedResponse(TypedDict):
    """The notifications were created (in-app; no e-mail asked for)."""

    message: str
    recipients: int


def _page(caller, args) -> dict:
    return notifications.page(caller, args.unread, args.page, args.per_page)


def _unread(caller, _args) -> dict:
    return {"unread_count": notifications.unread_count(caller.id)}


@bp.get("")
@bp.get("/get-notifications")
@signed_in_read(_page)
@login_required
@validate(query=NotificationQuery, resp=Response(HTTP_200=NotificationListResponse,
                                                   **errors(401)), **AUTH)
@read_only
def list_notifications():
    """My notifications, newest first (`?unread=true` for unread only)."""
    return _page(current_user(), query_args())


@bp.get("/unread-count")
@signed_in_read(_unread)
@login_required
@validate(resp=Response(HTTP_200=UnreadCountResponse, **errors(401)), **AUTH)
@read_only
def unread_count():
    """How many of my notifications are unread (the badge)."""
    return _unread(current_user(), None)


@bp.put("/<int:notification_id>/read")
@login_required
@validate(resp=Response(HTTP_200=NotificationSavedResponse, **errors(401, 404)), **AUTH)
def mark_read(notification_id: int):
    """Mark one of my notifications read."""
    notification = notifications.mark_read(notifications.own(notification_id, current_user()))
    db.session.commit()
    return {"message": "Marked as read", "notification": notification.to_dict()}


@bp.put("/read-all")
@bp.put("/mark-all-read")
@login_required
@validate(resp=Response(HTTP_200=MarkedReadResponse, **errors(401)), **AUTH)
def mark_all_read():
    """Mark all my notifications read."""
    changed = notifications.mark_all_read(current_user())
    db.session.commit()
    return {"message": "All notifications marked as read", "updated": changed}


@bp.delete("/<int:notification_id>")
@login_required
@validate(resp=Response(HTTP_200=MessageResponse, **errors(401, 404)), **AUTH)
def delete_notification(notification_id: int):
    """Delete one of my notifications."""
    db.session.delete(notifications.own(notification_id, current_user()))
    db.session.commit()
    return {"message": "Notification deleted"}


@bp.get("/preferences")
@login_required
@validate(resp=Response(HTTP_200=PreferencesResponse, **errors(401)), **AUTH)
def get_preferences():
    """E-mail on or off per kind; in-app notifications are always on."""
    return {"preferences": notifications.preferences(current_user()).to_dict()}


@bp.put("/preferences")
@login_required
@validate(json=PreferencesIn, resp=Response(HTTP_200=PreferencesResponse, **errors(401)), **AUTH)
def update_preferences():
    """Turn e-mail on or off per kind (the fields sent)."""
    changes = sent_changes(json_body())
    prefs = notifications.update_preferences(current_user(), changes)
    db.session.commit()
    return {"message": "Preferences updated", "preferences": prefs.to_dict()}


@bp.post("/send")
@admin_required
@validate(json=SendIn, resp=Response(HTTP_201=NotifiedResponse, HTTP_202=JobAcceptedResponse,
                                     **errors(401, 403)), **AUTH)
def send():
    """Admin: notify the given users, or everyone with a role (active users only). With
    `send_email` the e-mails go out as a job: 202 with the job to follow."""
    body = json_body()
    recipients = notifications.recipients_query(user_ids=body.user_ids, role=body.role)
    return _notify(recipients, "notification.send", kind=body.kind, title=body.title,
                   message=body.message, link=body.link, send_email=body.send_email,
                   audit_details={"role": body.role, "user_ids": body.user_ids[:50]
                                  if body.user_ids else None},
                   sent="Notification sent to {} user(s)")


@bp.post("/broadcast")
@admin_required
@validate(json=BroadcastIn,
          resp=Response(HTTP_201=NotifiedResponse, HTTP_202=JobAcceptedResponse,
                        **errors(401, 403)), **AUTH)
def broadcast():
    """Admin: notify every active user (e-mail, with `send_email`, as a job: 202)."""
    body = json_body()
    return _notify(notifications.recipients_query(), "notification.broadcast",
                   kind="announcement", title=body.title, message=body.message, link=body.link,
                   send_email=body.send_email, audit_details={}, sent="Broadcast to {} user(s)")


def _notify(recipients, action, *, kind, title, message, link, send_email, audit_details,
            sent):
    admin = current_user()
    count = notifications.notify(recipients, kind=kind, title=title, message=message,
                                 link=link)
    job = None
    if send_email:
        job = notifications.queue_emails(recipients, kind=kind, title=title, message=message,
                                         link=link, started_by=admin.id, as_job=True)
    audit(action, "notification", None, recipients=count, title=title,
          email_job=job.id if job else None, **audit_details)
    db.session.commit()
    if job is None:
        return {"message": sent.format(count), "recipients": count}, 201
    return accepted(jobs.launch(job), sent.format(count) + "; e-mails are being sent",
                    recipients=count)
