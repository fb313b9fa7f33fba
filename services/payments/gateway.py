"""The interface both payment gateways implement, and what the rest of the payment code knows
about a refund a gateway made.

A refund is identified at the gateway by its own id; the refunds we ask for also carry our key
(`lms-refund-<refund request id>`: Stripe's metadata and idempotency key, Razorpay's receipt),
so whoever finds the refund later (the gateway's webhook, the reconciler, a retried approval)
knows which request it settles.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from decimal import Decimal

from models import Payment, db
from services.payments import settlement
from utils.errors import APIError, BadGateway
from utils.helpers import from_minor_units, to_minor_units

log = logging.getLogger("lms.payments")

REFUND_KEY_PREFIX = "lms-refund-"

# A refund's state, as every gateway's own words map onto it.
REFUND_SUCCEEDED, REFUND_PENDING, REFUND_FAILED = "succeeded", "pending", "failed"


def refund_key(request_id: int, attempt: int = 0) -> str:
    """Our key for the refund that settles refund request `request_id` (`attempt`: how many
    refunds for it the gateway reported failed; each retry needs a key of its own, or Stripe
    would answer with the failed one again)."""
    return f"{REFUND_KEY_PREFIX}{request_id}" + (f"-{attempt}" if attempt else "")


def request_id_of(key: str | None) -> int | None:
    """The refund request a key names, or None for a key that is not ours."""
    if not key or not key.startswith(REFUND_KEY_PREFIX):
        return None
    number = key[len(REFUND_KEY_PREFIX):].split("-", 1)[0]
    return int(number) if number.isdigit() and len(number) < 12 else None


class GatewayRefused(BadGateway):
    """The gateway answered that it will not do it (a 4xx): nothing was done there, so the
    operation may be reconsidered. Any other failure (unreachable, a timeout, a 5xx) leaves the
    outcome unknown."""


@dataclass(frozen=True)
class GatewayRefund:
    id: str
    payment_ref: str | None  # the gateway's id of the payment refunded (intent, payment)
    amount_minor: int
    currency: str  # ISO 4217, upper case
    status: str  # REFUND_SUCCEEDED, REFUND_PENDING or REFUND_FAILED
    key: str | None = None  # our key, when we asked for it
    raw: dict = field(default_factory=dict, compare=False)

    @property
    def amount(self) -> Decimal:
        return from_minor_units(self.amount_minor, self.currency)


def captured_minor(payment: Payment) -> int:
    return to_minor_units(Decimal(payment.amount), payment.currency)


class PaymentGateway(ABC):
    """What settlement, refunds and the reconciler need of a gateway. Opening a checkout is
    each gateway's own (a Razorpay order, a Stripe Checkout Session) and lives beside these."""

    name: str  # as stored in Payment.gateway
    label: str  # for messages
    # Whether an order we expired can still be paid at the gateway (then the reconciler asks
    # about expired payments again for PAYMENT_EXPIRED_RECHECK_HOURS).
    payable_after_expiry: bool = False

    @abstractmethod
    def handle_webhook(self, raw: bytes, signature: str | None) -> dict:
        """Verify the signature over the raw body, record the event once (by an id taken
        from the signed body) and act on it (`apply_event`); returns the acknowledgement
        body."""

    @abstractmethod
    def apply_event(self, event: dict) -> int | None:
        """Act on a verified event as the gateway sent it; returns the payment it concerned.
        Raises settlement.NotSettledYet for a refund of a payment not settled here yet."""

    @abstractmethod
    def reconcile(self, payment: Payment) -> str:
        """Ask about a payment still pending (or expired, see payable_after_expiry) and settle
        or expire it; returns what happened ("settled", "unchanged", "expired", "pending",
        "unknown")."""

    @abstractmethod
    def refunds_of(self, payment: Payment) -> list[GatewayRefund]:
        """Every refund the gateway holds for the payment. Raises ServiceUnavailable or
        BadGateway when it cannot be asked."""

    @abstractmethod
    def create_refund(self, payment: Payment, amount_minor: int, *, key: str) -> GatewayRefund:
        """Refund `amount_minor` of the payment, tagged with our `key`. Raises GatewayRefused
        when the gateway declines; ServiceUnavailable or BadGateway when the outcome is
        unknown (the refund may have been made)."""

    # --- shared by both ---------------------------------------------------------------------

    def settle(self, payment_id: int, **kwargs) -> settlement.Settlement:
        """settlement.settle, then the refund events that arrived before the payment settled
        (webhooks come in any order)."""
        result = settlement.settle(payment_id, **kwargs)
        self.apply_waiting(result.payment)
        return result

    def apply_waiting(self, payment: Payment) -> int:
        """Apply the refund events kept for `payment` (now settled); returns how many. One
        that cannot be applied yet (its gateway unreachable) keeps waiting for the
        reconciler; one that cannot be applied at all is kept as failed."""
        if not payment.gateway_payment_id or payment.status not in ("completed", "refunded"):
            return 0
        applied = 0
        for event in settlement.waiting_events(self.name, payment.gateway_payment_id):
            try:
                with db.session.begin_nested():
                    self.apply_event(event.payload)
            except settlement.EventMismatch as exc:
                settlement.finish_event(event, "failed", error=exc.message)
                continue
            except (APIError, settlement.NotSettledYet) as exc:
                log.warning("%s event %s still waits: %r", self.name, event.event_id, exc)
                continue
            settlement.finish_event(event, "processed", payment_id=payment.id)
            event.waiting_for = None
            applied += 1
        return applied
