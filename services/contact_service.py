"""Contact forms: anyone may write to the academy; admins read and answer them."""
from __future__ import annotations

from sqlalchemy import func, or_, select

from models import ContactForm, db
from services import notification_service
from utils.errors import NotFound


def submit(*, name: str, email: str, message: str, phone_number: str | None = None,
           subject: str | None = None, ip_address: str | None = None) -> ContactForm:
    form = ContactForm(name=name, email=email, message=message, phone_number=phone_number,
                       subject=subject, ip_address=ip_address, status="new")
    db.session.add(form)
    db.session.flush()
    notification_service.notify(
        notification_service.recipients_query(role="admin"), kind="system",
        title=f"New contact message from {name}"[:200],
        message=(subject or message)[:300], link=f"/admin/contact-forms/{form.id}",
        data={"contact_form_id": form.id})
    return form


def get(form_id: int) -> ContactForm:
    form = db.session.get(ContactForm, form_id)
    if form is None:
        raise NotFound("Contact form not found")
    return form


def list_query(*, status: str | None = None, search: str | None = None):
    query = select(ContactForm).order_by(ContactForm.created_at.desc(), ContactForm.id.desc())
    if status:
        query = query.where(ContactForm.status == status)
    if search:
        pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%") \
            .replace("_", "\\_") + "%"
        query = query.where(or_(*(func.lower(column).like(pattern, escape="\\") for column in
                                  (ContactForm.name, ContactForm.email, ContactForm.subject,
                                   ContactForm.message))))
    return query
