"""Notifications through the HTTP API: a user's own list (unread filter, pagination, unread
count), marking read, deleting, isolation between users; the admin's send (to user ids or a
role) and broadcast (every active user once), optionally by e-mail after the commit;
preferences; and a fan-out whose statement count does not grow with the number of users.

Every test checks the status code, the body and what the database holds afterwards. E-mail is
captured by a local SMTP server (tests/support/standins.py).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import func, insert, select

from app import create_app
from models import AuditLog, Notification, NotificationPreference, SecurityEvent, User, db
from services import notification_service
from tests.support.assertions import error, ok
from tests.support.queries import recorded_statements
from tests.support.standins import smtp_server

API = "/api/v1"
N = f"{API}/notifications"


# --- helpers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Actor:
    id: int
    headers: dict
    email: str


class World:
    def __init__(self, app) -> None:
        self.app = app
        self.client = app.test_client()

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

    def notify(self, who: Actor, count: int = 1, *, title: str = "Notice",
               start: datetime | None = None) -> list[int]:
        """`count` notifications for `who`, one second apart (the last is the newest)."""
        start = start or datetime.now(timezone.utc) - timedelta(hours=1)
        with self.app.app_context():
            rows = [Notification(user_id=who.id, kind="system", title=f"{title} {i + 1}",
                                 message=f"Message {i + 1}", is_read=False,
                                 created_at=start + timedelta(seconds=i)) for i in range(count)]
            db.session.add_all(rows)
            db.session.commit()
            return [row.id for row in rows]

    def rows(self, *where) -> list[dict]:
        with self.app.app_context():
            return [{"id": n.id, "user_id": n.user_id, "title": n.title, "kind": n.kind,
                     "message": n.message, "is_read": n.is_read, "read_at": n.read_at}
                    for n in db.session.scalars(select(Notification).where(*where)
                                                .order_by(Notification.id))]

    def count(self, model, *where) -> int:
        with self.app.app_context():
            return db.session.scalar(select(func.count()).select_from(model).where(*where))

    def recipients(self) -> dict[int, int]:
        """user id -> how many notifications they hold."""
        with self.app.app_context():
            return dict(db.session.execute(
                select(Notification.user_id, func.count()).group_by(Notification.user_id)).all())


@pytest.fixture
def world(app) -> World:
    return World(app)


# --- the user's own notifications -------------------------------------------------------------

@pytest.mark.parametrize("path", [N, f"{N}/get-notifications"])
def test_a_user_lists_their_own_newest_first(world, path):
    me, other = world.user(), world.user()
    mine = world.notify(me, 3)
    world.notify(other, 2, title="Theirs")

    body = ok(world.client.get(path, headers=me.headers))

    assert [n["id"] for n in body["notifications"]] == list(reversed(mine))
    assert [n["title"] for n in body["notifications"]] == ["Notice 3", "Notice 2", "Notice 1"]
    assert body["unread_count"] == 3
    assert body["pagination"] == {"page": 1, "per_page": 20, "total": 3, "pages": 1,
                                  "has_next": False, "has_prev": False}
    first = body["notifications"][0]
    assert set(first) >= {"id", "kind", "title", "message", "link", "data", "is_read",
                          "read_at", "created_at"}
    assert "user_id" not in first or first["user_id"] == me.id
    assert first["is_read"] is False and first["read_at"] is None


def test_unread_filter_and_counts(world):
    me, other = world.user(), world.user()
    ids = world.notify(me, 4)
    world.notify(other, 5)
    ok(world.client.put(f"{N}/{ids[0]}/read", headers=me.headers))
    ok(world.client.put(f"{N}/{ids[2]}/read", headers=me.headers))

    unread = ok(world.client.get(N, headers=me.headers, query_string={"unread": "true"}))
    assert [n["id"] for n in unread["notifications"]] == [ids[3], ids[1]]
    assert all(n["is_read"] is False for n in unread["notifications"])
    assert unread["unread_count"] == 2 and unread["pagination"]["total"] == 2
    everything = ok(world.client.get(N, headers=me.headers, query_string={"unread": "false"}))
    assert everything["pagination"]["total"] == 4 and everything["unread_count"] == 2

    assert ok(world.client.get(f"{N}/unread-count", headers=me.headers)) == {"unread_count": 2}
    assert ok(world.client.get(f"{N}/unread-count", headers=other.headers)) == {"unread_count": 5}
    assert ok(world.client.get(f"{N}/unread-count",
                               headers=world.user().headers)) == {"unread_count": 0}


def test_pagination(world):
    me = world.user()
    ids = world.notify(me, 25)
    newest_first = list(reversed(ids))

    page1 = ok(world.client.get(N, headers=me.headers, query_string={"per_page": 10}))
    page3 = ok(world.client.get(N, headers=me.headers,
                                query_string={"per_page": 10, "page": 3}))
    beyond = ok(world.client.get(N, headers=me.headers, query_string={"per_page": 10,
                                                                      "page": 4}))

    assert [n["id"] for n in page1["notifications"]] == newest_first[:10]
    assert page1["pagination"] == {"page": 1, "per_page": 10, "total": 25, "pages": 3,
                                   "has_next": True, "has_prev": False}
    assert [n["id"] for n in page3["notifications"]] == newest_first[20:]
    assert page3["pagination"]["has_next"] is False and page3["pagination"]["has_prev"] is True
    assert beyond["notifications"] == [] and beyond["unread_count"] == 25
    capped = ok(world.client.get(N, headers=me.headers, query_string={"per_page": 500}))
    assert capped["pagination"]["per_page"] == 100 and len(capped["notifications"]) == 25
    error(world.client.get(N, headers=me.headers, query_string={"page": 0}), 422)


def test_marking_one_read(world):
    me = world.user()
    first, second = world.notify(me, 2)

    body = ok(world.client.put(f"{N}/{first}/read", headers=me.headers))

    assert body["notification"]["id"] == first and body["notification"]["is_read"] is True
    assert body["notification"]["read_at"] is not None
    rows = {r["id"]: r for r in world.rows(Notification.user_id == me.id)}
    assert rows[first]["is_read"] is True and rows[first]["read_at"] is not None
    assert rows[second]["is_read"] is False and rows[second]["read_at"] is None
    # Again: still read, the first read time kept.
    again = ok(world.client.put(f"{N}/{first}/read", headers=me.headers))
    assert again["notification"]["read_at"] == body["notification"]["read_at"]
    assert world.rows(Notification.id == first)[0]["read_at"] == rows[first]["read_at"]


def test_nobody_reads_or_deletes_another_users_notification(world):
    me, other = world.user(), world.user()
    admin = world.user("admin")
    (theirs,) = world.notify(other, 1)
    before = world.rows(Notification.id == theirs)

    for who in (me, admin):  # not even an admin, through these routes
        error(world.client.put(f"{N}/{theirs}/read", headers=who.headers), 404)
        error(world.client.delete(f"{N}/{theirs}", headers=who.headers), 404)
    error(world.client.put(f"{N}/999999/read", headers=me.headers), 404)
    error(world.client.delete(f"{N}/999999", headers=me.headers), 404)

    assert world.rows(Notification.id == theirs) == before
    assert before[0]["is_read"] is False
    assert ok(world.client.get(N, headers=me.headers))["notifications"] == []


@pytest.mark.parametrize("path", [f"{N}/read-all", f"{N}/mark-all-read"])
def test_mark_all_read_touches_only_mine(world, path):
    me, other = world.user(), world.user()
    mine = world.notify(me, 3)
    ok(world.client.put(f"{N}/{mine[0]}/read", headers=me.headers))
    theirs = world.notify(other, 2)

    body = ok(world.client.put(path, headers=me.headers))

    assert body["updated"] == 2
    assert all(r["is_read"] and r["read_at"] is not None
               for r in world.rows(Notification.user_id == me.id))
    assert all(not r["is_read"] and r["read_at"] is None
               for r in world.rows(Notification.id.in_(theirs)))
    assert ok(world.client.get(f"{N}/unread-count", headers=me.headers))["unread_count"] == 0
    assert ok(world.client.get(f"{N}/unread-count", headers=other.headers))["unread_count"] == 2
    assert ok(world.client.put(path, headers=me.headers))["updated"] == 0


def test_deleting_my_notification(world):
    me, other = world.user(), world.user()
    keep, gone = world.notify(me, 2)
    theirs = world.notify(other, 1)

    body = ok(world.client.delete(f"{N}/{gone}", headers=me.headers))

    assert body == {"message": "Notification deleted"}
    assert [r["id"] for r in world.rows(Notification.user_id == me.id)] == [keep]
    assert [r["id"] for r in world.rows(Notification.user_id == other.id)] == theirs
    error(world.client.delete(f"{N}/{gone}", headers=me.headers), 404)


def test_no_token_is_401(world):
    me = world.user()
    (mine,) = world.notify(me, 1)
    for method, path in (("get", N), ("get", f"{N}/get-notifications"),
                         ("get", f"{N}/unread-count"), ("put", f"{N}/{mine}/read"),
                         ("put", f"{N}/read-all"), ("delete", f"{N}/{mine}"),
                         ("get", f"{N}/preferences"), ("put", f"{N}/preferences"),
                         ("post", f"{N}/send"), ("post", f"{N}/broadcast")):
        error(getattr(world.client, method)(path, json={}), 401)
    assert world.rows(Notification.id == mine)[0]["is_read"] is False


# --- admin: send and broadcast -----------------------------------------------------------------

@dataclass
class People:
    admin: Actor
    students: list[Actor]
    instructors: list[Actor]
    inactive_student: Actor
    inactive_instructor: Actor


@pytest.fixture
def people(world) -> People:
    return People(
        admin=world.user("admin"),
        students=[world.user("student"), world.user("student"), world.user("student")],
        instructors=[world.user("instructor"), world.user("instructor")],
        inactive_student=world.user("student", is_active=False),
        inactive_instructor=world.user("instructor", is_active=False),
    )


def send(world, who: Actor, **body):
    payload = {"title": "Maintenance", "message": "Down on Sunday 02:00 UTC", **body}
    return world.client.post(f"{N}/send", json=payload, headers=who.headers)


def test_send_to_user_ids_reaches_only_those_active_users(world, people):
    chosen = [people.students[0].id, people.instructors[1].id, people.inactive_student.id,
              999_999]

    body = ok(send(world, people.admin, user_ids=chosen, link="/status"), 201)

    assert body["recipients"] == 2
    assert world.recipients() == {people.students[0].id: 1, people.instructors[1].id: 1}
    row = world.rows(Notification.user_id == people.students[0].id)[0]
    assert (row["title"], row["message"], row["kind"], row["is_read"]) == (
        "Maintenance", "Down on Sunday 02:00 UTC", "announcement", False)
    listed = ok(world.client.get(N, headers=people.students[0].headers))["notifications"]
    assert [(n["title"], n["link"]) for n in listed] == [("Maintenance", "/status")]

    with world.app.app_context():
        audit = db.session.scalars(select(AuditLog)).all()
        assert [(a.action, a.actor_id) for a in audit] == [("notification.send", people.admin.id)]
        assert audit[0].details["recipients"] == 2
        assert audit[0].details["title"] == "Maintenance"


def test_send_to_a_role_reaches_only_its_active_members(world, people):
    body = ok(send(world, people.admin, role="instructor", kind="course_update"), 201)

    assert body["recipients"] == 2
    assert world.recipients() == {i.id: 1 for i in people.instructors}
    assert {r["kind"] for r in world.rows()} == {"course_update"}
    with world.app.app_context():
        audit = db.session.scalars(select(AuditLog)).one()
        assert audit.action == "notification.send" and audit.details["role"] == "instructor"


@pytest.mark.parametrize("audience", [
    {},
    {"user_ids": [1], "role": "student"},
    {"user_ids": []},
    {"role": "guest"},
    {"user_ids": "all"},
])
def test_send_needs_exactly_one_audience(world, people, audience):
    error(send(world, people.admin, **audience), 422, "validation_error")
    assert world.count(Notification) == 0
    assert world.count(AuditLog) == 0


@pytest.mark.parametrize("body", [
    {"title": "", "message": "x", "role": "student"},
    {"message": "x", "role": "student"},
    {"title": "x", "role": "student"},
    {"title": "t" * 201, "message": "x", "role": "student"},
    {"title": "x", "message": "x", "role": "student", "kind": "spam"},
])
def test_send_validates_the_message(world, people, body):
    error(world.client.post(f"{N}/send", json=body, headers=people.admin.headers), 422)
    assert world.count(Notification) == 0


def test_only_admins_send_and_broadcast(world, people):
    for who in (people.students[0], people.instructors[0]):
        error(send(world, who, role="student"), 403)
        error(world.client.post(f"{N}/broadcast", json={"title": "x", "message": "y"},
                                headers=who.headers), 403)
    error(world.client.post(f"{N}/send", json={"title": "x", "message": "y", "role": "student"}),
          401)
    error(world.client.post(f"{N}/broadcast", json={"title": "x", "message": "y"}), 401)
    assert world.count(Notification) == 0
    assert world.count(AuditLog) == 0


@pytest.mark.parametrize("field, value", [
    ("title", "<script>alert(1)</script>"),
    ("message", "Hello <script>alert(document.cookie)</script>"),
    ("title", "x' OR '1'='1"),
])
def test_hostile_text_trips_the_wire(world, people, field, value):
    prober = {"REMOTE_ADDR": "203.0.113.90"}
    response = world.client.post(f"{N}/send", environ_base=prober, headers=people.admin.headers,
                                 json={"title": "Fine", "message": "Fine", "role": "student",
                                       field: value})
    body = error(response, 422, "validation_error")
    assert field in body["details"]
    broadcast = world.client.post(f"{N}/broadcast", environ_base=prober,
                                  headers=people.admin.headers,
                                  json={"title": "Fine", "message": "Fine", field: value})
    assert field in error(broadcast, 422)["details"]
    assert world.count(Notification) == 0 and world.count(AuditLog) == 0
    with world.app.app_context():
        # Free text: counted (never blocking: utils/pipeline/blocked_ips.py).
        assert set(db.session.scalars(select(SecurityEvent.subject))) == {f"text:{field}"}


@pytest.mark.parametrize("link", [
    "javascript:alert(document.cookie)", "JavaScript:alert(1)", " javascript:alert(1)",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==", "vbscript:msgbox(1)",
    "//evil.example/phish", "/\\evil.example", "https:evil.example", "ftp://files.example/x",
    "courses/7", "/courses/7\nSet-Cookie: x=1", "https://evil.example/a b",
])
def test_a_notification_link_is_an_http_url_or_a_path_of_the_site(world, people, link):
    for path, body in ((f"{N}/send", {"title": "T", "message": "M", "role": "student"}),
                       (f"{N}/broadcast", {"title": "T", "message": "M"})):
        response = world.client.post(path, headers=people.admin.headers,
                                     json={**body, "link": link})
        assert "link" in error(response, 422, "validation_error")["details"], response.json
    assert world.count(Notification) == 0 and world.count(AuditLog) == 0


def test_the_service_refuses_a_link_whoever_calls_it(world, people):
    from services import notification_service
    from utils.errors import ValidationError

    with world.app.app_context():
        with pytest.raises(ValidationError) as caught:
            notification_service.notify(notification_service.recipients_query(role="student"),
                                        kind="announcement", title="T", message="M",
                                        link="javascript:alert(1)")
        assert caught.value.status_code == 422 and set(caught.value.details) == {"link"}
        db.session.rollback()
    assert world.count(Notification) == 0


@pytest.mark.parametrize("link", ["https://learn.example.com/courses/7?tab=live#now",
                                  "http://learn.example.com", "/courses/7", "/"])
def test_http_links_and_site_paths_are_kept(world, people, link):
    response = world.client.post(f"{N}/broadcast", headers=people.admin.headers,
                                 json={"title": "T", "message": "M", "link": link})
    assert response.status_code in (200, 201, 202), response.json
    with world.app.app_context():
        assert set(db.session.scalars(select(Notification.link))) == {link}


def test_broadcast_reaches_every_active_user_once(world, people):
    body = ok(world.client.post(f"{N}/broadcast",
                                json={"title": "Welcome", "message": "New term starts"},
                                headers=people.admin.headers), 201)

    active = [people.admin, *people.students, *people.instructors]
    assert body["recipients"] == len(active)
    assert world.recipients() == {who.id: 1 for who in active}
    assert {(r["title"], r["kind"]) for r in world.rows()} == {("Welcome", "announcement")}
    with world.app.app_context():
        audit = db.session.scalars(select(AuditLog)).one()
        assert audit.action == "notification.broadcast" and audit.actor_id == people.admin.id
        assert audit.details["recipients"] == len(active)


# --- preferences ------------------------------------------------------------------------------

DEFAULTS = {"email_course_updates": True, "email_live_sessions": True, "email_payments": True,
            "email_announcements": True, "in_app": True}


def test_preferences_default_to_everything_on(world):
    me = world.user()
    assert ok(world.client.get(f"{N}/preferences", headers=me.headers)) == {
        "preferences": DEFAULTS}
    assert world.count(NotificationPreference) == 0  # reading creates nothing


def test_preferences_update_partially_and_persist(world):
    me, other = world.user(), world.user()

    body = ok(world.client.put(f"{N}/preferences", json={"email_payments": False},
                               headers=me.headers))
    assert body["preferences"] == {**DEFAULTS, "email_payments": False}
    body = ok(world.client.put(f"{N}/preferences",
                               json={"email_live_sessions": False, "in_app": False},
                               headers=me.headers))
    # in_app is always on; an unknown or fixed field is ignored.
    assert body["preferences"] == {**DEFAULTS, "email_payments": False,
                                   "email_live_sessions": False}
    assert ok(world.client.get(f"{N}/preferences", headers=me.headers))["preferences"] == \
        body["preferences"]

    with world.app.app_context():
        row = db.session.get(NotificationPreference, me.id)
        assert (row.email_course_updates, row.email_live_sessions, row.email_payments,
                row.email_announcements) == (True, False, False, True)
        assert db.session.get(NotificationPreference, other.id) is None
    assert ok(world.client.get(f"{N}/preferences", headers=other.headers)) == {
        "preferences": DEFAULTS}

    error(world.client.put(f"{N}/preferences", json={"email_payments": "sometimes"},
                           headers=me.headers), 422)
    with world.app.app_context():
        assert db.session.get(NotificationPreference, me.id).email_payments is False


# --- e-mail, with a local SMTP server ------------------------------------------------------------

def _memory_sqlite(uri: str) -> bool:
    return uri in ("sqlite://", "sqlite:///:memory:") or ":memory:" in uri


@pytest.fixture
def sink():
    server = smtp_server()
    yield server
    server.stop()


@pytest.fixture
def mail_world(app, sink):
    """A World on an app that sends by SMTP to the sink, on the session app's database."""
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    mail_app = create_app("testing", overrides={
        "MAIL_BACKEND": "smtp", "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": sink.port,
        "MAIL_USE_TLS": False, "MAIL_USE_SSL": False, "MAIL_SUPPRESS_SEND": False,
        "SQLALCHEMY_DATABASE_URI": uri, "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"]})
    separate = _memory_sqlite(uri)
    if separate:
        with mail_app.app_context():
            db.create_all()
    yield World(mail_app)
    with mail_app.app_context():
        db.session.remove()
        if separate:
            db.drop_all()
        db.engine.dispose()


def test_broadcast_by_email_respects_announcement_preferences(mail_world, sink):
    w = mail_world
    admin = w.user("admin", first_name="Grace")
    keen = w.user("student", first_name="Ada")
    quiet = w.user("student")
    teacher = w.user("instructor")
    w.user("student", is_active=False)
    ok(w.client.put(f"{N}/preferences", json={"email_announcements": False},
                    headers=quiet.headers))
    # Other kinds switched off do not matter for announcements.
    ok(w.client.put(f"{N}/preferences", json={"email_payments": False,
                                              "email_live_sessions": False},
                    headers=teacher.headers))
    assert sink.messages == []

    body = ok(w.client.post(f"{N}/broadcast",
                            json={"title": "Exams & grades", "message": "Results on Friday",
                                  "link": "/grades", "send_email": True},
                            headers=admin.headers), 202)

    assert body["recipients"] == 4
    # Jobs run inline in tests: the e-mail job has finished by the time the answer comes.
    job = body["job"]
    assert (job["kind"], job["status"], job["attempts"]) == ("notifications.email", "finished", 1)
    assert job["result"] == {"sent": 3, "recipients": 4}
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == sorted(
        [admin.email, keen.email, teacher.email])
    assert all(len(m.rcpt_tos) == 1 for m in sink.messages)
    to_keen = [m for m in sink.messages if m.rcpt_tos == [keen.email]][0]
    assert to_keen.message["Subject"].startswith("Exams & grades")
    html = to_keen.message.get_body(preferencelist=("html",)).get_content()
    assert "Hello Ada," in html and "Exams &amp; grades" in html and "/grades" in html
    # In-app: everyone active, the quiet one included.
    assert w.recipients() == {admin.id: 1, keen.id: 1, quiet.id: 1, teacher.id: 1}


def test_send_by_email_goes_to_the_audience_only(mail_world, sink):
    w = mail_world
    admin = w.user("admin")
    instructors = [w.user("instructor"), w.user("instructor")]
    w.user("student")
    body = ok(send(w, admin, role="instructor", send_email=True), 202)
    assert body["job"]["status"] == "finished" and body["job"]["result"]["sent"] == 2
    assert sorted(m.rcpt_tos[0] for m in sink.messages) == sorted(i.email for i in instructors)
    # Without send_email, nothing is mailed.
    ok(send(w, admin, role="instructor"), 201)
    assert len(sink.messages) == 2


def test_a_failing_request_sends_no_email(mail_world, sink):
    w = mail_world
    admin = w.user("admin")
    w.user("student")
    for body in ({"message": "no title", "send_email": True},
                 {"title": "<script>x</script>", "message": "m", "send_email": True},
                 {"title": "t", "message": "m", "send_email": "yes please"}):
        error(w.client.post(f"{N}/broadcast", json=body, headers=admin.headers), 422)
    error(send(w, admin, send_email=True), 422)  # no audience
    assert sink.messages == []
    assert w.count(Notification) == 0


def test_emails_are_sent_only_after_the_commit(mail_world, sink):
    """The outbox: queued mail leaves when the transaction commits, and a rollback drops it."""
    w = mail_world
    student = w.user("student")
    with w.app.app_context():
        notification_service.notify(notification_service.recipients_query(), kind="announcement",
                                    title="Rolled back", message="never", email=True)
        assert sink.messages == []
        db.session.rollback()
        db.session.commit()
    assert sink.messages == []
    assert w.count(Notification) == 0

    with w.app.app_context():
        notification_service.notify(notification_service.recipients_query(), kind="announcement",
                                    title="Committed", message="yes", email=True)
        assert sink.messages == []  # queued, not sent
        db.session.commit()
    assert [m.rcpt_tos for m in sink.messages] == [[student.email]]
    assert sink.messages[0].message["Subject"].startswith("Committed")
    assert [r["title"] for r in w.rows()] == ["Committed"]


# --- fan-out is set-based ----------------------------------------------------------------------

def add_users(app, n: int, offset: int = 0) -> None:
    with app.app_context():
        db.session.execute(insert(User), [
            {"email": f"bulk{offset + i}@example.com", "first_name": "Bulk",
             "last_name": str(offset + i), "role": "student", "is_active": True,
             "is_email_verified": True} for i in range(n)])
        db.session.commit()


def statements_during(app, action) -> int:
    with recorded_statements(app) as seen:
        action()
    return len(seen)


def test_broadcast_statement_count_does_not_grow_with_users(world):
    admin = world.user("admin")

    def broadcast(title):
        return lambda: ok(world.client.post(f"{N}/broadcast",
                                            json={"title": title, "message": "m"},
                                            headers=admin.headers), 201)

    add_users(world.app, 29)
    # The admin's first request fills the user mirror (a statement the broadcasts then skip).
    ok(world.client.get(f"{N}/unread-count", headers=admin.headers))
    small = statements_during(world.app, broadcast("Small"))
    assert world.count(Notification, Notification.title == "Small") == 30

    add_users(world.app, 270, offset=29)
    large = statements_during(world.app, broadcast("Large"))
    assert world.count(Notification, Notification.title == "Large") == 300
    assert world.recipients()[admin.id] == 2

    assert large == small
    assert small <= 10, small
