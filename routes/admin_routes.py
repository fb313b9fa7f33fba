"""Administration under /admin (users, courses, payments and analytics arrive with their
domains): blocked IP addresses."""
from __future__ import annotations

from typing import Literal

from flask import Blueprint, request
from pydantic import BaseModel, Field, IPvAnyAddress
from spectree import Response

from auth import admin_required, current_user
from models import AuditLog, Certificate, RefundRequest, db
from services import certificate_service, settlement_service
from utils import security
from utils.errors import NotFound
from utils.helpers import paginate
from utils.middleware import current_request_id
from routes.common import Envelope
from utils.validation import PageQuery, StrictModel, errors, json_body, query_args, validate

bp = Blueprint("admin", __name__)


def audit(action: str, target_type: str | None = None, target_id: int | None = None,
          **details) -> None:
    """Record an admin write in the audit log (committed with the change it describes)."""
    db.session.add(AuditLog(
        actor_id=current_user().id, action=action, target_type=target_type,
        target_id=target_id, details=details or None, ip_address=security.client_ip(),
        request_id=current_request_id()))


class BlockIn(StrictModel):
    ip_address: IPvAnyAddress
    reason: str = Field("blocked by an administrator", max_length=255)
    duration_seconds: int | None = Field(None, ge=60, le=60 * 60 * 24 * 365)


class BlockedIPOut(BaseModel):
    id: int
    ip_address: str
    reason: str | None
    blocked_until: str | None
    created_at: str | None


class BlockedIPList(BaseModel):
    blocked_ips: list[BlockedIPOut]
    pagination: dict


class BlockedIPEnvelope(BaseModel):
    message: str
    blocked_ip: BlockedIPOut


class MessageOut(BaseModel):
    message: str


@bp.get("/blocked-ips")
@admin_required
@validate(query=PageQuery, resp=Response(HTTP_200=BlockedIPList, **errors(401, 403)),
          tags=["admin"], security={"bearer": []})
def list_blocked_ips():
    """Addresses blocked now (automatically or by an admin), newest first."""
    args = query_args()
    rows, meta = paginate(security.active_blocks(), args.page, args.per_page)
    return {"blocked_ips": [row.to_dict() for row in rows], "pagination": meta}


@bp.post("/blocked-ips")
@admin_required
@validate(json=BlockIn, resp=Response(HTTP_201=BlockedIPEnvelope, **errors(401, 403)),
          tags=["admin"], security={"bearer": []})
def block_ip():
    """Block an address (for `duration_seconds`, or until lifted)."""
    body = json_body()
    ip = str(body.ip_address)
    audit("blocked_ip.create", "blocked_ip", None, ip_address=ip, reason=body.reason,
          duration_seconds=body.duration_seconds)
    row = security.block_ip(ip, seconds=body.duration_seconds, reason=body.reason,
                            by_user_id=current_user().id)
    return {"message": "Address blocked", "blocked_ip": row.to_dict()}, 201


@bp.delete("/blocked-ips/<string:ip>")
@admin_required
@validate(resp=Response(HTTP_200=MessageOut, **errors(401, 403, 404)), tags=["admin"],
          security={"bearer": []})
def unblock_ip(ip: str):
    """Lift the block of an address."""
    if not security.unblock_ip(ip[:45]):
        raise NotFound("This address is not blocked")
    audit("blocked_ip.delete", "blocked_ip", None, ip_address=ip[:45])
    db.session.commit()
    return {"message": "Block lifted"}


# --- certificates -----------------------------------------------------------------------------

class RevokeIn(StrictModel):
    reason: str = Field(min_length=3, max_length=500)


@bp.put("/certificates/<int:certificate_id>/revoke")
@admin_required
@validate(json=RevokeIn, resp=Response(HTTP_200=Envelope, **errors(401, 403, 404, 409)),
          tags=["admin", "certificates"], security={"bearer": []})
def revoke_certificate(certificate_id: int):
    """Revoke a certificate; verification then says so (it never vanishes)."""
    certificate = db.session.get(Certificate, certificate_id)
    if certificate is None:
        raise NotFound("Certificate not found")
    reason = json_body().reason
    certificate_service.revoke(certificate, reason)
    audit("certificate.revoke", "certificate", certificate.id, reason=reason,
          certificate_number=certificate.certificate_number)
    db.session.commit()
    return {"message": "Certificate revoked", "certificate": certificate.to_dict()}


# --- refund requests --------------------------------------------------------------------------

class RefundQuery(PageQuery):
    status: str | None = Field(None, pattern="^(pending|approved|rejected|processed|failed)$")


class RefundDecisionIn(StrictModel):
    action: Literal["approve", "reject"]
    note: str | None = Field(None, max_length=2000)


@bp.get("/refund-requests")
@admin_required
@validate(query=RefundQuery, resp=Response(HTTP_200=Envelope, **errors(401, 403)),
          tags=["admin", "payments"], security={"bearer": []})
def list_refund_requests():
    """Refund requests, oldest pending first."""
    args = query_args()
    query = db.select(RefundRequest).order_by(RefundRequest.created_at.asc(), RefundRequest.id)
    if args.status:
        query = query.where(RefundRequest.status == args.status)
    rows, meta = paginate(query, args.page, args.per_page)
    return {"refund_requests": [r.to_dict() for r in rows], "pagination": meta}


@bp.put("/refund-requests/<int:request_id>")
@admin_required
@validate(json=RefundDecisionIn, resp=Response(HTTP_200=Envelope,
                                               **errors(401, 403, 404, 409, 502, 503)),
          tags=["admin", "payments"], security={"bearer": []})
def decide_refund_request(request_id: int):
    """Approve (refunds through the gateway, revokes the enrollment and certificate) or reject."""
    refund = db.session.get(RefundRequest, request_id)
    if refund is None:
        raise NotFound("Refund request not found")
    body = json_body()
    admin = current_user()
    if body.action == "approve":
        settlement_service.approve_refund(refund, admin, body.note)
    else:
        settlement_service.reject_refund(refund, admin, body.note)
    audit(f"refund_request.{body.action}", "refund_request", refund.id,
          payment_id=refund.payment_id, note=body.note)
    db.session.commit()
    return {"message": f"Refund request {refund.status}", "refund_request": refund.to_dict()}
