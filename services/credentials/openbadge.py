"""The Open Badges 3.0 credential of a certificate (an `OpenBadgeCredential`, W3C Verifiable
Credentials Data Model 2.0), signed when the certificate is issued and kept as issued.

- issuer: the academy's `Profile`, identified by its did:web (name, URL, image);
- credentialSubject: an `AchievementSubject` naming the learner by a salted SHA-256 of the
  e-mail address (an `IdentityObject`), so the holder can prove it is theirs without the
  address being published; the only other personal data is the name printed on the
  certificate, in the credential's description;
- achievement: the course (name, description, criteria) and its instructor as its creator;
- validFrom / awardedDate: when the certificate was issued; the certificate number is the
  credential's URL and the subject's `licenseNumber`;
- credentialStatus: its entry in a revocation status list.
"""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import uuid
from html import escape

from flask import current_app

from models import Certificate, Course, User, db
from services.credentials import contexts, data_integrity, keys, status_list
from utils.helpers import utcnow

DESCRIPTION_LIMIT = 2000


def credential_url(number: str) -> str:
    return f"{current_app.config['PUBLIC_BASE_URL']}/api/v1/credentials/{number}"


def identity_hash(email: str, salt: str) -> str:
    """OB 3.0 IdentityHash: 'sha256$' and the hex SHA-256 of the identifier then the salt."""
    return "sha256$" + hashlib.sha256((email.strip().lower() + salt).encode("utf-8")).hexdigest()


def issuer_image() -> str:
    """CREDENTIAL_ISSUER_IMAGE_URL, else a small SVG with the academy's initials (a data URL:
    the credential needs nothing fetched to display)."""
    configured = current_app.config.get("CREDENTIAL_ISSUER_IMAGE_URL")
    if configured:
        return configured
    return _initials_svg(current_app.config["APP_NAME"])


def _initials_svg(name: str) -> str:
    initials = "".join(word[0] for word in name.split() if word[:1].isalnum())[:3].upper() or "A"
    svg = ('<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128" viewBox="0 0 128 128">'
           '<rect width="128" height="128" rx="16" fill="#1b2a4a"/>'
           '<text x="64" y="78" font-family="sans-serif" font-size="44" font-weight="700" '
           f'fill="#b8912f" text-anchor="middle">{escape(initials)}</text></svg>')
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def issuer_profile() -> dict:
    cfg = current_app.config
    return {"id": keys.issuer_did(), "type": ["Profile"], "name": cfg["APP_NAME"],
            "url": cfg["PUBLIC_BASE_URL"], "image": {"id": issuer_image(), "type": "Image"}}


def _achievement(certificate: Certificate, course: Course | None) -> dict:
    base = current_app.config["PUBLIC_BASE_URL"]
    app_name = current_app.config["APP_NAME"]
    description = ((course.description or course.short_description) if course else None) \
        or f"The course {certificate.course_title} at {app_name}."
    achievement = {
        "id": f"{base}/api/v1/public/courses/{certificate.course_id}",
        "type": ["Achievement"],
        "achievementType": "CertificateOfCompletion",
        "name": certificate.course_title,
        "description": description[:DESCRIPTION_LIMIT],
        "criteria": {"narrative": f"Complete every lesson of the course "
                                  f"{certificate.course_title} at {app_name}."},
    }
    if certificate.instructor_name and course is not None:
        # A stable identifier that says nothing about the account behind it.
        creator = uuid.uuid5(uuid.NAMESPACE_URL, f"{keys.issuer_did()}/instructors/"
                                                 f"{course.instructor_id}")
        achievement["creator"] = {"id": f"urn:uuid:{creator}", "type": ["Profile"],
                                  "name": certificate.instructor_name}
    return achievement


def build(certificate: Certificate, email: str, salt: str) -> dict:
    """The unsigned credential (the certificate has its status entry)."""
    course = db.session.get(Course, certificate.course_id)
    app_name = current_app.config["APP_NAME"]
    issued = data_integrity.timestamp(certificate.issued_at)
    completed = certificate.completion_date.strftime("%d %B %Y")
    return {
        "@context": [contexts.VC_V2, contexts.OB_V3],
        "id": credential_url(certificate.certificate_number),
        "type": ["VerifiableCredential", "OpenBadgeCredential"],
        "name": f"Certificate of Completion: {certificate.course_title}",
        "description": (f"{certificate.holder_name} completed the course "
                        f"{certificate.course_title} at {app_name} on {completed}."),
        "issuer": issuer_profile(),
        "validFrom": issued,
        "awardedDate": issued,
        "credentialSubject": {
            "type": ["AchievementSubject"],
            "identifier": [{"type": "IdentityObject", "identityHash": identity_hash(email, salt),
                            "identityType": "emailAddress", "hashed": True, "salt": salt}],
            "licenseNumber": certificate.certificate_number,
            "achievement": _achievement(certificate, course),
        },
        "credentialStatus": status_list.entry(certificate),
        # No credentialSchema: its usual type, 1EdTechJsonSchemaValidator2019, is defined by
        # no context, and strict JSON-LD processors (safe mode) refuse the credential for it.
    }


def issue(certificate: Certificate) -> dict:
    """Sign and keep the credential of a flushed certificate (which may be one issued before
    credentials were: it gets its status entry now). Returns the credential."""
    status_list.assign(certificate)
    user = db.session.get(User, certificate.user_id)
    key = keys.credential_key()
    keys.record_credential_key(key)
    signed = data_integrity.add_proof(build(certificate, user.email, secrets.token_hex(16)), key,
                                      utcnow())
    certificate.credential_json = json.dumps(signed, ensure_ascii=False, separators=(",", ":"))
    return signed


def of(certificate: Certificate) -> dict:
    """The certificate's credential, signed now if it has none yet (flush first)."""
    if certificate.credential_json:
        return json.loads(certificate.credential_json)
    return issue(certificate)
