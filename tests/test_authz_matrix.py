"""The authorization matrix (issue 11): every rule of the app's URL map × nine identities, each
cell asserting the expected outcome — "allow" (the authorization layer let the request through:
any status but 401/403/404 and 5xx; 503 only where a payment or sign-in gateway is not
configured in tests), or exactly 401, 403 or 404 in the one error shape {"error", "code"}.

Identities: guest (no token), student (A), another student (B), instructor (A), another
instructor (B), admin, deactivated (a student whose account was switched off after the token was
issued), revoked (student A's token after POST /auth/logout), expired (student A's token, expired
five seconds ago).

Object-level checks: path parameters name the objects of a small world — instructor A's
published course with its module, lesson, PDF resource, live session (starting in 5 minutes)
and student A's completed enrollment, payment (partly refunded: one refund with its credit note),
certificate, notification and refund request —
so "another student" and "another instructor" always reach for something that is not theirs.

Completeness: a rule of the URL map without an entry here fails `test_every_rule_has_an_entry`,
and so does an entry without a rule. Skipped on purpose, and only these: the spectree
documentation pages (DOCS_RULES) and the probe blueprint that tests/conftest.py adds to the test
app (not part of create_app()).

Leaks: an allowed answer to anyone but student A, instructor A and the admin must not contain
course A's lesson body or video URL, the live session's meeting URL or password, nor student A's
e-mail address (login, which answers with the account logged into, excepted).

How the cells run: one test per rule. The world is built with direct ORM inserts at the start of
the test; the refused identities go first, on that untouched world, then the allowed ones, and
the world is built again after a 2xx answer to a DELETE (or to a write that should have been
refused), so one identity's deletion never decides the next identity's outcome. Known
authorization bugs go in KNOWN_BUGS: the rule's test is then xfail(strict=True, raises=AuthzBug),
so the bug cells show as XFAIL while every other cell of the rule still fails the test for real,
and a fixed bug fails it too (remove the entry).
"""
from __future__ import annotations

import hashlib
import io
import itertools
import re
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask_jwt_extended import create_access_token, create_refresh_token
from werkzeug.security import generate_password_hash

from models import (
    BackgroundJob,
    Certificate,
    ContactForm,
    Course,
    CoursePrerequisite,
    Enrollment,
    Lesson,
    LessonProgress,
    LessonResource,
    LiveSession,
    MasterCategory,
    Module,
    Notification,
    Payment,
    PaymentRefund,
    RefundRequest,
    Subcategory,
    User,
    db,
)
from services.credentials import openbadge

API = "/api/v1"

# --- identities ---------------------------------------------------------------------------------

GUEST, STUDENT, OTHER_STUDENT = "guest", "student", "other_student"
INSTRUCTOR, OTHER_INSTRUCTOR, ADMIN = "instructor", "other_instructor", "admin"
DEACTIVATED, REVOKED, EXPIRED = "deactivated", "revoked", "expired"
IDENTITIES = (GUEST, STUDENT, OTHER_STUDENT, INSTRUCTOR, OTHER_INSTRUCTOR, ADMIN, DEACTIVATED,
              REVOKED, EXPIRED)
# Run order: the refused first, the allowed last and the admin at the very end, so that
# rebuilding the world after a destructive cell is rarely needed.
RUN_ORDER = (GUEST, DEACTIVATED, REVOKED, EXPIRED, OTHER_STUDENT, OTHER_INSTRUCTOR, STUDENT,
             INSTRUCTOR, ADMIN)
assert sorted(RUN_ORDER) == sorted(IDENTITIES)

ALLOW = "allow"


def expect(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    table = dict(base)
    for name, value in changes.items():
        assert name in table, name
        table[name] = value
    return table


# Route ignores the Authorization header entirely.
PUBLIC = {name: ALLOW for name in IDENTITIES}
# Public, but reads the caller with optional_user(): a bad token is still refused (401), an
# inactive account is served as a guest.
OPTIONAL = expect(PUBLIC, revoked=401, expired=401)
# @login_required (any active role).
LOGIN = {GUEST: 401, STUDENT: ALLOW, OTHER_STUDENT: ALLOW, INSTRUCTOR: ALLOW,
         OTHER_INSTRUCTOR: ALLOW, ADMIN: ALLOW, DEACTIVATED: 401, REVOKED: 401, EXPIRED: 401}
# @instructor_required (instructors and admins).
INSTRUCTORS = expect(LOGIN, student=403, other_student=403)
# @instructor_required plus "the course's instructor or an admin" on instructor A's course.
OWNER = expect(INSTRUCTORS, other_instructor=403)
# @admin_required.
ADMINS = expect(INSTRUCTORS, instructor=403, other_instructor=403)
# Student A's own object: 404 for everyone else, also the admin (notifications, refund requests).
HOLDER_ONLY = expect(LOGIN, other_student=404, instructor=404, other_instructor=404, admin=404)
# Student A's object that the admin may also open (payments, certificates).
HOLDER_OR_ADMIN = expect(HOLDER_ONLY, admin=ALLOW)
# Student A's enrollment: also its course's instructor.
ENROLLMENT_READERS = expect(LOGIN, other_student=404, other_instructor=404)
# A course's content for the enrolled, the owner and admins; others 403 (resources).
CONTENT_READERS = expect(LOGIN, other_student=403, other_instructor=403)
# "My enrollment in course A": only student A has one.
ENROLLED_SELF = HOLDER_ONLY


# --- files --------------------------------------------------------------------------------------

PDF = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
       b"trailer\n<< /Root 1 0 R >>\n%%EOF\n")


def png_bytes() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


PNG = png_bytes()
THUMBNAIL_NAME = "authz-matrix.png"
RESOURCE_PATH = "resources/authz-matrix.pdf"
BLOCKED_IP = "203.0.113.7"
PASSWORD = "Passw0rd!"

# What course A keeps for its enrolled students, its instructor and admins: no other identity
# may ever find these in a response (lesson body and video, the meeting's URL and password),
# nor student A's e-mail address.
SECRET_BODY = "SECRET-LESSON-BODY-7f3a"
SECRET_VIDEO = "https://videos.example.com/secret-lesson-7f3a.mp4"
SECRET_MEETING_URL = "https://zoom.example.com/j/secret-meeting-7f3a"
SECRET_MEETING_PASSWORD = "SECRET-MEETING-PASSWORD-7f3a"
ENTITLED = frozenset({STUDENT, INSTRUCTOR, ADMIN})
# Logging in as student A answers with student A's own account, whoever sends the request.
LEAK_CHECK_EXEMPT = frozenset({("POST", "/api/v1/auth/login")})


# --- the table ----------------------------------------------------------------------------------

World = dict[str, Any]


@dataclass(frozen=True)
class Entry:
    method: str
    rule: str
    expected: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)  # path parameter -> world key or value
    body: Any = None        # JSON body: a dict, or a callable(world) -> dict
    form: Any = None        # multipart body: a callable(world) -> dict (files are fresh each call)
    raw: bytes | None = None  # a raw JSON body (webhooks)
    query: Any = None       # query string: dict or callable(world) -> dict
    gateway: bool = False   # 503 counts as allowed (gateway not configured in tests)
    token: str = "access"   # "refresh": the identities present refresh tokens
    fresh: bool = False     # rebuild the world after each allowed 2xx (always so for DELETE)

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.rule


def row(method: str, path: str, expected: dict[str, Any], **options) -> Entry:
    rule = path if path.startswith(("/static", "/verify", "/.well-known", "/did.json")) \
        else API + path
    assert set(expected) == set(IDENTITIES), (method, path)
    return Entry(method, rule, expected, **options)


_serial = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_serial)}{uuid.uuid4().hex[:6]}"


def phone() -> str:
    """A valid mobile number nobody has used in this run (the per-number OTP limit)."""
    return f"+9198{next(_serial) % 10**8:08d}"


def picture_form(_w: World) -> dict:
    return {"file": (io.BytesIO(PNG), "me.png")}


def thumbnail_form(w: World) -> dict:
    return {"course_id": str(w["course_a"]), "file": (io.BytesIO(PNG), "cover.png")}


def resource_form(_w: World) -> dict:
    return {"title": "Handout", "file": (io.BytesIO(PDF), "handout.pdf")}


def files_upload_form(w: World) -> dict:
    return {"lesson_id": str(w["lesson_a"]), "file": (io.BytesIO(PDF), "handout.pdf")}


def verify_upload_form(_w: World) -> dict:
    return {"file": (io.BytesIO(PDF), "certificate.pdf")}


def new_user_body(_w: World) -> dict:
    return {"email": f"{unique('new')}@example.com", "password": "Str0ng-Passw0rd!",
            "first_name": "New", "last_name": "Person"}


def live_body(w: World) -> dict:
    return {"course_id": w["course_a"], "title": "Office hours",
            "start_time": (w["now"] + timedelta(days=2)).isoformat(), "duration_minutes": 30,
            "meeting_url": "https://meet.example.com/office"}


JSON_WEBHOOK = b'{"event": "payment.captured", "payload": {}}'
RAZORPAY_VERIFY = {"razorpay_order_id": "order_matrix", "razorpay_payment_id": "pay_matrix",
                   "razorpay_signature": "0" * 64}

TABLE: list[Entry] = [
    # --- health ---------------------------------------------------------------------------------
    row("GET", "/health", PUBLIC),
    row("GET", "/health/ready", PUBLIC),

    # --- auth -----------------------------------------------------------------------------------
    row("POST", "/auth/register/send-otp", PUBLIC, body=lambda w: {"phone_number": phone()}),
    row("POST", "/auth/send-token", PUBLIC, body=lambda w: {"phone_number": phone()}),
    row("POST", "/auth/register/verify-otp", PUBLIC,
        body=lambda w: {**new_user_body(w), "phone_number": phone(), "code": "123456"}),
    row("POST", "/auth/verify-otp", PUBLIC,
        body=lambda w: {"phone_number": phone(), "code": "123456"}),
    row("POST", "/auth/register", PUBLIC, body=new_user_body),
    row("POST", "/auth/login", PUBLIC,
        body=lambda w: {"email": w["email"][STUDENT], "password": PASSWORD}),
    row("POST", "/auth/google", PUBLIC, body={"id_token": "not-a-google-token"}, gateway=True),
    # Refresh tokens only: every identity presents its refresh token here.
    row("POST", "/auth/refresh", LOGIN, token="refresh"),
    # verify_type=False and no is_active check: an inactive account may still end its session.
    row("POST", "/auth/logout", expect(LOGIN, deactivated=ALLOW)),
    row("POST", "/auth/password-reset/request", PUBLIC, body={"email": "nobody@example.com"}),
    row("POST", "/auth/forgot-password", PUBLIC, body={"email": "nobody@example.com"}),
    row("POST", "/auth/password-reset/verify", PUBLIC,
        body={"token": "not-a-reset-token", "new_password": "Str0ng-Passw0rd!"}),
    row("POST", "/auth/reset-password/<string:token>", PUBLIC,
        params={"token": "not-a-reset-token"}, body={"password": "Str0ng-Passw0rd!"}),
    row("POST", "/auth/change-password", LOGIN,
        body={"current_password": PASSWORD, "new_password": "An0ther-Str0ng-Passw0rd!"}),
    row("GET", "/auth/profile", LOGIN),
    row("PUT", "/auth/profile", LOGIN, body={"city": "Pune"}),
    row("POST", "/auth/profile/picture", LOGIN, form=picture_form),

    # --- the signed-in user's space ---------------------------------------------------------------
    row("GET", "/users/dashboard", LOGIN),
    row("GET", "/users/enrolled-courses", LOGIN),
    row("GET", "/users/my-courses", LOGIN),
    row("GET", "/users/completed-courses", LOGIN),
    row("GET", "/users/certificates", LOGIN),
    row("GET", "/users/my-teaching-courses", INSTRUCTORS),
    row("GET", "/users/profile", LOGIN),
    row("PUT", "/users/profile", LOGIN, body={"city": "Pune"}),

    # --- master categories and subcategories (admin) ----------------------------------------------
    row("GET", "/master-categories", ADMINS),
    row("POST", "/master-categories", ADMINS, body=lambda w: {"name": unique("Category ")}),
    row("GET", "/master-categories/<int:category_id>", ADMINS),
    row("PUT", "/master-categories/<int:category_id>", ADMINS, body={"description": "Updated"}),
    row("DELETE", "/master-categories/<int:category_id>", ADMINS),
    row("POST", "/master-categories/create-mastercategories", ADMINS,
        body=lambda w: {"name": unique("Category ")}),
    row("GET", "/master-categories/get-mastercategories", ADMINS),
    row("POST", "/master-categories/get-mastercategories", ADMINS),
    row("GET", "/master-categories/get-mastercategories/<int:category_id>", ADMINS),
    row("POST", "/master-categories/get-mastercategories/<int:category_id>", ADMINS),
    row("PUT", "/master-categories/update-mastercategories/<int:category_id>", ADMINS,
        body={"description": "Updated"}),
    row("DELETE", "/master-categories/delete-mastercategories/<int:category_id>", ADMINS),
    row("GET", "/subcategories", ADMINS),
    row("POST", "/subcategories", ADMINS,
        body=lambda w: {"master_category_id": w["master"], "name": unique("Sub ")}),
    row("GET", "/subcategories/<int:subcategory_id>", ADMINS),
    row("PUT", "/subcategories/<int:subcategory_id>", ADMINS, body={"description": "Updated"}),
    row("DELETE", "/subcategories/<int:subcategory_id>", ADMINS),
    row("POST", "/subcategories/create-subcategories", ADMINS,
        body=lambda w: {"master_category_id": w["master"], "name": unique("Sub ")}),
    row("GET", "/subcategories/get-subcategories", ADMINS),
    row("POST", "/subcategories/get-subcategories", ADMINS),
    row("GET", "/subcategories/get-subcategories/<int:subcategory_id>", ADMINS),
    row("POST", "/subcategories/get-subcategories/<int:subcategory_id>", ADMINS),
    row("PUT", "/subcategories/update-subcategories/<int:subcategory_id>", ADMINS,
        body={"description": "Updated"}),
    row("DELETE", "/subcategories/delete-subcategories/<int:subcategory_id>", ADMINS),

    # --- courses ----------------------------------------------------------------------------------
    row("GET", "/courses", PUBLIC),
    row("POST", "/courses", INSTRUCTORS, body={"title": "A new course"}),
    row("POST", "/courses/create-courses", INSTRUCTORS, body={"title": "A new course"}),
    row("GET", "/courses/get-courses", INSTRUCTORS),
    row("GET", "/courses/get-courses/<int:course_id>", OWNER),
    row("GET", "/courses/<int:course_id>", OPTIONAL),
    row("PUT", "/courses/<int:course_id>", OWNER, body={"title": "Renamed course"}),
    row("PUT", "/courses/update-courses/<int:course_id>", OWNER, body={"title": "Renamed course"}),
    row("DELETE", "/courses/<int:course_id>", OWNER),
    row("DELETE", "/courses/delete-courses/<int:course_id>", OWNER),
    row("POST", "/courses/<int:course_id>/submit-review", OWNER),
    row("POST", "/courses/<int:course_id>/thumbnail", OWNER, form=picture_form),
    row("GET", "/courses/<int:course_id>/enrollments", OWNER),
    row("GET", "/courses/<int:course_id>/modules", OPTIONAL),
    row("POST", "/courses/<int:course_id>/modules", OWNER, body={"title": "Another module"}),
    row("PUT", "/courses/<int:course_id>/modules/reorder", OWNER,
        body=lambda w: {"ids": [w["module_a"]]}),
    row("GET", "/courses/<int:course_id>/prerequisites", OPTIONAL),
    row("POST", "/courses/<int:course_id>/prerequisites", OWNER,
        body=lambda w: {"prerequisite_course_ids": [w["course_b"]]}),
    row("PUT", "/courses/<int:course_id>/prerequisites", OWNER,
        body=lambda w: {"prerequisite_course_ids": [w["course_f"]]}),
    row("DELETE", "/courses/<int:course_id>/prerequisites/<int:prerequisite_id>", OWNER),

    # --- prerequisites (the API documentation's paths) --------------------------------------------
    row("POST", "/prerequisites/create-prerequisites/<int:course_id>", OWNER,
        body=lambda w: {"prerequisite_course_ids": [w["course_b"]]}),
    row("GET", "/prerequisites/get-prerequisites/<int:course_id>", OPTIONAL),
    row("PUT", "/prerequisites/update-prerequisites/<int:course_id>", OWNER,
        body=lambda w: {"prerequisite_course_ids": [w["course_f"]]}),
    row("DELETE", "/prerequisites/delete-prerequisites/<int:course_id>/<int:prerequisite_id>",
        OWNER),

    # --- modules ----------------------------------------------------------------------------------
    row("POST", "/modules/create-modules/<int:course_id>", OWNER, body={"title": "Another module"}),
    row("GET", "/modules/get-modules", INSTRUCTORS),
    row("POST", "/modules/get-modules", INSTRUCTORS),
    # Reading a module of a published course: the outline for anyone signed in, full for some.
    row("GET", "/modules/<int:module_id>", LOGIN),
    row("GET", "/modules/get-modules/<int:module_id>", LOGIN),
    row("POST", "/modules/get-modules/<int:module_id>", LOGIN),
    row("PUT", "/modules/<int:module_id>", OWNER, body={"title": "Renamed module"}),
    row("PUT", "/modules/update-modules/<int:module_id>", OWNER, body={"title": "Renamed module"}),
    row("DELETE", "/modules/<int:module_id>", OWNER),
    row("DELETE", "/modules/delete-modules/<int:module_id>", OWNER),
    row("PUT", "/modules/<int:module_id>/lessons/reorder", OWNER,
        body=lambda w: {"ids": [w["lesson_a"]]}),

    # --- lessons ----------------------------------------------------------------------------------
    row("POST", "/lessons/create-lessons/<int:module_id>", OWNER, body={"title": "Another lesson"}),
    row("GET", "/lessons/get-lessons", INSTRUCTORS),
    row("POST", "/lessons/get-lessons", INSTRUCTORS),
    row("GET", "/lessons/<int:lesson_id>", LOGIN),
    row("GET", "/lessons/get-lessons/<int:lesson_id>", LOGIN),
    row("POST", "/lessons/get-lessons/<int:lesson_id>", LOGIN),
    row("PUT", "/lessons/<int:lesson_id>", OWNER, body={"title": "Renamed lesson"}),
    row("PUT", "/lessons/update-lessons/<int:lesson_id>", OWNER, body={"title": "Renamed lesson"}),
    row("DELETE", "/lessons/<int:lesson_id>", OWNER),
    row("DELETE", "/lessons/delete-lessons/<int:lesson_id>", OWNER),

    # --- lesson resources -------------------------------------------------------------------------
    row("POST", "/lesson-resources/create-lesson-resources/<int:lesson_id>", OWNER,
        form=resource_form),
    row("GET", "/lesson-resources/get-lesson-resources", LOGIN),
    row("POST", "/lesson-resources/get-lesson-resources", LOGIN),
    row("GET", "/lesson-resources/<int:resource_id>", CONTENT_READERS),
    row("GET", "/lesson-resources/get-lesson-resources/<int:resource_id>", CONTENT_READERS),
    row("POST", "/lesson-resources/get-lesson-resources/<int:resource_id>", CONTENT_READERS),
    row("PUT", "/lesson-resources/<int:resource_id>", OWNER, body={"title": "Renamed handout"}),
    row("PUT", "/lesson-resources/update-lesson-resources/<int:resource_id>", OWNER,
        body={"title": "Renamed handout"}),
    row("DELETE", "/lesson-resources/<int:resource_id>", OWNER),
    row("DELETE", "/lesson-resources/delete-lesson-resources/<int:resource_id>", OWNER),

    # --- enrollments ------------------------------------------------------------------------------
    # Enrolling in the free course F: anyone signed in.
    row("POST", "/enrollments", LOGIN, body=lambda w: {"course_id": w["course_f"]}),
    row("POST", "/enrollments/create-enrollments/<int:course_id>", LOGIN,
        params={"course_id": "course_f"}),
    row("GET", "/enrollments", LOGIN),
    row("GET", "/enrollments/get-enrollments", LOGIN),
    row("GET", "/enrollments/<int:enrollment_id>", ENROLLMENT_READERS),
    row("GET", "/enrollments/<int:enrollment_id>/progress", ENROLLMENT_READERS),
    # Leaving a course and writing progress: the student only (teachers and admins read).
    row("DELETE", "/enrollments/<int:enrollment_id>", HOLDER_ONLY),
    row("POST", "/enrollments/<int:enrollment_id>/lessons/<int:lesson_id>/complete", HOLDER_ONLY),
    # "My enrollment in course A": only student A has one.
    row("GET", "/enrollments/get-enrollments/<int:course_id>/progress", ENROLLED_SELF),
    row("GET", "/enrollments/get-enrollments/<int:course_id>/lessons/<int:lesson_id>/progress",
        ENROLLED_SELF),
    row("PUT", "/enrollments/get-enrollments/<int:course_id>/lessons/<int:lesson_id>/progress",
        ENROLLED_SELF, body={"completed": True}),
    row("POST", "/enrollments/get-enrollments/<int:course_id>/lessons/<int:lesson_id>/progress",
        ENROLLED_SELF, body={"watch_time_seconds": 30}),

    # --- certificates -----------------------------------------------------------------------------
    row("GET", "/certificates", LOGIN),
    row("GET", "/certificates/get-certificate", LOGIN),
    row("GET", "/certificates/<int:certificate_id>", HOLDER_OR_ADMIN),
    row("GET", "/certificates/<int:certificate_id>/download", HOLDER_OR_ADMIN),
    row("GET", "/certificates/download/<int:certificate_id>", HOLDER_OR_ADMIN),
    row("GET", "/certificates/verify/<string:number>", PUBLIC),
    # The caller's own completed enrollment in course A (an admin names the student).
    row("POST", "/certificates/generate/<int:course_id>", HOLDER_OR_ADMIN,
        body=lambda w: {"user_id": w["user"][STUDENT]}),
    row("POST", "/certificates/generate-for-enrollment/<int:enrollment_id>", ADMINS),
    row("POST", "/certificates/bulk-generate/<int:course_id>", ADMINS),
    row("GET", "/certificates/<int:certificate_id>/credential", HOLDER_OR_ADMIN),

    # --- verifiable credentials (public) ----------------------------------------------------------
    row("GET", "/credentials/<string:number>", PUBLIC),
    row("GET", "/credentials/status/<int:list_id>", PUBLIC, params={"list_id": "status_list"}),
    row("POST", "/credentials/verify", PUBLIC, body={"credential": {"type": "nothing"}}),

    # --- payments ---------------------------------------------------------------------------------
    row("POST", "/payments/razorpay/create-order", LOGIN,
        body=lambda w: {"course_id": w["course_a"]}, gateway=True),
    row("POST", "/payments/create-order", LOGIN,
        body=lambda w: {"course_id": w["course_a"]}, gateway=True),
    row("POST", "/payments/razorpay/verify", LOGIN, body=RAZORPAY_VERIFY, gateway=True),
    row("POST", "/payments/verify-payment", LOGIN, body=RAZORPAY_VERIFY, gateway=True),
    row("POST", "/payments/razorpay/webhook", PUBLIC, raw=JSON_WEBHOOK, gateway=True),
    row("POST", "/payments/stripe/create-checkout", LOGIN,
        body=lambda w: {"course_id": w["course_a"]}, gateway=True),
    row("POST", "/payments/create-checkout-session", LOGIN,
        body=lambda w: {"course_id": w["course_a"]}, gateway=True),
    row("POST", "/payments/stripe/webhook", PUBLIC, raw=JSON_WEBHOOK, gateway=True),
    row("GET", "/payments/history", LOGIN),
    row("GET", "/payments/<int:payment_id>", HOLDER_OR_ADMIN),
    row("GET", "/payments/<int:payment_id>/invoice", HOLDER_OR_ADMIN),
    row("GET", "/payments/<int:payment_id>/refunds/<int:refund_id>/credit-note",
        HOLDER_OR_ADMIN),
    # Only the payer asks for a refund (the admin decides through /admin/refund-requests).
    row("POST", "/payments/<int:payment_id>/refund-request", HOLDER_ONLY,
        body={"reason": "Not what I expected"}),
    row("POST", "/payments/<int:payment_id>/refund", HOLDER_ONLY,
        body={"reason": "Not what I expected"}),

    # --- live sessions ----------------------------------------------------------------------------
    row("GET", "/live-sessions", LOGIN),
    row("GET", "/live-sessions/get-live-sessions", LOGIN),
    row("GET", "/live-sessions/upcoming", LOGIN),
    row("GET", "/live-sessions/get-live-courses/upcoming", LOGIN),
    row("POST", "/live-sessions", OWNER, body=live_body),
    row("POST", "/live-sessions/create-live-sessions", OWNER, body=live_body),
    # Hosts and the course's enrolled students see it; anyone else gets 404.
    row("GET", "/live-sessions/<int:session_id>", ENROLLMENT_READERS),
    row("GET", "/live-sessions/get-live-sessions/<int:session_id>", ENROLLMENT_READERS),
    row("GET", "/live-sessions/<int:session_id>/join", ENROLLMENT_READERS),
    row("GET", "/live-sessions/join-live-sessions/<int:session_id>/join", ENROLLMENT_READERS),
    row("PUT", "/live-sessions/<int:session_id>", OWNER, body={"title": "Moved session"}),
    row("PUT", "/live-sessions/update-live-sessions/<int:session_id>", OWNER,
        body={"title": "Moved session"}),
    row("DELETE", "/live-sessions/<int:session_id>", OWNER),
    row("DELETE", "/live-sessions/delete-live-sessions/<int:session_id>", OWNER),
    row("POST", "/live-sessions/<int:session_id>/recording", OWNER,
        body={"recording_url": "https://videos.example.com/recording.mp4"}),

    # --- notifications ----------------------------------------------------------------------------
    row("GET", "/notifications", LOGIN),
    row("GET", "/notifications/get-notifications", LOGIN),
    row("GET", "/notifications/unread-count", LOGIN),
    row("PUT", "/notifications/<int:notification_id>/read", HOLDER_ONLY),
    row("DELETE", "/notifications/<int:notification_id>", HOLDER_ONLY),
    row("PUT", "/notifications/read-all", LOGIN),
    row("PUT", "/notifications/mark-all-read", LOGIN),
    row("GET", "/notifications/preferences", LOGIN),
    row("PUT", "/notifications/preferences", LOGIN, body={"email_payments": False}),
    row("POST", "/notifications/send", ADMINS,
        body=lambda w: {"user_ids": [w["user"][STUDENT]], "title": "Hello",
                        "message": "A message from the academy"}),
    row("POST", "/notifications/broadcast", ADMINS,
        body={"title": "Hello", "message": "A message for everyone"}),

    # --- contact ----------------------------------------------------------------------------------
    row("POST", "/contact/contact-forms", PUBLIC,
        body={"name": "Ada Lovelace", "email": "ada@example.com", "message": "Hello there"}),
    row("GET", "/contact/contact-forms", ADMINS),
    row("GET", "/contact/contact-forms/<int:form_id>", ADMINS),
    row("PUT", "/contact/contact-forms/<int:form_id>", ADMINS, body={"status": "resolved"}),
    row("DELETE", "/contact/contact-forms/<int:form_id>", ADMINS),

    # --- files ------------------------------------------------------------------------------------
    row("POST", "/files/upload", OWNER, form=files_upload_form),
    row("GET", "/files/download/<int:resource_id>", CONTENT_READERS),
    row("POST", "/files/upload-course-thumbnail", OWNER, form=thumbnail_form),
    row("POST", "/files/upload-profile-picture", LOGIN, form=picture_form),

    # --- the public catalog -----------------------------------------------------------------------
    row("GET", "/public/categories", PUBLIC),
    row("GET", "/public/get-categories", PUBLIC),
    row("GET", "/public/categories/<int:category_id>/subcategories", PUBLIC),
    row("GET", "/public/get-subcategories", PUBLIC),
    row("GET", "/public/subcategories/<int:subcategory_id>/courses", PUBLIC),
    row("GET", "/public/get-courses", PUBLIC),
    row("GET", "/public/courses/<int:course_id>", OPTIONAL),
    row("GET", "/public/get-courses/<int:course_id>", OPTIONAL),
    row("GET", "/public/courses/search", PUBLIC, query={"q": "course"}),
    row("POST", "/public/search", PUBLIC, body={"query": "course"}),

    # --- administration ---------------------------------------------------------------------------
    row("GET", "/admin/dashboard", ADMINS),
    row("GET", "/admin/analytics", ADMINS),
    row("GET", "/admin/analytics/revenue", ADMINS),
    row("GET", "/admin/analytics/enrollments", ADMINS),
    row("GET", "/admin/analytics/popular-courses", ADMINS),
    row("GET", "/admin/audit-log", ADMINS),
    row("GET", "/admin/blocked-ips", ADMINS),
    row("POST", "/admin/blocked-ips", ADMINS, body={"ip_address": "198.51.100.23"}),
    row("DELETE", "/admin/blocked-ips/<string:ip>", ADMINS),
    row("PUT", "/admin/certificates/<int:certificate_id>/revoke", ADMINS,
        body={"reason": "Issued by mistake"}),
    row("GET", "/admin/courses", ADMINS),
    row("GET", "/admin/courses/pending", ADMINS),
    row("PUT", "/admin/courses/<int:course_id>/status", ADMINS, body={"status": "published"}),
    row("PUT", "/admin/courses/<int:course_id>/publish", ADMINS),
    row("GET", "/admin/payments", ADMINS),
    # Student A's refund request is open: the admin's own refund is refused (409) before any
    # gateway is asked.
    row("POST", "/admin/payments/<int:payment_id>/refund", ADMINS,
        body={"reason": "Goodwill refund"}),
    row("GET", "/admin/refund-requests", ADMINS),
    row("PUT", "/admin/refund-requests/<int:request_id>", ADMINS,
        body={"action": "reject", "note": "Outside the policy"}),
    row("GET", "/admin/users", ADMINS),
    row("GET", "/admin/users/<int:user_id>", ADMINS),
    row("PUT", "/admin/users/<int:user_id>", ADMINS, body={"city": "Pune"}),
    row("DELETE", "/admin/users/<int:user_id>", ADMINS),
    row("PUT", "/admin/users/<int:user_id>/deactivate", ADMINS),
    row("POST", "/admin/users/<int:user_id>/promote", ADMINS),
    row("POST", "/admin/users/<int:user_id>/unlock", ADMINS),
    row("GET", "/admin/jobs/failed", ADMINS),
    # A failed job is queued again once: the world is rebuilt after each allowed retry.
    row("POST", "/admin/jobs/<string:job_id>/retry", ADMINS, params={"job_id": "job_failed"},
        fresh=True),
    row("POST", "/admin/payments/reconcile", ADMINS, body={}),

    # --- background jobs --------------------------------------------------------------------------
    # Student A started job A: theirs and the admins' to read, nobody else's.
    row("GET", "/jobs/<string:job_id>", HOLDER_OR_ADMIN),

    # --- outside /api/v1 --------------------------------------------------------------------------
    row("GET", "/static/uploads/<string:folder>/<string:name>", PUBLIC),
    row("GET", "/verify/<string:number>", PUBLIC),
    row("POST", "/verify/<string:number>", PUBLIC, form=verify_upload_form),
    row("GET", "/verify/", PUBLIC),
    row("POST", "/verify/", PUBLIC, form=verify_upload_form),
    row("GET", "/.well-known/did.json", PUBLIC),
    row("GET", "/did.json", PUBLIC),
]

# The documentation pages and their assets: no data behind them, skipped on purpose (and only
# these).
DOCS_RULES = frozenset({
    ("GET", API + "/docs"),
    ("GET", API + "/docs/assets/<string:name>"),
    ("GET", API + "/openapi.json"),
    ("GET", API + "/docs/openapi.json"),
    ("GET", API + "/docs/redoc/"),
    ("GET", API + "/docs/scalar/"),
    ("GET", API + "/docs/swagger/"),
    ("GET", API + "/docs/swagger/oauth2-redirect.html/"),
})
# The test-only blueprint tests/conftest.py registers on the session app (not in create_app()).
TEST_ONLY_BLUEPRINTS = frozenset({"probe"})

# Cells that reveal an authorization bug: {(method, rule, identity): "BUG: ..."}. The rule's
# test is xfail(strict=True, raises=AuthzBug): it must keep failing on exactly these cells.
KNOWN_BUGS: dict[tuple[str, str, str], str] = {}

# Path parameters: the world's object each name stands for, unless the entry says otherwise.
DEFAULT_PARAMS = {
    "course_id": "course_a", "module_id": "module_a", "lesson_id": "lesson_a",
    "resource_id": "resource_a", "enrollment_id": "enrollment_a", "payment_id": "payment_a",
    "certificate_id": "certificate_a", "notification_id": "notification_a",
    "session_id": "live_a", "category_id": "master", "subcategory_id": "sub",
    "form_id": "contact", "request_id": "refund_a", "user_id": "student_a_id",
    "prerequisite_id": "course_f", "ip": "blocked_ip", "number": "certificate_number",
    "folder": "thumbnail_folder", "name": "thumbnail_name", "job_id": "job_a",
    "refund_id": "payment_refund_a",
}

TABLE_BY_KEY = {entry.key: entry for entry in TABLE}
assert len(TABLE_BY_KEY) == len(TABLE), "duplicate entries in TABLE"


class AuthzBug(AssertionError):
    """A known authorization bug still present (see KNOWN_BUGS)."""


# --- helpers ------------------------------------------------------------------------------------

_addresses = itertools.count(1)


def fresh_ip() -> dict:
    """A client address nobody has used, so no per-address limit or block is ever reached."""
    n = next(_addresses)
    return {"REMOTE_ADDR": f"10.{77 + ((n >> 16) & 127)}.{(n >> 8) & 255}.{n & 255}"}


def is_write(method: str) -> bool:
    return method in ("POST", "PUT", "PATCH", "DELETE")


def rules_of(app) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.split(".", 1)[0] in TEST_ONLY_BLUEPRINTS:
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found.add((method, rule.rule))
    return found - DOCS_RULES


def build_path(entry: Entry, world: World) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        ref = entry.params.get(name, DEFAULT_PARAMS.get(name))
        assert ref is not None, f"no value for <{name}> in {entry.rule}"
        return str(world.get(ref, ref)) if isinstance(ref, str) else str(ref)

    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", value, entry.rule)


def resolve(value, world: World):
    return value(world) if callable(value) else value


def classify(entry: Entry, status: int) -> Any:
    """What a status means in the matrix: 401/403/404, ALLOW, or the status itself when it is
    neither (a 5xx, a 405 or a 429 is never an acceptable cell)."""
    if status in (401, 403, 404):
        return status
    if status == 503 and entry.gateway:
        return ALLOW
    if status >= 500 or status in (405, 429):
        return status
    return ALLOW


def error_shape_problem(response) -> str | None:
    if response.mimetype != "application/json":
        return f"error body is {response.mimetype}, not JSON"
    body = response.get_json(silent=True)
    if not isinstance(body, dict):
        return f"error body is not an object: {response.get_data(as_text=True)[:200]}"
    if not {"error", "code"} <= set(body) <= {"error", "code", "details"}:
        return f"error body keys are {sorted(body)}"
    if not (isinstance(body["error"], str) and body["error"]
            and isinstance(body["code"], str) and body["code"]):
        return f"error body has an empty error or code: {body}"
    return None


# --- the world ----------------------------------------------------------------------------------

def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def truncate(app) -> None:
    with app.app_context():
        db.session.remove()
        with db.engine.begin() as conn:
            for table in reversed(db.metadata.sorted_tables):
                conn.execute(table.delete())


# The certificate PDF is rendered by certificate_service.store_pdf once per module (QR code and
# all, ~80 ms); later worlds issue the same certificate number, whose stored file is still
# there (rendered again if a cell removed it).
_pdf_cache: dict[str, str] = {}


class WorldBuilder:
    def __init__(self, app, client, auth_headers, password_hash: str):
        self.app, self.client, self.auth_headers = app, client, auth_headers
        self.password_hash = password_hash
        self.builds = 0

    @staticmethod
    def certificate_number(course_id: int, user_id: int) -> str:
        from services import certificate_service

        if "number" not in _pdf_cache:
            _pdf_cache["number"] = certificate_service.new_number(course_id, user_id)
        return _pdf_cache["number"]

    def attach_pdf(self, certificate: Certificate) -> None:
        from services import certificate_service, file_service

        path = _pdf_cache.get("file_path")
        if path and file_service.storage().path(path).is_file():
            certificate.file_path, certificate.sha256 = path, _pdf_cache["sha256"]
            return
        certificate_service.store_pdf(certificate)
        _pdf_cache.update(file_path=certificate.file_path, sha256=certificate.sha256)

    def build(self) -> World:
        """Empty the database and build the world anew; returns ids, addresses and headers."""
        from utils.pipeline import blocked_ips
        from utils.helpers import utcnow

        truncate(self.app)
        self.builds += 1
        tag = uuid.uuid4().hex[:8]
        w: World = {"blocked_ip": BLOCKED_IP, "thumbnail_folder": "thumbnails",
                    "thumbnail_name": THUMBNAIL_NAME}
        with self.app.app_context():
            now = utcnow()
            w["now"] = now

            def user(key: str, role: str, first: str, **fields) -> User:
                row = User(email=f"{key}-{tag}@example.com", first_name=first,
                           last_name="Matrix", role=role, is_active=True,
                           is_email_verified=True, password_hash=self.password_hash, **fields)
                db.session.add(row)
                return row

            people = {
                STUDENT: user("student-a", "student", "Ada"),
                OTHER_STUDENT: user("student-b", "student", "Bea"),
                INSTRUCTOR: user("instructor-a", "instructor", "Ian"),
                OTHER_INSTRUCTOR: user("instructor-b", "instructor", "Ivy"),
                ADMIN: user("admin", "admin", "Abe"),
                DEACTIVATED: user("inactive", "student", "Dee"),
            }
            master = MasterCategory(name=f"Technology {tag}", slug=f"tech-{tag}")
            db.session.add(master)
            db.session.flush()
            sub = Subcategory(master_category_id=master.id, name="AI", slug=f"ai-{tag}")
            db.session.add(sub)
            db.session.flush()

            def course(key: str, owner: User, price: str) -> Course:
                row = Course(title=f"Course {key}", slug=f"course-{key}-{tag}",
                             instructor_id=owner.id, status="published", published_at=now,
                             price=Decimal(price), currency="USD", subcategory_id=sub.id,
                             description="Everything about the subject")
                db.session.add(row)
                return row

            course_a = course("a", people[INSTRUCTOR], "49.99")
            course_b = course("b", people[OTHER_INSTRUCTOR], "0.00")
            course_f = course("f", people[INSTRUCTOR], "0.00")
            db.session.flush()
            db.session.add(CoursePrerequisite(course_id=course_a.id,
                                              prerequisite_course_id=course_f.id))
            module_a = Module(course_id=course_a.id, title="Basics", position=0)
            module_b = Module(course_id=course_b.id, title="Other basics", position=0)
            db.session.add_all([module_a, module_b])
            db.session.flush()
            lesson_a = Lesson(module_id=module_a.id, title="Welcome", content=SECRET_BODY,
                              video_url=SECRET_VIDEO, position=0)
            lesson_b = Lesson(module_id=module_b.id, title="Hello", content="Body", position=0)
            db.session.add_all([lesson_a, lesson_b])
            db.session.flush()

            stored = RESOURCE_PATH  # written again each time: a DELETE cell removes it
            target = Path(self.app.config["UPLOAD_FOLDER"], stored)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(PDF)
            resource_a = LessonResource(
                lesson_id=lesson_a.id, title="Slides", original_filename="slides.pdf",
                stored_path=stored, mime_type="application/pdf", file_type="pdf",
                file_size=len(PDF), sha256=hashlib.sha256(PDF).hexdigest(),
                uploaded_by_id=people[INSTRUCTOR].id)
            db.session.add(resource_a)

            student_a, student_b = people[STUDENT], people[OTHER_STUDENT]
            payment_a = Payment(
                user_id=student_a.id, course_id=course_a.id, gateway="razorpay",
                gateway_order_id=f"order_{tag}", gateway_payment_id=f"pay_{tag}",
                amount=Decimal("49.99"), currency="USD", status="completed",
                invoice_number=f"INV-{tag}", paid_at=now, refunded_amount=Decimal("1.00"))
            db.session.add(payment_a)
            db.session.flush()
            payment_refund_a = PaymentRefund(
                payment_id=payment_a.id, gateway="razorpay", gateway_refund_id=f"rfnd_{tag}",
                amount=Decimal("1.00"), currency="USD", source="webhook",
                credit_note_number=f"CN-{tag}")
            db.session.add(payment_refund_a)
            enrollment_a = Enrollment(
                user_id=student_a.id, course_id=course_a.id, status="completed",
                payment_id=payment_a.id, enrolled_at=now - timedelta(days=1), started_at=now,
                completed_at=now, progress_percent=Decimal("100.00"))
            enrollment_b = Enrollment(user_id=student_b.id, course_id=course_b.id,
                                      status="active", enrolled_at=now)
            db.session.add_all([enrollment_a, enrollment_b])
            db.session.flush()
            db.session.add(LessonProgress(enrollment_id=enrollment_a.id, lesson_id=lesson_a.id,
                                          completed=True, completed_at=now,
                                          watch_time_seconds=600))

            certificate = Certificate(
                certificate_number=self.certificate_number(course_a.id, student_a.id),
                user_id=student_a.id, course_id=course_a.id, enrollment_id=enrollment_a.id,
                holder_name="Ada Matrix", course_title=course_a.title,
                instructor_name="Ian Matrix", completion_date=now.date(), status="valid",
                issued_at=now)
            db.session.add(certificate)
            db.session.flush()
            self.attach_pdf(certificate)
            openbadge.issue(certificate)  # its credential and its status list entry

            notification_a = Notification(user_id=student_a.id, kind="system",
                                          title="Welcome", message="Hello Ada")
            notification_b = Notification(user_id=student_b.id, kind="system",
                                          title="Welcome", message="Hello Bea")
            refund_a = RefundRequest(payment_id=payment_a.id, user_id=student_a.id,
                                     reason="Changed my mind", status="pending",
                                     amount=Decimal("49.99"))
            contact = ContactForm(name="Visitor", email="visitor@example.com",
                                  message="A question", status="new")
            live_a = LiveSession(
                course_id=course_a.id, instructor_id=people[INSTRUCTOR].id,
                title="Kick-off", start_time=now + timedelta(minutes=5), duration_minutes=60,
                platform="zoom", meeting_url=SECRET_MEETING_URL, meeting_id="123 456",
                meeting_password=SECRET_MEETING_PASSWORD, status="scheduled")
            job_a = BackgroundJob(id=str(uuid.uuid4()), kind="payments.reconcile",
                                  status="finished", args={}, result={"outcomes": {}},
                                  created_by=student_a.id, created_at=now, attempts=1)
            job_failed = BackgroundJob(id=str(uuid.uuid4()), kind="payments.reconcile",
                                       status="failed", args={}, error="gateway down",
                                       created_by=people[ADMIN].id, created_at=now, attempts=4)
            db.session.add_all([notification_a, notification_b, refund_a, contact, live_a,
                                job_a, job_failed])
            db.session.commit()
            blocked_ips.block_ip(BLOCKED_IP, seconds=None, reason="matrix test")

            w.update(
                master=master.id, sub=sub.id, course_a=course_a.id, course_b=course_b.id,
                course_f=course_f.id, module_a=module_a.id, lesson_a=lesson_a.id,
                resource_a=resource_a.id, payment_a=payment_a.id,
                payment_refund_a=payment_refund_a.id,
                enrollment_a=enrollment_a.id, enrollment_b=enrollment_b.id,
                certificate_a=certificate.id,
                certificate_number=certificate.certificate_number,
                status_list=certificate.status_list_id,
                notification_a=notification_a.id, refund_a=refund_a.id, contact=contact.id,
                live_a=live_a.id, student_a_id=student_a.id, job_a=job_a.id,
                job_failed=job_failed.id,
                user={name: person.id for name, person in people.items()},
                email={name: person.email for name, person in people.items()},
            )
        w["user"][REVOKED] = w["user"][EXPIRED] = w["user"][STUDENT]

        # Tokens: an access and a refresh token for each identity (as conftest's auth_headers
        # makes them, in one app context: this runs a few hundred times).
        headers: dict[str, dict[str, dict]] = {"access": {GUEST: {}}, "refresh": {GUEST: {}}}
        with self.app.app_context():
            for name in (STUDENT, OTHER_STUDENT, INSTRUCTOR, OTHER_INSTRUCTOR, ADMIN,
                         DEACTIVATED, REVOKED):
                person = db.session.get(User, w["user"][name])
                headers["access"][name] = bearer(create_access_token(person))
                headers["refresh"][name] = bearer(create_refresh_token(person))
        # Expired: student A's tokens, expired five seconds ago.
        gone = timedelta(seconds=-5)
        headers["access"][EXPIRED] = self.auth_headers(w["user"][STUDENT], expires=gone)
        headers["refresh"][EXPIRED] = self.auth_headers(w["user"][STUDENT], refresh=True,
                                                        expires=gone)
        # Revoked: a session of student A that logged out (access and refresh token).
        access, refresh = headers["access"][REVOKED], headers["refresh"][REVOKED]
        logout = self.client.post(f"{API}/auth/logout", headers=access,
                                  json={"refresh_token": refresh["Authorization"][7:]},
                                  environ_base=fresh_ip())
        assert logout.status_code == 200, logout.get_data(as_text=True)
        # Deactivated: the account is switched off after its tokens were issued.
        with self.app.app_context():
            db.session.get(User, w["user"][DEACTIVATED]).is_active = False
            db.session.commit()
        w["headers"] = headers
        return w


# --- fixtures -----------------------------------------------------------------------------------

_stats = {"rules": 0, "cells": 0, "passed": 0, "known_bug_cells": 0, "builds": 0}


@pytest.fixture(scope="module", autouse=True)
def generous_limits(app, request):
    """Every configurable limit raised for the module (and restored after); the fixed ones are
    per client address, and every request comes from an address of its own."""
    saved = {k: v for k, v in app.config.items() if k.startswith("RATE_LIMIT_")}
    app.config.update({k: "10000 per minute" for k in saved})
    folder = Path(app.config["UPLOAD_FOLDER"], "thumbnails")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / THUMBNAIL_NAME).write_bytes(PNG)
    yield
    app.config.update(saved)
    for leftover in (folder / THUMBNAIL_NAME, Path(app.config["UPLOAD_FOLDER"], RESOURCE_PATH)):
        leftover.unlink(missing_ok=True)
    if _stats["rules"]:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        message = (f"\nauthorization matrix: {_stats['rules']} rules x {len(IDENTITIES)} "
                   f"identities = {_stats['cells']} cells run, {_stats['passed']} as expected, "
                   f"{_stats['known_bug_cells']} known-bug cells; "
                   f"{_stats['builds']} worlds built")
        if capture is not None:
            with capture.global_and_fixture_disabled():
                print(message)
        else:  # pragma: no cover
            print(message)


@pytest.fixture(scope="module")
def password_hash(app):
    return generate_password_hash(PASSWORD, method=app.config["PASSWORD_HASH_METHOD"])


@pytest.fixture
def world_builder(app, auth_headers, password_hash):
    return WorldBuilder(app, app.test_client(), auth_headers, password_hash)


# --- the tests ----------------------------------------------------------------------------------

def test_every_rule_has_an_entry(app):
    """A rule without an entry (a route added later) fails, and so does an entry whose rule is
    gone."""
    in_map = rules_of(app)
    in_table = set(TABLE_BY_KEY)
    missing = sorted(in_map - in_table)
    stale = sorted(in_table - in_map)
    assert not missing, f"rules without an authorization-matrix entry: {missing}"
    assert not stale, f"matrix entries without a rule in the URL map: {stale}"
    assert {key for key in DOCS_RULES} <= {
        (m, r.rule) for r in app.url_map.iter_rules() for m in r.methods}, \
        "a skipped docs rule no longer exists: update DOCS_RULES"


def _params():
    params = []
    for entry in TABLE:
        bugs = {ident: reason for (method, rule, ident), reason in KNOWN_BUGS.items()
                if (method, rule) == entry.key}
        marks = ()
        if bugs:
            reason = "; ".join(f"{ident}: {text}" for ident, text in sorted(bugs.items()))
            marks = pytest.mark.xfail(strict=True, raises=AuthzBug, reason=reason)
        params.append(pytest.param(entry, id=f"{entry.method} {entry.rule}", marks=marks))
    return params


def text_of(response) -> str:
    return response.get_data().decode("utf-8", "replace")


def leaked(world: World, body: str) -> list[str]:
    markers = (SECRET_BODY, SECRET_VIDEO, SECRET_MEETING_URL, SECRET_MEETING_PASSWORD,
               world["email"][STUDENT])
    return [marker for marker in markers if marker in body]


def run_order(entry: Entry) -> list[str]:
    """The refused identities first, on an untouched world; then the allowed ones."""
    refused = [name for name in RUN_ORDER if entry.expected[name] != ALLOW]
    return refused + [name for name in RUN_ORDER if entry.expected[name] == ALLOW]


@pytest.mark.parametrize("entry", _params())
def test_authorization_matrix(app, world_builder, entry: Entry):
    assert entry.key in rules_of(app), f"{entry.method} {entry.rule} is not in the URL map"
    client = app.test_client()
    world = world_builder.build()
    dirty = False
    failures, bug_hits = [], []
    _stats["rules"] += 1
    for identity in run_order(entry):
        if dirty:
            world = world_builder.build()
            dirty = False
        expected = entry.expected[identity]
        kwargs: dict[str, Any] = {
            "method": entry.method,
            "headers": dict(world["headers"][entry.token][identity]),
            "environ_base": fresh_ip(),
        }
        if entry.query is not None:
            kwargs["query_string"] = resolve(entry.query, world)
        if entry.body is not None:
            kwargs["json"] = resolve(entry.body, world)
        elif entry.form is not None:
            kwargs["data"] = resolve(entry.form, world)
            kwargs["content_type"] = "multipart/form-data"
        elif entry.raw is not None:
            kwargs["data"] = entry.raw
            kwargs["content_type"] = "application/json"
        response = client.open(build_path(entry, world), **kwargs)
        status = response.status_code
        got = classify(entry, status)
        _stats["cells"] += 1

        problem = None
        if got != expected:
            problem = (f"{identity}: expected {expected}, got {status}: "
                       f"{text_of(response)[:300]}")
        elif got in (401, 403, 404):
            shape = error_shape_problem(response)
            if shape:
                problem = f"{identity}: {status} {shape}"
        elif identity not in ENTITLED and entry.key not in LEAK_CHECK_EXEMPT:
            found = leaked(world, text_of(response))
            if found:
                problem = f"{identity}: allowed, but the answer shows what is not theirs: {found}"
        bug = KNOWN_BUGS.get((entry.method, entry.rule, identity))
        if bug and problem:
            bug_hits.append(f"{identity}: {bug} ({problem})")
            _stats["known_bug_cells"] += 1
        elif bug:
            failures.append(f"{identity}: listed in KNOWN_BUGS ({bug}) but now behaves as "
                            "expected: remove it from KNOWN_BUGS")
        elif problem:
            failures.append(problem)
        else:
            _stats["passed"] += 1
        if is_write(entry.method) and 200 <= status < 300 and (
                expected != ALLOW or entry.method == "DELETE" or entry.fresh):
            dirty = True  # the world changed in a way the next identity must not see
    _stats["builds"] += world_builder.builds
    assert not failures, f"{entry.method} {entry.rule}:\n  " + "\n  ".join(failures)
    if bug_hits:
        raise AuthzBug(f"{entry.method} {entry.rule}:\n  " + "\n  ".join(bug_hits))
