"""Building a learner's world through the HTTP API, shared by the enrollment, progress and
hot-read tests: actors (a user with its auth headers) as fixtures or in any app, a course built
by its instructor (modules, lessons, published), enrolling and completing lessons, and the rows
whose issues have no API of their own (payments, certificates) written through the ORM."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from models import Certificate, Notification, Payment, User, db
from tests.support.assertions import count, ok

API = "/api/v1"


# --- helpers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Actor:
    id: int
    headers: dict


@dataclass
class Built:
    """A course built through the API: its id, module ids and lesson ids in course order."""

    id: int
    module_ids: list[int] = field(default_factory=list)
    lesson_ids: list[int] = field(default_factory=list)


def build_course(client, owner: Actor, title: str, *, modules=(("L1", "L2", "L3"),),
                 price=None, currency=None, publish: bool = True) -> Built:
    body = {"title": title}
    if price is not None:
        body["price"] = price
    if currency is not None:
        body["currency"] = currency
    course = ok(client.post(f"{API}/courses", json=body, headers=owner.headers), 201)["course"]
    built = Built(course["id"])
    for m, lessons in enumerate(modules):
        module = ok(client.post(f"{API}/courses/{built.id}/modules",
                                json={"title": f"{title} module {m + 1}"},
                                headers=owner.headers), 201)["module"]
        built.module_ids.append(module["id"])
        for lesson_title in lessons:
            built.lesson_ids.append(add_lesson(client, owner, module["id"], lesson_title))
    if publish:
        set_status(client, owner, built.id, "published")
    return built


def add_lesson(client, owner: Actor, module_id: int, title: str, **fields) -> int:
    return ok(client.post(f"{API}/lessons/create-lessons/{module_id}",
                          json={"title": title, "content": f"Body of {title}", **fields},
                          headers=owner.headers), 201)["lesson"]["id"]


def set_status(client, owner: Actor, course_id: int, status: str) -> None:
    course = ok(client.put(f"{API}/courses/{course_id}", json={"status": status},
                           headers=owner.headers))["course"]
    assert course["status"] == status


def enroll(client, who: Actor, course_id: int, status: int = 201) -> dict:
    body = ok(client.post(f"{API}/enrollments", json={"course_id": course_id},
                          headers=who.headers), status)
    assert body["message"] == ("Enrolled" if status == 201 else "Already enrolled")
    return body["enrollment"]


def complete(client, who: Actor, enrollment_id: int, lesson_id: int, json=None,
             status: int = 200) -> dict:
    kwargs = {"json": json} if json is not None else {}
    return ok(client.post(f"{API}/enrollments/{enrollment_id}/lessons/{lesson_id}/complete",
                          headers=who.headers, **kwargs), status)


def add_payment(app, user_id: int, course_id: int, *, amount: str = "10.00",
                currency: str = "USD", status: str = "completed",
                refunded_amount: str = "0.00") -> int:
    with app.app_context():
        payment = Payment(user_id=user_id, course_id=course_id, gateway="stripe",
                          amount=Decimal(amount), currency=currency, status=status,
                          refunded_amount=Decimal(refunded_amount),
                          paid_at=datetime.now(timezone.utc) if status != "created" else None)
        db.session.add(payment)
        db.session.commit()
        return payment.id


def add_certificate(app, user_id: int, course_id: int, enrollment_id: int | None = None) -> int:
    with app.app_context():
        user = db.session.get(User, user_id)
        certificate = Certificate(
            certificate_number=f"AIFA-{course_id}-{user_id}-{uuid.uuid4().hex.upper()[:8]}",
            user_id=user_id, course_id=course_id, enrollment_id=enrollment_id,
            holder_name=user.full_name, course_title="Certified course",
            completion_date=date.today(), status="valid")
        db.session.add(certificate)
        db.session.commit()
        return certificate.id


def completion_notifications(app, user_id: int) -> int:
    return count(app, Notification, Notification.user_id == user_id,
                 Notification.kind == "course_update", Notification.title == "Course completed")


@pytest.fixture
def actor(make_user, auth_headers):
    def _actor(role: str = "student", **fields) -> Actor:
        user_id = make_user(role, **fields)
        return Actor(user_id, auth_headers(user_id))

    return _actor


@pytest.fixture
def instructor(actor):
    return actor("instructor")


@pytest.fixture
def student(actor):
    return actor("student")


@pytest.fixture
def course(client, instructor):
    """A free published course with 3 lessons in one module."""
    return build_course(client, instructor, "Free Course")


def actor_in(app, role: str, n: int, prefix: str = "race") -> Actor:
    """A user of `app` (which may not be the session app) with its auth headers, its e-mail
    `{prefix}-{role}{n}@example.com`."""
    from flask_jwt_extended import create_access_token

    with app.app_context():
        user = User(email=f"{prefix}-{role}{n}@example.com", first_name=role.capitalize(),
                    last_name=f"Racer{n}", role=role, is_active=True, is_email_verified=True)
        user.set_password("Passw0rd!")
        db.session.add(user)
        db.session.commit()
        return Actor(user.id, {"Authorization": f"Bearer {create_access_token(user)}"})
