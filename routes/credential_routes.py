"""Open Badges 3.0 credentials, public: a credential by its certificate number, the signed
revocation status lists, and verification of a credential or certificate PDF anyone pastes
or uploads. (The holder's own download is /certificates/<id>/credential.)"""
from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from flask import Blueprint, current_app, request
from pydantic import BaseModel, ConfigDict, Field
from spectree import Response
from typing_extensions import TypedDict

from models import db
from utils.pipeline.rate_limits import config_limit
from services import certificate_service
from services.credentials import status_list, verification
from utils.errors import NotFound, ValidationError
from utils.responses import (
    JSON_LD,
    Context,
    DataIntegrityProofOut,
    Did,
    OpenBadgeCredentialOut,
    Timestamp,
)
from utils.schemas import CredentialCheckForm
from utils.validation import document, errors

bp = Blueprint("credentials", __name__)
PUBLIC = {"tags": ["credentials", "public"]}
UPLOAD_LIMIT = 5 * 1024 * 1024  # a certificate PDF is ~10 KB, a credential ~3 KB


class CredentialCheckIn(BaseModel):
    """A credential to check, as the JSON body itself (any verifiable credential: its fields
    are the specification's), or wrapped as `{"credential": {...}}`."""

    model_config = ConfigDict(extra="allow")

    credential: dict[str, Any] | None = Field(
        None, description="The credential, when it is sent wrapped")


class CredentialSummaryOut(TypedDict):
    """What the checked credential states, for a person to read (texts of at most 500
    characters; null where it says nothing readable)."""

    id: str | None
    name: str | None
    description: str | None
    issuer: Annotated[str | None, Field(description="The issuer's name")]
    issuer_id: str | None
    achievement: str | None
    certificate_number: str | None
    valid_from: str | None
    valid_until: str | None


class CredentialVerdictResponse(TypedDict):
    """A verifier's verdict on a credential or a certificate PDF."""

    valid: Annotated[bool, Field(description="Genuine, intact, in its validity, not revoked")]
    result: Literal[verification.VALID, verification.REVOKED, verification.TAMPERED,
                    verification.UNKNOWN_ISSUER, verification.EXPIRED,
                    verification.NOT_YET_VALID, verification.STATUS_UNAVAILABLE,
                    verification.UNSIGNED, verification.MALFORMED]
    message: Annotated[str, Field(description="What the result means, in a sentence")]
    checks: Annotated[dict[str, str], Field(
        description="Each check made and what it found (signature, issuer, dates, status; "
                    "for a PDF its signature, signer and attached credential)",
        examples=[{"signature": "valid", "issuer": "did:web:academy.example.com",
                   "dates": "within validity", "status": "not revoked"}])]
    credential: CredentialSummaryOut | None


class BitstringStatusListOut(TypedDict):
    """The status bits: bit `statusListIndex` of a credential is set when it is revoked."""

    id: str
    type: Literal["BitstringStatusList"]
    statusPurpose: Literal["revocation"]
    encodedList: Annotated[str, Field(
        description="The bits, GZIP-compressed, base64url (multibase 'u' prefix)")]
    ttl: Annotated[int, Field(description="How long a copy may be used, in milliseconds")]


StatusListCredentialOut = TypedDict("StatusListCredentialOut", {
    "@context": Context,
    "id": str,
    "type": Annotated[list[str], Field(examples=[["VerifiableCredential",
                                                  "BitstringStatusListCredential"]])],
    "issuer": Did,
    "validFrom": Timestamp,
    "credentialSubject": BitstringStatusListOut,
    "proof": DataIntegrityProofOut,
})
StatusListCredentialOut.__doc__ = (
    "A signed Bitstring Status List credential (W3C Bitstring Status List 1.0): which "
    "credentials of this list are revoked.")


def _json_ld(body: str, max_age: int = 0):
    headers = {"Content-Type": JSON_LD, "Access-Control-Allow-Origin": "*"}
    headers["Cache-Control"] = f"public, max-age={max_age}" if max_age else "no-cache"
    return body, 200, headers


@bp.get("/status/<int:list_id>")
@document(resp=Response("HTTP_200", **errors(404)),
          media={200: {JSON_LD: StatusListCredentialOut}}, **PUBLIC)
def status_list_credential(list_id: int):
    """A Bitstring Status List credential (revocation), signed by the academy; verifiers fetch
    it to check a credential's `credentialStatus`."""
    body = status_list.published(list_id)
    if body is None:
        raise NotFound("No status list has this id")
    db.session.commit()  # a key signing for the first time was recorded
    return _json_ld(body, current_app.config["CREDENTIAL_STATUS_CACHE_SECONDS"])


@bp.post("/verify")
@config_limit("RATE_LIMIT_VERIFY")
@document(json=CredentialCheckIn, form=CredentialCheckForm,
          resp=Response(HTTP_200=CredentialVerdictResponse, **errors(413, 415, 422, 429)),
          **PUBLIC)
def verify_credential():
    """Verify a credential (the JSON body, or a `file` upload: its JSON or the certificate
    PDF). 200 with `result`: valid, revoked, tampered, unknown_issuer, expired, not_yet_valid,
    status_unavailable, unsigned or malformed, and `message`, a sentence saying what it means."""
    upload = request.files.get("file")
    if upload is not None:
        data = upload.stream.read(UPLOAD_LIMIT + 1)
    elif request.is_json:
        data = request.get_data(cache=False)[:UPLOAD_LIMIT + 1]
    elif request.mimetype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        data = (request.form.get("credential") or "").encode("utf-8")
    else:
        data = b""
    if len(data) > UPLOAD_LIMIT:
        raise ValidationError("Invalid input", details={"file": "larger than 5 MB"})
    if not data.strip():
        raise ValidationError("Invalid input", details={
            "credential": "send the credential as the JSON body, or a file (JSON or PDF)"})
    if data.lstrip()[:1] == b"{":
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("credential"), dict):
            data = json.dumps(parsed["credential"]).encode("utf-8")  # {"credential": {...}}
    verdict = verification.verify_upload(data)
    db.session.commit()
    return verdict.to_dict()


@bp.get("/<string:number>")
@config_limit("RATE_LIMIT_VERIFY")
@document(resp=Response("HTTP_200", **errors(404, 429)),
          media={200: {JSON_LD: OpenBadgeCredentialOut}}, **PUBLIC)
def credential_by_number(number: str):
    """The signed Open Badges 3.0 credential of a certificate, by its number (what the
    credential's `id` points to)."""
    certificate = certificate_service.by_number(number)
    if certificate is None:
        raise NotFound("No certificate has this number")
    credential = certificate_service.credential_of(certificate)
    db.session.commit()
    return _json_ld(certificate.credential_json or json.dumps(credential))
