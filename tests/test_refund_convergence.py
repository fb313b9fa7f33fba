"""A refund the gateway made is never lost (issue 17).

The gateway refunds, then our commit fails (a PL/pgSQL trigger at the database edge: on the
refund's ledger row, or at COMMIT of the payment's update). The approval is on record by then
(it is committed before the gateway is asked), so the refund is "in flight". Each of the three
ways we can learn of it must then converge on exactly one recorded refund with all that follows
(payment refunded, access ended, certificate revoked, the request processed, a credit note, one
notice), and the other two must change nothing afterwards:

- the gateway's own signed webhook for that refund (delivered again and again, with other
  unsigned headers: 200 every time, never a 409 that makes the gateway retry forever);
- the reconciler (`flask payments reconcile`), which executes approved requests again;
- the admin's retried approval, which finds the refund by its key instead of making another.

Both gateways, through their real SDKs against the stand-ins (tests/support/razorpay_stub.py,
tests/support/stripe_standin.py). Also: a gateway that refunds and then never answers, a
captured refund webhook replayed with fresh headers, and the credit note's PDF.

PostgreSQL (`postgres_app`): triggers are the fault injector.
"""
from __future__ import annotations

import io
import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

import pytest
import razorpay
from flask_jwt_extended import create_access_token
from pypdf import PdfReader
from sqlalchemy import func, select

from app import create_app
from models import (
    Certificate,
    Course,
    Enrollment,
    Notification,
    Payment,
    PaymentRefund,
    RefundRequest,
    User,
    WebhookEvent,
    db,
)
from tests.support.faults import Faults
from tests.support.razorpay_stub import KEY_ID, KEY_SECRET, WEBHOOK_SECRET, RazorpayStub
from tests.support.stripe_standin import signature_header, stripe_event, stripe_standin
from utils.helpers import utcnow

API = "/api/v1"
PAY = f"{API}/payments"
STRIPE_WEBHOOK_SECRET = "whsec_convergence"
_SERIAL = itertools.count(1)

FAULTS = {
    # the refund's ledger row, the first thing recorded once the gateway answered
    "ledger row": ("payment_refunds", "INSERT", False),
    # the COMMIT itself, after everything was written
    "commit": ("payments", "UPDATE", True),
}


@pytest.fixture(scope="module")
def rzp():
    with RazorpayStub(KEY_ID, KEY_SECRET, WEBHOOK_SECRET) as stub:
        yield stub


@pytest.fixture(scope="module")
def stripe_side():
    standin = stripe_standin()
    yield standin
    standin.stop()


@dataclass
class Bought:
    student: int
    course: int
    payment_id: int
    gateway_payment: str  # Razorpay's payment id, Stripe's payment intent
    price: Decimal
    minor: int


@dataclass
class World:
    app: object
    client: object
    gateway: str
    razorpay: RazorpayStub
    stripe: object
    admin: int = 0

    def user(self, role: str = "student") -> int:
        n = next(_SERIAL)
        with self.app.app_context():
            user = User(email=f"{role}{n}-{uuid.uuid4().hex[:6]}@example.com",
                        first_name=role.capitalize(), last_name=f"Convergence{n}", role=role,
                        is_active=True, is_email_verified=True)
            user.set_password("Passw0rd!")
            db.session.add(user)
            db.session.commit()
            return user.id

    def headers(self, user_id: int) -> dict:
        with self.app.app_context():
            return {"Authorization": f"Bearer {create_access_token(db.session.get(User, user_id))}"}

    def count(self, model, *where) -> int:
        with self.app.app_context():
            return db.session.scalar(select(func.count()).select_from(model).where(*where))

    def one(self, model, *where):
        with self.app.app_context():
            return db.session.scalars(select(model).where(*where)).one()

    # --- buying, through the API and the stand-in -----------------------------------------------

    def buy(self) -> Bought:
        student, n = self.user(), next(_SERIAL)
        price, currency = ((Decimal("499.00"), "INR") if self.gateway == "razorpay"
                           else (Decimal("49.99"), "USD"))
        with self.app.app_context():
            course = Course(title=f"Convergence {n}", slug=f"convergence-{n}-{uuid.uuid4().hex[:6]}",
                            instructor_id=self.user("instructor"), price=price,
                            currency=currency, status="published", published_at=utcnow())
            db.session.add(course)
            db.session.commit()
            course_id = course.id
        if self.gateway == "razorpay":
            order = self.client.post(f"{PAY}/razorpay/create-order", json={"course_id": course_id},
                                     headers=self.headers(student)).get_json()["order"]
            paid, signature = self.razorpay.pay(order["order_id"])
            verified = self.client.post(f"{PAY}/razorpay/verify", headers=self.headers(student),
                                        json={"razorpay_order_id": order["order_id"],
                                              "razorpay_payment_id": paid["id"],
                                              "razorpay_signature": signature})
            assert verified.status_code == 200, verified.get_json()
            return Bought(student, course_id, order["payment_id"], paid["id"], price,
                          int(price * 100))
        opened = self.client.post(f"{PAY}/stripe/create-checkout", json={"course_id": course_id},
                                  headers=self.headers(student)).get_json()
        session = self.stripe.pay(opened["session_id"])
        settled = self.stripe_webhook(stripe_event("checkout.session.completed", session))
        assert settled.status_code == 200, settled.get_json()
        return Bought(student, course_id, opened["payment_id"], session["payment_intent"], price,
                      int(price * 100))

    def certify(self, bought: Bought) -> None:
        """The student finishes the course: a certificate."""
        with self.app.app_context():
            enrollment = db.session.scalar(select(Enrollment.id).where(
                Enrollment.user_id == bought.student, Enrollment.course_id == bought.course))
            db.session.add(Certificate(
                certificate_number=f"CERT-{uuid.uuid4().hex[:12]}", user_id=bought.student,
                course_id=bought.course, enrollment_id=enrollment, holder_name="Student",
                course_title="Course", completion_date=date.today(), status="valid"))
            db.session.commit()

    def ask_refund(self, bought: Bought) -> int:
        response = self.client.post(f"{PAY}/{bought.payment_id}/refund-request",
                                    headers=self.headers(bought.student),
                                    json={"reason": "Not what I expected"})
        assert response.status_code == 201, response.get_json()
        return response.get_json()["refund_request"]["id"]

    def approve(self, request_id: int):
        return self.client.put(f"{API}/admin/refund-requests/{request_id}",
                               headers=self.headers(self.admin),
                               json={"action": "approve", "override_policy": True})

    # --- the gateway's side -------------------------------------------------------------------

    def gateway_refunds(self, bought: Bought) -> list[tuple[str, int]]:
        if self.gateway == "razorpay":
            return sorted((r["id"], r["amount"]) for r in self.razorpay.refunds.values()
                          if r["payment_id"] == bought.gateway_payment)
        return sorted((r["id"], r["amount"]) for r in self.stripe.refunds_for(bought.gateway_payment))

    def stripe_webhook(self, event: dict, timestamp: int | None = None):
        body = json.dumps(event).encode()
        return self.client.post(f"{PAY}/stripe/webhook", data=body, headers={
            "Content-Type": "application/json",
            "Stripe-Signature": signature_header(body, STRIPE_WEBHOOK_SECRET, timestamp)})

    def refund_webhooks(self, bought: Bought) -> list:
        """The gateway's refund event for the payment, delivered three times, each time with
        other unsigned headers (Razorpay's event id; Stripe's signature timestamp)."""
        answers = []
        if self.gateway == "razorpay":
            for refund in list(self.razorpay.refunds.values()):
                if refund["payment_id"] != bought.gateway_payment:
                    continue
                body, signature = self.razorpay.webhook("refund.processed", {
                    "refund": {"entity": refund},
                    "payment": {"entity": self.razorpay.payments[bought.gateway_payment]}})
                for n in range(3):
                    answers.append(self.client.post(f"{PAY}/razorpay/webhook", data=body.encode(),
                                                    headers={"Content-Type": "application/json",
                                                             "X-Razorpay-Signature": signature,
                                                             "X-Razorpay-Event-Id": f"evt_{n}"}))
            return answers
        event = stripe_event("charge.refunded", self.stripe.charge_of(bought.gateway_payment))
        now = int(utcnow().timestamp())
        return [self.stripe_webhook(event, timestamp=now - n) for n in range(3)]

    def reconcile(self) -> str:
        result = self.app.test_cli_runner().invoke(args=["payments", "reconcile"])
        assert result.exit_code == 0, (result.output, result.exception)
        return result.output

    # --- what we recorded -----------------------------------------------------------------------

    def state(self, bought: Bought) -> dict:
        with self.app.app_context():
            payment = db.session.get(Payment, bought.payment_id)
            refunds = db.session.scalars(select(PaymentRefund).where(
                PaymentRefund.payment_id == bought.payment_id)).all()
            enrollment = db.session.scalar(select(Enrollment).where(
                Enrollment.user_id == bought.student, Enrollment.course_id == bought.course))
            certificate = db.session.scalar(select(Certificate).where(
                Certificate.user_id == bought.student, Certificate.course_id == bought.course))
            requests = db.session.scalars(select(RefundRequest).where(
                RefundRequest.payment_id == bought.payment_id)).all()
            return {
                "payment": (payment.status, payment.refunded_amount),
                "refunds": sorted((r.gateway_refund_id, r.amount, r.credit_note_number,
                                   r.refund_request_id) for r in refunds),
                "enrollment": enrollment.status if enrollment else None,
                "certificate": certificate.status if certificate else None,
                "requests": sorted((r.id, r.status, r.gateway_refund_id) for r in requests),
                "notices": db.session.scalar(select(func.count()).select_from(Notification)
                                             .where(Notification.user_id == bought.student,
                                                    Notification.title.like("%efund%"))),
            }


@pytest.fixture(params=["razorpay", "stripe"])
def world(request, postgres_app, rzp, stripe_side, tmp_path):
    rzp.reset()
    stripe_side.forget_idempotency_keys()
    app = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": postgres_app.config["SQLALCHEMY_DATABASE_URI"],
        "UPLOAD_FOLDER": str(tmp_path / "uploads"),
        "RAZORPAY_KEY_ID": KEY_ID, "RAZORPAY_KEY_SECRET": KEY_SECRET,
        "RAZORPAY_WEBHOOK_SECRET": WEBHOOK_SECRET, "RAZORPAY_API_BASE": rzp.url,
        "STRIPE_SECRET_KEY": "sk_test_convergence", "STRIPE_WEBHOOK_SECRET": STRIPE_WEBHOOK_SECRET,
        "STRIPE_API_BASE": stripe_side.url, "GATEWAY_TIMEOUT_SECONDS": 3,
        "RATE_LIMIT_PAYMENT_CREATE": "1000 per minute",
        "RATE_LIMIT_PAYMENT_VERIFY": "1000 per minute"})
    built = World(app, app.test_client(), request.param, rzp, stripe_side)
    built.admin = built.user("admin")
    yield built
    rzp.recover()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def faults(world):
    injector = Faults(world.app)
    yield injector
    injector.clear()


def _in_flight(world, faults, fault: str) -> tuple[Bought, int]:
    """A certified student's refund approved by an admin: the gateway refunds, our commit
    fails. Returns the purchase and its refund request."""
    bought = world.buy()
    request_id = world.ask_refund(bought)
    world.certify(bought)
    before = world.state(bought)
    table, operation, at_commit = FAULTS[fault]
    faults.inject(table, operation, at_commit=at_commit)
    failed = world.approve(request_id)
    faults.clear()
    assert failed.status_code == 500, failed.get_json()
    assert failed.get_json() == {"error": "An unexpected error occurred", "code": "internal_error"}

    # The money has left; of ours, only the approval is on record.
    [(refund_id, amount)] = world.gateway_refunds(bought)
    assert amount == bought.minor
    after = world.state(bought)
    assert after["requests"] == [(request_id, "approved", None)]
    assert {k: v for k, v in after.items() if k != "requests"} == \
        {k: v for k, v in before.items() if k != "requests"}
    assert after["refunds"] == [] and after["payment"] == ("completed", Decimal("0.00"))
    return bought, request_id


def _assert_converged(world, bought: Bought, request_id: int) -> dict:
    [(refund_id, amount)] = world.gateway_refunds(bought)  # still one refund at the gateway
    state = world.state(bought)
    assert state["payment"] == ("refunded", bought.price)
    [(recorded_id, recorded_amount, credit_note, linked)] = state["refunds"]
    assert (recorded_id, recorded_amount, linked) == (refund_id, bought.price, request_id)
    assert credit_note.startswith(f"CN-{utcnow().year}-")
    assert state["enrollment"] == "refunded" and state["certificate"] == "revoked"
    assert state["requests"] == [(request_id, "processed", refund_id)]
    assert state["notices"] == 1
    return state


def _converge(world, bought: Bought, request_id: int, path: str) -> None:
    if path == "webhook":
        answers = world.refund_webhooks(bought)
        assert [a.status_code for a in answers] == [200] * 3, [a.get_json() for a in answers]
        assert [bool(a.get_json().get("duplicate")) for a in answers] == [False, True, True]
    elif path == "reconcile":
        assert "refund_processed: 1" in world.reconcile()
    else:
        again = world.approve(request_id)
        assert again.status_code == 200, again.get_json()
        assert again.get_json()["refund_request"]["status"] == "processed"


@pytest.mark.parametrize("path", ["webhook", "reconcile", "retried approval"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_refund_whose_commit_failed_converges_once(world, faults, fault, path):
    bought, request_id = _in_flight(world, faults, fault)

    _converge(world, bought, request_id, path)
    converged = _assert_converged(world, bought, request_id)

    # The other ways of learning of the refund change nothing now, and answer without a 409
    # for the webhook (a redelivery) and the reconciler (nothing in flight).
    answers = world.refund_webhooks(bought)
    assert [a.status_code for a in answers] == [200] * 3, [a.get_json() for a in answers]
    assert "refund_" not in world.reconcile()
    repeat = world.approve(request_id)
    assert repeat.status_code == 409 and repeat.get_json()["code"] == "refund_already_decided"
    assert world.state(bought) == converged
    assert len(world.gateway_refunds(bought)) == 1
    # Anyone checking the certificate learns it was revoked: the API and the page.
    number = world.one(Certificate, Certificate.user_id == bought.student).certificate_number
    facts = world.client.get(f"{API}/certificates/verify/{number}").get_json()
    assert (facts["valid"], facts["status"]) == (False, "revoked") and facts["revoked_at"]
    page = world.client.get(f"/verify/{number}")
    assert page.status_code == 200 and "This certificate was revoked" in page.get_data(
        as_text=True)


@pytest.mark.parametrize("world", ["razorpay"], indirect=True)  # localstripe answers always
def test_a_gateway_that_refunds_and_never_answers_is_reconciled(world):
    """The refund is made, the answer is lost (a timeout): 503, the request in flight; the
    reconciler finds the refund by its key and records it, without refunding again."""
    bought = world.buy()
    request_id = world.ask_refund(bought)
    world.razorpay.lose_next_answer("POST", "/refund")
    lost = world.approve(request_id)
    assert lost.status_code == 503, lost.get_json()
    assert len(world.gateway_refunds(bought)) == 1
    assert world.state(bought)["requests"] == [(request_id, "approved", None)]

    assert "refund_processed: 1" in world.reconcile()
    state = world.state(bought)
    assert state["payment"] == ("refunded", bought.price) and len(state["refunds"]) == 1
    assert state["requests"][0][1] == "processed" and state["enrollment"] == "refunded"
    assert len(world.gateway_refunds(bought)) == 1


def test_an_approval_the_gateway_could_not_take_is_made_by_the_reconciler(world):
    """Nothing reached the gateway (down): the approval stands, and once the gateway is back
    the reconciler makes the refund, once."""
    bought = world.buy()
    request_id = world.ask_refund(bought)
    if world.gateway == "razorpay":
        world.razorpay.go_down()
        assert world.approve(request_id).status_code == 503
        world.razorpay.recover()
    else:
        with world.stripe.down():
            assert world.approve(request_id).status_code == 503
    assert world.gateway_refunds(bought) == []
    assert "refund_processed: 1" in world.reconcile()
    assert len(world.gateway_refunds(bought)) == 1
    assert world.state(bought)["payment"] == ("refunded", bought.price)
    assert "refund_" not in world.reconcile()
    assert len(world.gateway_refunds(bought)) == 1


def test_a_captured_refund_webhook_replayed_with_fresh_headers_counts_once(world):
    """The attack: one validly signed refund event for part of the price, sent again and again
    with new unsigned headers, must not refund the rest nor end the buyer's access."""
    bought = world.buy()
    if world.gateway == "razorpay":
        client = world.razorpay
        refund = {"id": "rfnd_Replayed00001", "entity": "refund", "amount": 20000,
                  "currency": "INR", "payment_id": bought.gateway_payment,
                  "status": "processed", "notes": {}, "receipt": None, "created_at": 0}
        client.refunds[refund["id"]] = refund  # made at Razorpay's dashboard
        body, signature = client.webhook("refund.processed", {"refund": {"entity": refund}})
        answers = [world.client.post(f"{PAY}/razorpay/webhook", data=body.encode(), headers={
            "Content-Type": "application/json", "X-Razorpay-Signature": signature,
            "X-Razorpay-Event-Id": f"evt_fresh_{n}"}) for n in range(6)]
        partial = Decimal("200.00")
    else:
        world.stripe.client().v1.refunds.create(params={
            "payment_intent": bought.gateway_payment, "amount": 1000})
        event = stripe_event("charge.refunded", world.stripe.charge_of(bought.gateway_payment))
        now = int(utcnow().timestamp())
        answers = [world.stripe_webhook(event, timestamp=now - n) for n in range(6)]
        # The same refund again in other events (another event id): still one refund.
        answers.append(world.stripe_webhook(stripe_event(
            "charge.refunded", world.stripe.charge_of(bought.gateway_payment))))
        partial = Decimal("10.00")
    assert {a.status_code for a in answers} == {200}, [a.get_json() for a in answers]
    state = world.state(bought)
    assert state["payment"] == ("completed", partial)
    assert len(state["refunds"]) == 1 and state["enrollment"] == "active"
    assert world.count(WebhookEvent, WebhookEvent.status == "processed") >= 1


def test_the_credit_note_names_the_refund_and_the_invoice(world):
    bought = world.buy()
    request_id = world.ask_refund(bought)
    approved = world.approve(request_id)
    assert approved.status_code == 200, approved.get_json()
    refund = approved.get_json()["refund"]
    payment = world.client.get(f"{PAY}/{bought.payment_id}",
                               headers=world.headers(bought.student)).get_json()["payment"]
    assert payment["refund_status"] == "full"
    assert [r["id"] for r in payment["refunds"]] == [refund["id"]]
    assert payment["refunds"][0]["amount"] == float(bought.price)
    url = payment["refunds"][0]["credit_note_url"]
    response = world.client.get(url, headers=world.headers(bought.student))
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    text = PdfReader(io.BytesIO(response.data)).pages[0].extract_text()
    assert refund["credit_note_number"] in text and "CREDIT NOTE" in text
    assert world.one(Payment, Payment.id == bought.payment_id).invoice_number in text
    # Another student, and a refund id of another payment: 404.
    assert world.client.get(url, headers=world.headers(world.user())).status_code == 404
    other = world.buy()
    assert world.client.get(f"{PAY}/{other.payment_id}/refunds/{refund['id']}/credit-note",
                            headers=world.headers(other.student)).status_code == 404


def _refund_at_the_dashboard(world, gateway_payment: str, minor: int) -> list:
    """A refund made at the gateway's own dashboard, and its webhook (not yet delivered):
    returns the callables that deliver it."""
    if world.gateway == "razorpay":
        refund = razorpay.Client(auth=(KEY_ID, KEY_SECRET), base_url=world.razorpay.url) \
            .payment.refund(gateway_payment, {"amount": minor})
        body, signature = world.razorpay.webhook("refund.processed", {"refund": {"entity": refund}})
        return [lambda n=n: world.client.post(f"{PAY}/razorpay/webhook", data=body.encode(), headers={
            "Content-Type": "application/json", "X-Razorpay-Signature": signature,
            "X-Razorpay-Event-Id": f"evt_early_{n}"}) for n in range(2)]
    world.stripe.client().v1.refunds.create(params={"payment_intent": gateway_payment,
                                                    "amount": minor})
    event = stripe_event("charge.refunded", world.stripe.charge_of(gateway_payment))
    return [lambda: world.stripe_webhook(event)] * 2


def _paid_not_settled(world) -> tuple[Bought, object]:
    """A student pays at the gateway; nothing has told us yet. Returns the purchase and a
    callable that settles it (the browser's verify, or Stripe's checkout webhook)."""
    student, n = world.user(), next(_SERIAL)
    price, currency = ((Decimal("499.00"), "INR") if world.gateway == "razorpay"
                       else (Decimal("49.99"), "USD"))
    with world.app.app_context():
        course = Course(title=f"Early {n}", slug=f"early-{n}-{uuid.uuid4().hex[:6]}",
                        instructor_id=world.user("instructor"), price=price, currency=currency,
                        status="published", published_at=utcnow())
        db.session.add(course)
        db.session.commit()
        course_id = course.id
    headers = world.headers(student)
    if world.gateway == "razorpay":
        order = world.client.post(f"{PAY}/razorpay/create-order", json={"course_id": course_id},
                                  headers=headers).get_json()["order"]
        paid, signature = world.razorpay.pay(order["order_id"])
        settle = lambda: world.client.post(f"{PAY}/razorpay/verify", headers=headers, json={  # noqa: E731
            "razorpay_order_id": order["order_id"], "razorpay_payment_id": paid["id"],
            "razorpay_signature": signature})
        return Bought(student, course_id, order["payment_id"], paid["id"], price,
                      int(price * 100)), settle
    opened = world.client.post(f"{PAY}/stripe/create-checkout", json={"course_id": course_id},
                               headers=headers).get_json()
    session = world.stripe.pay(opened["session_id"])
    settle = lambda: world.stripe_webhook(stripe_event("checkout.session.completed", session))  # noqa: E731
    return Bought(student, course_id, opened["payment_id"], session["payment_intent"], price,
                  int(price * 100)), settle


@pytest.mark.parametrize("refund", ["partial", "full"])
def test_a_refund_event_before_its_payment_settled_waits_for_it(world, refund):
    """Webhooks come in any order: the refund's event, then the settlement. The event is
    acknowledged and kept; the settlement applies it."""
    bought, settle = _paid_not_settled(world)
    minor = bought.minor if refund == "full" else 1000
    early = _refund_at_the_dashboard(world, bought.gateway_payment, minor)
    answers = [deliver() for deliver in early]
    assert [a.status_code for a in answers] == [200, 200], [a.get_json() for a in answers]
    assert answers[1].get_json().get("duplicate") is True
    with world.app.app_context():
        waiting = db.session.scalars(select(WebhookEvent).where(
            WebhookEvent.waiting_for == bought.gateway_payment)).one()
        assert waiting.status == "ignored" and waiting.payment_id is None
    assert world.state(bought)["refunds"] == []

    settled = settle()
    assert settled.status_code == 200, settled.get_json()
    state = world.state(bought)
    refunded = bought.price if refund == "full" else Decimal("10.00")
    assert state["payment"] == ("refunded" if refund == "full" else "completed", refunded)
    assert [r[0] for r in state["refunds"]] == [r[0] for r in world.gateway_refunds(bought)]
    assert state["enrollment"] == ("refunded" if refund == "full" else "active")
    with world.app.app_context():
        event = db.session.get(WebhookEvent, waiting.id)
        assert (event.status, event.payment_id, event.waiting_for) == \
            ("processed", bought.payment_id, None)


def test_a_refund_event_that_missed_its_settlement_is_applied_by_the_reconciler(world):
    """The refund's event arrived while its payment was settling in another worker (it did
    not see the payment yet, and the settlement did not see the event): the reconciler's
    sweep applies it."""
    bought, settle = _paid_not_settled(world)
    assert settle().status_code == 200
    with world.app.app_context():  # the payment as the other worker's event saw it
        payment = db.session.get(Payment, bought.payment_id)
        payment.gateway_payment_id = None
        db.session.commit()
    [deliver, _] = _refund_at_the_dashboard(world, bought.gateway_payment, 1000)
    assert deliver().status_code == 200
    with world.app.app_context():
        payment = db.session.get(Payment, bought.payment_id)
        payment.gateway_payment_id = bought.gateway_payment
        db.session.commit()
    assert world.state(bought)["refunds"] == []

    assert "refund_events_applied: 1" in world.reconcile()
    state = world.state(bought)
    assert state["payment"] == ("completed", Decimal("10.00")) and len(state["refunds"]) == 1
    assert "refund_events_applied" not in world.reconcile()


@pytest.mark.parametrize("world", ["razorpay"], indirect=True)  # the stub's pending refunds
def test_a_pending_refund_that_fails_goes_back_to_the_admin_and_is_made_again(world):
    """Razorpay makes normal-speed refunds "pending": the approval answers 202 and the
    request stays approved; the gateway then reports the refund failed (refund.failed), the
    request is pending again, and approving it again makes a new refund under a key of its
    own (the failed one's would be answered with the failure)."""
    bought = world.buy()
    request_id = world.ask_refund(bought)
    world.razorpay.refund_status = "pending"
    accepted = world.approve(request_id)
    assert accepted.status_code == 202, accepted.get_json()
    assert accepted.get_json()["refund_request"]["status"] == "approved"
    assert accepted.get_json()["refund"] is None
    [pending] = world.razorpay.refunds.values()
    assert pending["receipt"] == f"lms-refund-{request_id}"
    assert world.state(bought)["refunds"] == []

    failed = world.razorpay.settle_refund(pending["id"], "failed")
    body, signature = world.razorpay.webhook("refund.failed", {"refund": {"entity": failed}})
    hook = world.client.post(f"{PAY}/razorpay/webhook", data=body.encode(), headers={
        "Content-Type": "application/json", "X-Razorpay-Signature": signature})
    assert hook.status_code == 200, hook.get_json()
    with world.app.app_context():
        request = db.session.get(RefundRequest, request_id)
        assert request.status == "pending" and "failed" in request.admin_note

    world.razorpay.refund_status = "processed"
    again = world.approve(request_id)
    assert again.status_code == 200, again.get_json()
    receipts = sorted((r["receipt"], r["status"]) for r in world.razorpay.refunds.values())
    assert receipts == [(f"lms-refund-{request_id}", "failed"),
                        (f"lms-refund-{request_id}-1", "processed")]
    state = world.state(bought)
    assert state["payment"] == ("refunded", bought.price) and len(state["refunds"]) == 1
    assert state["requests"][0][1] == "processed"


@pytest.mark.parametrize("world", ["razorpay"], indirect=True)
def test_a_pending_refund_processed_later_is_recorded_from_its_event(world):
    bought = world.buy()
    request_id = world.ask_refund(bought)
    world.razorpay.refund_status = "pending"
    assert world.approve(request_id).status_code == 202
    # Still pending at the gateway: the reconciler leaves it in flight.
    assert "refund_approved: 1" in world.reconcile()
    [pending] = world.razorpay.refunds.values()
    processed = world.razorpay.settle_refund(pending["id"], "processed")
    body, signature = world.razorpay.webhook("refund.processed",
                                             {"refund": {"entity": processed}})
    assert world.client.post(f"{PAY}/razorpay/webhook", data=body.encode(), headers={
        "Content-Type": "application/json", "X-Razorpay-Signature": signature}).status_code == 200
    state = world.state(bought)
    assert state["payment"] == ("refunded", bought.price)
    assert state["requests"] == [(request_id, "processed", pending["id"])]
