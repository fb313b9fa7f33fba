"""Exactly-once settlement under real concurrency (issue 6's acceptance test).

A real gunicorn (tests/support/gunicorn_server.py) runs the production configuration with four
sync workers on a scratch PostgreSQL database (schema from `flask db upgrade`) and the suite's
Redis database, with RAZORPAY_* pointing at the Razorpay stand-in that runs in this test process
on 127.0.0.1 (tests/support/razorpay_stub.py). The same signed webhook, then different events
and browser verify calls for one payment, arrive at the same moment on separate connections, so
several worker processes race on the same payment row; the database must end with one
completed payment, one enrollment, one invoice number. Events are told apart by what the
signature covers, never by the unsigned X-Razorpay-Event-Id header, which varies here.

Users, courses and pending payments are seeded straight into the scratch database through an
in-process app; the browser's token comes from logging in through the API.
"""
from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from app import create_app
from config import normalise_database_url
from models import (
    Course,
    Enrollment,
    InvoiceCounter,
    Notification,
    Payment,
    User,
    WebhookEvent,
    db,
)
from tests.conftest import postgres_url, redis_url, require_service
from tests.support.concurrency import all_at_once
from tests.support.gunicorn_server import GunicornServer, production_env, run_flask
from tests.support.razorpay_stub import KEY_ID, KEY_SECRET, WEBHOOK_SECRET, RazorpayStub
from utils.helpers import utcnow

API = "/api/v1"
WEBHOOK = f"{API}/payments/razorpay/webhook"
VERIFY = f"{API}/payments/razorpay/verify"
WORKERS = 4
PASSWORD = "Concurrent-pay-1"
PRICE = Decimal("499.00")
MINOR = 49900


@pytest.fixture(scope="module")
def scratch_database():
    url = make_url(normalise_database_url(
        require_service("PostgreSQL (TEST_POSTGRES_URL)", postgres_url())))
    name = f"lms_rzp_race_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="module")
def stub():
    with RazorpayStub(KEY_ID, KEY_SECRET, WEBHOOK_SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def server(scratch_database, stub, tmp_path_factory):
    redis = require_service("Redis (TEST_REDIS_URL)", redis_url())
    env = production_env(
        scratch_database, redis,
        RAZORPAY_KEY_ID=KEY_ID,
        RAZORPAY_KEY_SECRET=KEY_SECRET,
        RAZORPAY_WEBHOOK_SECRET=WEBHOOK_SECRET,
        RAZORPAY_API_BASE=stub.url,
        RATE_LIMIT_LOGIN="1000 per minute",
        RATE_LIMIT_PAYMENT_VERIFY="1000 per minute",
    )
    run_flask(env, "db", "upgrade")
    gunicorn = GunicornServer(env, tmp_path_factory.mktemp("gunicorn") / "gunicorn.log",
                              workers=WORKERS)
    gunicorn.start(ready_timeout=30)
    try:
        assert len(gunicorn.worker_pids) == WORKERS, gunicorn.log_tail()
        yield gunicorn
    finally:
        gunicorn.stop()


@pytest.fixture(scope="module")
def scratch_app(scratch_database):
    """An in-process app on the scratch database, for seeding and for reading the outcome."""
    app = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(scratch_database),
        "RAZORPAY_KEY_ID": KEY_ID, "RAZORPAY_KEY_SECRET": KEY_SECRET,
        "RAZORPAY_WEBHOOK_SECRET": WEBHOOK_SECRET})
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def _seed(app, stub) -> dict:
    """A student, an instructor, two paid courses and, for each, a pending payment whose order
    exists at the stub."""
    tag = uuid.uuid4().hex[:8]
    with app.app_context():
        student = User(email=f"buyer-{tag}@example.com", first_name="Race", last_name="Buyer",
                       role="student", is_active=True, is_email_verified=True)
        student.set_password(PASSWORD)
        teacher = User(email=f"teacher-{tag}@example.com", first_name="Race",
                       last_name="Teacher", role="instructor", is_active=True,
                       is_email_verified=True)
        db.session.add_all([student, teacher])
        db.session.flush()
        seeded = {"student": student.id, "email": student.email, "payments": []}
        for n in range(2):
            course = Course(title=f"Race course {n} {tag}", slug=f"race-{n}-{tag}",
                            instructor_id=teacher.id, price=PRICE, currency="INR",
                            status="published", published_at=utcnow())
            db.session.add(course)
            db.session.flush()
            payment = Payment(user_id=student.id, course_id=course.id, gateway="razorpay",
                              amount=PRICE, currency="INR", status="pending")
            db.session.add(payment)
            db.session.flush()
            order = stub.create_order(MINOR, "INR", f"payment-{payment.id}",
                                      {"payment_id": str(payment.id)})
            payment.gateway_order_id = order["id"]
            seeded["payments"].append({"id": payment.id, "course_id": course.id,
                                       "order_id": order["id"]})
        db.session.commit()
    return seeded


def _hook(server, body: str, signature: str, event_id: str, tag: str):
    return lambda: server.send("POST", WEBHOOK, tag=tag, data=body.encode(), headers={
        "Content-Type": "application/json", "X-Razorpay-Signature": signature,
        "X-Razorpay-Event-Id": event_id})


def _outcome(app, payment: dict, user_id: int) -> dict:
    with app.app_context():
        db.session.remove()
        row = db.session.get(Payment, payment["id"])
        enrollments = db.session.scalars(select(Enrollment).where(
            Enrollment.user_id == user_id, Enrollment.course_id == payment["course_id"])).all()
        events = db.session.scalars(select(WebhookEvent).where(
            WebhookEvent.payment_id == payment["id"])).all()
        return {
            "status": row.status, "gateway_payment_id": row.gateway_payment_id,
            "invoice_number": row.invoice_number, "paid_at": row.paid_at,
            "enrollments": [(e.status, e.payment_id) for e in enrollments],
            "events": sorted((e.event_id, e.status) for e in events),
            "all_events": db.session.scalar(select(func.count()).select_from(WebhookEvent)),
            "received_notices": db.session.scalar(select(func.count()).select_from(
                Notification).where(Notification.user_id == user_id,
                                    Notification.title == "Payment received")),
            "counter": db.session.scalar(select(InvoiceCounter.last_number)),
            "invoices": sorted(n for n in db.session.scalars(select(Payment.invoice_number))
                               if n),
        }


def test_concurrent_webhooks_and_verify_calls_settle_exactly_once(server, stub, scratch_app):
    seeded = _seed(scratch_app, stub)
    student = seeded["student"]
    first, second = seeded["payments"]

    # 1. The same signed payment.captured, ten times at once, each with an unsigned event-id
    # header of its own (as a replayer would send it).
    paid, _ = stub.pay(first["order_id"])
    body, signature = stub.payment_event("payment.captured", paid)
    answers = server.attribute(all_at_once(
        [_hook(server, body, signature, f"evt_same_delivery_{n}", "same") for n in range(10)]))
    assert [a.status for a in answers] == [200] * 10, [(a.status, a.body) for a in answers]
    fresh = [a.body for a in answers if not a.body.get("duplicate")]
    assert fresh == [{"received": True}], [a.body for a in answers]
    assert len({a.pid for a in answers}) >= 2, "only one worker answered: no race was run"

    outcome = _outcome(scratch_app, first, student)
    assert outcome["status"] == "completed" and outcome["gateway_payment_id"] == paid["id"]
    assert outcome["invoice_number"] and outcome["paid_at"] is not None
    assert outcome["enrollments"] == [("active", first["id"])]
    assert outcome["events"] == [(f"payment.captured:{paid['id']}", "processed")]
    assert outcome["all_events"] == 1
    assert outcome["received_notices"] == 1
    assert outcome["counter"] == 1 and outcome["invoices"] == [outcome["invoice_number"]]

    # 2. Ten different events for another payment and five browser verify calls, at once.
    login = server.send("POST", f"{API}/auth/login",
                        json={"email": seeded["email"], "password": PASSWORD})
    assert login.status == 200, login.body
    bearer = {"Authorization": f"Bearer {login.body['access_token']}"}
    paid2, checkout_signature = stub.pay(second["order_id"])
    calls = []
    for n in range(10):
        kind = "payment.captured" if n % 2 == 0 else "order.paid"
        hook_body, hook_signature = stub.payment_event(kind, paid2)
        calls.append(_hook(server, hook_body, hook_signature, f"evt_distinct_{n}", "distinct"))
    verify_body = {"razorpay_order_id": second["order_id"], "razorpay_payment_id": paid2["id"],
                   "razorpay_signature": checkout_signature}
    calls += [lambda: server.send("POST", VERIFY, tag="verify", json=verify_body,
                                  headers=bearer)] * 5
    answers = server.attribute(all_at_once(calls))
    assert [a.status for a in answers] == [200] * 15, [(a.status, a.body) for a in answers]
    # Two events (payment.captured and order.paid of that payment), each recorded once; the
    # other deliveries, whatever their event-id header, are duplicates.
    fresh = [a.body for a in answers[:10] if not a.body.get("duplicate")]
    assert fresh == [{"received": True}] * 2, [a.body for a in answers[:10]]
    for answer in answers[10:]:
        assert answer.body["payment"]["status"] == "completed", answer.body
        assert answer.body["payment"]["gateway_payment_id"] == paid2["id"]
    assert len({a.pid for a in answers}) >= 2, "only one worker answered: no race was run"

    outcome2 = _outcome(scratch_app, second, student)
    assert outcome2["status"] == "completed" and outcome2["gateway_payment_id"] == paid2["id"]
    assert outcome2["enrollments"] == [("active", second["id"])]
    assert outcome2["events"] == [(f"order.paid:{second['order_id']}", "processed"),
                                  (f"payment.captured:{paid2['id']}", "processed")]
    assert outcome2["all_events"] == 3
    # Settled once: one "payment received" notice per payment, one invoice number each, and
    # the invoice counter without gaps.
    assert outcome2["received_notices"] == 2
    assert outcome2["counter"] == 2
    assert outcome2["invoices"] == sorted([outcome["invoice_number"],
                                           outcome2["invoice_number"]])
    assert outcome2["invoice_number"] != outcome["invoice_number"]
    # Every verify answer names the same invoice.
    assert {a.body["payment"]["invoice_number"] for a in answers[10:]} == {
        outcome2["invoice_number"]}
    # The first payment was not touched by the second race.
    assert _outcome(scratch_app, first, student)["invoice_number"] == outcome["invoice_number"]
    # No worker failed a request along the way.
    assert '"status": 500' not in server.log_text()
