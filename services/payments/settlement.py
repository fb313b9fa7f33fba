"""Orders and settlement, whichever gateway carried the money.

- `open_order` runs the checks that must hold before any gateway is asked to charge, and
  reuses a pending, unexpired order of the same user and course.
- `settle` is the one settlement path: the browser's verify call, every webhook and the
  reconciler end here. It locks the payment row, checks amount and currency against the order,
  marks it completed, numbers the invoice and enrolls, in the caller's transaction. Settling an
  already settled payment changes nothing.
- `process_event` stores a webhook event under its (gateway, event id) before it is acted on,
  so a redelivered event is recognised and changes nothing. The id comes from inside the
  signed body, never from an unsigned header.
- `next_number` numbers invoices and credit notes, per year, without gaps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Callable

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from models import (
    Course,
    CreditNoteCounter,
    InvoiceCounter,
    Notification,
    Payment,
    RefundRequest,
    User,
    WebhookEvent,
    db,
)
from services import course_service, enrollment_service
from utils.errors import NotFound, ValidationError
from utils.helpers import money, to_minor_units, utcnow

log = logging.getLogger("lms.payments")

PENDING = ("created", "pending")


# --- orders -----------------------------------------------------------------------------------

def pending_timeout() -> timedelta:
    return timedelta(minutes=current_app.config["PAYMENT_PENDING_TIMEOUT"])


def open_order(user: User, course_id: int, gateway: str) -> tuple[Payment, Course, bool]:
    """(payment, course, reused). A new payment row is flushed so it has an id for the
    gateway's receipt, metadata and idempotency key."""
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

class EventMismatch(ValidationError):
    """A signed event that cannot be applied as it stands (kept as failed, acknowledged)."""


class NotSettledYet(Exception):
    """A refund event about a payment that has not settled here yet (webhooks arrive in any
    order): kept, and applied once the payment settles (the gateways' `settle`, and the
    reconciler's sweep)."""

    def __init__(self, gateway_payment_id: str):
        super().__init__(gateway_payment_id)
        self.gateway_payment_id = gateway_payment_id


class AmountMismatch(EventMismatch):
    code = "amount_mismatch"
    message = "The amount paid does not match the order"


@dataclass
class Settlement:
    payment: Payment
    changed: bool  # False when the payment was already settled (a replay, a second caller)


def next_number(counter: type[InvoiceCounter] | type[CreditNoteCounter], prefix: str) -> str:
    """The next `<prefix>-<year>-<000001>` of a yearly series (invoices, credit notes): an
    atomic UPDATE ... RETURNING, in the caller's transaction, so a rollback gives the number
    back and the series has no gaps."""
    year = utcnow().year
    for _ in range(2):
        number = db.session.scalar(
            update(counter).where(counter.year == year)
            .values(last_number=counter.last_number + 1)
            .returning(counter.last_number))
        if number is not None:
            return f"{prefix}-{year}-{number:06d}"
        try:
            with db.session.begin_nested():
                db.session.add(counter(year=year, last_number=0))
        except IntegrityError:
            pass  # another transaction created this year's counter first
    raise RuntimeError(f"could not allocate a {prefix} number")


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
    payment.invoice_number = payment.invoice_number or next_number(InvoiceCounter, "INV")
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


def process_event(gateway: str, event_id: str, event_type: str, payload: dict,
                  apply: Callable[[], int | None]) -> dict:
    """Record a verified webhook event once and act on it: `apply()` returns the payment it
    concerned (or None). Returns the acknowledgement body. A redelivery changes nothing; an
    event that cannot be applied (wrong amount, a refund above what was paid, an unexpected
    shape) is kept as failed and acknowledged, so the gateway does not redeliver it forever;
    its partial effects are undone by the savepoint. A gateway that cannot be asked about the
    event (ServiceUnavailable) fails the request as a whole: nothing is recorded, and the
    gateway's redelivery is processed."""
    record, new = record_event(gateway, event_id, event_type, payload)
    if not new:
        return {"received": True, "duplicate": True}
    try:
        with db.session.begin_nested():
            payment_id = apply()
    except NotSettledYet as wait:
        finish_event(record, "ignored", error="waiting for its payment to settle")
        record.waiting_for = wait.gateway_payment_id[:255]
        return {"received": True}
    except EventMismatch as exc:
        finish_event(record, "failed", error=exc.message)
        return {"received": True, "error": exc.message}
    except (AttributeError, TypeError, ValueError, KeyError) as exc:
        log.error("%s event %s has an unexpected shape: %r", gateway, record.event_id, exc)
        finish_event(record, "failed", error=f"unexpected payload: {exc!r}"[:500])
        return {"received": True, "error": "unexpected payload"}
    finish_event(record, "processed" if payment_id else "ignored", payment_id=payment_id)
    return {"received": True}


def waiting_events(gateway: str, gateway_payment_id: str) -> list[WebhookEvent]:
    """Refund events kept until the payment `gateway_payment_id` settled here, oldest first."""
    return list(db.session.scalars(select(WebhookEvent).where(
        WebhookEvent.gateway == gateway, WebhookEvent.waiting_for == gateway_payment_id,
        WebhookEvent.status == "ignored").order_by(WebhookEvent.id)))


def payments_with_waiting_events() -> list[int]:
    """Settled payments that refund events are still waiting for (the reconciler's sweep: an
    event that arrived while its payment was settling, in another worker)."""
    return list(db.session.scalars(select(Payment.id).join(WebhookEvent, (
        WebhookEvent.gateway == Payment.gateway)
        & (WebhookEvent.waiting_for == Payment.gateway_payment_id)).where(
        WebhookEvent.status == "ignored",
        Payment.status.in_(("completed", "refunded"))).distinct().order_by(Payment.id)))
