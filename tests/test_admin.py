"""Administration through the HTTP API: every admin route refuses guests, students and
instructors (table-driven over the URL map), the dashboard and analytics against a hand-built
fixture whose every figure is known, user management (search, detail, update with an audited
before/after, deactivation that revokes tokens, promotion, self-lockout and the last admin),
course moderation (pending review, publishing), the payments overview with its totals and CSV
export, and the audit log.

Every test checks the status code, the body and what the database holds afterwards. Fixture rows
are inserted through the ORM inside an app context; requests run outside it.
"""
from __future__ import annotations

import csv
import io
import re
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import event, func, insert, select

from models import (
    AuditLog,
    BlockedIP,
    Certificate,
    Course,
    Enrollment,
    Lesson,
    Module,
    Notification,
    Payment,
    RefundRequest,
    User,
    db,
)
from tests.support.assertions import count, error, fetch, ok

API = "/api/v1"
ADMIN = f"{API}/admin"
UTC = timezone.utc


# --- helpers ----------------------------------------------------------------------------------

def fetch_all(app, model, *where, order_by=None) -> list:
    with app.app_context():
        query = select(model).where(*where).order_by(order_by if order_by is not None
                                                     else model.id)
        return list(db.session.scalars(query))


def add(app, *objects) -> list[int]:
    """Insert ORM objects; returns their ids."""
    with app.app_context():
        db.session.add_all(objects)
        db.session.commit()
        return [obj.id for obj in objects]


def add_course(app, instructor_id: int, title: str, *, status: str = "draft", lessons: int = 0,
               price: str = "0.00", currency: str = "USD", created_at: datetime | None = None,
               **fields) -> int:
    """A course (with one module holding `lessons` lessons); returns its id."""
    with app.app_context():
        values = dict(title=title, slug=f"{re.sub(r'[^a-z0-9]+', '-', title.lower())}-"
                                         f"{uuid.uuid4().hex[:6]}",
                      instructor_id=instructor_id, status=status, price=Decimal(price),
                      currency=currency, **fields)
        if created_at is not None:
            values["created_at"] = created_at
        if status == "published":
            values.setdefault("published_at", created_at or datetime.now(UTC))
        course = Course(**values)
        db.session.add(course)
        db.session.flush()
        if lessons:
            module = Module(course_id=course.id, title="Module 1", position=0)
            db.session.add(module)
            db.session.flush()
            for n in range(lessons):
                db.session.add(Lesson(module_id=module.id, title=f"Lesson {n + 1}", position=n,
                                      content="Body"))
        db.session.commit()
        return course.id


def add_lesson(app, course_id: int) -> int:
    with app.app_context():
        module = Module(course_id=course_id, title="Added module", position=0)
        db.session.add(module)
        db.session.flush()
        lesson = Lesson(module_id=module.id, title="Added lesson", position=0, content="Body")
        db.session.add(lesson)
        db.session.commit()
        return lesson.id


def payment(user_id: int, course_id: int, amount: str, currency: str = "USD",
            status: str = "completed", gateway: str = "razorpay", *, created_at: datetime,
            paid_at: datetime | None = None, **fields) -> Payment:
    values = dict(user_id=user_id, course_id=course_id, gateway=gateway, amount=Decimal(amount),
                  currency=currency, status=status, created_at=created_at, updated_at=created_at,
                  paid_at=paid_at, gateway_order_id=f"order_{uuid.uuid4().hex[:12]}")
    values.update(fields)
    return Payment(**values)


def login(client, email: str, password: str = "Passw0rd!"):
    return client.post(f"{API}/auth/login", json={"email": email, "password": password})


def email_of(app, user_id: int) -> str:
    return fetch(app, User, User.id == user_id).email


def month_start(now: datetime, back: int = 0) -> datetime:
    year, month = now.year, now.month - back
    while month <= 0:
        year, month = year - 1, month + 12
    return datetime(year, month, 1, tzinfo=UTC)


def key(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def audit_rows(app, *where) -> list[AuditLog]:
    return fetch_all(app, AuditLog, *where)


# --- 1. every admin route is protected --------------------------------------------------------

PARAM = re.compile(r"<(?:(?P<converter>[a-z]+)(?:\([^)]*\))?:)?(?P<name>\w+)>")


@pytest.fixture
def protected_rows(app, make_user):
    """Real rows for the path parameters of the admin routes (a route that looked its object up
    before checking the caller would then answer 200 or 409 instead of 404)."""
    student = make_user("student")
    instructor = make_user("instructor")
    admin = make_user("admin")
    course_id = add_course(app, instructor, "Protected course", lessons=1)
    now = datetime.now(UTC)
    with app.app_context():
        enrollment = Enrollment(user_id=student, course_id=course_id, status="completed",
                                completed_at=now)
        pay = payment(student, course_id, "10.00", created_at=now, paid_at=now)
        db.session.add_all([enrollment, pay])
        db.session.flush()
        certificate = Certificate(certificate_number=f"AIFA-{course_id}-{student}-ABCDEF12",
                                  user_id=student, course_id=course_id,
                                  enrollment_id=enrollment.id, holder_name="Student",
                                  course_title="Protected course", completion_date=now.date())
        refund = RefundRequest(payment_id=pay.id, user_id=student, reason="changed my mind",
                               amount=Decimal("10.00"))
        blocked = BlockedIP(ip_address="198.51.100.9", reason="test")
        db.session.add_all([certificate, refund, blocked])
        db.session.commit()
        ids = {"user_id": student, "course_id": course_id, "certificate_id": certificate.id,
               "request_id": refund.id, "payment_id": pay.id, "ip": "198.51.100.9"}
    return {"student": student, "instructor": instructor, "admin": admin, "ids": ids}


def admin_routes(app, ids: dict) -> list[tuple[str, str]]:
    """(method, concrete path) for every rule under /api/v1/admin of the live URL map."""
    routes = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(ADMIN):
            continue
        path = PARAM.sub(lambda m: str(ids.get(m.group("name"), 1)), rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            routes.append((method, path))
    return sorted(set(routes))


def call(client, method: str, path: str, headers: dict | None = None):
    kwargs = {"headers": headers or {}}
    if method in ("PUT", "POST", "PATCH"):
        kwargs["json"] = {}
    return client.open(path, method=method, **kwargs)


def test_the_url_map_has_the_admin_routes_of_the_contract(app):
    """The table below is only as good as the URL map: make sure it holds what it should."""
    rules = {(m, r.rule) for r in app.url_map.iter_rules() if r.rule.startswith(ADMIN)
             for m in r.methods - {"HEAD", "OPTIONS"}}
    expected = {
        ("GET", "/dashboard"), ("GET", "/analytics"), ("GET", "/analytics/revenue"),
        ("GET", "/analytics/enrollments"), ("GET", "/analytics/popular-courses"),
        ("GET", "/users"), ("GET", "/users/<int:user_id>"), ("PUT", "/users/<int:user_id>"),
        ("DELETE", "/users/<int:user_id>"), ("PUT", "/users/<int:user_id>/deactivate"),
        ("POST", "/users/<int:user_id>/promote"), ("GET", "/courses"),
        ("GET", "/courses/pending"), ("PUT", "/courses/<int:course_id>/status"),
        ("PUT", "/courses/<int:course_id>/publish"), ("GET", "/payments"),
        ("GET", "/refund-requests"), ("PUT", "/refund-requests/<int:request_id>"),
        ("GET", "/audit-log"),
    }
    missing = {(m, ADMIN + p) for m, p in expected} - rules
    assert not missing, missing


@pytest.mark.parametrize("caller", ["guest", "student", "instructor"])
def test_every_admin_route_refuses_non_admins(app, client, auth_headers, protected_rows, caller):
    routes = admin_routes(app, protected_rows["ids"])
    assert len(routes) >= 19
    headers = {} if caller == "guest" else auth_headers(protected_rows[caller])
    wrong = []
    for method, path in routes:
        response = call(client, method, path, headers)
        body = response.get_json(silent=True) or {}
        if caller == "guest":
            good = response.status_code == 401 and body.get("code") == "token_missing"
        else:
            good = response.status_code == 403 and body.get("code") == "role_required"
        if not good:
            wrong.append((method, path, response.status_code, body))
    assert not wrong, wrong

    # Nothing was changed by the refused writes.
    ids = protected_rows["ids"]
    student = fetch(app, User, User.id == ids["user_id"])
    assert (student.role, student.is_active, student.tokens_valid_after) == ("student", True, None)
    assert fetch(app, Course, Course.id == ids["course_id"]).status == "draft"
    assert fetch(app, Certificate, Certificate.id == ids["certificate_id"]).status == "valid"
    assert fetch(app, RefundRequest, RefundRequest.id == ids["request_id"]).status == "pending"
    assert count(app, BlockedIP) == 1
    assert count(app, AuditLog) == 0


def test_every_admin_read_route_answers_an_admin(app, client, auth_headers, protected_rows):
    """The other side of the table: the routes exist and an admin gets through."""
    headers = auth_headers(protected_rows["admin"])
    for method, path in admin_routes(app, protected_rows["ids"]):
        if method == "GET":
            ok(client.get(path, headers=headers))


# --- 2. the dashboard against a hand-built fixture --------------------------------------------

@dataclass
class World:
    now: datetime
    admin: int
    students: list[int]     # s1, s2, s3 (s3 inactive)
    instructors: list[int]  # i1, i2
    courses: dict[str, int]
    enrollments: dict[str, int]
    payments: dict[str, int]


@pytest.fixture
def world(app, make_user) -> World:
    """3 students (1 inactive), 2 instructors, 1 admin; courses 2 published, 1 draft,
    1 archived; 4 enrollments (1 completed, 2 active, 1 cancelled); payments: completed USD 10.00
    (this month) and 20.50 (three months ago), completed INR 499.00 (this month), refunded USD
    15.00, failed USD 12.00. Every timestamp is set explicitly."""
    now = datetime.now(UTC)
    this_month = month_start(now)

    def recent(minutes: int) -> datetime:
        """`minutes` ago, but never before the start of this month."""
        return max(now - timedelta(minutes=minutes), this_month + timedelta(seconds=120 - minutes))

    # Created out of order, so that id order and registration order differ.
    i1 = make_user("instructor", created_at=now - timedelta(hours=1))
    admin = make_user("admin", created_at=now - timedelta(hours=6))
    s1 = make_user("student", created_at=now - timedelta(hours=5))
    s3 = make_user("student", is_active=False, created_at=now - timedelta(hours=4))
    s2 = make_user("student", created_at=now - timedelta(hours=3))
    i2 = make_user("instructor", created_at=now - timedelta(hours=2))

    c1 = add_course(app, i1, "Data Science", status="published", price="10.00", lessons=1)
    c2 = add_course(app, i1, "Hindi for Beginners", status="published", price="499.00",
                    currency="INR", lessons=1)
    c3 = add_course(app, i2, "Unfinished Draft")
    c4 = add_course(app, i2, "Retired Course", status="archived", lessons=1)

    e1, e2, e3, e4 = add(
        app,
        Enrollment(user_id=s1, course_id=c1, status="completed", progress_percent=Decimal(100),
                   enrolled_at=month_start(now, 2) + timedelta(days=4), completed_at=recent(30)),
        Enrollment(user_id=s2, course_id=c1, status="active", enrolled_at=recent(20)),
        Enrollment(user_id=s3, course_id=c1, status="cancelled",
                   enrolled_at=month_start(now, 1) + timedelta(days=2), cancelled_at=recent(25)),
        Enrollment(user_id=i2, course_id=c1, status="active",
                   enrolled_at=month_start(now, 5) + timedelta(days=1)),
    )
    three_months_ago = month_start(now, 3) + timedelta(days=9, hours=12)
    p1, p2, p3, p4, p5 = add(
        app,
        payment(s1, c1, "10.00", created_at=recent(41), paid_at=recent(40)),
        payment(s2, c1, "20.50", gateway="stripe", created_at=three_months_ago - timedelta(
            minutes=1), paid_at=three_months_ago),
        payment(s1, c2, "499.00", "INR", created_at=recent(16), paid_at=recent(15)),
        payment(s3, c1, "15.00", status="refunded", gateway="stripe", created_at=recent(51),
                paid_at=recent(50), refunded_at=recent(10), refunded_amount=Decimal("15.00")),
        payment(i2, c1, "12.00", status="failed", gateway="stripe", created_at=recent(5),
                failure_reason="card declined"),
    )
    return World(now=now, admin=admin, students=[s1, s2, s3], instructors=[i1, i2],
                 courses={"c1": c1, "c2": c2, "c3": c3, "c4": c4},
                 enrollments={"e1": e1, "e2": e2, "e3": e3, "e4": e4},
                 payments={"p1": p1, "p2": p2, "p3": p3, "p4": p4, "p5": p5})


def by_currency(entries: list[dict]) -> dict:
    return {entry["currency"]: entry for entry in entries}


def test_dashboard_numbers_match_the_fixture_exactly(app, client, auth_headers, world):
    s1, s2, s3 = world.students
    i1, i2 = world.instructors
    body = ok(client.get(f"{ADMIN}/dashboard", headers=auth_headers(world.admin)))

    assert body["users"] == {
        "total": 6, "active": 5,
        "by_role": {"student": {"total": 3, "active": 2}, "instructor": {"total": 2, "active": 2},
                    "admin": {"total": 1, "active": 1}}}
    assert body["courses"] == {"total": 4,
                               "by_status": {"draft": 1, "published": 2, "archived": 1}}
    assert body["enrollments"] == {"total": 4, "completed": 1, "active": 2}

    # Refunded and failed payments are not revenue; amounts are exact (two decimals).
    all_time = body["revenue"]["all_time"]
    assert len(all_time) == 2
    assert by_currency(all_time) == {
        "USD": {"currency": "USD", "amount": 30.5, "payments": 2},
        "INR": {"currency": "INR", "amount": 499.0, "payments": 1}}
    this_month = body["revenue"]["this_month"]
    assert len(this_month) == 2
    assert by_currency(this_month) == {
        "USD": {"currency": "USD", "amount": 10.0, "payments": 1},
        "INR": {"currency": "INR", "amount": 499.0, "payments": 1}}

    recent = body["recent"]
    # Newest registration first, at most five (the admin, registered first, drops out).
    assert [u["id"] for u in recent["registrations"]] == [i1, i2, s2, s3, s1]
    assert recent["registrations"][0]["email"] == email_of(app, i1)
    e = world.enrollments
    assert [x["id"] for x in recent["enrollments"]] == [e["e2"], e["e3"], e["e1"], e["e4"]]
    assert recent["enrollments"][0]["course_title"] == "Data Science"
    p = world.payments
    assert [x["id"] for x in recent["payments"]] == [p["p5"], p["p3"], p["p1"], p["p4"], p["p2"]]
    assert recent["payments"][1] == {**recent["payments"][1], "amount": 499.0, "currency": "INR",
                                     "status": "completed", "user_email": email_of(app, s1),
                                     "course_title": "Hindi for Beginners"}

    # A sixth, older payment: still five, the oldest dropped; revenue unchanged (failed).
    add(app, payment(s2, world.courses["c2"], "1.00", "INR", status="failed",
                     created_at=world.now - timedelta(days=400)))
    body = ok(client.get(f"{ADMIN}/dashboard", headers=auth_headers(world.admin)))
    assert [x["id"] for x in body["recent"]["payments"]] == [p["p5"], p["p3"], p["p1"], p["p4"],
                                                            p["p2"]]
    assert by_currency(body["revenue"]["all_time"])["USD"]["amount"] == 30.5


# --- 3. analytics -----------------------------------------------------------------------------

def test_revenue_by_month_has_every_month_and_the_amounts_in_the_right_ones(
        client, auth_headers, world):
    body = ok(client.get(f"{ADMIN}/analytics/revenue?months=6",
                         headers=auth_headers(world.admin)))
    expected_keys = [key(month_start(world.now, back)) for back in range(5, -1, -1)]
    assert body["months"] == expected_keys
    assert expected_keys[-1] == world.now.strftime("%Y-%m")
    assert sorted(body["currencies"]) == ["INR", "USD"]
    assert [entry["month"] for entry in body["series"]] == expected_keys

    expected = {month: {"INR": (0.0, 0), "USD": (0.0, 0)} for month in expected_keys}
    expected[key(world.now)] = {"INR": (499.0, 1), "USD": (10.0, 1)}
    expected[key(month_start(world.now, 3))] = {"INR": (0.0, 0), "USD": (20.5, 1)}
    for entry in body["series"]:
        got = {r["currency"]: (r["amount"], r["payments"]) for r in entry["revenue"]}
        assert got == expected[entry["month"]], entry

    # Two months: the payment of three months ago is outside the window.
    body = ok(client.get(f"{ADMIN}/analytics/revenue?months=2",
                         headers=auth_headers(world.admin)))
    assert len(body["series"]) == 2
    totals = {}
    for entry in body["series"]:
        for r in entry["revenue"]:
            totals[r["currency"]] = totals.get(r["currency"], 0) + r["amount"]
    assert totals == {"INR": 499.0, "USD": 10.0}


def test_enrollments_by_month_counts_enrollments_and_completions(client, auth_headers, world):
    body = ok(client.get(f"{ADMIN}/analytics/enrollments?months=3",
                         headers=auth_headers(world.admin)))
    keys = [key(month_start(world.now, back)) for back in (2, 1, 0)]
    assert body["months"] == keys
    assert body["series"] == [
        {"month": keys[0], "enrollments": 1, "completions": 0},   # e1 enrolled
        {"month": keys[1], "enrollments": 1, "completions": 0},   # e3 enrolled
        {"month": keys[2], "enrollments": 1, "completions": 1},   # e2 enrolled, e1 completed
    ]  # e4 (five months ago) is outside the window

    body = ok(client.get(f"{ADMIN}/analytics/enrollments?months=12",
                         headers=auth_headers(world.admin)))
    assert len(body["series"]) == 12
    assert sum(m["enrollments"] for m in body["series"]) == 4
    assert sum(m["completions"] for m in body["series"]) == 1


@pytest.mark.parametrize("path", ["analytics/revenue", "analytics/enrollments", "analytics"])
@pytest.mark.parametrize("months", ["0", "61", "-1", "twelve"])
def test_months_out_of_range_is_422(client, auth_headers, make_user, path, months):
    admin = make_user("admin")
    body = error(client.get(f"{ADMIN}/{path}?months={months}", headers=auth_headers(admin)), 422)
    assert "months" in body.get("details", {}), body


def test_popular_courses_by_enrollments_with_completion_rate_and_revenue(
        app, client, auth_headers, world):
    s1, s2, s3 = world.students
    c2 = world.courses["c2"]
    add(app,
        Enrollment(user_id=s2, course_id=c2, status="active"),
        Enrollment(user_id=s3, course_id=c2, status="completed", completed_at=world.now))
    body = ok(client.get(f"{ADMIN}/analytics/popular-courses", headers=auth_headers(world.admin)))
    courses = body["courses"]
    assert [c["course_id"] for c in courses] == [world.courses["c1"], c2]
    first, second = courses
    assert (first["title"], first["enrollments"], first["completed"],
            first["completion_rate"]) == ("Data Science", 4, 1, 25.0)
    assert first["revenue"] == [{"currency": "USD", "amount": 30.5}]
    assert (second["enrollments"], second["completed"], second["completion_rate"]) == (2, 1, 50.0)
    assert second["revenue"] == [{"currency": "INR", "amount": 499.0}]

    limited = ok(client.get(f"{ADMIN}/analytics/popular-courses?limit=1",
                            headers=auth_headers(world.admin)))
    assert [c["course_id"] for c in limited["courses"]] == [world.courses["c1"]]


def revenue_by_currency(revenue) -> dict:
    """{currency: amount} of a popular course's revenue, whether one entry or a list."""
    entries = revenue if isinstance(revenue, list) else [revenue]
    return {e["currency"]: e["amount"] for e in entries if e["amount"]}


def test_popular_course_revenue_does_not_add_up_currencies(app, client, auth_headers, world):
    s1, s2, s3 = world.students
    c1 = world.courses["c1"]
    with app.app_context():
        db.session.get(Course, c1).currency = "INR"  # the instructor changed the currency
        db.session.add(payment(s3, c1, "499.00", "INR", created_at=world.now,
                               paid_at=world.now))
        db.session.commit()
    body = ok(client.get(f"{ADMIN}/analytics/popular-courses", headers=auth_headers(world.admin)))
    first = next(c for c in body["courses"] if c["course_id"] == c1)
    assert revenue_by_currency(first["revenue"]) == {"USD": 30.5, "INR": 499.0}


def test_analytics_returns_all_three(client, auth_headers, world):
    headers = auth_headers(world.admin)
    body = ok(client.get(f"{ADMIN}/analytics?months=6", headers=headers))
    assert set(body) >= {"revenue", "enrollments", "popular_courses"}
    assert body["revenue"] == ok(client.get(f"{ADMIN}/analytics/revenue?months=6",
                                            headers=headers))
    assert body["enrollments"] == ok(client.get(f"{ADMIN}/analytics/enrollments?months=6",
                                                headers=headers))
    assert body["popular_courses"] == ok(client.get(f"{ADMIN}/analytics/popular-courses",
                                                    headers=headers))["courses"]
    default = ok(client.get(f"{ADMIN}/analytics", headers=headers))
    assert len(default["revenue"]["months"]) == 12
    assert len(default["enrollments"]["series"]) == 12


def test_analytics_of_an_empty_database_are_zeros(client, auth_headers, make_user):
    admin = make_user("admin")
    headers = auth_headers(admin)
    revenue = ok(client.get(f"{ADMIN}/analytics/revenue?months=3", headers=headers))
    assert len(revenue["months"]) == 3
    assert all(entry["revenue"] == [] for entry in revenue["series"])
    enrollments = ok(client.get(f"{ADMIN}/analytics/enrollments?months=3", headers=headers))
    assert [(m["enrollments"], m["completions"]) for m in enrollments["series"]] == [(0, 0)] * 3
    assert ok(client.get(f"{ADMIN}/analytics/popular-courses", headers=headers))["courses"] == []
    dashboard = ok(client.get(f"{ADMIN}/dashboard", headers=headers))
    assert dashboard["revenue"] == {"all_time": [], "this_month": []}
    assert dashboard["enrollments"] == {"total": 0, "completed": 0, "active": 0}


# --- 4. users ---------------------------------------------------------------------------------

@dataclass
class People:
    admin: int
    alice: int
    bob: int
    carol: int


@pytest.fixture
def people(app, make_user) -> People:
    now = datetime.now(UTC)
    admin = make_user("admin", first_name="Root", last_name="Admin", email="root@example.com",
                      created_at=now - timedelta(hours=4))
    alice = make_user("student", first_name="Alice", last_name="Wonder",
                      email="alice.w@example.org", phone_number="+919876543210",
                      created_at=now - timedelta(hours=3))
    bob = make_user("instructor", first_name="Bob", last_name="Builder", email="bob@corpmail.io",
                    phone_number="+447911123456", created_at=now - timedelta(hours=2))
    carol = make_user("student", first_name="Carol", last_name="Malison",
                      email="c.m@example.net", phone_number="+14155552671", is_active=False,
                      created_at=now - timedelta(hours=1))
    return People(admin, alice, bob, carol)


def user_ids(client, headers, query: str = "") -> list[int]:
    body = ok(client.get(f"{ADMIN}/users{query}", headers=headers))
    assert body["pagination"]["total"] == len(body["users"]) or "per_page" in query
    return [u["id"] for u in body["users"]]


def test_user_list_search_filters_and_pagination(client, auth_headers, people):
    headers = auth_headers(people.admin)
    p = people
    assert user_ids(client, headers) == [p.carol, p.bob, p.alice, p.admin]  # newest first
    # Name part (first or last name, any case), full name, e-mail part, phone part.
    assert user_ids(client, headers, "?search=ALI") == [p.carol, p.alice]
    assert user_ids(client, headers, "?search=alice%20wonder") == [p.alice]
    assert user_ids(client, headers, "?search=CorpMail") == [p.bob]
    assert user_ids(client, headers, "?search=98765") == [p.alice]
    assert user_ids(client, headers, "?search=%2B1415") == [p.carol]
    # LIKE wildcards are literal.
    assert user_ids(client, headers, "?search=%25") == []
    assert user_ids(client, headers, "?search=_") == []
    # Role and status filters, alone and together.
    assert user_ids(client, headers, "?role=student") == [p.carol, p.alice]
    assert user_ids(client, headers, "?is_active=false") == [p.carol]
    assert user_ids(client, headers, "?role=student&is_active=true") == [p.alice]
    assert user_ids(client, headers, "?search=ali&is_active=true") == [p.alice]
    assert user_ids(client, headers, "?role=admin") == [p.admin]

    page1 = ok(client.get(f"{ADMIN}/users?per_page=3&page=1", headers=headers))
    page2 = ok(client.get(f"{ADMIN}/users?per_page=3&page=2", headers=headers))
    assert [u["id"] for u in page1["users"]] == [p.carol, p.bob, p.alice]
    assert [u["id"] for u in page2["users"]] == [p.admin]
    assert page1["pagination"] == {"page": 1, "per_page": 3, "total": 4, "pages": 2,
                                   "has_next": True, "has_prev": False}
    assert page2["pagination"]["has_prev"] is True and page2["pagination"]["has_next"] is False
    # The admin list shows the private fields, never the password hash.
    alice = next(u for u in page1["users"] if u["id"] == p.alice)
    assert alice["email"] == "alice.w@example.org" and alice["phone_number"] == "+919876543210"
    assert "password_hash" not in alice

    error(client.get(f"{ADMIN}/users?role=superuser", headers=headers), 422)
    error(client.get(f"{ADMIN}/users?per_page=0", headers=headers), 422)


def test_user_detail_has_enrollment_and_payment_summaries(app, client, auth_headers, people):
    now = datetime.now(UTC)
    c1 = add_course(app, people.bob, "Course One", status="published", lessons=1)
    c2 = add_course(app, people.bob, "Course Two", status="published", lessons=1)
    add(app,
        Enrollment(user_id=people.alice, course_id=c1, status="active"),
        Enrollment(user_id=people.alice, course_id=c2, status="completed", completed_at=now),
        payment(people.alice, c1, "10.00", created_at=now, paid_at=now),
        payment(people.alice, c1, "5.00", status="failed", created_at=now),
        payment(people.alice, c2, "100.00", "INR", created_at=now, paid_at=now))
    headers = auth_headers(people.admin)

    user = ok(client.get(f"{ADMIN}/users/{people.alice}", headers=headers))["user"]
    assert (user["id"], user["email"], user["role"]) == (people.alice, "alice.w@example.org",
                                                         "student")
    assert user["enrollments"] == {"total": 2, "by_status": {"active": 1, "completed": 1}}
    assert user["payments"]["total"] == 3
    assert user["payments"]["by_status"]["failed"] == 1
    assert sorted(user["payments"]["completed"], key=lambda x: x["currency"]) == [
        {"currency": "INR", "amount": 100.0, "count": 1},
        {"currency": "USD", "amount": 10.0, "count": 1}]
    assert "password_hash" not in user

    bob = ok(client.get(f"{ADMIN}/users/{people.bob}", headers=headers))["user"]
    assert bob["courses_taught"] == 2
    assert bob["enrollments"] == {"total": 0, "by_status": {}}
    assert bob["payments"]["total"] == 0

    for method in ("GET", "PUT", "DELETE"):
        error(call(client, method, f"{ADMIN}/users/999999", headers), 404)
    error(client.put(f"{ADMIN}/users/999999/deactivate", headers=headers), 404)
    error(client.post(f"{ADMIN}/users/999999/promote", headers=headers), 404)


def test_user_detail_payment_counts_by_status_span_currencies(app, client, auth_headers, people):
    now = datetime.now(UTC)
    c1 = add_course(app, people.bob, "Course One", status="published", lessons=1)
    add(app,
        payment(people.alice, c1, "10.00", created_at=now, paid_at=now),
        payment(people.alice, c1, "100.00", "INR", created_at=now, paid_at=now),
        payment(people.alice, c1, "5.00", status="failed", created_at=now))
    user = ok(client.get(f"{ADMIN}/users/{people.alice}",
                         headers=auth_headers(people.admin)))["user"]
    assert user["payments"]["total"] == 3
    assert user["payments"]["by_status"] == {"completed": 2, "failed": 1}


def test_update_user_changes_role_and_profile_and_audits_only_what_changed(
        app, client, auth_headers, people):
    alice_token = auth_headers(people.alice)
    body = ok(client.put(f"{ADMIN}/users/{people.alice}", headers=auth_headers(people.admin),
                         json={"role": "instructor", "city": "Pune", "first_name": "Alice",
                               "headline": "  Data person  ", "unknown_field": 1}))
    assert body["user"]["role"] == "instructor"
    assert body["user"]["city"] == "Pune" and body["user"]["headline"] == "Data person"

    alice = fetch(app, User, User.id == people.alice)
    assert (alice.role, alice.city, alice.headline, alice.first_name) == (
        "instructor", "Pune", "Data person", "Alice")
    [entry] = audit_rows(app)
    assert (entry.action, entry.actor_id, entry.target_type, entry.target_id) == (
        "user.update", people.admin, "user", people.alice)
    assert entry.details["before"] == {"role": "student", "city": None, "headline": None}
    assert entry.details["after"] == {"role": "instructor", "city": "Pune",
                                      "headline": "Data person"}
    assert entry.ip_address == "127.0.0.1" and entry.created_at is not None

    # The role is part of her token: the old one is refused, a new login carries the new role.
    error(client.get(f"{API}/auth/profile", headers=alice_token), 401)
    assert ok(login(client, "alice.w@example.org"))["user"]["role"] == "instructor"

    # A field cleared with null is audited as a change too.
    ok(client.put(f"{ADMIN}/users/{people.alice}", headers=auth_headers(people.admin),
                  json={"city": None}))
    assert fetch(app, User, User.id == people.alice).city is None
    last = audit_rows(app)[-1]
    assert (last.details["before"], last.details["after"]) == ({"city": "Pune"}, {"city": None})


@pytest.mark.parametrize("payload, field", [
    ({"phone_number": "12345"}, "phone_number"),
    ({"phone_number": "+1 555"}, "phone_number"),
    ({"role": "superuser"}, "role"),
    ({"first_name": "<script>alert(1)</script>"}, "first_name"),
    ({"website": "javascript:alert(1)"}, "website"),
    ({"is_active": "maybe"}, "is_active"),
])
def test_update_user_validates(app, client, auth_headers, people, payload, field):
    body = error(client.put(f"{ADMIN}/users/{people.alice}", headers=auth_headers(people.admin),
                            json=payload), 422)
    assert field in body["details"], body
    alice = fetch(app, User, User.id == people.alice)
    assert (alice.role, alice.phone_number, alice.first_name, alice.website) == (
        "student", "+919876543210", "Alice", None)
    assert count(app, AuditLog) == 0


def test_update_user_duplicate_phone_is_409(app, client, auth_headers, people):
    headers = auth_headers(people.admin)
    # Another account's number, written differently: normalised, then refused.
    error(client.put(f"{ADMIN}/users/{people.bob}", headers=headers,
                     json={"phone_number": "+91 98765 43210"}), 409, "phone_taken")
    assert fetch(app, User, User.id == people.bob).phone_number == "+447911123456"
    assert count(app, AuditLog) == 0
    # Her own number again is no conflict, and nothing changed, so nothing is audited as changed.
    body = ok(client.put(f"{ADMIN}/users/{people.alice}", headers=headers,
                         json={"phone_number": "+91 98765 43210"}))
    assert body["user"]["phone_number"] == "+919876543210"
    # A fresh number is normalised to E.164.
    ok(client.put(f"{ADMIN}/users/{people.bob}", headers=headers,
                  json={"phone_number": "+44 7912 345678"}))
    assert fetch(app, User, User.id == people.bob).phone_number == "+447912345678"


@pytest.mark.parametrize("method, suffix", [("DELETE", ""), ("PUT", "/deactivate")])
def test_deactivation_revokes_tokens_and_blocks_login(app, client, auth_headers, people,
                                                      method, suffix):
    headers = auth_headers(people.admin)
    factory_token = auth_headers(people.alice)
    login_token = {"Authorization": "Bearer " + ok(login(client, "alice.w@example.org"))[
        "access_token"]}
    ok(client.get(f"{API}/auth/profile", headers=login_token))

    body = ok(client.open(f"{ADMIN}/users/{people.alice}{suffix}", method=method,
                          headers=headers))
    assert body["user"]["is_active"] is False
    alice = fetch(app, User, User.id == people.alice)
    assert alice.is_active is False and alice.tokens_valid_after is not None
    # Nothing is deleted.
    assert count(app, User, User.id == people.alice) == 1

    for token in (factory_token, login_token):
        error(client.get(f"{API}/auth/profile", headers=token), 401)
    # The right password answers as a wrong one would: no oracle for a deactivated account.
    error(login(client, "alice.w@example.org"), 401, "invalid_credentials")

    [entry] = audit_rows(app)
    assert (entry.action, entry.target_id, entry.actor_id) == ("user.deactivate", people.alice,
                                                               people.admin)
    assert entry.details == {"before": {"is_active": True}, "after": {"is_active": False}}

    # Twice is a conflict, by either route.
    error(client.delete(f"{ADMIN}/users/{people.alice}", headers=headers), 409)
    error(client.put(f"{ADMIN}/users/{people.alice}/deactivate", headers=headers), 409)
    assert len(audit_rows(app)) == 1

    # Reactivation through PUT lets her log in again.
    ok(client.put(f"{ADMIN}/users/{people.alice}", headers=headers, json={"is_active": True}))
    ok(login(client, "alice.w@example.org"))


def test_an_admin_cannot_lock_themselves_out(app, client, auth_headers, make_user):
    a1 = make_user("admin", email="a1@example.com")
    a2 = make_user("admin", email="a2@example.com")
    h1 = auth_headers(a1)
    a2_token = auth_headers(a2)

    for method, suffix, payload in [("PUT", "", {"role": "student"}),
                                    ("PUT", "", {"role": "instructor"}),
                                    ("PUT", "", {"is_active": False}),
                                    ("DELETE", "", None), ("PUT", "/deactivate", None)]:
        error(client.open(f"{ADMIN}/users/{a1}{suffix}", method=method, headers=h1,
                          json=payload), 409, "self_lockout")
    me = fetch(app, User, User.id == a1)
    assert (me.role, me.is_active, me.tokens_valid_after) == ("admin", True, None)
    assert count(app, AuditLog) == 0
    # A harmless change of their own profile is fine.
    ok(client.put(f"{ADMIN}/users/{a1}", headers=h1, json={"city": "Oslo", "role": "admin"}))

    # With a second active admin, A1 may demote A2 ...
    body = ok(client.put(f"{ADMIN}/users/{a2}", headers=h1, json={"role": "instructor"}))
    assert body["user"]["role"] == "instructor"
    assert fetch(app, User, User.id == a2).role == "instructor"
    # ... whose admin token stops working at once; a new login is an instructor's.
    error(client.get(f"{ADMIN}/dashboard", headers=a2_token), 401)
    a2_new = {"Authorization": "Bearer " + ok(login(client, "a2@example.com"))["access_token"]}
    error(client.get(f"{ADMIN}/dashboard", headers=a2_new), 403, "role_required")
    error(client.put(f"{ADMIN}/users/{a1}", headers=a2_new, json={"role": "student"}), 403,
          "role_required")

    # A1 is now the last active admin: still no way to lock themselves out.
    error(client.delete(f"{ADMIN}/users/{a1}", headers=h1), 409, "self_lockout")
    error(client.put(f"{ADMIN}/users/{a1}", headers=h1, json={"role": "student"}), 409,
          "self_lockout")
    assert count(app, User, User.role == "admin", User.is_active.is_(True)) == 1


def test_an_inactive_admin_may_be_demoted(app, client, auth_headers, make_user):
    a1 = make_user("admin")
    dormant = make_user("admin", is_active=False)
    ok(client.put(f"{ADMIN}/users/{dormant}", headers=auth_headers(a1),
                  json={"role": "student"}))
    assert fetch(app, User, User.id == dormant).role == "student"


# The last active admin: an admin must be active to call these routes, and the acting admin
# counts as "another active admin" for any target but themselves (self_lockout). So the only
# way to strip the last admin is two admins demoting each other at the same moment: each sees
# the other as the remaining admin. Constructed here on PostgreSQL with both requests paused
# right after their "other active admins" count until both have counted.

@pytest.fixture
def pg_app(postgres_app):
    return postgres_app


def admin_in(app, email: str) -> tuple[int, dict]:
    from flask_jwt_extended import create_access_token

    with app.app_context():
        user = User(email=email, first_name="Admin", last_name=email[:2], role="admin",
                    is_active=True, is_email_verified=True)
        user.set_password("Passw0rd!")
        db.session.add(user)
        db.session.commit()
        return user.id, {"Authorization": f"Bearer {create_access_token(user)}"}


@pytest.mark.parametrize("action", ["demote", "deactivate"])
def test_the_last_active_admin_cannot_be_removed_by_anyone(pg_app, action):
    a1, h1 = admin_in(pg_app, "a1@example.com")
    a2, h2 = admin_in(pg_app, "a2@example.com")
    racers: set = set()
    barrier = threading.Barrier(2)

    def pause_after_admin_count(conn, cursor, statement, parameters, context, executemany):
        lowered = statement.lower()
        if (threading.current_thread() in racers and "count(" in lowered
                and "users.role" in lowered):
            try:
                barrier.wait(timeout=3)
            except threading.BrokenBarrierError:
                pass  # a locking implementation lets only one through: fine

    results: dict = {}

    def request(actor_headers: dict, target: int, name: str) -> None:
        client = pg_app.test_client()
        try:
            if action == "demote":
                response = client.put(f"{ADMIN}/users/{target}", headers=actor_headers,
                                      json={"role": "student"})
            else:
                response = client.delete(f"{ADMIN}/users/{target}", headers=actor_headers)
            results[name] = (response.status_code, response.get_json())
        except BaseException as exc:  # reported below
            results[name] = exc

    with pg_app.app_context():
        engine = db.engine
    event.listen(engine, "after_cursor_execute", pause_after_admin_count)
    try:
        threads = [threading.Thread(target=request, args=(h1, a2, "a1->a2")),
                   threading.Thread(target=request, args=(h2, a1, "a2->a1"))]
        racers.update(threads)
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a request hung"
    finally:
        event.remove(engine, "after_cursor_execute", pause_after_admin_count)

    statuses = sorted(r[0] for r in results.values())
    with pg_app.app_context():
        active_admins = db.session.scalar(select(func.count(User.id)).where(
            User.role == "admin", User.is_active.is_(True)))
        db.session.remove()
    assert active_admins == 1, (active_admins, results)
    # The loser is refused by the guard (409 last_admin) or, when the winner's change landed
    # before the loser's request read its own account, at authentication (401: token revoked,
    # account inactive) or authorisation (403: no longer an admin).
    assert statuses in ([200, 409], [200, 401], [200, 403]), results
    refused = next(r[1] for r in results.values() if r[0] != 200)
    assert refused["code"] in ("last_admin", "token_revoked", "account_inactive",
                               "role_required"), results


def test_promote_student_to_instructor(app, client, auth_headers, people):
    headers = auth_headers(people.admin)
    old_token = auth_headers(people.alice)
    body = ok(client.post(f"{ADMIN}/users/{people.alice}/promote", headers=headers))
    assert body["user"]["role"] == "instructor"
    assert fetch(app, User, User.id == people.alice).role == "instructor"
    [entry] = audit_rows(app)
    assert (entry.action, entry.target_id) == ("user.promote", people.alice)
    assert entry.details == {"before": {"role": "student"}, "after": {"role": "instructor"}}

    # Role changes revoke tokens: the old one is refused; a login is an instructor's.
    error(client.get(f"{API}/auth/profile", headers=old_token), 401)
    tokens = ok(login(client, "alice.w@example.org"))
    assert tokens["user"]["role"] == "instructor"
    new = {"Authorization": f"Bearer {tokens['access_token']}"}
    ok(client.get(f"{API}/courses/get-courses", headers=new))  # an instructor's view

    error(client.post(f"{ADMIN}/users/{people.alice}/promote", headers=headers), 409,
          "not_a_student")
    error(client.post(f"{ADMIN}/users/{people.bob}/promote", headers=headers), 409,
          "not_a_student")
    error(client.post(f"{ADMIN}/users/{people.admin}/promote", headers=headers), 409)
    error(client.post(f"{ADMIN}/users/{people.carol}/promote", headers=headers), 409)  # inactive
    assert fetch(app, User, User.id == people.carol).role == "student"
    assert len(audit_rows(app)) == 1


# --- 5. courses -------------------------------------------------------------------------------

def course_ids(client, headers, path: str) -> list[int]:
    return [c["id"] for c in ok(client.get(path, headers=headers))["courses"]]


def test_admin_course_list_has_every_status_with_filters(app, client, auth_headers, make_user):
    admin = make_user("admin")
    i1 = make_user("instructor")
    i2 = make_user("instructor")
    now = datetime.now(UTC)
    basics = add_course(app, i1, "Python Basics", status="published", lessons=1,
                        created_at=now - timedelta(days=4))
    sql = add_course(app, i1, "Advanced SQL", created_at=now - timedelta(days=3))
    old = add_course(app, i1, "Old Course", status="archived", created_at=now - timedelta(days=2))
    pro = add_course(app, i2, "Python Pro", created_at=now - timedelta(days=1))
    headers = auth_headers(admin)

    body = ok(client.get(f"{ADMIN}/courses", headers=headers))
    assert sorted(c["id"] for c in body["courses"]) == sorted([basics, sql, old, pro])
    assert body["pagination"]["total"] == 4
    assert {c["status"] for c in body["courses"]} == {"draft", "published", "archived"}
    assert sorted(course_ids(client, headers, f"{ADMIN}/courses?status=draft")) == sorted(
        [sql, pro])
    assert course_ids(client, headers, f"{ADMIN}/courses?status=archived") == [old]
    assert course_ids(client, headers, f"{ADMIN}/courses?instructor_id={i2}") == [pro]
    assert sorted(course_ids(client, headers, f"{ADMIN}/courses?search=python")) == sorted(
        [basics, pro])
    assert course_ids(client, headers, f"{ADMIN}/courses?search=python&status=draft") == [pro]
    assert course_ids(client, headers,
                      f"{ADMIN}/courses?instructor_id={i1}&status=draft") == [sql]
    error(client.get(f"{ADMIN}/courses?status=deleted", headers=headers), 422)


def test_pending_lists_submitted_drafts_oldest_request_first(app, client, auth_headers,
                                                             make_user):
    admin = make_user("admin")
    teacher = make_user("instructor")
    t_headers = auth_headers(teacher)
    a = add_course(app, teacher, "Course A", lessons=1)
    b = add_course(app, teacher, "Course B", lessons=2)
    unsubmitted = add_course(app, teacher, "Course C", lessons=1)
    empty = add_course(app, teacher, "Course Empty")
    add_course(app, teacher, "Course Live", status="published", lessons=1)
    headers = auth_headers(admin)

    assert course_ids(client, headers, f"{ADMIN}/courses/pending") == []
    ok(client.post(f"{API}/courses/{b}/submit-review", headers=t_headers))
    ok(client.post(f"{API}/courses/{a}/submit-review", headers=t_headers))
    error(client.post(f"{API}/courses/{empty}/submit-review", headers=t_headers), 422,
          "course_empty")
    with app.app_context():
        requested = dict(db.session.execute(select(Course.id, Course.review_requested_at)
                                            .where(Course.id.in_([a, b]))).all())
    assert requested[b] <= requested[a]

    body = ok(client.get(f"{ADMIN}/courses/pending", headers=headers))
    assert [c["id"] for c in body["courses"]] == [b, a]
    assert unsubmitted not in [c["id"] for c in body["courses"]]
    assert body["pagination"]["total"] == 2

    # Publishing takes it off the list.
    ok(client.put(f"{ADMIN}/courses/{b}/publish", headers=headers))
    assert course_ids(client, headers, f"{ADMIN}/courses/pending") == [a]
    assert fetch(app, Course, Course.id == b).review_requested_at is None


def test_publishing_needs_a_lesson_and_notifies_the_instructor(app, client, auth_headers,
                                                               make_user):
    admin = make_user("admin")
    teacher = make_user("instructor")
    course = add_course(app, teacher, "Needs Content")
    headers = auth_headers(admin)

    body = error(client.put(f"{ADMIN}/courses/{course}/status", headers=headers,
                            json={"status": "published"}), 422, "course_empty")
    assert "status" in body.get("details", {})
    assert fetch(app, Course, Course.id == course).status == "draft"
    assert count(app, AuditLog) == 0
    assert count(app, Notification) == 0

    add_lesson(app, course)
    body = ok(client.put(f"{ADMIN}/courses/{course}/status", headers=headers,
                         json={"status": "published"}))
    assert body["course"]["status"] == "published" and body["course"]["published_at"]
    row = fetch(app, Course, Course.id == course)
    assert row.status == "published" and row.published_at is not None

    [note] = fetch_all(app, Notification)
    assert note.user_id == teacher and note.kind == "course_update"
    assert note.data["course_id"] == course and "Needs Content" in note.title
    [entry] = audit_rows(app)
    assert (entry.action, entry.actor_id, entry.target_type, entry.target_id) == (
        "course.status", admin, "course", course)
    assert entry.details == {"before": {"status": "draft"}, "after": {"status": "published"}}

    # Archive and back to draft; each is audited and notified.
    ok(client.put(f"{ADMIN}/courses/{course}/status", headers=headers,
                  json={"status": "archived"}))
    assert fetch(app, Course, Course.id == course).status == "archived"
    assert count(app, Notification, Notification.user_id == teacher) == 2
    assert audit_rows(app)[-1].details == {"before": {"status": "published"},
                                           "after": {"status": "archived"}}

    error(client.put(f"{ADMIN}/courses/{course}/status", headers=headers,
                     json={"status": "deleted"}), 422)
    error(client.put(f"{ADMIN}/courses/{course}/status", headers=headers, json={}), 422)
    error(client.put(f"{ADMIN}/courses/999999/status", headers=headers,
                     json={"status": "published"}), 404)
    error(client.put(f"{ADMIN}/courses/999999/publish", headers=headers), 404)


def test_publish_alias(app, client, auth_headers, make_user):
    admin = make_user("admin")
    teacher = make_user("instructor")
    empty = add_course(app, teacher, "Empty One")
    full = add_course(app, teacher, "Full One", lessons=1)
    headers = auth_headers(admin)
    error(client.put(f"{ADMIN}/courses/{empty}/publish", headers=headers), 422, "course_empty")
    body = ok(client.put(f"{ADMIN}/courses/{full}/publish", headers=headers))
    assert body["course"]["status"] == "published"
    assert fetch(app, Course, Course.id == full).status == "published"
    assert fetch(app, Course, Course.id == empty).status == "draft"
    [entry] = audit_rows(app)
    assert (entry.action, entry.target_id) == ("course.status", full)
    assert count(app, Notification, Notification.user_id == teacher) == 1


# --- 6. payments ------------------------------------------------------------------------------

@dataclass
class Ledger:
    admin: int
    u1: int
    u2: int
    c1: int
    c2: int
    p: dict[str, int]


@pytest.fixture
def ledger(app, make_user) -> Ledger:
    admin = make_user("admin")
    u1 = make_user("student")
    u2 = make_user("student")
    teacher = make_user("instructor")
    c1 = add_course(app, teacher, "Course USD", status="published", price="10.00", lessons=1)
    c2 = add_course(app, teacher, "Course INR", status="published", price="500.00",
                    currency="INR", lessons=1)
    at = lambda *args: datetime(*args, tzinfo=UTC)  # noqa: E731
    pa, pb, pc, pd, pe = add(
        app,
        payment(u1, c1, "10.00", created_at=at(2025, 1, 10, 12), paid_at=at(2025, 1, 10, 12)),
        payment(u1, c2, "500.00", "INR", gateway="stripe", created_at=at(2025, 1, 15),
                paid_at=at(2025, 1, 15)),
        payment(u2, c1, "20.00", status="refunded", gateway="stripe",
                created_at=at(2025, 1, 15, 23, 59, 59), paid_at=at(2025, 1, 16),
                refunded_amount=Decimal("20.00")),
        payment(u2, c2, "300.00", "INR", status="failed", created_at=at(2025, 1, 16)),
        payment(u2, c1, "5.50", gateway="stripe", created_at=at(2025, 2, 1, 9),
                paid_at=at(2025, 2, 1, 9)),
    )
    return Ledger(admin, u1, u2, c1, c2, {"a": pa, "b": pb, "c": pc, "d": pd, "e": pe})


def payment_page(client, headers, query: str = "") -> dict:
    return ok(client.get(f"{ADMIN}/payments{query}", headers=headers))


def test_payment_list_filters_and_totals(client, auth_headers, ledger):
    headers = auth_headers(ledger.admin)
    p = ledger.p

    def ids(query: str = "") -> list[int]:
        return [x["id"] for x in payment_page(client, headers, query)["payments"]]

    everything = payment_page(client, headers)
    assert [x["id"] for x in everything["payments"]] == [p["e"], p["d"], p["c"], p["b"], p["a"]]
    assert everything["pagination"]["total"] == 5
    totals = by_currency(everything["totals"])
    assert (totals["USD"]["count"], totals["USD"]["amount"]) == (3, 35.5)
    assert totals["USD"]["by_status"] == {"completed": {"count": 2, "amount": 15.5},
                                          "refunded": {"count": 1, "amount": 20.0}}
    assert (totals["INR"]["count"], totals["INR"]["amount"]) == (2, 800.0)
    assert totals["INR"]["by_status"] == {"completed": {"count": 1, "amount": 500.0},
                                          "failed": {"count": 1, "amount": 300.0}}
    first = everything["payments"][0]
    assert (first["amount"], first["currency"], first["status"], first["gateway"]) == (
        5.5, "USD", "completed", "stripe")

    assert ids("?status=completed") == [p["e"], p["b"], p["a"]]
    completed = by_currency(payment_page(client, headers, "?status=completed")["totals"])
    assert {c: (t["count"], t["amount"]) for c, t in completed.items()} == {
        "USD": (2, 15.5), "INR": (1, 500.0)}
    assert ids(f"?user_id={ledger.u2}") == [p["e"], p["d"], p["c"]]
    assert ids(f"?course_id={ledger.c2}") == [p["d"], p["b"]]
    assert ids("?gateway=stripe") == [p["e"], p["c"], p["b"]]
    assert ids("?gateway=razorpay") == [p["d"], p["a"]]
    # Dates are inclusive days: 00:00:00 and 23:59:59 of the 15th are both on the 15th.
    assert ids("?date_from=2025-01-15&date_to=2025-01-15") == [p["c"], p["b"]]
    assert ids("?date_from=2025-01-16") == [p["e"], p["d"]]
    assert ids("?date_to=2025-01-14") == [p["a"]]
    assert ids(f"?status=completed&gateway=stripe&user_id={ledger.u1}") == [p["b"]]
    filtered = payment_page(client, headers, "?date_from=2025-01-15&date_to=2025-01-15")
    assert {c: (t["count"], t["amount"]) for c, t in by_currency(filtered["totals"]).items()} \
        == {"USD": (1, 20.0), "INR": (1, 500.0)}
    nothing = payment_page(client, headers, "?date_from=2030-01-01")
    assert nothing["payments"] == [] and nothing["totals"] == []

    page = payment_page(client, headers, "?per_page=2&page=2")
    assert [x["id"] for x in page["payments"]] == [p["c"], p["b"]]
    assert page["pagination"]["total"] == 5 and page["pagination"]["pages"] == 3
    # Totals describe the whole filter, not the page.
    assert by_currency(page["totals"])["USD"]["count"] == 3

    for bad in ("?status=stolen", "?gateway=paypal", "?date_from=2025-13-01", "?user_id=0",
                "?format=xml"):
        error(client.get(f"{ADMIN}/payments{bad}", headers=headers), 422)


def read_csv(response) -> list[dict]:
    assert response.status_code == 200, response.status_code
    assert response.mimetype == "text/csv"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment") and ".csv" in disposition
    return list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))


def test_payment_csv_export(app, client, auth_headers, ledger):
    headers = auth_headers(ledger.admin)
    response = client.get(f"{ADMIN}/payments?format=csv", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    text_body = response.get_data(as_text=True)
    header = next(csv.reader(io.StringIO(text_body)))
    assert {"id", "created_at", "status", "gateway", "amount", "currency", "user_id",
            "user_email", "course_id", "course_title"} <= set(header)
    rows = read_csv(response)
    assert len(rows) == 5
    assert sorted(int(r["id"]) for r in rows) == sorted(ledger.p.values())
    row = next(r for r in rows if int(r["id"]) == ledger.p["b"])
    assert (row["amount"], row["currency"], row["status"], row["gateway"]) == (
        "500.00", "INR", "completed", "stripe")
    assert row["course_title"] == "Course INR"
    assert row["user_email"] == email_of(app, ledger.u1)
    assert int(row["user_id"]) == ledger.u1 and int(row["course_id"]) == ledger.c2

    # The filter applies to the export too.
    completed = read_csv(client.get(f"{ADMIN}/payments?format=csv&status=completed",
                                    headers=headers))
    assert sorted(int(r["id"]) for r in completed) == sorted(
        [ledger.p["a"], ledger.p["b"], ledger.p["e"]])
    assert {r["status"] for r in completed} == {"completed"}


def test_payment_csv_neutralises_formulas(app, client, auth_headers, make_user):
    admin = make_user("admin")
    student = make_user("student")
    teacher = make_user("instructor")
    now = datetime.now(UTC)
    titles = ['=HYPERLINK("http://evil.example","click")', "+1 trick", "@SUM(A1:A2)",
              "Plain Title"]
    for title in titles:
        course = add_course(app, teacher, title, status="published", lessons=1)
        add(app, payment(student, course, "1.00", created_at=now, paid_at=now))
    rows = read_csv(client.get(f"{ADMIN}/payments?format=csv", headers=auth_headers(admin)))
    written = sorted(r["course_title"] for r in rows)
    assert written == sorted(['\'=HYPERLINK("http://evil.example","click")', "'+1 trick",
                              "'@SUM(A1:A2)", "Plain Title"])


def test_payment_csv_streams_every_row_of_a_large_export(app, client, auth_headers, make_user):
    admin = make_user("admin")
    student = make_user("student")
    teacher = make_user("instructor")
    course = add_course(app, teacher, "Bulk Course", status="published", lessons=1)
    start = datetime(2025, 3, 1, tzinfo=UTC)
    with app.app_context():
        db.session.execute(insert(Payment), [
            {"user_id": student, "course_id": course, "gateway": "razorpay",
             "amount": Decimal("1.00") + n % 100, "currency": "USD",
             "status": "completed" if n % 3 else "failed",
             "created_at": start + timedelta(minutes=n), "updated_at": start,
             "gateway_order_id": f"bulk_{n}"}
            for n in range(2500)])
        db.session.commit()
        expected_ids = set(db.session.scalars(select(Payment.id)))
    assert len(expected_ids) == 2500

    response = client.get(f"{ADMIN}/payments?format=csv", headers=auth_headers(admin),
                          buffered=False)
    assert response.status_code == 200 and response.is_streamed
    chunks = [chunk for chunk in response.response]
    response.close()
    assert len(chunks) > 2  # written and sent in pieces, not built in memory at once
    body = b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks).decode()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert len(rows) == 2500
    assert {int(r["id"]) for r in rows} == expected_ids
    assert sum(r["status"] == "failed" for r in rows) == 834


# --- 7. audit log -----------------------------------------------------------------------------

def test_audit_log_newest_first_with_filters(app, client, auth_headers, make_user):
    admin = make_user("admin")
    student = make_user("student")
    teacher = make_user("instructor")
    course = add_course(app, teacher, "Audited", lessons=1)
    headers = auth_headers(admin)

    ok(client.put(f"{ADMIN}/users/{student}", headers=headers, json={"city": "Lima"}))
    ok(client.put(f"{ADMIN}/courses/{course}/status", headers=headers,
                  json={"status": "published"}))
    ok(client.delete(f"{ADMIN}/users/{student}", headers=headers))

    body = ok(client.get(f"{ADMIN}/audit-log", headers=headers))
    entries = body["entries"]
    assert [e["action"] for e in entries] == ["user.deactivate", "course.status", "user.update"]
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert body["pagination"]["total"] == 3
    for entry in entries:
        assert entry["actor_id"] == admin and entry["created_at"]
        assert set(entry["details"]) >= {"before", "after"}
    assert entries[2]["details"] == {"before": {"city": None}, "after": {"city": "Lima"}}
    assert entries[1]["target_type"] == "course" and entries[1]["target_id"] == course

    def actions(query: str) -> list[str]:
        return [e["action"] for e in ok(client.get(f"{ADMIN}/audit-log{query}",
                                                   headers=headers))["entries"]]

    assert actions("?action=user.update") == ["user.update"]
    assert actions("?action=course.status") == ["course.status"]
    assert actions("?target_type=user") == ["user.deactivate", "user.update"]
    assert actions("?target_type=course") == ["course.status"]
    assert actions(f"?target_type=user&target_id={student}") == ["user.deactivate",
                                                                 "user.update"]
    assert actions(f"?actor_id={admin}&action=course.status") == ["course.status"]
    assert actions("?action=certificate.revoke") == []
    assert actions("?per_page=1&page=2") == ["course.status"]
    assert count(app, AuditLog) == 3
