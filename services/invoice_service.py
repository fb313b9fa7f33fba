"""Invoices and credit notes: one-page PDFs (ReportLab). An invoice is numbered when its payment
settles (INV-<year>-<000001>); each recorded refund has a credit note of its own
(CN-<year>-<000001>), which names the invoice it corrects."""
from __future__ import annotations

import io
from decimal import Decimal

from flask import current_app

from models import Course, Payment, PaymentRefund, User, db
from services.certificate_service import pdf_fonts
from utils.errors import Conflict
from utils.helpers import money


class _Page:
    """A document's page: the seller, the buyer, one line item and totals, in our fonts."""

    def __init__(self, title: str, number_label: str, number: str, date_text: str):
        # ReportLab (~30 ms to import) loads only when a PDF is drawn, not in every worker.
        from reportlab.lib.pagesizes import A4
        from reportlab.pdfgen import canvas as pdf_canvas

        cfg = current_app.config
        self.regular, self.bold = pdf_fonts(tuple(cfg["CERTIFICATE_FONT_PATHS"]),
                                            tuple(cfg["CERTIFICATE_BOLD_FONT_PATHS"]))
        self.buffer = io.BytesIO()
        self.width, height = A4
        self.c = pdf_canvas.Canvas(self.buffer, pagesize=A4, invariant=1)
        self.c.setTitle(f"{title.capitalize()} {number}")
        self.c.setAuthor(cfg["INVOICE_SELLER_NAME"])
        self.left, self.right, self.y = 60, self.width - 60, height - 70
        self.c.setFont(self.bold, 22)
        self.c.drawString(self.left, self.y, title.upper())
        self.c.setFont(self.regular, 10)
        self.c.drawRightString(self.right, self.y, f"{number_label}: {number}")
        self.c.drawRightString(self.right, self.y - 14, f"Date: {date_text}")

    def mark(self, text: str) -> None:
        from reportlab.lib import colors  # loaded with the first PDF, as above

        self.c.setFillColor(colors.red)
        self.c.drawRightString(self.right, self.y - 28, text)
        self.c.setFillColor(colors.black)

    def parties(self, buyer: User) -> None:
        cfg = current_app.config
        seller = [cfg["INVOICE_SELLER_NAME"], cfg["INVOICE_SELLER_ADDRESS"],
                  f"Tax id: {cfg['INVOICE_SELLER_TAX_ID']}" if cfg["INVOICE_SELLER_TAX_ID"]
                  else ""]
        for title, lines, x in (("Seller", seller, self.left),
                                ("Billed to", [buyer.full_name, buyer.email,
                                               buyer.phone_number or ""], self.width / 2)):
            self.c.setFont(self.bold, 11)
            self.c.drawString(x, self.y - 60, title)
            self.c.setFont(self.regular, 10)
            for i, line in enumerate(line for line in lines if line):
                self.c.drawString(x, self.y - 60 - 15 * (i + 1), line[:70])
        self.y -= 160

    def item(self, description: str, amount: str, currency: str) -> None:
        from reportlab.lib import colors  # loaded with the first PDF, as above

        self.c.setStrokeColor(colors.grey)
        self.c.line(self.left, self.y + 14, self.right, self.y + 14)
        self.c.setFont(self.bold, 10)
        self.c.drawString(self.left, self.y, "Description")
        self.c.drawRightString(self.right, self.y, f"Amount ({currency})")
        self.c.line(self.left, self.y - 6, self.right, self.y - 6)
        self.c.setFont(self.regular, 10)
        self.c.drawString(self.left, self.y - 22, description[:80])
        self.c.drawRightString(self.right, self.y - 22, amount)
        self.y -= 50

    def line(self, label: str, amount: str, *, bold: bool = False) -> None:
        self.c.setFont(self.bold if bold else self.regular, 11 if bold else 10)
        self.c.drawString(self.left, self.y, label)
        self.c.drawRightString(self.right, self.y, amount)
        self.y -= 18

    def notes(self, *lines: str) -> bytes:
        self.c.setFont(self.regular, 9)
        for i, line in enumerate(lines):
            self.c.drawString(self.left, self.y - 22 - 14 * i, line)
        self.c.showPage()
        self.c.save()
        return self.buffer.getvalue()


def render_invoice(payment: Payment) -> bytes:
    if payment.status not in ("completed", "refunded") or not payment.invoice_number:
        raise Conflict("An invoice exists only for a completed payment", code="no_invoice")
    buyer = db.session.get(User, payment.user_id)
    course = db.session.get(Course, payment.course_id)
    page = _Page("invoice", "Invoice number", payment.invoice_number,
                 f"{payment.paid_at:%d %B %Y}")
    if payment.status == "refunded":
        page.mark("REFUNDED")
    page.parties(buyer)
    page.item(f"Course: {course.title}", f"{money(payment.amount):,.2f}", payment.currency)
    if payment.refunded_amount and Decimal(payment.refunded_amount) > 0:
        page.line("Refunded (see the credit notes)", f"-{money(payment.refunded_amount):,.2f}")
    page.line("Total paid", f"{money(payment.amount):,.2f} {payment.currency}", bold=True)
    return page.notes(
        f"Paid with {payment.gateway.capitalize()}; reference "
        f"{payment.gateway_payment_id or payment.gateway_order_id or '-'}",
        f"Payment id {payment.id}")


def render_credit_note(refund: PaymentRefund) -> bytes:
    """The credit note of one refund: the amount credited against the payment's invoice."""
    payment = db.session.get(Payment, refund.payment_id)
    buyer = db.session.get(User, payment.user_id)
    course = db.session.get(Course, payment.course_id)
    page = _Page("credit note", "Credit note number", refund.credit_note_number,
                 f"{refund.created_at:%d %B %Y}")
    page.parties(buyer)
    page.item(f"Refund for the course: {course.title}", f"-{money(refund.amount):,.2f}",
              refund.currency)
    page.line("Total credited", f"{money(refund.amount):,.2f} {refund.currency}", bold=True)
    return page.notes(
        f"Credits invoice {payment.invoice_number or '-'} "
        f"({money(payment.amount):,.2f} {payment.currency}, paid "
        f"{payment.paid_at:%d %B %Y})" if payment.paid_at else
        f"Credits invoice {payment.invoice_number or '-'}",
        f"Refunded through {payment.gateway.capitalize()}; refund reference "
        f"{refund.gateway_refund_id}",
        f"Payment id {payment.id}")
