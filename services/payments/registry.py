"""The payment gateways by the name a payment stores: the one place that chooses a gateway."""
from __future__ import annotations

from services.payments.gateway import PaymentGateway
from services.payments.razorpay_gateway import RazorpayGateway
from services.payments.stripe_gateway import StripeGateway

STRIPE = StripeGateway()
RAZORPAY = RazorpayGateway()
GATEWAYS: dict[str, PaymentGateway] = {STRIPE.name: STRIPE, RAZORPAY.name: RAZORPAY}


def gateway_for(name: str) -> PaymentGateway:
    try:
        return GATEWAYS[name]
    except KeyError:
        raise LookupError(f"no payment gateway named {name!r}") from None
