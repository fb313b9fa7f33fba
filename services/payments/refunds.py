"""Refunds as a product rule: who may ask, what an admin decides, and how an approved refund
reaches the gateway without ever being lost.

The policy (README "Refund policy"):
- the payer may ask for a refund of a completed payment within REFUND_WINDOW_DAYS of paying,
  and only while no certificate has been issued for the course (as Open edX does);
- one open request per payment (a partial unique index; concurrent asks get one 201);
- an admin approves or rejects. A certificate issued after the request was filed blocks the
  approval unless the admin overrides; an admin may also refund a payment directly (in full or
  in part), outside the window or after a certificate only with `override_policy`;
- a refund that leaves nothing paid ends access and revokes the certificate
  (services/payments/ledger.py); a partial one keeps both.

Approval happens in two steps, each committed by the caller:
1. `approve` marks the request "approved" (reviewed by, when): the decision is on record
   before any money moves;
2. `execute` asks the gateway, under the payment's row lock: a refund carrying the request's
   key is looked for first, and made only if there is none, so whoever executes again (a
   retried approval, the reconciler) finds the first one instead of refunding twice. The
   refund is then recorded by the ledger (which processes the request). If the gateway
   declines, the request goes back to pending; if its answer is unknown (unreachable, a 5xx)
   or the refund is still pending there, the request stays "approved" and the gateway's
   webhook, a retried approval or the reconciler completes it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from flask import current_app
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from models import Notification, Payment, PaymentRefund, RefundRequest, User, db
from services import certificate_service
from services.payments import ledger, settlement
from services.payments.gateway import (
    REFUND_FAILED,
    REFUND_PENDING,
    REFUND_SUCCEEDED,
    GatewayRefund,
    GatewayRefused,
    captured_minor,
    refund_key,
    request_id_of,
)
from services.payments.registry import gateway_for
from utils.errors import APIError, BadGateway, Conflict, Forbidden, NotFound, ValidationError
from utils.helpers import from_minor_units, money, to_minor_units, utcnow

log = logging.getLogger("lms.payments.refunds")

OVERRIDE_HINT = {"override_policy": "send override_policy: true to refund anyway; a refund "
                                    "that leaves nothing paid revokes the certificate"}


# --- the policy ---------------------------------------------------------------------------------

def remaining(payment: Payment) -> Decimal:
    return Decimal(payment.amount) - Decimal(payment.refunded_amount or 0)


def certificate_blocks(payment: Payment) -> bool:
    """A valid certificate for the course, and refunding this payment would end the access it
    certifies (no other completed payment for the course)."""
    certificate = certificate_service.existing(payment.user_id, payment.course_id)
    return (certificate is not None and certificate.status == "valid"
            and ledger.other_paid_payment(payment) is None)


def window_closed(payment: Payment) -> bool:
    window = timedelta(days=current_app.config["REFUND_WINDOW_DAYS"])
    return payment.paid_at is None or utcnow() - payment.paid_at > window


def _window_error(error=Forbidden) -> APIError:
    days = current_app.config["REFUND_WINDOW_DAYS"]
    return error(f"Refunds can be requested within {days} days of payment",
                 code="refund_window_closed")


def _certificate_error(error=Forbidden) -> APIError:
    return error("A certificate has been issued for this course: it can no longer be refunded",
                 code="refund_certificate_issued")


def _locked_payment(payment_id: int) -> Payment:
    payment = settlement.locked(payment_id)
    if payment is None:
        raise NotFound("Payment not found")
    return payment


def _fresh(request_id: int) -> RefundRequest:
    """The request as committed now (the caller holds its payment's row lock, under which
    every change of a request is made)."""
    return db.session.scalar(select(RefundRequest).where(RefundRequest.id == request_id)
                             .execution_options(populate_existing=True))


def _insert(request: RefundRequest) -> RefundRequest:
    """Add a request; another open one for the payment (a race the lock did not serialise,
    as on a database without row locks) makes it a conflict."""
    try:
        with db.session.begin_nested():
            db.session.add(request)
    except IntegrityError:
        raise Conflict("A refund request for this payment is already open",
                       code="refund_already_requested")
    return request


def _refuse_open_request(payment: Payment) -> None:
    if ledger.open_request(payment.id) is not None:
        raise Conflict("A refund request for this payment is already open",
                       code="refund_already_requested")


# --- the payer's request ------------------------------------------------------------------------

def request_refund(payment_id: int, user: User, reason: str) -> RefundRequest:
    payment = settlement.locked(payment_id)
    if payment is None or payment.user_id != user.id:
        raise NotFound("Payment not found")
    if payment.status != "completed" or remaining(payment) <= 0:
        raise Conflict("Only completed payments can be refunded", code="not_refundable")
    _refuse_open_request(payment)
    if window_closed(payment):
        raise _window_error()
    if certificate_blocks(payment):
        raise _certificate_error()
    return _insert(RefundRequest(payment_id=payment.id, user_id=user.id, reason=reason,
                                 status="pending", amount=remaining(payment)))


# --- an admin's decision --------------------------------------------------------------------------

def approve(request_id: int, admin: User, note: str | None, *,
            override_policy: bool = False) -> tuple[RefundRequest, bool]:
    """Step 1: the decision. Returns (request, changed): an approved request (in flight) is
    returned unchanged, for the caller to execute again."""
    request = db.session.get(RefundRequest, request_id)
    if request is None:
        raise NotFound("Refund request not found")
    payment = _locked_payment(request.payment_id)
    request = _fresh(request_id)
    if request.status == "approved":
        return request, False
    if request.status != "pending":
        raise Conflict(f"This refund request is already {request.status}",
                       code="refund_already_decided")
    if payment.status != "completed" or remaining(payment) <= 0:
        raise Conflict("The payment is no longer refundable", code="not_refundable")
    if not override_policy and certificate_blocks(payment):
        raise Conflict(_certificate_error().message, code="refund_certificate_issued",
                       details=OVERRIDE_HINT)
    request.status = "approved"
    request.reviewed_by_id = admin.id
    request.admin_note = note if note is not None else request.admin_note
    request.decided_at = utcnow()
    return request, True


def reject(request_id: int, admin: User, note: str | None) -> RefundRequest:
    request = db.session.get(RefundRequest, request_id)
    if request is None:
        raise NotFound("Refund request not found")
    _locked_payment(request.payment_id)
    request = _fresh(request_id)
    if request.status == "approved":
        raise Conflict("This refund is being made at the payment gateway and can no longer be "
                       "declined", code="refund_in_progress")
    if request.status != "pending":
        raise Conflict(f"This refund request is already {request.status}",
                       code="refund_already_decided")
    request.status = "rejected"
    request.reviewed_by_id = admin.id
    request.admin_note = note
    request.decided_at = utcnow()
    db.session.add(Notification(
        user_id=request.user_id, kind="payment", title="Refund request declined",
        message=note or "Your refund request was declined.",
        data={"payment_id": request.payment_id, "refund_request_id": request.id}))
    return request


def refund_directly(payment_id: int, admin: User, *, reason: str, amount: Decimal | None,
                    override_policy: bool = False) -> RefundRequest:
    """An admin's own refund of a payment, in full or in part: an approved request on the
    payer's behalf (execute it next)."""
    payment = _locked_payment(payment_id)
    if payment.status != "completed" or remaining(payment) <= 0:
        raise Conflict("Only completed payments can be refunded", code="not_refundable")
    amount = remaining(payment) if amount is None else Decimal(amount)
    if amount <= 0 or amount > remaining(payment):
        raise ValidationError("Invalid input", details={
            "amount": f"At most {money(remaining(payment)):.2f} {payment.currency} is left "
                      "to refund"})
    if not override_policy:
        if window_closed(payment):
            raise _window_error(Conflict)
        if certificate_blocks(payment):
            raise Conflict(_certificate_error().message, code="refund_certificate_issued",
                           details=OVERRIDE_HINT)
    _refuse_open_request(payment)
    now = utcnow()
    return _insert(RefundRequest(payment_id=payment.id, user_id=payment.user_id, reason=reason,
                                 status="approved", amount=amount, reviewed_by_id=admin.id,
                                 decided_at=now))


# --- making the refund ----------------------------------------------------------------------------

@dataclass
class Execution:
    request: RefundRequest
    refund: PaymentRefund | None  # the recorded refund, once the gateway has made it
    error: APIError | None = None  # to answer with, after the caller committed what is known


def execute(request_id: int, *, source: str) -> Execution:
    """Step 2: make the approved request's refund at the gateway (once) and record it."""
    request = db.session.get(RefundRequest, request_id)
    if request is None:
        raise NotFound("Refund request not found")
    payment = _locked_payment(request.payment_id)
    request = _fresh(request_id)
    if request.status != "approved":
        return Execution(request, _recorded_for(request))
    gateway = gateway_for(payment.gateway)
    try:
        at_gateway = gateway.refunds_of(payment)
    except APIError as exc:  # cannot look: try again later
        return Execution(request, None, exc)
    mine = [r for r in at_gateway if request_id_of(r.key) == request.id]
    ours = next((r for r in mine if r.status != REFUND_FAILED), None)
    for other in at_gateway:
        if other not in mine:  # made at the dashboard, its webhook not seen yet: record it
            _record_quietly(payment, other)
    if request.status != "approved":  # a refund just recorded settled it
        return Execution(request, _recorded_for(request))
    if ours is None:
        failed = sum(1 for r in mine if r.status == REFUND_FAILED)
        ours = _make(gateway, payment, request, at_gateway, refund_key(request.id, failed))
        if isinstance(ours, APIError):
            return Execution(request, None, ours)
    if ours.status == REFUND_FAILED:
        ledger.reopen_request(request, "The gateway reports the refund failed")
        return Execution(request, None, BadGateway(
            f"{gateway.label} reports the refund failed; the request is pending again"))
    row = ledger.record_refund(payment, ours, source=source)
    return Execution(request, row)


def _make(gateway, payment: Payment, request: RefundRequest, at_gateway: list[GatewayRefund],
          key: str) -> GatewayRefund | APIError:
    """Ask the gateway for the refund: no more than it still holds, no more than requested."""
    held = captured_minor(payment) - sum(
        r.amount_minor for r in at_gateway if r.status in (REFUND_SUCCEEDED, REFUND_PENDING))
    amount_minor = min(to_minor_units(Decimal(request.amount), payment.currency), held)
    if amount_minor <= 0:
        ledger.reopen_request(request, f"Nothing is left to refund at {gateway.label}")
        return Conflict(f"Nothing is left to refund at {gateway.label}; the request is "
                        "pending again", code="not_refundable")
    try:
        made = gateway.create_refund(payment, amount_minor, key=key)
    except GatewayRefused as exc:  # nothing was done: an admin decides again
        ledger.reopen_request(request, exc.message)
        return exc
    except APIError as exc:  # the refund may have been made: it stays in flight
        log.warning("refund request %s: outcome unknown (%s); it stays approved",
                    request.id, exc.message)
        return exc
    request.amount = from_minor_units(amount_minor, payment.currency)
    return made


def _record_quietly(payment: Payment, refund: GatewayRefund) -> None:
    try:
        with db.session.begin_nested():
            ledger.record_refund(payment, refund, source="sync")
    except ledger.RefundMismatch as exc:
        log.error("payment %s: gateway refund %s not recorded: %s", payment.id, refund.id,
                  exc.message)


def _recorded_for(request: RefundRequest) -> PaymentRefund | None:
    return db.session.scalar(select(PaymentRefund).where(
        PaymentRefund.refund_request_id == request.id).order_by(PaymentRefund.id).limit(1))


def in_flight() -> list[int]:
    """Approved requests whose refund is not recorded yet, oldest first (the reconciler's)."""
    return list(db.session.scalars(select(RefundRequest.id).where(
        RefundRequest.status == "approved").order_by(RefundRequest.decided_at,
                                                     RefundRequest.id)))
