"""Certificates: the holder's list and downloads, generation, and public verification."""
from __future__ import annotations

from typing import Annotated, Literal

from flask import Blueprint
from pydantic import Field
from spectree import Response
from typing_extensions import TypedDict

from auth import admin_required, current_user, login_required
from models import Certificate, Enrollment, db
from services import certificate_service, file_service, jobs
from utils.errors import NotFound
from utils.pipeline.rate_limits import config_limit
from utils.responses import (
    CertificateListResponse,
    CertificateOut,
    CertificateSavedResponse,
    Day,
    Did,
    JSON_LD,
    JobAcceptedResponse,
    OpenBadgeCredentialOut,
    SignedCredential,
    Timestamp,
)
from utils.routing import accepted
from utils.validation import (
    PageQuery,
    StrictModel,
    document,
    errors,
    json_body,
    query_args,
    validate,
)

bp = Blueprint("certificates", __name__)
AUTH = {"tags": ["certificates"], "security": {"bearer": []}}


class CertificateQuery(PageQuery):
    course_id: int | None = Field(None, ge=1)
    user_id: int | None = Field(None, ge=1, description="admins only")
    status: str | None = Field(None, pattern="^(valid|revoked)$")


class GenerateIn(StrictModel):
    user_id: int | None = Field(None, ge=1, description="admins: issue for this student")


class CertificateWithCredentialOut(CertificateOut):
    """A certificate with its signed credential."""

    credential: SignedCredential


class CertificateResponse(TypedDict):
    """A certificate."""

    certificate: CertificateWithCredentialOut


class CertificateVerificationResponse(TypedDict):
    """What anyone holding a certificate's number may learn: nothing private."""

    valid: Annotated[bool, Field(description="Issued and not revoked")]
    status: Literal["valid", "revoked"]
    certificate_number: str
    holder_name: str
    course_title: str
    instructor_name: str | None
    completion_date: Day
    issued_at: Timestamp
    revoked_at: Timestamp | None
    sha256: Annotated[str | None, Field(description="SHA-256 of the issued PDF: compare a copy")]
    credential_url: Annotated[str, Field(
        description="The signed Open Badges 3.0 credential, public",
        examples=["https://academy.example.com/api/v1/credentials/AIFA-12-34-9F2C41D0AB"])]
    issuer_did: Did
    pdf_signed: Annotated[bool, Field(
        description="The issued PDF carries the academy's signature (false: checked by sha256)")]


class CertificateNotFoundResponse(TypedDict):
    """No certificate has this number (the error shape, with `valid: false`)."""

    valid: Literal[False]
    error: str
    code: Literal["certificate_not_found"]


def readable_certificate(certificate_id: int) -> Certificate:
    """The holder's own certificate, or any for an admin; 404 otherwise."""
    user = current_user()
    certificate = db.session.get(Certificate, certificate_id)
    if certificate is None or (certificate.user_id != user.id and user.role != "admin"):
        raise NotFound("Certificate not found")
    return certificate


@bp.get("")
@bp.get("/get-certificate")
@login_required
@validate(query=CertificateQuery, resp=Response(HTTP_200=CertificateListResponse, **errors(401)),
          **AUTH)
def list_certificates():
    """The signed-in user's certificates (an admin's: all, filterable)."""
    args = query_args()
    user = current_user()
    query = certificate_service.list_query(
        user_id=user.id if user.role != "admin" else args.user_id or None,
        course_id=args.course_id or None, status=args.status or None)
    return certificate_service.page(query, args.page, args.per_page)


@bp.get("/<int:certificate_id>")
@login_required
@validate(resp=Response(HTTP_200=CertificateResponse, **errors(401, 404)), **AUTH)
def get_certificate(certificate_id: int):
    """A certificate (the holder or an admin), with its download and verification URLs and
    its signed Open Badges 3.0 credential (made now for a certificate issued before
    credentials were)."""
    certificate = readable_certificate(certificate_id)
    credential = certificate_service.credential_of(certificate)
    db.session.commit()
    return {"certificate": {**certificate.to_dict(), "credential": credential}}


@bp.get("/<int:certificate_id>/credential")
@login_required
@document(resp=Response("HTTP_200", **errors(401, 404)),
          media={200: {JSON_LD: OpenBadgeCredentialOut}}, **AUTH)
def download_credential(certificate_id: int):
    """The certificate's Open Badges 3.0 credential (signed JSON), to keep or import into a
    wallet (the holder or an admin)."""
    certificate = readable_certificate(certificate_id)
    certificate_service.credential_of(certificate)
    db.session.commit()
    return certificate.credential_json, 200, {
        "Content-Type": JSON_LD,
        "Content-Disposition": f'attachment; filename="{certificate.certificate_number}.json"',
        "Cache-Control": "private, no-store"}


@bp.get("/<int:certificate_id>/download")
@bp.get("/download/<int:certificate_id>")
@login_required
@document(resp=Response("HTTP_200", **errors(401, 404)),
          media={200: {"application/pdf": "The certificate's PDF"}}, **AUTH)
def download(certificate_id: int):
    """The certificate PDF (the holder or an admin)."""
    certificate = readable_certificate(certificate_id)
    path = certificate_service.pdf_path(certificate)
    return file_service.serve(str(path.relative_to(file_service.storage().root)),
                              mime_type="application/pdf", as_attachment=True,
                              download_name=f"{certificate.certificate_number}.pdf")


@bp.get("/verify/<string:number>")
@config_limit("RATE_LIMIT_VERIFY")
@validate(resp=Response(HTTP_200=CertificateVerificationResponse,
                        HTTP_404=CertificateNotFoundResponse, **errors(429)),
          tags=["certificates", "public"])
def verify(number: str):
    """Public: is this certificate number genuine, and what does it certify? Nothing private."""
    certificate = certificate_service.by_number(number)
    if certificate is None:
        return {"valid": False, "error": "No certificate has this number",
                "code": "certificate_not_found"}, 404
    return certificate_service.public_facts(certificate)


@bp.post("/generate/<int:course_id>")
@login_required
@validate(json=GenerateIn, resp=Response(HTTP_201=CertificateSavedResponse,
                                         HTTP_200=CertificateSavedResponse,
                                         **errors(401, 403, 404)), **AUTH)
def generate_for_course(course_id: int):
    """The student's certificate for a completed course (an admin may name `user_id`)."""
    user = current_user()
    body = json_body()
    target = body.user_id if (user.role == "admin" and body.user_id) else user.id
    return _issued(certificate_service.enrollment_of(target, course_id))


@bp.post("/generate-for-enrollment/<int:enrollment_id>")
@admin_required
@validate(resp=Response(HTTP_201=CertificateSavedResponse, HTTP_200=CertificateSavedResponse,
                        **errors(401, 403, 404)), **AUTH)
def generate_for_enrollment(enrollment_id: int):
    """Admin: the certificate of an enrollment (the README's generate/{enrollment_id})."""
    enrollment = db.session.get(Enrollment, enrollment_id)
    if enrollment is None:
        raise NotFound("Enrollment not found")
    return _issued(enrollment)


def _issued(enrollment: Enrollment):
    """201 with a new certificate, 200 with the one already issued (also to the losers of a
    race)."""
    certificate, created = certificate_service.issue(enrollment)
    db.session.commit()
    data = certificate.to_dict()
    if created:
        return {"message": "Certificate issued", "certificate": data}, 201
    return {"message": "Certificate already issued", "certificate": data}, 200


@bp.post("/bulk-generate/<int:course_id>")
@admin_required
@validate(resp=Response(HTTP_202=JobAcceptedResponse, **errors(401, 403, 404)), **AUTH)
def bulk_generate(course_id: int):
    """Admin: issue for every completed enrollment of the course that has none, as a job (202;
    its result counts issued, skipped and failed)."""
    job = certificate_service.start_bulk_issue(course_id, current_user().id)
    db.session.commit()
    return accepted(jobs.launch(job), "Certificate issuance started")
