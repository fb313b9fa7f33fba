"""Razorpay end to end through the HTTP API, with the REAL `razorpay` SDK talking to a local
stand-in of Razorpay's v1 API (tests/support/razorpay_stub.py): only the network edge is
replaced, never our own code.

Orders (both route sets), the checkout's verify call, signed webhooks (exactly once, replays,
tampering, wrong amounts, unknown orders), the browser and the webhook converging on one
settlement, the refund round trip through the admin's approval, and the reconciler.

Each test gets its own app (create_app("testing", overrides=...)) on the session app's database
with RAZORPAY_API_BASE pointing at the stub. For in-memory SQLite that app has a database of its
own, so the schema is created there and dropped afterwards; otherwise the autouse clean_state
fixture empties the shared database after each test.
"""
from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

import pytest
from flask.cli import FlaskGroup
from flask_jwt_extended import create_access_token
from sqlalchemy import func, select

from app import create_app
from models import (
    AuditLog,
    Certificate,
    Course,
    CoursePrerequisite,
    Enrollment,
    InvoiceCounter,
    Notification,
    Payment,
    PaymentRefund,
    RefundRequest,
    User,
    WebhookEvent,
    db,
)
from tests.support.assertions import error, ok
from tests.support.razorpay_stub import KEY_ID, KEY_SECRET, WEBHOOK_SECRET, RazorpayStub
from utils.helpers import utcnow

API = "/api/v1"
PAY = f"{API}/payments"
CREATE_ROUTES = (f"{PAY}/razorpay/create-order", f"{PAY}/create-order")
VERIFY_ROUTES = (f"{PAY}/razorpay/verify", f"{PAY}/verify-payment")
WEBHOOK = f"{PAY}/razorpay/webhook"
PRICE = Decimal("499.00")
MINOR = 49900
_SERIAL = itertools.count(1)  # unique names across the worlds of one test (one database)
INVOICE_RE = re.compile(r"^INV-\d{4}-\d{6}$")
RELAXED_LIMITS = {"RATE_LIMIT_PAYMENT_CREATE": "1000 per minute",
                  "RATE_LIMIT_PAYMENT_VERIFY": "1000 per minute",
                  "RATE_LIMIT_LOGIN": "1000 per minute"}


def _memory_sqlite(uri: str) -> bool:
    return uri in ("sqlite://", "sqlite:///:memory:") or ":memory:" in uri or "mode=memory" in uri


# --- the world a test runs in -------------------------------------------------------------------

@dataclass
class World:
    app: object
    client: object
    stub: RazorpayStub

    # rows through the ORM (setup and assertions only, never around a request)
    def add(self, obj) -> int:
        with self.app.app_context():
            db.session.add(obj)
            db.session.commit()
            return getattr(obj, "id", None)

    def user(self, role: str = "student", **fields) -> int:
        n = next(_SERIAL)
        values = {"email": f"{role}{n}@example.com", "first_name": role.capitalize(),
                  "last_name": f"Number{n}", "role": role, "is_active": True,
                  "is_email_verified": True, "phone_number": f"+9198765{n:05d}", **fields}
        with self.app.app_context():
            user = User(**values)
            user.set_password("Passw0rd!")
            db.session.add(user)
            db.session.commit()
            return user.id

    def course(self, price: Decimal | str = PRICE, currency: str = "INR",
               status: str = "published", **fields) -> int:
        n = next(_SERIAL)
        instructor = fields.pop("instructor_id", None) or self.user("instructor")
        return self.add(Course(title=f"Course {n}", slug=f"course-{n}",
                               instructor_id=instructor, price=Decimal(price),
                               currency=currency, status=status,
                               published_at=utcnow() if status == "published" else None,
                               **fields))

    def headers(self, user_id: int) -> dict:
        with self.app.app_context():
            token = create_access_token(db.session.get(User, user_id))
        return {"Authorization": f"Bearer {token}"}

    def count(self, model, *where) -> int:
        with self.app.app_context():
            return db.session.scalar(select(func.count()).select_from(model).where(*where))

    def row(self, model, *where) -> dict | None:
        """The one row matching `where` as a dict of its columns (or None)."""
        with self.app.app_context():
            obj = db.session.scalars(select(model).where(*where)).one_or_none()
            if obj is None:
                return None
            return {c.key: getattr(obj, c.key) for c in model.__mapper__.column_attrs}

    def update(self, model, obj_id: int, **values) -> None:
        with self.app.app_context():
            obj = db.session.get(model, obj_id)
            for key, value in values.items():
                setattr(obj, key, value)
            db.session.commit()

    # the API
    def create_order(self, user_id: int, course_id: int, route: str = CREATE_ROUTES[0]):
        return self.client.post(route, json={"course_id": course_id},
                                headers=self.headers(user_id))

    def order_for(self, user_id: int, course_id: int) -> dict:
        return ok(self.create_order(user_id, course_id), 201)["order"]

    def verify(self, user_id: int, order_id: str, payment_id: str, signature: str,
               route: str = VERIFY_ROUTES[0]):
        return self.client.post(route, headers=self.headers(user_id), json={
            "razorpay_order_id": order_id, "razorpay_payment_id": payment_id,
            "razorpay_signature": signature})

    def webhook(self, body: str, signature: str | None, event_id: str | None = None):
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["X-Razorpay-Signature"] = signature
        if event_id is not None:
            headers["X-Razorpay-Event-Id"] = event_id
        return self.client.post(WEBHOOK, data=body.encode(), headers=headers)

    def paid_course(self) -> tuple[int, int, dict]:
        """(student, course, order) with an open order for the course."""
        student, course = self.user(), self.course()
        return student, course, self.order_for(student, course)

    def settled(self) -> tuple[int, int, dict, dict]:
        """(student, course, order, stub payment) with the payment settled by verify."""
        student, course, order = self.paid_course()
        payment, signature = self.stub.pay(order["order_id"])
        ok(self.verify(student, order["order_id"], payment["id"], signature))
        return student, course, order, payment

    def money_state(self) -> dict:
        """Everything a settlement or refund may change, to compare before and after."""
        with self.app.app_context():
            def rows(model, *cols):
                return sorted(tuple(getattr(r, c) for c in cols)
                              for r in db.session.scalars(select(model)))
            return {
                "payments": rows(Payment, "id", "status", "gateway_payment_id", "paid_at",
                                 "invoice_number", "refunded_amount", "failure_reason"),
                "enrollments": rows(Enrollment, "id", "user_id", "course_id", "status",
                                    "payment_id"),
                "notifications": rows(Notification, "id", "title"),
                "events": rows(WebhookEvent, "id", "event_id", "status"),
                "refund_requests": rows(RefundRequest, "id", "status"),
                "certificates": rows(Certificate, "id", "status"),
                "audit": rows(AuditLog, "id", "action"),
                "invoice_counters": rows(InvoiceCounter, "year", "last_number"),
            }


def flask_cli(gw, *args: str):
    """`flask <args>` as the `flask` command runs it (FlaskGroup loads the app and pushes its
    context), through the app's CLI test runner."""
    group = FlaskGroup(add_default_commands=False, add_version_option=False,
                       load_dotenv=False, set_debug_flag=False)
    return gw.test_cli_runner().invoke(group, args=list(args))


@pytest.fixture(scope="module")
def stub():
    with RazorpayStub(KEY_ID, KEY_SECRET, WEBHOOK_SECRET) as server:
        yield server


@pytest.fixture
def build(app, stub):
    """build(**overrides) -> World: a testing app wired to the stub."""
    stub.reset()
    built = []

    def _build(**overrides) -> World:
        uri = app.config["SQLALCHEMY_DATABASE_URI"]
        config = {"RAZORPAY_KEY_ID": KEY_ID, "RAZORPAY_KEY_SECRET": KEY_SECRET,
                  "RAZORPAY_WEBHOOK_SECRET": WEBHOOK_SECRET, "RAZORPAY_API_BASE": stub.url,
                  "SQLALCHEMY_DATABASE_URI": uri, "UPLOAD_FOLDER": app.config["UPLOAD_FOLDER"],
                  **RELAXED_LIMITS, **overrides}
        gw = create_app("testing", overrides=config)
        separate = _memory_sqlite(uri)
        if separate:
            with gw.app_context():
                db.create_all()
        built.append((gw, separate))
        return World(gw, gw.test_client(), stub)

    yield _build
    stub.recover()
    for gw, separate in built:
        with gw.app_context():
            db.session.remove()
            if separate:
                db.drop_all()
            db.engine.dispose()


@pytest.fixture
def w(build) -> World:
    return build()


# --- create-order ---------------------------------------------------------------------------------

def test_create_order_through_both_routes_reuses_the_open_order(w):
    student, course = w.user(), w.course()
    body = ok(w.create_order(student, course, CREATE_ROUTES[0]), 201)
    order = body["order"]
    assert order["order_id"].startswith("order_") and order["order_id"] in w.stub.orders
    assert order["amount"] == MINOR and order["currency"] == "INR"
    assert order["key_id"] == KEY_ID
    assert isinstance(order["payment_id"], int)
    user = w.row(User, User.id == student)
    assert order["prefill"] == {"name": f"{user['first_name']} {user['last_name']}",
                                "email": user["email"], "contact": user["phone_number"]}
    assert KEY_SECRET not in json.dumps(body) and WEBHOOK_SECRET not in json.dumps(body)

    # What the SDK sent: JSON with Basic auth, the amount in paise from Decimal.
    [sent] = w.stub.api_calls("POST")
    assert sent.path == "/v1/orders"
    assert sent.basic_auth == (KEY_ID, KEY_SECRET)
    assert sent.json["amount"] == MINOR and isinstance(sent.json["amount"], int)
    assert sent.json["currency"] == "INR"
    assert sent.json["receipt"] == f"payment-{order['payment_id']}"
    assert sent.json["notes"] == {"payment_id": str(order["payment_id"]),
                                  "user_id": str(student), "course_id": str(course)}

    payment = w.row(Payment, Payment.id == order["payment_id"])
    assert payment["status"] == "pending" and payment["gateway"] == "razorpay"
    assert payment["gateway_order_id"] == order["order_id"]
    assert payment["amount"] == PRICE and payment["currency"] == "INR"
    assert payment["user_id"] == student and payment["course_id"] == course
    assert payment["gateway_response"]["order"]["id"] == order["order_id"]

    # Again (the alias): the same open order, no second payment, no second gateway order.
    again = ok(w.create_order(student, course, CREATE_ROUTES[1]), 200)["order"]
    assert again["order_id"] == order["order_id"]
    assert again["payment_id"] == order["payment_id"] and again["amount"] == MINOR
    assert w.count(Payment) == 1
    assert len(w.stub.requests_to("/v1/orders")) == 1


def test_create_order_refusals_never_reach_the_gateway(w):
    student = w.user()
    free = w.course(price="0.00")
    error(w.create_order(student, free), 409, "course_is_free")

    enrolled = w.course()
    w.add(Enrollment(user_id=student, course_id=enrolled, status="active"))
    error(w.create_order(student, enrolled, CREATE_ROUTES[1]), 409, "already_enrolled")

    needs = w.course()
    before = w.course()
    w.add(CoursePrerequisite(course_id=needs, prerequisite_course_id=before))
    body = error(w.create_order(student, needs), 403, "prerequisites_missing")
    assert [c["id"] for c in body["details"]["missing_prerequisites"]] == [before]

    draft = w.course(status="draft")
    error(w.create_order(student, draft), 404)
    error(w.client.post(CREATE_ROUTES[0], json={"course_id": needs}), 401)

    assert w.stub.api_calls() == []
    assert w.count(Payment) == 0


def test_create_order_without_configuration_names_the_missing_settings(build):
    w = build(RAZORPAY_KEY_ID=None, RAZORPAY_KEY_SECRET=None, RAZORPAY_WEBHOOK_SECRET=None)
    student, course = w.user(), w.course()
    for route in CREATE_ROUTES:
        body = error(w.create_order(student, course, route), 503)
        for name in ("RAZORPAY_KEY_ID", "RAZORPAY_KEY_SECRET", "RAZORPAY_WEBHOOK_SECRET"):
            assert name in body["error"], body
    # Only the secret missing: only the secret is named.
    w2 = build(RAZORPAY_WEBHOOK_SECRET="")
    student2, course2 = w2.user(), w2.course()
    body = error(w2.create_order(student2, course2), 503)
    assert "RAZORPAY_WEBHOOK_SECRET" in body["error"] and "RAZORPAY_KEY_ID" not in body["error"]
    # A webhook cannot be checked without its secret: 503, nothing stored.
    hook, signature = w2.stub.webhook("payment.captured", {"payment": {"entity": {}}})
    error(w2.webhook(hook, signature, "evt_unconfigured"), 503)
    assert w2.count(WebhookEvent) == 0
    assert w.stub.api_calls() == []
    assert w.count(Payment) == 0


def test_create_order_gateway_down_or_failing(w):
    student, course = w.user(), w.course()
    w.stub.go_down()
    body = error(w.create_order(student, course), 503)
    assert "razorpay" in body["error"].lower()
    assert w.count(Payment) == 0

    w.stub.recover()
    w.stub.fail_with(500, "Internal server error")
    body = error(w.create_order(student, course, CREATE_ROUTES[1]), 502, "gateway_error")
    assert "razorpay" in body["error"].lower()
    assert w.count(Payment) == 0

    w.stub.recover()
    # The gateway back: the order is made.
    order = w.order_for(student, course)
    assert order["amount"] == MINOR and w.count(Payment) == 1


def test_a_gateway_that_stops_answering_costs_a_bounded_wait_then_reconciliation_settles(build):
    """Razorpay times out: the request gives up after GATEWAY_TIMEOUT_SECONDS with 503 and keeps
    nothing; a payment captured while our look-up timed out stays pending until the reconciler
    reaches the gateway again."""
    w = build(GATEWAY_TIMEOUT_SECONDS=0.5)
    student, course = w.user(), w.course()
    w.stub.hang(2)
    started = time.monotonic()
    body = error(w.create_order(student, course), 503)
    assert time.monotonic() - started < 1.8
    assert "razorpay" in body["error"].lower() and w.count(Payment) == 0

    w.stub.recover()
    order = w.order_for(student, course)
    w.stub.pay(order["order_id"])
    w.update(Payment, order["payment_id"], created_at=utcnow() - timedelta(hours=2))
    w.stub.hang(2)
    started = time.monotonic()
    result = w.app.test_cli_runner().invoke(args=["payments", "reconcile"])
    assert time.monotonic() - started < 1.8
    assert result.exit_code == 0 and "unknown: 1" in result.output, result.output
    assert w.row(Payment, Payment.id == order["payment_id"])["status"] == "pending"
    assert w.count(Enrollment) == 0

    w.stub.recover()
    result = w.app.test_cli_runner().invoke(args=["payments", "reconcile"])
    assert "settled: 1" in result.output, result.output
    assert w.row(Payment, Payment.id == order["payment_id"])["status"] == "completed"
    assert w.row(Enrollment, Enrollment.course_id == course)["status"] == "active"


def test_create_order_with_a_wrong_key_is_a_gateway_error(build):
    w = build(RAZORPAY_KEY_SECRET="not-the-secret")
    student, course = w.user(), w.course()
    error(w.create_order(student, course), 502, "gateway_error")
    [sent] = w.stub.api_calls()
    assert sent.basic_auth == (KEY_ID, "not-the-secret")
    assert w.count(Payment) == 0


# --- verify ---------------------------------------------------------------------------------------

def test_verify_settles_enrolls_and_is_idempotent(w):
    student, course, order = w.paid_course()
    payment, signature = w.stub.pay(order["order_id"])
    body = ok(w.verify(student, order["order_id"], payment["id"], signature))
    assert body["payment"]["status"] == "completed"
    assert body["payment"]["invoice_url"] == f"{PAY}/{order['payment_id']}/invoice"

    row = w.row(Payment, Payment.id == order["payment_id"])
    assert row["status"] == "completed" and row["gateway_payment_id"] == payment["id"]
    assert row["paid_at"] is not None and INVOICE_RE.match(row["invoice_number"])
    assert row["gateway_response"]["verify"]["id"] == payment["id"]
    enrollment = w.row(Enrollment, Enrollment.user_id == student)
    assert enrollment["course_id"] == course and enrollment["status"] == "active"
    assert enrollment["payment_id"] == order["payment_id"]
    assert w.count(Notification, Notification.user_id == student,
                   Notification.kind == "payment") == 1
    # The invoice: a PDF for the payer, not for anyone else.
    pdf = w.client.get(f"{PAY}/{order['payment_id']}/invoice", headers=w.headers(student))
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    assert pdf.data.startswith(b"%PDF") and row["invoice_number"] in pdf.headers[
        "Content-Disposition"]
    error(w.client.get(f"{PAY}/{order['payment_id']}/invoice", headers=w.headers(w.user())), 404)

    state = w.money_state()
    again = ok(w.verify(student, order["order_id"], payment["id"], signature, VERIFY_ROUTES[1]))
    assert again["payment"]["status"] == "completed"
    assert again["payment"]["invoice_number"] == row["invoice_number"]
    assert w.money_state() == state
    # Bought: no second order for the course.
    error(w.create_order(student, course), 409, "already_enrolled")


def test_verify_with_a_tampered_signature_writes_nothing(w):
    student, course, order = w.paid_course()
    payment, signature = w.stub.pay(order["order_id"])
    state = w.money_state()
    w.stub.clear_requests()
    forged = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    error(w.verify(student, order["order_id"], payment["id"], forged), 400, "invalid_signature")
    # Signed with the webhook secret instead of the key secret.
    other = w.stub.sign_webhook(f"{order['order_id']}|{payment['id']}")
    error(w.verify(student, order["order_id"], payment["id"], other, VERIFY_ROUTES[1]),
          400, "invalid_signature")
    assert w.money_state() == state
    assert w.stub.api_calls() == []  # refused before Razorpay was even asked


@pytest.mark.parametrize("failure", ["500", "down"])
def test_verify_with_the_gateway_failing_writes_nothing(w, failure):
    student, course, order = w.paid_course()
    payment, signature = w.stub.pay(order["order_id"])
    state = w.money_state()
    if failure == "down":
        w.stub.go_down()
        error(w.verify(student, order["order_id"], payment["id"], signature), 503)
    else:
        w.stub.fail_with(500)
        error(w.verify(student, order["order_id"], payment["id"], signature), 502,
              "gateway_error")
    assert w.money_state() == state
    w.stub.recover()
    ok(w.verify(student, order["order_id"], payment["id"], signature))
    assert w.row(Payment, Payment.id == order["payment_id"])["status"] == "completed"


def test_verify_of_another_users_order_is_not_found(w):
    owner, course, order = w.paid_course()
    intruder = w.user()
    payment, signature = w.stub.pay(order["order_id"])
    state = w.money_state()
    error(w.verify(intruder, order["order_id"], payment["id"], signature), 404)
    assert w.money_state() == state
    assert w.count(Enrollment) == 0
    # An order id we never issued: also 404.
    stray = w.stub.create_order(MINOR)
    pay, sig = w.stub.pay(stray["id"])
    error(w.verify(owner, stray["id"], pay["id"], sig), 404)
    assert w.money_state() == state


def test_verify_with_a_payment_of_another_order_is_refused(w):
    student, course, order = w.paid_course()
    elsewhere = w.stub.create_order(MINOR)
    foreign, _ = w.stub.pay(elsewhere["id"])
    # Correctly signed, but for our order: the payment itself says it paid another order.
    signature = w.stub.checkout_signature(order["order_id"], foreign["id"])
    state = w.money_state()
    error(w.verify(student, order["order_id"], foreign["id"], signature), 400)
    assert w.money_state() == state
    assert w.row(Payment, Payment.id == order["payment_id"])["status"] == "pending"


def test_verify_with_the_wrong_amount_is_refused(w):
    student, course, order = w.paid_course()
    payment, signature = w.stub.pay(order["order_id"], amount=100)
    body = error(w.verify(student, order["order_id"], payment["id"], signature), 422,
                 "amount_mismatch")
    assert body["details"]["expected"]["amount_minor"] == MINOR
    assert body["details"]["received"]["amount_minor"] == 100
    row = w.row(Payment, Payment.id == order["payment_id"])
    assert row["status"] == "pending" and row["invoice_number"] is None
    assert row["gateway_payment_id"] is None
    assert w.count(Enrollment) == 0 and w.count(Notification) == 0
    assert w.count(InvoiceCounter) == 0 or w.row(InvoiceCounter)["last_number"] == 0


def test_verify_captures_an_authorized_payment(w):
    student, course, order = w.paid_course()
    payment, signature = w.stub.pay(order["order_id"], status="authorized")
    body = ok(w.verify(student, order["order_id"], payment["id"], signature))
    assert body["payment"]["status"] == "completed"
    [capture] = w.stub.requests_to(f"/v1/payments/{payment['id']}/capture")
    assert capture.method == "POST" and capture.basic_auth == (KEY_ID, KEY_SECRET)
    assert capture.json["amount"] == MINOR and capture.json["currency"] == "INR"
    assert w.stub.payments[payment["id"]]["status"] == "captured"
    assert w.row(Payment, Payment.id == order["payment_id"])["gateway_payment_id"] == payment["id"]
    assert w.row(Enrollment, Enrollment.user_id == student)["status"] == "active"


def test_verify_of_a_failed_payment_leaves_the_order_pending(w):
    student, course, order = w.paid_course()
    payment, signature = w.stub.pay(order["order_id"], status="failed")
    body = ok(w.verify(student, order["order_id"], payment["id"], signature), 202)
    assert body["payment"]["status"] == "pending"
    row = w.row(Payment, Payment.id == order["payment_id"])
    assert row["status"] == "pending" and row["paid_at"] is None
    assert w.count(Enrollment) == 0
    assert w.stub.requests_to("/capture") == []
    # The customer tries again and pays: the same order settles.
    second, signature = w.stub.pay(order["order_id"])
    ok(w.verify(student, order["order_id"], second["id"], signature))
    assert w.row(Payment, Payment.id == order["payment_id"])["status"] == "completed"


# --- webhooks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("event", ["payment.captured", "order.paid"])
def test_webhook_settles_and_enrolls(w, event):
    student, course, order = w.paid_course()
    payment, _ = w.stub.pay(order["order_id"])
    body, signature = w.stub.payment_event(event, payment)
    assert ok(w.webhook(body, signature, "evt_1")) == {"received": True}
    row = w.row(Payment, Payment.id == order["payment_id"])
    assert row["status"] == "completed" and row["gateway_payment_id"] == payment["id"]
    assert INVOICE_RE.match(row["invoice_number"]) and row["paid_at"] is not None
    enrollment = w.row(Enrollment, Enrollment.user_id == student)
    assert enrollment["status"] == "active" and enrollment["payment_id"] == row["id"]
    assert enrollment["course_id"] == course
    stored = w.row(WebhookEvent)
    # Recorded by what the signature covers (the event and its object), not the unsigned
    # X-Razorpay-Event-Id header.
    subject = payment["id"] if event == "payment.captured" else order["order_id"]
    assert stored["gateway"] == "razorpay" and stored["event_id"] == f"{event}:{subject}"
    assert stored["event_type"] == event and stored["status"] == "processed"
    assert stored["payment_id"] == row["id"] and stored["processed_at"] is not None
    assert stored["payload"] == json.loads(body)
    assert w.count(Notification, Notification.user_id == student) == 1


def test_webhook_replays_change_nothing(w):
    student, course, order = w.paid_course()
    payment, _ = w.stub.pay(order["order_id"])
    body, signature = w.stub.payment_event("payment.captured", payment)
    ok(w.webhook(body, signature, "evt_same"))
    state = w.money_state()
    assert ok(w.webhook(body, signature, "evt_same")) == {"received": True, "duplicate": True}
    assert w.money_state() == state
    assert w.count(WebhookEvent) == 1

    # Without an event-id header, the body itself identifies a redelivery.
    student2, course2, order2 = w.paid_course()
    payment2, _ = w.stub.pay(order2["order_id"])
    body2, signature2 = w.stub.payment_event("order.paid", payment2)
    assert ok(w.webhook(body2, signature2)) == {"received": True}
    state = w.money_state()
    assert ok(w.webhook(body2, signature2)) == {"received": True, "duplicate": True}
    assert w.money_state() == state
    assert w.count(WebhookEvent) == 2
    assert w.count(Enrollment) == 2


def test_webhook_with_a_bad_signature_is_refused_and_not_stored(w):
    student, course, order = w.paid_course()
    payment, _ = w.stub.pay(order["order_id"])
    body, signature = w.stub.payment_event("payment.captured", payment)
    state = w.money_state()
    tampered = body.replace(f'"amount":{MINOR}', f'"amount":{MINOR - 1}')
    assert tampered != body
    error(w.webhook(tampered, signature, "evt_t1"), 400, "invalid_signature")
    # Another signature for sure: "00" in place of its last two digits was its own in 1 of 256.
    forged = signature[:-2] + ("00" if signature[-2:] != "00" else "11")
    assert forged != signature
    error(w.webhook(body, forged, "evt_t2"), 400, "invalid_signature")
    error(w.webhook(body, None, "evt_t3"), 400, "invalid_signature")
    # Signed with the key secret rather than the webhook secret.
    error(w.webhook(body, w.stub.checkout_signature("x", "y"), "evt_t4"), 400)
    assert w.count(WebhookEvent) == 0
    assert w.money_state() == state
    # The genuine delivery is still taken afterwards.
    ok(w.webhook(body, signature, "evt_t1"))
    assert w.row(Payment, Payment.id == order["payment_id"])["status"] == "completed"


def test_webhook_payment_failed_marks_the_pending_payment_failed(w):
    student, course, order = w.paid_course()
    payment, _ = w.stub.pay(order["order_id"], status="failed")
    body, signature = w.stub.payment_event("payment.failed", payment)
    ok(w.webhook(body, signature, "evt_failed"))
    row = w.row(Payment, Payment.id == order["payment_id"])
    assert row["status"] == "failed" and "insufficient funds" in row["failure_reason"]
    assert row["paid_at"] is None and w.count(Enrollment) == 0
    assert w.row(WebhookEvent)["status"] == "processed"


def test_webhook_payment_failed_never_undoes_a_completed_payment(w):
    student, course, order, paid = w.settled()
    late_failure, _ = w.stub.pay(order["order_id"], status="failed")
    body, signature = w.stub.payment_event("payment.failed", late_failure)
    state = w.money_state()
    ok(w.webhook(body, signature, "evt_late_fail"))
    after = w.money_state()
    assert after["payments"] == state["payments"] and after["enrollments"] == state["enrollments"]


def test_webhook_for_an_unknown_order_is_acknowledged_and_ignored(w):
    student, course, order = w.paid_course()
    stray = w.stub.create_order(MINOR)
    payment, _ = w.stub.pay(stray["id"])
    body, signature = w.stub.payment_event("payment.captured", payment)
    state = w.money_state()
    assert ok(w.webhook(body, signature, "evt_unknown")) == {"received": True}
    stored = w.row(WebhookEvent)
    assert stored["status"] == "ignored" and stored["payment_id"] is None
    after = w.money_state()
    assert after["payments"] == state["payments"] and after["enrollments"] == []


def test_webhook_with_the_wrong_amount_is_acknowledged_and_changes_nothing(w):
    student, course, order = w.paid_course()
    payment, _ = w.stub.pay(order["order_id"], amount=100)
    body, signature = w.stub.payment_event("payment.captured", payment)
    state = w.money_state()
    ack = ok(w.webhook(body, signature, "evt_short"))
    assert ack["received"] is True and "error" in ack
    stored = w.row(WebhookEvent)
    assert stored["status"] == "failed" and stored["error"]
    after = w.money_state()
    for key in ("payments", "enrollments", "notifications", "invoice_counters"):
        assert after[key] == state[key], key
    # Another currency for the same number: also refused.
    payment2, _ = w.stub.pay(order["order_id"], currency="USD")
    body2, signature2 = w.stub.payment_event("payment.captured", payment2)
    ok(w.webhook(body2, signature2, "evt_usd"))
    assert w.row(Payment, Payment.id == order["payment_id"])["status"] == "pending"
    assert w.count(Enrollment) == 0


def test_signed_but_malformed_events_never_answer_500(w):
    student, course, order = w.paid_course()
    state = w.money_state()
    bodies = [
        "[1, 2]",
        json.dumps({"event": "payment.captured", "payload": {"payment": "x"}}),
        json.dumps({"event": "payment.captured", "payload": {"payment": {"entity": {
            "id": "pay_Malformed0001", "order_id": order["order_id"], "amount": "abc",
            "currency": "INR"}}}}),
    ]
    answers = [w.webhook(body, w.stub.sign_webhook(body), f"evt_malformed_{n}")
               for n, body in enumerate(bodies)]
    assert [r.status_code < 500 for r in answers] == [True] * len(bodies), [
        (r.status_code, r.get_json()) for r in answers]
    after = w.money_state()
    for key in ("payments", "enrollments", "notifications"):
        assert after[key] == state[key], key


@pytest.mark.parametrize("first", ["verify", "webhook"])
def test_browser_and_webhook_converge_on_one_settlement(w, first):
    student, course, order = w.paid_course()
    payment, signature = w.stub.pay(order["order_id"])
    body, hook_signature = w.stub.payment_event("payment.captured", payment)
    order_paid, order_signature = w.stub.payment_event("order.paid", payment)
    steps = {
        "verify": lambda: ok(w.verify(student, order["order_id"], payment["id"], signature)),
        "webhook": lambda: ok(w.webhook(body, hook_signature, "evt_cap")),
    }
    for name in (first, "webhook" if first == "verify" else "verify"):
        steps[name]()
    ok(w.webhook(order_paid, order_signature, "evt_order_paid"))
    ok(w.verify(student, order["order_id"], payment["id"], signature, VERIFY_ROUTES[1]))

    assert w.count(Payment) == 1
    row = w.row(Payment)
    assert row["status"] == "completed" and row["gateway_payment_id"] == payment["id"]
    assert INVOICE_RE.match(row["invoice_number"])
    assert w.row(InvoiceCounter)["last_number"] == 1
    assert w.count(Enrollment) == 1
    assert w.count(Notification, Notification.title == "Payment received") == 1
    assert w.count(WebhookEvent, WebhookEvent.status == "processed") == 2


# --- refunds --------------------------------------------------------------------------------------

def _certificate(w, student: int, course: int) -> int:
    with w.app.app_context():
        enrollment_id = db.session.scalar(select(Enrollment.id).where(
            Enrollment.user_id == student, Enrollment.course_id == course))
    return w.add(Certificate(certificate_number=f"CERT-{student}-{course}", user_id=student,
                             course_id=course, enrollment_id=enrollment_id,
                             holder_name="Student", course_title="Course",
                             completion_date=date.today(), status="valid"))


def _refund_request(w, student: int, payment_id: int, route: str = "refund-request") -> dict:
    return ok(w.client.post(f"{PAY}/{payment_id}/{route}", headers=w.headers(student),
                            json={"reason": "The course is not what I expected"}), 201)[
        "refund_request"]


def _decide(w, admin: int, request_id: int, action: str, note: str | None = None):
    body = {"action": action} | ({"note": note} if note else {})
    return w.client.put(f"{API}/admin/refund-requests/{request_id}", headers=w.headers(admin),
                        json=body)


def test_refund_round_trip_through_the_gateway(w):
    student, course, order, paid = w.settled()
    admin = w.user("admin")
    request = _refund_request(w, student, order["payment_id"])
    # The student finished the course while the request waited: the approval now needs the
    # admin's override (the refund policy), and revokes the certificate.
    certificate = _certificate(w, student, course)
    refused = error(_decide(w, admin, request["id"], "approve"), 409,
                    "refund_certificate_issued")
    assert "override_policy" in refused["details"]
    assert w.stub.refunds == {} and w.count(AuditLog) == 0
    assert request["status"] == "pending" and Decimal(str(request["amount"])) == PRICE
    listed = ok(w.client.get(f"{API}/admin/refund-requests", headers=w.headers(admin)))
    assert [r["id"] for r in listed["refund_requests"]] == [request["id"]]
    # A second request while one is open: refused.
    error(w.client.post(f"{PAY}/{order['payment_id']}/refund", headers=w.headers(student),
                        json={"reason": "again please"}), 409)

    body = ok(w.client.put(f"{API}/admin/refund-requests/{request['id']}",
                           headers=w.headers(admin),
                           json={"action": "approve", "note": "ok", "override_policy": True}))
    assert body["refund_request"]["status"] == "processed"
    assert body["refund"]["credit_note_number"].startswith("CN-")
    [refund_call] = w.stub.requests_to(f"/v1/payments/{paid['id']}/refund")
    assert refund_call.method == "POST" and refund_call.basic_auth == (KEY_ID, KEY_SECRET)
    assert refund_call.json["amount"] == MINOR
    [gateway_refund] = w.stub.refunds.values()

    stored = w.row(RefundRequest, RefundRequest.id == request["id"])
    assert stored["status"] == "processed" and stored["reviewed_by_id"] == admin
    assert stored["gateway_refund_id"] == gateway_refund["id"]
    payment = w.row(Payment, Payment.id == order["payment_id"])
    assert payment["status"] == "refunded" and payment["refunded_amount"] == PRICE
    assert payment["refunded_at"] is not None
    assert w.row(Enrollment, Enrollment.user_id == student)["status"] == "refunded"
    cert = w.row(Certificate, Certificate.id == certificate)
    assert cert["status"] == "revoked" and cert["revoked_at"] is not None
    assert w.count(Notification, Notification.user_id == student,
                   Notification.title == "Refund processed") == 1
    audit = w.row(AuditLog, AuditLog.action == "refund_request.approve")
    assert audit["actor_id"] == admin and audit["target_id"] == request["id"]
    assert audit["details"]["override_policy"] is True

    # Deciding again: refused, no second refund at the gateway.
    error(_decide(w, admin, request["id"], "approve"), 409)
    assert len(w.stub.refunds) == 1
    # Razorpay's own refund.processed afterwards changes nothing more.
    state = w.money_state()
    hook, signature = w.stub.webhook("refund.processed", {
        "refund": {"entity": gateway_refund}, "payment": {"entity": w.stub.payments[paid["id"]]}})
    ok(w.webhook(hook, signature, "evt_refund_after"))
    after = w.money_state()
    for key in ("payments", "enrollments", "notifications", "certificates", "refund_requests"):
        assert after[key] == state[key], key
    assert w.count(PaymentRefund) == 1


@pytest.mark.parametrize("failure", ["500", "down"])
def test_refund_approval_with_the_gateway_failing_moves_no_money(w, failure):
    """The approval is on record before the gateway is asked; the gateway failing leaves it
    approved (in flight) with no money moved, and the retried approval completes it."""
    student, course, order, paid = w.settled()
    admin = w.user("admin")
    request = _refund_request(w, student, order["payment_id"])
    state = w.money_state()
    if failure == "down":
        w.stub.go_down()
        body = error(_decide(w, admin, request["id"], "approve"), 503)
    else:
        w.stub.fail_with(500)
        body = error(_decide(w, admin, request["id"], "approve"), 502, "gateway_error")
    assert "razorpay" in body["error"].lower() and "refund" in body["error"].lower()
    after = w.money_state()
    assert after["refund_requests"] == [(request["id"], "approved")]
    assert [action for _, action in after["audit"]] == ["refund_request.approve"]
    for key in ("payments", "enrollments", "notifications", "certificates", "events"):
        assert after[key] == state[key], key
    assert w.stub.refunds == {}
    # In flight, it cannot be declined any more.
    error(_decide(w, admin, request["id"], "reject"), 409, "refund_in_progress")

    w.stub.recover()
    ok(_decide(w, admin, request["id"], "approve"))
    assert w.row(Payment, Payment.id == order["payment_id"])["status"] == "refunded"
    assert len(w.stub.refunds) == 1 and w.count(PaymentRefund) == 1
    assert w.count(AuditLog, AuditLog.action == "refund_request.approve") == 1


def test_refund_declined_by_the_gateway_goes_back_to_pending(w):
    student, course, order, paid = w.settled()
    admin = w.user("admin")
    request = _refund_request(w, student, order["payment_id"])
    w.stub.fail_next("POST", "/refund", 400, "The payment is under dispute")
    body = error(_decide(w, admin, request["id"], "approve"), 502, "gateway_error")
    assert "under dispute" in body["error"]
    stored = w.row(RefundRequest, RefundRequest.id == request["id"])
    assert stored["status"] == "pending" and "under dispute" in stored["admin_note"]
    assert w.row(Payment, Payment.id == order["payment_id"])["status"] == "completed"
    assert w.stub.refunds == {} and w.count(PaymentRefund) == 0
    # An admin decides again: declining works now.
    assert ok(_decide(w, admin, request["id"], "reject"))["refund_request"]["status"] == \
        "rejected"


def test_refund_processed_webhook_marks_the_payment_refunded(w):
    student, course, order, paid = w.settled()
    # The student had asked, and finished the course meanwhile; the refund was then made from
    # Razorpay's dashboard (no policy applies to money already returned).
    ok(w.client.post(f"{PAY}/{order['payment_id']}/refund-request", headers=w.headers(student),
                     json={"reason": "Changed my mind"}), 201)
    certificate = _certificate(w, student, course)
    refund = {"id": "rfnd_FromDashboard1", "entity": "refund", "amount": MINOR,
              "currency": "INR", "payment_id": paid["id"], "status": "processed",
              "notes": {}, "created_at": 0}
    body, signature = w.stub.webhook("refund.processed", {"refund": {"entity": refund}})
    ok(w.webhook(body, signature, "evt_refund"))
    payment = w.row(Payment, Payment.id == order["payment_id"])
    assert payment["status"] == "refunded" and payment["refunded_amount"] == PRICE
    assert w.row(Enrollment, Enrollment.user_id == student)["status"] == "refunded"
    assert w.row(Certificate, Certificate.id == certificate)["status"] == "revoked"
    assert w.row(WebhookEvent)["status"] == "processed"
    assert w.count(Notification, Notification.title == "Refund processed") == 1
    request = w.row(RefundRequest)
    assert (request["status"], request["gateway_refund_id"]) == ("processed",
                                                                 "rfnd_FromDashboard1")
    assert request["admin_note"] == "Refunded at the payment gateway"
    state = w.money_state()
    assert ok(w.webhook(body, signature, "evt_refund"))["duplicate"] is True
    # The same signed body replayed with fresh unsigned headers: still the same event.
    for n in range(3):
        assert ok(w.webhook(body, signature, f"evt_replay_{n}"))["duplicate"] is True
    assert w.money_state() == state
    assert w.count(PaymentRefund) == 1


def test_refund_request_outside_the_window_is_refused(w):
    student, course, order, paid = w.settled()
    days = w.app.config["REFUND_WINDOW_DAYS"]
    w.update(Payment, order["payment_id"], paid_at=utcnow() - timedelta(days=days, hours=1))
    error(w.client.post(f"{PAY}/{order['payment_id']}/refund-request", headers=w.headers(student),
                        json={"reason": "Too late, I know"}), 403, "refund_window_closed")
    assert w.count(RefundRequest) == 0
    # Only the payer may ask; only for completed payments.
    other = w.user()
    w.update(Payment, order["payment_id"], paid_at=utcnow())
    error(w.client.post(f"{PAY}/{order['payment_id']}/refund", headers=w.headers(other),
                        json={"reason": "not mine"}), 404)
    s2, c2, o2 = w.paid_course()
    error(w.client.post(f"{PAY}/{o2['payment_id']}/refund", headers=w.headers(s2),
                        json={"reason": "never paid"}), 409)
    assert w.count(RefundRequest) == 0


def test_refund_rejection_leaves_the_payment_alone(w):
    student, course, order, paid = w.settled()
    admin = w.user("admin")
    request = _refund_request(w, student, order["payment_id"], route="refund")
    before = w.money_state()
    body = ok(_decide(w, admin, request["id"], "reject", "Course already completed"))
    assert body["refund_request"]["status"] == "rejected"
    stored = w.row(RefundRequest, RefundRequest.id == request["id"])
    assert stored["status"] == "rejected" and stored["admin_note"] == "Course already completed"
    after = w.money_state()
    assert after["payments"] == before["payments"]
    assert after["enrollments"] == before["enrollments"]
    assert w.stub.requests_to("/refund") == []
    assert w.count(Notification, Notification.title == "Refund request declined") == 1
    assert w.count(AuditLog, AuditLog.action == "refund_request.reject") == 1
    error(_decide(w, student, request["id"], "approve"), 403)


# --- reconciliation -------------------------------------------------------------------------------

def test_reconcile_settles_captured_and_expires_abandoned_orders(w):
    student = w.user()
    paid_course, abandoned_course, fresh_course = w.course(), w.course(), w.course()
    paid = w.order_for(student, paid_course)
    abandoned = w.order_for(student, abandoned_course)
    fresh = w.order_for(student, fresh_course)
    captured, _ = w.stub.pay(paid["order_id"])
    w.stub.pay(fresh["order_id"])  # paid, but not old enough to be looked at yet
    old = utcnow() - timedelta(minutes=w.app.config["PAYMENT_PENDING_TIMEOUT"] + 5)
    for order in (paid, abandoned):
        w.update(Payment, order["payment_id"], created_at=old)

    result = w.app.test_cli_runner().invoke(args=["payments", "reconcile"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "settled: 1" in result.output and "expired: 1" in result.output

    settled = w.row(Payment, Payment.id == paid["payment_id"])
    assert settled["status"] == "completed" and settled["gateway_payment_id"] == captured["id"]
    assert INVOICE_RE.match(settled["invoice_number"])
    enrollment = w.row(Enrollment, Enrollment.course_id == paid_course)
    assert enrollment["status"] == "active" and enrollment["payment_id"] == paid["payment_id"]
    assert w.row(Payment, Payment.id == abandoned["payment_id"])["status"] == "expired"
    assert w.row(Payment, Payment.id == fresh["payment_id"])["status"] == "pending"
    assert w.count(Enrollment) == 1
    looked_up = {r.path for r in w.stub.api_calls("GET")}
    assert looked_up == {f"/v1/orders/{paid['order_id']}/payments",
                         f"/v1/orders/{abandoned['order_id']}/payments"}

    # Run again: nothing is pending and old any more; the expired order is asked about
    # again (a Razorpay order stays payable), and is still unpaid.
    state = w.money_state()
    again = w.app.test_cli_runner().invoke(args=["payments", "reconcile"])
    assert again.exit_code == 0 and again.output.strip() == "unchanged: 1"
    assert w.money_state() == state
    # The abandoned course can be bought again with a new order.
    assert w.order_for(student, abandoned_course)["order_id"] != abandoned["order_id"]


def test_an_order_paid_after_the_reconciler_expired_it_is_settled(w):
    """A Razorpay order stays payable after we expired it: the reconciler keeps asking for
    PAYMENT_EXPIRED_RECHECK_HOURS, and settles it once paid (its webhook may never come)."""
    student, course, order = w.paid_course()
    w.update(Payment, order["payment_id"],
             created_at=utcnow() - timedelta(minutes=w.app.config["PAYMENT_PENDING_TIMEOUT"] + 5))
    assert "expired: 1" in w.app.test_cli_runner().invoke(args=["payments", "reconcile"]).output
    late, _ = w.stub.pay(order["order_id"])
    result = w.app.test_cli_runner().invoke(args=["payments", "reconcile"])
    assert result.exit_code == 0 and result.output.strip() == "settled: 1"
    revived = w.row(Payment, Payment.id == order["payment_id"])
    assert (revived["status"], revived["gateway_payment_id"]) == ("completed", late["id"])
    assert w.row(Enrollment, Enrollment.user_id == student)["status"] == "active"
    # Past PAYMENT_EXPIRED_RECHECK_HOURS an expired order is no longer asked about.
    _, _, stale = w.paid_course()
    w.update(Payment, stale["payment_id"], status="expired",
             created_at=utcnow() - timedelta(hours=w.app.config["PAYMENT_EXPIRED_RECHECK_HOURS"],
                                             minutes=1))
    w.stub.clear_requests()
    assert "nothing pending" in w.app.test_cli_runner().invoke(
        args=["payments", "reconcile"]).output
    assert w.stub.api_calls("GET") == []


def test_reconcile_with_the_gateway_down_leaves_payments_pending(w):
    """Run as the `flask` command runs it (FlaskGroup loading the app)."""
    student, course, order = w.paid_course()
    w.update(Payment, order["payment_id"], created_at=utcnow() - timedelta(hours=2))
    w.stub.go_down()
    result = flask_cli(w.app, "payments", "reconcile")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "unknown: 1" in result.output
    assert w.row(Payment, Payment.id == order["payment_id"])["status"] == "pending"



def test_a_partial_refund_is_recorded_without_revoking_access(w):
    student, course, order, paid = w.settled()
    certificate = _certificate(w, student, course)
    refund = {"id": "rfnd_Partial00001", "entity": "refund", "amount": 100, "currency": "INR",
              "payment_id": paid["id"], "status": "processed", "notes": {}, "created_at": 0}
    body, signature = w.stub.webhook("refund.processed", {"refund": {"entity": refund}})
    ok(w.webhook(body, signature, "evt_partial_refund"))
    payment = w.row(Payment, Payment.id == order["payment_id"])
    assert payment["status"] == "completed" and payment["refunded_amount"] == Decimal("1.00")
    assert w.row(Enrollment, Enrollment.user_id == student)["status"] == "active"
    assert w.row(Certificate, Certificate.id == certificate)["status"] == "valid"
    assert w.count(Notification, Notification.title == "Partial refund processed") == 1


def test_a_second_paid_order_for_a_paid_course_goes_to_the_admins_as_a_refund(w):
    student, course, order, paid = w.settled()
    # A second order for the same course, opened at the gateway and paid (a customer who
    # paid twice): its money is kept on record and a refund request waits for an admin.
    second = w.stub.create_order(amount=MINOR, currency="INR")
    with w.app.app_context():
        db.session.add(Payment(user_id=student, course_id=course, gateway="razorpay",
                               gateway_order_id=second["id"], amount=PRICE, currency="INR",
                               status="pending"))
        db.session.commit()
    payment, _ = w.stub.pay(second["id"])
    body, signature = w.stub.payment_event("payment.captured", payment)
    ok(w.webhook(body, signature, "evt_second_payment"))
    assert w.count(Payment, Payment.status == "completed") == 2
    assert w.count(Enrollment) == 1
    request = w.row(RefundRequest)
    assert request["status"] == "pending" and "duplicate" in request["reason"]
