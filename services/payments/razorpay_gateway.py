"""Razorpay, through the real `razorpay` SDK: orders, checkout signature verification, signed
webhooks, refunds and the reconciler's look-up. RAZORPAY_API_BASE points the client at another
host (tests use a local stub on 127.0.0.1).

Razorpay's event body carries no event id (only the unsigned X-Razorpay-Event-Id header does,
which anyone holding one signed body can change), so an event is recorded by what the signature
covers: its type and the id of the refund, payment or order it is about, else a digest of the
body. A replay of a captured body with fresh headers is then a duplicate."""
from __future__ import annotations

import hashlib
import json
import logging
from decimal import Decimal

import razorpay
import requests
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
from utils.errors import BadGateway, BadRequest, NotFound, ServiceUnavailable
from utils.helpers import to_minor_units

log = logging.getLogger("lms.payments.razorpay")

GATEWAY_ERRORS = (razorpay.errors.BadRequestError, razorpay.errors.ServerError,
                  razorpay.errors.GatewayError)
PAYMENT_EVENTS = ("payment.captured", "order.paid", "payment.failed")
REFUND_EVENTS = ("refund.processed", "refund.failed")
# A payment Razorpay captured: "refunded" ones were captured first (their refunds are recorded
# from their own events).
CAPTURED = ("captured", "refunded")
_REFUND_STATES = {"processed": REFUND_SUCCEEDED, "failed": REFUND_FAILED}
# Razorpay's receipt holds our refund key; it takes at most 40 characters.
RECEIPT_LENGTH = 40


def _require(*names: str) -> None:
    missing = [name for name in names if not current_app.config.get(name)]
    if missing:
        raise ServiceUnavailable("Razorpay is not configured on this server: set "
                                 + ", ".join(missing), code="razorpay_not_configured")


class _TimedSession(requests.Session):
    """The Razorpay SDK sends without a timeout: a gateway that stops answering would hold a
    worker until gunicorn killed it. Every call gets GATEWAY_TIMEOUT_SECONDS."""

    def __init__(self, timeout: float):
        super().__init__()
        self.timeout = timeout

    def request(self, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


def client() -> razorpay.Client:
    _require("RAZORPAY_KEY_ID", "RAZORPAY_KEY_SECRET")
    cfg = current_app.config
    options = {"base_url": cfg["RAZORPAY_API_BASE"]} if cfg.get("RAZORPAY_API_BASE") else {}
    return razorpay.Client(session=_TimedSession(cfg["GATEWAY_TIMEOUT_SECONDS"]),
                           auth=(cfg["RAZORPAY_KEY_ID"], cfg["RAZORPAY_KEY_SECRET"]), **options)


def _call(action: str, fn, *args):
    """Unreachable: 503. Declined (BAD_REQUEST_ERROR): GatewayRefused, nothing was done. A
    server or gateway error: 502 with the outcome unknown."""
    try:
        return fn(*args)
    except requests.RequestException as exc:
        log.error("Razorpay unreachable (%s): %s", action, exc)
        raise ServiceUnavailable(f"Razorpay is unreachable ({action}); try again shortly")
    except razorpay.errors.BadRequestError as exc:
        log.error("Razorpay refused to %s: %s", action, exc)
        raise GatewayRefused(f"Razorpay refused to {action}: {exc}")
    except GATEWAY_ERRORS as exc:
        log.error("Razorpay failed to %s: %s", action, exc)
        raise BadGateway(f"Razorpay refused to {action}: {exc}")


def refund_of(entity: dict, *, status: str | None = None) -> GatewayRefund:
    """A Razorpay refund entity as the payment code knows refunds (`status`: the state an
    event names, over the entity's own)."""
    return GatewayRefund(
        id=str(entity["id"]), payment_ref=entity.get("payment_id"),
        amount_minor=int(entity.get("amount") or 0),
        currency=str(entity.get("currency") or "").upper(),
        status=status or _REFUND_STATES.get(str(entity.get("status")), REFUND_PENDING),
        key=entity.get("receipt"), raw=entity)


def _entity(payload: dict, name: str) -> dict:
    """payload[name]["entity"], or {} for any other shape (a signed body is still ours to
    parse)."""
    wrapper = payload.get(name) if isinstance(payload, dict) else None
    entity = wrapper.get("entity") if isinstance(wrapper, dict) else None
    return entity if isinstance(entity, dict) else {}


def event_key(kind: str, payload: dict, raw: bytes) -> str:
    """The id an event is recorded under, from the signed body alone."""
    name = kind.split(".", 1)[0]
    if name in ("payment", "refund", "order"):
        entity_id = _entity(payload, name).get("id")
        if isinstance(entity_id, str) and entity_id:
            return f"{kind}:{entity_id}"[:255]
    return "sha256:" + hashlib.sha256(raw).hexdigest()


class RazorpayGateway(PaymentGateway):
    name, label = "razorpay", "Razorpay"
    payable_after_expiry = True  # Razorpay orders do not expire

    def create_order(self, user: User, course_id: int) -> dict:
        """A Razorpay order for the course (an open one is reused), with what checkout
        needs."""
        _require("RAZORPAY_KEY_ID", "RAZORPAY_KEY_SECRET", "RAZORPAY_WEBHOOK_SECRET")
        payment, course, reused = settlement.open_order(user, course_id, "razorpay")
        amount = to_minor_units(Decimal(payment.amount), payment.currency)
        if not reused:
            order = _call("create an order", client().order.create, {
                "amount": amount, "currency": payment.currency,
                "receipt": f"payment-{payment.id}",
                "notes": {"payment_id": str(payment.id), "user_id": str(user.id),
                          "course_id": str(course.id)}})
            payment.gateway_order_id = order["id"]
            payment.status = "pending"
            payment.gateway_response = {"order": order}
        return {"payment_id": payment.id, "order_id": payment.gateway_order_id,
                "amount": amount, "currency": payment.currency,
                "key_id": current_app.config["RAZORPAY_KEY_ID"],
                "name": current_app.config["APP_NAME"], "description": course.title,
                "prefill": {"name": user.full_name, "email": user.email,
                            "contact": user.phone_number or ""},
                "reused": reused}

    def verify_checkout(self, user: User, order_id: str, payment_id: str, signature: str):
        """The browser's confirmation: signature first (nothing is written if it is wrong),
        then the payment as Razorpay reports it, then the one settlement path."""
        rz = client()
        try:
            rz.utility.verify_payment_signature({"razorpay_order_id": order_id,
                                                 "razorpay_payment_id": payment_id,
                                                 "razorpay_signature": signature})
        except razorpay.errors.SignatureVerificationError:
            raise BadRequest("Invalid payment signature", code="invalid_signature")
        payment = settlement.by_gateway_ref("razorpay", order_id=order_id)
        if payment is None or payment.user_id != user.id:
            raise NotFound("No order of yours has this id")
        remote = _call("fetch the payment", rz.payment.fetch, payment_id)
        if remote.get("order_id") != order_id:
            raise BadRequest("This payment belongs to another order", code="order_mismatch")
        if remote.get("status") == "authorized":
            remote = _call("capture the payment", rz.payment.capture, payment_id,
                           int(remote["amount"]), {"currency": remote["currency"]})
        if remote.get("status") not in CAPTURED:
            settlement.mark_pending(payment.id, remote, "verify")
            return settlement.Settlement(payment, False), remote.get("status")
        result = self.settle(
            payment.id, gateway_payment_id=payment_id, amount_minor=int(remote["amount"]),
            currency=remote["currency"], source="verify", raw=remote)
        return result, "captured"

    # --- webhooks -----------------------------------------------------------------------------

    def handle_webhook(self, raw: bytes, signature: str | None) -> dict:
        _require("RAZORPAY_KEY_ID", "RAZORPAY_KEY_SECRET", "RAZORPAY_WEBHOOK_SECRET")
        try:
            body = raw.decode("utf-8")
            client().utility.verify_webhook_signature(
                body, signature or "", current_app.config["RAZORPAY_WEBHOOK_SECRET"])
        except (UnicodeDecodeError, razorpay.errors.SignatureVerificationError):
            raise BadRequest("Invalid Razorpay signature", code="invalid_signature")
        event = json.loads(body)
        if not isinstance(event, dict):
            raise BadRequest("A webhook event must be a JSON object", code="malformed_event")
        kind = str(event.get("event"))
        return settlement.process_event(
            "razorpay", event_key(kind, event.get("payload") or {}, raw), kind, event,
            lambda: self.apply_event(event))

    def apply_event(self, event: dict) -> int | None:
        kind = str(event.get("event"))
        payload = event.get("payload") or {}
        if kind in PAYMENT_EVENTS:
            entity = _entity(payload, "payment")
            order_id = entity.get("order_id") or _entity(payload, "order").get("id")
            payment = settlement.by_gateway_ref("razorpay", order_id=order_id)
            if payment is None:
                log.warning("Razorpay %s for an unknown order %s", kind, order_id)
                return None
            if kind == "payment.failed":
                settlement.mark_failed(payment.id, entity.get("error_description")
                                       or "payment failed", entity, kind)
            else:
                self.settle(
                    payment.id, gateway_payment_id=entity.get("id"),
                    amount_minor=int(entity.get("amount") or 0),
                    currency=str(entity.get("currency") or ""), source=kind, raw=entity)
            return payment.id
        if kind in REFUND_EVENTS:
            entity = _entity(payload, "refund")
            if not isinstance(entity.get("payment_id"), str) or not entity["payment_id"]:
                return None
            payment = db.session.scalar(db.select(Payment).where(
                Payment.gateway == "razorpay",
                Payment.gateway_payment_id == entity["payment_id"]))
            if payment is None:  # not settled here yet (or not ours): kept until it is
                raise settlement.NotSettledYet(entity["payment_id"])
            payment = settlement.locked(payment.id)
            refund = refund_of(entity, status=_REFUND_STATES[kind.split(".", 1)[1]])
            ledger.record_refund(payment, refund, source=kind)
            return payment.id
        return None

    # --- refunds and reconciliation -----------------------------------------------------------

    def refunds_of(self, payment: Payment) -> list[GatewayRefund]:
        if not payment.gateway_payment_id:
            return []
        listed = _call("look up refunds", client().payment.fetch_multiple_refund,
                       payment.gateway_payment_id, {"count": 100})
        return [refund_of(item) for item in listed.get("items", [])]

    def create_refund(self, payment: Payment, amount_minor: int, *, key: str) -> GatewayRefund:
        """Razorpay does not deduplicate refunds: callers look for one with our key (the
        receipt) first, under the payment's row lock."""
        if not payment.gateway_payment_id:
            raise GatewayRefused("This Razorpay payment has no payment id to refund")
        made = _call("refund", client().payment.refund, payment.gateway_payment_id, {
            "amount": int(amount_minor), "receipt": key[:RECEIPT_LENGTH],
            "notes": {"payment_id": str(payment.id)}})
        return refund_of(made)

    def reconcile(self, payment: Payment) -> str:
        if not payment.gateway_order_id:
            settlement.mark_expired(payment.id, None, "reconcile")
            return "expired"
        try:
            result = client().order.payments(payment.gateway_order_id)
        except (requests.RequestException, *GATEWAY_ERRORS) as exc:
            log.warning("reconcile: Razorpay order %s: %s", payment.gateway_order_id, exc)
            return "unknown"
        captured = [p for p in result.get("items", []) if p.get("status") in CAPTURED]
        if captured:
            remote = captured[0]
            outcome = self.settle(
                payment.id, gateway_payment_id=remote["id"], amount_minor=int(remote["amount"]),
                currency=remote["currency"], source="reconcile", raw=remote)
            return "settled" if outcome.changed else "unchanged"
        if payment.status not in settlement.PENDING:  # expired before: still not paid
            return "unchanged"
        settlement.mark_expired(payment.id, result, "reconcile")
        return "expired"
