"""Payments: what happens to money, whichever gateway carried it.

- `gateway`: the one interface every gateway implements (`PaymentGateway`) and the shape of a
  gateway's refund (`GatewayRefund`).
- `stripe_gateway`, `razorpay_gateway`: the two gateways, through their real SDKs.
- `registry`: `GATEWAYS = {"stripe": ..., "razorpay": ...}`, how the rest of the code picks one.
- `settlement`: orders, the one settlement path, and the exactly-once record of webhook events.
- `ledger`: refunds as the gateways made them, recorded once per gateway refund id, with what
  follows from them (payment status, access, certificate, credit note).
- `refunds`: the refund policy, refund requests, and an admin's approval (recorded before the
  gateway is asked, so a refund in flight is never lost).
- `reconcile`: payments still pending and approved refunds still in flight, asked of their
  gateway and brought to the same end as the webhooks.

Imports point down this list's reverse: refunds and reconcile use the registry, the gateways use
settlement and the ledger, and those use only models and the services below them.
"""
