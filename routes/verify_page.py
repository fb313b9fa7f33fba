"""The page a verification link or QR code opens: /verify/<number> (outside /api/v1), and
/verify/ where anyone can paste or upload a credential or a certificate PDF.

Plain, accessible HTML showing the same public facts as the API, every value escaped by Jinja's
autoescaping. An uploaded PDF is checked by its signature (the academy's, intact, carrying the
credential of this number), or, for a certificate issued before PDFs were signed, against the
hash of the issued file."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template_string, request
from pydantic import Field
from spectree import Response

from models import db
from services import certificate_service
from services.credentials import verification
from utils.pipeline.rate_limits import config_limit
from utils.schemas import CredentialCheckForm
from utils.validation import StrictModel, UploadFile, document, errors

bp = Blueprint("verify_page", __name__)
UPLOAD_LIMIT = 5 * 1024 * 1024

HEAD = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>Certificate verification – {{ app_name }}</title>
<style>
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:40rem;margin:2rem auto;
padding:0 1rem;color:#1b2a4a;line-height:1.5}
.badge{display:inline-block;padding:.25rem .75rem;border-radius:1rem;font-weight:700}
.valid{background:#dff5e1;color:#14532d}.revoked{background:#fde2e1;color:#7f1d1d}
.unknown{background:#eee;color:#333}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem}dt{font-weight:600}
dd{margin:0;overflow-wrap:anywhere}code{font-size:.85em;overflow-wrap:anywhere}
form{margin-top:2rem;padding:1rem;border:1px solid #ccd;border-radius:.5rem}
textarea{width:100%;min-height:8rem;font-family:monospace}
</style>
</head>
<body>
<main>
"""

PAGE = HEAD + """<h1>Certificate verification</h1>
{% if certificate %}
  <p role="status"><span class="badge {{ 'valid' if facts.valid else 'revoked' }}">
  {{ 'Valid certificate' if facts.valid else 'Revoked certificate' }}</span></p>
  {% if not facts.valid %}<p>This certificate was revoked on {{ facts.revoked_at }}.
  It no longer certifies completion.</p>{% endif %}
  <dl>
    <dt>Certificate number</dt><dd>{{ facts.certificate_number }}</dd>
    <dt>Awarded to</dt><dd>{{ facts.holder_name }}</dd>
    <dt>Course</dt><dd>{{ facts.course_title }}</dd>
    {% if facts.instructor_name %}<dt>Instructor</dt><dd>{{ facts.instructor_name }}</dd>{% endif %}
    <dt>Completed on</dt><dd>{{ facts.completion_date }}</dd>
    <dt>Issued by</dt><dd>{{ app_name }} (<code>{{ facts.issuer_did }}</code>)</dd>
    <dt>Verifiable credential</dt><dd><a href="{{ facts.credential_url }}">Open Badges 3.0
    credential (JSON)</a>, checkable by any verifier without this site</dd>
    {% if facts.sha256 %}<dt>PDF SHA-256</dt><dd><code>{{ facts.sha256 }}</code></dd>{% endif %}
  </dl>
  {% if check is not none %}
  <p role="alert"><span class="badge {{ 'valid' if check.matches else 'revoked' }}">
  {{ 'The uploaded file is the issued certificate.' if check.matches
     else 'The uploaded file is NOT the issued certificate: it differs from the original.' }}
  </span></p>
  {% if check.how == 'signature' %}<p>{% if check.matches %}It carries the signature of
  {{ app_name }}, intact, and the credential of this certificate.{% else %}{{ check.verdict.message }}
  {% endif %}</p>{% else %}<p>The file was compared with the PDF issued for this
  certificate (an unsigned PDF from before certificates were signed).</p>{% endif %}
  {% endif %}
  <form method="post" enctype="multipart/form-data">
    <label for="file">Check a certificate PDF against the issued file</label><br>
    <input id="file" name="file" type="file" accept="application/pdf" required>
    <button type="submit">Check file</button>
  </form>
{% else %}
  <p role="status"><span class="badge unknown">Unknown certificate</span></p>
  <p>No certificate has the number <strong>{{ number }}</strong>. Check that the number was
  copied exactly.</p>
{% endif %}
</main>
</body>
</html>
"""

CHECK_PAGE = HEAD + """<h1>Check a credential or certificate</h1>
<p>Paste an Open Badges credential (JSON), or upload it or a certificate PDF issued by
{{ app_name }}. Its signature, issuer, dates and revocation status are checked.</p>
{% if verdict %}
  <p role="alert"><span class="badge {{ 'valid' if verdict.valid else 'revoked' }}">
  {{ labels[verdict.result] }}</span></p>
  <p>{{ verdict.message }}</p>
  {% if verdict.credential %}<dl>
    {% if verdict.credential.name %}<dt>Credential</dt><dd>{{ verdict.credential.name }}</dd>{% endif %}
    {% if verdict.credential.description %}<dt>Says</dt><dd>{{ verdict.credential.description }}</dd>{% endif %}
    {% if verdict.credential.issuer %}<dt>Issuer</dt><dd>{{ verdict.credential.issuer }}</dd>{% endif %}
    {% if verdict.credential.certificate_number %}<dt>Certificate number</dt>
    <dd>{{ verdict.credential.certificate_number }}</dd>{% endif %}
    {% if verdict.credential.valid_from %}<dt>Valid from</dt><dd>{{ verdict.credential.valid_from }}</dd>{% endif %}
  </dl>{% endif %}
{% endif %}
<form method="post" enctype="multipart/form-data">
  <label for="credential">Credential JSON</label><br>
  <textarea id="credential" name="credential"></textarea><br>
  <label for="file">or a file (JSON or PDF)</label><br>
  <input id="file" name="file" type="file" accept="application/pdf,application/json,.json">
  <button type="submit">Check</button>
</form>
</main>
</body>
</html>
"""

LABELS = {
    verification.VALID: "Valid", verification.REVOKED: "Revoked",
    verification.TAMPERED: "Tampered", verification.UNKNOWN_ISSUER: "Unknown issuer",
    verification.EXPIRED: "Expired", verification.NOT_YET_VALID: "Not yet valid",
    verification.MALFORMED: "Not a credential", verification.UNSIGNED: "Unsigned",
    verification.STATUS_UNAVAILABLE: "Status unknown",
}

PAGE_MEDIA = {200: {"text/html": "The verification page"},
              404: {"text/html": "The page saying no certificate has this number"}}
CHECK_MEDIA = {200: {"text/html": "The check page, with the verdict once something was sent"}}


class CheckFileForm(StrictModel):
    """A copy of the certificate's PDF, to check against what was issued."""

    file: UploadFile = Field(description="The PDF to check")


def _html(body: str, status: int):
    return body, status, {"Content-Type": "text/html; charset=utf-8"}


def _render(number: str, check: certificate_service.FileCheck | None = None):
    certificate = certificate_service.by_number(number)
    facts = certificate_service.public_facts(certificate) if certificate else None
    html = render_template_string(PAGE, certificate=certificate, facts=facts, number=number[:80],
                                  check=check, app_name=current_app.config["APP_NAME"])
    return _html(html, 200 if certificate else 404)


@bp.get("/<string:number>")
@config_limit("RATE_LIMIT_VERIFY")
@document(resp=Response("HTTP_200", "HTTP_404", **errors(429)), media=PAGE_MEDIA,
          tags=["certificates", "public"])
def verify_page(number: str):
    """The verification page (HTML) a certificate's link and QR code open."""
    return _render(number)


@bp.post("/<string:number>")
@config_limit("RATE_LIMIT_VERIFY")
@document(form=CheckFileForm, resp=Response("HTTP_200", "HTTP_404", **errors(429)),
          media=PAGE_MEDIA, tags=["certificates", "public"])
def verify_upload(number: str):
    """Check an uploaded PDF: the academy's signature and the credential of this number, or
    (a PDF from before signing) its SHA-256 against the issued file's."""
    certificate = certificate_service.by_number(number)
    upload = request.files.get("file")
    if certificate is None or upload is None:
        return _render(number, None)
    data = upload.stream.read(UPLOAD_LIMIT + 1)
    check = certificate_service.check_file(certificate, data[:UPLOAD_LIMIT])
    db.session.commit()
    return _render(number, check)


@bp.get("/")
@config_limit("RATE_LIMIT_VERIFY")
@document(resp=Response("HTTP_200", **errors(429)), media=CHECK_MEDIA,
          tags=["certificates", "public"])
def check_page():
    """A page where anyone can paste or upload a credential or certificate PDF to check."""
    return _html(render_template_string(CHECK_PAGE, verdict=None, labels=LABELS,
                                        app_name=current_app.config["APP_NAME"]), 200)


@bp.post("/")
@config_limit("RATE_LIMIT_VERIFY")
@document(form=CredentialCheckForm, resp=Response("HTTP_200", **errors(429)),
          media=CHECK_MEDIA, tags=["certificates", "public"])
def check_submitted():
    """The verdict on a pasted credential or an uploaded file, in a plain sentence."""
    upload = request.files.get("file")
    data = upload.stream.read(UPLOAD_LIMIT + 1) if upload is not None else b""
    if not data.strip():
        data = (request.form.get("credential") or "").encode("utf-8")
    verdict = (verification.verify_upload(data[:UPLOAD_LIMIT]) if data.strip()
               else verification.Verdict(verification.MALFORMED))
    db.session.commit()
    return _html(render_template_string(CHECK_PAGE, verdict=verdict, labels=LABELS,
                                        app_name=current_app.config["APP_NAME"]), 200)
