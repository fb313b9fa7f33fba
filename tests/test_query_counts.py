"""Query-count guards: every list the API serves costs the same number of SQL statements whatever
its length, so an N+1 (a lazy load or a lookup per listed item) fails CI.

Each guard seeds FEW items (each with its related rows: its own instructor, subcategory, modules,
lessons, enrollment, payment... so that nothing is served from the identity map by accident),
calls the list as someone allowed to see them, then seeds up to MANY and calls it again: both
answers are 200 and list the expected number of items, and both cost the same number of
statements (more than none). Lists whose length is capped (the dashboards' "recent" lists)
say so with `cap`. Details that carry a list of children (a course's outline, a lesson's
resources, progress lesson by lesson, a live session's attendance) are guarded the same way.

The public catalog's Redis cache is switched off for the module (CATALOG_CACHE_SECONDS=0): a
cached answer costs no statement at all, which would make any count "constant".

Completeness: every view function that reads (GET, and the POST spellings the API
documentation uses to read: a last path segment `get-...` or `search`) is either guarded here
or named in NOT_LISTS with the reason it is not a list; a read route added later without
either fails `test_every_read_view_is_guarded_or_declared_not_a_list`. The documentation pages
and the test-only probe blueprint are skipped.

Rows are inserted through the ORM (the factories of `World` return ids); the lists are read
through the HTTP API.
"""
from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from models import (
    AuditLog,
    BlockedIP,
    Certificate,
    ContactForm,
    Course,
    CoursePrerequisite,
    Enrollment,
    Lesson,
    LessonProgress,
    LessonResource,
    LiveSession,
    LiveSessionAttendance,
    MasterCategory,
    Module,
    Notification,
    Payment,
    RefundRequest,
    Subcategory,
    User,
    db,
)
from tests.support.queries import extra_statements, recorded_statements
from utils.helpers import utcnow

API = "/api/v1"
FEW, MANY = 2, 8
GUEST, STUDENT, INSTRUCTOR, ADMIN = "guest", "student", "instructor", "admin"


# --- the world: factories that insert rows and return ids ---------------------------------------

class World:
    """The signed-in identities (a student, an instructor, an admin) and factories for the rows
    the lists show. Factories run inside an app context and flush; the caller commits."""

    def __init__(self, app, auth_headers):
        self.app, self._auth_headers = app, auth_headers
        self.tag = uuid.uuid4().hex[:8]
        self._serial = itertools.count(1)
        self.now = utcnow()
        self.anchors: dict[str, int] = {}  # the parent objects named in a guard's path
        self.lessons: dict[int, list[int]] = {}  # course id -> its lesson ids, in order
        with app.app_context():
            self.ids = {role: self.user(role) for role in (STUDENT, INSTRUCTOR, ADMIN)}
            db.session.commit()
        self.student, self.instructor, self.admin = (self.ids[r] for r in (STUDENT, INSTRUCTOR,
                                                                           ADMIN))

    def headers(self, who: str) -> dict:
        return {} if who == GUEST else self._auth_headers(self.ids[who])

    def n(self) -> int:
        return next(self._serial)

    def anchor(self, name: str, make: Callable[[], int]) -> int:
        """The one object of this name (made on first use): the course whose enrollments are
        listed, the module whose lessons are..."""
        if name not in self.anchors:
            self.anchors[name] = make()
        return self.anchors[name]

    def _add(self, row):
        db.session.add(row)
        db.session.flush()
        return row.id

    # people and the catalog

    def user(self, role: str = STUDENT) -> int:
        n = self.n()
        return self._add(User(email=f"{role}{n}-{self.tag}@example.com", first_name=role.title(),
                              last_name=f"Number{n}", role=role, is_active=True,
                              is_email_verified=True))

    def master(self) -> int:
        n = self.n()
        return self._add(MasterCategory(name=f"Category {n} {self.tag}",
                                        slug=f"category-{n}-{self.tag}", position=n))

    def subcategory(self, master: int | None = None) -> int:
        n = self.n()
        master = master or self.anchor("master", self.master)
        return self._add(Subcategory(master_category_id=master, name=f"Sub {n}",
                                     slug=f"sub-{n}-{self.tag}", position=n))

    def course(self, *, instructor: int | None = None, subcategory: int | None = None,
               status: str = "published", title: str | None = None, price: str = "0.00",
               lessons: int = 1, review: bool = False) -> int:
        """A course with its own instructor and subcategory unless given, and one module of
        `lessons` lessons (none for lessons=0)."""
        n = self.n()
        course_id = self._add(Course(
            title=title or f"Course {n}", slug=f"course-{n}-{self.tag}",
            short_description="A course", description="Everything about the subject",
            instructor_id=instructor or self.user(INSTRUCTOR),
            subcategory_id=subcategory or self.subcategory(), status=status,
            published_at=self.now if status == "published" else None,
            review_requested_at=self.now if review else None,
            price=Decimal(price), currency="USD"))
        self.lessons[course_id] = []
        if lessons:
            self.module(course_id, lessons=lessons)
        return course_id

    def module(self, course: int, *, lessons: int = 1, resources: int = 0) -> int:
        module_id = self._add(Module(course_id=course, title=f"Module {self.n()}",
                                     position=self.n()))
        for _ in range(lessons):
            self.lesson(module_id, resources=resources)
        return module_id

    def lesson(self, module: int, *, resources: int = 0) -> int:
        n = self.n()
        lesson_id = self._add(Lesson(module_id=module, title=f"Lesson {n}", content="Body",
                                     video_url=f"https://videos.example.com/{n}.mp4",
                                     duration_minutes=10, position=n, is_preview=n % 3 == 0))
        course_id = db.session.get(Module, module).course_id
        self.lessons.setdefault(course_id, []).append(lesson_id)
        for _ in range(resources):
            self.resource(lesson_id)
        return lesson_id

    def resource(self, lesson: int) -> int:
        n = self.n()
        return self._add(LessonResource(
            lesson_id=lesson, title=f"Handout {n}", original_filename=f"handout-{n}.pdf",
            stored_path=f"resources/qc-{self.tag}-{n}.pdf", mime_type="application/pdf",
            file_type="pdf", file_size=1000, position=n))

    def prerequisite(self, course: int, required: int) -> None:
        db.session.add(CoursePrerequisite(course_id=course, prerequisite_course_id=required))
        db.session.flush()

    # learning

    def enrollment(self, user: int, course: int, *, status: str = "active",
                   progress: bool = True) -> int:
        """An enrollment; with `progress`, the course's first lesson is completed."""
        done = status == "completed"
        enrollment_id = self._add(Enrollment(
            user_id=user, course_id=course, status=status, enrolled_at=self.now,
            started_at=self.now, completed_at=self.now if done else None,
            progress_percent=Decimal("100.00" if done else "0.00")))
        if progress and self.lessons.get(course):
            self.progress(enrollment_id, self.lessons[course][0])
        return enrollment_id

    def progress(self, enrollment: int, lesson: int) -> int:
        return self._add(LessonProgress(
            enrollment_id=enrollment, lesson_id=lesson, completed=True, completed_at=self.now,
            watch_time_seconds=60, started_at=self.now, last_accessed_at=self.now))

    def certificate(self, user: int, course: int) -> int:
        enrollment = self.enrollment(user, course, status="completed")
        n = self.n()
        return self._add(Certificate(
            certificate_number=f"QC-{self.tag}-{n}", user_id=user, course_id=course,
            enrollment_id=enrollment, holder_name="Student Holder", course_title=f"Course {n}",
            instructor_name="Ian Structor", completion_date=self.now.date(), status="valid",
            issued_at=self.now))

    # money

    def payment(self, user: int, course: int, *, status: str = "completed",
                currency: str = "USD") -> int:
        n = self.n()
        paid = status in ("completed", "refunded")
        return self._add(Payment(
            user_id=user, course_id=course, gateway="razorpay",
            gateway_order_id=f"order_{self.tag}_{n}", gateway_payment_id=f"pay_{self.tag}_{n}",
            amount=Decimal("49.99"), currency=currency, status=status,
            invoice_number=f"INV-{self.tag}-{n}" if paid else None,
            paid_at=self.now if paid else None))

    def refund_request(self, user: int, payment: int) -> int:
        return self._add(RefundRequest(payment_id=payment, user_id=user, reason="Not for me",
                                       status="pending", amount=Decimal("49.99")))

    # live sessions, messages, administration

    def live_session(self, course: int, *, starts_in: timedelta = timedelta(days=1)) -> int:
        instructor = db.session.get(Course, course).instructor_id
        return self._add(LiveSession(
            course_id=course, instructor_id=instructor, title=f"Session {self.n()}",
            start_time=self.now + starts_in, duration_minutes=60, platform="zoom",
            meeting_url="https://zoom.example.com/j/1", meeting_id="1", status="scheduled"))

    def attendance(self, session: int, user: int) -> int:
        return self._add(LiveSessionAttendance(live_session_id=session, user_id=user,
                                               first_joined_at=self.now,
                                               last_joined_at=self.now))

    def notification(self, user: int) -> int:
        n = self.n()
        return self._add(Notification(user_id=user, kind="system", title=f"Notice {n}",
                                      message="Hello", is_read=n % 2 == 0))

    def contact_form(self) -> int:
        n = self.n()
        return self._add(ContactForm(name=f"Visitor {n}", email=f"visitor{n}@example.com",
                                     message="A question", status="new"))

    def blocked_ip(self) -> int:
        return self._add(BlockedIP(ip_address=f"198.51.100.{self.n()}", reason="guard"))

    def failed_job(self) -> str:
        # Imported here: background jobs are newer than the rest of the table.
        from models import BackgroundJob

        job_id = str(uuid.uuid4())
        db.session.add(BackgroundJob(id=job_id, kind="email.send", status="failed",
                                     args={"n": self.n()}, error="SMTP refused", attempts=3,
                                     created_by=self.admin, created_at=self.now,
                                     started_at=self.now, finished_at=self.now))
        db.session.flush()
        return job_id

    def audit_entry(self) -> int:
        return self._add(AuditLog(actor_id=self.admin, action="user.update",
                                  target_type="user", target_id=self.student,
                                  details={"before": {"city": None}, "after": {"city": "Pune"}}))


# --- what each guard seeds ----------------------------------------------------------------------
# grow(world, k) adds k more items to the list the guard reads, each with its related rows.

def times(make: Callable[[World], Any]) -> Callable[[World, int], None]:
    def grow(w: World, k: int) -> None:
        for _ in range(k):
            make(w)
    return grow


def enrolled_course(who: str = STUDENT, **options) -> Callable[[World], int]:
    """The anchor course (no lessons until the guard adds some) with `who` enrolled (the
    anchor enrollment)."""
    def make(w: World) -> int:
        def build() -> int:
            course = w.course(lessons=0, **options)
            w.anchors["enrollment"] = w.enrollment(w.ids[who], course, progress=False)
            return course
        return w.anchor("course", build)
    return make


def _teaching_course(w: World) -> int:
    statuses = ("published", "draft", "archived")
    return w.course(instructor=w.instructor, status=statuses[w.n() % 3])


def _student_enrolled(status: str = "active") -> Callable[[World], int]:
    def make(w: World) -> int:
        return w.enrollment(w.student, w.course(lessons=2), status=status)
    return make


def _course_student(w: World) -> None:
    course = w.anchor("course", lambda: w.course(instructor=w.instructor, lessons=2))
    w.enrollment(w.user(), course)


def _outline_module(w: World) -> None:
    w.module(enrolled_course()(w), lessons=2, resources=1)


def _teaching_outline_module(w: World) -> None:
    course = w.anchor("course", lambda: w.course(instructor=w.instructor, lessons=0))
    w.module(course, lessons=2, resources=1)


def _prerequisite(w: World) -> None:
    w.prerequisite(w.anchor("course", w.course), w.course())


def _own_module(w: World) -> None:
    w.module(w.course(instructor=w.instructor, lessons=0), lessons=1)


def _enrolled_resource(w: World) -> None:
    course = w.course(lessons=0)
    w.module(course, lessons=1, resources=1)
    w.enrollment(w.student, course)


def _module_lesson(w: World) -> None:
    module = w.anchor("module", lambda: w.module(enrolled_course()(w), lessons=0))
    w.lesson(module, resources=1)


def _lesson_resource(w: World) -> None:
    lesson = w.anchor("lesson", lambda: w.lesson(w.module(enrolled_course()(w), lessons=0)))
    w.resource(lesson)


def _progress_lesson(w: World) -> None:
    course = enrolled_course()(w)
    enrollment = w.anchors["enrollment"]
    lesson = w.lesson(w.module(course, lessons=0))
    if w.n() % 2:
        w.progress(enrollment, lesson)


def _student_payment(w: World) -> None:
    w.payment(w.student, w.course(price="49.99"))


def _student_certificate(w: World) -> None:
    w.certificate(w.student, w.course())


def _student_session(w: World) -> None:
    course = w.course()
    w.enrollment(w.student, course)
    w.live_session(course)


def _taught_session(w: World) -> None:
    w.live_session(w.course(instructor=w.instructor))


def _any_session(w: World) -> None:
    w.live_session(w.course())


def _attendee(w: World) -> None:
    course = w.anchor("course", lambda: w.course(instructor=w.instructor))
    session = w.anchor("session", lambda: w.live_session(course,
                                                         starts_in=timedelta(minutes=-5)))
    student = w.user()
    w.enrollment(student, course)
    w.attendance(session, student)


def _sale(w: World) -> None:
    """A student who enrolled in a paid course and paid for it."""
    student, course = w.user(), w.course(price="49.99")
    w.enrollment(student, course)
    w.payment(student, course)


def _other_payment(w: World) -> None:
    statuses = ("completed", "pending", "failed", "refunded")
    w.payment(w.user(), w.course(price="49.99"), status=statuses[w.n() % 4])


def _refund_request(w: World) -> None:
    student = w.user()
    w.refund_request(student, w.payment(student, w.course(price="49.99")))


# --- the table ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Guard:
    endpoint: str  # the URL map's endpoint of the view
    who: str  # who reads the list (allowed to see every item seeded)
    path: str  # under /api/v1; {name} is the world's anchor of that name
    grow: Callable[[World, int], None]
    items: str | Callable[[dict], int]  # the body's list, or how to count its items
    base: int = 0  # items listed before any is seeded (the world's own users)
    cap: int | None = None  # the list shows at most this many
    method: str = "GET"
    body: dict | None = None

    @property
    def id(self) -> str:
        return f"{self.endpoint}-{self.who}"

    def expected(self, seeded: int) -> int:
        listed = self.base + seeded
        return listed if self.cap is None else min(listed, self.cap)

    def count(self, body: dict) -> int:
        if callable(self.items):
            return self.items(body)
        return len(body[self.items])


def nested(*keys: str) -> Callable[[dict], int]:
    def count(body: dict) -> int:
        for key in keys:
            body = body[key]
        return len(body)
    return count


def series_total(name: str) -> Callable[[dict], int]:
    def count(body: dict) -> int:
        if name == "payments":
            return sum(r["payments"] for month in body["series"] for r in month["revenue"])
        return sum(month[name] for month in body["series"])
    return count


G = Guard  # the table below reads better short

GUARDS: list[Guard] = [
    # --- the public catalog ------------------------------------------------------------------
    G("public.categories", GUEST, "/public/categories",
      times(lambda w: w.subcategory(w.master())), "categories"),
    G("public.category_subcategories", GUEST, "/public/categories/{master}/subcategories",
      times(lambda w: w.subcategory()), "subcategories"),
    G("public.subcategories", GUEST, "/public/get-subcategories",
      times(lambda w: w.subcategory(w.master())), "subcategories"),
    G("public.subcategory_courses", GUEST, "/public/subcategories/{sub}/courses",
      times(lambda w: w.course(subcategory=w.anchor("sub", w.subcategory))), "courses"),
    G("public.courses", GUEST, "/public/get-courses", times(lambda w: w.course()), "courses"),
    G("public.search", GUEST, "/public/courses/search?q=quantum",
      times(lambda w: w.course(title=f"Quantum mechanics {w.n()}")), "courses"),
    G("public.search_by_post", GUEST, "/public/search",
      times(lambda w: w.course(title=f"Quantum mechanics {w.n()}")), "courses",
      method="POST", body={"query": "quantum"}),
    G("courses.list_courses", GUEST, "/courses", times(lambda w: w.course()), "courses"),
    G("courses.get_prerequisites", GUEST, "/courses/{course}/prerequisites",
      times(_prerequisite), "prerequisites"),
    # A course's outline (modules, lessons, resources), as one of its students.
    G("courses.list_course_modules", STUDENT, "/courses/{course}/modules",
      times(_outline_module), "modules"),
    G("courses.get_course", STUDENT, "/courses/{course}", times(_outline_module),
      nested("course", "modules")),
    G("public.course", GUEST, "/public/courses/{course}", times(_outline_module),
      nested("course", "modules")),

    # --- instructors: their courses, modules, lessons and students -----------------------------
    G("courses.list_teaching_courses", INSTRUCTOR, "/courses/get-courses",
      times(_teaching_course), "courses"),
    G("users.my_teaching_courses", INSTRUCTOR, "/users/my-teaching-courses",
      times(_teaching_course), "courses"),
    G("courses.get_teaching_course", INSTRUCTOR, "/courses/get-courses/{course}",
      times(_teaching_outline_module), nested("course", "modules")),
    G("courses.course_enrollments", INSTRUCTOR, "/courses/{course}/enrollments",
      times(_course_student), "enrollments"),
    G("modules.list_modules", INSTRUCTOR, "/modules/get-modules", times(_own_module), "modules"),
    G("lessons.list_lessons", INSTRUCTOR, "/lessons/get-lessons",
      times(lambda w: w.course(instructor=w.instructor)), "lessons"),
    G("modules.get_module", STUDENT, "/modules/{module}", times(_module_lesson),
      nested("module", "lessons")),
    G("lessons.get_lesson", STUDENT, "/lessons/{lesson}", times(_lesson_resource),
      nested("lesson", "resources")),
    G("lesson_resources.list_resources", STUDENT, "/lesson-resources/get-lesson-resources",
      times(_enrolled_resource), "resources"),

    # --- the student's space -------------------------------------------------------------------
    G("enrollments.my_enrollments", STUDENT, "/enrollments", times(_student_enrolled()),
      "enrollments"),
    G("users.enrolled_courses", STUDENT, "/users/my-courses", times(_student_enrolled()),
      "enrollments"),
    G("users.completed_courses", STUDENT, "/users/completed-courses",
      times(_student_enrolled("completed")), "enrollments"),
    G("users.dashboard", STUDENT, "/users/dashboard", times(_student_enrolled()),
      "recent_activity"),
    G("enrollments.enrollment_progress", STUDENT, "/enrollments/{enrollment}/progress",
      times(_progress_lesson), "lessons"),
    G("enrollments.course_progress", STUDENT, "/enrollments/get-enrollments/{course}/progress",
      times(_progress_lesson), "lessons"),
    G("users.certificates", STUDENT, "/users/certificates", times(_student_certificate),
      "certificates"),
    G("certificates.list_certificates", STUDENT, "/certificates", times(_student_certificate),
      "certificates"),
    G("payments.history", STUDENT, "/payments/history", times(_student_payment), "payments"),
    G("notifications.list_notifications", STUDENT, "/notifications",
      times(lambda w: w.notification(w.student)), "notifications"),

    # --- live sessions: each role reads the list through its own filter ----------------------
    G("live_sessions.list_sessions", STUDENT, "/live-sessions", times(_student_session),
      "live_sessions"),
    G("live_sessions.list_sessions", INSTRUCTOR, "/live-sessions", times(_taught_session),
      "live_sessions"),
    G("live_sessions.list_sessions", ADMIN, "/live-sessions", times(_any_session),
      "live_sessions"),
    G("live_sessions.upcoming", STUDENT, "/live-sessions/upcoming", times(_student_session),
      "live_sessions"),
    G("live_sessions.get_session", INSTRUCTOR, "/live-sessions/{session}", times(_attendee),
      nested("live_session", "attendance")),

    # --- administration ------------------------------------------------------------------------
    G("master_categories.list_master_categories", ADMIN, "/master-categories",
      times(lambda w: w.master()), "master_categories"),
    G("subcategories.list_subcategories", ADMIN, "/subcategories",
      times(lambda w: w.subcategory(w.master())), "subcategories"),
    G("admin.list_users", ADMIN, "/admin/users", times(lambda w: w.user()), "users", base=3),
    G("admin.list_courses", ADMIN, "/admin/courses", times(_teaching_course), "courses"),
    G("admin.pending_courses", ADMIN, "/admin/courses/pending",
      times(lambda w: w.course(status="draft", review=True)), "courses"),
    G("admin.list_payments", ADMIN, "/admin/payments", times(_other_payment), "payments"),
    G("admin.list_refund_requests", ADMIN, "/admin/refund-requests", times(_refund_request),
      "refund_requests"),
    G("admin.list_blocked_ips", ADMIN, "/admin/blocked-ips", times(lambda w: w.blocked_ip()),
      "blocked_ips"),
    G("admin.audit_log", ADMIN, "/admin/audit-log", times(lambda w: w.audit_entry()),
      "entries"),
    G("admin.failed_jobs", ADMIN, "/admin/jobs/failed", times(lambda w: w.failed_job()), "jobs"),
    G("contact.list_forms", ADMIN, "/contact/contact-forms", times(lambda w: w.contact_form()),
      "contact_forms"),
    # The dashboard's recent lists show the latest five.
    G("admin.dashboard", ADMIN, "/admin/dashboard", times(_sale),
      nested("recent", "payments"), cap=5),
    G("admin.analytics", ADMIN, "/admin/analytics", times(_sale), "popular_courses"),
    G("admin.analytics_popular_courses", ADMIN, "/admin/analytics/popular-courses",
      times(_sale), "courses"),
    G("admin.analytics_revenue", ADMIN, "/admin/analytics/revenue", times(_sale),
      series_total("payments")),
    G("admin.analytics_enrollments", ADMIN, "/admin/analytics/enrollments", times(_sale),
      series_total("enrollments")),
]

# Read views that are not lists, each with the reason. (Views with several endpoints, e.g.
# /users/profile and /auth/profile, are named once.)
NOT_LISTS: dict[str, str] = {
    "admin.get_user": "one user with aggregate counts (grouped queries)",
    "auth.get_profile": "the caller's own account",
    "certificates.get_certificate": "one certificate",
    "certificates.download": "one PDF",
    "certificates.verify": "one certificate's public facts",
    "contact.get_form": "one contact form",
    "enrollments.get_enrollment": "one enrollment",
    "enrollments.read_lesson_progress": "one lesson's progress",
    "files.download": "one file",
    "health.health": "liveness",
    "jobs.get_job": "one background job",
    "health.ready": "readiness",
    "lesson_resources.get_resource": "one resource",
    "live_sessions.join_session": "one session's meeting details",
    "master_categories.get_master_category": "one category",
    "media.public_media": "one uploaded file",
    "notifications.get_preferences": "the caller's preferences",
    "notifications.unread_count": "a count",
    "payments.get_payment": "one payment",
    "payments.invoice": "one PDF",
    "payments.credit_note": "one PDF",
    "subcategories.get_subcategory": "one subcategory",
    "verify_page.verify_page": "one certificate's HTML page",
    "verify_page.check_page": "a form, no query",
    "certificates.download_credential": "one credential",
    "credentials.credential_by_number": "one credential",
    "credentials.status_list_credential": "one status list (one query for its revoked indexes)",
    "did.did_document": "the academy's keys, a handful, in one query",
}

# The documentation pages (spectree's, whose endpoints start with openapi_) and the test-only
# blueprint tests/conftest.py adds to the session app.
SKIPPED_BLUEPRINTS = frozenset({"docs", "probe"})


def reads_by_post(rule: str) -> bool:
    """The API documentation's read spellings: POST .../get-things[/<id>] and POST .../search."""
    static = [part for part in rule.split("/") if part and not part.startswith("<")]
    return bool(static) and (static[-1].startswith("get-") or static[-1] == "search")


def read_views(app) -> dict[str, set[str]]:
    """Every view function that reads, by its qualified name, with its endpoints."""
    views: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if (rule.endpoint.split(".", 1)[0] in SKIPPED_BLUEPRINTS
                or rule.endpoint.startswith("openapi_")):
            continue
        if "GET" in rule.methods or ("POST" in rule.methods and reads_by_post(rule.rule)):
            view = app.view_functions[rule.endpoint]
            views.setdefault(f"{view.__module__}.{view.__qualname__}", set()).add(rule.endpoint)
    return views


# --- fixtures and helpers -----------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def no_catalog_cache(app):
    """A cached catalog answer costs no statement: count what the views themselves do."""
    saved = app.config["CATALOG_CACHE_SECONDS"]
    app.config["CATALOG_CACHE_SECONDS"] = 0
    yield
    app.config["CATALOG_CACHE_SECONDS"] = saved


@pytest.fixture
def world(app, auth_headers) -> World:
    return World(app, auth_headers)


def grow(app, world: World, guard: Guard, k: int) -> None:
    with app.app_context():
        guard.grow(world, k)
        db.session.commit()


def read(app, client, world: World, guard: Guard, seeded: int) -> list[str]:
    """Read the guard's list; check the answer; return the statements it cost."""
    path = API + guard.path.format(**world.anchors)
    headers = world.headers(guard.who)
    with recorded_statements(app) as statements:
        response = client.open(path, method=guard.method, headers=headers, json=guard.body)
    assert response.status_code == 200, (path, response.status_code, response.get_json())
    listed = guard.count(response.get_json())
    assert listed == guard.expected(seeded), (
        f"{guard.method} {path} as {guard.who} lists {listed} items, expected "
        f"{guard.expected(seeded)} after seeding {seeded}")
    return list(statements)


# --- the tests ----------------------------------------------------------------------------------

@pytest.mark.parametrize("guard", GUARDS, ids=lambda g: g.id)
def test_list_costs_the_same_statements_whatever_its_length(app, client, world, guard):
    grow(app, world, guard, FEW)
    read(app, client, world, guard, FEW)  # the first request of a token fills the user mirror
    few = read(app, client, world, guard, FEW)
    grow(app, world, guard, MANY - FEW)
    first = read(app, client, world, guard, MANY)
    many = read(app, client, world, guard, MANY)
    assert few, f"{guard.id}: no statement at all (a cached answer?)"
    assert len(many) == len(few), (
        f"{guard.method} {guard.path} as {guard.who}: {len(few)} statements for {FEW} items, "
        f"{len(many)} for {MANY} (an N+1?):\n{extra_statements(few, many)}")
    # The new items' first read: at most one statement more for all of them (a catalog page's
    # cards of the courses it keeps no summary of: services/course_service.catalog_page), never
    # one an item.
    assert len(few) <= len(first) <= len(few) + 1, (
        f"{guard.method} {guard.path} as {guard.who}: {len(few)} statements for {FEW} items, "
        f"{len(first)} for {MANY} read first (an N+1?):\n{extra_statements(few, first)}")
    print(f"{guard.id}: {len(few)} statements for {FEW} and for {MANY} items")


# The learner's hot reads, pinned (issue 21): the caller comes from the token and the Redis
# mirror (no user row), each list's counts ride in its page's statement.
HOT_READS = {
    "users.enrolled_courses": 1,  # the page with its count and each row's lesson counts
    "users.completed_courses": 1,
    "enrollments.my_enrollments": 1,
    "users.dashboard": 1,  # the counts with, as rows, money by currency and recent activity
    "notifications.list_notifications": 1,  # the page, its count and the unread count
    "users.certificates": 1,
    "enrollments.enrollment_progress": 1,  # the enrollment with its lessons' columns
}


@pytest.mark.parametrize("guard", [g for g in GUARDS if g.endpoint in HOT_READS
                                   and g.who == STUDENT], ids=lambda g: g.id)
def test_a_learners_hot_read_costs_its_pinned_statements(app, client, world, guard):
    grow(app, world, guard, FEW)
    read(app, client, world, guard, FEW)  # the first request of a token fills the user mirror
    statements = read(app, client, world, guard, FEW)
    assert len(statements) == HOT_READS[guard.endpoint], "\n".join(statements)
    assert not any("FROM users" in s for s in statements), "\n".join(statements)


def test_every_read_view_is_guarded_or_declared_not_a_list(app):
    """A read route added later (a new list) fails here until it gets a guard, or is named in
    NOT_LISTS; an entry whose endpoint is gone fails too."""
    views = read_views(app)
    guarded = {guard.endpoint for guard in GUARDS}
    declared = set(NOT_LISTS)
    assert not guarded & declared, f"both guarded and declared not a list: {guarded & declared}"
    unclassified = sorted(f"{name} ({', '.join(sorted(endpoints))})"
                          for name, endpoints in views.items()
                          if not endpoints & (guarded | declared))
    assert not unclassified, (
        "read views with neither a query-count guard in GUARDS nor an entry in NOT_LISTS: "
        + "; ".join(unclassified))
    known = set().union(*views.values())
    stale = sorted((guarded | declared) - known)
    assert not stale, f"entries naming no read endpoint of the URL map: {stale}"
    ids = [guard.id for guard in GUARDS]
    assert len(ids) == len(set(ids)), "two guards read the same view as the same identity"
