"""No 5xx from any input: each input that once reached a 500 (NUL in text, query and path values,
control characters in one-line text, JSON nested 1,000 deep, numbers and dates beyond what the
columns and Python hold, live sessions in year 1 or 9999 or in the past, derived titles longer
than their column, a bare CR in a title that reaches a mail header) now answers 4xx in the one
error shape, or is cut or folded where the server derives the text itself. The walk over every
operation of the API document is tests/test_hostile_walk.py (marked `fuzz`)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from models import Course, LiveSession, Notification, User, db
from services import live_session_service, notification_service
from services.email_service import Outgoing
from tests.support.assertions import count, error, fetch, ok

API = "/api/v1"


@pytest.fixture
def people(make_user, auth_headers):
    return {role: auth_headers(make_user(role)) for role in ("student", "instructor", "admin")}


def _future(days: int = 1) -> str:
    return (datetime.now(timezone.utc) + timedelta(days=days)).isoformat()


@pytest.fixture
def course(client, people):
    """A published course of the instructor's, with the student enrolled."""
    body = ok(client.post(f"{API}/courses", json={"title": "Hostile", "price": 0},
                          headers=people["instructor"]), 201)
    course_id = body["course"]["id"]
    module = ok(client.post(f"{API}/courses/{course_id}/modules", json={"title": "Basics"},
                            headers=people["instructor"]), 201)["module"]
    ok(client.post(f"{API}/lessons/create-lessons/{module['id']}",
                   json={"title": "Intro", "content": "Hello"}, headers=people["instructor"]),
       201)
    ok(client.put(f"{API}/courses/{course_id}", json={"status": "published"},
                  headers=people["instructor"]))
    ok(client.post(f"{API}/enrollments", json={"course_id": course_id},
                   headers=people["student"]), 201)
    return course_id


def _session(course_id: int, **fields) -> dict:
    return {"course_id": course_id, "title": "Office hours", "start_time": _future(),
            "duration_minutes": 60, **fields}


# --- text ---------------------------------------------------------------------------------------

def test_nul_in_a_login_email_is_422(client, make_user):
    make_user(email="nul@example.com")
    body = error(client.post(f"{API}/auth/login",
                             json={"email": "nul@example.com\x00", "password": "Passw0rd!"}),
                 422, "validation_error")
    assert "email" in body["details"]


@pytest.mark.parametrize("path", [f"{API}/courses?search=a%00b",
                                  f"{API}/public/get-courses?search=a%00b",
                                  f"{API}/courses?language=en%01"])
def test_nul_or_control_characters_in_a_query_value_are_422(client, path):
    body = error(client.get(path), 422, "validation_error")
    assert set(body["details"]) <= {"search", "language"}


def test_nul_in_a_query_value_no_model_reads_is_422(client):
    body = error(client.get(f"{API}/health?probe=%00"), 422, "validation_error")
    assert body["details"] == {"probe": "Text must not contain NUL characters"}


@pytest.mark.parametrize("method,path", [
    ("GET", "/verify/AIFA%00x"), ("GET", f"{API}/certificates/verify/AIFA%00x"),
    ("GET", f"{API}/certificates/verify/AIFA%0Dx"),
    ("DELETE", f"{API}/admin/blocked-ips/1.2.3.4%00"),
    ("GET", f"{API}/courses/99999999999999999999"), ("GET", f"{API}/courses/2147483648")])
def test_a_path_segment_with_nul_or_beyond_an_integer_names_nothing(client, people, method,
                                                                     path):
    response = client.open(path, method=method, headers=people["admin"])
    assert response.status_code == 404, response.get_data(as_text=True)
    body = response.get_json()
    if path.startswith("/verify/"):  # the public page: its own HTML "not found"
        assert response.mimetype == "text/html" and "\x00" not in response.get_data(as_text=True)
    elif "/certificates/verify/" in path:  # the shape this route declares for its 404
        assert body["valid"] is False and body["code"] == "certificate_not_found", body
    else:
        assert body["code"] == "not_found" and set(body) <= {"error", "code", "details"}, body


def test_nul_in_a_course_title_is_422_and_nothing_is_stored(client, people):
    body = error(client.post(f"{API}/courses", json={"title": "a\x00b", "price": 0},
                             headers=people["instructor"]), 422, "validation_error")
    assert body["details"] == {"title": "Text must not contain NUL characters"}
    assert count(client.application, Course) == 0


@pytest.mark.parametrize("field,value", [("headline", "a\rb"), ("headline", "a\nb"),
                                         ("city", "x\x1b[31m"), ("bio", "a\x00b"),
                                         ("bio", "bell\x07")])
def test_control_characters_in_a_profile_field_are_422(client, people, field, value):
    body = error(client.put(f"{API}/auth/profile", json={field: value},
                            headers=people["student"]), 422, "validation_error")
    assert field in body["details"]


def test_long_text_keeps_its_line_breaks_and_tabs(client, people, app):
    bio = "First line\r\nsecond line\n\tindented"
    user = ok(client.put(f"{API}/auth/profile", json={"bio": bio},
                         headers=people["student"]))["user"]
    assert user["bio"] == bio
    assert fetch(app, User, User.role == "student").bio == bio


def test_nul_in_an_admin_search_is_422(client, people):
    body = error(client.get(f"{API}/admin/users?search=a%00", headers=people["admin"]), 422)
    assert "search" in body["details"]


def test_nul_in_a_json_object_key_or_nested_value_is_422(client, people, app):
    body = error(client.post(f"{API}/courses",
                             json={"title": "T", "learning_outcomes": ["ok", "a\x00"]},
                             headers=people["instructor"]), 422, "validation_error")
    assert body["details"] == {"learning_outcomes.1": "Text must not contain NUL characters"}
    body = error(client.post(f"{API}/courses", json={"title": "T", "unknown\x00": {"x": 1}},
                             headers=people["instructor"]), 422, "validation_error")
    assert body["details"] == {"unknown\\u0000": "Keys must not contain NUL characters"}
    assert count(app, Course) == 0


def test_an_escaped_backslash_before_u0000_is_text_not_nul(client, people):
    title = "C:\\u0000 path"
    course = ok(client.post(f"{API}/courses", json={"title": title},
                            headers=people["instructor"]), 201)["course"]
    assert course["title"] == title


# --- JSON ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("deep", ["[" * 1000 + "]" * 1000,
                                  '{"a":' * 1000 + "1" + "}" * 1000,
                                  "[" * 100_000])
def test_json_nested_deeper_than_the_limit_is_400(client, deep):
    body = error(client.post(f"{API}/auth/login", data=deep, content_type="application/json"),
                 400, "json_too_deep")
    assert "32" in body["error"]


def test_json_nested_to_the_limit_is_read(client):
    nested = {"email": "x@example.com", "password": "Passw0rd!"}
    # 31 levels below the body itself: an unknown field, ignored
    value: object = 1
    for _ in range(31):
        value = [value]
    nested["extra"] = value
    error(client.post(f"{API}/auth/login", json=nested), 401)


def test_brackets_inside_strings_do_not_count(client):
    error(client.post(f"{API}/auth/login",
                      json={"email": "x@example.com", "password": "[" * 5000}), 422)


# --- numbers and dates --------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["min_price=1e999999", "max_price=-1e999999",
                                   "min_price=Infinity", "min_price=NaN",
                                   "min_price=100000000", "min_price=1e-999999",
                                   "category_id=99999999999999"])
def test_numbers_beyond_their_column_are_422(client, query):
    body = error(client.get(f"{API}/courses?{query}"), 422, "validation_error")
    assert set(body["details"]) <= {"min_price", "max_price", "category_id"}


def test_an_id_beyond_an_integer_column_in_a_body_is_422(client, people):
    body = error(client.post(f"{API}/enrollments", json={"course_id": 10**20},
                             headers=people["student"]), 422, "validation_error")
    assert "course_id" in body["details"]


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01", "1899-12-31"])
def test_dates_outside_the_supported_years_are_422(client, people, day):
    body = error(client.get(f"{API}/admin/payments?date_to={day}", headers=people["admin"]),
                 422, "validation_error")
    assert "date_to" in body["details"]
    body = error(client.put(f"{API}/auth/profile", json={"date_of_birth": day},
                            headers=people["student"]), 422, "validation_error")
    assert "date_of_birth" in body["details"]


def test_the_edges_of_the_supported_years_are_accepted(client, people):
    ok(client.get(f"{API}/admin/payments?date_from=1900-01-01&date_to=2200-12-31",
                  headers=people["admin"]))


# --- live sessions ------------------------------------------------------------------------------

@pytest.mark.parametrize("start", ["9999-12-31T23:00:00+00:00", "0001-01-01T00:10:00+00:00"])
def test_a_live_session_in_year_1_or_9999_is_422(client, people, course, start):
    body = error(client.post(f"{API}/live-sessions", json=_session(course, start_time=start),
                             headers=people["instructor"]), 422, "validation_error")
    assert "start_time" in body["details"]
    assert count(client.application, LiveSession) == 0


def test_a_live_session_that_would_already_have_ended_is_422(client, people, course):
    past = (datetime.now(timezone.utc) - timedelta(minutes=61)).isoformat()
    body = error(client.post(f"{API}/live-sessions", json=_session(course, start_time=past),
                             headers=people["instructor"]), 422, "validation_error")
    assert "start_time" in body["details"]
    assert count(client.application, LiveSession) == 0


def test_a_live_session_cannot_be_moved_into_the_past(client, people, course, app):
    live = ok(client.post(f"{API}/live-sessions", json=_session(course),
                          headers=people["instructor"]), 201)["live_session"]
    past = (datetime.now(timezone.utc) - timedelta(days=2)).isoformat()
    error(client.put(f"{API}/live-sessions/{live['id']}", json={"start_time": past},
                     headers=people["instructor"]), 422, "validation_error")
    row = fetch(app, LiveSession, LiveSession.id == live["id"])
    assert row.start_time.replace(tzinfo=timezone.utc) > datetime.now(timezone.utc)


def test_a_session_under_way_may_be_entered(client, people, course):
    started = (datetime.now(timezone.utc) - timedelta(minutes=10)).isoformat()
    ok(client.post(f"{API}/live-sessions", json=_session(course, start_time=started),
                   headers=people["instructor"]), 201)


def test_a_200_character_title_gives_a_notification_title_cut_to_its_column(
        client, people, course, app):
    title = "x" * 200
    live = ok(client.post(f"{API}/live-sessions", json=_session(course, title=title),
                          headers=people["instructor"]), 201)["live_session"]
    assert live["title"] == title
    notice = fetch(app, Notification, Notification.kind == "live_session")
    assert len(notice.title) == 200 and notice.title.startswith("New live session: xxx")
    assert notice.title.endswith("\u2026")
    assert title in notice.message  # the message (Text) keeps it whole


@pytest.mark.parametrize("title", ["a\rb", "a\nb", "a\r\nBcc: x@example.com"])
def test_a_line_break_in_a_session_title_is_422(client, people, course, title):
    body = error(client.post(f"{API}/live-sessions", json=_session(course, title=title),
                             headers=people["instructor"]), 422, "validation_error")
    assert "title" in body["details"]


def test_a_line_break_in_a_meeting_url_is_422(client, people, course):
    url = "https://zoom.us/j/1\r\nATTENDEE:mailto:x@example.com"
    body = error(client.post(f"{API}/live-sessions", json=_session(course, meeting_url=url),
                             headers=people["instructor"]), 422, "validation_error")
    assert "meeting_url" in body["details"]


def test_a_stored_title_with_a_bare_cr_still_gives_one_header_and_one_calendar_line(app):
    """Rows stored before these rules: the subject is one line, the calendar text escaped."""
    with app.app_context():
        subject, _, _ = notification_service._render("Live: a\rb\nc", "m", None, "Ada", "LMS")
        assert "\r" not in subject and "\n" not in subject
        assert Outgoing("x@example.com", "a\rb", "t").subject == "a b"
        live = LiveSession(id=7, title="a\rb\x07c", description="one\rtwo\r\nthree",
                           start_time=datetime(2030, 1, 1, tzinfo=timezone.utc),
                           end_time=datetime(2030, 1, 1, 1, tzinfo=timezone.utc),
                           duration_minutes=60)
        text = live_session_service.ics(live, Course(title="C"))
    lines = text.replace("\r\n ", "").split("\r\n")
    assert "SUMMARY:a\\nbc" in lines
    assert "DESCRIPTION:C. one\\ntwo\\nthree" in lines
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert all(len(line.encode()) <= 75 for line in text.split("\r\n"))


def test_a_long_derived_title_is_cut_whatever_the_caller(app, make_user):
    user_id = make_user()
    with app.app_context():
        notification_service.notify(notification_service.recipients_query(user_ids=[user_id]),
                                    kind="system", title="t" * 500, message="m")
        db.session.commit()
        assert len(db.session.scalar(db.select(Notification.title))) == 200


def test_a_form_part_whose_name_breaks_its_header_is_refused(client, people):
    """A part named "\\n" reaches the form without a name (found by the schema fuzzing)."""
    body = (b"--b\r\nContent-Disposition: form-data; name=\"\n\"\r\n\r\nx\r\n--b--\r\n")
    response = client.post(f"{API}/auth/profile/picture", data=body, headers=people["student"],
                           content_type="multipart/form-data; boundary=b")
    assert 400 <= response.status_code < 500, response.get_data(as_text=True)
    assert {"error", "code"} <= set(response.get_json())
