"""The payment lifecycle as a state machine (issue 17): Hypothesis chooses the steps, the books
must balance after every one of them.

Two students, two paid courses (one sold through Razorpay, one through Stripe, each with one
lesson), an admin; both gateways through their real SDKs against the stand-ins. The steps
(rules) are what the outside world does, in any order and any number of times:

- a student opens an order or a checkout (sometimes with an Idempotency-Key, sometimes reusing
  one), pays at the gateway, the browser verifies (Razorpay);
- the gateway delivers settlement events (Razorpay's payment.captured and order.paid, Stripe's
  checkout.session.completed), redelivers any event it sent before with other unsigned
  headers, refunds at its own dashboard (part or all, its event delivered at once or later,
  out of order), makes refunds pending and later processes or fails them (Razorpay);
- a student finishes the course (a certificate) and asks for a refund;
- an admin approves (with or without overriding the policy; with the gateway down, declining,
  losing its answer after refunding, or our commit failing behind its refund), rejects, or
  refunds part of a payment directly;
- the reconciler runs; the gateways heal and everything in flight is delivered and reconciled.

Invariants, checked after every step, on PostgreSQL:
- no webhook answers 5xx, nor any request unless the step injected the fault that explains it;
  a replayed Idempotency-Key gets the first answer, another request under it 422;
- every payment: 0 <= refunded <= paid; refunded = the sum of its recorded gateway refunds,
  each with its own credit note; "refunded" exactly when nothing is left paid;
- every (student, course) with a completed payment has exactly one enrollment, open, on one of
  those payments; without one, no open enrollment (all courses are paid);
- a payment refunded in full, with no other completed payment for the course: no active
  enrollment and a revoked certificate (if one was issued);
- at most one open refund request per payment;
- every refund the stand-ins hold for our payments is recorded, with its amount, unless it is
  in flight (it carries the key of an approved request), its event has not been delivered yet,
  or its payment has not settled here yet; and every recorded refund is one the stand-in holds.
  The healing step then requires them to be exactly equal.

CI runs --lifecycle-examples (25) runs of --lifecycle-steps (30) steps; raise both for a
deeper search (README, "Testing").
"""
from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
import razorpay
from flask_jwt_extended import create_access_token
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, \
    rule, run_state_machine_as_test
from sqlalchemy import select

from app import create_app
from models import (
    Certificate,
    Course,
    Enrollment,
    Lesson,
    Module,
    Payment,
    PaymentRefund,
    RefundRequest,
    User,
    db,
)
from services.payments.gateway import request_id_of
from tests.support.faults import Faults
from tests.support.razorpay_stub import KEY_ID, KEY_SECRET, WEBHOOK_SECRET, RazorpayStub
from tests.support.stripe_standin import signature_header, stripe_event, stripe_standin
from utils.helpers import utcnow

API = "/api/v1"
PAY = f"{API}/payments"
STRIPE_SECRET = "whsec_lifecycle"
OPEN = ("active", "completed")
PRICES = {"razorpay": (Decimal("499.00"), "INR"), "stripe": (Decimal("49.99"), "USD")}
FAULTS = ("none", "none", "none", "gateway down", "gateway declines", "answer lost",
          "commit fails")
KEYS = st.sampled_from([None, None, None, "key-a", "key-b"])
_headers = itertools.count(1)


REACHED: Counter = Counter()


def reached(outcome: str) -> None:
    """Count what the runs reached (printed after the test: pytest -rP shows it), to see that
    the search gets where it should (approvals that refund, replays, reopened requests...)."""
    REACHED[outcome] += 1


def request_route(path: str) -> str:
    return "/".join("<id>" if part.isdigit() else part for part in path.split("/")[3:])


@pytest.fixture(scope="module")
def rzp():
    with RazorpayStub(KEY_ID, KEY_SECRET, WEBHOOK_SECRET) as stub:
        yield stub


@pytest.fixture(scope="module")
def standin():
    server = stripe_standin()
    yield server
    server.stop()


@pytest.fixture
def lifecycle_app(postgres_app, rzp, standin, tmp_path):
    app = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": postgres_app.config["SQLALCHEMY_DATABASE_URI"],
        "UPLOAD_FOLDER": str(tmp_path / "uploads"), "RATELIMIT_ENABLED": False,
        "RAZORPAY_KEY_ID": KEY_ID, "RAZORPAY_KEY_SECRET": KEY_SECRET,
        "RAZORPAY_WEBHOOK_SECRET": WEBHOOK_SECRET, "RAZORPAY_API_BASE": rzp.url,
        "STRIPE_SECRET_KEY": "sk_test_lifecycle", "STRIPE_WEBHOOK_SECRET": STRIPE_SECRET,
        "STRIPE_API_BASE": standin.url, "GATEWAY_TIMEOUT_SECONDS": 3,
        # A Stripe that is down answers at once, not after the SDK's retries and backoff.
        "STRIPE_MAX_NETWORK_RETRIES": 0})
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@dataclass
class Order:
    student: int
    gateway: str
    payment_id: int
    ref: str  # Razorpay's order id, Stripe's checkout session id
    paid: dict | None = None  # the gateway's payment (Razorpay) or completed session (Stripe)
    signature: str | None = None  # the checkout's signature (Razorpay)
    payable: bool = True
    settle_events: dict = field(default_factory=dict)  # kind -> the body, built once

    @property
    def gateway_payment(self) -> str | None:
        if self.paid is None:
            return None
        return self.paid["id"] if self.gateway == "razorpay" else self.paid["payment_intent"]


class PaymentLifecycle(RuleBasedStateMachine):
    def __init__(self, app, rzp, standin):
        super().__init__()
        self.app, self.rzp, self.standin = app, rzp, standin
        self.client = app.test_client()
        self.faults = Faults(app)
        self.orders: list[Order] = []
        self.deliveries: list = []  # every webhook delivered, to deliver again
        self.unannounced: dict[str, object] = {}  # dashboard refund id -> its undelivered event
        self.requests: set[int] = set()
        self.key_answers: dict = {}  # (student, key) -> (request, status, body)
        rzp.reset()
        standin.reset()
        with app.app_context():
            db.session.remove()
            with db.engine.begin() as conn:
                for table in reversed(db.metadata.sorted_tables):
                    conn.execute(table.delete())
            tag = uuid.uuid4().hex[:8]
            people = [User(email=f"{name}-{tag}@example.com", first_name=name.capitalize(),
                           last_name="Lifecycle", role=role, is_active=True,
                           is_email_verified=True)
                      for name, role in (("ada", "student"), ("bea", "student"),
                                         ("ian", "instructor"), ("root", "admin"))]
            for person in people:
                person.password_hash = "!"  # nobody signs in: tokens are minted
            db.session.add_all(people)
            db.session.flush()
            self.courses, self.lessons = {}, {}
            for gateway, (price, currency) in PRICES.items():
                course = Course(title=f"{gateway} course", slug=f"{gateway}-{tag}",
                                instructor_id=people[2].id, price=price, currency=currency,
                                status="published", published_at=utcnow())
                db.session.add(course)
                db.session.flush()
                module = Module(course_id=course.id, title="Only module", position=1)
                db.session.add(module)
                db.session.flush()
                lesson = Lesson(module_id=module.id, title="Only lesson", position=1)
                db.session.add(lesson)
                db.session.flush()
                self.courses[gateway], self.lessons[gateway] = course.id, lesson.id
            db.session.commit()
            self.students = [people[0].id, people[1].id]
            self.auth = {person.id: {"Authorization": f"Bearer {create_access_token(person)}"}
                         for person in people}
            self.admin = people[3].id

    def teardown(self):
        self.faults.clear()
        self.rzp.recover()
        self.standin.clear_faults()

    # --- sending ---------------------------------------------------------------------------------

    def _send(self, method: str, path: str, who: int | None, *, allowed: set[int],
              json_body=None, key: str | None = None, headers: dict | None = None):
        headers = {**(self.auth[who] if who else {}), **(headers or {})}
        sent = (method, path, json.dumps(json_body, sort_keys=True))
        if key is not None:
            headers["Idempotency-Key"] = key
            first = self.key_answers.get((who, key))
            if first is not None:  # a key answered before: its first answer, or 422 (`_check_key`)
                allowed = {first[1]} if first[0] == sent else {422}
        response = self.client.open(path, method=method, json=json_body, headers=headers)
        body = response.get_json(silent=True)
        reached(f"{method} {request_route(path)} -> {response.status_code}"
              + (f" {body.get('code')}" if response.status_code >= 400 and body else ""))
        assert response.status_code in allowed, (method, path, response.status_code, body)
        if response.status_code >= 400:
            assert set(body) <= {"error", "code", "details"} and body["error"], body
        if key is not None:
            self._check_key(who, key, sent, response, body)
        return response.status_code, body

    def _check_key(self, who: int, key: str, request: tuple, response, body) -> None:
        """Idempotency-Key: the first answer again for the same request; 422 for another."""
        first = self.key_answers.get((who, key))
        if first is None:
            if response.status_code < 500 and response.status_code != 422:
                self.key_answers[(who, key)] = (request, response.status_code, body)
            return
        first_request, status, first_body = first
        if first_request == request:
            assert (response.status_code, body) == (status, first_body), (first, body)
            assert response.headers.get("Idempotent-Replayed") == "true"
        else:
            assert response.status_code == 422 and body["code"] == "idempotency_key_reused"

    def _hook(self, gateway: str, body: str, signature: str | None = None):
        """Deliver a webhook body as the gateway signs it, with fresh unsigned headers; the
        delivery can be repeated (returned)."""
        def deliver():
            n = next(_headers)
            if gateway == "razorpay":
                headers = {"X-Razorpay-Signature": signature,
                           "X-Razorpay-Event-Id": f"evt_header_{n}"}
            else:  # Stripe signs a timestamp with the body: each delivery signs anew
                stamp = int(utcnow().timestamp()) - n % 200
                headers = {"Stripe-Signature": signature_header(body, STRIPE_SECRET, stamp)}
            response = self.client.post(f"{PAY}/{gateway}/webhook", data=body.encode(),
                                        headers={"Content-Type": "application/json", **headers})
            answer = response.get_json(silent=True) or {}
            reached(f"{gateway} webhook -> {response.status_code}"
                  + (" duplicate" if answer.get("duplicate") else ""))
            assert response.status_code == 200, (gateway, response.status_code,
                                                 response.get_data(as_text=True))
            return response.get_json()

        self.deliveries.append(deliver)
        return deliver

    def _order_for(self, data, predicate) -> Order | None:
        candidates = [o for o in self.orders if predicate(o)]
        return data.draw(st.sampled_from(candidates)) if candidates else None

    def _settled(self) -> set[int]:
        with self.app.app_context():
            db.session.remove()
            return set(db.session.scalars(select(Payment.id).where(
                Payment.status == "completed")))

    def _refund_target(self, data) -> Order | None:
        """Mostly a payment settled here (where refunds happen), sometimes any order."""
        settled = self._settled()
        if settled and data.draw(st.integers(0, 4), label="any order") > 0:
            return self._order_for(data, lambda o: o.payment_id in settled)
        return self._order_for(data, lambda o: True)

    # --- students and browsers --------------------------------------------------------------------

    @initialize(student=st.sampled_from([0, 1]), how=st.sampled_from(["browser", "webhook"]))
    def a_student_buys_through_razorpay(self, student, how):
        self._buy(student, "razorpay", how)

    @initialize(student=st.sampled_from([0, 1]), how=st.sampled_from(["webhook", "reconciler"]))
    def a_student_buys_through_stripe(self, student, how):
        self._buy(student, "stripe", how)

    def _buy(self, student: int, gateway: str, how: str) -> None:
        """A purchase that settles, so that every run has money to refund."""
        self.open_order(student, gateway, None)
        order = self.orders[-1]
        order.paid, order.signature = (self.rzp.pay(order.ref) if gateway == "razorpay"
                                       else (self.standin.pay(order.ref), None))
        if how == "browser":
            self._send("POST", f"{PAY}/razorpay/verify", order.student, allowed={200},
                       json_body={"razorpay_order_id": order.ref,
                                  "razorpay_payment_id": order.paid["id"],
                                  "razorpay_signature": order.signature})
        elif how == "webhook":
            self._settle(order, 0)
        else:
            self.reconciler_runs(0)
        assert order.payment_id in self._settled()

    @rule(student=st.sampled_from([0, 1]), gateway=st.sampled_from(["razorpay", "stripe"]),
          key=KEYS)
    def open_order(self, student, gateway, key):
        who = self.students[student]
        path = f"{PAY}/razorpay/create-order" if gateway == "razorpay" else \
            f"{PAY}/stripe/create-checkout"
        status, body = self._send("POST", path, who, allowed={200, 201, 409, 422},
                                  json_body={"course_id": self.courses[gateway]}, key=key)
        if status in (200, 201):
            payment_id = body["order"]["payment_id"] if gateway == "razorpay" else \
                body["payment_id"]
            ref = body["order"]["order_id"] if gateway == "razorpay" else body["session_id"]
            if all(o.payment_id != payment_id for o in self.orders):
                self.orders.append(Order(who, gateway, payment_id, ref))

    @precondition(lambda self: any(o.paid is None and o.payable for o in self.orders))
    @rule(data=st.data())
    def customer_pays(self, data):
        order = self._order_for(data, lambda o: o.paid is None and o.payable)
        if order.gateway == "razorpay":
            order.paid, order.signature = self.rzp.pay(order.ref)
            return
        try:
            order.paid = self.standin.pay(order.ref)
        except AssertionError:  # the checkout was superseded (expired at Stripe)
            order.payable = False

    @precondition(lambda self: any(o.paid and o.gateway == "razorpay" for o in self.orders))
    @rule(data=st.data())
    def browser_verifies(self, data):
        order = self._order_for(data, lambda o: o.paid and o.gateway == "razorpay")
        self._send("POST", f"{PAY}/razorpay/verify", order.student, allowed={200}, json_body={
            "razorpay_order_id": order.ref, "razorpay_payment_id": order.paid["id"],
            "razorpay_signature": order.signature})

    @rule(student=st.sampled_from([0, 1]), gateway=st.sampled_from(["razorpay", "stripe"]))
    def student_finishes_course(self, student, gateway):
        who = self.students[student]
        with self.app.app_context():
            enrollment = db.session.scalar(select(Enrollment.id).where(
                Enrollment.user_id == who, Enrollment.course_id == self.courses[gateway]))
        if enrollment is not None:
            self._send("POST", f"{API}/enrollments/{enrollment}/lessons/"
                       f"{self.lessons[gateway]}/complete", who, allowed={200, 403})

    @precondition(lambda self: self.orders)
    @rule(data=st.data(), key=KEYS)
    def student_asks_refund(self, data, key):
        order = self._refund_target(data)
        status, body = self._send("POST", f"{PAY}/{order.payment_id}/refund-request",
                                  order.student, allowed={201, 403, 409, 422},
                                  json_body={"reason": "Not what I expected"}, key=key)
        if status == 201:
            self.requests.add(body["refund_request"]["id"])

    # --- the gateways -------------------------------------------------------------------------------

    @precondition(lambda self: any(o.paid for o in self.orders))
    @rule(data=st.data(), kind=st.sampled_from([0, 1]))
    def gateway_settles(self, data, kind):
        self._settle(self._order_for(data, lambda o: o.paid), kind)

    def _settle(self, order: Order, kind: int) -> None:
        if order.gateway == "razorpay":
            name = ("payment.captured", "order.paid")[kind]
            if name not in order.settle_events:
                order.settle_events[name] = self.rzp.payment_event(name, order.paid)
            body, signature = order.settle_events[name]
            self._hook("razorpay", body, signature)()
        else:
            if "completed" not in order.settle_events:
                order.settle_events["completed"] = json.dumps(
                    stripe_event("checkout.session.completed", order.paid))
            self._hook("stripe", order.settle_events["completed"])()

    @precondition(lambda self: self.deliveries)
    @rule(data=st.data())
    def gateway_redelivers(self, data):
        """Any event sent before, again, with other unsigned headers: a duplicate."""
        deliver = data.draw(st.sampled_from(self.deliveries))
        assert deliver().get("duplicate") is True

    def _left_at_gateway(self, order: Order) -> int:
        return order.paid["amount" if order.gateway == "razorpay" else "amount_total"] - sum(
            amount for _, amount in self._gateway_refunds_of(order))

    @precondition(lambda self: any(o.paid for o in self.orders))
    @rule(data=st.data(), everything=st.booleans(), announce=st.booleans())
    def gateway_dashboard_refund(self, data, everything, announce):
        order = self._order_for(data, lambda o: o.paid)
        left = self._left_at_gateway(order)
        if left <= 0:
            return
        amount = left if everything else min(left, 1000)
        if order.gateway == "razorpay":
            speed, self.rzp.refund_status = self.rzp.refund_status, "processed"
            try:  # the dashboard's refund, processed, announced by refund.processed
                refund = razorpay.Client(auth=(KEY_ID, KEY_SECRET), base_url=self.rzp.url) \
                    .payment.refund(order.gateway_payment, {"amount": amount})
            finally:
                self.rzp.refund_status = speed
            body, signature = self.rzp.webhook("refund.processed", {"refund": {"entity": refund}})
            deliver = self._hook("razorpay", body, signature)
        else:
            refund = self.standin.client().v1.refunds.create(params={
                "payment_intent": order.gateway_payment, "amount": amount}).to_dict()
            deliver = self._hook("stripe", json.dumps(stripe_event(
                "charge.refunded", self.standin.charge_of(order.gateway_payment))))
        if announce:
            deliver()
        else:
            self.deliveries.remove(deliver)
            self.unannounced[refund["id"]] = deliver

    @rule(pending=st.booleans())
    def razorpay_switches_refund_speed(self, pending):
        """Normal-speed Razorpay refunds are "pending" for a while: our approvals then wait
        (202) for refund.processed, or refund.failed."""
        self.rzp.refund_status = "pending" if pending else "processed"

    @precondition(lambda self: any(r["status"] == "pending" for r in self.rzp.refunds.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["processed", "processed", "failed"]),
          announce=st.booleans())
    def razorpay_finishes_a_refund(self, data, outcome, announce):
        refund_id = data.draw(st.sampled_from(sorted(
            r["id"] for r in self.rzp.refunds.values() if r["status"] == "pending")))
        self._finish_refund(refund_id, outcome, announce)

    def _finish_refund(self, refund_id: str, outcome: str, announce: bool) -> None:
        refund = self.rzp.settle_refund(refund_id, outcome)
        body, signature = self.rzp.webhook(f"refund.{outcome}", {"refund": {"entity": refund}})
        deliver = self._hook("razorpay", body, signature)
        if announce or outcome == "failed":
            deliver()
        else:
            self.deliveries.remove(deliver)
            self.unannounced[refund_id] = deliver

    @precondition(lambda self: self.unannounced)
    @rule(data=st.data())
    def gateway_announces_refund(self, data):
        refund_id = data.draw(st.sampled_from(sorted(self.unannounced)))
        deliver = self.unannounced.pop(refund_id)
        self.deliveries.append(deliver)
        deliver()

    # --- the admin ----------------------------------------------------------------------------------

    def _request_to_decide(self, data) -> int:
        """Mostly an open request (pending, or approved and in flight), sometimes any."""
        with self.app.app_context():
            db.session.remove()
            open_ = sorted(db.session.scalars(select(RefundRequest.id).where(
                RefundRequest.status.in_(("pending", "approved")))))
        if open_ and data.draw(st.integers(0, 4), label="any request") > 0:
            return data.draw(st.sampled_from(open_))
        return data.draw(st.sampled_from(sorted(self.requests)))

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), override=st.booleans(), fault=st.sampled_from(FAULTS), key=KEYS)
    def admin_approves(self, data, override, fault, key):
        request_id = self._request_to_decide(data)
        with self.app.app_context():
            gateway = db.session.scalar(select(Payment.gateway).join(
                RefundRequest, RefundRequest.payment_id == Payment.id).where(
                RefundRequest.id == request_id))
        if fault == "answer lost" and gateway == "stripe":
            fault = "gateway down"  # localstripe always answers
        # 202: the refund is pending at the gateway (nothing recorded yet, so a failing
        # commit cannot show); 200: a refund made earlier, found by its key
        allowed = {"none": {200, 202, 409, 422}, "gateway down": {409, 422, 503},
                   "gateway declines": {200, 202, 409, 422, 502},
                   "answer lost": {200, 202, 409, 422, 503},
                   "commit fails": {202, 409, 422, 500}}[fault]
        send = lambda: self._send(  # noqa: E731
            "PUT", f"{API}/admin/refund-requests/{request_id}", self.admin, allowed=allowed,
            json_body={"action": "approve", "override_policy": override}, key=key)
        reached(f"approval with {fault} ({gateway})")
        try:
            if fault == "gateway down" and gateway == "stripe":
                with self.standin.down():
                    send()
                return
            if fault == "gateway down":
                self.rzp.go_down()
            elif fault == "gateway declines":
                if gateway == "razorpay":
                    self.rzp.fail_next("POST", "/refund", 400, "The payment is under dispute")
                else:
                    self.standin.fail_next("POST", "/v1/refunds", 400, "Under dispute")
            elif fault == "answer lost":
                self.rzp.lose_next_answer("POST", "/refund")
            elif fault == "commit fails":
                self.faults.inject("payment_refunds", "INSERT")
            send()
        finally:
            self.faults.clear()
            self.rzp.recover()
            self.standin.clear_faults()

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def admin_rejects(self, data):
        request_id = self._request_to_decide(data)
        self._send("PUT", f"{API}/admin/refund-requests/{request_id}", self.admin,
                   allowed={200, 409}, json_body={"action": "reject", "note": "Policy"})

    @precondition(lambda self: self.orders)
    @rule(data=st.data(), cents=st.sampled_from([100, 1000, 2500]), key=KEYS)
    def admin_refunds_part(self, data, cents, key):
        order = self._refund_target(data)
        status, body = self._send(
            "POST", f"{API}/admin/payments/{order.payment_id}/refund", self.admin,
            allowed={201, 202, 409, 422},
            json_body={"reason": "Goodwill", "amount": str(Decimal(cents) / 100),
                       "override_policy": True}, key=key)
        if status in (201, 202):
            self.requests.add(body["refund_request"]["id"])

    @rule(older_than=st.sampled_from([None, 0]))
    def reconciler_runs(self, older_than):
        args = ["payments", "reconcile"] + ([] if older_than is None else
                                            ["--older-than", str(older_than)])
        result = self.app.test_cli_runner().invoke(args=args)
        assert result.exit_code == 0, (result.output, result.exception)

    @rule()
    def gateways_heal_and_everything_converges(self):
        """Everything the gateways hold is delivered and reconciled: then the stand-ins'
        refunds and ours are exactly the same, and no refund is left in flight."""
        self.rzp.refund_status = "processed"
        for refund in list(self.rzp.refunds.values()):
            if refund["status"] == "pending":
                self._finish_refund(refund["id"], "processed", True)
        for refund_id in sorted(self.unannounced):
            deliver = self.unannounced.pop(refund_id)
            self.deliveries.append(deliver)
            deliver()
        self.reconciler_runs(0)
        self.reconciler_runs(None)  # an approval reopened by the first run is not retried
        gateway, ours = self._gateway_refunds(), self._recorded_refunds()
        assert gateway == ours, (gateway, ours)
        with self.app.app_context():
            assert db.session.scalar(select(RefundRequest.id).where(
                RefundRequest.status == "approved")) is None

    # --- the books ----------------------------------------------------------------------------------

    def _gateway_refunds_of(self, order: Order) -> list[tuple[str, int]]:
        if order.gateway == "razorpay":
            return [(r["id"], r["amount"]) for r in self.rzp.refunds.values()
                    if r["payment_id"] == order.gateway_payment]
        return [(r["id"], r["amount"]) for r in self.standin.refunds_for(order.gateway_payment)]

    def _stand_in_refunds(self) -> dict[str, dict]:
        """{refund id: {"payment", "amount" (minor units), "key"}}: every refund the stand-ins
        hold (the runs start from empty stand-ins, so all of them are of our payments)."""
        found = {r["id"]: {"payment": r["payment_id"], "amount": r["amount"],
                           "key": r.get("receipt")} for r in self.rzp.refunds.values()
                 if r["status"] == "processed"}  # pending: not money back yet; failed: none
        for intent, refunds in self.standin.refunds_by_intent().items():
            for r in refunds:
                if r["status"] == "succeeded":
                    found[r["id"]] = {"payment": intent, "amount": r["amount"],
                                      "key": r["metadata"].get("lms_key")}
        return found

    def _gateway_refunds(self) -> dict[str, tuple[str, int]]:
        """{refund id: (gateway payment id, amount in minor units)} at the stand-ins."""
        return {refund_id: (r["payment"], r["amount"])
                for refund_id, r in self._stand_in_refunds().items()}

    def _recorded_refunds(self) -> dict[str, tuple[str, int]]:
        with self.app.app_context():
            db.session.remove()
            rows = db.session.execute(select(
                PaymentRefund.gateway_refund_id, Payment.gateway_payment_id, PaymentRefund.amount)
                .join(Payment, Payment.id == PaymentRefund.payment_id)).all()
        return {refund_id: (payment, int(amount * 100)) for refund_id, payment, amount in rows}

    @invariant()
    def books_balance(self):
        with self.app.app_context():
            db.session.remove()
            payments = db.session.scalars(select(Payment)).all()
            ledger = db.session.scalars(select(PaymentRefund)).all()
            enrollments = {(e.user_id, e.course_id): e
                           for e in db.session.scalars(select(Enrollment))}
            certificates = {(c.user_id, c.course_id): c.status
                            for c in db.session.scalars(select(Certificate))}
            requests = db.session.scalars(select(RefundRequest)).all()
            approved = {r.id for r in requests if r.status == "approved"}

            # refunded <= paid, and it is the sum of the recorded gateway refunds
            for payment in payments:
                total = sum((r.amount for r in ledger if r.payment_id == payment.id),
                            Decimal("0.00"))
                assert payment.refunded_amount == total, (payment.id, payment.refunded_amount,
                                                          total)
                assert Decimal(0) <= total <= payment.amount
                assert (payment.status == "refunded") == (total == payment.amount > 0), \
                    (payment.id, payment.status, total)
            credit_notes = [r.credit_note_number for r in ledger]
            assert len(set(credit_notes)) == len(credit_notes)
            assert all(number.startswith("CN-") for number in credit_notes)

            # one enrollment per settled purchase; a full refund ends access
            for student in self.students:
                for gateway, course in self.courses.items():
                    mine = [p for p in payments if (p.user_id, p.course_id) == (student, course)]
                    completed = {p.id for p in mine if p.status == "completed"}
                    enrollment = enrollments.get((student, course))
                    if completed:
                        assert enrollment is not None and enrollment.status in OPEN, \
                            (student, gateway, enrollment and enrollment.status)
                        assert enrollment.payment_id in completed
                    else:
                        assert enrollment is None or enrollment.status not in OPEN, \
                            (student, gateway, enrollment.status)
                        if any(p.status == "refunded" for p in mine):
                            assert certificates.get((student, course)) in (None, "revoked")

            # one open request per payment
            open_requests = [r.payment_id for r in requests
                             if r.status in ("pending", "approved")]
            assert len(open_requests) == len(set(open_requests))

        # the stand-ins' refunds and ours
        held, ours = self._stand_in_refunds(), self._recorded_refunds()
        for refund_id, recorded in ours.items():
            at_gateway = held.get(refund_id)
            assert at_gateway and (at_gateway["payment"], at_gateway["amount"]) == recorded, \
                (refund_id, recorded, at_gateway)
        settled = {p.gateway_payment_id for p in payments
                   if p.status in ("completed", "refunded") and p.gateway_payment_id}
        for refund_id, refund in held.items():
            if refund_id in ours:
                continue
            assert (request_id_of(refund["key"]) in approved or refund_id in self.unannounced
                    or refund["payment"] not in settled), ("a gateway refund is lost",
                                                           refund_id, refund)


def test_the_payment_lifecycle_keeps_the_books(lifecycle_app, rzp, standin, request):
    config = request.config
    REACHED.clear()
    run_state_machine_as_test(
        lambda: PaymentLifecycle(lifecycle_app, rzp, standin),
        settings=settings(max_examples=config.getoption("--lifecycle-examples"),
                          stateful_step_count=config.getoption("--lifecycle-steps"),
                          deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.filter_too_much]))
    for outcome, times in sorted(REACHED.items()):
        print(f"{times:6d}  {outcome}")

