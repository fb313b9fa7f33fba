"""The page a verification link or QR code opens: /verify/<number> (outside /api/v1).

Plain, accessible HTML showing the same public facts as the API, every value escaped by Jinja's
autoescaping, and a form that checks an uploaded PDF against the hash of the issued file."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template_string, request
from pydantic import Field
from spectree import Response

from services import certificate_service
from utils.pipeline.rate_limits import config_limit
from utils.validation import StrictModel, UploadFile, document, errors

bp = Blueprint("verify_page", __name__)

PAGE = """<!doctype html>
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
</style>
</head>
<body>
<main>
<h1>Certificate verification</h1>
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
    <dt>Issued by</dt><dd>{{ app_name }}</dd>
    {% if facts.sha256 %}<dt>PDF SHA-256</dt><dd><code>{{ facts.sha256 }}</code></dd>{% endif %}
  </dl>
  {% if check is not none %}
  <p role="alert"><span class="badge {{ 'valid' if check else 'revoked' }}">
  {{ 'The uploaded file is the issued certificate.' if check
     else 'The uploaded file is NOT the issued certificate: it differs from the original.' }}
  </span></p>
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


PAGE_MEDIA = {200: {"text/html": "The verification page"},
              404: {"text/html": "The page saying no certificate has this number"}}


class CheckFileForm(StrictModel):
    """A copy of the certificate's PDF, to compare with the issued file."""

    file: UploadFile = Field(description="The PDF to check")


def _render(number: str, check: bool | None = None):
    certificate = certificate_service.by_number(number)
    facts = certificate_service.public_facts(certificate) if certificate else None
    html = render_template_string(PAGE, certificate=certificate, facts=facts, number=number[:80],
                                  check=check, app_name=current_app.config["APP_NAME"])
    status = 200 if certificate else 404
    return html, status, {"Content-Type": "text/html; charset=utf-8"}


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
    """Compare an uploaded file's SHA-256 with the issued PDF's."""
    certificate = certificate_service.by_number(number)
    upload = request.files.get("file")
    if certificate is None or upload is None:
        return _render(number, None)
    return _render(number, certificate_service.file_matches(certificate, upload.stream))
