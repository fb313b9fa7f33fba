"""Live sessions: scheduling, the join window, attendance, recordings, and the notices enrolled
students get (in-app, and by e-mail with an .ics invitation) when a session is created,
moved or cancelled."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask import current_app
from sqlalchemy import and_, select, update
from sqlalchemy.exc import IntegrityError

from models import OPEN_ENROLLMENT_STATUSES, Course, Enrollment, LiveSession, LiveSessionAttendance, User, db
from services import course_service, notification_service
from services.email_service import Attachment
from utils.errors import Forbidden, Gone, NotFound, ValidationError
from utils.helpers import iso, utcnow

OPEN = OPEN_ENROLLMENT_STATUSES


# --- who may do what --------------------------------------------------------------------------

def get(session_id: int) -> LiveSession:
    live = db.session.get(LiveSession, session_id)
    if live is None:
        raise NotFound("Live session not found")
    return live


def is_host(live: LiveSession, user: User, course: Course | None = None) -> bool:
    """Admins and the course's current instructor host a session: who scheduled it
    (`live.instructor_id`) grants nothing, so an instructor whose course an admin gave to
    another loses its sessions with it. Lists ask this for every row: it reads the database at
    most once per transaction (the courses the user teaches), not once per session's course."""
    if user.role == "admin":
        return True
    if course is not None:
        return course.instructor_id == user.id
    return live.course_id in _taught_course_ids(user)


def _taught_course_ids(user: User) -> frozenset[int]:
    """The ids of the courses `user` teaches, remembered for the rest of the transaction (a
    commit or rollback starts a new one, which reads them again)."""
    session = db.session()
    remembered = session.info.get("taught_course_ids")
    if (remembered is not None and remembered[0] is session.get_transaction()
            and remembered[1] == user.id):
        return remembered[2]
    ids = frozenset(session.scalars(select(Course.id).where(Course.instructor_id == user.id)))
    session.info["taught_course_ids"] = (session.get_transaction(), user.id, ids)
    return ids


def visible(session_id: int, user: User) -> tuple[LiveSession, bool]:
    """(session, is_host): hosts and the course's enrolled students see it; others get 404."""
    live = get(session_id)
    if is_host(live, user):
        return live, True
    if course_service.is_enrolled(user.id, live.course_id):
        return live, False
    raise NotFound("Live session not found")


def hosted(session_id: int, user: User) -> LiveSession:
    live = get(session_id)
    if not is_host(live, user):
        raise Forbidden("Only the course's instructor or an admin can change this session",
                        code="not_session_host")
    return live


def list_query(user: User, *, course_id: int | None = None, upcoming: bool = False,
               include_cancelled: bool = True):
    query = select(LiveSession)
    if user.role == "instructor":
        taught = select(Course.id).where(Course.instructor_id == user.id)
        query = query.where(LiveSession.course_id.in_(taught))
    elif user.role != "admin":
        enrolled = select(Enrollment.course_id).where(Enrollment.user_id == user.id,
                                                      Enrollment.status.in_(OPEN))
        query = query.where(LiveSession.course_id.in_(enrolled))
    if course_id is not None:
        query = query.where(LiveSession.course_id == course_id)
    if upcoming:  # still to come or under way
        query = query.where(LiveSession.status == "scheduled", LiveSession.end_time > utcnow())
        return query.order_by(LiveSession.start_time.asc(), LiveSession.id.asc())
    if not include_cancelled:
        query = query.where(LiveSession.status == "scheduled")
    return query.order_by(LiveSession.start_time.desc(), LiveSession.id.desc())


def session_dict(live: LiveSession, *, host: bool) -> dict:
    return live.to_dict(with_meeting=host)


# --- writing ----------------------------------------------------------------------------------

def _not_over(start_time: datetime, duration_minutes: int) -> None:
    """A session is scheduled (or moved) to a time that has not passed: one already under way
    may be entered, one that has ended may not (422)."""
    if start_time + timedelta(minutes=duration_minutes) <= utcnow():
        raise ValidationError("A live session cannot be scheduled in the past",
                              code="validation_error",
                              details={"start_time": "This session would already have ended"})


def create(user: User, data: dict) -> LiveSession:
    course = course_service.editable_course(data["course_id"], user)
    _not_over(data["start_time"], data["duration_minutes"])
    live = LiveSession(instructor_id=course.instructor_id, status="scheduled", **data)
    db.session.add(live)
    db.session.flush()
    _announce(live, course, "scheduled")
    return live


def update_session(live: LiveSession, changes: dict) -> LiveSession:
    if live.status == "cancelled":
        raise Gone("This live session was cancelled")
    moved = any(name in changes and changes[name] != getattr(live, name)
                for name in ("start_time", "duration_minutes"))
    if moved:
        _not_over(changes.get("start_time", live.start_time),
                  changes.get("duration_minutes", live.duration_minutes))
    for name, value in changes.items():
        setattr(live, name, value)
    db.session.flush()
    if moved:
        _announce(live, db.session.get(Course, live.course_id), "moved")
    return live


def cancel(live: LiveSession) -> LiveSession:
    if live.status == "cancelled":
        raise Gone("This live session is already cancelled")
    live.status, live.cancelled_at = "cancelled", utcnow()
    db.session.flush()
    _announce(live, db.session.get(Course, live.course_id), "cancelled")
    return live


def add_recording(live: LiveSession, url: str) -> LiveSession:
    live.recording_url = url
    course = db.session.get(Course, live.course_id)
    notification_service.notify(
        _enrolled(live.course_id), kind="live_session", title=f"Recording available: {live.title}",
        message=f"The recording of \u201c{live.title}\u201d ({course.title}) is available.",
        link=f"/live-sessions/{live.id}", data={"live_session_id": live.id})
    return live


# --- joining ----------------------------------------------------------------------------------

def join(session_id: int, user: User) -> tuple[LiveSession, bool]:
    """The meeting details, for the enrolled, the instructor and admins, inside the window."""
    live, host = visible(session_id, user)
    if live.status == "cancelled":
        raise Gone("This live session was cancelled", code="session_cancelled")
    now = utcnow()
    opens = live.start_time - timedelta(minutes=current_app.config["LIVE_SESSION_JOIN_EARLY_MINUTES"])
    ends = live.end_time
    if now < opens:
        raise Forbidden(f"You can join from {iso(opens)}, "
                        f"{current_app.config['LIVE_SESSION_JOIN_EARLY_MINUTES']} minutes before "
                        "the start", code="session_not_open",
                        details={"opens_at": iso(opens), "start_time": iso(live.start_time)})
    if now >= ends:
        raise Forbidden("This live session has ended", code="session_ended",
                        details={"ended_at": iso(ends),
                                 "recording_url": live.recording_url})
    _record_attendance(live, user, now)
    return live, host


def _record_attendance(live: LiveSession, user: User, now: datetime) -> None:
    updated = db.session.execute(
        update(LiveSessionAttendance)
        .where(LiveSessionAttendance.live_session_id == live.id,
               LiveSessionAttendance.user_id == user.id)
        .values(last_joined_at=now, join_count=LiveSessionAttendance.join_count + 1)).rowcount
    if updated:
        return
    try:
        with db.session.begin_nested():
            db.session.add(LiveSessionAttendance(live_session_id=live.id, user_id=user.id,
                                                 first_joined_at=now, last_joined_at=now))
    except IntegrityError:  # a parallel join from the same user got there first
        db.session.execute(
            update(LiveSessionAttendance)
            .where(and_(LiveSessionAttendance.live_session_id == live.id,
                        LiveSessionAttendance.user_id == user.id))
            .values(last_joined_at=now, join_count=LiveSessionAttendance.join_count + 1))


def attendance(live: LiveSession) -> list[dict]:
    rows = db.session.execute(
        select(LiveSessionAttendance, User.first_name, User.last_name)
        .join(User, User.id == LiveSessionAttendance.user_id)
        .where(LiveSessionAttendance.live_session_id == live.id)
        .order_by(LiveSessionAttendance.first_joined_at))
    return [{"user_id": a.user_id, "name": f"{first} {last}".strip(),
             "first_joined_at": iso(a.first_joined_at), "last_joined_at": iso(a.last_joined_at),
             "join_count": a.join_count} for a, first, last in rows]


# --- notices ----------------------------------------------------------------------------------

def _enrolled(course_id: int):
    return (select(Enrollment.user_id.label("id"))
            .join(User, User.id == Enrollment.user_id)
            .where(Enrollment.course_id == course_id, Enrollment.status.in_(OPEN),
                   User.is_active.is_(True)))


def _announce(live: LiveSession, course: Course, what: str) -> None:
    when = live.start_time.strftime("%A %d %B %Y, %H:%M UTC")
    titles = {"scheduled": f"New live session: {live.title}",
              "moved": f"Live session moved: {live.title}",
              "cancelled": f"Live session cancelled: {live.title}"}
    messages = {"scheduled": f"\u201c{live.title}\u201d ({course.title}) is scheduled for {when}, "
                             f"for {live.duration_minutes} minutes.",
                "moved": f"\u201c{live.title}\u201d ({course.title}) now starts {when}, "
                         f"for {live.duration_minutes} minutes.",
                "cancelled": f"\u201c{live.title}\u201d ({course.title}), planned for {when}, "
                             "is cancelled."}
    invite = Attachment("live-session.ics", "text/calendar; method=" +
                        ("CANCEL" if what == "cancelled" else "REQUEST"),
                        ics(live, course, cancelled=what == "cancelled").encode())
    notification_service.notify(
        _enrolled(live.course_id), kind="live_session", title=titles[what],
        message=messages[what], link=f"/live-sessions/{live.id}",
        data={"live_session_id": live.id, "course_id": course.id, "change": what},
        email=True, attachments=(invite,))


def _ics_text(value: str) -> str:
    """RFC 5545 TEXT: backslash, semicolon and comma escaped; every line break (CR LF, LF or
    a bare CR) as \\n; other control characters, which TEXT may not hold, dropped."""
    value = (value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
             .replace("\r\n", "\n").replace("\r", "\n"))
    return "".join(ch for ch in value if ch == "\n" or ch == "\t" or ch >= " " and ch != "\x7f"
                   ).replace("\n", "\\n")


def _fold(line: str) -> str:
    """RFC 5545: lines longer than 75 octets continue on the next line after a space."""
    out, current = [], b""
    for char in line:
        encoded = char.encode()
        if len(current) + len(encoded) > (75 if not out else 74):
            out.append(current.decode())
            current = b""
        current += encoded
    out.append(current.decode())
    return "\r\n ".join(out)


def _stamp(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _sequence(live: LiveSession) -> int:
    if live.created_at is None or live.updated_at is None or live.updated_at <= live.created_at:
        return 0
    return max(1, int((live.updated_at - live.created_at).total_seconds()))


def ics(live: LiveSession, course: Course, *, cancelled: bool = False) -> str:
    host = current_app.config["PUBLIC_BASE_URL"].split("://", 1)[-1].split("/", 1)[0]
    lines = [
        "BEGIN:VCALENDAR", "VERSION:2.0", f"PRODID:-//{_ics_text(current_app.config['APP_NAME'])}//LMS//EN",
        "CALSCALE:GREGORIAN", f"METHOD:{'CANCEL' if cancelled else 'REQUEST'}",
        "BEGIN:VEVENT",
        f"UID:live-session-{live.id}@{host}",
        f"DTSTAMP:{_stamp(utcnow())}",
        f"DTSTART:{_stamp(live.start_time)}",
        f"DTEND:{_stamp(live.end_time)}",
        # Later updates must carry a higher sequence for calendars to apply them: 0 for the
        # invitation, then the seconds since creation (at least 1) for every change.
        f"SEQUENCE:{_sequence(live)}",
        f"SUMMARY:{_ics_text(live.title)}",
        f"DESCRIPTION:{_ics_text(f'{course.title}. ' + (live.description or ''))}",
        f"STATUS:{'CANCELLED' if cancelled else 'CONFIRMED'}",
    ]
    if live.meeting_url and not cancelled:
        lines.append(f"LOCATION:{_ics_text(live.meeting_url)}")
        lines.append(f"URL:{live.meeting_url}")
    lines += ["END:VEVENT", "END:VCALENDAR"]
    return "\r\n".join(_fold(line) for line in lines) + "\r\n"
