"""Open Badges 3.0 credentials, public: a credential by its certificate number, the signed
revocation status lists, and verification of a credential or certificate PDF anyone pastes
or uploads. (The holder's own download is /certificates/<id>/credential.)"""
from __future__ import annotations

import json

from flask import Blueprint, current_app, request
from spectree import Response

from models import db
from utils.pipeline.rate_limits import config_limit
from utils.routing import Envelope
from services import certificate_service
from services.credentials import status_list, verification
from utils.errors import NotFound, ValidationError
from utils.validation import document, errors

bp = Blueprint("credentials", __name__)
PUBLIC = {"tags": ["credentials", "public"]}
JSON_LD = "application/ld+json"
UPLOAD_LIMIT = 5 * 1024 * 1024  # a certificate PDF is ~10 KB, a credential ~3 KB


def _json_ld(body: str, max_age: int = 0):
    headers = {"Content-Type": JSON_LD, "Access-Control-Allow-Origin": "*"}
    headers["Cache-Control"] = f"public, max-age={max_age}" if max_age else "no-cache"
    return body, 200, headers


@bp.get("/status/<int:list_id>")
@document(resp=Response("HTTP_200", **errors(404)), **PUBLIC)
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
@document(resp=Response(HTTP_200=Envelope, **errors(413, 415, 422, 429)), **PUBLIC)
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
@document(resp=Response("HTTP_200", **errors(404, 429)), **PUBLIC)
def credential_by_number(number: str):
    """The signed Open Badges 3.0 credential of a certificate, by its number (what the
    credential's `id` points to)."""
    certificate = certificate_service.by_number(number)
    if certificate is None:
        raise NotFound("No certificate has this number")
    credential = certificate_service.credential_of(certificate)
    db.session.commit()
    return _json_ld(certificate.credential_json or json.dumps(credential))
