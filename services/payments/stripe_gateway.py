"""Stripe, through the real `stripe` SDK: Checkout Sessions in payment mode, signed webhooks,
refunds on the payment intent, and the reconciler's look-up. STRIPE_API_BASE points the SDK at
another host (tests run it against localstripe on 127.0.0.1).

Webhook events are recorded by Stripe's event id, which is inside the signed body. Refund
events (`charge.refunded`, `charge.refund.updated`, `refund.created`, `refund.updated`) record
each refund of the charge by its own id, so a charge's running total is never added twice."""
from __future__ import annotations

import json
import logging
import time
from decimal import Decimal

import stripe
from flask import current_app

from models import Payment, User, db
from services.payments import ledger, settlement
from services.payments.gateway import (
    REFUND_FAILED,
    REFUND_PENDING,
    REFUND_SUCCEEDED,
    GatewayRefund,
    GatewayRefused,
    PaymentGateway,
)
from utils.errors import APIError, BadGateway, BadRequest, ServiceUnavailable
from utils.helpers import to_minor_units

log = logging.getLogger("lms.payments.stripe")

SETTLING_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
SESSION_EVENTS = SETTLING_EVENTS + ("checkout.session.async_payment_failed",
                                    "checkout.session.expired")
REFUND_EVENTS = ("charge.refunded", "charge.refund.updated", "refund.created", "refund.updated")
_REFUND_STATES = {"succeeded": REFUND_SUCCEEDED, "failed": REFUND_FAILED,
                  "canceled": REFUND_FAILED}


def _require(*names: str) -> None:
    missing = [name for name in names if not current_app.config.get(name)]
    if missing:
        raise ServiceUnavailable("Stripe is not configured on this server: set "
                                 + ", ".join(missing), code="stripe_not_configured")


def client() -> stripe.StripeClient:
    _require("STRIPE_SECRET_KEY")
    base = current_app.config.get("STRIPE_API_BASE")
    return stripe.StripeClient(
        current_app.config["STRIPE_SECRET_KEY"], base_addresses={"api": base} if base else None,
        max_network_retries=current_app.config["STRIPE_MAX_NETWORK_RETRIES"],
        http_client=stripe.RequestsClient(timeout=current_app.config["GATEWAY_TIMEOUT_SECONDS"]))


def _gateway_error(exc: stripe.StripeError, action: str) -> APIError:
    """Unreachable: 503. Declined (a 4xx other than 429): GatewayRefused, nothing was done.
    Anything else (a 5xx, 429): 502 with the outcome unknown."""
    log.error("Stripe %s failed: %s", action, exc)
    if isinstance(exc, stripe.APIConnectionError):
        return ServiceUnavailable(f"Stripe is unreachable ({action}); try again shortly")
    message = f"Stripe refused to {action}: {exc.user_message or 'see the server log'}"
    status = exc.http_status or 0
    if 400 <= status < 500 and status != 429:
        return GatewayRefused(message)
    return BadGateway(message)


def refund_of(obj: dict) -> GatewayRefund:
    """A Stripe Refund object as the payment code knows refunds."""
    return GatewayRefund(
        id=str(obj["id"]), payment_ref=obj.get("payment_intent"),
        amount_minor=int(obj.get("amount") or 0), currency=str(obj.get("currency") or "").upper(),
        status=_REFUND_STATES.get(str(obj.get("status")), REFUND_PENDING),
        key=(obj.get("metadata") or {}).get("lms_key"), raw=obj)


class StripeGateway(PaymentGateway):
    name, label = "stripe", "Stripe"

    def create_checkout(self, user: User, course_id: int) -> dict:
        """A Checkout Session for the course (an open one is reused)."""
        _require("STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET")
        payment, course, reused = settlement.open_order(user, course_id, "stripe")
        if not reused:
            self._expire_superseded_sessions(user.id, course.id, payment.id)
        if reused:
            stored = (payment.gateway_response or {}).get("checkout_session", {})
            return {"payment_id": payment.id, "session_id": payment.gateway_session_id,
                    "checkout_url": stored.get("url"), "reused": True}
        cfg = current_app.config
        base = cfg["FRONTEND_URL_STUDENTS"].rstrip("/")
        success = cfg.get("STRIPE_SUCCESS_URL") or f"{base}/payments/success"
        cancel = cfg.get("STRIPE_CANCEL_URL") or f"{base}/payments/cancel"
        params = {
            "mode": "payment",
            "line_items": [{"quantity": 1, "price_data": {
                "currency": course.currency.lower(),
                "unit_amount": to_minor_units(Decimal(course.price), course.currency),
                "product_data": {"name": course.title[:250]}}}],
            "metadata": {"payment_id": str(payment.id), "user_id": str(user.id),
                         "course_id": str(course.id)},
            "client_reference_id": str(payment.id),
            "customer_email": user.email,
            "success_url": f"{success}?session_id={{CHECKOUT_SESSION_ID}}",
            "cancel_url": cancel,
            # The session stops being payable when we stop reusing it (Stripe's minimum is 30
            # minutes), so an abandoned checkout cannot be paid after a newer one.
            "expires_at": int(time.time()) + 60 * max(
                30, current_app.config["PAYMENT_PENDING_TIMEOUT"]),
        }
        try:
            session = client().v1.checkout.sessions.create(
                params=params, options={"idempotency_key": f"lms-payment-{payment.id}"})
        except stripe.StripeError as exc:
            raise _gateway_error(exc, "open a checkout")
        payment.gateway_session_id = session.id
        payment.status = "pending"
        payment.gateway_response = {"checkout_session": session.to_dict()}
        return {"payment_id": payment.id, "session_id": session.id, "checkout_url": session.url,
                "reused": False}

    def _expire_superseded_sessions(self, user_id: int, course_id: int, new_payment_id: int
                                    ) -> None:
        """Older open sessions of the same purchase are expired at Stripe and here."""
        older = db.session.scalars(db.select(Payment).where(
            Payment.user_id == user_id, Payment.course_id == course_id,
            Payment.gateway == "stripe",
            Payment.status.in_(settlement.PENDING), Payment.id != new_payment_id,
            Payment.gateway_session_id.is_not(None))).all()
        for payment in older:
            try:
                client().v1.checkout.sessions.expire(payment.gateway_session_id)
            except stripe.StripeError as exc:  # already complete or expired: the webhook decides
                log.info("could not expire session %s: %s", payment.gateway_session_id, exc)
                continue
            settlement.mark_expired(payment.id, None, "superseded")

    # --- webhooks -----------------------------------------------------------------------------

    def _payment_for_session(self, obj: dict) -> Payment | None:
        payment = settlement.by_gateway_ref("stripe", session_id=obj.get("id"))
        if payment is None:
            reference = ((obj.get("metadata") or {}).get("payment_id")
                         or obj.get("client_reference_id"))
            if reference and str(reference).isdigit():
                candidate = db.session.get(Payment, int(reference))
                # Only the session we opened for this payment may settle it.
                if candidate is not None and candidate.gateway == "stripe" and \
                        candidate.gateway_session_id in (None, obj.get("id")):
                    payment = candidate
        return payment

    def handle_webhook(self, raw: bytes, signature: str | None) -> dict:
        """Verify, record once, act. Returns the acknowledgement body."""
        _require("STRIPE_WEBHOOK_SECRET")
        try:
            payload = raw.decode("utf-8")
            # The signature alone first; the body is parsed by us, whatever its shape.
            stripe.WebhookSignature.verify_header(payload, signature or "",
                                                  current_app.config["STRIPE_WEBHOOK_SECRET"],
                                                  stripe.Webhook.DEFAULT_TOLERANCE)
            event = json.loads(payload)
        except (ValueError, UnicodeDecodeError, stripe.SignatureVerificationError):
            raise BadRequest("Invalid Stripe signature", code="invalid_signature")
        if not isinstance(event, dict) or not event.get("id"):
            raise BadRequest("A webhook event must be a JSON object with an id",
                             code="malformed_event")
        return settlement.process_event("stripe", str(event.get("id")), str(event.get("type")),
                                        event, lambda: self.apply_event(event))

    def apply_event(self, event: dict) -> int | None:
        kind = event.get("type")
        obj = (event.get("data") or {}).get("object") or {}
        if kind in SESSION_EVENTS:
            payment = self._payment_for_session(obj)
            if payment is None:
                log.warning("Stripe %s for an unknown session %s", kind, obj.get("id"))
                return None
            if kind in SETTLING_EVENTS:
                if obj.get("payment_status") == "paid":
                    self.settle(
                        payment.id, gateway_payment_id=obj.get("payment_intent"),
                        amount_minor=int(obj.get("amount_total") or 0),
                        currency=str(obj.get("currency") or ""), source=kind, raw=obj)
                else:  # paid later by a delayed method: wait for async_payment_succeeded
                    settlement.mark_pending(payment.id, obj, kind)
            elif kind == "checkout.session.async_payment_failed":
                settlement.mark_failed(payment.id, "the delayed payment failed", obj, kind)
            else:
                settlement.mark_expired(payment.id, obj, kind)
            return payment.id
        if kind in REFUND_EVENTS:
            return self._apply_refunds(obj, kind)
        return None

    def _apply_refunds(self, obj: dict, kind: str) -> int | None:
        """Record each refund the event is about (a Refund, or a Charge with its refunds), by
        its own id. A charge whose refunds are not all in the event is asked of Stripe."""
        intent = obj.get("payment_intent")
        if obj.get("object") == "refund":
            refunds = [refund_of(obj)]
        else:
            listed = obj.get("refunds") if isinstance(obj.get("refunds"), dict) else None
            refunds = None if listed is None or listed.get("has_more") else [
                refund_of(item) for item in listed.get("data") or []]
        if not intent:  # a charge we did not make through Checkout
            return None
        payment = db.session.scalar(db.select(Payment).where(
            Payment.gateway == "stripe", Payment.gateway_payment_id == str(intent)))
        if payment is None:  # not settled here yet (or not ours): kept until it is
            raise settlement.NotSettledYet(str(intent))
        payment = settlement.locked(payment.id)
        if refunds is None:
            refunds = self.refunds_of(payment)
        for refund in refunds:
            ledger.record_refund(payment, refund, source=kind)
        return payment.id

    # --- refunds and reconciliation -----------------------------------------------------------

    def refunds_of(self, payment: Payment) -> list[GatewayRefund]:
        if not payment.gateway_payment_id:
            return []
        try:
            listed = client().v1.refunds.list(params={
                "payment_intent": payment.gateway_payment_id, "limit": 100})
            return [refund_of(item.to_dict()) for item in listed.auto_paging_iter()]
        except stripe.StripeError as exc:
            raise _gateway_error(exc, "list refunds")

    def create_refund(self, payment: Payment, amount_minor: int, *, key: str) -> GatewayRefund:
        """Stripe keeps an idempotency key for 24 hours: the same key within them returns the
        same refund. (Callers look for a refund with the key first, for the time after.)"""
        if not payment.gateway_payment_id:
            raise GatewayRefused("This Stripe payment has no payment intent to refund")
        try:
            made = client().v1.refunds.create(
                params={"payment_intent": payment.gateway_payment_id, "amount": int(amount_minor),
                        "metadata": {"payment_id": str(payment.id), "lms_key": key}},
                options={"idempotency_key": key})
        except stripe.StripeError as exc:
            raise _gateway_error(exc, "refund")
        return refund_of(made.to_dict())

    def reconcile(self, payment: Payment) -> str:
        """Ask Stripe about a pending payment and settle or expire it; returns what happened."""
        if not payment.gateway_session_id:
            settlement.mark_expired(payment.id, None, "reconcile")
            return "expired"
        try:
            session = client().v1.checkout.sessions.retrieve(payment.gateway_session_id).to_dict()
        except stripe.StripeError as exc:
            log.warning("reconcile: Stripe session %s: %s", payment.gateway_session_id, exc)
            return "unknown"
        if session.get("payment_status") == "paid":
            result = self.settle(
                payment.id, gateway_payment_id=session.get("payment_intent"),
                amount_minor=int(session.get("amount_total") or 0),
                currency=str(session.get("currency") or ""), source="reconcile", raw=session)
            return "settled" if result.changed else "unchanged"
        if session.get("status") == "expired":
            settlement.mark_expired(payment.id, session, "reconcile")
            return "expired"
        return "pending"


