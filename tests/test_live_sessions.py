"""Live sessions through the HTTP API: scheduling (who may, what is refused), the lists and who
sees meeting details, the join window and its edges, attendance, moving, cancelling,
recordings, and the in-app and e-mail notices (with the .ics invitation) enrolled students get.

Every test checks the status code, the body and what the database holds afterwards. Courses are
built and published through the API by their instructor, students enroll through the API.
E-mail is captured by a local SMTP server (tests/support/standins.py) on an app configured for
it, on the session app's database.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import func, select

from app import create_app
from models import (
    Enrollment,
    LiveSession,
    LiveSessionAttendance,
    Notification,
    NotificationPreference,
    User,
    db,
)
from services import live_session_service
from tests.support.assertions import error, ok
from tests.support.standins import free_port, smtp_server
from utils.helpers import iso

API = "/api/v1"
LS = f"{API}/live-sessions"
MEETING_KEYS = {"meeting_url", "meeting_id", "meeting_password"}
EARLY = timedelta(minutes=15)


# --- helpers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Actor:
    id: int
    headers: dict
    email: str


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def parse(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert parsed.tzinfo is not None, value
    return parsed


class World:
    """Users, courses, enrollments and sessions in one app (and its database)."""

    def __init__(self, app) -> None:
        self.app = app
        self.client = app.test_client()

    # users and tokens
    def user(self, role: str = "student", **fields) -> Actor:
        email = fields.pop("email", f"{role}-{uuid.uuid4().hex[:10]}@example.com")
        values = {"email": email, "first_name": fields.pop("first_name", role.capitalize()),
                  "last_name": "Tester", "role": role, "is_active": True,
                  "is_email_verified": True, **fields}
        with self.app.app_context():
            user = User(**values)
            user.set_password("Passw0rd!")
            db.session.add(user)
            db.session.commit()
            token = create_access_token(user)
            return Actor(user.id, {"Authorization": f"Bearer {token}"}, email)

    def deactivate(self, who: Actor) -> None:
        with self.app.app_context():
            db.session.get(User, who.id).is_active = False
            db.session.commit()

    # courses and enrollments, through the API
    def course(self, owner: Actor, title: str = "Python") -> int:
        client = self.client
        course = ok(client.post(f"{API}/courses", json={"title": title},
                                headers=owner.headers), 201)["course"]
        module = ok(client.post(f"{API}/courses/{course['id']}/modules",
                                json={"title": f"{title} basics"}, headers=owner.headers),
                    201)["module"]
        ok(client.post(f"{API}/lessons/create-lessons/{module['id']}",
                       json={"title": "Intro", "content": "Hello"}, headers=owner.headers), 201)
        published = ok(client.put(f"{API}/courses/{course['id']}", json={"status": "published"},
                                  headers=owner.headers))["course"]
        assert published["status"] == "published"
        return course["id"]

    def enroll(self, student: Actor, course_id: int) -> int:
        body = ok(self.client.post(f"{API}/enrollments", json={"course_id": course_id},
                                   headers=student.headers), 201)
        return body["enrollment"]["id"]

    # live sessions
    def create(self, who: Actor, course_id: int, *, start: datetime | None = None,
               path: str = LS, **fields) -> dict:
        """Scheduled through the API. Sessions cannot be scheduled once over: one that
        should have ended already is scheduled for tomorrow, then moved back in the
        database (a session that has since ended), and read back as `who` sees it."""
        start = start or now() + timedelta(days=1)
        ended = start + timedelta(minutes=fields.get("duration_minutes", 60)) <= now()
        body = session_body(course_id, start=now() + timedelta(days=1) if ended else start,
                            **fields)
        live = ok(self.client.post(path, json=body, headers=who.headers), 201)["live_session"]
        if not ended:
            return live
        with self.app.app_context():
            db.session.get(LiveSession, live["id"]).start_time = start  # end_time follows
            db.session.commit()
        return ok(self.client.get(f"{LS}/{live['id']}", headers=who.headers))["live_session"]

    def row(self, session_id: int) -> LiveSession | None:
        with self.app.app_context():
            live = db.session.get(LiveSession, session_id)
            if live is not None:
                db.session.expunge(live)
            return live

    def count(self, model, *where) -> int:
        with self.app.app_context():
            return db.session.scalar(select(func.count()).select_from(model).where(*where))

    def notices(self, who: Actor) -> list[dict]:
        """The user's notifications in the database, oldest first."""
        with self.app.app_context():
            rows = db.session.scalars(select(Notification).where(Notification.user_id == who.id)
                                      .order_by(Notification.id)).all()
            return [{"title": n.title, "kind": n.kind, "data": n.data, "link": n.link,
                     "is_read": n.is_read} for n in rows]


def session_body(course_id: int, *, start: datetime | None = None, **fields) -> dict:
    start = start or now() + timedelta(days=1)
    body = {"course_id": course_id, "title": "Office hours", "description": "Questions welcome",
            "start_time": start.isoformat(), "duration_minutes": 60, "platform": "zoom",
            "meeting_url": "https://zoom.us/j/123456789", "meeting_id": "123 456 789",
            "meeting_password": "s3cret-pw"}
    body.update(fields)
    return body


@pytest.fixture
def world(app) -> World:
    return World(app)


@dataclass
class Class:
    """An owner with a published course, two enrolled students and one outsider."""

    owner: Actor
    course_id: int
    students: list[Actor]
    outsider: Actor


@pytest.fixture
def klass(world) -> Class:
    owner = world.user("instructor")
    course_id = world.course(owner)
    students = [world.user("student"), world.user("student")]
    for student in students:
        world.enroll(student, course_id)
    return Class(owner, course_id, students, world.user("student"))


# --- create -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [LS, f"{LS}/create-live-sessions"])
def test_course_owner_schedules_a_session(world, klass, path):
    # A start given in another zone is the same instant in UTC.
    start = (now() + timedelta(days=2)).astimezone(timezone(timedelta(hours=5, minutes=30)))
    body = ok(world.client.post(path, json=session_body(klass.course_id, start=start,
                                                        duration_minutes=90),
                                headers=klass.owner.headers), 201)

    assert body["message"] == "Live session scheduled"
    live = body["live_session"]
    assert live["course_id"] == klass.course_id and live["instructor_id"] == klass.owner.id
    assert live["title"] == "Office hours" and live["status"] == "scheduled"
    assert live["platform"] == "zoom" and live["duration_minutes"] == 90
    assert live["meeting_url"] == "https://zoom.us/j/123456789"
    assert live["meeting_id"] == "123 456 789" and live["meeting_password"] == "s3cret-pw"
    assert live["start_time"] == iso(start) and live["start_time"].endswith("+00:00")
    assert parse(live["end_time"]) == start + timedelta(minutes=90)
    assert live["cancelled_at"] is None and live["recording_url"] is None

    row = world.row(live["id"])
    assert row.start_time == start and row.end_time == start + timedelta(minutes=90)
    assert row.meeting_password == "s3cret-pw" and row.status == "scheduled"
    # Each enrolled student was told, nobody else.
    for student in klass.students:
        notices = world.notices(student)
        assert [n["title"] for n in notices] == ["New live session: Office hours"]
        assert notices[0]["kind"] == "live_session"
        assert notices[0]["data"]["live_session_id"] == live["id"]
        assert notices[0]["link"] == f"/live-sessions/{live['id']}"
    assert world.notices(klass.outsider) == [] and world.notices(klass.owner) == []


def test_another_instructor_cannot_schedule_for_the_course(world, klass):
    other = world.user("instructor")
    error(world.client.post(LS, json=session_body(klass.course_id), headers=other.headers),
          403, "not_course_owner")
    assert world.count(LiveSession) == 0
    assert world.count(Notification) == 0


def test_a_student_cannot_schedule(world, klass):
    error(world.client.post(LS, json=session_body(klass.course_id),
                            headers=klass.students[0].headers), 403, "role_required")
    assert world.count(LiveSession) == 0


def test_no_token_is_401(world, klass):
    error(world.client.post(LS, json=session_body(klass.course_id)), 401)
    error(world.client.get(LS), 401)
    assert world.count(LiveSession) == 0


def test_an_admin_schedules_for_the_course_instructor(world, klass):
    admin = world.user("admin")
    live = world.create(admin, klass.course_id)
    assert live["instructor_id"] == klass.owner.id
    assert world.row(live["id"]).instructor_id == klass.owner.id
    # The instructor hosts it: sees it with the meeting details.
    mine = ok(world.client.get(f"{LS}/{live['id']}", headers=klass.owner.headers))["live_session"]
    assert mine["meeting_url"] == "https://zoom.us/j/123456789"


@pytest.mark.parametrize("change, field", [
    ({"start_time": "2031-05-01T10:00:00"}, "start_time"),          # naive: whose 10 o'clock?
    ({"start_time": "tomorrow"}, "start_time"),
    ({"duration_minutes": 0}, "duration_minutes"),
    ({"duration_minutes": 1441}, "duration_minutes"),
    ({"duration_minutes": -30}, "duration_minutes"),
    ({"platform": "teams"}, "platform"),
    ({"meeting_url": "javascript:x"}, "meeting_url"),
    ({"meeting_url": "ftp://example.com/x"}, "meeting_url"),
    ({"title": ""}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"meeting_password": "p" * 101}, "meeting_password"),
])
def test_invalid_sessions_are_422(world, klass, change, field):
    body = error(world.client.post(LS, json=session_body(klass.course_id, **change),
                                   headers=klass.owner.headers), 422, "validation_error")
    assert field in body["details"], body
    assert world.count(LiveSession) == 0
    assert world.count(Notification) == 0


@pytest.mark.parametrize("missing", ["course_id", "title", "start_time", "duration_minutes"])
def test_missing_required_fields_are_422(world, klass, missing):
    body = session_body(klass.course_id)
    del body[missing]
    answer = error(world.client.post(LS, json=body, headers=klass.owner.headers), 422)
    assert missing in answer["details"]
    assert world.count(LiveSession) == 0


def test_limits_are_inclusive(world, klass):
    one = world.create(klass.owner, klass.course_id, duration_minutes=1)
    day = world.create(klass.owner, klass.course_id, duration_minutes=1440, platform="other")
    assert parse(one["end_time"]) - parse(one["start_time"]) == timedelta(minutes=1)
    assert parse(day["end_time"]) - parse(day["start_time"]) == timedelta(days=1)
    assert world.count(LiveSession) == 2


def test_unknown_course_is_404(world):
    owner = world.user("instructor")
    error(world.client.post(LS, json=session_body(999_999), headers=owner.headers), 404)
    assert world.count(LiveSession) == 0


# --- lists, upcoming and detail -----------------------------------------------------------------

@dataclass
class Timetable:
    klass: Class
    other_owner: Actor
    admin: Actor
    far: int
    soon: int
    running: int
    ended: int
    cancelled: int
    elsewhere: int


@pytest.fixture
def timetable(world, klass) -> Timetable:
    other_owner = world.user("instructor")
    other_course = world.course(other_owner, "Rust")
    t = now()
    owner, course = klass.owner, klass.course_id
    ids = {
        "far": world.create(owner, course, start=t + timedelta(days=3), title="Far")["id"],
        "soon": world.create(owner, course, start=t + timedelta(hours=1), title="Soon")["id"],
        "running": world.create(owner, course, start=t - timedelta(minutes=10),
                                title="Running")["id"],
        "ended": world.create(owner, course, start=t - timedelta(hours=2), title="Ended")["id"],
        "cancelled": world.create(owner, course, start=t + timedelta(hours=2),
                                  title="Cancelled")["id"],
        "elsewhere": world.create(other_owner, other_course, start=t + timedelta(hours=3),
                                  title="Elsewhere")["id"],
    }
    ok(world.client.delete(f"{LS}/{ids['cancelled']}", headers=owner.headers))
    return Timetable(klass, other_owner, world.user("admin"), **ids)


def listed(world, who: Actor, path: str, **query) -> list[dict]:
    body = ok(world.client.get(path, headers=who.headers, query_string=query))
    assert set(body["pagination"]) >= {"page", "per_page", "total", "pages", "has_next",
                                       "has_prev"}
    if "per_page" not in query:
        assert body["pagination"]["total"] == len(body["live_sessions"])
    return body["live_sessions"]


@pytest.mark.parametrize("path", [LS, f"{LS}/get-live-sessions"])
def test_a_student_lists_the_sessions_of_their_courses_without_meeting_details(
        world, timetable, path):
    tt = timetable
    sessions = listed(world, tt.klass.students[0], path)
    assert {s["id"] for s in sessions} == {tt.far, tt.soon, tt.running, tt.ended, tt.cancelled}
    for item in sessions:
        assert not MEETING_KEYS & set(item), item
        assert item["course_id"] == tt.klass.course_id
    # Without cancelled ones on request.
    active = listed(world, tt.klass.students[0], path, include_cancelled="false")
    assert {s["id"] for s in active} == {tt.far, tt.soon, tt.running, tt.ended}
    # Someone enrolled nowhere sees nothing.
    assert listed(world, tt.klass.outsider, path) == []


def test_instructors_list_their_own_and_admins_everything(world, timetable):
    tt = timetable
    own = listed(world, tt.klass.owner, LS)
    assert {s["id"] for s in own} == {tt.far, tt.soon, tt.running, tt.ended, tt.cancelled}
    assert all(s["meeting_url"] == "https://zoom.us/j/123456789" for s in own)
    other = listed(world, tt.other_owner, f"{LS}/get-live-sessions")
    assert [s["id"] for s in other] == [tt.elsewhere]
    everything = listed(world, tt.admin, LS)
    assert {s["id"] for s in everything} == {tt.far, tt.soon, tt.running, tt.ended,
                                             tt.cancelled, tt.elsewhere}
    assert all(MEETING_KEYS <= set(s) for s in everything)
    by_course = listed(world, tt.admin, LS, course_id=tt.klass.course_id)
    assert tt.elsewhere not in {s["id"] for s in by_course} and len(by_course) == 5


def test_list_is_paginated(world, timetable):
    body = ok(world.client.get(LS, headers=timetable.admin.headers,
                               query_string={"per_page": 4, "page": 2}))
    assert len(body["live_sessions"]) == 2
    assert body["pagination"] == {"page": 2, "per_page": 4, "total": 6, "pages": 2,
                                  "has_next": False, "has_prev": True}


@pytest.mark.parametrize("path", [f"{LS}/upcoming", f"{LS}/get-live-courses/upcoming"])
def test_upcoming_is_ordered_and_leaves_out_ended_and_cancelled(world, timetable, path):
    tt = timetable
    student = listed(world, tt.klass.students[0], path)
    assert [s["id"] for s in student] == [tt.running, tt.soon, tt.far]
    assert all(not MEETING_KEYS & set(s) for s in student)
    assert [s["id"] for s in listed(world, tt.klass.owner, path)] == [tt.running, tt.soon, tt.far]
    assert [s["id"] for s in listed(world, tt.admin, path)] == [tt.running, tt.soon, tt.elsewhere,
                                                                 tt.far]
    assert [s["id"] for s in listed(world, tt.other_owner, path)] == [tt.elsewhere]
    assert listed(world, tt.klass.outsider, path) == []


@pytest.mark.parametrize("template", [LS + "/{}", LS + "/get-live-sessions/{}"])
def test_detail_shows_meeting_details_to_hosts_only(world, timetable, template):
    tt = timetable
    url = template.format(tt.soon)
    student = ok(world.client.get(url, headers=tt.klass.students[0].headers))["live_session"]
    assert student["id"] == tt.soon and student["title"] == "Soon"
    assert not MEETING_KEYS & set(student) and "attendance" not in student
    for host in (tt.klass.owner, tt.admin):
        data = ok(world.client.get(url, headers=host.headers))["live_session"]
        assert data["meeting_url"] == "https://zoom.us/j/123456789"
        assert data["meeting_id"] == "123 456 789" and data["meeting_password"] == "s3cret-pw"
        assert data["attendance"] == []
    # Strangers: neither enrolled nor hosting.
    for stranger in (tt.klass.outsider, tt.other_owner):
        error(world.client.get(url, headers=stranger.headers), 404)
    error(world.client.get(template.format(999_999), headers=tt.admin.headers), 404)


# --- joining --------------------------------------------------------------------------------------

def join_url(session_id: int, alias: bool = False) -> str:
    return f"{LS}/join-live-sessions/{session_id}/join" if alias else f"{LS}/{session_id}/join"


def test_more_than_15_minutes_before_the_start_is_not_open(world, klass):
    start = now() + EARLY + timedelta(seconds=5)
    live = world.create(klass.owner, klass.course_id, start=start)
    body = error(world.client.get(join_url(live["id"]), headers=klass.students[0].headers),
                 403, "session_not_open")
    assert parse(body["details"]["opens_at"]) == start - EARLY
    assert parse(body["details"]["opens_at"]) > datetime.now(timezone.utc)
    assert "meeting_url" not in body and "meeting_url" not in body["details"]
    assert world.count(LiveSessionAttendance) == 0


@pytest.mark.parametrize("alias", [False, True])
def test_within_15_minutes_of_the_start_students_join(world, klass, alias):
    live = world.create(klass.owner, klass.course_id, start=now() + timedelta(minutes=14))
    student = klass.students[0]
    body = ok(world.client.get(join_url(live["id"], alias), headers=student.headers))
    data = body["live_session"]
    assert data["id"] == live["id"]
    assert data["meeting_url"] == "https://zoom.us/j/123456789"
    assert data["meeting_password"] == "s3cret-pw" and data["meeting_id"] == "123 456 789"
    with world.app.app_context():
        rows = db.session.scalars(select(LiveSessionAttendance)).all()
        assert [(r.live_session_id, r.user_id, r.join_count) for r in rows] == [
            (live["id"], student.id, 1)]


def test_during_the_session_students_join(world, klass):
    live = world.create(klass.owner, klass.course_id, start=now() - timedelta(minutes=29),
                        duration_minutes=30)
    data = ok(world.client.get(join_url(live["id"]),
                               headers=klass.students[1].headers))["live_session"]
    assert data["meeting_url"] == "https://zoom.us/j/123456789"


def test_after_the_end_the_session_is_closed(world, klass):
    start = now() - timedelta(minutes=61)
    live = world.create(klass.owner, klass.course_id, start=start, duration_minutes=60)
    body = error(world.client.get(join_url(live["id"]), headers=klass.students[0].headers),
                 403, "session_ended")
    assert parse(body["details"]["ended_at"]) == start + timedelta(minutes=60)
    assert "meeting_url" not in body["details"]
    assert world.count(LiveSessionAttendance) == 0


# The exact edges, on a clock held still: the window is [start - 15 min, end).

@pytest.fixture
def held_clock(monkeypatch):
    """held_clock(t): live-session code sees `t` as now."""
    def hold(moment: datetime) -> None:
        monkeypatch.setattr(live_session_service, "utcnow", lambda: moment)
    return hold


@pytest.fixture
def pinned(world, klass):
    start = now() + timedelta(days=2)
    live = world.create(klass.owner, klass.course_id, start=start, duration_minutes=45)
    return live["id"], start, start + timedelta(minutes=45)


def test_edge_a_microsecond_before_the_window_opens(world, klass, pinned, held_clock):
    session_id, start, _ = pinned
    held_clock(start - EARLY - timedelta(microseconds=1))
    body = error(world.client.get(join_url(session_id), headers=klass.students[0].headers),
                 403, "session_not_open")
    assert parse(body["details"]["opens_at"]) == start - EARLY


def test_edge_exactly_15_minutes_before_the_start_is_open(world, klass, pinned, held_clock):
    session_id, start, _ = pinned
    held_clock(start - EARLY)
    data = ok(world.client.get(join_url(session_id),
                               headers=klass.students[0].headers))["live_session"]
    assert data["meeting_url"] == "https://zoom.us/j/123456789"


def test_edge_a_microsecond_before_the_end_is_open(world, klass, pinned, held_clock):
    session_id, _, end = pinned
    held_clock(end - timedelta(microseconds=1))
    ok(world.client.get(join_url(session_id), headers=klass.students[0].headers))


def test_edge_exactly_at_the_end_is_closed(world, klass, pinned, held_clock):
    session_id, _, end = pinned
    held_clock(end)
    body = error(world.client.get(join_url(session_id), headers=klass.students[0].headers),
                 403, "session_ended")
    assert parse(body["details"]["ended_at"]) == end
    assert world.count(LiveSessionAttendance) == 0


def test_a_cancelled_session_cannot_be_joined(world, klass):
    live = world.create(klass.owner, klass.course_id, start=now() + timedelta(minutes=5))
    ok(world.client.delete(f"{LS}/{live['id']}", headers=klass.owner.headers))
    for who in (klass.students[0], klass.owner):
        body = error(world.client.get(join_url(live["id"]), headers=who.headers), 410)
        assert "meeting_url" not in body
    assert world.count(LiveSessionAttendance) == 0


def test_not_enrolled_users_cannot_join(world, klass):
    live = world.create(klass.owner, klass.course_id, start=now() + timedelta(minutes=5))
    other_instructor = world.user("instructor")
    for who in (klass.outsider, other_instructor):
        body = error(world.client.get(join_url(live["id"]), headers=who.headers), 404)
        assert "meeting_url" not in body
    error(world.client.get(join_url(999_999), headers=klass.students[0].headers), 404)
    assert world.count(LiveSessionAttendance) == 0


def test_the_instructor_and_admins_join(world, klass):
    live = world.create(klass.owner, klass.course_id, start=now() + timedelta(minutes=5))
    admin = world.user("admin")
    for who in (klass.owner, admin):
        data = ok(world.client.get(join_url(live["id"], alias=True),
                                   headers=who.headers))["live_session"]
        assert data["meeting_password"] == "s3cret-pw"
    with world.app.app_context():
        joined = set(db.session.scalars(select(LiveSessionAttendance.user_id)))
    assert joined == {klass.owner.id, admin.id}


def test_a_cancelled_enrollment_loses_access(world, klass):
    live = world.create(klass.owner, klass.course_id, start=now() + timedelta(minutes=5))
    leaver = world.user("student")
    enrollment_id = world.enroll(leaver, klass.course_id)
    ok(world.client.get(join_url(live["id"]), headers=leaver.headers))  # while enrolled
    ok(world.client.delete(f"{API}/enrollments/{enrollment_id}", headers=leaver.headers))
    with world.app.app_context():
        assert db.session.get(Enrollment, enrollment_id).status == "cancelled"

    error(world.client.get(join_url(live["id"]), headers=leaver.headers), 404)
    error(world.client.get(f"{LS}/{live['id']}", headers=leaver.headers), 404)
    assert listed(world, leaver, LS) == []
    assert listed(world, leaver, f"{LS}/upcoming") == []


def test_joining_twice_is_one_attendance_row_seen_by_the_host(world, klass):
    live = world.create(klass.owner, klass.course_id, start=now() + timedelta(minutes=5))
    student = klass.students[0]
    ok(world.client.get(join_url(live["id"]), headers=student.headers))
    ok(world.client.get(join_url(live["id"], alias=True), headers=student.headers))

    with world.app.app_context():
        rows = db.session.scalars(select(LiveSessionAttendance)).all()
        assert len(rows) == 1
        row = rows[0]
        assert (row.live_session_id, row.user_id, row.join_count) == (live["id"], student.id, 2)
        assert row.first_joined_at <= row.last_joined_at
        first, last = iso(row.first_joined_at), iso(row.last_joined_at)

    host_view = ok(world.client.get(f"{LS}/{live['id']}",
                                    headers=klass.owner.headers))["live_session"]
    assert host_view["attendance"] == [{
        "user_id": student.id, "name": "Student Tester", "first_joined_at": first,
        "last_joined_at": last, "join_count": 2}]
    student_view = ok(world.client.get(f"{LS}/{live['id']}",
                                       headers=student.headers))["live_session"]
    assert "attendance" not in student_view


# --- update -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("template", [LS + "/{}", LS + "/update-live-sessions/{}"])
def test_renaming_does_not_notify(world, klass, template):
    live = world.create(klass.owner, klass.course_id)
    before = world.count(Notification)
    body = ok(world.client.put(template.format(live["id"]),
                               json={"title": "Office hours (Q&A)", "meeting_password": "n3w"},
                               headers=klass.owner.headers))
    assert body["live_session"]["title"] == "Office hours (Q&A)"
    assert body["live_session"]["start_time"] == live["start_time"]
    row = world.row(live["id"])
    assert row.title == "Office hours (Q&A)" and row.meeting_password == "n3w"
    assert world.count(Notification) == before


def test_the_same_start_in_another_zone_is_not_a_move(world, klass):
    start = now() + timedelta(days=1)
    live = world.create(klass.owner, klass.course_id, start=start)
    before = world.count(Notification)
    same = start.astimezone(timezone(timedelta(hours=-7))).isoformat()
    ok(world.client.put(f"{LS}/{live['id']}", json={"start_time": same},
                        headers=klass.owner.headers))
    assert world.count(Notification) == before


def test_moving_notifies_enrolled_students(world, klass):
    live = world.create(klass.owner, klass.course_id)
    new_start = now() + timedelta(days=5, hours=3)
    body = ok(world.client.put(f"{LS}/{live['id']}", json={"start_time": new_start.isoformat()},
                               headers=klass.owner.headers))
    assert parse(body["live_session"]["start_time"]) == new_start
    assert parse(body["live_session"]["end_time"]) == new_start + timedelta(minutes=60)
    row = world.row(live["id"])
    assert row.start_time == new_start and row.end_time == new_start + timedelta(minutes=60)
    for student in klass.students:
        titles = [n["title"] for n in world.notices(student)]
        assert titles == ["New live session: Office hours", "Live session moved: Office hours"]
        assert world.notices(student)[1]["data"]["change"] == "moved"
    assert world.notices(klass.outsider) == []
    # A longer session is a move too: the end changes.
    ok(world.client.put(f"{LS}/{live['id']}", json={"duration_minutes": 120},
                        headers=klass.owner.headers))
    assert world.row(live["id"]).end_time == new_start + timedelta(minutes=120)
    assert len(world.notices(klass.students[0])) == 3


def test_others_cannot_update(world, klass):
    live = world.create(klass.owner, klass.course_id)
    other = world.user("instructor")
    error(world.client.put(f"{LS}/{live['id']}", json={"title": "Hijacked"},
                           headers=other.headers), 403, "not_session_host")
    error(world.client.put(f"{LS}/{live['id']}", json={"title": "Hijacked"},
                           headers=klass.students[0].headers), 403)
    error(world.client.put(f"{LS}/999999", json={"title": "x"}, headers=klass.owner.headers),
          404)
    assert world.row(live["id"]).title == "Office hours"
    # Admins may.
    admin = world.user("admin")
    ok(world.client.put(f"{LS}/{live['id']}", json={"title": "By admin"}, headers=admin.headers))
    assert world.row(live["id"]).title == "By admin"


def test_update_validates(world, klass):
    live = world.create(klass.owner, klass.course_id)
    for change, field in (({"start_time": "2031-01-01T09:00:00"}, "start_time"),
                          ({"duration_minutes": 0}, "duration_minutes"),
                          ({"meeting_url": "javascript:alert(1)"}, "meeting_url")):
        body = error(world.client.put(f"{LS}/{live['id']}", json=change,
                                      headers=klass.owner.headers), 422)
        assert field in body["details"]
    row = world.row(live["id"])
    assert row.duration_minutes == 60 and row.meeting_url == "https://zoom.us/j/123456789"


def test_a_cancelled_session_cannot_be_updated(world, klass):
    live = world.create(klass.owner, klass.course_id)
    ok(world.client.delete(f"{LS}/{live['id']}", headers=klass.owner.headers))
    before = world.count(Notification)
    error(world.client.put(f"{LS}/{live['id']}",
                           json={"start_time": (now() + timedelta(days=9)).isoformat()},
                           headers=klass.owner.headers), 410)
    row = world.row(live["id"])
    assert row.status == "cancelled" and row.start_time == parse(live["start_time"])
    assert world.count(Notification) == before


# --- cancel -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template", [LS + "/{}", LS + "/delete-live-sessions/{}"])
def test_cancelling_keeps_the_row_and_notifies(world, klass, template):
    live = world.create(klass.owner, klass.course_id)
    body = ok(world.client.delete(template.format(live["id"]), headers=klass.owner.headers))
    assert body["message"] == "Live session cancelled"
    assert body["live_session"]["status"] == "cancelled"
    assert body["live_session"]["cancelled_at"] is not None
    row = world.row(live["id"])
    assert row is not None and row.status == "cancelled" and row.cancelled_at is not None
    for student in klass.students:
        notices = world.notices(student)
        assert [n["title"] for n in notices][-1] == "Live session cancelled: Office hours"
        assert notices[-1]["data"]["change"] == "cancelled"
    assert world.notices(klass.outsider) == []
    # Students still see it, as cancelled.
    seen = ok(world.client.get(f"{LS}/{live['id']}",
                               headers=klass.students[0].headers))["live_session"]
    assert seen["status"] == "cancelled"

    before = world.count(Notification)
    error(world.client.delete(template.format(live["id"]), headers=klass.owner.headers), 410)
    assert world.count(Notification) == before
    assert world.row(live["id"]).cancelled_at == row.cancelled_at


def test_others_cannot_cancel(world, klass):
    live = world.create(klass.owner, klass.course_id)
    error(world.client.delete(f"{LS}/{live['id']}", headers=world.user("instructor").headers),
          403, "not_session_host")
    error(world.client.delete(f"{LS}/{live['id']}", headers=klass.students[0].headers), 403)
    assert world.row(live["id"]).status == "scheduled"


# --- recordings -------------------------------------------------------------------------------------

def test_the_host_adds_a_recording_enrolled_students_see_it(world, klass):
    live = world.create(klass.owner, klass.course_id, start=now() - timedelta(hours=2))
    url = f"{LS}/{live['id']}/recording"
    recording = "https://videos.example.com/rec/42"
    student = klass.students[0]

    error(world.client.post(url, json={"recording_url": recording}, headers=student.headers),
          403)
    error(world.client.post(url, json={"recording_url": recording},
                            headers=world.user("instructor").headers), 403, "not_session_host")
    error(world.client.post(url, json={"recording_url": "javascript:x"},
                            headers=klass.owner.headers), 422)
    assert world.row(live["id"]).recording_url is None

    body = ok(world.client.post(url, json={"recording_url": recording},
                                headers=klass.owner.headers))
    assert body["live_session"]["recording_url"] == recording
    assert world.row(live["id"]).recording_url == recording

    seen = ok(world.client.get(f"{LS}/{live['id']}", headers=student.headers))["live_session"]
    assert seen["recording_url"] == recording and not MEETING_KEYS & set(seen)
    listed_item = [s for s in listed(world, student, LS) if s["id"] == live["id"]][0]
    assert listed_item["recording_url"] == recording
    ended = error(world.client.get(join_url(live["id"]), headers=student.headers), 403,
                  "session_ended")
    assert ended["details"].get("recording_url") in (recording, None)
    for each in klass.students:
        assert world.notices(each)[-1]["title"] == "Recording available: Office hours"
    assert world.notices(klass.outsider) == []


# --- e-mail, with a local SMTP server ------------------------------------------------------------

def _memory_sqlite(uri: str) -> bool:
    return uri in ("sqlite://", "sqlite:///:memory:") or ":memory:" in uri


@pytest.fixture
def mail_world(app):
    """mail_world(port) -> a World on an app that sends by SMTP to 127.0.0.1:port."""
    built = []

    def _build(port: int) -> World:
        uri = app.config["SQLALCHEMY_DATABASE_URI"]
        mail_app = create_app("testing", overrides={
            "MAIL_BACKEND": "smtp", "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": port,
            "MAIL_USE_TLS": False, "MAIL_USE_SSL": False, "MAIL_SUPPRESS_SEND": False,
            "SQLALCHEMY_DATABASE_URI": uri, "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"]})
        separate = _memory_sqlite(uri)
        if separate:
            with mail_app.app_context():
                db.create_all()
        built.append((mail_app, separate))
        return World(mail_app)

    yield _build
    for mail_app, separate in built:
        with mail_app.app_context():
            db.session.remove()
            if separate:
                db.drop_all()
            db.engine.dispose()


@pytest.fixture
def sink():
    server = smtp_server()
    yield server
    server.stop()


def calendar_of(mail) -> tuple[str, bytes]:
    """(content type header, raw bytes) of the message's one text/calendar attachment."""
    parts = [p for p in mail.message.walk() if p.get_content_type() == "text/calendar"]
    assert len(parts) == 1, [p.get_content_type() for p in mail.message.walk()]
    return parts[0]["Content-Type"], parts[0].get_payload(decode=True)


def unfolded(raw: bytes) -> list[str]:
    return raw.decode().replace("\r\n ", "").split("\r\n")


def html_of(mail) -> str:
    return mail.message.get_body(preferencelist=("html",)).get_content()


def text_of(mail) -> str:
    return mail.message.get_body(preferencelist=("plain",)).get_content()


def test_creating_sends_invitations_to_enrolled_students_as_they_wish(mail_world, sink):
    w = mail_world(sink.port)
    owner = w.user("instructor")
    course_id = w.course(owner, "Data, science; and more")
    wants = w.user("student", first_name="Ada")
    opted_out = w.user("student")
    leaver = w.user("student")
    dormant = w.user("student")
    outsider = w.user("student")
    enrollments = {s.id: w.enroll(s, course_id) for s in (wants, opted_out, leaver, dormant)}
    ok(w.client.delete(f"{API}/enrollments/{enrollments[leaver.id]}", headers=leaver.headers))
    w.deactivate(dormant)
    prefs = ok(w.client.put(f"{API}/notifications/preferences",
                            json={"email_live_sessions": False}, headers=opted_out.headers))
    assert prefs["preferences"]["email_live_sessions"] is False
    with w.app.app_context():
        assert db.session.get(NotificationPreference, opted_out.id).email_live_sessions is False
    sink.messages.clear()  # nothing else should have been mailed, but start from zero

    title = "Q&A, part 1; bring questions"
    description = "Long notes: " + "déjà vu, " * 30
    start = (now() + timedelta(days=3)).astimezone(timezone(timedelta(hours=-4)))
    live = w.create(owner, course_id, start=start, title=title, description=description)

    mails = list(sink.messages)
    assert [m.rcpt_tos for m in mails] == [[wants.email]]
    mail = mails[0]
    assert mail.message["To"] == wants.email
    assert mail.message["Subject"].startswith(f"New live session: {title}")
    content_type, raw = calendar_of(mail)
    assert "method=REQUEST" in content_type.replace('"', "")
    assert all(len(line) <= 75 for line in raw.split(b"\r\n")), raw
    assert max(len(line) for line in raw.split(b"\r\n")) > 60  # the description was folded
    lines = unfolded(raw)
    assert lines[0] == "BEGIN:VCALENDAR" and "END:VCALENDAR" in lines
    assert "METHOD:REQUEST" in lines and "STATUS:CONFIRMED" in lines
    assert f"DTSTART:{start.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}" in lines
    end = start + timedelta(minutes=60)
    assert f"DTEND:{end.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}" in lines
    assert "SUMMARY:Q&A\\, part 1\\; bring questions" in lines
    assert f"UID:live-session-{live['id']}@" in "\n".join(lines)
    assert any(line.startswith("DESCRIPTION:Data\\, science\\; and more. Long notes: déjà vu\\,")
               for line in lines)
    html = html_of(mail)
    assert "Hello Ada," in html and "Q&amp;A, part 1; bring questions" in html

    # In-app: every enrolled, active student, whatever their e-mail preference.
    for student in (wants, opted_out):
        assert [n["title"] for n in w.notices(student)] == [f"New live session: {title}"]
    for student in (leaver, dormant, outsider):
        assert w.notices(student) == []


def test_the_text_body_is_not_html_escaped(mail_world, sink):
    w = mail_world(sink.port)
    owner = w.user("instructor")
    course_id = w.course(owner)
    student = w.user("student")
    w.enroll(student, course_id)
    w.create(owner, course_id, title="Q&A <live>")
    assert len(sink.messages) == 1
    text = text_of(sink.messages[0])
    assert "Q&A <live>" in text and "&amp;" not in text


def test_a_hostile_title_is_escaped_in_the_html(mail_world, sink):
    w = mail_world(sink.port)
    owner = w.user("instructor")
    course_id = w.course(owner)
    student = w.user("student")
    w.enroll(student, course_id)
    hostile = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"
    live = w.create(owner, course_id, title=hostile)
    assert live["title"] == hostile  # stored as given; escaping is the renderer's job

    assert len(sink.messages) == 1
    html = html_of(sink.messages[0])
    assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "&lt;script&gt;" in html
    _, raw = calendar_of(sink.messages[0])
    assert "SUMMARY:<script>alert('x')</script> & <img src=x onerror=alert(1)>" in unfolded(raw)


def test_moving_and_cancelling_send_new_invitations(mail_world, sink):
    w = mail_world(sink.port)
    owner = w.user("instructor")
    course_id = w.course(owner)
    student = w.user("student")
    w.enroll(student, course_id)
    live = w.create(owner, course_id)
    assert len(sink.messages) == 1

    new_start = now() + timedelta(days=4, minutes=30)
    ok(w.client.put(f"{LS}/{live['id']}", json={"start_time": new_start.isoformat()},
                    headers=owner.headers))
    assert len(sink.messages) == 2
    moved = sink.messages[1]
    assert moved.message["Subject"].startswith("Live session moved: Office hours")
    lines = unfolded(calendar_of(moved)[1])
    assert "METHOD:REQUEST" in lines
    assert f"DTSTART:{new_start.strftime('%Y%m%dT%H%M%SZ')}" in lines
    # A rename sends nothing.
    ok(w.client.put(f"{LS}/{live['id']}", json={"title": "Office hours"}, headers=owner.headers))
    assert len(sink.messages) == 2

    ok(w.client.delete(f"{LS}/{live['id']}", headers=owner.headers))
    assert len(sink.messages) == 3
    cancelled = sink.messages[2]
    assert cancelled.rcpt_tos == [student.email]
    assert cancelled.message["Subject"].startswith("Live session cancelled: Office hours")
    content_type, raw = calendar_of(cancelled)
    assert "method=CANCEL" in content_type.replace('"', "")
    lines = unfolded(raw)
    assert "METHOD:CANCEL" in lines and "STATUS:CANCELLED" in lines
    assert f"UID:live-session-{live['id']}@" in "\n".join(lines)
    assert all(len(line) <= 75 for line in raw.split(b"\r\n"))


def test_a_mail_server_that_is_down_does_not_fail_the_request(mail_world):
    w = mail_world(free_port())  # nobody listens: connection refused
    owner = w.user("instructor")
    course_id = w.course(owner)
    student = w.user("student")
    w.enroll(student, course_id)

    live = w.create(owner, course_id)  # 201 asserted inside

    assert w.row(live["id"]).status == "scheduled"
    assert [n["title"] for n in w.notices(student)] == ["New live session: Office hours"]
    body = ok(w.client.delete(f"{LS}/{live['id']}", headers=owner.headers))
    assert body["live_session"]["status"] == "cancelled"
    assert w.row(live["id"]).status == "cancelled"
    assert [n["title"] for n in w.notices(student)][-1] == "Live session cancelled: Office hours"


# --- a course given to another instructor -------------------------------------------------------

def test_the_former_instructor_loses_the_sessions_of_a_course_an_admin_moved(world, klass):
    """Hosting is the course's current instructor's (and admins'), not whoever scheduled the
    session: once an admin gives the course to someone else, the former instructor can no
    longer read the meeting password, change the meeting or join."""
    live = world.create(klass.owner, klass.course_id, start=now() + timedelta(minutes=5))
    admin, successor = world.user("admin"), world.user("instructor")
    moved = ok(world.client.put(f"{API}/courses/{klass.course_id}",
                                json={"instructor_id": successor.id}, headers=admin.headers))
    assert moved["course"]["instructor_id"] == successor.id
    assert world.row(live["id"]).instructor_id == successor.id  # the session went with it

    former = klass.owner.headers
    error(world.client.get(f"{LS}/{live['id']}", headers=former), 404)
    error(world.client.get(join_url(live["id"]), headers=former), 404)
    error(world.client.put(f"{LS}/{live['id']}", headers=former,
                           json={"meeting_url": "https://evil.example/j/1"}), 403,
          "not_session_host")
    error(world.client.delete(f"{LS}/{live['id']}", headers=former), 403, "not_session_host")
    assert listed(world, klass.owner, LS) == []
    row = world.row(live["id"])
    assert (row.meeting_url, row.status) == ("https://zoom.us/j/123456789", "scheduled")
    assert world.count(LiveSessionAttendance) == 0

    # The new instructor hosts it.
    data = ok(world.client.get(join_url(live["id"]), headers=successor.headers))["live_session"]
    assert data["meeting_password"] == "s3cret-pw"
    assert [s["id"] for s in listed(world, successor, LS)] == [live["id"]]


def test_a_session_an_admin_schedules_belongs_to_the_course_instructor(world, klass):
    admin = world.user("admin")
    live = world.create(admin, klass.course_id)
    assert world.row(live["id"]).instructor_id == klass.owner.id
