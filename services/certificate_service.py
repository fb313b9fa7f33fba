"""Certificates: issuance on completion, the PDF, verification, bulk issuance, revocation.

One certificate per (user, course), also when requests race (a unique constraint and a
savepoint). Each is issued with its Open Badges 3.0 credential (services/credentials/), and
its PDF carries that credential and the academy's signature. The PDF is drawn with ReportLab in
invariant mode and signed deterministically, so rendering the same certificate again gives the
same bytes: the SHA-256 on the row stays true when a missing file is regenerated. Every text is
drawn as a plain string, never parsed as markup.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache

from flask import current_app
from sqlalchemy import Select, bindparam, event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import Certificate, Course, Enrollment, User, certificate_verify_url, db
from services import file_service, jobs
from services.credentials import keys, openbadge, pdf_signing, status_list, verification
from utils.errors import Conflict, Forbidden, NotFound
from utils.helpers import Columns, utcnow
from utils.pagination import PageStatement, paginate_rows

log = logging.getLogger("lms.certificates")

FOLDER = "certificates"


# --- numbers and rows -------------------------------------------------------------------------

def new_number(course_id: int, user_id: int) -> str:
    return f"AIFA-{course_id}-{user_id}-{uuid.uuid4().hex[:10].upper()}"


def verify_url(number: str) -> str:
    return certificate_verify_url(number)


def holder_name(user: User) -> str:
    """The name a certificate carries. Never the e-mail address (the verification page is
    public); an account without a name gets a neutral label."""
    return user.full_name or f"Learner #{user.id}"


def existing(user_id: int, course_id: int) -> Certificate | None:
    return db.session.scalar(select(Certificate).where(
        Certificate.user_id == user_id, Certificate.course_id == course_id))


# A list's columns, read as rows: an ORM entity per certificate cost the page more than its
# statement did (issue 21). The page's select is of ids (what its count needs); the columns
# ride as its extra, and `Certificate.to_dict` writes each row (`as_dict`, from `SHOWN`: the
# id, then the rest, which other reads may select too).
_C = Certificate.__table__.c
_LISTED = (_C.certificate_number, _C.user_id, _C.course_id, _C.holder_name, _C.course_title,
           _C.instructor_name, _C.completion_date, _C.status, _C.sha256, _C.issued_at,
           _C.revoked_at, _C.pdf_signed_at)
SHOWN = (_C.id, *_LISTED)
_SHOWN_NAMES = tuple(column.key for column in SHOWN)


class _Row(Columns):
    to_dict = Certificate.to_dict


def list_query(*, user_id: int | None = None, course_id: int | None = None,
               status: str | None = None) -> Select:
    """Certificates newest first, filtered; for `page`."""
    query = select(_C.id).order_by(_C.issued_at.desc(), _C.id.desc())
    if user_id is not None:
        query = query.where(_C.user_id == user_id)
    if course_id is not None:
        query = query.where(_C.course_id == course_id)
    if status is not None:
        query = query.where(_C.status == status)
    return query


def page(query: Select, page_number: int, per_page: int) -> dict:
    rows, meta = paginate_rows(query, page_number, per_page, extra=_LISTED)
    return {"certificates": [as_dict(row) for row in rows], "pagination": meta}


# A student's own list (their page of certificates), built once.
_HOLDER_PAGE = PageStatement(list_query(user_id=bindparam("user_id")), extra=_LISTED)


def holder_page(user_id: int, page_number: int, per_page: int) -> dict:
    """The certificates `user_id` holds, newest first: `page` of `list_query(user_id=...)`."""
    rows, meta = _HOLDER_PAGE.page({"user_id": user_id}, page_number, per_page)
    return {"certificates": [as_dict(row) for row in rows], "pagination": meta}


def as_dict(row) -> dict:
    """`Certificate.to_dict` of a row that begins with the columns of `SHOWN`."""
    return _Row(_SHOWN_NAMES, row[:len(SHOWN)]).to_dict()


def issue_for_enrollment(enrollment: Enrollment, *, render: bool = True) -> Certificate:
    """The certificate of a completed enrollment: the existing one, or a new one."""
    return issue(enrollment, render=render)[0]


def issue(enrollment: Enrollment, *, render: bool = True) -> tuple[Certificate, bool]:
    """(certificate, created): created is False when it existed, also when a parallel
    request issued it a moment earlier. Without `render`, the signed PDF is left to
    `render_missing_pdfs` (or the first download): bulk issuance."""
    if enrollment.completed_at is None:
        raise Forbidden("The course is not completed yet: a certificate is issued on completion",
                        code="course_not_completed")
    found = existing(enrollment.user_id, enrollment.course_id)
    if found is not None:
        return found, False
    user = db.session.get(User, enrollment.user_id)
    course = db.session.get(Course, enrollment.course_id)
    instructor = db.session.get(User, course.instructor_id)
    certificate = Certificate(
        certificate_number=new_number(course.id, user.id), user_id=user.id, course_id=course.id,
        enrollment_id=enrollment.id, holder_name=holder_name(user)[:255],
        course_title=course.title, instructor_name=holder_name(instructor)[:255] if instructor else None,
        completion_date=enrollment.completed_at.date(), status="valid", issued_at=utcnow())
    for _ in range(status_list.DRAWS):
        status_list.draw(certificate)  # its revocation bit, written with the row
        try:
            with db.session.begin_nested():
                db.session.add(certificate)
            break
        except IntegrityError:
            # A parallel request issued it first: one certificate, theirs.
            found = existing(enrollment.user_id, enrollment.course_id)
            if found is not None:
                return found, False
            if not status_list.taken(certificate.status_list_id, certificate.status_list_index):
                raise
            status_list.collided(certificate.status_list_id)  # draw again
    else:
        raise RuntimeError("no free status list index found")
    try:
        openbadge.issue(certificate)
    except Exception:  # the row stands; the credential is signed on first request
        log.exception("certificate %s issued without its credential",
                      certificate.certificate_number)
    if certificate.credential_json is not None:
        certificate.pdf_signed_at = certificate.issued_at  # its PDF is signed, now or later
    if not render:
        return certificate, True
    try:
        store_pdf(certificate, signed=certificate.pdf_signed_at is not None)
    except Exception:  # the row stands; the file is rendered again on first download
        log.exception("certificate %s issued without its PDF", certificate.certificate_number)
    return certificate, True


def enrollment_of(user_id: int, course_id: int) -> Enrollment:
    enrollment = db.session.scalar(select(Enrollment).where(
        Enrollment.user_id == user_id, Enrollment.course_id == course_id))
    if enrollment is None:
        raise NotFound("No enrollment in this course")
    return enrollment


@dataclass
class BulkResult:
    issued: int
    skipped: int
    failed: int


def start_bulk_issue(course_id: int, user_id: int):
    """The "certificates.bulk_issue" job for a course that exists (launch it after the
    commit); an unknown course is refused before any job is recorded."""
    if db.session.get(Course, course_id) is None:
        raise NotFound("Course not found")
    return jobs.start("certificates.bulk_issue", {"course_id": course_id}, user_id=user_id)


def bulk_issue(course_id: int) -> BulkResult:
    """Issue for every completed enrollment of the course that has none, in batches that
    commit on their own: one failure costs its certificate, not the whole run.

    Each certificate gets its row and signed credential here; the PDFs (rendered and signed,
    ~12 ms each, most of it pyHanko building the signature) follow in a job of their own,
    "certificates.render_pdfs", so the run stays within its time (README, Certificates). A
    download before that job reaches a certificate renders its PDF then, the same bytes."""
    if db.session.get(Course, course_id) is None:
        raise NotFound("Course not found")
    batch_size = current_app.config["CERTIFICATE_BULK_BATCH"]
    completed = select(Enrollment.id).where(Enrollment.course_id == course_id,
                                            Enrollment.completed_at.is_not(None))
    have = set(db.session.scalars(select(Certificate.user_id)
                                  .where(Certificate.course_id == course_id)))
    pending = [eid for eid, uid in db.session.execute(
        select(Enrollment.id, Enrollment.user_id).where(Enrollment.id.in_(completed))
        .order_by(Enrollment.id)) if uid not in have]
    issued = failed = 0
    try:
        for start in range(0, len(pending), batch_size):
            for enrollment in db.session.scalars(select(Enrollment).where(
                    Enrollment.id.in_(pending[start:start + batch_size]))
                    .order_by(Enrollment.id)):
                try:
                    with db.session.begin_nested():
                        issue_for_enrollment(enrollment, render=False)
                    issued += 1
                except Exception:
                    failed += 1
                    log.exception("bulk issue failed for enrollment %s", enrollment.id)
            db.session.commit()
    finally:
        # The PDFs of what was committed, also when a later batch failed.
        _render_later(course_id)
    return BulkResult(issued=issued, skipped=len(have), failed=failed)


def _render_later(course_id: int) -> None:
    """Start "certificates.render_pdfs" for the course if a certificate lacks its PDF."""
    db.session.rollback()  # after a failed batch, the transaction is unusable until then
    if db.session.scalar(select(Certificate.id).where(
            Certificate.course_id == course_id, Certificate.file_path.is_(None)).limit(1)) is None:
        return
    job = jobs.start("certificates.render_pdfs", {"course_id": course_id})
    db.session.commit()
    jobs.launch(job)


def render_missing_pdfs(course_id: int) -> dict:
    """Render (and sign) the PDF of every certificate of the course that has none, in
    batches; one that fails is left for its first download."""
    batch_size = current_app.config["CERTIFICATE_BULK_BATCH"]
    rendered = failed = 0
    last_id = 0
    while True:
        batch = db.session.scalars(select(Certificate).where(
            Certificate.course_id == course_id, Certificate.file_path.is_(None),
            Certificate.id > last_id).order_by(Certificate.id).limit(batch_size)).all()
        if not batch:
            return {"rendered": rendered, "failed": failed}
        for certificate in batch:
            last_id = certificate.id
            stored = len(db.session.info.get(NEW_FILES, []))
            try:
                with db.session.begin_nested():
                    store_pdf(certificate, signed=certificate.pdf_signed_at is not None)
                rendered += 1
            except Exception:
                discard_new_files(stored)
                failed += 1
                log.exception("PDF of certificate %s not rendered", certificate.certificate_number)
        db.session.commit()


def revoke(certificate: Certificate, reason: str) -> Certificate:
    if certificate.status == "revoked":
        raise Conflict("This certificate is already revoked")
    certificate.status = "revoked"
    certificate.revoked_at = utcnow()
    certificate.revoked_reason = reason[:500]
    # Its bit in the status list is set from this commit on (the list is derived from here).
    status_list.record_revocation(certificate)
    return certificate


def revoke_for_enrollment(user_id: int, course_id: int, reason: str) -> Certificate | None:
    """Revoke the certificate of (user, course) if there is one and it is valid (refunds)."""
    certificate = existing(user_id, course_id)
    if certificate is not None and certificate.status == "valid":
        revoke(certificate, reason)
    return certificate


def by_number(number: str) -> Certificate | None:
    return db.session.scalar(select(Certificate).where(
        Certificate.certificate_number == number[:80]))


def public_facts(certificate: Certificate) -> dict:
    """What anyone holding the number may learn: nothing private."""
    return {
        "valid": certificate.status == "valid",
        "status": certificate.status,
        "certificate_number": certificate.certificate_number,
        "holder_name": certificate.holder_name,
        "course_title": certificate.course_title,
        "instructor_name": certificate.instructor_name,
        "completion_date": certificate.completion_date.isoformat(),
        "issued_at": certificate.to_dict()["issued_at"],
        "revoked_at": certificate.to_dict()["revoked_at"],
        "sha256": certificate.sha256,
        "credential_url": openbadge.credential_url(certificate.certificate_number),
        "issuer_did": keys.issuer_did(),
        "pdf_signed": certificate.pdf_signed_at is not None,
    }


def file_matches(certificate: Certificate, stream) -> bool:
    """Whether a file (read from `stream` in chunks) is the issued PDF, byte for byte."""
    digest = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 16), b""):
        digest.update(chunk)
    return bool(certificate.sha256) and digest.hexdigest() == certificate.sha256


@dataclass
class FileCheck:
    """Is an uploaded PDF this certificate as issued? `how`: "signature" (a signed PDF: the
    academy's intact signature and, inside, the credential of this number) or "hash" (an
    unsigned PDF from before signing: byte for byte the issued file)."""

    matches: bool
    how: str
    verdict: verification.Verdict | None = None


def check_file(certificate: Certificate, data: bytes) -> FileCheck:
    outcome = verification.verify_pdf(data)
    if not outcome.signed:
        return FileCheck(file_matches(certificate, io.BytesIO(data)), "hash")
    verdict = outcome.verdict
    number = (verdict.credential or {}).get("certificate_number")
    genuine = verdict.result in (verification.VALID, verification.REVOKED)
    return FileCheck(genuine and number == certificate.certificate_number, "signature", verdict)


def backfill_credentials() -> int:
    """Sign the credential of every certificate that has none, committing in batches."""
    batch_size = current_app.config["CERTIFICATE_BULK_BATCH"]
    done = 0
    while True:
        batch = db.session.scalars(select(Certificate).where(
            Certificate.credential_json.is_(None)).order_by(Certificate.id).limit(batch_size)).all()
        if not batch:
            return done
        for certificate in batch:
            openbadge.issue(certificate)
        db.session.commit()
        done += len(batch)


def credential_of(certificate: Certificate) -> dict:
    """The certificate's signed credential; one issued before credentials gets it now
    (commit after)."""
    return openbadge.of(certificate)


# --- the PDF ----------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def pdf_fonts(regular_paths: tuple[str, ...], bold_paths: tuple[str, ...]) -> tuple[str, str]:
    """Register the first TrueType fonts found (wide script coverage); ReportLab's bundled
    Vera, then Helvetica, when none is installed."""
    # ReportLab (~30 ms to import) loads only when a PDF is drawn, not in every worker.
    import reportlab
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    def first(paths, name, fallback):
        candidates = list(paths) + [os.path.join(os.path.dirname(reportlab.__file__), "fonts",
                                                 fallback)]
        for path in candidates:
            if path and os.path.exists(path):
                pdfmetrics.registerFont(TTFont(name, path))
                return name
        return "Helvetica-Bold" if "Bold" in name else "Helvetica"

    return (first(regular_paths, "CertSans", "Vera.ttf"),
            first(bold_paths, "CertSans-Bold", "VeraBd.ttf"))


def _fit(canvas, text: str, font: str, size: float, max_width: float, min_size: float = 9) -> float:
    """The largest font size up to `size` at which `text` fits `max_width`."""
    # ReportLab (~30 ms to import) loads only when a PDF is drawn, not in every worker.
    from reportlab.pdfbase.pdfmetrics import stringWidth

    width = stringWidth(text, font, size)
    if width <= max_width:
        return size
    return max(min_size, size * max_width / width)


def _clip(text: str, font: str, size: float, max_width: float) -> str:
    """Shorten with an ellipsis what still does not fit at the smallest size."""
    # ReportLab (~30 ms to import) loads only when a PDF is drawn, not in every worker.
    from reportlab.pdfbase.pdfmetrics import stringWidth

    if stringWidth(text, font, size) <= max_width:
        return text
    while text and stringWidth(text + "…", font, size) > max_width:
        text = text[:-1]
    return text + "…"


def _qr_image(url: str):
    """The QR code as a small 1-bit image (4 px a module), drawn scaled by the PDF. A fixed
    mask pattern skips qrcode's search over all eight (most of its time; any mask is valid),
    and the image goes to ReportLab as is, without a PNG round trip."""
    # qrcode and ReportLab (~45 ms together) load only when a certificate is drawn.
    import qrcode
    from reportlab.lib.utils import ImageReader

    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=4, border=2,
                       mask_pattern=0)
    qr.add_data(url)
    qr.make(fit=True)
    return ImageReader(qr.make_image().get_image().convert("L"))


def _latin(*texts: str | None) -> bool:
    """Whether the standard PDF fonts (WinAnsi) can draw every text: then nothing is embedded."""
    try:
        for text in texts:
            (text or "").encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True


def render_pdf(certificate: Certificate) -> bytes:
    # ReportLab (~30 ms to import) loads only when a PDF is drawn, not in every worker.
    from reportlab import rl_config
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.pdfgen import canvas as pdf_canvas

    cfg = current_app.config
    url = verify_url(certificate.certificate_number)
    if _latin(certificate.holder_name, certificate.course_title, certificate.instructor_name,
              cfg["APP_NAME"], url):
        # Helvetica is one of the PDF's own fonts: no font file embedded (a few KB, not 50).
        regular, bold = "Helvetica", "Helvetica-Bold"
    else:  # names in other scripts: DejaVu Sans, embedded (subset)
        regular, bold = pdf_fonts(tuple(cfg["CERTIFICATE_FONT_PATHS"]),
                               tuple(cfg["CERTIFICATE_BOLD_FONT_PATHS"]))
    previous, rl_config.invariant = rl_config.invariant, 1  # same input, same bytes
    try:
        buffer = io.BytesIO()
        width, height = landscape(A4)
        c = pdf_canvas.Canvas(buffer, pagesize=(width, height), invariant=1)
        c.setTitle(f"Certificate {certificate.certificate_number}")
        c.setAuthor(cfg["APP_NAME"])
        c.setSubject(certificate.course_title)
        navy, gold = colors.HexColor("#1b2a4a"), colors.HexColor("#b8912f")
        c.setStrokeColor(navy)
        c.setLineWidth(4)
        c.rect(28, 28, width - 56, height - 56)
        c.setStrokeColor(gold)
        c.setLineWidth(1.5)
        c.rect(40, 40, width - 80, height - 80)
        usable = width - 160
        centre = width / 2

        c.setFillColor(navy)
        c.setFont(bold, 18)
        c.drawCentredString(centre, height - 95, cfg["APP_NAME"].upper())
        c.setFont(regular, 34)
        c.drawCentredString(centre, height - 150, "Certificate of Completion")
        c.setFillColor(colors.black)
        c.setFont(regular, 14)
        c.drawCentredString(centre, height - 195, "This certifies that")

        name_size = _fit(c, certificate.holder_name, bold, 36, usable, min_size=12)
        name = _clip(certificate.holder_name, bold, name_size, usable)
        c.setFont(bold, name_size)
        c.setFillColor(navy)
        c.drawCentredString(centre, height - 245, name)
        c.setFillColor(colors.black)
        c.setFont(regular, 14)
        c.drawCentredString(centre, height - 285, "has successfully completed the course")
        title_size = _fit(c, certificate.course_title, bold, 24, usable, min_size=10)
        c.setFont(bold, title_size)
        c.drawCentredString(centre, height - 320,
                            _clip(certificate.course_title, bold, title_size, usable))
        c.setFont(regular, 12)
        if certificate.instructor_name:
            c.drawCentredString(centre, height - 350, f"Instructor: {certificate.instructor_name}")
        c.drawCentredString(centre, height - 370,
                            f"Completed on {certificate.completion_date.strftime('%d %B %Y')}")

        c.drawImage(_qr_image(url), width - 180, 60, 110, 110)
        c.setFont(regular, 10)
        c.drawString(70, 90, f"Certificate number: {certificate.certificate_number}")
        c.drawString(70, 74, f"Verify at: {url}")
        c.showPage()
        c.save()
        return buffer.getvalue()
    finally:
        rl_config.invariant = previous


def store_pdf(certificate: Certificate, *, signed: bool = False) -> None:
    """Render (and with `signed`, attach the credential and sign) the PDF, and keep it."""
    data = render_pdf(certificate)
    if signed:
        certificate.pdf_signed_at = certificate.pdf_signed_at or utcnow()
        openbadge.of(certificate)  # an older certificate gets its credential first
        key = keys.pdf_key()
        keys.record_pdf_key(key)
        data = pdf_signing.sign(
            data, attachment_name=f"{certificate.certificate_number}{pdf_signing.ATTACHMENT_SUFFIX}",
            attachment=certificate.credential_json.encode("utf-8"),
            signed_at=certificate.pdf_signed_at, signer_name=current_app.config["APP_NAME"],
            key=key)
    key = f"{FOLDER}/{certificate.certificate_number}.pdf"
    store = file_service.storage()
    scratch = store.scratch(FOLDER)
    scratch.write_bytes(data)
    store.keep(scratch, key)
    db.session.info.setdefault(NEW_FILES, []).append(key)
    certificate.file_path = key
    certificate.sha256 = hashlib.sha256(data).hexdigest()


# --- files written by a transaction that does not commit ---------------------------------------
# A PDF is stored before the row that names it commits. Should the transaction roll back (or a
# savepoint in bulk issuance), the file would be left with no certificate: it is deleted.

NEW_FILES = "new_certificate_files"


def discard_new_files(since: int = 0) -> None:
    """Delete the PDFs this transaction stored after the first `since` (a rolled-back
    savepoint's)."""
    files = db.session.info.get(NEW_FILES, [])
    for key in files[since:]:
        file_service.delete(key)
    del files[since:]


def _committed(session) -> None:
    if session.in_nested_transaction():  # after_commit also fires when a savepoint is released
        return
    session.info.pop(NEW_FILES, None)


def _rolled_back(session, previous_transaction) -> None:
    if not session.in_transaction():
        for key in session.info.pop(NEW_FILES, []):
            try:
                file_service.delete(key)
            except Exception as exc:  # best effort: a leftover file is harmless
                log.warning("could not delete %s after a rollback: %s", key, exc)


def register() -> None:
    if not event.contains(Session, "after_commit", _committed):
        event.listen(Session, "after_commit", _committed)
        event.listen(Session, "after_soft_rollback", _rolled_back)


def pdf_path(certificate: Certificate):
    """The stored PDF, rendered again (same bytes) if the file is missing."""
    store = file_service.storage()
    if certificate.file_path:
        path = store.path(certificate.file_path)
        if path.is_file():
            return path
    # The same bytes again: a signed PDF is signed again with its recorded time, an unsigned
    # one (issued before signing) stays unsigned, so the hash on the row still holds.
    store_pdf(certificate, signed=certificate.pdf_signed_at is not None)
    db.session.commit()
    return store.path(certificate.file_path)
