"""Stripe payments end to end through the HTTP API and the REAL `stripe` SDK, against localstripe
(tests/support/stripe_standin.py: localstripe's own aiohttp app with its real PaymentIntents and
Refunds, plus test-only Checkout Session routes) on 127.0.0.1.

Checkout (price, metadata, idempotency key, reuse, refusals, missing keys, gateway down); signed
webhooks (settlement exactly once, replays, tampered or expired signatures, wrong amounts and
currencies, unknown sessions, delayed payment methods, expiry); refund requests and their
approval through a real Stripe Refund (and a gateway outage that must change nothing);
charge.refunded; history, visibility and the PDF invoice; the reconciler; and, on PostgreSQL,
one event delivered ten times at once, five events for one session at once, a double-clicked
checkout and simultaneous approvals of one refund request.

Where the application is wrong the test asserts the right behaviour and is marked
xfail(strict=True) with "BUG: file:line ..." (none are open).

The app under test is our own `create_app("testing", overrides=...)` with STRIPE_* pointing at the
stand-in, on the session app's database (an in-memory SQLite database is per engine, so there it
gets its own schema, emptied after every test). Users, courses, enrollments and certificates are
set up through the ORM; everything about payments goes through the API.
"""
from __future__ import annotations

import io
import itertools
import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import pytest
import stripe
from flask_jwt_extended import create_access_token
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.engine import make_url

from app import create_app
from config import normalise_database_url
from models import (
    AuditLog,
    Certificate,
    Course,
    CoursePrerequisite,
    Enrollment,
    InvoiceCounter,
    Notification,
    Payment,
    RefundRequest,
    User,
    WebhookEvent,
    db,
)
from tests.conftest import postgres_url, require_service
from tests.support.assertions import count, error, fetch, ok
from tests.support.stripe_standin import signature_header, stripe_event, stripe_standin
from utils.helpers import utcnow

API = "/api/v1"
PAY = f"{API}/payments"
HOOK = f"{PAY}/stripe/webhook"
WEBHOOK_SECRET = "whsec_test"
PRICE = Decimal("49.99")
TITLE = "Applied Payments 101"

_serial = itertools.count(1)


# --- apps and the stand-in ----------------------------------------------------------------------

def stripe_overrides(app, standin, **extra) -> dict:
    return {
        "SQLALCHEMY_DATABASE_URI": app.config["SQLALCHEMY_DATABASE_URI"],
        "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"],
        "STRIPE_SECRET_KEY": "sk_test_123",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "STRIPE_API_BASE": standin.url,
        "RATE_LIMIT_PAYMENT_CREATE": "1000 per minute",
        **extra,
    }


@pytest.fixture(scope="module")
def standin():
    server = stripe_standin()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stripe_app(app, standin):
    """Our app with Stripe configured, on the session app's database."""
    pay = create_app("testing", overrides=stripe_overrides(app, standin))
    pay.config["OWN_MEMORY_DB"] = app.config["SQLALCHEMY_DATABASE_URI"] == "sqlite://"
    with pay.app_context():
        if pay.config["OWN_MEMORY_DB"]:
            db.create_all()
    yield pay
    with pay.app_context():
        db.session.remove()
        if pay.config["OWN_MEMORY_DB"]:
            db.drop_all()
        db.engine.dispose()


def empty_database(app) -> None:
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as conn:
            for table in reversed(db.metadata.sorted_tables):
                conn.execute(table.delete())


@pytest.fixture
def pay_app(stripe_app, standin):
    standin.forget_idempotency_keys()  # the database is empty again: payment ids restart
    yield stripe_app
    if stripe_app.config["OWN_MEMORY_DB"]:  # else conftest's clean_state empties it
        empty_database(stripe_app)


@pytest.fixture
def client(pay_app):
    return pay_app.test_client()


@contextmanager
def configured(app, **values):
    """Run with some config values changed (read per request), then restore them."""
    saved = {key: app.config.get(key) for key in values}
    app.config.update(values)
    try:
        yield app
    finally:
        app.config.update(saved)


# --- set-up through the ORM ---------------------------------------------------------------------

@dataclass(frozen=True)
class Actor:
    id: int
    email: str
    headers: dict


def make_actor(app, role: str = "student") -> Actor:
    n = next(_serial)
    with app.app_context():
        user = User(email=f"pay-{role}{n}@example.com", first_name=role.capitalize(),
                    last_name=f"Payer{n}", role=role, is_active=True, is_email_verified=True)
        user.set_password("Passw0rd!")
        db.session.add(user)
        db.session.commit()
        token = create_access_token(user)
        return Actor(user.id, user.email, {"Authorization": f"Bearer {token}"})


def make_course(app, instructor_id: int, *, title: str | None = None, price: str = "49.99",
                currency: str = "USD", status: str = "published",
                prerequisite_ids: tuple[int, ...] = ()) -> int:
    n = next(_serial)
    with app.app_context():
        course = Course(title=title or f"Course {n}", slug=f"pay-course-{n}-{uuid.uuid4().hex[:6]}",
                        price=Decimal(price), currency=currency, status=status,
                        instructor_id=instructor_id,
                        published_at=utcnow() if status == "published" else None)
        db.session.add(course)
        db.session.flush()
        for prerequisite in prerequisite_ids:
            db.session.add(CoursePrerequisite(course_id=course.id,
                                              prerequisite_course_id=prerequisite))
        db.session.commit()
        return course.id


def make_certificate(app, user_id: int, course_id: int) -> int:
    with app.app_context():
        enrollment_id = db.session.scalar(select(Enrollment.id).where(
            Enrollment.user_id == user_id, Enrollment.course_id == course_id))
        certificate = Certificate(
            certificate_number=f"CERT-{uuid.uuid4().hex[:12].upper()}", user_id=user_id,
            course_id=course_id, enrollment_id=enrollment_id, holder_name="A Student",
            course_title=TITLE, completion_date=date.today(), status="valid")
        db.session.add(certificate)
        db.session.commit()
        return certificate.id


@dataclass(frozen=True)
class World:
    instructor: Actor
    student: Actor
    other: Actor
    admin: Actor
    course: int


@pytest.fixture
def world(pay_app) -> World:
    instructor = make_actor(pay_app, "instructor")
    return World(instructor=instructor, student=make_actor(pay_app), other=make_actor(pay_app),
                 admin=make_actor(pay_app, "admin"),
                 course=make_course(pay_app, instructor.id, title=TITLE))


# --- reading back -------------------------------------------------------------------------------

def payment_row(app, payment_id: int) -> Payment:
    return fetch(app, Payment, Payment.id == payment_id)


def snapshot(app) -> dict:
    """What a replay must not change."""
    with app.app_context():
        return {
            "payments": sorted((p.id, p.status, p.gateway_payment_id, p.invoice_number,
                                p.paid_at, str(p.refunded_amount))
                               for p in db.session.scalars(select(Payment))),
            "enrollments": sorted((e.id, e.user_id, e.course_id, e.status, e.payment_id)
                                  for e in db.session.scalars(select(Enrollment))),
            "notifications": db.session.scalar(select(func.count(Notification.id))),
            "webhook_events": db.session.scalar(select(func.count(WebhookEvent.id))),
            "invoice_counters": sorted((c.year, c.last_number)
                                       for c in db.session.scalars(select(InvoiceCounter))),
        }


# --- the payment flow ---------------------------------------------------------------------------

def checkout(client, who: Actor, course_id: int, *, path: str = "/stripe/create-checkout",
             status: int = 201) -> dict:
    body = ok(client.post(f"{PAY}{path}", json={"course_id": course_id}, headers=who.headers),
              status)
    assert body["session_id"].startswith("cs_test_") and body["checkout_url"], body
    return body


def deliver(client, event: dict | None = None, *, raw: bytes | None = None,
            secret: str = WEBHOOK_SECRET, timestamp: int | None = None, sign: bool = True):
    """POST a webhook as Stripe does: the JSON body and Stripe-Signature over exactly it."""
    body = raw if raw is not None else json.dumps(event).encode()
    headers = {"Content-Type": "application/json"}
    if sign:
        headers["Stripe-Signature"] = signature_header(body, secret, timestamp)
    return client.post(HOOK, data=body, headers=headers)


@dataclass
class Bought:
    payment_id: int
    session_id: str
    intent: str
    session: dict


def buy(client, standin, who: Actor, course_id: int) -> Bought:
    """Checkout, pay at the stand-in, and the signed checkout.session.completed webhook."""
    opened = checkout(client, who, course_id)
    session = standin.pay(opened["session_id"])
    assert ok(deliver(client, stripe_event("checkout.session.completed", session))) == \
        {"received": True}
    return Bought(opened["payment_id"], opened["session_id"], session["payment_intent"], session)


def invoice_number(n: int) -> str:
    return f"INV-{utcnow().year}-{n:06d}"


# === the stand-in itself ========================================================================

def test_standin_idempotency_and_no_shared_pickle(standin):
    pickle = "/tmp/localstripe.pickle"
    before = os.stat(pickle).st_mtime_ns if os.path.exists(pickle) else None
    sdk = standin.client()
    params = {"mode": "payment", "success_url": "http://x/ok", "cancel_url": "http://x/no",
              "line_items": [{"quantity": 2, "price_data": {
                  "currency": "usd", "unit_amount": 1250, "product_data": {"name": "Two"}}}]}
    first = sdk.v1.checkout.sessions.create(params=params, options={"idempotency_key": "k-1"})
    again = sdk.v1.checkout.sessions.create(params=params, options={"idempotency_key": "k-1"})
    assert again.id == first.id and first.amount_total == 2500 and first.currency == "usd"
    with pytest.raises(stripe.InvalidRequestError):
        sdk.v1.checkout.sessions.create(params={**params, "cancel_url": "http://x/other"},
                                        options={"idempotency_key": "k-1"})
    paid = standin.pay(first.id)
    assert paid["payment_status"] == "paid" and paid["payment_intent"].startswith("pi_")
    assert sdk.v1.payment_intents.retrieve(paid["payment_intent"]).status == "succeeded"
    after = os.stat(pickle).st_mtime_ns if os.path.exists(pickle) else None
    assert after == before, "the stand-in wrote localstripe's shared pickle"


# === checkout ===================================================================================

def test_checkout_opens_a_session_with_the_course_price_and_reuses_it(pay_app, client, standin,
                                                                      world):
    sent_before = len(standin.checkout_requests)
    body = checkout(client, world.student, world.course)
    assert set(body) >= {"checkout_url", "session_id", "payment_id"}
    session = standin.session(body["session_id"])
    assert body["checkout_url"] == session["url"]

    requests = standin.checkout_requests[sent_before:]
    assert len(requests) == 1
    sent = requests[0]
    pid = body["payment_id"]
    assert sent.idempotency_key == f"lms-payment-{pid}"
    assert sent.headers["Authorization"] == "Bearer sk_test_123"
    form = dict(sent.form)
    assert form["line_items[0][price_data][unit_amount]"] == "4999"
    assert form["line_items[0][price_data][currency]"] == "usd"
    params = sent.params
    assert params["mode"] == "payment"
    assert params["line_items"] == [{"quantity": "1", "price_data": {
        "currency": "usd", "unit_amount": "4999", "product_data": {"name": TITLE}}}]
    assert params["metadata"] == {"payment_id": str(pid), "user_id": str(world.student.id),
                                  "course_id": str(world.course)}
    assert params["client_reference_id"] == str(pid)
    assert params["customer_email"] == world.student.email
    assert params["success_url"].endswith("?session_id={CHECKOUT_SESSION_ID}")
    assert params["cancel_url"]
    assert session["amount_total"] == 4999 and session["currency"] == "usd"

    payment = payment_row(pay_app, pid)
    assert (payment.status, payment.gateway, payment.gateway_session_id) == \
        ("pending", "stripe", body["session_id"])
    assert (payment.amount, payment.currency, payment.user_id, payment.course_id) == \
        (PRICE, "USD", world.student.id, world.course)
    assert payment.gateway_response["checkout_session"]["id"] == body["session_id"]

    # Again, through the other route: the open session is reused, Stripe is not asked again.
    again = checkout(client, world.student, world.course, path="/create-checkout-session",
                     status=200)
    assert (again["session_id"], again["payment_id"], again["checkout_url"]) == \
        (body["session_id"], pid, body["checkout_url"])
    assert len(standin.checkout_requests) == sent_before + 1
    assert count(pay_app, Payment) == 1

    # The alias opens a new checkout as well.
    second = make_course(pay_app, world.instructor.id, price="120.00", currency="EUR")
    alias = checkout(client, world.student, second, path="/create-checkout-session")
    assert standin.session(alias["session_id"])["amount_total"] == 12000
    assert standin.checkout_requests[-1].params["line_items"][0]["price_data"]["currency"] == "eur"
    assert count(pay_app, Payment) == 2


def test_checkout_refusals_never_reach_stripe(pay_app, client, standin, world):
    sent_before = len(standin.checkout_requests)
    free = make_course(pay_app, world.instructor.id, price="0.00")
    draft = make_course(pay_app, world.instructor.id, status="draft")
    needs = make_course(pay_app, world.instructor.id, prerequisite_ids=(world.course,))
    enrolled = make_course(pay_app, world.instructor.id)
    with pay_app.app_context():
        db.session.add(Enrollment(user_id=world.student.id, course_id=enrolled, status="active",
                                  enrolled_at=utcnow()))
        db.session.commit()

    def attempt(course_id, headers=world.student.headers, path="/stripe/create-checkout"):
        return client.post(f"{PAY}{path}", json={"course_id": course_id}, headers=headers)

    error(attempt(free), 409, "course_is_free")
    error(attempt(free, path="/create-checkout-session"), 409, "course_is_free")
    error(attempt(enrolled), 409, "already_enrolled")
    body = error(attempt(needs), 403, "prerequisites_missing")
    assert body["details"]["missing_prerequisites"][0]["id"] == world.course
    error(attempt(draft), 404)
    error(attempt(999_999), 404)
    error(attempt(world.course, headers={}), 401)
    assert client.post(f"{PAY}/stripe/create-checkout", json={"course_id": "x"},
                       headers=world.student.headers).status_code == 422
    assert len(standin.checkout_requests) == sent_before
    assert count(pay_app, Payment) == 0


def test_checkout_without_stripe_keys_is_503_naming_them(pay_app, client, standin, world):
    with configured(pay_app, STRIPE_SECRET_KEY=None, STRIPE_WEBHOOK_SECRET=None):
        body = error(client.post(f"{PAY}/stripe/create-checkout", json={"course_id": world.course},
                                 headers=world.student.headers), 503, "stripe_not_configured")
        assert "STRIPE_SECRET_KEY" in body["error"] and "STRIPE_WEBHOOK_SECRET" in body["error"]
        # A webhook cannot be verified without its secret either.
        body = error(deliver(client, stripe_event("checkout.session.completed",
                                                  {"id": "cs_test_x"})), 503)
        assert "STRIPE_WEBHOOK_SECRET" in body["error"]
    with configured(pay_app, STRIPE_SECRET_KEY=None):
        body = error(client.post(f"{PAY}/create-checkout-session",
                                 json={"course_id": world.course},
                                 headers=world.student.headers), 503, "stripe_not_configured")
        assert "STRIPE_SECRET_KEY" in body["error"]
        assert "STRIPE_WEBHOOK_SECRET" not in body["error"]
    assert count(pay_app, Payment) == 0 and count(pay_app, WebhookEvent) == 0


def test_checkout_while_stripe_is_down_is_503_and_keeps_no_order(pay_app, client, standin,
                                                                world):
    with standin.down():
        body = error(client.post(f"{PAY}/stripe/create-checkout", json={"course_id": world.course},
                                 headers=world.student.headers), 503)
        assert "Stripe" in body["error"]
    assert count(pay_app, Payment) == 0
    checkout(client, world.student, world.course)  # and once it is back, it works
    assert count(pay_app, Payment) == 1


def test_paid_enrollment_ends_only_through_a_refund(pay_app, client, standin, world):
    """A paid enrollment cannot simply be left (and then bought a second time)."""
    buy(client, standin, world.student, world.course)
    enrollment_id = fetch(pay_app, Enrollment, Enrollment.user_id == world.student.id).id
    error(client.delete(f"{API}/enrollments/{enrollment_id}", headers=world.student.headers),
          409, "use_refund_request")
    assert fetch(pay_app, Enrollment, Enrollment.id == enrollment_id).status == "active"
    error(client.post(f"{PAY}/stripe/create-checkout", json={"course_id": world.course},
                      headers=world.student.headers), 409, "already_enrolled")
    assert count(pay_app, Payment) == 1


def test_checkout_refused_by_stripe_is_502_and_keeps_no_order(pay_app, client, standin, world):
    standin.fail_next("POST", "/v1/checkout/sessions", 400,
                      "Invalid currency for this account.", "parameter_invalid")
    body = error(client.post(f"{PAY}/stripe/create-checkout", json={"course_id": world.course},
                             headers=world.student.headers), 502)
    assert "Invalid currency for this account." in body["error"]
    assert count(pay_app, Payment) == 0


def test_stale_order_replaced_after_the_timeout_cannot_be_paid_as_well(pay_app, client, standin,
                                                                       world):
    """A pending order older than PAYMENT_PENDING_TIMEOUT is not reused: a new Checkout Session
    is opened. The old one must not stay payable at Stripe (expired there first, or opened with
    an expires_at no later than the timeout), or the student can pay for the course twice."""
    timeout = pay_app.config["PAYMENT_PENDING_TIMEOUT"]
    first = checkout(client, world.student, world.course)
    with pay_app.app_context():
        db.session.execute(update(Payment).where(Payment.id == first["payment_id"])
                           .values(created_at=utcnow() - timedelta(minutes=timeout + 1)))
        db.session.commit()
    second = checkout(client, world.student, world.course)
    assert second["payment_id"] != first["payment_id"]
    ok(deliver(client, stripe_event("checkout.session.completed",
                                    standin.pay(second["session_id"]))))
    assert payment_row(pay_app, second["payment_id"]).status == "completed"

    stale = standin.session(first["session_id"])
    if stale["status"] == "open" and stale["expires_at"] - stale["created"] > timeout * 60 + 60:
        # Still payable, for up to 24 hours: the student pays the tab left open.
        ok(deliver(client, stripe_event("checkout.session.completed",
                                        standin.pay(first["session_id"]))))
    charged = count(pay_app, Payment, Payment.user_id == world.student.id,
                    Payment.course_id == world.course, Payment.status == "completed")
    assert charged == 1, "the student was charged twice for one course"


# === webhooks ===================================================================================

def test_completed_webhook_settles_once_and_replays_change_nothing(pay_app, client, standin,
                                                                   world):
    opened = checkout(client, world.student, world.course)
    session = standin.pay(opened["session_id"])
    assert (session["status"], session["payment_status"]) == ("complete", "paid")
    event = stripe_event("checkout.session.completed", session)

    assert ok(deliver(client, event)) == {"received": True}

    pid = opened["payment_id"]
    payment = payment_row(pay_app, pid)
    assert payment.status == "completed"
    assert payment.gateway_payment_id == session["payment_intent"]
    assert payment.paid_at is not None and utcnow() - payment.paid_at < timedelta(minutes=1)
    assert payment.invoice_number == invoice_number(1)
    enrollment = fetch(pay_app, Enrollment, Enrollment.user_id == world.student.id,
                       Enrollment.course_id == world.course)
    assert (enrollment.status, enrollment.payment_id) == ("active", pid)
    notes = count(pay_app, Notification, Notification.user_id == world.student.id,
                  Notification.title == "Payment received")
    assert notes == 1
    record = fetch(pay_app, WebhookEvent, WebhookEvent.event_id == event["id"])
    assert (record.gateway, record.event_type, record.status, record.payment_id) == \
        ("stripe", "checkout.session.completed", "processed", pid)
    assert record.payload["data"]["object"]["id"] == opened["session_id"]
    assert record.processed_at is not None

    before = snapshot(pay_app)
    assert ok(deliver(client, event)) == {"received": True, "duplicate": True}
    assert snapshot(pay_app) == before

    # Another event about the same session (Stripe's own redelivery has the same id; this is
    # a second event, e.g. async_payment_succeeded after completed): acknowledged, no change.
    other = stripe_event("checkout.session.completed", session)
    assert ok(deliver(client, other)) == {"received": True}
    after = snapshot(pay_app)
    assert after["webhook_events"] == before["webhook_events"] + 1
    assert {k: v for k, v in after.items() if k != "webhook_events"} == \
        {k: v for k, v in before.items() if k != "webhook_events"}
    assert count(pay_app, Enrollment) == 1

    # A second charge for the same session (another intent): kept on record, nothing else.
    second_charge = {**session, "payment_intent": "pi_second_charge"}
    ok(deliver(client, stripe_event("checkout.session.async_payment_succeeded", second_charge)))
    payment = payment_row(pay_app, pid)
    assert (payment.status, payment.gateway_payment_id) == ("completed", session["payment_intent"])
    assert "duplicate:pi_second_charge" in payment.gateway_response
    assert count(pay_app, Enrollment) == 1 and count(pay_app, Notification) == 1

    # The student sees the course as theirs.
    mine = ok(client.get(f"{PAY}/{pid}", headers=world.student.headers))["payment"]
    assert mine["status"] == "completed" and mine["invoice_url"] == f"{PAY}/{pid}/invoice"


def _tampered(header: str) -> str:
    head, sig = header.rsplit("v1=", 1)
    return head + "v1=" + ("0" if sig[0] != "0" else "1") + sig[1:]


@pytest.mark.parametrize("attack", ["tampered_signature", "wrong_secret", "missing_header",
                                    "body_altered", "expired_timestamp"])
def test_bad_signatures_are_refused_and_not_recorded(pay_app, client, standin, world, attack):
    opened = checkout(client, world.student, world.course)
    session = standin.pay(opened["session_id"])
    raw = json.dumps(stripe_event("checkout.session.completed", session)).encode()
    headers = {"Content-Type": "application/json",
               "Stripe-Signature": signature_header(raw, WEBHOOK_SECRET)}
    if attack == "tampered_signature":
        headers["Stripe-Signature"] = _tampered(headers["Stripe-Signature"])
    elif attack == "wrong_secret":
        headers["Stripe-Signature"] = signature_header(raw, "whsec_someone_else")
    elif attack == "missing_header":
        del headers["Stripe-Signature"]
    elif attack == "body_altered":
        raw = raw.replace(b'"amount_total": 4999', b'"amount_total": 1')
        assert b'"amount_total": 1,' in raw
    else:
        headers["Stripe-Signature"] = signature_header(raw, WEBHOOK_SECRET,
                                                       timestamp=int(time.time()) - 301)

    error(client.post(HOOK, data=raw, headers=headers), 400, "invalid_signature")

    assert count(pay_app, WebhookEvent) == 0
    assert payment_row(pay_app, opened["payment_id"]).status == "pending"
    assert count(pay_app, Enrollment) == 0 and count(pay_app, Notification) == 0
    # The genuine delivery still works afterwards.
    ok(deliver(client, stripe_event("checkout.session.completed", session)))
    assert payment_row(pay_app, opened["payment_id"]).status == "completed"


@pytest.mark.parametrize("change", [{"amount_total": 100}, {"currency": "eur"}],
                         ids=["wrong_amount", "wrong_currency"])
def test_wrong_amount_or_currency_is_acknowledged_but_settles_nothing(pay_app, client, standin,
                                                                      world, change):
    opened = checkout(client, world.student, world.course)
    session = {**standin.pay(opened["session_id"]), **change}
    event = stripe_event("checkout.session.completed", session)

    body = ok(deliver(client, event))
    assert body["received"] is True and body["error"]

    payment = payment_row(pay_app, opened["payment_id"])
    assert (payment.status, payment.gateway_payment_id, payment.invoice_number) == \
        ("pending", None, None)
    assert count(pay_app, Enrollment) == 0 and count(pay_app, Notification) == 0
    assert count(pay_app, InvoiceCounter) == 0
    record = fetch(pay_app, WebhookEvent, WebhookEvent.event_id == event["id"])
    assert record.status == "failed" and record.error


def test_unknown_sessions_are_ignored(pay_app, client, standin, world):
    opened = checkout(client, world.student, world.course)
    stranger = {"id": "cs_test_not_ours", "object": "checkout.session", "status": "complete",
                "payment_status": "paid", "amount_total": 4999, "currency": "usd",
                "payment_intent": "pi_not_ours", "metadata": {}, "client_reference_id": None}
    # A session we never opened, even one naming our payment in its metadata, settles nothing.
    forged = {**stranger, "id": "cs_test_forged",
              "metadata": {"payment_id": str(opened["payment_id"])},
              "client_reference_id": str(opened["payment_id"])}
    for obj in (stranger, forged):
        event = stripe_event("checkout.session.completed", obj)
        assert ok(deliver(client, event)) == {"received": True}
        record = fetch(pay_app, WebhookEvent, WebhookEvent.event_id == event["id"])
        assert (record.status, record.payment_id) == ("ignored", None)
    payment = payment_row(pay_app, opened["payment_id"])
    assert (payment.status, payment.gateway_payment_id) == ("pending", None)
    assert count(pay_app, Enrollment) == 0 and count(pay_app, Notification) == 0
    assert count(pay_app, Payment) == 1 and count(pay_app, WebhookEvent) == 2


@pytest.mark.parametrize("shape", [
    "not_an_object",
    "no_id",
    "data_not_an_object",
    "object_not_an_object", "amount_not_a_number"])
def test_signed_events_of_an_unexpected_shape_never_fail_with_500(pay_app, client, standin,
                                                                  world, shape):
    """Correctly signed but not shaped as Stripe documents: refused with 400, or recorded as a
    failed event and acknowledged; never a 500 (Stripe would redeliver it for days), never a
    settlement."""
    opened = checkout(client, world.student, world.course)
    session = standin.pay(opened["session_id"])
    event = stripe_event("checkout.session.completed", session)
    body = {
        "not_an_object": ["checkout.session.completed"],
        "no_id": {k: v for k, v in event.items() if k != "id"},
        "data_not_an_object": {**event, "data": "checkout.session"},
        "object_not_an_object": {**event, "data": {"object": [session["id"]]}},
        "amount_not_a_number": {**event, "data": {"object": {**session, "amount_total": "lots"}}},
    }[shape]

    response = deliver(client, raw=json.dumps(body).encode())

    assert response.status_code in (200, 400), (response.status_code, response.get_data())
    if response.status_code == 400:
        assert count(pay_app, WebhookEvent) == 0
    else:
        assert response.get_json()["error"]
        assert [e.status for e in [fetch(pay_app, WebhookEvent)]] == ["failed"]
    payment = payment_row(pay_app, opened["payment_id"])
    assert (payment.status, payment.invoice_number) == ("pending", None)
    assert count(pay_app, Enrollment) == 0 and count(pay_app, Notification) == 0


def test_delayed_payment_settles_on_async_payment_succeeded(pay_app, client, standin, world):
    opened = checkout(client, world.student, world.course)
    session = standin.complete_unpaid(opened["session_id"])
    assert (session["status"], session["payment_status"]) == ("complete", "unpaid")

    ok(deliver(client, stripe_event("checkout.session.completed", session)))
    payment = payment_row(pay_app, opened["payment_id"])
    assert (payment.status, payment.gateway_payment_id) == ("pending", None)
    assert count(pay_app, Enrollment) == 0

    session = standin.finish_delayed(opened["session_id"], succeed=True)
    assert session["payment_status"] == "paid"
    ok(deliver(client, stripe_event("checkout.session.async_payment_succeeded", session)))
    payment = payment_row(pay_app, opened["payment_id"])
    assert (payment.status, payment.gateway_payment_id) == ("completed", session["payment_intent"])
    assert fetch(pay_app, Enrollment, Enrollment.user_id == world.student.id).payment_id == \
        opened["payment_id"]


def test_delayed_payment_failure_marks_the_payment_failed(pay_app, client, standin, world):
    opened = checkout(client, world.student, world.course)
    session = standin.complete_unpaid(opened["session_id"])
    ok(deliver(client, stripe_event("checkout.session.completed", session)))
    session = standin.finish_delayed(opened["session_id"], succeed=False)
    event = stripe_event("checkout.session.async_payment_failed", session)
    ok(deliver(client, event))
    payment = payment_row(pay_app, opened["payment_id"])
    assert payment.status == "failed" and payment.failure_reason
    assert count(pay_app, Enrollment) == 0
    assert fetch(pay_app, WebhookEvent, WebhookEvent.event_id == event["id"]).status == "processed"
    # A failed order is not reused: the next checkout opens a new session.
    again = checkout(client, world.student, world.course)
    assert again["payment_id"] != opened["payment_id"]


def test_expired_session_expires_the_payment(pay_app, client, standin, world):
    opened = checkout(client, world.student, world.course)
    session = standin.expire(opened["session_id"])
    assert session["status"] == "expired"
    ok(deliver(client, stripe_event("checkout.session.expired", session)))
    assert payment_row(pay_app, opened["payment_id"]).status == "expired"
    assert count(pay_app, Enrollment) == 0
    # An expired order is not reused.
    again = checkout(client, world.student, world.course)
    assert again["payment_id"] != opened["payment_id"]
    assert again["session_id"] != opened["session_id"]


def test_observed_a_paid_session_settles_a_payment_marked_expired(pay_app, client, standin,
                                                                  world):
    """Observed behaviour, documented: `settle` short-circuits only completed/refunded
    payments, so a paid checkout.session.completed settles a payment already marked expired
    (here by an expired event delivered out of order): money received is never left without
    its enrollment. The reverse order leaves a completed payment completed."""
    opened = checkout(client, world.student, world.course)
    stale = {**standin.session(opened["session_id"]), "status": "expired"}
    session = standin.pay(opened["session_id"])
    ok(deliver(client, stripe_event("checkout.session.expired", stale)))
    assert payment_row(pay_app, opened["payment_id"]).status == "expired"

    ok(deliver(client, stripe_event("checkout.session.completed", session)))
    payment = payment_row(pay_app, opened["payment_id"])
    assert (payment.status, payment.gateway_payment_id) == ("completed", session["payment_intent"])
    assert count(pay_app, Enrollment, Enrollment.status == "active") == 1

    ok(deliver(client, stripe_event("checkout.session.expired", stale)))
    assert payment_row(pay_app, opened["payment_id"]).status == "completed"


# === refunds ====================================================================================

def test_refund_request_rules(pay_app, client, standin, world):
    bought = buy(client, standin, world.student, world.course)
    other_course = make_course(pay_app, world.instructor.id)
    second = buy(client, standin, world.student, other_course)
    pending = checkout(client, world.student, make_course(pay_app, world.instructor.id))

    url = f"{PAY}/{bought.payment_id}/refund-request"
    error(client.post(url, json={"reason": "Not what I expected"},
                      headers=world.other.headers), 404)
    error(client.post(url, json={"reason": "Not what I expected"}), 401)
    assert client.post(url, json={"reason": ""}, headers=world.student.headers).status_code == 422
    body = ok(client.post(url, json={"reason": "Not what I expected"},
                          headers=world.student.headers), 201)["refund_request"]
    assert (body["status"], body["payment_id"], body["amount"]) == ("pending", bought.payment_id,
                                                                   49.99)
    error(client.post(url, json={"reason": "Asking twice"}, headers=world.student.headers),
          409, "refund_already_requested")
    error(client.post(f"{PAY}/{bought.payment_id}/refund", json={"reason": "Asking twice"},
                      headers=world.student.headers), 409, "refund_already_requested")
    error(client.post(f"{PAY}/{pending['payment_id']}/refund",
                      json={"reason": "Never paid"}, headers=world.student.headers),
          409, "not_refundable")
    # Outside REFUND_WINDOW_DAYS: refused.
    days = pay_app.config["REFUND_WINDOW_DAYS"]
    third = buy(client, standin, world.student, make_course(pay_app, world.instructor.id))
    with pay_app.app_context():
        db.session.execute(update(Payment).where(Payment.id == third.payment_id)
                           .values(paid_at=utcnow() - timedelta(days=days, minutes=1)))
        db.session.commit()
    error(client.post(f"{PAY}/{third.payment_id}/refund-request", json={"reason": "Too late"},
                      headers=world.student.headers), 403, "refund_window_closed")
    # The alias files a request too.
    alias = ok(client.post(f"{PAY}/{second.payment_id}/refund", json={"reason": "Changed mind"},
                           headers=world.student.headers), 201)["refund_request"]
    assert alias["payment_id"] == second.payment_id
    assert count(pay_app, RefundRequest) == 2
    assert count(pay_app, RefundRequest, RefundRequest.status == "pending") == 2


def test_refund_approval_refunds_at_stripe_and_revokes_access(pay_app, client, standin, world):
    bought = buy(client, standin, world.student, world.course)
    request = ok(client.post(f"{PAY}/{bought.payment_id}/refund-request",
                             json={"reason": "Not what I expected"},
                             headers=world.student.headers), 201)["refund_request"]
    # Completed (and certified) while the request waited: approving takes the override.
    certificate_id = make_certificate(pay_app, world.student.id, world.course)

    listed = ok(client.get(f"{API}/admin/refund-requests?status=pending",
                           headers=world.admin.headers))["refund_requests"]
    assert [r["id"] for r in listed] == [request["id"]]
    error(client.get(f"{API}/admin/refund-requests", headers=world.student.headers), 403)

    error(client.put(f"{API}/admin/refund-requests/{request['id']}",
                     json={"action": "approve", "note": "ok"}, headers=world.admin.headers),
          409, "refund_certificate_issued")
    assert standin.refunds_for(bought.intent) == []
    body = ok(client.put(f"{API}/admin/refund-requests/{request['id']}",
                         json={"action": "approve", "note": "ok", "override_policy": True},
                         headers=world.admin.headers))
    assert body["refund_request"]["status"] == "processed"

    refunds = standin.refunds_for(bought.intent)
    assert len(refunds) == 1
    assert (refunds[0]["amount"], refunds[0]["status"], refunds[0]["payment_intent"]) == \
        (4999, "succeeded", bought.intent)
    # Our key travels with the refund: a retried approval finds it instead of refunding twice.
    assert refunds[0]["metadata"] == {"payment_id": str(bought.payment_id),
                                      "lms_key": f"lms-refund-{request['id']}"}
    assert standin.charge_of(bought.intent)["refunded"] is True

    row = fetch(pay_app, RefundRequest, RefundRequest.id == request["id"])
    assert (row.status, row.reviewed_by_id, row.gateway_refund_id) == \
        ("processed", world.admin.id, refunds[0]["id"])
    assert row.processed_at is not None
    payment = payment_row(pay_app, bought.payment_id)
    assert (payment.status, payment.refunded_amount) == ("refunded", PRICE)
    assert payment.refunded_at is not None
    enrollment = fetch(pay_app, Enrollment, Enrollment.user_id == world.student.id,
                       Enrollment.course_id == world.course)
    assert enrollment.status == "refunded" and enrollment.cancelled_at is not None
    certificate = fetch(pay_app, Certificate, Certificate.id == certificate_id)
    assert certificate.status == "revoked" and certificate.revoked_at is not None
    assert count(pay_app, Notification, Notification.user_id == world.student.id,
                 Notification.title == "Refund processed") == 1
    audit = fetch(pay_app, AuditLog, AuditLog.action == "refund_request.approve")
    assert (audit.actor_id, audit.target_type, audit.target_id) == \
        (world.admin.id, "refund_request", request["id"])

    # Stripe's own charge.refunded for that refund follows: acknowledged, nothing doubled.
    before = snapshot(pay_app)
    ok(deliver(client, stripe_event("charge.refunded", standin.charge_of(bought.intent))))
    after = snapshot(pay_app)
    assert after["webhook_events"] == before["webhook_events"] + 1
    assert {k: v for k, v in after.items() if k != "webhook_events"} == \
        {k: v for k, v in before.items() if k != "webhook_events"}

    # Decided once: a second decision is a conflict and Stripe is not asked again.
    error(client.put(f"{API}/admin/refund-requests/{request['id']}", json={"action": "approve"},
                     headers=world.admin.headers), 409)
    assert len(standin.refunds_for(bought.intent)) == 1
    # The invoice of a refunded payment is still there, marked so.
    from pypdf import PdfReader

    response = client.get(f"{PAY}/{bought.payment_id}/invoice", headers=world.student.headers)
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert "REFUNDED" in PdfReader(io.BytesIO(response.data)).pages[0].extract_text()

    # Bought again later: a new payment re-opens the same enrollment row.
    again = buy(client, standin, world.student, world.course)
    assert again.payment_id != bought.payment_id
    enrollment = fetch(pay_app, Enrollment, Enrollment.id == enrollment.id)
    assert (enrollment.status, enrollment.payment_id, enrollment.cancelled_at) == \
        ("active", again.payment_id, None)
    assert payment_row(pay_app, again.payment_id).invoice_number == invoice_number(2)
    assert payment_row(pay_app, bought.payment_id).status == "refunded"


def test_refund_rejection_changes_no_money(pay_app, client, standin, world):
    bought = buy(client, standin, world.student, world.course)
    request = ok(client.post(f"{PAY}/{bought.payment_id}/refund",
                             json={"reason": "Please"}, headers=world.student.headers),
                 201)["refund_request"]
    body = ok(client.put(f"{API}/admin/refund-requests/{request['id']}",
                         json={"action": "reject", "note": "Course mostly watched"},
                         headers=world.admin.headers))
    assert body["refund_request"]["status"] == "rejected"
    assert body["refund_request"]["admin_note"] == "Course mostly watched"
    payment = payment_row(pay_app, bought.payment_id)
    assert (payment.status, payment.refunded_amount, payment.refunded_at) == \
        ("completed", Decimal("0.00"), None)
    assert fetch(pay_app, Enrollment, Enrollment.user_id == world.student.id).status == "active"
    assert standin.refunds_for(bought.intent) == []
    assert count(pay_app, Notification, Notification.title == "Refund request declined") == 1
    assert count(pay_app, AuditLog, AuditLog.action == "refund_request.reject") == 1
    # A rejected request does not block a new one.
    ok(client.post(f"{PAY}/{bought.payment_id}/refund-request", json={"reason": "Again"},
                   headers=world.student.headers), 201)


def test_refund_approval_while_stripe_is_down_moves_no_money(pay_app, client, standin, world):
    """The approval is recorded before Stripe is asked: with Stripe down it stays approved
    (in flight), no money moves, and the retried approval completes it."""
    bought = buy(client, standin, world.student, world.course)
    request = ok(client.post(f"{PAY}/{bought.payment_id}/refund-request",
                             json={"reason": "Refund please"}, headers=world.student.headers),
                 201)["refund_request"]
    before = snapshot(pay_app)

    with standin.down():
        response = client.put(f"{API}/admin/refund-requests/{request['id']}",
                              json={"action": "approve"}, headers=world.admin.headers)
    assert response.status_code in (502, 503), response.get_json()
    body = response.get_json()
    assert response.status_code == 503 and "Stripe" in body["error"], body

    row = fetch(pay_app, RefundRequest, RefundRequest.id == request["id"])
    assert (row.status, row.reviewed_by_id, row.gateway_refund_id) == \
        ("approved", world.admin.id, None)
    assert row.decided_at is not None
    assert snapshot(pay_app) == before
    payment = payment_row(pay_app, bought.payment_id)
    assert (payment.status, payment.refunded_amount) == ("completed", Decimal("0.00"))
    assert fetch(pay_app, Enrollment, Enrollment.user_id == world.student.id).status == "active"
    assert count(pay_app, AuditLog) == 1
    assert standin.refunds_for(bought.intent) == []

    # Stripe back: the same request goes through.
    ok(client.put(f"{API}/admin/refund-requests/{request['id']}", json={"action": "approve"},
                  headers=world.admin.headers))
    assert payment_row(pay_app, bought.payment_id).status == "refunded"
    assert len(standin.refunds_for(bought.intent)) == 1


def test_refund_refused_by_stripe_is_502_and_moves_no_money(pay_app, client, standin, world):
    bought = buy(client, standin, world.student, world.course)
    request = ok(client.post(f"{PAY}/{bought.payment_id}/refund-request",
                             json={"reason": "Refund please"}, headers=world.student.headers),
                 201)["refund_request"]
    before = snapshot(pay_app)
    standin.fail_next("POST", "/v1/refunds", 400,
                      "Charge ch_x has already been refunded.", "charge_already_refunded")
    body = error(client.put(f"{API}/admin/refund-requests/{request['id']}",
                            json={"action": "approve"}, headers=world.admin.headers), 502)
    assert "already been refunded" in body["error"]
    assert snapshot(pay_app) == before
    # Declined at Stripe: nothing was done there, so the request is back with the admin, the
    # refusal in its note (the approval stays in the audit log).
    row = fetch(pay_app, RefundRequest, RefundRequest.id == request["id"])
    assert row.status == "pending" and "already been refunded" in row.admin_note
    assert count(pay_app, AuditLog) == 1
    assert standin.refunds_for(bought.intent) == []


def test_charge_refunded_for_a_charge_without_intent_touches_no_payment(pay_app, client, standin,
                                                                        world):
    opened = checkout(client, world.student, world.course)
    sdk = standin.client()
    # Another charge on the same Stripe account, made through the Charges API, refunded.
    charge = sdk.v1.charges.create(params={"amount": 500, "currency": "usd",
                                           "source": "pm_card_visa"})
    sdk.v1.refunds.create(params={"charge": charge.id})
    charge = sdk.v1.charges.retrieve(charge.id).to_dict()
    assert charge["payment_intent"] is None and charge["refunded"] is True
    event = stripe_event("charge.refunded", charge)

    ok(deliver(client, event))

    payment = payment_row(pay_app, opened["payment_id"])
    assert (payment.status, payment.refunded_amount) == ("pending", Decimal("0.00"))
    assert count(pay_app, Notification) == 0
    assert fetch(pay_app, WebhookEvent, WebhookEvent.event_id == event["id"]).status == "ignored"


def test_partial_refund_at_stripe_is_recorded(pay_app, client, standin, world):
    bought = buy(client, standin, world.student, world.course)
    standin.client().v1.refunds.create(params={"payment_intent": bought.intent, "amount": 1000})
    charge = standin.charge_of(bought.intent)
    assert (charge["refunded"], charge["amount_refunded"]) == (False, 1000)

    ok(deliver(client, stripe_event("charge.refunded", charge)))

    payment = payment_row(pay_app, bought.payment_id)
    assert payment.status == "completed"  # access stays
    assert fetch(pay_app, Enrollment, Enrollment.user_id == world.student.id).status == "active"
    assert payment.refunded_amount == Decimal("10.00")
    request = ok(client.post(f"{PAY}/{bought.payment_id}/refund-request",
                             json={"reason": "The rest, please"}, headers=world.student.headers),
                 201)["refund_request"]
    assert request["amount"] == 39.99


def test_charge_refunded_webhook_marks_the_payment_refunded(pay_app, client, standin, world):
    bought = buy(client, standin, world.student, world.course)
    sdk = standin.client()
    # A partial refund made in Stripe's dashboard: the charge is not fully refunded.
    sdk.v1.refunds.create(params={"payment_intent": bought.intent, "amount": 1000})
    charge = standin.charge_of(bought.intent)
    assert (charge["refunded"], charge["amount_refunded"]) == (False, 1000)
    ok(deliver(client, stripe_event("charge.refunded", charge)))
    assert payment_row(pay_app, bought.payment_id).status == "completed"
    assert fetch(pay_app, Enrollment, Enrollment.user_id == world.student.id).status == "active"

    # The rest: now the charge is refunded in full.
    sdk.v1.refunds.create(params={"payment_intent": bought.intent, "amount": 3999})
    charge = standin.charge_of(bought.intent)
    assert (charge["refunded"], charge["amount_refunded"]) == (True, 4999)
    event = stripe_event("charge.refunded", charge)
    ok(deliver(client, event))
    payment = payment_row(pay_app, bought.payment_id)
    assert (payment.status, payment.refunded_amount) == ("refunded", PRICE)
    assert payment.refunded_at is not None
    assert fetch(pay_app, Enrollment, Enrollment.user_id == world.student.id).status == "refunded"
    assert count(pay_app, Notification, Notification.title == "Refund processed") == 1
    assert fetch(pay_app, WebhookEvent, WebhookEvent.event_id == event["id"]).status == \
        "processed"
    # Redelivered: nothing more.
    before = snapshot(pay_app)
    assert ok(deliver(client, event))["duplicate"] is True
    assert snapshot(pay_app) == before


# === records ====================================================================================

def test_history_and_who_may_read_a_payment(pay_app, client, standin, world):
    bought = buy(client, standin, world.student, world.course)
    later = make_course(pay_app, world.instructor.id, title="Second Course")
    pending = checkout(client, world.student, later)
    theirs = checkout(client, world.other, world.course)

    body = ok(client.get(f"{PAY}/history", headers=world.student.headers))
    rows = body["payments"]
    assert [p["id"] for p in rows] == [pending["payment_id"], bought.payment_id]
    assert body["pagination"]["total"] == 2
    first = {p["id"]: p for p in rows}
    assert first[bought.payment_id]["course"]["title"] == TITLE
    assert first[bought.payment_id]["invoice_url"] == f"{PAY}/{bought.payment_id}/invoice"
    assert first[pending["payment_id"]]["invoice_url"] is None
    completed = ok(client.get(f"{PAY}/history?status=completed",
                              headers=world.student.headers))["payments"]
    assert [p["id"] for p in completed] == [bought.payment_id]
    assert [p["id"] for p in ok(client.get(f"{PAY}/history", headers=world.other.headers))
            ["payments"]] == [theirs["payment_id"]]
    error(client.get(f"{PAY}/history"), 401)

    mine = ok(client.get(f"{PAY}/{bought.payment_id}", headers=world.student.headers))["payment"]
    assert (mine["id"], mine["status"], mine["amount"], mine["currency"]) == \
        (bought.payment_id, "completed", 49.99, "USD")
    error(client.get(f"{PAY}/{bought.payment_id}", headers=world.other.headers), 404)
    assert ok(client.get(f"{PAY}/{bought.payment_id}", headers=world.admin.headers))[
        "payment"]["id"] == bought.payment_id
    error(client.get(f"{PAY}/999999", headers=world.admin.headers), 404)


def test_invoice_pdf(pay_app, client, standin, world):
    from pypdf import PdfReader

    bought = buy(client, standin, world.student, world.course)
    number = payment_row(pay_app, bought.payment_id).invoice_number
    assert number == invoice_number(1)

    response = client.get(f"{PAY}/{bought.payment_id}/invoice", headers=world.student.headers)
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    assert number in response.headers["Content-Disposition"]
    text_ = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(response.data)).pages)
    for expected in (number, TITLE, "49.99", "USD"):
        assert expected in text_, (expected, text_)
    assert client.get(f"{PAY}/{bought.payment_id}/invoice",
                      headers=world.admin.headers).status_code == 200
    error(client.get(f"{PAY}/{bought.payment_id}/invoice", headers=world.other.headers), 404)

    pending = checkout(client, world.student, make_course(pay_app, world.instructor.id))
    error(client.get(f"{PAY}/{pending['payment_id']}/invoice", headers=world.student.headers),
          409, "no_invoice")

    # The next settlement takes the next number.
    second = buy(client, standin, world.other, world.course)
    assert payment_row(pay_app, second.payment_id).invoice_number == invoice_number(2)


# === reconciliation =============================================================================

def reconcile(app) -> str:
    """`flask payments reconcile`, through the app's CLI."""
    result = app.test_cli_runner().invoke(args=["payments", "reconcile"])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output.strip()


def test_reconcile_settles_paid_and_expires_expired_sessions(pay_app, client, standin, world):
    students = [make_actor(pay_app) for _ in range(4)]
    paid, expired, still_open, recent = (checkout(client, s, world.course) for s in students)
    paid_session = standin.pay(paid["session_id"])
    standin.expire(expired["session_id"])
    standin.pay(recent["session_id"])  # paid, but not pending for long: left for its webhook
    timeout = pay_app.config["PAYMENT_PENDING_TIMEOUT"]
    with pay_app.app_context():
        db.session.execute(update(Payment).where(Payment.id.in_(
            [paid["payment_id"], expired["payment_id"], still_open["payment_id"]]))
            .values(created_at=utcnow() - timedelta(minutes=timeout + 5)))
        db.session.commit()

    assert reconcile(pay_app) == "expired: 1, pending: 1, settled: 1"

    settled = payment_row(pay_app, paid["payment_id"])
    assert (settled.status, settled.gateway_payment_id) == \
        ("completed", paid_session["payment_intent"])
    assert settled.invoice_number == invoice_number(1)
    assert fetch(pay_app, Enrollment, Enrollment.user_id == students[0].id).payment_id == \
        paid["payment_id"]
    assert count(pay_app, Notification, Notification.user_id == students[0].id,
                 Notification.title == "Payment received") == 1
    assert payment_row(pay_app, expired["payment_id"]).status == "expired"
    assert payment_row(pay_app, still_open["payment_id"]).status == "pending"
    assert payment_row(pay_app, recent["payment_id"]).status == "pending"
    assert count(pay_app, Enrollment) == 1

    # Again: only the open one is left to ask about.
    assert reconcile(pay_app) == "pending: 1"
    # Stripe unreachable: nothing changes, and the run still ends.
    with standin.down():
        assert reconcile(pay_app) == "unknown: 1"
    assert payment_row(pay_app, still_open["payment_id"]).status == "pending"
    # The webhook of the reconciled payment arriving late changes nothing.
    before = snapshot(pay_app)
    ok(deliver(client, stripe_event("checkout.session.completed", paid_session)))
    after = snapshot(pay_app)
    assert after["webhook_events"] == before["webhook_events"] + 1
    assert {k: v for k, v in after.items() if k != "webhook_events"} == \
        {k: v for k, v in before.items() if k != "webhook_events"}


# === concurrency (PostgreSQL) ===================================================================

@pytest.fixture
def race_app(app, standin, stripe_app):
    """The Stripe app on PostgreSQL: ours when the session database is PostgreSQL, else one on
    a scratch database created here and dropped WITH (FORCE) afterwards."""
    url = require_service("PostgreSQL (TEST_POSTGRES_URL)", postgres_url())
    standin.forget_idempotency_keys()  # a fresh database: payment ids may restart
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        yield stripe_app  # conftest's clean_state empties it after the test
        return
    server = make_url(normalise_database_url(url))
    name = f"pay_race_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        scratch = create_app("testing", overrides=stripe_overrides(
            app, standin, SQLALCHEMY_DATABASE_URI=server.set(database=name).render_as_string(
                hide_password=False)))
        with scratch.app_context():
            db.create_all()
        try:
            yield scratch
        finally:
            with scratch.app_context():
                db.session.remove()
                db.engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def post_together(app, bodies: list[bytes]) -> list:
    """Each body POSTed to the webhook, signed, from its own thread and test client, released
    together by a barrier. Returns [(status, json)] (or the exception a thread raised)."""
    barrier = threading.Barrier(len(bodies))
    results: list = [None] * len(bodies)

    def worker(i: int) -> None:
        client = app.test_client()
        headers = {"Content-Type": "application/json",
                   "Stripe-Signature": signature_header(bodies[i], WEBHOOK_SECRET)}
        try:
            barrier.wait(timeout=30)
            response = client.post(HOOK, data=bodies[i], headers=headers)
            results[i] = (response.status_code, response.get_json())
        except BaseException as exc:  # reported by the assertions
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def _race_setup(race_app, standin):
    instructor = make_actor(race_app, "instructor")
    student = make_actor(race_app)
    course = make_course(race_app, instructor.id, title=TITLE)
    client = race_app.test_client()
    opened = checkout(client, student, course)
    return student, opened, standin.pay(opened["session_id"])


def _assert_settled_once(race_app, payment_id: int, intent: str) -> None:
    assert count(race_app, Payment, Payment.status == "completed") == 1
    payment = payment_row(race_app, payment_id)
    assert (payment.status, payment.gateway_payment_id, payment.invoice_number) == \
        ("completed", intent, invoice_number(1))
    assert count(race_app, Enrollment) == 1
    assert count(race_app, Notification, Notification.title == "Payment received") == 1
    with race_app.app_context():
        assert db.session.scalar(select(InvoiceCounter.last_number)) == 1


def test_same_event_delivered_ten_times_at_once_settles_once(race_app, standin):
    student, opened, session = _race_setup(race_app, standin)
    body = json.dumps(stripe_event("checkout.session.completed", session)).encode()

    results = post_together(race_app, [body] * 10)

    assert all(isinstance(r, tuple) and r[0] == 200 for r in results), results
    assert sorted(bool(r[1].get("duplicate")) for r in results) == [False] + [True] * 9, results
    _assert_settled_once(race_app, opened["payment_id"], session["payment_intent"])
    assert count(race_app, WebhookEvent) == 1


def test_distinct_events_for_one_session_at_once_settle_once(race_app, standin):
    student, opened, session = _race_setup(race_app, standin)
    bodies = [json.dumps(stripe_event(kind, session)).encode() for kind in (
        "checkout.session.completed", "checkout.session.completed",
        "checkout.session.async_payment_succeeded", "checkout.session.completed",
        "checkout.session.async_payment_succeeded")]

    results = post_together(race_app, bodies)

    assert all(isinstance(r, tuple) and r[0] == 200 for r in results), results
    assert all(r[1] == {"received": True} for r in results), results
    _assert_settled_once(race_app, opened["payment_id"], session["payment_intent"])
    assert count(race_app, WebhookEvent, WebhookEvent.status == "processed") == 5


def test_double_clicked_checkout_opens_one_order(race_app, standin):
    """The same student's checkout submitted several times at once: one order, one session."""
    instructor = make_actor(race_app, "instructor")
    student = make_actor(race_app)
    course = make_course(race_app, instructor.id, title=TITLE)
    sent_before = len(standin.checkout_requests)
    n = 6
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def worker(i: int) -> None:
        client = race_app.test_client()
        try:
            barrier.wait(timeout=30)
            response = client.post(f"{PAY}/stripe/create-checkout", json={"course_id": course},
                                   headers=student.headers)
            results[i] = (response.status_code, response.get_json())
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert all(isinstance(r, tuple) and r[0] in (200, 201) for r in results), results
    assert len({r[1]["session_id"] for r in results}) == 1, results
    assert count(race_app, Payment) == 1
    assert len(standin.checkout_requests) - sent_before == 1


def test_concurrent_approvals_refund_once(race_app, standin):
    admin = make_actor(race_app, "admin")
    instructor = make_actor(race_app, "instructor")
    student = make_actor(race_app)
    course = make_course(race_app, instructor.id, title=TITLE)
    client = race_app.test_client()
    bought = buy(client, standin, student, course)
    request = ok(client.post(f"{PAY}/{bought.payment_id}/refund-request",
                             json={"reason": "Refund please"}, headers=student.headers),
                 201)["refund_request"]
    n = 5
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def worker(i: int) -> None:
        c = race_app.test_client()
        try:
            barrier.wait(timeout=30)
            response = c.put(f"{API}/admin/refund-requests/{request['id']}",
                             json={"action": "approve"}, headers=admin.headers)
            results[i] = (response.status_code, response.get_json())
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # The first approval answers 200; the others find it processed (409) or, arriving while
    # it was in flight, complete it with it (200). One refund, one approval on record.
    statuses = sorted(r[0] if isinstance(r, tuple) else r for r in results)
    assert set(statuses) <= {200, 409} and statuses[0] == 200, results
    assert len(standin.refunds_for(bought.intent)) == 1
    payment = payment_row(race_app, bought.payment_id)
    assert (payment.status, payment.refunded_amount) == ("refunded", PRICE)
    assert count(race_app, Notification, Notification.title == "Refund processed") == 1
    assert count(race_app, AuditLog) == 1
