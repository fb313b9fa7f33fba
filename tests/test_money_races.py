"""Every money transition raced on a real server (issue 17).

A real gunicorn (tests/support/gunicorn_server.py) runs the production configuration with three
sync workers on a scratch PostgreSQL database (schema from `flask db upgrade`) and a Redis
database of its own, with both gateways' SDKs pointing at the stand-ins running in this test process on
127.0.0.1 (tests/support/razorpay_stub.py, tests/support/stripe_standin.py). Requests are
released together by a barrier (tests/support/concurrency.py), each on a connection of its
own, and the request log names the worker that answered: every race must have been served by
at least two worker processes.

- Eight refund requests for one payment at once: exactly one 201, seven 409, one open request.
- Six approvals of one request at once (each gateway): one refund at the gateway, one
  recorded, one approval in the audit log.
- One signed refund event delivered ten times at once with other unsigned headers (Razorpay's
  event id; Stripe's signature timestamp): recorded once, the refunded total counted once.
- Stripe's checkout.session.completed redelivered while the reconciler settles the same
  payment: one settlement.
- After a commit failed behind a gateway refund, the retried approvals, the gateway's
  webhooks and the reconciler all at once: one recorded refund.
- The same Idempotency-Key sent six times at once: one order, every answer the first or 409.

Users and courses are seeded straight into the scratch database through an in-process app,
which also mints the tokens (the server's JWT secret is shared with it).
"""
from __future__ import annotations

import json
import uuid
from decimal import Decimal

import pytest
import razorpay
from flask_jwt_extended import create_access_token
from sqlalchemy import func, select, update

from app import create_app
from config import normalise_database_url
from models import (
    AuditLog,
    Course,
    Enrollment,
    IdempotencyKey,
    Notification,
    Payment,
    PaymentRefund,
    RefundRequest,
    User,
    WebhookEvent,
    db,
)
from tests.support.concurrency import all_at_once
from tests.support.faults import Faults
from tests.support.gunicorn_server import GunicornServer, production_env, run_flask
from tests.support.razorpay_stub import KEY_ID, KEY_SECRET, WEBHOOK_SECRET, RazorpayStub
from tests.support.scratch_services import flushed_redis, own_redis_url, scratch_postgres
from tests.support.stripe_standin import signature_header, stripe_event, stripe_standin
from utils.helpers import utcnow

API = "/api/v1"
PAY = f"{API}/payments"
WORKERS = 3
STRIPE_SECRET = "whsec_races"
PRICES = {"razorpay": (Decimal("499.00"), "INR"), "stripe": (Decimal("49.99"), "USD")}


@pytest.fixture(scope="module")
def scratch_database():
    with scratch_postgres("lms_money_race") as url:
        yield url


@pytest.fixture(scope="module")
def scratch_redis():
    # Databases 8 (or 7) of the suite's Redis: no other module uses them (.ci/run's passes
    # take 15, 10 and 9; the other server tests 14/13 and 12/11).
    with flushed_redis(own_redis_url(8, 7)) as url:
        yield url


@pytest.fixture(scope="module")
def rzp():
    with RazorpayStub(KEY_ID, KEY_SECRET, WEBHOOK_SECRET) as stub:
        yield stub


@pytest.fixture(scope="module")
def standin():
    server = stripe_standin()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(scratch_database, scratch_redis, rzp, standin):
    return production_env(
        scratch_database, scratch_redis,
        RAZORPAY_KEY_ID=KEY_ID, RAZORPAY_KEY_SECRET=KEY_SECRET,
        RAZORPAY_WEBHOOK_SECRET=WEBHOOK_SECRET, RAZORPAY_API_BASE=rzp.url,
        STRIPE_SECRET_KEY="sk_test_races", STRIPE_WEBHOOK_SECRET=STRIPE_SECRET,
        STRIPE_API_BASE=standin.url, JOBS_BACKEND="inline",
        RATE_LIMIT_PAYMENT_CREATE="1000 per minute",
        RATE_LIMIT_PAYMENT_VERIFY="1000 per minute")


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
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
def scratch_app(scratch_database, env):
    """In-process, on the scratch database: seeding, tokens (the server's JWT secret), and
    reading the outcome."""
    app = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(scratch_database),
        "JWT_SECRET_KEY": env["JWT_SECRET_KEY"]})
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


class Shop:
    """One test's people and course on the scratch database, and the requests it sends."""

    def __init__(self, app, server, rzp, standin, gateway: str):
        self.app, self.server, self.rzp, self.standin = app, server, rzp, standin
        self.gateway = gateway
        tag = uuid.uuid4().hex[:8]
        price, currency = PRICES[gateway]
        with app.app_context():
            people = {role: User(email=f"{role}-{tag}@example.com", first_name="Race",
                                 last_name=role.capitalize(), role=role, is_active=True,
                                 is_email_verified=True)
                      for role in ("student", "instructor", "admin")}
            for person in people.values():
                person.set_password("Race-money-1")
            db.session.add_all(people.values())
            db.session.flush()
            course = Course(title=f"Race course {tag}", slug=f"race-money-{tag}",
                            instructor_id=people["instructor"].id, price=price,
                            currency=currency, status="published", published_at=utcnow())
            db.session.add(course)
            db.session.commit()
            self.ids = {role: person.id for role, person in people.items()}
            self.tokens = {role: create_access_token(person) for role, person in people.items()}
            self.course, self.price = course.id, price

    def auth(self, role: str, **headers) -> dict:
        return {"Authorization": f"Bearer {self.tokens[role]}", **headers}

    def send(self, method: str, path: str, role: str | None = None, *, tag: str = "money",
             headers: dict | None = None, **kwargs):
        headers = {**(self.auth(role) if role else {}), **(headers or {})}
        return self.server.send(method, path, tag=tag, headers=headers, **kwargs)

    def together(self, calls: list):
        answers = self.server.attribute(all_at_once(calls))
        assert len({a.pid for a in answers}) >= 2, "only one worker answered: no race was run"
        assert all(a.status < 500 for a in answers), [(a.status, a.body) for a in answers]
        return answers

    # --- buying --------------------------------------------------------------------------------

    def buy(self) -> dict:
        if self.gateway == "razorpay":
            order = self.send("POST", f"{PAY}/razorpay/create-order", "student",
                              json={"course_id": self.course})
            assert order.status == 201, order.body
            order = order.body["order"]
            paid, signature = self.rzp.pay(order["order_id"])
            verified = self.send("POST", f"{PAY}/razorpay/verify", "student", json={
                "razorpay_order_id": order["order_id"], "razorpay_payment_id": paid["id"],
                "razorpay_signature": signature})
            assert verified.status == 200, verified.body
            return {"payment_id": order["payment_id"], "gateway_payment": paid["id"]}
        opened = self.send("POST", f"{PAY}/stripe/create-checkout", "student",
                           json={"course_id": self.course})
        assert opened.status == 201, opened.body
        session = self.standin.pay(opened.body["session_id"])
        settled = self.stripe_hook(stripe_event("checkout.session.completed", session))
        assert settled.status == 200, settled.body
        return {"payment_id": opened.body["payment_id"],
                "gateway_payment": session["payment_intent"], "session": session}

    def stripe_hook(self, event: dict, timestamp: int | None = None, tag: str = "stripe"):
        body = json.dumps(event).encode()
        return self.send("POST", f"{PAY}/stripe/webhook", tag=tag, data=body, headers={
            "Content-Type": "application/json",
            "Stripe-Signature": signature_header(body, STRIPE_SECRET, timestamp)})

    def razorpay_hook(self, body: str, signature: str, event_id: str, tag: str = "rzp"):
        return self.send("POST", f"{PAY}/razorpay/webhook", tag=tag, data=body.encode(),
                         headers={"Content-Type": "application/json",
                                  "X-Razorpay-Signature": signature,
                                  "X-Razorpay-Event-Id": event_id})

    def ask_refund(self, payment_id: int) -> int:
        asked = self.send("POST", f"{PAY}/{payment_id}/refund-request", "student",
                          json={"reason": "Not what I expected"})
        assert asked.status == 201, asked.body
        return asked.body["refund_request"]["id"]

    def approve(self, request_id: int, tag: str = "approve", **headers):
        return self.send("PUT", f"{API}/admin/refund-requests/{request_id}", "admin", tag=tag,
                         headers=headers, json={"action": "approve"})

    def gateway_refunds(self, bought: dict) -> list[dict]:
        if self.gateway == "razorpay":
            return [r for r in self.rzp.refunds.values()
                    if r["payment_id"] == bought["gateway_payment"]]
        return self.standin.refunds_for(bought["gateway_payment"])

    # --- reading ---------------------------------------------------------------------------------

    def count(self, model, *where) -> int:
        with self.app.app_context():
            db.session.remove()
            return db.session.scalar(select(func.count()).select_from(model).where(*where))

    def payment(self, payment_id: int) -> tuple:
        with self.app.app_context():
            db.session.remove()
            row = db.session.get(Payment, payment_id)
            return row.status, row.refunded_amount

    def enrollment(self) -> list[str]:
        with self.app.app_context():
            db.session.remove()
            return list(db.session.scalars(select(Enrollment.status).where(
                Enrollment.user_id == self.ids["student"])))


@pytest.fixture
def shop(scratch_app, server, rzp, standin):
    def _shop(gateway: str = "razorpay") -> Shop:
        return Shop(scratch_app, server, rzp, standin, gateway)

    return _shop


def test_eight_refund_requests_at_once_open_one(shop):
    s = shop()
    bought = s.buy()
    answers = s.together([
        lambda: s.send("POST", f"{PAY}/{bought['payment_id']}/refund-request", "student",
                       tag="ask", json={"reason": "Not what I expected"})] * 8)
    assert sorted(a.status for a in answers) == [201] + [409] * 7, [a.body for a in answers]
    assert {a.body["code"] for a in answers if a.status == 409} == {"refund_already_requested"}
    assert s.count(RefundRequest, RefundRequest.payment_id == bought["payment_id"]) == 1


@pytest.mark.parametrize("gateway", ["razorpay", "stripe"])
def test_six_approvals_at_once_refund_once(shop, gateway):
    s = shop(gateway)
    bought = s.buy()
    request_id = s.ask_refund(bought["payment_id"])
    answers = s.together([lambda: s.approve(request_id)] * 6)
    statuses = sorted(a.status for a in answers)
    assert set(statuses) <= {200, 409} and statuses[0] == 200, [a.body for a in answers]
    assert {a.body["refund_request"]["status"] for a in answers if a.status == 200} == \
        {"processed"}
    assert len(s.gateway_refunds(bought)) == 1
    assert s.count(PaymentRefund, PaymentRefund.payment_id == bought["payment_id"]) == 1
    assert s.payment(bought["payment_id"]) == ("refunded", s.price)
    assert s.enrollment() == ["refunded"]
    assert s.count(AuditLog, AuditLog.action == "refund_request.approve",
                   AuditLog.target_id == request_id) == 1
    assert s.count(Notification, Notification.user_id == s.ids["student"],
                   Notification.title == "Refund processed") == 1


def test_one_razorpay_refund_event_ten_times_at_once_counts_once(shop):
    """The issue's replay: one signed refund.processed for 200 INR, sent again with fresh
    X-Razorpay-Event-Id values, all at once."""
    s = shop()
    bought = s.buy()
    refund = razorpay.Client(auth=(KEY_ID, KEY_SECRET), base_url=s.rzp.url).payment.refund(
        bought["gateway_payment"], {"amount": 20000})  # made at Razorpay's dashboard
    body, signature = s.rzp.webhook("refund.processed", {"refund": {"entity": refund}})
    answers = s.together([
        (lambda n=n: s.razorpay_hook(body, signature, f"evt_fresh_{n}")) for n in range(10)])
    assert [a.status for a in answers] == [200] * 10
    assert sum(not a.body.get("duplicate") for a in answers) == 1, [a.body for a in answers]
    assert s.payment(bought["payment_id"]) == ("completed", Decimal("200.00"))
    assert s.count(PaymentRefund, PaymentRefund.payment_id == bought["payment_id"]) == 1
    assert s.enrollment() == ["active"]


def test_one_stripe_refund_in_many_deliveries_at_once_counts_once(shop):
    """charge.refunded redelivered with fresh Stripe-Signature headers, and another event
    (refund.created) about the same refund, all at once."""
    s = shop("stripe")
    bought = s.buy()
    refund = s.standin.client().v1.refunds.create(params={
        "payment_intent": bought["gateway_payment"], "amount": 1000}).to_dict()
    charged = stripe_event("charge.refunded", s.standin.charge_of(bought["gateway_payment"]))
    created = stripe_event("refund.created", refund)
    now = int(utcnow().timestamp())
    calls = [(lambda n=n: s.stripe_hook(charged, timestamp=now - n)) for n in range(8)]
    calls += [lambda: s.stripe_hook(created)] * 2
    answers = s.together(calls)
    assert [a.status for a in answers] == [200] * 10, [a.body for a in answers]
    assert s.payment(bought["payment_id"]) == ("completed", Decimal("10.00"))
    assert s.count(PaymentRefund, PaymentRefund.payment_id == bought["payment_id"]) == 1
    with s.app.app_context():
        db.session.remove()
        assert sorted(db.session.scalars(select(WebhookEvent.event_id).where(
            WebhookEvent.payment_id == bought["payment_id"],
            WebhookEvent.event_type != "checkout.session.completed"))) == \
            sorted([charged["id"], created["id"]])


def test_stripe_settlement_redelivered_while_the_reconciler_settles(shop):
    s = shop("stripe")
    opened = s.send("POST", f"{PAY}/stripe/create-checkout", "student",
                    json={"course_id": s.course}).body
    session = s.standin.pay(opened["session_id"])
    with s.app.app_context():  # old enough for the reconciler to ask Stripe about it
        db.session.execute(update(Payment).where(Payment.id == opened["payment_id"]).values(
            created_at=utcnow().replace(year=utcnow().year - 1)))
        db.session.commit()
    event = stripe_event("checkout.session.completed", session)
    now = int(utcnow().timestamp())
    calls = [(lambda n=n: s.stripe_hook(event, timestamp=now - n)) for n in range(6)]
    calls += [lambda: s.send("POST", f"{API}/admin/payments/reconcile", "admin",
                             tag="reconcile", json={})] * 2
    answers = s.together(calls)
    assert sorted(a.status for a in answers) == [200] * 6 + [202] * 2
    with s.app.app_context():
        db.session.remove()
        payment = db.session.get(Payment, opened["payment_id"])
        assert payment.status == "completed" and payment.invoice_number
        assert db.session.scalar(select(func.count()).select_from(Notification).where(
            Notification.user_id == s.ids["student"],
            Notification.title == "Payment received")) == 1
    assert s.enrollment() == ["active"]


def test_every_way_of_learning_of_a_lost_refund_at_once_records_it_once(shop, scratch_app):
    """The gateway refunded and our commit failed; then the admin's retries, the gateway's
    webhooks (fresh headers each) and the reconciler arrive together."""
    s = shop()
    bought = s.buy()
    request_id = s.ask_refund(bought["payment_id"])
    faults = Faults(scratch_app)
    faults.inject("payment_refunds", "INSERT")
    try:
        failed = s.approve(request_id)
    finally:
        faults.clear()
    assert failed.status == 500, failed.body
    [refund] = s.gateway_refunds(bought)
    body, signature = s.rzp.webhook("refund.processed", {"refund": {"entity": refund}})
    calls = [lambda: s.approve(request_id)] * 3
    calls += [(lambda n=n: s.razorpay_hook(body, signature, f"evt_lost_{n}")) for n in range(3)]
    calls += [lambda: s.send("POST", f"{API}/admin/payments/reconcile", "admin",
                             tag="reconcile", json={})] * 2
    answers = s.together(calls)
    assert {a.status for a in answers[:3]} <= {200, 409}, [a.body for a in answers[:3]]
    assert [a.status for a in answers[3:6]] == [200] * 3
    assert [a.status for a in answers[6:]] == [202] * 2
    assert len(s.gateway_refunds(bought)) == 1
    with s.app.app_context():
        db.session.remove()
        [row] = db.session.scalars(select(PaymentRefund).where(
            PaymentRefund.payment_id == bought["payment_id"])).all()
        assert (row.gateway_refund_id, row.refund_request_id) == (refund["id"], request_id)
        assert db.session.get(RefundRequest, request_id).status == "processed"
    assert s.payment(bought["payment_id"]) == ("refunded", s.price)
    assert s.enrollment() == ["refunded"]


def test_one_idempotency_key_six_times_at_once_opens_one_order(shop):
    s = shop()
    answers = s.together([
        lambda: s.send("POST", f"{PAY}/razorpay/create-order", "student", tag="keyed",
                       headers={"Idempotency-Key": "race-key-1"},
                       json={"course_id": s.course})] * 6)
    assert {a.status for a in answers} <= {201, 409}, [(a.status, a.body) for a in answers]
    created = [a for a in answers if a.status == 201]
    assert created and len({json.dumps(a.body, sort_keys=True) for a in created}) == 1
    assert {a.body["code"] for a in answers if a.status == 409} <= {"idempotency_key_in_use"}
    assert s.count(Payment, Payment.user_id == s.ids["student"]) == 1
    assert s.count(IdempotencyKey, IdempotencyKey.user_id == s.ids["student"]) == 1
    order_id = created[0].body["order"]["order_id"]
    assert [o for o in s.rzp.orders if o == order_id] == [order_id]
    assert len([r for r in s.rzp.requests_to("/v1/orders") if r.method == "POST"
                and (r.json or {}).get("notes", {}).get("user_id") == str(s.ids["student"])]) == 1
