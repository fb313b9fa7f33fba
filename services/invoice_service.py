"""Invoices: a one-page PDF for a settled payment (ReportLab), numbered when it settled."""
from __future__ import annotations

import io
from decimal import Decimal

from flask import current_app

from models import Course, Payment, User, db
from services.certificate_service import pdf_fonts
from utils.errors import Conflict
from utils.helpers import money


def render_invoice(payment: Payment) -> bytes:
    # ReportLab (~30 ms to import) loads only when a PDF is drawn, not in every worker.
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas as pdf_canvas

    if payment.status not in ("completed", "refunded") or not payment.invoice_number:
        raise Conflict("An invoice exists only for a completed payment", code="no_invoice")
    cfg = current_app.config
    regular, bold = pdf_fonts(tuple(cfg["CERTIFICATE_FONT_PATHS"]),
                           tuple(cfg["CERTIFICATE_BOLD_FONT_PATHS"]))
    buyer = db.session.get(User, payment.user_id)
    course = db.session.get(Course, payment.course_id)
    buffer = io.BytesIO()
    width, height = A4
    c = pdf_canvas.Canvas(buffer, pagesize=A4, invariant=1)
    c.setTitle(f"Invoice {payment.invoice_number}")
    c.setAuthor(cfg["INVOICE_SELLER_NAME"])
    left, y = 60, height - 70
    c.setFont(bold, 22)
    c.drawString(left, y, "INVOICE")
    c.setFont(regular, 10)
    c.drawRightString(width - 60, y, f"Invoice number: {payment.invoice_number}")
    c.drawRightString(width - 60, y - 14, f"Date: {payment.paid_at:%d %B %Y}")
    if payment.status == "refunded":
        c.setFillColor(colors.red)
        c.drawRightString(width - 60, y - 28, "REFUNDED")
        c.setFillColor(colors.black)

    def block(title: str, lines: list[str], x: float, top: float) -> None:
        c.setFont(bold, 11)
        c.drawString(x, top, title)
        c.setFont(regular, 10)
        for i, line in enumerate(line for line in lines if line):
            c.drawString(x, top - 15 * (i + 1), line[:70])

    block("Seller", [cfg["INVOICE_SELLER_NAME"], cfg["INVOICE_SELLER_ADDRESS"],
                     f"Tax id: {cfg['INVOICE_SELLER_TAX_ID']}" if cfg["INVOICE_SELLER_TAX_ID"]
                     else ""], left, y - 60)
    block("Billed to", [buyer.full_name, buyer.email, buyer.phone_number or ""], width / 2, y - 60)

    y -= 160
    c.setStrokeColor(colors.grey)
    c.line(left, y + 14, width - 60, y + 14)
    c.setFont(bold, 10)
    c.drawString(left, y, "Description")
    c.drawRightString(width - 60, y, f"Amount ({payment.currency})")
    c.line(left, y - 6, width - 60, y - 6)
    c.setFont(regular, 10)
    c.drawString(left, y - 22, f"Course: {course.title}"[:80])
    c.drawRightString(width - 60, y - 22, f"{money(payment.amount):,.2f}")
    y -= 50
    if payment.refunded_amount and Decimal(payment.refunded_amount) > 0:
        c.drawString(left, y, "Refunded")
        c.drawRightString(width - 60, y, f"-{money(payment.refunded_amount):,.2f}")
        y -= 18
    c.setFont(bold, 11)
    c.drawString(left, y, "Total paid")
    c.drawRightString(width - 60, y, f"{money(payment.amount):,.2f} {payment.currency}")
    c.setFont(regular, 9)
    c.drawString(left, y - 40, f"Paid with {payment.gateway.capitalize()}; reference "
                               f"{payment.gateway_payment_id or payment.gateway_order_id or '-'}")
    c.drawString(left, y - 54, f"Payment id {payment.id}")
    c.showPage()
    c.save()
    return buffer.getvalue()
