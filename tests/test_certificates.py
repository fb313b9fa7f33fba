"""Certificates through the HTTP API: issuance on completion, the PDF (text and QR code read
back with pypdf and zxing-cpp), downloads and their regeneration, Unicode and hostile names,
public verification (API and HTML page, hash check of an uploaded file, revocation, rate
limit), the generation routes, bulk issuance, and the race on PostgreSQL.

Every test checks the status code, the body and what the database and the upload folder hold
afterwards. Courses are built through the API by their instructor and completed through the
API by their students; the ORM is used only to delete certificates (to exercise the generation
routes) and to create a user whose name the API would refuse.
"""
from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from models import AuditLog, Certificate, Enrollment, User, db
from tests.support.assertions import count, error, fetch, ok
from tests.support.concurrency import fire_together
from tests.support.learning import Actor, actor, actor_in  # noqa: F401 (actor: a fixture)

API = "/api/v1"
CERTS = f"{API}/certificates"
NUMBER_RE = re.compile(r"^AIFA-(\d+)-(\d+)-[0-9A-F]{8,}$")
PRIVATE_KEYS = {"email", "user_id", "course_id", "enrollment_id"}


# --- helpers ----------------------------------------------------------------------------------

@dataclass
class Built:
    """A course built through the API: its id, title and lesson ids in course order."""

    id: int
    title: str
    lesson_ids: list[int] = field(default_factory=list)


def build_course(client, owner: Actor, title: str, lessons: int = 2) -> Built:
    course = ok(client.post(f"{API}/courses", json={"title": title}, headers=owner.headers),
                201)["course"]
    built = Built(course["id"], title)
    module = ok(client.post(f"{API}/courses/{built.id}/modules", json={"title": f"{title} M1"},
                            headers=owner.headers), 201)["module"]
    for n in range(lessons):
        lesson = ok(client.post(f"{API}/lessons/create-lessons/{module['id']}",
                                json={"title": f"Lesson {n + 1}", "content": f"Body {n + 1}"},
                                headers=owner.headers), 201)["lesson"]
        built.lesson_ids.append(lesson["id"])
    published = ok(client.put(f"{API}/courses/{built.id}", json={"status": "published"},
                              headers=owner.headers))["course"]
    assert published["status"] == "published"
    return built


def enroll(client, who: Actor, course: Built) -> int:
    return ok(client.post(f"{API}/enrollments", json={"course_id": course.id},
                          headers=who.headers), 201)["enrollment"]["id"]


def complete_lessons(client, who: Actor, enrollment_id: int, lesson_ids) -> None:
    for lesson_id in lesson_ids:
        ok(client.post(f"{API}/enrollments/{enrollment_id}/lessons/{lesson_id}/complete",
                       headers=who.headers))


def complete_course(client, who: Actor, course: Built) -> int:
    """Enroll `who` and complete every lesson; the enrollment id."""
    enrollment_id = enroll(client, who, course)
    complete_lessons(client, who, enrollment_id, course.lesson_ids)
    return enrollment_id


def certificate_of(app, user_id: int, course_id: int) -> Certificate | None:
    return fetch(app, Certificate, Certificate.user_id == user_id,
                 Certificate.course_id == course_id)


def delete_certificate(app, user_id: int, course_id: int) -> None:
    with app.app_context():
        result = db.session.execute(delete(Certificate).where(
            Certificate.user_id == user_id, Certificate.course_id == course_id))
        db.session.commit()
        assert result.rowcount == 1


def stored_file(app, row: Certificate) -> Path:
    return Path(app.config["UPLOAD_FOLDER"]) / row.file_path


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    return "\n".join(page.extract_text() for page in reader.pages)


def pdf_qr_payloads(data: bytes) -> list[str]:
    import zxingcpp
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    images = reader.pages[0].images
    assert len(images) >= 1, "the certificate carries no image (QR code)"
    image = images[0].image.convert("L")
    return [barcode.text for barcode in zxingcpp.read_barcodes(image)]


def download(client, certificate_id: int, headers: dict, path: str = "{}/download"):
    return client.get(f"{CERTS}/" + path.format(certificate_id), headers=headers)


def verify_api(client, number: str, ip: str = "192.0.2.10"):
    return client.get(f"{CERTS}/verify/{number}", environ_base={"REMOTE_ADDR": ip})


def verify_page(client, number: str, ip: str = "192.0.2.20"):
    return client.get(f"/verify/{number}", environ_base={"REMOTE_ADDR": ip})


def check_upload(client, number: str, data: bytes, ip: str = "192.0.2.30"):
    return client.post(f"/verify/{number}", environ_base={"REMOTE_ADDR": ip},
                       data={"file": (io.BytesIO(data), "certificate.pdf", "application/pdf")},
                       content_type="multipart/form-data")


@pytest.fixture
def instructor(actor):
    return actor("instructor", first_name="Ada", last_name="Lovelace")


@pytest.fixture
def admin(actor):
    return actor("admin", first_name="Grace", last_name="Hopper")


@pytest.fixture
def student(actor):
    return actor("student", first_name="Alan", last_name="Turing")


@pytest.fixture
def course(client, instructor):
    """A free published course with 2 lessons."""
    return build_course(client, instructor, "Applied Machine Learning")


@pytest.fixture
def issued(app, client, student, course):
    """The student completed the course: (enrollment id, certificate row)."""
    enrollment_id = complete_course(client, student, course)
    row = certificate_of(app, student.id, course.id)
    assert row is not None
    return enrollment_id, row


# --- 1. issuance on completion and reading ----------------------------------------------------

def test_completing_the_course_issues_exactly_one_certificate(app, client, student, course):
    enrollment_id = enroll(client, student, course)
    complete_lessons(client, student, enrollment_id, course.lesson_ids[:-1])
    assert count(app, Certificate) == 0, "issued before the course was completed"

    complete_lessons(client, student, enrollment_id, course.lesson_ids[-1:])
    # Completing a lesson again does not complete (or certify) a second time.
    complete_lessons(client, student, enrollment_id, course.lesson_ids[-1:])

    assert count(app, Certificate) == 1
    row = certificate_of(app, student.id, course.id)
    enrollment = fetch(app, Enrollment, Enrollment.id == enrollment_id)
    assert enrollment.completed_at is not None
    match = NUMBER_RE.match(row.certificate_number)
    assert match, row.certificate_number
    assert (int(match.group(1)), int(match.group(2))) == (course.id, student.id)
    assert row.status == "valid" and row.revoked_at is None
    assert row.enrollment_id == enrollment_id
    assert row.holder_name == "Alan Turing"
    assert row.course_title == course.title
    assert row.instructor_name == "Ada Lovelace"
    assert row.completion_date == enrollment.completed_at.date()

    path = stored_file(app, row)
    assert row.file_path == f"certificates/{row.certificate_number}.pdf"
    assert path.is_file()
    assert path.parent == Path(app.config["UPLOAD_FOLDER"]) / "certificates"
    data = path.read_bytes()
    assert data.startswith(b"%PDF")
    assert row.sha256 == sha256(data)


def test_the_list_shows_only_my_certificates_and_admins_see_all(app, client, actor, admin,
                                                                course, student):
    other = actor("student", first_name="Barbara", last_name="Liskov")
    complete_course(client, student, course)
    complete_course(client, other, course)
    mine = certificate_of(app, student.id, course.id)
    theirs = certificate_of(app, other.id, course.id)

    for path in (CERTS, f"{CERTS}/get-certificate"):
        body = ok(client.get(path, headers=student.headers))
        assert [c["certificate_number"] for c in body["certificates"]] == \
            [mine.certificate_number], path
        listed = body["certificates"][0]
        assert listed["id"] == mine.id and listed["user_id"] == student.id
        assert listed["status"] == "valid" and listed["sha256"] == mine.sha256
        assert listed["download_url"] == f"{CERTS}/{mine.id}/download"
        assert body["pagination"]["total"] == 1

        body = ok(client.get(path, headers=other.headers))
        assert [c["id"] for c in body["certificates"]] == [theirs.id]

        body = ok(client.get(path, headers=admin.headers))
        assert {c["id"] for c in body["certificates"]} == {mine.id, theirs.id}

    # A student cannot widen the list with ?user_id; an admin can narrow it.
    body = ok(client.get(f"{CERTS}?user_id={other.id}", headers=student.headers))
    assert [c["id"] for c in body["certificates"]] == [mine.id]
    body = ok(client.get(f"{CERTS}?user_id={other.id}", headers=admin.headers))
    assert [c["id"] for c in body["certificates"]] == [theirs.id]

    error(client.get(CERTS), 401)
    error(client.get(f"{CERTS}/get-certificate"), 401)


def test_reading_one_certificate_owner_admin_and_others(app, client, actor, admin, student,
                                                        issued):
    _, row = issued
    other = actor("student")

    body = ok(client.get(f"{CERTS}/{row.id}", headers=student.headers))["certificate"]
    assert body["id"] == row.id and body["certificate_number"] == row.certificate_number
    assert body["verify_url"] == f"{app.config['PUBLIC_BASE_URL']}/verify/{row.certificate_number}"
    assert body["holder_name"] == "Alan Turing" and body["status"] == "valid"

    error(client.get(f"{CERTS}/{row.id}", headers=other.headers), 404)
    body = ok(client.get(f"{CERTS}/{row.id}", headers=admin.headers))["certificate"]
    assert body["id"] == row.id and body["verify_url"].endswith(row.certificate_number)
    error(client.get(f"{CERTS}/{row.id + 1000}", headers=admin.headers), 404)
    error(client.get(f"{CERTS}/{row.id}"), 401)


# --- 2. the PDF -------------------------------------------------------------------------------

def test_download_is_the_stored_pdf_with_name_course_number_and_qr(app, client, student, course,
                                                                  issued):
    _, row = issued
    stored = stored_file(app, row).read_bytes()
    for path in ("{}/download", "download/{}"):
        response = download(client, row.id, student.headers, path)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.mimetype == "application/pdf"
        disposition = response.headers["Content-Disposition"]
        assert disposition.startswith("attachment")
        assert f"{row.certificate_number}.pdf" in disposition
        assert response.data == stored
        assert sha256(response.data) == row.sha256
        assert response.headers["Cache-Control"] == "private, no-store"  # the holder's only

    text_ = pdf_text(stored)
    for expected in ("Certificate of Completion", "Alan Turing", course.title,
                     row.certificate_number, "Ada Lovelace", app.config["APP_NAME"].upper()):
        assert expected in text_, (expected, text_)

    verify_url = f"{app.config['PUBLIC_BASE_URL']}/verify/{row.certificate_number}"
    assert pdf_qr_payloads(stored) == [verify_url]


def test_download_is_for_the_owner_and_admins_only(app, client, actor, admin, student, issued):
    _, row = issued
    other = actor("student")
    for path in ("{}/download", "download/{}"):
        error(download(client, row.id, other.headers, path), 404)
        error(download(client, row.id, {}, path), 401)
        response = download(client, row.id, admin.headers, path)
        assert response.status_code == 200 and response.mimetype == "application/pdf"
        assert sha256(response.data) == row.sha256
        error(download(client, row.id + 1000, admin.headers, path), 404)
    # The upload root's public route does not serve certificates.
    assert stored_file(app, row).is_file()
    public = client.get(f"/static/uploads/{row.file_path}")
    assert public.status_code == 404 and b"%PDF" not in public.data


def test_a_missing_file_is_rendered_again_with_the_same_bytes(app, client, student, issued):
    _, row = issued
    path = stored_file(app, row)
    original = path.read_bytes()
    path.unlink()

    response = download(client, row.id, student.headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.data == original
    assert sha256(response.data) == row.sha256
    assert path.is_file() and path.read_bytes() == original
    again = certificate_of(app, row.user_id, row.course_id)
    assert (again.sha256, again.file_path) == (row.sha256, row.file_path)

    # Through the second route as well.
    path.unlink()
    response = download(client, row.id, student.headers, "download/{}")
    assert response.status_code == 200 and response.data == original


# --- 3. Unicode, long and hostile names -------------------------------------------------------

def test_unicode_name_is_drawn_and_shown(app, client, actor, course):
    zoe = actor("student", first_name="Zoë", last_name="Ñúñez-Marín")
    complete_course(client, zoe, course)
    row = certificate_of(app, zoe.id, course.id)
    assert row.holder_name == "Zoë Ñúñez-Marín"

    response = download(client, row.id, zoe.headers)
    assert response.status_code == 200
    assert "Zoë Ñúñez-Marín" in pdf_text(response.data)

    assert ok(verify_api(client, row.certificate_number))["holder_name"] == "Zoë Ñúñez-Marín"
    page = verify_page(client, row.certificate_number)
    assert page.status_code == 200
    assert "Zoë Ñúñez-Marín" in page.get_data(as_text=True)


def test_latin_names_embed_no_font_and_other_scripts_embed_dejavu(app, client, actor, course):
    """A Latin-script certificate uses the PDF's own Helvetica (nothing embedded: a few KB);
    a name in another script is drawn with DejaVu Sans, embedded as a subset."""
    plain = actor("student", first_name="Ada", last_name="Lovelace")
    greek = actor("student", first_name="Ἀλέξανδρος", last_name="Петров")
    for who in (plain, greek):
        complete_course(client, who, course)
    latin_pdf = download(client, certificate_of(app, plain.id, course.id).id, plain.headers).data
    other_pdf = download(client, certificate_of(app, greek.id, course.id).id, greek.headers).data
    assert b"/FontFile" not in latin_pdf and b"/Helvetica" in latin_pdf
    assert len(latin_pdf) < 10 * 1024, len(latin_pdf)
    assert "Ada Lovelace" in pdf_text(latin_pdf)
    assert b"/FontFile2" in other_pdf
    assert "Ἀλέξανδρος Петров" in pdf_text(other_pdf)
    for data in (latin_pdf, other_pdf):  # the QR code reads back either way
        assert any(p.startswith("http") and "/verify/" in p for p in pdf_qr_payloads(data))


def test_a_150_character_name_is_fitted_not_refused(app, client, actor, course):
    first, last = "Maximiliana" + "x" * 64, "Wolfeschlegelsteinhausen" + "y" * 50
    full = f"{first} {last}"
    assert len(full) == 150
    long_named = actor("student", first_name=first, last_name=last)
    complete_course(client, long_named, course)
    row = certificate_of(app, long_named.id, course.id)
    assert row.holder_name == full

    response = download(client, row.id, long_named.headers)
    assert response.status_code == 200
    text_ = pdf_text(response.data)
    flat = text_.replace("\n", "")
    if full not in flat:
        # Shortened with an ellipsis rather than clipped: a long prefix of the name, then "…".
        prefix = max((full[:n] for n in range(len(full), 0, -1) if full[:n] + "…" in flat),
                     key=len, default="")
        assert len(prefix) >= 40, text_
    assert row.certificate_number in text_ and course.title in text_
    assert ok(verify_api(client, row.certificate_number))["holder_name"] == full


def test_a_hostile_name_is_drawn_literally_and_escaped_on_the_page(app, client, course):
    hostile = "<script>alert(1)</script>"
    with app.app_context():  # the API would refuse this name: insert it directly
        user = User(email="mallory@example.com", first_name=hostile, last_name="Mallory",
                    role="student", is_active=True, is_email_verified=True)
        user.set_password("Passw0rd!")
        db.session.add(user)
        db.session.commit()
        user_id = user.id
    from flask_jwt_extended import create_access_token

    with app.app_context():
        headers = {"Authorization": "Bearer " + create_access_token(db.session.get(User, user_id))}
    mallory = Actor(user_id, headers)
    complete_course(client, mallory, course)
    row = certificate_of(app, user_id, course.id)
    assert row.holder_name == f"{hostile} Mallory"

    response = download(client, row.id, headers)
    assert response.status_code == 200
    assert f"{hostile} Mallory" in pdf_text(response.data)

    assert ok(verify_api(client, row.certificate_number))["holder_name"] == f"{hostile} Mallory"
    page = verify_page(client, row.certificate_number)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Mallory" in html
    assert "<script" not in html.lower()


def test_an_unknown_number_with_markup_is_escaped_on_the_page(client):
    # (no "/" in it: a slash would route elsewhere)
    response = verify_page(client, "%3Cscript%3Ealert(1)%3C%5Cscript%3E")
    assert response.status_code == 404
    html = response.get_data(as_text=True)
    assert "Unknown certificate" in html
    assert "<script" not in html.lower()
    assert "&lt;script&gt;" in html


# --- 4. verification --------------------------------------------------------------------------

def test_the_verify_api_is_public_and_says_nothing_private(app, client, student, course, issued):
    enrollment_id, row = issued
    body = ok(verify_api(client, row.certificate_number))
    assert body["valid"] is True and body["status"] == "valid"
    assert body["certificate_number"] == row.certificate_number
    assert body["holder_name"] == "Alan Turing"
    assert body["course_title"] == course.title
    assert body["completion_date"] == row.completion_date.isoformat()
    assert body["sha256"] == row.sha256
    assert not PRIVATE_KEYS & set(body), body
    with app.app_context():
        email = db.session.get(User, student.id).email
    assert email not in verify_api(client, row.certificate_number).get_data(as_text=True)

    unknown = verify_api(client, "AIFA-1-1-DEADBEEF00")
    assert unknown.status_code == 404
    assert unknown.get_json()["valid"] is False


def test_the_verify_page_shows_valid_and_unknown(app, client, course, issued):
    _, row = issued
    response = verify_page(client, row.certificate_number)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "Valid certificate" in html and "Revoked certificate" not in html
    assert row.certificate_number in html
    assert course.title in html and "Alan Turing" in html
    assert row.sha256 in html
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp

    unknown = verify_page(client, "AIFA-1-1-DEADBEEF00")
    assert unknown.status_code == 404 and unknown.mimetype == "text/html"
    html = unknown.get_data(as_text=True)
    assert "Unknown certificate" in html and "Valid certificate" not in html
    assert "default-src 'none'" in unknown.headers["Content-Security-Policy"]


def test_the_page_checks_an_uploaded_pdf_against_the_issued_file(app, client, student, issued):
    _, row = issued
    pdf = download(client, row.id, student.headers).data
    assert sha256(pdf) == row.sha256

    genuine = check_upload(client, row.certificate_number, pdf)
    assert genuine.status_code == 200
    html = genuine.get_data(as_text=True)
    assert "The uploaded file is the issued certificate." in html
    assert "NOT the issued certificate" not in html

    altered = bytearray(pdf)
    altered[len(altered) // 2] ^= 0x01
    forged = check_upload(client, row.certificate_number, bytes(altered))
    assert forged.status_code == 200
    html = forged.get_data(as_text=True)
    assert "NOT the issued certificate" in html
    assert "The uploaded file is the issued certificate." not in html


def test_revocation_is_admin_only_audited_and_shown(app, client, admin, student, issued):
    _, row = issued
    path = f"{API}/admin/certificates/{row.id}/revoke"
    reason = {"reason": "refund issued"}

    error(client.put(path, json=reason, headers=student.headers), 403)
    error(client.put(path, json={}, headers=admin.headers), 422, "validation_error")
    error(client.put(path, json=reason), 401)
    assert certificate_of(app, student.id, row.course_id).status == "valid"
    error(client.put(f"{API}/admin/certificates/{row.id + 1000}/revoke", json=reason,
                     headers=admin.headers), 404)

    body = ok(client.put(path, json=reason, headers=admin.headers))
    assert body["certificate"]["id"] == row.id
    assert body["certificate"]["status"] == "revoked"
    assert body["certificate"]["revoked_at"]
    revoked = certificate_of(app, student.id, row.course_id)
    assert revoked.status == "revoked" and revoked.revoked_at is not None
    assert revoked.revoked_reason == "refund issued"
    log = fetch(app, AuditLog, AuditLog.action == "certificate.revoke")
    assert log is not None
    assert (log.actor_id, log.target_type, log.target_id) == (admin.id, "certificate", row.id)
    assert log.details["reason"] == "refund issued"

    error(client.put(path, json=reason, headers=admin.headers), 409)
    assert count(app, AuditLog, AuditLog.action == "certificate.revoke") == 1

    facts = ok(verify_api(client, row.certificate_number))
    assert facts["valid"] is False and facts["status"] == "revoked"
    assert facts["revoked_at"]
    assert facts["holder_name"] == "Alan Turing"  # revoked, never vanished

    page = verify_page(client, row.certificate_number)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Revoked certificate" in html and "Valid certificate" not in html

    # The holder still lists it, marked revoked.
    listed = ok(client.get(CERTS, headers=student.headers))["certificates"]
    assert [(c["id"], c["status"]) for c in listed] == [(row.id, "revoked")]


def test_verification_is_rate_limited_per_address(app, client):
    limit = app.config["RATE_LIMIT_VERIFY"]
    allowed = int(limit.split()[0])
    assert allowed == 30, limit
    assert app.config["TRUSTED_PROXIES"] == ()
    for n in range(allowed):
        # Enumerating numbers; a forged X-Forwarded-For (no proxy is trusted) changes nothing.
        response = client.get(f"{CERTS}/verify/AIFA-1-1-{n:010X}",
                              headers={"X-Forwarded-For": f"203.0.113.{n + 1}"},
                              environ_base={"REMOTE_ADDR": "198.51.100.77"})
        assert response.status_code == 404, (n, response.status_code)
    blocked = verify_api(client, "AIFA-1-1-FFFFFFFFFF", ip="198.51.100.77")
    assert blocked.status_code == 429
    assert blocked.get_json()["code"], blocked.get_json()
    # Another address is not affected.
    assert verify_api(client, "AIFA-1-1-FFFFFFFFFF", ip="198.51.100.78").status_code == 404


def test_the_verification_page_is_rate_limited_too(app, client):
    allowed = int(app.config["RATE_LIMIT_VERIFY"].split()[0])
    for n in range(allowed):
        assert verify_page(client, f"AIFA-1-1-{n:010X}", ip="198.51.100.90").status_code == 404
    assert verify_page(client, "AIFA-1-1-FFFFFFFFFF", ip="198.51.100.90").status_code == 429


# --- 5. generation routes ---------------------------------------------------------------------

def test_the_student_generates_only_for_a_completed_course(app, client, actor, student, course):
    path = f"{CERTS}/generate/{course.id}"
    error(client.post(path, headers=student.headers), 404)  # not enrolled
    enrollment_id = enroll(client, student, course)
    complete_lessons(client, student, enrollment_id, course.lesson_ids[:1])
    error(client.post(path, headers=student.headers), 403, "course_not_completed")
    assert count(app, Certificate) == 0

    complete_lessons(client, student, enrollment_id, course.lesson_ids[1:])
    row = certificate_of(app, student.id, course.id)
    body = ok(client.post(path, headers=student.headers))
    assert body["message"] == "Certificate already issued"
    assert body["certificate"]["certificate_number"] == row.certificate_number
    assert body["certificate"]["id"] == row.id
    assert body["certificate"]["verify_url"].endswith(f"/verify/{row.certificate_number}")
    # With an (empty) JSON body too.
    body = ok(client.post(path, json={}, headers=student.headers))
    assert body["certificate"]["id"] == row.id
    assert count(app, Certificate) == 1

    error(client.post(f"{CERTS}/generate/{course.id + 1000}", headers=student.headers), 404)
    error(client.post(path), 401)


def test_an_admin_generates_for_a_named_student(app, client, admin, student, course, issued):
    _, old = issued
    delete_certificate(app, student.id, course.id)
    path = f"{CERTS}/generate/{course.id}"

    body = ok(client.post(path, json={"user_id": student.id}, headers=admin.headers), 201)
    assert body["message"] == "Certificate issued"
    new = certificate_of(app, student.id, course.id)
    assert new is not None and new.certificate_number != old.certificate_number
    assert body["certificate"]["certificate_number"] == new.certificate_number
    assert body["certificate"]["user_id"] == student.id
    assert new.holder_name == "Alan Turing"  # the student's name, not the admin's
    assert NUMBER_RE.match(new.certificate_number)
    assert stored_file(app, new).is_file()
    assert sha256(stored_file(app, new).read_bytes()) == new.sha256

    body = ok(client.post(path, json={"user_id": student.id}, headers=admin.headers), 200)
    assert body["message"] == "Certificate already issued"
    assert body["certificate"]["certificate_number"] == new.certificate_number
    assert count(app, Certificate) == 1
    # The admin is not enrolled: without user_id it is the admin's own certificate, 404.
    error(client.post(path, headers=admin.headers), 404)


def test_a_student_cannot_generate_for_someone_else(app, client, actor, student, course, issued):
    delete_certificate(app, student.id, course.id)
    intruder = actor("student")
    error(client.post(f"{CERTS}/generate/{course.id}", json={"user_id": student.id},
                      headers=intruder.headers), 404)
    assert count(app, Certificate) == 0


def test_generate_for_enrollment_is_admin_only(app, client, actor, admin, student, course,
                                               issued):
    enrollment_id, _ = issued
    delete_certificate(app, student.id, course.id)
    path = f"{CERTS}/generate-for-enrollment/{enrollment_id}"

    error(client.post(path, headers=student.headers), 403)
    error(client.post(path), 401)
    assert count(app, Certificate) == 0

    body = ok(client.post(path, headers=admin.headers), 201)
    row = certificate_of(app, student.id, course.id)
    assert body["certificate"]["id"] == row.id and row.enrollment_id == enrollment_id
    assert row.status == "valid" and stored_file(app, row).is_file()
    body = ok(client.post(path, headers=admin.headers), 200)
    assert body["certificate"]["id"] == row.id
    assert count(app, Certificate) == 1

    error(client.post(f"{CERTS}/generate-for-enrollment/{enrollment_id + 1000}",
                      headers=admin.headers), 404)
    unfinished = actor("student")
    unfinished_enrollment = enroll(client, unfinished, course)
    error(client.post(f"{CERTS}/generate-for-enrollment/{unfinished_enrollment}",
                      headers=admin.headers), 403, "course_not_completed")
    assert count(app, Certificate) == 1


def bulk(client, path: str, headers: dict) -> dict:
    """Start bulk issuance (202 with the job; jobs run inline in tests) and return its result,
    read back through the job's own URL."""
    response = client.post(path, headers=headers)
    body = ok(response, 202)
    job = body["job"]
    assert job["kind"] == "certificates.bulk_issue" and job["status"] == "finished", job
    assert response.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    again = ok(client.get(response.headers["Location"], headers=headers))["job"]
    assert again == job
    return job["result"]


def test_bulk_generation_issues_the_missing_certificates(app, client, actor, admin, course):
    students = [actor("student", first_name=f"Bulk{n}", last_name="Learner") for n in range(8)]
    for who in students[:7]:
        complete_course(client, who, course)
    unfinished = students[7]
    enrollment_id = enroll(client, unfinished, course)
    complete_lessons(client, unfinished, enrollment_id, course.lesson_ids[:1])
    assert count(app, Certificate) == 7
    kept = {who.id: certificate_of(app, who.id, course.id).certificate_number
            for who in students[5:7]}
    for who in students[:5]:
        delete_certificate(app, who.id, course.id)
    path = f"{CERTS}/bulk-generate/{course.id}"

    error(client.post(path, headers=students[0].headers), 403)
    error(client.post(path), 401)
    assert count(app, Certificate) == 2

    body = bulk(client, path, admin.headers)
    assert (body["issued"], body["skipped"], body["failed"]) == (5, 2, 0), body
    assert count(app, Certificate, Certificate.course_id == course.id) == 7
    for who in students[:5]:
        row = certificate_of(app, who.id, course.id)
        assert row.status == "valid" and NUMBER_RE.match(row.certificate_number)
        assert row.holder_name == f"{who_name(app, who.id)}"
        assert sha256(stored_file(app, row).read_bytes()) == row.sha256
    for who in students[5:7]:
        assert certificate_of(app, who.id, course.id).certificate_number == kept[who.id]
    assert certificate_of(app, unfinished.id, course.id) is None

    body = bulk(client, path, admin.headers)
    assert (body["issued"], body["failed"]) == (0, 0), body
    assert body["skipped"] == 7
    assert count(app, Certificate) == 7

    error(client.post(f"{CERTS}/bulk-generate/{course.id + 1000}", headers=admin.headers), 404)


def test_one_failure_in_bulk_costs_only_its_certificate(app, client, actor, admin, course,
                                                        monkeypatch):
    from services import certificate_service

    students = [actor("student") for _ in range(4)]
    for who in students:
        complete_course(client, who, course)
    taken = certificate_of(app, students[0].id, course.id).certificate_number
    for who in students[1:]:
        delete_certificate(app, who.id, course.id)

    # The number drawn for the second student collides with an existing certificate.
    real_new_number = certificate_service.new_number

    def colliding(course_id: int, user_id: int) -> str:
        return taken if user_id == students[2].id else real_new_number(course_id, user_id)

    monkeypatch.setattr(certificate_service, "new_number", colliding)
    body = bulk(client, f"{CERTS}/bulk-generate/{course.id}", admin.headers)
    assert (body["issued"], body["skipped"], body["failed"]) == (2, 1, 1), body
    assert certificate_of(app, students[2].id, course.id) is None
    for who in (students[1], students[3]):
        row = certificate_of(app, who.id, course.id)
        assert row is not None and row.status == "valid" and row.sha256
    assert certificate_of(app, students[0].id, course.id).certificate_number == taken

    monkeypatch.setattr(certificate_service, "new_number", real_new_number)
    body = bulk(client, f"{CERTS}/bulk-generate/{course.id}", admin.headers)
    assert (body["issued"], body["skipped"], body["failed"]) == (1, 3, 0), body
    assert count(app, Certificate) == 4


def who_name(app, user_id: int) -> str:
    with app.app_context():
        return db.session.get(User, user_id).full_name


# --- 6. the race (PostgreSQL) -----------------------------------------------------------------

@pytest.fixture
def race_app(postgres_app):
    return postgres_app


RACERS = 6


def test_simultaneous_generation_gives_one_certificate(race_app):
    client = race_app.test_client()
    owner = actor_in(race_app, "instructor", 1, "cert-race")
    built = build_course(client, owner, "Race Course", lessons=1)
    for round_no in range(3):
        racer = actor_in(race_app, "student", 10 + round_no, "cert-race")
        complete_course(client, racer, built)
        delete_certificate(race_app, racer.id, built.id)

        results = fire_together(race_app, RACERS, "POST", f"{CERTS}/generate/{built.id}",
                                racer.headers)
        assert all(status in (200, 201) for status, _ in results), results
        assert any(status == 201 for status, _ in results), results
        numbers = {body["certificate"]["certificate_number"] for _, body in results}
        assert len(numbers) == 1, results
        with race_app.app_context():
            rows = db.session.scalars(select(Certificate).where(
                Certificate.user_id == racer.id, Certificate.course_id == built.id)).all()
            assert len(rows) == 1
            row = rows[0]
            assert numbers == {row.certificate_number}
            assert row.sha256 and stored_file(race_app, row).is_file()
            assert sha256(stored_file(race_app, row).read_bytes()) == row.sha256
