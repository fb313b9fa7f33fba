"""The reconciler: payments still pending after PAYMENT_PENDING_TIMEOUT are looked up at their
gateway and settled or expired through the same path as webhooks (`flask payments reconcile`,
run from cron or a scheduler)."""
from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

from flask import current_app
from sqlalchemy import select

from models import Payment, db
from utils.errors import APIError
from utils.helpers import utcnow

log = logging.getLogger("lms.payments.reconcile")


def reconcile_pending(older_than_minutes: int | None = None) -> dict[str, int]:
    from services import payment_service, razor_payment_service

    minutes = older_than_minutes if older_than_minutes is not None else \
        current_app.config["PAYMENT_PENDING_TIMEOUT"]
    cutoff = utcnow() - timedelta(minutes=minutes)
    ids = list(db.session.scalars(select(Payment.id).where(
        Payment.status.in_(("created", "pending")), Payment.created_at < cutoff)
        .order_by(Payment.id)))
    counts: Counter = Counter()
    for payment_id in ids:
        payment = db.session.get(Payment, payment_id)
        gateway = payment_service if payment.gateway == "stripe" else razor_payment_service
        try:
            outcome = gateway.reconcile(payment)
            db.session.commit()
        except APIError as exc:  # one payment's trouble does not stop the others
            db.session.rollback()
            log.warning("reconcile payment %s: %s", payment_id, exc.message)
            outcome = "error"
        counts[outcome] += 1
    return dict(counts)
