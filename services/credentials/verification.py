"""What a verifier concludes about a credential or a certificate PDF, with a plain sentence
for each outcome. The checks are the ones any verifier makes, done here with the academy's
keys: the Data Integrity proof (eddsa-rdfc-2022) against a key the DID document publishes, the
issuer, the validity dates, and the revocation bit in the signed status list."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import current_app

from services.credentials import data_integrity, keys, pdf_signing, status_list
from services.credentials.data_integrity import ProofCheck
from utils.helpers import utcnow

CLOCK_SKEW = timedelta(minutes=5)
STATUS_URL = re.compile(r"/api/v1/credentials/status/(\d{1,12})$")

VALID, REVOKED, TAMPERED, UNKNOWN_ISSUER = "valid", "revoked", "tampered", "unknown_issuer"
EXPIRED, NOT_YET_VALID, MALFORMED = "expired", "not_yet_valid", "malformed"
STATUS_UNAVAILABLE, UNSIGNED = "status_unavailable", "unsigned"


def _sentence(result: str) -> str:
    app_name = current_app.config["APP_NAME"]
    return {
        VALID: (f"Valid: this credential was issued and signed by {app_name}, nothing in it "
                "has changed since, and it has not been revoked."),
        REVOKED: (f"Revoked: this credential was issued by {app_name}, but it has been revoked "
                  "and no longer certifies anything."),
        TAMPERED: ("Tampered: this credential was changed after it was signed, so nothing in it "
                   "can be trusted."),
        UNKNOWN_ISSUER: (f"Unknown issuer: this was not signed with a key of {app_name}, so we "
                         "cannot vouch for it."),
        EXPIRED: "Expired: this credential is past the end of its validity.",
        NOT_YET_VALID: "Not yet valid: this credential only becomes valid at a later date.",
        MALFORMED: "Not a credential: this is not a verifiable credential that can be read.",
        UNSIGNED: ("Unsigned: this PDF carries no signature. A certificate issued before PDFs "
                   "were signed is checked on the verification page of its number, against "
                   "the file that was issued."),
        STATUS_UNAVAILABLE: ("Unconfirmed: the signature is genuine, but whether this credential "
                             "has been revoked could not be checked."),
    }[result]


@dataclass
class Verdict:
    result: str
    checks: dict[str, str] = field(default_factory=dict)
    credential: dict | None = None  # what it says, for display

    @property
    def valid(self) -> bool:
        return self.result == VALID

    @property
    def message(self) -> str:
        return _sentence(self.result)

    def to_dict(self) -> dict:
        return {"valid": self.valid, "result": self.result, "message": self.message,
                "checks": self.checks, "credential": self.credential}


def _issuer_id(credential: dict) -> Any:
    issuer = credential.get("issuer")
    return issuer.get("id") if isinstance(issuer, dict) else issuer


def _date(value: Any) -> datetime | None:
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def summary(credential: dict) -> dict:
    """What the credential states, for a person to read (only strings, length-bounded)."""
    def text(value: Any) -> str | None:
        return value[:500] if isinstance(value, str) else None

    subject = credential.get("credentialSubject")
    subject = subject if isinstance(subject, dict) else {}
    achievement = subject.get("achievement")
    achievement = achievement if isinstance(achievement, dict) else {}
    issuer = credential.get("issuer")
    return {
        "id": text(credential.get("id")),
        "name": text(credential.get("name")),
        "description": text(credential.get("description")),
        "issuer": text(issuer.get("name")) if isinstance(issuer, dict) else text(issuer),
        "issuer_id": text(_issuer_id(credential)),
        "achievement": text(achievement.get("name")),
        "certificate_number": text(subject.get("licenseNumber")),
        "valid_from": text(credential.get("validFrom")),
        "valid_until": text(credential.get("validUntil")),
    }


def _is_credential(value: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("@context"), list):
        return False
    types = value.get("type")
    types = types if isinstance(types, list) else [types]
    return "VerifiableCredential" in types


def _check_status(credential: dict) -> str:
    """REVOKED, VALID (bit clear) or STATUS_UNAVAILABLE, from our signed status list."""
    entry = credential.get("credentialStatus")
    if isinstance(entry, list) and len(entry) == 1:
        entry = entry[0]
    if not isinstance(entry, dict) or entry.get("type") != "BitstringStatusListEntry":
        return STATUS_UNAVAILABLE
    url = entry.get("statusListCredential")
    base = current_app.config["PUBLIC_BASE_URL"]
    match = STATUS_URL.search(url) if isinstance(url, str) and url.startswith(base) else None
    index = entry.get("statusListIndex")
    if match is None or not (isinstance(index, str) and index.isdigit() and len(index) < 12):
        return STATUS_UNAVAILABLE
    body = status_list.published(int(match.group(1)))
    if body is None:
        return STATUS_UNAVAILABLE
    listed = json.loads(body)
    if (data_integrity.verify_proof(listed, keys.credential_public_key) is not ProofCheck.VALID
            or _issuer_id(listed) != keys.issuer_did()
            or listed["credentialSubject"].get("statusPurpose") != entry.get("statusPurpose")):
        return STATUS_UNAVAILABLE
    bit = status_list.bit_is_set(listed["credentialSubject"]["encodedList"], int(index))
    if bit is None:
        return STATUS_UNAVAILABLE
    return REVOKED if bit else VALID


def verify(credential: Any, now: datetime | None = None) -> Verdict:
    """Check a credential (a parsed JSON object)."""
    if not _is_credential(credential):
        return Verdict(MALFORMED, {"format": "not a verifiable credential"})
    verdict = Verdict(MALFORMED, credential=summary(credential))
    proof = data_integrity.verify_proof(credential, keys.credential_public_key)
    verdict.checks["signature"] = proof.value
    if proof in (ProofCheck.NO_PROOF, ProofCheck.UNSUPPORTED, ProofCheck.UNKNOWN_KEY):
        verdict.result = UNKNOWN_ISSUER
        return verdict
    if proof is not ProofCheck.VALID:
        verdict.result = TAMPERED
        return verdict
    # The proof holds, so the document is as signed; it must also say we issued it.
    if _issuer_id(credential) != keys.issuer_did():
        verdict.checks["issuer"] = "not the signer"
        verdict.result = UNKNOWN_ISSUER
        return verdict
    verdict.checks["issuer"] = keys.issuer_did()
    now = now or utcnow()
    valid_from, valid_until = _date(credential.get("validFrom")), credential.get("validUntil")
    if valid_from is None:
        verdict.checks["dates"] = "no readable validFrom"
        return verdict
    if valid_from > now + CLOCK_SKEW:
        verdict.checks["dates"] = "before validFrom"
        verdict.result = NOT_YET_VALID
        return verdict
    if valid_until is not None:
        until = _date(valid_until)
        if until is None or until < now - CLOCK_SKEW:
            verdict.checks["dates"] = "after validUntil"
            verdict.result = EXPIRED
            return verdict
    verdict.checks["dates"] = "within validity"
    status = _check_status(credential)
    verdict.checks["status"] = {VALID: "not revoked", REVOKED: "revoked"}.get(status, "unknown")
    verdict.result = status
    return verdict


JSON_LIMIT = 256 * 1024  # a credential is a few KB; canonicalizing megabytes is a DoS


def verify_text(text: str | bytes) -> Verdict:
    """Check a credential given as JSON text."""
    if len(text) > JSON_LIMIT:
        return Verdict(MALFORMED, {"format": "larger than any credential"})
    try:
        parsed = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Verdict(MALFORMED, {"format": "not JSON"})
    return verify(parsed)


@dataclass
class PdfVerdict:
    signed: bool
    verdict: Verdict | None = None  # None: an unsigned PDF (the hash check decides)
    signer: str | None = None


def verify_pdf(data: bytes) -> PdfVerdict:
    """Check a certificate PDF: its signature, then the credential it carries."""
    checked = pdf_signing.check(data)
    if not checked.signed:
        return PdfVerdict(signed=False)
    pdf_checks = {"pdf_signature": "intact" if checked.intact and checked.whole_file
                  else "broken", "pdf_signer": "academy" if checked.ours else "unknown"}
    if not (checked.intact and checked.whole_file):
        return PdfVerdict(True, Verdict(TAMPERED, pdf_checks), checked.signer)
    if not checked.ours:
        return PdfVerdict(True, Verdict(UNKNOWN_ISSUER, pdf_checks), checked.signer)
    if checked.attachment is None:
        return PdfVerdict(True, Verdict(MALFORMED, {**pdf_checks, "attachment": "missing"}),
                          checked.signer)
    verdict = verify_text(checked.attachment)
    verdict.checks = {**pdf_checks, **verdict.checks}
    return PdfVerdict(True, verdict, checked.signer)


def verify_upload(data: bytes) -> Verdict:
    """A pasted or uploaded file: a PDF or a credential's JSON."""
    if data.lstrip()[:5] == b"%PDF-":
        outcome = verify_pdf(data)
        if outcome.verdict is None:
            return Verdict(UNSIGNED, {"pdf_signature": "none"})
        return outcome.verdict
    return verify_text(data)
