"""What happens to money, whichever gateway carried it.

- `open_order` runs the checks that must hold before any gateway is asked to charge, and
  reuses a pending, unexpired order of the same user and course.
- `settle` is the one settlement path: the browser's verify call, every webhook and the
  reconciler end here. It locks the payment row, checks amount and currency against the order,
  marks it completed, numbers the invoice and enrolls, in the caller's transaction. Settling an
  already settled payment changes nothing.
- `record_event` stores a webhook event under its (gateway, event id) before it is acted on,
  so a redelivered event is recognised and changes nothing.
- Refund requests: asked by the payer, decided by an admin; approval refunds through the
  gateway first, and only then changes our records.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from models import (
    Course,
    Enrollment,
    InvoiceCounter,
    Notification,
    Payment,
    RefundRequest,
    User,
    WebhookEvent,
    db,
)
from services import certificate_service, enrollment_service
from utils.errors import Conflict, Forbidden, NotFound, ValidationError
from utils.helpers import money, to_minor_units, utcnow

log = logging.getLogger("lms.payments")

PENDING = ("created", "pending")


# --- orders -----------------------------------------------------------------------------------

def pending_timeout() -> timedelta:
    return timedelta(minutes=current_app.config["PAYMENT_PENDING_TIMEOUT"])


def open_order(user: User, course_id: int, gateway: str) -> tuple[Payment, Course, bool]:
    """(payment, course, reused). A new payment row is flushed so it has an id for the
    gateway's receipt, metadata and idempotency key."""
    from services import course_service

    course = course_service.visible_course(course_id, user)
    # One order at a time per user: two simultaneous requests must not open two orders that
    # could both be paid (FOR UPDATE on PostgreSQL; SQLite serialises writers itself).
    db.session.execute(select(User.id).where(User.id == user.id).with_for_update())
    enrollment_service.check_can_buy(user, course)
    reusable = db.session.scalar(
        select(Payment).where(
            Payment.user_id == user.id, Payment.course_id == course.id,
            Payment.gateway == gateway, Payment.status.in_(PENDING),
            Payment.amount == course.price, Payment.currency == course.currency,
            Payment.created_at > utcnow() - pending_timeout())
        .order_by(Payment.created_at.desc(), Payment.id.desc()).limit(1))
    if reusable is not None and (reusable.gateway_order_id or reusable.gateway_session_id):
        return reusable, course, True
    payment = Payment(user_id=user.id, course_id=course.id, gateway=gateway,
                      amount=course.price, currency=course.currency, status="created")
    db.session.add(payment)
    db.session.flush()
    return payment, course, False


def locked(payment_id: int) -> Payment | None:
    """The payment row, locked until the transaction ends (FOR UPDATE on PostgreSQL; SQLite
    serialises writers by itself)."""
    return db.session.scalar(select(Payment).where(Payment.id == payment_id)
                             .with_for_update().execution_options(populate_existing=True))


def by_gateway_ref(gateway: str, *, order_id: str | None = None,
                   session_id: str | None = None) -> Payment | None:
    if order_id:
        return db.session.scalar(select(Payment).where(Payment.gateway == gateway,
                                                       Payment.gateway_order_id == order_id))
    if session_id:
        return db.session.scalar(select(Payment).where(Payment.gateway == gateway,
                                                       Payment.gateway_session_id == session_id))
    return None


# --- settlement -------------------------------------------------------------------------------

class AmountMismatch(ValidationError):
    code = "amount_mismatch"
    message = "The amount paid does not match the order"


@dataclass
class Settlement:
    payment: Payment
    changed: bool  # False when the payment was already settled (a replay, a second caller)


def _next_invoice_number() -> str:
    year = utcnow().year
    for _ in range(2):
        number = db.session.scalar(
            update(InvoiceCounter).where(InvoiceCounter.year == year)
            .values(last_number=InvoiceCounter.last_number + 1)
            .returning(InvoiceCounter.last_number))
        if number is not None:
            return f"INV-{year}-{number:06d}"
        try:
            with db.session.begin_nested():
                db.session.add(InvoiceCounter(year=year, last_number=0))
        except IntegrityError:
            pass  # another settlement created this year's counter first
    raise RuntimeError("could not allocate an invoice number")


def _merge_response(payment: Payment, key: str, data: dict | None) -> None:
    if data is None:
        return
    record = dict(payment.gateway_response or {})
    record[key] = data
    payment.gateway_response = record


def settle(payment_id: int, *, gateway_payment_id: str | None, amount_minor: int,
           currency: str, source: str, raw: dict | None = None) -> Settlement:
    """Mark the payment completed and enroll its payer, exactly once."""
    payment = locked(payment_id)
    if payment is None:
        raise NotFound("Payment not found")
    if payment.status in ("completed", "refunded"):
        if gateway_payment_id and payment.gateway_payment_id not in (None, gateway_payment_id):
            # A second charge for the same order: keep it on record for an admin to refund.
            log.error("payment %s: second gateway payment %s after %s", payment.id,
                      gateway_payment_id, payment.gateway_payment_id)
            _merge_response(payment, f"duplicate:{gateway_payment_id}", raw)
        return Settlement(payment, False)
    expected = to_minor_units(Decimal(payment.amount), payment.currency)
    if int(amount_minor) != expected or currency.upper() != payment.currency:
        log.error("payment %s: paid %s %s, expected %s %s (%s)", payment.id, amount_minor,
                  currency, expected, payment.currency, source)
        raise AmountMismatch(details={"expected": {"amount_minor": expected,
                                                   "currency": payment.currency},
                                      "received": {"amount_minor": int(amount_minor),
                                                   "currency": currency.upper()}})
    now = utcnow()
    payment.status = "completed"
    payment.gateway_payment_id = gateway_payment_id or payment.gateway_payment_id
    payment.paid_at = now
    payment.failure_reason = None
    payment.invoice_number = payment.invoice_number or _next_invoice_number()
    _merge_response(payment, source, raw)
    user = db.session.get(User, payment.user_id)
    course = db.session.get(Course, payment.course_id)
    already_paid = db.session.scalar(select(Payment.id).where(
        Payment.user_id == user.id, Payment.course_id == course.id,
        Payment.status == "completed", Payment.id != payment.id).limit(1))
    if already_paid is not None:
        # Paid twice for one course: keep the money on record and put a refund in front of
        # an admin rather than lose track of it.
        log.error("payment %s duplicates completed payment %s", payment.id, already_paid)
        db.session.add(RefundRequest(
            payment_id=payment.id, user_id=user.id, status="pending", amount=payment.amount,
            reason=f"Automatic: duplicate of completed payment #{already_paid} for this course"))
    enrollment_service.enroll_paid(user, course, payment)
    db.session.add(Notification(
        user_id=user.id, kind="payment", title="Payment received",
        message=f"Your payment of {money(payment.amount):.2f} {payment.currency} for "
                f"\u201c{course.title}\u201d was received. You are enrolled.",
        link=f"/courses/{course.id}", data={"payment_id": payment.id, "course_id": course.id}))
    log.info("payment %s settled by %s", payment.id, source)
    return Settlement(payment, True)


def mark_pending(payment_id: int, raw: dict | None = None, source: str = "") -> None:
    payment = locked(payment_id)
    if payment is not None and payment.status == "created":
        payment.status = "pending"
        _merge_response(payment, source or "pending", raw)


def mark_failed(payment_id: int, reason: str, raw: dict | None = None, source: str = "") -> None:
    """A failed attempt; a payment that already completed stays completed."""
    payment = locked(payment_id)
    if payment is not None and payment.status in PENDING:
        payment.status = "failed"
        payment.failure_reason = reason[:500]
        _merge_response(payment, source or "failed", raw)


def mark_expired(payment_id: int, raw: dict | None = None, source: str = "") -> None:
    payment = locked(payment_id)
    if payment is not None and payment.status in PENDING:
        payment.status = "expired"
        _merge_response(payment, source or "expired", raw)


# --- webhook events ---------------------------------------------------------------------------

def record_event(gateway: str, event_id: str, event_type: str, payload: dict
                 ) -> tuple[WebhookEvent, bool]:
    """(event, new). The unique (gateway, event_id) makes a redelivery, even a simultaneous
    one, come back as not new."""
    event = WebhookEvent(gateway=gateway, event_id=event_id[:255], event_type=event_type[:100],
                         payload=payload, status="received")
    try:
        with db.session.begin_nested():
            db.session.add(event)
    except IntegrityError:
        existing = db.session.scalar(select(WebhookEvent).where(
            WebhookEvent.gateway == gateway, WebhookEvent.event_id == event_id[:255]))
        return existing, False
    return event, True


def finish_event(event: WebhookEvent, status: str, *, payment_id: int | None = None,
                 error: str | None = None) -> None:
    event.status = status
    event.payment_id = payment_id or event.payment_id
    event.error = error
    event.processed_at = utcnow()


def process_event(gateway: str, event_id: str, event_type: str, payload: dict, apply) -> dict:
    """Record a verified webhook event once and act on it: `apply()` returns the payment it
    concerned (or None). Returns the acknowledgement body. A redelivery changes nothing; an
    event that cannot be applied (wrong amount, unexpected shape) is kept as failed and
    acknowledged, so the gateway does not redeliver it forever; its partial effects are
    undone by the savepoint."""
    record, new = record_event(gateway, event_id, event_type, payload)
    if not new:
        return {"received": True, "duplicate": True}
    try:
        with db.session.begin_nested():
            payment_id = apply()
    except AmountMismatch as exc:
        finish_event(record, "failed", error=exc.message)
        return {"received": True, "error": exc.message}
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        log.error("%s event %s has an unexpected shape: %r", gateway, record.event_id, exc)
        finish_event(record, "failed", error=f"unexpected payload: {exc!r}"[:500])
        return {"received": True, "error": "unexpected payload"}
    finish_event(record, "processed" if payment_id else "ignored", payment_id=payment_id)
    return {"received": True}


# --- refunds ----------------------------------------------------------------------------------

def request_refund(payment_id: int, user: User, reason: str) -> RefundRequest:
    payment = db.session.get(Payment, payment_id)
    if payment is None or payment.user_id != user.id:
        raise NotFound("Payment not found")
    if payment.status != "completed":
        raise Conflict("Only completed payments can be refunded", code="not_refundable")
    window = timedelta(days=current_app.config["REFUND_WINDOW_DAYS"])
    if payment.paid_at is None or utcnow() - payment.paid_at > window:
        raise Forbidden(f"Refunds can be requested within {window.days} days of payment",
                        code="refund_window_closed")
    open_request = db.session.scalar(select(RefundRequest.id).where(
        RefundRequest.payment_id == payment.id,
        RefundRequest.status.in_(("pending", "approved"))))
    if open_request is not None:
        raise Conflict("A refund request for this payment is already open",
                       code="refund_already_requested")
    request = RefundRequest(payment_id=payment.id, user_id=user.id, reason=reason,
                            status="pending",
                            amount=Decimal(payment.amount) - Decimal(payment.refunded_amount or 0))
    db.session.add(request)
    db.session.flush()
    return request


def reject_refund(request: RefundRequest, admin: User, note: str | None) -> RefundRequest:
    if request.status != "pending":
        raise Conflict(f"This refund request is already {request.status}")
    request.status = "rejected"
    request.reviewed_by_id = admin.id
    request.admin_note = note
    request.decided_at = utcnow()
    db.session.add(Notification(
        user_id=request.user_id, kind="payment", title="Refund request declined",
        message=note or "Your refund request was declined.",
        data={"payment_id": request.payment_id, "refund_request_id": request.id}))
    return request


def approve_refund(request: RefundRequest, admin: User, note: str | None) -> RefundRequest:
    """Refund through the gateway, then record it. A gateway error raises before anything of
    ours changes."""
    from services import payment_service, razor_payment_service

    if request.status != "pending":
        raise Conflict(f"This refund request is already {request.status}")
    payment = locked(request.payment_id)
    if payment.status != "completed":
        raise Conflict("The payment is no longer refundable", code="not_refundable")
    gateway = payment_service if payment.gateway == "stripe" else razor_payment_service
    refund = gateway.refund(payment, Decimal(request.amount), idempotency_key=f"lms-refund-{request.id}")
    now = utcnow()
    request.status = "processed"
    request.reviewed_by_id = admin.id
    request.admin_note = note
    request.decided_at = request.processed_at = now
    request.gateway_refund_id = refund.get("id")
    apply_refund(payment, Decimal(request.amount), refund, source="refund_request")
    return request


def apply_refund(payment: Payment, amount: Decimal, raw: dict | None, source: str) -> None:
    """Our side of a refund (from an approval or the gateway's own event): the payment is
    refunded, the enrollment revoked, the certificate of that course revoked, the payer told."""
    if payment.status == "refunded":
        return
    payment.refunded_amount = min(Decimal(payment.amount),
                                  Decimal(payment.refunded_amount or 0) + amount)
    payment.refunded_at = utcnow()
    _merge_response(payment, source, raw)
    if payment.refunded_amount < Decimal(payment.amount):
        # A partial refund (made at the gateway): recorded; access stays.
        db.session.add(Notification(
            user_id=payment.user_id, kind="payment", title="Partial refund processed",
            message=f"{money(amount):.2f} {payment.currency} was refunded.",
            data={"payment_id": payment.id}))
        return
    payment.status = "refunded"
    # A refund made at the gateway (its dashboard, or an approval whose commit failed here)
    # settles the payer's open request too: nobody approves or declines it afterwards.
    for open_request in db.session.scalars(select(RefundRequest).where(
            RefundRequest.payment_id == payment.id, RefundRequest.status == "pending")):
        open_request.status = "processed"
        open_request.processed_at = open_request.decided_at = utcnow()
        open_request.gateway_refund_id = (raw or {}).get("id")
        open_request.admin_note = open_request.admin_note or "Refunded at the payment gateway"
    enrollment = db.session.scalar(select(Enrollment).where(
        Enrollment.user_id == payment.user_id, Enrollment.course_id == payment.course_id))
    if enrollment is not None and enrollment.status in enrollment_service.OPEN_STATUSES:
        enrollment_service.cancel(enrollment, status="refunded")
    certificate_service.revoke_for_enrollment(payment.user_id, payment.course_id,
                                              "payment refunded")
    db.session.add(Notification(
        user_id=payment.user_id, kind="payment", title="Refund processed",
        message=f"{money(amount):.2f} {payment.currency} was refunded.",
        data={"payment_id": payment.id}))
