"""No request half-writes: multi-step operations interrupted in the middle leave a consistent
database, and the same operation afterwards completes.

The fault is injected at the database edge, never by mocking our own code: a temporary
PL/pgSQL trigger RAISEs on the Nth INSERT or UPDATE of a table the operation writes late (a
sequence counts the rows, so the count survives the rollback it causes), either at once
(BEFORE ... FOR EACH ROW) or at COMMIT (a deferred constraint trigger: the operation has done
everything and the commit itself fails). The operation runs through the HTTP API; the answer
must be a clean error or the operation's own account of what it did, never a half success.
Then the trigger is dropped and the database is compared with what "consistent" means for
each operation (services/payments/, services/certificate_service.py):

- Settling a payment (a signed Razorpay webhook, or the browser's verify call) marks the
  payment completed, numbers its invoice from the year's counter, enrolls the payer and
  notifies them, in one transaction: interrupted anywhere, the payment is still open, no
  invoice number was used up, no enrollment or notice exists, and the webhook event is not
  recorded, so the gateway's redelivery settles it (with the next invoice number: no gap).
- Approving a refund records the decision (the request approved, the audit entry) and commits
  it before the gateway is asked: interrupted there, nothing is written and no money moves.
  Then the gateway refunds and the ledger records it (the refund row and its credit note, the
  payment refunded, the enrollment refunded, the certificate revoked, a notice, the request
  processed): interrupted there, the request stays approved (in flight) and none of the rest
  is written; the retried approval finds the gateway's refund by its key and records it,
  rather than refunding twice (tests/test_refund_convergence.py: the webhook and the
  reconciler converge the same way).
- Bulk certificate issuance commits in batches of CERTIFICATE_BULK_BATCH, each certificate in
  a savepoint: a certificate that fails is absent as a whole (no row without its PDF's hash);
  a batch whose COMMIT fails is absent as a whole while earlier batches stand; a retry issues
  exactly the rest, with no duplicates.

PostgreSQL only (`postgres_app` from conftest.py): triggers are the fault injector. Each test
gets its own app on that database with Razorpay pointing at the stand-in
(tests/support/razorpay_stub.py) and an upload folder of its own.
"""
from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from app import create_app
from models import (
    AuditLog,
    Certificate,
    Course,
    Enrollment,
    InvoiceCounter,
    MasterCategory,
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
from utils.helpers import utcnow

API = "/api/v1"
PAY = f"{API}/payments"
PRICE = Decimal("499.00")
_SERIAL = itertools.count(1)


# --- the world a test runs in ---------------------------------------------------------------------

@dataclass
class World:
    app: object
    client: object
    stub: RazorpayStub
    uploads: Path

    def add(self, obj) -> int:
        with self.app.app_context():
            db.session.add(obj)
            db.session.commit()
            return obj.id

    def user(self, role: str = "student") -> int:
        n = next(_SERIAL)
        with self.app.app_context():
            user = User(email=f"{role}{n}-{uuid.uuid4().hex[:6]}@example.com",
                        first_name=role.capitalize(), last_name=f"Number{n}", role=role,
                        is_active=True, is_email_verified=True, phone_number=f"+9198765{n:05d}")
            user.set_password("Passw0rd!")
            db.session.add(user)
            db.session.commit()
            return user.id

    def course(self) -> int:
        n = next(_SERIAL)
        return self.add(Course(title=f"Interrupted course {n}",
                               slug=f"interrupted-{n}-{uuid.uuid4().hex[:6]}",
                               instructor_id=self.user("instructor"), price=PRICE,
                               currency="INR", status="published", published_at=utcnow()))

    def headers(self, user_id: int) -> dict:
        with self.app.app_context():
            token = create_access_token(db.session.get(User, user_id))
        return {"Authorization": f"Bearer {token}"}

    def count(self, model, *where) -> int:
        with self.app.app_context():
            return db.session.scalar(select(func.count()).select_from(model).where(*where))

    def scalar(self, statement):
        with self.app.app_context():
            return db.session.scalar(statement)

    def rows(self, model, *columns: str) -> list[tuple]:
        with self.app.app_context():
            return sorted(tuple(getattr(row, c) for c in columns)
                          for row in db.session.scalars(select(model)))

    # payments
    def open_order(self, student: int, course: int) -> dict:
        response = self.client.post(f"{PAY}/razorpay/create-order", json={"course_id": course},
                                    headers=self.headers(student))
        assert response.status_code == 201, response.get_json()
        return response.get_json()["order"]

    def webhook(self, body: str, signature: str, event_id: str):
        return self.client.post(f"{PAY}/razorpay/webhook", data=body.encode(), headers={
            "Content-Type": "application/json", "X-Razorpay-Signature": signature,
            "X-Razorpay-Event-Id": event_id})

    def verify(self, student: int, order_id: str, payment_id: str, signature: str):
        return self.client.post(f"{PAY}/razorpay/verify", headers=self.headers(student), json={
            "razorpay_order_id": order_id, "razorpay_payment_id": payment_id,
            "razorpay_signature": signature})

    def money_state(self) -> dict:
        """Everything a settlement or a refund may write, to compare before and after."""
        return {
            "payments": self.rows(Payment, "id", "status", "gateway_payment_id", "paid_at",
                                  "invoice_number", "refunded_amount", "refunded_at"),
            "invoice_counters": self.rows(InvoiceCounter, "year", "last_number"),
            "enrollments": self.rows(Enrollment, "id", "user_id", "course_id", "status",
                                     "payment_id", "cancelled_at"),
            "notifications": self.rows(Notification, "id", "user_id", "title"),
            "events": self.rows(WebhookEvent, "id", "event_id", "status"),
            "refund_requests": self.rows(RefundRequest, "id", "status", "reviewed_by_id",
                                         "gateway_refund_id", "decided_at"),
            "certificates": self.rows(Certificate, "id", "status", "revoked_at"),
            "audit": self.rows(AuditLog, "id", "action"),
        }


@pytest.fixture(scope="module")
def stub():
    with RazorpayStub(KEY_ID, KEY_SECRET, WEBHOOK_SECRET) as server:
        yield server


@pytest.fixture
def world(postgres_app, stub, tmp_path):
    stub.reset()
    uploads = tmp_path / "uploads"
    app = create_app("testing", overrides={
        "SQLALCHEMY_DATABASE_URI": postgres_app.config["SQLALCHEMY_DATABASE_URI"],
        "UPLOAD_FOLDER": str(uploads), "RAZORPAY_KEY_ID": KEY_ID,
        "RAZORPAY_KEY_SECRET": KEY_SECRET, "RAZORPAY_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "RAZORPAY_API_BASE": stub.url, "CERTIFICATE_BULK_BATCH": 2,
        "RATE_LIMIT_PAYMENT_CREATE": "1000 per minute",
        "RATE_LIMIT_PAYMENT_VERIFY": "1000 per minute"})
    yield World(app, app.test_client(), stub, uploads)
    stub.recover()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def faults(world):
    injector = Faults(world.app)
    yield injector
    injector.clear()


def assert_internal_error(response) -> None:
    """The clean failure: 500 in the one error shape, with nothing of the database in it."""
    assert response.status_code == 500, (response.status_code, response.get_data(as_text=True))
    body = response.get_json()
    assert body == {"error": "An unexpected error occurred", "code": "internal_error"}, body


# --- payment settlement ---------------------------------------------------------------------------

FAULT_POINTS = {
    # the enrollment row (inside the webhook's savepoint)
    "enrollment insert": ("enrollments", "INSERT", False),
    # the invoice number (the year's counter, UPDATE ... RETURNING)
    "invoice counter update": ("invoice_counters", "UPDATE", False),
    # the "payment received" notice, the last row, flushed by the route's commit
    "notification insert": ("notifications", "INSERT", False),
    # the COMMIT itself, after every statement succeeded
    "payment update at commit": ("payments", "UPDATE", True),
}


@pytest.mark.parametrize("entry, point", [
    *[("webhook", point) for point in FAULT_POINTS],
    ("verify", "enrollment insert"),
    ("verify", "payment update at commit"),
])
def test_interrupted_settlement_writes_nothing_and_settles_on_retry(world, faults, entry, point):
    student = world.user()
    # A first payment settles normally: this year's invoice counter exists and stands at 1.
    first_course = world.course()
    first = world.open_order(student, first_course)
    paid, _ = world.stub.pay(first["order_id"])
    first_paid = paid["id"]
    body, signature = world.stub.payment_event("payment.captured", paid)
    settled = world.webhook(body, signature, "evt_first")
    assert settled.status_code == 200, settled.get_data(as_text=True)
    first_invoice = world.scalar(select(Payment.invoice_number)
                                 .where(Payment.id == first["payment_id"]))
    assert first_invoice.endswith("-000001")

    # The second is interrupted in the middle of its settlement.
    course = world.course()
    order = world.open_order(student, course)
    paid, checkout_signature = world.stub.pay(order["order_id"])
    body, signature = world.stub.payment_event("payment.captured", paid)
    before = world.money_state()
    table, operation, at_commit = FAULT_POINTS[point]
    faults.inject(table, operation, at_commit=at_commit)

    def settle():
        if entry == "webhook":
            return world.webhook(body, signature, "evt_second")
        return world.verify(student, order["order_id"], paid["id"], checkout_signature)

    assert_internal_error(settle())
    faults.clear()

    # Nothing of it was written: the payment is open, no invoice number was used up, no
    # enrollment, no notice, and the event is not on record (so a redelivery is not a
    # "duplicate" that changes nothing).
    assert world.money_state() == before
    [(status, invoice, paid_at)] = [
        row[1:] for row in world.rows(Payment, "id", "status", "invoice_number", "paid_at")
        if row[0] == order["payment_id"]]
    assert (status, invoice, paid_at) == ("pending", None, None)
    assert world.scalar(select(InvoiceCounter.last_number)) == 1
    assert world.count(Enrollment, Enrollment.course_id == course) == 0

    # The same delivery again settles it, exactly once, with the next invoice number.
    again = settle()
    assert again.status_code == 200, again.get_json()
    if entry == "webhook":
        assert again.get_json() == {"received": True}
    else:
        assert again.get_json()["payment"]["status"] == "completed"
    row = world.rows(Payment, "id", "status", "invoice_number", "gateway_payment_id")
    assert (order["payment_id"], "completed", first_invoice.replace("-000001", "-000002"),
            paid["id"]) in row
    assert world.scalar(select(InvoiceCounter.last_number)) == 2
    assert world.rows(Enrollment, "user_id", "course_id", "status", "payment_id") == sorted([
        (student, first_course, "active", first["payment_id"]),
        (student, course, "active", order["payment_id"])])
    assert world.count(Notification, Notification.user_id == student,
                       Notification.title == "Payment received") == 2
    if entry == "webhook":  # recorded by the event and its payment, from the signed body
        assert world.rows(WebhookEvent, "event_id", "status") == sorted([
            (f"payment.captured:{first_paid}", "processed"),
            (f"payment.captured:{paid['id']}", "processed")])


# --- refund approval ------------------------------------------------------------------------------

def _settled_with_refund_request(world) -> dict:
    """A student with a settled payment, their pending refund request, a certificate for the
    course issued after they asked (so the approval takes the admin's override), and an
    admin."""
    student, course = world.user(), world.course()
    order = world.open_order(student, course)
    paid, signature = world.stub.pay(order["order_id"])
    verified = world.verify(student, order["order_id"], paid["id"], signature)
    assert verified.status_code == 200, verified.get_data(as_text=True)
    response = world.client.post(f"{PAY}/{order['payment_id']}/refund-request",
                                 headers=world.headers(student),
                                 json={"reason": "The course is not what I expected"})
    assert response.status_code == 201, response.get_json()
    enrollment = world.scalar(select(Enrollment.id).where(Enrollment.user_id == student,
                                                          Enrollment.course_id == course))
    world.add(Certificate(certificate_number=f"CERT-{uuid.uuid4().hex[:12]}", user_id=student,
                          course_id=course, enrollment_id=enrollment, holder_name="Student",
                          course_title="Course", completion_date=date.today(), status="valid"))
    return {"student": student, "course": course, "payment": order["payment_id"],
            "gateway_payment": paid["id"], "admin": world.user("admin"),
            "request": response.get_json()["refund_request"]["id"]}


def _approve(world, case):
    return world.client.put(f"{API}/admin/refund-requests/{case['request']}",
                            headers=world.headers(case["admin"]),
                            json={"action": "approve", "note": "ok", "override_policy": True})


# The decision itself (the request approved, the audit entry), committed before the gateway is
# asked: interrupted there, nothing is written and no money moves.
DECISION_FAULT_POINTS = {
    "audit entry": ("audit_logs", "INSERT", False),
    "approval at commit": ("refund_requests", "UPDATE", True),
}

# Recording the refund the gateway made (the ledger row and its credit note number, the
# payment, the certificate, the notice, the request): interrupted there, the approval stands
# and the money has left; the refund is in flight.
RECORDING_FAULT_POINTS = {
    "refund record": ("payment_refunds", "INSERT", False),
    "credit note number": ("credit_note_counters", "INSERT", False),
    "certificate revocation": ("certificates", "UPDATE", False),
    "refund notice": ("notifications", "INSERT", False),
    "payment update at commit": ("payments", "UPDATE", True),
}


@pytest.mark.parametrize("point", list(DECISION_FAULT_POINTS))
def test_an_approval_that_cannot_be_recorded_moves_no_money(world, faults, point):
    case = _settled_with_refund_request(world)
    before = world.money_state()
    table, operation, at_commit = DECISION_FAULT_POINTS[point]
    faults.inject(table, operation, at_commit=at_commit)

    assert_internal_error(_approve(world, case))
    faults.clear()

    assert world.money_state() == before
    assert (case["request"], "pending") in world.rows(RefundRequest, "id", "status")
    assert world.stub.refunds == {}
    assert world.stub.requests_to("/refund") == []


@pytest.mark.parametrize("point", list(RECORDING_FAULT_POINTS))
def test_an_interrupted_refund_record_leaves_the_refund_in_flight(world, faults, point):
    case = _settled_with_refund_request(world)
    before = world.money_state()
    table, operation, at_commit = RECORDING_FAULT_POINTS[point]
    faults.inject(table, operation, at_commit=at_commit)

    assert_internal_error(_approve(world, case))
    faults.clear()

    # The approval is on record; nothing of the refund is: the payment completed, access and
    # the certificate kept, no notice, no ledger row.
    after = world.money_state()
    assert (case["request"], "approved", case["admin"]) in [
        row[:3] for row in after["refund_requests"]]
    assert [action for _, action in after["audit"]] == ["refund_request.approve"]
    for key in ("payments", "enrollments", "notifications", "certificates",
                "invoice_counters", "events"):
        assert after[key] == before[key], key
    assert world.count(PaymentRefund) == 0
    # The gateway was asked, and refunded: the money has left.
    assert [r["payment_id"] for r in world.stub.refunds.values()] == [case["gateway_payment"]]


def test_refund_approval_retried_after_an_interruption_completes(world, faults):
    case = _settled_with_refund_request(world)
    faults.inject("notifications", "INSERT")
    assert_internal_error(_approve(world, case))
    faults.clear()

    again = _approve(world, case)
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["refund_request"]["status"] == "processed"
    assert len(world.stub.refunds) == 1  # one refund at the gateway, not two
    assert (case["payment"], "refunded") in world.rows(Payment, "id", "status")
    assert world.rows(Enrollment, "user_id", "status") == [(case["student"], "refunded")]
    assert world.rows(Certificate, "status") == [("revoked",)]
    assert world.count(PaymentRefund) == 1


# --- bulk certificate issuance ----------------------------------------------------------------------

def _completed_course(world, students: int = 5) -> tuple[int, list[int]]:
    """A course with `students` completed enrollments; their ids in issuance order."""
    course = world.course()
    finished = utcnow() - timedelta(days=1)
    ids = []
    for _ in range(students):
        ids.append(world.add(Enrollment(user_id=world.user(), course_id=course,
                                        status="completed", progress_percent=Decimal(100),
                                        enrolled_at=finished - timedelta(days=7),
                                        completed_at=finished)))
    return course, sorted(ids)


def _bulk(world, course: int) -> dict | None:
    """Bulk issuance through the API as an admin: its counts (issued, skipped, failed), or
    None when it failed as a whole. The route runs it as a background job (inline here) and
    answers 202 with the job, finished or failed."""
    response = world.client.post(f"{API}/certificates/bulk-generate/{course}",
                                 headers=world.headers(world.user("admin")))
    assert response.status_code in (200, 202, 500), response.get_data(as_text=True)
    body = response.get_json()
    if response.status_code == 500:
        assert_internal_error(response)
        return None
    if response.status_code == 200:  # the synchronous form of the route
        return {key: body[key] for key in ("issued", "skipped", "failed")}
    job = body["job"]
    assert job["status"] in ("finished", "failed"), job
    return job["result"] if job["status"] == "finished" else None


def _certificates(world, course: int) -> dict[int, dict]:
    """The course's certificates by enrollment id."""
    with world.app.app_context():
        return {c.enrollment_id: {"user_id": c.user_id, "number": c.certificate_number,
                                  "file_path": c.file_path, "sha256": c.sha256}
                for c in db.session.scalars(select(Certificate)
                                            .where(Certificate.course_id == course))}


def _assert_whole(certificates: dict[int, dict]) -> None:
    """Every certificate row is whole: its PDF stored and hashed (no row from half an issue)."""
    for enrollment, certificate in certificates.items():
        assert certificate["file_path"] and certificate["sha256"], (enrollment, certificate)


@pytest.mark.parametrize("operation", ["INSERT", "UPDATE"])
def test_a_certificate_interrupted_in_a_bulk_run_is_absent_and_the_retry_issues_it(
        world, faults, operation):
    """INSERT: the row itself fails; UPDATE: the row was written, then its PDF's path and hash
    fail. Either way the third certificate's savepoint takes all of it back; the others (in
    its batch too) are issued, and a second run issues exactly the missing one."""
    course, enrollments = _completed_course(world)
    faults.inject("certificates", operation, nth=3)

    assert _bulk(world, course) == {"issued": 4, "skipped": 0, "failed": 1}
    faults.clear()
    issued = _certificates(world, course)
    assert sorted(issued) == [e for e in enrollments if e != enrollments[2]]
    _assert_whole(issued)

    assert _bulk(world, course) == {"issued": 1, "skipped": 4, "failed": 0}
    after = _certificates(world, course)
    assert sorted(after) == enrollments
    _assert_whole(after)
    assert {e: after[e] for e in issued} == issued  # the first four untouched
    assert world.count(Certificate, Certificate.course_id == course) == 5  # one per student


def test_a_batch_whose_commit_fails_is_absent_and_the_retry_completes_the_rest(world, faults):
    """Batches of two; the third certificate fails at COMMIT: batch one (1, 2) stands, batch
    two (3, 4) is absent as a whole, batch three (5) never ran. A second run issues 3, 4, 5."""
    course, enrollments = _completed_course(world)
    faults.inject("certificates", "INSERT", nth=3, at_commit=True)

    assert _bulk(world, course) is None
    faults.clear()
    issued = _certificates(world, course)
    assert sorted(issued) == enrollments[:2]
    _assert_whole(issued)

    assert _bulk(world, course) == {"issued": 3, "skipped": 2, "failed": 0}
    after = _certificates(world, course)
    assert sorted(after) == enrollments
    _assert_whole(after)
    assert {e: after[e] for e in issued} == issued
    assert len({c["user_id"] for c in after.values()}) == 5


def test_an_interrupted_bulk_run_leaves_no_pdf_without_its_certificate(world, faults):
    course, _ = _completed_course(world)
    faults.inject("certificates", "INSERT", nth=3, at_commit=True)
    assert _bulk(world, course) is None
    faults.clear()
    assert _bulk(world, course) == {"issued": 3, "skipped": 2, "failed": 0}

    kept = {c["file_path"] for c in _certificates(world, course).values()}
    on_disk = {f"certificates/{p.name}" for p in (world.uploads / "certificates").glob("*.pdf")}
    assert on_disk == kept, sorted(on_disk - kept)


def test_the_fault_injector_counts_rows_and_leaves_nothing_behind(world, faults):
    """The injector itself: the 2nd INSERT fails, the 1st and 3rd pass, and clear() drops
    the trigger, its function and its sequence."""
    name = faults.inject("master_categories", "INSERT", nth=2)
    outcomes = []
    with world.app.app_context():
        for n in range(3):
            db.session.add(MasterCategory(name=f"c{n}-{name}", slug=f"c{n}-{name}"))
            try:
                db.session.commit()
                outcomes.append("ok")
            except DBAPIError as exc:  # the injected RAISE, as the driver reports it
                db.session.rollback()
                outcomes.append("injected fault: INSERT on master_categories" in str(exc.orig))
    faults.clear()
    assert outcomes == ["ok", True, "ok"]
    with world.app.app_context():
        leftovers = db.session.scalar(text(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'lms_fault_%'"))
        leftovers += db.session.scalar(text(
            "SELECT count(*) FROM pg_proc WHERE proname LIKE 'lms_fault_%'"))
        leftovers += db.session.scalar(text(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'lms_fault_%'"))
    assert leftovers == 0
