"""Razorpay, through the real `razorpay` SDK: orders, checkout signature verification, signed
webhooks, refunds and the reconciler's look-up. RAZORPAY_API_BASE points the client at another
host (tests use a local stub on 127.0.0.1)."""
from __future__ import annotations

import hashlib
import json
import logging
from decimal import Decimal

import razorpay
import requests
from flask import current_app

from models import Payment, User, db
from services import settlement_service
from utils.errors import BadGateway, BadRequest, NotFound, ServiceUnavailable
from utils.helpers import to_minor_units

log = logging.getLogger("lms.payments.razorpay")

GATEWAY_ERRORS = (razorpay.errors.BadRequestError, razorpay.errors.ServerError,
                  razorpay.errors.GatewayError)


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
    try:
        return fn(*args)
    except requests.RequestException as exc:
        log.error("Razorpay unreachable (%s): %s", action, exc)
        raise ServiceUnavailable(f"Razorpay is unreachable ({action}); try again shortly")
    except GATEWAY_ERRORS as exc:
        log.error("Razorpay refused to %s: %s", action, exc)
        raise BadGateway(f"Razorpay refused to {action}: {exc}")


def create_order(user: User, course_id: int) -> dict:
    """A Razorpay order for the course (an open one is reused), with what checkout needs."""
    _require("RAZORPAY_KEY_ID", "RAZORPAY_KEY_SECRET", "RAZORPAY_WEBHOOK_SECRET")
    payment, course, reused = settlement_service.open_order(user, course_id, "razorpay")
    amount = to_minor_units(Decimal(payment.amount), payment.currency)
    if not reused:
        order = _call("create an order", client().order.create, {
            "amount": amount, "currency": payment.currency, "receipt": f"payment-{payment.id}",
            "notes": {"payment_id": str(payment.id), "user_id": str(user.id),
                      "course_id": str(course.id)}})
        payment.gateway_order_id = order["id"]
        payment.status = "pending"
        payment.gateway_response = {"order": order}
    return {"payment_id": payment.id, "order_id": payment.gateway_order_id, "amount": amount,
            "currency": payment.currency, "key_id": current_app.config["RAZORPAY_KEY_ID"],
            "name": current_app.config["APP_NAME"], "description": course.title,
            "prefill": {"name": user.full_name, "email": user.email,
                        "contact": user.phone_number or ""},
            "reused": reused}


def verify_checkout(user: User, order_id: str, payment_id: str, signature: str):
    """The browser's confirmation: signature first (nothing is written if it is wrong), then
    the payment as Razorpay reports it, then the one settlement path."""
    rz = client()
    try:
        rz.utility.verify_payment_signature({"razorpay_order_id": order_id,
                                             "razorpay_payment_id": payment_id,
                                             "razorpay_signature": signature})
    except razorpay.errors.SignatureVerificationError:
        raise BadRequest("Invalid payment signature", code="invalid_signature")
    payment = settlement_service.by_gateway_ref("razorpay", order_id=order_id)
    if payment is None or payment.user_id != user.id:
        raise NotFound("No order of yours has this id")
    remote = _call("fetch the payment", rz.payment.fetch, payment_id)
    if remote.get("order_id") != order_id:
        raise BadRequest("This payment belongs to another order", code="order_mismatch")
    if remote.get("status") == "authorized":
        remote = _call("capture the payment", rz.payment.capture, payment_id,
                       int(remote["amount"]), {"currency": remote["currency"]})
    if remote.get("status") != "captured":
        settlement_service.mark_pending(payment.id, remote, "verify")
        return settlement_service.Settlement(payment, False), remote.get("status")
    result = settlement_service.settle(
        payment.id, gateway_payment_id=payment_id, amount_minor=int(remote["amount"]),
        currency=remote["currency"], source="verify", raw=remote)
    return result, "captured"


# --- webhooks ---------------------------------------------------------------------------------

def _event_id(header_id: str | None, event: dict, raw: bytes) -> str:
    if header_id:
        return header_id
    # Razorpay sends X-Razorpay-Event-Id; without it, the body itself identifies a redelivery.
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def handle_webhook(raw: bytes, signature: str | None, event_id: str | None) -> dict:
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
    return settlement_service.process_event(
        "razorpay", _event_id(event_id, event, raw), str(event.get("event")), event,
        lambda: _apply(str(event.get("event")), event.get("payload") or {}))


def _entity(payload: dict, name: str) -> dict:
    return ((payload.get(name) or {}).get("entity")) or {}


def _apply(kind: str, payload: dict) -> int | None:
    if kind in ("payment.captured", "order.paid", "payment.failed"):
        entity = _entity(payload, "payment")
        order_id = entity.get("order_id") or _entity(payload, "order").get("id")
        payment = settlement_service.by_gateway_ref("razorpay", order_id=order_id)
        if payment is None:
            log.warning("Razorpay %s for an unknown order %s", kind, order_id)
            return None
        if kind == "payment.failed":
            settlement_service.mark_failed(payment.id, entity.get("error_description")
                                           or "payment failed", entity, kind)
        else:
            settlement_service.settle(
                payment.id, gateway_payment_id=entity.get("id"),
                amount_minor=int(entity.get("amount") or 0),
                currency=str(entity.get("currency") or ""), source=kind, raw=entity)
        return payment.id
    if kind == "refund.processed":
        entity = _entity(payload, "refund")
        payment = db.session.scalar(db.select(Payment).where(
            Payment.gateway == "razorpay", Payment.gateway_payment_id == entity.get("payment_id")))
        if payment is None:
            return None
        payment = settlement_service.locked(payment.id)
        amount = Decimal(int(entity.get("amount") or 0)) / Decimal(
            to_minor_units(Decimal(1), payment.currency))
        settlement_service.apply_refund(payment, amount, entity, kind)
        return payment.id
    return None


# --- refunds and reconciliation ---------------------------------------------------------------

def refund(payment: Payment, amount: Decimal, *, idempotency_key: str) -> dict:
    """Refund, unless a refund with this key (our `receipt`) exists already: Razorpay does not
    deduplicate, and an approval retried after our commit failed must not refund twice."""
    if not payment.gateway_payment_id:
        raise BadGateway("This Razorpay payment has no payment id to refund")
    made = _call("look up refunds", client().payment.fetch_multiple_refund,
                 payment.gateway_payment_id)
    for item in made.get("items", []):
        if item.get("receipt") == idempotency_key[:40]:
            return item
    return _call("refund", client().payment.refund, payment.gateway_payment_id, {
        "amount": to_minor_units(amount, payment.currency),
        "receipt": idempotency_key[:40], "notes": {"payment_id": str(payment.id)}})


def reconcile(payment: Payment) -> str:
    if not payment.gateway_order_id:
        settlement_service.mark_expired(payment.id, None, "reconcile")
        return "expired"
    try:
        result = client().order.payments(payment.gateway_order_id)
    except (requests.RequestException, *GATEWAY_ERRORS) as exc:
        log.warning("reconcile: Razorpay order %s: %s", payment.gateway_order_id, exc)
        return "unknown"
    captured = [p for p in result.get("items", []) if p.get("status") == "captured"]
    if captured:
        remote = captured[0]
        outcome = settlement_service.settle(
            payment.id, gateway_payment_id=remote["id"], amount_minor=int(remote["amount"]),
            currency=remote["currency"], source="reconcile", raw=remote)
        return "settled" if outcome.changed else "unchanged"
    settlement_service.mark_expired(payment.id, result, "reconcile")
    return "expired"
