"""The refund ledger: every refund a gateway made, recorded once by its gateway refund id, and
what follows from it.

Whoever learns of a refund first (the approval that asked for it, the gateway's webhook, the
reconciler, a retried approval) calls `record_refund` with the payment's row locked; the others
find the refund on record and change nothing. So the refunded total is the sum of distinct
gateway refunds, and a refund beyond what was paid is refused rather than recorded.

What follows from a recorded refund:
- a credit note number (CN-<year>-<000001>) for the refunded amount;
- the refund request it settles is processed: the one whose key the refund carries, or, when
  the refund was made at the gateway's dashboard and leaves nothing paid, the payment's open
  request;
- a refund that leaves nothing paid marks the payment refunded, ends the payer's access to the
  course (unless another completed payment for it keeps access) and revokes the course's
  certificate through certificate_service.revoke; a partial refund keeps both;
- the payer is notified.
"""
from __future__ import annotations

import logging
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models import (
    CreditNoteCounter,
    Enrollment,
    Notification,
    OPEN_REFUND_STATUSES,
    Payment,
    PaymentRefund,
    RefundRequest,
    db,
)
from services import certificate_service, enrollment_service
from services.payments.gateway import (
    REFUND_FAILED,
    REFUND_SUCCEEDED,
    GatewayRefund,
    request_id_of,
)
from services.payments.settlement import EventMismatch, next_number
from utils.helpers import money, utcnow

log = logging.getLogger("lms.payments.refunds")

REVOCATION_REASON = "payment refunded"


class RefundMismatch(EventMismatch):
    code = "refund_mismatch"
    message = "The refund does not match the payment"


def recorded(gateway: str, gateway_refund_id: str) -> PaymentRefund | None:
    return db.session.scalar(select(PaymentRefund).where(
        PaymentRefund.gateway == gateway, PaymentRefund.gateway_refund_id == gateway_refund_id))


def refunds_of(payment_id: int) -> list[PaymentRefund]:
    return list(db.session.scalars(select(PaymentRefund).where(
        PaymentRefund.payment_id == payment_id).order_by(PaymentRefund.id)))


def open_request(payment_id: int) -> RefundRequest | None:
    return db.session.scalar(select(RefundRequest).where(
        RefundRequest.payment_id == payment_id,
        RefundRequest.status.in_(OPEN_REFUND_STATUSES))
        .execution_options(populate_existing=True))


def other_paid_payment(payment: Payment) -> Payment | None:
    """Another completed payment of the same user for the same course (a second purchase),
    which keeps access when this one is refunded."""
    return db.session.scalar(select(Payment).where(
        Payment.user_id == payment.user_id, Payment.course_id == payment.course_id,
        Payment.status == "completed", Payment.id != payment.id)
        .order_by(Payment.paid_at.desc(), Payment.id.desc()).limit(1))


def record_refund(payment: Payment, refund: GatewayRefund, *, source: str
                  ) -> PaymentRefund | None:
    """Record `refund` of `payment` (whose row the caller has locked) once, and apply what
    follows. Returns its row (the one already on record for a refund seen before), or None
    while the gateway has not completed it. Raises RefundMismatch for a refund that cannot be
    this payment's (another currency, nothing, more than is left). A refund the gateway
    reports failed puts the request it was made for back to pending, for an admin to decide."""
    if refund.status == REFUND_FAILED:
        reopen_request(_request_of(payment, refund), "The gateway reports the refund failed")
        return None
    if refund.status != REFUND_SUCCEEDED:
        return None
    found = recorded(payment.gateway, refund.id)
    if found is not None:
        if found.payment_id != payment.id:
            raise RefundMismatch(f"Refund {refund.id} is on record for another payment")
        return found
    if refund.currency.upper() != payment.currency or refund.amount_minor <= 0:
        raise RefundMismatch(details={"refund": refund.id, "currency": refund.currency,
                                      "amount_minor": refund.amount_minor})
    refunded = Decimal(payment.refunded_amount or 0) + refund.amount
    if refunded > Decimal(payment.amount):
        log.error("payment %s: refund %s of %s would bring the refunded total to %s of %s",
                  payment.id, refund.id, refund.amount, refunded, payment.amount)
        raise RefundMismatch("The refund would exceed what was paid",
                             details={"refund": refund.id, "paid": money(payment.amount),
                                      "refunded": money(payment.refunded_amount)})
    request = _request_of(payment, refund)
    row = PaymentRefund(payment_id=payment.id, refund_request_id=request.id if request else None,
                        gateway=payment.gateway, gateway_refund_id=refund.id,
                        amount=refund.amount, currency=payment.currency, source=source[:40],
                        raw=refund.raw or None)
    try:
        with db.session.begin_nested():
            row.credit_note_number = next_number(CreditNoteCounter, "CN")
            db.session.add(row)
    except IntegrityError:
        # Recorded a moment ago by a caller that did not hold the payment's lock: theirs.
        found = recorded(payment.gateway, refund.id)
        if found is None:
            raise
        return found
    now = utcnow()
    payment.refunded_amount = refunded
    payment.refunded_at = now
    full = refunded >= Decimal(payment.amount)
    if request is None and full:
        request = open_request(payment.id)  # refunded in full at the gateway's dashboard
        if request is not None:
            row.refund_request_id = request.id
            request.admin_note = request.admin_note or "Refunded at the payment gateway"
    if request is not None:
        request.status = "processed"
        request.processed_at = now
        request.decided_at = request.decided_at or now
        request.gateway_refund_id = request.gateway_refund_id or refund.id
    log.info("payment %s: refund %s of %s %s recorded (%s)", payment.id, refund.id,
             refund.amount, payment.currency, source)
    if not full:
        _notify(payment, "Partial refund processed", refund.amount)
        return row
    payment.status = "refunded"
    end_access(payment)
    _notify(payment, "Refund processed", refund.amount)
    return row


def _request_of(payment: Payment, refund: GatewayRefund) -> RefundRequest | None:
    """The open request this refund was made for (by the key it carries)."""
    request_id = request_id_of(refund.key)
    if request_id is None:
        return None
    request = db.session.scalar(select(RefundRequest).where(
        RefundRequest.id == request_id, RefundRequest.payment_id == payment.id)
        .execution_options(populate_existing=True))
    if request is None or request.status not in OPEN_REFUND_STATUSES:
        return None
    return request


def reopen_request(request: RefundRequest | None, reason: str) -> None:
    """An approved request whose refund did not happen goes back to pending: nothing left the
    account, so an admin decides again (approve retries, reject declines)."""
    if request is None or request.status != "approved":
        return
    request.status = "pending"
    request.decided_at = None
    request.admin_note = reason[:2000]


def end_access(payment: Payment) -> None:
    """A payment refunded in full: the payer's enrollment ends and the course's certificate is
    revoked, unless another completed payment for the same course keeps access."""
    enrollment = db.session.scalar(select(Enrollment).where(
        Enrollment.user_id == payment.user_id, Enrollment.course_id == payment.course_id))
    other = other_paid_payment(payment)
    if other is not None:
        if enrollment is not None and enrollment.payment_id == payment.id:
            enrollment.payment_id = other.id
        return
    if enrollment is not None and enrollment.status in enrollment_service.OPEN_STATUSES:
        enrollment_service.cancel(enrollment, status="refunded")
    certificate = certificate_service.existing(payment.user_id, payment.course_id)
    if certificate is not None and certificate.status == "valid":
        certificate_service.revoke(certificate, REVOCATION_REASON)


def _notify(payment: Payment, title: str, amount: Decimal) -> None:
    db.session.add(Notification(
        user_id=payment.user_id, kind="payment", title=title,
        message=f"{money(amount):.2f} {payment.currency} was refunded.",
        data={"payment_id": payment.id}))
