"""Live sessions: scheduling by the course's instructor (or an admin), lists for students,
joining inside the window, recordings."""
from __future__ import annotations

from typing import Literal

from flask import Blueprint
from pydantic import AwareDatetime, Field
from spectree import Response
from typing_extensions import TypedDict

from auth import current_user, instructor_required, login_required
from models import PLATFORMS, db
from services import live_session_service as live_sessions
from utils.pagination import paginate
from utils.responses import LiveSessionOut, PaginationOut
from utils.routing import sent_changes
from utils.validation import PageQuery, StrictModel, errors, json_body, query_args, validate
from utils.validators import Url

bp = Blueprint("live_sessions", __name__)
AUTH = {"tags": ["live sessions"], "security": {"bearer": []}}

Platform = Literal[PLATFORMS]


class LiveSessionIn(StrictModel):
    course_id: int = Field(ge=1)
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    start_time: AwareDatetime  # naive times are refused: whose 9 o'clock?
    duration_minutes: int = Field(ge=1, le=1440)
    platform: Platform = "zoom"
    meeting_url: Url | None = None
    meeting_id: str | None = Field(None, max_length=100)
    meeting_password: str | None = Field(None, max_length=100)


class LiveSessionUpdate(StrictModel):
    title: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    start_time: AwareDatetime | None = None
    duration_minutes: int | None = Field(None, ge=1, le=1440)
    platform: Platform | None = None
    meeting_url: Url | None = None
    meeting_id: str | None = Field(None, max_length=100)
    meeting_password: str | None = Field(None, max_length=100)


NULLABLE = {"description", "meeting_url", "meeting_id", "meeting_password"}


class RecordingIn(StrictModel):
    recording_url: Url


class LiveSessionQuery(PageQuery):
    course_id: int | None = Field(None, ge=1)
    include_cancelled: bool = True


class LiveSessionListResponse(TypedDict):
    """A page of live sessions."""

    live_sessions: list[LiveSessionOut]
    pagination: PaginationOut


class LiveSessionResponse(TypedDict):
    """A live session."""

    live_session: LiveSessionOut


class LiveSessionSavedResponse(TypedDict):
    """A live session after a change (with its meeting details, for its hosts), or the
    meeting details to join it."""

    message: str
    live_session: LiveSessionOut


def page(query, args) -> dict:
    user = current_user()
    rows, meta = paginate(query, args.page, args.per_page)
    return {"live_sessions": [
        live_sessions.session_dict(live, host=live_sessions.is_host(live, user)) for live in rows],
        "pagination": meta}


@bp.get("")
@bp.get("/get-live-sessions")
@login_required
@validate(query=LiveSessionQuery, resp=Response(HTTP_200=LiveSessionListResponse, **errors(401)),
          **AUTH)
def list_sessions():
    """Students: sessions of their courses; instructors: their own; admins: all."""
    args = query_args()
    return page(live_sessions.list_query(current_user(), course_id=args.course_id,
                                         include_cancelled=args.include_cancelled), args)


@bp.get("/upcoming")
@bp.get("/get-live-courses/upcoming")
@login_required
@validate(query=LiveSessionQuery, resp=Response(HTTP_200=LiveSessionListResponse, **errors(401)),
          **AUTH)
def upcoming():
    """Scheduled sessions that have not ended, soonest first."""
    args = query_args()
    return page(live_sessions.list_query(current_user(), course_id=args.course_id,
                                         upcoming=True), args)


@bp.post("")
@bp.post("/create-live-sessions")
@instructor_required
@validate(json=LiveSessionIn, resp=Response(HTTP_201=LiveSessionSavedResponse,
                                            **errors(401, 403, 404)), **AUTH)
def create_session():
    """Schedule a session for a course you teach; enrolled students are notified."""
    live = live_sessions.create(current_user(), json_body().model_dump())
    db.session.commit()
    return {"message": "Live session scheduled",
            "live_session": live_sessions.session_dict(live, host=True)}, 201


@bp.get("/<int:session_id>")
@bp.get("/get-live-sessions/<int:session_id>")
@login_required
@validate(resp=Response(HTTP_200=LiveSessionResponse, **errors(401, 404)), **AUTH)
def get_session(session_id: int):
    """A session (meeting details only for its hosts; students get them from /join)."""
    user = current_user()
    live, host = live_sessions.visible(session_id, user)
    data = live_sessions.session_dict(live, host=host)
    if host:
        data["attendance"] = live_sessions.attendance(live)
    return {"live_session": data}


@bp.put("/<int:session_id>")
@bp.put("/update-live-sessions/<int:session_id>")
@instructor_required
@validate(json=LiveSessionUpdate, resp=Response(HTTP_200=LiveSessionSavedResponse,
                                                **errors(401, 403, 404, 410)), **AUTH)
def update_session(session_id: int):
    """Change a session; moving it notifies enrolled students with a new invitation."""
    live = live_sessions.hosted(session_id, current_user())
    changes = sent_changes(json_body(), clearable=NULLABLE)
    live_sessions.update_session(live, changes)
    db.session.commit()
    return {"message": "Live session updated",
            "live_session": live_sessions.session_dict(live, host=True)}


@bp.delete("/<int:session_id>")
@bp.delete("/delete-live-sessions/<int:session_id>")
@instructor_required
@validate(resp=Response(HTTP_200=LiveSessionSavedResponse, **errors(401, 403, 404, 410)),
          **AUTH)
def cancel_session(session_id: int):
    """Cancel a session (it stays on record); enrolled students are notified."""
    live = live_sessions.hosted(session_id, current_user())
    live_sessions.cancel(live)
    db.session.commit()
    return {"message": "Live session cancelled",
            "live_session": live_sessions.session_dict(live, host=True)}


@bp.get("/<int:session_id>/join")
@bp.get("/join-live-sessions/<int:session_id>/join")
@login_required
@validate(resp=Response(HTTP_200=LiveSessionSavedResponse, **errors(401, 403, 404, 410)),
          **AUTH)
def join_session(session_id: int):
    """The meeting URL, id and password: for enrolled students, the instructor and admins,
    from LIVE_SESSION_JOIN_EARLY_MINUTES before the start until the end."""
    live, _ = live_sessions.join(session_id, current_user())
    db.session.commit()
    return {"message": "Join the session", "live_session": live_sessions.session_dict(live, host=True)}


@bp.post("/<int:session_id>/recording")
@instructor_required
@validate(json=RecordingIn, resp=Response(HTTP_200=LiveSessionSavedResponse,
                                          **errors(401, 403, 404)), **AUTH)
def add_recording(session_id: int):
    """Attach the recording; enrolled students see it and are notified."""
    live = live_sessions.hosted(session_id, current_user())
    live_sessions.add_recording(live, json_body().recording_url)
    db.session.commit()
    return {"message": "Recording added",
            "live_session": live_sessions.session_dict(live, host=True)}
