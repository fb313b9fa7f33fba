"""Model-level rules: aware UTC times, the database's unique / foreign-key / CHECK constraints,
explicit serialization, the shared helpers, and the password hashing cost."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from flask import has_app_context
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, StatementError

from models import (
    Certificate,
    Course,
    CoursePrerequisite,
    Enrollment,
    Lesson,
    LessonProgress,
    LiveSession,
    Module,
    User,
    WebhookEvent,
    db,
)
from utils.helpers import iso, money, pagination_meta, to_minor_units

ROOT = Path(__file__).resolve().parent.parent
IST = timezone(timedelta(hours=5, minutes=30))


def _count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def _add(obj) -> int:
    """Commit one row inside the current app context and return its id."""
    db.session.add(obj)
    db.session.commit()
    return obj.id


def _course(app, instructor_id: int, slug: str = "course", **fields) -> int:
    with app.app_context():
        return _add(Course(instructor_id=instructor_id, title=slug.title(), slug=slug, **fields))


def _lesson(app, course_id: int) -> int:
    with app.app_context():
        module_id = _add(Module(course_id=course_id, title="Module"))
        return _add(Lesson(module_id=module_id, title="Lesson"))


def _enrollment(app, user_id: int, course_id: int) -> int:
    with app.app_context():
        return _add(Enrollment(user_id=user_id, course_id=course_id))


def _assert_refused(obj) -> None:
    """Inside an app context: committing `obj` raises IntegrityError; the session recovers."""
    db.session.add(obj)
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()


# ---------------------------------------------------------------------------------------------
# UTCDateTime
# ---------------------------------------------------------------------------------------------


def test_aware_datetime_comes_back_aware_utc_same_instant(app, make_user):
    user_id = make_user()
    given = datetime(2024, 3, 10, 12, 0, 5, tzinfo=IST)
    with app.app_context():
        db.session.get(User, user_id).last_login_at = given
        db.session.commit()

    with app.app_context():
        stored = db.session.get(User, user_id).last_login_at
        assert stored.tzinfo is not None
        assert stored.utcoffset() == timedelta(0)
        assert stored == given
        assert (stored.year, stored.month, stored.day) == (2024, 3, 10)
        assert (stored.hour, stored.minute, stored.second) == (6, 30, 5)


def test_naive_datetime_is_refused_and_nothing_is_written(app):
    with app.app_context():
        db.session.add(User(email="naive@example.com", last_login_at=datetime(2024, 3, 10, 12)))
        with pytest.raises(StatementError) as excinfo:
            db.session.commit()
        assert isinstance(excinfo.value.orig, ValueError)
        assert "naive" in str(excinfo.value.orig)
        db.session.rollback()

    with app.app_context():
        assert _count(User) == 0


# ---------------------------------------------------------------------------------------------
# Unique, foreign-key and CHECK constraints
# ---------------------------------------------------------------------------------------------


def test_enrollment_is_unique_per_user_and_course(app, make_user):
    user_id = make_user()
    course_id = _course(app, make_user(role="instructor"))
    _enrollment(app, user_id, course_id)

    with app.app_context():
        _assert_refused(Enrollment(user_id=user_id, course_id=course_id))
        assert _count(Enrollment) == 1


def test_certificate_is_unique_per_user_and_course(app, make_user):
    user_id = make_user()
    course_id = _course(app, make_user(role="instructor"))

    def certificate(number: str) -> Certificate:
        return Certificate(certificate_number=number, user_id=user_id, course_id=course_id,
                           holder_name="Student Number1", course_title="Course",
                           completion_date=date(2024, 3, 10))

    with app.app_context():
        _add(certificate("CERT-1"))
        _assert_refused(certificate("CERT-2"))
        assert _count(Certificate) == 1


def test_webhook_event_is_unique_per_gateway_and_event_id(app):
    def event(gateway: str) -> WebhookEvent:
        return WebhookEvent(gateway=gateway, event_id="evt_1", event_type="payment", payload={})

    with app.app_context():
        _add(event("stripe"))
        _add(event("razorpay"))  # the same id from another gateway is a different event
        _assert_refused(event("stripe"))
        assert _count(WebhookEvent) == 2


def test_lesson_progress_is_unique_per_enrollment_and_lesson(app, make_user):
    user_id = make_user()
    course_id = _course(app, make_user(role="instructor"))
    lesson_id = _lesson(app, course_id)
    enrollment_id = _enrollment(app, user_id, course_id)

    with app.app_context():
        _add(LessonProgress(enrollment_id=enrollment_id, lesson_id=lesson_id))
        _assert_refused(LessonProgress(enrollment_id=enrollment_id, lesson_id=lesson_id))
        assert _count(LessonProgress) == 1


def test_user_email_is_unique(app, make_user):
    make_user(email="same@example.com")

    with app.app_context():
        _assert_refused(User(email="same@example.com", first_name="Other"))
        assert _count(User) == 1


def test_foreign_keys_are_enforced(app, make_user):
    course_id = _course(app, make_user(role="instructor"))

    with app.app_context():
        _assert_refused(Enrollment(user_id=987654, course_id=course_id))
        assert _count(Enrollment) == 0


@pytest.mark.parametrize("fields", [{"status": "bogus"}, {"price": Decimal("-1.00")}],
                         ids=["bogus-status", "negative-price"])
def test_course_check_constraints(app, make_user, fields):
    instructor_id = make_user(role="instructor")

    with app.app_context():
        _assert_refused(Course(instructor_id=instructor_id, title="Bad", slug="bad", **fields))
        assert _count(Course) == 0


def test_course_cannot_be_its_own_prerequisite(app, make_user):
    instructor_id = make_user(role="instructor")
    course_id = _course(app, instructor_id, "first")
    other_id = _course(app, instructor_id, "second")

    with app.app_context():
        db.session.add(CoursePrerequisite(course_id=course_id, prerequisite_course_id=other_id))
        db.session.commit()
        _assert_refused(CoursePrerequisite(course_id=course_id, prerequisite_course_id=course_id))
        assert _count(CoursePrerequisite) == 1


# ---------------------------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------------------------


def test_user_to_dict_hides_private_fields(app, make_user):
    user_id = make_user(email="private@example.com", phone_number="+15550001111")

    with app.app_context():
        user = db.session.get(User, user_id)
        public = user.to_dict()
        private = user.to_dict(private=True)

    assert public["id"] == user_id
    assert {"password_hash", "email", "phone_number"}.isdisjoint(public)
    assert private["email"] == "private@example.com"
    assert private["phone_number"] == "+15550001111"
    assert private["has_password"] is True
    assert "password_hash" not in private
    assert not any(str(value).startswith(("pbkdf2:", "$argon2")) for value in private.values())


@pytest.mark.parametrize("price, expected", [(Decimal("49.9"), 49.9), (Decimal("10"), 10.0)])
def test_course_to_dict_money_and_time(app, make_user, price, expected):
    course_id = _course(app, make_user(role="instructor"), price=price)

    with app.app_context():
        data = db.session.get(Course, course_id).to_dict()

    assert isinstance(data["price"], float)
    assert data["price"] == expected
    assert isinstance(data["created_at"], str)
    assert data["created_at"].endswith("+00:00")
    assert datetime.fromisoformat(data["created_at"]).utcoffset() == timedelta(0)


def test_live_session_hides_meeting_details_by_default(app, make_user):
    instructor_id = make_user(role="instructor")
    course_id = _course(app, instructor_id)
    with app.app_context():
        session_id = _add(LiveSession(
            course_id=course_id, instructor_id=instructor_id, title="Office hours",
            start_time=datetime(2030, 1, 1, 9, tzinfo=timezone.utc), duration_minutes=60,
            meeting_url="https://zoom.example.com/j/1", meeting_id="1",
            meeting_password="hunter2",
        ))

    with app.app_context():
        live = db.session.get(LiveSession, session_id)
        public = live.to_dict()
        joinable = live.to_dict(with_meeting=True)

    assert public["start_time"] == "2030-01-01T09:00:00+00:00"
    assert {"meeting_url", "meeting_id", "meeting_password"}.isdisjoint(public)
    assert "hunter2" not in str(public)
    assert joinable["meeting_url"] == "https://zoom.example.com/j/1"
    assert joinable["meeting_password"] == "hunter2"


def test_lesson_outline_hides_content_unless_preview(app, make_user):
    course_id = _course(app, make_user(role="instructor"))
    with app.app_context():
        module_id = _add(Module(course_id=course_id, title="Module"))
        locked_id = _add(Lesson(module_id=module_id, title="Locked", content="secret notes",
                                video_url="https://videos.example.com/locked.mp4"))
        preview_id = _add(Lesson(module_id=module_id, title="Preview", content="open notes",
                                 video_url="https://videos.example.com/open.mp4",
                                 is_preview=True, position=1))

    with app.app_context():
        locked = db.session.get(Lesson, locked_id)
        preview = db.session.get(Lesson, preview_id)
        outline_locked = locked.to_dict(full_content=False)
        outline_preview = preview.to_dict(full_content=False)
        full_locked = locked.to_dict()

    assert outline_locked["is_preview"] is False
    assert outline_locked["content"] is None and outline_locked["video_url"] is None
    assert outline_locked["title"] == "Locked"
    assert outline_preview["content"] == "open notes"
    assert outline_preview["video_url"] == "https://videos.example.com/open.mp4"
    assert full_locked["content"] == "secret notes"
    assert full_locked["video_url"] == "https://videos.example.com/locked.mp4"


# ---------------------------------------------------------------------------------------------
# utils.helpers
# ---------------------------------------------------------------------------------------------


def test_money_is_a_two_decimal_float():
    assert money(None) is None
    assert money(Decimal("49.9")) == 49.9
    assert money("10") == 10.0 and isinstance(money("10"), float)
    assert money(Decimal("0.005")) == 0.01
    assert money(Decimal("2.675")) == 2.68  # Decimal half-up, not float's 2.67


def test_iso_is_utc_with_offset_and_treats_naive_as_utc():
    assert iso(None) is None
    assert iso(datetime(2024, 3, 10, 12, 0, 5)) == "2024-03-10T12:00:05+00:00"
    assert iso(datetime(2024, 3, 10, 12, 0, 5, tzinfo=IST)) == "2024-03-10T06:30:05+00:00"


@pytest.mark.parametrize("amount, currency, expected", [
    (Decimal("49.99"), "USD", 4999),
    ("1000", "JPY", 1000),
    ("1.234", "KWD", 1234),
    ("0.005", "USD", 1),
    ("0.29", "usd", 29),
])
def test_to_minor_units(amount, currency, expected):
    result = to_minor_units(amount, currency)
    assert result == expected
    assert isinstance(result, int)


def test_pagination_meta():
    assert pagination_meta(2, 20, 45) == {
        "page": 2, "per_page": 20, "total": 45, "pages": 3, "has_next": True, "has_prev": True,
    }
    last = pagination_meta(3, 20, 45)
    assert last["has_next"] is False and last["has_prev"] is True
    empty = pagination_meta(1, 20, 0)
    assert empty["pages"] == 0
    assert empty["has_next"] is False and empty["has_prev"] is False


# ---------------------------------------------------------------------------------------------
# Password hashing cost
# ---------------------------------------------------------------------------------------------


def test_set_password_uses_the_configured_scheme(app):
    assert app.config["PASSWORD_HASH_SCHEME"] == "argon2id"
    with app.app_context():
        user = User(email="hash@example.com")
        user.set_password("Passw0rd!")

        assert user.password_hash.startswith("$argon2id$v=19$m=64,t=1,p=1$")
        assert user.check_password("Passw0rd!")
        assert not user.check_password("Passw0rd?")


def test_set_password_outside_an_app_context_uses_owasp_argon2id():
    assert not has_app_context()
    user = User(email="hash@example.com")
    user.set_password("Passw0rd!")

    assert user.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert user.check_password("Passw0rd!")


def test_config_defaults_are_owasp_argon2id_and_pbkdf2_600000():
    # config reads the environment at import: look at it from a clean process.
    names = ("PASSWORD_HASH_SCHEME", "PASSWORD_HASH_METHOD", "ARGON2_MEMORY_KIB",
             "ARGON2_TIME_COST", "ARGON2_PARALLELISM")
    env = {k: v for k, v in os.environ.items() if k not in names}
    result = subprocess.run(
        [sys.executable, "-c",
         "import config\n"
         "for c in (config.Config, config.ProductionConfig):\n"
         "    print(c.PASSWORD_HASH_SCHEME, c.PASSWORD_HASH_METHOD, c.ARGON2_MEMORY_KIB, "
         "c.ARGON2_TIME_COST, c.ARGON2_PARALLELISM)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["argon2id pbkdf2:sha256:600000 19456 2 1"] * 2
