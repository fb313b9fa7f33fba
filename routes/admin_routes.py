"""Administration under /admin (users, courses, payments and analytics arrive with their
domains): blocked IP addresses."""
from __future__ import annotations

from flask import Blueprint, request
from pydantic import BaseModel, Field, IPvAnyAddress
from spectree import Response

from auth import admin_required, current_user
from models import AuditLog, Certificate, db
from services import certificate_service
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
