"""Contact forms: public submission (validated, rate limited); the rest is admin-only."""
from __future__ import annotations

from typing import Literal

from flask import Blueprint
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from auth import admin_required, audit
from models import CONTACT_STATUSES, db
from services import contact_service
from utils.pagination import paginate
from utils.pipeline.client_address import client_ip
from utils.pipeline.rate_limits import config_limit
from utils.responses import MessageResponse, PaginationOut, Timestamp
from utils.routing import sent_changes
from utils.validation import PageQuery, StrictModel, errors, json_body, query_args, validate
from utils.validators import Email, PersonName, SafeText

bp = Blueprint("contact", __name__)
ADMIN = {"tags": ["contact"], "security": {"bearer": []}}
Status = Literal[CONTACT_STATUSES]


class ContactIn(StrictModel):
    name: PersonName
    email: Email
    # Contact forms take numbers as people write them; only the length is checked.
    phone_number: str | None = Field(None, max_length=30, pattern=r"^[0-9+()\-. ]{4,30}$")
    subject: SafeText | None = Field(None, max_length=200)
    message: SafeText = Field(min_length=1, max_length=5000)


class ContactUpdate(StrictModel):
    status: Status | None = None
    admin_note: SafeText | None = Field(None, max_length=5000)


class ContactQuery(PageQuery):
    status: Status | None = None
    search: str | None = Field(None, max_length=100)


class ContactFormOut(TypedDict):
    """A message sent through the contact form."""

    id: int
    name: str
    email: str
    phone_number: str | None
    subject: str | None
    message: str
    status: Status
    admin_note: str | None
    created_at: Timestamp
    updated_at: Timestamp


class ContactFormSavedResponse(TypedDict):
    """The contact form after it was received or changed."""

    message: str
    contact_form: ContactFormOut


class ContactFormResponse(TypedDict):
    """A contact form."""

    contact_form: ContactFormOut


class ContactFormListResponse(TypedDict):
    """A page of contact forms, newest first."""

    contact_forms: list[ContactFormOut]
    pagination: PaginationOut


@bp.post("/contact-forms")
@config_limit("RATE_LIMIT_CONTACT")
@validate(json=ContactIn, resp=Response(HTTP_201=ContactFormSavedResponse, **errors(429)),
          tags=["contact"])
def submit():
    """Write to the academy (no account needed); the admins are notified."""
    form = contact_service.submit(**json_body().model_dump(), ip_address=client_ip())
    db.session.commit()
    return {"message": "Thank you, your message has been received",
            "contact_form": form.to_dict()}, 201


@bp.get("/contact-forms")
@admin_required
@validate(query=ContactQuery, resp=Response(HTTP_200=ContactFormListResponse, **errors(401, 403)),
          **ADMIN)
def list_forms():
    """Contact forms, newest first; filter by status, search name, e-mail, subject, message."""
    args = query_args()
    rows, meta = paginate(contact_service.list_query(status=args.status, search=args.search),
                          args.page, args.per_page)
    return {"contact_forms": [row.to_dict() for row in rows], "pagination": meta}


@bp.get("/contact-forms/<int:form_id>")
@admin_required
@validate(resp=Response(HTTP_200=ContactFormResponse, **errors(401, 403, 404)), **ADMIN)
def get_form(form_id: int):
    """A contact form."""
    return {"contact_form": contact_service.get(form_id).to_dict()}


@bp.put("/contact-forms/<int:form_id>")
@admin_required
@validate(json=ContactUpdate, resp=Response(HTTP_200=ContactFormSavedResponse,
                                            **errors(401, 403, 404)), **ADMIN)
def update_form(form_id: int):
    """Set the status (new, in_progress, resolved, closed) or an internal note."""
    form = contact_service.get(form_id)
    changes = sent_changes(json_body(), clearable=("admin_note",))
    before = {k: getattr(form, k) for k in changes}
    for name, value in changes.items():
        setattr(form, name, value)
    audit("contact_form.update", "contact_form", form.id, before=before, after=changes)
    db.session.commit()
    return {"message": "Contact form updated", "contact_form": form.to_dict()}


@bp.delete("/contact-forms/<int:form_id>")
@admin_required
@validate(resp=Response(HTTP_200=MessageResponse, **errors(401, 403, 404)), **ADMIN)
def delete_form(form_id: int):
    """Delete a contact form (audited)."""
    form = contact_service.get(form_id)
    audit("contact_form.delete", "contact_form", form.id, email=form.email)
    db.session.delete(form)
    db.session.commit()
    return {"message": "Contact form deleted"}
