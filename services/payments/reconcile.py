"""The reconciler: what a webhook should have told us, asked of the gateway instead.

- Payments still pending after PAYMENT_PENDING_TIMEOUT are looked up and settled or expired
  through the same path as webhooks; at a gateway whose orders stay payable after we expired
  them (Razorpay), expired ones are looked up again for PAYMENT_EXPIRED_RECHECK_HOURS.
- Approved refunds still in flight (the gateway did not answer, our commit failed after it
  refunded, or its refund is pending there) are executed again: the refund carrying the
  request's key is found and recorded, or made if there is none.
- Refund events that arrived before their payment settled, and were still waiting when it
  did (in another worker), are applied.

Run by the worker's tick, `POST /admin/payments/reconcile` (a job) and `flask payments
reconcile`. Each payment and each request commits on its own: one's trouble does not stop the
others.
"""
from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

from flask import current_app
from sqlalchemy import and_, or_, select

from models import Payment, db
from services.payments import refunds, settlement
from services.payments.registry import GATEWAYS, gateway_for
from utils.errors import APIError
from utils.helpers import utcnow

log = logging.getLogger("lms.payments.reconcile")


def reconcile_pending(older_than_minutes: int | None = None) -> dict[str, int]:
    """Counts of what happened: "settled", "expired", "unchanged", "pending", "unknown",
    "error" for payments; "refund_processed", "refund_approved" (still in flight),
    "refund_pending" (declined, back to an admin), "refund_error" for refunds."""
    minutes = older_than_minutes if older_than_minutes is not None else \
        current_app.config["PAYMENT_PENDING_TIMEOUT"]
    now = utcnow()
    cutoff = now - timedelta(minutes=minutes)
    recheck_since = now - timedelta(hours=current_app.config["PAYMENT_EXPIRED_RECHECK_HOURS"])
    payable_after_expiry = [g.name for g in GATEWAYS.values() if g.payable_after_expiry]
    ids = list(db.session.scalars(select(Payment.id).where(
        or_(and_(Payment.status.in_(settlement.PENDING), Payment.created_at < cutoff),
            and_(Payment.status == "expired", Payment.gateway.in_(payable_after_expiry),
                 Payment.created_at > recheck_since)))
        .order_by(Payment.id)))
    counts: Counter = Counter()
    for payment_id in ids:
        payment = db.session.get(Payment, payment_id)
        try:
            outcome = gateway_for(payment.gateway).reconcile(payment)
            db.session.commit()
        except APIError as exc:  # one payment's trouble does not stop the others
            db.session.rollback()
            log.warning("reconcile payment %s: %s", payment_id, exc.message)
            outcome = "error"
        counts[outcome] += 1
    counts.update(reconcile_refunds())
    counts.update(apply_waiting_events())
    return dict(counts)


def apply_waiting_events() -> Counter:
    """Refund events still waiting for a payment that has settled since (one that arrived
    while its payment was settling in another worker)."""
    counts: Counter = Counter()
    for payment_id in settlement.payments_with_waiting_events():
        payment = settlement.locked(payment_id)
        try:
            applied = gateway_for(payment.gateway).apply_waiting(payment)
            db.session.commit()
        except APIError as exc:
            db.session.rollback()
            log.warning("reconcile waiting events of payment %s: %s", payment_id, exc.message)
            continue
        if applied:
            counts["refund_events_applied"] += applied
    return counts


def reconcile_refunds() -> Counter:
    counts: Counter = Counter()
    for request_id in refunds.in_flight():
        try:
            outcome = refunds.execute(request_id, source="reconcile")
            db.session.commit()
        except APIError as exc:
            db.session.rollback()
            log.warning("reconcile refund request %s: %s", request_id, exc.message)
            counts["refund_error"] += 1
            continue
        if outcome.error is not None:
            log.warning("reconcile refund request %s: %s", request_id, outcome.error.message)
        key = "refund_error" if outcome.error is not None and \
            outcome.request.status == "approved" else f"refund_{outcome.request.status}"
        counts[key] += 1
    return counts
