"""The public catalog, the one access rule for course content, lesson-resource files and
course thumbnails, all through the HTTP API: status codes, bodies, and what ends up in the
database and on disk. Also: the public rate limit and the number of SQL statements a list or a
course outline costs (it must not grow with the page size or the outline's size)."""
from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import struct
import uuid
import zipfile
import zlib
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from models import (
    Course,
    Enrollment,
    Lesson,
    LessonResource,
    MasterCategory,
    Module,
    Subcategory,
    db,
)
from tests.support.queries import recorded_statements

API = "/api/v1"
BASE_TIME = datetime(2025, 1, 1, 9, 0, tzinfo=timezone.utc)
_addresses = itertools.count(1)


def fresh_ip() -> dict:
    """A client address nobody has used yet, so one test's many public requests never run
    into the public per-address limit (the limit itself has its own test)."""
    n = next(_addresses)
    return {"REMOTE_ADDR": f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"}


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert isinstance(body["error"], str) and body["error"]
    assert set(body) <= {"error", "code", "details"}
    if code is not None:
        assert body["code"] == code
    return body


# --- file contents ----------------------------------------------------------------------------

PDF = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
       b"trailer\n<< /Root 1 0 R >>\n%%EOF\n")


def png_bytes(color: bytes = b"\xff\x00\x00") -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" + color))
            + chunk(b"IEND", b""))


def docx_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(
            "[Content_Types].xml",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="xml" ContentType="application/xml"/></Types>')
        archive.writestr(
            "word/document.xml",
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
            "<w:body><w:p><w:r><w:t>Hello</w:t></w:r></w:p></w:body></w:document>")
    return buffer.getvalue()


# --- database setup (ORM, inside an app context; ids out) -------------------------------------

def add(app, model, **fields) -> int:
    with app.app_context():
        row = model(**fields)
        db.session.add(row)
        db.session.commit()
        return row.id


def add_course(app, instructor_id: int, *, status: str = "published", minutes: int = 0,
               **fields) -> int:
    values = {
        "title": "A course",
        "slug": f"course-{uuid.uuid4().hex[:12]}",
        "instructor_id": instructor_id,
        "status": status,
        "price": Decimal("0.00"),
        "created_at": BASE_TIME + timedelta(minutes=minutes),
        "updated_at": BASE_TIME + timedelta(minutes=minutes),
    }
    if status == "published":
        values["published_at"] = values["created_at"]
    values.update(fields)
    return add(app, Course, **values)


def add_master(app, name: str, *, position: int = 0, is_active: bool = True) -> int:
    return add(app, MasterCategory, name=name, slug=f"m-{uuid.uuid4().hex[:10]}",
               position=position, is_active=is_active)


def add_sub(app, master_id: int, name: str, *, position: int = 0, is_active: bool = True) -> int:
    return add(app, Subcategory, master_category_id=master_id, name=name,
               slug=f"s-{uuid.uuid4().hex[:10]}", position=position, is_active=is_active)


def add_resource_row(app, lesson_id: int, *, title: str = "Slides") -> int:
    """A resource row without a file (for the pages that only list resources)."""
    return add(app, LessonResource, lesson_id=lesson_id, title=title,
               original_filename="slides.pdf", stored_path=f"resources/{uuid.uuid4().hex}.pdf",
               mime_type="application/pdf", file_type="pdf", file_size=len(PDF),
               sha256=hashlib.sha256(PDF).hexdigest())


def enroll(app, user_id: int, course_id: int, status: str = "active") -> int:
    return add(app, Enrollment, user_id=user_id, course_id=course_id, status=status)


def count_rows(app, model) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(model))


# --- disk -------------------------------------------------------------------------------------

def upload_root(app) -> Path:
    return Path(app.config["UPLOAD_FOLDER"]).resolve()


def files_under(root: Path) -> set[str]:
    """Every file below `root`, hidden ones (half-written uploads) included."""
    found = set()
    for directory, _dirs, names in os.walk(root):
        for name in names:
            found.add(str(Path(directory, name).relative_to(root)))
    return found


def upload_form(filename: str | None, content: bytes | None, **fields) -> dict:
    data = dict(fields)
    if filename is not None:
        data["file"] = (io.BytesIO(content or b""), filename)
    return data


# ==============================================================================================
# 1. The one access rule: the outline for everyone, full content for the enrolled, the owner
#    and admins
# ==============================================================================================

SECRET = "SECRET BODY"
SECRET_VIDEO = "https://videos.example.com/secret-lesson.mp4"
PREVIEW_BODY = "PREVIEW BODY, free for everyone"
PREVIEW_VIDEO = "https://videos.example.com/preview.mp4"


@pytest.fixture
def gated(app, make_user):
    """A published course: one module, a normal lesson with a PDF resource, a preview lesson."""
    owner = make_user("instructor")
    course = add_course(app, owner, title="Gated course")
    module = add(app, Module, course_id=course, title="Module one", position=0)
    lesson = add(app, Lesson, module_id=module, title="The paid lesson", content=SECRET,
                 video_url=SECRET_VIDEO, duration_minutes=12, position=0, is_preview=False)
    preview = add(app, Lesson, module_id=module, title="The free preview", content=PREVIEW_BODY,
                  video_url=PREVIEW_VIDEO, duration_minutes=5, position=1, is_preview=True)
    resource = add_resource_row(app, lesson, title="Secret slides")
    return {"owner": owner, "course": course, "module": module, "lesson": lesson,
            "preview": preview, "resource": resource}


def course_pages(course_id: int) -> list[str]:
    return [f"{API}/public/courses/{course_id}", f"{API}/public/get-courses/{course_id}",
            f"{API}/courses/{course_id}", f"{API}/courses/{course_id}/modules"]


def lessons_of(body: dict) -> dict[int, dict]:
    modules = body["course"]["modules"] if "course" in body else body["modules"]
    return {lesson["id"]: lesson for module in modules for lesson in module["lessons"]}


def viewer_headers(kind: str, gated: dict, app, make_user, auth_headers) -> dict:
    if kind == "guest":
        return {}
    if kind in ("student", "cancelled", "refunded", "enrolled", "completed"):
        student = make_user("student")
        if kind != "student":
            enroll(app, student, gated["course"],
                   status="active" if kind == "enrolled" else kind)
        return auth_headers(student)
    if kind == "other_instructor":
        return auth_headers(make_user("instructor"))
    if kind == "owner":
        return auth_headers(gated["owner"])
    if kind == "admin":
        return auth_headers(make_user("admin"))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["guest", "student", "cancelled", "refunded",
                                  "other_instructor"])
def test_outsiders_get_the_outline_without_bodies_videos_or_resources(
        client, app, make_user, auth_headers, gated, kind):
    headers = viewer_headers(kind, gated, app, make_user, auth_headers)
    for path in course_pages(gated["course"]):
        response = client.get(path, headers=headers, environ_base=fresh_ip())
        assert response.status_code == 200, (path, response.get_data(as_text=True))
        text = response.get_data(as_text=True)
        assert SECRET not in text and SECRET_VIDEO not in text and "Secret slides" not in text
        assert f"/files/download/{gated['resource']}" not in text
        body = response.get_json()
        lessons = lessons_of(body)
        assert set(lessons) == {gated["lesson"], gated["preview"]}
        locked = lessons[gated["lesson"]]
        assert locked["title"] == "The paid lesson" and locked["duration_minutes"] == 12
        assert locked["content"] is None and locked["video_url"] is None
        assert locked["resources"] == []
        preview = lessons[gated["preview"]]
        assert preview["content"] == PREVIEW_BODY and preview["video_url"] == PREVIEW_VIDEO
        access = body["course"]["access"] if "course" in body else body["access"]
        assert access == "guest"
        if "course" in body:
            assert body["course"]["has_full_access"] is False
            assert body["course"]["lesson_count"] == 2


@pytest.mark.parametrize("kind,level", [("enrolled", "enrolled"), ("completed", "enrolled"),
                                        ("owner", "owner"), ("admin", "admin")])
def test_enrolled_owner_and_admin_get_full_content(client, app, make_user, auth_headers, gated,
                                                   kind, level):
    headers = viewer_headers(kind, gated, app, make_user, auth_headers)
    for path in course_pages(gated["course"]):
        response = client.get(path, headers=headers, environ_base=fresh_ip())
        assert response.status_code == 200, (path, response.get_data(as_text=True))
        body = response.get_json()
        lessons = lessons_of(body)
        full = lessons[gated["lesson"]]
        assert full["content"] == SECRET and full["video_url"] == SECRET_VIDEO
        [resource] = full["resources"]
        assert resource["id"] == gated["resource"] and resource["title"] == "Secret slides"
        assert resource["download_url"] == f"/api/v1/files/download/{gated['resource']}"
        assert resource["mime_type"] == "application/pdf" and resource["file_type"] == "pdf"
        assert "stored_path" not in resource and "sha256" not in resource
        assert lessons[gated["preview"]]["content"] == PREVIEW_BODY
        access = body["course"]["access"] if "course" in body else body["access"]
        assert access == level
        if "course" in body:
            assert body["course"]["has_full_access"] is True


def test_a_cancelled_enrollment_that_is_reactivated_opens_the_content(
        client, app, make_user, auth_headers, gated):
    student = make_user("student")
    enrollment = enroll(app, student, gated["course"], status="cancelled")
    headers = auth_headers(student)
    path = f"{API}/public/courses/{gated['course']}"
    assert lessons_of(client.get(path, headers=headers).get_json())[gated["lesson"]]["content"] \
        is None
    with app.app_context():
        db.session.get(Enrollment, enrollment).status = "active"
        db.session.commit()
    assert lessons_of(client.get(path, headers=headers).get_json())[gated["lesson"]]["content"] \
        == SECRET


def test_draft_course_is_not_public(client, app, make_user, auth_headers):
    owner = make_user("instructor")
    draft = add_course(app, owner, status="draft", title="Unreleased")
    module = add(app, Module, course_id=draft, title="M")
    add(app, Lesson, module_id=module, title="L", content=SECRET)
    student = auth_headers(make_user("student"))
    for path in (f"{API}/public/courses/{draft}", f"{API}/public/get-courses/{draft}"):
        for headers in ({}, student, auth_headers(owner)):
            response = client.get(path, headers=headers, environ_base=fresh_ip())
            assert_error(response, 404, "not_found")
            assert SECRET not in response.get_data(as_text=True)
    for path in (f"{API}/courses/{draft}", f"{API}/courses/{draft}/modules"):
        assert_error(client.get(path), 404, "not_found")
        assert_error(client.get(path, headers=student), 404, "not_found")
        # The owner still sees their own draft, in full.
        owned = client.get(path, headers=auth_headers(owner))
        assert owned.status_code == 200 and SECRET in owned.get_data(as_text=True)
    # A draft never shows up in the public list either.
    listed = client.get(f"{API}/public/get-courses", environ_base=fresh_ip()).get_json()
    assert draft not in [c["id"] for c in listed["courses"]]
    assert_error(client.get(f"{API}/public/courses/999999"), 404, "not_found")


# ==============================================================================================
# 2. Files: lesson resources (upload, download, hostile uploads, delete) and thumbnails
# ==============================================================================================

@pytest.fixture
def lesson_setup(app, make_user, auth_headers):
    owner = make_user("instructor")
    course = add_course(app, owner, title="Files course")
    module = add(app, Module, course_id=course, title="M")
    lesson = add(app, Lesson, module_id=module, title="L", content="body")
    return {"owner": owner, "owner_headers": auth_headers(owner), "course": course,
            "module": module, "lesson": lesson}


UPLOAD_PATHS = {
    "lesson-resources": lambda lesson_id: (
        f"{API}/lesson-resources/create-lesson-resources/{lesson_id}", {}),
    "files": lambda lesson_id: (f"{API}/files/upload", {"lesson_id": str(lesson_id)}),
}


def post_upload(client, via: str, lesson_id: int, headers: dict, filename, content, **fields):
    path, extra = UPLOAD_PATHS[via](lesson_id)
    return client.post(path, headers=headers, environ_base=fresh_ip(),
                        data=upload_form(filename, content, **extra, **fields),
                        content_type="multipart/form-data")


@pytest.mark.parametrize("via", list(UPLOAD_PATHS))
def test_owner_uploads_a_resource(client, app, lesson_setup, via):
    root = upload_root(app)
    before = files_under(root)
    response = post_upload(client, via, lesson_setup["lesson"], lesson_setup["owner_headers"],
                           "Q3 report (final).pdf", PDF, title="Quarterly report")
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.get_json()
    assert body["message"]
    resource = body["resource"]
    assert resource["lesson_id"] == lesson_setup["lesson"]
    assert resource["title"] == "Quarterly report"
    assert resource["original_filename"] == "Q3_report_final.pdf"
    assert resource["mime_type"] == "application/pdf"
    assert resource["file_type"] == "pdf"
    assert resource["file_size"] == len(PDF)
    assert resource["download_url"] == f"/api/v1/files/download/{resource['id']}"
    assert "stored_path" not in resource
    with app.app_context():
        row = db.session.get(LessonResource, resource["id"])
        stored_path, sha, uploader = row.stored_path, row.sha256, row.uploaded_by_id
    assert re.fullmatch(r"resources/[0-9a-f]{32}\.pdf", stored_path)
    assert sha == hashlib.sha256(PDF).hexdigest()
    assert uploader == lesson_setup["owner"]
    assert files_under(root) - before == {stored_path}
    assert (root / stored_path).read_bytes() == PDF


def test_resource_title_defaults_to_the_sanitised_filename(client, app, lesson_setup):
    response = post_upload(client, "files", lesson_setup["lesson"], lesson_setup["owner_headers"],
                           "notes.txt", "Grüße, notes in UTF-8\n".encode())
    assert response.status_code == 201
    resource = response.get_json()["resource"]
    assert resource["title"] == "notes.txt"
    assert resource["mime_type"] == "text/plain" and resource["file_type"] == "document"


@pytest.fixture
def uploaded(client, app, lesson_setup):
    response = post_upload(client, "lesson-resources", lesson_setup["lesson"],
                           lesson_setup["owner_headers"], "Q3 report (final).pdf", PDF)
    assert response.status_code == 201
    resource_id = response.get_json()["resource"]["id"]
    with app.app_context():
        stored_path = db.session.get(LessonResource, resource_id).stored_path
    return {**lesson_setup, "resource": resource_id, "stored_path": stored_path}


def test_enrolled_student_downloads_the_exact_bytes(client, app, make_user, auth_headers,
                                                    uploaded):
    student = make_user("student")
    enroll(app, student, uploaded["course"])
    response = client.get(f"{API}/files/download/{uploaded['resource']}",
                          headers=auth_headers(student))
    assert response.status_code == 200
    assert response.mimetype == "application/pdf"
    assert response.headers["Content-Disposition"] == "attachment; filename=Q3_report_final.pdf"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.data == PDF
    assert int(response.headers["Content-Length"]) == len(PDF)


@pytest.mark.parametrize("query", ["", "?inline=1", "?inline=true"])
def test_a_private_download_is_never_cached_inline_or_not(client, app, make_user, auth_headers,
                                                          uploaded, query):
    """A lesson resource is for its readers only: no shared cache may keep it, shown inline
    (a PDF or video in the browser) or downloaded, whole or a range of it."""
    student = make_user("student")
    enroll(app, student, uploaded["course"])
    path = f"{API}/files/download/{uploaded['resource']}{query}"
    for headers in ({}, {"Range": "bytes=0-9"}):
        response = client.get(path, headers={**auth_headers(student), **headers})
        assert response.status_code in (200, 206)
        assert response.headers["Cache-Control"] == "private, no-store"
        assert "Expires" not in response.headers
        inline = bool(query)
        assert response.headers["Content-Disposition"].startswith(
            "inline" if inline else "attachment")


def test_download_supports_a_range_request(client, app, make_user, auth_headers, uploaded):
    student = make_user("student")
    enroll(app, student, uploaded["course"])
    response = client.get(f"{API}/files/download/{uploaded['resource']}",
                          headers={**auth_headers(student), "Range": "bytes=0-3"})
    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 0-3/{len(PDF)}"
    assert response.data == PDF[:4] == b"%PDF"
    unsatisfiable = client.get(f"{API}/files/download/{uploaded['resource']}",
                               headers={**auth_headers(student),
                                        "Range": f"bytes={len(PDF) + 10}-"})
    assert unsatisfiable.status_code == 416


def test_download_access(client, app, make_user, auth_headers, uploaded):
    path = f"{API}/files/download/{uploaded['resource']}"
    assert_error(client.get(path), 401)
    outsider = make_user("student")
    body = assert_error(client.get(path, headers=auth_headers(outsider)), 403, "not_enrolled")
    assert "%PDF" not in str(body)
    cancelled = make_user("student")
    enroll(app, cancelled, uploaded["course"], status="cancelled")
    assert_error(client.get(path, headers=auth_headers(cancelled)), 403, "not_enrolled")
    assert_error(client.get(path, headers=auth_headers(make_user("instructor"))), 403)
    admin = client.get(path, headers=auth_headers(make_user("admin")))
    assert admin.status_code == 200 and admin.data == PDF
    owner = client.get(path, headers=uploaded["owner_headers"])
    assert owner.status_code == 200 and owner.data == PDF
    assert_error(client.get(f"{API}/files/download/999999",
                            headers=uploaded["owner_headers"]), 404)


def test_deleting_a_resource_removes_its_file(client, app, make_user, auth_headers, uploaded):
    stored = upload_root(app) / uploaded["stored_path"]
    assert stored.is_file()
    path = f"{API}/lesson-resources/delete-lesson-resources/{uploaded['resource']}"
    assert_error(client.delete(path, headers=auth_headers(make_user("instructor"))), 403)
    assert_error(client.delete(path, headers=auth_headers(make_user("student"))), 403)
    assert stored.is_file()
    response = client.delete(path, headers=uploaded["owner_headers"])
    assert response.status_code == 200 and response.get_json()["message"]
    assert not stored.exists()
    with app.app_context():
        assert db.session.get(LessonResource, uploaded["resource"]) is None
    assert_error(client.get(f"{API}/files/download/{uploaded['resource']}",
                            headers=uploaded["owner_headers"]), 404)


def test_resources_are_not_served_from_the_public_media_path(client, app, uploaded):
    name = uploaded["stored_path"].split("/", 1)[1]
    assert (upload_root(app) / uploaded["stored_path"]).is_file()
    for path in (f"/static/uploads/resources/{name}",
                 f"/static/uploads/thumbnails/../resources/{name}",
                 f"/static/uploads/thumbnails/%2e%2e%2fresources%2f{name}"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert b"%PDF" not in response.data


def test_traversal_filename_is_stored_under_a_generated_name(client, app, lesson_setup):
    root = upload_root(app)
    outside = root.parent
    before_inside, before_outside = files_under(root), files_under(outside)
    response = post_upload(client, "files", lesson_setup["lesson"], lesson_setup["owner_headers"],
                           "../../evil.pdf", PDF)
    assert response.status_code == 201, response.get_data(as_text=True)
    resource = response.get_json()["resource"]
    assert resource["original_filename"] == "evil.pdf"
    with app.app_context():
        stored_path = db.session.get(LessonResource, resource["id"]).stored_path
    assert re.fullmatch(r"resources/[0-9a-f]{32}\.pdf", stored_path)
    assert files_under(root) - before_inside == {stored_path}
    # Nothing new anywhere else, and no evil.pdf above the upload root.
    new_outside = files_under(outside) - before_outside
    assert new_outside == {str(Path(root.name, stored_path))}
    for parent in (root.parent, root.parent.parent, root / "resources" / ".."):
        assert not (parent / "evil.pdf").exists()


HOSTILE_UPLOADS = [
    # (id, filename, content, status, code)
    ("null-byte", "evil\x00.pdf", PDF, 422, "validation_error"),
    ("null-byte-before-ext", "evil.php\x00.pdf", PDF, 422, "validation_error"),
    ("png-bytes-as-pdf", "slides.pdf", png_bytes(), 415, "unsupported_media_type"),
    ("double-extension", "report.pdf.exe", PDF, 415, "unsupported_media_type"),
    ("php", "shell.php", b"<?php system($_GET['c']); ?>", 415, "unsupported_media_type"),
    ("no-extension", "README", b"plain words", 415, "unsupported_media_type"),
    ("svg", "logo.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415,
     "unsupported_media_type"),
    ("docx-not-zip", "letter.docx", b"This is not a zip archive at all", 415,
     "unsupported_media_type"),
    ("zip-as-docx", "letter.docx", None, 415, "unsupported_media_type"),
    ("txt-invalid-utf8", "notes.txt", b"caf\xe9 \xff\xfe not utf-8 at all", 415,
     "unsupported_media_type"),
    ("txt-nul", "notes.txt", b"hello\x00world", 415, "unsupported_media_type"),
    ("empty", "empty.pdf", b"", 422, "validation_error"),
]


def _zip_without_word() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "just a zip")
    return buffer.getvalue()


@pytest.mark.parametrize("case", HOSTILE_UPLOADS, ids=[case[0] for case in HOSTILE_UPLOADS])
def test_hostile_upload_is_refused_and_leaves_nothing(client, app, lesson_setup, case):
    _name, filename, content, status, code = case
    if content is None:
        content = _zip_without_word()
    root = upload_root(app)
    before_files, before_rows = files_under(root.parent), count_rows(app, LessonResource)
    response = post_upload(client, "files", lesson_setup["lesson"], lesson_setup["owner_headers"],
                           filename, content)
    assert_error(response, status, code)
    assert files_under(root.parent) == before_files
    assert count_rows(app, LessonResource) == before_rows


@pytest.mark.parametrize("via", list(UPLOAD_PATHS))
def test_missing_file_is_422(client, app, lesson_setup, via):
    before_files = files_under(upload_root(app))
    response = post_upload(client, via, lesson_setup["lesson"], lesson_setup["owner_headers"],
                           None, None, title="No file")
    body = assert_error(response, 422, "validation_error")
    assert "file" in body.get("details", {})
    assert files_under(upload_root(app)) == before_files
    assert count_rows(app, LessonResource) == 0


def test_files_upload_without_lesson_id_is_422(client, app, lesson_setup):
    response = client.post(f"{API}/files/upload", headers=lesson_setup["owner_headers"],
                           data=upload_form("a.pdf", PDF), content_type="multipart/form-data")
    body = assert_error(response, 422, "validation_error")
    assert "lesson_id" in body["details"]
    assert count_rows(app, LessonResource) == 0


def test_upload_to_a_missing_lesson_is_404(client, app, lesson_setup):
    before_files = files_under(upload_root(app))
    response = post_upload(client, "files", 999999, lesson_setup["owner_headers"], "a.pdf", PDF)
    assert_error(response, 404)
    assert files_under(upload_root(app)) == before_files


def test_real_docx_is_accepted(client, app, lesson_setup):
    content = docx_bytes()
    response = post_upload(client, "files", lesson_setup["lesson"], lesson_setup["owner_headers"],
                           "Letter.DOCX", content)
    assert response.status_code == 201, response.get_data(as_text=True)
    resource = response.get_json()["resource"]
    assert resource["mime_type"] == (
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document")
    assert resource["file_type"] == "document" and resource["file_size"] == len(content)
    with app.app_context():
        stored_path = db.session.get(LessonResource, resource["id"]).stored_path
    assert re.fullmatch(r"resources/[0-9a-f]{32}\.docx", stored_path)
    assert (upload_root(app) / stored_path).read_bytes() == content


@pytest.mark.parametrize("via", list(UPLOAD_PATHS))
def test_oversize_upload_is_413_and_leaves_nothing(client, app, lesson_setup, via):
    root = upload_root(app)
    before_files = files_under(root.parent)
    previous = app.config["MAX_CONTENT_LENGTH"]
    app.config["MAX_CONTENT_LENGTH"] = 2048
    try:
        response = post_upload(client, via, lesson_setup["lesson"], lesson_setup["owner_headers"],
                               "big.pdf", PDF + b"0" * 8192)
    finally:
        app.config["MAX_CONTENT_LENGTH"] = previous
    assert_error(response, 413, "payload_too_large")
    assert files_under(root.parent) == before_files
    assert count_rows(app, LessonResource) == 0


@pytest.mark.parametrize("via", list(UPLOAD_PATHS))
def test_only_the_owner_or_an_admin_uploads(client, app, make_user, auth_headers, lesson_setup,
                                            via):
    before_files = files_under(upload_root(app))
    other = post_upload(client, via, lesson_setup["lesson"],
                        auth_headers(make_user("instructor")), "a.pdf", PDF)
    assert_error(other, 403, "not_course_owner")
    student = post_upload(client, via, lesson_setup["lesson"], auth_headers(make_user("student")),
                          "a.pdf", PDF)
    assert_error(student, 403)
    guest = post_upload(client, via, lesson_setup["lesson"], {}, "a.pdf", PDF)
    assert_error(guest, 401)
    assert files_under(upload_root(app)) == before_files
    assert count_rows(app, LessonResource) == 0
    admin = post_upload(client, via, lesson_setup["lesson"], auth_headers(make_user("admin")),
                        "a.pdf", PDF)
    assert admin.status_code == 201
    assert count_rows(app, LessonResource) == 1


# --- thumbnails -------------------------------------------------------------------------------

THUMBNAIL_URL = re.compile(r"/static/uploads/thumbnails/([0-9a-f]{32})\.png")


def course_thumbnail(app, course_id: int) -> str | None:
    with app.app_context():
        return db.session.get(Course, course_id).thumbnail_url


def test_thumbnail_upload_replace_and_public_serving(client, app, lesson_setup):
    root = upload_root(app)
    course = lesson_setup["course"]
    first_png = png_bytes(b"\xff\x00\x00")
    response = client.post(f"{API}/courses/{course}/thumbnail",
                           headers=lesson_setup["owner_headers"], environ_base=fresh_ip(),
                           data=upload_form("cover.png", first_png),
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    first_url = response.get_json()["course"]["thumbnail_url"]
    assert THUMBNAIL_URL.fullmatch(first_url)
    assert course_thumbnail(app, course) == first_url
    first_file = root / first_url[len("/static/uploads/"):]
    assert first_file.read_bytes() == first_png

    served = client.get(first_url)  # public: no token
    assert served.headers["Cache-Control"] == "public, max-age=3600"  # and cacheable
    assert served.status_code == 200
    assert served.mimetype == "image/png" and served.data == first_png
    assert served.headers["X-Content-Type-Options"] == "nosniff"

    second_png = png_bytes(b"\x00\x00\xff")
    response = client.post(f"{API}/files/upload-course-thumbnail",
                           headers=lesson_setup["owner_headers"], environ_base=fresh_ip(),
                           data=upload_form("cover2.png", second_png, course_id=str(course)),
                           content_type="multipart/form-data")
    assert response.status_code == 200, response.get_data(as_text=True)
    second_url = response.get_json()["course"]["thumbnail_url"]
    assert THUMBNAIL_URL.fullmatch(second_url) and second_url != first_url
    assert course_thumbnail(app, course) == second_url
    assert not first_file.exists()  # the replaced file is gone
    assert client.get(first_url).status_code == 404
    assert client.get(second_url).data == second_png


@pytest.mark.parametrize("filename,content", [("cover.pdf", PDF), ("cover.png", PDF),
                                              ("cover.php", b"<?php ?>")])
def test_thumbnail_must_be_an_image(client, app, lesson_setup, filename, content):
    course = lesson_setup["course"]
    before_files = files_under(upload_root(app).parent)
    for path, extra in ((f"{API}/courses/{course}/thumbnail", {}),
                        (f"{API}/files/upload-course-thumbnail", {"course_id": str(course)})):
        response = client.post(path, headers=lesson_setup["owner_headers"],
                               environ_base=fresh_ip(),
                               data=upload_form(filename, content, **extra),
                               content_type="multipart/form-data")
        assert_error(response, 415, "unsupported_media_type")
    assert course_thumbnail(app, course) is None
    assert files_under(upload_root(app).parent) == before_files


def test_thumbnail_needs_the_owner(client, app, make_user, auth_headers, lesson_setup):
    course = lesson_setup["course"]
    before_files = files_under(upload_root(app))
    response = client.post(f"{API}/courses/{course}/thumbnail",
                           headers=auth_headers(make_user("instructor")),
                           data=upload_form("cover.png", png_bytes()),
                           content_type="multipart/form-data")
    assert_error(response, 403, "not_course_owner")
    response = client.post(f"{API}/files/upload-course-thumbnail",
                           headers=auth_headers(make_user("student")),
                           data=upload_form("cover.png", png_bytes(), course_id=str(course)),
                           content_type="multipart/form-data")
    assert_error(response, 403)
    assert course_thumbnail(app, course) is None
    assert files_under(upload_root(app)) == before_files


# ==============================================================================================
# 3. The public catalog
# ==============================================================================================

def public_get(client, path: str, **query):
    return client.get(f"{API}/public{path}", query_string=query, environ_base=fresh_ip())


def ids(response) -> list[int]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return [course["id"] for course in response.get_json()["courses"]]


def test_public_categories_are_active_and_ordered(client, app):
    second = add_master(app, "Second", position=2)
    first = add_master(app, "First", position=0)
    add_master(app, "Hidden", position=1, is_active=False)
    middle = add_master(app, "Middle", position=1)
    for path in ("/categories", "/get-categories"):
        response = public_get(client, path)
        assert response.status_code == 200
        body = response.get_json()
        assert [c["id"] for c in body["categories"]] == [first, middle, second]
        assert body["pagination"]["total"] == 3
        assert all(c["is_active"] for c in body["categories"])
    assert public_get(client, "/categories").get_json() == \
        public_get(client, "/get-categories").get_json()


def test_public_subcategories(client, app):
    tech = add_master(app, "Tech", position=0)
    arts = add_master(app, "Arts", position=1)
    hidden_master = add_master(app, "Hidden", is_active=False)
    web = add_sub(app, tech, "Web", position=1)
    data = add_sub(app, tech, "Data", position=0)
    add_sub(app, tech, "Retired", position=2, is_active=False)
    music = add_sub(app, arts, "Music")
    add_sub(app, hidden_master, "Under hidden")

    response = public_get(client, f"/categories/{tech}/subcategories")
    assert response.status_code == 200
    body = response.get_json()
    assert body["category"]["id"] == tech
    assert [s["id"] for s in body["subcategories"]] == [data, web]
    assert_error(public_get(client, f"/categories/{hidden_master}/subcategories"), 404)
    assert_error(public_get(client, "/categories/999999/subcategories"), 404)

    listed = public_get(client, "/get-subcategories", master_category_id=tech).get_json()
    assert [s["id"] for s in listed["subcategories"]] == [data, web]
    everything = public_get(client, "/get-subcategories").get_json()
    assert set(s["id"] for s in everything["subcategories"]) == {data, web, music}
    assert public_get(client, "/get-subcategories", master_category_id=arts) \
        .get_json()["subcategories"][0]["id"] == music


def test_subcategory_courses_are_published_only(client, app, make_user):
    owner = make_user("instructor")
    tech = add_master(app, "Tech")
    web = add_sub(app, tech, "Web")
    other = add_sub(app, tech, "Other")
    published = add_course(app, owner, title="Published web", subcategory_id=web, minutes=1)
    add_course(app, owner, title="Draft web", subcategory_id=web, status="draft", minutes=2)
    add_course(app, owner, title="Archived web", subcategory_id=web, status="archived", minutes=3)
    add_course(app, owner, title="Other", subcategory_id=other, minutes=4)
    response = public_get(client, f"/subcategories/{web}/courses")
    assert ids(response) == [published]
    body = response.get_json()
    assert body["subcategory"]["id"] == web and body["pagination"]["total"] == 1
    course = body["courses"][0]
    assert course["instructor"]["id"] == owner and "email" not in course["instructor"]
    assert course["subcategory"] == {"id": web, "name": "Web", "master_category_id": tech}
    assert_error(public_get(client, "/subcategories/999999/courses"), 404)


@pytest.fixture
def catalog(app, make_user):
    """Four published courses (plus a draft and an archived one that must never show)."""
    owner = make_user("instructor")
    tech, food = add_master(app, "Tech"), add_master(app, "Food")
    s1, s2, s3 = add_sub(app, tech, "Programming"), add_sub(app, tech, "Advanced"), \
        add_sub(app, food, "Cooking")
    c1 = add_course(app, owner, title="python basics", subcategory_id=s1, price=Decimal("0"),
                    difficulty="beginner", minutes=1)
    c2 = add_course(app, owner, title="Advanced Python", subcategory_id=s2,
                    price=Decimal("49.99"), difficulty="advanced", minutes=2)
    c3 = add_course(app, owner, title="Cooking 101", subcategory_id=s3, price=Decimal("10.00"),
                    difficulty="beginner", minutes=3)
    c4 = add_course(app, owner, title="Data Science", subcategory_id=s1, price=Decimal("99.00"),
                    difficulty="intermediate", minutes=4)
    draft = add_course(app, owner, title="Python Draft", subcategory_id=s1, status="draft",
                       price=Decimal("5.00"), minutes=5)
    archived = add_course(app, owner, title="Python Archived", subcategory_id=s1,
                          status="archived", price=Decimal("0"), minutes=6)
    return {"tech": tech, "food": food, "s1": s1, "s2": s2, "s3": s3, "c1": c1, "c2": c2,
            "c3": c3, "c4": c4, "draft": draft, "archived": archived}


def test_get_courses_search_filter(client, catalog):
    c = catalog
    get = lambda **q: ids(public_get(client, "/get-courses", **q))  # noqa: E731
    assert set(get(search="python")) == {c["c1"], c["c2"]}  # never the draft or archived one
    assert get(search="python", sort="price_desc") == [c["c2"], c["c1"]]
    assert get(category_id=c["food"], search="python") == []
    assert ids(client.get(f"{API}/courses", query_string={"search": "PYTH"})) == [c["c2"], c["c1"]]


def test_get_courses_filters(client, catalog):
    c = catalog
    get = lambda **q: ids(public_get(client, "/get-courses", **q))  # noqa: E731
    assert get() == [c["c4"], c["c3"], c["c2"], c["c1"]]  # newest first by default
    assert set(get(category_id=c["tech"])) == {c["c1"], c["c2"], c["c4"]}
    assert get(category_id=c["food"]) == [c["c3"]]
    assert set(get(subcategory_id=c["s1"])) == {c["c1"], c["c4"]}
    assert set(get(difficulty="beginner")) == {c["c1"], c["c3"]}
    assert set(get(min_price="10")) == {c["c2"], c["c3"], c["c4"]}
    assert set(get(max_price="10")) == {c["c1"], c["c3"]}
    assert set(get(min_price="10", max_price="50")) == {c["c2"], c["c3"]}
    assert get(min_price="49.99", max_price="49.99") == [c["c2"]]
    assert get(is_free="true") == [c["c1"]]
    assert set(get(is_free="false")) == {c["c2"], c["c3"], c["c4"]}
    assert get(category_id=c["tech"], difficulty="advanced") == [c["c2"]]
    body = assert_error(public_get(client, "/get-courses", min_price="50", max_price="10"),
                        422, "validation_error")
    assert "min_price" in body["details"]
    assert_error(public_get(client, "/get-courses", difficulty="expert"), 422)
    assert_error(public_get(client, "/get-courses", min_price="-1"), 422)
    assert_error(public_get(client, "/get-courses", sort="random"), 422)
    # The /courses catalog answers the same.
    response = client.get(f"{API}/courses", query_string={"category_id": c["tech"],
                                                          "sort": "price_asc"})
    assert ids(response) == [c["c1"], c["c2"], c["c4"]]
    # Money is a number with two decimals, with its currency.
    course = public_get(client, "/get-courses", sort="price_desc").get_json()["courses"][1]
    assert course["price"] == 49.99 and course["currency"] == "USD" and course["is_free"] is False


@pytest.mark.parametrize("sort,expected", [
    ("price_asc", ["c1", "c3", "c2", "c4"]),
    ("price_desc", ["c4", "c2", "c3", "c1"]),
    ("title", ["c2", "c3", "c4", "c1"]),  # case-insensitive: "python basics" is last
    ("newest", ["c4", "c3", "c2", "c1"]),
    ("oldest", ["c1", "c2", "c3", "c4"]),
])
def test_get_courses_sorts(client, catalog, sort, expected):
    assert ids(public_get(client, "/get-courses", sort=sort)) == [catalog[k] for k in expected]


def test_get_courses_pagination(client, catalog):
    c = catalog
    capped = public_get(client, "/get-courses", per_page=500).get_json()
    assert capped["pagination"]["per_page"] == 100 and len(capped["courses"]) == 4
    first = public_get(client, "/get-courses", per_page=3, sort="oldest").get_json()
    assert [x["id"] for x in first["courses"]] == [c["c1"], c["c2"], c["c3"]]
    assert first["pagination"] == {"page": 1, "per_page": 3, "total": 4, "pages": 2,
                                   "has_next": True, "has_prev": False}
    second = public_get(client, "/get-courses", per_page=3, page=2, sort="oldest").get_json()
    assert [x["id"] for x in second["courses"]] == [c["c4"]]
    assert second["pagination"]["has_next"] is False and second["pagination"]["has_prev"] is True
    beyond = public_get(client, "/get-courses", page=50)
    assert beyond.status_code == 200
    body = beyond.get_json()
    assert body["courses"] == [] and body["pagination"]["has_next"] is False
    assert body["pagination"]["total"] == 4
    for bad in ({"page": 0}, {"page": -1}, {"per_page": 0}, {"page": "x"}):
        assert_error(public_get(client, "/get-courses", **bad), 422, "validation_error")


@pytest.fixture
def searchable(app, make_user):
    owner = make_user("instructor")
    rows = {
        "python": dict(title="Python Programming", short_description="Start coding today",
                       description="Variables, loops and functions"),
        "web": dict(title="Web Development", short_description="Build sites with Flask and Python",
                    description="HTML basics"),
        "data": dict(title="Data Analysis", short_description="Spreadsheets",
                     description="Learn PANDAS with pYthon in depth"),
        "garden": dict(title="Gardening", short_description="Grow tomatoes",
                       description="Soil and water"),
        "percent": dict(title="100% Practical SQL", short_description="Queries",
                        description="Joins"),
        "snake": dict(title="snake_case naming", short_description="Style guide",
                      description="Identifiers"),
        "snakex": dict(title="Snakexcase patterns", short_description="Style guide",
                       description="Identifiers"),
        "quote": dict(title="O'Reilly Guide", short_description="Books",
                      description="Reading"),
    }
    found = {key: add_course(app, owner, minutes=i, **fields)
             for i, (key, fields) in enumerate(rows.items())}
    found["draft"] = add_course(app, owner, status="draft", minutes=50, title="Python Secrets",
                                short_description="python draft", description="python")
    return found


def search_both(client, query: str) -> set[int]:
    """The same search through GET ?q= and POST {query}; both must agree."""
    by_get = client.get(f"{API}/public/courses/search", query_string={"q": query},
                        environ_base=fresh_ip())
    by_post = client.post(f"{API}/public/search", json={"query": query},
                          environ_base=fresh_ip())
    assert by_get.status_code == 200, by_get.get_data(as_text=True)
    assert by_post.status_code == 200, by_post.get_data(as_text=True)
    assert by_get.get_json()["query"] == query
    got, posted = ids(by_get), ids(by_post)
    assert got == posted
    return set(got)


def test_search_matches_title_and_descriptions(client, searchable):
    s = searchable
    python = {s["python"], s["web"], s["data"]}
    assert search_both(client, "python") == python
    assert search_both(client, "PYTHON") == python
    assert search_both(client, "pyth") == python  # a prefix
    assert search_both(client, "Tomatoes") == {s["garden"]}  # short description
    assert search_both(client, "soil") == {s["garden"]}  # description
    assert search_both(client, "python flask") == {s["web"]}  # every word must match
    assert search_both(client, "pandas python") == {s["data"]}
    assert search_both(client, "python gardening") == set()
    assert search_both(client, "zzzzqqq") == set()
    assert s["draft"] not in search_both(client, "secrets python draft")
    # get-courses?search= uses the same matching.
    assert set(ids(public_get(client, "/get-courses", search="pyth"))) == python


def test_search_validation(client, searchable):
    assert_error(client.get(f"{API}/public/courses/search", environ_base=fresh_ip()), 422)
    assert_error(client.get(f"{API}/public/courses/search", query_string={"q": ""},
                            environ_base=fresh_ip()), 422)
    assert_error(client.post(f"{API}/public/search", json={}, environ_base=fresh_ip()), 422)
    assert_error(client.post(f"{API}/public/search", json={"query": "x" * 201},
                             environ_base=fresh_ip()), 422)


def test_search_treats_sql_and_like_metacharacters_literally(client, searchable):
    s = searchable
    assert search_both(client, "snake_case") == {s["snake"]}  # "_" is not a wildcard
    assert search_both(client, "100%") == {s["percent"]}
    assert search_both(client, "o'reilly") == {s["quote"]}
    assert search_both(client, "' OR 1=1 --") == set()
    assert search_both(client, "python'; DROP TABLE courses; --") == set()
    assert search_both(client, "python") == {s["python"], s["web"], s["data"]}  # still there


@pytest.mark.parametrize("query", ["%", "'", "!!! ... ???", "%%%", "-- ;"])
def test_search_of_only_punctuation_returns_nothing(client, searchable, query):
    assert search_both(client, query) == set()


def test_get_courses_search_of_only_punctuation_returns_nothing(client, searchable):
    assert ids(public_get(client, "/get-courses", search="%")) == []


def test_public_list_is_rate_limited_per_address(client, app, catalog):
    limit = int(app.config["RATE_LIMIT_PUBLIC"].split()[0])
    assert limit == 30
    crowd = {"REMOTE_ADDR": "198.51.100.30"}
    for _ in range(limit):
        assert client.get(f"{API}/public/get-courses", environ_base=crowd).status_code == 200
    refused = client.get(f"{API}/public/get-courses", environ_base=crowd)
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another address is not affected.
    assert client.get(f"{API}/public/get-courses",
                      environ_base={"REMOTE_ADDR": "198.51.100.31"}).status_code == 200


# ==============================================================================================
# 4. Query counts: a page costs the same number of statements whatever its size
# ==============================================================================================

def statements_for(app, client, path: str, **kwargs) -> int:
    with recorded_statements(app) as statements:
        response = client.get(path, environ_base=fresh_ip(), **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    return len(statements)


def test_course_list_statements_do_not_grow_with_the_page(client, app, make_user):
    master = add_master(app, "Everything")
    created = []
    for i in range(25):
        instructor = make_user("instructor")
        sub = add_sub(app, master, f"Sub {i}")
        created.append(add_course(app, instructor, title=f"Course {i}", subcategory_id=sub,
                                  minutes=i))
    small = statements_for(app, client, f"{API}/public/get-courses", query_string={"per_page": 5})
    large = statements_for(app, client, f"{API}/public/get-courses",
                           query_string={"per_page": 25})
    assert small == large
    assert large <= 4
    # The same for the /courses catalog.
    assert statements_for(app, client, f"{API}/courses", query_string={"per_page": 5}) == \
        statements_for(app, client, f"{API}/courses", query_string={"per_page": 25})
    body = client.get(f"{API}/public/get-courses", query_string={"per_page": 25}).get_json()
    assert len({c["instructor"]["id"] for c in body["courses"]}) == 25
    assert len({c["subcategory"]["id"] for c in body["courses"]}) == 25


def test_search_statements_do_not_grow_with_the_page(client, app, make_user):
    master = add_master(app, "Everything")
    for i in range(25):
        add_course(app, make_user("instructor"), title=f"Course {i}",
                   subcategory_id=add_sub(app, master, f"Sub {i}"), minutes=i)
    for path, key in ((f"{API}/public/courses/search", "q"),
                      (f"{API}/public/get-courses", "search")):
        small = statements_for(app, client, path, query_string={key: "course", "per_page": 5})
        large = statements_for(app, client, path, query_string={key: "course", "per_page": 25})
        assert small == large <= 4


def _course_with_outline(app, instructor: int, subcategory: int, modules: int) -> int:
    course = add_course(app, instructor, title=f"Outline {modules}", subcategory_id=subcategory)
    with app.app_context():
        for m in range(modules):
            module = Module(course_id=course, title=f"Module {m}", position=m)
            db.session.add(module)
            db.session.flush()
            for n in range(3 if modules > 1 else 1):
                lesson = Lesson(module_id=module.id, title=f"Lesson {m}.{n}", content="body",
                                position=n, is_preview=(n == 0))
                db.session.add(lesson)
                db.session.flush()
                db.session.add(LessonResource(
                    lesson_id=lesson.id, title="r", original_filename="r.pdf",
                    stored_path=f"resources/{uuid.uuid4().hex}.pdf",
                    mime_type="application/pdf", file_type="pdf", file_size=1))
        db.session.commit()
    return course


def test_course_detail_statements_do_not_grow_with_the_outline(client, app, make_user,
                                                               auth_headers):
    instructor = make_user("instructor")
    sub = add_sub(app, add_master(app, "Cat"), "Sub")
    small = _course_with_outline(app, instructor, sub, modules=1)
    large = _course_with_outline(app, instructor, sub, modules=6)
    student = make_user("student")
    enroll(app, student, small)
    enroll(app, student, large)
    viewers = {"guest": {}, "enrolled": auth_headers(student)}
    statements_for(app, client, "/api/v1/notifications/unread-count",
                   headers=viewers["enrolled"])  # the token's first request fills the mirror
    for name, headers in viewers.items():
        for path in ("/api/v1/public/courses/{}", "/api/v1/courses/{}",
                     "/api/v1/courses/{}/modules"):
            few = statements_for(app, client, path.format(small), headers=headers)
            many = statements_for(app, client, path.format(large), headers=headers)
            assert few == many, (name, path, few, many)
            # Fixed costs only: (signed in) the user; the course with its instructor and
            # subcategory; (a student) the enrollment with the lessons completed; three for
            # the outline; the prerequisites (the module list has none).
            assert many <= (5 if name == "guest" else 7), (name, path, many)
    body = client.get(f"{API}/public/courses/{large}", headers=viewers["enrolled"]).get_json()
    lessons = [lesson for module in body["course"]["modules"] for lesson in module["lessons"]]
    assert len(body["course"]["modules"]) == 6 and len(lessons) == 18
    assert all(len(lesson["resources"]) == 1 for lesson in lessons)
