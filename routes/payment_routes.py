"""Payments: Razorpay orders and verification, Stripe Checkout, both gateways' webhooks,
history, invoices and refund requests. Both route sets of the contract."""
from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint, Response as FlaskResponse, request
from pydantic import Field
from spectree import Response
from typing_extensions import NotRequired, TypedDict

from auth import current_user, login_required
from models import Payment, PaymentRefund, db
from services import invoice_service
from services.payments import ledger, refunds
from services.payments.registry import RAZORPAY, STRIPE
from utils.pipeline.idempotency import IdempotencyHeaders, idempotent
from utils.errors import NotFound
from utils.extensions import limiter
from utils.pagination import paginate
from utils.pipeline.rate_limits import config_limit
from utils.responses import (
    CourseRefOut,
    Currency,
    PaginationOut,
    PaymentOut,
    RefundOut,
    RefundRequestSavedResponse,
)
from utils.validation import PageQuery, StrictModel, document, errors, json_body, query_args, validate

bp = Blueprint("payments", __name__)
AUTH = {"tags": ["payments"], "security": {"bearer": []}}
HOOK = {"tags": ["payments", "webhooks"]}


class PurchaseIn(StrictModel):
    course_id: int = Field(ge=1)


class RazorpayVerifyIn(StrictModel):
    razorpay_order_id: str = Field(min_length=1, max_length=100)
    razorpay_payment_id: str = Field(min_length=1, max_length=100)
    razorpay_signature: str = Field(min_length=1, max_length=256)


class RefundIn(StrictModel):
    reason: str = Field(min_length=3, max_length=2000)


class HistoryQuery(PageQuery):
    status: str | None = Field(None, pattern="^(created|pending|completed|failed|expired|refunded)$")


class PaymentDetailOut(PaymentOut):
    """A payment with its course and, once paid, where its invoice is."""

    course: CourseRefOut
    invoice_url: Annotated[str | None, Field(examples=["/api/v1/payments/9/invoice"])]


class PaymentWithRefundsOut(PaymentDetailOut):
    """A payment with the refunds recorded against it, oldest first."""

    refunds: list[RefundOut]


class PaymentResponse(TypedDict):
    """A payment, with its refunds and their credit notes."""

    payment: PaymentWithRefundsOut


class PaymentSavedResponse(TypedDict):
    """The payment after the checkout's answer (202 while the gateway has not captured it)."""

    message: str
    payment: PaymentDetailOut


class PaymentListResponse(TypedDict):
    """A page of the user's payments, newest first."""

    payments: list[PaymentDetailOut]
    pagination: PaginationOut


class PrefillOut(TypedDict):
    """What Razorpay's checkout form is filled with."""

    name: str
    email: str
    contact: str


class RazorpayOrderOut(TypedDict):
    """What Razorpay's checkout needs."""

    payment_id: int
    order_id: str
    amount: Annotated[int, Field(description="Minor units (paise, cents)", examples=[499900])]
    currency: Currency
    key_id: Annotated[str, Field(description="The public key id for checkout")]
    name: str
    description: str
    prefill: PrefillOut
    reused: Annotated[bool, Field(description="An open order of the course, returned again")]


class RazorpayOrderResponse(TypedDict):
    """A Razorpay order (201 new, 200 an open one again)."""

    message: str
    order: RazorpayOrderOut


class StripeCheckoutResponse(TypedDict):
    """A Stripe Checkout Session (201 new, 200 an open one again): send the browser to
    `checkout_url`."""

    message: str
    payment_id: int
    session_id: str
    checkout_url: str | None
    reused: bool


class WebhookAckResponse(TypedDict):
    """The event was received (and is processed once, whatever happens to it)."""

    received: Literal[True]
    duplicate: NotRequired[Annotated[bool, Field(description="Already processed before")]]
    error: NotRequired[Annotated[str, Field(description="Why it changed nothing")]]


def readable_payment(payment_id: int) -> Payment:
    user = current_user()
    payment = db.session.get(Payment, payment_id)
    if payment is None or (payment.user_id != user.id and user.role != "admin"):
        raise NotFound("Payment not found")
    return payment


def payment_dict(payment: Payment, *, with_refunds: bool = False) -> dict:
    data = payment.to_dict()
    course = payment.course
    data["course"] = {"id": course.id, "title": course.title, "slug": course.slug}
    data["invoice_url"] = (f"/api/v1/payments/{payment.id}/invoice"
                           if payment.invoice_number else None)
    if with_refunds:
        data["refunds"] = [r.to_dict() for r in ledger.refunds_of(payment.id)]
    return data


# --- Razorpay ---------------------------------------------------------------------------------

@bp.post("/razorpay/create-order")
@bp.post("/create-order")
@config_limit("RATE_LIMIT_PAYMENT_CREATE")
@login_required
@validate(json=PurchaseIn, headers=IdempotencyHeaders,
          resp=Response(HTTP_201=RazorpayOrderResponse, HTTP_200=RazorpayOrderResponse,
                        **errors(400, 401, 402, 403, 404, 409, 422, 502, 503)), **AUTH)
@idempotent
def razorpay_create_order():
    """A Razorpay order for a paid course: amount in minor units and the public key id for
    checkout. An open order of the same course is returned again."""
    order = RAZORPAY.create_order(current_user(), json_body().course_id)
    db.session.commit()
    return {"message": "Order created", "order": order}, 200 if order["reused"] else 201


@bp.post("/razorpay/verify")
@bp.post("/verify-payment")
@config_limit("RATE_LIMIT_PAYMENT_VERIFY")
@login_required
@validate(json=RazorpayVerifyIn, resp=Response(HTTP_200=PaymentSavedResponse,
                                               HTTP_202=PaymentSavedResponse,
                                               **errors(400, 401, 404, 502, 503)), **AUTH)
def razorpay_verify():
    """The checkout's answer: signature, then the payment as Razorpay reports it; settles the
    payment and enrolls (the webhook converges on the same result)."""
    body = json_body()
    result, status = RAZORPAY.verify_checkout(
        current_user(), body.razorpay_order_id, body.razorpay_payment_id, body.razorpay_signature)
    db.session.commit()
    if status != "captured":
        return {"message": f"The payment is {status}; you will be enrolled when it is captured",
                "payment": payment_dict(result.payment)}, 202
    return {"message": "Payment verified; you are enrolled", "payment": payment_dict(result.payment)}


@bp.post("/razorpay/webhook")
@limiter.exempt
@document(resp=Response(HTTP_200=WebhookAckResponse, **errors(400, 503)), **HOOK)
def razorpay_webhook():
    """Razorpay events, checked with X-Razorpay-Signature over the raw body; recorded once by
    what the signature covers (X-Razorpay-Event-Id is not signed and is not used)."""
    ack = RAZORPAY.handle_webhook(request.get_data(cache=False),
                                  request.headers.get("X-Razorpay-Signature"))
    db.session.commit()
    return ack


# --- Stripe -----------------------------------------------------------------------------------

@bp.post("/stripe/create-checkout")
@bp.post("/create-checkout-session")
@config_limit("RATE_LIMIT_PAYMENT_CREATE")
@login_required
@validate(json=PurchaseIn, headers=IdempotencyHeaders,
          resp=Response(HTTP_201=StripeCheckoutResponse, HTTP_200=StripeCheckoutResponse,
                        **errors(400, 401, 403, 404, 409, 422, 502, 503)), **AUTH)
@idempotent
def stripe_create_checkout():
    """A Stripe Checkout Session for a paid course: `{checkout_url, session_id}`."""
    checkout = STRIPE.create_checkout(current_user(), json_body().course_id)
    db.session.commit()
    return {"message": "Checkout created", **checkout}, 200 if checkout["reused"] else 201


@bp.post("/stripe/webhook")
@limiter.exempt
@document(resp=Response(HTTP_200=WebhookAckResponse, **errors(400, 503)), **HOOK)
def stripe_webhook():
    """Stripe events, checked with Stripe-Signature over the raw body."""
    ack = STRIPE.handle_webhook(request.get_data(cache=False),
                                request.headers.get("Stripe-Signature"))
    db.session.commit()
    return ack


# --- records ----------------------------------------------------------------------------------

@bp.get("/history")
@login_required
@validate(query=HistoryQuery, resp=Response(HTTP_200=PaymentListResponse, **errors(401)), **AUTH)
def history():
    """The signed-in user's payments, newest first."""
    args = query_args()
    query = (db.select(Payment).where(Payment.user_id == current_user().id)
             .options(db.joinedload(Payment.course))
             .order_by(Payment.created_at.desc(), Payment.id.desc()))
    if args.status:
        query = query.where(Payment.status == args.status)
    rows, meta = paginate(query, args.page, args.per_page)
    return {"payments": [payment_dict(p) for p in rows], "pagination": meta}


@bp.get("/<int:payment_id>")
@login_required
@validate(resp=Response(HTTP_200=PaymentResponse, **errors(401, 404)), **AUTH)
def get_payment(payment_id: int):
    """A payment (the payer or an admin), with its refunds and their credit notes."""
    return {"payment": payment_dict(readable_payment(payment_id), with_refunds=True)}


@bp.get("/<int:payment_id>/invoice")
@login_required
@document(resp=Response("HTTP_200", **errors(401, 404, 409)),
          media={200: {"application/pdf": "The invoice's PDF"}}, **AUTH)
def invoice(payment_id: int):
    """The payment's invoice as a PDF."""
    payment = readable_payment(payment_id)
    pdf = invoice_service.render_invoice(payment)
    return FlaskResponse(pdf, mimetype="application/pdf", headers={
        "Content-Disposition": f'attachment; filename="{payment.invoice_number}.pdf"',
        "Cache-Control": "private, no-store"})


@bp.get("/<int:payment_id>/refunds/<int:refund_id>/credit-note")
@login_required
@document(resp=Response("HTTP_200", **errors(401, 404)),
          media={200: {"application/pdf": "The refund's credit note"}}, **AUTH)
def credit_note(payment_id: int, refund_id: int):
    """The credit note of one refund of the payment, as a PDF (the payer or an admin)."""
    payment = readable_payment(payment_id)
    refund = db.session.get(PaymentRefund, refund_id)
    if refund is None or refund.payment_id != payment.id:
        raise NotFound("Refund not found")
    pdf = invoice_service.render_credit_note(refund)
    return FlaskResponse(pdf, mimetype="application/pdf", headers={
        "Content-Disposition": f'attachment; filename="{refund.credit_note_number}.pdf"',
        "Cache-Control": "private, no-store"})


@bp.post("/<int:payment_id>/refund-request")
@bp.post("/<int:payment_id>/refund")
@login_required
@validate(json=RefundIn, headers=IdempotencyHeaders,
          resp=Response(HTTP_201=RefundRequestSavedResponse,
                        **errors(400, 401, 403, 404, 409, 422)), **AUTH)
@idempotent
def request_refund(payment_id: int):
    """Ask for a refund: the payer, for a completed payment, within REFUND_WINDOW_DAYS and
    before a certificate is issued for the course (403 `refund_window_closed`,
    `refund_certificate_issued`); one open request per payment (409). An admin approves or
    rejects it."""
    refund = refunds.request_refund(payment_id, current_user(), json_body().reason)
    db.session.commit()
    return {"message": "Refund requested", "refund_request": refund.to_dict()}, 201
